"""The config schema every paper config fills in, and the one preset grammar.

A config reference is `configs/<paper>.py:<arg>`, where `arg` reads

    <preset>[+<variant>...][,<key>=<value>...][,runlocal]

    configs/avt_ca.py:ravdess                     the paper's RAVDESS preset
    configs/avt_ca.py:ravdess+it1                 ... with the Table V row IT-1
    configs/avt_ca.py:ravdess,variant=it1,seed=1  the same row, seed 1
    configs/attsf_net.py:ravdess,fold=2           fold 2 of the preset's protocol
    configs/mmt_ca.py:ravdess_audio+tuned         a better recipe beside the paper's
    configs/tucker_fusion.py:synthetic,runlocal   a few steps, to check a set-up

Keys: `variant` ('+'-joined names, applied in order after the preset), `seed`,
`fold` (index into the preset's k-fold protocol, `config.protocol`), and the
flag `runlocal`. Any field can still be overridden from the command line
(`--config.optim.learning_rate=1e-3`); those apply last.

Every config file declares its defaults (`defaults(c)`), `PRESETS` and
`VARIANTS` and calls `build(...)`: base schema first, then the paper's
defaults, then the preset, then the variants, then seed/fold/runlocal. The
parsed pieces are recorded in the config (`config.preset`, `config.variant`,
`config.arg`) and so in every results file.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import ml_collections

RUNLOCAL_STEPS = 8


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Filled in by `build` from the reference: which preset and variants made this config.
  c.arg = ''
  c.preset = ''
  c.variant = ''
  c.paper = ''  # '000' .. '004'

  # --- Input: a TFDS dataset, built by an explicit step before training ------
  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'synthetic_av/default'
  c.dataset.data_dir = '~/tensorflow_datasets'
  c.dataset.manual_dir = ''
  c.dataset.train_split = 'train'
  c.dataset.val_split = 'validation'
  c.dataset.test_split = 'test'  # '' for none; a run then ends on validation metrics
  c.dataset.num_classes = 6
  # Augmented copies (pitch shift, time stretch, noise on the waveform) of every
  # training example, built into a variant of the builder config (audio builders).
  c.dataset.train_augment_copies = 0
  # Build on Apache Beam ('DirectRunner' here, 'DataflowRunner' / 'FlinkRunner' /
  # 'SparkRunner' on a cluster; needs `pip install -e .[beam]`); '' builds with a
  # local process pool. Options as 'key=value,key=value'.
  c.dataset.beam_runner = ''
  c.dataset.beam_options = ''
  # k-fold cross-validation over speaker/actor/session groups; num_folds=0 keeps
  # the builder's splits. See data_pipelines/folds.py.
  c.dataset.fold = ml_collections.ConfigDict({
      'num_folds': 0, 'index': 0, 'group_key': '', 'source_splits': 'all',
      'val_groups': -1, 'val_key': ''})

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 32  # global, across all devices and processes
  c.input.eval_batch_size = 64
  c.input.shuffle_buffer = 4096
  # Per-example input shapes for init, benchmarks and profiling without data.
  # Presets that read a dataset take them from its builder config
  # (`input_shapes.from_builder`), so the two can never disagree.
  c.input.example_shapes = ml_collections.ConfigDict()
  # Per-utterance z-normalisation of audio features ('utterance'), at training and
  # evaluation alike; 'none' keeps the builder's features.
  c.input.audio_norm = 'none'
  # Training-time augmentation (stateless, seeded; never at evaluation); the keys
  # are described in data_pipelines.input_pipeline.AUGMENT_KEYS.
  c.input.augment = ml_collections.ConfigDict({
      'video_hflip': False, 'video_crop_pad': 0, 'video_brightness': 0.0,
      'video_contrast': 0.0, 'video_rotate': 0.0, 'audio_noise_std': 0.0,
      'audio_time_mask': 0, 'audio_time_masks': 1, 'audio_freq_mask': 0,
      'audio_freq_masks': 1, 'mixup_alpha': 0.0})

  # Modalities hidden at train and test time: '' (fused), 'audio' or 'video'
  # (unimodal baselines), comma-separated for several.
  c.mask_modalities = ''
  # Evaluation-time corruption of every evaluator (robustness, paper 003 Table V),
  # never applied in training. See mer_jax/corruption.py.
  c.corrupt = ml_collections.ConfigDict({'modality': '', 'rate': 0.0, 'kind': 'random',
                                         'seed': 0})

  # --- Model ---------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = ''
  # Compute precision: 'float32', or 'bfloat16' compute with float32 parameters,
  # optimiser state, softmaxes, normalisation statistics and loss (GPUs, TPUs).
  c.model.dtype = 'float32'
  # Recompute the frame encoder's activations in the backward pass (less memory).
  c.model.remat = False
  # Pretrained initialisation, applied right after init (mer_jax/pretrained.py has
  # every field): kind '' (none), 'torchvision_resnet18' (paper 001), 'efficientface'
  # (papers 002/003, with model.frame_arch='efficientface') or 'workdir' (a trained
  # run; paper 004 lists its face and audio runs in `sources`).
  tuple_or_none = ml_collections.config_dict.placeholder(tuple)
  c.model_init = ml_collections.ConfigDict({
      'kind': '', 'path': '', 'target': '', 'checkpoint': 'best', 'strict': True,
      'exclude': tuple_or_none, 'source_scopes': ml_collections.config_dict.placeholder(tuple),
      'target_scopes': ml_collections.config_dict.placeholder(tuple), 'sources': ()})

  # --- Loss ----------------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.0
  # Train on the dataset's label distribution (votes, intensities) instead of the
  # hard label. The papers use hard labels.
  c.loss.soft_labels = False

  # --- Optimiser -----------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = 'adam'  # adam | adamw | sgd
  c.optim.learning_rate = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.momentum = 0.9  # sgd
  c.optim.nesterov = False  # sgd
  c.optim.weight_decay = 0.0  # decoupled for adamw; an L2 gradient term for adam/sgd
  c.optim.grad_clip_norm = 0.0
  c.optim.lr_multipliers = ''  # 'module=factor,...': per top-level module, e.g. a new head
  c.optim.schedule = 'constant'  # constant | cosine | step
  c.optim.warmup_epochs = 0.0
  c.optim.final_lr_fraction = 0.0  # cosine: learning rate at the end / peak
  c.optim.decay_epochs = 0.0  # step: decay every this many epochs ...
  c.optim.decay_rate = 1.0  # ... by this factor ...
  c.optim.decay_start_epoch = -1.0  # ... first at this epoch (< 0: after decay_epochs)
  # > 0: keep an exponential moving average of the weights (this decay per step, ramped
  # up over the first steps as (1 + t) / (10 + t)); validation, checkpoint selection,
  # tests, inference and warm starts then use the average. 0: off.
  c.optim.ema_decay = 0.0

  # --- Training loop -------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 10
  c.train.max_steps = -1  # >0 stops earlier (smoke runs)
  c.train.log_every_steps = 20
  c.train.checkpoint_every_steps = 200  # plus the last step
  # Epoch ends save too, once this many seconds have passed since the last save (0: every
  # epoch end); a new best waits in memory for that save. Short epochs then stop paying
  # ~1 s of orbax per epoch (experiments/results/backward_profile.md).
  c.train.checkpoint_min_interval_s = 60.0
  c.train.keep_checkpoints = 2
  c.train.eval_every_epochs = 1
  c.train.early_stopping_metric = 'accuracy'  # on the validation split
  c.train.early_stopping_patience = 0  # epochs without improvement; 0 disables
  c.train.progress_bar = True

  # --- Evaluators (mer_jax/evaluators.py), run on the best checkpoint --------
  # name -> {type, split, ...}; 'val' also selects checkpoints during training.
  c.evals = ml_collections.ConfigDict({
      'val': {'type': 'classification', 'split': 'val'},
      'test': {'type': 'classification', 'split': 'test', 'per_class': True},
  })

  # --- Protocol of the preset's table (experiments/run.py) --------------------
  # folds: k of a k-fold protocol (0: the builder's splits); fold_indices: the folds a
  # table runs (() all); seeds: the seeds of every fold.
  c.protocol = ml_collections.ConfigDict({'folds': 0, 'fold_indices': (), 'seeds': (0,),
                                          'val_groups': -1, 'group_key': '', 'val_key': ''})
  # What the paper reports for this preset, where a preset targets a number.
  c.reference = ml_collections.ConfigDict({'metric': '', 'value': 0.0, 'where': ''})
  return c


@dataclasses.dataclass(frozen=True)
class ParsedArg:
  preset: str
  variants: tuple
  seed: int | None = None
  fold: int | None = None
  runlocal: bool = False


def parse_arg(arg: str, default_preset: str = 'synthetic') -> ParsedArg:
  """Parses `<preset>[+<variant>...][,key=value...][,runlocal]`."""
  arg = (arg or '').strip()
  tokens = [t.strip() for t in arg.split(',') if t.strip()] if arg else []
  preset, variants, seed, fold, runlocal = '', [], None, None, False
  for i, tok in enumerate(tokens):
    if '=' not in tok:
      if tok == 'runlocal':
        runlocal = True
      elif i == 0:
        preset, *more = tok.split('+')
        variants += [v for v in more if v]
      else:
        raise ValueError(f'config arg {arg!r}: {tok!r} is neither key=value nor runlocal')
      continue
    key, value = (s.strip() for s in tok.split('=', 1))
    if key == 'preset':
      preset, *more = value.split('+')
      variants += [v for v in more if v]
    elif key == 'variant':
      variants += [v for v in value.split('+') if v]
    elif key == 'seed':
      seed = int(value)
    elif key == 'fold':
      fold = int(value)
    elif key == 'runlocal':
      runlocal = value.lower() in ('1', 'true', 'yes')
    else:
      raise ValueError(f"config arg {arg!r}: unknown key {key!r} "
                       "(preset, variant, seed, fold, runlocal)")
  return ParsedArg(preset or default_preset, tuple(variants), seed, fold, runlocal)


def build(arg: str, *, paper: str, defaults: Callable, presets: Mapping[str, Callable],
          variants: Mapping[str, Callable] | None = None,
          default_preset: str = 'synthetic') -> ml_collections.ConfigDict:
  """Base schema -> paper defaults -> preset -> variants -> seed/fold/runlocal."""
  p = parse_arg(arg, default_preset)
  variants = variants or {}
  if p.preset not in presets:
    raise ValueError(f'unknown preset {p.preset!r}; choose from {sorted(presets)}')
  for v in p.variants:
    if v not in variants:
      raise ValueError(f'unknown variant {v!r} for preset {p.preset!r}; '
                       f'choose from {sorted(variants)}')
  c = base_config()
  c.paper = paper
  defaults(c)
  presets[p.preset](c)
  for v in p.variants:
    variants[v](c)
  c.arg = arg or ''
  c.preset = p.preset
  c.variant = '+'.join(p.variants)
  if p.seed is not None:
    c.seed = p.seed
  if p.fold is not None:
    if c.protocol.folds <= 0:
      raise ValueError(f'fold={p.fold} given but preset {p.preset!r} has no k-fold protocol')
    if not 0 <= p.fold < c.protocol.folds:
      raise ValueError(f'fold={p.fold} outside 0..{c.protocol.folds - 1}')
    c.dataset.fold.num_folds = c.protocol.folds
    c.dataset.fold.index = p.fold
    c.dataset.fold.val_groups = c.protocol.val_groups
    c.dataset.fold.val_key = c.protocol.val_key
    if c.protocol.group_key:
      c.dataset.fold.group_key = c.protocol.group_key
  if p.runlocal:
    c.train.max_steps = RUNLOCAL_STEPS
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = RUNLOCAL_STEPS
    c.train.progress_bar = False
  return c


def overrides(model: Mapping | None = None, loss: Mapping | None = None,
              **sections) -> Callable:
  """A variant that updates config sections: overrides(model={...}, loss={...})."""
  def apply(c):
    for name, values in dict(sections, model=model, loss=loss).items():
      if values:
        c[name].update(values)
  return apply


def parse_modalities(spec) -> tuple[str, ...]:
  if not spec:
    return ()
  if isinstance(spec, str):
    return tuple(s.strip() for s in spec.split(',') if s.strip())
  return tuple(spec)


def use_synthetic(c, learning_rate: float = 1e-3, num_epochs: int = 12) -> None:
  """Data, input and schedule shared by every paper's `synthetic` preset
  (the built-in `synthetic_av/default`: MFCC-20 x 100, 8 frames of 64x64)."""
  c.dataset.name = 'synthetic_av/default'
  c.dataset.num_classes = 6
  c.input.batch_size = 32
  c.input.augment.video_hflip = True
  c.input.augment.audio_noise_std = 0.3
  c.optim.optimizer = 'adamw'
  c.optim.learning_rate = learning_rate
  c.optim.weight_decay = 1e-4
  c.optim.schedule = 'cosine'
  c.optim.warmup_epochs = 1.0
  c.train.num_epochs = num_epochs
  c.train.log_every_steps = 12
  c.train.checkpoint_every_steps = 200


def use_iemocap_session5(c) -> None:
  """IEMOCAP's protocol: sessions 1-4 train, session 5 test; validation is two
  speakers carved from the training sessions (never session 5). `fold=k` runs
  leave-one-session-out fold k the same way."""
  c.protocol.update(folds=5, fold_indices=(4,), group_key='session', val_key='speaker',
                    val_groups=2)
  c.dataset.fold.update(num_folds=5, index=4, group_key='session', val_key='speaker',
                        val_groups=2)


def use_tiny(c) -> None:
  """Data, input and schedule of every paper's `tiny` preset, for tests
  (`synthetic_av/small`: 12 speakers, 4 frames of 32x32, 2 epochs)."""
  c.dataset.name = 'synthetic_av/small'
  c.dataset.num_classes = 6
  c.input.batch_size = 8
  c.input.eval_batch_size = 16
  c.input.shuffle_buffer = 256
  c.optim.learning_rate = 3e-3
  c.train.num_epochs = 2
  c.train.log_every_steps = 2
  c.train.checkpoint_every_steps = 4
  c.train.progress_bar = False


@dataclasses.dataclass(frozen=True)
class Table:
  """A paper table as presets of one config file: rows of (label, arg[, overrides]).

  `experiments.run --experiment=NAME` trains every row over the protocol of its
  preset (`config.protocol`: folds x seeds) and writes the table. `overrides` are
  `key=value` strings applied as --config.key=value (e.g. unimodal rows).
  """
  title: str
  rows: tuple
  wa: bool = False  # IEMOCAP tables lead with WA / UA, as their literature does
  robustness: bool = False  # also sweep eval-time corruption (paper 003 Table V)
  notes: str = ''

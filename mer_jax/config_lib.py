"""The config schema every paper config fills in.

`configs/<paper>.py` files call `base_config()` and override sections; this
keeps the training loop's expectations in one place.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Input: a TFDS dataset, built on the fly when its TFRecords are missing.
  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'synthetic_av/default'
  c.dataset.data_dir = '~/tensorflow_datasets'
  c.dataset.manual_dir = ''
  c.dataset.train_split = 'train'
  c.dataset.val_split = 'validation'
  c.dataset.test_split = 'test'
  c.dataset.num_classes = 6
  # k-fold cross-validation over speaker/actor/session groups; num_folds=0 keeps
  # the builder's splits. See data_pipelines/folds.py.
  c.dataset.fold = ml_collections.ConfigDict({
      'num_folds': 0, 'index': 0, 'group_key': '', 'source_splits': 'all',
      'val_groups': -1})

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 32  # global, across all devices and processes
  c.input.eval_batch_size = 64
  c.input.shuffle_buffer = 4096
  # Per-example input shapes for benchmarks and profiling without data.
  c.input.example_shapes = ml_collections.ConfigDict()
  c.input.augment = ml_collections.ConfigDict({
      'video_hflip': False, 'video_crop_pad': 0, 'video_brightness': 0.0,
      'audio_noise_std': 0.0, 'audio_time_mask': 0})

  # Modalities hidden at train and test time: '' (fused), 'audio' or 'video'
  # (unimodal baselines), comma-separated for several.
  c.mask_modalities = ''
  # Evaluation-time corruption (robustness, paper 003 Table V), never applied in
  # training: kind 'random' replaces a `rate` fraction of `modality`'s values by
  # random values, 'missing' hides the modality. See mer_jax/corruption.py.
  c.corrupt = ml_collections.ConfigDict({'modality': '', 'rate': 0.0, 'kind': 'random',
                                         'seed': 0})

  c.model = ml_collections.ConfigDict()
  c.model.name = ''

  c.loss = ml_collections.ConfigDict()
  c.loss.label_smoothing = 0.0

  c.optim = ml_collections.ConfigDict()
  c.optim.optimizer = 'adam'
  c.optim.learning_rate = 1e-3
  c.optim.schedule = 'constant'
  c.optim.warmup_epochs = 0.0
  c.optim.weight_decay = 0.0
  c.optim.momentum = 0.9
  c.optim.grad_clip_norm = 0.0
  c.optim.decay_epochs = 0.0
  c.optim.decay_rate = 1.0
  c.optim.decay_start_epoch = 0.0

  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 10
  c.train.max_steps = -1  # >0 stops earlier (smoke runs)
  c.train.log_every_steps = 20
  c.train.checkpoint_every_steps = 200  # plus one at every epoch end
  c.train.keep_checkpoints = 2
  c.train.eval_every_epochs = 1
  c.train.early_stopping_metric = 'accuracy'  # on the validation split
  c.train.early_stopping_patience = 0  # epochs without improvement; 0 disables
  c.train.progress_bar = True
  return c


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
  c.input.example_shapes = {'audio': (100, 20), 'video': (8, 64, 64, 3)}
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


def use_tiny(c) -> None:
  """Data, input and schedule of every paper's `tiny` preset, for tests
  (`synthetic_av/small`: 12 speakers, 4 frames of 32x32, 2 epochs)."""
  c.dataset.name = 'synthetic_av/small'
  c.dataset.num_classes = 6
  c.input.batch_size = 8
  c.input.eval_batch_size = 16
  c.input.example_shapes = {'audio': (100, 20), 'video': (4, 32, 32, 3)}
  c.input.shuffle_buffer = 256
  c.optim.learning_rate = 3e-3
  c.train.num_epochs = 2
  c.train.log_every_steps = 2
  c.train.checkpoint_every_steps = 4
  c.train.progress_bar = False

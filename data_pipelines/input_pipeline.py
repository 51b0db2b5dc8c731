"""tf.data pipelines from built TFRecords to batches of the batch contract.

Training: per-epoch deterministic shuffle (seeded by seed and epoch), stateless
augmentation keyed by (seed, epoch, position), batches of the per-process
batch size with the remainder dropped, and `skip_batches` to resume mid-epoch
on exactly the batches an uninterrupted run would have seen.
Audio normalisation (`audio_norm`: 'utterance' z-scores each clip over its own
steps, 'speaker' over all of its speaker's clips in the split) applies to training
and evaluation alike; augmentation (the `augment` dict, see `AUGMENT_KEYS`)
and mixup only to training.
Evaluation: every example exactly once; the last batch is padded with zero
examples whose 'valid' is 0, and every process yields the same number of
batches so multi-host evaluation stays in lock-step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Any, Iterator, Optional

import numpy as np

from mer_jax import contract as bc
from mer_jax.contract import logger as logging

_CONTRACT_KEYS = ('audio', 'video', 'text', 'physio', 'label', 'soft_label')

# Training augmentation options (config.input.augment); every one off by default.
AUGMENT_KEYS = {
    'video_hflip': 'bool: flip the clip horizontally with probability 1/2',
    'video_crop_pad': 'int: pad each side by this many pixels (symmetric), crop back at a '
                      'random offset',
    'video_brightness': 'float b: add U(-b, b) * 255 to every pixel of the clip',
    'video_contrast': 'float c: scale the clip about its mean by U(1 - c, 1 + c)',
    'video_rotate': 'float degrees d: rotate the clip by U(-d, d) degrees (reflect fill)',
    'audio_noise_std': 'float: add Gaussian noise of this std to the audio features',
    'audio_time_mask': 'int W: SpecAugment time masks of width U{0..W} (within valid steps)',
    'audio_time_masks': 'int: how many time masks (default 1 when audio_time_mask > 0)',
    'audio_freq_mask': 'int F: SpecAugment frequency masks of width U{0..F} coefficients',
    'audio_freq_masks': 'int: how many frequency masks (default 1 when audio_freq_mask > 0)',
    'mixup_alpha': 'float a > 0: mixup of whole batches with lambda ~ Beta(a, a) per batch; '
                   'adds label_b, mix_lambda (and soft_label_b) to the batch',
}
# 'speaker' z-scores by the statistics of all of the speaker's clips in the split being
# read (unlabelled audio of the test speakers is used: a transductive protocol).
AUDIO_NORMS = ('none', 'utterance', 'speaker')


def _tf():
  import tensorflow as tf
  # Keep TensorFlow off accelerators and let JAX own them.
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass
  return tf


def get_builder(dataset_cfg, build_if_missing: bool = True):
  """The TFDS builder of `dataset_cfg.name`, built first when its TFRecords are missing."""
  from data_pipelines.builders import builder_lib
  import tensorflow_datasets as tfds
  import data_pipelines.registry  # noqa: F401  (registers the builders)
  _tf()
  data_dir = os.path.expanduser(dataset_cfg.data_dir) if dataset_cfg.get('data_dir') else None
  copies = int(dataset_cfg.get('train_augment_copies', 0) or 0)
  from data_pipelines import folds
  # Folds pool every split and re-split by group, so every group gets copies
  # and folds.py drops those of the held-out groups.
  make = lambda: _make_builder(dataset_cfg.name, data_dir, copies,
                               copies_everywhere=folds.enabled(dataset_cfg))
  builder = make()
  if not builder.is_prepared():
    if not build_if_missing:
      raise FileNotFoundError(
          f'dataset {dataset_cfg.name} is not built under {builder.data_dir}')
    import jax
    if jax.process_index() == 0:
      logging.info('Building %s into %s (TFRecords missing)', dataset_cfg.name, builder.data_dir)
      manual_dir = dataset_cfg.get('manual_dir') or None
      if manual_dir:
        manual_dir = os.path.expanduser(manual_dir)
      builder.download_and_prepare(
          download_config=builder_lib.download_config(
              manual_dir, dataset_cfg.get('beam_runner', ''), dataset_cfg.get('beam_options', '')))
      builder_lib.close_pool()  # the build's workers are not needed for training
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'built {dataset_cfg.name}')
      builder = make()
  return builder


def _make_builder(name: str, data_dir, train_augment_copies: int = 0,
                  copies_everywhere: bool = False):
  """tfds.builder(name), or its variant '<config>_aug<K>' with K augmented
  copies of every training example (its own folder: the copies are built in).

  `copies_everywhere` builds '<config>_aug<K>_pooled' instead: every example
  in the builder's 'train' split (no validation/test split), for k-fold runs
  whose held-out groups drop the copies (data_pipelines/folds.py).
  """
  import dataclasses
  import tensorflow_datasets as tfds
  if not train_augment_copies:
    return tfds.builder(name, data_dir=data_dir)
  base, _, config_name = name.partition('/')
  config_name, _, version = config_name.partition(':')
  cls = tfds.builder_cls(base)
  configs = {c.name: c for c in cls.BUILDER_CONFIGS}
  config_name = config_name or cls.DEFAULT_CONFIG_NAME
  if config_name not in configs:
    raise ValueError(f'dataset {name!r}: unknown config {config_name!r}; known: {sorted(configs)}')
  config = configs[config_name]
  if not hasattr(config, 'train_augment_copies'):
    raise ValueError(f'dataset {name!r} has no train_augment_copies option (waveform '
                     'augmentation is built into the audio builders ravdess and crema_d)')
  changes = {'name': f'{config_name}_aug{train_augment_copies}',
             'train_augment_copies': int(train_augment_copies)}
  if copies_everywhere:
    changes.update(name=changes['name'] + '_pooled', val_frac=0.0, test_frac=0.0)
  variant = dataclasses.replace(config, **changes)
  return cls(config=variant, data_dir=data_dir, **({'version': version} if version else {}))


@dataclasses.dataclass
class Data:
  """A prepared dataset: the one contract between data and training.

  `splits` maps the roles 'train', 'val', 'test' to TFDS split names of
  `builder` (a fold's view when the config folds); a role whose split the
  dataset lacks is None.
  """
  builder: Any
  splits: dict
  label_names: list
  name: str
  version: str
  data_dir: str
  fingerprint: str
  fold_plan: Optional[dict] = None

  def split(self, role_or_name: str) -> str:
    """The split name of a role ('train', 'val', 'test') or a split name as given."""
    if role_or_name in self.splits:
      name = self.splits[role_or_name]
      if name is None:
        raise KeyError(f'{self.name} has no {role_or_name!r} split')
      return name
    return role_or_name

  def provenance(self) -> dict:
    return {'name': self.name, 'version': self.version, 'fingerprint': self.fingerprint,
            'data_dir': self.data_dir, 'splits': dict(self.splits)}


def _missing_splits(builder, split: str) -> list:
  missing = []
  for name in (s.split('[')[0].strip() for s in split.split('+')):
    try:
      builder.info.splits[name]
    except (KeyError, ValueError):
      missing.append(name)
  return missing


def tfrecord_fingerprint(builder) -> str:
  """sha256 over the dataset's files: names, sizes and the first and last MiB of
  each. Cheap on large datasets, and changes when a rebuild changes the records."""
  import tensorflow as tf
  h = hashlib.sha256()
  data_dir = str(builder.data_dir)
  for name in sorted(tf.io.gfile.listdir(data_dir)):
    path = os.path.join(data_dir, name)
    if tf.io.gfile.isdir(path) or name.endswith('.json') and name != 'dataset_info.json':
      continue
    size = tf.io.gfile.stat(path).length
    h.update(f'{name}:{size};'.encode())
    with tf.io.gfile.GFile(path, 'rb') as f:
      h.update(f.read(2**20))
      if size > 2**21:
        f.seek(size - 2**20)
        h.update(f.read(2**20))
  return h.hexdigest()[:16]


def prepare(dataset_cfg, build_if_missing: bool = True) -> Data:
  """Builds the dataset if needed, applies the fold, and checks every split a run
  will read before it trains: train and validation must exist; a missing test
  split is reported now, and the run then ends on its validation results."""
  from data_pipelines import folds
  builder = folds.wrap(get_builder(dataset_cfg, build_if_missing), dataset_cfg)
  splits = {'train': dataset_cfg.train_split, 'val': dataset_cfg.val_split,
            'test': dataset_cfg.get('test_split', '') or None}
  for role in ('train', 'val'):
    missing = _missing_splits(builder, splits[role])
    if missing:
      raise ValueError(
          f'{dataset_cfg.name} under {builder.data_dir} has no split {missing[0]!r} '
          f'(config.dataset.{role}_split={splits[role]!r}); splits: '
          f'{sorted(builder.info.splits.keys())}')
  if splits['test'] and _missing_splits(builder, splits['test']):
    logging.warning('%s has no split %r (config.dataset.test_split): this run will end with '
                    'validation metrics only; splits: %s', dataset_cfg.name, splits['test'],
                    sorted(builder.info.splits.keys()))
    splits['test'] = None
  features = builder.info.features
  names = list(features['label'].names) if 'label' in features and hasattr(
      features['label'], 'names') else []
  num_classes = dataset_cfg.num_classes
  if names and len(names) != num_classes:
    raise ValueError(f'config.dataset.num_classes={num_classes} but {dataset_cfg.name} '
                     f'has {len(names)} classes ({names})')
  plan = builder.fold_plan.to_dict() if hasattr(builder, 'fold_plan') else None
  return Data(builder=builder, splits=splits,
              label_names=names or [str(i) for i in range(num_classes)],
              name=dataset_cfg.name, version=str(builder.info.version),
              data_dir=str(builder.data_dir), fingerprint=tfrecord_fingerprint(builder),
              fold_plan=plan)


def num_examples(builder, split: str) -> int:
  return builder.info.splits[split].num_examples


def _process_split(split: str, process_index: int, process_count: int) -> str:
  if process_count == 1:
    return split
  import tensorflow_datasets as tfds
  return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


def _to_contract(example):
  """Keeps the contract's keys and adds 'mask' (present modalities) and 'valid'."""
  tf = _tf()
  out = {k: example[k] for k in _CONTRACT_KEYS if k in example}
  out['label'] = tf.cast(out['label'], tf.int32)
  present = [1.0 if m in example else 0.0 for m in bc.MODALITIES]
  if 'mask' in example:  # a builder can mark a modality missing per example
    out['mask'] = tf.cast(example['mask'], tf.float32)
  else:
    out['mask'] = tf.constant(present, tf.float32)
  out['valid'] = tf.constant(1.0, tf.float32)
  for m in bc.MODALITIES:  # per-time-step validity from the stored true length
    if m in out and len(out[m].shape) >= 2:
      steps = tf.shape(out[m])[0]
      if f'{m}_length' in example:
        n = tf.cast(example[f'{m}_length'], tf.int32)
        out[f'{m}_valid'] = tf.cast(tf.range(steps) < n, tf.float32)
      else:
        out[f'{m}_valid'] = tf.ones([steps], tf.float32)
  return out


def normalize_audio(example, mode: str):
  """'utterance': z-scores each audio coefficient over the example's valid steps.
  ('speaker' needs the split's statistics: see `audio_normalizer`.)"""
  if mode not in AUDIO_NORMS:
    raise ValueError(f'audio_norm must be one of {AUDIO_NORMS}, got {mode!r}')
  if mode == 'speaker':
    raise ValueError("audio_norm='speaker' needs the statistics of each speaker's clips in "
                     'the split (input_pipeline.audio_normalizer); one clip is not enough')
  if mode == 'none' or 'audio' not in example or len(example['audio'].shape) != 2:
    return example
  tf = _tf()
  out = dict(example)
  x = tf.cast(example['audio'], tf.float32)
  v = example.get('audio_valid', tf.ones([tf.shape(x)[0]], tf.float32))[:, None]
  n = tf.maximum(tf.reduce_sum(v), 1.0)
  mean = tf.reduce_sum(x * v, axis=0, keepdims=True) / n
  var = tf.reduce_sum(tf.square(x - mean) * v, axis=0, keepdims=True) / n
  # Padded steps become 0, the normalised mean; constant coefficients become 0.
  out['audio'] = (x - mean) * tf.math.rsqrt(var + 1e-6) * v
  return out


_SPEAKER_STATS: dict = {}


def speaker_audio_stats(builder, split: str):
  """(speaker ids, mean [S, F], 1/std [S, F]) of the audio coefficients over the valid
  steps of all of each speaker's examples in `split` (cached per builder and split)."""
  import json
  import tensorflow_datasets as tfds
  from data_pipelines import folds
  plan = getattr(builder, 'fold_plan', None)  # a fold's view names its groups
  key = (builder.info.full_name, str(builder.data_dir), split,
         json.dumps(plan.to_dict(), sort_keys=True, default=str) if plan is not None else '')
  if key in _SPEAKER_STATS:
    return _SPEAKER_STATS[key]
  feats = builder.info.features
  if 'speaker' not in feats or 'audio' not in feats or len(feats['audio'].shape) != 2:
    raise ValueError(f"audio_norm='speaker' needs 'speaker' and [T, F] 'audio' features; "
                     f'{builder.info.full_name} has {sorted(feats.keys())}')
  # Only what the statistics and a fold's filter read; frames stay undecoded.
  names = {'speaker', 'audio', 'audio_length', folds.COPY_KEY,
           getattr(plan, 'group_key', None), getattr(plan, 'val_key', None)}
  wanted = {k: True for k in names if k and k in feats}
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders=tfds.decode.PartialDecoding(wanted))
  acc = {}
  for ex in tfds.as_numpy(ds):
    x = ex['audio'].astype(np.float64)
    if 'audio_length' in ex:
      x = x[:int(ex['audio_length'])]
    spk = ex['speaker'].item() if hasattr(ex['speaker'], 'item') else ex['speaker']
    n, s1, s2 = acc.get(spk, (0, 0.0, 0.0))
    acc[spk] = (n + x.shape[0], s1 + x.sum(0), s2 + np.square(x).sum(0))
  if not acc:
    raise ValueError(f'split {split!r} of {builder.info.full_name} has no examples')
  ids = sorted(acc)
  mean = np.stack([acc[i][1] / max(acc[i][0], 1) for i in ids])
  var = np.stack([acc[i][2] / max(acc[i][0], 1) for i in ids]) - np.square(mean)
  out = (np.array(ids), mean.astype(np.float32),
         (1.0 / np.sqrt(np.maximum(var, 0.0) + 1e-6)).astype(np.float32))
  logging.info('speaker audio statistics of %s[%s]: %d speakers', builder.info.full_name,
               split, len(ids))
  _SPEAKER_STATS[key] = out
  return out


def audio_normalizer(builder, split: str, mode: str):
  """The map from a stored example to the contract's, with `mode`'s audio normalisation.
  `split` is the whole split (not one process's shard), so every process agrees."""
  if mode != 'speaker':
    if mode not in AUDIO_NORMS:
      raise ValueError(f'audio_norm must be one of {AUDIO_NORMS}, got {mode!r}')
    return lambda ex: normalize_audio(_to_contract(ex), mode)
  tf = _tf()
  ids, mean, inv_std = speaker_audio_stats(builder, split)
  ids_t, mean_t, inv_t = tf.constant(ids), tf.constant(mean), tf.constant(inv_std)

  def fn(ex):
    out = _to_contract(ex)
    match = tf.equal(ids_t, tf.cast(ex['speaker'], ids_t.dtype))
    with tf.control_dependencies([tf.debugging.assert_equal(
        tf.reduce_any(match), True, message=f'a speaker without statistics in {split!r}')]):
      i = tf.argmax(tf.cast(match, tf.int32))
    x = tf.cast(out['audio'], tf.float32)
    v = out.get('audio_valid', tf.ones([tf.shape(x)[0]], tf.float32))[:, None]
    out['audio'] = (x - mean_t[i][None]) * inv_t[i][None] * v
    return out
  return fn


def _mask_spans(seed, length, limit, width, count):
  """bool[length]: True outside `count` spans of width U{0..width} inside [0, limit)."""
  tf = _tf()
  idx = tf.range(length)
  keep = tf.ones([length], tf.bool)
  for j in range(count):
    sj = tf.random.experimental.stateless_fold_in(seed, j)
    w = tf.random.stateless_uniform([], sj, 0, width + 1, dtype=tf.int32)
    w = tf.minimum(w, limit)
    start = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(sj, 1 << 20), 0,
        tf.maximum(limit - w, 0) + 1, dtype=tf.int32)
    keep = tf.logical_and(keep, tf.logical_or(idx < start, idx >= start + w))
  return keep


def _rotate(video, radians):
  """Rotates every frame of f32[T, H, W, C] by `radians` about the centre."""
  tf = _tf()
  h = tf.cast(tf.shape(video)[1], tf.float32)
  w = tf.cast(tf.shape(video)[2], tf.float32)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  c, s = tf.cos(radians), tf.sin(radians)
  # Output pixel (x, y) samples the input at R^-1 (x - cx, y - cy) + centre.
  transform = tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0])
  transforms = tf.tile(transform[None], [tf.shape(video)[0], 1])
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=video, transforms=transforms, output_shape=tf.shape(video)[1:3],
      fill_value=0.0, interpolation='BILINEAR', fill_mode='REFLECT')


def _augment(example, seed, aug):
  """Stateless augmentation; `seed` is an int64[2] tensor unique per example."""
  tf = _tf()
  unknown = set(aug) - set(AUGMENT_KEYS)
  if unknown:
    raise ValueError(f'unknown augment options {sorted(unknown)}; known: {sorted(AUGMENT_KEYS)}')
  out = dict(example)
  s = lambda i: tf.random.experimental.stateless_fold_in(seed, i)
  if 'video' in out and out['video'].dtype == tf.uint8:
    video = tf.cast(out['video'], tf.float32)
    if aug.get('video_hflip', False):
      flip = tf.random.stateless_uniform([], s(1)) < 0.5
      video = tf.cond(flip, lambda: tf.reverse(video, axis=[2]), lambda: video)
    pad = int(aug.get('video_crop_pad', 0))
    if pad:
      t, h, w, c = video.shape
      padded = tf.pad(video, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode='SYMMETRIC')
      off = tf.random.stateless_uniform([2], s(2), 0, 2 * pad + 1, dtype=tf.int32)
      video = tf.slice(padded, [0, off[0], off[1], 0], [t, h, w, c])
    degrees = float(aug.get('video_rotate', 0.0))
    if degrees:
      angle = tf.random.stateless_uniform([], s(7), -degrees, degrees) * (math.pi / 180.0)
      video = _rotate(video, angle)
    bright = float(aug.get('video_brightness', 0.0))
    if bright:
      video = video + tf.random.stateless_uniform([], s(3), -bright, bright) * 255.0
    contrast = float(aug.get('video_contrast', 0.0))
    if contrast:
      factor = tf.random.stateless_uniform([], s(8), 1.0 - contrast, 1.0 + contrast)
      mean = tf.reduce_mean(video)
      video = (video - mean) * factor + mean
    out['video'] = tf.cast(tf.clip_by_value(tf.round(video), 0, 255), tf.uint8)
  if 'audio' in out:
    audio = out['audio']
    noise = float(aug.get('audio_noise_std', 0.0))
    if noise:
      audio = audio + tf.random.stateless_normal(tf.shape(audio), s(4)) * noise
    width = int(aug.get('audio_time_mask', 0))
    if width:
      t = tf.shape(audio)[0]
      limit = t
      if 'audio_valid' in out:  # mask speech, not padding
        limit = tf.cast(tf.reduce_sum(out['audio_valid']), tf.int32)
      keep = _mask_spans(s(5), t, limit, width, int(aug.get('audio_time_masks', 1)))
      audio = audio * tf.cast(keep, audio.dtype)[:, None]
    fwidth = int(aug.get('audio_freq_mask', 0))
    if fwidth and len(audio.shape) == 2:
      f = tf.shape(audio)[1]
      keep = _mask_spans(s(6), f, f, fwidth, int(aug.get('audio_freq_masks', 1)))
      audio = audio * tf.cast(keep, audio.dtype)[None, :]
    out['audio'] = audio
  return out


def _beta(seed, alpha: float):
  """One stateless draw of Beta(alpha, alpha) as G1 / (G1 + G2)."""
  tf = _tf()
  g = tf.random.stateless_gamma([2], seed, alpha=alpha)
  total = g[0] + g[1]
  return tf.where(total > 0, g[0] / tf.maximum(total, 1e-30), 0.5)


def _mixup(batch, seed, alpha: float):
  """Mixes the batch with a permutation of itself: x = lam x + (1 - lam) x[perm].

  Adds 'label_b' (and 'soft_label_b'), the permuted targets, and 'mix_lambda'
  f32[B] (lam repeated so the batch shards like every other key); the loss
  is lam CE(label) + (1 - lam) CE(label_b). Masks of mixed modalities are
  the union of both examples' masks.
  """
  tf = _tf()
  lam = _beta(tf.random.experimental.stateless_fold_in(seed, 100), alpha)
  b = tf.shape(batch['label'])[0]
  perm = tf.argsort(tf.random.stateless_uniform(
      [b], tf.random.experimental.stateless_fold_in(seed, 101)))
  out = dict(batch)
  for k, x in batch.items():
    if k in bc.MODALITIES and (x.dtype.is_floating or x.dtype == tf.uint8):
      xf = tf.cast(x, tf.float32)
      mixed = lam * xf + (1.0 - lam) * tf.gather(xf, perm)
      out[k] = tf.cast(tf.round(mixed), x.dtype) if x.dtype == tf.uint8 else \
          tf.cast(mixed, x.dtype)
    elif k == 'mask' or k.endswith('_valid'):
      out[k] = tf.maximum(x, tf.gather(x, perm))
  out['label_b'] = tf.gather(batch['label'], perm)
  if 'soft_label' in batch:
    out['soft_label_b'] = tf.gather(batch['soft_label'], perm)
  out['mix_lambda'] = tf.fill([b], tf.cast(lam, tf.float32))
  return out


def train_dataset(builder, split: str, batch_size: int, *, seed: int, epoch: int,
                  skip_batches: int = 0, augment=None, shuffle_buffer: int = 4096,
                  process_index: int = 0, process_count: int = 1,
                  audio_norm: str = 'none'):
  """One epoch of training batches for this process (remainder dropped).

  augment: dict of AUGMENT_KEYS options (None: no augmentation).
  audio_norm: one of AUDIO_NORMS (must match the evaluation's).
  """
  tf = _tf()
  aug = dict(augment or {})
  unknown = set(aug) - set(AUGMENT_KEYS)
  if unknown:
    raise ValueError(f'unknown augment options {sorted(unknown)}; known: {sorted(AUGMENT_KEYS)}')
  to_contract = audio_normalizer(builder, split, audio_norm)
  split = _process_split(split, process_index, process_count)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  epoch_seed = int(np.random.SeedSequence([seed, epoch, process_index]).generate_state(1)[0])
  ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  ds = ds.map(to_contract, num_parallel_calls=tf.data.AUTOTUNE)
  mixup_alpha = float(aug.pop('mixup_alpha', 0.0) or 0.0)
  if aug:
    ds = ds.enumerate().map(
        lambda i, ex: _augment(ex, tf.stack([tf.constant(epoch_seed, tf.int64), i]), aug),
        num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  if mixup_alpha:
    # Keyed by the batch index before `skip`, so a resumed epoch mixes alike.
    ds = ds.enumerate().map(
        lambda i, b: _mixup(b, tf.stack([tf.constant(epoch_seed, tf.int64), i]), mixup_alpha),
        num_parallel_calls=tf.data.AUTOTUNE)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(builder, split: str, global_batch_size: int) -> int:
  n = num_examples(builder, split)
  steps = n // global_batch_size
  if steps == 0:
    raise ValueError(f'split {split!r} has {n} examples, fewer than one batch of '
                     f'{global_batch_size}')
  return steps


def eval_dataset(builder, split: str, batch_size: int, *, process_index: int = 0,
                 process_count: int = 1, audio_norm: str = 'none'):
  """(dataset, num_batches): every example once, padded with valid=0 examples.

  Never augmented; `audio_norm` as in training.
  """
  tf = _tf()
  total = num_examples(builder, split)
  per_process_max = math.ceil(total / process_count)
  num_batches = max(math.ceil(per_process_max / batch_size), 1)
  to_contract = audio_normalizer(builder, split, audio_norm)
  local_split = _process_split(split, process_index, process_count)
  local_n = num_examples(builder, local_split)
  ds = builder.as_dataset(split=local_split, shuffle_files=False)
  ds = ds.map(to_contract, num_parallel_calls=tf.data.AUTOTUNE)
  pad = num_batches * batch_size - local_n
  if pad:
    zero = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(zero).repeat(pad))
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE), num_batches


def as_numpy(ds) -> Iterator[dict]:
  import tensorflow_datasets as tfds
  return iter(tfds.as_numpy(ds))

"""tf.data pipelines from built TFRecords to batches of the batch contract.

Training: per-epoch deterministic shuffle (seeded by seed and epoch), stateless
augmentation keyed by (seed, epoch, position), batches of the per-process
batch size with the remainder dropped, and `skip_batches` to resume mid-epoch
on exactly the batches an uninterrupted run would have seen.
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
  import tensorflow_datasets as tfds
  import data_pipelines.registry  # noqa: F401  (registers the builders)
  _tf()
  data_dir = os.path.expanduser(dataset_cfg.data_dir) if dataset_cfg.get('data_dir') else None
  builder = tfds.builder(dataset_cfg.name, data_dir=data_dir)
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
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'built {dataset_cfg.name}')
      builder = tfds.builder(dataset_cfg.name, data_dir=data_dir)
  return builder


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


def _augment(example, seed, aug):
  """Stateless augmentation; `seed` is an int64[2] tensor unique per example."""
  tf = _tf()
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
    bright = float(aug.get('video_brightness', 0.0))
    if bright:
      video = video + tf.random.stateless_uniform([], s(3), -bright, bright) * 255.0
    out['video'] = tf.cast(tf.clip_by_value(tf.round(video), 0, 255), tf.uint8)
  if 'audio' in out:
    audio = out['audio']
    noise = float(aug.get('audio_noise_std', 0.0))
    if noise:
      audio = audio + tf.random.stateless_normal(tf.shape(audio), s(4)) * noise
    width = int(aug.get('audio_time_mask', 0))
    if width:
      t = tf.shape(audio)[0]
      w = tf.random.stateless_uniform([], s(5), 0, width + 1, dtype=tf.int32)
      start = tf.random.stateless_uniform([], s(6), 0, tf.maximum(t - w, 1), dtype=tf.int32)
      idx = tf.range(t)
      keep = tf.logical_or(idx < start, idx >= start + w)
      audio = audio * tf.cast(keep, audio.dtype)[:, None]
    out['audio'] = audio
  return out


def train_dataset(builder, split: str, batch_size: int, *, seed: int, epoch: int,
                  skip_batches: int = 0, augment=None, shuffle_buffer: int = 4096,
                  process_index: int = 0, process_count: int = 1):
  """One epoch of training batches for this process (remainder dropped)."""
  tf = _tf()
  split = _process_split(split, process_index, process_count)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  epoch_seed = int(np.random.SeedSequence([seed, epoch, process_index]).generate_state(1)[0])
  ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  ds = ds.map(_to_contract, num_parallel_calls=tf.data.AUTOTUNE)
  if augment:
    aug = dict(augment)
    ds = ds.enumerate().map(
        lambda i, ex: _augment(ex, tf.stack([tf.constant(epoch_seed, tf.int64), i]), aug),
        num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
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
                 process_count: int = 1):
  """(dataset, num_batches): every example once, padded with valid=0 examples."""
  tf = _tf()
  total = num_examples(builder, split)
  per_process_max = math.ceil(total / process_count)
  num_batches = max(math.ceil(per_process_max / batch_size), 1)
  local_split = _process_split(split, process_index, process_count)
  local_n = num_examples(builder, local_split)
  ds = builder.as_dataset(split=local_split, shuffle_files=False)
  ds = ds.map(_to_contract, num_parallel_calls=tf.data.AUTOTUNE)
  pad = num_batches * batch_size - local_n
  if pad:
    zero = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(zero).repeat(pad))
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE), num_batches


def as_numpy(ds) -> Iterator[dict]:
  import tensorflow_datasets as tfds
  return iter(tfds.as_numpy(ds))

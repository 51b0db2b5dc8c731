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

from mer_jax.contract import logger as logging
import math
import os
from typing import Iterator

import numpy as np

from mer_jax import contract as bc

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

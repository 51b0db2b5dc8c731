"""tf.data pipelines: exact evaluation with padding, deterministic resumable training order."""

import numpy as np
import pytest

from configs import avt_ca as avt_ca_config
from data_pipelines import input_pipeline
from mer_jax import contract as bc


@pytest.fixture(scope='module')
def builder(tiny_data_dir):
  cfg = avt_ca_config.get_config('tiny')
  cfg.dataset.data_dir = tiny_data_dir
  return input_pipeline.get_builder(cfg.dataset, build_if_missing=False)


def _direct_labels(builder, split):
  return np.array([int(ex['label']) for ex in input_pipeline.as_numpy(
      builder.as_dataset(split=split, shuffle_files=False))])


@pytest.mark.parametrize('batch_size', [5, 7, 64])
def test_eval_counts_every_example_once(builder, batch_size):
  split = 'validation'
  n = input_pipeline.num_examples(builder, split)
  assert n % 5 and n % 7, 'the split size must not divide the test batch sizes'
  ds, num_batches = input_pipeline.eval_dataset(builder, split, batch_size)
  batches = list(input_pipeline.as_numpy(ds))
  assert len(batches) == num_batches == -(-n // batch_size)
  valid = np.concatenate([b['valid'] for b in batches])
  labels = np.concatenate([b['label'] for b in batches])
  assert valid.sum() == n
  assert np.all(valid[:n] == 1) and np.all(valid[n:] == 0)
  np.testing.assert_array_equal(np.sort(labels[valid > 0]), np.sort(_direct_labels(builder, split)))


def test_eval_split_across_processes_covers_split(builder):
  n = input_pipeline.num_examples(builder, 'test')
  counts, lengths = 0, set()
  for p in range(3):
    ds, nb = input_pipeline.eval_dataset(builder, 'test', 4, process_index=p, process_count=3)
    batches = list(input_pipeline.as_numpy(ds))
    lengths.add(len(batches))
    counts += sum(b['valid'].sum() for b in batches)
  assert counts == n
  assert len(lengths) == 1  # processes stay in lock-step


def test_batch_contract(builder):
  ds = input_pipeline.train_dataset(builder, 'train', 4, seed=0, epoch=0)
  batch = next(input_pipeline.as_numpy(ds))
  assert batch['audio'].dtype == np.float32 and batch['audio'].shape == (4, 100, 20)
  assert batch['video'].dtype == np.uint8 and batch['video'].shape == (4, 4, 32, 32, 3)
  assert batch['label'].dtype == np.int32
  np.testing.assert_array_equal(batch['mask'], bc.presence_mask(['audio', 'video'], 4))
  assert set(batch) == {'audio', 'video', 'label', 'mask', 'valid', 'audio_valid', 'video_valid'}
  # synthetic_av stores no lengths: every time step is real
  assert batch['audio_valid'].shape == (4, 100) and batch['audio_valid'].min() == 1.0
  assert batch['video_valid'].shape == (4, 4)


def test_train_order_is_seeded_and_resumable(builder):
  aug = {'video_hflip': True, 'video_crop_pad': 2, 'audio_noise_std': 0.1, 'audio_time_mask': 5}
  run = lambda **kw: list(input_pipeline.as_numpy(input_pipeline.train_dataset(
      builder, 'train', 8, augment=aug, **kw)))
  a = run(seed=1, epoch=0)
  b = run(seed=1, epoch=0)
  c = run(seed=1, epoch=1)
  resumed = run(seed=1, epoch=0, skip_batches=3)
  n = input_pipeline.num_examples(builder, 'train')
  assert len(a) == n // 8  # the remainder is dropped
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert not np.array_equal(a[0]['label'], c[0]['label']) or not np.array_equal(
      a[0]['audio'], c[0]['audio'])
  assert len(resumed) == len(a) - 3
  for x, y in zip(a[3:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])

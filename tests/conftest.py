"""Shared fixtures: the tiny synthetic dataset, built once per test session,
and the real sample files in ../shared/data (tests skip where it is absent)."""

from __future__ import annotations

import fcntl
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / 'shared' / 'data'


def pytest_configure(config):
  # In-process runs of the same config compile the same steps: share them through
  # JAX's persistent cache (as the subprocess runs do).
  import jax
  cache = pathlib.Path(os.environ.get('TMPDIR', '/tmp')) / f'mer_jax_test_jax_cache_{os.getuid()}'
  jax.config.update('jax_compilation_cache_dir', str(cache))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory):
  """TFDS data_dir holding `synthetic_av/small` (12 speakers, 4 frames of 32x32),
  built once and shared by the pytest-xdist workers."""
  from mer_jax.contract import quiet_libraries
  from data_pipelines import input_pipeline
  from configs import avt_ca
  quiet_libraries()
  base = tmp_path_factory.getbasetemp()
  if os.environ.get('PYTEST_XDIST_WORKER'):
    base = base.parent  # the workers' common temporary folder
  data_dir = os.environ.get('MER_JAX_TEST_DATA_DIR') or str(base / 'tfds_shared')
  cfg = avt_ca.get_config('tiny')
  cfg.dataset.data_dir = data_dir
  with open(base / 'tfds_shared.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one worker builds; the others wait, then read it
    input_pipeline.get_builder(cfg.dataset)
  return data_dir


@pytest.fixture(scope='session')
def shared_data():
  """Path of the real dataset samples; skips the test when they are not here."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'real sample data not found at {SHARED_DATA} (only present on the '
                'development machine; see data_pipelines README for the official layouts)')
  return SHARED_DATA

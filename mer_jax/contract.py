"""The leaf both packages import: the batch contract, the project's logger and two
process-wide helpers (library log levels, returning freed memory).

The batch contract between input pipelines and models.

A batch is a dict of arrays with a leading batch axis B:

  'audio'  f32[B, Ta, Fa]          audio features (MFCC, log-mel, ...)
  'video'  u8[B, Tv, H, W, 3]      frames (faces), or f32 pre-extracted features [B, Tv, Fv]
  'text'   f32[B, Tt, Ft]          word features, where a dataset has them
  'physio' f32[B, Tp, Fp]          physiological windows (EEG, ...), where present
  'label'  i32[B]                  class index
  'mask'   f32[B, len(MODALITIES)] 1 where the modality is present, in MODALITIES order
  'valid'  f32[B]                  1 for real examples, 0 for evaluation padding
  'soft_label' f32[B, C]           optional label distribution (vote-based datasets); the
                                   loss uses it only with config.loss.soft_labels
  '<modality>_valid' f32[B, T]     per-time-step validity of a sequential modality: 1 for a
                                   real step, 0 for padding (short utterances, frames without
                                   a face, padded words). Builders store the number of real
                                   steps as the int feature '<modality>_length'; the input
                                   pipeline turns it into this mask (all ones without it).

Modalities a dataset lacks are absent from the dict and 0 in 'mask', never faked.
"""

from __future__ import annotations

import logging as _logging
import sys
from typing import Iterable

import jax.numpy as jnp
import numpy as np

MODALITIES = ('audio', 'video', 'text', 'physio')


def modality_index(name: str) -> int:
  try:
    return MODALITIES.index(name)
  except ValueError:
    raise ValueError(f'unknown modality {name!r}; known: {MODALITIES}') from None


def modality_mask(batch, name: str):
  """f32[B]: 1 where `name` is present; all ones when the batch has no 'mask'."""
  if 'mask' in batch:
    return batch['mask'][:, modality_index(name)].astype(jnp.float32)
  return jnp.ones((batch['label'].shape[0],), jnp.float32) if name in batch else \
      jnp.zeros((batch['label'].shape[0],), jnp.float32)


def time_valid(batch, name: str):
  """f32[B, T]: the per-step validity of modality `name` (all ones when not given)."""
  key = f'{name}_valid'
  if key in batch:
    return batch[key].astype(jnp.float32)
  x = batch[name]
  return jnp.ones(x.shape[:2], jnp.float32)


def presence_mask(batch_keys: Iterable[str], batch_size: int) -> np.ndarray:
  """Mask with 1 for every modality the dataset provides."""
  keys = set(batch_keys)
  row = np.array([1.0 if m in keys else 0.0 for m in MODALITIES], np.float32)
  return np.tile(row, (batch_size, 1))


def mask_modalities(batch, names: Iterable[str]):
  """Hides the named modalities: zero inputs and zero mask columns.

  Used for unimodal baselines and missing-modality tests, at train and test time.
  Works on numpy and jax arrays (inside jit).
  """
  names = [n for n in names if n]
  if not names:
    return batch
  batch = dict(batch)
  mask = batch['mask']
  for name in names:
    idx = modality_index(name)
    if name in batch:
      batch[name] = jnp.zeros_like(batch[name])
    mask = mask.at[:, idx].set(0.0) if hasattr(mask, 'at') else _np_set(mask, idx)
  batch['mask'] = mask
  return batch


def _np_set(mask, idx):
  mask = np.array(mask)
  mask[:, idx] = 0.0
  return mask


# The project's logger: progress lines at INFO, libraries' chatter kept at WARNING.
logger = _logging.getLogger('mer_jax')
if not logger.handlers:
  _handler = _logging.StreamHandler(sys.stderr)
  _handler.setFormatter(_logging.Formatter('%(asctime)s %(levelname).1s %(message)s', '%H:%M:%S'))
  logger.addHandler(_handler)
  logger.setLevel(_logging.INFO)
  logger.propagate = False


def release_freed_memory() -> bool:
  """Hands memory that glibc's allocator keeps but no longer uses back to the system.

  Compiling a large step frees hundreds of MiB of XLA working memory into malloc's
  arenas, where it would stay resident for the rest of the process (AVT-CA at paper
  shapes: 0.6 GiB). Call it after a compilation. False where glibc is absent.
  """
  try:
    import ctypes
    return bool(ctypes.CDLL('libc.so.6').malloc_trim(0))
  except (OSError, AttributeError):
    return False


def quiet_libraries():
  """absl-logging libraries (orbax, TFDS) log every checkpoint at INFO; keep warnings only."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  _logging.getLogger('absl').setLevel(_logging.WARNING)

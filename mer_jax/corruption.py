"""Evaluation-time corruption of one modality, for robustness sweeps.

ATTSF-Net (paper 003, Table V) reports accuracy when 10 ... 90 % of one
modality's values are replaced by random values. The paper does not say which
distribution the random values follow; here they match the scale of the data
they replace, so that only the information is destroyed, not the range:
  - u8 frames: uniform integers in [0, 255];
  - f32 features: normal with the per-example mean and standard deviation of
    that modality.
Which values are replaced is drawn element-wise with probability `rate` from a
fixed key, so a sweep is deterministic: every evaluation of the same split at
the same rate sees the same corruption (the pattern is a function of the
position inside the batch, and batches come in a fixed order).

kind='missing' hides the modality instead (zero input, mask 0), as the
missing-modality rows of a robustness table need, without retraining.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mer_jax import contract as bc


def settings(corrupt_cfg) -> dict:
  """Plain dict of a config's `corrupt` section ({} when off)."""
  if corrupt_cfg is None:
    return {}
  d = corrupt_cfg.to_dict() if hasattr(corrupt_cfg, 'to_dict') else dict(corrupt_cfg)
  if not d.get('modality'):
    return {}
  if d.get('kind', 'random') == 'random' and float(d.get('rate', 0.0)) <= 0.0:
    return {}
  return d


def corrupt_batch(batch: dict, modality: str, rate: float = 0.0, kind: str = 'random',
                  seed: int = 0) -> dict:
  """Returns `batch` with `modality` corrupted; usable inside jit (all args static)."""
  if not modality:
    return batch
  if kind == 'missing':
    return bc.mask_modalities(batch, (modality,))
  if kind != 'random':
    raise ValueError(f"corrupt.kind must be 'random' or 'missing', got {kind!r}")
  if modality not in batch:
    return batch  # nothing to corrupt: the dataset lacks the modality
  x = batch[modality]
  key = jax.random.fold_in(jax.random.PRNGKey(seed), bc.modality_index(modality))
  k_where, k_value = jax.random.split(key)
  replace = jax.random.uniform(k_where, x.shape) < rate
  if x.dtype == jnp.uint8:
    noise = jax.random.randint(k_value, x.shape, 0, 256, dtype=jnp.int32).astype(jnp.uint8)
  else:
    axes = tuple(range(1, x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    std = jnp.std(x, axis=axes, keepdims=True)
    noise = (mean + std * jax.random.normal(k_value, x.shape)).astype(x.dtype)
  batch = dict(batch)
  batch[modality] = jnp.where(replace, noise, x)
  return batch


def apply(batch: dict, corrupt_cfg) -> dict:
  """Applies the `config.corrupt` section (a no-op when it is off)."""
  s = settings(corrupt_cfg)
  if not s:
    return batch
  return corrupt_batch(batch, s['modality'], float(s.get('rate', 0.0)),
                       s.get('kind', 'random'), int(s.get('seed', 0)))

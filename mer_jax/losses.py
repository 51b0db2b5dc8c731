"""Losses shared by the paper modules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def weighted_mean(values, weights):
  """Mean of `values` over examples with weight > 0 (padding has weight 0)."""
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def cross_entropy(logits, batch, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy against 'soft_label' if present, else 'label'."""
  num_classes = logits.shape[-1]
  if 'soft_label' in batch:
    targets = batch['soft_label'].astype(jnp.float32)
  else:
    targets = jax.nn.one_hot(batch['label'], num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def classification_loss(outputs, batch, loss_config):
  """Cross-entropy on outputs['logits']; the default loss of every model."""
  smoothing = loss_config.get('label_smoothing', 0.0) if loss_config else 0.0
  weights = batch.get('valid', jnp.ones_like(batch['label'], jnp.float32))
  ce = weighted_mean(cross_entropy(outputs['logits'], batch, smoothing), weights)
  return ce, {'ce': ce}


def _valid(batch):
  return batch.get('valid', jnp.ones_like(batch['label'], jnp.float32))


def _cfg(loss_config, name, default):
  return loss_config.get(name, default) if loss_config else default


def auxiliary_ce(outputs, batch, key: str, modality: str, smoothing: float = 0.0):
  """Mean CE of `outputs[key]` over valid examples where `modality` is present."""
  from mer_jax import batch_contract as bc
  weights = _valid(batch) * bc.modality_mask(batch, modality)
  return weighted_mean(cross_entropy(outputs[key], batch, smoothing), weights)


def mmt_ca_loss(outputs, batch, loss_config):
  """CE on the decision plus `unimodal_weight` x CE of each unimodal head present.

  The unimodal terms keep each branch a classifier of its own, which late and
  hybrid fusion combine; a modality missing from an example adds nothing.
  """
  smoothing = _cfg(loss_config, 'label_smoothing', 0.0)
  ce, aux = classification_loss(outputs, batch, loss_config)
  total = ce
  w = _cfg(loss_config, 'unimodal_weight', 0.0)
  for key, modality in (('audio_logits', 'audio'), ('face_logits', 'video')):
    if w and key in outputs:
      term = auxiliary_ce(outputs, batch, key, modality, smoothing)
      aux[f'ce_{modality}'] = term
      total = total + w * term
  aux['total'] = total
  return total, aux

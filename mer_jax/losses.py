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

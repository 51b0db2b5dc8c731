"""Losses shared by the paper modules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def weighted_mean(values, weights):
  """Mean of `values` over examples with weight > 0 (padding has weight 0)."""
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _targets(batch, num_classes, soft_labels, label_key='label', soft_key='soft_label'):
  if soft_labels:
    if soft_key not in batch:
      raise KeyError(f'loss.soft_labels is True but the batch has no {soft_key!r} '
                     f'(keys: {sorted(batch)}); the dataset stores no label distribution')
    return batch[soft_key].astype(jnp.float32)
  return jax.nn.one_hot(batch[label_key], num_classes)


def cross_entropy(logits, batch, label_smoothing: float = 0.0, soft_labels: bool = False):
  """Per-example softmax cross-entropy.

  Targets are one-hot 'label' (the papers' protocol), or 'soft_label' when
  `soft_labels` (vote distributions of CREMA-D / CMU-MOSEI). A mixup batch
  ('label_b', 'mix_lambda' f32[B]) gives lam*CE(label) + (1-lam)*CE(label_b),
  which equals CE against the mixed target because CE is linear in it.
  """
  num_classes = logits.shape[-1]
  targets = _targets(batch, num_classes, soft_labels)
  if 'label_b' in batch and 'mix_lambda' in batch:
    lam = batch['mix_lambda'].astype(jnp.float32)[:, None]
    targets_b = _targets(batch, num_classes, soft_labels, 'label_b', 'soft_label_b')
    targets = lam * targets + (1.0 - lam) * targets_b
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def classification_loss(outputs, batch, loss_config):
  """Cross-entropy on outputs['logits']; the default loss of every model.

  loss_config.label_smoothing (0), loss_config.soft_labels (False: hard labels).
  """
  smoothing = cfg_get(loss_config, 'label_smoothing', 0.0)
  soft = bool(cfg_get(loss_config, 'soft_labels', False))
  weights = batch.get('valid', jnp.ones_like(batch['label'], jnp.float32))
  ce = weighted_mean(cross_entropy(outputs['logits'], batch, smoothing, soft), weights)
  return ce, {'ce': ce}


def valid_weights(batch):
  return batch.get('valid', jnp.ones_like(batch['label'], jnp.float32))


def cfg_get(loss_config, name, default):
  return loss_config.get(name, default) if loss_config else default


def auxiliary_ce(outputs, batch, key: str, modality: str, smoothing: float = 0.0,
                 soft_labels: bool = False):
  """Mean CE of `outputs[key]` over valid examples where `modality` is present."""
  from mer_jax import contract as bc
  weights = valid_weights(batch) * bc.modality_mask(batch, modality)
  return weighted_mean(cross_entropy(outputs[key], batch, smoothing, soft_labels), weights)


def gaussian_kl(mu1, var1, mu2, var2, eps: float = 1e-6):
  """KL(N(mu1, diag var1) || N(mu2, diag var2)), summed over the last axis."""
  var1, var2 = var1 + eps, var2 + eps
  kl = 0.5 * (jnp.log(var2 / var1) + (var1 + (mu1 - mu2) ** 2) / var2 - 1.0)
  return kl.sum(-1)


def symmetric_gaussian_kl(mu1, var1, mu2, var2):
  return gaussian_kl(mu1, var1, mu2, var2) + gaussian_kl(mu2, var2, mu1, var1)


def gaussian_stats(x, mode: str = 'feature'):
  """Mean and variance of features x [B, D] under a Gaussian model.

  'feature': each example's D values are samples of one Gaussian -> [B, 1] stats
  (ATTSF-Net: "since these features are represented as vectors, we can compute
  their distribution"). 'batch': a diagonal Gaussian over the D dimensions with
  statistics over the batch -> [1, D].
  """
  if mode == 'feature':
    return x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  if mode == 'batch':
    return x.mean(0, keepdims=True), x.var(0, keepdims=True)
  raise ValueError(f"mode must be 'feature' or 'batch', got {mode!r}")


def kl_similarity_loss(learn, a2v, v2a, mode: str = 'feature'):
  """ATTSF-Net Eqs. 15-17: L_sim = (L_{a-l} + L_{v-l}) / 2, symmetric KLs of Gaussians.

  Returns per-example values [B] ('feature') or a broadcast scalar ('batch').
  """
  ml, vl = gaussian_stats(learn, mode)
  l_al = symmetric_gaussian_kl(ml, vl, *gaussian_stats(a2v, mode))
  l_vl = symmetric_gaussian_kl(ml, vl, *gaussian_stats(v2a, mode))
  out = 0.5 * (l_al + l_vl)
  return jnp.broadcast_to(out, (learn.shape[0],))


def info_nce(anchors, positives, weights, temperature: float = 0.1):
  """InfoNCE over cosine similarities (OF-CMAER-CAT Eqs. 15-17), one direction.

  anchors, positives: [B, d]; example n's positive is positives[n], its
  negatives every other example with weight > 0. Returns per-example losses [B].
  """
  a = anchors / (jnp.linalg.norm(anchors, axis=-1, keepdims=True) + 1e-8)
  p = positives / (jnp.linalg.norm(positives, axis=-1, keepdims=True) + 1e-8)
  sim = a @ p.T / temperature  # [B, B]
  sim = jnp.where(weights[None, :] > 0, sim, -1e9)
  return -jnp.diagonal(jax.nn.log_softmax(sim, axis=-1))


def multimodal_info_nce(pooled, mask, valid, temperature: float = 0.1):
  """Mean InfoNCE over ordered modality pairs (i, j), i != j, of pooled [B, M, d].

  An example counts for a pair when both modalities are present.
  """
  m = pooled.shape[1]
  total, pairs = 0.0, 0
  for i in range(m):
    for j in range(m):
      if i == j:
        continue
      w = valid * mask[:, i] * mask[:, j]
      total = total + weighted_mean(info_nce(pooled[:, i], pooled[:, j], w, temperature), w)
      pairs += 1
  return total / max(pairs, 1)


def weight_entropy(weights, eps: float = 1e-8):
  """R_ent = -sum_i w_i log(w_i + eps), per example (Eq. 18)."""
  return -jnp.sum(weights * jnp.log(weights + eps), axis=-1)

"""Transformer + cross-modal attention for real-time emotion recognition (paper 004).

Audio: MFCC/spectrogram frames -> Dense -> sinusoidal positional encoding ->
transformer encoder. Face: a CNN per frame -> Dense -> positional encoding ->
transformer encoder over frames; a single image is a sequence of one, so the
face branch trains on FER+ images alone. Cross-modal attention: audio queries
the face sequence and the face sequence queries audio (one transformer layer
each, `cross_layers` deep).

`head` picks what the module decides from:
  'audio'  the audio branch and its classifier only (the paper's RAVDESS model)
  'face'   the face branch and its classifier only (the paper's FER+ model)
  'fused'  both branches and `fusion`:
     'early'   feature level: cross-attended sequences, mean-pooled, concatenated,
               one classifier;
     'late'    decision level: the unimodal heads' log-probabilities combined
               with learned softmax weights over the modalities present;
     'hybrid'  both, the early and late decisions combined by learned softmax
               weights ("logistic regression and softmax-based decision layers
               integrate multiple fusion output predictions").

Choices where the paper is silent: d_model 128, 2 layers per encoder, 4 heads,
d_ff 4d, dropout 0.1, mean pooling over time, and the face CNN (3x3 conv blocks
with BN, ReLU and 2x2 max-pool; the paper names only "a CNN" over OpenCV face
crops; landmarks are a preprocessing step and not part of this module).
Config switches for the paper's ambiguous points (defaults = the paper's reading):
  head  'fused' (the combined model) | 'audio' (RAVDESS) | 'face' (FER+).
  fusion  'hybrid' ("the final decision combines fusion outputs") | 'early' | 'late'.
Audio input options (not in the paper; the defaults are its model): raw
MFCC magnitudes reach hundreds, so `audio_input_norm` standardises them
('utterance': each clip's features over its valid steps; 'batchnorm': a
learned global standardisation that keeps clip-level loudness and timbre);
`audio_conv_channels` puts Conv1D-BN-ReLU + 2x max-pool blocks before the
projection (shorter sequences, local spectral patterns); `audio_mask_time` /
`audio_mask_freq` are SpecAugment widths applied after normalisation in training;
`audio_pool='meanstd'` gives the audio classifier the standard deviation over
time beside the mean (statistics pooling); `audio_input_stats` uses the mean
and std over time of the normalised input features (the utterance statistics a
linear model does well with on a few speakers): 'concat' hands them to the audio
classifier beside the pooled sequence, 'ensemble' gives them a linear classifier
of their own (`audio_stats_logits`, with its own loss term) whose logits add to
the audio classifier's. `audio_stats_slope` adds each feature's slope over
time, `audio_stats_percentiles` the 10th/50th/90th percentiles and their range
of the features it lists (the baselines' F0 and energy functionals). The
statistics are standardised over clips by a BatchNorm first.
Parameter names of the two branches do not depend on `head`, so a face model
trained with head='face' and an audio model trained with head='audio' restore
into the fused model.

Padding: `<modality>_valid` ([B, T], 1 = real step) masks the keys of every
self- and cross-attention and the temporal mean pooling; a single image is one
real step.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mer_jax import contract as bc
from mer_jax import losses
from mer_jax.models import encoders, layers

Array = jax.Array


def _masked_mean(x: Array, valid: Array, present: Array) -> Array:
  return layers.masked_mean(x, valid) * present[:, None]


def _spec_mask(x: Array, rng, time_width: int, freq_width: int) -> Array:
  """Zeroes 2 random time spans (<= time_width) and 1 feature band (<= freq_width) per clip."""
  b, t, f = x.shape
  keys = jax.random.split(rng, 6)
  keep = jnp.ones((b, t, f), x.dtype)
  if time_width:
    idx = jnp.arange(t)[None, :]
    for k in range(2):
      w = jax.random.randint(keys[2 * k], (b, 1), 0, time_width + 1)
      s = jax.random.randint(keys[2 * k + 1], (b, 1), 0, jnp.maximum(t - w, 1))
      keep = keep * (~((idx >= s) & (idx < s + w)))[:, :, None].astype(x.dtype)
  if freq_width:
    idx = jnp.arange(f)[None, :]
    w = jax.random.randint(keys[4], (b, 1), 0, freq_width + 1)
    s = jax.random.randint(keys[5], (b, 1), 0, jnp.maximum(f - w, 1))
    keep = keep * (~((idx >= s) & (idx < s + w)))[:, None, :].astype(x.dtype)
  return x * keep


class MMTCA(nn.Module):
  num_classes: int
  head: str = 'fused'  # 'audio' | 'face' | 'fused'
  fusion: str = 'hybrid'  # 'early' | 'late' | 'hybrid' (head='fused')
  d_model: int = 128
  audio_layers: int = 2
  face_layers: int = 2
  cross_layers: int = 1
  num_heads: int = 4
  d_ff_ratio: int = 4
  dropout_rate: float = 0.1
  face_channels: Sequence[int] = (32, 64, 128)
  face_convs_per_block: int = 1
  face_stem_stride: int = 1
  head_dropout: float = 0.1
  audio_input_norm: str = 'none'  # 'none' | 'utterance' | 'batchnorm'
  audio_conv_channels: Sequence[int] = ()
  audio_mask_time: int = 0  # max width (steps) of each of 2 time masks
  audio_mask_freq: int = 0  # max width (features) of 1 feature mask
  audio_pool: str = 'mean'  # 'mean' (the paper) | 'meanstd': mean and std over valid steps
  audio_input_stats: str = 'none'  # 'none' | 'concat' | 'ensemble' (see the docstring)
  audio_stats_slope: bool = False  # + each feature's slope over time
  audio_stats_percentiles: Sequence[int] = ()  # features (may be < 0) given p10/p50/p90/range
  audio_stats_dropout: float = -1.0  # dropout on the statistics' classifier input (< 0: head_dropout)
  impl: str = 'xla'  # 'matmul': the CPU-fast im2col convolutions and max-pool of the face CNN
  remat: bool = False  # recompute the frame encoder's activations in the backward pass
  dtype: str = 'float32'  # compute dtype of the encoders; params and fusion stay float32

  def _audio(self, batch, train):
    """-> (sequence [B, T, d], valid [B, T], input statistics [B, 2F] or None)."""
    x = batch['audio'].astype(jnp.float32)
    valid = bc.time_valid(batch, 'audio')
    if self.audio_input_norm == 'utterance':
      v = valid[..., None]
      n = jnp.maximum(v.sum(1, keepdims=True), 1.0)
      mean = (x * v).sum(1, keepdims=True) / n
      std = jnp.sqrt(((x - mean) ** 2 * v).sum(1, keepdims=True) / n + 1e-5)
      x = (x - mean) / std * v
    elif self.audio_input_norm == 'batchnorm':
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='audio_input_bn')(
          x, mask=jnp.broadcast_to(valid[..., None] > 0, x.shape))
    elif self.audio_input_norm != 'none':
      raise ValueError(f"audio_input_norm must be 'none', 'utterance' or 'batchnorm', "
                       f'got {self.audio_input_norm!r}')
    stats = None
    if self.audio_input_stats not in ('none', 'concat', 'ensemble'):
      raise ValueError(f"audio_input_stats must be 'none', 'concat' or 'ensemble', "
                       f'got {self.audio_input_stats!r}')
    if self.audio_input_stats == 'none' and (self.audio_stats_slope or
                                             self.audio_stats_percentiles):
      raise ValueError("audio_stats_slope / audio_stats_percentiles need audio_input_stats "
                       "'concat' or 'ensemble'")
    if self.audio_input_stats != 'none':  # before SpecAugment: masks would bias the statistics
      parts = [layers.masked_mean(x, valid), jnp.sqrt(layers.masked_var(x, valid) + 1e-5)]
      if self.audio_stats_slope:
        parts.append(layers.masked_slope(x, valid))
      if self.audio_stats_percentiles:
        sel = x[..., jnp.asarray(self.audio_stats_percentiles)]
        p = layers.masked_percentiles(sel, valid, (10.0, 50.0, 90.0))
        parts += [p.reshape(p.shape[0], -1), p[:, 2] - p[:, 0]]
      stats = jnp.concatenate(parts, axis=-1)
      # Standardised over clips (as a linear model's inputs are): raw, the means of
      # frame-normalised features vary little between clips and a linear head barely moves.
      present = bc.modality_mask(batch, 'audio')[:, None] > 0
      stats = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='audio_stats_bn')(
          stats, mask=jnp.broadcast_to(present, stats.shape))
    if train and (self.audio_mask_time or self.audio_mask_freq):
      x = _spec_mask(x, self.make_rng('dropout'), self.audio_mask_time, self.audio_mask_freq)
    for i, c in enumerate(self.audio_conv_channels):
      x = layers.ConvBNAct(c, kernel_size=(5,), name=f'audio_conv_{i}')(
          x * valid[..., None], train, mask=valid[..., None])
      x = jnp.where(valid[..., None] > 0, x, jnp.finfo(x.dtype).min)  # padding never wins
      x = nn.max_pool(x, (2,), strides=(2,), padding='SAME')
      valid = encoders.pool_valid(valid, 2)
      x = x * valid[..., None]
    enc = encoders.SequenceTransformerEncoder(
        self.d_model, self.audio_layers, self.num_heads, self.d_ff_ratio * self.d_model,
        self.dropout_rate, name='audio_encoder')
    return enc(x, train, mask=valid), valid, stats

  def _face(self, batch, train):
    """-> (sequence [B, T, d], valid [B, T]); a single image is one valid step."""
    video = batch['video']
    if video.ndim == 3:  # pre-extracted f32 frame features [B, T, F]
      feats = video.astype(jnp.float32)
      valid = bc.time_valid(batch, 'video')
    else:
      valid = bc.time_valid(batch, 'video') if video.ndim == 5 else \
          jnp.ones((video.shape[0], 1), jnp.float32)
      video = encoders.as_frame_sequence(video)
      cnn = encoders.frame_encoder_cls(encoders.ConvFrameEncoder, self.remat)(
          self.face_channels, self.face_convs_per_block, self.d_model,
          stem_stride=self.face_stem_stride, impl=self.impl, dtype=jnp.dtype(self.dtype),
          name='face_cnn')
      feats = encoders.encode_frames(cnn, video, train).astype(jnp.float32)
    enc = encoders.SequenceTransformerEncoder(
        self.d_model, self.face_layers, self.num_heads, self.d_ff_ratio * self.d_model,
        self.dropout_rate, name='face_encoder')
    return enc(feats, train, mask=valid), valid

  def _pool_audio(self, a, valid):
    mean = layers.masked_mean(a, valid)
    if self.audio_pool == 'mean':
      return mean
    if self.audio_pool == 'meanstd':  # how much the utterance varies, not only its average
      return jnp.concatenate([mean, jnp.sqrt(layers.masked_var(a, valid) + 1e-5)], axis=-1)
    raise ValueError(f"audio_pool must be 'mean' or 'meanstd', got {self.audio_pool!r}")

  def _classify(self, x, train, name, rate=None):
    x = nn.Dropout(self.head_dropout if rate is None else rate)(x, deterministic=not train)
    return nn.Dense(self.num_classes, name=name)(x)

  @nn.compact
  def __call__(self, batch, train: bool = False):
    if self.head not in ('audio', 'face', 'fused'):
      raise ValueError(f"head must be 'audio', 'face' or 'fused', got {self.head!r}")
    if self.fusion not in ('early', 'late', 'hybrid'):
      raise ValueError(f"fusion must be 'early', 'late' or 'hybrid', got {self.fusion!r}")
    out = {}
    if self.head in ('audio', 'fused'):
      m_a = bc.modality_mask(batch, 'audio')
      a, a_valid, a_stats = self._audio(batch, train)
      a = a * m_a[:, None, None]
      pooled = self._pool_audio(a, a_valid)
      if self.audio_input_stats == 'concat':
        pooled = jnp.concatenate([pooled, a_stats * m_a[:, None]], axis=-1)
      out['audio_logits'] = self._classify(pooled, train, 'audio_classifier')
      if self.audio_input_stats == 'ensemble':
        rate = self.audio_stats_dropout if self.audio_stats_dropout >= 0 else None
        out['audio_stats_logits'] = self._classify(a_stats * m_a[:, None], train,
                                                   'audio_stats_classifier', rate)
        # Its squared weight norm, for an L2 penalty like a logistic regression's (loss.stats_l2).
        out['audio_stats_sq_norm'] = jnp.sum(
            self.variables['params']['audio_stats_classifier']['kernel'] ** 2)
        out['audio_deep_logits'] = out['audio_logits']
        out['audio_logits'] = out['audio_logits'] + out['audio_stats_logits']
    if self.head in ('face', 'fused'):
      m_v = bc.modality_mask(batch, 'video')
      v, v_valid = self._face(batch, train)
      v = v * m_v[:, None, None]
      out['face_logits'] = self._classify(layers.masked_mean(v, v_valid), train, 'face_classifier')
    if self.head == 'audio':
      out['logits'] = out['audio_logits']
      return out
    if self.head == 'face':
      out['logits'] = out['face_logits']
      return out

    decisions = []
    if self.fusion in ('early', 'hybrid'):
      d_ff = self.d_ff_ratio * self.d_model
      a_x, v_x = a, v
      for i in range(self.cross_layers):
        la = layers.TransformerLayer(self.num_heads, d_ff, self.dropout_rate,
                                     name=f'cross_audio_to_face_{i}')
        lv = layers.TransformerLayer(self.num_heads, d_ff, self.dropout_rate,
                                     name=f'cross_face_to_audio_{i}')
        a_new = la(a_x, train, context=v_x, context_mask=v_valid)
        v_new = lv(v_x, train, context=a_x, context_mask=a_valid)
        # A missing partner contributes nothing: keep the unimodal sequence.
        a_x = jnp.where(m_v[:, None, None] > 0, a_new, a_x) * m_a[:, None, None]
        v_x = jnp.where(m_a[:, None, None] > 0, v_new, v_x) * m_v[:, None, None]
      fused = jnp.concatenate([_masked_mean(a_x, a_valid, m_a), _masked_mean(v_x, v_valid, m_v)],
                              axis=-1)
      fused = nn.relu(nn.Dense(self.d_model, name='early_fusion')(fused))
      out['early_logits'] = self._classify(fused, train, 'early_classifier')
      decisions.append(jax.nn.log_softmax(out['early_logits']))
    if self.fusion in ('late', 'hybrid'):
      # Learned modality weights, renormalised over the modalities present.
      s = self.param('late_weights', nn.initializers.zeros, (2,))
      present = jnp.stack([m_a, m_v], axis=-1)  # [B, 2]
      w = jax.nn.softmax(s)[None] * present
      w = w / jnp.maximum(w.sum(-1, keepdims=True), 1e-6)
      late = (w[:, :1] * jax.nn.log_softmax(out['audio_logits'])
              + w[:, 1:] * jax.nn.log_softmax(out['face_logits']))
      self.sow('intermediates', 'late_fusion_weights', w)
      out['late_logits'] = late
      decisions.append(late)
    if len(decisions) == 1:
      out['logits'] = decisions[0]
    else:
      s = self.param('decision_weights', nn.initializers.zeros, (len(decisions),))
      w = jax.nn.softmax(s)
      out['logits'] = sum(w[i] * d for i, d in enumerate(decisions))
    return out


def loss(outputs, batch, loss_config):
  """CE on the decision plus `unimodal_weight` x CE of each unimodal head present
  (and `stats_weight` x CE of the audio statistics' classifier, if there is one, with
  `stats_l2` x its squared kernel norm, and `deep_weight` x CE of the audio sequence
  branch without it).

  The unimodal terms keep each branch a classifier of its own, which late and
  hybrid fusion combine; a modality missing from an example adds nothing.
  """
  smoothing = losses.cfg_get(loss_config, 'label_smoothing', 0.0)
  ce, aux = losses.classification_loss(outputs, batch, loss_config)
  total = ce
  if 'audio_stats_logits' in outputs:  # the statistics' classifier stays one on its own
    term = losses.auxiliary_ce(outputs, batch, 'audio_stats_logits', 'audio', smoothing,
                               losses.cfg_get(loss_config, 'soft_labels', False))
    aux['ce_audio_stats'] = term
    total = total + losses.cfg_get(loss_config, 'stats_weight', 1.0) * term
    l2 = losses.cfg_get(loss_config, 'stats_l2', 0.0)
    if l2:
      aux['stats_l2'] = l2 * outputs['audio_stats_sq_norm']
      total = total + aux['stats_l2']
    w_deep = losses.cfg_get(loss_config, 'deep_weight', 0.0)
    if w_deep:  # the sequence branch alone, so it is not left to lean on the statistics
      term = losses.auxiliary_ce(outputs, batch, 'audio_deep_logits', 'audio', smoothing,
                                 losses.cfg_get(loss_config, 'soft_labels', False))
      aux['ce_audio_deep'] = term
      total = total + w_deep * term
  w = losses.cfg_get(loss_config, 'unimodal_weight', 0.0)
  for key, modality in (('audio_logits', 'audio'), ('face_logits', 'video')):
    if w and key in outputs:
      term = losses.auxiliary_ce(outputs, batch, key, modality, smoothing,
                                 losses.cfg_get(loss_config, 'soft_labels', False))
      aux[f'ce_{modality}'] = term
      total = total + w * term
  aux['total'] = total
  return total, aux

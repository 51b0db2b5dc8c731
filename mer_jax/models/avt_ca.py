"""AVT-CA: audio-video transformer with cross-attention (paper 002).

Audio: two Conv1D(k=3) -> BN -> ReLU -> MaxPool blocks over MFCC frames.
Video: an EfficientFace-like frame encoder (conv stem, max-pool, channel x
spatial attention, local feature extractor added back, two inverted residual
blocks) applied per frame, giving a sequence.
Fusion: (1) intermediate transformer fusion: a transformer block per branch,
then audio queries video and video queries audio; (2) cross-self-attention:
o_AV + o_self per modality; (3) a final cross-attention with `ct_heads` heads;
max-pool over time per modality, add, FC.

Config switches for the paper's ambiguous points (defaults = the paper's reading):
  csa_self_attention  False. Section III-C: o~_audio = o_AV + o_self^{res,audio}
                      = o_self^{res,audio} + F_AV(o_self^audio, o_self^video): o_self is
                      the residual input (the preceding transformer block's output),
                      so the block is cross-attention + residual (then LayerNorm).
                      True reads Algorithm 1 line 19 (o_AV + o_self,audio) as an
                      extra self-attention term (parameters csa_{audio,video}_self).
  use_intermediate_transformer / it_heads, use_cross_attention / ct_heads:
                      Table V ablations (IT-1/IT-4, CT-1/CT-4).

Padding: `<modality>_valid` ([B, T], 1 = real step) masks every attention's
keys, the temporal max-pool and the audio encoder (its mask follows the
pooling: a pooled step is valid if any step in its window is).

Choices where the paper is silent: model width `d_model` (128), a learned
positional embedding on each sequence, dropout 0.1 in the transformer blocks.
The modality mask (batch['mask'] columns audio, video) zeroes a missing
modality's features and its contributions.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.models import encoders, layers
from mer_jax import contract as bc
from mer_jax import losses

Array = jax.Array


class AVTCA(nn.Module):
  num_classes: int
  d_model: int = 128
  audio_channels: Sequence[int] = (64, 128)
  frame_stem_features: int = 29
  frame_stage_features: Sequence[int] = (116, 232)
  frame_expansion: int = 2
  local_grid: int = 2
  frame_arch: str = 'compact'  # 'efficientface': the published backbone (loads its .pth)
  use_intermediate_transformer: bool = True
  it_heads: int = 4
  use_cross_attention: bool = True
  ct_heads: int = 4
  d_ff_ratio: int = 4  # FFN d_ff = 4d
  dropout_rate: float = 0.1
  head_dropout: float = 0.0
  max_len: int = 512
  impl: str = 'auto'
  # Section III-C reading of o_self (see the module docstring): False = residual only.
  csa_self_attention: bool = False
  remat: bool = False  # recompute the frame encoder's activations in the backward pass
  # > 0: the frame encoder sees this many evenly spaced frames of the clip (0: all).
  frames_encoded: int = 0
  dtype: str = 'float32'  # compute dtype ('bfloat16' halves activations); params stay float32

  @nn.compact
  def __call__(self, batch, train: bool = False):
    audio, video = batch['audio'], batch['video']
    m_a, m_v = bc.modality_mask(batch, 'audio'), bc.modality_mask(batch, 'video')
    d, d_ff = self.d_model, self.d_ff_ratio * self.d_model

    dt = jnp.dtype(self.dtype)
    a_valid = bc.time_valid(batch, 'audio')
    audio_enc = encoders.Conv1DAudioEncoder(self.audio_channels, dtype=dt, name='audio_encoder')
    a = audio_enc(audio, train, valid=a_valid)
    a_valid = encoders.pool_valid(a_valid, audio_enc.pool, len(self.audio_channels))
    a = nn.Dense(d, dtype=dt, name='audio_proj')(a)
    v_valid = bc.time_valid(batch, 'video')
    if self.frames_encoded and video.ndim == 5 and video.shape[1] > self.frames_encoded:
      # Evenly spaced over each clip's valid frames, so padding is never picked.
      last = jnp.maximum(v_valid.sum(axis=1) - 1, 0)
      idx = jnp.round(np.linspace(0, 1, self.frames_encoded)[None] * last[:, None]).astype(jnp.int32)
      video = jnp.take_along_axis(video, idx[:, :, None, None, None], axis=1)
      v_valid = jnp.take_along_axis(v_valid, idx, axis=1)
    if video.ndim == 3:
      # Pre-extracted per-frame vectors (CMU-MOSEI's FACET) [B, T, F]: the audio
      # branch's Conv1D blocks instead of the frame CNN.
      v = encoders.Conv1DAudioEncoder(self.audio_channels, dtype=dt, name='video_feature_encoder')(
          video.astype(jnp.float32), train, valid=v_valid)
      v_valid = encoders.pool_valid(v_valid, 2, len(self.audio_channels))
      v = nn.Dense(d, dtype=dt, name='video_proj')(v)
    else:
      frame_enc = encoders.EfficientFrameEncoder(
          self.frame_stem_features, self.frame_stage_features, self.frame_expansion,
          self.local_grid, d, impl=self.impl, arch=self.frame_arch, dtype=dt, remat=self.remat,
          name='frame_encoder')
      v = encoders.encode_frames(frame_enc, video, train)
    a = a + self.param('audio_pos', nn.initializers.normal(0.02), (self.max_len, d))[: a.shape[1]]
    v = v + self.param('video_pos', nn.initializers.normal(0.02), (self.max_len, d))[: v.shape[1]]
    a = a * m_a[:, None, None]
    v = v * m_v[:, None, None]

    if self.use_intermediate_transformer:
      tl = lambda name: layers.TransformerLayer(self.it_heads, d_ff, self.dropout_rate, dtype=dt,
                                                name=name)
      a = tl('it_audio_self')(a, train, context_mask=a_valid)
      v = tl('it_video_self')(v, train, context_mask=v_valid)
      # Audio queries video and video queries audio; a missing partner adds nothing.
      a_q = tl('it_audio_queries_video')(a, train, context=v, context_mask=v_valid)
      v_q = tl('it_video_queries_audio')(v, train, context=a, context_mask=a_valid)
      a = jnp.where(m_v[:, None, None] > 0, a_q, a) * m_a[:, None, None]
      v = jnp.where(m_a[:, None, None] > 0, v_q, v) * m_v[:, None, None]

    if self.use_cross_attention:
      mha = lambda h, name: layers.MultiHeadAttention(h, dropout_rate=self.dropout_rate, dtype=dt,
                                                      name=name)
      # Cross-self-attention: o~ = o_cross + o_self (the residual input).
      o_av = mha(self.ct_heads, 'csa_audio_to_video')(a, v, train, kv_mask=v_valid) * m_v[:, None, None]
      o_va = mha(self.ct_heads, 'csa_video_to_audio')(v, a, train, kv_mask=a_valid) * m_a[:, None, None]
      if self.csa_self_attention:
        o_av = o_av + mha(self.ct_heads, 'csa_audio_self')(a, a, train, kv_mask=a_valid)
        o_va = o_va + mha(self.ct_heads, 'csa_video_self')(v, v, train, kv_mask=v_valid)
      a = nn.LayerNorm(dtype=dt, name='csa_audio_ln')(a + o_av)
      v = nn.LayerNorm(dtype=dt, name='csa_video_ln')(v + o_va)
      # Final cross-attention with h heads.
      ca, w_av = mha(self.ct_heads, 'ct_audio_to_video')(a, v, train, kv_mask=v_valid,
                                                          return_weights=True)
      cv, w_va = mha(self.ct_heads, 'ct_video_to_audio')(v, a, train, kv_mask=a_valid,
                                                          return_weights=True)
      self.sow('intermediates', 'attention_audio_to_video', w_av)
      self.sow('intermediates', 'attention_video_to_audio', w_va)
      a = a + ca * m_v[:, None, None]
      v = v + cv * m_a[:, None, None]

    pooled = (layers.masked_max(a, a_valid) * m_a[:, None]
              + layers.masked_max(v, v_valid) * m_v[:, None])
    pooled = nn.Dropout(self.head_dropout)(pooled, deterministic=not train)
    logits = nn.Dense(self.num_classes, dtype=dt, name='classifier')(pooled)
    return {'logits': logits.astype(jnp.float32)}  # the loss runs in float32


# Plain cross-entropy on the logits; the paper adds no other term.
loss = losses.classification_loss

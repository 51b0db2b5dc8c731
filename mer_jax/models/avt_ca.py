"""AVT-CA: audio-video transformer with cross-attention (paper 002).

Audio: two Conv1D(k=3) -> BN -> ReLU -> MaxPool blocks over MFCC frames.
Video: an EfficientFace-like frame encoder (conv stem, max-pool, channel x
spatial attention, local feature extractor added back, two inverted residual
blocks) applied per frame, giving a sequence.
Fusion: (1) intermediate transformer fusion: a transformer block per branch,
then audio queries video and video queries audio; (2) cross-self-attention:
o_AV + o_self per modality; (3) a final cross-attention with `ct_heads` heads;
max-pool over time per modality, add, FC.

Choices where the paper is silent: model width `d_model` (128), a learned
positional embedding on each sequence, dropout 0.1 in the transformer blocks.
Table V ablations are `use_intermediate_transformer`/`it_heads` and
`use_cross_attention`/`ct_heads`. The modality mask (batch['mask'] columns
audio, video) zeroes a missing modality's features and its contributions.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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
  use_intermediate_transformer: bool = True
  it_heads: int = 4
  use_cross_attention: bool = True
  ct_heads: int = 4
  d_ff_ratio: int = 4  # FFN d_ff = 4d
  dropout_rate: float = 0.1
  head_dropout: float = 0.0
  max_len: int = 512
  impl: str = 'auto'
  remat: bool = False  # recompute the frame encoder's activations in the backward pass
  dtype: str = 'float32'  # compute dtype ('bfloat16' halves activations); params stay float32

  @nn.compact
  def __call__(self, batch, train: bool = False):
    audio, video = batch['audio'], batch['video']
    m_a, m_v = bc.modality_mask(batch, 'audio'), bc.modality_mask(batch, 'video')
    d, d_ff = self.d_model, self.d_ff_ratio * self.d_model

    dt = jnp.dtype(self.dtype)
    a = encoders.Conv1DAudioEncoder(self.audio_channels, dtype=dt, name='audio_encoder')(audio, train)
    a = nn.Dense(d, dtype=dt, name='audio_proj')(a)
    frame_enc = encoders.EfficientFrameEncoder(
        self.frame_stem_features, self.frame_stage_features, self.frame_expansion,
        self.local_grid, d, impl=self.impl, dtype=dt, remat=self.remat, name='frame_encoder')
    v = encoders.encode_frames(frame_enc, video, train)
    a = a + self.param('audio_pos', nn.initializers.normal(0.02), (self.max_len, d))[: a.shape[1]]
    v = v + self.param('video_pos', nn.initializers.normal(0.02), (self.max_len, d))[: v.shape[1]]
    a = a * m_a[:, None, None]
    v = v * m_v[:, None, None]

    if self.use_intermediate_transformer:
      tl = lambda name: layers.TransformerLayer(self.it_heads, d_ff, self.dropout_rate, dtype=dt,
                                                name=name)
      a = tl('it_audio_self')(a, train)
      v = tl('it_video_self')(v, train)
      # Audio queries video and video queries audio; a missing partner adds nothing.
      a_q = tl('it_audio_queries_video')(a, train, context=v)
      v_q = tl('it_video_queries_audio')(v, train, context=a)
      a = jnp.where(m_v[:, None, None] > 0, a_q, a) * m_a[:, None, None]
      v = jnp.where(m_a[:, None, None] > 0, v_q, v) * m_v[:, None, None]

    if self.use_cross_attention:
      mha = lambda h, name: layers.MultiHeadAttention(h, dropout_rate=self.dropout_rate, dtype=dt,
                                                      name=name)
      # Cross-self-attention: o~ = o_cross + o_self.
      o_av = mha(self.ct_heads, 'csa_audio_to_video')(a, v, train) * m_v[:, None, None]
      o_va = mha(self.ct_heads, 'csa_video_to_audio')(v, a, train) * m_a[:, None, None]
      a = nn.LayerNorm(dtype=dt, name='csa_audio_ln')(a + o_av + mha(self.ct_heads, 'csa_audio_self')(a, a, train))
      v = nn.LayerNorm(dtype=dt, name='csa_video_ln')(v + o_va + mha(self.ct_heads, 'csa_video_self')(v, v, train))
      # Final cross-attention with h heads.
      ca, w_av = mha(self.ct_heads, 'ct_audio_to_video')(a, v, train, return_weights=True)
      cv, w_va = mha(self.ct_heads, 'ct_video_to_audio')(v, a, train, return_weights=True)
      self.sow('intermediates', 'attention_audio_to_video', w_av)
      self.sow('intermediates', 'attention_video_to_audio', w_va)
      a = a + ca * m_v[:, None, None]
      v = v + cv * m_a[:, None, None]

    pooled = a.max(axis=1) * m_a[:, None] + v.max(axis=1) * m_v[:, None]
    pooled = nn.Dropout(self.head_dropout)(pooled, deterministic=not train)
    logits = nn.Dense(self.num_classes, dtype=dt, name='classifier')(pooled)
    return {'logits': logits.astype(jnp.float32)}  # the loss runs in float32


# Plain cross-entropy on the logits; the paper adds no other term.
loss = losses.classification_loss

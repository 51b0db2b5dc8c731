"""Tucker-decomposed cross-attention fusion (paper 001).

Audio: log-mel [T=256, F=128] as a one-channel image -> blocks of (Conv 3x3 ->
BN -> ReLU -> max-pool 3x3 stride 2) -> mean over the frequency axis -> Dense
to `d_model`. The paper's "60x128" sequence length depends on padding details
it does not give, so the result is interpolated in time to `t_common` (60), as
the paper does for video.
Video: ResNet-18 per frame (FC removed; ImageNet weights via `resnet_import`)
-> bidirectional GRU keeping every state -> Dense to `d_model` -> linear
interpolation in time to `t_common`.
Bidirectional cross-attention (audio->video, video->audio; `num_heads` heads),
each with a residual and LayerNorm; outputs keep [t_common, d_model].
Tucker fusion: core G[n, k, p, q] = sum_t A_T[t, k] (A_a^T a_t)[p] (A_v^T v_t)[q]
(layers.tucker_core), never forming the N x T x d x d outer product
(`tucker_naive=True` forms it, for tests and the benchmark).
Factorised bilinear pooling (what it pools is not specified): the core is
read by `fbp_dim` outputs, each a rank-`fbp_rank` trilinear form
z_o = sum_r sum_{k,p,q} G[k,p,q] U_t[k,o,r] U_a[p,o,r] U_v[q,o,r] (MFB's sum
pooling over the factor r), then MFB's power and L2 normalisation, dropout
and the classifier.

Config switches for the paper's ambiguous points (defaults = the paper's reading):
  t_common  60: both streams are interpolated to it (Section III; the audio
        CNN's own length depends on padding the paper does not give).
  fbp_dim / fbp_rank  512 / 1: what FBP pools is not specified (see above).
  tucker_naive  False; True forms the outer-product tensor (same result).

Padding: `<modality>_valid` ([B, T], 1 = real step, real steps first). The log-mel
CNN masks padded frames (see Conv2DLogMelEncoder), the bidirectional GRU runs
with each clip's length, and both streams interpolate only their real steps
to t_common, so everything after the interpolation is free of padding.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mer_jax import contract as bc
from mer_jax import losses
from mer_jax.models import encoders, layers, resnet

Array = jax.Array


class Conv2DLogMelEncoder(nn.Module):
  """[B, T, F] -> blocks of (Conv 3x3 -> BN -> ReLU -> max-pool 3x3/2) -> [B, T', C].

  `valid` [B, T] (1 = real frame): padded frames are zeroed before each conv
  (what SAME padding shows at the end of an unpadded input), kept out of
  BatchNorm's batch statistics and out of the pooling windows. The pool pads
  time by one frame on each side, whatever T is (SAME would shift its windows
  with the parity of T, so the result would depend on the amount of padding);
  pooled frame j covers frames 2j-1..2j+1 and is valid when its centre 2j is:
  ceil(n / 2) frames for n real ones, as without padding. Returns (x, valid).
  """
  channels: Sequence[int] = (64, 128)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, valid: Array):
    x = x[..., None]
    for c in self.channels:
      m = valid[:, :, None, None]
      x = layers.ConvBNAct(c, (3, 3), dtype=self.dtype)(x * m.astype(x.dtype), train, mask=m)
      x = jnp.where(m > 0, x, jnp.finfo(x.dtype).min)
      f = x.shape[2]
      f_pad = max((-(-f // 2) - 1) * 2 + 3 - f, 0)
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (f_pad // 2, f_pad - f_pad // 2)))
      valid = valid[:, ::2]
      x = jnp.where(valid[:, :, None, None] > 0, x, 0.0)
    return x.mean(axis=2), valid


class FactorizedBilinearPooling(nn.Module):
  """Tucker core [N, K, P, Q] -> [N, out_dim] by rank-R trilinear forms, sum-pooled over R."""
  out_dim: int = 512
  rank: int = 1

  @nn.compact
  def __call__(self, core: Array) -> Array:
    n, k, p, q = core.shape
    init = nn.initializers.normal(1.0)
    u_t = self.param('u_t', init, (k, self.out_dim, self.rank)) / jnp.sqrt(k)
    u_a = self.param('u_a', init, (p, self.out_dim, self.rank)) / jnp.sqrt(p)
    u_v = self.param('u_v', init, (q, self.out_dim, self.rank)) / jnp.sqrt(q)
    # Contract q, then p, then k: the largest intermediate is [N, K, P, O, R].
    x = jnp.einsum('nkpq,qor->nkpor', core, u_v)
    x = jnp.einsum('nkpor,por->nkor', x, u_a)
    z = jnp.einsum('nkor,kor->no', x, u_t)
    z = jnp.sign(z) * jnp.sqrt(jnp.abs(z) + 1e-8)  # power normalisation
    return z / (jnp.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)


class TuckerCrossAttentionFusion(nn.Module):
  num_classes: int
  d_model: int = 256
  t_common: int = 60
  audio_channels: Sequence[int] = (64, 128)
  resnet_stage_sizes: Sequence[int] = (2, 2, 2, 2)  # ResNet-18
  resnet_widths: Sequence[int] = (64, 128, 256, 512)
  gru_hidden: int = 256
  num_heads: int = 4
  rank_t: int = 30
  rank_a: int = 128
  rank_v: int = 128
  fbp_dim: int = 512
  fbp_rank: int = 1
  dropout_rate: float = 0.5
  attention_dropout: float = 0.1
  tucker_naive: bool = False
  remat: bool = False  # recompute the frame encoder's activations in the backward pass
  dtype: str = 'float32'  # compute dtype of the encoders; params and fusion stay float32
  impl: str = 'auto'  # the ResNet's convs and max-pool (layers.resolve_impl); same numbers

  @nn.compact
  def __call__(self, batch, train: bool = False):
    d = self.d_model
    m_a, m_v = bc.modality_mask(batch, 'audio'), bc.modality_mask(batch, 'video')

    dt = jnp.dtype(self.dtype)
    a, a_valid = Conv2DLogMelEncoder(self.audio_channels, dtype=dt, name='audio_cnn')(
        batch['audio'], train, bc.time_valid(batch, 'audio'))
    a = nn.Dense(d, name='audio_proj')(a.astype(jnp.float32))
    # Only the real frames are interpolated to t_common, so padding has no weight.
    a = layers.resize_time_valid(a, a_valid, self.t_common) * m_a[:, None, None]

    video = batch['video']
    if video.ndim == 5:
      frames = layers.normalize_frames(video) if video.dtype == jnp.uint8 else video
      cnn = encoders.frame_encoder_cls(resnet.ResNet, self.remat)(
          self.resnet_stage_sizes, self.resnet_widths, None, dtype=dt, impl=self.impl,
          name='resnet')
      v = encoders.encode_frames(cnn, frames, train)  # [B, T, 512]
    else:
      v = video.astype(jnp.float32)
    gru = nn.Bidirectional(nn.RNN(nn.GRUCell(self.gru_hidden)), nn.RNN(nn.GRUCell(self.gru_hidden)),
                           name='video_bigru')
    v_valid = bc.time_valid(batch, 'video')
    # seq_lengths: the backward GRU starts at each clip's last real frame.
    v = gru(v, seq_lengths=v_valid.sum(1).astype(jnp.int32))
    v = nn.Dense(d, name='video_proj')(v)
    v = layers.resize_time_valid(v, v_valid, self.t_common) * m_v[:, None, None]

    # Bidirectional cross-attention; a missing partner adds nothing.
    mha = lambda name: layers.MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout,
                                                 name=name)
    att_av, w_av = mha('audio_to_video')(a, v, train, return_weights=True)
    att_va, w_va = mha('video_to_audio')(v, a, train, return_weights=True)
    self.sow('intermediates', 'attention_audio_to_video', w_av)
    self.sow('intermediates', 'attention_video_to_audio', w_va)
    a = nn.LayerNorm(name='audio_ln')(a + att_av * m_v[:, None, None])
    v = nn.LayerNorm(name='video_ln')(v + att_va * m_a[:, None, None])

    core = layers.TuckerFusion(self.rank_t, self.rank_a, self.rank_v, naive=self.tucker_naive,
                               name='tucker')(a, v)
    z = FactorizedBilinearPooling(self.fbp_dim, self.fbp_rank, name='fbp')(core)
    z = nn.Dropout(self.dropout_rate)(z, deterministic=not train)
    return {'logits': nn.Dense(self.num_classes, name='classifier')(z)}


def with_pretrained_resnet(variables: dict, resnet_variables: dict) -> dict:
  """Returns `variables` with the frame encoder replaced by imported ResNet weights
  (from `resnet_import.load_torchvision_resnet(path, include_fc=False)`)."""
  out = {k: dict(v) for k, v in variables.items()}
  out['params']['resnet'] = resnet_variables['params']
  out.setdefault('batch_stats', {})['resnet'] = resnet_variables['batch_stats']
  return out


# Plain cross-entropy on the logits; the paper adds no other term.
loss = losses.classification_loss

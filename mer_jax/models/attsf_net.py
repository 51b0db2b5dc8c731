"""ATTSF-Net: attention-based similarity fusion network (paper 003).

Audio: MFCC [T, F] as a one-channel image -> 4 x (Conv 3x3, padding 0 -> BN ->
ReLU -> max-pool (2, 1)) with {64, 128, 256, 128} channels -> per-step vectors
-> LSTM to d. Video: EfficientFace-like frame encoder per frame -> Conv1D (k=3)
to d. Both are then brought to a common length L by linear interpolation in
time (the paper only says LSTM and Conv1D "standardise" the dimensions).

Main network: CMB x num_layers in each direction (Eqs. 3-9; the dominant stream
is the query, the other modality stays the key/value source in every layer);
SAB x num_layers: a learnable token attends to video, the result attends to
audio (Eq. 11), then MHA and FFN with LN (Eqs. 12-13). AVAM: a transformer
encoder per modality with average pooling and its own classifier (CE L_a, L_v).

Fusion (Section III-F), per branch, of the pooled main feature H_av and the
auxiliary feature H_m: 'sum' (ATTSF-Net, Eq. 19), 'l2' (ATTSF-L2, Eqs. 20-21,
weights from L2 norms), 'gat' (ATTSF-Gat: a Linear 2d -> 2 gives the two
weights; softmax-normalised here, the paper does not say). The classifier sees
the two fused branch features and the SAB token, concatenated (the paper does
not spell out the head). Eq. 19 pairs x_{v->a} with the video auxiliary x_v*:
the video-dominant branch takes the video auxiliary and the audio-dominant
branch the audio one.

The similarity loss uses the temporal means of both CMB outputs and the SAB
token; see losses.kl_similarity_loss for the Gaussian model.

Config switches for the paper's ambiguous points (defaults = the paper's reading):
  use_positional_embedding  True. Fig. 1's (+) "denotes the positional embedding";
        its form is not given: a learned [seq_len, d] table per modality
        (audio_pos, video_pos), added after alignment to L, before CMB/SAB/AVAM.
  fusion_block  'cmb' (Section III-C, Eqs. 3-9) | 'seb': Table VIII's
        "CMB -> Similarity-aware Enhancement Block [27]" (AttA-NET): a pre-LN
        cross-attention block without a residual to the query, then a residual
        GELU FFN (d_ff); audio first passes one such block over itself
        (seb_audio_self), then num_layers blocks, each shared by both directions.
  aux_encoder  'avam' (Section III-E, transformer encoders) | 'pool': Table VIII's
        "AVAM -> Temporal Pooling [27]": the auxiliary feature is the temporal
        mean of the aligned sequence, still with its own classifier and CE.
  audio_align  'lstm' | 'linear' (Table VIII: LSTM -> Linear).
  fusion  'sum' | 'l2' | 'gat' (Section III-F); use_sab, use_audio_aux,
        use_video_aux (Table VII ablations).
  scan_layers  True: the CMB/SEB and SAB stacks are one lax.scan over stacked
        weights (same numbers, each layer compiled once); False: one parameter
        group per layer (stack_layer_params converts those parameters).

Padding: `<modality>_valid` ([B, T], 1 = real step, real steps first). The audio
CNN tracks the mask through its VALID convolutions and pools (a step is valid
when all its inputs are) and keeps padding out of BatchNorm's batch
statistics; the forward LSTM's outputs at real steps never see later padding;
the video Conv1D sees zeros past the last real frame (as SAME padding does);
then only the real steps are interpolated to L, so everything after the
alignment is padding-free. The text stream masks its attention keys and mean.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mer_jax import contract as bc
from mer_jax import losses
from mer_jax.models import encoders, layers

Array = jax.Array


def _all_valid(valid: Array, window: int, stride: int) -> Array:
  """A VALID window over time is valid when all its steps are."""
  return -nn.max_pool(-valid[..., None], (window,), (stride,), padding='VALID')[..., 0]


class Conv2DAudioEncoder(nn.Module):
  """MFCC [B, T, F] -> blocks of (Conv kxk valid -> BN -> ReLU -> max-pool (2, 1)) -> [B, T', F' * C].

  `valid` [B, T] (1 = real frame) follows the time axis: a step of a VALID
  convolution or of the (2, 1) pool is valid when all its inputs are, which for
  n real frames is exactly the steps an unpadded input yields; inputs are zeroed
  first so a SAME convolution sees zeros past the end, as without padding.
  Padded steps stay out of BatchNorm's batch statistics. Returns (x, valid).
  """
  channels: Sequence[int] = (64, 128, 256, 128)
  kernel_size: int = 3
  padding: str = 'VALID'
  impl: str = 'xla'  # layers.Conv: 'matmul' takes kernel gradients as patch matmuls (CPU)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, valid: Array):
    x = x[..., None]
    k = self.kernel_size
    for c in self.channels:
      x = x * valid[:, :, None, None].astype(x.dtype)
      if self.padding == 'VALID':
        valid = _all_valid(valid, k, 1)
      x = layers.ConvBNAct(c, (k, k), padding=self.padding, impl=self.impl, dtype=self.dtype)(
          x, train, mask=valid[:, :, None, None])
      x = nn.max_pool(x, (2, 1), (2, 1))
      valid = _all_valid(valid, 2, 2)
    return x.reshape(x.shape[0], x.shape[1], -1), valid


class CrossModalBlock(nn.Module):
  """One CMB layer (Eqs. 6-9): x_q attends x_kv, then self-attention, then FFN, each with LN."""
  num_heads: int
  d_ff: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x_q, x_kv, train):
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    att, w = layers.MultiHeadAttention(self.num_heads, dropout_rate=self.dropout_rate,
                                       name='cross')(x_q, x_kv, train, return_weights=True)
    x = nn.LayerNorm()(x_q + drop(att))
    x = nn.LayerNorm()(x + drop(layers.MultiHeadAttention(
        self.num_heads, dropout_rate=self.dropout_rate, name='self')(x, x, train)))
    x = nn.LayerNorm()(x + drop(layers.FeedForward(self.d_ff, self.dropout_rate, nn.relu)(x, train)))
    return x, w


class SimilarityEnhancementBlock(nn.Module):
  """Table VIII's replacement of the CMB: AttA-NET's [27] attention block.

  Pre-LN cross-attention of x_q over x_kv with no residual to the query, then a
  residual FFN (GELU) on LN; one block serves both directions (shared weights).
  """
  num_heads: int
  d_ff: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x_q, x_kv, train):
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    att, w = layers.MultiHeadAttention(self.num_heads, dropout_rate=self.dropout_rate,
                                       name='cross')(nn.LayerNorm(name='ln_q')(x_q),
                                                     nn.LayerNorm(name='ln_kv')(x_kv), train,
                                                     return_weights=True)
    x = drop(att)
    f = layers.FeedForward(self.d_ff, self.dropout_rate, nn.gelu)(nn.LayerNorm(name='ln_ffn')(x), train)
    return x + drop(f), w


class SimilarityAdjustmentBlock(nn.Module):
  """One SAB layer (Eqs. 11-13) on a token [B, 1, d]."""
  num_heads: int
  d_ff: int
  dropout_rate: float

  @nn.compact
  def __call__(self, token, a, v, train):
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    mha = lambda name: layers.MultiHeadAttention(self.num_heads, dropout_rate=self.dropout_rate,
                                                 name=name)
    x = mha('learn_to_video')(token, v, train)
    x = nn.LayerNorm()(mha('learn_to_audio')(x, a, train))
    x = nn.LayerNorm()(x + drop(mha('self')(x, x, train)))
    return nn.LayerNorm()(x + drop(layers.FeedForward(self.d_ff, self.dropout_rate, nn.relu)(x, train)))


class _ScannedLayer(nn.Module):
  num_heads: int
  d_ff: int
  dropout_rate: float
  train: bool


class _FusionLayer(_ScannedLayer):
  """One scanned layer of fusion blocks in both directions: CMB with its own
  weights per direction (a2v, v2a), SEB with one block for both."""
  kind: str = 'cmb'

  @nn.compact
  def __call__(self, carry, a, v):
    a2v, v2a = carry
    kw = dict(num_heads=self.num_heads, d_ff=self.d_ff, dropout_rate=self.dropout_rate)
    if self.kind == 'cmb':
      blk_av, blk_va = CrossModalBlock(name='a2v', **kw), CrossModalBlock(name='v2a', **kw)
    else:
      blk_av = blk_va = SimilarityEnhancementBlock(name='block', **kw)
    a2v, w_av = blk_av(a2v, v, self.train)
    v2a, w_va = blk_va(v2a, a, self.train)
    return (a2v, v2a), (w_av, w_va)


class _SABLayer(_ScannedLayer):

  @nn.compact
  def __call__(self, token, a, v):
    return SimilarityAdjustmentBlock(self.num_heads, self.d_ff, self.dropout_rate,
                                     name='block')(token, a, v, self.train), None


def _scanned(layer_cls, length: int, name: str, **kw):
  """`length` layers as one lax.scan over stacked weights (leading axis = layer):
  XLA compiles the layer once instead of `length` times."""
  return nn.scan(layer_cls, variable_axes={'params': 0}, split_rngs={'params': True,
                                                                     'dropout': True},
                 in_axes=(nn.broadcast, nn.broadcast), length=length)(name=name, **kw)


class ATTSFNet(nn.Module):
  num_classes: int
  d_model: int = 128  # Table II "feature dimension"
  seq_len: int = 128  # Table II "sequence length" (RAVDESS 128, IEMOCAP 64)
  num_layers: int = 6  # CMB and SAB layers (RAVDESS 6, IEMOCAP 5)
  aux_layers: int = 2  # AVAM layers (RAVDESS 2, IEMOCAP 1)
  num_heads: int = 4
  d_ff: int = 256  # FFN neurons of CMB and SAB
  aux_d_ff: int = 256  # FFN neurons of AVAM (IEMOCAP 128)
  dropout_rate: float = 0.4
  audio_channels: Sequence[int] = (64, 128, 256, 128)
  audio_align: str = 'lstm'  # 'lstm' | 'linear' (Table VIII: LSTM -> Linear)
  frame_stem_features: int = 29
  frame_stage_features: Sequence[int] = (116, 232)
  frame_expansion: int = 2
  local_grid: int = 2
  frame_arch: str = 'compact'  # 'efficientface': the published backbone (loads its .pth)
  frame_dim: int = 128
  video_kernel: int = 3
  use_sab: bool = True
  use_audio_aux: bool = True
  use_video_aux: bool = True
  fusion: str = 'sum'  # 'sum' (ATTSF-Net) | 'l2' (ATTSF-L2) | 'gat' (ATTSF-Gat)
  # IEMOCAP A+V+T (Section IV-A): text features go through an AVAM-style encoder
  # and join only at the concatenation before the classifier.
  use_text: bool = False
  impl: str = 'auto'
  # Fig. 1's positional embedding (learned, one [seq_len, d] table per modality).
  use_positional_embedding: bool = True
  # Table VIII module replacements: 'cmb' | 'seb' (CMB -> similarity-aware
  # enhancement block of [27]); 'avam' | 'pool' (AVAM -> temporal pooling of [27]).
  fusion_block: str = 'cmb'
  aux_encoder: str = 'avam'
  remat: bool = False  # recompute the frame encoder's activations in the backward pass
  dtype: str = 'float32'  # compute dtype of the encoders; params and fusion stay float32
  # CMB/SEB and SAB stacks as one scan over stacked weights (cmb_layers, seb_layers,
  # sab_layers: compiles each layer once) or as separate layers (cmb_a2v_0, ...).
  scan_layers: bool = True

  def _fuse(self, main, aux, name):
    if self.fusion == 'sum':
      return main + aux
    if self.fusion == 'l2':
      # sqrt(. + eps): a zero feature (a hidden modality) must not give a NaN gradient.
      n_main = jnp.sqrt(jnp.sum(jnp.square(main), -1, keepdims=True) + 1e-12)
      n_aux = jnp.sqrt(jnp.sum(jnp.square(aux), -1, keepdims=True) + 1e-12)
      total = n_main + n_aux + 1e-6
      return (n_main / total) * main + (n_aux / total) * aux
    if self.fusion == 'gat':
      w = jax.nn.softmax(nn.Dense(2, name=name)(jnp.concatenate([aux, main], -1)), axis=-1)
      self.sow('intermediates', name + '_weights', w)
      return w[:, :1] * aux + w[:, 1:] * main
    raise ValueError(f"fusion must be 'sum', 'l2' or 'gat', got {self.fusion!r}")

  @nn.compact
  def __call__(self, batch, train: bool = False):
    d = self.d_model
    m_a, m_v = bc.modality_mask(batch, 'audio'), bc.modality_mask(batch, 'video')
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=not train)

    if self.fusion_block not in ('cmb', 'seb'):
      raise ValueError(f"fusion_block must be 'cmb' or 'seb', got {self.fusion_block!r}")
    if self.aux_encoder not in ('avam', 'pool'):
      raise ValueError(f"aux_encoder must be 'avam' or 'pool', got {self.aux_encoder!r}")

    # Audio: 2-D CNN, then LSTM (or Linear) to d, then the common length L.
    dt = jnp.dtype(self.dtype)
    # The forward LSTM's outputs at real steps never see the padding after them.
    a, a_valid = Conv2DAudioEncoder(self.audio_channels, impl=self.impl, dtype=dt,
                                      name='audio_cnn')(
        batch['audio'], train, bc.time_valid(batch, 'audio'))
    a = a.astype(jnp.float32)
    if self.audio_align == 'lstm':
      a = nn.RNN(nn.OptimizedLSTMCell(d), name='audio_lstm')(a)
    elif self.audio_align == 'linear':
      a = nn.Dense(d, name='audio_linear')(a)
    else:
      raise ValueError(f"audio_align must be 'lstm' or 'linear', got {self.audio_align!r}")
    # Only the real steps are interpolated to L: everything after is padding-free.
    a = layers.resize_time_valid(a, a_valid, self.seq_len) * m_a[:, None, None]

    # Video: per-frame encoder, then Conv1D to d, then the common length L.
    video = batch['video']
    if video.ndim == 5:
      frame_enc = encoders.EfficientFrameEncoder(
          self.frame_stem_features, self.frame_stage_features, self.frame_expansion,
          self.local_grid, self.frame_dim, impl=self.impl, arch=self.frame_arch, dtype=dt,
          remat=self.remat, name='frame_encoder')
      v = encoders.encode_frames(frame_enc, video, train).astype(jnp.float32)
    else:
      v = video.astype(jnp.float32)
    v_valid = bc.time_valid(batch, 'video')
    # Zeroed padding is what SAME padding shows past the last real frame.
    v = nn.relu(nn.Conv(d, (self.video_kernel,), padding='SAME', name='video_conv1d')(
        v * v_valid[..., None]))
    v = layers.resize_time_valid(v, v_valid, self.seq_len) * m_v[:, None, None]
    if self.use_positional_embedding:
      pos = lambda name: self.param(name, nn.initializers.normal(0.02), (self.seq_len, d))
      a = (a + pos('audio_pos')) * m_a[:, None, None]
      v = (v + pos('video_pos')) * m_v[:, None, None]
    a, v = drop(a), drop(v)

    a2v, v2a = a, v
    blk_kw = dict(num_heads=self.num_heads, d_ff=self.d_ff, dropout_rate=self.dropout_rate)
    if self.fusion_block == 'cmb':
      # CMB in both directions: a2v is audio-dominant (audio queries video).
      if self.scan_layers:
        (a2v, v2a), (w_av, w_va) = _scanned(_FusionLayer, self.num_layers, 'cmb_layers',
                                            kind='cmb', train=train, **blk_kw)((a2v, v2a), a, v)
        w_av, w_va = w_av[-1], w_va[-1]
      else:
        for i in range(self.num_layers):
          blk = lambda name: CrossModalBlock(name=name, **blk_kw)
          a2v, w_av = blk(f'cmb_a2v_{i}')(a2v, v, train)
          v2a, w_va = blk(f'cmb_v2a_{i}')(v2a, a, train)
    else:
      # AttA-NET: audio self-enhancement, then shared blocks in both directions.
      a_enh, _ = SimilarityEnhancementBlock(name='seb_audio_self', **blk_kw)(a, a, train)
      a2v = a_enh
      if self.scan_layers:
        (a2v, v2a), (w_av, w_va) = _scanned(_FusionLayer, self.num_layers, 'seb_layers',
                                            kind='seb', train=train, **blk_kw)(
                                                (a2v, v2a), a_enh, v)
        w_av, w_va = w_av[-1], w_va[-1]
      else:
        for i in range(self.num_layers):
          blk = SimilarityEnhancementBlock(name=f'seb_{i}', **blk_kw)
          a2v, w_av = blk(a2v, v, train)
          v2a, w_va = blk(v2a, a_enh, train)
    self.sow('intermediates', 'attention_audio_to_video', w_av)
    self.sow('intermediates', 'attention_video_to_audio', w_va)
    out = {}
    h_a2v = a2v.mean(axis=1)
    h_v2a = v2a.mean(axis=1)
    out['pooled_a2v'], out['pooled_v2a'] = h_a2v, h_v2a

    feats = []
    # AVAM: unimodal transformer encoders with average pooling and their own heads.
    for use, x, main, tag in ((self.use_audio_aux, a, h_a2v, 'audio'),
                              (self.use_video_aux, v, h_v2a, 'video')):
      if use:
        h = x
        if self.aux_encoder == 'avam':
          for i in range(self.aux_layers):
            h = layers.TransformerLayer(self.num_heads, self.aux_d_ff, self.dropout_rate,
                                        activation=nn.relu, name=f'avam_{tag}_{i}')(h, train)
        h = h.mean(axis=1)
        out[f'{tag}_aux_logits'] = nn.Dense(self.num_classes, name=f'avam_{tag}_classifier')(drop(h))
        main = self._fuse(main, h, f'gate_{tag}')
      feats.append(main)

    if self.use_sab:
      token = self.param('learnable_token', nn.initializers.normal(0.02), (1, 1, d))
      t = jnp.broadcast_to(token, (a.shape[0], 1, d))
      if self.scan_layers:
        t, _ = _scanned(_SABLayer, self.num_layers, 'sab_layers', train=train, **blk_kw)(t, a, v)
      else:
        for i in range(self.num_layers):
          t = SimilarityAdjustmentBlock(name=f'sab_{i}', **blk_kw)(t, a, v, train)
      out['sab_token'] = t[:, 0]
      feats.append(t[:, 0])

    if self.use_text:
      if 'text' not in batch:
        raise ValueError("use_text=True but the batch has no 'text' features")
      m_t = bc.modality_mask(batch, 'text')
      t_valid = bc.time_valid(batch, 'text')
      h = nn.Dense(d, name='text_proj')(batch['text'].astype(jnp.float32))
      for i in range(self.aux_layers):
        h = layers.TransformerLayer(self.num_heads, self.aux_d_ff, self.dropout_rate,
                                    activation=nn.relu, name=f'avam_text_{i}')(
                                        h, train, context_mask=t_valid)
      feats.append(layers.masked_mean(h, t_valid) * m_t[:, None])

    h = drop(jnp.concatenate(feats, axis=-1))
    out['logits'] = nn.Dense(self.num_classes, name='classifier')(h)
    return out


def stack_layer_params(params: dict, num_layers: int) -> dict:
  """Parameters of the unrolled layout (`scan_layers=False`: cmb_a2v_0, sab_0, ...)
  in the scanned layout (cmb_layers, seb_layers, sab_layers; layer = leading axis)."""
  out = dict(params)
  groups = {'cmb_layers': {'a2v': 'cmb_a2v_{}', 'v2a': 'cmb_v2a_{}'},
            'seb_layers': {'block': 'seb_{}'}, 'sab_layers': {'block': 'sab_{}'}}
  for group, parts in groups.items():
    if not all(f.format(i) in params for f in parts.values() for i in range(num_layers)):
      continue
    out[group] = {part: jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[
        out.pop(f.format(i)) for i in range(num_layers)]) for part, f in parts.items()}
  return out


def loss(outputs, batch, loss_config):
  """ATTSF-Net Eq. 18: L_av + lambda_a L_a + lambda_v L_v + lambda_sim L_sim."""
  smoothing = losses.cfg_get(loss_config, 'label_smoothing', 0.0)
  valid = losses.valid_weights(batch)
  l_av, aux = losses.classification_loss(outputs, batch, loss_config)
  aux = {'L_av': l_av}
  total = l_av
  for key, name, modality in (('audio_aux_logits', 'lambda_a', 'audio'),
                              ('video_aux_logits', 'lambda_v', 'video')):
    if key in outputs:
      term = losses.auxiliary_ce(outputs, batch, key, modality, smoothing,
                                 losses.cfg_get(loss_config, 'soft_labels', False))
      aux['L_' + modality[0]] = term
      total = total + losses.cfg_get(loss_config, name, 0.5) * term
  if 'sab_token' in outputs:
    both = bc.modality_mask(batch, 'audio') * bc.modality_mask(batch, 'video')
    sim = losses.kl_similarity_loss(outputs['sab_token'], outputs['pooled_a2v'], outputs['pooled_v2a'],
                             losses.cfg_get(loss_config, 'sim_stats', 'feature'))
    l_sim = losses.weighted_mean(sim, valid * both)
    aux['L_sim'] = l_sim
    total = total + losses.cfg_get(loss_config, 'lambda_sim', 0.3) * l_sim
  aux['total'] = total
  return total, aux

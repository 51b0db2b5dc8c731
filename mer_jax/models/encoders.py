"""Modality encoders shared across papers."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mer_jax.models import efficientface, layers

Array = jax.Array


class Conv1DAudioEncoder(nn.Module):
  """Blocks of Conv1D(k) -> BN -> ReLU -> MaxPool(pool) over time.

  [B, T, F] features -> [B, T / pool**len(channels), channels[-1]].
  With `valid` ([B, T], 1 = real step) padded steps are zeroed before each
  convolution (so SAME convolution sees the zeros it would see at the end of an
  unpadded sequence), kept out of BatchNorm's batch statistics and out of each
  pooling window; `pooled_valid` gives the output's mask.
  """
  channels: Sequence[int] = (64, 128)
  kernel_size: int = 3
  pool: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, valid=None) -> Array:
    for c in self.channels:
      if valid is None:
        x = layers.ConvBNAct(c, (self.kernel_size,), padding='SAME', dtype=self.dtype)(x, train)
        x = nn.max_pool(x, (self.pool,), (self.pool,), padding='SAME')
        continue
      m = valid[..., None]
      x = layers.ConvBNAct(c, (self.kernel_size,), padding='SAME', dtype=self.dtype)(
          x * m.astype(x.dtype), train, mask=m)
      x = jnp.where(m > 0, x, jnp.finfo(x.dtype).min)
      x = nn.max_pool(x, (self.pool,), (self.pool,), padding='SAME')
      valid = pool_valid(valid, self.pool)
      x = jnp.where(valid[..., None] > 0, x, 0.0)
    return x


def pool_valid(valid: Array, pool: int, times: int = 1) -> Array:
  """Mask after `times` SAME max-pools of size and stride `pool` over time.

  A pooled step is valid if any step in its window is; for prefix masks that
  is exactly the ceil(n / pool) steps an unpadded sequence of n steps yields.
  """
  for _ in range(times):
    valid = nn.max_pool(valid[..., None], (pool,), (pool,), padding='SAME')[..., 0]
  return valid


class ChannelSpatialAttention(nn.Module):
  """Channel attention sigma(FC(AvgPool)) times spatial attention softmax(Conv).

  The spatial softmax is rescaled by H*W so a uniform map leaves x unchanged.
  """
  reduction: int = 4
  impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n, h, w, c = x.shape
    pooled = x.astype(jnp.float32).mean(axis=(1, 2))
    ca = nn.Dense(max(c // self.reduction, 4), dtype=self.dtype)(pooled)
    ca = nn.sigmoid(nn.Dense(c, dtype=self.dtype)(nn.relu(ca)))  # [N, C]
    sa = layers.PointwiseConv(1, impl=self.impl, dtype=self.dtype)(x).reshape(n, h * w)
    # Softmax in float32 whatever the compute dtype.
    sa = jax.nn.softmax(sa.astype(jnp.float32), axis=-1).reshape(n, h, w, 1) * (h * w)
    return x.astype(self.dtype) * ca[:, None, None, :] * sa.astype(self.dtype)


class LocalFeatureExtractor(nn.Module):
  """Splits the map into grid x grid patches, each with its own depthwise-separable
  conv (EfficientFace's local branch), and stitches them back."""
  features: int
  grid: int = 2
  impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    n, h, w, c = x.shape
    g = self.grid
    if h % g or w % g:
      raise ValueError(f'feature map {h}x{w} not divisible into a {g}x{g} grid')
    ph, pw = h // g, w // g
    if layers.resolve_impl(self.impl) == 'matmul':
      out = self._patches_at_once(x, g, ph, pw, train)
    else:
      rows = []
      for i in range(g):
        cols = []
        for j in range(g):
          p = x[:, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw, :]
          p = layers.DepthwiseConv(3, impl=self.impl, dtype=self.dtype, name=f'dw_{i}{j}')(p)
          p = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                           name=f'bn_{i}{j}')(p)
          cols.append(nn.relu(p))
        rows.append(jnp.concatenate(cols, axis=2))
      out = jnp.concatenate(rows, axis=1)
    return layers.PointwiseBNAct(self.features, act=False, impl=self.impl,
                                 dtype=self.dtype)(out, train)

  def _patches_at_once(self, x, g, ph, pw, train):
    # All g*g patch convolutions at once in the map's own layout ([N, g, ph, g, pw, C], a
    # free reshape) through the custom-gradient grid form, then every patch's BatchNorm
    # as one broadcast op (each keeps its own variables): no transposed or stacked copy
    # of the map. Same parameters and values as the per-patch path.
    n, _, _, c = x.shape
    kernels = jnp.stack([jnp.stack([
        _DepthwiseKernel(3, c, name=f'dw_{i}{j}')()[:, :, 0] for j in range(g)], 2)
        for i in range(g)], 2).astype(self.dtype)  # [3, 3, g, g, C]
    y = layers.depthwise_conv_grid(x.astype(self.dtype).reshape(n, g, ph, g, pw, c), kernels)
    bns = [[_BatchNormVars(c, name=f'bn_{i}{j}')() for j in range(g)] for i in range(g)]
    field = lambda f: jnp.stack([jnp.stack([f(bns[i][j]) for j in range(g)]) for i in range(g)])
    if train:
      # flax's BatchNorm: float32 statistics, biased variance E[y^2] - E[y]^2 clipped at 0.
      y32 = y.astype(jnp.float32)
      mean = y32.mean(axis=(0, 2, 4))
      var = jnp.maximum(jnp.square(y32).mean(axis=(0, 2, 4)) - jnp.square(mean), 0.0)
      if not self.is_initializing():
        for i in range(g):
          for j in range(g):
            ra_mean, ra_var = bns[i][j][2], bns[i][j][3]
            ra_mean.value = 0.9 * ra_mean.value + 0.1 * mean[i, j]
            ra_var.value = 0.9 * ra_var.value + 0.1 * var[i, j]
    else:
      mean, var = field(lambda b: b[2].value), field(lambda b: b[3].value)
    mul = jax.lax.rsqrt(var + 1e-5) * field(lambda b: b[0])  # [g, g, C]
    shift = field(lambda b: b[1]) - mean * mul
    b6 = lambda a: a[None, :, None, :, None, :].astype(self.dtype)
    return nn.relu(y * b6(mul) + b6(shift)).reshape(n, g * ph, g * pw, c)


class _BatchNormVars(nn.Module):
  """nn.BatchNorm's variables (same names and initial values): scale, bias and the
  running mean and variance (as flax variables, for the caller to update)."""
  features: int

  @nn.compact
  def __call__(self):
    return _batch_norm_variables(self, self.features)


def _batch_norm_variables(module: nn.Module, features: int):
  """(scale, bias, running mean, running variance) of nn.BatchNorm, declared in `module`."""
  ra_mean = module.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32),
                            (features,))
  ra_var = module.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32),
                           (features,))
  scale = module.param('scale', nn.initializers.ones, (features,))
  bias = module.param('bias', nn.initializers.zeros, (features,))
  return scale, bias, ra_mean, ra_var


class _DepthwiseKernel(nn.Module):
  """The 'kernel' parameter of a `layers.DepthwiseConv` (same name, shape and init)."""
  kernel_size: int
  channels: int

  @nn.compact
  def __call__(self):
    k = self.kernel_size
    return self.param('kernel', layers.default_kernel_init, (k, k, 1, self.channels))


class _Kernel(nn.Module):
  """The 'kernel' of the layers.Conv it stands for."""
  shape: tuple[int, ...]

  @nn.compact
  def __call__(self) -> Array:
    return self.param('kernel', layers.default_kernel_init, self.shape)


class _BatchNormOf(nn.Module):
  """nn.BatchNorm's variables (same names and initial values) around `fn(scale, bias) ->
  (out, batch mean, batch var)`, whose statistics update the running averages."""
  features: int
  momentum: float = 0.9

  @nn.compact
  def __call__(self, fn: Callable) -> Array:
    scale, bias, ra_mean, ra_var = _batch_norm_variables(self, self.features)
    out, mean, var = fn(scale, bias)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return out


def _stem_chunked(impl: str, dtype) -> bool:
  return (layers.STEM_CHUNK > 0 and layers.resolve_impl(impl) == 'matmul'
          and jnp.dtype(dtype) == jnp.float32)


class _StemPool(nn.Module):
  """The frame encoder's stem, a 3x3/2 ConvBNAct (same parameter names), then 3x3/2 max-pool.

  Training under impl 'matmul' in float32 runs the four ops by chunks of frames
  (`layers.conv_bn_relu_maxpool`: same numbers, no full-resolution map kept)."""
  features: int
  impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    # uint8 frames are normalised here (`layers.normalize_frames`); the chunked stem does
    # it chunk by chunk, without a float copy of all frames.
    if train and _stem_chunked(self.impl, self.dtype):
      kernel = _Kernel((3, 3, x.shape[-1], self.features), name='Conv_0')()
      frames = x.dtype == jnp.uint8
      return _BatchNormOf(self.features, name='BatchNorm_0')(
          lambda scale, bias: layers.conv_bn_relu_maxpool(
              x if frames else x.astype(jnp.float32), kernel, scale, bias, stride=2,
              pool=(3, 2), eps=1e-5, chunk=layers.STEM_CHUNK,
              normalize=layers.FRAME_NORMALIZATION if frames else None))
    if x.dtype == jnp.uint8:
      x = layers.normalize_frames(x)
    x = layers.Conv(self.features, (3, 3), 2, impl=self.impl, dtype=self.dtype, name='Conv_0')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                     name='BatchNorm_0')(x)
    return layers.max_pool_2d(nn.relu(x), 3, 2, impl=self.impl)


class EfficientFrameEncoder(nn.Module):
  """Light per-frame face encoder (EfficientFace-like, as AVT-CA describes it).

  Conv stem -> MaxPool -> channel x spatial attention -> + local features ->
  two inverted residual blocks -> global average pool -> Dense(out_dim).
  arch='efficientface' is the published EfficientFace instead (models/efficientface.py,
  1024-d pooled features -> Dense 'proj'), so its pretrained .pth loads exactly; the
  other fields then do not apply.
  Input u8 or f32 [N, H, W, 3]; output [N, out_dim].
  """
  stem_features: int = 29
  stage_features: Sequence[int] = (116, 232)
  expansion: int = 2
  local_grid: int = 2
  out_dim: int = 128
  impl: str = 'auto'
  arch: str = 'compact'  # 'compact' | 'efficientface'
  dtype: Any = jnp.float32
  remat: bool = False  # recompute each block's activations in the backward pass

  @nn.compact
  def __call__(self, frames: Array, train: bool) -> Array:
    # Per-block checkpoints (explicit names keep the parameter tree): only block
    # inputs stay alive for the backward pass, one block's internals at a time.
    ck = (lambda cls, *static: nn.remat(cls, static_argnums=static)) if self.remat else (
        lambda cls, *static: cls)
    if self.arch == 'efficientface':
      x = layers.normalize_frames(frames) if frames.dtype == jnp.uint8 else frames
      x = efficientface.EfficientFace(impl=self.impl, name='backbone')(x, train)
      return nn.Dense(self.out_dim, name='proj')(x)
    if self.arch != 'compact':
      raise ValueError(f"arch must be 'compact' or 'efficientface', got {self.arch!r}")
    x = frames if frames.dtype == jnp.uint8 else frames.astype(self.dtype)
    # The chunked stem already keeps no full-resolution map: nothing to rematerialise.
    stem_cls = _StemPool if _stem_chunked(self.impl, self.dtype) else ck(_StemPool, 2)
    x = stem_cls(self.stem_features, self.impl, self.dtype, name='ConvBNAct_0')(x, train)
    att = ck(ChannelSpatialAttention)(impl=self.impl, dtype=self.dtype,
                                       name='ChannelSpatialAttention_0')(x)
    x = att + ck(LocalFeatureExtractor, 2)(self.stem_features, self.local_grid, impl=self.impl,
                                           dtype=self.dtype,
                                           name='LocalFeatureExtractor_0')(x, train)
    for i, c in enumerate(self.stage_features):
      x = ck(layers.InvertedResidual, 2)(c, strides=2, expansion=self.expansion, impl=self.impl,
                                         dtype=self.dtype, name=f'InvertedResidual_{i}')(x, train)
    x = x.astype(jnp.float32).mean(axis=(1, 2))
    return nn.Dense(self.out_dim, dtype=self.dtype)(x)


def frame_encoder_cls(cls, remat: bool):
  """`cls`, or with `remat` a version that recomputes its activations in the
  backward pass instead of keeping them (same parameters; less memory, more compute)."""
  return nn.remat(cls, static_argnums=(2,)) if remat else cls


def encode_frames(encoder: nn.Module, video: Array, train: bool) -> Array:
  """Applies a per-frame encoder to [B, T, H, W, C] -> [B, T, D]."""
  b, t = video.shape[:2]
  feats = encoder(video.reshape((b * t,) + video.shape[2:]), train)
  return feats.reshape(b, t, -1)


class SequenceTransformerEncoder(nn.Module):
  """Dense projection -> fixed sinusoidal positions -> `num_layers` transformer layers.

  [B, T, F] -> [B, T, d_model]. `mask` ([B, T], 1 = real step) hides padding.
  """
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  d_ff: int = 256
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, x: Array, train: bool, mask=None) -> Array:
    x = nn.Dense(self.d_model, name='input_proj')(x)
    x = x + layers.sinusoidal_positions(x.shape[1], self.d_model)[None].astype(x.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    for i in range(self.num_layers):
      x = layers.TransformerLayer(self.num_heads, self.d_ff, self.dropout_rate,
                                  name=f'layer_{i}')(x, train, context_mask=mask)
    return x


class ConvFrameEncoder(nn.Module):
  """Plain per-frame CNN: blocks of (3x3 ConvBNAct -> 2x2 max-pool), global pool, Dense.

  Input u8 or f32 [N, H, W, C] (C = 1 grey faces are tiled to 3 channels so
  ImageNet statistics apply); output [N, out_dim].
  """
  channels: Sequence[int] = (32, 64, 128)
  convs_per_block: int = 1
  out_dim: int = 128
  dropout_rate: float = 0.0
  stem_stride: int = 1  # 2 halves the first conv's output: ~4x cheaper on large frames
  impl: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, frames: Array, train: bool) -> Array:
    if frames.shape[-1] == 1:
      frames = jnp.repeat(frames, 3, axis=-1)
    x = layers.normalize_frames(frames) if frames.dtype == jnp.uint8 else frames
    x = x.astype(self.dtype)
    for i, c in enumerate(self.channels):
      for j in range(self.convs_per_block):
        stride = self.stem_stride if i == 0 and j == 0 else 1
        x = layers.ConvBNAct(c, (3, 3), strides=stride, impl=self.impl, dtype=self.dtype)(x, train)
      x = layers.max_pool_2d(x, 2, 2, impl=self.impl)
    x = x.astype(jnp.float32).mean(axis=(1, 2))
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    return nn.Dense(self.out_dim, dtype=self.dtype)(x)


def as_frame_sequence(video: Array) -> Array:
  """[B, H, W, C] single images become [B, 1, H, W, C]; clips pass unchanged."""
  return video[:, None] if video.ndim == 4 else video

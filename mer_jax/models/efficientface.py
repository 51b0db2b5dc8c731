"""EfficientFace (Zhao et al., AAAI 2021), laid out so that its PyTorch state_dict
maps one to one onto these parameters (`mer_jax.pretrained` does the mapping).

Structure (the torch module names in brackets):
  [conv1]      3x3 conv stride 2 (29) -> BN -> ReLU
               3x3 max-pool stride 2
  x = [modulator]([stage2](x)) + [local](x)
  [stage2..4]  ShuffleNet-V2 units, `stages_repeats` (4, 8, 4) deep, widths 116, 232,
               464; the first unit of a stage has stride 2 and two branches, the others
               transform half the channels; a 2-group channel shuffle after each unit
  [local]      the map cut into 2x2 patches, each through its own grouped 3x3 conv
               stride 2 (29 -> 116 channels, 29 groups) -> BN -> ReLU -> depthwise 3x3
               -> BN -> ReLU, stitched back (same size as stage2's output)
  [modulator]  x * sigmoid(channel gate * spatial gate); channel gate: global average
               -> FC(C/16) -> BN -> ReLU -> FC(C); spatial gate: 1x1 conv (C/16) -> BN
               -> ReLU -> 2 x (3x3 conv, dilation 4 -> BN -> ReLU) -> 1x1 conv (1)
  [conv5]      1x1 conv (1024) -> BN -> ReLU, then global average pool -> [N, 1024]
The pretraining classifier (`fc`) is not part of this module.

Strided 3x3 convs and the max-pool pad one pixel on each side as torch's
padding=1 does; XLA's SAME pads (0, 1) on even sizes, which would shift every
window by a pixel against the pretrained weights. The channel gate averages over
the whole map (torch pools an HxH window, the same on the square maps it is used on).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mer_jax.models import layers

Array = jax.Array


def _bn(train: bool, name: str) -> nn.BatchNorm:
  # torch defaults: momentum 0.1 (0.9 here), epsilon 1e-5.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


def torch_stride2(op, x: Array, fill: float = 0.0) -> Array:
  """Applies a SAME, stride-2, 3-wide `op` to NHWC `x` with torch's padding=1.

  On an odd size SAME already pads (1, 1). On an even size the axis is padded by
  one on each side first, SAME then adds (0, 1), and the extra last output is cut.
  """
  h, w = x.shape[1:3]
  pad = [(0, 0), (1, 1) if h % 2 == 0 else (0, 0), (1, 1) if w % 2 == 0 else (0, 0), (0, 0)]
  y = op(jnp.pad(x, pad, constant_values=fill))
  return y[:, : (h - 1) // 2 + 1, : (w - 1) // 2 + 1]


def channel_shuffle(a: Array, b: Array) -> Array:
  """concat([a, b]) followed by torch's 2-group shuffle: channels a0, b0, a1, b1, ..."""
  return jnp.stack([a, b], axis=-1).reshape(a.shape[:-1] + (2 * a.shape[-1],))


class ShuffleUnit(nn.Module):
  """EfficientFace's InvertedResidual (a ShuffleNet-V2 unit).

  torch branch1.{0,1,2,3} -> branch1_dw, branch1_bn, branch1_pw/{PointwiseConv_0,BatchNorm_0};
  branch2.{0,1} -> branch2_pw1/{..}, .3 -> branch2_dw, .4 -> branch2_bn, .{5,6} -> branch2_pw2/{..}.
  """
  features: int
  strides: int = 1
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    bf = self.features // 2
    dw = lambda name: layers.DepthwiseConv(3, self.strides, impl=self.impl, name=name)
    strided = (lambda op, h: torch_stride2(op, h)) if self.strides == 2 else (lambda op, h: op(h))
    if self.strides == 1:
      if x.shape[-1] != self.features:
        raise ValueError(f'stride-1 unit needs {self.features} input channels, got {x.shape[-1]}')
      keep, x2 = x[..., :bf], x[..., bf:]
    else:
      b1 = _bn(train, 'branch1_bn')(strided(dw('branch1_dw'), x))
      keep = layers.PointwiseBNAct(bf, impl=self.impl, name='branch1_pw')(b1, train)
      x2 = x
    h = layers.PointwiseBNAct(bf, impl=self.impl, name='branch2_pw1')(x2, train)
    h = _bn(train, 'branch2_bn')(strided(dw('branch2_dw'), h))
    h = layers.PointwiseBNAct(bf, impl=self.impl, name='branch2_pw2')(h, train)
    return channel_shuffle(keep, h)


class LocalFeatureExtractor(nn.Module):
  """2x2 patches, each: grouped 3x3 conv stride 2 -> BN -> ReLU -> depthwise 3x3 -> BN -> ReLU.

  Patch k (torch conv{k}_1/bn{k}_1/conv{k}_2/bn{k}_2): 1 top-left, 2 bottom-left,
  3 top-right, 4 bottom-right. The grouped conv (in -> out channels, `in` groups) is
  a depthwise conv over each input channel repeated out/in times, which orders the
  output channels as torch's groups do.
  """
  features: int
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    n, h, w, c = x.shape
    if h % 2 or w % 2:
      raise ValueError(f'local feature extractor needs an even-sized map, got {h}x{w}')
    if self.features % c:
      raise ValueError(f'{self.features} output channels are not a multiple of {c} groups')
    ph, pw = h // 2, w // 2
    corners = {1: (0, 0), 2: (1, 0), 3: (0, 1), 4: (1, 1)}  # k -> (row, column)
    out = {}
    for k, (i, j) in corners.items():
      p = jnp.repeat(x[:, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw], self.features // c, axis=-1)
      p = torch_stride2(layers.DepthwiseConv(3, 2, impl=self.impl, name=f'conv{k}_1'), p)
      p = nn.relu(_bn(train, f'bn{k}_1')(p))
      p = layers.DepthwiseConv(3, 1, impl=self.impl, name=f'conv{k}_2')(p)
      out[(i, j)] = nn.relu(_bn(train, f'bn{k}_2')(p))
    left = jnp.concatenate([out[0, 0], out[1, 0]], axis=1)
    right = jnp.concatenate([out[0, 1], out[1, 1]], axis=1)
    return jnp.concatenate([left, right], axis=2)


class Modulator(nn.Module):
  """x * sigmoid(channel gate [N, C] * spatial gate [N, H, W, 1]).

  torch channel_att.gate_c.{gate_c_fc_0, gate_c_bn_1, gate_c_fc_final} -> channel_fc_0,
  channel_bn_1, channel_fc_final; spatial_att.gate_s.gate_s_{conv_reduce0, bn_reduce0,
  conv_di_0, bn_di_0, conv_di_1, bn_di_1, conv_final} -> spatial_{same suffix}.
  """
  reduction: int = 16
  dilation: int = 4
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    c = x.shape[-1]
    r = c // self.reduction
    g = nn.Dense(r, name='channel_fc_0')(x.mean(axis=(1, 2)))
    g = nn.relu(_bn(train, 'channel_bn_1')(g))
    g = nn.Dense(c, name='channel_fc_final')(g)
    s = layers.PointwiseConv(r, use_bias=True, impl=self.impl, name='spatial_conv_reduce0')(x)
    s = nn.relu(_bn(train, 'spatial_bn_reduce0')(s))
    d = self.dilation
    for i in range(2):
      s = nn.Conv(r, (3, 3), padding=((d, d), (d, d)), kernel_dilation=d,
                  name=f'spatial_conv_di_{i}')(s)
      s = nn.relu(_bn(train, f'spatial_bn_di_{i}')(s))
    s = layers.PointwiseConv(1, use_bias=True, impl=self.impl, name='spatial_conv_final')(s)
    return x * nn.sigmoid(g[:, None, None, :] * s)


class EfficientFace(nn.Module):
  """Input f32 [N, H, W, 3] (normalised; H, W multiples of 16 for the local branch) ->
  [N, stages_out_channels[-1]] pooled features."""
  stages_repeats: Sequence[int] = (4, 8, 4)
  stages_out_channels: Sequence[int] = (29, 116, 232, 464, 1024)
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    if len(self.stages_repeats) != 3 or len(self.stages_out_channels) != 5:
      raise ValueError('EfficientFace needs 3 stage repeats and 5 channel widths, got '
                       f'{self.stages_repeats} and {self.stages_out_channels}')
    if x.shape[1] % 16 or x.shape[2] % 16:
      # The local branch (2x2 patches of the stride-4 map, each halved) must meet
      # stage2's output size, which holds for multiples of 16 (224 in the paper).
      raise ValueError(f'EfficientFace needs frame sides that are multiples of 16, '
                       f'got {x.shape[1]}x{x.shape[2]}')
    ch = self.stages_out_channels
    x = layers.ConvBNAct(ch[0], (3, 3), strides=2, padding=((1, 1), (1, 1)), name='conv1')(x, train)
    x = torch_stride2(lambda h: layers.max_pool_2d(h, 3, 2, impl=self.impl), x, fill=-jnp.inf)

    def stage(h, index):
      for i in range(self.stages_repeats[index - 2]):
        h = ShuffleUnit(ch[index - 1], 2 if i == 0 else 1, impl=self.impl,
                        name=f'stage{index}_{i}')(h, train)
      return h

    local = LocalFeatureExtractor(ch[1], impl=self.impl, name='local')(x, train)
    x = Modulator(impl=self.impl, name='modulator')(stage(x, 2), train) + local
    x = stage(stage(x, 3), 4)
    x = layers.PointwiseBNAct(ch[4], impl=self.impl, name='conv5')(x, train)
    return x.mean(axis=(1, 2))

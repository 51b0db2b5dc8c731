"""ResNet with basic blocks (ResNet-18 by default), laid out like torchvision's.

Layer names and padding follow torchvision so that `resnet_import` can load an
ImageNet state_dict: conv1 (7x7 stride 2, padding 3) -> bn1 -> ReLU -> max-pool
(3x3 stride 2, padding 1) -> layer1..layer4 of BasicBlocks (3x3 convs with
padding 1; the first block of layers 2-4 has stride 2 and a 1x1 downsample) ->
global average pool -> fc. With `num_classes=None` the fc is left out and the
512-d pooled feature is returned (the frame encoder of paper 001).
BatchNorm uses torch's epsilon (1e-5) and momentum (0.1, i.e. 0.9 here).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mer_jax.models import layers

Array = jax.Array


def _bn(train, name, dtype=jnp.float32):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name)


class BasicBlock(nn.Module):
  features: int
  strides: int = 1
  impl: str = 'xla'  # layers.Conv: 'matmul' takes kernel gradients as patch matmuls (CPU)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    pad = ((1, 1), (1, 1))
    dt, impl = self.dtype, self.impl
    y = layers.Conv(self.features, (3, 3), self.strides, pad, impl, dt, name='conv1')(x)
    y = nn.relu(_bn(train, 'bn1', dt)(y))
    y = layers.Conv(self.features, (3, 3), 1, pad, impl, dt, name='conv2')(y)
    y = _bn(train, 'bn2', dt)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = layers.Conv(self.features, (1, 1), self.strides, 'VALID', impl, dt,
                      name='downsample_conv')(x)
      x = _bn(train, 'downsample_bn', dt)(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Input f32 [N, H, W, 3] (already normalised) -> logits [N, C] or features [N, widths[-1]]."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  num_classes: Optional[int] = None
  dtype: Any = jnp.float32
  impl: str = 'xla'  # 'matmul' (CPU): see BasicBlock; also the custom-gradient max-pool

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    dt, impl = self.dtype, self.impl
    x = layers.Conv(self.widths[0], (7, 7), 2, ((3, 3), (3, 3)), impl, dt, name='conv1')(x)
    x = nn.relu(_bn(train, 'bn1', dt)(x))
    x = layers.max_pool_2d(x, 3, 2, impl, padding=((1, 1), (1, 1)))
    for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = BasicBlock(w, 2 if (j == 0 and i > 0) else 1, impl, dt,
                       name=f'layer{i + 1}_{j}')(x, train)
    x = x.astype(jnp.float32).mean(axis=(1, 2))
    if self.num_classes is not None:
      x = nn.Dense(self.num_classes, dtype=dt, name='fc')(x)
    return x


def resnet18(num_classes: Optional[int] = None) -> ResNet:
  return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes)

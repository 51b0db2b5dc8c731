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

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _bn(train, name):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    pad = ((1, 1), (1, 1))
    y = nn.Conv(self.features, (3, 3), self.strides, padding=pad, use_bias=False, name='conv1')(x)
    y = nn.relu(_bn(train, 'bn1')(y))
    y = nn.Conv(self.features, (3, 3), 1, padding=pad, use_bias=False, name='conv2')(y)
    y = _bn(train, 'bn2')(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), self.strides, padding='VALID', use_bias=False,
                  name='downsample_conv')(x)
      x = _bn(train, 'downsample_bn')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Input f32 [N, H, W, 3] (already normalised) -> logits [N, C] or features [N, widths[-1]]."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  num_classes: Optional[int] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = nn.Conv(self.widths[0], (7, 7), 2, padding=((3, 3), (3, 3)), use_bias=False,
                name='conv1')(x)
    x = nn.relu(_bn(train, 'bn1')(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n):
        x = BasicBlock(w, 2 if (j == 0 and i > 0) else 1, name=f'layer{i + 1}_{j}')(x, train)
    x = x.mean(axis=(1, 2))
    if self.num_classes is not None:
      x = nn.Dense(self.num_classes, name='fc')(x)
    return x


def resnet18(num_classes: Optional[int] = None) -> ResNet:
  return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes)

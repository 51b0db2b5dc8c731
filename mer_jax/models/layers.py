"""Shared building blocks composed by the paper modules.

Convolutions that XLA's CPU backend runs slowly (1x1 and depthwise) have two
implementations behind an `impl` switch: 'xla' uses `lax.conv_general_dilated`
(the fast path on GPU/TPU); 'matmul' writes a 1x1 conv as an einsum and a
depthwise kxk conv as k*k shifted multiply-adds, which is 4-6x faster on CPU
(PERFORMANCE_NOTES) and numerically the same (tested). Parameter shapes are
identical in both, so checkpoints move between them.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
default_kernel_init = nn.initializers.lecun_normal()


def resolve_impl(impl: str) -> str:
  """'auto' picks 'matmul' on CPU and 'xla' on accelerators."""
  if impl == 'auto':
    return 'matmul' if jax.default_backend() == 'cpu' else 'xla'
  if impl not in ('xla', 'matmul'):
    raise ValueError(f"impl must be 'auto', 'xla' or 'matmul', got {impl!r}")
  return impl


class PointwiseConv(nn.Module):
  """1x1 convolution over the last axis of an NHWC (or any [..., C]) input."""
  features: int
  use_bias: bool = True
  impl: str = 'auto'
  kernel_init: Callable = default_kernel_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(self.dtype)
    kernel = self.param('kernel', self.kernel_init, (1, 1, x.shape[-1], self.features))
    if resolve_impl(self.impl) == 'matmul' and x.ndim == 4 and (
        x.shape[1] * x.shape[2] >= POINTWISE_CHUNKED_MIN_HW):
      y = pointwise_matmul(x, kernel[0, 0].astype(x.dtype))
    elif resolve_impl(self.impl) == 'matmul' or x.ndim != 4:
      y = jnp.einsum('...c,cd->...d', x, kernel[0, 0].astype(x.dtype))
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel.astype(x.dtype), (1, 1), 'SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,)).astype(x.dtype)
    return y


# Maps at least this large (H*W) take the 1x1 kernel gradient by chunks of examples:
# 120 frames, 56x56 and 28x28 maps, backward 20-38 % faster; at 14x14 no gain
# (experiments/results/backward_profile.md, section 15).
POINTWISE_CHUNKED_MIN_HW = 28 * 28


@jax.custom_vjp
def pointwise_matmul(x: Array, w: Array) -> Array:
  """x [N, H, W, C] @ w [C, D], whose kernel gradient sums x^T g over chunks of
  examples (`_patch_kernel_grad`): over the whole batch XLA:CPU first copies x into
  the contraction's layout, a pass as long as the matmul."""
  return jnp.einsum('...c,cd->...d', x, w)


def _pointwise_matmul_fwd(x, w):
  return pointwise_matmul(x, w), (x, w)


def _pointwise_matmul_bwd(res, g):
  x, w = res
  _, h, wd, c = x.shape
  dx = jnp.einsum('...d,cd->...c', g, w)
  return dx, _patch_kernel_grad(x, g, (1, 1), (1, 1), (h, wd), w.shape, w.dtype)


pointwise_matmul.defvjp(_pointwise_matmul_fwd, _pointwise_matmul_bwd)


def depthwise_conv_shifted(x: Array, kernel: Array, stride: int) -> Array:
  """Depthwise kxk conv with SAME padding as k*k shifted multiply-adds.

  x: [N, H, W, C]; kernel: [k, k, 1, C] (the HWIO layout of a grouped conv).
  Padding follows XLA's SAME rule so the result equals `lax.conv` exactly.
  """
  k = kernel.shape[0]
  n, h, w, c = x.shape
  pads = (_same_pads(h, k, stride), _same_pads(w, k, stride))
  xp = jnp.pad(x, ((0, 0),) + pads + ((0, 0),))
  return _depthwise(xp, kernel, stride, (-(-h // stride), -(-w // stride)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(xp: Array, kernel: Array, stride: int, out_hw: tuple[int, int]) -> Array:
  k = kernel.shape[0]
  y = None
  for (i, j), patch in _window_slices(xp, (k, k), (stride, stride), out_hw):
    term = patch * kernel[i, j, 0]
    y = term if y is None else y + term
  return y


def _depthwise_fwd(xp, kernel, stride, out_hw):
  # Keeps only the padded input: autodiff of the shifted products would keep
  # all k*k shifted copies for the kernel gradient (k*k times the memory).
  return _depthwise(xp, kernel, stride, out_hw), (xp, kernel)


def _depthwise_bwd(stride, out_hw, res, g):
  xp, kernel = res
  k = kernel.shape[0]
  n, hp, wp, c = xp.shape

  # The kernel gradient over chunks of examples small enough to stay in cache, all
  # k*k offsets per chunk: over the whole batch XLA:CPU materialises each shifted
  # copy for its reduction and keeps all k*k live at once; one offset at a time over
  # the whole batch reads it k*k times (2-2.6x slower at 56x56 and 28x28).
  chunk = _grad_chunk(n, hp * wp * c * xp.dtype.itemsize, _DEPTHWISE_GRAD_BYTES)

  def one_chunk(t, acc):
    xc = jax.lax.dynamic_slice_in_dim(xp, t * chunk, chunk, axis=0)
    gc = jax.lax.dynamic_slice_in_dim(g, t * chunk, chunk, axis=0)
    return acc + jnp.stack([jnp.sum(gc * s, axis=(0, 1, 2), dtype=jnp.float32)
                            for _, s in _window_slices(xc, (k, k), (stride, stride), out_hw)])

  dk = jax.lax.fori_loop(0, n // chunk, one_chunk, jnp.zeros((k * k, c), jnp.float32))
  dk = dk.reshape(kernel.shape).astype(kernel.dtype)
  dxp = None
  if stride == 1:
    # The input gradient in the forward's form: k*k shifted slices of one padded g,
    # multiplied and summed, which XLA fuses into one pass.
    gp = jnp.pad(g, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0)))
    for i in range(k):
      for j in range(k):
        d = jax.lax.slice(gp, (0, k - 1 - i, k - 1 - j, 0),
                          (n, k - 1 - i + hp, k - 1 - j + wp, c)) * kernel[i, j, 0]
        dxp = d if dxp is None else dxp + d
  else:
    for i in range(k):
      for j in range(k):
        d = _unslice(g * kernel[i, j, 0], (i, j), (stride, stride), (hp, wp))
        dxp = d if dxp is None else dxp + d
  return dxp, dk


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv_grid(x: Array, kernel: Array) -> Array:
  """Each of g x g patches of the map convolved with its own depthwise kxk kernel, zero
  padded at the patch's own borders (stride 1), in the map's own memory layout.

  x: [N, g, ph, g, pw, C] (a free reshape of [N, g*ph, g*pw, C]); kernel [k, k, g, g, C].
  Returns the same layout as x. Equals slicing out the patches, a SAME depthwise conv of
  each and stitching them back, without the transposed copies that stacking the patches'
  channels would need.
  """
  k = kernel.shape[0]
  p = (k - 1) // 2
  xp = jnp.pad(x, ((0, 0), (0, 0), (p, k - 1 - p), (0, 0), (p, k - 1 - p), (0, 0)))
  return _depthwise_grid(xp, kernel)


def _grid_slice(a: Array, i: int, j: int, hw: tuple[int, int]) -> Array:
  n, g1, _, g2, _, c = a.shape
  return jax.lax.slice(a, (0, 0, i, 0, j, 0), (n, g1, i + hw[0], g2, j + hw[1], c))


@jax.custom_vjp
def _depthwise_grid(xp: Array, kernel: Array) -> Array:
  k = kernel.shape[0]
  hw = (xp.shape[2] - k + 1, xp.shape[4] - k + 1)
  y = None
  for i in range(k):
    for j in range(k):
      term = _grid_slice(xp, i, j, hw) * kernel[i, j][None, :, None, :, None, :]
      y = term if y is None else y + term
  return y


def _depthwise_grid_fwd(xp, kernel):
  return _depthwise_grid(xp, kernel), (xp, kernel)


def _depthwise_grid_bwd(res, g):
  # As `_depthwise_bwd`: kernel gradient over chunks of examples, input gradient in the
  # forward's form over the padded cotangent.
  xp, kernel = res
  k = kernel.shape[0]
  n = xp.shape[0]
  hw = g.shape[2], g.shape[4]
  chunk = _grad_chunk(n, math.prod(xp.shape[1:]) * xp.dtype.itemsize, _DEPTHWISE_GRAD_BYTES)

  def one_chunk(t, acc):
    xc = jax.lax.dynamic_slice_in_dim(xp, t * chunk, chunk, axis=0)
    gc = jax.lax.dynamic_slice_in_dim(g, t * chunk, chunk, axis=0)
    return acc + jnp.stack([jnp.sum(gc * _grid_slice(xc, i, j, hw), axis=(0, 2, 4),
                                    dtype=jnp.float32)
                            for i in range(k) for j in range(k)])

  dk = jax.lax.fori_loop(0, n // chunk, one_chunk,
                         jnp.zeros((k * k,) + kernel.shape[2:], jnp.float32))
  gp = jnp.pad(g, ((0, 0), (0, 0), (k - 1, k - 1), (0, 0), (k - 1, k - 1), (0, 0)))
  php = (xp.shape[2], xp.shape[4])
  dxp = None
  for i in range(k):
    for j in range(k):
      d = _grid_slice(gp, k - 1 - i, k - 1 - j, php) * kernel[i, j][None, :, None, :, None, :]
      dxp = d if dxp is None else dxp + d
  return dxp, dk.reshape(kernel.shape).astype(kernel.dtype)


_depthwise_grid.defvjp(_depthwise_grid_fwd, _depthwise_grid_bwd)


def _same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
  """XLA's SAME padding (the extra row/column goes after) for one spatial axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return total // 2, total - total // 2


def _window_slices(xp: Array, k: tuple[int, int], stride: tuple[int, int],
                   out_hw: tuple[int, int]):
  """Yields ((i, j), strided slice of padded NHWC `xp` for window offset (i, j))."""
  n, _, _, c = xp.shape
  for i in range(k[0]):
    for j in range(k[1]):
      yield (i, j), jax.lax.slice(
          xp, (0, i, j, 0),
          (n, i + (out_hw[0] - 1) * stride[0] + 1, j + (out_hw[1] - 1) * stride[1] + 1, c),
          (1, stride[0], stride[1], 1))


def _unslice(g: Array, offset: tuple[int, int], stride: tuple[int, int], padded_hw) -> Array:
  """Transpose of `_window_slices`: places g at its strided positions in a zero map."""
  zero = jnp.zeros((), g.dtype)
  cfg = [(0, 0, 0)]
  for a in range(2):
    hi = padded_hw[a] - offset[a] - ((g.shape[1 + a] - 1) * stride[a] + 1)
    cfg.append((offset[a], hi, stride[a] - 1))
  return jax.lax.pad(g, zero, cfg + [(0, 0, 0)])


def _conv_pads(padding: Any, hw: tuple[int, int], k: tuple[int, int],
               stride: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
  if padding == 'SAME':
    return tuple(_same_pads(hw[a], k[a], stride[a]) for a in range(2))
  if padding == 'VALID':
    return ((0, 0), (0, 0))
  return tuple(tuple(p) for p in padding)


def conv2d_im2col(x: Array, kernel: Array, strides=(1, 1), padding: Any = 'SAME') -> Array:
  """2-D convolution as patches (k*k strided slices stacked on channels) times a matrix.

  x: [N, H, W, Cin]; kernel [kh, kw, Cin, Cout] (HWIO). `padding` is 'SAME', 'VALID' or
  ((top, bottom), (left, right)), as `lax.conv`. On XLA:CPU the weight gradient of a
  strided conv with few input channels (the 3-channel stem) is far slower than this
  matmul's; the input gradient of a data input is never formed.
  """
  kh, kw = kernel.shape[:2]
  sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
  n, h, w, cin = x.shape
  pads = _conv_pads(padding, (h, w), (kh, kw), (sh, sw))
  xp = jnp.pad(x, ((0, 0),) + pads + ((0, 0),))
  out_h = (xp.shape[1] - kh) // sh + 1
  out_w = (xp.shape[2] - kw) // sw + 1
  return _patch_matmul(xp, kernel.reshape(kh * kw * cin, -1), (kh, kw), (sh, sw),
                       (out_h, out_w))


# The kernel gradient of `conv2d_im2col` and `conv2d` is summed over chunks of
# examples whose patch matrix stays within a few MiB: one patch matrix for the whole
# batch (k*k copies of the input) is slower than the library's own gradient, one
# example at a time at 56x56 and above is 2-3x faster than it (AMD EPYC, AVX-512;
# experiments/results/backward_profile.md, section 13).
_PATCH_GRAD_CHUNK = 16  # at most this many examples per chunk
_PATCH_GRAD_BYTES = 6 << 20  # and at most this many bytes of patches per chunk


_DEPTHWISE_GRAD_BYTES = 2 << 20  # padded input per chunk of the depthwise kernel gradient


def _grad_chunk(n: int, example_bytes: int, budget: Optional[int] = None) -> int:
  budget = _PATCH_GRAD_BYTES if budget is None else budget
  cap = max(1, min(n, _PATCH_GRAD_CHUNK, budget // max(example_bytes, 1)))
  return max(c for c in range(1, cap + 1) if n % c == 0)


def _patches(xp, window, stride, out_hw):
  return jnp.concatenate([p for _, p in _window_slices(xp, window, stride, out_hw)], axis=-1)


def _patch_kernel_grad(xp, g, window, stride, out_hw, kernel_shape, dtype):
  """sum over examples of patches(xp)^T g, [kh*kw*Cin, Cout], in chunks of examples
  (float32 accumulation)."""
  n = xp.shape[0]
  chunk = _grad_chunk(n, out_hw[0] * out_hw[1] * kernel_shape[0] * xp.dtype.itemsize)

  def one_chunk(t, acc):
    xc = jax.lax.dynamic_slice_in_dim(xp, t * chunk, chunk, axis=0)
    gc = jax.lax.dynamic_slice_in_dim(g, t * chunk, chunk, axis=0)
    return acc + jnp.einsum('nhwk,nhwd->kd', _patches(xc, window, stride, out_hw), gc,
                            preferred_element_type=jnp.float32)

  dk = jax.lax.fori_loop(0, n // chunk, one_chunk, jnp.zeros(kernel_shape, jnp.float32))
  return dk.astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _patch_matmul(xp, kernel, window, stride, out_hw):
  return jnp.einsum('nhwk,kd->nhwd', _patches(xp, window, stride, out_hw), kernel)


def _patch_matmul_fwd(xp, kernel, window, stride, out_hw):
  # Keeps the (padded) input, not the k*k-times larger patches: the backward rebuilds them.
  return _patch_matmul(xp, kernel, window, stride, out_hw), (xp, kernel)


def _patch_input_grad(xp, g, wmat, window, stride, out_hw):
  """Gradient for the padded input of `patches(xp) @ wmat`: g @ wmat^T placed back
  window offset by window offset (dead code where the input is data)."""
  dpatches = jnp.einsum('nhwd,kd->nhwk', g, wmat)
  cin = xp.shape[-1]
  dxp = None
  for t, (offset, _) in enumerate(_window_slices(xp, window, stride, out_hw)):
    d = _unslice(dpatches[..., t * cin:(t + 1) * cin], offset, stride, xp.shape[1:3])
    dxp = d if dxp is None else dxp + d
  return dxp


def _patch_matmul_bwd(window, stride, out_hw, res, g):
  xp, kernel = res
  dk = _patch_kernel_grad(xp, g, window, stride, out_hw, kernel.shape, kernel.dtype)
  return _patch_input_grad(xp, g, kernel, window, stride, out_hw), dk


_patch_matmul.defvjp(_patch_matmul_fwd, _patch_matmul_bwd)


def _lax_conv(xp, kernel, stride):
  return jax.lax.conv_general_dilated(xp, kernel, stride, 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_patch_grad(xp, kernel, stride):
  return _lax_conv(xp, kernel, stride)


def _conv_patch_grad_fwd(xp, kernel, stride):
  return _lax_conv(xp, kernel, stride), (xp, kernel)


def _conv_patch_grad_bwd(stride, res, g):
  xp, kernel = res
  kh, kw, cin, cout = kernel.shape
  dxp = jax.vjp(lambda a: _lax_conv(a, kernel, stride), xp)[1](g)[0]
  dk = _patch_kernel_grad(xp, g, (kh, kw), stride, g.shape[1:3], (kh * kw * cin, cout),
                          kernel.dtype)
  return dxp, dk.reshape(kernel.shape)


_conv_patch_grad.defvjp(_conv_patch_grad_fwd, _conv_patch_grad_bwd)


def conv2d(x: Array, kernel: Array, strides=(1, 1), padding: Any = 'SAME') -> Array:
  """`lax.conv` forward and input gradient, with the kernel gradient as chunked
  patch matmuls (`_patch_kernel_grad`): same numbers as `lax.conv`, whose own kernel
  gradient on XLA:CPU is 2-3x slower at large maps. Arguments as `conv2d_im2col`."""
  kh, kw = kernel.shape[:2]
  stride = (strides, strides) if isinstance(strides, int) else tuple(strides)
  pads = _conv_pads(padding, x.shape[1:3], (kh, kw), stride)
  return _conv_patch_grad(jnp.pad(x, ((0, 0),) + pads + ((0, 0),)), kernel, stride)


def _max_and_index(xp, window, stride, out_hw):
  """Running maximum over the window's slices and the offset of its first maximum."""
  y, idx = None, None
  for n, (_, s) in enumerate(_window_slices(xp, (window, window), (stride, stride), out_hw)):
    if y is None:
      y, idx = s, jnp.zeros(s.shape, jnp.int8)
    else:
      better = s > y  # strict: ties keep the first offset, as select-and-scatter does
      y = jnp.where(better, s, y)
      idx = jnp.where(better, jnp.int8(n), idx)
  return y, idx


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool(xp: Array, window: int, stride: int, out_hw: tuple[int, int], padded_hw) -> Array:
  return _max_and_index(xp, window, stride, out_hw)[0]


def _max_pool_fwd(xp, window, stride, out_hw, padded_hw):
  # The int8 offset of each window's maximum is all the gradient needs; the
  # barrier keeps XLA from recomputing the max chain inside every consumer.
  y, idx = jax.lax.optimization_barrier(_max_and_index(xp, window, stride, out_hw))
  return y, idx


# How the custom max-pool forms its input gradient: 'residues' (one plane per stride
# residue, interleaved once) or 'pads' (one strided pad per window offset). Same
# numbers; 'residues' was 5 % faster on AVT-CA's step at paper shapes on an AVX-512 CPU
# (experiments/results/backward_profile.md, section 8). Read when a step is traced.
MAX_POOL_BACKWARD = ['residues']


def _max_pool_bwd(window, stride, out_hw, padded_hw, idx, g):
  if MAX_POOL_BACKWARD[0] == 'pads':
    dxp = None
    for n in range(window * window):
      off = (n // window, n % window)
      d = _unslice(jnp.where(idx == n, g, jnp.zeros((), g.dtype)), off, (stride, stride),
                   padded_hw)
      dxp = d if dxp is None else dxp + d
    return (dxp,)
  return (_max_pool_bwd_residues(window, stride, padded_hw, idx, g),)


def _max_pool_bwd_residues(window, stride, padded_hw, idx, g):
  """The pool's input gradient by stride residue: input row q*stride + r gets the
  gradients of window offsets i = r + t*stride from output row q - t. Each residue
  plane is a sum of shifted output-sized maps (no strided scatter); the planes are
  interleaved once."""
  n, oh, ow, c = g.shape
  qh, qw = -(-padded_hw[0] // stride), -(-padded_hw[1] // stride)
  zero = jnp.zeros((), g.dtype)

  def shifted(a, th, tw):  # a[q - th, q' - tw] on the (qh, qw) plane grid, zero outside
    a = jnp.pad(a, ((0, 0), (th, max(qh - oh - th, 0)), (tw, max(qw - ow - tw, 0)), (0, 0)))
    return a[:, :qh, :qw]

  rows = []
  for r1 in range(stride):
    cols = []
    for r2 in range(stride):
      plane = None
      for i1 in range(r1, window, stride):
        for i2 in range(r2, window, stride):
          t = shifted(jnp.where(idx == i1 * window + i2, g, zero), (i1 - r1) // stride,
                      (i2 - r2) // stride)
          plane = t if plane is None else plane + t
      cols.append(plane if plane is not None else jnp.zeros((n, qh, qw, c), g.dtype))
    rows.append(jnp.stack(cols, axis=3))  # [n, qh, qw, stride, c]
  full = jnp.stack(rows, axis=2).reshape(n, qh * stride, qw * stride, c)
  return full[:, :padded_hw[0], :padded_hw[1]]


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_2d(x: Array, window: int, stride: int, impl: str = 'auto',
                padding: Any = 'SAME') -> Array:
  """Max-pooling of NHWC maps; `padding` 'SAME' or ((top, bottom), (left, right)),
  padded with -inf.

  'matmul' (CPU) takes the maximum of window*window strided slices, with a
  custom gradient that routes each output's gradient to the first maximum of
  its window (as XLA's select-and-scatter does, which is ~2.5x slower on CPU).
  Both give identical outputs and gradients.
  """
  if resolve_impl(impl) == 'xla':
    pads = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
    return nn.max_pool(x, (window, window), (stride, stride), padding=pads)
  n, h, w, c = x.shape
  ph, pw = _conv_pads(padding, (h, w), (window, window), (stride, stride))
  xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-jnp.inf)
  out_hw = tuple((xp.shape[1 + a] - window) // stride + 1 for a in range(2))
  return _max_pool(xp, window, stride, out_hw, xp.shape[1:3])


class DepthwiseConv(nn.Module):
  """Depthwise kxk convolution (one filter per channel), SAME padding."""
  kernel_size: int = 3
  strides: int = 1
  use_bias: bool = False
  impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(self.dtype)
    c = x.shape[-1]
    k = self.kernel_size
    kernel = self.param('kernel', default_kernel_init, (k, k, 1, c)).astype(x.dtype)
    if resolve_impl(self.impl) == 'matmul':
      y = depthwise_conv_shifted(x, kernel, self.strides)
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel, (self.strides, self.strides), 'SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (c,)).astype(x.dtype)
    return y


# Under impl 'matmul', a 2-D conv whose patch (kh*kw*Cin) is narrower than this runs
# forward as im2col + matmul (`conv2d_im2col`: the library conv is slow on 3-channel
# stems with few filters); wider ones keep the library forward (`conv2d`). Both take
# the kernel gradient as chunked patch matmuls.
IM2COL_MAX_PATCH = 64


class Conv(nn.Module):
  """nn.Conv without bias (same parameter 'kernel'). Under impl 'matmul' 2-D kernels
  take their kernel gradient as chunked patch matmuls (`conv2d`, or `conv2d_im2col`
  for narrow patches); others run through `lax.conv` and its own gradient."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] | int = 1
  padding: Any = 'SAME'
  impl: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ks = tuple(self.kernel_size)
    if len(ks) != 2 or resolve_impl(self.impl) == 'xla':
      return self._xla(x, ks)
    kernel = self.param('kernel', default_kernel_init, ks + (x.shape[-1], self.features))
    conv = conv2d_im2col if ks[0] * ks[1] * x.shape[-1] < IM2COL_MAX_PATCH else conv2d
    return conv(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding)

  def _xla(self, x, ks):
    kernel = self.param('kernel', default_kernel_init, ks + (x.shape[-1], self.features))
    strides = (self.strides,) * len(ks) if isinstance(self.strides, int) else tuple(self.strides)
    padding = self.padding if isinstance(self.padding, str) else tuple(
        tuple(p) for p in self.padding)
    spatial = 'HW'[:len(ks)] if len(ks) <= 2 else 'DHW'
    dn = ('N' + spatial + 'C', spatial + 'IO', 'N' + spatial + 'C')
    return jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype),
                                        strides, padding, dimension_numbers=dn)


class ConvBNAct(nn.Module):
  """Conv (any kernel) -> BatchNorm -> activation, for NHWC or NWC inputs."""
  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] | int = 1
  padding: Any = 'SAME'
  act: Optional[Callable] = nn.relu
  impl: str = 'xla'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, mask: Optional[Array] = None) -> Array:
    # Named like the nn.Conv this replaced so checkpoints keep loading. `mask`
    # (broadcastable to the output, 1 = real) keeps padding out of the train-mode
    # batch statistics.
    x = Conv(self.features, tuple(self.kernel_size), self.strides, self.padding,
             impl=self.impl, dtype=self.dtype, name='Conv_0')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(
        x, mask=None if mask is None else jnp.broadcast_to(mask > 0, x.shape))
    return self.act(x) if self.act is not None else x


class PointwiseBNAct(nn.Module):
  """1x1 conv -> BN -> optional ReLU through `PointwiseConv`."""
  features: int
  act: bool = True
  impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = PointwiseConv(self.features, use_bias=False, impl=self.impl, dtype=self.dtype)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
    return nn.relu(x) if self.act else x


class InvertedResidual(nn.Module):
  """MobileNetV2-style inverted residual: 1x1 expand, kxk depthwise, 1x1 project."""
  features: int
  strides: int = 1
  expansion: int = 2
  kernel_size: int = 3
  impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    cin = x.shape[-1]
    h = PointwiseBNAct(cin * self.expansion, impl=self.impl, dtype=self.dtype)(x, train)
    h = DepthwiseConv(self.kernel_size, self.strides, impl=self.impl, dtype=self.dtype)(h)
    h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(h))
    h = PointwiseBNAct(self.features, act=False, impl=self.impl, dtype=self.dtype)(h, train)
    if self.strides == 1 and cin == self.features:
      return x + h
    return h


class MultiHeadAttention(nn.Module):
  """Scaled dot-product attention of `q_in` over `kv_in` with h heads.

  Returns the output and, when `return_weights`, the attention map [B, h, Tq, Tk].
  `kv_mask` ([B, Tk], 1 = attend) hides padded or missing positions.
  """
  num_heads: int
  qkv_features: Optional[int] = None
  out_features: Optional[int] = None
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q_in: Array, kv_in: Array, train: bool,
               kv_mask: Optional[Array] = None, return_weights: bool = False):
    d = self.qkv_features or q_in.shape[-1]
    if d % self.num_heads:
      raise ValueError(f'qkv_features {d} not divisible by num_heads {self.num_heads}')
    dh = d // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, dh), dtype=self.dtype, name=name)
    q, k, v = dense('query')(q_in), dense('key')(kv_in), dense('value')(kv_in)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(dh)
    if kv_mask is not None:
      big_neg = jnp.finfo(logits.dtype).min
      logits = jnp.where(kv_mask[:, None, None, :] > 0, logits, big_neg)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    if kv_mask is not None:
      # A query with no valid key reads nothing (not a uniform mix of padding).
      weights = jnp.where(kv_mask.max(-1)[:, None, None, None] > 0, weights, 0.0)
    weights = weights.astype(q.dtype)
    weights_d = nn.Dropout(self.dropout_rate)(weights, deterministic=not train)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights_d, v)
    out = nn.DenseGeneral(self.out_features or q_in.shape[-1], axis=(-2, -1),
                          dtype=self.dtype, name='out')(out)
    return (out, weights) if return_weights else out


class FeedForward(nn.Module):
  """Position-wise FFN: Dense(d_ff) -> act -> dropout -> Dense(d)."""
  d_ff: int
  dropout_rate: float = 0.1
  activation: Callable = nn.gelu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    h = self.activation(nn.Dense(self.d_ff, dtype=self.dtype)(x))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=not train)
    return nn.Dense(x.shape[-1], dtype=self.dtype)(h)


class TransformerLayer(nn.Module):
  """Post-LN transformer layer; attends to `context` when given (cross-attention)."""
  num_heads: int
  d_ff: int
  dropout_rate: float = 0.1
  activation: Callable = nn.gelu
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, context: Optional[Array] = None,
               context_mask: Optional[Array] = None) -> Array:
    ctx = x if context is None else context
    a = MultiHeadAttention(self.num_heads, dropout_rate=self.dropout_rate,
                           dtype=self.dtype)(x, ctx, train, kv_mask=context_mask)
    x = nn.LayerNorm(dtype=self.dtype)(x + nn.Dropout(self.dropout_rate)(a, deterministic=not train))
    f = FeedForward(self.d_ff, self.dropout_rate, self.activation, self.dtype)(x, train)
    return nn.LayerNorm(dtype=self.dtype)(x + nn.Dropout(self.dropout_rate)(f, deterministic=not train))


def sinusoidal_positions(length: int, dim: int) -> Array:
  """Fixed sine/cosine positional encoding [length, dim] (Vaswani et al.)."""
  pos = jnp.arange(length)[:, None]
  i = jnp.arange(dim // 2 + dim % 2)[None, :]
  angle = pos / jnp.power(10000.0, 2 * i / dim)
  enc = jnp.zeros((length, dim))
  enc = enc.at[:, 0::2].set(jnp.sin(angle)[:, : (dim + 1) // 2])
  enc = enc.at[:, 1::2].set(jnp.cos(angle)[:, : dim // 2])
  return enc


# ImageNet's per-channel mean and std of RGB values in [0, 1].
FRAME_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def normalize_frames(video: Array, mean=FRAME_NORMALIZATION[0],
                     std=FRAME_NORMALIZATION[1]) -> Array:
  """u8[..., 3] frames -> f32 standardised with ImageNet statistics."""
  x = video.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean)) / jnp.asarray(std)


def masked_mean(x: Array, valid: Array) -> Array:
  """Mean over time of [B, T, D] counting only valid steps (valid [B, T]); 0 if none."""
  w = valid[..., None].astype(x.dtype)
  return (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


def masked_var(x: Array, valid: Array) -> Array:
  """Population variance over the valid time steps of [B, T, D]; 0 if none."""
  mean = masked_mean(x, valid)
  return masked_mean((x - mean[:, None]) ** 2, valid)


def masked_slope(x: Array, valid: Array) -> Array:
  """Least-squares slope over time of [B, T, D] on valid steps, per unit of the
  standardised step index (so it does not depend on the clip's length); 0 if < 2 steps."""
  w = valid.astype(x.dtype)
  t = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=x.dtype), w.shape)[..., None]
  t_mean = masked_mean(t, w)
  t_std = jnp.sqrt(masked_var(t, w))
  tz = (t - t_mean[:, None]) / jnp.maximum(t_std, 1e-6)[:, None]
  return masked_mean(tz * (x - masked_mean(x, w)[:, None]), w)


def masked_percentiles(x: Array, valid: Array, qs: Sequence[float]) -> Array:
  """Percentiles (0-100, linear interpolation as numpy's default) over the valid
  time steps of [B, T, D] -> [B, len(qs), D]; 0 for a row with none."""
  n = valid.sum(1).astype(jnp.int32)  # [B]
  srt = jnp.sort(jnp.where(valid[..., None] > 0, x, jnp.finfo(x.dtype).max), axis=1)
  out = []
  for q in qs:
    pos = q / 100.0 * jnp.maximum(n - 1, 0).astype(x.dtype)  # [B]
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
    frac = (pos - lo)[:, None]
    a = jnp.take_along_axis(srt, lo[:, None, None], axis=1)[:, 0]
    b = jnp.take_along_axis(srt, hi[:, None, None], axis=1)[:, 0]
    out.append(jnp.where(n[:, None] > 0, a + frac * (b - a), 0.0))
  return jnp.stack(out, axis=1)


def masked_max(x: Array, valid: Array) -> Array:
  """Max over the valid time steps of [B, T, D]; 0 for a row with none."""
  y = jnp.where(valid[..., None] > 0, x, jnp.finfo(x.dtype).min).max(1)
  return jnp.where(valid.max(1)[:, None] > 0, y, 0.0)


def resize_time_valid(x: Array, valid: Array, length: int) -> Array:
  """`resize_time` of each example's valid prefix only: [B, T, D] -> [B, length, D].

  valid [B, T] must be a prefix mask (the real steps first, as builders store
  them); n = sum(valid) real steps are resampled to `length` with the same
  antialiased triangle kernel as `jax.image.resize(..., 'linear')`, so padded
  steps get zero weight and the result does not depend on how much padding
  follows. With all steps valid it equals `resize_time`; a row with no valid
  step gives zeros.
  """
  t = x.shape[1]
  n = valid.astype(jnp.float32).sum(1)[:, None, None]  # [B, 1, 1]
  inv_scale = n / length
  kernel_scale = jnp.maximum(inv_scale, 1.0)
  sample = (jnp.arange(length, dtype=jnp.float32)[None, :, None] + 0.5) * inv_scale - 0.5
  idx = jnp.arange(t, dtype=jnp.float32)[None, None, :]
  w = jnp.maximum(0.0, 1.0 - jnp.abs(sample - idx) / kernel_scale) * (idx < n)  # [B, L, T]
  total = w.sum(-1, keepdims=True)
  w = jnp.where(total > 1000.0 * jnp.finfo(jnp.float32).eps,
                w / jnp.where(total != 0, total, 1.0), 0.0)
  w = jnp.where((sample >= -0.5) & (sample <= n - 0.5), w, 0.0)
  return jnp.einsum('blt,btd->bld', w.astype(x.dtype), x)


def resize_time(x: Array, length: int) -> Array:
  """Linear interpolation of [B, T, D] along time to [B, length, D] (align_corners=False)."""
  if x.shape[1] == length:
    return x
  return jax.image.resize(x, (x.shape[0], length, x.shape[2]), method='linear')


def tucker_core(a: Array, v: Array, factor_t: Array, factor_a: Array, factor_v: Array) -> Array:
  """Tucker core of X[n, t] = a_t (outer) v_t without forming X.

  a: [N, T, Da], v: [N, T, Dv]; factors A_T [T, K], A_a [Da, P], A_v [Dv, Q].
  G[n, k, p, q] = sum_t A_T[t, k] (A_a^T a_t)[p] (A_v^T v_t)[q]: project each
  modality first (N x T x P and N x T x Q), then contract time, so memory is
  O(N K P Q) instead of the O(N T Da Dv) of the outer-product tensor.
  """
  pa = jnp.einsum('ntd,dp->ntp', a, factor_a)
  pv = jnp.einsum('ntd,dq->ntq', v, factor_v)
  # Contraction order fixed by hand: [N, K, T, P] is small, [N, T, P, Q] is not.
  weighted = jnp.einsum('tk,ntp->nktp', factor_t, pa)
  return jnp.einsum('nktp,ntq->nkpq', weighted, pv)


def tucker_core_naive(a: Array, v: Array, factor_t: Array, factor_a: Array,
                      factor_v: Array) -> Array:
  """Reference path: forms X = a_t (outer) v_t [N, T, Da, Dv], then three n-mode products."""
  x = jnp.einsum('nta,ntb->ntab', a, v)
  x = jnp.einsum('ntab,tk->nkab', x, factor_t)
  x = jnp.einsum('nkab,ap->nkpb', x, factor_a)
  return jnp.einsum('nkpb,bq->nkpq', x, factor_v)


class TuckerFusion(nn.Module):
  """Learned Tucker factors A_T, A_a, A_v and the core of the audio-video outer product.

  [N, T, Da], [N, T, Dv] -> [N, K, P, Q]. `naive=True` forms the outer-product
  tensor first (for tests and the memory benchmark); results are identical.
  """
  rank_t: int = 30
  rank_a: int = 128
  rank_v: int = 128
  naive: bool = False

  @nn.compact
  def __call__(self, a: Array, v: Array) -> Array:
    init = nn.initializers.lecun_normal()
    f_t = self.param('factor_t', init, (a.shape[1], self.rank_t))
    f_a = self.param('factor_a', init, (a.shape[2], self.rank_a))
    f_v = self.param('factor_v', init, (v.shape[2], self.rank_v))
    fn = tucker_core_naive if self.naive else tucker_core
    return fn(a, v, f_t.astype(a.dtype), f_a.astype(a.dtype), f_v.astype(a.dtype))


# Frames per chunk of `conv_bn_relu_maxpool` (0: the plain ops).
STEM_CHUNK = 4


def conv_bn_relu_maxpool(x: Array, kernel: Array, scale: Array, bias: Array, *, stride: int,
                         pool: tuple[int, int], eps: float, chunk: int,
                         interleave: Optional[bool] = None,
                         normalize: Optional[tuple[Sequence[float], Sequence[float]]] = None
                         ) -> tuple[Array, Array, Array]:
  """SAME conv (no bias) -> train-mode BatchNorm -> ReLU -> SAME max-pool, by chunks.

  The same numbers as the four ops in sequence (flax's BatchNorm: biased variance as
  E[y^2] - E[y]^2, clipped at 0), without holding any full-resolution map: the
  forward runs over chunks of `chunk` frames twice (batch statistics, then the pooled
  output and each window's int8 offset of its maximum), the backward once more,
  rebuilding each chunk's patches (not its conv output) from the input. The kernel,
  scale and bias gradients follow from per-chunk sums (patches^T g, the patches' Gram
  matrix, patch sums) and the statistics. Returns (pooled, batch mean, batch variance);
  the last two carry no gradient (they feed the running averages).
  x: [N, H, W, Cin] float32 data, or uint8 frames with `normalize` = (mean, std) per
  channel of x / 255, applied chunk by chunk (no float copy of the whole input is made or
  kept; x then gets no gradient); kernel [k, k, Cin, Cout]; scale, bias [Cout].
  """
  n, h, w, cin = x.shape
  k = kernel.shape[0]
  pads = _conv_pads('SAME', (h, w), (k, k), (stride, stride))
  out_hw = tuple((hw + sum(pd) - k) // stride + 1 for hw, pd in zip((h, w), pads))
  chunk = max(c for c in range(1, min(chunk, n) + 1) if n % c == 0)
  # Each chunk is padded inside the loop, not the whole input. With several devices,
  # chunk i holds frames i, i + n/chunk, ...: a batch sharded in blocks over them keeps
  # each chunk spread over all of them. On one device consecutive frames, which needs
  # no transposed copy of the input (nor of the output).
  interleave = jax.device_count() > 1 if interleave is None else interleave
  if interleave:
    xs = jnp.moveaxis(x.reshape((chunk, n // chunk) + x.shape[1:]), 1, 0)
  else:
    xs = x.reshape((n // chunk, chunk) + x.shape[1:])
  if normalize is not None:
    if x.dtype != jnp.uint8:
      raise ValueError(f'normalize applies to uint8 frames, got {x.dtype}')
    mean_, std_ = (tuple(float(v) for v in a) for a in normalize)
    normalize = (tuple(1.0 / (255.0 * sd) for sd in std_),
                 tuple(-m / sd for m, sd in zip(mean_, std_)))
  elif x.dtype != jnp.float32:
    raise ValueError(f'the chunked stem takes float32 data or uint8 frames, got {x.dtype}')
  geom = (stride, pool, out_hw, k, pads, normalize)
  pooled, mean, var = _cbrp(xs, kernel.reshape(k * k * cin, -1), scale, bias, eps, geom)
  if interleave:
    pooled = jnp.moveaxis(pooled, 0, 1)
  pooled = pooled.reshape((n,) + pooled.shape[2:])
  return pooled, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)


def _cbrp_pad(xc, geom):
  normalize = geom[5]
  if normalize is not None:
    xc = xc.astype(jnp.float32) * jnp.asarray(normalize[0]) + jnp.asarray(normalize[1])
  return jnp.pad(xc, ((0, 0),) + geom[4] + ((0, 0),))


def _cbrp_patches(xc, geom):
  stride, _, out_hw, k, _, _ = geom
  return _patches(_cbrp_pad(xc, geom), (k, k), (stride, stride), out_hw)


def _cbrp_conv(xc, wmat, geom):
  p = _cbrp_patches(xc, geom)
  return p, jnp.einsum('nhwk,kd->nhwd', p, wmat)


def _cbrp_pool_pads(out_hw, pool):
  window, pstride = pool
  return tuple(_same_pads(out_hw[a], window, pstride) for a in range(2))


def _cbrp_stats(xs, wmat, geom):
  """Batch mean and variance of the conv output from the patches' sums and Gram matrix
  (y = p W: sum y = psum W, sum y^2 = diag(W^T G W)), which the backward reuses."""
  def body(acc, xc):
    p = _cbrp_patches(xc, geom)
    return (acc[0] + jnp.einsum('nhwk,nhwj->kj', p, p), acc[1] + p.sum((0, 1, 2))), None

  kdim = wmat.shape[0]
  (gram, psum), _ = jax.lax.scan(
      body, (jnp.zeros((kdim, kdim), jnp.float32), jnp.zeros(kdim, jnp.float32)), xs)
  m = xs.shape[0] * xs.shape[1] * geom[2][0] * geom[2][1]
  mean = psum @ wmat / m
  return mean, jnp.maximum(((gram @ wmat) * wmat).sum(0) / m - jnp.square(mean), 0.0), gram, psum


def _cbrp_chunk_fwd(xc, wmat, scale, bias, mean, rstd, geom):
  """One chunk: patches, y_hat, the pre-ReLU z, the padded activation and pool."""
  pool, out_hw = geom[1], geom[2]
  p, y = _cbrp_conv(xc, wmat, geom)
  yhat = (y - mean) * rstd
  z = yhat * scale + bias
  ph, pw = _cbrp_pool_pads(out_hw, pool)
  ap = jnp.pad(jax.nn.relu(z), ((0, 0), ph, pw, (0, 0)), constant_values=-jnp.inf)
  pooled_hw = tuple((ap.shape[1 + a] - pool[0]) // pool[1] + 1 for a in range(2))
  return p, yhat, z, ap, pooled_hw


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _cbrp(xs, wmat, scale, bias, eps, geom):
  return _cbrp_fwd(xs, wmat, scale, bias, eps, geom)[0]


def _cbrp_fwd(xs, wmat, scale, bias, eps, geom):
  mean, var, gram, psum = _cbrp_stats(xs, wmat, geom)
  rstd = jax.lax.rsqrt(var + eps)
  pool = geom[1]

  def body(_, xc):
    _, _, _, ap, pooled_hw = _cbrp_chunk_fwd(xc, wmat, scale, bias, mean, rstd, geom)
    y, idx = _max_and_index(ap, pool[0], pool[1], pooled_hw)
    # A window's maximum is positive iff its pre-ReLU value is: -1 marks the windows
    # whose gradient the ReLU stops, so the backward needs neither z nor the max chain.
    return None, (y, jnp.where(y > 0, idx, jnp.int8(-1)))

  _, (pooled, idx) = jax.lax.scan(body, None, xs)
  return (pooled, mean, var), (xs, idx, gram, psum, wmat, scale, bias, mean, rstd)


def _cbrp_grad_chunk(xc, g, wmat, scale, bias, mean, rstd, geom):
  """One chunk's patches, y_hat and the gradient reaching the pre-ReLU z."""
  pool, out_hw = geom[1], geom[2]
  p, yhat, z, ap, pooled_hw = _cbrp_chunk_fwd(xc, wmat, scale, bias, mean, rstd, geom)
  _, idx = _max_and_index(ap, pool[0], pool[1], pooled_hw)
  gap = _max_pool_bwd_residues(pool[0], pool[1], ap.shape[1:3], idx, g)
  ph, pw = _cbrp_pool_pads(out_hw, pool)
  ga = gap[:, ph[0]:ph[0] + out_hw[0], pw[0]:pw[0] + out_hw[1]]
  return p, yhat, jnp.where(z > 0, ga, jnp.zeros((), ga.dtype))


def _cbrp_bwd(eps, geom, res, cts):
  xs, idxs, gram, psum, wmat, scale, bias, mean, rstd = res
  gpool = cts[0]  # the statistics' cotangents are zero (stop_gradient)
  kdim, cout = wmat.shape
  stride, pool, out_hw, k, pads, normalize = geom
  ph, pw = _cbrp_pool_pads(out_hw, pool)
  padded_hw = (out_hw[0] + sum(ph), out_hw[1] + sum(pw))

  def body(acc, inp):
    # The gradient reaching z, routed by the forward's window offsets, meets the
    # patches rebuilt from the input; the conv output is not rebuilt: the y_hat terms
    # follow from the forward's Gram matrix.
    xc, idx, g = inp
    p = _cbrp_patches(xc, geom)
    gap = _max_pool_bwd_residues(pool[0], pool[1], padded_hw, idx, g)
    gz = gap[:, ph[0]:ph[0] + out_hw[0], pw[0]:pw[0] + out_hw[1]]
    return acc + jnp.einsum('nhwk,nhwd->kd', p, gz), None

  pgz, _ = jax.lax.scan(body, jnp.zeros((kdim, cout), jnp.float32), (xs, idxs, gpool))
  dbias = jnp.where(idxs >= 0, gpool, 0.0).sum((0, 1, 2, 3))
  # sum(g_z * y) = sum_k W[k] (p^T g_z)[k], as y = p W.
  dscale = rstd * ((wmat * pgz).sum(0) - mean * dbias)
  pyhat = rstd * (gram @ wmat - psum[:, None] * mean)
  m = xs.shape[0] * xs.shape[1] * out_hw[0] * out_hw[1]
  # g_y = rstd * scale * (g_z - dbias/M - y_hat * dscale/M): its patch products need
  # only the sums above.
  dw = rstd * scale * (pgz - psum[:, None] * dbias / m - pyhat * dscale / m)

  def dx_body(_, inp):  # dead code when x is data, as the stems' input is
    xc, g = inp
    _, yhat, gz = _cbrp_grad_chunk(xc, g, wmat, scale, bias, mean, rstd, geom)
    gy = rstd * scale * (gz - dbias / m - yhat * dscale / m)
    dxp = _patch_input_grad(_cbrp_pad(xc, geom), gy, wmat, (k, k), (stride, stride), out_hw)
    return None, dxp[:, pads[0][0]:pads[0][0] + xc.shape[1], pads[1][0]:pads[1][0] + xc.shape[2]]

  # Normalised uint8 frames are data: no gradient.
  dxs = None if normalize is not None else jax.lax.scan(dx_body, None, (xs, gpool))[1]
  return dxs, dw.astype(wmat.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


_cbrp.defvjp(_cbrp_fwd, _cbrp_bwd)

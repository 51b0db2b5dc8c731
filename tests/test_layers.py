"""The CPU-fast formulations equal XLA's convolution and pooling exactly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax.models import layers


@pytest.mark.parametrize('stride,size', [(1, 7), (2, 8), (2, 9)])
def test_depthwise_shifted_equals_xla(stride, size):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 5))
  mods = {impl: layers.DepthwiseConv(3, stride, impl=impl) for impl in ('xla', 'matmul')}
  params = mods['xla'].init(jax.random.PRNGKey(1), x)
  a = mods['xla'].apply(params, x)
  b = mods['matmul'].apply(params, x)
  assert a.shape == b.shape == (2, -(-size // stride), -(-size // stride), 5)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_pointwise_einsum_equals_xla():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 7))
  m_xla, m_mm = layers.PointwiseConv(11, impl='xla'), layers.PointwiseConv(11, impl='matmul')
  params = m_xla.init(jax.random.PRNGKey(1), x)
  np.testing.assert_allclose(m_xla.apply(params, x), m_mm.apply(params, x), atol=1e-5)


@pytest.mark.parametrize('n,hw', [(6, 28), (5, 30), (40, 28)])
def test_pointwise_chunked_kernel_gradient_equals_einsum(n, hw):
  # n=40 at 28x28 spans several chunks of the kernel gradient; n=5 is prime.
  x = jax.random.normal(jax.random.PRNGKey(0), (n, hw, hw, 7))
  w = jax.random.normal(jax.random.PRNGKey(1), (7, 11))
  g = jax.random.normal(jax.random.PRNGKey(2), (n, hw, hw, 11))
  plain = lambda x, w: jnp.einsum('...c,cd->...d', x, w)
  np.testing.assert_allclose(layers.pointwise_matmul(x, w), plain(x, w), atol=1e-5)
  dx_a, dw_a = jax.vjp(plain, x, w)[1](g)
  dx_b, dw_b = jax.vjp(layers.pointwise_matmul, x, w)[1](g)
  np.testing.assert_allclose(dx_b, dx_a, atol=1e-5)
  np.testing.assert_allclose(dw_b, dw_a, rtol=1e-5, atol=1e-5 * float(jnp.abs(dw_a).max()))
  # PointwiseConv takes this path on maps of at least POINTWISE_CHUNKED_MIN_HW.
  m_xla, m_mm = layers.PointwiseConv(11, impl='xla'), layers.PointwiseConv(11, impl='matmul')
  params = m_xla.init(jax.random.PRNGKey(1), x)
  ga = jax.grad(lambda p: jnp.sum(m_xla.apply(p, x) ** 2))(params)
  gb = jax.grad(lambda p: jnp.sum(m_mm.apply(p, x) ** 2))(params)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(jnp.abs(a).max()))


@pytest.mark.parametrize('window,stride,h,w', [
    (3, 2, 8, 8), (3, 2, 9, 9), (3, 2, 112, 112), (3, 2, 9, 12), (2, 2, 8, 8), (2, 2, 7, 9),
    (3, 1, 6, 7), (5, 2, 11, 10), (3, 3, 10, 8)])
@pytest.mark.parametrize('backward', ['residues', 'pads'])
def test_max_pool_shifted_equals_reduce_window(window, stride, h, w, backward, monkeypatch):
  monkeypatch.setattr(layers, 'MAX_POOL_BACKWARD', [backward])
  x = jax.random.normal(jax.random.PRNGKey(0), (2, h, w, 3))
  a = layers.max_pool_2d(x, window, stride, impl='xla')
  b = layers.max_pool_2d(x, window, stride, impl='matmul')
  np.testing.assert_array_equal(a, b)
  ga = jax.grad(lambda x: jnp.sum(layers.max_pool_2d(x, window, stride, impl='xla') ** 2))(x)
  gb = jax.grad(lambda x: jnp.sum(layers.max_pool_2d(x, window, stride, impl='matmul') ** 2))(x)
  np.testing.assert_allclose(ga, gb, atol=1e-6)


def test_attention_mask_hides_positions():
  mha = layers.MultiHeadAttention(2)
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 8))
  kv = jax.random.normal(jax.random.PRNGKey(1), (1, 5, 8))
  params = mha.init(jax.random.PRNGKey(2), q, kv, False)
  mask = jnp.array([[1, 1, 1, 0, 0]])
  _, w = mha.apply(params, q, kv, False, kv_mask=mask, return_weights=True)
  np.testing.assert_allclose(w[..., 3:], 0.0, atol=1e-7)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
  # Changing hidden positions leaves the output unchanged.
  kv2 = kv.at[:, 3:].set(100.0)
  np.testing.assert_allclose(mha.apply(params, q, kv, False, kv_mask=mask),
                             mha.apply(params, q, kv2, False, kv_mask=mask), atol=1e-5)


@pytest.mark.parametrize('backward', ['residues', 'pads'])
def test_max_pool_gradient_ties_go_to_first_maximum(backward, monkeypatch):
  # ReLU outputs are full of equal zeros; both paths must route gradient identically.
  monkeypatch.setattr(layers, 'MAX_POOL_BACKWARD', [backward])
  x = jnp.round(jax.random.normal(jax.random.PRNGKey(3), (2, 9, 10, 3)))
  ga = jax.grad(lambda x: jnp.sum(layers.max_pool_2d(x, 3, 2, impl='xla') * jnp.arange(3.)))(x)
  gb = jax.grad(lambda x: jnp.sum(layers.max_pool_2d(x, 3, 2, impl='matmul') * jnp.arange(3.)))(x)
  np.testing.assert_array_equal(ga, gb)


@pytest.mark.parametrize('stride,size', [(1, 7), (2, 8), (2, 9)])
def test_depthwise_gradients_equal_xla(stride, size):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 5))
  mods = {impl: layers.DepthwiseConv(3, stride, impl=impl) for impl in ('xla', 'matmul')}
  params = mods['xla'].init(jax.random.PRNGKey(1), x)
  grads = {impl: jax.grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), argnums=(0, 1))(params, x)
           for impl, m in mods.items()}
  for a, b in zip(jax.tree.leaves(grads['xla']), jax.tree.leaves(grads['matmul'])):
    np.testing.assert_allclose(a, b, atol=1e-5)


# Three input channels take the im2col forward (patch 27 < IM2COL_MAX_PATCH), eight the
# library forward with the patch-matmul kernel gradient (`layers.conv2d`).
@pytest.mark.parametrize('cin', [3, 8])
@pytest.mark.parametrize('strides,padding,size', [(2, 'SAME', 9), (2, 'SAME', 8), (1, 'VALID', 7),
                                                  (1, ((1, 1), (1, 1)), 6), ((2, 1), 'SAME', 7)])
def test_im2col_conv_equals_xla(strides, padding, size, cin, monkeypatch):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, size, size + 1, cin))
  mods = {impl: layers.Conv(4, (3, 3), strides, padding, impl=impl) for impl in ('xla', 'matmul')}
  params = mods['xla'].init(jax.random.PRNGKey(1), x)
  np.testing.assert_allclose(mods['xla'].apply(params, x), mods['matmul'].apply(params, x),
                             atol=1e-5)
  grads = {impl: jax.grad(lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))), argnums=(0, 1))(params, x)
           for impl, m in mods.items()}
  for a, b in zip(jax.tree.leaves(grads['xla']), jax.tree.leaves(grads['matmul'])):
    np.testing.assert_allclose(a, b, atol=1e-4)
  # The kernel gradient summed over chunks of examples equals the one-matmul gradient.
  grad = jax.grad(lambda p: jnp.sum(jnp.sin(mods['matmul'].apply(p, x))))
  monkeypatch.setattr(layers, '_PATCH_GRAD_BYTES', 1 << 40)
  whole = grad(params)
  for chunk in (1, 2):
    monkeypatch.setattr(layers, '_PATCH_GRAD_CHUNK', chunk)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(grad(params))):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # Same parameter tree as the nn.Conv it replaces inside ConvBNAct.
  ref = nn.Conv(4, (3, 3), strides, padding, use_bias=False).init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, ref) == jax.tree.map(jnp.shape, params)


def test_grad_chunk_keeps_patches_within_budget(monkeypatch):
  monkeypatch.setattr(layers, '_PATCH_GRAD_CHUNK', 16)
  monkeypatch.setattr(layers, '_PATCH_GRAD_BYTES', 6 << 20)
  assert layers._grad_chunk(30, 56 * 56 * 576 * 4) == 1  # 7 MiB per example
  assert layers._grad_chunk(30, 14 * 14 * 2304 * 4) == 3  # 1.7 MiB: 3 divides 30
  assert layers._grad_chunk(120, 1000) == 15  # capped at 16, a divisor of 120
  assert layers._grad_chunk(7, 10) == 7


@pytest.mark.parametrize('size', [8, 9, 112])
def test_max_pool_explicit_padding_equals_reduce_window(size):
  # ResNet's 3x3/2 pool pads one on every side, not SAME's (0, 1) on even sizes.
  x = jnp.round(jax.random.normal(jax.random.PRNGKey(0), (2, size, size, 3)) * 2)
  pad = ((1, 1), (1, 1))
  ref = lambda x: nn.max_pool(x, (3, 3), (2, 2), padding=pad)
  got = lambda x: layers.max_pool_2d(x, 3, 2, impl='matmul', padding=pad)
  np.testing.assert_array_equal(ref(x), got(x))
  w = jnp.arange(3.)
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(ref(x) ** 2 * w))(x),
                                jax.grad(lambda x: jnp.sum(got(x) ** 2 * w))(x))


@pytest.mark.parametrize('shape,chunk,window,stride', [
    ((12, 17, 16, 3), 4, 3, 2), ((6, 10, 10, 2), 6, 3, 2), ((5, 9, 8, 3), 2, 3, 2),
    ((4, 11, 12, 2), 2, 5, 2), ((3, 7, 6, 2), 3, 3, 1)])
@pytest.mark.parametrize('interleave', [False, True])
def test_conv_bn_relu_maxpool_by_chunks_equals_ops(shape, chunk, window, stride, interleave):
  """The chunked stem gives the four ops' outputs, batch statistics and gradients
  (input, kernel, scale, bias); a chunk size that does not divide N falls to one that does."""
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  k = jax.random.normal(jax.random.PRNGKey(1), (window, window, shape[-1], 5)) * 0.3
  scale = 1 + 0.1 * jax.random.normal(jax.random.PRNGKey(2), (5,))
  # Channel 0's bias leaves most of its windows at zero after the ReLU, where no
  # gradient may pass.
  bias = (0.1 * jax.random.normal(jax.random.PRNGKey(3), (5,))).at[0].set(-2.0)

  def ref(x, k, scale, bias):
    y = jax.lax.conv_general_dilated(x, k, (stride, stride), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    bn = nn.BatchNorm(use_running_average=False, epsilon=1e-5)
    z, upd = bn.apply({'params': {'scale': scale, 'bias': bias},
                       'batch_stats': {'mean': jnp.zeros(5), 'var': jnp.ones(5)}}, y,
                      mutable=['batch_stats'])
    # nn.BatchNorm's update with momentum 0.99 from (0, 1) recovers the batch statistics.
    mean = upd['batch_stats']['mean'] / 0.01
    var = (upd['batch_stats']['var'] - 0.99) / 0.01
    return nn.max_pool(jax.nn.relu(z), (3, 3), (2, 2), 'SAME'), mean, var

  def got(x, k, scale, bias):
    return layers.conv_bn_relu_maxpool(x, k, scale, bias, stride=stride, pool=(3, 2),
                                       eps=1e-5, chunk=chunk, interleave=interleave)

  for a, b in zip(ref(x, k, scale, bias), got(x, k, scale, bias)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  w = jax.random.normal(jax.random.PRNGKey(5), ref(x, k, scale, bias)[0].shape)
  loss = lambda f: (lambda *a: jnp.sum(jnp.sin(f(*a)[0]) * w))
  ga = jax.grad(loss(ref), (0, 1, 2, 3))(x, k, scale, bias)
  gb = jax.grad(loss(got), (0, 1, 2, 3))(x, k, scale, bias)
  for a, b in zip(ga, gb):
    np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.abs(a).max()))


def test_conv_bn_relu_maxpool_normalises_uint8_frames_by_chunks():
  """uint8 frames with `normalize` give what the float frames of `normalize_frames` give:
  outputs, statistics, and kernel, scale and bias gradients; anything else is refused."""
  frames = jax.random.randint(jax.random.PRNGKey(0), (6, 12, 14, 3), 0, 256).astype(jnp.uint8)
  k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 4)) * 0.3
  scale, bias = jnp.linspace(0.8, 1.2, 4), jnp.linspace(-0.2, 0.2, 4)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  kw = dict(stride=2, pool=(3, 2), eps=1e-5, chunk=2)
  ref = lambda k, s, b: layers.conv_bn_relu_maxpool(
      layers.normalize_frames(frames, mean, std), k, s, b, **kw)
  got = lambda k, s, b: layers.conv_bn_relu_maxpool(frames, k, s, b, normalize=(mean, std),
                                                    **kw)
  for a, b in zip(ref(k, scale, bias), got(k, scale, bias)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  loss = lambda f: (lambda *a: jnp.sum(jnp.sin(f(*a)[0])))
  for a, b in zip(jax.grad(loss(ref), (0, 1, 2))(k, scale, bias),
                  jax.grad(loss(got), (0, 1, 2))(k, scale, bias)):
    np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.abs(a).max()))
  with pytest.raises(ValueError, match='uint8'):
    layers.conv_bn_relu_maxpool(frames.astype(jnp.float32), k, scale, bias,
                                normalize=(mean, std), **kw)
  with pytest.raises(ValueError, match='uint8'):
    layers.conv_bn_relu_maxpool(frames, k, scale, bias, **kw)


def test_depthwise_conv_grid_equals_per_patch_convolutions():
  """Each patch convolved with its own kernel, zero padded at its own borders: values
  and gradients (input and kernel) equal slicing, lax's depthwise conv and stitching."""
  n, g, ph, pw, c = 3, 2, 5, 6, 4
  x = jax.random.normal(jax.random.PRNGKey(0), (n, g * ph, g * pw, c))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, g, g, c))

  def ref(x, kernel):
    rows = []
    for i in range(g):
      cols = [jax.lax.conv_general_dilated(
          x[:, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw], kernel[:, :, i, j][:, :, None, :],
          (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=c)
          for j in range(g)]
      rows.append(jnp.concatenate(cols, 2))
    return jnp.concatenate(rows, 1)

  def got(x, kernel):
    return layers.depthwise_conv_grid(x.reshape(n, g, ph, g, pw, c), kernel).reshape(x.shape)

  np.testing.assert_allclose(ref(x, kernel), got(x, kernel), atol=1e-5)
  w = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  loss = lambda f: (lambda x, k: jnp.sum(jnp.sin(f(x, k)) * w))
  for a, b in zip(jax.grad(loss(ref), (0, 1))(x, kernel), jax.grad(loss(got), (0, 1))(x, kernel)):
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize('train', [True, False])
def test_local_feature_extractor_matmul_equals_per_patch_path(train):
  """The grid form (one depthwise op, every patch's BatchNorm broadcast at once) has the
  per-patch path's variables, outputs, running-average updates and gradients."""
  from mer_jax.models import encoders
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 10, 12, 5))
  ref = encoders.LocalFeatureExtractor(7, 2, impl='xla')
  got = encoders.LocalFeatureExtractor(7, 2, impl='matmul')
  v_ref, v_got = ref.init(jax.random.PRNGKey(1), x, True), got.init(jax.random.PRNGKey(1), x, True)
  assert jax.tree.structure(v_ref) == jax.tree.structure(v_got)
  jax.tree.map(np.testing.assert_array_equal, v_ref, v_got)
  # Moved off the initial values so every variable matters (variances stay positive).
  v = jax.tree.map(lambda a: a * (1 + 0.2 * jax.random.uniform(jax.random.PRNGKey(3), a.shape))
                   + 0.1, v_ref)
  out_ref, upd_ref = ref.apply(v, x, train, mutable=['batch_stats'])
  out_got, upd_got = got.apply(v, x, train, mutable=['batch_stats'])
  np.testing.assert_allclose(out_ref, out_got, atol=1e-4, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), upd_ref, upd_got)
  w = jax.random.normal(jax.random.PRNGKey(4), out_ref.shape)
  loss = lambda m: (lambda p, x: jnp.sum(jnp.sin(m.apply(
      {**v, 'params': p}, x, train, mutable=['batch_stats'])[0]) * w))
  ga = jax.grad(loss(ref), (0, 1))(v['params'], x)
  gb = jax.grad(loss(got), (0, 1))(v['params'], x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4), ga, gb)

"""Compute-precision switch and the CPU-fast paths: same numbers, and bf16 tracks fp32."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import avt_ca as avt_ca_config
from mer_jax import benchmark, models


def _loss_and_grads(config, batch, variables):
  model = models.build(config.model, config.dataset.num_classes)
  entry = models.get(config.model.name)

  def loss(params):
    out, state = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, batch,
                             train=True, mutable=['batch_stats'])
    return entry.loss_fn(out, batch, config.loss)[0], (out['logits'], state['batch_stats'])

  (value, (logits, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      variables['params'])
  return value, logits, stats, grads


def test_avt_ca_impls_and_remat_agree(monkeypatch):
  """matmul/xla paths, remat on/off and the stem by chunks of frames or whole: same loss,
  logits, BN statistics and gradients (max |difference| <= 1e-5 x max(1, max |value|)
  per array)."""
  from mer_jax.models import layers
  config = avt_ca_config.get_config('tiny')
  config.model.dropout_rate = 0.0
  config.dataset.name = ''  # shapes of their own, no dataset behind them
  config.input.example_shapes = {'audio': (60, 20), 'video': (3, 32, 32, 3)}
  batch = {k: jnp.asarray(v) for k, v in benchmark.random_batch(config, 2).items()}
  model = models.build(config.model, config.dataset.num_classes)
  variables = model.init(jax.random.PRNGKey(0), batch, train=False)
  ref = None
  # Each combination compiles the whole step (~30 s): the default stem chunking (4, which
  # leaves a remainder of the 6 frames) and the whole stem under remat cover both stems
  # (layer tests check chunking itself).
  for impl, remat, stem_chunk in [('xla', False, 0), ('xla', True, 0), ('matmul', False, 4),
                                  ('matmul', True, 0)]:
    monkeypatch.setattr(layers, 'STEM_CHUNK', stem_chunk)
    config.model.impl, config.model.remat = impl, remat
    got = _loss_and_grads(config, batch, variables)
    if ref is None:
      ref = got
      continue
    # 1e-5 relative to each array's scale (float32 sums in another order).
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(got)):
      scale = max(1.0, float(np.max(np.abs(a))))
      np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=0,
                                 err_msg=f'{impl} remat={remat} stem_chunk={stem_chunk} '
                                 f'{jax.tree_util.keystr(path)}')


def _train_curve(dtype: str, steps: int) -> np.ndarray:
  config = avt_ca_config.get_config('tiny')
  config.model.dropout_rate = 0.0
  config.model.dtype = dtype
  config.dataset.name = ''  # shapes of their own, no dataset behind them
  config.input.example_shapes = {'audio': (60, 20), 'video': (3, 32, 32, 3)}
  batch = {k: jnp.asarray(v) for k, v in benchmark.random_batch(config, 16, seed=1).items()}
  model = models.build(config.model, config.dataset.num_classes)
  entry = models.get('avt_ca')
  variables = model.init(jax.random.PRNGKey(0), batch, train=False)
  tx = optax.adam(1e-3)

  def step(carry, _):
    params, stats, opt = carry

    def loss(p):
      out, st = model.apply({'params': p, 'batch_stats': stats}, batch, train=True,
                            mutable=['batch_stats'])
      return entry.loss_fn(out, batch, config.loss)[0], st['batch_stats']

    (value, stats), g = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt = tx.update(g, opt, params)
    return (optax.apply_updates(params, updates), stats, opt), value

  params = variables['params']
  carry = (params, variables['batch_stats'], tx.init(params))
  _, losses = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(carry)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))  # params stay fp32
  return np.asarray(losses)


@pytest.mark.slow
def test_bfloat16_training_tracks_float32():
  """300 Adam steps on a fixed batch: the bf16 loss curve stays within 0.1 (absolute,
  averaged over windows of 20 steps) of the fp32 one, and both fit the batch."""
  steps = 300
  fp32, bf16 = _train_curve('float32', steps), _train_curve('bfloat16', steps)
  assert np.all(np.isfinite(fp32)) and np.all(np.isfinite(bf16))
  w32, w16 = fp32.reshape(-1, 20).mean(1), bf16.reshape(-1, 20).mean(1)
  assert np.max(np.abs(w32 - w16)) < 0.1, (w32, w16)
  assert w32[-1] < 0.5 * w32[0] and w16[-1] < 0.5 * w16[0], (w32, w16)


def test_bfloat16_compute_dtype_is_used():
  config = avt_ca_config.get_config('tiny')
  config.model.dtype = 'bfloat16'
  batch = benchmark.random_batch(config, 2)
  model = models.build(config.model, config.dataset.num_classes)
  variables = model.init(jax.random.PRNGKey(0), batch, train=False)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  out, inter = model.apply(variables, batch, train=False, mutable=['intermediates'])
  assert out['logits'].dtype == jnp.float32
  weights = jax.tree.leaves(inter['intermediates'])
  assert weights and all(w.dtype == jnp.bfloat16 for w in weights)

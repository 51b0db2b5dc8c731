"""The Tucker core of paper 001: factorised path == outer-product construction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax.models import layers


def _inputs(n=2, t=6, da=5, dv=4, k=3, p=4, q=2, seed=0):
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.standard_normal(s).astype(np.float64)
  return f(n, t, da), f(n, t, dv), f(t, k), f(da, p), f(dv, q)


def _numpy_outer_core(a, v, ft, fa, fv):
  """X[n, t, i, j] = a[n, t, i] v[n, t, j], then mode products with explicit loops."""
  x = a[:, :, :, None] * v[:, :, None, :]
  n, t = a.shape[:2]
  g = np.zeros((n, ft.shape[1], fa.shape[1], fv.shape[1]))
  for nn_ in range(n):
    for ti in range(t):
      g[nn_] += ft[ti][:, None, None] * (fa.T @ x[nn_, ti] @ fv)[None]
  return g


def test_factorised_core_equals_numpy_outer_product():
  a, v, ft, fa, fv = _inputs()
  want = _numpy_outer_core(a, v, ft, fa, fv)
  got = np.asarray(layers.tucker_core(*(jnp.asarray(x, jnp.float32) for x in (a, v, ft, fa, fv))))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  naive = np.asarray(layers.tucker_core_naive(
      *(jnp.asarray(x, jnp.float32) for x in (a, v, ft, fa, fv))))
  np.testing.assert_allclose(naive, want, atol=1e-5, rtol=1e-5)


def test_core_equals_tensorly_mode_products():
  tl = pytest.importorskip('tensorly')
  from tensorly import tenalg
  a, v, ft, fa, fv = _inputs(seed=1)
  got = np.asarray(layers.tucker_core(*(jnp.asarray(x, jnp.float32) for x in (a, v, ft, fa, fv))))
  for n in range(a.shape[0]):
    x = tl.tensor(np.einsum('ti,tj->tij', a[n], v[n]))  # [T, Da, Dv]
    # Core = X x_1 A_T^T x_2 A_a^T x_3 A_v^T.
    want = tenalg.multi_mode_dot(x, [ft.T, fa.T, fv.T], modes=[0, 1, 2])
    np.testing.assert_allclose(got[n], tl.to_numpy(want), atol=1e-5, rtol=1e-5)


def test_module_paths_agree_and_differentiate():
  a, v, *_ = _inputs(n=2, t=5, da=6, dv=6, seed=2)
  a, v = jnp.asarray(a, jnp.float32), jnp.asarray(v, jnp.float32)
  fast = layers.TuckerFusion(3, 4, 4)
  naive = layers.TuckerFusion(3, 4, 4, naive=True)
  params = fast.init(jax.random.PRNGKey(0), a, v)
  np.testing.assert_allclose(fast.apply(params, a, v), naive.apply(params, a, v),
                             atol=1e-5, rtol=1e-5)
  g_fast = jax.grad(lambda p: jnp.sum(fast.apply(p, a, v) ** 2))(params)
  g_naive = jax.grad(lambda p: jnp.sum(naive.apply(p, a, v) ** 2))(params)
  for x, y in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_naive)):
    np.testing.assert_allclose(x, y, atol=1e-4, rtol=1e-4)

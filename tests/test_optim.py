"""Optimisers and schedules built from config."""

import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax import config_lib, optim


def _cfg(**kw):
  c = config_lib.base_config().optim
  c.update(kw)
  return c


def test_step_decay_as_attsf_net():
  # From epoch 30, lr x 0.9 every 20 epochs (10 steps per epoch).
  c = _cfg(learning_rate=4e-4, schedule='step', decay_start_epoch=30, decay_epochs=20,
           decay_rate=0.9)
  s = optim.make_schedule(c, 10, 2000)
  assert float(s(0)) == pytest.approx(4e-4)
  assert float(s(299)) == pytest.approx(4e-4)
  assert float(s(300)) == pytest.approx(4e-4 * 0.9)
  assert float(s(499)) == pytest.approx(4e-4 * 0.9)
  assert float(s(500)) == pytest.approx(4e-4 * 0.81)


def test_warmup_then_cosine():
  c = _cfg(learning_rate=1e-3, schedule='cosine', warmup_epochs=1)
  s = optim.make_schedule(c, 10, 110)
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(5e-4)
  assert float(s(10)) == pytest.approx(1e-3)
  assert float(s(110)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize('name', ['adam', 'adamw', 'sgd'])
def test_optimizers_step_and_clip(name):
  c = _cfg(optimizer=name, learning_rate=0.1, weight_decay=0.01, grad_clip_norm=1.0)
  tx, _ = optim.make_optimizer(c, 10, 100)
  params = {'w': jnp.ones(3)}
  state = tx.init(params)
  updates, _ = tx.update({'w': jnp.array([300.0, 400.0, 0.0])}, state, params)
  assert np.all(np.isfinite(updates['w']))
  if name == 'sgd':
    # Clipped to norm 1 before the L2 term: (0.6, 0.8, 0) + 0.01 * 1, times -lr.
    np.testing.assert_allclose(updates['w'], -0.1 * np.array([0.61, 0.81, 0.01]), rtol=1e-5)


def test_unknown_optimizer_is_rejected():
  with pytest.raises(ValueError, match='unknown optimizer'):
    optim.make_optimizer(_cfg(optimizer='lamb'), 10, 100)


def test_step_decay_default_start_is_after_decay_epochs():
  # The schema's default decay_start_epoch (-1) must not decay from step 0.
  c = _cfg(learning_rate=1e-3, schedule='step', decay_epochs=5, decay_rate=0.5)
  s = optim.make_schedule(c, 10, 1000)
  assert float(s(0)) == pytest.approx(1e-3)
  assert float(s(49)) == pytest.approx(1e-3)
  assert float(s(50)) == pytest.approx(5e-4)
  assert float(s(100)) == pytest.approx(2.5e-4)


def test_every_optimiser_knob_is_a_config_field():
  # optim.py reads fields as attributes: a missing one raises, so each must be in the schema.
  for name in ('b1', 'b2', 'nesterov', 'momentum', 'final_lr_fraction', 'decay_start_epoch',
               'warmup_epochs', 'grad_clip_norm'):
    assert name in config_lib.base_config().optim


def test_lr_multipliers_scale_one_module():
  c = _cfg(optimizer='sgd', momentum=0.0, learning_rate=0.1,
           lr_multipliers='head=10, other=0.5')
  tx, _ = optim.make_optimizer(c, 10, 100)
  params = {'head': {'kernel': jnp.ones(2)}, 'body': {'kernel': jnp.ones(2)},
            'other': {'bias': jnp.ones(1)}}
  grads = {'head': {'kernel': jnp.ones(2)}, 'body': {'kernel': jnp.ones(2)},
           'other': {'bias': jnp.ones(1)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates['head']['kernel'], -1.0, rtol=1e-6)
  np.testing.assert_allclose(updates['body']['kernel'], -0.1, rtol=1e-6)
  np.testing.assert_allclose(updates['other']['bias'], -0.05, rtol=1e-6)
  with pytest.raises(ValueError, match='does not have'):
    tx.init({'body': {'kernel': jnp.ones(2)}})
  with pytest.raises(ValueError, match='module=factor'):
    optim.make_optimizer(_cfg(lr_multipliers='head'), 10, 100)

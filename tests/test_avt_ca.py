"""AVT-CA: shapes, finite gradients, ablation switches and modality masking."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import avt_ca as avt_ca_config
from mer_jax import contract as bc
from mer_jax import benchmark, models


def _init(config, batch):
  model = models.build(config.model, config.dataset.num_classes)
  variables = model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
                         batch, train=False)
  return model, variables


@pytest.fixture(scope='module')
def tiny():
  config = avt_ca_config.get_config('tiny')
  batch = benchmark.random_batch(config, 3)
  model, variables = _init(config, batch)
  return config, batch, model, variables


def test_shapes_and_finite_gradients(tiny):
  config, batch, model, variables = tiny
  # Compiled: one program is faster than the ops dispatched one by one.
  out = jax.jit(functools.partial(model.apply, train=False))(variables, batch)
  chex.assert_shape(out['logits'], (3, config.dataset.num_classes))
  chex.assert_tree_all_finite(out)

  def loss(params):
    logits, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, batch,
                            train=True, rngs={'dropout': jax.random.PRNGKey(2)},
                            mutable=['batch_stats'])
    return jnp.mean(jax.nn.log_softmax(logits['logits'])[jnp.arange(3), batch['label']])

  grads = jax.jit(jax.grad(loss))(variables['params'])
  chex.assert_trees_all_equal_structs(grads, variables['params'])
  chex.assert_tree_all_finite(grads)
  # Every parameter receives gradient (nothing is disconnected).
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g))]
  assert not dead, f'parameters with zero gradient: {dead}'


def test_train_mode_differs_from_eval_mode(tiny):
  _, batch, model, variables = tiny
  ev = model.apply(variables, batch, train=False)['logits']
  tr1, _ = model.apply(variables, batch, train=True, rngs={'dropout': jax.random.PRNGKey(3)},
                       mutable=['batch_stats'])
  tr2, _ = model.apply(variables, batch, train=True, rngs={'dropout': jax.random.PRNGKey(4)},
                       mutable=['batch_stats'])
  assert not np.allclose(ev, tr1['logits'])
  assert not np.allclose(tr1['logits'], tr2['logits'])  # dropout depends on the rng


@pytest.mark.parametrize('ablation', ['it1', 'it4', 'ct1', 'ct4', 'full'])
def test_ablations_build_and_differ(ablation):
  config = avt_ca_config.get_config('tiny+' + ablation)
  batch = benchmark.random_batch(config, 2)
  model, variables = _init(config, batch)
  names = set(variables['params'])
  assert ('it_audio_self' in names) == config.model.use_intermediate_transformer
  assert ('ct_audio_to_video' in names) == config.model.use_cross_attention
  if config.model.use_cross_attention:
    heads = variables['params']['ct_audio_to_video']['query']['kernel'].shape[1]
    assert heads == config.model.ct_heads
  chex.assert_shape(model.apply(variables, batch)['logits'], (2, 6))


@pytest.mark.parametrize('masked', ['audio', 'video'])
def test_masked_modality_has_no_influence(tiny, masked):
  _, batch, model, variables = tiny
  hidden = bc.mask_modalities(batch, [masked])
  changed = dict(hidden)
  changed[masked] = (np.asarray(batch[masked]) * 0 + 7).astype(batch[masked].dtype)
  a = model.apply(variables, hidden)['logits']
  b = model.apply(variables, changed)['logits']
  np.testing.assert_allclose(a, b, atol=1e-5)
  # ... while the other modality still matters.
  other = 'video' if masked == 'audio' else 'audio'
  moved = dict(hidden)
  moved[other] = (np.asarray(batch[other]) // 2).astype(batch[other].dtype)
  assert not np.allclose(a, model.apply(variables, moved)['logits'])


def test_paper_shapes_parameter_count():
  config = avt_ca_config.get_config('paper_shapes')
  model = models.build(config.model, config.dataset.num_classes)
  shapes = jax.eval_shape(lambda b: model.init(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(0)}, b),
      benchmark.random_batch(config, 1))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))
  # The authors' model has 2.0 M parameters; ours should be of the same order.
  assert 1.0e6 < n < 3.0e6, n


def test_frames_encoded_picks_evenly_spaced_valid_frames(tiny):
  """`frames_encoded=2` equals the full model on frames 0 and T-1 of each clip's valid
  frames: padding is never picked."""
  config, batch, _, variables = tiny
  config = config.copy_and_resolve_references()
  config.model.frames_encoded = 2
  model = models.build(config.model, config.dataset.num_classes)
  full = models.build(avt_ca_config.get_config('tiny').model, config.dataset.num_classes)
  video = np.asarray(batch['video'])
  assert video.shape[1] == 4
  # Clip 0 uses all 4 frames; clips 1 and 2 only the first 3 (the last one padding).
  valid = np.ones(video.shape[:2], np.float32)
  valid[1:, 3] = 0
  padded = dict(batch, video_valid=valid)
  out = jax.jit(functools.partial(model.apply, train=False))(variables, padded)['logits']
  full_apply = jax.jit(functools.partial(full.apply, train=False))  # one compile, 4 calls
  for i, picks in ((0, [0, 3]), (1, [0, 2]), (2, [0, 2])):
    one = {k: np.asarray(v)[i:i + 1] for k, v in batch.items()}
    one['video'] = video[i:i + 1, picks]
    one.pop('video_valid', None)
    want = full_apply(variables, one)['logits']
    np.testing.assert_allclose(out[i:i + 1], want, atol=1e-5, rtol=1e-5)
  # Different frames give a different output (the selection matters).
  one = {k: np.asarray(v)[1:2] for k, v in batch.items()}
  one['video'] = video[1:2, [0, 3]]
  one.pop('video_valid', None)
  assert not np.allclose(out[1:2], full_apply(variables, one)['logits'], atol=1e-5)

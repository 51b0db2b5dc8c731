"""Per-time-step padding masks: zero steps marked invalid in '<modality>_valid'
change no eval-mode output, in every model.

Each example of a ragged batch (different real lengths, padded to a common
length plus extra) must give the logits it gives alone and unpadded. Without
the masks the same padding must change them, so the tests can fail.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax import contract as bc
from mer_jax import models
from mer_jax.models import encoders, layers

NUM_CLASSES = 6
FRAME = (32, 32, 3)
# Real lengths per example: audio frames, video frames (and text/physio steps).
LENGTHS = {'audio': (37, 23), 'video': (4, 2), 'text': (12, 5), 'physio': (40, 17)}
FEATURES = {'audio': 20, 'text': 20, 'physio': 6}


def _model(paper, **overrides):
  config = importlib.import_module(f'configs.{paper}').get_config('tiny')
  model = models.build(config.model, NUM_CLASSES)
  return model.clone(**overrides) if overrides else model


def _examples(modalities, seed=0):
  """One unpadded example per row of LENGTHS: {name: array [T_i, ...]}."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(len(LENGTHS['audio'])):
    ex = {}
    for name in modalities:
      t = LENGTHS[name][i]
      if name == 'video':
        ex[name] = rng.integers(0, 256, (t,) + FRAME, dtype=np.uint8)
      else:
        ex[name] = rng.standard_normal((t, FEATURES[name])).astype(np.float32)
    out.append(ex)
  return out


def _batch(examples, extra=0, with_valid=True):
  """Stacks examples, zero-padding each modality to its longest + `extra` steps."""
  names = list(examples[0])
  b = len(examples)
  batch = {'label': np.zeros((b,), np.int32)}
  for name in names:
    t = max(ex[name].shape[0] for ex in examples) + extra
    arr = np.zeros((b, t) + examples[0][name].shape[1:], examples[0][name].dtype)
    valid = np.zeros((b, t), np.float32)
    for i, ex in enumerate(examples):
      arr[i, :ex[name].shape[0]] = ex[name]
      valid[i, :ex[name].shape[0]] = 1.0
    batch[name] = arr
    if with_valid:
      batch[f'{name}_valid'] = valid
  batch['mask'] = bc.presence_mask(batch.keys(), b)
  return batch


def _check_padding_invariance(model, modalities, extra=3):
  examples = _examples(modalities)
  alone = [_batch([ex]) for ex in examples]
  variables = jax.jit(lambda r, d, b: model.init({'params': r, 'dropout': d}, b, train=False))(
      jax.random.PRNGKey(0), jax.random.PRNGKey(1), alone[0])
  # Compiled: one program per input shape is faster than the ops dispatched one by one.
  apply = jax.jit(lambda v, b: model.apply(v, b, train=False)['logits'])
  want = np.concatenate([np.asarray(apply(variables, b)) for b in alone])
  got = apply(variables, _batch(examples, extra))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # The same padding without masks reaches the output: the masks do the work.
  unmasked = apply(variables, _batch(examples, extra, with_valid=False))
  assert not np.allclose(unmasked, want, atol=1e-4), 'padding without masks changed nothing'
  return variables


@pytest.mark.parametrize('paper,overrides,modalities', [
    ('avt_ca', {}, ('audio', 'video')),
    ('avt_ca', {'csa_self_attention': True}, ('audio', 'video')),
    ('tucker_fusion', {}, ('audio', 'video')),
    ('attsf_net', {}, ('audio', 'video')),
    ('attsf_net', {'use_text': True, 'fusion_block': 'seb', 'aux_encoder': 'pool'},
     ('audio', 'video', 'text')),
    ('ofcmaer_cat', {}, ('audio', 'video')),
    ('ofcmaer_cat', {'modalities': ('audio', 'video', 'physio'),
                     'transformer_input': 'unweighted'}, ('audio', 'video', 'physio')),
    ('mmt_ca', {}, ('audio', 'video')),
    ('mmt_ca', {'audio_pool': 'meanstd', 'audio_input_norm': 'batchnorm',
                'audio_conv_channels': (8, 8)}, ('audio', 'video')),
    ('mmt_ca', {'head': 'audio', 'audio_input_stats': 'concat',
                'audio_input_norm': 'batchnorm'},
     ('audio',)),
    ('mmt_ca', {'head': 'audio', 'audio_input_stats': 'ensemble', 'audio_stats_slope': True,
                'audio_stats_percentiles': (0, -1)},
     ('audio',)),
])
def test_padding_changes_no_eval_output(paper, overrides, modalities):
  _check_padding_invariance(_model(paper, **overrides), modalities)


# compiled: where compiling the three passes costs less than dispatching their ops one by
# one (AVT-CA tiny: about half the time; the other models gained nothing, not side by side).
@pytest.mark.parametrize('paper,encoder,compiled', [('avt_ca', 'audio_encoder', True),
                                                    ('tucker_fusion', 'audio_cnn', False),
                                                    ('attsf_net', 'audio_cnn', False),
                                                    ('ofcmaer_cat', 'audio_encoder', False)])
def test_padding_stays_out_of_audio_batchnorm_statistics(paper, encoder, compiled):
  """Train mode: the audio encoder's running statistics move the same with and
  without masked padding (equal lengths, so the unpadded batch is the reference)."""
  model = _model(paper)
  rng = np.random.default_rng(1)
  examples = [{'audio': rng.standard_normal((30, 20)).astype(np.float32),
               'video': rng.integers(0, 256, (3,) + FRAME, dtype=np.uint8)} for _ in range(2)]
  plain, padded = _batch(examples), _batch(examples)
  padded['audio'] = np.concatenate([padded['audio'], np.zeros((2, 9, 20), np.float32)], 1)
  padded['audio_valid'] = np.concatenate([padded['audio_valid'], np.zeros((2, 9), np.float32)], 1)
  maybe_jit = jax.jit if compiled else (lambda f: f)
  variables = maybe_jit(lambda b: model.init(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}, b, train=False))(plain)
  apply = maybe_jit(lambda v, b: model.apply(v, b, train=True,
                                             rngs={'dropout': jax.random.PRNGKey(2)},
                                             mutable=['batch_stats'])[1])
  stats = [apply(variables, b)['batch_stats'][encoder] for b in (plain, padded)]
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), stats[0],
                       variables['batch_stats'][encoder])
  assert any(jax.tree.leaves(moved))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), *stats)


def test_masked_slope_and_percentiles_match_numpy_on_the_valid_prefix():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 9, 4)).astype(np.float32)
  n = np.array([9, 4, 0])
  valid = (np.arange(9)[None] < n[:, None]).astype(np.float32)
  slope = np.asarray(layers.masked_slope(jnp.asarray(x), jnp.asarray(valid)))
  pct = np.asarray(layers.masked_percentiles(jnp.asarray(x), jnp.asarray(valid), (10, 50, 90)))
  for i in range(2):
    t = np.arange(n[i], dtype=np.float64)
    tz = (t - t.mean()) / t.std()
    np.testing.assert_allclose(slope[i], np.polyfit(tz, x[i, :n[i]], 1)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pct[i], np.percentile(x[i, :n[i]], [10, 50, 90], axis=0),
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(slope[2], 0.0)
  np.testing.assert_array_equal(pct[2], 0.0)
  grads = jax.grad(lambda x: (layers.masked_slope(x, valid).sum()
                              + layers.masked_percentiles(x, valid, (10, 90)).sum()))(x)
  assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[2] == 0)
  assert np.all(np.asarray(grads)[1, 4:] == 0)  # padding steps get no gradient


@pytest.mark.parametrize('length', [5, 8, 20])
def test_resize_time_valid_equals_resize_on_the_real_prefix(length):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 12, 4))
  n = np.array([12, 7, 1])
  valid = (np.arange(12)[None] < n[:, None]).astype(np.float32)
  got = layers.resize_time_valid(x, jnp.asarray(valid), length)
  for i in range(3):
    want = jax.image.resize(x[i:i + 1, :n[i]], (1, length, 4), method='linear')
    np.testing.assert_allclose(got[i:i + 1], want, atol=1e-5)
  np.testing.assert_allclose(layers.resize_time_valid(x, jnp.zeros((3, 12)), length), 0.0)


def test_masked_pooling_and_attention_with_no_valid_step():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3))
  valid = jnp.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]], jnp.float32)
  np.testing.assert_allclose(layers.masked_mean(x, valid)[0], x[0, :2].mean(0), atol=1e-6)
  np.testing.assert_allclose(layers.masked_var(x, valid)[0], x[0, :2].var(0), atol=1e-6)
  np.testing.assert_allclose(layers.masked_max(x, valid)[0], x[0, :2].max(0), atol=1e-6)
  for f in (layers.masked_mean, layers.masked_var, layers.masked_max):
    np.testing.assert_array_equal(f(x, valid)[1], 0.0)
  grads = jax.grad(lambda x: sum(f(x, valid).sum() for f in (layers.masked_mean, layers.masked_var,
                                                             layers.masked_max)))(x)
  assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads)[1] == 0)
  # A query whose keys are all padding reads nothing and stays finite.
  mha = layers.MultiHeadAttention(1)
  params = mha.init(jax.random.PRNGKey(1), x, x, False)
  _, w = mha.apply(params, x, x, False, kv_mask=valid, return_weights=True)
  np.testing.assert_array_equal(w[1], 0.0)
  np.testing.assert_allclose(w[0].sum(-1), 1.0, atol=1e-6)


def test_pool_valid_counts_like_unpadded_pooling():
  for n in range(1, 12):
    valid = (np.arange(16)[None] < n).astype(np.float32)
    assert int(encoders.pool_valid(jnp.asarray(valid), 2, 2).sum()) == -(-(-(-n // 2)) // 2)

"""Classical baselines: features from real wavs, folds, selection blind to the test actor."""

import os

import numpy as np
import pytest

from data_pipelines import folds
from experiments import baselines

RAVDESS = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'ravdess')


@pytest.mark.skipif(not os.path.isdir(RAVDESS), reason='RAVDESS sample data absent')
def test_features_of_two_real_wavs():
  import soundfile as sf
  items = baselines.list_wavs(RAVDESS)
  neutral = next(it for it in items if it[2] == 0)
  angry = next(it for it in items if it[2] == 4 and it[1] == neutral[1])
  feats = []
  for path, _, _ in (neutral, angry):
    wave, sr = sf.read(path, dtype='float32')
    x, names = baselines.utterance_features(wave, sr)
    assert x.shape == (len(names),) and len(set(names)) == len(names)
    assert np.all(np.isfinite(x))
    feats.append(dict(zip(names, x)))
  # Speech is mostly voiced at a plausible pitch (log2 Hz of 65..600 Hz).
  for f in feats:
    assert f['f0_voiced_frac'] > 0.2
    assert np.log2(65) < f['f0_log_mean'] < np.log2(600)
  # The same actor speaks angry louder and higher than neutral.
  assert feats[1]['rms_db_p90'] > feats[0]['rms_db_p90'] - 3.0
  assert feats[1]['f0_log_mean'] > feats[0]['f0_log_mean']


def test_folds_match_the_deep_model_folds():
  actors = np.repeat([1, 2, 3, 4], 5)
  chunks = folds.assign_groups([1, 2, 3, 4], 4)
  for f in baselines.loao_folds(actors):
    i = f['index']
    assert f['test'] == chunks[i] and f['validation'] == chunks[(i + 1) % 4]
    assert sorted(f['train'] + f['validation'] + f['test']) == [1, 2, 3, 4]
    assert not set(f['test']) & (set(f['train']) | set(f['validation']))


@pytest.mark.parametrize('protocol', ['val', 'inner'])
@pytest.mark.parametrize('kind', ['lr', 'svm'])
def test_selection_never_reads_the_test_actor(kind, protocol):
  rng = np.random.RandomState(0)
  actors = np.repeat([1, 2, 3, 4], 16)
  y = np.tile(np.arange(8), 8)
  x = rng.randn(len(y), 6) + y[:, None] * 0.5
  fold = baselines.loao_folds(actors)[2]
  # Any use of the test rows (scaling, fitting or scoring) fails on NaN.
  x[np.isin(actors, fold['test'])] = np.nan
  fit = fold['train'] if protocol == 'val' else fold['train'] + fold['validation']
  params, score = baselines.select(kind, x, y, actors, fit, protocol,
                                   fold['validation'] if protocol == 'val' else ())
  assert params in baselines._grid(kind)
  assert score > 1 / 8  # the classes are separable along every feature


def test_refit_chooses_on_validation_then_fits_training_and_validation_actors():
  rng = np.random.RandomState(0)
  actors = np.repeat([1, 2, 3, 4], 16)
  y = np.tile(np.arange(8), 8)
  x = rng.randn(len(y), 6) + y[:, None] * 0.5
  fold = baselines.loao_folds(actors)[1]
  val = baselines.run_fold('lr', 'val', fold, x, y, actors)
  refit = baselines.run_fold('lr', 'refit', fold, x, y, actors)
  assert refit['params'] == val['params'] and refit['selection_uar'] == val['selection_uar']
  assert refit['fit_actors'] == fold['train'] + fold['validation']
  assert refit['n_train'] == 48 and val['n_train'] == 32
  assert not set(refit['fit_actors']) & set(fold['test'])
  with pytest.raises(ValueError, match='unknown protocol'):
    baselines.run_fold('lr', 'loo', fold, x, y, actors)


@pytest.mark.skipif(not os.path.isdir(RAVDESS), reason='RAVDESS sample data absent')
def test_feature_groups_pick_their_statistics():
  import soundfile as sf
  path = baselines.list_wavs(RAVDESS)[0][0]
  wave, sr = sf.read(path, dtype='float32')
  _, names = baselines.utterance_features(wave, sr)
  pick = lambda g: [names[i] for i in baselines.feature_group(names, g)]
  assert len(pick('all')) == len(names)
  mfcc = pick('mfcc13_d')
  assert len(mfcc) == 2 * 2 * 13 and 'mfcc12_std' in mfcc and 'dmfcc0_mean' in mfcc
  assert not any(n.startswith(('mfcc13', 'ddmfcc', 'logmel')) for n in mfcc)
  assert 'f0_log_mean' in pick('prosody') and not any('mfcc' in n for n in pick('prosody'))
  assert not any(n.startswith('f0') for n in pick('no_f0'))
  assert len(pick('mfcc13_d+prosody')) == len(mfcc) + len(pick('prosody'))
  with pytest.raises(ValueError, match='unknown feature group'):
    baselines.feature_group(names, 'pitch')


def test_speaker_normalize_per_actor():
  rng = np.random.default_rng(0)
  actors = np.repeat([1, 2, 3], 20)
  x = rng.normal(size=(60, 4)) * np.repeat([[1.0], [5.0], [0.5]], 20, 0) + np.repeat(
      [[0.0], [10.0], [-3.0]], 20, 0)
  z = baselines.speaker_normalize(x, actors)
  for a in (1, 2, 3):
    np.testing.assert_allclose(z[actors == a].mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z[actors == a].std(0), 1, atol=1e-6)
  # Within an actor the order of the clips is kept (an affine map per column).
  m = actors == 2
  np.testing.assert_array_equal(np.argsort(z[m, 0]), np.argsort(x[m, 0]))


def test_input_stats_ignore_padding_and_select_on_validation():
  from experiments import input_stats_baseline as isb
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 7, 4)).astype(np.float32)
  valid = np.zeros((3, 7), np.float32)
  for i, n in enumerate((7, 4, 1)):
    valid[i, :n] = 1
  padded = x.copy()
  padded[valid == 0] = 1e3  # whatever sits in padding must not count
  got = isb.utterance_stats(padded, valid)
  for i, n in enumerate((7, 4, 1)):
    np.testing.assert_allclose(got[i, :4], x[i, :n].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[i, 4:], x[i, :n].std(0), rtol=1e-5, atol=1e-6)
  # The functionals are the model's (`audio_stats_slope`, `audio_stats_percentiles`).
  import jax.numpy as jnp
  from mer_jax.models import layers
  full = isb.utterance_stats(padded, valid, slope=True, percentiles=(0, -1))
  np.testing.assert_allclose(full[:, :8], got, rtol=1e-6)
  p = layers.masked_percentiles(jnp.asarray(padded[..., [0, -1]]), jnp.asarray(valid),
                                (10, 50, 90))
  want = np.concatenate([layers.masked_slope(jnp.asarray(padded), jnp.asarray(valid)),
                         np.asarray(p).reshape(3, -1), p[:, 2] - p[:, 0]], -1)
  np.testing.assert_allclose(full[:, 8:], want, rtol=1e-4, atol=1e-5)
  assert isb.utterance_stats(padded, valid, percentiles='all').shape == (3, 8 + 4 * 4)
  # Two separable classes: the chosen C scores validation perfectly.
  xs = np.concatenate([rng.normal(-2, 1, (40, 3)), rng.normal(2, 1, (40, 3))])
  ys = np.repeat([0, 1], 40)
  model, c, val_uar = isb.fit_select(xs[::2], ys[::2], xs[1::2], ys[1::2], 2)
  assert c in isb.C_GRID and val_uar > 0.9
  assert np.mean(model.predict(xs[1::2]) == ys[1::2]) > 0.9
  # refit: the same C on training and validation clips together (scaler included).
  both = isb.refit(xs[::2], ys[::2], xs[1::2], ys[1::2], c)
  assert both.named_steps['logisticregression'].C == c
  np.testing.assert_allclose(both.named_steps['standardscaler'].mean_, xs.mean(0), rtol=1e-6)

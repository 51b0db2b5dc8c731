"""Augmentation: waveform copies at build time, feature-level augmentation and
mixup in tf.data, per-utterance normalisation, and the loss's label switches."""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import avt_ca as avt_ca_config
from data_pipelines import folds
from data_pipelines import input_pipeline
from data_pipelines.builders import builder_lib
from data_pipelines.features import audio as audio_features
from mer_jax import losses

SR = 16000


def _tone(seconds=1.0, freq=220.0):
  t = np.arange(int(seconds * SR)) / SR
  rng = np.random.default_rng(0)
  return (0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(
      np.float32)


def _peak_hz(wave):
  spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
  return np.fft.rfftfreq(wave.size, 1 / SR)[np.argmax(spectrum)]


# ----------------------------------------------------------------------------
# Waveform augmentation (build time)


def test_pitch_shift_keeps_length_and_moves_pitch():
  wave = _tone()
  up = audio_features.pitch_shift(wave, SR, 2.0)
  assert up.shape == wave.shape and up.dtype == np.float32
  # Two semitones up: 220 Hz -> ~247 Hz.
  assert abs(_peak_hz(up) - 220 * 2 ** (2 / 12)) < 5
  np.testing.assert_array_equal(audio_features.pitch_shift(wave, SR, 0.0), wave)


def test_time_stretch_changes_length_not_pitch():
  wave = _tone()
  fast = audio_features.time_stretch(wave, 1.25)
  assert abs(fast.size - wave.size / 1.25) < 0.02 * wave.size
  assert abs(_peak_hz(fast) - 220) < 5
  with pytest.raises(ValueError, match='rate'):
    audio_features.time_stretch(wave, 0.0)


def test_add_noise_at_snr():
  wave = _tone()
  noisy = audio_features.add_noise(wave, 10.0, np.random.default_rng(1))
  noise = noisy - wave
  snr = 10 * np.log10(np.mean(wave ** 2) / np.mean(noise ** 2))
  assert noisy.shape == wave.shape and abs(snr - 10.0) < 0.3


def test_augment_wave_is_seeded():
  wave, cfg = _tone(), audio_features.WaveAugmentConfig(stretch=0.0)
  a = audio_features.augment_wave(wave, SR, cfg, audio_features.augment_seed('x', 1))
  b = audio_features.augment_wave(wave, SR, cfg, audio_features.augment_seed('x', 1))
  c = audio_features.augment_wave(wave, SR, cfg, audio_features.augment_seed('x', 2))
  d = audio_features.augment_wave(wave, SR, cfg, audio_features.augment_seed('y', 1))
  np.testing.assert_array_equal(a, b)
  assert a.shape == wave.shape  # no stretch: length kept
  assert not np.allclose(a, wave, atol=1e-3)
  assert not np.allclose(a, c) and not np.allclose(a, d)


# ----------------------------------------------------------------------------
# Feature-level augmentation (tf.data)


def _example(seed=0, t=50, f=12, valid_steps=40):
  import tensorflow as tf
  rng = np.random.default_rng(seed)
  return {
      'audio': tf.constant(rng.normal(3.0, 2.0, (t, f)).astype(np.float32)),
      'audio_valid': tf.constant((np.arange(t) < valid_steps).astype(np.float32)),
      'video': tf.constant(rng.integers(30, 220, (3, 16, 16, 3)).astype(np.uint8)),
      'label': tf.constant(1, tf.int32),
  }


def _seed(i):
  import tensorflow as tf
  return tf.constant([7, i], tf.int64)


def _np(d):
  return {k: np.asarray(v) for k, v in d.items()}


NEW_AUGMENTS = [
    {'audio_time_mask': 8, 'audio_time_masks': 3},
    {'audio_freq_mask': 4, 'audio_freq_masks': 2},
    {'video_rotate': 15.0},
    {'video_contrast': 0.4},
    {'video_brightness': 0.2, 'video_contrast': 0.3, 'video_rotate': 10.0, 'video_hflip': True,
     'video_crop_pad': 2},
]


@pytest.mark.parametrize('aug', NEW_AUGMENTS, ids=lambda a: '+'.join(sorted(a)))
def test_feature_augment_shapes_and_determinism(aug):
  ex = _example()
  a = _np(input_pipeline._augment(ex, _seed(0), aug))
  b = _np(input_pipeline._augment(ex, _seed(0), aug))
  outs = [_np(input_pipeline._augment(ex, _seed(i), aug)) for i in range(1, 6)]
  key = 'audio' if any(k.startswith('audio') for k in aug) else 'video'
  for k, v in _np(ex).items():
    assert a[k].shape == v.shape and a[k].dtype == v.dtype
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a[key], _np(ex)[key])
  # Another seed gives another draw (at least one of five differs).
  assert any(not np.array_equal(a[key], o[key]) for o in outs)


def test_spec_masks_zero_whole_rows_and_columns_inside_valid_steps():
  ex = _example()
  audio = np.asarray(ex['audio'])
  for i in range(10):
    t = _np(input_pipeline._augment(ex, _seed(i), {'audio_time_mask': 6,
                                                   'audio_time_masks': 2}))['audio']
    zero_rows = np.where(np.all(t == 0, axis=1))[0]
    assert np.all(zero_rows < 40)  # never in the padding (valid_steps=40)
    assert len(zero_rows) <= 12
    keep = np.ones(50, bool)
    keep[zero_rows] = False
    np.testing.assert_array_equal(t[keep], audio[keep])
    f = _np(input_pipeline._augment(ex, _seed(i), {'audio_freq_mask': 3}))['audio']
    zero_cols = np.where(np.all(f == 0, axis=0))[0]
    assert len(zero_cols) <= 3
    if len(zero_cols):
      assert zero_cols.max() - zero_cols.min() == len(zero_cols) - 1  # one contiguous band


def test_rotation_by_zero_is_identity_and_small_angle_keeps_centre():
  import tensorflow as tf
  video = tf.cast(_example()['video'], tf.float32)
  same = input_pipeline._rotate(video, tf.constant(0.0))
  np.testing.assert_allclose(np.asarray(same), np.asarray(video), atol=1e-3)
  # 90 degrees about the centre equals rot90 (direction aside).
  turned = np.asarray(input_pipeline._rotate(video, tf.constant(np.pi / 2, tf.float32)))
  v = np.asarray(video)
  assert any(np.allclose(turned, np.rot90(v, k, axes=(1, 2)), atol=1e-2) for k in (1, 3))


def test_unknown_augment_key_is_an_error():
  with pytest.raises(ValueError, match='unknown augment'):
    input_pipeline._augment(_example(), _seed(0), {'audio_time_maks': 3})


# ----------------------------------------------------------------------------
# Pipelines on the tiny synthetic dataset


@pytest.fixture(scope='module')
def builder(tiny_data_dir):
  cfg = avt_ca_config.get_config('tiny')
  cfg.dataset.data_dir = tiny_data_dir
  return input_pipeline.get_builder(cfg.dataset, build_if_missing=False)


ALL_AUGMENT = {'video_hflip': True, 'video_crop_pad': 2, 'video_brightness': 0.2,
               'video_contrast': 0.3, 'video_rotate': 10.0, 'audio_noise_std': 0.1,
               'audio_time_mask': 10, 'audio_time_masks': 2, 'audio_freq_mask': 4,
               'audio_freq_masks': 2, 'mixup_alpha': 0.4}


def _batches(ds):
  return list(input_pipeline.as_numpy(ds))


def test_eval_is_never_augmented(builder):
  raw = _batches(builder.as_dataset(split='validation', shuffle_files=False).batch(1000))[0]
  ds, _ = input_pipeline.eval_dataset(builder, 'validation', 1000)
  ev = _batches(ds)[0]
  n = len(raw['label'])
  assert set(ev) >= {'audio', 'video', 'label'} and 'label_b' not in ev
  assert 'mix_lambda' not in ev
  for k in ('audio', 'video', 'label'):
    np.testing.assert_array_equal(ev[k][:n], raw[k])


def test_train_augment_is_seeded_and_changes_inputs(builder):
  run = lambda aug, seed=3: _batches(input_pipeline.train_dataset(
      builder, 'train', 8, seed=seed, epoch=0, augment=aug))
  plain, a, b, other = run(None), run(ALL_AUGMENT), run(ALL_AUGMENT), run(ALL_AUGMENT, 4)
  assert len(a) == len(plain)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  for x, p in zip(a, plain):
    np.testing.assert_array_equal(x['label'], p['label'])  # same order as without
    for k in ('audio', 'video'):
      assert x[k].shape == p[k].shape and x[k].dtype == p[k].dtype
      assert not np.array_equal(x[k], p[k])
  assert not np.array_equal(a[0]['audio'], other[0]['audio'])


def test_mixup_batches_and_resume(builder):
  mix = {'mixup_alpha': 0.4}
  run = lambda aug, **kw: _batches(input_pipeline.train_dataset(
      builder, 'train', 8, seed=5, epoch=0, augment=aug, **kw))
  plain, mixed = run(None), run(mix)
  lams = []
  for p, m in zip(plain, mixed):
    lam = m['mix_lambda']
    assert lam.shape == (8,) and np.all(lam == lam[0]) and 0 <= lam[0] <= 1
    lams.append(lam[0])
    np.testing.assert_array_equal(m['label'], p['label'])
    # Each example is lam * itself + (1 - lam) * a partner whose label is label_b.
    for i in range(8):
      want = lam[0] * p['audio'][i][None] + (1 - lam[0]) * p['audio']
      js = [j for j in range(8) if np.allclose(m['audio'][i], want[j], atol=1e-4)]
      assert js and any(p['label'][j] == m['label_b'][i] for j in js)
  assert len(set(np.round(lams, 6))) > 1  # a fresh lambda per batch
  resumed = run(mix, skip_batches=2)
  for x, y in zip(mixed[2:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_utterance_norm_train_and_eval(builder):
  for ds in (input_pipeline.train_dataset(builder, 'train', 8, seed=0, epoch=0,
                                          audio_norm='utterance'),
             input_pipeline.eval_dataset(builder, 'test', 8, audio_norm='utterance')[0]):
    batch = _batches(ds)[0]
    a = batch['audio']
    real = batch['valid'] > 0
    np.testing.assert_allclose(a[real].mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(a[real].std(1), 1, atol=1e-2)
  with pytest.raises(ValueError, match='audio_norm'):
    input_pipeline.eval_dataset(builder, 'test', 8, audio_norm='global')


def test_speaker_norm_uses_each_speakers_clips(builder):
  # Every speaker's valid steps, over all of its clips in the split, end up with
  # mean 0 and std 1 per coefficient; padding stays 0; one clip alone is refused.
  raw = _batches(builder.as_dataset(split='test', shuffle_files=False).batch(1000))[0]
  ds, _ = input_pipeline.eval_dataset(builder, 'test', 1000, audio_norm='speaker')
  ev = _batches(ds)[0]
  n = len(raw['label'])
  np.testing.assert_array_equal(ev['label'][:n], raw['label'])  # same order
  valid = ev['audio_valid'][:n] > 0
  speakers = np.unique(raw['speaker'])
  assert len(speakers) > 1
  for spk in speakers:
    steps = ev['audio'][:n][raw['speaker'] == spk][valid[raw['speaker'] == spk]]
    np.testing.assert_allclose(steps.mean(0), 0, atol=1e-3)
    np.testing.assert_allclose(steps.std(0), 1, atol=1e-2)
  np.testing.assert_array_equal(ev['audio'][:n][~valid], 0)
  # Training reads the same statistics (its split's) and agrees example by example.
  tr = _batches(input_pipeline.train_dataset(builder, 'test', 4, seed=0, epoch=0,
                                             audio_norm='speaker'))
  for b in tr:
    for a, lab in zip(b['audio'], b['label']):
      assert any(np.allclose(a, e, atol=1e-5) for e in ev['audio'][:n][ev['label'][:n] == lab])
  with pytest.raises(ValueError, match='speaker'):
    input_pipeline.normalize_audio(_example(valid_steps=30), 'speaker')


def test_utterance_norm_uses_valid_steps_only():
  ex = _example(valid_steps=30)
  out = _np(input_pipeline.normalize_audio(ex, 'utterance'))['audio']
  np.testing.assert_allclose(out[:30].mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(out[:30].std(0), 1, atol=1e-3)
  np.testing.assert_array_equal(out[30:], 0)
  np.testing.assert_array_equal(_np(input_pipeline.normalize_audio(ex, 'none'))['audio'],
                                np.asarray(ex['audio']))


# ----------------------------------------------------------------------------
# Loss: mixup targets and the soft-label switch


def _ce(logits, targets):
  return optax.softmax_cross_entropy(logits, targets)


def test_mixup_loss_is_the_mixture():
  logits = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
  label, label_b = jnp.array([0, 1, 2, 3, 4, 0]), jnp.array([1, 1, 0, 4, 2, 3])
  lam = jnp.full((6,), 0.3)
  batch = {'label': label, 'label_b': label_b, 'mix_lambda': lam}
  got = losses.cross_entropy(logits, batch)
  oh = lambda y: jax.nn.one_hot(y, 5)
  want = 0.3 * _ce(logits, oh(label)) + 0.7 * _ce(logits, oh(label_b))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  targets = 0.3 * oh(label) + 0.7 * oh(label_b)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  # Without the mixup keys: plain CE.
  np.testing.assert_allclose(losses.cross_entropy(logits, {'label': label}),
                             _ce(logits, oh(label)), rtol=1e-6)


def test_soft_labels_only_when_switched_on():
  logits = jax.random.normal(jax.random.PRNGKey(1), (4, 3))
  label = jnp.array([0, 1, 2, 1])
  soft = jnp.array([[0.6, 0.4, 0.0], [0.1, 0.8, 0.1], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
  batch = {'label': label, 'soft_label': soft, 'valid': jnp.ones(4)}
  hard_ce = _ce(logits, jax.nn.one_hot(label, 3)).mean()
  soft_ce = _ce(logits, soft).mean()
  out = {'logits': logits}
  for cfg in (None, ml_collections.ConfigDict({'label_smoothing': 0.0}),
              ml_collections.ConfigDict({'soft_labels': False})):
    np.testing.assert_allclose(losses.classification_loss(out, batch, cfg)[0], hard_ce,
                               rtol=1e-6)
  on = ml_collections.ConfigDict({'soft_labels': True})
  np.testing.assert_allclose(losses.classification_loss(out, batch, on)[0], soft_ce, rtol=1e-6)
  with pytest.raises(KeyError, match='soft_label'):
    losses.classification_loss(out, {'label': label}, on)


# ----------------------------------------------------------------------------
# Augmented copies at build time (real RAVDESS samples)


def _link_subset(src, dst, per_actor=3):
  """Symlinks the first `per_actor` speech wavs of every actor."""
  n = 0
  for root, _, files in sorted(os.walk(src)):
    wavs = sorted(f for f in files if f.endswith('.wav'))[:per_actor]
    for f in wavs:
      rel = os.path.relpath(os.path.join(root, f), src)
      os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
      os.symlink(os.path.join(root, f), os.path.join(dst, rel))
      n += 1
  return n


def test_train_augment_copies_only_in_train(shared_data, tmp_path, monkeypatch):
  monkeypatch.setenv(builder_lib.WORKERS_ENV, '1')
  monkeypatch.setenv('MER_JAX_NO_PROGRESS', '1')
  manual = tmp_path / 'manual'
  _link_subset(shared_data / 'ravdess' / 'Audio_Speech_Actors_01-24', manual)
  dcfg = ml_collections.ConfigDict({
      'name': 'ravdess/speech_audio_small', 'data_dir': str(tmp_path / 'tfds'),
      'manual_dir': str(manual), 'train_augment_copies': 2})
  builder = input_pipeline.get_builder(dcfg)
  assert builder.builder_config.name == 'speech_audio_small_aug2'
  rows = {s: list(input_pipeline.as_numpy(builder.as_dataset(split=s, shuffle_files=False)))
          for s in builder.info.splits.keys()}
  # Actors 1-2 train, 3 validates, 4 tests; three files each.
  assert {s: len(r) for s, r in rows.items()} == {'train': 18, 'validation': 3, 'test': 3}
  assert all(int(r['copy_index']) == 0 for s in ('validation', 'test') for r in rows[s])
  train = {(r['id'].decode(), int(r['copy_index'])): r for r in rows['train']}
  assert sorted({c for _, c in train}) == [0, 1, 2]
  for (uid, c), r in train.items():
    if c:
      orig = train[(uid, 0)]
      assert r['audio'].shape == orig['audio'].shape
      assert r['label'] == orig['label'] and r['speaker'] == orig['speaker']
      assert not np.allclose(r['audio'], orig['audio'])
      assert not np.allclose(r['audio'], train[(uid, 3 - c)]['audio'])
  # Rebuilding gives the same copies (seeded by file and copy index).
  again = input_pipeline.get_builder(ml_collections.ConfigDict(
      dict(dcfg.to_dict(), data_dir=str(tmp_path / 'tfds2'))))
  for r in input_pipeline.as_numpy(again.as_dataset(split='train', shuffle_files=False)):
    np.testing.assert_array_equal(r['audio'], train[(r['id'].decode(), int(r['copy_index']))]['audio'])

  # Folds re-split by actor: held-out subsets never hold copies.
  for index, test_actor, train_copies in ((0, 1, 0), (2, 3, 6 * 2), (3, 4, 3 * 2)):
    fcfg = ml_collections.ConfigDict({
        'train_split': 'train', 'val_split': 'validation', 'test_split': 'test',
        'fold': {'num_folds': 4, 'index': index, 'group_key': 'speaker', 'val_groups': -1}})
    fb = folds.wrap(builder, fcfg)
    got = {s: list(input_pipeline.as_numpy(fb.as_dataset(split=s, shuffle_files=False)))
           for s in ('train', 'validation', 'test')}
    assert {int(r['speaker']) for r in got['test']} == {test_actor}
    for s in ('validation', 'test'):
      assert len(got[s]) == 3 and all(int(r['copy_index']) == 0 for r in got[s])
    assert sum(int(r['copy_index']) > 0 for r in got['train']) == train_copies
    for s in got:
      assert fb.info.splits[s].num_examples == len(got[s])

  # With folds on, every actor gets copies (one pooled 'train' split) and each
  # fold keeps only its training groups' copies.
  fold = {'num_folds': 4, 'index': 1, 'group_key': 'speaker', 'val_groups': -1}
  pcfg = ml_collections.ConfigDict(dict(
      dcfg.to_dict(), data_dir=str(tmp_path / 'tfds3'), train_split='train',
      val_split='validation', test_split='test', fold=fold))
  pooled = input_pipeline.get_builder(pcfg)
  assert pooled.builder_config.name == 'speech_audio_small_aug2_pooled'
  assert set(pooled.info.splits.keys()) == {'train'} and pooled.info.splits['train'].num_examples == 36
  fb = folds.wrap(pooled, pcfg)
  got = {s: list(input_pipeline.as_numpy(fb.as_dataset(split=s, shuffle_files=False)))
         for s in ('train', 'validation', 'test')}
  assert {int(r['speaker']) for r in got['test']} == {2}
  assert {int(r['speaker']) for r in got['validation']} == {3}
  assert len(got['test']) == len(got['validation']) == 3
  assert all(int(r['copy_index']) == 0 for s in ('validation', 'test') for r in got[s])
  assert len(got['train']) == 18 and fb.info.splits['train'].num_examples == 18


def _lock_probe(lock):
  import subprocess
  import sys
  probe = ('import fcntl, sys; f = open(sys.argv[1], "a")\n'
           'try:\n  fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print("free")\n'
           'except BlockingIOError:\n  print("held")')
  return lambda: subprocess.run([sys.executable, '-c', probe, lock], capture_output=True,
                                text=True, check=True).stdout.strip()


def test_first_numba_use_holds_a_lock_with_a_shared_cache(tmp_path, monkeypatch):
  """With a user-set shared NUMBA_CACHE_DIR, the first call of a key holds an exclusive
  lock in that folder that another process cannot take; later calls do not lock."""
  monkeypatch.setenv('NUMBA_CACHE_DIR', str(tmp_path))
  monkeypatch.setattr(audio_features, '_PRIVATE_NUMBA_CACHE', None)
  other_process_sees = _lock_probe(str(tmp_path / '.first_use.lock'))
  key = ('test', str(tmp_path))
  with audio_features.numba_first_use(key):
    assert other_process_sees() == 'held'
    with audio_features.numba_first_use(('nested', str(tmp_path))):  # no self-deadlock
      assert other_process_sees() == 'held'
  assert other_process_sees() == 'free'
  with audio_features.numba_first_use(key):  # already used here: no lock taken
    assert other_process_sees() == 'free'
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('seed')]


def test_private_numba_cache_per_process_and_a_shared_seed(tmp_path, monkeypatch):
  """Each process compiles into its own cache folder (a child gets a new one, removed
  when it exits); after a first use, this process's cache becomes the shared seed,
  once, and a new process starts from a copy of it."""
  import subprocess
  import sys
  private = tmp_path / 'private'
  (private / 'librosa_x').mkdir(parents=True)
  (private / 'librosa_x' / 'k.nbi').write_text('index')
  monkeypatch.setattr(audio_features, '_PRIVATE_NUMBA_CACHE', str(private))
  monkeypatch.setattr(audio_features, '_SHARED_NUMBA_CACHE', str(tmp_path / 'shared'))
  (tmp_path / 'shared').mkdir()
  other_process_sees = _lock_probe(str(tmp_path / 'shared' / '.first_use.lock'))
  with audio_features.numba_first_use(('private', str(tmp_path))):
    assert other_process_sees() == 'free'  # compiling privately needs no lock
  seed = pathlib.Path(audio_features._seed_dir())
  assert seed.parent == tmp_path / 'shared'
  assert (seed / 'librosa_x' / 'k.nbi').read_text() == 'index'
  (private / 'librosa_x' / 'k.nbi').write_text('changed')
  with audio_features.numba_first_use(('private2', str(tmp_path))):
    pass
  assert (seed / 'librosa_x' / 'k.nbi').read_text() == 'index'  # published once

  code = ('import os, sys; sys.path.insert(0, os.getcwd()); import data_pipelines.features.audio as a; '
          'd = os.environ["NUMBA_CACHE_DIR"]; print(d); print(sorted(os.listdir(d)))')
  env = {k: v for k, v in os.environ.items()
         if k not in ('NUMBA_CACHE_DIR', audio_features._PRIVATE_OWNER)}
  env['HOME'] = str(tmp_path / 'home')
  (tmp_path / 'home' / '.cache' / 'numba').mkdir(parents=True)
  import shutil
  shutil.copytree(seed, tmp_path / 'home' / '.cache' / 'numba' / seed.name)
  # A seed of another installation (other paths or mtimes of librosa and numba) is not read.
  shutil.copytree(seed, tmp_path / 'home' / '.cache' / 'numba' / 'seed-0123456789abcdef')
  (tmp_path / 'home' / '.cache' / 'numba' / 'seed-0123456789abcdef' / 'librosa_y').mkdir()
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env=env, cwd=str(pathlib.Path(__file__).resolve().parents[1])).stdout.split('\n')
  assert out[0] != os.environ.get('NUMBA_CACHE_DIR') and out[0] != str(private)
  assert out[1] == "['librosa_x']"  # started from the seed
  assert not os.path.exists(out[0])  # removed at exit
  # A folder left by a process that is gone (no atexit) is removed by the next one.
  proc = tmp_path / 'home' / '.cache' / 'numba' / 'proc'
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True).stdout.strip()
  (proc / f'{dead}-left').mkdir()
  (proc / 'not-a-pid').mkdir()
  subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                 env=env, cwd=str(pathlib.Path(__file__).resolve().parents[1]))
  assert sorted(p.name for p in proc.iterdir()) == ['not-a-pid']

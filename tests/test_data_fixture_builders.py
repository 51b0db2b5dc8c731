"""IEMOCAP, CMU-MOSEI and DEAP builders on small fixtures written by the tests
in the official formats (EmoEvaluation text, SDK .csd HDF5, latin1 pickles,
per-trial face .avi files), and the true lengths they store."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from data_pipelines.builders import builder_lib  # noqa: E402
from data_pipelines.builders import cmu_mosei  # noqa: E402
from data_pipelines.builders import deap  # noqa: E402
from data_pipelines.builders import iemocap  # noqa: E402
from data_pipelines import fixtures  # noqa: E402

# The official-layout writers live in data_pipelines.fixtures (check_presets uses them too).
_write_wav, _write_dialog_avi, _utterance = (fixtures.write_wav, fixtures.write_dialog_avi,
                                             fixtures.utterance)
_write_csd, _frames, _write_deap = fixtures._write_csd, fixtures._frames, fixtures.write_deap_subject
_drawn_face, _write_avi, EMO_HEADER = fixtures.drawn_face, fixtures.write_avi, fixtures.EMO_HEADER

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


@pytest.fixture(autouse=True)
def _in_process(monkeypatch):
  monkeypatch.setenv(builder_lib.WORKERS_ENV, '1')
  monkeypatch.setenv('MER_JAX_NO_PROGRESS', '1')


def _build(name, manual_dir, data_dir):
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _examples(builder, split):
  return {e['id'].decode(): e for e in tfds.as_numpy(builder.as_dataset(split=split))}


def _skips(builder):
  report = builder_lib.read_skip_report(builder.data_dir)
  return [(s['path'], s['reason']) for v in report['skipped'].values() for s in v]


def _assert_valid_matches_lengths(builder, split, modalities):
  """input_pipeline's '<m>_valid' is a prefix of ones as long as '<m>_length'."""
  from data_pipelines import input_pipeline
  stored = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
  ds, _ = input_pipeline.eval_dataset(builder, split, len(stored))
  batch = next(input_pipeline.as_numpy(ds))
  for m in modalities:
    valid = batch[f'{m}_valid']
    assert valid.shape == batch[m].shape[:2]
    lengths = np.array([e[f'{m}_length'] for e in stored])
    np.testing.assert_array_equal(valid.sum(1), lengths)
    np.testing.assert_array_equal(valid, np.arange(valid.shape[1])[None] < lengths[:, None])


# ----------------------------------------------------------------------------
# IEMOCAP


@pytest.fixture
def iemocap_dir(tmp_path):
  root = tmp_path / 'IEMOCAP_full_release'
  s1 = root / 'Session1'
  d1 = 'Ses01F_impro01'
  utts = [(0.5, 1.5, f'{d1}_F000', 'neu', (2.5, 2.0, 2.0)),
          (1.6, 2.8, f'{d1}_M000', 'exc', (4.0, 3.5, 3.0)),
          (2.9, 3.5, f'{d1}_F001', 'fru', (2.0, 3.0, 3.0)),
          (3.5, 3.9, f'{d1}_M001', 'xxx', (2.0, 3.0, 3.0)),
          (0.2, 0.9, f'{d1}_F002', 'sad', (1.5, 2.0, 2.0))]  # wav missing
  (s1 / 'dialog' / 'EmoEvaluation' / 'Categorical').mkdir(parents=True)
  (s1 / 'dialog' / 'EmoEvaluation' / f'{d1}.txt').write_text(
      EMO_HEADER + ''.join(_utterance(*u) for u in utts))
  (s1 / 'dialog' / 'EmoEvaluation' / 'Categorical' / f'{d1}_e1_cat.txt').write_text('x\n')
  (s1 / 'dialog' / 'EmoEvaluation' / 'Ses01F_impro02.txt').write_text(
      EMO_HEADER + '[1.0 - 2.0]\tSes01F_impro02_F000\tneu\n')  # malformed: no [V, A, D]
  (s1 / 'dialog' / 'transcriptions').mkdir(parents=True)
  (s1 / 'dialog' / 'transcriptions' / f'{d1}.txt').write_text(
      f'{d1}_F000 [000.5000-001.5000]: Excuse me.\n'
      f'{d1}_M000 [001.6000-002.8000]: Do you have your forms?\n')
  for i, (_, _, utt, _, _) in enumerate(utts[:4]):
    _write_wav(s1 / 'sentences' / 'wav' / d1 / f'{utt}.wav', 1.2, 180 + 40 * i)
  s5 = root / 'Session5'
  d5 = 'Ses05M_script01_1'
  (s5 / 'dialog' / 'EmoEvaluation').mkdir(parents=True)
  (s5 / 'dialog' / 'EmoEvaluation' / f'{d5}.txt').write_text(
      EMO_HEADER + _utterance(0.3, 1.3, f'{d5}_F000', 'ang', (1.0, 4.5, 4.0)) +
      _utterance(1.5, 2.5, f'{d5}_M000', 'hap', (4.5, 3.0, 3.0)))
  for i, utt in enumerate([f'{d5}_F000', f'{d5}_M000']):
    _write_wav(s5 / 'sentences' / 'wav' / d5 / f'{utt}.wav', 1.0, 220 + 60 * i)
  # Dialog videos from the real RAVDESS face (when the samples are here).
  from data_pipelines.features import media
  mp4 = SHARED_DATA / 'ravdess/Video_Speech_Actor_01/Actor_01/01-01-01-01-01-01-01.mp4'
  if not mp4.exists():
    return root  # no dialog videos: the video build test skips
  frames, _ = media.decode_video(mp4, num_frames=40)
  faces = np.stack([f[60:660, 340:940] for f in frames])  # 600x600 around the face
  import cv2
  faces = np.stack([cv2.resize(f, (200, 200), interpolation=cv2.INTER_AREA) for f in faces])
  _write_dialog_avi(s1 / 'dialog' / 'avi' / 'DivX' / f'{d1}.avi', faces)
  # Session 5's camera shows no face: its utterances keep audio and text.
  _write_dialog_avi(s5 / 'dialog' / 'avi' / 'DivX' / f'{d5}.avi', np.zeros_like(faces))
  return root


def test_iemocap_parsing(iemocap_dir):
  path = iemocap_dir / 'Session1/dialog/EmoEvaluation/Ses01F_impro01.txt'
  heads = iemocap.parse_emo_evaluation(path)
  assert [h['id'] for h in heads][:2] == ['Ses01F_impro01_F000', 'Ses01F_impro01_M000']
  assert heads[1]['start'] == 1.6 and heads[1]['label'] == 'exc' and heads[1]['vad'] == [4, 3.5, 3]
  who = iemocap.parse_utterance_id('Ses05M_script01_1_F000')
  assert who == {'session': 5, 'dialog': 'Ses05M_script01_1', 'gender': 'F', 'speaker': 8}
  assert iemocap.parse_utterance_id('Ses01F_impro05_M003')['speaker'] == 1
  with pytest.raises(ValueError):
    iemocap.parse_utterance_id('Ses06F_impro01_F000')


@pytest.mark.parametrize('label_map,expected', [
    ('4class', {'Ses01F_impro01_F000': 'neutral', 'Ses01F_impro01_M000': 'happy',
                'Ses05M_script01_1_F000': 'angry', 'Ses05M_script01_1_M000': 'happy'}),
    ('6class', {'Ses01F_impro01_F000': 'neutral', 'Ses01F_impro01_M000': 'excited',
                'Ses01F_impro01_F001': 'frustrated', 'Ses05M_script01_1_F000': 'angry',
                'Ses05M_script01_1_M000': 'happy'}),
    ('9class', {'Ses01F_impro01_F000': 'neutral', 'Ses01F_impro01_M000': 'excited',
                'Ses01F_impro01_F001': 'frustrated', 'Ses05M_script01_1_F000': 'angry',
                'Ses05M_script01_1_M000': 'happy'}),
])
def test_iemocap_label_maps(iemocap_dir, label_map, expected):
  cfg = iemocap.IemocapConfig(name='t', label_map=label_map, with_video=False, video=None)
  items, bad = iemocap.collect_items(str(iemocap_dir), cfg)
  names = iemocap.LABEL_MAPS[label_map][0]
  assert {i['id']: names[i['label']] for i in items} == expected
  assert {i['id']: i['side'] for i in items}['Ses01F_impro01_M000'] == 'right'
  assert {i['id']: i['side'] for i in items}['Ses01F_impro01_F000'] == 'left'
  reasons = ' '.join(r for _, r in bad)
  assert 'malformed header' in reasons and 'wav missing' in reasons


def test_iemocap_build_av_text(iemocap_dir, tmp_path):
  if not (iemocap_dir / 'Session1/dialog/avi/DivX/Ses01F_impro01.avi').exists():
    pytest.skip(f'dialog videos are made from the RAVDESS sample mp4, absent from {SHARED_DATA}')
  builder = _build('iemocap/4class_small', iemocap_dir, tmp_path / 'out')
  assert set(builder.info.splits.keys()) == {'train', 'test'}  # sessions 1 and 5
  train, test = _examples(builder, 'train'), _examples(builder, 'test')
  assert set(train) == {'Ses01F_impro01_F000', 'Ses01F_impro01_M000'}
  assert set(test) == {'Ses05M_script01_1_F000', 'Ses05M_script01_1_M000'}
  f0, m0 = train['Ses01F_impro01_F000'], train['Ses01F_impro01_M000']
  assert (f0['label'], f0['speaker'], f0['session']) == (0, 0, 1)
  assert (m0['label'], m0['speaker']) == (1, 1)
  assert test['Ses05M_script01_1_M000']['speaker'] == 9
  np.testing.assert_allclose(m0['vad'], [4.0, 3.5, 3.0])
  assert f0['transcript'].decode() == 'Excuse me.'
  assert f0['text'].shape == (6, 8) and np.count_nonzero(f0['text'].any(axis=1)) == 2
  assert not test['Ses05M_script01_1_F000']['text'].any()  # no transcript file
  assert f0['audio'].shape == (100, 13) and f0['video'].shape == (3, 32, 32, 3)
  # Faces were found in both halves (the actress left, the actor right by default).
  assert f0['video'].std() > 10 and m0['video'].std() > 10
  np.testing.assert_array_equal(f0['mask'], [1, 1, 1, 0])
  no_face = test['Ses05M_script01_1_F000']
  np.testing.assert_array_equal(no_face['mask'], [1, 0, 0, 0])  # no face, no transcript
  assert not no_face['video'].any() and no_face['audio'].any()
  skipped = _skips(builder)
  assert any('malformed header' in r for _, r in skipped)
  assert any('wav missing' in r for _, r in skipped)
  # True lengths: 1.2 s (session 1) and 1.0 s (session 5) wavs in a 2 s window at
  # a 320-sample hop; words before the zero padding; all frames or none.
  for e in list(train.values()) + list(test.values()):
    secs = 1.2 if e['session'] == 1 else 1.0
    assert e['audio_length'] == int(np.ceil(secs * 16000 / 320))
    n = int(e['audio_length'])
    assert np.ptp(e['audio'][n + 2:], axis=0).max() < 1e-3  # padding: silence frames
    assert np.ptp(e['audio'][:n], axis=0).max() > 1.0
    assert e['text_length'] == np.count_nonzero(e['text'].any(axis=1))
    assert e['video_length'] == (3 if e['mask'][1] else 0)
  assert f0['text_length'] == 2 and m0['text_length'] == 5
  assert test['Ses05M_script01_1_F000']['video_length'] == 0
  _assert_valid_matches_lengths(builder, 'train', ('audio', 'video', 'text'))


# ----------------------------------------------------------------------------
# CMU-MOSEI


@pytest.fixture
def mosei_dir(tmp_path):
  root = tmp_path / 'mosei'
  root.mkdir()
  labels = {
      # sentiment, happy, sad, anger, surprise, disgust, fear
      'vidA': ([[1.0, 2.0, 0.3, 0, 0, 0, 0],  # happy
                [-2.0, 0, 1.0, 1.0, 0, 0, 0],  # tie sad/anger: dropped
                [0.0, 0, 0, 0, 0, 0, 0]],  # no emotion: dropped
               [[0.0, 2.0], [2.0, 4.0], [4.0, 5.0]]),
      'vidB': ([[-1.0, 0, 0, 0.6, 0, 1.3, 0]], [[0.5, 2.5]]),  # disgust
      'vidC': ([[-0.5, 0, 0, 0, 0, 0, 2.7]], [[1.0, 3.0]]),  # fear
      'vidD': ([[0.5, 1.0, 0, 0, 0, 0, 0]], [[0.0, 1.0]]),  # no audio sequence
  }
  _write_csd(root / 'CMU_MOSEI_Labels.csd', 'All Labels', labels)
  cov = {v: _frames(0, 6, 100, 74, i) for i, v in enumerate(['vidA', 'vidB', 'vidC'])}
  cov['vidA'][0][5, :3] = -np.inf  # COVAREP's unvoiced frames
  _write_csd(root / 'CMU_MOSEI_COVAREP.csd', 'COVAREP', cov)
  _write_csd(root / 'CMU_MOSEI_VisualFacet42.csd', 'FACET 4.2',
             {v: _frames(0, 6, 30, 35, 10 + i) for i, v in enumerate(labels)})
  _write_csd(root / 'CMU_MOSEI_TimestampedWordVectors.csd', 'glove_vectors',
             {v: _frames(0, 6, 3, 300, 20 + i) for i, v in enumerate(labels)})
  (root / 'standard_folds.json').write_text(json.dumps(
      {'train': ['vidA', 'vidD'], 'valid': ['vidB'], 'test': ['vidC']}))
  return root


def test_mosei_emotion_class():
  assert cmu_mosei.emotion_class([0, 0, 1.5, 0.2, 0, 0]) == 2
  assert cmu_mosei.emotion_class([0] * 6) is None
  assert cmu_mosei.emotion_class([0] * 6, zero_policy='neutral') == 6
  assert cmu_mosei.emotion_class([1, 1, 0, 0, 0, 0]) is None
  assert cmu_mosei.emotion_class([1, 1, 0, 0, 0, 0], tie_policy='first') == 0


def test_mosei_build(mosei_dir, tmp_path):
  builder = _build('cmu_mosei/emotions', mosei_dir, tmp_path / 'out')
  train, val, test = (_examples(builder, s) for s in ('train', 'validation', 'test'))
  assert list(train) == ['vidA[0]'] and list(val) == ['vidB[0]'] and list(test) == ['vidC[0]']
  a = train['vidA[0]']
  assert cmu_mosei.EMOTIONS[a['label']] == 'happy'
  assert cmu_mosei.EMOTIONS[val['vidB[0]']['label']] == 'disgust'
  assert cmu_mosei.EMOTIONS[test['vidC[0]']['label']] == 'fear'
  np.testing.assert_allclose(a['soft_label'], np.array([2.0, 0.3, 0, 0, 0, 0]) / 2.3, atol=1e-6)
  assert a['sentiment'] == 1.0
  # 2 s of COVAREP at 100 Hz (+1 overlapping frame), padded to 500; -inf -> 0.
  assert a['audio'].shape == (500, 74) and np.all(np.isfinite(a['audio']))
  assert 200 <= np.count_nonzero(a['audio'].any(axis=1)) <= 201
  assert a['audio'][5, :3].tolist() == [0, 0, 0]
  assert a['video'].shape == (150, 35) and a['text'].shape == (50, 300)
  assert any('no audio' in r for _, r in _skips(builder))
  # True lengths: the rows of each sequence that overlap the 2 s segment.
  assert a['audio_length'] == np.count_nonzero(a['audio'].any(axis=1))
  assert 200 <= a['audio_length'] <= 201
  assert 60 <= a['video_length'] <= 61 and 6 <= a['text_length'] <= 7
  for e in (a, val['vidB[0]'], test['vidC[0]']):
    for m in ('audio', 'video', 'text'):
      assert not e[m][int(e[f'{m}_length']):].any() and e[m][int(e[f'{m}_length']) - 1].any()
  _assert_valid_matches_lengths(builder, 'train', ('audio', 'video', 'text'))


def test_mosei_missing_sequence(mosei_dir, tmp_path):
  (mosei_dir / 'CMU_MOSEI_COVAREP.csd').unlink()
  builder = tfds.builder('cmu_mosei/emotions', data_dir=str(tmp_path / 'out'))
  with pytest.raises(builder_lib.ManualDirError, match='CMU_MOSEI_COVAREP'):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(mosei_dir)))


# ----------------------------------------------------------------------------
# DEAP


@pytest.fixture
def deap_dir(tmp_path):
  root = tmp_path / 'deap' / 'data_preprocessed_python'
  root.mkdir(parents=True)
  for s in range(1, 5):
    _write_deap(root / f's{s:02d}.dat', [[7, 3, 5, 5], [5, 8, 5, 5], [2.0, 2.0, 1, 1]], s)
  good = (root / 's04.dat').read_bytes()
  (root / 's05.dat').write_bytes(good[:len(good) // 2])  # truncated pickle
  (root / 'notes.dat').write_bytes(b'x')
  return root.parent


def test_deap_build(deap_dir, tmp_path):
  builder = _build('deap/valence_arousal', deap_dir, tmp_path / 'out')
  sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
  # 4 good subjects x 3 trials x 6 windows of 10 s: subjects 1-2 / 3 / 4.
  assert sizes == {'train': 36, 'validation': 18, 'test': 18}
  train = _examples(builder, 'train')
  e = train['s01_t01_w00']
  assert e['physio'].shape == (320, 40) and e['physio'].dtype == np.float32
  assert abs(float(e['physio'].mean())) < 0.2  # baseline dropped, z-normalised
  names = deap.LABEL_NAMES['valence_arousal']
  assert names[e['label']] == 'high_valence_low_arousal'
  assert names[train['s01_t02_w03']['label']] == 'low_valence_high_arousal'  # 5 is not high
  assert names[train['s02_t03_w05']['label']] == 'low_valence_low_arousal'
  assert {int(x['speaker']) for x in train.values()} == {1, 2}
  reasons = dict(_skips(builder))
  assert any('s05.dat' in p and 'pickle' in r for p, r in reasons.items())
  assert any('notes.dat' in p for p in reasons)


def test_deap_labels():
  assert deap.label_of([6, 6, 1, 1], 'valence_arousal', 5) == 3
  assert deap.label_of([6, 4, 1, 1], 'arousal', 5) == 0
  with pytest.raises(ValueError):
    deap.label_of([0, 4, 1, 1], 'valence', 5)


# DEAP face video: per-trial avi files (OpenCV MJPG) beside the pickles.

VIDEO_FPS = 5  # DEAP records 50 fps; the builder reads the rate from the file


# Face video trial (presentation order) -> Experiment_id, per participant.
DEAP_ORDER = {1: {1: 3, 2: 1, 3: 2}, 2: {1: 1, 2: 2, 3: 3}, 3: {1: 1, 2: 2, 3: 3},
              4: {1: 2, 2: 3, 3: 1}}
TRIAL_SCALE = {1: 1.0, 2: 0.55, 3: 0.3}  # face brightness by video trial number


@pytest.fixture
def deap_video_dir(deap_dir):
  videos = deap_dir / 'face_video'
  for trial in (1, 2, 3):  # s01: all trials, in shuffled presentation order
    _write_avi(videos / 's01' / f's01_trial{trial:02d}.avi',
               lambda t, k=TRIAL_SCALE[trial]: _drawn_face(k), 60)
  _write_avi(videos / 's02' / 's02_trial01.avi', lambda t: _drawn_face(1.0), 60)
  _write_avi(videos / 's02' / 's02_trial02.avi', lambda t: _drawn_face(1.0), 35)  # short
  # s02 trial 3 has no file; s03's camera shows no face; s03 trial 2 is damaged;
  # s04 has no video (as participants 23-32).
  rng = np.random.default_rng(0)
  _write_avi(videos / 's03' / 's03_trial01.avi',
             lambda t: rng.integers(0, 255, (192, 240, 3), dtype=np.uint8), 60)
  (videos / 's03' / 's03_trial02.avi').write_bytes(b'RIFF' + b'\0' * 2000)
  (videos / 's03' / 'take2.avi').write_bytes(b'x')
  meta = deap_dir / 'metadata_csv'
  meta.mkdir()
  rows = ['Participant_id,Trial,Experiment_id,Start_time,Valence,Arousal,Dominance,Liking,'
          'Familiarity']
  rows += [f'{p},{t},{e},0,5,5,5,5,1' for p, order in DEAP_ORDER.items()
           for t, e in order.items()]
  (meta / 'participant_ratings.csv').write_text('\n'.join(rows) + '\n')
  return deap_dir


def test_deap_face_video_build(deap_video_dir, tmp_path):
  from data_pipelines import input_pipeline
  builder = _build('deap/valence_arousal_face_small', deap_video_dir, tmp_path / 'out')
  sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert sizes == {'train': 36, 'validation': 18, 'test': 18}  # as the physio-only build
  ex = {}
  for split in sizes:
    ex.update(_examples(builder, split))
  names = deap.LABEL_NAMES['valence_arousal']
  assert names[ex['s01_t01_w00']['label']] == 'high_valence_low_arousal'
  assert names[ex['s02_t03_w05']['label']] == 'low_valence_low_arousal'
  for e in ex.values():
    assert e['video'].shape == (4, 32, 32, 3) and e['physio'].shape == (320, 40)
    n = int(e['video_length'])
    assert e['mask'].tolist() == [0, float(n > 0), 0, 1]
    assert not e['video'][n:].any()  # padding and masked video are zero frames
    if n:
      assert e['video'][:n].reshape(n, -1).std(axis=1).min() > 10  # real crops
  lengths = lambda s, t: [int(ex[f's{s:02d}_t{t:02d}_w{w:02d}']['video_length'])
                          for w in range(6)]
  for t in (1, 2, 3):
    assert lengths(1, t) == [4] * 6
  # The 35 s video covers windows 0-2 and two of window 3's sample times
  # (31.25 and 33.75 s after the 3 s baseline).
  assert lengths(2, 1) == [4] * 6 and lengths(2, 2) == [4, 4, 4, 2, 0, 0]
  assert lengths(2, 3) == [0] * 6  # no file for this trial
  assert lengths(3, 1) == [0] * 6  # no face detected: masked, not faked
  assert lengths(3, 2) == lengths(3, 3) == lengths(4, 1) == [0] * 6
  # Presentation order -> experiment id: s01's brightest video (trial01.avi)
  # belongs to the arrays' trial 3, trial02.avi to 1, trial03.avi to 2.
  bright = {t: ex[f's01_t{t:02d}_w00']['video'].mean() for t in (1, 2, 3)}
  assert bright[3] > bright[1] > bright[2]
  reasons = _skips(builder)
  assert any('s03_trial02.avi' in p and 'face video unusable' in r for p, r in reasons)
  assert any('take2.avi' in p and 'sXX_trialYY' in r for p, r in reasons)
  # The input pipeline turns the stored lengths into per-frame validity.
  ds, _ = input_pipeline.eval_dataset(builder, 'train', 12)
  stored = [int(e['video_length']) for e in tfds.as_numpy(
      builder.as_dataset(split='train', shuffle_files=False))]
  got = []
  for batch in input_pipeline.as_numpy(ds):
    assert batch['video_valid'].shape == (12, 4) and batch['physio_valid'].shape == (12, 320)
    assert batch['physio_valid'].all()
    np.testing.assert_array_equal(batch['video_valid'].sum(1) > 0, batch['mask'][:, 1] > 0)
    for row in batch['video_valid']:
      n = int(row.sum())
      assert row[:n].all() and not row[n:].any()
      got.append(n)
  assert got == stored and 0 < sum(stored) < 4 * len(stored)


def test_deap_face_video_needs_presentation_order(deap_video_dir, tmp_path):
  (deap_video_dir / 'metadata_csv' / 'participant_ratings.csv').unlink()
  builder = tfds.builder('deap/valence_arousal_face_small', data_dir=str(tmp_path / 'out'))
  with pytest.raises(builder_lib.ManualDirError, match='participant_ratings.csv'):
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(deap_video_dir)))


@pytest.mark.parametrize('drop_baseline,onset', [(True, 0.0), (True, 2.0), (False, 3.0),
                                                 (False, 0.0)])
def test_deap_window_video_alignment(tmp_path, drop_baseline, onset):
  """Frame brightness encodes its time in the avi: 10 + 4 * t."""
  avi = tmp_path / 's01_trial01.avi'
  _write_avi(avi, lambda t: np.full((96, 120, 3), int(10 + 4 * t), np.uint8), 60)
  cfg = builder_lib.plain_config(deap.DeapConfig(name='t'))
  cfg.drop_baseline, cfg.video_onset_s, cfg.face_crop = drop_baseline, onset, False
  cfg.video_frames, cfg.frame_size = 4, 16
  starts = deap.window_starts(8064 - (384 if drop_baseline else 0), cfg)
  assert len(starts) == 6
  for w, start in enumerate(starts):
    frames, n = deap.window_video(str(avi), 60.0, start, cfg)
    times = deap.window_video_times(start, cfg)
    # After the baseline, sample s is at s / 128 - (3 if the baseline is kept) s.
    expected_t = onset + start / 128 - (0 if drop_baseline else 3) + (np.arange(4) + 0.5) * 2.5
    np.testing.assert_allclose(times, expected_t)
    real = (expected_t >= 0) & (expected_t < 60)
    assert n == real.sum()
    np.testing.assert_allclose(frames[:n].reshape(n, -1).mean(1), 10 + 4 * expected_t[real],
                               atol=3.0)
    assert not frames[n:].any()


# ----------------------------------------------------------------------------
# True lengths of the shared audio features


@pytest.mark.parametrize('seconds,duration_s,num_frames,kind,expected', [
    (1.0, 2.0, 100, 'mfcc', 50),  # padded wave: frames whose centre is in the 1 s
    (3.0, 2.0, 100, 'mfcc', 100),  # centre-cropped wave: all real
    (1.0, None, 100, 'mfcc', 51),  # no wave padding: the 51 frames librosa gives, padded rows
    (3.0, None, 100, 'mfcc', 100),  # 151 frames centre-cropped to 100
    (1.0, 2.0, 80, 'mfcc', 40),  # 101 frames cropped from the centre: start 10
    (0.5, 2.0, None, 'logmel', 25),
    (0.5, 1.0, None, 'waveform', 8000),
])
def test_audio_feature_lengths(seconds, duration_s, num_frames, kind, expected):
  from data_pipelines.features import audio as audio_features
  cfg = audio_features.AudioFeatureConfig(sample_rate=16000, duration_s=duration_s,
                                          hop_length=320, num_frames=num_frames, kind=kind)
  t = np.arange(int(seconds * 16000)) / 16000
  wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
  feats, n = audio_features.extract_audio_features(wave, 16000, cfg, return_length=True)
  assert n == expected
  np.testing.assert_array_equal(feats, audio_features.extract_audio_features(wave, 16000, cfg))
  if n + 2 < len(feats):  # padding: constant rows (silence or zeros) after the real ones
    assert np.ptp(feats[n + 2:], axis=0).max() < 1e-3 < np.ptp(feats[:n], axis=0).max()


# ----------------------------------------------------------------------------
# Prosodic tracks


def _tone(hz, seconds, sr=16000, amp=0.3, start_s=0.0):
  t = np.arange(int(seconds * sr)) / sr
  wave = amp * np.sin(2 * np.pi * hz * t)
  wave[: int(start_s * sr)] = 0.0
  return wave.astype(np.float32)


def test_prosody_tracks_follow_pitch_and_voicing():
  from data_pipelines.features import audio as audio_features
  cfg = audio_features.AudioFeatureConfig(sample_rate=16000, duration_s=1.5, hop_length=160,
                                          n_fft=800, num_frames=150, deltas=2, prosody=True,
                                          pre_emphasis=0.97)
  assert cfg.feature_dim == 39 + audio_features.PROSODY_DIM
  plain = dataclasses.replace(cfg, prosody=False)
  # Silence for 0.5 s, then a 220 Hz tone: silent frames are unvoiced, the tone's F0
  # is found, and the unvoiced frames hold the first voiced F0 (no jump to 0).
  wave = _tone(220.0, 1.5, start_s=0.5)
  feats, n = audio_features.extract_audio_features(wave, 16000, cfg, return_length=True)
  assert feats.shape == (150, cfg.feature_dim) and n == 150
  # The MFCC rows are unchanged by the extra tracks.
  np.testing.assert_array_equal(feats[:, :39], audio_features.extract_audio_features(wave, 16000, plain))
  pros = dict(zip(audio_features.PROSODY_NAMES, feats[:, 39:].T))
  assert pros['voiced'][:40].max() == 0.0 and pros['voiced'][70:140].min() == 1.0
  np.testing.assert_allclose(2 ** pros['log2_f0'][60:140], 220.0, rtol=0.02)
  np.testing.assert_allclose(2 ** pros['log2_f0'][:40], 220.0, rtol=0.02)
  assert pros['rms_db'][:40].max() < pros['rms_db'][70:140].min() - 20
  # An octave up moves log2 F0 by one.
  up = audio_features.extract_audio_features(_tone(440.0, 1.5), 16000, cfg)
  np.testing.assert_allclose(up[20:130, 39] - feats[70:140, 39].mean(), 1.0, atol=0.05)
  # Deterministic.
  np.testing.assert_array_equal(feats, audio_features.extract_audio_features(wave, 16000, cfg))


def test_prosody_without_voice_is_finite():
  from data_pipelines.features import audio as audio_features
  cfg = audio_features.AudioFeatureConfig(sample_rate=16000, duration_s=1.0, hop_length=320,
                                          n_fft=512, num_frames=50, prosody=True)
  noise = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
  feats = audio_features.extract_audio_features(noise, 16000, cfg)
  assert feats.shape == (50, 13 + audio_features.PROSODY_DIM) and np.isfinite(feats).all()
  pros = dict(zip(audio_features.PROSODY_NAMES, feats[:, 13:].T))
  assert pros['voiced'].mean() < 0.1

"""RAVDESS, CREMA-D and FER+ builders on the real sample files (tiny feature
configs), including damaged copies and names that break the conventions."""

from __future__ import annotations

import collections
import csv
import os

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from data_pipelines.builders import builder_lib  # noqa: E402
from data_pipelines.builders import crema_d  # noqa: E402
from data_pipelines.builders import ferplus  # noqa: E402
from data_pipelines.builders import ravdess  # noqa: E402


@pytest.fixture(autouse=True)
def _in_process(monkeypatch):
  # Worker pools cost more than they save on a few files.
  monkeypatch.setenv(builder_lib.WORKERS_ENV, '1')
  monkeypatch.setenv('MER_JAX_NO_PROGRESS', '1')


def _build(name, manual_dir, data_dir):
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _all(builder):
  split = '+'.join(builder.info.splits.keys())
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def _expected_audio_length(path, cfg):
  """Feature frames whose centre lies in the file's real audio (see features/audio.py)."""
  from data_pipelines.features import media
  wave, sr = media.decode_audio(path)
  n = int(np.ceil(len(wave) * cfg.sample_rate / sr))  # librosa's resampled length
  return min(-(-n // cfg.hop_length), cfg.num_frames)


def _assert_audio_valid(builder, split):
  """input_pipeline's 'audio_valid' is a prefix of ones as long as 'audio_length'."""
  from data_pipelines import input_pipeline
  stored = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
  ds, _ = input_pipeline.eval_dataset(builder, split, len(stored))
  valid = next(input_pipeline.as_numpy(ds))['audio_valid']
  lengths = np.array([e['audio_length'] for e in stored])
  np.testing.assert_array_equal(valid, np.arange(valid.shape[1])[None] < lengths[:, None])


def _link_tree(src, dst, keep=lambda rel: True):
  """Symlink copy of a folder tree (the shared files are read-only)."""
  for root, _, files in os.walk(src):
    for f in files:
      rel = os.path.relpath(os.path.join(root, f), src)
      if keep(rel):
        os.makedirs(os.path.join(dst, os.path.dirname(rel)), exist_ok=True)
        os.symlink(os.path.join(root, f), os.path.join(dst, rel))


# ----------------------------------------------------------------------------
# RAVDESS


def test_ravdess_name_parsing():
  n = ravdess.parse_name('/x/Actor_07/03-01-06-02-01-02-07.wav')
  assert (n.modality, n.emotion, n.intensity, n.actor, n.label) == (3, 6, 2, 7, 5)
  assert ravdess.EMOTIONS[n.label] == 'fearful'
  for bad, why in [('03-01-09-01-01-01-01.wav', 'emotion 09'),
                   ('03-01-01-02-01-01-01.wav', 'neutral has no strong'),
                   ('03-02-08-01-01-01-01.wav', 'does not exist for song'),
                   ('03-01-01-01-01-01-25.wav', 'actor 25'),
                   ('03-01-01-01-01-01.wav', 'not MM-VV'),
                   ('angry_take.wav', 'not MM-VV')]:
    with pytest.raises(ravdess.RavdessNameError, match=why):
      ravdess.parse_name(bad)


def test_ravdess_speech_audio(shared_data, tmp_path):
  manual = shared_data / 'ravdess'
  builder = _build('ravdess/speech_audio_small', manual, tmp_path)
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert splits == {'train': 120, 'validation': 60, 'test': 60}  # actors 1-2 / 3 / 4
  examples = _all(builder)
  per_actor = collections.Counter(int(e['speaker']) for e in examples)
  assert per_actor == {1: 60, 2: 60, 3: 60, 4: 60}
  for split, actors in [('train', {1, 2}), ('validation', {3}), ('test', {4})]:
    got = {int(e['speaker']) for e in tfds.as_numpy(builder.as_dataset(split=split))}
    assert got == actors
  for e in examples:
    take = e['id'].decode()
    fields = [int(x) for x in take.split('-')]  # VV-EE-II-SS-RR-AA
    assert e['label'] == fields[1] - 1 and e['speaker'] == fields[5]
    assert e['intensity'] == fields[2] and e['audio'].shape == (180, 13)
    assert np.all(np.isfinite(e['audio']))
  # True lengths: 3.2-5.0 s wavs in the 3.6 s window (180 frames of 320 samples
  # at 16 kHz): the shorter ones are padded.
  cfg = builder.builder_config.audio
  lengths = {}
  for e in examples:
    take = e['id'].decode()
    wav = manual / f'Audio_Speech_Actors_01-24/Actor_{take[-2:]}/03-{take}.wav'
    lengths[take] = int(e['audio_length'])
    assert lengths[take] == _expected_audio_length(wav, cfg), take
  assert min(lengths.values()) < 170 and max(lengths.values()) == 180
  assert sum(v < 180 for v in lengths.values()) > 20
  _assert_audio_valid(builder, 'validation')
  # Per actor: neutral has 4 takes (no strong intensity), the 7 others 8.
  labels = collections.Counter(int(e['label']) for e in examples if e['speaker'] == 1)
  assert labels == {0: 4, **{c: 8 for c in range(1, 8)}}
  report = builder_lib.read_skip_report(builder.data_dir)
  assert report['num_skipped'] == 0


def test_ravdess_speech_av_with_damaged_files(shared_data, tmp_path):
  manual = tmp_path / 'manual'
  src = shared_data / 'ravdess'
  mp4 = src / 'Video_Speech_Actor_01/Actor_01/01-01-01-01-01-01-01.mp4'
  if not mp4.exists():
    pytest.skip('RAVDESS sample mp4 absent')
  _link_tree(src, manual, keep=lambda rel: rel.endswith('.mp4') or '03-01-03' in rel)
  vdir = manual / 'Video_Speech_Actor_01' / 'Actor_01'
  data = mp4.read_bytes()
  (vdir / '01-01-05-01-01-01-01.mp4').write_bytes(data[:len(data) // 3])  # truncated
  (vdir / '01-01-09-01-01-01-01.mp4').write_bytes(data[:1000])  # emotion 09
  (vdir / '01-01-04-01-01-01-02.mp4').write_bytes(b'')  # actor 02 in Actor_01
  (vdir / '02-01-06-01-01-01-01.mp4').write_bytes(data[:1000])  # video-only, no wav
  builder = _build('ravdess/speech_av_small', manual, tmp_path / 'out')
  examples = _all(builder)
  assert [e['id'].decode() for e in examples] == ['01-01-01-01-01-01']
  e = examples[0]
  assert e['label'] == 0 and e['speaker'] == 1
  assert e['video'].shape == (4, 48, 48, 3) and e['audio'].shape == (180, 13)
  # The mp4's own 3.3 s track is shorter than the 3.6 s window.
  assert e['audio_length'] == _expected_audio_length(mp4, builder.builder_config.audio) < 180
  skipped = {os.path.basename(s['path']): s['reason']
             for entries in builder_lib.read_skip_report(builder.data_dir)['skipped'].values()
             for s in entries}
  assert 'truncated' in skipped['01-01-05-01-01-01-01.mp4']
  assert 'emotion 09' in skipped['01-01-09-01-01-01-01.mp4']
  assert 'folder is Actor_01' in skipped['01-01-04-01-01-01-02.mp4']
  assert 'no audio' in skipped['02-01-06-01-01-01-01.mp4']


def test_missing_manual_dir_stops_before_work(tmp_path):
  builder = tfds.builder('ravdess/speech_audio_small', data_dir=str(tmp_path))
  with pytest.raises(builder_lib.ManualDirError, match='zenodo'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / 'nowhere')))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(builder_lib.ManualDirError, match='Audio_Speech_Actors_01-24'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(tmp_path / 'empty')))
  assert not any(p.suffix.startswith('.tfrecord') for p in tmp_path.rglob('*'))


def test_assign_units():
  assert builder_lib.assign_units(range(1, 25)) == {
      'train': list(range(1, 15)), 'validation': list(range(15, 20)),
      'test': list(range(20, 25))}
  assert builder_lib.assign_units([1]) == {'train': [1]}


# ----------------------------------------------------------------------------
# CREMA-D


def test_crema_d_names_and_broken_clips(tmp_path):
  assert crema_d.parse_name('1001_DFA_ANG_XX.flv')['label'] == crema_d.EMOTION_CODES.index('ANG')
  for bad, why in [('1001_DFA_JOY_XX.wav', 'emotion JOY'), ('0999_DFA_ANG_XX.wav', 'actor 0999'),
                   ('1001_XYZ_ANG_XX.wav', 'sentence XYZ'), ('1001_DFA_ANG.wav', 'not ActorID')]:
    with pytest.raises(crema_d.CremaDNameError, match=why):
      crema_d.parse_name(bad)


def test_crema_d_av_and_audio(shared_data, tmp_path):
  src = shared_data / 'crema_d'
  if not (src / 'VideoFlash').is_dir():
    pytest.skip('CREMA-D samples absent')
  manual = tmp_path / 'manual'
  _link_tree(src, manual)
  flv = (src / 'VideoFlash/1001_DFA_ANG_XX.flv').read_bytes()
  (manual / 'VideoFlash/1076_MTI_NEU_XX.flv').write_bytes(flv)  # listed as broken
  (manual / 'VideoFlash/1003_DFA_SAD_XX.flv').write_bytes(flv[:len(flv) // 4])  # truncated
  (manual / 'AudioMP3/1002_DFA_joy_XX.mp3').write_bytes(b'\0' * 100)  # bad name
  av = _build('crema_d/av_small', manual, tmp_path / 'out')
  examples = _all(av)
  assert sorted(e['id'].decode() for e in examples) == sorted(
      f'1001_DFA_{c}_XX' for c in crema_d.EMOTION_CODES)
  votes = {}
  with open(src / 'processedResults/tabulatedVotes.csv', newline='') as f:
    for row in csv.DictReader(f):
      if row[''].startswith('3'):
        votes[row['fileName']] = np.array([float(row[c]) for c in 'NHSAFD'])
  for e in examples:
    cid = e['id'].decode()
    assert crema_d.EMOTION_CODES[e['label']] == cid.split('_')[2]
    assert e['speaker'] == 1001 and e['video'].shape == (4, 48, 48, 3)
    # 1.9-2.3 s tracks in the 2.5 s window: always padded.
    assert e['audio_length'] == _expected_audio_length(
        manual / f'VideoFlash/{cid}.flv', av.builder_config.audio) < 125
    np.testing.assert_allclose(e['soft_label'], votes[cid] / votes[cid].sum(), atol=1e-6)
  skipped = {os.path.basename(s['path']): s['reason']
             for entries in builder_lib.read_skip_report(av.data_dir)['skipped'].values()
             for s in entries}
  assert 'known broken' in skipped['1076_MTI_NEU_XX.flv']
  assert 'truncated' in skipped['1003_DFA_SAD_XX.flv']
  assert 'not ActorID' in skipped['1002_DFA_joy_XX.mp3']
  audio = _build('crema_d/audio_small', manual, tmp_path / 'out')
  ids = {e['id'].decode(): e for e in _all(audio)}
  # mp3s of actor 1002 and the flv tracks of actor 1001.
  assert {i.split('_')[0] for i in ids} == {'1001', '1002'} and len(ids) == 12
  assert all(e['audio'].shape == (125, 13) for e in ids.values())


# ----------------------------------------------------------------------------
# FER+


def test_ferplus_label_modes():
  v = lambda *x: np.array(x + (0,) * (10 - len(x)), np.float32)
  np.testing.assert_allclose(ferplus.ferplus_label(v(6, 3, 1), 'majority'), np.eye(8)[0])
  assert ferplus.ferplus_label(v(4, 4, 2), 'majority') is None  # no class > half
  # Single votes are zeroed before the rule: 5 of 9 remaining votes.
  np.testing.assert_allclose(ferplus.ferplus_label(v(5, 4, 1), 'majority'), np.eye(8)[0])
  assert ferplus.ferplus_label(v(0, 0, 0, 0, 0, 0, 0, 0, 8, 2), 'majority') is None  # unknown
  assert ferplus.ferplus_label(v(2, 0, 0, 0, 0, 0, 0, 0, 0, 8), 'majority') is None  # NF
  np.testing.assert_allclose(ferplus.ferplus_label(v(5, 3, 0, 0, 0, 0, 0, 0, 2), 'probability'),
                             [5 / 8, 3 / 8, 0, 0, 0, 0, 0, 0])
  assert ferplus.ferplus_label(v(0, 0, 0, 0, 0, 0, 0, 0, 6, 4), 'probability') is None
  np.testing.assert_allclose(ferplus.ferplus_label(v(4, 3, 3), 'multi_label'),
                             [0.4, 0.3, 0.3, 0, 0, 0, 0, 0])
  assert ferplus.ferplus_label(v(2, 2, 2, 2, 2), 'multi_label') is None


def test_ferplus_folder_with_damage(shared_data, tmp_path):
  src = shared_data / 'ferplus' / 'FER2013Valid'
  if not (src / 'label.csv').exists():
    pytest.skip('FER+ samples absent')
  rows = list(csv.reader(open(src / 'label.csv', newline='')))[:40]
  manual = tmp_path / 'manual' / 'FER2013Valid'
  manual.mkdir(parents=True)
  for row in rows:
    os.symlink(src / row[0], manual / row[0])
  (manual / rows[0][0]).unlink()
  (manual / rows[0][0]).write_bytes((src / rows[0][0]).read_bytes()[:60])  # corrupt PNG
  rows.append(['fer9999999.png', '(0, 0, 48, 48)'] + ['1'] * 10)  # image missing
  rows.append(['fer0028638.png', '(0, 0, 48)'] + ['1'] * 10)  # malformed box
  with open(manual / 'label.csv', 'w', newline='') as f:
    csv.writer(f).writerows(rows)
  builder = _build('ferplus/majority', tmp_path / 'manual', tmp_path / 'out')
  assert list(builder.info.splits.keys()) == ['validation']
  examples = {e['id'].decode(): e for e in _all(builder)}
  expected = {}
  for row in rows[1:40]:
    dist = ferplus.ferplus_label(np.array(row[2:12], np.float32), 'majority')
    if dist is not None:
      expected[row[0][:-4]] = int(np.argmax(dist))
  assert {k: int(e['label']) for k, e in examples.items()} == expected
  import cv2
  for uid, e in list(examples.items())[:5]:
    grey = cv2.imread(str(src / f'{uid}.png'), cv2.IMREAD_GRAYSCALE)
    assert e['video'].shape == (1, 48, 48, 3)
    np.testing.assert_array_equal(e['video'][0, :, :, 0], grey)
  reasons = [s['reason'] for s in builder_lib.read_skip_report(builder.data_dir)['skipped']
             ['validation']]
  assert any('corrupt' in r for r in reasons) and any('missing' in r for r in reasons)
  assert any('face box' in r for r in reasons)


def test_ferplus_folder_labels_match_fer2013new_rows(shared_data):
  src = shared_data / 'ferplus'
  if not (src / 'fer2013new.csv').exists():
    pytest.skip('fer2013new.csv absent')
  new = {r['Image name']: r for r in csv.DictReader(open(src / 'fer2013new.csv', newline=''))}
  cols = ['neutral', 'happiness', 'surprise', 'sadness', 'anger', 'disgust', 'fear',
          'contempt', 'unknown', 'NF']
  rows = list(csv.reader(open(src / 'FER2013Valid/label.csv', newline='')))
  same = 0
  for row in rows:
    ref = new[row[0]]  # every folder image is a fer2013new.csv row ...
    assert ref['Usage'] == 'PublicTest'  # ... of the validation (PublicTest) set
    assert sum(int(x) for x in row[2:12]) == 10  # ten raters
    same += [int(ref[c]) for c in cols] == [int(x) for x in row[2:12]]
  # The folder's label.csv predates the published csv's corrections: ~7% differ.
  assert 0.85 < same / len(rows) < 1.0


def test_ferplus_from_csv_pair(shared_data, tmp_path):
  src = shared_data / 'ferplus'
  if not (src / 'fer2013new.csv').exists():
    pytest.skip('fer2013new.csv absent')
  import cv2
  new_rows = list(csv.reader(open(src / 'fer2013new.csv', newline='')))
  # fer2013.csv is not in the samples: write the rows of the first validation
  # images from their PNGs, in the official format, aligned with fer2013new.csv.
  wanted = {r[0] for r in csv.reader(open(src / 'FER2013Valid/label.csv', newline=''))}
  picked = [i for i, r in enumerate(new_rows[1:], 1) if r[1] in wanted][:12]
  manual = tmp_path / 'manual'
  manual.mkdir()
  with open(manual / 'fer2013.csv', 'w', newline='') as f1, \
      open(manual / 'fer2013new.csv', 'w', newline='') as f2:
    w1, w2 = csv.writer(f1), csv.writer(f2)
    w1.writerow(['emotion', 'pixels', 'Usage'])
    w2.writerow(new_rows[0])
    for n, i in enumerate(picked):
      img = cv2.imread(str(src / 'FER2013Valid' / new_rows[i][1]), cv2.IMREAD_GRAYSCALE)
      pixels = ' '.join(map(str, img.flatten()))
      usage = new_rows[i][0] if n != 3 else 'Training'  # misaligned row
      w1.writerow([0, pixels if n != 5 else '1 2 3', usage])  # short pixel row
      w2.writerow(new_rows[i])
  builder = _build('ferplus/probability', manual, tmp_path / 'out')
  got = {e['id'].decode(): e for e in _all(builder)}
  for n, i in enumerate(picked):
    uid = new_rows[i][1][:-4]
    dist = ferplus.ferplus_label(np.array(new_rows[i][2:12], np.float32), 'probability')
    if n in (3, 5) or dist is None:
      assert uid not in got
    else:
      np.testing.assert_allclose(got[uid]['soft_label'], dist, atol=1e-6)
  reasons = ' '.join(s['reason'] for v in builder_lib.read_skip_report(
      builder.data_dir)['skipped'].values() for s in v)
  assert 'misaligned' in reasons and '2304 values' in reasons


# ----------------------------------------------------------------------------
# RAVDESS + FER+ pairing


def test_ravdess_ferplus_pairing(shared_data, tmp_path):
  from data_pipelines.builders import ravdess_ferplus as rf
  if not (shared_data / 'ferplus/FER2013Valid/label.csv').exists():
    pytest.skip('FER+ samples absent')
  manual = tmp_path / 'manual'
  manual.mkdir()
  # Two actors and 300 faces keep the test small.
  _link_tree(shared_data / 'ravdess', manual / 'ravdess',
             keep=lambda rel: rel.endswith('.wav') and ('Actor_01' in rel or 'Actor_02' in rel))
  rows = list(csv.reader(open(shared_data / 'ferplus/FER2013Valid/label.csv', newline='')))[:300]
  fer = manual / 'ferplus' / 'FER2013Valid'
  fer.mkdir(parents=True)
  for row in rows:
    os.symlink(shared_data / 'ferplus/FER2013Valid' / row[0], fer / row[0])
  with open(fer / 'label.csv', 'w', newline='') as f:
    csv.writer(f).writerows(rows)
  builder = _build('ravdess_ferplus/paired_small', manual, tmp_path / 'out')
  fer_label = {}
  for row in rows:
    dist = ferplus.ferplus_label(np.array(row[2:12], np.float32), 'majority')
    if dist is not None:
      fer_label[row[0][:-4]] = ferplus.EMOTIONS[int(np.argmax(dist))]
  same = {'neutral': 'neutral', 'happiness': 'happy', 'sadness': 'sad', 'anger': 'angry',
          'fear': 'fearful', 'disgust': 'disgust', 'surprise': 'surprised'}
  faces_by_split = {}
  for split in builder.info.splits.keys():
    for e in tfds.as_numpy(builder.as_dataset(split=split)):
      take, face_id = e['id'].decode().split('+')
      name = rf.CLASSES[e['label']]
      # The utterance's emotion (from its RAVDESS name) and the face's FER+
      # majority label are the same class.
      assert rf.CLASSES[rf.RAVDESS_TO_CLASS[int(take.split('-')[1]) - 1]] == name
      assert same[fer_label[face_id]] == name
      assert e['video'].shape == (1, 48, 48, 3) and e['audio'].shape == (180, 13)
      wav = (shared_data / 'ravdess' /
             f'Audio_Speech_Actors_01-24/Actor_{take[-2:]}/03-{take}.wav')
      assert e['audio_length'] == _expected_audio_length(wav, builder.builder_config.audio)
      faces_by_split.setdefault(split, set()).add(face_id)
  # 52 non-calm takes per actor; a class may run out of faces in a tiny
  # split (reported), so slightly fewer may be paired.
  assert 80 <= sum(v.num_examples for v in builder.info.splits.values()) <= 104
  splits = list(faces_by_split.values())
  assert all(not (a & b) for i, a in enumerate(splits) for b in splits[i + 1:])


def test_ravdess_video_only_take_pairs_with_its_wav(shared_data, tmp_path):
  src = shared_data / 'ravdess'
  mp4 = src / 'Video_Speech_Actor_01/Actor_01/01-01-01-01-01-01-01.mp4'
  wav = src / 'Audio_Speech_Actors_01-24/Actor_01/03-01-01-01-01-01-01.wav'
  if not (mp4.exists() and wav.exists()):
    pytest.skip('RAVDESS samples absent')
  manual = tmp_path / 'Actor_01'
  manual.mkdir()
  # The same take as a video-only (02) file next to its audio-only (03) wav.
  os.symlink(mp4, manual / '02-01-01-01-01-01-01.mp4')
  os.symlink(wav, manual / '03-01-01-01-01-01-01.wav')
  cfg = ravdess.RavdessConfig(name='t')  # speech_av defaults
  items, bad = ravdess.collect_items(str(tmp_path), cfg)
  assert not bad and len(items) == 1
  assert items[0]['video_path'].endswith('02-01-01-01-01-01-01.mp4')
  assert items[0]['audio_path'].endswith('03-01-01-01-01-01-01.wav')
  # With the AV (01) file present too, the take is used once, from the 01 file.
  os.symlink(mp4, manual / '01-01-01-01-01-01-01.mp4')
  items, _ = ravdess.collect_items(str(tmp_path), cfg)
  assert len(items) == 1 and items[0]['video_path'].endswith('01-01-01-01-01-01-01.mp4')
  assert items[0]['audio_path'] == items[0]['video_path']  # its own track by default


def test_ravdess_ferplus_heldout_faces_skip_fer2013train(shared_data, tmp_path):
  from data_pipelines.builders import ravdess_ferplus as rf
  sub = {'train': 'FER2013Train', 'validation': 'FER2013Valid'}
  if not all((shared_data / 'ferplus' / d / 'label.csv').exists() for d in sub.values()):
    pytest.skip('FER+ samples absent')
  manual = tmp_path / 'ferplus'
  ids = {}
  for split, d in sub.items():
    rows = list(csv.reader(open(shared_data / 'ferplus' / d / 'label.csv', newline='')))[:200]
    (manual / d).mkdir(parents=True)
    for row in rows:
      os.symlink(shared_data / 'ferplus' / d / row[0], manual / d / row[0])
    with open(manual / d / 'label.csv', 'w', newline='') as f:
      csv.writer(f).writerows(rows)
    ids[split] = {r[0][:-4] for r in rows}
  fractions = {'train': 0.6, 'validation': 0.2, 'test': 0.2}
  report = builder_lib.SkipReport('t')
  drawn = lambda pools: [{f[0] for faces in pools[s].values() for f in faces} for s in fractions]
  # Default: the FER+ train and validation folders each feed the pairing's splits.
  every = set().union(*drawn(rf.face_pools(str(manual), fractions, 0, report)))
  assert every & ids['train'] and every & ids['validation']
  # Held out: FER2013Valid only, cut into disjoint parts.
  parts = drawn(rf.face_pools(str(manual), fractions, 0, report, ('validation', 'test')))
  assert all(parts) and set().union(*parts) <= ids['validation']
  assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1:])
  with pytest.raises(builder_lib.ManualDirError, match='no FER\\+ faces'):
    rf.face_pools(str(manual), fractions, 0, report, ('test',))

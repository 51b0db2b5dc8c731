"""Small datasets in the official layouts, for checks where the real ones are absent.

Each writer lays out a handful of files exactly as the dataset's release
does (folder names, file formats, annotation syntax), with synthetic contents
(tones, random feature sequences) or, where given, real sample media: enough
for a builder to run end to end and produce real TFRecords. The builders'
tests and `experiments.check_presets` use them; they are never training data.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import wave

import numpy as np


def write_wav(path, seconds: float, freq: float, sr: int = 16000):
  """A voiced-like tone with a slow envelope (not silence), 16-bit mono."""
  path = pathlib.Path(path)
  t = np.arange(int(seconds * sr)) / sr
  x = 0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
  path.parent.mkdir(parents=True, exist_ok=True)
  with wave.open(str(path), 'wb') as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(sr)
    w.writeframes((x * 32767).astype('<i2').tobytes())


def write_dialog_avi(path, face_frames, fps: int = 10):
  """Two speakers side by side: the face on the left, its mirror on the right."""
  import av
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with av.open(str(path), 'w', format='avi') as out:
    stream = out.add_stream('mpeg4', rate=fps)
    h, w = face_frames.shape[1:3]
    stream.width, stream.height, stream.pix_fmt = 2 * w, h, 'yuv420p'
    for f in face_frames:
      frame = np.concatenate([f, f[:, ::-1]], axis=1)
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)


EMO_HEADER = '% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n'


def utterance(start, end, utt, label, vad=(2.5, 2.5, 2.5)) -> str:
  """One EmoEvaluation block: the header line and three rater lines."""
  return (f'[{start:.4f} - {end:.4f}]\t{utt}\t{label}\t[{vad[0]:.4f}, {vad[1]:.4f}, '
          f'{vad[2]:.4f}]\nC-E2:\tNeutral;\t()\nC-E3:\tNeutral;\t()\n'
          'A-E3:\tval 3; act 2; dom  2;\t()\n\n')


def face_frames(mp4, num_frames: int = 40, size: int = 200):
  """Square face crops from a RAVDESS-style 1280x720 clip (the actor is centred)."""
  import cv2
  from data_pipelines.features import media
  frames, _ = media.decode_video(mp4, num_frames=num_frames)
  faces = [f[60:660, 340:940] for f in frames]  # 600x600 around the face
  return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in faces])


def write_iemocap(root, face_mp4=None, sessions=(1, 5)) -> pathlib.Path:
  """IEMOCAP_full_release with one dialog per session: EmoEvaluation, transcriptions,
  sentence wavs and (given a face clip) DivX dialog videos."""
  root = pathlib.Path(root)
  faces = face_frames(face_mp4) if face_mp4 and os.path.exists(face_mp4) else None
  labels = ('neu', 'exc', 'ang', 'sad', 'hap', 'fru')
  for s in sessions:
    d = f'Ses0{s}F_impro01'
    sdir = root / f'Session{s}'
    utts = [(0.5 + 1.1 * i, 1.4 + 1.1 * i, f'{d}_{g}{i:03d}', labels[(i + s) % len(labels)])
            for i, g in enumerate('FMFM')]
    (sdir / 'dialog' / 'EmoEvaluation').mkdir(parents=True, exist_ok=True)
    (sdir / 'dialog' / 'EmoEvaluation' / f'{d}.txt').write_text(
        EMO_HEADER + ''.join(utterance(*u) for u in utts))
    (sdir / 'dialog' / 'transcriptions').mkdir(parents=True, exist_ok=True)
    (sdir / 'dialog' / 'transcriptions' / f'{d}.txt').write_text(''.join(
        f'{u[2]} [{u[0]:08.4f}-{u[1]:08.4f}]: Excuse me, is this the line.\n' for u in utts))
    for i, u in enumerate(utts):
      write_wav(sdir / 'sentences' / 'wav' / d / f'{u[2]}.wav', 1.2, 180 + 40 * i)
    if faces is not None:
      write_dialog_avi(sdir / 'dialog' / 'avi' / 'DivX' / f'{d}.avi', faces)
  return root


def _write_csd(path, root, data, dim_names=None):
  import h5py
  with h5py.File(path, 'w') as f:
    g = f.create_group(root)
    d = g.create_group('data')
    for vid, (feats, ivs) in data.items():
      v = d.create_group(vid)
      v.create_dataset('features', data=np.asarray(feats, np.float32))
      v.create_dataset('intervals', data=np.asarray(ivs, np.float64))
    m = g.create_group('metadata')
    m.attrs['root name'] = root
    m.attrs['dimension names'] = json.dumps(dim_names or [])


def _frames(start, end, rate, dim, seed):
  n = int((end - start) * rate)
  t = start + np.arange(n) / rate
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, dim)).astype(np.float32), np.stack([t, t + 1 / rate], 1)


def write_cmu_mosei(root) -> pathlib.Path:
  """CMU-MultimodalSDK computational sequences (.csd) and standard folds, 4 videos."""
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  # sentiment, happy, sad, anger, surprise, disgust, fear
  labels = {'vidA': ([[1.0, 2.0, 0.3, 0, 0, 0, 0]], [[0.0, 2.0]]),
            'vidB': ([[-1.0, 0, 0, 0.6, 0, 1.3, 0]], [[0.5, 2.5]]),
            'vidC': ([[-0.5, 0, 0, 0, 0, 0, 2.7]], [[1.0, 3.0]]),
            'vidD': ([[-0.5, 0, 1.5, 0, 0, 0, 0]], [[1.0, 3.0]])}
  vids = list(labels)
  _write_csd(root / 'CMU_MOSEI_Labels.csd', 'All Labels', labels)
  _write_csd(root / 'CMU_MOSEI_COVAREP.csd', 'COVAREP',
             {v: _frames(0, 6, 100, 74, i) for i, v in enumerate(vids)})
  _write_csd(root / 'CMU_MOSEI_VisualFacet42.csd', 'FACET 4.2',
             {v: _frames(0, 6, 30, 35, 10 + i) for i, v in enumerate(vids)})
  _write_csd(root / 'CMU_MOSEI_TimestampedWordVectors.csd', 'glove_vectors',
             {v: _frames(0, 6, 3, 300, 20 + i) for i, v in enumerate(vids)})
  (root / 'standard_folds.json').write_text(json.dumps(
      {'train': ['vidA', 'vidD'], 'valid': ['vidB'], 'test': ['vidC']}))
  return root


def write_deap_subject(path, ratings, seed: int):
  """`data_preprocessed_python/sXX.dat`: 40 channels x 8064 samples per trial."""
  rng = np.random.default_rng(seed)
  data = rng.standard_normal((len(ratings), 40, 8064)).astype(np.float32)
  data[:, :, :384] += 100.0  # the 3 s baseline, which builders must drop
  with open(path, 'wb') as f:
    pickle.dump({'data': data, 'labels': np.asarray(ratings, np.float32)}, f, protocol=2)


def drawn_face(scale: float = 1.0, h: int = 192, w: int = 240):
  """A cartoon face the Haar cascade finds, its brightness scaled by `scale`."""
  import cv2
  img = np.full((h, w, 3), 90, np.uint8)
  cv2.ellipse(img, (w // 2, h // 2), (50, 65), 0, 0, 360, (200, 170, 150), -1)
  for dx in (-20, 20):
    cv2.circle(img, (w // 2 + dx, h // 2 - 15), 7, (40, 30, 30), -1)
  cv2.ellipse(img, (w // 2, h // 2 + 30), (20, 8), 0, 0, 180, (60, 40, 40), 3)
  return (img * scale).astype(np.uint8)


def write_avi(path, frame_fn, seconds: float, fps: int = 5):
  """An MJPG avi whose frame at time t is frame_fn(t)."""
  import cv2
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  first = frame_fn(0.0)
  out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps,
                        (first.shape[1], first.shape[0]))
  if not out.isOpened():
    raise OSError(f'OpenCV cannot write {path}')
  for i in range(int(seconds * fps)):
    out.write(frame_fn(i / fps))
  out.release()


def write_deap(root, subjects=(1, 2, 3, 4), video_subjects=(1, 2)) -> pathlib.Path:
  """data_preprocessed_python/sXX.dat (3 trials each), face_video/sXX/sXX_trialYY.avi
  for `video_subjects` (in presentation order = experiment order) and
  metadata_csv/participant_ratings.csv."""
  root = pathlib.Path(root)
  pre = root / 'data_preprocessed_python'
  pre.mkdir(parents=True, exist_ok=True)
  for s in subjects:
    write_deap_subject(pre / f's{s:02d}.dat', [[7, 3, 5, 5], [5, 8, 5, 5], [2.0, 2.0, 1, 1]], s)
  for s in video_subjects:
    for trial in (1, 2, 3):
      write_avi(root / 'face_video' / f's{s:02d}' / f's{s:02d}_trial{trial:02d}.avi',
                lambda t: drawn_face(1.0), 60)
  meta = root / 'metadata_csv'
  meta.mkdir(exist_ok=True)
  rows = ['Participant_id,Trial,Experiment_id,Start_time,Valence,Arousal,Dominance,Liking,'
          'Familiarity']
  rows += [f'{s},{t},{t},0,5,5,5,5,1' for s in subjects for t in (1, 2, 3)]
  (meta / 'participant_ratings.csv').write_text('\n'.join(rows) + '\n')
  return root


def write_ferplus(root, source, per_split: int = 24) -> pathlib.Path:
  """FERPlus image folders (FER2013Train/Valid/Test with label.csv) holding the
  first `per_split` faces of the real FER2013Valid folder at `source`."""
  import shutil
  root = pathlib.Path(root)
  rows = pathlib.Path(source, 'FER2013Valid', 'label.csv').read_text().splitlines()
  for i, folder in enumerate(('FER2013Train', 'FER2013Valid', 'FER2013Test')):
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    mine = rows[i * per_split:(i + 1) * per_split]
    for row in mine:
      name = row.split(',')[0]
      shutil.copyfile(pathlib.Path(source, 'FER2013Valid', name), out / name)
    (out / 'label.csv').write_text('\n'.join(mine) + '\n')
  return root

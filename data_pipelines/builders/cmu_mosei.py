"""`cmu_mosei`: CMU-MOSEI from the CMU-MultimodalSDK computational sequences.

A computational sequence (`.csd`) is an HDF5 file with one root group named
after the sequence, holding `data/<video_id>/features` f[N, D] and
`data/<video_id>/intervals` f[N, 2] (start, end seconds) plus `metadata`.
Used sequences (file names as the SDK downloads them, configurable):
  labels  `CMU_MOSEI_Labels.csd` ('All Labels'): per labelled segment
          [sentiment in [-3, 3], happy, sad, anger, surprise, disgust, fear in [0, 3]]
  audio   `CMU_MOSEI_COVAREP.csd` (74-d)
  video   `CMU_MOSEI_VisualFacet42.csd` (FACET 4.2, 35-d) or OpenFace_2
  text    `CMU_MOSEI_TimestampedWordVectors.csd` (glove_vectors, 300-d)
One example per labelled segment: each modality's rows whose intervals
overlap the segment, cropped/zero-padded to a fixed length; the real rows
are stored as '<modality>_length'. Non-finite values (COVAREP writes -inf
for unvoiced frames) become 0.

Emotion class, as the papers that classify MOSEI emotions use it: the
argmax of the six intensities. A segment whose intensities are all zero
has no emotion (`zero_policy`: 'drop', or 'neutral' to add a 7th class);
a segment whose top intensity is shared by several emotions is ambiguous
(`tie_policy`: 'drop', or 'first' for the first in the order above).
`soft_label` is the intensity vector normalised to sum 1 (zeros for a
neutral segment); `sentiment` keeps the [-3, 3] score.

Standard folds (2249 / 300 / 678 videos): read from `standard_folds.json`
({"train": [ids], "valid": [ids], "test": [ids]}) in the manual folder, or
from the SDK (`mmsdk`) when it is installed. Without either, videos are
split 70/10/20 by a hash of their id, with a warning, so results are not
comparable to the papers. 'speaker' is a stable hash of the video id
(MOSEI has no speaker ids; each video is one speaker).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from mer_jax.contract import logger as logging

from data_pipelines.builders import builder_lib

EMOTIONS = ('happy', 'sad', 'anger', 'surprise', 'disgust', 'fear')

MANUAL_DIR_INSTRUCTIONS = """\
Download the CMU-MOSEI computational sequences with the CMU-MultimodalSDK
(https://github.com/CMU-MultiComp-Lab/CMU-MultimodalSDK,
`mmdatasdk.mmdataset(mmdatasdk.cmu_mosei.highlevel, DIR)` and
`mmdatasdk.cmu_mosei.labels`) and put the .csd files in the manual folder:
  <manual_dir>/CMU_MOSEI_Labels.csd
  <manual_dir>/CMU_MOSEI_COVAREP.csd
  <manual_dir>/CMU_MOSEI_VisualFacet42.csd   (or CMU_MOSEI_VisualOpenFace2.csd)
  <manual_dir>/CMU_MOSEI_TimestampedWordVectors.csd
Optionally add standard_folds.json with the SDK's standard train/valid/test
video ids (mmsdk.mmdatasdk.cmu_mosei.standard_folds).
"""


@dataclasses.dataclass
class CmuMoseiConfig(tfds.core.BuilderConfig):
  labels_file: str = 'CMU_MOSEI_Labels.csd'
  audio_file: str = 'CMU_MOSEI_COVAREP.csd'
  video_file: str = 'CMU_MOSEI_VisualFacet42.csd'
  text_file: str = 'CMU_MOSEI_TimestampedWordVectors.csd'
  audio_dim: int = 74
  video_dim: int = 35
  text_dim: int = 300
  audio_len: int = 500  # COVAREP at 100 Hz: 5 s
  video_len: int = 150  # FACET at 30 Hz: 5 s
  text_len: int = 50  # words
  zero_policy: str = 'drop'  # 'drop' or 'neutral'
  tie_policy: str = 'drop'  # 'drop' or 'first'


def emotion_class(intensities, zero_policy: str = 'drop', tie_policy: str = 'drop'):
  """Six intensities -> class index, or None to drop the segment (see module doc)."""
  x = np.asarray(intensities, np.float64)
  if x.shape != (6,) or not np.all(np.isfinite(x)):
    raise ValueError(f'expected 6 finite emotion intensities, got {intensities!r}')
  top = x.max()
  if top <= 0:
    if zero_policy == 'neutral':
      return len(EMOTIONS)
    if zero_policy == 'drop':
      return None
    raise ValueError(f'unknown zero_policy {zero_policy!r}')
  winners = np.flatnonzero(np.isclose(x, top))
  if len(winners) > 1:
    if tie_policy == 'drop':
      return None
    if tie_policy != 'first':
      raise ValueError(f'unknown tie_policy {tie_policy!r}')
  return int(winners[0])


def read_csd(path) -> tuple:
  """(sequence name, {video_id: (features, intervals)}) of a computational sequence."""
  import h5py
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: computational sequence missing')
  try:
    with h5py.File(path, 'r') as f:
      roots = list(f.keys())
      if len(roots) != 1 or 'data' not in f[roots[0]]:
        raise ValueError(f'{path}: expected one root group with data/, found {roots}')
      data = f[roots[0]]['data']
      out = {}
      for vid in data:
        out[vid] = (np.asarray(data[vid]['features'], np.float32),
                    np.asarray(data[vid]['intervals'], np.float64))
      return roots[0], out
  except OSError as e:
    raise ValueError(f'{path}: not a readable HDF5 computational sequence ({e})') from None


def segment(features, intervals, start, end, length, dim, where):
  """Rows overlapping [start, end), non-finite -> 0, crop/pad to [length, dim]."""
  if features.ndim != 2 or features.shape[1] != dim or len(intervals) != len(features):
    raise ValueError(f'{where}: features {features.shape} / intervals {intervals.shape} '
                     f'do not match the expected dim {dim}')
  keep = (intervals[:, 1] > start) & (intervals[:, 0] < end)
  rows = np.nan_to_num(features[keep], nan=0.0, posinf=0.0, neginf=0.0)
  out = np.zeros((length, dim), np.float32)
  out[:min(length, len(rows))] = rows[:length]
  return out, int(keep.sum())


def _hash_unit(vid: str) -> int:
  return int.from_bytes(hashlib.md5(vid.encode()).digest()[:4], 'little')


def standard_folds(manual_dir: str, video_ids) -> dict:
  """{video_id: 'train'|'validation'|'test'} (see module doc for the sources)."""
  path = os.path.join(manual_dir, 'standard_folds.json')
  folds = None
  if os.path.isfile(path):
    with open(path) as f:
      folds = json.load(f)
  else:
    try:
      from mmsdk.mmdatasdk.dataset.standard_datasets.CMU_MOSEI import cmu_mosei_std_folds as sf
      folds = {'train': sf.standard_train_fold, 'valid': sf.standard_valid_fold,
               'test': sf.standard_test_fold}
    except ImportError:
      pass
  if folds is not None:
    out = {}
    for key, split in (('train', 'train'), ('valid', 'validation'), ('test', 'test')):
      for vid in folds.get(key, []):
        out[vid] = split
    return out
  logging.warning('cmu_mosei: no standard_folds.json and no mmsdk; splitting videos 70/10/20 '
                  'by a hash of their ids (not the standard folds).')
  out = {}
  for vid in video_ids:
    r = _hash_unit(vid) % 10
    out[vid] = 'train' if r < 7 else ('validation' if r < 8 else 'test')
  return out


class CmuMosei(tfds.core.GeneratorBasedBuilder):
  """CMU-MOSEI segments: COVAREP, FACET/OpenFace and GloVe sequences, 6 emotions."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': "True lengths before padding: 'audio_length', 'video_length', "
                            "'text_length'."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DIR_INSTRUCTIONS
  BUILDER_CONFIGS = [
      CmuMoseiConfig(name='emotions', description='6 emotions (argmax intensity; zero and tied '
                     'segments dropped); COVAREP, FACET 4.2, GloVe.'),
      CmuMoseiConfig(name='emotions_neutral', description='7 classes: all-zero segments as '
                     'neutral.', zero_policy='neutral'),
      CmuMoseiConfig(name='emotions_openface', description='emotions with OpenFace 2 (709-d).',
                     video_file='CMU_MOSEI_VisualOpenFace2.csd', video_dim=709),
  ]
  DEFAULT_CONFIG_NAME = 'emotions'

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    names = EMOTIONS + (('neutral',) if c.zero_policy == 'neutral' else ())
    length = lambda: tfds.features.Scalar(dtype=np.int64, doc='real rows before padding')
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'audio': tfds.features.Tensor(shape=(c.audio_len, c.audio_dim), dtype=np.float32),
            'video': tfds.features.Tensor(shape=(c.video_len, c.video_dim), dtype=np.float32),
            'text': tfds.features.Tensor(shape=(c.text_len, c.text_dim), dtype=np.float32),
            'audio_length': length(), 'video_length': length(), 'text_length': length(),
            'label': tfds.features.ClassLabel(names=names),
            'soft_label': tfds.features.Tensor(shape=(len(names),), dtype=np.float32),
            'sentiment': np.float32,
            'speaker': np.int64,
        }),
        supervised_keys=None,
        homepage='https://github.com/CMU-MultiComp-Lab/CMU-MultimodalSDK', description=__doc__)

  def _split_generators(self, dl_manager):
    c = self.builder_config
    manual_dir = builder_lib.require_manual_dir(
        'cmu_mosei', builder_lib.manual_dir_of(dl_manager),
        [c.labels_file, c.audio_file, c.video_file, c.text_file], MANUAL_DIR_INSTRUCTIONS,
        any_of=False)
    report = builder_lib.SkipReport(f'cmu_mosei/{c.name}')
    seqs = {}
    for key in ('labels', 'audio', 'video', 'text'):
      path = os.path.join(manual_dir, getattr(c, f'{key}_file'))
      try:
        seqs[key] = read_csd(path)[1]
      except ValueError as e:
        raise builder_lib.ManualDirError(f'cmu_mosei: {e}\n{MANUAL_DIR_INSTRUCTIONS}') from None
    folds = standard_folds(manual_dir, sorted(seqs['labels']))
    by_split = {}
    for vid in sorted(seqs['labels']):
      split = folds.get(vid)
      if split is None:
        report.add('(scan)', vid, 'video id in no standard fold')
        continue
      by_split.setdefault(split, []).append(vid)
    gens = {s: self._generate_examples(vids, seqs, report, s) for s, vids in by_split.items()}
    return gens

  def _generate_examples(self, vids, seqs, report, split):
    c = self.builder_config
    dropped = {'zero': 0, 'tie': 0}
    for vid in vids:
      labels, label_iv = seqs['labels'][vid]
      missing = [k for k in ('audio', 'video', 'text') if vid not in seqs[k]]
      if missing:
        report.add(split, vid, f'no {"/".join(missing)} sequence for this video')
        continue
      for k, (row, (start, end)) in enumerate(zip(labels, label_iv)):
        where = f'{vid}[{k}] ({start:.2f}-{end:.2f} s)'
        if row.shape[0] != 7 or not np.all(np.isfinite(row)):
          report.add(split, where, f'label row {row.tolist()} is not 7 finite values')
          continue
        cls = emotion_class(row[1:], c.zero_policy, c.tie_policy)
        if cls is None:
          dropped['zero' if row[1:].max() <= 0 else 'tie'] += 1
          continue
        try:
          a, na = segment(*seqs['audio'][vid], start, end, c.audio_len, c.audio_dim, where)
          v, nv = segment(*seqs['video'][vid], start, end, c.video_len, c.video_dim, where)
          t, nt = segment(*seqs['text'][vid], start, end, c.text_len, c.text_dim, where)
        except ValueError as e:
          report.add(split, where, str(e))
          continue
        if min(na, nv, nt) == 0:
          report.add(split, where, f'a modality has no frames in the segment '
                     f'(audio {na}, video {nv}, text {nt})')
          continue
        soft = np.zeros(len(EMOTIONS) + (c.zero_policy == 'neutral'), np.float32)
        if row[1:].sum() > 0:
          soft[:6] = row[1:] / row[1:].sum()
        else:
          soft[-1] = 1.0
        uid = f'{vid}[{k}]'
        yield uid, {'id': uid, 'audio': a, 'video': v, 'text': t, 'label': cls,
                    'audio_length': min(na, c.audio_len), 'video_length': min(nv, c.video_len),
                    'text_length': min(nt, c.text_len),
                    'soft_label': soft, 'sentiment': float(row[0]),
                    'speaker': _hash_unit(vid) % (2**31)}
    logging.info('cmu_mosei/%s %s: segments dropped: %s', c.name, split, dropped)
    report.write(self.data_dir)

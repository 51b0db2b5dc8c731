"""`ferplus`: FER2013 faces with the FER+ relabelling (10 crowd votes per face).

Two sources, whichever the manual folder holds (image folders win):
  image folders  `FER2013Train/`, `FER2013Valid/`, `FER2013Test/` with PNGs and
                 `label.csv` rows `name,"(x, y, w, h)",<10 vote counts>`;
  csv            `fer2013.csv` (`emotion,pixels,Usage`, 48x48 grey values) with
                 `fer2013new.csv`, which aligns with it row by row
                 (`Usage,Image name,<10 vote counts>`; rows without an image
                 name are faces FER+ dropped).
Vote order: neutral, happiness, surprise, sadness, anger, disgust, fear,
contempt, unknown, NF (not a face). Splits: train (Training / FER2013Train),
validation (PublicTest / FER2013Valid), test (PrivateTest / FER2013Test).

Label modes, as the FER+ reference code defines them (`ferplus_label`):
  every mode first zeroes single votes (one rater is treated as noise);
  majority     keep a face only when one class has more than half of the
               remaining votes; that class is the label;
  probability  the top classes (at most 3, until 75% of the votes are covered)
               form the distribution; faces where these cover no more than
               half of the votes, or where unknown/NF ties in, are dropped;
  multi_label  every class with at least 30% of the votes; faces where these
               cover no more than half of the votes are dropped.
In all modes a face whose top class is unknown or NF is dropped, so labels
are over the 8 emotions. `soft_label` is the resulting distribution over
the 8 emotions, `label` its argmax, `votes` the raw 10 counts.

Faces are stored as 'video' u8[1, S, S, 3] (a clip of one frame) so that
face models share the video input path; 'speaker' is -1 (FER has no ids).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from mer_jax.contract import logger as logging

from data_pipelines.builders import builder_lib

EMOTIONS = ('neutral', 'happiness', 'surprise', 'sadness', 'anger', 'disgust', 'fear',
            'contempt')
VOTE_NAMES = EMOTIONS + ('unknown', 'NF')
LABEL_MODES = ('majority', 'probability', 'multi_label')
_FOLDERS = {'train': 'FER2013Train', 'validation': 'FER2013Valid', 'test': 'FER2013Test'}
_USAGE = {'Training': 'train', 'PublicTest': 'validation', 'PrivateTest': 'test'}
_BOX_RE = re.compile(r'^\(\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\s*\)$')

MANUAL_DIR_INSTRUCTIONS = """\
Get FER+ labels from https://github.com/microsoft/FERPlus (`fer2013new.csv`)
and the FER2013 images from the Kaggle "Challenges in Representation
Learning: Facial Expression Recognition" data (`fer2013.csv`). Either put
both csv files in the manual folder:
  <manual_dir>/fer2013.csv
  <manual_dir>/fer2013new.csv
or run the FERPlus `generate_training_data.py` and place its output folders:
  <manual_dir>/FER2013Train/{fer0000000.png, ..., label.csv}
  <manual_dir>/FER2013Valid/...   <manual_dir>/FER2013Test/...
"""


def ferplus_label(votes, mode: str):
  """10 vote counts -> f32[8] distribution over the emotions, or None (drop the face)."""
  if mode not in LABEL_MODES:
    raise ValueError(f'unknown FER+ label mode {mode!r}; use one of {LABEL_MODES}')
  raw = np.asarray(votes, np.float64).copy()
  if raw.shape != (10,) or np.any(raw < 0):
    raise ValueError(f'expected 10 non-negative vote counts, got {votes!r}')
  raw[raw <= 1.0] = 0.0  # single votes are outliers
  total = raw.sum()
  if total <= 0:
    return None
  kept = np.zeros(10)
  if mode == 'majority':
    top = int(np.argmax(raw))
    if raw[top] <= 0.5 * total:
      return None
    kept[top] = raw[top]
  elif mode == 'probability':
    work = raw.copy()
    covered, count, stop = 0.0, 0, False
    while covered < 0.75 * total and count < 3 and not stop:
      peak = work.max()
      if peak <= 0:
        break
      for i in np.flatnonzero(work == peak):  # ascending: emotions before unknown/NF
        if i >= 8:
          # unknown / NF among the top votes: drop the face when it leads,
          # otherwise stop collecting classes
          if kept.sum() == 0:
            return None
          stop = True
          break
        kept[i] = work[i]
        work[i] = 0.0
        covered += kept[i]
        count += 1
    if kept.sum() <= 0.5 * total or count > 3:
      return None
  else:  # multi_label
    keep = raw >= 0.3 * total
    kept[keep] = raw[keep]
    if kept.sum() <= 0.5 * total:
      return None
  if int(np.argmax(kept)) >= 8:  # unknown or not-a-face
    return None
  dist = kept[:8]
  if dist.sum() <= 0:
    return None
  return (dist / dist.sum()).astype(np.float32)


@dataclasses.dataclass
class FerPlusConfig(tfds.core.BuilderConfig):
  label_mode: str = 'majority'
  size: int = 48  # stored face size (FER2013 faces are 48x48)


class Ferplus(tfds.core.GeneratorBasedBuilder):
  """FER+ faces, one frame each, with FER+ label modes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DIR_INSTRUCTIONS
  BUILDER_CONFIGS = [
      FerPlusConfig(name='majority', description='Majority-vote labels (8 emotions).'),
      FerPlusConfig(name='probability', description='Vote distributions (top <= 3 classes).',
                    label_mode='probability'),
      FerPlusConfig(name='multi_label', description='Classes with >= 30% of the votes.',
                    label_mode='multi_label'),
  ]
  DEFAULT_CONFIG_NAME = 'majority'

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'video': tfds.features.Tensor(shape=(1, s, s, 3), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=EMOTIONS),
            'soft_label': tfds.features.Tensor(shape=(len(EMOTIONS),), dtype=np.float32),
            'votes': tfds.features.Tensor(shape=(10,), dtype=np.float32),
            'speaker': np.int64,
        }),
        supervised_keys=None, homepage='https://github.com/microsoft/FERPlus',
        description=__doc__)

  def _split_generators(self, dl_manager):
    manual_dir = builder_lib.require_manual_dir(
        'ferplus', builder_lib.manual_dir_of(dl_manager),
        list(_FOLDERS.values()) + ['fer2013.csv'], MANUAL_DIR_INSTRUCTIONS)
    report = builder_lib.SkipReport(f'ferplus/{self.builder_config.name}')
    folders = {split: os.path.join(manual_dir, sub) for split, sub in _FOLDERS.items()
               if os.path.isdir(os.path.join(manual_dir, sub))}
    if folders:
      sources = {split: iter_folder(path, report, split) for split, path in folders.items()}
    else:
      new_csv = os.path.join(manual_dir, 'fer2013new.csv')
      if not os.path.isfile(new_csv):
        raise builder_lib.ManualDirError(
            f'ferplus: {new_csv} is missing (needed with fer2013.csv).\n'
            f'{MANUAL_DIR_INSTRUCTIONS}')
      rows = read_csv_pair(os.path.join(manual_dir, 'fer2013.csv'), new_csv, report)
      sources = {split: iter(rows.get(split, [])) for split in _FOLDERS if rows.get(split)}
    return {split: self._generate_examples(src, report, split)
            for split, src in sources.items()}

  def _generate_examples(self, source, report, split):
    cfg = self.builder_config
    dropped = 0
    for uid, grey, votes in source:
      dist = ferplus_label(votes, cfg.label_mode)
      if dist is None:
        dropped += 1  # by design of the label mode, not a bad file
        continue
      yield uid, {'id': uid, 'video': to_face_clip(grey, cfg.size),
                  'label': int(np.argmax(dist)), 'soft_label': dist,
                  'votes': np.asarray(votes, np.float32), 'speaker': -1}
    logging.info('ferplus/%s %s: %d faces dropped by the %s label rule', cfg.name, split,
                 dropped, cfg.label_mode)
    report.write(self.data_dir)


def to_face_clip(grey: np.ndarray, size: int) -> np.ndarray:
  """u8[H, W] grey face -> u8[1, size, size, 3]."""
  from data_pipelines.features import video as video_features
  return video_features.resize_frames(grey[None], size)


def _parse_votes(cells, where):
  if len(cells) != 10:
    raise ValueError(f'{where}: expected 10 vote counts, found {len(cells)}')
  try:
    votes = np.array([float(c) for c in cells], np.float32)
  except ValueError:
    raise ValueError(f'{where}: non-numeric vote counts {cells}') from None
  if np.any(votes < 0):
    raise ValueError(f'{where}: negative vote counts {cells}')
  return votes


def iter_folder(folder: str, report, split: str):
  """(id, u8[48, 48] grey, votes) from a FERPlus image folder with label.csv."""
  import cv2
  label_csv = os.path.join(folder, 'label.csv')
  if not os.path.isfile(label_csv):
    raise builder_lib.ManualDirError(
        f'ferplus: {label_csv} is missing.\n{MANUAL_DIR_INSTRUCTIONS}')
  with open(label_csv, newline='') as f:
    for lineno, row in enumerate(csv.reader(f), 1):
      if not row:
        continue
      where = f'{label_csv}:{lineno}'
      try:
        name, box = row[0].strip(), row[1].strip()
        votes = _parse_votes(row[2:12] if len(row) >= 12 else row[2:], where)
        m = _BOX_RE.match(box)
        if not m:
          raise ValueError(f'{where}: face box {box!r} is not "(x, y, w, h)"')
      except (ValueError, IndexError) as e:
        report.add(split, where, str(e))
        continue
      path = os.path.join(folder, name)
      if not os.path.isfile(path):
        report.add(split, path, 'listed in label.csv but the image file is missing')
        continue
      img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
      if img is None or img.size == 0:
        report.add(split, path, 'unreadable or corrupt image')
        continue
      x, y, w, h = (int(v) for v in m.groups())
      crop = img[y:y + h, x:x + w]
      if crop.size == 0:
        report.add(split, path, f'face box {box} lies outside the {img.shape} image')
        continue
      yield os.path.splitext(name)[0], crop, votes


def read_csv_pair(fer_csv: str, new_csv: str, report) -> dict:
  """{split: [(id, u8[48, 48], votes)]} from fer2013.csv + fer2013new.csv (row-aligned)."""
  if not os.path.isfile(fer_csv):
    raise builder_lib.ManualDirError(f'ferplus: {fer_csv} is missing.\n{MANUAL_DIR_INSTRUCTIONS}')
  out = {}
  with open(fer_csv, newline='') as f1, open(new_csv, newline='') as f2:
    r1, r2 = csv.reader(f1), csv.reader(f2)
    h1, h2 = next(r1, None), next(r2, None)
    if not h1 or [c.strip() for c in h1[:3]] != ['emotion', 'pixels', 'Usage']:
      raise ValueError(f'{fer_csv}: header {h1} is not emotion,pixels,Usage')
    if not h2 or h2[0].strip() != 'Usage' or len(h2) < 12:
      raise ValueError(f'{new_csv}: header {h2} is not Usage,Image name,<10 votes>')
    for i, (a, b) in enumerate(zip(r1, r2)):
      where = f'{new_csv}:{i + 2}'
      if len(b) < 2 or not b[1].strip():
        continue  # FER+ dropped this FER2013 face
      usage = b[0].strip()
      if len(a) < 3 or a[2].strip() != usage:
        report.add('(scan)', where, f'Usage {usage!r} disagrees with fer2013.csv row '
                   f'{i + 2} ({a[2] if len(a) > 2 else "missing"!r}): files misaligned')
        continue
      split = _USAGE.get(usage)
      if split is None:
        report.add('(scan)', where, f'unknown Usage {usage!r}')
        continue
      try:
        votes = _parse_votes(b[2:12], where)
        pixels = np.array(a[1].split(), np.float32)
        if pixels.size != 48 * 48 or np.any(pixels < 0) or np.any(pixels > 255):
          raise ValueError(f'{fer_csv}:{i + 2}: pixels must be 2304 values in 0..255, '
                           f'got {pixels.size}')
      except ValueError as e:
        report.add(split, where, str(e))
        continue
      uid = os.path.splitext(b[1].strip())[0]
      out.setdefault(split, []).append((uid, pixels.reshape(48, 48).astype(np.uint8), votes))
  return out

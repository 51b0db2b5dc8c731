"""`deap`: DEAP physiological signals with valence/arousal ratings.

`data_preprocessed_python/sXX.dat` (XX = 01..32) are Python 2 pickles (load
with encoding='latin1') holding `data` f[40 trials, 40 channels, 8064] at
128 Hz (63 s: a 3 s pre-trial baseline, then 60 s of the music video) and
`labels` f[40, 4] (valence, arousal, dominance, liking on 1..9).
Channels 0-31 are EEG, 32-39 peripheral (EOG, EMG, GSR, respiration,
plethysmograph, temperature).

Each trial (baseline removed by default) is cut into windows of
`window_s` seconds with hop `hop_s`; each window is one example whose
'physio' is f32[T, 40]: the window's samples averaged over blocks of
`downsample` samples (128 Hz / 4 = 32 Hz by default), each channel
z-normalised with the trial's statistics. Windows of a trial share its label.

Labels: a rating above `threshold` (default 5, the usual midpoint) is
"high". Configs: valence_arousal (4 classes: LV-LA, LV-HA, HV-LA, HV-HA),
valence (low/high), arousal (low/high).
Splits are subject-independent: sorted subjects, the last 20% test, the 20%
before validate, the rest train (32 subjects: 1-20 / 21-26 / 27-32);
'speaker' is the subject for k-fold runs (`config.dataset.fold`).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import builder_lib

MODULE = 'data_pipelines.builders.deap'
SAMPLE_RATE = 128
NUM_CHANNELS = 40
BASELINE_S = 3.0
LABEL_NAMES = {
    'valence_arousal': ('low_valence_low_arousal', 'low_valence_high_arousal',
                        'high_valence_low_arousal', 'high_valence_high_arousal'),
    'valence': ('low_valence', 'high_valence'),
    'arousal': ('low_arousal', 'high_arousal'),
}
_FILE_RE = re.compile(r'^s(\d{2})\.dat$')

MANUAL_DIR_INSTRUCTIONS = """\
Request DEAP at https://www.eecs.qmul.ac.uk/mmv/datasets/deap/ (EULA) and
extract `data_preprocessed_python.zip` so that the manual folder holds
  <manual_dir>/data_preprocessed_python/s01.dat ... s32.dat
(or the .dat files directly in the manual folder).
"""


@dataclasses.dataclass
class DeapConfig(tfds.core.BuilderConfig):
  target: str = 'valence_arousal'
  threshold: float = 5.0  # rating > threshold is "high"
  window_s: float = 10.0
  hop_s: float = 10.0
  downsample: int = 4
  drop_baseline: bool = True
  val_frac: float = 0.2
  test_frac: float = 0.2

  @property
  def window_len(self) -> int:
    return int(round(self.window_s * SAMPLE_RATE)) // self.downsample


def label_of(ratings, target: str, threshold: float) -> int:
  """(valence, arousal, ...) ratings -> class index of `target`."""
  valence, arousal = float(ratings[0]), float(ratings[1])
  if not (1.0 <= valence <= 9.0 and 1.0 <= arousal <= 9.0):
    raise ValueError(f'ratings {list(ratings)} outside 1..9')
  hv, ha = int(valence > threshold), int(arousal > threshold)
  if target == 'valence_arousal':
    return 2 * hv + ha
  if target == 'valence':
    return hv
  if target == 'arousal':
    return ha
  raise ValueError(f'unknown DEAP target {target!r}')


def windows(trial: np.ndarray, cfg) -> np.ndarray:
  """f[40, N] trial -> f32[num_windows, T, 40] z-normalised, block-averaged windows."""
  x = trial[:, int(BASELINE_S * SAMPLE_RATE):] if cfg.drop_baseline else trial
  x = x.astype(np.float64)
  mean, std = x.mean(axis=1, keepdims=True), x.std(axis=1, keepdims=True)
  x = (x - mean) / np.where(std > 0, std, 1.0)
  win, hop = int(round(cfg.window_s * SAMPLE_RATE)), int(round(cfg.hop_s * SAMPLE_RATE))
  starts = range(0, x.shape[1] - win + 1, hop)
  out = []
  for s in starts:
    w = x[:, s:s + win]
    t = win // cfg.downsample
    w = w[:, :t * cfg.downsample].reshape(NUM_CHANNELS, t, cfg.downsample).mean(axis=2)
    out.append(w.T.astype(np.float32))
  return np.stack(out) if out else np.zeros((0, win // cfg.downsample, NUM_CHANNELS), np.float32)


def load_subject(path):
  """(data f[40, 40, 8064], labels f[40, 4]) of one sXX.dat; raises ValueError."""
  try:
    with open(path, 'rb') as f:
      d = pickle.load(f, encoding='latin1')
  except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as e:
    raise ValueError(f'{path}: not a readable DEAP pickle ({type(e).__name__}: {e})') from None
  if not isinstance(d, dict) or 'data' not in d or 'labels' not in d:
    raise ValueError(f'{path}: pickle lacks the data/labels entries')
  data, labels = np.asarray(d['data']), np.asarray(d['labels'])
  if data.ndim != 3 or data.shape[1] != NUM_CHANNELS or labels.shape != (data.shape[0], 4):
    raise ValueError(f'{path}: data {data.shape} / labels {labels.shape} are not '
                     f'[trials, 40, samples] / [trials, 4]')
  return data, labels


def process_item(item, cfg):
  """One subject file -> list of (key, example) over its trials' windows."""
  data, labels = load_subject(item['path'])
  out = []
  for trial in range(data.shape[0]):
    where = f'{item["path"]} trial {trial + 1}'
    if not np.all(np.isfinite(data[trial])):
      out.append(builder_lib.Skip(where, 'non-finite samples'))
      continue
    try:
      label = label_of(labels[trial], cfg.target, cfg.threshold)
    except ValueError as e:
      out.append(builder_lib.Skip(where, str(e)))
      continue
    for w, x in enumerate(windows(data[trial], cfg)):
      uid = f's{item["subject"]:02d}_t{trial + 1:02d}_w{w:02d}'
      out.append((uid, {'id': uid, 'physio': x, 'label': label,
                        'speaker': item['subject'], 'trial': trial + 1,
                        'ratings': labels[trial].astype(np.float32)}))
  if not any(isinstance(o, tuple) for o in out):
    raise ValueError(f'{item["path"]}: no usable trial windows')
  return out


class Deap(tfds.core.GeneratorBasedBuilder):
  """DEAP EEG + peripheral windows with thresholded valence/arousal."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DIR_INSTRUCTIONS
  FOLD_GROUP_KEY = 'speaker'
  BUILDER_CONFIGS = [
      DeapConfig(name='valence_arousal', description='4 classes from valence x arousal > 5; '
                 '10 s windows at 32 Hz, 40 channels.'),
      DeapConfig(name='valence', description='Valence > 5.', target='valence'),
      DeapConfig(name='arousal', description='Arousal > 5.', target='arousal'),
  ]
  DEFAULT_CONFIG_NAME = 'valence_arousal'

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'physio': tfds.features.Tensor(shape=(c.window_len, NUM_CHANNELS),
                                           dtype=np.float32),
            'label': tfds.features.ClassLabel(names=LABEL_NAMES[c.target]),
            'speaker': np.int64,
            'trial': np.int64,
            'ratings': tfds.features.Tensor(shape=(4,), dtype=np.float32),
        }),
        supervised_keys=None, homepage='https://www.eecs.qmul.ac.uk/mmv/datasets/deap/',
        description=__doc__)

  def _split_generators(self, dl_manager):
    c = self.builder_config
    manual_dir = builder_lib.require_manual_dir(
        'deap', builder_lib.manual_dir_of(dl_manager),
        ['data_preprocessed_python/s*.dat', 's*.dat'], MANUAL_DIR_INSTRUCTIONS)
    folder = os.path.join(manual_dir, 'data_preprocessed_python')
    if not os.path.isdir(folder):
      folder = manual_dir
    report = builder_lib.SkipReport(f'deap/{c.name}')
    items = []
    for fname in sorted(os.listdir(folder)):
      if not fname.endswith('.dat'):
        continue
      m = _FILE_RE.match(fname)
      if not m or not 1 <= int(m.group(1)) <= 32:
        report.add('(scan)', os.path.join(folder, fname), 'name is not sXX.dat with XX in 01-32')
        continue
      items.append({'path': os.path.join(folder, fname), 'subject': int(m.group(1))})
    # One work item per subject file (~100 MB); it returns all its windows.
    return builder_lib.build_splits(self, MODULE, 'process_item', items, report,
                                    lambda ex: int(ex['speaker']), c.val_frac, c.test_frac,
                                    item_unit_fn=lambda it: int(it['subject']))

  def _generate_examples(self):  # examples come from build_splits
    raise NotImplementedError

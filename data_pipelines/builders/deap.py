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

Face video (`with_video` configs): the release's `face_video.zip` holds
`sXX/sXX_trialYY.avi` (frontal face, DV 720x576 at 50 fps) for participants
1-22 only. For each physio window, `video_frames` frames are taken at uniform
times over the window's span of the trial video, the face is cropped with the
shared code (features/clip.py, face.py) and resized to `frame_size`.
Alignment: the video time of a physio sample is its time after the 3 s
baseline plus `video_onset_s`, the time in the avi at which the music video
starts (0 by default: the trial avi is assumed to start at stimulus onset; set
it if your copy of the videos starts earlier). Trial numbers: `YY` in the
file names counts in presentation order, while the preprocessed arrays are
in experiment-id (music video) order, so `video_trial_order='presentation'`
maps (participant, Trial) to Experiment_id through
`metadata_csv/participant_ratings.csv` (required then; 'experiment' reads
`YY` as the experiment id); 'trial' is the experiment id. Participants or trials without a video keep
their physio windows with video 0 in 'mask' and zero frames, never faked; so
does a window in which no face is detected (`missing_face='mask'`).
'video_length' counts the window's real frames: sample times that fall
outside the video (a short recording, or the baseline when it is kept) are
zero padding at the end; 0 when video is masked. 'mask' is in
contract.MODALITIES order (audio, video, text, physio).

Labels: a rating above `threshold` (default 5, the usual midpoint) is
"high". Configs: valence_arousal (4 classes: LV-LA, LV-HA, HV-LA, HV-HA),
valence (low/high), arousal (low/high), all physio only;
valence_arousal_face (face video + physio: 3 s windows at 128 Hz, 16 face
crops of 112x112 per window); valence_arousal_face_small (tests).
Splits are subject-independent: sorted subjects, the last 20% test, the 20%
before validate, the rest train (32 subjects: 1-20 / 21-26 / 27-32);
'speaker' is the subject for k-fold runs (`config.dataset.fold`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pickle
import re

import numpy as np
import tensorflow_datasets as tfds

from mer_jax.contract import logger as logging

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
_VIDEO_RE = re.compile(r'^s(\d{2})_trial(\d{2})\.avi$', re.IGNORECASE)
RATINGS_CSV = 'participant_ratings.csv'
NUM_TRIALS = 40
# Face video configs: trials per work item, so a worker returns ~50 MB of
# frames rather than a subject's ~500 MB.
VIDEO_TRIALS_PER_ITEM = 4

MANUAL_DIR_INSTRUCTIONS = """\
Request DEAP at https://www.eecs.qmul.ac.uk/mmv/datasets/deap/ (EULA) and
extract `data_preprocessed_python.zip` so that the manual folder holds
  <manual_dir>/data_preprocessed_python/s01.dat ... s32.dat
(or the .dat files directly in the manual folder). The face video configs
also need `face_video.zip` and `metadata_csv.zip` extracted beside it:
  <manual_dir>/face_video/s01/s01_trial01.avi ... (participants 1-22)
  <manual_dir>/metadata_csv/participant_ratings.csv
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
  # Face video (see the module doc).
  with_video: bool = False
  video_frames: int = 16  # frames per physio window
  frame_size: int = 112
  face_crop: bool = True
  video_onset_s: float = 0.0  # time in a trial's avi at which the music video starts
  video_trial_order: str = 'presentation'  # or 'experiment'
  missing_face: str = 'mask'  # or 'skip' (window left out, reported)

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


def window_starts(num_samples: int, cfg) -> list:
  """Start samples of the windows in a trial of `num_samples` (baseline already cut)."""
  win, hop = int(round(cfg.window_s * SAMPLE_RATE)), int(round(cfg.hop_s * SAMPLE_RATE))
  return list(range(0, num_samples - win + 1, hop))


def window_video_times(start: int, cfg) -> np.ndarray:
  """f64[video_frames]: times (s) in the trial's avi of the frames of the window
  starting at sample `start` (of the signals `windows` cuts)."""
  after_onset = start / SAMPLE_RATE - (0.0 if cfg.drop_baseline else BASELINE_S)
  dt = cfg.window_s / cfg.video_frames
  return cfg.video_onset_s + after_onset + (np.arange(cfg.video_frames) + 0.5) * dt


def windows(trial: np.ndarray, cfg) -> np.ndarray:
  """f[40, N] trial -> f32[num_windows, T, 40] z-normalised, block-averaged windows."""
  x = trial[:, int(BASELINE_S * SAMPLE_RATE):] if cfg.drop_baseline else trial
  x = x.astype(np.float64)
  mean, std = x.mean(axis=1, keepdims=True), x.std(axis=1, keepdims=True)
  x = (x - mean) / np.where(std > 0, std, 1.0)
  win = int(round(cfg.window_s * SAMPLE_RATE))
  out = []
  for s in window_starts(x.shape[1], cfg):
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


def scan_face_videos(manual_dir: str):
  """({subject: {video trial YY: avi path}}, [(path, reason)]) under `manual_dir`."""
  found, bad = {}, []
  for root, _, files in os.walk(manual_dir):
    for fname in sorted(files):
      if not fname.lower().endswith('.avi'):
        continue
      path = os.path.join(root, fname)
      m = _VIDEO_RE.match(fname)
      if not m or not 1 <= int(m.group(1)) <= 32 or not 1 <= int(m.group(2)) <= 40:
        bad.append((path, 'name is not sXX_trialYY.avi with XX in 01-32, YY in 01-40'))
        continue
      found.setdefault(int(m.group(1)), {})[int(m.group(2))] = path
  return found, bad


def read_presentation_order(path) -> dict:
  """{(participant, Trial): Experiment_id} from participant_ratings.csv; raises ValueError."""
  out = {}
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.DictReader(f)
    cols = {c.strip(): c for c in reader.fieldnames or []}
    need = ('Participant_id', 'Trial', 'Experiment_id')
    if not all(c in cols for c in need):
      raise ValueError(f'{path}: needs the columns {need}, has {list(cols)}')
    for lineno, row in enumerate(reader, 2):
      try:
        key = (int(row[cols['Participant_id']]), int(row[cols['Trial']]))
        out[key] = int(row[cols['Experiment_id']])
      except (TypeError, ValueError):
        raise ValueError(f'{path}:{lineno}: participant/trial/experiment ids are not '
                         f'integers: {row}') from None
  return out


def _find(manual_dir: str, name: str):
  for root, _, files in os.walk(manual_dir):
    if name in files:
      return os.path.join(root, name)
  return None


def video_config(cfg, num_frames: int):
  from data_pipelines.features import video as video_features
  return video_features.VideoFeatureConfig(num_frames=num_frames, size=cfg.frame_size,
                                           face_crop=cfg.face_crop)


def window_video(path: str, duration_s: float, start: int, cfg):
  """(u8[video_frames, S, S, 3], real frames) of the window starting at `start`.

  Frames whose time falls outside [0, duration_s) are zero padding at the end.
  Raises clip.NoFaceError / media.MediaError.
  """
  from data_pipelines.features import clip
  from data_pipelines.features import media
  n, s = cfg.video_frames, cfg.frame_size
  out = np.zeros((n, s, s, 3), np.uint8)
  times = window_video_times(start, cfg)
  inside = np.flatnonzero((times >= 0) & (times < duration_s))
  if not len(inside):
    return out, 0
  k0, k1 = int(inside[0]), int(inside[-1]) + 1
  dt = cfg.window_s / n
  # Sampling k1 - k0 segment centres of [t_k0 - dt/2, t_(k1-1) + dt/2) lands
  # on the sample times.
  first = max(times[k0] - dt / 2, 0.0)
  frames, _ = media.decode_video(path, start_s=first, end_s=times[k1 - 1] + dt / 2,
                                 num_frames=k1 - k0)
  out[:k1 - k0] = clip.preprocess_frames(frames, video_config(cfg, k1 - k0), path)
  return out, k1 - k0


def _trial_duration(path: str) -> float:
  from data_pipelines.features import media
  d = media.probe(path).get('duration_s')
  return float(d) if d else float('inf')  # no duration: decoding finds the end


def process_item(item, cfg):
  """One subject file -> list of (key, example) over its trials' windows.

  `item['trials']` (first, end): only trials first..end-1 (1-based; end None:
  to the last), for the face video configs' smaller work items.
  """
  from data_pipelines.features import clip
  from data_pipelines.features import media
  data, labels = load_subject(item['path'])
  out = []
  videos = item.get('videos') or {}
  first, end = item.get('trials') or (1, None)
  for trial in range(first - 1, data.shape[0] if end is None else min(end - 1, data.shape[0])):
    where = f'{item["path"]} trial {trial + 1}'
    if not np.all(np.isfinite(data[trial])):
      out.append(builder_lib.Skip(where, 'non-finite samples'))
      continue
    try:
      label = label_of(labels[trial], cfg.target, cfg.threshold)
    except ValueError as e:
      out.append(builder_lib.Skip(where, str(e)))
      continue
    avi, duration, video_error = videos.get(trial + 1), None, None
    if cfg.with_video and avi:
      try:
        duration = _trial_duration(avi)
      except media.MediaError as e:
        video_error = str(e)
    num = data.shape[2] - (int(BASELINE_S * SAMPLE_RATE) if cfg.drop_baseline else 0)
    for w, (x, start) in enumerate(zip(windows(data[trial], cfg), window_starts(num, cfg))):
      uid = f's{item["subject"]:02d}_t{trial + 1:02d}_w{w:02d}'
      example = {'id': uid, 'physio': x, 'label': label,
                 'speaker': item['subject'], 'trial': trial + 1,
                 'ratings': labels[trial].astype(np.float32)}
      if cfg.with_video:
        frames, n = np.zeros((cfg.video_frames, cfg.frame_size, cfg.frame_size, 3),
                             np.uint8), 0
        if duration is not None and video_error is None:
          try:
            frames, n = window_video(avi, duration, start, cfg)
          except clip.NoFaceError as e:
            if cfg.missing_face != 'mask':
              out.append(builder_lib.Skip(f'{avi} window {w}', str(e)))
              continue
          except media.MediaError as e:
            video_error = str(e)  # reported once; later windows of the trial stay masked
        example.update(video=frames, video_length=n,
                       mask=np.asarray([0.0, float(n > 0), 0.0, 1.0], np.float32))
      out.append((uid, example))
    if video_error:
      out.append(builder_lib.Skip(avi, f'face video unusable ({video_error}); trial '
                                  f'{trial + 1} keeps physio with video masked'))
  if item.get('trials') is None and not any(isinstance(o, tuple) for o in out):
    raise ValueError(f'{item["path"]}: no usable trial windows')
  return out


class Deap(tfds.core.GeneratorBasedBuilder):
  """DEAP EEG + peripheral windows with thresholded valence/arousal."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': "Face video configs: 'video' face crops per physio window, "
                            "'video_length' and a per-example 'mask'."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DIR_INSTRUCTIONS
  FOLD_GROUP_KEY = 'speaker'
  BUILDER_CONFIGS = [
      DeapConfig(name='valence_arousal', description='4 classes from valence x arousal > 5; '
                 '10 s windows at 32 Hz, 40 channels.'),
      DeapConfig(name='valence', description='Valence > 5.', target='valence'),
      DeapConfig(name='arousal', description='Arousal > 5.', target='arousal'),
      # 3 s windows at the full 128 Hz (configs/ofcmaer_cat.py:deap shapes).
      DeapConfig(name='valence_arousal_face', description='4 classes; face video (16 crops '
                 '112x112 per window, participants 1-22) + physio, 3 s windows at 128 Hz.',
                 with_video=True, window_s=3.0, hop_s=3.0, downsample=1),
      DeapConfig(name='valence_arousal_face_small', description='Tiny face video config '
                 'for tests.', with_video=True, video_frames=4, frame_size=32),
  ]
  DEFAULT_CONFIG_NAME = 'valence_arousal'

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    feats = {
        'id': tfds.features.Text(),
        'physio': tfds.features.Tensor(shape=(c.window_len, NUM_CHANNELS), dtype=np.float32),
        'label': tfds.features.ClassLabel(names=LABEL_NAMES[c.target]),
        'speaker': np.int64,
        'trial': np.int64,
        'ratings': tfds.features.Tensor(shape=(4,), dtype=np.float32),
    }
    if c.with_video:
      feats['video'] = tfds.features.Tensor(
          shape=(c.video_frames, c.frame_size, c.frame_size, 3), dtype=np.uint8)
      feats['video_length'] = tfds.features.Scalar(
          dtype=np.int64, doc='real frames before padding (0: video masked)')
      # Per-example modality presence in contract.MODALITIES order.
      feats['mask'] = tfds.features.Tensor(shape=(4,), dtype=np.float32)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(feats),
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
    if c.with_video:
      videos = face_videos(manual_dir, c, report)
      for item in items:
        item['videos'] = videos.get(item['subject'], {})
      logging.info('deap/%s: face video for %d of %d subjects', c.name,
                   sum(bool(i['videos']) for i in items), len(items))
      starts = range(1, NUM_TRIALS + 1, VIDEO_TRIALS_PER_ITEM)
      items = [dict(i, trials=(t, t + VIDEO_TRIALS_PER_ITEM if t + VIDEO_TRIALS_PER_ITEM <=
                                NUM_TRIALS else None)) for i in items for t in starts]
    # One work item per subject file (~100 MB); it returns all its windows.
    return builder_lib.build_splits(self, MODULE, 'process_item', items, report,
                                    lambda ex: int(ex['speaker']), c.val_frac, c.test_frac,
                                    item_unit_fn=lambda it: int(it['subject']))

  def _generate_examples(self):  # examples come from build_splits
    raise NotImplementedError


def face_videos(manual_dir: str, cfg, report) -> dict:
  """{subject: {trial of the .dat arrays (1-based): avi path}} (see the module doc)."""
  found, bad = scan_face_videos(manual_dir)
  for path, reason in bad:
    report.add('(scan)', path, reason)
  if not found:
    raise builder_lib.ManualDirError(
        f'deap/{cfg.name}: no face videos (sXX_trialYY.avi) under {manual_dir}.\n'
        f'{MANUAL_DIR_INSTRUCTIONS}')
  if cfg.video_trial_order == 'experiment':
    return found
  if cfg.video_trial_order != 'presentation':
    raise ValueError(f'unknown video_trial_order {cfg.video_trial_order!r}')
  path = _find(manual_dir, RATINGS_CSV)
  if path is None:
    raise builder_lib.ManualDirError(
        f'deap/{cfg.name}: {RATINGS_CSV} is needed to map the face videos\' trial numbers '
        f'(presentation order) to the experiment ids of the .dat arrays, and is not under '
        f'{manual_dir}.\n{MANUAL_DIR_INSTRUCTIONS}')
  try:
    order = read_presentation_order(path)
  except ValueError as e:
    raise builder_lib.ManualDirError(f'deap/{cfg.name}: {e}') from None
  out = {}
  for subject, trials in found.items():
    for trial, avi in sorted(trials.items()):
      exp = order.get((subject, trial))
      if exp is None or not 1 <= exp <= 40:
        report.add('(scan)', avi, f'no Experiment_id in 1-40 for participant {subject} '
                   f'trial {trial} in {path}')
        continue
      out.setdefault(subject, {})[exp] = avi
  for subject, trials in sorted(out.items()):
    if len(trials) < NUM_TRIALS:
      logging.info('deap/%s: participant %d has face video for %d of %d trials; the others '
                   'keep physio with video masked', cfg.name, subject, len(trials), NUM_TRIALS)
  return out

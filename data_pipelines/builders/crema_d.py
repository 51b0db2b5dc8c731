"""`crema_d`: the Crowd-sourced Emotional Multimodal Actors Dataset.

91 actors (1001-1091) say 12 sentences in 6 emotions. Clips are named
`ActorID_Sentence_Emotion_Level` (e.g. `1001_DFA_ANG_XX`) and come as
`AudioWAV/*.wav` (16 kHz), `AudioMP3/*.mp3`, `VideoFlash/*.flv` (VP6 + MP3)
and, in some copies, `VideoMP4/*.mp4` conversions. The label is the acted
emotion from the name (validated field by field); names that break the
convention are skipped and reported.

Audio of a clip comes from AudioWAV, else AudioMP3, else the video's own
track; video from VideoFlash (or an mp4 conversion of the same clip).
The four clips known to be broken (`BROKEN_CLIPS`) are skipped with that
reason in `skipped.json`.

Soft labels (optional, `soft_labels`): `processedResults/tabulatedVotes.csv`
holds the perceived-emotion vote counts of the crowd raters per clip, three
rows per clip whose id starts with 1 (voice only), 2 (face only) or
3 (audio-visual). The chosen rows' counts, normalised, become `soft_label`
in the label order below; the hard label stays the acted emotion.

Configs: `av` (audio + 15 face crops 112x112, soft labels from the AV votes),
`audio` (audio only, voice votes), `av_small`/`audio_small` (tests).
Splits are speaker-independent: sorted actors, the last 20% test, the 20%
before validate, the rest train (all 91: 1001-1055 / 1056-1073 / 1074-1091).
'speaker' is the actor id for k-fold runs (`config.dataset.fold`, see
data_pipelines/folds.py).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import builder_lib
from data_pipelines.builders import paper_features
from data_pipelines.features import audio as audio_features
from data_pipelines.features import video as video_features

MODULE = 'data_pipelines.builders.crema_d'

# Label order (SPEC): NEU, HAP, SAD, ANG, FEA, DIS.
EMOTION_CODES = ('NEU', 'HAP', 'SAD', 'ANG', 'FEA', 'DIS')
EMOTIONS = ('neutral', 'happy', 'sad', 'angry', 'fearful', 'disgust')
# Vote columns of tabulatedVotes.csv in the same order.
_VOTE_COLUMNS = ('N', 'H', 'S', 'A', 'F', 'D')
_VOTE_PREFIX = {'audio': '1', 'video': '2', 'av': '3'}
SENTENCES = ('IEO', 'TIE', 'IOM', 'IWW', 'TAI', 'MTI', 'IWL', 'ITH', 'DFA', 'ITS', 'TSI',
             'WSI')
LEVELS = ('LO', 'MD', 'HI', 'XX')
ACTORS = tuple(range(1001, 1092))
# Known to be broken in the distribution (empty or damaged media).
BROKEN_CLIPS = {
    '1076_MTI_NEU_XX': 'known broken clip in the CREMA-D distribution',
    '1076_MTI_SAD_XX': 'known broken clip in the CREMA-D distribution',
    '1064_TIE_SAD_XX': 'known broken clip in the CREMA-D distribution',
    '1064_IEO_DIS_MD': 'known broken clip in the CREMA-D distribution',
}

_NAME_RE = re.compile(r'^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$')
_AUDIO_DIRS = (('AudioWAV', '.wav'), ('AudioMP3', '.mp3'))
_VIDEO_DIRS = (('VideoFlash', '.flv'), ('VideoMP4', '.mp4'))

MANUAL_DIR_INSTRUCTIONS = """\
Get CREMA-D from https://github.com/CheyneyComputerScience/CREMA-D (Git LFS:
`git lfs clone`, or the release archives) and place its folders in the
manual folder:
  <manual_dir>/AudioWAV/1001_DFA_ANG_XX.wav   (and/or AudioMP3/*.mp3)
  <manual_dir>/VideoFlash/1001_DFA_ANG_XX.flv (or VideoMP4/*.mp4 conversions)
  <manual_dir>/processedResults/tabulatedVotes.csv  (for soft labels)
"""


class CremaDNameError(ValueError):
  """A clip name that does not follow `ActorID_Sentence_Emotion_Level`."""


def parse_name(path) -> dict:
  """Validated fields of a CREMA-D clip name; raises CremaDNameError."""
  stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
  m = _NAME_RE.match(stem)
  if not m:
    raise CremaDNameError(f'{path}: name {stem!r} is not ActorID_Sentence_Emotion_Level')
  actor, sentence, emotion, level = m.groups()
  problems = []
  if int(actor) not in ACTORS:
    problems.append(f'actor {actor} not in 1001-1091')
  if sentence not in SENTENCES:
    problems.append(f'sentence {sentence} not one of {",".join(SENTENCES)}')
  if emotion not in EMOTION_CODES:
    problems.append(f'emotion {emotion} not one of {",".join(EMOTION_CODES)}')
  if level not in LEVELS:
    problems.append(f'level {level} not one of {",".join(LEVELS)}')
  if problems:
    raise CremaDNameError(f'{path}: ' + '; '.join(problems))
  return {'id': stem, 'actor': int(actor), 'sentence': sentence,
          'label': EMOTION_CODES.index(emotion), 'level': level}


def read_votes(manual_dir: str, source: str) -> dict:
  """{clip id: f32[6] vote distribution} from processedResults/tabulatedVotes.csv."""
  path = os.path.join(manual_dir, 'processedResults', 'tabulatedVotes.csv')
  if not os.path.isfile(path):
    raise builder_lib.ManualDirError(
        f'crema_d: soft labels requested but {path} is missing.\n{MANUAL_DIR_INSTRUCTIONS}')
  prefix = _VOTE_PREFIX[source]
  votes = {}
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      if not row[''].startswith(prefix):
        continue
      counts = np.array([float(row[c]) for c in _VOTE_COLUMNS], np.float32)
      if counts.sum() > 0:
        votes[row['fileName']] = counts / counts.sum()
  return votes


def _default_audio():
  # 16 kHz, 3 s (CREMA-D clips are 1-5 s), 25 ms / 10 ms log-mel 64 + MFCC-13.
  return audio_features.AudioFeatureConfig(
      sample_rate=16000, duration_s=3.0, pre_emphasis=0.97, kind='mfcc', n_mfcc=13,
      n_mels=40, n_fft=512, win_length=400, hop_length=160, deltas=2, num_frames=300)


@dataclasses.dataclass
class CremaDConfig(tfds.core.BuilderConfig):
  """Modalities, soft labels and feature settings of one CREMA-D variant."""
  with_video: bool = True
  # Rater votes to use as soft labels: None, 'audio', 'video' or 'av'.
  soft_labels: Optional[str] = 'av'
  # Audio-only variant: use a video's audio track when a clip has no audio file.
  audio_from_video: bool = True
  audio: audio_features.AudioFeatureConfig = dataclasses.field(default_factory=_default_audio)
  video: Optional[video_features.VideoFeatureConfig] = dataclasses.field(
      default_factory=lambda: video_features.VideoFeatureConfig(num_frames=15, size=112))
  val_frac: float = 0.2  # fractions of the sorted actors in validation / test
  test_frac: float = 0.2
  # Waveform-augmented copies per training example (builder_lib.build_splits).
  train_augment_copies: int = 0
  wave_augment: audio_features.WaveAugmentConfig = audio_features.WaveAugmentConfig()


_SMALL_AUDIO = audio_features.AudioFeatureConfig(
    sample_rate=16000, duration_s=2.5, kind='mfcc', n_mfcc=13, n_fft=512, hop_length=320,
    num_frames=125)


class CremaD(tfds.core.GeneratorBasedBuilder):
  """CREMA-D clips, audio-visual or audio-only, speaker-independent splits."""

  FOLD_GROUP_KEY = 'speaker'

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': "'audio_length': the real audio frames before padding."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DIR_INSTRUCTIONS
  BUILDER_CONFIGS = [
      CremaDConfig(name='av', description='Audio (MFCC-13+deltas x 300, 16 kHz, 3 s) and 15 '
                   'face crops 112x112; soft labels from the audio-visual votes.'),
      CremaDConfig(name='av_mtcnn', description='av with MTCNN face boxes.',
                   video=video_features.VideoFeatureConfig(num_frames=15, size=112,
                                                           face_detector='mtcnn')),
      CremaDConfig(name='audio', description='Audio only; soft labels from the voice votes.',
                   with_video=False, video=None, soft_labels='audio'),
      *[CremaDConfig(name=paper, description=f'Audio-visual clips with hard labels, '
                     f'preprocessed as paper {paper} specifies.', audio=a, video=v,
                     soft_labels=None)
        for paper, (a, v) in paper_features.PAPER_FEATURES.items()],
      CremaDConfig(name='av_small', description='Tiny av for tests.', audio=_SMALL_AUDIO,
                   video=video_features.VideoFeatureConfig(num_frames=4, size=48)),
      CremaDConfig(name='audio_small', description='Tiny audio for tests.', audio=_SMALL_AUDIO,
                   with_video=False, video=None, soft_labels='audio'),
  ]
  DEFAULT_CONFIG_NAME = 'av'

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    feats = {
        'id': tfds.features.Text(),
        'audio': tfds.features.Tensor(
            shape=(cfg.audio.num_frames, cfg.audio.feature_dim), dtype=np.float32),
        'audio_length': tfds.features.Scalar(dtype=np.int64, doc='real audio frames before padding'),
        'label': tfds.features.ClassLabel(names=EMOTIONS),
        'speaker': np.int64,
        'sentence': tfds.features.Text(),
        'level': tfds.features.Text(),
    }
    if cfg.soft_labels:
      feats['soft_label'] = tfds.features.Tensor(shape=(len(EMOTIONS),), dtype=np.float32)
    if cfg.train_augment_copies:
      feats['copy_index'] = np.int64  # 0 original, k the k-th augmented copy
    if cfg.with_video:
      v = cfg.video
      feats['video'] = tfds.features.Tensor(shape=(v.num_frames, v.size, v.size, 3),
                                            dtype=np.uint8)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(feats), supervised_keys=None,
        homepage='https://github.com/CheyneyComputerScience/CREMA-D', description=__doc__)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = builder_lib.require_manual_dir(
        'crema_d', builder_lib.manual_dir_of(dl_manager),
        [d for d, _ in _AUDIO_DIRS + _VIDEO_DIRS], MANUAL_DIR_INSTRUCTIONS)
    report = builder_lib.SkipReport(f'crema_d/{cfg.name}')
    votes = read_votes(manual_dir, cfg.soft_labels) if cfg.soft_labels else None
    items, bad = collect_items(manual_dir, cfg, votes)
    for path, reason in bad:
      report.add('(scan)', path, reason)
    if not items:
      report.write(self.data_dir)
      raise builder_lib.ManualDirError(
          f'crema_d: no usable clips under {manual_dir} ({len(bad)} skipped).\n'
          f'{MANUAL_DIR_INSTRUCTIONS}')
    return builder_lib.build_splits(self, MODULE, 'process_item', items, report,
                                    lambda ex: int(ex['speaker']), cfg.val_frac, cfg.test_frac,
                                    train_copies=cfg.train_augment_copies,
                                    item_unit_fn=lambda it: int(it['actor']))

  def _generate_examples(self):  # examples come from build_splits
    raise NotImplementedError


def _scan(manual_dir, dirs, bad):
  found = {}
  for sub, ext in dirs:
    folder = os.path.join(manual_dir, sub)
    if not os.path.isdir(folder):
      continue
    for fname in sorted(os.listdir(folder)):
      if not fname.lower().endswith(ext):
        continue
      path = os.path.join(folder, fname)
      try:
        fields = parse_name(path)
      except CremaDNameError as e:
        bad.append((path, str(e)))
        continue
      found.setdefault(fields['id'], (path, fields))  # first folder wins (wav before mp3)
  return found


def collect_items(manual_dir: str, cfg: CremaDConfig, votes: Optional[dict]):
  """Work items (one per clip) and [(path, reason)] for clips that cannot be used."""
  bad = []
  audio = _scan(manual_dir, _AUDIO_DIRS, bad)
  video = _scan(manual_dir, _VIDEO_DIRS, bad)
  if cfg.with_video:
    ids = sorted(video)
  else:
    ids = sorted(set(audio) | (set(video) if cfg.audio_from_video else set()))
  items = []
  for cid in ids:
    vpath, fields = video.get(cid, (None, None))
    apath, afields = audio.get(cid, (vpath, fields))
    fields = fields or afields
    if cid in BROKEN_CLIPS:
      bad.append((vpath or apath, BROKEN_CLIPS[cid]))
      continue
    item = dict(fields, video_path=vpath if cfg.with_video else None, audio_path=apath)
    if votes is not None:
      if cid not in votes:
        bad.append((vpath or apath, f'no {cfg.soft_labels} votes for {cid} in tabulatedVotes.csv'))
        continue
      item['soft_label'] = votes[cid]
    items.append(item)
  return items, bad


def process_item(item, cfg: CremaDConfig):
  """One clip -> (key, example); runs in a worker process."""
  from data_pipelines.features import clip
  if item.get('copy_index'):
    return builder_lib.augmented_audio_copy(item, cfg)
  feats, info = clip.preprocess_av(
      video_path=item['video_path'], audio_path=item['audio_path'], audio_cfg=cfg.audio,
      video_cfg=cfg.video if cfg.with_video else None, return_info=True)
  example = {'id': item['id'], 'audio': feats['audio'], 'label': item['label'],
             'audio_length': info['audio_length'],
             'speaker': item['actor'], 'sentence': item['sentence'], 'level': item['level']}
  if cfg.soft_labels:
    example['soft_label'] = np.asarray(item['soft_label'], np.float32)
  if cfg.with_video:
    example['video'] = feats['video']
  return item['id'], example

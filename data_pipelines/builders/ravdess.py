"""`ravdess`: the Ryerson Audio-Visual Database of Emotional Speech and Song.

24 actors (odd ids male) speak (and sing) two statements in 8 emotions
(song: 6). Every take is a file named `MM-VV-EE-II-SS-RR-AA.ext`: modality
(01 audio-video mp4, 02 video-only mp4, 03 audio-only wav), vocal channel
(01 speech, 02 song), emotion (01 neutral ... 08 surprised), intensity,
statement, repetition, actor. Labels and speaker ids come from these names,
which are checked field by field; a file whose name breaks the convention, or
whose actor field disagrees with its `Actor_XX` folder, is skipped and listed
in `skipped.json`, never guessed.

Configs:
  speech_av     speech takes with video: the modality-01 mp4 (frames and its
                own audio track), or a modality-02 mp4 paired with the 03 wav
                of the same take. 15 face crops of 112x112, MFCC-13 + deltas.
  speech_av_224 the same with 224x224 faces (papers 001-003 input size).
  speech_av_mtcnn  speech_av with MTCNN face boxes instead of the Haar cascade
                (any config: `video.face_detector='haar'|'mtcnn'`).
  speech_audio  the 1440 audio-only speech wavs (modality 03).
  speech_audio_prosody  speech_audio plus 15 frame-level prosodic tracks (pYIN F0,
                voicing, RMS dB, spectral shape; features/audio.py:prosody_features).
  song_av, song_audio   the song takes (actor 18 has none).
  speech_av_small, speech_audio_small   tiny features for tests.

Splits are speaker-independent: the actors present are sorted and the last
20% test, the 20% before validate, the rest train (all 24 actors: 1-14 train,
15-19 validation, 20-24 test; the four sample actors 1-4: 1-2 / 3 / 4); see
`val_frac`/`test_frac`. 'speaker' is the actor id, so the published protocols
are k-fold runs over it (data_pipelines/folds.py), pooled over all splits:
  c.dataset.fold.num_folds = 6   # 6 folds of 4 consecutive actors (1-4, 5-8, ...)
  c.dataset.fold.index = k       # fold k tests, the next fold validates
  c.dataset.fold.group_key = 'speaker'
5 folds cut the 24 actors into 5,5,5,5,4 consecutive actors.

Build: `python -m data_pipelines.build ravdess --config=speech_audio
  --manual_dir=DIR --data_dir=OUT [--beam_runner=DirectRunner]`; training
builds the dataset on the fly from `config.dataset.manual_dir`.
"""

from __future__ import annotations

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

MODULE = 'data_pipelines.builders.ravdess'

# Emotion codes 01..08, in code order (label index = code - 1).
EMOTIONS = ('neutral', 'calm', 'happy', 'sad', 'angry', 'fearful', 'disgust', 'surprised')
SONG_EMOTIONS = ('neutral', 'calm', 'happy', 'sad', 'angry', 'fearful')
NUM_ACTORS = 24

_NAME_RE = re.compile(r'^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$')
_ACTOR_DIR_RE = re.compile(r'^Actor_(\d{2})$')

MANUAL_DIR_INSTRUCTIONS = """\
Download RAVDESS from Zenodo (https://zenodo.org/record/1188976): the audio
zip `Audio_Speech_Actors_01-24.zip` (and `Audio_Song_Actors_01-24.zip` for
song) and the per-actor video zips `Video_Speech_Actor_XX.zip` (and
`Video_Song_Actor_XX.zip`). Extract them all into the manual folder, keeping
their folders, e.g.
  <manual_dir>/Audio_Speech_Actors_01-24/Actor_01/03-01-01-01-01-01-01.wav
  <manual_dir>/Video_Speech_Actor_01/Actor_01/01-01-01-01-01-01-01.mp4
Files are found recursively, so any folder layout that keeps the official
file names works.
"""


class RavdessNameError(ValueError):
  """A file name that does not follow the RAVDESS convention."""


@dataclasses.dataclass(frozen=True)
class RavdessName:
  """The seven fields of a RAVDESS file name."""
  modality: int  # 1 AV, 2 video-only, 3 audio-only
  vocal_channel: int  # 1 speech, 2 song
  emotion: int  # 1..8
  intensity: int  # 1 normal, 2 strong
  statement: int
  repetition: int
  actor: int

  @property
  def label(self) -> int:
    return self.emotion - 1

  @property
  def take(self) -> str:
    """The take without the modality field: identical across 01/02/03 files."""
    return (f'{self.vocal_channel:02d}-{self.emotion:02d}-{self.intensity:02d}-'
            f'{self.statement:02d}-{self.repetition:02d}-{self.actor:02d}')


def parse_name(path) -> RavdessName:
  """Parses and validates a RAVDESS file name; raises RavdessNameError."""
  stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
  m = _NAME_RE.match(stem)
  if not m:
    raise RavdessNameError(f'{path}: name {stem!r} is not MM-VV-EE-II-SS-RR-AA')
  mod, voc, emo, inten, stmt, rep, actor = (int(g) for g in m.groups())
  problems = []
  if mod not in (1, 2, 3):
    problems.append(f'modality {mod:02d} not in 01-03')
  if voc not in (1, 2):
    problems.append(f'vocal channel {voc:02d} not in 01-02')
  if not 1 <= emo <= 8:
    problems.append(f'emotion {emo:02d} not in 01-08')
  elif voc == 2 and emo > 6:
    problems.append(f'emotion {emo:02d} does not exist for song')
  if inten not in (1, 2):
    problems.append(f'intensity {inten:02d} not in 01-02')
  elif emo == 1 and inten == 2:
    problems.append('neutral has no strong intensity')
  if stmt not in (1, 2):
    problems.append(f'statement {stmt:02d} not in 01-02')
  if rep not in (1, 2):
    problems.append(f'repetition {rep:02d} not in 01-02')
  if not 1 <= actor <= NUM_ACTORS:
    problems.append(f'actor {actor:02d} not in 01-24')
  if problems:
    raise RavdessNameError(f'{path}: ' + '; '.join(problems))
  return RavdessName(mod, voc, emo, inten, stmt, rep, actor)


# ----------------------------------------------------------------------------
# Builder configs


def _default_audio(num_frames=360):
  # 16 kHz, 3.6 s (papers 002/003), 50 ms window / 10 ms hop, MFCC-13 + deltas.
  return audio_features.AudioFeatureConfig(
      sample_rate=16000, duration_s=3.6, pre_emphasis=0.97, normalize=True, kind='mfcc',
      n_mfcc=13, n_mels=40, n_fft=800, win_length=800, hop_length=160, deltas=2,
      num_frames=num_frames)


@dataclasses.dataclass
class RavdessConfig(tfds.core.BuilderConfig):
  """Which takes become examples, and their feature settings."""
  vocal_channel: int = 1  # 1 speech, 2 song
  with_video: bool = True
  # Audio of AV takes: False uses the mp4's own track (falls back to the 03
  # wav for video-only 02 files); True prefers the 03 wav when present.
  prefer_wav_audio: bool = False
  audio: audio_features.AudioFeatureConfig = dataclasses.field(default_factory=_default_audio)
  video: Optional[video_features.VideoFeatureConfig] = dataclasses.field(
      default_factory=lambda: video_features.VideoFeatureConfig(num_frames=15, size=112))
  # Fractions of the (sorted) actors in the validation and test splits.
  val_frac: float = 0.2
  test_frac: float = 0.2
  # Waveform-augmented copies per training example (builder_lib.build_splits).
  train_augment_copies: int = 0
  wave_augment: audio_features.WaveAugmentConfig = audio_features.WaveAugmentConfig()


_SMALL_AUDIO = audio_features.AudioFeatureConfig(
    sample_rate=16000, duration_s=3.6, kind='mfcc', n_mfcc=13, n_fft=512, hop_length=320,
    num_frames=180)
_SMALL_VIDEO = video_features.VideoFeatureConfig(num_frames=4, size=48)


class Ravdess(tfds.core.GeneratorBasedBuilder):
  """RAVDESS speech/song, audio-visual or audio-only, speaker-independent splits."""

  FOLD_GROUP_KEY = 'speaker'

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': "'audio_length': the real audio frames before padding."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DIR_INSTRUCTIONS
  BUILDER_CONFIGS = [
      RavdessConfig(name='speech_av', description='Speech takes with video: 15 face crops '
                    '112x112 and MFCC-13+deltas (39) x 360 at 16 kHz over 3.6 s.'),
      RavdessConfig(name='speech_av_224', description='speech_av with 224x224 faces.',
                    video=video_features.VideoFeatureConfig(num_frames=15, size=224)),
      RavdessConfig(name='speech_av_mtcnn', description='speech_av with MTCNN face boxes.',
                    video=video_features.VideoFeatureConfig(num_frames=15, size=112,
                                                            face_detector='mtcnn')),
      RavdessConfig(name='speech_audio', description='Audio-only speech wavs (modality 03).',
                    with_video=False, video=None),
      RavdessConfig(name='speech_audio_prosody', description='speech_audio with 15 prosodic '
                    'and spectral-shape tracks (pYIN F0, voicing, energy, ...) after the MFCCs.',
                    with_video=False, video=None,
                    audio=dataclasses.replace(_default_audio(), prosody=True)),
      RavdessConfig(name='song_av', description='Song takes with video.', vocal_channel=2),
      RavdessConfig(name='song_audio', description='Audio-only song wavs.', vocal_channel=2,
                    with_video=False, video=None),
      *[RavdessConfig(name=paper, description=f'Speech takes with video, preprocessed as '
                      f'paper {paper} specifies.', audio=a, video=v, prefer_wav_audio=True)
        for paper, (a, v) in paper_features.PAPER_FEATURES.items()],
      RavdessConfig(name='speech_av_small', description='Tiny speech_av for tests.',
                    audio=_SMALL_AUDIO, video=_SMALL_VIDEO),
      RavdessConfig(name='speech_audio_small', description='Tiny speech_audio for tests.',
                    audio=_SMALL_AUDIO, with_video=False, video=None),
  ]
  DEFAULT_CONFIG_NAME = 'speech_av'

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    feats = {
        'id': tfds.features.Text(),
        'audio': tfds.features.Tensor(
            shape=(cfg.audio.num_frames, cfg.audio.feature_dim), dtype=np.float32),
        'audio_length': tfds.features.Scalar(dtype=np.int64, doc='real audio frames before padding'),
        'label': tfds.features.ClassLabel(names=EMOTIONS),
        'speaker': np.int64,
        'intensity': np.int64,
        'statement': np.int64,
        'repetition': np.int64,
    }
    if cfg.train_augment_copies:
      feats['copy_index'] = np.int64  # 0 original, k the k-th augmented copy
    if cfg.with_video:
      v = cfg.video
      feats['video'] = tfds.features.Tensor(shape=(v.num_frames, v.size, v.size, 3),
                                            dtype=np.uint8)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(feats),
        supervised_keys=None,
        homepage='https://zenodo.org/record/1188976',
        description=__doc__,
    )

  def _split_generators(self, dl_manager):
    manual_dir = builder_lib.require_manual_dir(
        'ravdess', builder_lib.manual_dir_of(dl_manager), ['**/*.wav', '**/*.mp4'],
        MANUAL_DIR_INSTRUCTIONS)
    report = builder_lib.SkipReport(f'ravdess/{self.builder_config.name}')
    items, bad = collect_items(manual_dir, self.builder_config)
    for path, reason in bad:
      report.add('(scan)', path, reason)
    if not items:
      report.write(self.data_dir)
      raise builder_lib.ManualDirError(
          f'ravdess: no usable {"AV" if self.builder_config.with_video else "audio"} '
          f'{"speech" if self.builder_config.vocal_channel == 1 else "song"} files found '
          f'under {manual_dir} ({len(bad)} skipped).\n{MANUAL_DIR_INSTRUCTIONS}')
    cfg = self.builder_config
    return builder_lib.build_splits(self, MODULE, 'process_item', items, report,
                                    lambda ex: int(ex['speaker']), cfg.val_frac, cfg.test_frac,
                                    train_copies=cfg.train_augment_copies,
                                    item_unit_fn=lambda it: int(it['actor']))

  def _generate_examples(self):  # examples come from build_splits
    raise NotImplementedError


def collect_items(manual_dir: str, cfg: RavdessConfig):
  """Work items (one per take) and [(path, reason)] for files that cannot be used."""
  bad = []
  wavs, mp4s = {}, {}
  for root, _, files in os.walk(manual_dir):
    for fname in sorted(files):
      ext = os.path.splitext(fname)[1].lower()
      if ext not in ('.wav', '.mp4'):
        continue
      path = os.path.join(root, fname)
      try:
        name = parse_name(path)
      except RavdessNameError as e:
        bad.append((path, str(e)))
        continue
      folder = _ACTOR_DIR_RE.match(os.path.basename(root))
      if folder and int(folder.group(1)) != name.actor:
        bad.append((path, f'actor {name.actor:02d} in the name but folder is '
                    f'{os.path.basename(root)}'))
        continue
      if (ext == '.wav') != (name.modality == 3):
        bad.append((path, f'modality {name.modality:02d} does not match extension {ext}'))
        continue
      if name.vocal_channel != cfg.vocal_channel:
        continue  # the other vocal channel: not part of this config, not an error
      if ext == '.wav':
        wavs[name.take] = (path, name)
      else:
        # Prefer the AV (01) file of a take over the video-only (02) one.
        if name.take not in mp4s or name.modality == 1:
          mp4s[name.take] = (path, name)
  items = []
  if cfg.with_video:
    for take, (vpath, name) in sorted(mp4s.items()):
      wav = wavs.get(take, (None, None))[0]
      if name.modality == 2 and wav is None:
        bad.append((vpath, 'video-only (02) file without the matching 03 wav of take '
                    f'{take}: no audio'))
        continue
      apath = wav if (name.modality == 2 or (cfg.prefer_wav_audio and wav)) else vpath
      items.append(_item(name, take, vpath, apath))
  else:
    for take, (apath, name) in sorted(wavs.items()):
      items.append(_item(name, take, None, apath))
  return items, bad


def _item(name: RavdessName, take: str, video_path, audio_path):
  return {'id': take, 'video_path': video_path, 'audio_path': audio_path,
          'label': name.label, 'actor': name.actor, 'intensity': name.intensity,
          'statement': name.statement, 'repetition': name.repetition}


def process_item(item, cfg: RavdessConfig):
  """One take -> (key, example); runs in a worker process."""
  from data_pipelines.features import clip
  if item.get('copy_index'):
    return builder_lib.augmented_audio_copy(item, cfg)
  feats, info = clip.preprocess_av(
      video_path=item['video_path'] if cfg.with_video else None,
      audio_path=item['audio_path'], audio_cfg=cfg.audio,
      video_cfg=cfg.video if cfg.with_video else None, return_info=True)
  example = {'id': item['id'], 'audio': feats['audio'], 'label': item['label'],
             'audio_length': info['audio_length'],
             'speaker': item['actor'], 'intensity': item['intensity'],
             'statement': item['statement'], 'repetition': item['repetition']}
  if cfg.with_video:
    example['video'] = feats['video']
  return item['id'], example

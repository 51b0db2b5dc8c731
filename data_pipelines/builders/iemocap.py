"""`iemocap`: the Interactive Emotional Dyadic Motion Capture database.

Five sessions, each one actress (F) and one actor (M) in improvised and
scripted dialogs. Per dialog `SessionN/dialog/EmoEvaluation/<dialog>.txt`
holds one header line per utterance,
  [140.2250 - 145.6000]<TAB>Ses01F_impro05_F019<TAB>ang<TAB>[1.5000, 4.0000, 4.5000]
(time span in the dialog, utterance id, consensus label, [valence,
activation, dominance]) followed by the raters' lines, which are ignored.
Audio is the utterance wav `SessionN/sentences/wav/<dialog>/<utterance>.wav`;
video is the dialog's `SessionN/dialog/avi/DivX/<dialog>.avi` cut to the
utterance's time span and to the speaker's half of the frame; text is the
utterance's line in `SessionN/dialog/transcriptions/<dialog>.txt`.

The speaker of an utterance is the letter before its index (`_F019` the
actress, `_M003` the actor); `speaker` = 2 * (session - 1) + (0 F, 1 M),
`session` = 1..5. Which half of the frame shows the actress is a config
setting (`female_side`, per session) because the recordings differ; check it
on one frame per session before building the video configs.

Label maps (utterances with other labels, `xxx` (no agreement) and `oth`
are left out, counted in the log, not reported as errors):
  4 classes  neutral, happy (hap + exc merged), sad, angry
  6 classes  neutral, happy, sad, angry, excited, frustrated
  9 classes  angry, excited, frustrated, happy, neutral, sad, surprised,
             fearful, disgusted

Text features: no pretrained embeddings ship with the project, so each word
becomes a fixed pseudo-random unit vector seeded by the word (a hashing
embedding, `text_dim` wide, `max_words` long); the raw transcript is kept in
'transcript' for real embeddings later.

'mask' marks the modalities present per example (audio, video, text,
physio): an utterance whose span shows no detectable face keeps its audio
and text with zero frames and video 0 in 'mask' (`missing_face='mask'`).
An utterance without transcript words has text 0 in 'mask'.
True lengths: 'audio_length' (real MFCC frames of an utterance shorter than
the window), 'text_length' (words before the zero padding) and
'video_length' (all frames, 0 for masked video: frames are resampled, never
padded; see features/clip.py).

Splits: sessions 1-3 train, 4 validation, 5 test (papers that train on 1-4
read 'train+validation'); leave-one-session-out via `config.dataset.fold`
with `group_key='session'` (each session is one fold).
Configs: 4class, 6class, 9class (audio + video + text), 4class_audio (audio +
text, no video decoding), 4class_small (tests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Optional

import numpy as np
import tensorflow_datasets as tfds
from mer_jax.contract import logger as logging

from data_pipelines.builders import builder_lib, paper_features
from data_pipelines.features import audio as audio_features
from data_pipelines.features import video as video_features

MODULE = 'data_pipelines.builders.iemocap'

LABEL_MAPS = {
    '4class': (('neutral', 'happy', 'sad', 'angry'),
               {'neu': 0, 'hap': 1, 'exc': 1, 'sad': 2, 'ang': 3}),
    '6class': (('neutral', 'happy', 'sad', 'angry', 'excited', 'frustrated'),
               {'neu': 0, 'hap': 1, 'sad': 2, 'ang': 3, 'exc': 4, 'fru': 5}),
    '9class': (('angry', 'excited', 'frustrated', 'happy', 'neutral', 'sad', 'surprised',
                'fearful', 'disgusted'),
               {'ang': 0, 'exc': 1, 'fru': 2, 'hap': 3, 'neu': 4, 'sad': 5, 'sur': 6,
                'fea': 7, 'dis': 8}),
    # Paper 001, Table 3: eight classes, happy and excited kept apart.
    'tucker_fusion': (('angry', 'happy', 'sad', 'neutral', 'excited', 'frustrated', 'surprised',
                       'fearful'),
                      {'ang': 0, 'hap': 1, 'sad': 2, 'neu': 3, 'exc': 4, 'fru': 5, 'sur': 6,
                       'fea': 7}),
}
KNOWN_LABELS = ('ang', 'exc', 'fru', 'hap', 'neu', 'sad', 'sur', 'fea', 'dis', 'oth', 'xxx')

_HEADER_RE = re.compile(
    r'^\[\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$')
_UTT_RE = re.compile(r'^Ses0([1-5])([FM])_(.+)_([FM])(\d{3})$')
_TRANS_RE = re.compile(r'^(Ses\S+)\s+\[[^\]]*\]:\s*(.*)$')

MANUAL_DIR_INSTRUCTIONS = """\
Request IEMOCAP from USC SAIL (https://sail.usc.edu/iemocap/, release form)
and extract `IEMOCAP_full_release` so that the manual folder holds
  <manual_dir>/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt
  <manual_dir>/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
  <manual_dir>/Session1/dialog/avi/DivX/Ses01F_impro01.avi
  <manual_dir>/Session1/dialog/transcriptions/Ses01F_impro01.txt
for Session1 ... Session5.
"""


def parse_emo_evaluation(path) -> list:
  """Utterance headers of one EmoEvaluation file: dicts with start/end/id/label/vad.

  Raises ValueError (naming the file and line) for a header line that breaks
  the format; rater lines are skipped.
  """
  out = []
  with open(path, encoding='utf-8', errors='replace') as f:
    for lineno, line in enumerate(f, 1):
      if not line.startswith('['):
        continue
      m = _HEADER_RE.match(line.strip())
      if not m:
        raise ValueError(f'{path}:{lineno}: malformed header line {line.strip()!r}')
      start, end, utt, label, vad = m.groups()
      try:
        vad = [float(v) for v in vad.split(',')]
      except ValueError:
        raise ValueError(f'{path}:{lineno}: bad [V, A, D] {vad!r}') from None
      if len(vad) != 3 or float(end) <= float(start):
        raise ValueError(f'{path}:{lineno}: bad span or [V, A, D] in {line.strip()!r}')
      out.append({'start': float(start), 'end': float(end), 'id': utt, 'label': label,
                  'vad': vad, 'where': f'{path}:{lineno}'})
  return out


def parse_utterance_id(utt: str) -> dict:
  """Session, dialog and speaker of `Ses01F_impro05_F019`; raises ValueError."""
  m = _UTT_RE.match(utt)
  if not m:
    raise ValueError(f'utterance id {utt!r} is not SesNNG_<dialog>_GNNN')
  session, _, _, gender, _ = m.groups()
  session = int(session)
  return {'session': session, 'dialog': utt.rsplit('_', 1)[0], 'gender': gender,
          'speaker': 2 * (session - 1) + (0 if gender == 'F' else 1)}


def read_transcripts(path) -> dict:
  out = {}
  if not os.path.isfile(path):
    return out
  with open(path, encoding='utf-8', errors='replace') as f:
    for line in f:
      m = _TRANS_RE.match(line.strip())
      if m:
        out[m.group(1)] = m.group(2).strip()
  return out


def words_of(text: str) -> list:
  return re.findall(r"[a-z0-9']+", text.lower())


def hashed_word_vectors(text: str, dim: int, max_words: int) -> np.ndarray:
  """f32[max_words, dim]: one fixed pseudo-random unit vector per word (zero padded)."""
  words = words_of(text)[:max_words]
  out = np.zeros((max_words, dim), np.float32)
  for i, w in enumerate(words):
    seed = int.from_bytes(hashlib.md5(w.encode()).digest()[:8], 'little')
    v = np.random.default_rng(seed).standard_normal(dim)
    out[i] = v / np.linalg.norm(v)
  return out


def _default_audio():
  # 16 kHz, 3.6 s around the utterance start, MFCC-13 + deltas (paper 003 uses
  # 3.6 s windows on IEMOCAP too).
  return audio_features.AudioFeatureConfig(
      sample_rate=16000, duration_s=3.6, pre_emphasis=0.97, kind='mfcc', n_mfcc=13,
      n_fft=800, win_length=800, hop_length=160, deltas=2, num_frames=360)


@dataclasses.dataclass
class IemocapConfig(tfds.core.BuilderConfig):
  label_map: str = '4class'
  with_video: bool = True
  with_text: bool = True
  text_dim: int = 64
  max_words: int = 32
  # Half of the dialog frame that shows the actress, per session (1..5); the
  # actor is on the other half.
  female_side: tuple = (('1', 'left'), ('2', 'left'), ('3', 'left'), ('4', 'left'),
                        ('5', 'left'))
  # An utterance whose span shows no detectable face: 'mask' keeps it with
  # zero frames and video marked missing in 'mask' (audio and text are fine;
  # speakers often turn away), 'skip' leaves it out (reported).
  missing_face: str = 'mask'
  train_sessions: tuple = (1, 2, 3)
  val_sessions: tuple = (4,)
  test_sessions: tuple = (5,)
  audio: audio_features.AudioFeatureConfig = dataclasses.field(default_factory=_default_audio)
  video: Optional[video_features.VideoFeatureConfig] = dataclasses.field(
      default_factory=lambda: video_features.VideoFeatureConfig(num_frames=15, size=112))


class Iemocap(tfds.core.GeneratorBasedBuilder):
  """IEMOCAP utterances: audio, the speaker's face, transcript words."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': "True lengths before padding: 'audio_length', 'text_length', "
                            "'video_length'."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DIR_INSTRUCTIONS
  FOLD_GROUP_KEY = 'session'
  BUILDER_CONFIGS = [
      IemocapConfig(name='4class', description='neutral/happy+excited/sad/angry; A+V+T.'),
      IemocapConfig(name='6class', description='6 classes; A+V+T.', label_map='6class'),
      IemocapConfig(name='9class', description='9 classes; A+V+T.', label_map='9class'),
      IemocapConfig(name='tucker_fusion', description='Paper 001: Table 3\'s 8 classes, '
                    '128 log-mels x 256 frames, 90 faces of 224x224; A+V+T.',
                    label_map='tucker_fusion', audio=paper_features.PAPER_FEATURES[
                        'tucker_fusion'][0], video=paper_features.PAPER_FEATURES['tucker_fusion'][1]),
      IemocapConfig(name='4class_audio', description='4 classes; audio + text.',
                    with_video=False, video=None),
      IemocapConfig(name='4class_small', description='Tiny 4class for tests.',
                    text_dim=8, max_words=6,
                    audio=audio_features.AudioFeatureConfig(
                        sample_rate=16000, duration_s=2.0, n_mfcc=13, hop_length=320,
                        num_frames=100),
                    video=video_features.VideoFeatureConfig(num_frames=3, size=32)),
  ]
  DEFAULT_CONFIG_NAME = '4class'

  def fold_groups(self, groups, num_folds):
    """Each session is one fold (leave-one-session-out)."""
    groups = sorted(groups)
    if num_folds != len(groups):
      raise ValueError(f'IEMOCAP folds are sessions: num_folds must be {len(groups)}')
    return [[g] for g in groups]

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    names, _ = LABEL_MAPS[cfg.label_map]
    length = lambda what: tfds.features.Scalar(dtype=np.int64, doc=f'real {what} before padding')
    feats = {
        'id': tfds.features.Text(),
        'audio': tfds.features.Tensor(
            shape=(cfg.audio.num_frames, cfg.audio.feature_dim), dtype=np.float32),
        'audio_length': length('audio frames'),
        'label': tfds.features.ClassLabel(names=names),
        'speaker': np.int64,
        'session': np.int64,
        'vad': tfds.features.Tensor(shape=(3,), dtype=np.float32),
        'transcript': tfds.features.Text(),
    }
    if cfg.with_text:
      feats['text'] = tfds.features.Tensor(shape=(cfg.max_words, cfg.text_dim),
                                           dtype=np.float32)
      feats['text_length'] = length('words')
    if cfg.with_video:
      v = cfg.video
      feats['video'] = tfds.features.Tensor(shape=(v.num_frames, v.size, v.size, 3),
                                            dtype=np.uint8)
      feats['video_length'] = length('frames')
    # Per-example modality presence in batch_contract.MODALITIES order.
    feats['mask'] = tfds.features.Tensor(shape=(4,), dtype=np.float32)
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(feats), supervised_keys=None,
        homepage='https://sail.usc.edu/iemocap/', description=__doc__)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    manual_dir = builder_lib.require_manual_dir(
        'iemocap', builder_lib.manual_dir_of(dl_manager),
        [f'Session{i}/dialog/EmoEvaluation' for i in range(1, 6)], MANUAL_DIR_INSTRUCTIONS)
    report = builder_lib.SkipReport(f'iemocap/{cfg.name}')
    items, bad = collect_items(manual_dir, cfg)
    for path, reason in bad:
      report.add('(scan)', path, reason)
    if not items:
      report.write(self.data_dir)
      raise builder_lib.ManualDirError(
          f'iemocap: no usable utterances under {manual_dir}.\n{MANUAL_DIR_INSTRUCTIONS}')
    fixed = {'train': list(cfg.train_sessions), 'validation': list(cfg.val_sessions),
             'test': list(cfg.test_sessions)}
    return builder_lib.build_splits(self, MODULE, 'process_item', items, report,
                                    lambda ex: int(ex['session']), fixed=fixed,
                                    item_unit_fn=lambda it: int(it['session']))

  def _generate_examples(self):  # examples come from build_splits
    raise NotImplementedError


def collect_items(manual_dir: str, cfg: IemocapConfig):
  """Work items (one per labelled utterance) and [(path, reason)] of unusable ones."""
  _, mapping = LABEL_MAPS[cfg.label_map]
  sides = dict(cfg.female_side)
  items, bad = [], []
  left_out = {}
  for session in range(1, 6):
    sdir = os.path.join(manual_dir, f'Session{session}')
    emo_dir = os.path.join(sdir, 'dialog', 'EmoEvaluation')
    if not os.path.isdir(emo_dir):
      continue
    for fname in sorted(os.listdir(emo_dir)):
      path = os.path.join(emo_dir, fname)
      if not fname.endswith('.txt') or not os.path.isfile(path):
        continue  # Categorical/, Attribute/, Self-evaluation/ hold rater detail
      dialog = fname[:-4]
      try:
        headers = parse_emo_evaluation(path)
      except ValueError as e:
        bad.append((path, str(e)))
        continue
      transcripts = read_transcripts(
          os.path.join(sdir, 'dialog', 'transcriptions', f'{dialog}.txt'))
      avi = os.path.join(sdir, 'dialog', 'avi', 'DivX', f'{dialog}.avi')
      for h in headers:
        try:
          who = parse_utterance_id(h['id'])
        except ValueError as e:
          bad.append((h['where'], str(e)))
          continue
        if who['session'] != session or who['dialog'] != dialog:
          bad.append((h['where'], f'utterance {h["id"]} does not belong to {dialog}'))
          continue
        if h['label'] not in KNOWN_LABELS:
          bad.append((h['where'], f'unknown label {h["label"]!r}'))
          continue
        if h['label'] not in mapping:
          left_out[h['label']] = left_out.get(h['label'], 0) + 1
          continue
        wav = os.path.join(sdir, 'sentences', 'wav', dialog, f'{h["id"]}.wav')
        if not os.path.isfile(wav):
          bad.append((wav, 'utterance wav missing'))
          continue
        if cfg.with_video and not os.path.isfile(avi):
          bad.append((avi, f'dialog video missing (needed for {h["id"]})'))
          continue
        side = sides.get(str(session), 'left')
        if who['gender'] == 'M':
          side = 'right' if side == 'left' else 'left'
        items.append({'id': h['id'], 'audio_path': wav,
                      'video_path': avi if cfg.with_video else None,
                      'start': h['start'], 'end': h['end'], 'side': side,
                      'label': mapping[h['label']], 'vad': h['vad'],
                      'session': session, 'speaker': who['speaker'],
                      'transcript': transcripts.get(h['id'], '')})
  logging.info('iemocap/%s: utterances left out by the %s label map: %s', cfg.name,
               cfg.label_map, left_out)
  return items, bad


def process_item(item, cfg):
  """One utterance -> (key, example); runs in a worker process."""
  from data_pipelines.features import clip
  feats, info = clip.preprocess_av(audio_path=item['audio_path'], audio_cfg=cfg.audio,
                                   return_info=True)
  example = {'id': item['id'], 'audio': feats['audio'], 'audio_length': info['audio_length'],
             'label': item['label'],
             'speaker': item['speaker'], 'session': item['session'],
             'vad': np.asarray(item['vad'], np.float32), 'transcript': item['transcript']}
  if cfg.with_text:
    example['text'] = hashed_word_vectors(item['transcript'], cfg.text_dim, cfg.max_words)
    example['text_length'] = min(len(words_of(item['transcript'])), cfg.max_words)
  # audio, video, text, physio; an utterance without transcript words has no text.
  mask = [1.0, 0.0, 1.0 if cfg.with_text and example['text_length'] else 0.0, 0.0]
  if cfg.with_video:
    try:
      example['video'] = clip.preprocess_av(
          video_path=item['video_path'], video_cfg=cfg.video, start_s=item['start'],
          end_s=item['end'], region=item['side'])['video']
      example['video_length'] = cfg.video.num_frames
      mask[1] = 1.0
    except clip.NoFaceError:
      if cfg.missing_face != 'mask':
        raise
      v = cfg.video
      example['video'] = np.zeros((v.num_frames, v.size, v.size, 3), np.uint8)
      example['video_length'] = 0
  example['mask'] = np.asarray(mask, np.float32)
  return item['id'], example

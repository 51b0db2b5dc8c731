"""`ravdess_ferplus`: a PAIRING of RAVDESS speech audio with FER+ faces.

This is not a recorded audio-visual dataset: the voice and the face of an
example come from different people. Each RAVDESS speech utterance is paired
with FER+ face(s) showing the same emotion, as paper 004 does to train a
face+voice model from an audio-only and an image-only corpus. Only the
emotions both sets share are kept (7 classes):
  neutral, happy, sad, angry, fearful, disgust, surprised
(RAVDESS 'calm' and FER+ 'contempt' have no counterpart and are left out).

Splits follow RAVDESS's speaker-independent actor splits (see ravdess.py).
Faces never cross splits: when the FER+ folder has its train / validation /
test sets, each RAVDESS split draws from the FER+ split of the same name;
otherwise the available faces of each class are shuffled (seeded) and cut
into disjoint parts with the RAVDESS split fractions. `paired_heldout` draws
only from FER2013Valid (and FER2013Test), cut that way, so a face model trained
on FER2013Train (`configs/mmt_ca.py:ferplus_face+heldout`) has seen no face of
any split: the warm start of the fused model stays clean. Which face joins which
utterance is a seeded draw per utterance, so builds are reproducible.
FER+ labels use the `majority` rule (ferplus.py).

Manual folder: `<manual_dir>/ravdess/` (as for `ravdess`) and
`<manual_dir>/ferplus/` (as for `ferplus`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import builder_lib
from data_pipelines.builders import ferplus
from data_pipelines.builders import ravdess
from data_pipelines.features import audio as audio_features
from mer_jax.contract import logger as logging

CLASSES = ('neutral', 'happy', 'sad', 'angry', 'fearful', 'disgust', 'surprised')
# RAVDESS label index (code - 1) -> shared class; calm (1) has none.
RAVDESS_TO_CLASS = {0: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}
# FER+ emotion index -> shared class; contempt (7) has none.
FERPLUS_TO_CLASS = {0: 0, 1: 1, 3: 2, 4: 3, 6: 4, 5: 5, 2: 6}

MANUAL_DIR_INSTRUCTIONS = f"""\
Put both source datasets in the manual folder:
  <manual_dir>/ravdess/   RAVDESS speech audio, as the `ravdess` builder expects:
{ravdess.MANUAL_DIR_INSTRUCTIONS}
  <manual_dir>/ferplus/   FER+ faces, as the `ferplus` builder expects:
{ferplus.MANUAL_DIR_INSTRUCTIONS}"""


@dataclasses.dataclass
class RavdessFerplusConfig(tfds.core.BuilderConfig):
  faces_per_utterance: int = 1
  face_size: int = 48
  seed: int = 0
  # FER+ folders faces may come from (of 'train', 'validation', 'test'); () all. Without
  # 'train', no face is one a face model trained on FER2013Train has seen.
  face_sources: tuple = ()
  val_frac: float = 0.2
  test_frac: float = 0.2
  audio: audio_features.AudioFeatureConfig = dataclasses.field(
      default_factory=ravdess._default_audio)
  # Read by ravdess.collect_items / process_item (audio-only speech takes).
  vocal_channel: int = 1
  with_video: bool = False
  prefer_wav_audio: bool = False
  video: object = None


def _draw(uid: str, seed: int, n: int, k: int) -> list:
  """k distinct indices in [0, n) chosen by a seeded hash of the utterance id."""
  s = int.from_bytes(hashlib.md5(f'{seed}:{uid}'.encode()).digest()[:8], 'little')
  return list(np.random.default_rng(s).choice(n, size=min(k, n), replace=False))


def face_pools(ferplus_dir: str, fractions: dict, seed: int, report,
               face_sources: tuple = ()) -> dict:
  """{split: {class: [(fer id, u8[48, 48])]}} of majority-labelled FER+ faces, from
  the FER+ splits in face_sources (all when empty)."""
  folders = {s: os.path.join(ferplus_dir, sub) for s, sub in ferplus._FOLDERS.items()
             if os.path.isdir(os.path.join(ferplus_dir, sub))}
  if folders:
    sources = {s: list(ferplus.iter_folder(p, report, s)) for s, p in folders.items()
               if not face_sources or s in face_sources}
  else:
    sources = ferplus.read_csv_pair(os.path.join(ferplus_dir, 'fer2013.csv'),
                                    os.path.join(ferplus_dir, 'fer2013new.csv'), report)
    sources = {s: v for s, v in sources.items() if not face_sources or s in face_sources}
  if not sources:
    raise builder_lib.ManualDirError(
        f'ravdess_ferplus: no FER+ faces from {list(face_sources)} under {ferplus_dir}')
  by_split = {}
  for split, rows in sources.items():
    for uid, grey, votes in rows:
      dist = ferplus.ferplus_label(votes, 'majority')
      if dist is None:
        continue
      cls = FERPLUS_TO_CLASS.get(int(np.argmax(dist)))
      if cls is not None:
        by_split.setdefault(split, {}).setdefault(cls, []).append((uid, grey))
  if all(s in by_split for s in fractions):
    return {s: by_split[s] for s in fractions}
  # Not every split is available: cut the pooled faces of each class.
  pooled = {}
  for per_cls in by_split.values():
    for cls, faces in per_cls.items():
      pooled.setdefault(cls, []).extend(faces)
  out = {s: {} for s in fractions}
  names = list(fractions)
  total = sum(fractions.values())
  for cls, faces in pooled.items():
    faces = sorted(faces, key=lambda f: f[0])
    order = np.random.default_rng(seed + cls).permutation(len(faces))
    start = 0
    for i, s in enumerate(names):
      end = len(faces) if i == len(names) - 1 else start + int(
          round(len(faces) * fractions[s] / total))
      out[s][cls] = [faces[j] for j in order[start:end]]
      start = end
  return out


class RavdessFerplus(tfds.core.GeneratorBasedBuilder):
  """Pairing: RAVDESS speech audio with same-emotion FER+ faces (7 shared classes)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': "'audio_length': the real audio frames before padding."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DIR_INSTRUCTIONS
  FOLD_GROUP_KEY = 'speaker'
  BUILDER_CONFIGS = [
      RavdessFerplusConfig(name='paired', description='One FER+ face (48x48) per RAVDESS '
                           'speech utterance, MFCC-13+deltas x 360.'),
      RavdessFerplusConfig(name='paired_x3', description='Three faces per utterance.',
                           faces_per_utterance=3),
      RavdessFerplusConfig(name='paired_heldout', description='paired with faces from '
                           'FER2013Valid/Test only, none a model trained on FER2013Train saw.',
                           face_sources=('validation', 'test')),
      RavdessFerplusConfig(name='paired_heldout_prosody', description='paired_heldout with '
                           'the 15 prosodic tracks after the MFCCs (ravdess.speech_audio_prosody).',
                           face_sources=('validation', 'test'),
                           audio=dataclasses.replace(ravdess._default_audio(), prosody=True)),
      RavdessFerplusConfig(name='paired_small', description='Tiny features for tests.',
                           audio=ravdess._SMALL_AUDIO),
  ]
  DEFAULT_CONFIG_NAME = 'paired'

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'audio': tfds.features.Tensor(shape=(c.audio.num_frames, c.audio.feature_dim),
                                          dtype=np.float32),
            'audio_length': tfds.features.Scalar(dtype=np.int64, doc='real audio frames before padding'),
            'video': tfds.features.Tensor(shape=(1, c.face_size, c.face_size, 3),
                                          dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=CLASSES),
            'speaker': np.int64,
            'face_id': tfds.features.Text(),
        }),
        supervised_keys=None, homepage='https://zenodo.org/record/1188976',
        description=__doc__)

  def _split_generators(self, dl_manager):
    c = self.builder_config
    manual_dir = builder_lib.require_manual_dir(
        'ravdess_ferplus', builder_lib.manual_dir_of(dl_manager), ['ravdess', 'ferplus'],
        MANUAL_DIR_INSTRUCTIONS, any_of=False)
    report = builder_lib.SkipReport(f'ravdess_ferplus/{c.name}')
    items, bad = ravdess.collect_items(os.path.join(manual_dir, 'ravdess'), c)
    for path, reason in bad:
      report.add('(scan)', path, reason)
    # Calm has no FER+ counterpart: not part of the pairing, not an error.
    items = [i for i in items if i['label'] in RAVDESS_TO_CLASS]
    if not items:
      raise builder_lib.ManualDirError(
          f'ravdess_ferplus: no RAVDESS speech wavs under {manual_dir}/ravdess.\n'
          f'{MANUAL_DIR_INSTRUCTIONS}')
    gens = builder_lib.build_splits(self, ravdess.MODULE, 'process_item', items, report,
                                    lambda ex: int(ex['speaker']), c.val_frac, c.test_frac,
                                    item_unit_fn=lambda it: int(it['actor']))
    fractions = {'train': 1.0 - c.val_frac - c.test_frac, 'validation': c.val_frac,
                 'test': c.test_frac}
    fractions = {s: f for s, f in fractions.items() if s in gens}
    pools = face_pools(os.path.join(manual_dir, 'ferplus'), fractions, c.seed, report,
                       tuple(c.face_sources))
    if builder_lib.use_beam():
      return {s: builder_lib.beam_flat_map(g, _beam_pairs, pools[s], s, builder_lib.plain_config(c))
              for s, g in gens.items()}
    return {s: self._generate_examples(g, pools[s], s, report) for s, g in gens.items()}

  def _generate_examples(self, audio_examples, faces, split, report):
    for key, ex in audio_examples:
      pairs = pair_faces(key, ex, faces, split, self.builder_config)
      if isinstance(pairs, builder_lib.Skip):
        report.add(split, pairs.path, pairs.reason)
        continue
      yield from pairs
    report.write(self.data_dir)


def pair_faces(key, ex, faces, split, c):
  """One RAVDESS audio example -> [(uid, example)] with drawn faces, or a Skip."""
  cls = RAVDESS_TO_CLASS[int(ex['label'])]
  pool = faces.get(cls, [])
  if not pool:
    return builder_lib.Skip(key, f'no FER+ {CLASSES[cls]} face left for the {split} split')
  out = []
  for j in _draw(key, c.seed, len(pool), c.faces_per_utterance):
    fer_id, grey = pool[j]
    uid = f'{key}+{fer_id}'
    out.append((uid, {'id': uid, 'audio': ex['audio'], 'audio_length': ex['audio_length'],
                      'label': cls,
                      'video': ferplus.to_face_clip(grey, c.face_size),
                      'speaker': ex['speaker'], 'face_id': fer_id}))
  return out


def _beam_pairs(key_example, faces, split, c):
  pairs = pair_faces(*key_example, faces, split, c)
  if isinstance(pairs, builder_lib.Skip):
    # Beam workers cannot add to the driver's report: logged there instead.
    logging.warning('ravdess_ferplus: skipping %s: %s', pairs.path, pairs.reason)
    return []
  return pairs

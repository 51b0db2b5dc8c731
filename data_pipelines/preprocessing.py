"""How a raw clip becomes model input, per dataset: one explicit entry a builder.

Inference (mer_jax/infer.py) turns a new video or wav into the inputs a model
was trained on. It asks `preprocessing(dataset_name)` instead of guessing from
builder-config attributes, and a dataset whose inputs cannot be made from a
video and a wav says so.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from data_pipelines.features import audio as audio_features
from data_pipelines.features import video as video_features


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  audio: Optional[audio_features.AudioFeatureConfig]
  video: Optional[video_features.VideoFeatureConfig]
  clip_s: float  # the window a training example covers
  grayscale: bool = False  # faces were grey images (FER+), replicated over 3 channels


def _audio_visual(cfg) -> Preprocessing:
  audio = cfg.audio
  video = cfg.video if getattr(cfg, 'with_video', True) else None
  return Preprocessing(audio, video, float(audio.duration_s))


def _synthetic(cfg) -> Preprocessing:
  video = video_features.VideoFeatureConfig(num_frames=cfg.num_frames, size=cfg.frame_size,
                                            face_crop=False)
  return Preprocessing(cfg.audio, video, float(cfg.duration_s))


def _ferplus(cfg) -> Preprocessing:
  return Preprocessing(None, video_features.VideoFeatureConfig(num_frames=1, size=cfg.size),
                       1.0, grayscale=True)


def _ravdess_ferplus(cfg) -> Preprocessing:
  # Trained on RAVDESS speech with FER+ faces: a clip gives its audio and one grey
  # face crop at FER+'s size.
  video = video_features.VideoFeatureConfig(num_frames=cfg.faces_per_utterance,
                                            size=cfg.face_size)
  return Preprocessing(cfg.audio, video, float(cfg.audio.duration_s), grayscale=True)


def _unsupported(reason: str) -> Callable:
  def fn(cfg):
    raise NotImplementedError(reason)
  return fn


PREPROCESSING: dict[str, Callable] = {
    'ravdess': _audio_visual,
    'crema_d': _audio_visual,
    'iemocap': _audio_visual,
    'synthetic_av': _synthetic,
    'ferplus': _ferplus,
    'ravdess_ferplus': _ravdess_ferplus,
    'cmu_mosei': _unsupported('cmu_mosei models read pre-extracted COVAREP/FACET/GloVe '
                              'vectors, which cannot be computed from a raw clip here'),
    'deap': _unsupported('deap models read physiological recordings, not a clip'),
}


def builder_config(dataset_name: str):
  """The BuilderConfig object named by 'dataset/config'."""
  import tensorflow_datasets as tfds
  import data_pipelines.registry  # noqa: F401  (registers the builders)
  name, _, config_name = dataset_name.partition('/')
  cls = tfds.builder_cls(name)
  wanted = config_name or cls.DEFAULT_CONFIG_NAME or cls.BUILDER_CONFIGS[0].name
  for c in cls.BUILDER_CONFIGS:
    if c.name == wanted:
      return c
  raise ValueError(f'{dataset_name}: no builder config {wanted!r}; '
                   f'known: {[c.name for c in cls.BUILDER_CONFIGS]}')


def preprocessing(dataset_name: str) -> Preprocessing:
  name = dataset_name.split('/')[0]
  if name not in PREPROCESSING:
    raise NotImplementedError(f'no preprocessing entry for dataset {name!r} '
                              f'(data_pipelines/preprocessing.py)')
  return PREPROCESSING[name](builder_config(dataset_name))

"""`synthetic_av`: a built-in audio-visual emotion dataset that needs no download.

Talking-face clips with matching speech-like audio; see `synthetic_render` for
the class design (facial valence x vocal arousal, so fusion is required).
Splits are speaker-independent. Audio and frames go through the same feature
code as the real datasets (`data_pipelines.features`).

Build: `python -m data_pipelines.build synthetic_av --data_dir=DIR`
(training builds it on the fly when missing).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import builder_lib
from data_pipelines.builders import synthetic_render as render
from data_pipelines.features import audio as audio_features


@dataclasses.dataclass
class SyntheticAvConfig(tfds.core.BuilderConfig):
  """Size and feature settings of one synthetic_av variant."""
  seed: int = 0
  num_speakers: tuple = (48, 12, 12)  # train, validation, test
  repetitions: int = 4  # clips per speaker and class
  duration_s: float = 2.0
  num_frames: int = 8
  frame_size: int = 64
  render_size: int = 128
  audio: audio_features.AudioFeatureConfig = audio_features.AudioFeatureConfig(
      sample_rate=16000, duration_s=2.0, kind='mfcc', n_mfcc=20, n_mels=40,
      n_fft=512, hop_length=320, num_frames=100)


def _make_example(key, cfg: SyntheticAvConfig):
  """Renders one clip and runs it through the shared feature code."""
  return render.make_example(key, cfg.seed, cfg.duration_s, cfg.num_frames, cfg.frame_size,
                             cfg.render_size, cfg.audio)


class SyntheticAv(tfds.core.GeneratorBasedBuilder):
  """Procedural talking faces with speech-like audio, six emotion classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SyntheticAvConfig(name='default', description='72 speakers x 6 classes x 4 clips, 8 frames of 64x64, MFCC-20 x 100.'),
      SyntheticAvConfig(name='small', description='Tiny variant for tests: 12 speakers, 2 clips per class.',
                        num_speakers=(6, 3, 3), repetitions=2, num_frames=4, frame_size=32,
                        render_size=64),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'id': tfds.features.Text(),
            'audio': tfds.features.Tensor(
                shape=(cfg.audio.num_frames, cfg.audio.feature_dim), dtype=np.float32),
            'video': tfds.features.Tensor(
                shape=(cfg.num_frames, cfg.frame_size, cfg.frame_size, 3), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=render.CLASS_NAMES),
            'speaker': np.int64,
        }),
        supervised_keys=None,
        homepage='https://github.com/mer-jax/mer_jax',
        description=__doc__,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    n_train, n_val, n_test = self.builder_config.num_speakers
    ids = np.arange(n_train + n_val + n_test)
    return {
        'train': self._generate_examples(ids[:n_train]),
        'validation': self._generate_examples(ids[n_train:n_train + n_val]),
        'test': self._generate_examples(ids[n_train + n_val:]),
    }

  def _generate_examples(self, speaker_ids):
    cfg = self.builder_config
    keys = [(int(s), c, r) for s in speaker_ids
            for c in range(len(render.CLASS_NAMES)) for r in range(cfg.repetitions)]
    # Workers get plain settings: this module may be imported under another
    # name (the tfds CLI loads it by path), which a spawned worker cannot unpickle.
    work = functools.partial(render.make_example, seed=cfg.seed, duration_s=cfg.duration_s,
                             num_frames=cfg.num_frames, frame_size=cfg.frame_size,
                             render_size=cfg.render_size, audio_cfg=cfg.audio)
    if builder_lib.use_beam():
      import apache_beam as beam
      return beam.Create(keys) | beam.Reshuffle() | beam.Map(work)
    return _run_local(work, keys)


# A spawned worker first imports the feature code and loads librosa's numba kernels
# (seconds; tens of seconds when they compile): a split smaller than this per worker
# is rendered in this process (the small variant: 144 clips at ~0.06 s each).
_MIN_CLIPS_PER_WORKER = 128


def _run_local(work, keys):
  """Renders `keys` on the shared build pool (MER_JAX_BUILD_WORKERS, default one per
  core; kept for the next split) or, for few keys, in this process."""
  procs = min(len(keys) // _MIN_CLIPS_PER_WORKER, builder_lib.build_workers())
  if procs <= 1:
    yield from map(work, keys)
    return
  yield from builder_lib.shared_pool().imap_unordered(work, keys, chunksize=8)

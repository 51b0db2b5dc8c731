"""The synthetic dataset: deterministic, speaker-independent, classes built as documented."""

import numpy as np

from data_pipelines.builders import synthetic_av, synthetic_render as render
from data_pipelines import input_pipeline
from configs import avt_ca as avt_ca_config


def test_examples_are_deterministic_and_distinct():
  cfg = synthetic_av.SyntheticAv.BUILDER_CONFIGS[1]
  _, a = synthetic_av._make_example((3, 2, 1), cfg)
  _, b = synthetic_av._make_example((3, 2, 1), cfg)
  _, c = synthetic_av._make_example((4, 2, 1), cfg)
  for k in ('audio', 'video'):
    np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a[k], c[k])
  assert a['label'] == 2 and render.CLASS_NAMES[2] == 'calm'
  assert a['video'].shape == (cfg.num_frames, cfg.frame_size, cfg.frame_size, 3)
  assert a['audio'].shape == (cfg.audio.num_frames, cfg.audio.feature_dim)


def test_each_modality_separates_only_its_factor():
  """Classes that share the face differ in the voice, and vice versa."""
  valence = {render.CLASS_FACTORS[n][0] for n in render.CLASS_NAMES}
  arousal = {render.CLASS_FACTORS[n][1] for n in render.CLASS_NAMES}
  assert valence == {-1, 0, 1} and arousal == {0, 1}
  assert len(set(render.CLASS_FACTORS.values())) == len(render.CLASS_NAMES)
  spk = render.make_speaker(0, 5)
  # Same face factor, different arousal: voices differ in syllable rate and pitch.
  w_low, _ = render.synth_voice(spk, 0, np.random.default_rng(0), 2.0, 16000)
  w_high, _ = render.synth_voice(spk, 1, np.random.default_rng(0), 2.0, 16000)
  assert not np.allclose(w_low, w_high)


def test_splits_are_speaker_independent(tiny_data_dir):
  cfg = avt_ca_config.get_config('tiny')
  cfg.dataset.data_dir = tiny_data_dir
  builder = input_pipeline.get_builder(cfg.dataset, build_if_missing=False)
  speakers = {}
  for split in ('train', 'validation', 'test'):
    speakers[split] = {int(ex['speaker']) for ex in input_pipeline.as_numpy(
        builder.as_dataset(split=split))}
  assert not speakers['train'] & speakers['test']
  assert not speakers['train'] & speakers['validation']
  assert not speakers['validation'] & speakers['test']
  n_train, n_val, n_test = builder.builder_config.num_speakers
  assert len(speakers['train']) == n_train and len(speakers['test']) == n_test

"""Emotion timeline of a video (or a wav plus a video) with a trained model.

  python -m mer_jax.infer --workdir=DIR VIDEO.mp4 [--window_s=2 --hop_s=0.5]
  python -m mer_jax.infer --workdir=DIR --audio=speech.wav FRAMES.mp4

Paper 004's real-time use: a sliding window (length `--window_s`, default the
clip length the dataset was built with; step `--hop_s`) runs over the clip;
each window goes through `data_pipelines.features.clip.preprocess_av`, the
same code the dataset builders use, with the settings that
`data_pipelines.preprocessing` declares for the dataset the model was trained
on (DIR/config.json), then through the jitted model. A model that needs a
modality the given files cannot provide is an error, never a silent
single-modality run. A last window ending at the clip's end makes the
timeline cover the whole clip.

Writes <out>/timeline.csv and .json (window start, end, centre, probability
per class, predicted class) and timeline.png, and prints milliseconds per
window (preprocessing and model separately).
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from typing import Optional

import numpy as np


def load_run(workdir: str, checkpoint: str = 'best'):
  """(config, model, variables, label names) of a training directory, no dataset needed."""
  from mer_jax import assembly
  run, state, _ = assembly.restore_run(workdir, checkpoint)
  variables = assembly.eval_variables(state)
  return run.config, run.model, variables, _label_names(workdir, run.config)


def _label_names(workdir: str, config) -> list[str]:
  path = os.path.join(workdir, 'results.json')
  if os.path.exists(path):
    with open(path) as f:
      names = json.load(f).get('label_names')
    if names:
      return list(names)
  import tensorflow_datasets as tfds
  import data_pipelines.registry  # noqa: F401
  try:
    return list(tfds.builder(config.dataset.name, data_dir=os.path.join(
        os.path.expanduser('~'), '.cache', 'mer_jax_shapes')).info.features['label'].names)
  except (KeyError, AttributeError):
    return [str(i) for i in range(config.dataset.num_classes)]


def feature_configs(config, have_video: bool = True):
  """(preprocessing, modalities used) for the dataset `config.dataset.name` was trained on.

  Raises when the model needs a modality that the given files cannot provide.
  """
  from data_pipelines import preprocessing
  from mer_jax import assembly
  prep = preprocessing.preprocessing(config.dataset.name)
  masked = set(s for s in str(config.get('mask_modalities', '')).split(',') if s)
  wanted = [m for m in assembly.example_shapes(config) if m not in masked]
  available = {'audio': prep.audio is not None, 'video': prep.video is not None and have_video}
  missing = [m for m in wanted if not available.get(m, False)]
  if missing:
    raise ValueError(f'the model trained on {config.dataset.name} needs {missing}, which '
                     f'{"these files" if prep.video is not None else "a clip"} cannot provide '
                     '(give a video for faces; mask a modality with '
                     '--config.mask_modalities at training time for a unimodal model)')
  return prep, wanted


def windows(duration_s: float, window_s: float, hop_s: float) -> list[tuple[float, float]]:
  """Start/end times of sliding windows covering [0, duration]; the last ends at the end."""
  if duration_s <= window_s:
    return [(0.0, duration_s)]
  out, t = [], 0.0
  while t + window_s <= duration_s + 1e-6:
    out.append((round(t, 6), round(t + window_s, 6)))
    t += hop_s
  if out[-1][1] < duration_s - 1e-6:
    out.append((round(duration_s - window_s, 6), round(duration_s, 6)))
  return out


def _duration(video_path: Optional[str], audio_path: Optional[str]) -> float:
  from data_pipelines.features import media
  info = media.probe(video_path or audio_path)
  if info.get('duration_s'):
    return float(info['duration_s'])
  wave, sr = media.decode_audio(audio_path or video_path)
  return wave.shape[0] / float(sr)


def run_timeline(workdir: str, video_path: Optional[str] = None, audio_path: Optional[str] = None,
                 window_s: float = 0.0, hop_s: float = 0.5, checkpoint: str = 'best',
                 out_dir: str = '') -> dict:
  """Runs the sliding window; writes timeline.csv/.json/.png; returns the timeline."""
  import jax
  from data_pipelines.features import clip
  from mer_jax import contract as bc, plots

  config, model, variables, labels = load_run(workdir, checkpoint)
  prep, used = feature_configs(config, have_video=video_path is not None)
  audio_cfg = prep.audio if 'audio' in used else None
  video_cfg = prep.video if 'video' in used else None
  window_s = window_s or prep.clip_s
  duration = _duration(video_path, audio_path)
  spans = windows(duration, window_s, hop_s)
  masked = tuple(s for s in str(config.get('mask_modalities', '')).split(',') if s)

  @jax.jit
  def predict(batch):
    batch = bc.mask_modalities(batch, masked)
    out = model.apply(variables, batch, train=False)
    return jax.nn.softmax(out['logits'].astype(np.float32), axis=-1)

  rows, pre_ms, model_ms = [], [], []
  for i, (start, end) in enumerate(spans):
    t0 = time.perf_counter()
    feats = clip.preprocess_av(video_path=video_path, audio_path=audio_path, audio_cfg=audio_cfg,
                               video_cfg=video_cfg, start_s=start, end_s=end)
    if config.input.get('audio_norm', 'none') != 'none' and 'audio' in feats:
      from data_pipelines import input_pipeline  # the training pipeline's normalisation
      feats['audio'] = np.asarray(input_pipeline.normalize_audio(
          {'audio': feats['audio']}, config.input.audio_norm)['audio'])
    if prep.grayscale and 'video' in feats:  # grey faces, as the model saw them
      grey = feats['video'].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
      feats['video'] = np.repeat(np.rint(grey)[..., None], 3, -1).astype(np.uint8)
    batch = {k: v[None] for k, v in feats.items()}
    for k, v in feats.items():
      if v.ndim >= 2:
        batch[f'{k}_valid'] = np.ones((1, v.shape[0]), np.float32)
    batch['label'] = np.zeros((1,), np.int32)
    batch['mask'] = bc.presence_mask(feats.keys(), 1)
    batch['valid'] = np.ones((1,), np.float32)
    t1 = time.perf_counter()
    probs = np.asarray(jax.block_until_ready(predict(batch)))[0]
    t2 = time.perf_counter()
    pre_ms.append(1e3 * (t1 - t0))
    if i > 0:  # the first call compiles
      model_ms.append(1e3 * (t2 - t1))
    rows.append({'start_s': start, 'end_s': end, 'center_s': round((start + end) / 2, 6),
                 **{f'p_{name}': float(p) for name, p in zip(labels, probs)},
                 'predicted': labels[int(np.argmax(probs))]})
  out_dir = out_dir or os.path.join(workdir, 'inference',
                                    os.path.splitext(os.path.basename(video_path or audio_path))[0])
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'timeline.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  timing = {'preprocess_ms_median': statistics.median(pre_ms),
            'model_ms_median': statistics.median(model_ms) if model_ms else float('nan'),
            'windows': len(rows)}
  timing['total_ms_median'] = timing['preprocess_ms_median'] + (
      timing['model_ms_median'] if model_ms else 0.0)
  result = {'video': video_path, 'audio': audio_path, 'duration_s': duration,
            'window_s': window_s, 'hop_s': hop_s, 'labels': labels, 'timing': timing,
            'model': config.model.name, 'dataset': config.dataset.name, 'windows': rows}
  with open(os.path.join(out_dir, 'timeline.json'), 'w') as f:
    json.dump(result, f, indent=2)
  probs = np.array([[r[f'p_{n}'] for n in labels] for r in rows])
  plots.timeline([r['center_s'] for r in rows], probs, labels,
                 os.path.join(out_dir, 'timeline.png'),
                 f'{config.model.name}: {os.path.basename(video_path or audio_path)}',
                 duration_s=duration)
  result['out_dir'] = out_dir
  return result


def main(argv):
  from absl import flags
  from mer_jax import contract as log
  log.quiet_libraries()
  FLAGS = flags.FLAGS
  if len(argv) != 2 and not FLAGS.audio:
    raise SystemExit('usage: python -m mer_jax.infer --workdir=DIR VIDEO (or --audio=WAV [FRAMES])')
  video = argv[1] if len(argv) > 1 else None
  res = run_timeline(FLAGS.workdir, video, FLAGS.audio or None, FLAGS.window_s, FLAGS.hop_s,
                     FLAGS.checkpoint, FLAGS.out_dir)
  for r in res['windows']:
    print(f"{r['start_s']:6.2f}-{r['end_s']:6.2f}s  {r['predicted']}")
  t = res['timing']
  print(f"{t['windows']} windows of {res['window_s']:.2f}s over {res['duration_s']:.2f}s: "
        f"{t['total_ms_median']:.1f} ms per window (preprocessing {t['preprocess_ms_median']:.1f} "
        f"ms, model {t['model_ms_median']:.1f} ms, medians)")
  print(f"wrote {res['out_dir']}/timeline.csv, timeline.json, timeline.png")


if __name__ == '__main__':
  from absl import app, flags
  flags.DEFINE_string('workdir', None, 'Training directory (config.json and checkpoints).')
  flags.DEFINE_string('audio', '', 'Separate audio file (wav); default: the video\'s audio track.')
  flags.DEFINE_float('window_s', 0.0, 'Window length in seconds (default: the dataset\'s clip length).')
  flags.DEFINE_float('hop_s', 0.5, 'Window step in seconds.')
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step number.")
  flags.DEFINE_string('out_dir', '', 'Output folder (default: DIR/inference/<clip name>).')
  flags.mark_flags_as_required(['workdir'])
  app.run(main)

"""Data throughput: building clips, reading TFRecords, and what training consumes.

  PYTHONPATH=. python experiments/data_throughput.py \
      --video=../shared/data/ravdess/Video_Speech_Actor_01/Actor_01/01-01-01-01-01-01-01.mp4

Prints
  1. builder throughput (clips/s) of `preprocess_av` on a RAVDESS-style
     1280x720 H.264 clip with a `ravdess` builder config's settings: decode,
     face detection + crop, audio features; in one process and with a pool of
     `--workers` spawned processes (as the builders run);
  2. the tf.data read rate (examples/s) of TFRecords holding that example in
     the builder's own feature encoding (parse + decode + batch);
  3. the examples/s a jitted training step of `--config` consumes at the
     same input shapes,
so one can see whether reading keeps a training step fed, and how long a
full build takes (RAVDESS: 1440 speech AV clips).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time

from absl import app
from absl import flags

flags.DEFINE_string('video', '../shared/data/ravdess/Video_Speech_Actor_01/Actor_01/'
                    '01-01-01-01-01-01-01.mp4', 'A RAVDESS-style mp4 (audio + video).')
flags.DEFINE_string('builder_config', 'speech_av', 'ravdess builder config whose settings '
                    'are used (speech_av: 15 faces of 112x112; speech_av_224: 224x224).')
flags.DEFINE_integer('repeats', 4, 'Clips timed per measurement.')
flags.DEFINE_integer('workers', 2, 'Spawned worker processes for the parallel measurement.')
flags.DEFINE_integer('records', 256, 'Examples written to the TFRecord read benchmark.')
flags.DEFINE_integer('batch_size', 32, 'Batch size of the read and train-step measurements.')
flags.DEFINE_string('config', 'configs/mmt_ca.py:ravdess', 'Config whose train step is timed '
                    '(its example shapes are replaced by the builder\'s).')
flags.DEFINE_bool('train_step', True, 'Also time the training step.')
FLAGS = flags.FLAGS


def _builder_cfg(name):
  from data_pipelines.builders import ravdess
  for cfg in ravdess.Ravdess.BUILDER_CONFIGS:
    if cfg.name == name:
      return cfg
  raise ValueError(f'unknown ravdess config {name!r}')


def _one_clip(args):
  path, audio_cfg, video_cfg = args
  from data_pipelines.features import clip
  t0 = time.perf_counter()
  clip.preprocess_av(video_path=path, audio_cfg=audio_cfg, video_cfg=video_cfg)
  return time.perf_counter() - t0


def builder_throughput(path, cfg, repeats, workers) -> dict:
  """clips/s in one process (with a stage breakdown) and across `workers` processes."""
  from data_pipelines.features import audio as audio_features
  from data_pipelines.features import clip, face, media
  _one_clip((path, cfg.audio, cfg.video))  # warm caches (cascade, librosa)
  stages = {'decode_video': [], 'face_crop': [], 'decode_audio': [], 'audio_features': []}
  totals = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    frames, _ = media.decode_video(path, num_frames=cfg.video.num_frames)
    t1 = time.perf_counter()
    face.crop_faces(frames, cfg.video.size, margin=cfg.video.face_margin,
                    max_detect_frames=cfg.video.face_detect_frames)
    t2 = time.perf_counter()
    wave, sr = media.decode_audio(path)
    t3 = time.perf_counter()
    audio_features.extract_audio_features(wave, sr, cfg.audio)
    t4 = time.perf_counter()
    for k, (a, b) in zip(stages, [(t0, t1), (t1, t2), (t2, t3), (t3, t4)]):
      stages[k].append(b - a)
    totals.append(t4 - t0)
  out = {'clip_s_median': statistics.median(totals),
         'clips_per_s_1proc': 1.0 / statistics.median(totals),
         'stages_s': {k: statistics.median(v) for k, v in stages.items()}}
  del clip
  if workers > 1:
    with mp.get_context('spawn').Pool(workers) as pool:
      pool.map(_one_clip, [(path, cfg.audio, cfg.video)] * workers)  # start + warm up
      n = repeats * workers
      t0 = time.perf_counter()
      pool.map(_one_clip, [(path, cfg.audio, cfg.video)] * n, chunksize=1)
      out['clips_per_s_pool'] = n / (time.perf_counter() - t0)
      out['workers'] = workers
  return out


def read_rate(example, features, records, batch_size) -> dict:
  """examples/s of tf.data reading `records` copies of `example` from a TFRecord file."""
  import tensorflow as tf
  tf.config.set_visible_devices([], 'GPU')
  serialized = features.serialize_example(example)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'bench.tfrecord')
    with tf.io.TFRecordWriter(path) as w:
      for _ in range(records):
        w.write(serialized)
    size_mb = os.path.getsize(path) / 2**20

    def dataset():
      ds = tf.data.TFRecordDataset(path, buffer_size=8 << 20)
      ds = ds.map(features.deserialize_example, num_parallel_calls=tf.data.AUTOTUNE)
      return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    for _ in dataset():  # warm up (graph tracing, page cache)
      pass
    rates = []
    for _ in range(3):
      t0 = time.perf_counter()
      n = sum(int(b['label'].shape[0]) for b in dataset())
      rates.append(n / (time.perf_counter() - t0))
  return {'examples_per_s': statistics.median(rates), 'record_kb': size_mb * 1024 / records}


def main(argv):
  del argv
  from mer_jax.contract import quiet_libraries
  quiet_libraries()
  import numpy as np
  import tensorflow_datasets as tfds
  from data_pipelines.builders import ravdess
  from data_pipelines.features import clip, media
  cfg = _builder_cfg(FLAGS.builder_config)
  info = media.probe(FLAGS.video)
  print(f'clip: {FLAGS.video}\n  {info["width"]}x{info["height"]} {info["video_codec"]} '
        f'{info["fps"]:.2f} fps, {info["num_frames"]} frames, {info["audio_codec"]} '
        f'{info["sample_rate"]} Hz x{info["channels"]}')
  print(f'builder config ravdess/{cfg.name}: {cfg.video.num_frames} faces of '
        f'{cfg.video.size}x{cfg.video.size}, audio {cfg.audio.kind} '
        f'[{cfg.audio.num_frames}, {cfg.audio.feature_dim}]')

  b = builder_throughput(FLAGS.video, cfg, FLAGS.repeats, FLAGS.workers)
  print('\n1. builder throughput (preprocess_av on this clip)')
  print(f'  1 process: {b["clip_s_median"]:.2f} s/clip = {b["clips_per_s_1proc"]:.2f} clips/s')
  for k, v in b['stages_s'].items():
    print(f'    {k:15s} {v * 1000:7.0f} ms')
  if 'clips_per_s_pool' in b:
    print(f'  {b["workers"]} worker processes: {b["clips_per_s_pool"]:.2f} clips/s '
          f'(os.cpu_count()={os.cpu_count()}) -> RAVDESS 1440 speech AV clips in '
          f'{1440 / b["clips_per_s_pool"] / 60:.1f} min')

  feats = clip.preprocess_av(video_path=FLAGS.video, audio_cfg=cfg.audio, video_cfg=cfg.video)
  builder = tfds.builder(f'ravdess/{cfg.name}', data_dir=tempfile.gettempdir())
  example = {'id': '01-01-01-01-01-01', 'audio': feats['audio'], 'video': feats['video'],
             'label': 0, 'speaker': 1, 'intensity': 1, 'statement': 1, 'repetition': 1}
  r = read_rate(example, builder.info.features, FLAGS.records, FLAGS.batch_size)
  print(f'\n2. tf.data read rate of the TFRecords ({r["record_kb"]:.0f} KB/example): '
        f'{r["examples_per_s"]:.0f} examples/s')

  if FLAGS.train_step:
    from ml_collections import config_flags  # noqa: F401
    from mer_jax import benchmark
    import importlib.util
    path, _, arg = FLAGS.config.partition(':')
    spec = importlib.util.spec_from_file_location('bench_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    config.input.example_shapes = {'audio': tuple(feats['audio'].shape),
                                   'video': tuple(feats['video'].shape)}
    t = benchmark.benchmark_train_step(config, FLAGS.batch_size, repeats=3)
    print(f'\n3. train step of {FLAGS.config} at batch {FLAGS.batch_size} '
          f'({t["devices"]}): {t["step_s_median"]:.3f} s/step = {t["samples_per_s"]:.1f} '
          f'examples/s consumed')
    ratio = r['examples_per_s'] / t['samples_per_s']
    print(f'   reading delivers {ratio:.1f}x what the step consumes'
          f'{"" if ratio >= 1 else " (input-bound!)"}')
  del np, ravdess


if __name__ == '__main__':
  app.run(main)

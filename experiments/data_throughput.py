"""Data throughput: building clips, reading TFRecords, and what training consumes.

  PYTHONPATH=. python experiments/data_throughput.py \
      --video=../shared/data/ravdess/Video_Speech_Actor_01/Actor_01/01-01-01-01-01-01-01.mp4

Prints
  1. builder throughput (clips/s) of `preprocess_av` on a RAVDESS-style
     1280x720 H.264 clip with a `ravdess` builder config's settings: decode,
     face detection + crop, audio features, with the stage times, CPU seconds
     per clip and the faces-found rate (sampled frames with a face) in one
     process; then the steady clip rate with 1, 2, ... (`--workers`) worker
     processes as the builders run them: a spawned pool (the local build) and
     Apache Beam's local runner (MER_JAX_BUILD_RUNNER=beam; when apache_beam
     is installed). The rate counts clips finished after every worker has
     finished its first one, so start-up (worker spawn, imports) is left out;
     Beam's start-up is printed apart;
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
flags.DEFINE_list('workers', ['1', '2'], 'Worker process counts to measure.')
flags.DEFINE_integer('clips_per_worker', 8, 'Clips each worker processes per rate measurement.')
flags.DEFINE_bool('beam', True, 'Also measure Apache Beam\'s local runner (needs apache_beam).')
flags.DEFINE_string('face_detector', '', 'Face detector (haar or mtcnn); empty: the builder '
                    'config\'s own.')
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
  """Preprocesses one clip; returns (finish time, CPU seconds) for the rate."""
  path, audio_cfg, video_cfg = args[:3]
  from data_pipelines.features import clip
  c0 = time.process_time()
  clip.preprocess_av(video_path=path, audio_cfg=audio_cfg, video_cfg=video_cfg)
  return time.time(), time.process_time() - c0


def _steady_rate(results, workers: int) -> dict:
  """clips/s from finish times, after every worker has finished a first clip."""
  ends = sorted(t for t, _ in results)
  n = len(ends) - workers
  return {'clips_per_s': n / (ends[-1] - ends[workers - 1]) if n > 0 else float('nan'),
          'cpu_s_per_clip': statistics.median(c for _, c in results)}


def pool_rate(path, cfg, workers: int, clips: int) -> dict:
  """The local build's way: a pool of spawned processes, one clip per task."""
  work = [(path, cfg.audio, cfg.video, i) for i in range(clips)]
  if workers == 1:
    _one_clip(work[0])  # warm up in-process
    return _steady_rate([_one_clip(w) for w in work], 1)
  with mp.get_context('spawn').Pool(workers) as pool:
    pool.map(_one_clip, work[:workers], chunksize=1)  # start + warm up
    return _steady_rate(pool.map(_one_clip, work, chunksize=1), workers)


def _collect(results, out_path):
  import json
  with open(out_path, 'w') as f:
    json.dump(results, f)


def beam_rate(path, cfg, workers: int, clips: int) -> dict:
  """The Beam build's way: Create -> Reshuffle -> Map on the local runner."""
  import json
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  from data_pipelines.builders import builder_lib
  opts = PipelineOptions(builder_lib.beam_pipeline_flags('DirectRunner', workers))
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'times.json')
    t0 = time.time()
    with beam.Pipeline(options=opts) as p:
      _ = (p | beam.Create([(path, cfg.audio, cfg.video, i) for i in range(clips)])
           | beam.Reshuffle()
           | beam.Map(_one_clip)
           | beam.combiners.ToList()
           | beam.Map(_collect, out))
    wall = time.time() - t0
    with open(out) as f:
      results = json.load(f)
  rate = _steady_rate(results, workers)
  rate['startup_s'] = min(t for t, _ in results) - t0
  rate['wall_s'] = wall
  return rate


def builder_throughput(path, cfg, repeats, workers, clips_per_worker, beam) -> dict:
  """Stage times, CPU s/clip and found rate in one process; rates per worker count."""
  from data_pipelines.features import audio as audio_features
  from data_pipelines.features import face, media
  v = cfg.video
  _one_clip((path, cfg.audio, v))  # warm caches (cascade, MTCNN graphs, librosa)
  stages = {'decode_video': [], 'face_crop': [], 'decode_audio': [], 'audio_features': []}
  totals, cpu = [], []
  for _ in range(repeats):
    c0 = time.process_time()
    t0 = time.perf_counter()
    frames, _ = media.decode_video(path, num_frames=v.num_frames)
    t1 = time.perf_counter()
    face.crop_faces(frames, v.size, margin=v.face_margin, max_detect_frames=v.face_detect_frames,
                    detector=v.face_detector, detect_width=v.face_detect_width,
                    min_size_frac=v.face_min_size_frac)
    t2 = time.perf_counter()
    wave, sr = media.decode_audio(path)
    t3 = time.perf_counter()
    audio_features.extract_audio_features(wave, sr, cfg.audio)
    t4 = time.perf_counter()
    cpu.append(time.process_time() - c0)
    for k, (a, b) in zip(stages, [(t0, t1), (t1, t2), (t2, t3), (t3, t4)]):
      stages[k].append(b - a)
    totals.append(t4 - t0)
  found = face.detect_faces_batch(list(frames), detector=v.face_detector,
                                  detect_width=v.face_detect_width,
                                  min_size_frac=v.face_min_size_frac)
  out = {'clip_s_median': statistics.median(totals),
         'cpu_s_median': statistics.median(cpu),
         'clips_per_s_1proc': 1.0 / statistics.median(totals),
         'found': sum(len(b) > 0 for b in found), 'frames': len(found),
         'stages_s': {k: statistics.median(v) for k, v in stages.items()}, 'rates': []}
  for n in workers:
    out['rates'].append(('plain', n, pool_rate(path, cfg, n, n * clips_per_worker)))
    if beam:
      out['rates'].append(('beam', n, beam_rate(path, cfg, n, n * clips_per_worker)))
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
  if FLAGS.face_detector:
    import dataclasses
    cfg = dataclasses.replace(cfg, video=dataclasses.replace(
        cfg.video, face_detector=FLAGS.face_detector))
  info = media.probe(FLAGS.video)
  print(f'clip: {FLAGS.video}\n  {info["width"]}x{info["height"]} {info["video_codec"]} '
        f'{info["fps"]:.2f} fps, {info["num_frames"]} frames, {info["audio_codec"]} '
        f'{info["sample_rate"]} Hz x{info["channels"]}')
  print(f'builder config ravdess/{cfg.name}: {cfg.video.num_frames} faces of '
        f'{cfg.video.size}x{cfg.video.size} ({cfg.video.face_detector} detector), audio '
        f'{cfg.audio.kind} [{cfg.audio.num_frames}, {cfg.audio.feature_dim}]')
  beam = FLAGS.beam
  if beam:
    try:
      import apache_beam  # noqa: F401
    except ImportError:
      print('(apache_beam not installed: Beam rates left out; pip install -e .[beam])')
      beam = False
  load = os.getloadavg()[0]
  b = builder_throughput(FLAGS.video, cfg, FLAGS.repeats, [int(w) for w in FLAGS.workers],
                         FLAGS.clips_per_worker, beam)
  print('\n1. builder throughput (preprocess_av on this clip)')
  print(f'  1 process: {b["clip_s_median"]:.2f} s/clip = {b["clips_per_s_1proc"]:.2f} clips/s, '
        f'{b["cpu_s_median"]:.2f} CPU s/clip; faces found in {b["found"]}/{b["frames"]} '
        f'sampled frames')
  for k, v in b['stages_s'].items():
    print(f'    {k:15s} {v * 1000:7.0f} ms')
  print(f'  steady rate ({FLAGS.clips_per_worker} clips per worker; os.cpu_count()='
        f'{os.cpu_count()}, load average {load:.1f} at start):')
  for runner, n, r in b['rates']:
    extra = (f', start-up {r["startup_s"]:.0f} s, wall {r["wall_s"]:.0f} s'
             if 'startup_s' in r else '')
    print(f'    {runner:5s} {n} worker(s): {r["clips_per_s"]:.2f} clips/s '
          f'({r["cpu_s_per_clip"]:.2f} CPU s/clip{extra}) -> RAVDESS 1440 speech AV clips '
          f'in {1440 / r["clips_per_s"] / 60:.1f} min')

  feats, clip_info = clip.preprocess_av(video_path=FLAGS.video, audio_cfg=cfg.audio,
                                        video_cfg=cfg.video, return_info=True)
  builder = tfds.builder(f'ravdess/{cfg.name}', data_dir=tempfile.gettempdir())
  # Every feature the builder writes, so the record is the size of a real one.
  example = {'id': '01-01-01-01-01-01', 'audio': feats['audio'], 'video': feats['video'],
             'audio_length': clip_info['audio_length'], 'label': 0, 'speaker': 1,
             'intensity': 1, 'statement': 1, 'repetition': 1}
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

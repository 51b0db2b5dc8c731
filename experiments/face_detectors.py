"""Haar cascade vs MTCNN on real clips: faces found per frame and time per clip.

  PYTHONPATH=. python experiments/face_detectors.py            # every clip under ../shared/data
  PYTHONPATH=. python experiments/face_detectors.py --clips=a.mp4,b.flv --num_frames=15

For each clip the builder's frames are decoded (`--num_frames` spread
uniformly, as `clip.preprocess_av` samples them), then for each detector:
  found/frame  frames with at least one face among all sampled frames (the
               detector run on every one of them);
  ms/clip      the builder's face stage as it runs per clip: detection on
               `--detect_frames` evenly spread frames plus the steady crops
               (`face.crop_faces`), median of `--repeats` runs after a warm-up;
  cpu ms       the CPU time of the same (all threads; on a busy machine the
               fairer comparison, as wall time then depends on the load);
  box          the median face box (x, y, w, h) in frame pixels, to compare
               where the detectors put the face.
"""

from __future__ import annotations

import glob
import os
import statistics
import time

from absl import app
from absl import flags

flags.DEFINE_string('clips', '', 'Comma-separated video files (default: the real clips '
                    'under --data_dir).')
flags.DEFINE_string('data_dir', '../shared/data', 'Folder of the real dataset samples.')
flags.DEFINE_string('detectors', 'haar,mtcnn', 'Detectors to compare.')
flags.DEFINE_integer('num_frames', 15, 'Frames sampled per clip (the builders: 15).')
flags.DEFINE_integer('detect_frames', 5, 'Frames the builder runs the detector on per clip.')
flags.DEFINE_integer('detect_width', 320, 'Width frames are scaled to for detection.')
flags.DEFINE_integer('size', 112, 'Face crop size.')
flags.DEFINE_integer('repeats', 3, 'Timed runs per clip and detector.')
FLAGS = flags.FLAGS

_PATTERNS = ('ravdess/**/*.mp4', 'ravdess_reencoded/*.mp4', 'crema_d/VideoFlash/*.flv')


def default_clips(data_dir: str) -> list:
  out = []
  for pattern in _PATTERNS:
    out += sorted(glob.glob(os.path.join(data_dir, pattern), recursive=True))
  return out


def measure(frames, detector: str, detect_frames: int, detect_width: int, size: int,
            repeats: int) -> dict:
  """found-per-frame, ms per clip and the median box of one detector on one clip."""
  import numpy as np
  from data_pipelines.features import face
  per_frame = face.detect_faces_batch(list(frames), detector=detector,
                                      detect_width=detect_width)
  hits = [b[0] for b in per_frame if len(b)]
  times, cpu = [], []
  ok = True
  for _ in range(repeats + 1):  # the first run warms up (MTCNN traces its graphs)
    c0 = time.process_time()
    t0 = time.perf_counter()
    try:
      face.crop_faces(frames, size, max_detect_frames=detect_frames, detector=detector,
                      detect_width=detect_width)
    except face.FaceNotFoundError:
      ok = False
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return {'found': len(hits), 'frames': len(frames), 'ms': statistics.median(times[1:]) * 1e3,
          'cpu_ms': statistics.median(cpu[1:]) * 1e3,
          'crop_ok': ok,
          'box': np.median(np.stack(hits), axis=0).round().astype(int).tolist() if hits else None}


def main(argv):
  del argv
  from mer_jax.contract import quiet_libraries
  quiet_libraries()
  from data_pipelines.features import media
  clips = [c for c in FLAGS.clips.split(',') if c] or default_clips(FLAGS.data_dir)
  if not clips:
    raise SystemExit(f'no clips given and none found under {FLAGS.data_dir}')
  detectors = [d for d in FLAGS.detectors.split(',') if d]
  print(f'{FLAGS.num_frames} frames per clip; builder detection on {FLAGS.detect_frames} '
        f'frames at width {FLAGS.detect_width}; crops {FLAGS.size}x{FLAGS.size}; '
        f'os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.1f}')
  header = f'{"clip":44s} {"WxH":>9s}'
  for d in detectors:
    header += f' | {d + " found/frame":>17s} {"ms/clip":>8s} {"cpu ms":>7s} {"box (x,y,w,h)":>20s}'
  print(header)
  print('-' * len(header))
  totals = {d: {'found': 0, 'frames': 0, 'ms': [], 'cpu_ms': []} for d in detectors}
  for path in clips:
    frames, _ = media.decode_video(path, num_frames=FLAGS.num_frames)
    row = f'{os.path.basename(path)[-44:]:44s} {frames.shape[2]:>4d}x{frames.shape[1]:<4d}'
    for d in detectors:
      r = measure(frames, d, FLAGS.detect_frames, FLAGS.detect_width, FLAGS.size,
                  FLAGS.repeats)
      totals[d]['found'] += r['found']
      totals[d]['frames'] += r['frames']
      totals[d]['ms'].append(r['ms'])
      totals[d]['cpu_ms'].append(r['cpu_ms'])
      box = ','.join(map(str, r['box'])) if r['box'] else '-'
      row += (f' | {r["found"]:>8d}/{r["frames"]:<2d} ({r["found"] / r["frames"]:4.0%})'
              f' {r["ms"]:8.0f} {r["cpu_ms"]:7.0f} {box:>20s}')
    print(row)
  print('-' * len(header))
  row = f'{"all " + str(len(clips)) + " clips":44s} {"":9s}'
  for d in detectors:
    t = totals[d]
    row += (f' | {t["found"]:>8d}/{t["frames"]:<2d} ({t["found"] / t["frames"]:4.0%})'
            f' {statistics.median(t["ms"]):8.0f} {statistics.median(t["cpu_ms"]):7.0f}'
            f' {"(medians)":>20s}')
  print(row)


if __name__ == '__main__':
  app.run(main)

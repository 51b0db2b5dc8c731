"""Face detection and steady face crops for video clips.

Two detectors (`detector=`):
- 'haar': OpenCV's frontal-face Haar cascade, shipped inside the
  `opencv-python-headless` wheel (`cv2.data.haarcascades`).
- 'mtcnn': the MTCNN cascade of CNNs (Zhang et al. 2016) that papers 002 and
  003 crop faces with, from the `mtcnn` package (its weights ship in the
  wheel; it runs on the installed TensorFlow). Sampled frames go through it
  as one batch.
Nothing is downloaded at run time. Detection runs on a copy of each sampled
frame downscaled to `detect_width` (fast on 1280x720 video); the largest
face per frame is kept. One box per clip (the median of the per-frame boxes)
or a per-frame box smoothed by a running median keeps the crop steady, so the
face does not jitter between frames; frames without a detection reuse the
clip's box.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import numpy as np


class FaceNotFoundError(ValueError):
  """No face was found in any frame of a clip."""


@functools.lru_cache(maxsize=4)
def _cascade(name: str):
  import cv2
  path = os.path.join(cv2.data.haarcascades, name)
  cascade = cv2.CascadeClassifier(path)
  if cascade.empty():
    raise RuntimeError(f'OpenCV face cascade not found at {path}')
  return cascade


DETECTORS = ('haar', 'mtcnn')


def _downscale(frame: np.ndarray, detect_width: int):
  import cv2
  h, w = frame.shape[:2]
  scale = min(1.0, detect_width / float(w))
  if scale == 1.0:
    return frame, 1.0
  return cv2.resize(frame, (max(int(w * scale), 1), max(int(h * scale), 1)),
                    interpolation=cv2.INTER_AREA), scale


def _largest_first(boxes: np.ndarray) -> np.ndarray:
  if len(boxes) == 0:
    return np.zeros((0, 4), np.float32)
  boxes = np.asarray(boxes, np.float32)
  return boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind='stable')]


def detect_faces(frame: np.ndarray, *, detector: str = 'haar', detect_width: int = 320,
                 min_size_frac: float = 0.1, min_neighbors: int = 5,
                 cascade: str = 'haarcascade_frontalface_default.xml',
                 min_confidence: float = 0.9) -> np.ndarray:
  """Face boxes f32[K, 4] as (x, y, w, h) in `frame` pixels, largest first.

  frame: u8[H, W, 3] RGB or u8[H, W] grey. `detect_width` is the width the
  frame is scaled to before detection; faces smaller than `min_size_frac` of
  the shorter side are ignored (they are background, not the actor).
  `min_neighbors`/`cascade` tune 'haar'; `min_confidence` 'mtcnn'.
  """
  return detect_faces_batch([frame], detector=detector, detect_width=detect_width,
                            min_size_frac=min_size_frac, min_neighbors=min_neighbors,
                            cascade=cascade, min_confidence=min_confidence)[0]


def detect_faces_batch(frames, *, detector: str = 'haar', detect_width: int = 320,
                       min_size_frac: float = 0.1, min_neighbors: int = 5,
                       cascade: str = 'haarcascade_frontalface_default.xml',
                       min_confidence: float = 0.9) -> list:
  """`detect_faces` for several frames: a list of f32[K, 4] boxes, one per frame."""
  if detector == 'haar':
    return [_detect_haar(f, detect_width, min_size_frac, min_neighbors, cascade)
            for f in frames]
  if detector == 'mtcnn':
    return _detect_mtcnn(frames, detect_width, min_size_frac, min_confidence)
  raise ValueError(f'unknown face detector {detector!r}; use one of {DETECTORS}')


def _detect_haar(frame, detect_width, min_size_frac, min_neighbors, cascade):
  import cv2
  grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
  small, scale = _downscale(grey, detect_width)
  small = cv2.equalizeHist(small)
  min_side = max(int(min(small.shape) * min_size_frac), 12)
  boxes = _cascade(cascade).detectMultiScale(
      small, scaleFactor=1.1, minNeighbors=min_neighbors, minSize=(min_side, min_side))
  if len(boxes) == 0:
    return np.zeros((0, 4), np.float32)
  return _largest_first(np.asarray(boxes, np.float32) / scale)


@functools.lru_cache(maxsize=1)
def _mtcnn():
  """One MTCNN per process (building its three networks takes about a second)."""
  try:
    from mtcnn import MTCNN
  except ImportError:
    raise ImportError("face detector 'mtcnn' needs the mtcnn package "
                      '(pip install -r requirements.txt)') from None
  return MTCNN(stages='face_and_landmarks_detection', device='CPU:0')


def _detect_mtcnn(frames, detect_width, min_size_frac, min_confidence):
  small, scales = [], []
  for f in frames:
    if f.ndim == 2:
      f = np.repeat(f[..., None], 3, axis=-1)
    h, w = f.shape[:2]
    # MTCNN's smallest face is 12 px at its top pyramid level; mtcnn 1.0.0
    # miscounts the pyramid for a larger min_face_size (levels under 12 px
    # crash its PNet), so the frame is scaled to make the smallest wanted face
    # 12 px instead (never wider than detect_width).
    width = detect_width
    if min_size_frac > 0:
      width = min(width, int(round(w * 12.0 / (min_size_frac * min(h, w)))))
    f, scale = _downscale(np.ascontiguousarray(f), max(width, 24))
    small.append(f)
    scales.append(scale)
  if not small:
    return []
  # Frames of one clip share a shape, so they go through the networks as one batch.
  same = all(f.shape == small[0].shape for f in small)
  groups = [small] if same else [[f] for f in small]
  found = []
  for group in groups:
    res = _mtcnn().detect_faces(group, min_face_size=12, box_format='xywh')
    # A one-frame batch comes back as the frame's own list of faces.
    found += [res] if len(group) == 1 and (not res or isinstance(res[0], dict)) else res
  out = []
  for faces, scale, f in zip(found, scales, frames):
    min_side = min_size_frac * min(f.shape[:2])
    boxes = [d['box'] for d in faces if d.get('confidence', 0.0) >= min_confidence
             and min(d['box'][2], d['box'][3]) / scale >= min_side]
    out.append(_largest_first(np.asarray(boxes, np.float32).reshape(-1, 4) / scale))
  return out


def _running_median(boxes: np.ndarray, width: int) -> np.ndarray:
  half = width // 2
  out = np.empty_like(boxes)
  for i in range(len(boxes)):
    out[i] = np.median(boxes[max(0, i - half):i + half + 1], axis=0)
  return out


def steady_boxes(frames: np.ndarray, *, mode: str = 'median', smooth_width: int = 5,
                 min_detected_frac: float = 0.0, max_detect_frames: int = 0,
                 **detect_kwargs) -> np.ndarray:
  """One (x, y, w, h) box per frame, f32[T, 4], kept steady across the clip.

  mode 'median': the same box for every frame (median of detections);
  'smooth': per-frame detections (gaps filled by the median) smoothed by a
  running median of `smooth_width` frames, for clips where the head moves.
  `max_detect_frames` (> 0, 'median' mode) runs the detector on that many
  evenly spread frames only. Raises FaceNotFoundError when fewer than
  max(1, min_detected_frac * frames looked at) contain a face.
  """
  # One box per clip needs only a few looks at the face: detecting on
  # `max_detect_frames` evenly spread frames saves most of the detector's time.
  if mode == 'median' and max_detect_frames and len(frames) > max_detect_frames:
    looked = np.unique(np.linspace(0, len(frames) - 1, max_detect_frames).round().astype(int))
  else:
    looked = np.arange(len(frames))
  found = [None] * len(frames)
  for i, boxes in zip(looked, detect_faces_batch([frames[i] for i in looked], **detect_kwargs)):
    found[i] = boxes[0] if len(boxes) else None
  hits = [b for b in found if b is not None]
  needed = max(1, int(np.ceil(min_detected_frac * len(looked))))
  if len(hits) < needed:
    raise FaceNotFoundError(f'face found in {len(hits)} of {len(looked)} frames '
                            f'(need {needed})')
  median = np.median(np.stack(hits), axis=0)
  if mode == 'median':
    return np.tile(median[None], (len(frames), 1)).astype(np.float32)
  if mode == 'smooth':
    filled = np.stack([b if b is not None else median for b in found])
    return _running_median(filled, smooth_width).astype(np.float32)
  raise ValueError(f'unknown face box mode {mode!r}')


def crop_square(frame: np.ndarray, box, margin: float, size: int) -> np.ndarray:
  """Square crop around `box` (+`margin` of its size on each side) -> u8[size, size, 3].

  Parts of the square outside the frame are filled by edge replication so
  that faces at the border keep their aspect ratio.
  """
  import cv2
  x, y, w, h = [float(v) for v in box]
  side = max(w, h) * (1.0 + 2.0 * margin)
  cx, cy = x + w / 2.0, y + h / 2.0
  x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
  s = max(int(round(side)), 1)
  fh, fw = frame.shape[:2]
  pad = max(0, -x0, -y0, x0 + s - fw, y0 + s - fh)
  if pad:
    frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    x0, y0 = x0 + pad, y0 + pad
  crop = frame[y0:y0 + s, x0:x0 + s]
  if crop.ndim == 2:
    crop = np.stack([crop] * 3, axis=-1)
  interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
  return cv2.resize(crop, (size, size), interpolation=interp).astype(np.uint8)


def crop_faces(frames: np.ndarray, size: int, *, margin: float = 0.2, mode: str = 'median',
               region: Optional[str] = None, **kwargs) -> np.ndarray:
  """u8[T, H, W, 3] frames -> u8[T, size, size, 3] steady face crops.

  region: None (whole frame), 'left' or 'right' (that half only; for
  recordings such as IEMOCAP that show two speakers side by side).
  Raises FaceNotFoundError when no face is found.
  """
  frames = np.asarray(frames)
  if frames.ndim == 3:  # grey [T, H, W]
    frames = np.repeat(frames[..., None], 3, axis=-1)
  frames = half_frame(frames, region)
  boxes = steady_boxes(frames, mode=mode, **kwargs)
  return np.stack([crop_square(f, b, margin, size) for f, b in zip(frames, boxes)])


def half_frame(frames: np.ndarray, region: Optional[str]) -> np.ndarray:
  """The left or right half of [T, H, W, C] frames (None: unchanged)."""
  if region is None:
    return frames
  w = frames.shape[2]
  if region == 'left':
    return frames[:, :, :w // 2]
  if region == 'right':
    return frames[:, :, w // 2:]
  raise ValueError(f'unknown frame region {region!r}; use None, "left" or "right"')

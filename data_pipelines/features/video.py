"""Frame sampling and resizing shared by every dataset builder."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class VideoFeatureConfig:
  """How a decoded clip becomes u8[num_frames, size, size, 3]."""
  num_frames: int = 15
  size: int = 224
  face_crop: bool = True  # real datasets: detect and crop the face
  face_margin: float = 0.2  # fraction of the box added on each side
  # Steadiness of the crop: 'median' (one box per clip) or 'smooth' (running
  # median of per-frame boxes); see features/face.py.
  face_mode: str = 'median'
  face_detect_width: int = 320  # frames are scaled to this width for detection
  face_min_size_frac: float = 0.1  # ignore faces smaller than this of the short side
  # Clips with faces in fewer than this fraction of sampled frames are rejected
  # (at least one frame must always show a face).
  face_min_detected_frac: float = 0.0
  # 'median' mode: run the detector on this many evenly spread frames (0: all).
  face_detect_frames: int = 5
  # 'haar' (OpenCV cascade) or 'mtcnn' (papers 002/003); see features/face.py.
  face_detector: str = 'haar'


def sample_frame_indices(num_available: int, num_frames: int) -> np.ndarray:
  """Indices of `num_frames` frames spread uniformly over a clip.

  Takes the centre of each of `num_frames` equal segments; repeats frames when
  the clip is shorter than `num_frames`.
  """
  if num_available <= 0:
    raise ValueError('clip has no frames')
  edges = np.linspace(0, num_available, num_frames + 1)
  centres = (edges[:-1] + edges[1:]) / 2
  return np.clip(np.floor(centres).astype(np.int64), 0, num_available - 1)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
  """u8/f32[T, H, W, C] -> u8[T, size, size, 3] (grey frames become RGB)."""
  import cv2
  out = []
  for frame in frames:
    if frame.ndim == 2:
      frame = np.stack([frame] * 3, axis=-1)
    elif frame.shape[-1] == 1:
      frame = np.repeat(frame, 3, axis=-1)
    interp = cv2.INTER_AREA if frame.shape[0] > size else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (size, size), interpolation=interp)
    out.append(np.clip(resized, 0, 255).astype(np.uint8))
  return np.stack(out, axis=0)

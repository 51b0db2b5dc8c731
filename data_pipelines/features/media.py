"""Decoding of the media files the emotion datasets ship.

`decode_audio` reads wav (PCM/float, mono or multi-channel, with extra RIFF
chunks such as RAVDESS's `FLLR`), mp3, and the audio track of mp4/flv/avi.
`decode_video` reads mp4/avi/flv video (H.264, MPEG-4, VP6, DivX, ...) as RGB
uint8 frames. Both use PyAV, which bundles its own FFmpeg libraries, so no
system FFmpeg is needed; wavs go through soundfile first (exact samples) and
videos fall back to OpenCV when PyAV cannot open a file.

Every failure raises a `MediaError` whose message names the file, so dataset
builders can skip the file and record why.
"""

from __future__ import annotations

import os
import struct
from typing import Optional, Sequence

import numpy as np

# A clip whose decoded frame count falls this far below the count its header
# declares is treated as truncated.
_MIN_DECODED_FRACTION = 0.9


class MediaError(ValueError):
  """A media file that cannot be used; the message names the file and why."""

  def __init__(self, path, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f'{self.path}: {reason}')


class CorruptMediaError(MediaError):
  """Unreadable, truncated or empty media."""


class MissingStreamError(MediaError):
  """The container has no stream of the requested kind (e.g. video without audio)."""


def _check_exists(path):
  if not os.path.isfile(path):
    raise MediaError(path, 'file not found')
  if os.path.getsize(path) == 0:
    raise CorruptMediaError(path, 'file is empty (0 bytes)')


# ----------------------------------------------------------------------------
# Audio


def _wav_data_chunk(path) -> Optional[tuple[int, int]]:
  """(declared data size, bytes actually present) of a RIFF/WAVE file, or None.

  Walks the chunk list (skipping `LIST`, `FLLR`, ... chunks) to find `data`;
  lets us tell a truncated wav from a short one.
  """
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b'RIFF', b'RF64') or head[8:12] != b'WAVE':
      return None
    pos = 12
    while pos + 8 <= size:
      f.seek(pos)
      cid, csize = struct.unpack('<4sI', f.read(8))
      if cid == b'data':
        return csize, size - pos - 8
      pos += 8 + csize + (csize & 1)
  return (0, 0) if head[:4] == b'RIFF' else None


def _declared_seconds(container, stream) -> Optional[float]:
  """Duration the file's headers declare for `stream` (container's as fallback)."""
  if stream.duration and stream.time_base:
    return float(stream.duration * stream.time_base)
  if container.duration:
    return container.duration / 1e6
  return None


def _decode_wav(path, start_s, end_s):
  import soundfile as sf
  chunk = _wav_data_chunk(path)
  if chunk is not None:
    declared, present = chunk
    if declared == 0 and present == 0:
      raise CorruptMediaError(path, 'wav has no data chunk')
    # 0xFFFFFFFF is the "unknown size" of a streamed wav, not a truncation.
    if declared not in (0, 0xFFFFFFFF) and present < declared:
      raise CorruptMediaError(
          path, f'wav truncated: data chunk declares {declared} bytes, {present} present')
  try:
    info = sf.info(path)
    start = int(round(start_s * info.samplerate)) if start_s else 0
    stop = int(round(end_s * info.samplerate)) if end_s is not None else None
    wave, sr = sf.read(path, start=start, stop=stop, dtype='float32', always_2d=True)
  except (RuntimeError, sf.LibsndfileError) as e:
    raise CorruptMediaError(path, f'unreadable wav ({e})') from None
  return wave, sr


def _decode_audio_av(path, start_s, end_s):
  import av
  try:
    container = av.open(str(path))
  except (av.error.FFmpegError, OSError) as e:
    raise CorruptMediaError(path, f'cannot open ({e})') from None
  with container:
    if not container.streams.audio:
      raise MissingStreamError(path, 'no audio stream')
    stream = container.streams.audio[0]
    sr = stream.codec_context.sample_rate or stream.rate
    declared_s = _declared_seconds(container, stream)
    chunks = []
    try:
      if start_s:
        container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
      for frame in container.decode(stream):
        arr = frame.to_ndarray()
        if frame.format.is_planar:  # [C, n]
          arr = arr.T
        else:  # packed: [1, n * C]
          arr = arr.reshape(-1, len(frame.layout.channels))
        t0 = float(frame.pts * frame.time_base) if frame.pts is not None else None
        chunks.append((t0, arr.astype(np.float32)))
        if end_s is not None and t0 is not None and t0 > end_s:
          break
    except av.error.FFmpegError as e:
      if not chunks:
        raise CorruptMediaError(path, f'audio decoding failed ({e})') from None
  if not chunks:
    raise CorruptMediaError(path, 'no audio samples decoded')
  if not start_s and end_s is None and declared_s:
    got = sum(len(c) for _, c in chunks) / float(sr)
    if got < _MIN_DECODED_FRACTION * declared_s:
      raise CorruptMediaError(
          path, f'audio truncated: {got:.2f} s of {declared_s:.2f} s declared decoded')
  if start_s or end_s is not None:
    # Place chunks on the timeline by their timestamps, then cut the span.
    t_first = chunks[0][0] if chunks[0][0] is not None else 0.0
    wave = np.concatenate([c for _, c in chunks], axis=0)
    lo = max(int(round(((start_s or 0.0) - t_first) * sr)), 0)
    hi = None if end_s is None else max(int(round((end_s - t_first) * sr)), lo)
    wave = wave[lo:hi]
  else:
    wave = np.concatenate([c for _, c in chunks], axis=0)
  if np.issubdtype(wave.dtype, np.integer):
    wave = wave / float(np.iinfo(wave.dtype).max)
  return wave.astype(np.float32), int(sr)


def decode_audio(path, target_sr: Optional[int] = None, *, start_s: Optional[float] = None,
                 end_s: Optional[float] = None, mono: bool = False):
  """Reads an audio file (or a video's audio track).

  Returns (f32 wave [N] for mono or [N, C] for multi-channel, sample rate).
  `target_sr` resamples; `start_s`/`end_s` cut a time span; `mono` averages
  channels. Raises MediaError (naming the file) when it cannot be used.
  """
  from data_pipelines.features import audio as audio_features
  path = os.fspath(path)
  _check_exists(path)
  wave = None
  if path.lower().endswith(('.wav', '.wave', '.flac')):
    try:
      wave, sr = _decode_wav(path, start_s, end_s)
    except ImportError:
      wave = None
  if wave is None:
    wave, sr = _decode_audio_av(path, start_s, end_s)
  if wave.size == 0:
    raise CorruptMediaError(path, 'no audio samples in the requested span')
  if not np.all(np.isfinite(wave)):
    raise CorruptMediaError(path, 'audio contains NaN or infinite samples')
  if wave.ndim == 2 and (wave.shape[1] == 1 or mono):
    wave = wave.mean(axis=1)
  if target_sr and target_sr != sr:
    if wave.ndim == 1:
      wave = audio_features.resample(wave, sr, target_sr)
    else:
      wave = np.stack([audio_features.resample(wave[:, c], sr, target_sr)
                       for c in range(wave.shape[1])], axis=1)
    sr = target_sr
  return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


# ----------------------------------------------------------------------------
# Video


def _select(n: int, num_frames: Optional[int]) -> Sequence[int]:
  from data_pipelines.features import video as video_features
  if num_frames is None:
    return range(n)
  return video_features.sample_frame_indices(n, num_frames)


def _decode_sampled_av(path, num_frames):
  """The `num_frames` sampled frames of a whole clip, decoding little else.

  Frames are spread over the clip's packets (one per frame). Reference
  frames are always decoded (others depend on them); non-reference frames
  (most B-frames) only when sampled, which halves the work on H.264. Returns
  None when the file does not allow it (missing or repeated timestamps, a
  sampled frame that did not decode); the caller then decodes every frame.
  """
  import av
  try:
    container = av.open(str(path))
  except (av.error.FFmpegError, OSError):
    return None
  with container:
    if not container.streams.video:
      return None
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    declared = stream.frames or 0
    try:
      packets = [p for p in container.demux(stream) if p.size > 0 and not p.is_discard]
      pts = sorted(p.pts for p in packets if p.pts is not None)
      if not pts or len(pts) != len(packets) or len(set(pts)) != len(pts):
        return None
      if declared and len(pts) < _MIN_DECODED_FRACTION * declared:
        raise CorruptMediaError(
            path, f'video truncated: {len(pts)} of {declared} declared frames present')
      declared_s = _declared_seconds(container, stream)
      if not declared and declared_s and fps and stream.time_base:
        # No frame count in the header (e.g. FLV): compare covered time instead.
        got_s = float((pts[-1] - pts[0]) * stream.time_base) + 1.0 / fps
        if got_s < _MIN_DECODED_FRACTION * declared_s:
          raise CorruptMediaError(
              path, f'video truncated: {got_s:.2f} s of {declared_s:.2f} s declared present')
      wanted = [pts[i] for i in _select(len(pts), num_frames)]
      want = set(wanted)
      ctx = stream.codec_context
      got = {}
      for packet in packets:
        ctx.skip_frame = 'DEFAULT' if packet.pts in want else 'NONREF'
        for frame in ctx.decode(packet):
          if frame.pts in want:
            got[frame.pts] = frame
      ctx.skip_frame = 'DEFAULT'
      for frame in ctx.decode(None):
        if frame.pts in want:
          got[frame.pts] = frame
    except av.error.FFmpegError:
      return None
    if not want.issubset(got):
      return None
    return np.stack([got[t].to_ndarray(format='rgb24') for t in wanted]), fps


def _decode_video_av(path, start_s, end_s, num_frames):
  import av
  if num_frames is not None and not start_s and end_s is None:
    sampled = _decode_sampled_av(path, num_frames)
    if sampled is not None:
      return sampled
  try:
    container = av.open(str(path))
  except (av.error.FFmpegError, OSError) as e:
    raise CorruptMediaError(path, f'cannot open ({e})') from None
  with container:
    if not container.streams.video:
      raise MissingStreamError(path, 'no video stream')
    stream = container.streams.video[0]
    stream.thread_type = 'AUTO'
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    declared = stream.frames or 0
    declared_s = _declared_seconds(container, stream)
    frames = []  # av.VideoFrame, converted to RGB only when selected
    error = None
    try:
      if start_s:
        container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
      for frame in container.decode(stream):
        t = float(frame.pts * frame.time_base) if frame.pts is not None else None
        if t is not None and start_s and t + 1e-6 < start_s:
          continue
        if t is not None and end_s is not None and t >= end_s:
          break
        frames.append(frame)
    except av.error.FFmpegError as e:
      error = e
  whole = not start_s and end_s is None
  if not frames:
    raise CorruptMediaError(path, f'no video frames decoded{f" ({error})" if error else ""}')
  if whole and declared and len(frames) < _MIN_DECODED_FRACTION * declared:
    raise CorruptMediaError(
        path, f'video truncated: {len(frames)} of {declared} declared frames decoded')
  if whole and not declared and declared_s and fps and frames[-1].pts is not None:
    # No frame count in the header (e.g. FLV): compare covered time instead.
    got = float(frames[-1].pts * frames[-1].time_base) + 1.0 / fps
    if frames[0].pts is not None:
      got -= float(frames[0].pts * frames[0].time_base)
    if got < _MIN_DECODED_FRACTION * declared_s:
      raise CorruptMediaError(
          path, f'video truncated: {got:.2f} s of {declared_s:.2f} s declared decoded')
  if error is not None and whole and not declared:
    raise CorruptMediaError(path, f'video decoding failed after {len(frames)} frames ({error})')
  out = np.stack([frames[i].to_ndarray(format='rgb24') for i in _select(len(frames), num_frames)])
  return out, fps


def _decode_video_cv2(path, start_s, end_s, num_frames):
  import cv2
  cap = cv2.VideoCapture(str(path))
  if not cap.isOpened():
    raise CorruptMediaError(path, 'neither PyAV nor OpenCV can open it')
  fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
  frames = []
  idx = 0
  while True:
    ok, bgr = cap.read()
    if not ok:
      break
    t = idx / fps if fps else None
    idx += 1
    if t is not None and start_s and t < start_s:
      continue
    if t is not None and end_s is not None and t >= end_s:
      break
    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
  cap.release()
  if not frames:
    raise CorruptMediaError(path, 'no video frames decoded')
  return np.stack([frames[i] for i in _select(len(frames), num_frames)]), fps


def decode_video(path, *, start_s: Optional[float] = None, end_s: Optional[float] = None,
                 num_frames: Optional[int] = None):
  """Reads a video file's frames.

  Returns (u8 frames [T, H, W, 3] RGB, frames per second). `start_s`/`end_s`
  cut a time span; `num_frames` keeps that many frames spread uniformly over
  the (cut) clip, converting only those to RGB (much faster on HD video).
  Raises MediaError (naming the file) when the file cannot be used.
  """
  path = os.fspath(path)
  _check_exists(path)
  try:
    return _decode_video_av(path, start_s, end_s, num_frames)
  except CorruptMediaError as e:
    if not str(e.reason).startswith('cannot open'):
      raise
    primary = e
  except ImportError:
    primary = None
  try:
    return _decode_video_cv2(path, start_s, end_s, num_frames)
  except CorruptMediaError:
    if primary is not None:
      raise primary from None
    raise


def probe(path) -> dict:
  """Stream summary of a media file: duration, fps, frame count, audio rate/channels."""
  import av
  path = os.fspath(path)
  _check_exists(path)
  try:
    container = av.open(path)
  except (av.error.FFmpegError, OSError) as e:
    raise CorruptMediaError(path, f'cannot open ({e})') from None
  with container:
    info = {'duration_s': (container.duration / 1e6) if container.duration else None}
    if container.streams.video:
      vs = container.streams.video[0]
      rate = vs.average_rate or vs.guessed_rate
      info.update(fps=float(rate) if rate else None, num_frames=vs.frames or None,
                  width=vs.codec_context.width, height=vs.codec_context.height,
                  video_codec=vs.codec_context.name)
    if container.streams.audio:
      aus = container.streams.audio[0]
      info.update(sample_rate=aus.codec_context.sample_rate,
                  channels=len(aus.codec_context.layout.channels),
                  audio_codec=aus.codec_context.name)
  return info

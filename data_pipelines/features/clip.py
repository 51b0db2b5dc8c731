"""One clip (video and/or audio file, optionally a time span) -> model inputs.

`preprocess_av` is the single entry point used by the dataset builders and by
inference on new videos, so that a model sees at inference exactly the
preprocessing it was trained on:

  audio: decode (wav/mp3/the video's own track) -> reject silence -> resample,
         trim, pre-emphasis, normalise, crop/pad -> MFCC/log-mel  (features/audio.py)
  video: decode -> N frames sampled uniformly -> steady face crop (features/face.py)
         or plain resize -> u8[N, S, S, 3]                        (features/video.py)

True lengths (`return_info`): 'audio_length' counts the leading feature frames
that carry real audio; the rest is padding of a short clip. Video is never
padded here: a clip with fewer than N frames repeats frames at the N uniform
sample times, and a frame in which the detector misses the face is cropped
with the clip's steady box (the face rarely leaves a frontal shot; the
detector misses blurred or turned faces), so all N frames are real. Only a
clip without any detected face fails (NoFaceError), for the builder to mask.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from data_pipelines.features import audio as audio_features
from data_pipelines.features import face as face_lib
from data_pipelines.features import media
from data_pipelines.features import video as video_features


class SilentAudioError(media.MediaError):
  """Audio without usable signal (all zeros or below the silence threshold)."""


class NoFaceError(media.MediaError):
  """No face detected in a clip that needs face crops."""


def preprocess_audio(wave: np.ndarray, sr: int, cfg: audio_features.AudioFeatureConfig,
                     path: str = '<array>', silence_rms: float = 1e-4, *,
                     return_length: bool = False):
  """Decoded wave -> f32[T, F] (and its true length with `return_length`);
  raises SilentAudioError on a silent wave."""
  mono = audio_features.to_mono(wave)
  if audio_features.is_silent(mono, silence_rms):
    raise SilentAudioError(path, f'audio is silent (RMS < {silence_rms:g})')
  return audio_features.extract_audio_features(mono, sr, cfg, return_length=return_length)


def preprocess_frames(frames: np.ndarray, cfg: video_features.VideoFeatureConfig,
                      path: str = '<array>', region: Optional[str] = None) -> np.ndarray:
  """Decoded frames u8[T, H, W, 3] -> u8[cfg.num_frames, S, S, 3].

  Samples cfg.num_frames frames uniformly (if more are given), then crops the
  face (cfg.face_crop) or resizes the whole frame.
  """
  if len(frames) != cfg.num_frames:
    frames = frames[video_features.sample_frame_indices(len(frames), cfg.num_frames)]
  if not cfg.face_crop:
    return video_features.resize_frames(face_lib.half_frame(frames, region), cfg.size)
  try:
    return face_lib.crop_faces(
        frames, cfg.size, margin=cfg.face_margin, mode=cfg.face_mode, region=region,
        detect_width=cfg.face_detect_width, min_size_frac=cfg.face_min_size_frac,
        min_detected_frac=cfg.face_min_detected_frac,
        max_detect_frames=getattr(cfg, 'face_detect_frames', 0),
        detector=getattr(cfg, 'face_detector', 'haar'))
  except face_lib.FaceNotFoundError as e:
    raise NoFaceError(path, f'no face detected: {e}') from None


def preprocess_av(video_path=None, audio_path=None,
                  audio_cfg: Optional[audio_features.AudioFeatureConfig] = None,
                  video_cfg: Optional[video_features.VideoFeatureConfig] = None,
                  start_s: Optional[float] = None, end_s: Optional[float] = None, *,
                  region: Optional[str] = None, return_info: bool = False,
                  wave_augment=None):
  """Decodes and preprocesses one clip.

  video_path: a video file (mp4/avi/flv); its frames feed 'video' when
    `video_cfg` is given, and its audio track feeds 'audio' when `audio_cfg`
    is given and no `audio_path` is.
  audio_path: a separate audio file (wav/mp3), used for 'audio'.
  start_s, end_s: keep only this time span (seconds) of both streams.
  region: None, 'left' or 'right' half of the frame to look for the face in.
  wave_augment: (audio.WaveAugmentConfig, seed) augments the decoded waveform
    (at the feature sample rate) before feature extraction; None for none.

  Returns {'audio': f32[T, F]} and/or {'video': u8[T, S, S, 3]} (plus an info
  dict with durations, fps and 'audio_length' when `return_info`). Raises media.MediaError
  subclasses naming the file: CorruptMediaError, MissingStreamError,
  SilentAudioError, NoFaceError.
  """
  if audio_cfg is None and video_cfg is None:
    raise ValueError('preprocess_av needs audio_cfg and/or video_cfg')
  out, info = {}, {}
  if audio_cfg is not None:
    src = audio_path or video_path
    if src is None:
      raise ValueError('audio_cfg given but neither audio_path nor video_path')
    wave, sr = media.decode_audio(src, start_s=start_s, end_s=end_s)
    info['audio_duration_s'] = wave.shape[0] / float(sr)
    info['audio_sample_rate'] = sr
    info['audio_channels'] = 1 if wave.ndim == 1 else wave.shape[1]
    if wave_augment is not None:
      aug_cfg, seed = wave_augment
      wave = audio_features.resample(audio_features.to_mono(wave), sr, audio_cfg.sample_rate)
      sr = audio_cfg.sample_rate
      if not audio_features.is_silent(wave):  # a silent wave is rejected below
        wave = audio_features.augment_wave(wave, sr, aug_cfg, seed)
    out['audio'], info['audio_length'] = preprocess_audio(wave, sr, audio_cfg, str(src),
                                                          return_length=True)
  if video_cfg is not None:
    if video_path is None:
      raise ValueError('video_cfg given but no video_path')
    # Decoding only the sampled frames keeps HD clips fast.
    frames, fps = media.decode_video(video_path, start_s=start_s, end_s=end_s,
                                     num_frames=video_cfg.num_frames)
    info['fps'] = fps
    info['frame_shape'] = tuple(frames.shape[1:])
    out['video'] = preprocess_frames(frames, video_cfg, str(video_path), region)
  return (out, info) if return_info else out

"""Audio feature extraction shared by every dataset builder.

Every builder (synthetic or real) turns a waveform into model input through
`extract_audio_features`, so the synthetic dataset exercises exactly the code
the real datasets use.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class AudioFeatureConfig:
  """How a waveform becomes a [T, F] float32 feature matrix.

  kind: 'mfcc' (with optional deltas), 'logmel', or 'waveform' ([T, 1]).
  num_frames: crop/pad the feature sequence to this length (None keeps it).
  """
  sample_rate: int = 16000
  duration_s: Optional[float] = None  # crop/pad the waveform to this length
  pre_emphasis: float = 0.0  # 0 disables; 0.97 is the usual value
  trim_silence_db: Optional[float] = None  # librosa.effects.trim top_db
  normalize: bool = True  # peak amplitude normalisation
  kind: str = 'mfcc'
  n_mfcc: int = 13
  n_mels: int = 40
  n_fft: int = 512
  win_length: Optional[int] = None
  hop_length: int = 256
  window: str = 'hann'
  deltas: int = 0  # 0: none, 1: +delta, 2: +delta+delta-delta
  num_frames: Optional[int] = None
  fmax: Optional[float] = None

  @property
  def feature_dim(self) -> int:
    if self.kind == 'waveform':
      return 1
    base = self.n_mfcc if self.kind == 'mfcc' else self.n_mels
    return base * (1 + self.deltas)


def to_mono(wave: np.ndarray) -> np.ndarray:
  """[N] or [N, C] / [C, N] -> [N] float32 mean over channels."""
  wave = np.asarray(wave, dtype=np.float32)
  if wave.ndim == 1:
    return wave
  if wave.ndim != 2:
    raise ValueError(f'audio must be 1-D or 2-D, got shape {wave.shape}')
  # Channels are the short axis.
  axis = 0 if wave.shape[0] < wave.shape[1] else 1
  return wave.mean(axis=axis)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
  if orig_sr == target_sr:
    return wave.astype(np.float32)
  import librosa
  return librosa.resample(wave.astype(np.float32), orig_sr=orig_sr,
                          target_sr=target_sr).astype(np.float32)


def pre_emphasize(wave: np.ndarray, coef: float) -> np.ndarray:
  if coef <= 0:
    return wave
  return np.append(wave[:1], wave[1:] - coef * wave[:-1]).astype(np.float32)


def trim_silence(wave: np.ndarray, top_db: float) -> np.ndarray:
  import librosa
  trimmed, _ = librosa.effects.trim(wave, top_db=top_db)
  return trimmed if trimmed.size else wave


def normalize_amplitude(wave: np.ndarray) -> np.ndarray:
  peak = float(np.max(np.abs(wave))) if wave.size else 0.0
  if peak <= 0:
    return wave
  return (wave / peak).astype(np.float32)


def crop_or_pad(x: np.ndarray, length: int, axis: int = 0) -> np.ndarray:
  """Centre-crops or zero-pads (at the end) `x` along `axis` to `length`."""
  n = x.shape[axis]
  if n == length:
    return x
  if n > length:
    start = (n - length) // 2
    return np.take(x, np.arange(start, start + length), axis=axis)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - n)
  return np.pad(x, pad)


def kept_after_crop_or_pad(num_real: int, num: int, length: int) -> int:
  """Real entries left when `crop_or_pad` maps `num` entries, of which the first
  `num_real` are real, to `length` (the real ones stay a prefix)."""
  start = (num - length) // 2 if num > length else 0
  return int(min(max(num_real - start, 0), length))


def is_silent(wave: np.ndarray, threshold: float = 1e-4) -> bool:
  """True when the waveform carries no usable signal (RMS below threshold)."""
  return wave.size == 0 or float(np.sqrt(np.mean(np.square(wave)))) < threshold


def extract_audio_features(wave: np.ndarray, sr: int, cfg: AudioFeatureConfig, *,
                           return_length: bool = False):
  """Raw waveform (any rate, mono or multi-channel) -> f32[T, F].

  With `return_length`, returns (features, length): the number of leading
  frames that carry real audio, the rest being padding (zeros padded onto a
  short wave by `duration_s`, or feature rows padded by `num_frames`). A
  frame is real when its centre lies in the real samples.
  """
  import librosa
  wave = resample(to_mono(wave), sr, cfg.sample_rate)
  if cfg.trim_silence_db is not None:
    wave = trim_silence(wave, cfg.trim_silence_db)
  wave = pre_emphasize(wave, cfg.pre_emphasis)
  if cfg.normalize:
    wave = normalize_amplitude(wave)
  num_real = len(wave)
  if cfg.duration_s is not None:
    target = int(round(cfg.duration_s * cfg.sample_rate))
    num_real = kept_after_crop_or_pad(num_real, len(wave), target)
    wave = crop_or_pad(wave, target)
  padded = num_real < len(wave)
  if cfg.kind == 'waveform':
    feats = wave[:, None]
  else:
    mel_kwargs = dict(sr=cfg.sample_rate, n_fft=cfg.n_fft,
                      hop_length=cfg.hop_length, win_length=cfg.win_length,
                      window=cfg.window, n_mels=cfg.n_mels, fmax=cfg.fmax)
    mel = librosa.feature.melspectrogram(y=wave, **mel_kwargs)
    logmel = librosa.power_to_db(mel, ref=1.0, top_db=80.0)
    if cfg.kind == 'logmel':
      base = logmel
    elif cfg.kind == 'mfcc':
      base = librosa.feature.mfcc(S=logmel, n_mfcc=cfg.n_mfcc)
    else:
      raise ValueError(f'unknown audio feature kind {cfg.kind!r}')
    parts = [base]
    if cfg.deltas >= 1:
      width = min(9, base.shape[1] - (1 - base.shape[1] % 2))
      width = max(width, 3)
      if base.shape[1] >= 3:
        parts.append(librosa.feature.delta(base, order=1, width=width, mode='nearest'))
        if cfg.deltas >= 2:
          parts.append(librosa.feature.delta(base, order=2, width=width, mode='nearest'))
      else:
        parts.extend([np.zeros_like(base)] * cfg.deltas)
    feats = np.concatenate(parts, axis=0).T  # [T, F]
  # librosa centres frame i on sample i * hop.
  if cfg.kind == 'waveform':
    length = num_real
  else:
    length = min(-(-num_real // cfg.hop_length), len(feats)) if padded else len(feats)
  if cfg.num_frames is not None:
    length = kept_after_crop_or_pad(length, len(feats), cfg.num_frames)
    feats = crop_or_pad(feats, cfg.num_frames, axis=0)
  feats = np.ascontiguousarray(feats, dtype=np.float32)
  return (feats, length) if return_length else feats

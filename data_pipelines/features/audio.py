"""Audio feature extraction shared by every dataset builder.

Every builder (synthetic or real) turns a waveform into model input through
`extract_audio_features`, so the synthetic dataset exercises exactly the code
the real datasets use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
from typing import Optional

import numpy as np

# librosa's kernels (pYIN's among them) are numba-compiled with cache=True. numba writes
# a gufunc's cache index and code files without atomicity between them, so processes
# compiling into one folder at once can leave a pair that segfaults whenever it is loaded
# (numba issue 10128; new signatures compile on any call, not only the first). So each
# process compiles into a private folder, started from a shared seed that one process
# publishes whole (`numba_first_use`). A NUMBA_CACHE_DIR set by the user is used as is
# (shared, first uses under a lock). Must run before numba is first imported.
_SHARED_NUMBA_CACHE = os.path.join(os.path.expanduser('~'), '.cache', 'numba')
_PRIVATE_OWNER = 'MER_JAX_NUMBA_CACHE_OWNER'  # pid of the process the private folder is for


def _installation_key() -> str:
  """Names the installed librosa and numba (paths, versions' files, mtimes) without
  importing them. numba's cache entries hold the source folder's path and the source
  file's mtime, so a seed from another install (a fresh clone's venv, a reinstall)
  misses every entry and each process would compile again."""
  import hashlib
  import importlib.util
  import sys
  parts = [sys.version]
  for name in ('librosa', 'numba'):
    try:
      origin = importlib.util.find_spec(name).origin
      parts += [origin, str(os.stat(origin).st_mtime_ns)]
    except (ImportError, AttributeError, TypeError, OSError, ValueError):
      parts.append(f'{name}?')
  return hashlib.sha1('\n'.join(parts).encode()).hexdigest()[:16]


def _seed_dir() -> str:
  """The shared seed for this installation."""
  return os.path.join(_SHARED_NUMBA_CACHE, f'seed-{_SEED_KEY}')


_SEED_KEY = _installation_key()


def _remove_stale_private_caches(parent: str):
  """Private folders of processes that are gone (killed pool workers skip atexit)."""
  import shutil
  for name in os.listdir(parent):
    try:
      pid = int(name.split('-', 1)[0])
      os.kill(pid, 0)
    except ProcessLookupError:
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    except (ValueError, OSError):  # not ours, or alive under another user
      pass


def _private_numba_cache() -> Optional[str]:
  """Sets NUMBA_CACHE_DIR to a private folder for this process (a copy of the shared
  seed, removed at exit or by a later process); returns it, or None where the user
  set NUMBA_CACHE_DIR."""
  owner = os.environ.get(_PRIVATE_OWNER)
  if 'NUMBA_CACHE_DIR' in os.environ and owner is None:
    return None
  if owner == str(os.getpid()):
    return os.environ['NUMBA_CACHE_DIR']
  import atexit
  import shutil
  import tempfile
  parent = os.path.join(_SHARED_NUMBA_CACHE, 'proc')
  try:
    os.makedirs(parent, exist_ok=True)
    _remove_stale_private_caches(parent)
  except OSError:  # no writable home: the system's temp folder
    parent = None
  private = tempfile.mkdtemp(prefix=f'{os.getpid()}-', dir=parent)
  seed = _seed_dir()
  if os.path.isdir(seed):
    try:
      shutil.copytree(seed, private, dirs_exist_ok=True)
    except OSError:  # a partial copy is only a colder cache
      pass
  atexit.register(shutil.rmtree, private, True)
  os.environ['NUMBA_CACHE_DIR'] = private
  os.environ[_PRIVATE_OWNER] = str(os.getpid())
  return private


_PRIVATE_NUMBA_CACHE = _private_numba_cache()

_FIRST_USES: set = set()
_FIRST_USE_LOCK = threading.RLock()
_HOLDING = threading.local()


def _publish_seed():
  """Copies this process's private cache to the shared seed if there is none yet
  (called under the inter-process lock; the rename makes it appear whole)."""
  import shutil
  seed = _seed_dir()
  if _PRIVATE_NUMBA_CACHE is None or os.path.isdir(seed):
    return
  tmp = f'{seed}.{os.getpid()}.tmp'
  try:
    from numba.core.compiler_lock import global_compiler_lock
    with global_compiler_lock:  # no thread of this process writes the cache meanwhile
      shutil.copytree(_PRIVATE_NUMBA_CACHE, tmp)
    os.rename(tmp, seed)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _machine_lock(folder: str):
  """An exclusive lock shared by every process on this machine."""
  import fcntl
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, '.first_use.lock'), 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def numba_first_use(key):
  """Marks this process's first call of `key`, when librosa's numba kernels are
  compiled or loaded. With a private cache, the call runs freely and this process's
  cache then becomes the shared seed if there is none. With a user-set shared
  NUMBA_CACHE_DIR, the call holds a lock shared by every process on the machine,
  so that no two compile into that folder at once."""
  if key in _FIRST_USES or getattr(_HOLDING, 'depth', 0):  # nested: already covered
    yield
    return
  with _FIRST_USE_LOCK:
    shared = _PRIVATE_NUMBA_CACHE is None
    with (_machine_lock(os.environ['NUMBA_CACHE_DIR']) if shared
          else contextlib.nullcontext()):
      _HOLDING.depth = 1
      try:
        yield
        _FIRST_USES.add(key)
      finally:
        _HOLDING.depth = 0
    if not shared:
      try:
        with _machine_lock(_SHARED_NUMBA_CACHE):
          _publish_seed()
      except OSError:  # no writable shared folder: every process stays cold, still correct
        pass


def numba_locked(key_fn):
  """Decorator: run the function under `numba_first_use(key_fn(*args, **kwargs))`."""
  def wrap(fn):
    @functools.wraps(fn)
    def inner(*args, **kwargs):
      with numba_first_use((fn.__qualname__, key_fn(*args, **kwargs))):
        return fn(*args, **kwargs)
    return inner
  return wrap


@dataclasses.dataclass(frozen=True)
class AudioFeatureConfig:
  """How a waveform becomes a [T, F] float32 feature matrix.

  kind: 'mfcc' (with optional deltas), 'logmel', or 'waveform' ([T, 1]).
  num_frames: crop/pad the feature sequence to this length (None keeps it).
  prosody: append PROSODY_DIM frame-level prosodic and spectral-shape tracks
    (`prosody_features`) after the MFCC/log-mel rows; MFCCs carry little pitch or
    loudness, which carry much of vocal emotion.
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
  prosody: bool = False
  f0_min: float = 65.0  # pYIN search range (Hz): low male to high female speech
  f0_max: float = 600.0

  @property
  def feature_dim(self) -> int:
    if self.kind == 'waveform':
      return 1
    base = self.n_mfcc if self.kind == 'mfcc' else self.n_mels
    return base * (1 + self.deltas) + (PROSODY_DIM if self.prosody else 0)


# Rows of `prosody_features`, in order.
PROSODY_NAMES = ('log2_f0', 'voiced', 'rms_db', 'centroid_khz', 'bandwidth_khz',
                 'rolloff_khz', 'flatness', 'zcr') + tuple(f'contrast{i}' for i in range(7))
PROSODY_DIM = len(PROSODY_NAMES)


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


def prosody_features(wave: np.ndarray, cfg: AudioFeatureConfig) -> np.ndarray:
  """f32[PROSODY_DIM, T] tracks on the same frames as the mel spectrogram (centred, hop
  `cfg.hop_length`): pYIN log2 F0 and voicing decision (0/1), RMS energy in dB, spectral
  centroid, bandwidth and roll-off (kHz), flatness, zero-crossing rate, spectral contrast.

  Unvoiced frames take the F0 interpolated between their voiced neighbours (held at
  the ends), so the track has no jumps to 0; a take with no voiced frame gets the
  geometric centre of the search range. `wave` should not be pre-emphasised: that
  removes a low voice's fundamental and pYIN then finds few voiced frames.
  """
  import librosa
  hop, sr = cfg.hop_length, cfg.sample_rate
  # pYIN needs a window of a few periods of f0_min; the frame count only depends on hop.
  f0_frame = max(cfg.n_fft, 1 << int(np.ceil(np.log2(4 * sr / cfg.f0_min))))
  from data_pipelines.features import viterbi
  with viterbi.sparse_viterbi_in_librosa():  # same tracks, ~5x faster
    f0, voiced_flag, _ = librosa.pyin(wave, fmin=cfg.f0_min, fmax=cfg.f0_max, sr=sr,
                                      frame_length=f0_frame, hop_length=hop)
  voiced = np.isfinite(f0)
  if voiced.any():
    idx = np.arange(f0.size)
    log_f0 = np.interp(idx, idx[voiced], np.log2(f0[voiced]))
  else:
    log_f0 = np.full(f0.shape, 0.5 * np.log2(cfg.f0_min * cfg.f0_max))
  spec = np.abs(librosa.stft(wave, n_fft=cfg.n_fft, hop_length=hop, win_length=cfg.win_length,
                             window=cfg.window))
  rms = librosa.feature.rms(S=spec, frame_length=cfg.n_fft, hop_length=hop)[0]
  rows = [log_f0, voiced_flag.astype(np.float32),
          librosa.amplitude_to_db(rms, ref=1.0, top_db=80.0),
          librosa.feature.spectral_centroid(S=spec, sr=sr)[0] / 1000.0,
          librosa.feature.spectral_bandwidth(S=spec, sr=sr)[0] / 1000.0,
          librosa.feature.spectral_rolloff(S=spec, sr=sr)[0] / 1000.0,
          librosa.feature.spectral_flatness(S=spec)[0],
          librosa.feature.zero_crossing_rate(wave, frame_length=cfg.n_fft, hop_length=hop)[0],
          *librosa.feature.spectral_contrast(S=spec, sr=sr)]
  n = min(len(r) for r in rows)
  return np.stack([np.asarray(r[:n], np.float32) for r in rows])


@numba_locked(lambda wave, sr, cfg, **kw: cfg)
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
  plain = normalize_amplitude(wave) if cfg.normalize else wave
  wave = pre_emphasize(wave, cfg.pre_emphasis)
  if cfg.normalize:
    wave = normalize_amplitude(wave)
  num_real = len(wave)
  if cfg.duration_s is not None:
    target = int(round(cfg.duration_s * cfg.sample_rate))
    num_real = kept_after_crop_or_pad(num_real, len(wave), target)
    wave = crop_or_pad(wave, target)
    plain = crop_or_pad(plain, target)
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
    if cfg.prosody:
      pros = prosody_features(plain, cfg)
      n = min(base.shape[1], pros.shape[1])
      parts = [p[:, :n] for p in parts] + [pros[:, :n]]
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


# ----------------------------------------------------------------------------
# Waveform augmentation. Builders store features, not waveforms, so these run
# at build time on extra copies of training examples (`train_augment_copies`).


@dataclasses.dataclass(frozen=True)
class WaveAugmentConfig:
  """Ranges of the waveform augmentations paper 001 names (Table A1: pitch
  shifting, time stretching, background noise); the paper gives no values, so
  the defaults are the usual speech-emotion ones. 0 disables one."""
  pitch_semitones: float = 2.0  # shift drawn from U(-p, p) semitones
  stretch: float = 0.1  # rate drawn from U(1 - s, 1 + s)
  snr_db: tuple = (10.0, 30.0)  # noise SNR drawn from U(lo, hi) dB; () disables


def augment_seed(key: str, copy_index: int) -> np.random.SeedSequence:
  """A seed fixed by a file's key and the copy index (stable across runs and workers)."""
  import zlib
  return np.random.SeedSequence([zlib.crc32(str(key).encode()), int(copy_index)])


def pitch_shift(wave: np.ndarray, sr: int, semitones: float) -> np.ndarray:
  """Same length and rate, pitch moved by `semitones`."""
  if not semitones:
    return np.asarray(wave, np.float32)
  import librosa
  return librosa.effects.pitch_shift(np.asarray(wave, np.float32), sr=sr,
                                     n_steps=float(semitones)).astype(np.float32)


def time_stretch(wave: np.ndarray, rate: float) -> np.ndarray:
  """Tempo scaled by `rate` (> 1 faster, shorter) at the same pitch and sample rate."""
  if rate <= 0:
    raise ValueError(f'time-stretch rate must be > 0, got {rate}')
  if rate == 1.0:
    return np.asarray(wave, np.float32)
  import librosa
  return librosa.effects.time_stretch(np.asarray(wave, np.float32),
                                      rate=float(rate)).astype(np.float32)


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
  """White Gaussian noise at `snr_db` relative to the wave's mean power."""
  wave = np.asarray(wave, np.float32)
  power = float(np.mean(np.square(wave))) if wave.size else 0.0
  if power <= 0:
    return wave
  noise_power = power / (10.0 ** (snr_db / 10.0))
  noise = rng.standard_normal(wave.shape).astype(np.float32) * np.float32(np.sqrt(noise_power))
  return wave + noise


@numba_locked(lambda wave, sr, cfg, seed: None)
def augment_wave(wave: np.ndarray, sr: int, cfg: WaveAugmentConfig,
                 seed) -> np.ndarray:
  """Time stretch, pitch shift, then noise, with parameters drawn from `seed`.

  Deterministic in (wave, cfg, seed). The stretch changes the length; the
  feature extraction crops/pads to the configured duration afterwards.
  """
  rng = np.random.default_rng(seed)
  wave = to_mono(wave)
  rate = 1.0 + rng.uniform(-cfg.stretch, cfg.stretch) if cfg.stretch else 1.0
  steps = rng.uniform(-cfg.pitch_semitones, cfg.pitch_semitones) if cfg.pitch_semitones else 0.0
  snr = rng.uniform(*cfg.snr_db) if cfg.snr_db else None
  wave = time_stretch(wave, rate)
  wave = pitch_shift(wave, sr, steps)
  if snr is not None:
    wave = add_noise(wave, snr, rng)
  return wave

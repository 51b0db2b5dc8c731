"""Procedural talking faces and speech-like voices for `synthetic_av`.

The six classes cross a facial valence (frown / relaxed / smile) with a vocal
arousal (low / high), following the circumplex model of affect:

  class      face       voice
  neutral    relaxed    low arousal
  surprised  relaxed    high arousal
  calm       smile      low arousal
  happy      smile      high arousal
  sad        frown      low arousal
  angry      frown      high arousal

Pairs such as neutral/surprised differ only in the voice and neutral/calm only
in the face, so neither modality alone can exceed ~50 % accuracy: fusion is
needed. Speakers differ in face shape, skin tone, hair, background, lighting,
voice pitch and formants (timbre), expressiveness, head-pose jitter and noise;
splits are by speaker.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

CLASS_NAMES = ('neutral', 'surprised', 'calm', 'happy', 'sad', 'angry')
# class -> (valence in {-1, 0, 1} shown by the face, arousal in {0, 1} heard in the voice)
CLASS_FACTORS = {
    'neutral': (0, 0),
    'surprised': (0, 1),
    'calm': (1, 0),
    'happy': (1, 1),
    'sad': (-1, 0),
    'angry': (-1, 1),
}
FPS = 25.0


@dataclasses.dataclass(frozen=True)
class Speaker:
  """Everything that identifies a synthetic speaker."""
  speaker_id: int
  skin: np.ndarray  # RGB 0..255
  hair: np.ndarray
  background: np.ndarray
  face_w: float  # half-width as a fraction of the frame
  face_aspect: float
  eye_gap: float
  mouth_w: float
  light_dir: float  # radians
  light_strength: float
  f0: float  # Hz
  formants: tuple
  breathiness: float
  expressiveness: float  # scales facial valence and vocal arousal cues
  pose_jitter: float
  pixel_noise: float
  snr_db: float


def make_speaker(seed: int, speaker_id: int) -> Speaker:
  rng = np.random.default_rng([seed, speaker_id, 17])
  tone = rng.uniform(0, 1)
  skin = (1 - tone) * np.array([255, 224, 196]) + tone * np.array([110, 70, 45])
  skin = np.clip(skin + rng.normal(0, 10, 3), 0, 255)
  female = rng.uniform() < 0.5
  f0 = rng.uniform(165, 255) if female else rng.uniform(85, 150)
  scale = 1.15 if female else 1.0  # shorter vocal tract, higher formants
  formants = (rng.uniform(450, 800) * scale, rng.uniform(1100, 1900) * scale,
              rng.uniform(2300, 3000) * scale)
  return Speaker(
      speaker_id=speaker_id,
      skin=skin,
      hair=rng.uniform(0, 120, 3),
      background=rng.uniform(40, 220, 3),
      face_w=rng.uniform(0.26, 0.34),
      face_aspect=rng.uniform(1.15, 1.4),
      eye_gap=rng.uniform(0.36, 0.48),
      mouth_w=rng.uniform(0.38, 0.52),
      light_dir=rng.uniform(0, 2 * math.pi),
      light_strength=rng.uniform(0.0, 0.35),
      f0=f0,
      formants=formants,
      breathiness=rng.uniform(0.01, 0.08),
      expressiveness=rng.uniform(0.75, 1.0),
      pose_jitter=rng.uniform(0.5, 1.5),
      pixel_noise=rng.uniform(2.0, 8.0),
      snr_db=rng.uniform(15.0, 30.0),
  )


def syllable_envelope(rng: np.random.Generator, n: int, sr: int,
                      rate_hz: float) -> np.ndarray:
  """Speech-like energy envelope: raised-cosine syllables with pauses."""
  env = np.zeros(n, np.float32)
  t = rng.uniform(0.05, 0.2)
  dur = n / sr
  while t < dur - 0.1:
    length = rng.uniform(0.6, 1.0) / rate_hz
    if rng.uniform() < 0.9:  # occasional pause
      i0, i1 = int(t * sr), min(n, int((t + length) * sr))
      if i1 > i0:
        env[i0:i1] = np.maximum(env[i0:i1], np.sin(np.linspace(0, np.pi, i1 - i0)) ** 2
                                * rng.uniform(0.6, 1.0))
    t += length * rng.uniform(1.0, 1.3)
  return env


def synth_voice(spk: Speaker, arousal: int, rng: np.random.Generator,
                duration_s: float, sr: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (waveform f32[N], energy envelope f32[N]) of one utterance."""
  n = int(round(duration_s * sr))
  t = np.arange(n) / sr
  e = spk.expressiveness
  # Arousal cues: faster syllables, higher and livelier pitch, brighter spectrum.
  rate = rng.uniform(2.6, 3.6) + arousal * e * rng.uniform(2.2, 3.2)
  f0_mean = spk.f0 * (1 + arousal * e * rng.uniform(0.2, 0.35))
  f0_dev = 0.03 + arousal * e * rng.uniform(0.10, 0.16)
  tilt = 0.80 + arousal * e * 0.12  # per-harmonic amplitude decay
  contour = (np.sin(2 * np.pi * rng.uniform(0.3, 1.2) * t + rng.uniform(0, 6.28))
             + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 4) * t + rng.uniform(0, 6.28)))
  f0 = f0_mean * (1 + f0_dev * contour / 1.5)
  phase = 2 * np.pi * np.cumsum(f0) / sr
  n_harm = int(min(60, (sr / 2 - 200) // (f0_mean * 1.4)))
  k = np.arange(1, n_harm + 1)
  amps = tilt ** k
  # Timbre: a formant filter evaluated at the mean harmonic frequencies.
  freqs = k * f0_mean
  resp = sum(np.exp(-0.5 * ((freqs - fm) / (60 + 0.08 * fm)) ** 2) * w
             for fm, w in zip(spk.formants, (1.0, 0.7, 0.4)))
  amps = amps * (0.15 + resp)
  wave = (amps[None, :] * np.sin(phase[:, None] * k[None, :])).sum(axis=1)
  env = syllable_envelope(rng, n, sr, rate)
  wave = wave / (np.abs(wave).max() + 1e-8)
  wave = env * (wave + spk.breathiness * rng.normal(0, 1, n))
  sig_pow = np.mean(wave ** 2) + 1e-12
  noise_pow = sig_pow / (10 ** (spk.snr_db / 10))
  wave = wave + rng.normal(0, math.sqrt(noise_pow), n)
  return wave.astype(np.float32), env


def render_face(spk: Speaker, valence: int, mouth_open: float, frame_idx: int,
                pose: np.ndarray, blink: bool, size: int,
                rng: np.random.Generator) -> np.ndarray:
  """One frame, u8[size, size, 3], of the speaker's face."""
  import cv2
  s = size
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
  light = 1 + spk.light_strength * (math.cos(spk.light_dir) * xx + math.sin(spk.light_dir) * yy) * 2
  img = np.ones((s, s, 3), np.float32) * spk.background[None, None, :]
  cx, cy = s * (0.5 + pose[0]), s * (0.52 + pose[1])
  angle = pose[2]
  fw = spk.face_w * s
  fh = fw * spk.face_aspect
  canvas = np.zeros((s, s, 3), np.uint8)
  canvas[:] = np.clip(img, 0, 255).astype(np.uint8)
  sc = 16  # fixed-point shift for sub-pixel drawing
  def P(x, y):  # face-relative coordinates -> rotated image point (fixed point)
    ca, sa = math.cos(angle), math.sin(angle)
    px = cx + (x * ca - y * sa) * fw
    py = cy + (x * sa + y * ca) * fw
    return (int(px * sc), int(py * sc))
  def col(c):
    return tuple(float(v) for v in c)
  # Hair behind the head, then the head.
  cv2.ellipse(canvas, P(0, -0.15), (int(fw * 1.08 * sc), int(fh * 1.0 * sc)),
              math.degrees(angle), 180, 360, col(spk.hair), -1, cv2.LINE_AA, 4)
  cv2.ellipse(canvas, P(0, 0), (int(fw * sc), int(fh * sc)), math.degrees(angle),
              0, 360, col(spk.skin), -1, cv2.LINE_AA, 4)
  e = spk.expressiveness
  dark = col(np.array([30, 25, 25]))
  # Eyes and brows: frowns pull the inner brow ends down.
  for side in (-1, 1):
    ex = side * spk.eye_gap
    eh = 0.02 if blink else 0.07
    cv2.ellipse(canvas, P(ex, -0.25), (int(0.11 * fw * sc), int(eh * fw * sc)),
                math.degrees(angle), 0, 360, dark, -1, cv2.LINE_AA, 4)
    inner = -0.42 + (0.12 * e if valence < 0 else 0.0) - (0.04 * e if valence > 0 else 0.0)
    outer = -0.45 - (0.03 * e if valence < 0 else 0.0)
    p_in, p_out = P(ex - side * 0.13, inner), P(ex + side * 0.15, outer)
    cv2.line(canvas, p_in, p_out, col(spk.hair * 0.6), max(1, int(fw * 0.06)), cv2.LINE_AA, 4)
  cv2.line(canvas, P(0, -0.05), P(0.04, 0.2), col(spk.skin * 0.7), max(1, int(fw * 0.04)),
           cv2.LINE_AA, 4)
  # Mouth: corners up for a smile, down for a frown; opening follows the voice.
  mw = spk.mouth_w
  curve = 0.22 * e * valence
  xs = np.linspace(-mw, mw, 13)
  ys = 0.5 - curve * (xs / mw) ** 2 + curve * 0.5
  upper = [P(x, y - 0.02) for x, y in zip(xs, ys)]
  opening = 0.02 + 0.18 * mouth_open
  lower = [P(x, y + opening * (1 - (x / mw) ** 2)) for x, y in zip(xs[::-1], ys[::-1])]
  poly = np.array(upper + lower, np.int32)
  cv2.fillPoly(canvas, [poly], col(np.array([90, 20, 30])), cv2.LINE_AA, 4)
  out = canvas.astype(np.float32) * light[..., None]
  out += rng.normal(0, spk.pixel_noise, out.shape)
  return np.clip(out, 0, 255).astype(np.uint8)


def render_clip(seed: int, spk: Speaker, class_name: str, repetition: int,
                duration_s: float, sr: int, frame_indices_fn, num_frames: int,
                render_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (waveform f32[N] at `sr`, frames u8[num_frames, S, S, 3])."""
  valence, arousal = CLASS_FACTORS[class_name]
  cls = CLASS_NAMES.index(class_name)
  rng = np.random.default_rng([seed, spk.speaker_id, cls, repetition])
  wave, env = synth_voice(spk, arousal, rng, duration_s, sr)
  total = int(duration_s * FPS)
  idx = frame_indices_fn(total, num_frames)
  # Head pose as a smooth random walk (x, y, roll).
  steps = rng.normal(0, 1, (total, 3)) * np.array([0.004, 0.004, 0.01]) * spk.pose_jitter
  pose = np.cumsum(steps, axis=0) + rng.normal(0, 1, 3) * np.array([0.03, 0.03, 0.06])
  blinks = rng.uniform(size=total) < 0.06
  frames = []
  for i in idx:
    a0 = int(i / FPS * sr)
    a1 = min(len(env), int((i + 1) / FPS * sr))
    mouth_open = float(env[a0:a1].mean()) if a1 > a0 else 0.0
    frames.append(render_face(spk, valence, mouth_open, int(i), pose[i], bool(blinks[i]),
                              render_size, rng))
  return wave, np.stack(frames)


def make_example(key, seed: int, duration_s: float, num_frames: int, frame_size: int,
                 render_size: int, audio_cfg) -> tuple[str, dict]:
  """(speaker, class, repetition) -> (key, example) through the shared feature code."""
  from data_pipelines.features import audio as audio_features
  from data_pipelines.features import video as video_features
  speaker_id, cls, rep = key
  spk = make_speaker(seed, speaker_id)
  name = CLASS_NAMES[cls]
  wave, frames = render_clip(seed, spk, name, rep, duration_s, audio_cfg.sample_rate,
                             video_features.sample_frame_indices, num_frames, render_size)
  uid = f'spk{speaker_id:03d}_{name}_{rep:02d}'
  return uid, {
      'id': uid,
      'audio': audio_features.extract_audio_features(wave, audio_cfg.sample_rate, audio_cfg),
      'video': video_features.resize_frames(frames, frame_size),
      'label': cls,
      'speaker': speaker_id,
  }

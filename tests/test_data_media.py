"""Media decoding, face crops and clip preprocessing on the real sample files,
intact and damaged on purpose."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest

from data_pipelines.features import audio as audio_features
from data_pipelines.features import clip
from data_pipelines.features import face
from data_pipelines.features import media
from data_pipelines.features import video as video_features

RAV_WAV = 'ravdess/Audio_Speech_Actors_01-24/Actor_01/03-01-01-01-01-01-01.wav'
RAV_STEREO = ('ravdess/Audio_Speech_Actors_01-24/Actor_01/03-01-02-01-01-02-01.wav',
              'ravdess/Audio_Speech_Actors_01-24/Actor_01/03-01-08-01-02-02-01.wav')
RAV_MP4 = 'ravdess/Video_Speech_Actor_01/Actor_01/01-01-01-01-01-01-01.mp4'
NO_AUDIO = 'ravdess_reencoded/face_crop_no_audio_01-01-08-02-01-01-19.mp4'
LETTERBOX = 'ravdess_reencoded/letterboxed_640x480_01-01-07-02-02-01-01.mp4'
FLV = 'crema_d/VideoFlash/1001_DFA_ANG_XX.flv'
MP3 = 'crema_d/AudioMP3/1002_DFA_ANG_XX.mp3'

SMALL_AUDIO = audio_features.AudioFeatureConfig(sample_rate=16000, duration_s=2.0,
                                                n_mfcc=13, hop_length=320, num_frames=100)
SMALL_VIDEO = video_features.VideoFeatureConfig(num_frames=3, size=32)


def _need(shared_data, rel):
  path = shared_data / rel
  if not path.exists():
    pytest.skip(f'sample file {rel} not in {shared_data}')
  return path


def test_wav_mono_with_fllr_chunk(shared_data):
  path = _need(shared_data, RAV_WAV)
  with open(path, 'rb') as f:
    assert b'FLLR' in f.read(4096)  # the extra RIFF chunk is really there
  wave, sr = media.decode_audio(path)
  assert sr == 48000 and wave.ndim == 1 and wave.dtype == np.float32
  # Same take as the mp4: 3.3 s.
  assert 3.2 <= wave.shape[0] / sr <= 3.4
  assert 0 < np.abs(wave).max() <= 1.0


@pytest.mark.parametrize('rel', RAV_STEREO)
def test_wav_stereo(shared_data, rel):
  wave, sr = media.decode_audio(_need(shared_data, rel))
  assert wave.ndim == 2 and wave.shape[1] == 2 and sr == 48000
  assert 3.2 <= wave.shape[0] / sr <= 5.0
  mono, sr16 = media.decode_audio(_need(shared_data, rel), 16000, mono=True)
  assert mono.ndim == 1 and sr16 == 16000
  assert abs(mono.shape[0] / 16000 - wave.shape[0] / 48000) < 0.01


def test_mp4_audio_matches_wav_take(shared_data):
  wav, _ = media.decode_audio(_need(shared_data, RAV_WAV), 16000, mono=True)
  mp4, sr = media.decode_audio(_need(shared_data, RAV_MP4), 16000, mono=True)
  assert sr == 16000 and abs(len(mp4) - len(wav)) < 0.05 * 16000
  # AAC is lossy and delays the track by its encoder priming (~20-30 ms), but
  # it is the same recording: 10 ms envelopes match at a small lag.
  env = lambda x: np.convolve(np.abs(x), np.ones(800) / 800, mode='same')[::160]
  a, b = env(wav), env(mp4)
  n = min(len(a), len(b))
  best = max(np.corrcoef(a[max(lag, 0):n + min(lag, 0)], b[max(-lag, 0):n - max(lag, 0)])[0, 1]
             for lag in range(-5, 6))
  assert best > 0.95


def test_video_h264_and_span(shared_data):
  path = _need(shared_data, RAV_MP4)
  info = media.probe(path)
  assert (info['width'], info['height'], info['num_frames']) == (1280, 720, 99)
  assert abs(info['fps'] - 29.97) < 0.01 and info['sample_rate'] == 48000
  frames, fps = media.decode_video(path, num_frames=5)
  assert frames.shape == (5, 720, 1280, 3) and frames.dtype == np.uint8
  span, _ = media.decode_video(path, start_s=1.0, end_s=2.0)
  assert abs(len(span) - 30) <= 1
  audio, sr = media.decode_audio(path, start_s=1.0, end_s=2.0)
  assert abs(audio.shape[0] - sr) < 0.02 * sr


def test_crema_flv_vp6_and_mp3(shared_data):
  path = _need(shared_data, FLV)
  frames, fps = media.decode_video(path)
  assert frames.shape[1:] == (360, 480, 3) and abs(fps - 29.97) < 0.05
  assert 1.9 <= len(frames) / fps <= 2.4
  wave, sr = media.decode_audio(path)
  assert sr == 44100 and wave.ndim == 1 and 1.9 <= len(wave) / sr <= 2.4
  mp3, sr = media.decode_audio(_need(shared_data, MP3))
  assert sr == 44100 and mp3.ndim == 1 and 1.0 < len(mp3) / sr < 5.0


def test_reencoded_clips(shared_data):
  with pytest.raises(media.MissingStreamError, match='no audio stream'):
    media.decode_audio(_need(shared_data, NO_AUDIO))
  frames, _ = media.decode_video(_need(shared_data, NO_AUDIO), num_frames=2)
  assert frames.shape == (2, 720, 720, 3)
  wave, sr = media.decode_audio(_need(shared_data, LETTERBOX))
  assert sr == 44100 and wave.ndim == 1
  out = clip.preprocess_av(_need(shared_data, LETTERBOX), audio_cfg=SMALL_AUDIO,
                           video_cfg=SMALL_VIDEO)
  assert out['audio'].shape == (100, 13) and out['video'].shape == (3, 32, 32, 3)


def test_face_crop_is_steady_and_centred(shared_data):
  frames, _ = media.decode_video(_need(shared_data, RAV_MP4), num_frames=4)
  boxes = face.steady_boxes(frames)
  assert np.allclose(boxes, boxes[0])  # one box for the clip
  x, y, w, h = boxes[0]
  # RAVDESS actors face the camera in the middle of a 1280x720 frame.
  assert 400 < x + w / 2 < 880 and 100 < y + h / 2 < 600 and 100 < w < 600
  crops = face.crop_faces(frames, 64)
  assert crops.shape == (4, 64, 64, 3) and crops.dtype == np.uint8
  # Skin, not the white studio background, fills the centre of the crop.
  centre = crops[:, 24:40, 24:40].astype(np.float32)
  assert centre.mean() < 230
  smooth = face.steady_boxes(frames, mode='smooth')
  assert smooth.shape == (4, 4) and np.abs(smooth - boxes).max() < 0.5 * w


def test_no_face(shared_data):
  frames, _ = media.decode_video(_need(shared_data, RAV_MP4), num_frames=2)
  with pytest.raises(clip.NoFaceError, match='no face'):
    clip.preprocess_frames(frames[:, ::-1].copy(), SMALL_VIDEO, 'upside_down')  # no frontal face
  with pytest.raises(clip.NoFaceError):
    clip.preprocess_frames(np.zeros((3, 120, 160, 3), np.uint8), SMALL_VIDEO, 'black')


@pytest.mark.parametrize('rel', [RAV_MP4, NO_AUDIO, LETTERBOX, FLV])
def test_sampled_decode_equals_full_decode(shared_data, rel):
  # Sampled frames decode without most non-reference frames; they must be
  # the very frames a full decode gives at the same positions.
  import av
  path = _need(shared_data, rel)
  with av.open(str(path)) as c:
    n = sum(1 for p in c.demux(c.streams.video[0]) if p.size > 0 and not p.is_discard)
  full, _ = media.decode_video(path)
  fast, _ = media.decode_video(path, num_frames=15)
  idx = video_features.sample_frame_indices(n, 15)
  assert idx.max() < len(full)
  np.testing.assert_array_equal(fast, full[idx])


@pytest.mark.parametrize('rel', [RAV_MP4, NO_AUDIO, LETTERBOX, FLV])
def test_mtcnn_agrees_with_haar(shared_data, rel):
  pytest.importorskip('mtcnn')
  frames, _ = media.decode_video(_need(shared_data, rel), num_frames=3)
  mt = face.detect_faces_batch(list(frames), detector='mtcnn')
  haar = face.detect_faces_batch(list(frames), detector='haar')
  assert [len(b) > 0 for b in mt] == [True] * 3
  for m, h in zip(mt, haar):
    (mx, my, mw, mh), (hx, hy, hw, hh) = m[0], h[0]
    # The same face: centres within a quarter of its width of each other.
    assert abs((mx + mw / 2) - (hx + hw / 2)) < 0.25 * hw
    assert abs((my + mh / 2) - (hy + hh / 2)) < 0.25 * hh
    assert 0.5 < mw / hw < 1.5
  cfg = video_features.VideoFeatureConfig(num_frames=3, size=32, face_detector='mtcnn')
  assert clip.preprocess_frames(frames, cfg).shape == (3, 32, 32, 3)


def test_mtcnn_no_face_and_unknown_detector():
  pytest.importorskip('mtcnn')
  black = np.zeros((3, 120, 160, 3), np.uint8)
  assert [len(b) for b in face.detect_faces_batch(list(black), detector='mtcnn')] == [0, 0, 0]
  cfg = video_features.VideoFeatureConfig(num_frames=3, size=32, face_detector='mtcnn')
  with pytest.raises(clip.NoFaceError):
    clip.preprocess_frames(black, cfg, 'black')
  with pytest.raises(ValueError, match='unknown face detector'):
    face.detect_faces(black[0], detector='dlib')


def test_truncated_and_corrupt_media(shared_data, tmp_path):
  wav = tmp_path / 'trunc.wav'
  data = _need(shared_data, RAV_WAV).read_bytes()
  wav.write_bytes(data[:len(data) // 2])
  with pytest.raises(media.CorruptMediaError, match='trunc.wav.*truncated'):
    media.decode_audio(wav)
  header_only = tmp_path / 'header.wav'
  header_only.write_bytes(data[:44])
  with pytest.raises(media.CorruptMediaError):
    media.decode_audio(header_only)
  mp4 = tmp_path / 'trunc.mp4'
  mp4.write_bytes(_need(shared_data, RAV_MP4).read_bytes()[:2_000_000])
  with pytest.raises(media.CorruptMediaError, match='truncated'):
    media.decode_video(mp4)
  with pytest.raises(media.CorruptMediaError, match='truncated'):
    media.decode_audio(mp4)
  garbage = tmp_path / 'garbage.flv'
  rng = np.random.default_rng(0)
  garbage.write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
  with pytest.raises(media.MediaError, match='garbage.flv'):
    media.decode_video(garbage)
  empty = tmp_path / 'empty.mp3'
  empty.write_bytes(b'')
  with pytest.raises(media.CorruptMediaError, match='empty'):
    media.decode_audio(empty)
  with pytest.raises(media.MediaError, match='not found'):
    media.decode_audio(tmp_path / 'missing.wav')


def test_silent_audio(shared_data, tmp_path):
  src = _need(shared_data, RAV_WAV)
  data = bytearray(src.read_bytes())
  # Zero the samples of the data chunk, keeping every header and chunk intact.
  pos = 12
  while data[pos:pos + 4] != b'data':
    pos += 8 + struct.unpack('<I', data[pos + 4:pos + 8])[0]
  size = struct.unpack('<I', data[pos + 4:pos + 8])[0]
  data[pos + 8:pos + 8 + size] = bytes(size)
  silent = tmp_path / '03-01-01-01-01-01-01.wav'
  silent.write_bytes(bytes(data))
  with pytest.raises(clip.SilentAudioError, match='silent'):
    clip.preprocess_av(audio_path=silent, audio_cfg=SMALL_AUDIO)


def test_preprocess_av_shapes(shared_data):
  cfg = audio_features.AudioFeatureConfig(sample_rate=16000, duration_s=3.0, n_mfcc=13,
                                          deltas=2, hop_length=160, num_frames=300)
  out, info = clip.preprocess_av(_need(shared_data, RAV_MP4), audio_cfg=cfg,
                                 video_cfg=SMALL_VIDEO, return_info=True)
  assert out['audio'].shape == (300, 39) and out['audio'].dtype == np.float32
  assert out['video'].shape == (3, 32, 32, 3) and out['video'].dtype == np.uint8
  assert info['audio_channels'] == 2 and abs(info['audio_duration_s'] - 3.3) < 0.05
  cut = clip.preprocess_av(_need(shared_data, RAV_MP4), audio_cfg=SMALL_AUDIO,
                           start_s=0.5, end_s=1.5)
  assert set(cut) == {'audio'} and cut['audio'].shape == (100, 13)
  # A separate wav takes precedence over the video's track.
  only_audio = clip.preprocess_av(audio_path=_need(shared_data, RAV_WAV), audio_cfg=SMALL_AUDIO)
  assert only_audio['audio'].shape == (100, 13)

"""The sparse Viterbi decoder gives librosa's results, and pYIN's tracks with it."""

import numpy as np
import pytest

librosa = pytest.importorskip('librosa')

from data_pipelines.features import viterbi


@pytest.mark.parametrize('seed', range(6))
def test_sparse_viterbi_matches_librosa_on_banded_and_dense_transitions(seed):
  rng = np.random.default_rng(seed)
  n, steps = int(rng.integers(3, 40)), int(rng.integers(2, 60))
  width = int(rng.integers(1, n + 1))
  local = librosa.sequence.transition_local(n, width, window='triangle', wrap=False)
  transition = np.kron(librosa.sequence.transition_loop(2, 0.9), local)
  if seed == 5:  # no zeros at all
    transition = rng.random((2 * n, 2 * n)) + 0.01
    transition /= transition.sum(axis=1, keepdims=True)
  prob = rng.random((2 * n, steps)) ** 6
  prob[rng.random(prob.shape) < 0.3] = 0.0  # impossible states, as pYIN's unvoiced bins
  want, want_logp = librosa.sequence.viterbi(prob, transition, return_logp=True)
  got, got_logp = viterbi.viterbi(prob, transition, return_logp=True)
  np.testing.assert_array_equal(got, want)
  assert got_logp == pytest.approx(want_logp, rel=1e-12)
  # Batched input (leading axes), as librosa.pyin passes it.
  got_b = viterbi.viterbi(np.stack([prob, prob[::-1]]), transition)
  np.testing.assert_array_equal(got_b[0], want)
  np.testing.assert_array_equal(got_b[1], librosa.sequence.viterbi(prob[::-1], transition))


def test_pyin_tracks_are_unchanged_on_real_speech(shared_data):
  files = sorted((shared_data / 'ravdess' / 'Audio_Speech_Actors_01-24').glob('Actor_0*/*.wav'))
  assert files
  for path in files[::80]:  # 3 takes of different actors
    y, sr = librosa.load(path, sr=16000)
    args = dict(fmin=65.0, fmax=600.0, sr=sr, frame_length=1024, hop_length=160)
    want = librosa.pyin(y, **args)
    with viterbi.sparse_viterbi_in_librosa():
      got = librosa.pyin(y, **args)
    assert librosa.sequence.viterbi is not viterbi.viterbi  # restored
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w)

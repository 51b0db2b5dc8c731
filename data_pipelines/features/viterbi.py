"""Viterbi decoding that skips a transition matrix's zeros, with librosa's results.

pYIN (`librosa.pyin`) decodes ~2 x 385 pitch/voicing states per frame (F0 from 65 to
600 Hz at 0.1 semitone), with a transition matrix whose rows are non-zero only within
a few semitones. `librosa.sequence.viterbi` takes every state to every state, which is
~85 % of pYIN's time; `viterbi` here visits only the non-zero transitions. A zero
transition keeps the weight librosa gives it (log of librosa's epsilon), so the decoded
states are the same (`tests/test_viterbi.py`).
"""

from __future__ import annotations

import contextlib
import threading

import numba
import numpy as np

_PATCH_LOCK = threading.Lock()


@numba.njit(cache=True)
def _decode(log_prob, ptr, idx, log_w, log_floor, log_p_init):  # pragma: no cover
  n_steps, n_states = log_prob.shape
  back = np.zeros((n_steps, n_states), dtype=np.int32)
  prev = log_prob[0] + log_p_init
  cur = np.empty(n_states, dtype=np.float64)
  for t in range(1, n_steps):
    # Any state reaches any other at the floor weight: the best of those is the
    # overall best previous state (it loses to every non-zero transition into j).
    best_all = 0
    for i in range(1, n_states):
      if prev[i] > prev[best_all]:
        best_all = i
    floor = prev[best_all] + log_floor
    for j in range(n_states):
      best, arg = floor, best_all
      for k in range(ptr[j], ptr[j + 1]):
        i = idx[k]
        v = prev[i] + log_w[k]
        if v > best or (v == best and i < arg):  # first maximum, as numpy's argmax
          best, arg = v, i
      cur[j] = best + log_prob[t, j]
      back[t, j] = arg
    prev, cur = cur, prev
  states = np.zeros(n_steps, dtype=np.int64)
  last = 0
  for i in range(1, n_states):
    if prev[i] > prev[last]:
      last = i
  states[n_steps - 1] = last
  for t in range(n_steps - 2, -1, -1):
    states[t] = back[t + 1, states[t + 1]]
  return states, prev[last]


def viterbi(prob: np.ndarray, transition: np.ndarray, *, p_init=None, return_logp=False):
  """`librosa.sequence.viterbi` (same arguments, same checks' effect, same results) in
  time proportional to the transition matrix's non-zero entries."""
  from librosa import util
  prob = np.asarray(prob)
  n_states, n_steps = prob.shape[-2:]
  if transition.shape != (n_states, n_states):
    raise ValueError(f'transition.shape={transition.shape}, must be {(n_states, n_states)}')
  epsilon = util.tiny(prob)
  if p_init is None:
    p_init = np.full(n_states, 1.0 / n_states)
  # In-edges of each state j: sources i with transition[i, j] > 0.
  cols = np.ascontiguousarray(transition.T)
  nz = cols > 0
  ptr = np.concatenate([[0], np.cumsum(nz.sum(axis=1))]).astype(np.int64)
  idx = np.nonzero(nz)[1].astype(np.int64)
  log_w = np.log(cols[nz] + epsilon)
  log_floor = float(np.log(epsilon))
  log_p_init = np.log(p_init + epsilon)
  flat = np.log(prob + epsilon).reshape(-1, n_states, n_steps)
  states = np.empty((flat.shape[0], n_steps), dtype=np.uint16)
  logp = np.empty((flat.shape[0], 1), dtype=np.float64)
  for b in range(flat.shape[0]):
    s, lp = _decode(np.ascontiguousarray(flat[b].T), ptr, idx, log_w, log_floor, log_p_init)
    states[b], logp[b] = s, lp
  states = states.reshape(prob.shape[:-2] + (n_steps,))
  logp = logp.reshape(prob.shape[:-2] + (1,)) if prob.ndim > 2 else float(logp[0, 0])
  if return_logp:
    return states, logp
  return states


@contextlib.contextmanager
def sparse_viterbi_in_librosa():
  """Within the block, librosa's own callers (`librosa.pyin`) decode with `viterbi`."""
  from librosa import sequence
  with _PATCH_LOCK:
    original = sequence.viterbi
    sequence.viterbi = viterbi
    try:
      yield
    finally:
      sequence.viterbi = original

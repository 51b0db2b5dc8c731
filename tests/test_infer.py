"""Sliding-window inference on a real RAVDESS clip with a tiny synthetic-trained model."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from tests import workflow_helpers as wh

CLIP = os.path.join('ravdess', 'Video_Speech_Actor_01', 'Actor_01', '01-01-01-01-01-01-01.mp4')


def test_windows_cover_the_clip():
  from mer_jax import infer
  w = infer.windows(3.3, 2.0, 0.5)
  assert w[0] == (0.0, 2.0) and w[-1] == (1.3, 3.3) and len(w) == 4
  assert infer.windows(1.0, 2.0, 0.5) == [(0.0, 1.0)]


def test_timeline_on_ravdess_clip(shared_data, tiny_data_dir, tmp_path_factory):
  path = os.path.join(shared_data, CLIP)
  if not os.path.exists(path):
    pytest.skip(f'{path} not found')
  from mer_jax import infer
  workdir = wh.trained_run(str(tmp_path_factory.getbasetemp() / 'workflow'), tiny_data_dir)
  res = infer.run_timeline(workdir, path, hop_s=0.5, out_dir=str(tmp_path_factory.mktemp('tl')))
  assert 3.2 < res['duration_s'] < 3.4
  rows = res['windows']
  assert rows[0]['start_s'] == 0.0 and rows[-1]['end_s'] == pytest.approx(res['duration_s'])
  probs = np.array([[r[f'p_{n}'] for n in res['labels']] for r in rows])
  assert probs.shape == (len(rows), 6) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
  with open(os.path.join(res['out_dir'], 'timeline.csv')) as f:
    assert len(list(csv.DictReader(f))) == len(rows)
  assert os.path.getsize(os.path.join(res['out_dir'], 'timeline.png')) > 1000
  assert res['timing']['total_ms_median'] > 0

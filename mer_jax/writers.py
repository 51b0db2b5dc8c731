"""Run logs: a JSON-lines file, TensorBoard summaries and a progress display."""

from __future__ import annotations

import json
from mer_jax.contract import logger as logging
import os
import sys
import time
from typing import Optional

import numpy as np


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')
    try:
      from flax.metrics import tensorboard
      self._tb = tensorboard.SummaryWriter(os.path.join(workdir, 'tensorboard'))
    except Exception as e:  # TensorBoard is optional for a run to proceed
      logging.warning('TensorBoard summaries disabled: %s', e)

  def write(self, step: int, scalars: dict, kind: str = 'train'):
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()
             if isinstance(v, (int, float, np.number)) or getattr(v, 'ndim', None) == 0}
    self._jsonl.write(json.dumps({'kind': kind, 'step': int(step), 'time': time.time(), **clean}) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in clean.items():
        self._tb.scalar(f'{kind}/{k}', v, step)
      self._tb.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


class Progress:
  """A tqdm bar on a terminal, periodic log lines with rate and ETA otherwise."""

  def __init__(self, total: int, initial: int, enabled: bool = True, desc: str = 'train'):
    self.total, self.step = total, initial
    self._t0, self._s0 = time.time(), initial
    self._bar = None
    self.enabled = enabled
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, desc=desc, unit='step', dynamic_ncols=True)

  def rate(self) -> float:
    dt = time.time() - self._t0
    return (self.step - self._s0) / dt if dt > 0 else 0.0

  def update(self, step: int, postfix: Optional[dict] = None, log: bool = False):
    n, self.step = step - self.step, step
    if self._bar is not None:
      self._bar.update(n)
      if postfix:
        self._bar.set_postfix({k: f'{v:.4g}' for k, v in postfix.items()}, refresh=False)
    elif self.enabled and log:
      rate = self.rate()
      eta = (self.total - step) / rate if rate > 0 else float('nan')
      extra = ' '.join(f'{k}={v:.4g}' for k, v in (postfix or {}).items())
      logging.info('step %d/%d  %.2f steps/s  ETA %s  %s', step, self.total, rate,
                   _fmt_eta(eta), extra)

  def close(self):
    if self._bar is not None:
      self._bar.close()


def _fmt_eta(seconds: float) -> str:
  if not np.isfinite(seconds):
    return '?'
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h:d}:{m:02d}:{s:02d}'

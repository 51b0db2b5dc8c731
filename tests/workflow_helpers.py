"""Helpers shared by the research-workflow tests: one tiny trained run, reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'avt_ca.py') + ':tiny'


def run_module(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
  """`python -m module args` from the repository root; raises with its output on failure."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f'{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                         f'{proc.stderr[-5000:]}')
  return proc


def trained_run(base_dir: str, data_dir: str, max_steps: int = 6) -> str:
  """A tiny AVT-CA run trained in-process once per `base_dir`; returns its workdir."""
  workdir = os.path.join(base_dir, 'tiny_run')
  if os.path.exists(os.path.join(workdir, 'results.json')):
    return workdir
  from configs import avt_ca
  from mer_jax import train
  cfg = avt_ca.get_config('tiny')
  cfg.dataset.data_dir = data_dir
  cfg.train.max_steps = max_steps
  train.train_and_evaluate(cfg, workdir)
  return workdir


def load_json(path: str):
  with open(path) as f:
    return json.load(f)

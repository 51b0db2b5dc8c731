"""Where a training run's wall time goes besides the train step.

Runs `mer_jax.main` unchanged, with timers around the training loop's parts:
waiting for device results (`to_host`: train steps, which run asynchronously, and
validation batches), validation passes, checkpoint writes, the input pipeline and
the final evaluation. Parts overlap (a validation pass includes its waits and
input batches). Prints one line per part with its count and share of the run.

  python -m experiments.loop_profile --config=configs/avt_ca.py:synthetic \
      --workdir=/tmp/lp --config.train.num_epochs=6
"""

from __future__ import annotations

import atexit
import collections
import functools
import time

from absl import app

from mer_jax import main as mer_main

_TOTAL = collections.Counter()
_COUNT = collections.Counter()


def _timed(owner, name: str, key: str) -> None:
  fn = getattr(owner, name)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    t = time.perf_counter()
    try:
      return fn(*args, **kwargs)
    finally:
      _TOTAL[key] += time.perf_counter() - t
      _COUNT[key] += 1
  setattr(owner, name, wrapper)


def install() -> None:
  from data_pipelines import input_pipeline
  from mer_jax import checkpointing, evaluators, sharding, train
  _timed(train, 'train_and_evaluate', 'whole run (train_and_evaluate)')
  _timed(sharding, 'to_host', 'waiting for device results (to_host)')
  _timed(evaluators, 'score', 'validation passes (evaluators.score)')
  _timed(evaluators, 'run_all', 'final evaluators on the best checkpoint')
  _timed(checkpointing.Checkpoints, 'save_latest', "checkpoint writes, 'latest'")
  _timed(checkpointing.Checkpoints, 'save_best', "checkpoint writes, 'best'")
  _timed(input_pipeline, 'train_dataset', 'building the epoch pipeline')
  as_numpy = input_pipeline.as_numpy

  def timed_as_numpy(ds):
    it = as_numpy(ds)

    def gen():
      while True:
        t = time.perf_counter()
        try:
          x = next(it)
        except StopIteration:
          return
        _TOTAL['waiting for input batches (train and eval)'] += time.perf_counter() - t
        _COUNT['waiting for input batches (train and eval)'] += 1
        yield x
    return gen()
  input_pipeline.as_numpy = timed_as_numpy


def report() -> str:
  whole = max(_TOTAL.get('whole run (train_and_evaluate)', 0.0), 1e-9)
  lines = [f"{'part':45s} {'s':>8s} {'count':>6s} {'share':>6s}"]
  for key, total in sorted(_TOTAL.items(), key=lambda kv: -kv[1]):
    lines.append(f'{key:45s} {total:8.1f} {_COUNT[key]:6d} {100 * total / whole:5.0f}%')
  return '\n'.join(lines)


if __name__ == '__main__':
  install()
  atexit.register(lambda: print(report(), flush=True))
  app.run(mer_main.main)

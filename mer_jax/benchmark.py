"""Training-step throughput of a config at its example shapes, without data.

  python -m mer_jax.benchmark --config=configs/avt_ca.py:paper_shapes
  python -m mer_jax.benchmark --config=configs/avt_ca.py:paper_shapes --impls=xla,matmul

Prints parameter count, compile time, steady-state step time (median and
spread over repeats), samples/s and XLA's memory analysis of the train step.
`--save=FILE` writes the figures as JSON; `--compare=FILE` prints a saved run
beside this one.
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np

from mer_jax import assembly, contract as bc, sharding

_NOT_INPUTS = ('label', 'mask', 'valid')


def random_batch(config, batch_size: int, seed: int = 0) -> dict:
  """Random inputs of the run's input shapes (labels over all classes)."""
  return assembly.example_batch(config, batch_size, random=True, seed=seed)


def input_shapes(batch: dict) -> dict:
  return {k: list(v.shape[1:]) for k, v in batch.items()
          if k not in _NOT_INPUTS and not k.endswith('_valid')}


def benchmark_train_step(config, batch_size: int | None = None, repeats: int = 5,
                         warmup: int = 1, run=None) -> dict:
  """Compiles and times the jitted data-parallel train step of `config`.

  The result's 'final_state' (popped by callers that reuse it) is the state
  after the timed steps.
  """
  batch_size = batch_size or config.input.batch_size
  run = run or assembly.build_run(config)
  host_batch = random_batch(config, batch_size)
  state = run.state
  batch = sharding.place_batch(host_batch, run.mesh)
  t0 = time.perf_counter()
  compiled = run.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  bc.release_freed_memory()
  mem = compiled.memory_analysis()
  times = []
  for i in range(warmup + repeats):
    t0 = time.perf_counter()
    state, out = compiled(state, batch)
    jax.block_until_ready(out['loss'])
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  # Evaluation forward pass (no gradients, BatchNorm running statistics).
  repl, data = sharding.replicated(run.mesh), sharding.batch_sharded(run.mesh)
  eval_fn = jax.jit(lambda st, b: st.apply_fn(assembly.eval_variables(st), b,
                                              train=False)['logits'],
                    in_shardings=(repl, data), out_shardings=repl)
  jax.block_until_ready(eval_fn(state, batch))
  bc.release_freed_memory()
  eval_times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(eval_fn(state, batch))
    eval_times.append(time.perf_counter() - t0)
  result = {
      'model': config.model.name,
      'impl': config.model.get('impl', '-'),
      'batch_size': batch_size,
      'input_shapes': input_shapes(host_batch),
      'num_params': int(sum(x.size for x in jax.tree.leaves(state.params))),
      'compile_s': compile_s,
      'step_s_median': med,
      'step_s_min': min(times),
      'step_s_max': max(times),
      'samples_per_s': batch_size / med,
      'eval_forward_s_median': statistics.median(eval_times),
      'peak_rss_gib': _peak_rss_gib(),
      'devices': f'{jax.device_count()}x {jax.devices()[0].device_kind}',
      'loss_finite': bool(np.isfinite(float(out['loss']))),
      'final_state': state,
  }
  if mem is not None:
    for field in ('argument_size_in_bytes', 'output_size_in_bytes', 'temp_size_in_bytes',
                  'generated_code_size_in_bytes'):
      result[field] = int(getattr(mem, field, 0) or 0)
  return result


def _peak_rss_gib() -> float:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def format_rows(rows: list[dict]) -> str:
  cols = [('model', 'model', '{}'), ('impl', 'impl', '{}'), ('batch', 'batch_size', '{}'),
          ('params', 'num_params', '{:,}'), ('compile s', 'compile_s', '{:.1f}'),
          ('step s (median)', 'step_s_median', '{:.3f}'),
          ('step s (min-max)', None, None), ('samples/s', 'samples_per_s', '{:.2f}'),
          ('eval fwd s', 'eval_forward_s_median', '{:.3f}'),
          ('XLA temp MiB', 'temp_size_in_bytes', None), ('peak RSS GiB', 'peak_rss_gib', '{:.2f}')]
  head = '| ' + ' | '.join(c[0] for c in cols) + ' |'
  lines = [head, '|' + '---|' * len(cols)]
  for r in rows:
    cells = []
    for name, key, fmt in cols:
      if name == 'step s (min-max)':
        cells.append(f"{r['step_s_min']:.3f}-{r['step_s_max']:.3f}")
      elif name == 'XLA temp MiB':
        cells.append(f"{r.get('temp_size_in_bytes', 0) / 2**20:.0f}")
      else:
        cells.append(fmt.format(r[key]))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv):
  from absl import flags
  from mer_jax import contract as log
  log.quiet_libraries()
  FLAGS = flags.FLAGS
  config = FLAGS.config
  rows = []
  for impl in [s for s in FLAGS.impls.split(',') if s] or [config.model.get('impl', 'auto')]:
    cfg = config.copy_and_resolve_references()
    if 'impl' in cfg.model:
      cfg.model.impl = impl
    row = benchmark_train_step(cfg, FLAGS.batch_size or None, FLAGS.repeats)
    row.pop('final_state')
    rows.append(row)
  if FLAGS.compare:
    with open(FLAGS.compare) as f:
      old = json.load(f)
    for r in old:
      r['model'] = f"{r['model']} (saved)"
    rows = old + rows
  print(f"devices: {rows[-1]['devices']}; inputs per example: {rows[-1]['input_shapes']}")
  print(format_rows(rows))
  if FLAGS.save:
    with open(FLAGS.save, 'w') as f:
      json.dump([r for r in rows if not r['model'].endswith('(saved)')], f, indent=2)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Config file with a preset.', lock_config=False)
  flags.DEFINE_integer('batch_size', 0, 'Batch size (default: the config\'s).')
  flags.DEFINE_integer('repeats', 5, 'Timed steps after one warm-up step.')
  flags.DEFINE_string('impls', '', "Comma-separated conv implementations to compare, e.g. 'xla,matmul'.")
  flags.DEFINE_string('save', '', 'Write the figures to this JSON file.')
  flags.DEFINE_string('compare', '', 'A JSON file from --save to print beside this run.')
  flags.mark_flags_as_required(['config'])
  app.run(main)

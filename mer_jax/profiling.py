"""Compile-time and run-time profile of a config's train and eval steps, without data.

  python -m mer_jax.main --mode=profile --config=configs/avt_ca.py:paper_shapes \
      --workdir=/tmp/prof [--profile_batch_size=8] [--profile_trace] [--profile_hlo]

Inputs are random batches of `config.input.example_shapes`. For each step:
compile time, XLA's cost analysis (FLOPs and bytes accessed per step), its
memory analysis (argument, output and temporary bytes), steady-state step time
(median, min, max over repeats), samples/s and achieved FLOP/s (cost-analysis
FLOPs / median step time; XLA counts a multiply-add as two FLOPs).

The train-step timing and memory come from `mer_jax.benchmark`; its FLOPs come
from lowering the same step on abstract shapes, which costs no second
compile. `--profile_trace` writes a jax.profiler trace of a few train and eval
steps (open in TensorBoard's profile tab or Perfetto) and `--profile_hlo` the
optimised HLO text of both steps; these compile the train step once more.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import numpy as np

from mer_jax import benchmark, models, optim, sharding, train

_MEM_FIELDS = ('argument_size_in_bytes', 'output_size_in_bytes', 'temp_size_in_bytes',
               'generated_code_size_in_bytes')


def _cost(analysis) -> dict:
  if isinstance(analysis, (list, tuple)):  # older jax returns one dict per computation
    analysis = analysis[0] if analysis else {}
  analysis = analysis or {}
  return {'flops': float(analysis.get('flops', 0.0)),
          'bytes_accessed': float(analysis.get('bytes accessed', 0.0))}


def _memory(compiled) -> dict:
  mem = compiled.memory_analysis()
  return {f: int(getattr(mem, f, 0) or 0) for f in _MEM_FIELDS} if mem is not None else {}


def _time(fn, repeats: int, warmup: int) -> list[float]:
  times = []
  for i in range(warmup + repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  return times


class _Setup:
  """Model, optimiser, state and a placed random batch for `config`."""

  def __init__(self, config, batch_size: int):
    self.config = config
    self.mesh = sharding.make_mesh()
    self.model = models.build(config.model, config.dataset.num_classes)
    self.entry = models.get(config.model.name)
    self.tx, self.schedule = optim.make_optimizer(config.optim, 100, 10_000)
    self.host_batch = benchmark.random_batch(config, batch_size)
    self.masked = tuple(s for s in str(config.get('mask_modalities', '')).split(',') if s)
    repl, data = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
    self.train_jit = jax.jit(
        train.make_train_step(self.entry.loss_fn, config.loss, self.masked, self.schedule),
        in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=(0,))
    self.eval_jit = jax.jit(
        train.make_eval_step(self.entry.loss_fn, config.loss, self.masked,
                             config.dataset.num_classes),
        in_shardings=(repl, data), out_shardings=repl)

  def abstract_state(self):
    return jax.eval_shape(lambda: train.create_train_state(
        self.config, self.model, self.host_batch, self.tx, self.mesh))

  def state(self):
    return train.create_train_state(self.config, self.model, self.host_batch, self.tx, self.mesh)

  def batch(self):
    return sharding.place_batch(self.host_batch, self.mesh)


def _abstract_batch(host_batch):
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host_batch.items()}


def profile_config(config, batch_size: int | None = None, repeats: int = 5, warmup: int = 1,
                   out_dir: str = '', trace: bool = False, hlo: bool = False) -> list[dict]:
  """Two rows of figures, for the train step and the eval step of `config`."""
  batch_size = batch_size or config.input.batch_size
  setup = _Setup(config, batch_size)

  # Train step: timing and memory from the benchmark, FLOPs from an abstract lowering.
  bench = benchmark.benchmark_train_step(config, batch_size, repeats=repeats, warmup=warmup)
  lowered = setup.train_jit.lower(setup.abstract_state(), _abstract_batch(setup.host_batch))
  train_row = {
      'model': config.model.name, 'step': 'train', 'batch_size': batch_size,
      'num_params': bench['num_params'], 'compile_s': bench['compile_s'],
      'step_s_median': bench['step_s_median'], 'step_s_min': bench['step_s_min'],
      'step_s_max': bench['step_s_max'], 'samples_per_s': bench['samples_per_s'],
      'input_shapes': bench['input_shapes'], 'devices': bench['devices'],
      **{f: bench.get(f, 0) for f in _MEM_FIELDS}, **_cost(lowered.cost_analysis())}

  # Eval step: compiled and timed here.
  state, batch = setup.state(), setup.batch()
  t0 = time.perf_counter()
  eval_compiled = setup.eval_jit.lower(state, batch).compile()
  eval_compile_s = time.perf_counter() - t0
  times = _time(lambda: eval_compiled(state, batch), repeats, warmup)
  med = statistics.median(times)
  eval_row = {
      'model': config.model.name, 'step': 'eval', 'batch_size': batch_size,
      'num_params': train_row['num_params'], 'compile_s': eval_compile_s,
      'step_s_median': med, 'step_s_min': min(times), 'step_s_max': max(times),
      'samples_per_s': batch_size / med, 'input_shapes': train_row['input_shapes'],
      'devices': train_row['devices'], **_memory(eval_compiled),
      **_cost(eval_compiled.cost_analysis())}
  rows = [train_row, eval_row]
  for r in rows:
    r['flops_per_s'] = r['flops'] / r['step_s_median'] if r['step_s_median'] > 0 else 0.0

  if (trace or hlo) and out_dir:
    os.makedirs(out_dir, exist_ok=True)
    train_compiled = setup.train_jit.lower(state, batch).compile()
    if hlo:
      for name, c in (('train_step', train_compiled), ('eval_step', eval_compiled)):
        path = os.path.join(out_dir, f'{config.model.name}_{name}.optimized.hlo.txt')
        with open(path, 'w') as f:
          f.write(c.as_text())
        rows[0 if name == 'train_step' else 1]['hlo_path'] = path
    if trace:
      trace_dir = os.path.join(out_dir, 'trace')
      with jax.profiler.trace(trace_dir):
        for i in range(3):
          with jax.profiler.StepTraceAnnotation('train', step_num=i):
            state, out = train_compiled(state, batch)
            jax.block_until_ready(out['loss'])
        for i in range(3):
          with jax.profiler.StepTraceAnnotation('eval', step_num=i):
            jax.block_until_ready(eval_compiled(state, batch))
      for r in rows:
        r['trace_dir'] = trace_dir
  return rows


def cost_only(config, batch_size: int | None = None) -> list[dict]:
  """FLOPs and bytes of the train and eval steps from lowering on abstract shapes.

  Nothing is compiled or run, so it takes seconds even at shapes a CPU cannot
  train at; timing and memory fields are absent.
  """
  batch_size = batch_size or config.input.batch_size
  setup = _Setup(config, batch_size)
  state = setup.abstract_state()
  batch = _abstract_batch(setup.host_batch)
  params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
  rows = []
  for name, fn in (('train', setup.train_jit), ('eval', setup.eval_jit)):
    rows.append({'model': config.model.name, 'step': name, 'batch_size': batch_size,
                 'num_params': params, 'input_shapes': {
                     k: list(v.shape[1:]) for k, v in setup.host_batch.items()
                     if k not in ('label', 'mask', 'valid')},
                 'devices': f'{jax.device_count()}x {jax.devices()[0].device_kind}',
                 **_cost(fn.lower(state, batch).cost_analysis())})
  return rows


def _si(x: float, unit: str) -> str:
  for scale, prefix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(x) >= scale:
      return f'{x / scale:.2f} {prefix}{unit}'
  return f'{x:.0f} {unit}'


COLUMNS = ('paper', 'model', 'step', 'batch', 'params', 'compile s', 'FLOPs/step',
           'bytes accessed', 'args MiB', 'out MiB', 'temp MiB', 'step ms median (min-max)',
           'samples/s', 'achieved FLOP/s')


def format_table(rows: list[dict]) -> str:
  """Markdown table of `profile_config` rows (a 'paper' key is shown when present)."""
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  mib = lambda r, k: f'{r.get(k, 0) / 2**20:.1f}'
  for r in rows:
    if 'error' in r:
      lines.append(f"| {r.get('paper', '')} | {r.get('model', '')} | - | "
                   f"{'| ' * (len(COLUMNS) - 4)}{r['error'][:80]} |")
      continue
    timed = 'step_s_median' in r
    cells = [r.get('paper', ''), r['model'], r['step'], str(r['batch_size']),
             f"{r['num_params']:,}", f"{r['compile_s']:.1f}" if timed else '-',
             _si(r['flops'], 'FLOP'), _si(r['bytes_accessed'], 'B')]
    if timed:
      cells += [mib(r, 'argument_size_in_bytes'), mib(r, 'output_size_in_bytes'),
                mib(r, 'temp_size_in_bytes'),
                f"{1e3 * r['step_s_median']:.1f} ({1e3 * r['step_s_min']:.1f}-"
                f"{1e3 * r['step_s_max']:.1f})", f"{r['samples_per_s']:.1f}",
                _si(r['flops_per_s'], 'FLOP/s')]
    else:
      cells += ['-'] * 6
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def profile_main(config, workdir: str, batch_size: int = 0, repeats: int = 5,
                 trace: bool = False, hlo: bool = False) -> list[dict]:
  """`--mode=profile`: prints the table and writes workdir/profile.json."""
  out_dir = os.path.join(workdir, 'profile')
  rows = profile_config(config, batch_size or None, repeats, out_dir=out_dir, trace=trace,
                        hlo=hlo)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'profile.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  print(f"devices: {rows[0]['devices']}; inputs per example: {rows[0]['input_shapes']}")
  print(format_table(rows))
  return rows

"""Compile-time and run-time profile of a config's train and eval steps, without data.

  python -m mer_jax.main --mode=profile --config=configs/avt_ca.py:paper_shapes \
      --workdir=/tmp/prof [--profile_batch_size=8] [--profile_trace] [--profile_hlo]

Inputs are random batches of the run's input shapes (`assembly.example_shapes`:
the dataset builder's, or `config.input.example_shapes`). For each step:
compile time, XLA's cost analysis (FLOPs and bytes accessed per step), its
memory analysis (argument, output and temporary bytes), steady-state step time
(median, min, max over repeats), samples/s and achieved FLOP/s (cost-analysis
FLOPs / median step time; XLA counts a multiply-add as two FLOPs). The train row
also times the step's forward pass alone (train mode, loss only) and gives
'step / fwd': the whole train step (forward, backward and update) over that
forward, about 3 where the backward costs the usual two forwards; 'bwd / fwd':
what the step spends beyond its forward (backward and update) over the forward,
step / fwd - 1.

The run is assembled once (`assembly.build_run`); the train-step timing and
memory come from `mer_jax.benchmark` on that run, its FLOPs from lowering the
same step on abstract shapes, which costs no second compile. `--profile_trace` writes a jax.profiler trace of a few train and eval
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

from mer_jax import assembly, benchmark, sharding

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


def _abstract_batch(host_batch):
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in host_batch.items()}


def _abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(
      x, 'sharding', None)), tree)


def profile_config(config, batch_size: int | None = None, repeats: int = 5, warmup: int = 1,
                   out_dir: str = '', trace: bool = False, hlo: bool = False) -> list[dict]:
  """Two rows of figures, for the train step and the eval step of `config`."""
  batch_size = batch_size or config.input.batch_size
  run = assembly.build_run(config)
  host_batch = assembly.example_batch(config, batch_size, random=True)

  # Train step: FLOPs from an abstract lowering, timing and memory from the benchmark.
  lowered = run.train_step.lower(_abstract(run.state), _abstract_batch(host_batch))
  train_cost = _cost(lowered.cost_analysis())
  bench = benchmark.benchmark_train_step(config, batch_size, repeats=repeats, warmup=warmup,
                                         run=run)
  train_row = {
      'model': config.model.name, 'step': 'train', 'batch_size': batch_size,
      'num_params': bench['num_params'], 'compile_s': bench['compile_s'],
      'step_s_median': bench['step_s_median'], 'step_s_min': bench['step_s_min'],
      'step_s_max': bench['step_s_max'], 'samples_per_s': bench['samples_per_s'],
      'input_shapes': bench['input_shapes'], 'devices': bench['devices'],
      **{f: bench.get(f, 0) for f in _MEM_FIELDS}, **train_cost}

  # Eval step: compiled and timed here.
  state, batch = bench.pop('final_state'), sharding.place_batch(host_batch, run.mesh)
  t0 = time.perf_counter()
  eval_compiled = run.eval_step().lower(state, batch).compile()
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
  fwd_compiled = run.train_forward().lower(state, batch).compile()
  fwd_times = _time(lambda: fwd_compiled(state, batch), repeats, warmup)
  train_row['fwd_s_median'] = statistics.median(fwd_times)
  train_row['step_over_fwd'] = train_row['step_s_median'] / train_row['fwd_s_median']
  rows = [train_row, eval_row]
  for r in rows:
    r['flops_per_s'] = r['flops'] / r['step_s_median'] if r['step_s_median'] > 0 else 0.0

  if (trace or hlo) and out_dir:
    os.makedirs(out_dir, exist_ok=True)
    train_compiled = run.train_step.lower(state, batch).compile()
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
  run = assembly.build_run(config, abstract=True)
  host_batch = assembly.example_batch(config, batch_size)
  state = run.state
  batch = _abstract_batch(host_batch)
  params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
  rows = []
  for name, fn in (('train', run.train_step), ('eval', run.eval_step())):
    rows.append({'model': config.model.name, 'step': name, 'batch_size': batch_size,
                 'num_params': params, 'input_shapes': benchmark.input_shapes(host_batch),
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
           'samples/s', 'achieved FLOP/s', 'step / fwd', 'bwd / fwd')


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
                _si(r['flops_per_s'], 'FLOP/s'),
                f"{r['step_over_fwd']:.1f}" if 'step_over_fwd' in r else '-',
                f"{r['step_over_fwd'] - 1:.1f}" if 'step_over_fwd' in r else '-']
    else:
      cells += ['-'] * 8
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def format_comparison(before: list[dict], after: list[dict],
                      labels: tuple[str, str] = ('before', 'after')) -> str:
  """Markdown table of two profile runs side by side, matched on (paper, model, step)."""
  key = lambda r: (r.get('paper', ''), r.get('model', ''), r.get('step', ''))
  old = {key(r): r for r in before if 'step_s_median' in r}
  a, b = labels
  lines = [f'| paper | model | step | batch | {a} ms | {b} ms | {b} / {a} | {a} bwd/fwd | '
           f'{b} bwd/fwd | {a} temp MiB | {b} temp MiB |', '|' + '---|' * 11]

  def cells(r):
    if r is None:
      return ['-'] * 3
    fwd = f"{r['step_over_fwd'] - 1:.1f}" if 'step_over_fwd' in r else '-'
    return [f"{1e3 * r['step_s_median']:.1f}", fwd,
            f"{r.get('temp_size_in_bytes', 0) / 2**20:.1f}"]

  for r in after:
    if 'step_s_median' not in r:
      continue
    o = old.get(key(r))
    (ms_a, fwd_a, tmp_a), (ms_b, fwd_b, tmp_b) = cells(o), cells(r)
    ratio = f"{r['step_s_median'] / o['step_s_median']:.2f}" if o else '-'
    lines.append('| ' + ' | '.join([r.get('paper', ''), r['model'], r['step'],
                                     str(r['batch_size']), ms_a, ms_b, ratio, fwd_a, fwd_b,
                                     tmp_a, tmp_b]) + ' |')
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

"""Where the backward pass spends its time: forward vs forward+backward, whole model and blocks.

  python -m experiments.backward_profile --config=configs/avt_ca.py:paper_shapes
  python -m experiments.backward_profile --config=configs/avt_ca.py:paper_shapes --blocks \
      --impls=xla,matmul --save=/tmp/bp.json
  python -m experiments.backward_profile --config=configs/avt_ca.py:paper_shapes --compare=/tmp/bp.json

Times the jitted model's forward (train mode, loss only) and `value_and_grad` of
the loss with respect to the parameters, at the config's `input.example_shapes`
on random batches. `--blocks` also times the frame encoder's building blocks at
the shapes they see inside the model (all frames of the batch). `--trace_top=N`
traces one fwd+bwd step (jax.profiler) and prints the N costliest XLA ops and
module paths. Prints a markdown table; `--save` writes JSON, `--compare` puts a
saved run beside this one (ratio column = bwd / fwd within a row).
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_CPU_TIME = [False]


def _time(fn, args, repeats: int) -> tuple[float, float]:
  """(compile s, median run s) of a jitted function.

  Run time is this process's CPU time (all threads) when `--cpu_time`: on a
  shared machine wall time mostly measures the other jobs.
  """
  clock = time.process_time if _CPU_TIME[0] else time.perf_counter
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = clock()
    jax.block_until_ready(compiled(*args))
    times.append(clock() - t0)
  return compile_s, statistics.median(times)


def _peak_rss_gib() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _model_loss(config, batch_size: int):
  from mer_jax import benchmark, models
  model = models.build(config.model, config.dataset.num_classes)
  entry = models.get(config.model.name)
  batch = {k: jnp.asarray(v) for k, v in benchmark.random_batch(config, batch_size).items()}
  variables = model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
                         {k: v[:1] for k, v in batch.items()}, train=False)
  rest = {k: v for k, v in variables.items() if k != 'params'}

  def loss(p, b):
    out, _ = model.apply({'params': p, **rest}, b, train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.PRNGKey(0)})
    return entry.loss_fn(out, b, config.loss)[0]

  return loss, variables['params'], batch


def profile_model(config, batch_size: int, repeats: int) -> dict:
  from mer_jax import models
  loss, params, batch = _model_loss(config, batch_size)
  model = models.build(config.model, config.dataset.num_classes)
  stats = jax.tree.map(jnp.zeros_like, model.init(
      {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
      {k: v[:1] for k, v in batch.items()}, train=False).get('batch_stats', {}))

  def eval_fwd(p, b):
    return model.apply({'params': p, 'batch_stats': stats}, b, train=False)['logits']

  c_f, t_f = _time(loss, (params, batch), repeats)
  c_b, t_b = _time(jax.value_and_grad(loss), (params, batch), repeats)
  _, t_e = _time(eval_fwd, (params, batch), repeats)
  mem = jax.jit(jax.value_and_grad(loss)).lower(params, batch).compile().memory_analysis()
  return {'name': f'{config.model.name} (whole model, batch {batch_size})',
          'impl': config.model.get('impl', '-'), 'remat': config.model.get('remat', '-'),
          'dtype': config.model.get('dtype', 'float32'),
          'fwd_s': t_f, 'fwd_bwd_s': t_b, 'eval_fwd_s': t_e,
          'compile_s': c_f + c_b,
          'temp_mib': (getattr(mem, 'temp_size_in_bytes', 0) or 0) / 2**20 if mem else None}


def _blocks(config, batch_size: int, impl: str):
  """(name, module, input, call kwargs) at the shapes the frame encoder sees."""
  from mer_jax import assembly
  from mer_jax.models import encoders, layers
  shapes = assembly.example_shapes(config)
  if 'video' not in shapes:
    return []
  t, h, w, _ = shapes['video'][-4:] if len(shapes['video']) == 4 else (1,) + tuple(shapes['video'])
  n = batch_size * t
  m = config.model
  stem = m.get('frame_stem_features', 29)
  stages = tuple(m.get('frame_stage_features', (116, 232)))
  exp = m.get('frame_expansion', 2)
  h2, w2 = -(-h // 2), -(-w // 2)
  h4, w4 = -(-h2 // 2), -(-w2 // 2)
  rng = np.random.default_rng(0)
  r = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))
  kw = {'impl': impl}
  out = [
      ('stem conv 3x3/2 + BN + ReLU', layers.ConvBNAct(stem, (3, 3), strides=2, **_stem_kw(impl)),
       r(n, h, w, 3), {'train': True, '_no_dx': True}),
      ('max-pool 3x3/2', _Fn(lambda x: layers.max_pool_2d(x, 3, 2, impl=impl)),
       r(n, h2, w2, stem), {}),
      ('depthwise 3x3/1', layers.DepthwiseConv(3, 1, **kw), r(n, h4, w4, stem * exp), {}),
      ('depthwise 3x3/2', layers.DepthwiseConv(3, 2, **kw), r(n, h4, w4, stem * exp), {}),
      ('channel x spatial attention', encoders.ChannelSpatialAttention(**kw), r(n, h4, w4, stem), {}),
      ('local feature extractor', encoders.LocalFeatureExtractor(stem, m.get('local_grid', 2), **kw),
       r(n, h4, w4, stem), {'train': True}),
      (f'inverted residual {stem}->{stages[0]}/2',
       layers.InvertedResidual(stages[0], 2, exp, **kw), r(n, h4, w4, stem), {'train': True}),
  ]
  if len(stages) > 1:
    out.append((f'inverted residual {stages[0]}->{stages[1]}/2',
                layers.InvertedResidual(stages[1], 2, exp, **kw),
                r(n, -(-h4 // 2), -(-w4 // 2), stages[0]), {'train': True}))
  return out


def _stem_kw(impl):
  import inspect
  from mer_jax.models import layers
  return {'impl': impl} if 'impl' in inspect.signature(layers.ConvBNAct).parameters else {}


class _Fn(nn.Module):
  fn: object

  def __call__(self, x):
    return self.fn(x)


def profile_blocks(config, batch_size: int, impl: str, repeats: int) -> list[dict]:
  rows = []
  for name, module, x, kwargs in _blocks(config, batch_size, impl):
    kwargs = dict(kwargs)
    argnums = 0 if kwargs.pop('_no_dx', False) else (0, 1)  # the stem's input is data
    variables = module.init(jax.random.PRNGKey(0), x, **kwargs)
    params = variables.get('params', {})
    rest = {k: v for k, v in variables.items() if k != 'params'}
    mutable = ['batch_stats'] if 'batch_stats' in rest else False

    def loss(p, x, module=module, rest=rest, mutable=mutable, kwargs=kwargs):
      out = module.apply({'params': p, **rest}, x, mutable=mutable, **kwargs)
      out = out[0] if mutable else out
      return jnp.sum(out * out) * 1e-6

    _, t_f = _time(loss, (params, x), repeats)
    _, t_b = _time(jax.value_and_grad(loss, argnums=argnums), (params, x), repeats)
    rows.append({'name': f'{name} {list(x.shape)}', 'impl': impl, 'remat': '-',
                 'dtype': 'float32', 'fwd_s': t_f, 'fwd_bwd_s': t_b})
  return rows


def _op_paths(hlo: str) -> dict[str, str]:
  """HLO instruction name -> model path (op_name metadata). A fusion without its own
  metadata (XLA:CPU's library-call fusions) takes the first path inside its computation."""
  where, calls, first_in = {}, {}, {}
  comp = None
  for line in hlo.splitlines():
    head = re.match(r'\s*(?:ENTRY )?%?([\w.\-]+) [(.*{]?.*\{\s*$', line)
    if head and ' = ' not in line:
      comp = head.group(1)
      continue
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = ', line)
    if not m:
      continue
    path = re.search(r'op_name="([^"]*)"', line)
    if path:
      where.setdefault(m.group(1), path.group(1))
      if comp is not None:
        first_in.setdefault(comp, path.group(1))
    c = re.search(r'calls=%?([\w.\-]+)', line)
    if c:
      calls[m.group(1)] = c.group(1)
  for name, called in calls.items():
    if name not in where and called in first_in:
      where[name] = first_in[called]
  return where


def trace_top(config, batch_size: int, top: int, trace_dir: str = '/tmp/backward_profile_trace',
              depth: int = 3):
  """Time per XLA op of one value_and_grad step from a jax.profiler trace.

  Returns markdown: the `top` costliest ops (with the model path of their first
  instruction, `transpose(...)` meaning backward) and the totals per module path
  (`depth` levels deep; forward, backward, and a rematerialised block's recomputed
  forward apart).
  """
  import collections
  import glob
  import shutil
  from jax.profiler import ProfileData
  loss, params, batch = _model_loss(config, batch_size)
  compiled = jax.jit(jax.value_and_grad(loss)).lower(params, batch).compile()
  where = _op_paths(compiled.as_text())
  jax.block_until_ready(compiled(params, batch))
  shutil.rmtree(trace_dir, ignore_errors=True)
  with jax.profiler.trace(trace_dir):
    jax.block_until_ready(compiled(params, batch))
  pd = ProfileData.from_file(glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[0])
  per_op = collections.Counter()
  for plane in pd.planes:
    for line in plane.lines:
      if line.name == 'python':
        continue
      for ev in line.events:
        # XLA ops only: thunk-executor and Python events overlap them.
        if ev.name in where or re.match(r'[\w\-]+\.\d+$', ev.name) and not ev.name.startswith(
            ('ThunkExecutor', 'SlinkyThreadPool')):
          per_op[ev.name] += ev.duration_ns / 1e6
  total = sum(per_op.values())

  def module_of(name):
    # 'remat fwd': the forward recomputed inside the backward of a rematerialised block.
    path = where.get(name, '?')
    kind = ('remat fwd' if 'rematted_computation' in path else
            'bwd' if 'transpose(' in path else 'fwd')
    path = re.sub(r'\b(jvp|transpose|remat|checkpoint|jit)\(|\)', '', path)
    parts = [p for p in path.split('/')[1:] if p]
    top = parts[0] if parts else ''
    # Without the model's own name and the remat wrappers, and with the path the
    # backward repeats (outer/.../outer/...) said once.
    parts = [p for p in parts if p not in (top, 'checkpoint', 'rematted_computation')]
    parts = [p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1]]
    return f"{kind} {'/'.join(parts[:depth])}"

  lines = [f'ops timed: {len(per_op)}, total {total:.0f} ms', '',
           '| op | ms | % | model path |', '|---|---|---|---|']
  for name, ms in per_op.most_common(top):
    lines.append(f'| {name} | {ms:.1f} | {100 * ms / total:.1f} | `{where.get(name, "?")[:110]}` |')
  groups = collections.Counter()
  for name, ms in per_op.items():
    groups[module_of(name)] += ms
  lines += ['', '| direction, module | ms | % |', '|---|---|---|']
  for g, ms in groups.most_common(top):
    lines.append(f'| {g} | {ms:.1f} | {100 * ms / total:.1f} |')
  return '\n'.join(lines)


def format_rows(rows: list[dict]) -> str:
  lines = ['| what | impl | remat | dtype | fwd s | fwd+bwd s | bwd/fwd | eval fwd s | XLA temp MiB |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    ev = f"{r['eval_fwd_s']:.3f}" if r.get('eval_fwd_s') is not None else ''
    tm = f"{r['temp_mib']:.0f}" if r.get('temp_mib') is not None else ''
    lines.append(f"| {r['name']} | {r['impl']} | {r['remat']} | {r['dtype']} | {r['fwd_s']:.3f} | "
                 f"{r['fwd_bwd_s']:.3f} | {r['fwd_bwd_s'] / r['fwd_s']:.1f} | {ev} | {tm} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  from absl import flags
  from mer_jax import contract as log
  log.quiet_libraries()
  FLAGS = flags.FLAGS
  config = FLAGS.config
  _CPU_TIME[0] = FLAGS.cpu_time
  if FLAGS.frames:
    from mer_jax import assembly
    shapes = assembly.example_shapes(config)
    shapes['video'] = (FLAGS.frames,) + tuple(shapes['video'][1:])
    config.input.example_shapes = shapes
    # Shapes no builder declares: the profile runs on these alone (no dataset is read).
    config.dataset.name = f'{config.dataset.name} ({FLAGS.frames} frames)'
  bs = FLAGS.batch_size or config.input.batch_size
  if FLAGS.trace_top:  # a trace only, of the config as given
    print(trace_top(config, bs, FLAGS.trace_top))
    print(f'peak RSS {_peak_rss_gib():.2f} GiB')
    return
  rows = []
  for impl in [s for s in FLAGS.impls.split(',') if s] or [config.model.get('impl', 'auto')]:
    for remat in [s for s in FLAGS.remat.split(',') if s] or [None]:
      cfg = config.copy_and_resolve_references()
      from mer_jax import models
      fields = {f.name for f in dataclasses.fields(models.get(cfg.model.name).module_cls)}
      if 'impl' in fields:
        cfg.model.impl = impl
      if remat is not None and 'remat' in fields:
        cfg.model.remat = remat == 'true'
      if FLAGS.dtype:
        cfg.model.dtype = FLAGS.dtype
      if not FLAGS.blocks_only:
        rows.append(profile_model(cfg, bs, FLAGS.repeats))
        print(format_rows(rows[-1:]), flush=True)
      if FLAGS.blocks or FLAGS.blocks_only:
        if remat is None or remat == 'false':
          rows.extend(profile_blocks(cfg, bs, impl, FLAGS.repeats))
  rows[-1]['peak_rss_gib'] = _peak_rss_gib()
  if FLAGS.compare:
    with open(FLAGS.compare) as f:
      old = json.load(f)
    print('saved run:')
    print(format_rows(old))
    print('this run:')
  print(format_rows(rows))
  print(f'peak RSS {_peak_rss_gib():.2f} GiB')
  if FLAGS.save:
    with open(FLAGS.save, 'w') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Config file with a preset.', lock_config=False)
  flags.DEFINE_integer('batch_size', 0, "Batch size (default: the config's).")
  flags.DEFINE_integer('frames', 0, 'Override the number of video frames (huge presets).')
  flags.DEFINE_integer('repeats', 3, 'Timed runs after one warm-up.')
  flags.DEFINE_string('impls', '', "Comma-separated impls, e.g. 'xla,matmul'.")
  flags.DEFINE_string('remat', '', "Comma-separated 'false,true' to compare rematerialisation.")
  flags.DEFINE_string('dtype', '', "Compute dtype override ('float32' or 'bfloat16').")
  flags.DEFINE_bool('cpu_time', False, 'Time in process CPU seconds (all threads) instead of '
                    'wall seconds; steadier when other jobs share the cores.')
  flags.DEFINE_bool('blocks', False, 'Also time the frame-encoder building blocks.')
  flags.DEFINE_bool('blocks_only', False, 'Only time the building blocks.')
  flags.DEFINE_integer('trace_top', 0, 'Trace one fwd+bwd step and print the N costliest XLA '
                       'ops and module paths (only that).')
  flags.DEFINE_string('save', '', 'Write the rows as JSON here.')
  flags.DEFINE_string('compare', '', 'A JSON file from --save to print beside this run.')
  flags.mark_flags_as_required(['config'])
  app.run(main)

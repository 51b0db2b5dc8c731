"""Tucker fusion of paper 001 at the paper's sizes: factorised core vs outer product.

  python -m experiments.tucker_benchmark [--batch=8] [--steps=60] [--dim=256] [--repeats=5]

Both paths compute the same core G [N, 30, 128, 128] from audio and video
sequences [N, 60, 256]; the naive one forms X = a_t (outer) v_t [N, 60, 256, 256]
first. Prints, for the forward pass and for forward + backward (gradients with
respect to the inputs and the three factors), XLA's compiled memory analysis
(temporary buffers and arguments + outputs + temporaries) and the median wall
time, side by side, and checks that the two results agree.
"""

from __future__ import annotations

import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.models import layers

FLAGS = flags.FLAGS
flags.DEFINE_integer('batch', 8, 'N')
flags.DEFINE_integer('steps', 60, 'T_common')
flags.DEFINE_integer('dim', 256, 'd of both modalities')
flags.DEFINE_integer('rank_t', 30, 'K')
flags.DEFINE_integer('rank_a', 128, 'P')
flags.DEFINE_integer('rank_v', 128, 'Q')
flags.DEFINE_integer('repeats', 5, 'timed calls per measurement (median)')


def _memory(compiled) -> tuple[float, float]:
  m = compiled.memory_analysis()
  mib = 1024.0 ** 2
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return m.temp_size_in_bytes / mib, total / mib


def _time(compiled, args, repeats: int) -> float:
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times)) * 1e3


def measure(fn, args, repeats):
  compiled = jax.jit(fn).lower(*args).compile()
  temp, total = _memory(compiled)
  return {'temp_mib': temp, 'total_mib': total, 'ms': _time(compiled, args, repeats),
          'out': compiled(*args)}


def run(batch, steps, dim, rank_t, rank_a, rank_v, repeats):
  rng = np.random.default_rng(0)
  f = lambda *s: jnp.asarray(rng.standard_normal(s) / np.sqrt(s[0]), jnp.float32)
  args = (f(batch, steps, dim), f(batch, steps, dim), f(steps, rank_t), f(dim, rank_a),
          f(dim, rank_v))
  paths = {'factorised': layers.tucker_core, 'outer product': layers.tucker_core_naive}
  rows = {}
  for name, core in paths.items():
    loss = lambda *a, core=core: jnp.sum(core(*a) ** 2)
    fwd = measure(core, args, repeats)
    bwd = measure(jax.grad(loss, argnums=(0, 1, 2, 3, 4)), args, repeats)
    rows[name] = (fwd, bwd)
  fast, naive = rows['factorised'], rows['outer product']
  max_diff = float(jnp.max(jnp.abs(fast[0]['out'] - naive[0]['out'])))
  scale = float(jnp.max(jnp.abs(naive[0]['out'])))
  grad_diff = max(float(jnp.max(jnp.abs(x - y)) / (jnp.max(jnp.abs(y)) + 1e-12))
                  for x, y in zip(fast[1]['out'], naive[1]['out']))
  return rows, max_diff / scale, grad_diff


def format_table(rows, rel_diff, grad_diff, shape_line):
  lines = [shape_line,
           f"{'path':<15}{'pass':<12}{'temp MiB':>10}{'total MiB':>11}{'time ms':>10}"]
  for name, (fwd, bwd) in rows.items():
    for label, r in (('forward', fwd), ('fwd+bwd', bwd)):
      lines.append(f"{name:<15}{label:<12}{r['temp_mib']:>10.1f}{r['total_mib']:>11.1f}"
                   f"{r['ms']:>10.1f}")
  fast, naive = rows['factorised'], rows['outer product']
  for i, label in enumerate(('forward', 'fwd+bwd')):
    lines.append(
        f"{label}: outer/factorised total memory {naive[i]['total_mib'] / fast[i]['total_mib']:.1f}x, "
        f"temporaries {naive[i]['temp_mib'] / max(fast[i]['temp_mib'], 1e-9):.1f}x, "
        f"time {naive[i]['ms'] / fast[i]['ms']:.1f}x")
  lines.append(f'max |difference| / max |core|: {rel_diff:.2e} (core), {grad_diff:.2e} (gradients)')
  return '\n'.join(lines)


def main(argv):
  del argv
  rows, rel, grad_rel = run(FLAGS.batch, FLAGS.steps, FLAGS.dim, FLAGS.rank_t, FLAGS.rank_a,
                            FLAGS.rank_v, FLAGS.repeats)
  shape = (f'Tucker core on {jax.default_backend()}: a, v [{FLAGS.batch}, {FLAGS.steps}, '
           f'{FLAGS.dim}] -> G [{FLAGS.batch}, {FLAGS.rank_t}, {FLAGS.rank_a}, {FLAGS.rank_v}]')
  print(format_table(rows, rel, grad_rel, shape))


if __name__ == '__main__':
  app.run(main)

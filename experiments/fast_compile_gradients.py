"""Does compiling a train step with `assembly.FAST_COMPILE` change its numbers?

Takes a few train steps of a config on a fixed random batch, and at each step compares
the loss and the gradient that XLA's default compile and the fast compile give for the
same state and batch (both jitted with the batch as a runtime argument). Prints the
relative gradient difference per step and the parameter groups whose difference is
the largest share of the gradient.

  python -m experiments.fast_compile_gradients --config=configs/avt_ca.py:tiny --steps=3
  python -m experiments.fast_compile_gradients --config=configs/avt_ca.py:tiny \
      --options=xla_llvm_disable_expensive_passes   # one option of the two alone

Exit status 1 when some step's gradient differs by more than --rtol.
"""

from __future__ import annotations

import sys

from absl import app, flags

flags.DEFINE_string('config', 'configs/avt_ca.py:tiny', 'config reference')
flags.DEFINE_integer('steps', 3, 'train steps to compare')
flags.DEFINE_integer('batch_size', 8, 'examples in the fixed random batch')
flags.DEFINE_list('options', [], 'subset of assembly.FAST_COMPILE to apply (default: all)')
flags.DEFINE_float('rtol', 1e-3, 'tolerated relative difference of the gradient')
flags.DEFINE_integer('top', 5, 'parameter groups to list per step')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax
  import numpy as np
  import optax
  from mer_jax import assembly, sharding
  from experiments import definitions as defs
  from mer_jax import contract as bc

  config = defs.load_config(FLAGS.config)
  options = {k: v for k, v in assembly.FAST_COMPILE.items()
             if not FLAGS.options or k in FLAGS.options}
  run = assembly.build_run(config, steps_per_epoch=10, total_steps=100)
  placed = sharding.place_batch(
      assembly.example_batch(config, FLAGS.batch_size, random=True, seed=3), run.mesh)
  batch = bc.mask_modalities(placed, run.masked)

  def loss_and_grad(state, params, batch):
    return jax.value_and_grad(
        lambda p: assembly._train_loss(state, p, batch, run.loss_fn, config.loss)[0])(params)

  lowered = jax.jit(loss_and_grad).lower(run.state, run.state.params, batch)
  compiled = {'default': lowered.compile(), 'fast': lowered.compile(compiler_options=options)}
  print(f'{FLAGS.config}: default vs {options}')
  state, worst = run.state, 0.0
  for step in range(FLAGS.steps):
    out = {k: jax.tree.map(np.asarray, c(state, state.params, batch))
           for k, c in compiled.items()}
    (loss_d, grad_d), (loss_f, grad_f) = out['default'], out['fast']
    diff = jax.tree.map(lambda a, b: a - b, grad_f, grad_d)
    rel = float(optax.global_norm(diff) / optax.global_norm(grad_d))
    worst = max(worst, rel)
    print(f'step {step}: loss {float(loss_d):.7f} / {float(loss_f):.7f}, gradient norm '
          f'{float(optax.global_norm(grad_d)):.5f} / {float(optax.global_norm(grad_f)):.5f}, '
          f'relative difference {rel:.2e}')
    # Each group's difference as a share of the whole gradient's norm (a group whose own
    # gradient is ~0, like an attention key's bias, would otherwise rank first).
    total = float(optax.global_norm(grad_d)) + 1e-12
    groups = sorted(((float(np.linalg.norm(d)) / total, jax.tree_util.keystr(k))
                     for k, d in jax.tree_util.tree_leaves_with_path(diff)), reverse=True)
    for r, name in groups[:FLAGS.top]:
      if r > FLAGS.rtol:
        print(f'    {r:8.2e}  {name}')
    state, _ = run.train_step(state, placed)
  print(f'largest relative gradient difference {worst:.2e} (tolerance {FLAGS.rtol:g})')
  return 1 if worst > FLAGS.rtol else 0


if __name__ == '__main__':
  sys.exit(app.run(main))

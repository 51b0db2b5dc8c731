"""Prints the loss of one data-parallel train step on a fixed batch (run as a script).

Used by test_train to compare 1 device with N simulated devices.
"""

import json
import sys

import jax


def main():
  from configs import avt_ca as avt_ca_config
  from mer_jax import assembly, sharding
  config = avt_ca_config.get_config('tiny')
  run = assembly.build_run(config, steps_per_epoch=10, total_steps=100)
  host = assembly.example_batch(config, 8, random=True, seed=3)
  state, losses = run.state, []
  for _ in range(2):
    state, out = run.train_step(state, sharding.place_batch(host, run.mesh))
    losses.append(float(out['loss']))
  print(json.dumps({'devices': jax.device_count(), 'losses': losses,
                    'grad_norm': float(out['grad_norm'])}))


if __name__ == '__main__':
  sys.exit(main())

"""Prints the loss of one data-parallel train step on a fixed batch (run as a script).

Used by test_train to compare 1 device with N simulated devices.
"""

import json
import sys

import jax


def main():
  from configs import avt_ca as avt_ca_config
  from mer_jax import benchmark, models, optim, sharding, train
  config = avt_ca_config.get_config('tiny')
  mesh = sharding.make_mesh()
  model = models.build(config.model, config.dataset.num_classes)
  tx, schedule = optim.make_optimizer(config.optim, 10, 100)
  host = benchmark.random_batch(config, 8, seed=3)
  state = train.create_train_state(config, model, host, tx, mesh)
  step = jax.jit(train.make_train_step(models.get('avt_ca').loss_fn, config.loss, (), schedule),
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)))
  losses = []
  for _ in range(2):
    state, out = step(state, sharding.place_batch(host, mesh))
    losses.append(float(out['loss']))
  print(json.dumps({'devices': jax.device_count(), 'losses': losses,
                    'grad_norm': float(out['grad_norm'])}))


if __name__ == '__main__':
  sys.exit(main())

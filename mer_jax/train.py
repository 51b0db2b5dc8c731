"""Training and evaluation: train state, jitted data-parallel steps, the loop.

`train_and_evaluate(config, workdir)` builds the dataset if needed, trains
with periodic and best-on-validation checkpoints, resumes from the last
checkpoint when re-run, stops early on a validation metric, then evaluates the
best checkpoint on the validation and test splits and writes
`workdir/results.json`.
"""

from __future__ import annotations

import json
from mer_jax.contract import logger as logging
import math
import os
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from data_pipelines import folds, input_pipeline
from mer_jax import contract as bc
from mer_jax import checkpointing, config_lib, corruption, metrics as metrics_lib, models, optim, sharding, writers


class TrainState(train_state.TrainState):
  batch_stats: Any = None
  rng: jax.Array = None


def _state_dict(state: TrainState) -> dict:
  """The arrays a checkpoint holds (functions and optimiser object excluded)."""
  return {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
          'opt_state': state.opt_state, 'rng': state.rng}


def _from_state_dict(state: TrainState, d: dict) -> TrainState:
  return state.replace(step=d['step'], params=d['params'], batch_stats=d['batch_stats'],
                       opt_state=d['opt_state'], rng=d['rng'])


def example_batch(config, batch_size: int) -> dict:
  """Zero batch of the configured example shapes (for init without data)."""
  shapes = config.input.example_shapes.to_dict() if hasattr(
      config.input.example_shapes, 'to_dict') else dict(config.input.example_shapes)
  if not shapes:
    raise ValueError('config.input.example_shapes is empty')
  batch = {}
  for name, shape in shapes.items():
    dtype = np.uint8 if name == 'video' and len(shape) == 4 else np.float32
    batch[name] = np.zeros((batch_size,) + tuple(shape), dtype)
  batch['label'] = np.zeros((batch_size,), np.int32)
  batch['mask'] = bc.presence_mask(batch.keys(), batch_size)
  batch['valid'] = np.ones((batch_size,), np.float32)
  return batch


def create_train_state(config, model: nn.Module, init_batch: dict, tx, mesh) -> TrainState:
  """Initialises parameters (replicated over the mesh) from a batch's shapes."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  small = {k: np.asarray(v)[:1] for k, v in init_batch.items()}

  def init():
    variables = model.init({'params': init_rng, 'dropout': init_rng}, small, train=False)
    params = variables['params']
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                             batch_stats=variables.get('batch_stats', {}), rng=state_rng)

  return jax.jit(init, out_shardings=sharding.replicated(mesh))()


def make_train_step(loss_fn: Callable, loss_config, masked: tuple[str, ...], schedule):
  def train_step(state: TrainState, batch: dict):
    batch = bc.mask_modalities(batch, masked)
    step_rng = jax.random.fold_in(state.rng, state.step)
    dropout_rng, noise_rng = jax.random.split(step_rng)

    def compute_loss(params):
      outputs, updates = state.apply_fn(
          {'params': params, 'batch_stats': state.batch_stats}, batch, train=True,
          rngs={'dropout': dropout_rng, 'noise': noise_rng}, mutable=['batch_stats'])
      loss, aux = loss_fn(outputs, batch, loss_config)
      return loss, (aux, updates, outputs['logits'])

    (loss, (aux, updates, logits)), grads = jax.value_and_grad(compute_loss, has_aux=True)(
        state.params)
    new_state = state.apply_gradients(grads=grads,
                                      batch_stats=updates.get('batch_stats', state.batch_stats))
    acc = jnp.mean((jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32))
    out = {'loss': loss, 'accuracy': acc, 'grad_norm': optax.global_norm(grads),
           'learning_rate': schedule(state.step)}
    out.update(aux)
    return new_state, out
  return train_step


def make_eval_step(loss_fn: Callable, loss_config, masked: tuple[str, ...], num_classes: int,
                   corrupt=None):
  def eval_step(state: TrainState, batch: dict):
    batch = bc.mask_modalities(batch, masked)
    batch = corruption.apply(batch, corrupt)  # robustness sweeps only; off by default
    outputs = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats},
                             batch, train=False)
    logits = outputs['logits']
    valid = batch['valid']
    preds = jnp.argmax(logits, -1)
    cm = jnp.einsum('bi,bj->ij', jax.nn.one_hot(batch['label'], num_classes) * valid[:, None],
                    jax.nn.one_hot(preds, num_classes))
    loss, _ = loss_fn(outputs, batch, loss_config)
    return {'confusion': cm, 'loss_sum': loss * jnp.sum(valid), 'count': jnp.sum(valid)}
  return eval_step


class Trainer:
  """Everything a run needs, assembled once from a config."""

  def __init__(self, config, workdir: str, build_if_missing: bool = True):
    self.config = config
    self.workdir = workdir
    self.mesh = sharding.make_mesh()
    self.masked = config_lib.parse_modalities(config.get('mask_modalities', ''))
    self.builder = folds.wrap(input_pipeline.get_builder(config.dataset, build_if_missing),
                              config.dataset)
    self.num_classes = config.dataset.num_classes
    label_names = self.builder.info.features['label'].names if 'label' in self.builder.info.features else None
    self.label_names = list(label_names) if label_names else [str(i) for i in range(self.num_classes)]
    if len(self.label_names) != self.num_classes:
      raise ValueError(f'config.dataset.num_classes={self.num_classes} but {config.dataset.name} '
                       f'has {len(self.label_names)} classes')
    self.local_batch = sharding.check_batch_size(config.input.batch_size, self.mesh)
    self.steps_per_epoch = input_pipeline.steps_per_epoch(
        self.builder, config.dataset.train_split, config.input.batch_size)
    total = self.steps_per_epoch * config.train.num_epochs
    if config.train.get('max_steps', -1) > 0:
      total = min(total, config.train.max_steps)
    self.total_steps = total
    self.model = models.build(config.model, self.num_classes)
    entry = models.get(config.model.name)
    self.tx, self.schedule = optim.make_optimizer(config.optim, self.steps_per_epoch, total)
    init_batch = next(input_pipeline.as_numpy(input_pipeline.eval_dataset(
        self.builder, config.dataset.train_split, 1)[0]))
    self.state = create_train_state(config, self.model, init_batch, self.tx, self.mesh)
    repl, data = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
    self.train_step = jax.jit(
        make_train_step(entry.loss_fn, config.loss, self.masked, self.schedule),
        in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=(0,))
    self.eval_step = jax.jit(
        make_eval_step(entry.loss_fn, config.loss, self.masked, self.num_classes,
                       corruption.settings(config.get('corrupt'))),
        in_shardings=(repl, data), out_shardings=repl)
    self.is_main = jax.process_index() == 0

  def param_count(self) -> int:
    return int(sum(x.size for x in jax.tree.leaves(self.state.params)))

  def evaluate(self, state, split: str, builder=None) -> dict:
    """Exact metrics over a split: every example counted once, padding ignored."""
    builder = builder or self.builder
    per_process = sharding.check_batch_size(self.config.input.eval_batch_size, self.mesh)
    ds, _ = input_pipeline.eval_dataset(builder, split, per_process,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count())
    cm = np.zeros((self.num_classes, self.num_classes), np.float64)
    loss_sum = count = 0.0
    for batch in input_pipeline.as_numpy(ds):
      out = sharding.to_host(self.eval_step(state, sharding.place_batch(batch, self.mesh)))
      cm += out['confusion']
      loss_sum += float(out['loss_sum'])
      count += float(out['count'])
    result = metrics_lib.from_confusion(np.rint(cm).astype(np.int64))
    result['loss'] = loss_sum / max(count, 1.0)
    return result


def _better(metric: str, new: float, old: float) -> bool:
  return new < old if metric == 'loss' else new > old


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming if possible), then evaluates the best checkpoint."""
  os.makedirs(workdir, exist_ok=True)
  trainer = Trainer(config, workdir)
  cfg = config.train
  is_main = trainer.is_main
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    if hasattr(trainer.builder, 'fold_plan'):  # which groups this fold trains and tests on
      with open(os.path.join(workdir, 'fold_plan.json'), 'w') as f:
        json.dump(trainer.builder.fold_plan.to_dict(), f, indent=2, default=str)
  ckpts = checkpointing.Checkpoints(workdir, keep=cfg.keep_checkpoints)
  abstract = checkpointing.abstract_of(_state_dict(trainer.state))
  metric_name = cfg.early_stopping_metric
  meta = {'epoch': 0, 'best_value': math.inf if metric_name == 'loss' else -math.inf,
          'best_step': -1, 'bad_epochs': 0, 'stopped': False, 'train_time_s': 0.0}
  state = trainer.state
  restored = ckpts.restore_latest(abstract)
  if restored is not None:
    state = _from_state_dict(state, restored[0])
    meta.update(restored[1])
    logging.info('Resumed from step %d (epoch %d)', int(state.step), meta['epoch'])
  writer = writers.MetricWriter(workdir, enabled=is_main)
  spe, total = trainer.steps_per_epoch, trainer.total_steps
  step = int(sharding.to_host(state.step))
  logging.info('%s: %d parameters, %d steps/epoch, %d steps, global batch %d on %d devices',
               config.model.name, trainer.param_count(), spe, total, config.input.batch_size,
               trainer.mesh.devices.size)
  progress = writers.Progress(total, step, enabled=is_main and cfg.get('progress_bar', True))
  iterator, it_epoch = None, -1
  t_start = time.time()
  t_base = meta['train_time_s']
  pending = []
  while step < total and not meta['stopped']:
    epoch = step // spe
    if epoch != it_epoch:
      ds = input_pipeline.train_dataset(
          trainer.builder, config.dataset.train_split, trainer.local_batch, seed=config.seed,
          epoch=epoch, skip_batches=step % spe, augment=config.input.augment.to_dict(),
          shuffle_buffer=config.input.shuffle_buffer, process_index=jax.process_index(),
          process_count=jax.process_count())
      iterator, it_epoch = input_pipeline.as_numpy(ds), epoch
    batch = sharding.place_batch(next(iterator), trainer.mesh)
    state, step_metrics = trainer.train_step(state, batch)
    step += 1
    pending.append(step_metrics)
    epoch_end = step % spe == 0 or step == total
    if step % cfg.log_every_steps == 0 or epoch_end:
      host = sharding.to_host(pending)
      mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      mean['steps_per_s'] = progress.rate()
      mean['step_time_ms'] = 1000.0 / mean['steps_per_s'] if mean['steps_per_s'] > 0 else 0.0
      mean['epoch'] = step / spe
      writer.write(step, mean, 'train')
      progress.update(step, {'loss': mean['loss'], 'acc': mean['accuracy']}, log=True)
      pending = []
    if epoch_end:
      meta['epoch'] = epoch + 1
      if (epoch + 1) % cfg.eval_every_epochs == 0 or step == total:
        val = trainer.evaluate(state, config.dataset.val_split)
        writer.write(step, {k: v for k, v in val.items() if k != 'confusion_matrix'}, 'val')
        logging.info('epoch %d  val %s=%.4f loss=%.4f', epoch + 1, metric_name,
                     val[metric_name], val['loss'])
        if _better(metric_name, val[metric_name], meta['best_value']):
          meta.update(best_value=val[metric_name], best_step=step, bad_epochs=0)
          meta['train_time_s'] = t_base + time.time() - t_start
          ckpts.save_best(step, _state_dict(state), dict(meta, val=_scalars(val)))
        else:
          meta['bad_epochs'] += 1
          if cfg.early_stopping_patience and meta['bad_epochs'] >= cfg.early_stopping_patience:
            meta['stopped'] = True
            logging.info('Early stopping at epoch %d (best %s=%.4f at step %d)', epoch + 1,
                         metric_name, meta['best_value'], meta['best_step'])
    if epoch_end or step % cfg.checkpoint_every_steps == 0:
      meta['train_time_s'] = t_base + time.time() - t_start
      ckpts.save_latest(step, _state_dict(state), meta)
  progress.close()
  train_time = meta['train_time_s'] if step >= total or meta['stopped'] else t_base + time.time() - t_start

  # Final evaluation of the best checkpoint (the latest if validation never ran).
  best = ckpts.restore_best(abstract) or ckpts.restore_latest(abstract)
  final_state = _from_state_dict(state, best[0]) if best else state
  results = {
      'model': config.model.name,
      'dataset': config.dataset.name,
      'mask_modalities': list(trainer.masked),
      'val': trainer.evaluate(final_state, config.dataset.val_split),
      'test': trainer.evaluate(final_state, config.dataset.test_split),
      'steps': step,
      'best_step': int(meta['best_step']),
      'epochs': meta['epoch'],
      'early_stopped': bool(meta['stopped']),
      'train_time_s': float(train_time),
      'num_params': trainer.param_count(),
      'label_names': trainer.label_names,
  }
  ckpts.close()
  writer.write(step, _scalars(results['test']), 'test')
  writer.close()
  if is_main:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
    print(metrics_lib.format_table({'val': results['val'], 'test': results['test']}))
  return results


def _scalars(m: dict) -> dict:
  return {k: v for k, v in m.items() if np.ndim(v) == 0}

"""The training loop: `train_and_evaluate(config, workdir)`.

The dataset is prepared first (built if missing, folded, every split checked),
then the run is assembled (`assembly.build_run`), trained with periodic and
best-on-validation checkpoints (resuming from the last one when re-run,
stopping early on a validation metric), and the best checkpoint goes through
the config's evaluators. `workdir/results.json` holds their results and the
run's provenance (seed, fold, variant, config hash, code commit, dataset
version and fingerprint).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import input_pipeline
from mer_jax import assembly, checkpointing, evaluators, metrics as metrics_lib, provenance
from mer_jax import plots, sharding, writers
from mer_jax import contract as bc
from mer_jax.contract import logger as logging


def assemble(config, data: input_pipeline.Data, mesh=None) -> assembly.Run:
  """The run of `config` on a prepared dataset (init from one of its real examples)."""
  spe = input_pipeline.steps_per_epoch(data.builder, data.split('train'), config.input.batch_size)
  total = spe * config.train.num_epochs
  if config.train.max_steps > 0:
    total = min(total, config.train.max_steps)
  init_batch = next(input_pipeline.as_numpy(input_pipeline.eval_dataset(
      data.builder, data.split('train'), 1, audio_norm=config.input.audio_norm)[0]))
  return assembly.build_run(config, mesh, steps_per_epoch=spe, total_steps=total,
                            init_batch=init_batch)


# Settings a resumed run may change: where data and logs go, how often it saves.
RESUME_MAY_CHANGE = ('arg', 'reference', 'evals', 'dataset.data_dir', 'train.log_every_steps',
                     'train.checkpoint_every_steps', 'train.checkpoint_min_interval_s',
                     'train.keep_checkpoints', 'train.progress_bar')


def _saved_config(workdir: str):
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f'{path}: not valid JSON ({e}); it records the config of the '
                     'checkpoints beside it') from e


def _check_same_run(previous: dict, config, workdir: str) -> None:
  """Checkpoints resume only under the config that wrote them: a changed batch size or
  schedule would otherwise continue, silently, a different run."""
  old = traverse_util.flatten_dict(previous, sep='.')
  new = traverse_util.flatten_dict(json.loads(config.to_json_best_effort()), sep='.')
  skip = lambda k: any(k == p or k.startswith(p + '.') for p in RESUME_MAY_CHANGE)
  changed = sorted(k for k in set(old) | set(new)
                   if not skip(k) and old.get(k, '<unset>') != new.get(k, '<unset>'))
  if changed:
    shown = ', '.join(f'{k}: {old.get(k, "<unset>")!r} -> {new.get(k, "<unset>")!r}'
                      for k in changed[:8])
    more = f' and {len(changed) - 8} more' if len(changed) > 8 else ''
    raise ValueError(
        f'{workdir} holds checkpoints of a run with another config ({shown}{more}); '
        'resume it with its own config (its config.json), or train in a new --workdir')


def _close_in_background(iterator) -> None:
  # Tearing down a tf.data iterator waits seconds on its autotuner, idle; done inline
  # (or left to the garbage collector) that stalled every epoch start.
  if iterator is not None:
    threading.Thread(target=iterator.close, daemon=True).start()


def _better(metric: str, new: float, old: float) -> bool:
  return new < old if metric == 'loss' else new > old


def train_and_evaluate(config, workdir: str, data: input_pipeline.Data | None = None) -> dict:
  """Trains (resuming if possible), then evaluates the best checkpoint."""
  os.makedirs(workdir, exist_ok=True)
  data = data or input_pipeline.prepare(config.dataset)  # an explicit step, before any training
  run = assemble(config, data)
  # Recorded before training, so the commit is the code this process runs.
  prov = provenance.record(config, data)
  cfg = config.train
  is_main = jax.process_index() == 0
  previous = _saved_config(workdir)
  if data.splits['test'] is None:
    logging.warning('No test split: training selects on validation and reports validation '
                    'metrics and the best checkpoint only.')
  ckpts = checkpointing.Checkpoints(workdir, keep=cfg.keep_checkpoints)
  abstract = run.abstract_state()
  metric_name = cfg.early_stopping_metric
  meta = {'epoch': 0, 'best_value': math.inf if metric_name == 'loss' else -math.inf,
          'best_step': -1, 'bad_epochs': 0, 'stopped': False, 'train_time_s': 0.0}
  state = run.state
  if previous is not None and any(ckpts.all_steps().values()):
    try:
      _check_same_run(previous, config, workdir)
    except ValueError:
      ckpts.close()
      raise
  restored = ckpts.restore_latest(abstract)
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    if data.fold_plan:  # which groups this fold trains and tests on
      with open(os.path.join(workdir, 'fold_plan.json'), 'w') as f:
        json.dump(data.fold_plan, f, indent=2, default=str)
  if restored is not None:
    state = assembly.from_state_dict(state, restored[0])
    meta.update(restored[1])
    logging.info('Resumed from step %d (epoch %d)', int(state.step), meta['epoch'])
  writer = writers.MetricWriter(workdir, enabled=is_main)
  spe, total = run.steps_per_epoch, run.total_steps
  step = int(sharding.to_host(state.step))
  logging.info('%s: %d parameters, %d steps/epoch, %d steps, global batch %d on %d devices',
               config.model.name, run.param_count(), spe, total, config.input.batch_size,
               run.mesh.devices.size)
  progress = writers.Progress(total, step, enabled=is_main and cfg.progress_bar)
  local_batch = sharding.check_batch_size(config.input.batch_size, run.mesh)
  iterator, it_epoch = None, -1
  t_start = time.time()
  t_base = meta['train_time_s']
  pending = []
  pending_best, last_save = None, time.time()
  compiled = {'train': False, 'eval': False}  # XLA's freed compile memory is returned once
  while step < total and not meta['stopped']:
    epoch = step // spe
    if epoch != it_epoch:
      _close_in_background(iterator)
      ds = input_pipeline.train_dataset(
          data.builder, data.split('train'), local_batch, seed=config.seed,
          epoch=epoch, skip_batches=step % spe, augment=config.input.augment.to_dict(),
          shuffle_buffer=config.input.shuffle_buffer, audio_norm=config.input.audio_norm,
          process_index=jax.process_index(),
          process_count=jax.process_count())
      iterator, it_epoch = input_pipeline.as_numpy(ds), epoch
    batch = sharding.place_batch(next(iterator), run.mesh)
    state, step_metrics = run.train_step(state, batch)
    if not compiled['train']:  # the step compiled on this call (it runs asynchronously)
      bc.release_freed_memory()
      compiled['train'] = True
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
        val = evaluators.score(run, state, data, 'val')
        if not compiled['eval']:
          bc.release_freed_memory()
          compiled['eval'] = True
        writer.write(step, {k: v for k, v in val.items() if k != 'confusion_matrix'}, 'val')
        logging.info('epoch %d  val %s=%.4f loss=%.4f', epoch + 1, metric_name,
                     val[metric_name], val['loss'])
        if _better(metric_name, val[metric_name], meta['best_value']):
          meta.update(best_value=val[metric_name], best_step=step, bad_epochs=0)
          meta['train_time_s'] = t_base + time.time() - t_start
          best_meta = dict(meta, val=_scalars(val))
          if cfg.checkpoint_min_interval_s > 0:
            # Written with the next 'latest' save, which is the first record that points
            # at it; a copy, since the next step takes over the state's buffers.
            pending_best = (step, jax.tree.map(jnp.copy, assembly.state_dict(state)),
                            best_meta)
          else:
            ckpts.save_best(step, assembly.state_dict(state), best_meta)
        else:
          meta['bad_epochs'] += 1
          if cfg.early_stopping_patience and meta['bad_epochs'] >= cfg.early_stopping_patience:
            meta['stopped'] = True
            logging.info('Early stopping at epoch %d (best %s=%.4f at step %d)', epoch + 1,
                         metric_name, meta['best_value'], meta['best_step'])
    if (step % cfg.checkpoint_every_steps == 0 or step == total or meta['stopped'] or
        (epoch_end and time.time() - last_save >= cfg.checkpoint_min_interval_s)):
      if pending_best is not None:
        ckpts.save_best(*pending_best)
        pending_best = None
      meta['train_time_s'] = t_base + time.time() - t_start
      ckpts.save_latest(step, assembly.state_dict(state), meta)
      last_save = time.time()
  progress.close()
  _close_in_background(iterator)
  train_time = meta['train_time_s'] if step >= total or meta['stopped'] else t_base + time.time() - t_start

  # The evaluators on the best checkpoint (the latest if validation never ran).
  best = ckpts.restore_best(abstract) or ckpts.restore_latest(abstract)
  ckpts.close()
  final_state = assembly.from_state_dict(state, best[0]) if best else state
  evals = evaluators.run_all(run, final_state, data, config.evals)
  results = {
      'model': config.model.name,
      'dataset': config.dataset.name,
      'mask_modalities': list(run.masked),
      **evals,
      'steps': step,
      'best_step': int(meta['best_step']),
      'epochs': meta['epoch'],
      'early_stopped': bool(meta['stopped']),
      'train_time_s': float(train_time),
      'num_params': run.param_count(),
      'label_names': data.label_names,
      'provenance': prov,
  }
  if 'test' in evals:
    writer.write(step, _scalars(evals['test']), 'test')
  writer.close()
  if is_main:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
    print(metrics_lib.format_table({k: v for k, v in evals.items()
                                    if isinstance(v, dict) and 'accuracy' in v}))
    _figures(workdir, config, evals, data.label_names)
  return results


def _figures(workdir, config, evals, label_names):
  """curves.png and a confusion matrix per evaluator; a failure is logged, never fatal."""
  try:
    title = f'{config.model.name} on {config.dataset.name}'
    metrics_path = os.path.join(workdir, 'metrics.jsonl')
    if os.path.exists(metrics_path):
      plots.training_curves(metrics_path, os.path.join(workdir, 'curves.png'), title)
    for name, result in evals.items():
      if isinstance(result, dict) and 'confusion_matrix' in result:
        plots.confusion_matrix(result['confusion_matrix'], label_names,
                               os.path.join(workdir, f'confusion_{name}.png'),
                               f'{title}, {name} (acc {100 * result["accuracy"]:.1f}%)')
  except Exception as e:  # the results are written; figures are a convenience
    logging.warning('figures not written: %s', e)


def _scalars(m: dict) -> dict:
  return {k: v for k, v in m.items() if isinstance(v, (int, float, np.number))}

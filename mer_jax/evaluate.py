"""Evaluation of a saved checkpoint on any split or dataset directory.

  python -m mer_jax.main --mode=eval --config=... --workdir=DIR \
      [--checkpoint=best|latest|STEP] [--eval_split=test] [--eval_data_dir=DIR] \
      [--eval_dataset=NAME] [--example_index=3] [--config.corrupt.modality=audio ...]

Writes beside the checkpoints, under a common prefix
`eval_<dataset>_<split>_<checkpoint>`:
  .json             the metrics (as in results.json) and where they came from
  _report.txt/.json precision, recall, F1 and support per class
  _confusion.png    the confusion matrix
  _attention_<i>.png  for models that sow attention maps, example i's maps
                    (paper 001, Fig. 8)
The metrics come from the same `Trainer.evaluate` as the end of training, so
evaluating the best checkpoint on the test split reproduces results.json.
"""

from __future__ import annotations

import json
from mer_jax.contract import logger as logging
import os

import jax
import numpy as np

from data_pipelines import folds, input_pipeline
from mer_jax import contract as bc
from mer_jax import checkpointing, corruption, metrics as metrics_lib, plots, sharding, train


def restore(trainer, workdir: str, checkpoint: str = 'best'):
  """The train state of the 'best', 'latest' or numbered checkpoint of `workdir`."""
  ckpts = checkpointing.Checkpoints(workdir)
  abstract = checkpointing.abstract_of(train._state_dict(trainer.state))
  try:
    if checkpoint == 'best':
      restored = ckpts.restore_best(abstract)
    elif checkpoint == 'latest':
      restored = ckpts.restore_latest(abstract)
    else:
      step = int(checkpoint)
      steps = ckpts.all_steps()
      if step in steps['latest']:
        restored = ckpts.restore_latest(abstract, step=step)
      elif step in steps['best']:
        restored = ckpts._restore(ckpts.best, abstract, step)
      else:
        raise FileNotFoundError(f'no checkpoint at step {step} under {workdir}/checkpoints; '
                                f'saved: {steps}')
  finally:
    ckpts.close()
  if restored is None:
    raise FileNotFoundError(f'no {checkpoint!r} checkpoint under {workdir}/checkpoints')
  return train._from_state_dict(trainer.state, restored[0])


def _builder_for(config, trainer, data_dir: str, dataset: str):
  if not (data_dir or dataset):
    return trainer.builder
  ds_cfg = config.dataset.copy_and_resolve_references()
  with ds_cfg.unlocked():
    if data_dir:
      ds_cfg.data_dir = data_dir
    if dataset:
      ds_cfg.name = dataset
  return folds.wrap(input_pipeline.get_builder(ds_cfg), ds_cfg)


def per_class_report(result: dict, label_names) -> tuple[str, dict]:
  """Text table and JSON of precision / recall / F1 / support per class."""
  pc = metrics_lib.per_class(np.asarray(result['confusion_matrix']))
  rows = {name: {'precision': float(pc['precision'][i]), 'recall': float(pc['recall'][i]),
                 'f1': float(pc['f1'][i]), 'support': int(pc['support'][i])}
          for i, name in enumerate(label_names)}
  width = max(12, max(len(n) for n in label_names) + 2)
  lines = [f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
  for name, r in rows.items():
    lines.append(f"{name:<{width}}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1']:>10.4f}"
                 f"{r['support']:>9d}")
  lines.append('')
  lines.append(f"{'macro avg':<{width}}{result['macro_precision']:>10.4f}"
               f"{result['macro_recall']:>10.4f}{result['macro_f1']:>10.4f}"
               f"{result['num_examples']:>9d}")
  lines.append(f"{'accuracy':<{width}}{'':>20}{result['accuracy']:>10.4f}"
               f"{result['num_examples']:>9d}")
  lines.append(f"{'UAR':<{width}}{'':>20}{result['uar']:>10.4f}")
  summary = {k: result[k] for k in metrics_lib.METRIC_NAMES}
  return '\n'.join(lines), {'per_class': rows, 'summary': summary}


def example_at(builder, split: str, index: int) -> dict:
  """Example `index` of `split` (in evaluation order) as a batch of one."""
  ds, _ = input_pipeline.eval_dataset(builder, split, 1)
  n = input_pipeline.num_examples(builder, split)
  if not 0 <= index < n:
    raise IndexError(f'example_index {index} outside 0..{n - 1} of {split!r}')
  return next(input_pipeline.as_numpy(ds.skip(index).take(1)))


def attention_maps(trainer, state, batch: dict) -> tuple[dict, np.ndarray]:
  """({sown name: f32[heads, Tq, Tk]}, logits[C]) for a batch of one example.

  Reads every 4-D array the model sowed into 'intermediates' whose name says
  'attention' (AVT-CA sows 'attention_audio_to_video' [B, h, Ta, Tv]).
  """
  batch = bc.mask_modalities(batch, trainer.masked)
  batch = corruption.apply(batch, trainer.config.get('corrupt'))
  outputs, inter = trainer.model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, batch, train=False,
      mutable=['intermediates'])
  maps = {}
  flat = jax.tree_util.tree_flatten_with_path(inter.get('intermediates', {}))[0]
  for path, leaf in flat:
    name = '/'.join(str(getattr(p, 'key', getattr(p, 'idx', p))) for p in path)
    arr = np.asarray(leaf)
    if 'attention' in name and arr.ndim == 4:
      # sow stores a tuple per call: strip its index from the name
      clean = '/'.join(part for part in name.split('/') if not part.isdigit())
      maps[clean] = arr[0]
  return maps, np.asarray(outputs['logits'])[0]


def evaluate_checkpoint(config, workdir: str, split: str = 'test', checkpoint: str = 'best',
                        data_dir: str = '', dataset: str = '', example_index: int = -1,
                        figures: bool = True, trainer=None) -> dict:
  """Restores the best / latest / given-step checkpoint and scores `split`.

  Writes the metrics JSON, the per-class report, the confusion-matrix PNG and
  (with `example_index` >= 0 on a model that sows attention) the attention PNG.
  `trainer`: a `train.Trainer` of the same config to reuse (saves its compile).
  """
  trainer = trainer or train.Trainer(config, workdir)
  state = restore(trainer, workdir, checkpoint)
  builder = _builder_for(config, trainer, data_dir, dataset)
  result = trainer.evaluate(state, split, builder=builder)
  result.update(checkpoint=checkpoint, checkpoint_step=int(state.step), split=split,
                dataset=builder.info.full_name, data_dir=str(builder.data_dir),
                label_names=trainer.label_names,
                corrupt=corruption.settings(config.get('corrupt')))
  suffix = _corrupt_suffix(config)
  prefix = os.path.join(workdir, f'eval_{builder.name}_{split}_{checkpoint}{suffix}'.replace('/', '_'))
  if trainer.is_main:
    with open(prefix + '.json', 'w') as f:
      json.dump(result, f, indent=2)
    text, report = per_class_report(result, trainer.label_names)
    with open(prefix + '_report.txt', 'w') as f:
      f.write(text + '\n')
    with open(prefix + '_report.json', 'w') as f:
      json.dump(report, f, indent=2)
    print(metrics_lib.format_table({split: result}))
    print(text)
    if figures:
      plots.confusion_matrix(result['confusion_matrix'], trainer.label_names,
                             prefix + '_confusion.png',
                             f'{config.model.name} on {builder.name} {split} '
                             f'(step {int(state.step)}, acc {100 * result["accuracy"]:.1f}%)')
      if example_index >= 0:
        batch = example_at(builder, split, example_index)
        maps, logits = attention_maps(trainer, state, batch)
        if maps:
          names = trainer.label_names
          pred = names[int(np.argmax(logits))]
          true = names[int(batch['label'][0])]
          path = plots.attention_maps(maps, f'{prefix}_attention_{example_index}.png',
                                      f'{config.model.name}: {split} example {example_index}, '
                                      f'true {true}, predicted {pred}')
          np.savez(f'{prefix}_attention_{example_index}.npz', **{
              k.replace('/', '.'): v for k, v in maps.items()})
          logging.info('wrote %s', path)
        else:
          logging.info('%s sows no attention maps; no attention figure', config.model.name)
  logging.info('wrote %s.json', prefix)
  return result


def _corrupt_suffix(config) -> str:
  s = corruption.settings(config.get('corrupt'))
  if not s:
    return ''
  if s.get('kind') == 'missing':
    return f"_missing_{s['modality']}"
  return f"_corrupt_{s['modality']}_{int(round(100 * float(s['rate'])))}"


def robustness_conditions(rates=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                          modalities=('audio', 'video'), missing: bool = True) -> list[dict]:
  """Paper 003 Table V: each rate for each modality, plus each modality missing."""
  conds = [{'modality': '', 'rate': 0.0, 'kind': 'random', 'seed': 0}]
  for m in modalities:
    conds += [{'modality': m, 'rate': float(r), 'kind': 'random', 'seed': 0} for r in rates]
  if missing:
    conds += [{'modality': m, 'rate': 1.0, 'kind': 'missing', 'seed': 0} for m in modalities]
  return conds


def robustness_sweep(config, workdir: str, conditions=None, split: str = 'test',
                     checkpoint: str = 'best', trainer=None) -> list[dict]:
  """Scores one checkpoint under every corruption condition; one Trainer, one jit per condition."""
  from mer_jax import models
  conditions = conditions or robustness_conditions()
  trainer = trainer or train.Trainer(config, workdir)
  clean_step = trainer.eval_step
  state = restore(trainer, workdir, checkpoint)
  entry = models.get(config.model.name)
  repl, data = sharding.replicated(trainer.mesh), sharding.batch_sharded(trainer.mesh)
  rows = []
  for cond in conditions:
    if not corruption.settings(cond) and not corruption.settings(config.get('corrupt')):
      trainer.eval_step = clean_step  # already compiled when the trainer was used before
    else:
      trainer.eval_step = jax.jit(
          train.make_eval_step(entry.loss_fn, config.loss, trainer.masked, trainer.num_classes,
                               corruption.settings(cond)),
          in_shardings=(repl, data), out_shardings=repl)
    m = trainer.evaluate(state, split)
    rows.append(dict(cond, **{k: m[k] for k in metrics_lib.METRIC_NAMES}, loss=m['loss']))
    logging.info('%s %s rate %.1f: accuracy %.4f', cond['kind'], cond['modality'] or 'none',
                 cond['rate'], m['accuracy'])
  trainer.eval_step = clean_step
  return rows

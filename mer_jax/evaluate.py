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
The run is assembled and restored by `mer_jax.assembly` and scored by the same
evaluator as the end of training, so evaluating the best checkpoint on the test
split reproduces results.json.
"""

from __future__ import annotations

import json
from mer_jax.contract import logger as logging
import os

import jax
import numpy as np

from data_pipelines import input_pipeline
from mer_jax import assembly, contract as bc, corruption, evaluators, metrics as metrics_lib, plots
from mer_jax import provenance, train


def _data_for(config, data, data_dir: str, dataset: str):
  """The prepared dataset to score: the run's own, or another directory / name."""
  if not (data_dir or dataset):
    return data
  ds_cfg = config.dataset.copy_and_resolve_references()
  with ds_cfg.unlocked():
    if data_dir:
      ds_cfg.data_dir = data_dir
    if dataset:
      ds_cfg.name = dataset
  return input_pipeline.prepare(ds_cfg)


per_class_report = evaluators.per_class_report


def example_at(builder, split: str, index: int) -> dict:
  """Example `index` of `split` (in evaluation order) as a batch of one."""
  ds, _ = input_pipeline.eval_dataset(builder, split, 1)
  n = input_pipeline.num_examples(builder, split)
  if not 0 <= index < n:
    raise IndexError(f'example_index {index} outside 0..{n - 1} of {split!r}')
  return next(input_pipeline.as_numpy(ds.skip(index).take(1)))


def attention_maps(run, state, batch: dict) -> tuple[dict, np.ndarray]:
  """({sown name: f32[heads, Tq, Tk]}, logits[C]) for a batch of one example.

  Reads every 4-D array the model sowed into 'intermediates' whose name says
  'attention' (AVT-CA sows 'attention_audio_to_video' [B, h, Ta, Tv]).
  """
  batch = bc.mask_modalities(batch, run.masked)
  batch = corruption.apply(batch, corruption.settings(run.config.get('corrupt')))
  outputs, inter = run.model.apply(
      assembly.eval_variables(state), batch, train=False,
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
                        figures: bool = True, run=None, data=None) -> dict:
  """Restores the best / latest / given-step checkpoint and scores `split`.

  Writes the metrics JSON, the per-class report, the confusion-matrix PNG and
  (with `example_index` >= 0 on a model that sows attention) the attention PNG.
  `run`, `data`: an assembled run and prepared dataset of the same config to
  reuse (saves building and compiling again).
  """
  data = data or input_pipeline.prepare(config.dataset, build_if_missing=False)
  run = run or train.assemble(config, data)
  state, _ = assembly.restore(run, workdir, checkpoint)
  target = _data_for(config, data, data_dir, dataset)
  result = evaluators.score(run, state, target, split)
  result.update(checkpoint=checkpoint, checkpoint_step=int(state.step), split=split,
                dataset=target.builder.info.full_name, data_dir=target.data_dir,
                label_names=data.label_names,
                corrupt=corruption.settings(config.get('corrupt')),
                provenance=provenance.record(config, target))
  text, report = per_class_report(result, data.label_names)
  result['per_class'] = report['per_class']
  suffix = _corrupt_suffix(config)
  name = target.builder.name
  prefix = os.path.join(workdir, f'eval_{name}_{split}_{checkpoint}{suffix}'.replace('/', '_'))
  if jax.process_index() == 0:
    with open(prefix + '.json', 'w') as f:
      json.dump(result, f, indent=2)
    with open(prefix + '_report.txt', 'w') as f:
      f.write(text + '\n')
    with open(prefix + '_report.json', 'w') as f:
      json.dump(report, f, indent=2)
    print(metrics_lib.format_table({split: result}))
    print(text)
    if figures:
      plots.confusion_matrix(result['confusion_matrix'], data.label_names,
                             prefix + '_confusion.png',
                             f'{config.model.name} on {name} {split} '
                             f'(step {int(state.step)}, acc {100 * result["accuracy"]:.1f}%)')
      if example_index >= 0:
        batch = example_at(target.builder, target.split(split), example_index)
        maps, logits = attention_maps(run, state, batch)
        if maps:
          names = data.label_names
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


robustness_conditions = evaluators.robustness_conditions


def robustness_sweep(config, workdir: str, conditions=None, split: str = 'test',
                     checkpoint: str = 'best', run=None, data=None) -> list[dict]:
  """Scores one checkpoint under every corruption condition (the `corruption`
  evaluator's rows, for explicit conditions)."""
  data = data or input_pipeline.prepare(config.dataset, build_if_missing=False)
  run = run or train.assemble(config, data)
  state, _ = assembly.restore(run, workdir, checkpoint)
  rows = []
  for cond in conditions or robustness_conditions():
    m = evaluators.score(run, state, data, split, corrupt=cond)
    rows.append(dict(cond, **{k: m[k] for k in metrics_lib.METRIC_NAMES}, loss=m['loss']))
    logging.info('%s %s rate %.1f: accuracy %.4f', cond['kind'], cond['modality'] or 'none',
                 cond['rate'], m['accuracy'])
  return rows

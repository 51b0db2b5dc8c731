"""Evaluators, named in `config.evals` and looked up here.

    config.evals.test = {'type': 'classification', 'split': 'test', 'per_class': True}
    config.evals.robustness = {'type': 'corruption', 'split': 'test',
                               'rates': (0.1, 0.5, 0.9), 'modalities': ('audio', 'video'),
                               'missing': True}

A split is a role of the prepared dataset ('train', 'val', 'test') or a TFDS
split name. Every evaluator scores a state of a `Run` on a prepared `Data` and
returns a JSON-able dict; an evaluator whose split the dataset lacks returns
None and is left out of the results.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from data_pipelines import input_pipeline
from mer_jax import metrics as metrics_lib, sharding
from mer_jax.contract import logger as logging


def score(run, state, data, split: str, corrupt=None, builder=None) -> dict:
  """Exact metrics over a split: every example counted once, padding ignored."""
  builder = builder or data.builder
  per_process = sharding.check_batch_size(run.config.input.eval_batch_size, run.mesh)
  ds, _ = input_pipeline.eval_dataset(builder, data.split(split), per_process,
                                      process_index=jax.process_index(),
                                      process_count=jax.process_count(),
                                      audio_norm=run.config.input.audio_norm)
  step = run.eval_step(corrupt)
  cm = np.zeros((run.num_classes, run.num_classes), np.float64)
  loss_sum = count = 0.0
  for batch in input_pipeline.as_numpy(ds):
    out = sharding.to_host(step(state, sharding.place_batch(batch, run.mesh)))
    cm += out['confusion']
    loss_sum += float(out['loss_sum'])
    count += float(out['count'])
  result = metrics_lib.from_confusion(np.rint(cm).astype(np.int64))
  result['loss'] = loss_sum / max(count, 1.0)
  return result


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


def classification(run, state, data, split: str = 'test', per_class: bool = False,
                   **unused) -> dict:
  result = score(run, state, data, split)
  if per_class:
    result['per_class'] = per_class_report(result, data.label_names)[1]['per_class']
  return result


def robustness_conditions(rates=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                          modalities=('audio', 'video'), missing: bool = True) -> list[dict]:
  """Paper 003 Table V: each rate for each modality, plus each modality missing."""
  conds = [{'modality': '', 'rate': 0.0, 'kind': 'random', 'seed': 0}]
  for m in modalities:
    conds += [{'modality': m, 'rate': float(r), 'kind': 'random', 'seed': 0} for r in rates]
  if missing:
    conds += [{'modality': m, 'rate': 1.0, 'kind': 'missing', 'seed': 0} for m in modalities]
  return conds


def corruption(run, state, data, split: str = 'test',
               rates=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
               modalities=('audio', 'video'), missing: bool = True, **unused) -> dict:
  """Accuracy under each corruption condition (one compiled eval step per condition)."""
  rows = []
  for cond in robustness_conditions(tuple(rates), tuple(modalities), missing):
    m = score(run, state, data, split, corrupt=cond)
    rows.append(dict(cond, **{k: m[k] for k in metrics_lib.METRIC_NAMES}, loss=m['loss']))
    logging.info('%s %s rate %.1f: accuracy %.4f', cond['kind'], cond['modality'] or 'none',
                 cond['rate'], m['accuracy'])
  return {'rows': rows}


EVALUATORS: dict[str, Callable] = {
    'classification': classification,
    'corruption': corruption,
}


def get(name: str) -> Callable:
  if name not in EVALUATORS:
    raise ValueError(f'unknown evaluator {name!r}; choose from {sorted(EVALUATORS)}')
  return EVALUATORS[name]


def run_all(run, state, data, evals_cfg, only=None) -> dict:
  """{eval name: result} of every evaluator in `evals_cfg` whose split exists."""
  out = {}
  for name, spec in dict(evals_cfg).items():
    if only is not None and name not in only:
      continue
    spec = dict(spec)
    split = spec.pop('split', 'test')
    if split in data.splits and data.splits[split] is None:
      logging.info('evaluator %r skipped: the dataset has no %r split', name, split)
      continue
    out[name] = get(spec.pop('type'))(run, state, data, split, **spec)
  return out

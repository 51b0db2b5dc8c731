"""Logistic regression on the deep audio model's own input: each clip's mean and std
over time of every feature the pipeline hands the model (same TFRecords, same
folds, same `input.audio_norm`), C chosen on the fold's validation actor by UAR,
the test actor scored once. It separates what the input carries from what the
deep model learns from it.

  python -m experiments.input_stats_baseline \
      --config=configs/mmt_ca.py:ravdess_audio+tuned+prosody+spknorm --folds=4 \
      --data_dir=/tmp/tfds_real --out=experiments/results/ravdess_audio_input_stats_lr
writes <out>.md (markdown table) and <out>.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from experiments import baselines

C_GRID = [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0]


def utterance_stats(audio: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """[N, T, F] features and [N, T] step masks -> [N, 2F] mean and std over valid steps."""
  w = valid[..., None].astype(np.float64)
  n = np.maximum(w.sum(1), 1.0)
  mean = (audio * w).sum(1) / n
  var = (((audio - mean[:, None]) ** 2) * w).sum(1) / n
  return np.concatenate([mean, np.sqrt(var)], -1).astype(np.float32)


def split_stats(data, role: str, audio_norm: str):
  """(statistics [N, 2F], labels [N]) of every example of a fold's split."""
  from data_pipelines import input_pipeline
  ds, _ = input_pipeline.eval_dataset(data.builder, data.split(role), 32, audio_norm=audio_norm)
  xs, ys = [], []
  for b in input_pipeline.as_numpy(ds):
    keep = b['valid'] > 0
    xs.append(utterance_stats(b['audio'][keep], b['audio_valid'][keep]))
    ys.append(b['label'][keep])
  return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def fit_select(x_tr, y_tr, x_val, y_val, num_classes: int, grid=C_GRID):
  """The LR (standardised on the training clips) with the best validation UAR
  (ties: the smaller C, the stronger regularisation). -> (model, C, val UAR)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  best = None
  for c in grid:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    model.fit(x_tr, y_tr)
    u = baselines.uar(y_val, model.predict(x_val), num_classes)
    if best is None or u > best[2]:
      best = (model, c, u)
  return best


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/mmt_ca.py:ravdess_audio+tuned+prosody+spknorm')
  p.add_argument('--folds', type=int, default=4)
  p.add_argument('--data_dir', default='')
  p.add_argument('--manual_dir', default='../shared/data/ravdess')
  p.add_argument('--out', default='experiments/results/ravdess_audio_input_stats_lr')
  args = p.parse_args(argv)

  from data_pipelines import input_pipeline
  from experiments import definitions as defs
  folds = []
  t0 = time.time()
  for k in range(args.folds):
    config = defs.load_config(f'{args.config},fold={k}')
    with config.unlocked():
      if args.data_dir:
        config.dataset.data_dir = args.data_dir
      config.dataset.manual_dir = args.manual_dir
    data = input_pipeline.prepare(config.dataset)
    n = int(config.dataset.num_classes)
    sets = {role: split_stats(data, role, config.input.audio_norm)
            for role in ('train', 'val', 'test')}
    model, c, val_uar = fit_select(*sets['train'], *sets['val'], n)
    x_te, y_te = sets['test']
    pred = model.predict(x_te)
    plan = data.fold_plan or {}
    folds.append({'fold': k, 'C': c, 'val_uar': val_uar,
                  'accuracy': float(np.mean(pred == y_te)),
                  'uar': baselines.uar(y_te, pred, n), 'num_test': int(len(y_te)),
                  'num_features': int(x_te.shape[1]),
                  'test_groups': plan.get('test'), 'val_groups': plan.get('validation')})
    print(f'fold {k}: C={c} val UAR {val_uar:.3f} test acc {folds[-1]["accuracy"]:.3f}',
          flush=True)
  acc = [f['accuracy'] for f in folds]
  uar = [f['uar'] for f in folds]
  summary = {'accuracy': [float(np.mean(acc)), float(np.std(acc, ddof=1))],
             'uar': [float(np.mean(uar)), float(np.std(uar, ddof=1))],
             'mean_val_uar': float(np.mean([f['val_uar'] for f in folds])),
             'seconds': time.time() - t0}
  lines = [f'Logistic regression on the mean and std over time of the input of `{args.config}` '
           f'({folds[0]["num_features"]} statistics), C on the validation actor by UAR.', '',
           '| fold | test actors | C | val UAR | test acc | test UAR |', '|---|---|---|---|---|---|']
  for f in folds:
    lines.append(f'| {f["fold"]} | {f["test_groups"]} | {f["C"]} | {100 * f["val_uar"]:.1f} | '
                 f'{100 * f["accuracy"]:.1f} | {100 * f["uar"]:.1f} |')
  lines.append(f'| mean ± std | | | {100 * summary["mean_val_uar"]:.1f} | '
               f'{100 * summary["accuracy"][0]:.1f} ± {100 * summary["accuracy"][1]:.1f} | '
               f'{100 * summary["uar"][0]:.1f} ± {100 * summary["uar"][1]:.1f} |')
  table = '\n'.join(lines) + '\n'
  baselines.write_results(args.out, table, {'config': args.config, 'folds': folds,
                                            'summary': summary})
  print(table)


if __name__ == '__main__':
  main()

"""Logistic regression on the deep audio model's own input: each clip's mean and std
over time of every feature the pipeline hands the model (same TFRecords, same
folds, same `input.audio_norm`), C chosen on the fold's validation actor by UAR,
the test actor scored once. It separates what the input carries from what the
deep model learns from it. The statistics follow the config's model
(`audio_stats_slope`, `audio_stats_percentiles`, as the `+functionals` variant
sets them) unless --slope / --percentiles say otherwise.

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


def utterance_stats(audio: np.ndarray, valid: np.ndarray, slope: bool = False,
                    percentiles=()) -> np.ndarray:
  """[N, T, F] features and [N, T] step masks -> [N, S] statistics over valid steps:
  mean and std of every feature; with `slope`, its least-squares slope against the
  standardised step index; for each feature index in `percentiles`, its 10th, 50th
  and 90th percentiles and their range (the model's `audio_stats_*`, same order;
  'all': every feature)."""
  if isinstance(percentiles, str):
    percentiles = range(audio.shape[-1]) if percentiles == 'all' else ()
  w = valid[..., None].astype(np.float64)
  n = np.maximum(w.sum(1), 1.0)
  mean = (audio * w).sum(1) / n
  var = (((audio - mean[:, None]) ** 2) * w).sum(1) / n
  parts = [mean, np.sqrt(var)]
  if slope:
    t = np.broadcast_to(np.arange(audio.shape[1], dtype=np.float64)[None, :, None], w.shape)
    t_mean = (t * w).sum(1) / n
    t_std = np.sqrt((((t - t_mean[:, None]) ** 2) * w).sum(1) / n)
    tz = (t - t_mean[:, None]) / np.maximum(t_std, 1e-6)[:, None]
    parts.append((tz * (audio - mean[:, None]) * w).sum(1) / n)
  if len(percentiles):
    p = np.zeros((audio.shape[0], 3, len(percentiles)))
    for i in range(audio.shape[0]):
      keep = valid[i] > 0
      if keep.any():
        p[i] = np.percentile(audio[i][keep][:, list(percentiles)], [10, 50, 90], axis=0)
    parts += [p.reshape(len(p), -1), p[:, 2] - p[:, 0]]
  return np.concatenate(parts, -1).astype(np.float32)


def split_stats(data, role: str, audio_norm: str, slope: bool = False, percentiles=()):
  """(statistics [N, S], labels [N]) of every example of a fold's split."""
  from data_pipelines import input_pipeline
  ds, _ = input_pipeline.eval_dataset(data.builder, data.split(role), 32, audio_norm=audio_norm)
  xs, ys = [], []
  for b in input_pipeline.as_numpy(ds):
    keep = b['valid'] > 0
    xs.append(utterance_stats(b['audio'][keep], b['audio_valid'][keep], slope, percentiles))
    ys.append(b['label'][keep])
  return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def _model(c: float):
  """Standardisation (fitted with the model) + logistic regression with inverse penalty C."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))


def fit_select(x_tr, y_tr, x_val, y_val, num_classes: int, grid=C_GRID):
  """The LR (standardised on the training clips) with the best validation UAR
  (ties: the smaller C, the stronger regularisation). -> (model, C, val UAR)."""
  best = None
  for c in grid:
    model = _model(c).fit(x_tr, y_tr)
    u = baselines.uar(y_val, model.predict(x_val), num_classes)
    if best is None or u > best[2]:
      best = (model, c, u)
  return best


def refit(x_tr, y_tr, x_val, y_val, c: float):
  """The LR with the chosen C fitted again on the training and validation clips together
  (the `refit` protocol of experiments.baselines and experiments.run --refit_from)."""
  return _model(c).fit(np.concatenate([x_tr, x_val]), np.concatenate([y_tr, y_val]))


def _statistics(args, config):
  """(slope, percentile feature indices) from the flags, else from the config's model."""
  model = config.model
  slope = bool(model.get('audio_stats_slope', False)) if args.slope == 'config' else \
      args.slope == 'yes'
  if args.percentiles == 'config':
    pcts = tuple(model.get('audio_stats_percentiles', ()))
  elif args.percentiles == 'none':
    pcts = ()
  elif args.percentiles == 'all':
    pcts = 'all'
  else:
    pcts = tuple(int(i) for i in args.percentiles.split(','))
  return slope, pcts


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/mmt_ca.py:ravdess_audio+tuned+prosody+spknorm')
  p.add_argument('--folds', type=int, default=4)
  p.add_argument('--data_dir', default='')
  p.add_argument('--manual_dir', default='../shared/data/ravdess')
  p.add_argument('--out', default='experiments/results/ravdess_audio_input_stats_lr')
  p.add_argument('--slope', choices=('config', 'yes', 'no'), default='config',
                 help="add each feature's slope over time (default: the config's model)")
  p.add_argument('--percentiles', default='config',
                 help="feature indices (may be < 0) given p10/p50/p90/range, 'all', 'none' "
                      "or 'config' (the model's audio_stats_percentiles)")
  p.add_argument('--protocol', choices=('val', 'refit'), default='val',
                 help='val: report the LR fitted on the training actors; refit: the same C '
                      'refitted on the training and validation actors')
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
    slope, pcts = _statistics(args, config)
    sets = {role: split_stats(data, role, config.input.audio_norm, slope, pcts)
            for role in ('train', 'val', 'test')}
    model, c, val_uar = fit_select(*sets['train'], *sets['val'], n)
    if args.protocol == 'refit':
      model = refit(*sets['train'], *sets['val'], c)
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
  what = 'mean and std' + (', slope' if slope else '') + (
      f', percentiles of features {pcts if isinstance(pcts, str) else list(pcts)}'
      if len(pcts) else '')
  lines = [f'Logistic regression on the {what} over time of the input of `{args.config}` '
           f'({folds[0]["num_features"]} statistics), C on the validation actor by UAR'
           + (', then refitted on the training and validation actors.' if args.protocol == 'refit'
              else '.'), '',
           '| fold | test actors | C | val UAR | test acc | test UAR |', '|---|---|---|---|---|---|']
  for f in folds:
    lines.append(f'| {f["fold"]} | {f["test_groups"]} | {f["C"]} | {100 * f["val_uar"]:.1f} | '
                 f'{100 * f["accuracy"]:.1f} | {100 * f["uar"]:.1f} |')
  lines.append(f'| mean ± std | | | {100 * summary["mean_val_uar"]:.1f} | '
               f'{100 * summary["accuracy"][0]:.1f} ± {100 * summary["accuracy"][1]:.1f} | '
               f'{100 * summary["uar"][0]:.1f} ± {100 * summary["uar"][1]:.1f} |')
  table = '\n'.join(lines) + '\n'
  baselines.write_results(args.out, table, {'config': args.config, 'slope': slope,
                                            'protocol': args.protocol,
                                            'percentiles': pcts if isinstance(pcts, str) else list(pcts), 'folds': folds,
                                            'summary': summary})
  print(table)


if __name__ == '__main__':
  main()

"""Seed ensembles of a finished table: the members' posteriors averaged per fold.

A table run by `experiments.run` with several seeds holds, per fold, models that differ
only by their seed. On small data their test scores spread widely (one RAVDESS actor is
60 clips), so averaging the posteriors of k of them is the classical variance cut (deep
ensembles). Per fold, the seeds are taken in order in disjoint groups of `--size`
(seeds 0-2, 3-5, ...); each member is its run's best checkpoint, as chosen by the run's
own validation; the ensemble's decision is the argmax of the mean of the members'
probabilities. Validation figures of the ensembles are reported beside the single
models', so whether ensembling helps can be judged without the test split. No training.

  python -m experiments.seed_ensemble --table=runs/ravdess_audio_functionals --size=3 \\
      --out=experiments/results/ravdess_audio_ensemble
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re

import numpy as np

from experiments import late_fusion


def combine(log_probs: list, how: str = 'prob') -> np.ndarray:
  """Log of the ensemble's posterior from its members' log-probabilities [N, C]:
  'prob' averages probabilities, 'logprob' averages log-probabilities (a normalised
  geometric mean)."""
  lp = np.stack([np.asarray(x, np.float64) for x in log_probs])
  if how == 'prob':
    m = lp.max(0)
    return m + np.log(np.mean(np.exp(lp - m), 0))
  if how == 'logprob':
    g = lp.mean(0)
    m = g.max(-1, keepdims=True)
    return g - m - np.log(np.sum(np.exp(g - m), -1, keepdims=True))
  raise ValueError(f"combine: how must be 'prob' or 'logprob', not {how!r}")


def groups(seeds: list[int], size: int) -> list[tuple[int, ...]]:
  """Disjoint groups of `size` seeds in ascending order; an incomplete last group is
  dropped."""
  s = sorted(seeds)
  return [tuple(s[i:i + size]) for i in range(0, len(s) - size + 1, size)]


def _scores(lp, y):
  return late_fusion._scores(lp, y, lp.shape[-1])  # (UAR, accuracy)


def evaluate(preds: dict, size: int, how: str = 'prob') -> dict:
  """`preds`: {fold: {seed: {split: (lp, y)}}} (splits 'val' and / or 'test') -> single
  and ensemble scores per fold."""
  out = {'singles': [], 'ensembles': []}
  for fold, by_seed in sorted(preds.items()):
    splits = [s for s in ('val', 'test') if all(s in p for p in by_seed.values())]
    for seed, p in sorted(by_seed.items()):
      row = {'fold': fold, 'seed': seed}
      for split in splits:
        row[f'{split}_uar'], row[f'{split}_accuracy'] = _scores(*p[split])
      out['singles'].append(row)
    for g in groups(list(by_seed), size):
      row = {'fold': fold, 'seeds': list(g)}
      for split in splits:
        ys = [by_seed[s][split][1] for s in g]
        if any(not np.array_equal(ys[0], y) for y in ys[1:]):
          raise ValueError(f'fold {fold}: seeds {g} do not score the same {split} examples '
                           'in the same order')
        lp = combine([by_seed[s][split][0] for s in g], how)
        row[f'{split}_uar'], row[f'{split}_accuracy'] = _scores(lp, ys[0])
      out['ensembles'].append(row)
  return out


def _ms(v):
  v = 100 * np.asarray(v, float)
  return f'{v.mean():.1f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.1f}'


def _mean(rows, key) -> str:
  v = [r[key] for r in rows if key in r]
  return f'{100 * np.mean(v):.1f}' if v else '-'


def markdown(res: dict, size: int) -> str:
  singles, ens = res['singles'], res['ensembles']
  folds = sorted({r['fold'] for r in singles})
  lines = [f'| fold | single models: test acc (mean over seeds) | ensembles of {size}: test acc '
           '| single val UAR (mean) | ensemble val UAR (mean) |', '|---|---|---|---|---|']
  for f in folds:
    s = [r for r in singles if r['fold'] == f]
    e = [r for r in ens if r['fold'] == f]
    ens_acc = ', '.join(f"{100 * r['test_accuracy']:.1f}" for r in e) or '-'
    lines.append(f"| {f} | {_mean(s, 'test_accuracy')} | {ens_acc} | {_mean(s, 'val_uar')} | "
                 f"{_mean(e, 'val_uar')} |")
  col = lambda rows, k: [r[k] for r in rows if k in r]
  ms = lambda rows, k: _ms(col(rows, k)) if col(rows, k) else '-'
  lines += ['', '| | runs | val UAR | test acc | test UAR |', '|---|---|---|---|---|']
  for name, rows in (('single models', singles), (f'ensembles of {size} seeds', ens)):
    if rows:
      lines.append(f"| {name} | {len(rows)} | {ms(rows, 'val_uar')} | "
                   f"{ms(rows, 'test_accuracy')} | {ms(rows, 'test_uar')} |")
  if ens:
    by_group = collections.defaultdict(list)
    for r in ens:
      by_group[tuple(r['seeds'])].append(r['test_accuracy'])
    means = {g: np.mean(v) for g, v in by_group.items() if len(v) == len(folds)}
    if means:
      lines += ['', 'Per-ensemble means over the folds, test accuracy: ' + '; '.join(
          f"seeds {','.join(map(str, g))}: {100 * m:.1f}" for g, m in means.items())
          + (f' (std {100 * np.std(list(means.values()), ddof=1):.1f})' if len(means) > 1 else '')]
  return '\n'.join(lines) + '\n'


def _has_validation(workdir: str) -> bool:
  """Whether a run has a validation split of its own: a refit run (experiments.run
  --refit_from) trains on its validation groups and monitors on the test groups."""
  plan = os.path.join(workdir, 'fold_plan.json')
  if os.path.exists(plan):
    with open(plan) as f:
      p = json.load(f)
    if sorted(p.get('validation', [])) == sorted(p.get('test', [])):
      return False
  with open(os.path.join(workdir, 'results.json')) as f:
    return 'val' in json.load(f)


def collect(row_dir: str, data_dir: str = '') -> dict:
  preds = collections.defaultdict(dict)
  for d in sorted(glob.glob(os.path.join(row_dir, 'fold*_seed*'))):
    m = re.fullmatch(r'fold(\d+)_seed(\d+)', os.path.basename(d))
    if not m:
      continue
    if not os.path.exists(os.path.join(d, 'results.json')):
      print(f'{d}: no finished run; skipped', flush=True)
      continue
    splits = ('val', 'test') if _has_validation(d) else ('test',)
    preds[int(m.group(1))][int(m.group(2))] = late_fusion.split_log_probs(d, splits, data_dir)
    print(f'scored {os.path.basename(d)}', flush=True)
  return dict(preds)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--table', required=True,
                 help='Directory of a table run by experiments.run (one folder per row).')
  p.add_argument('--row', default='', help='The row folder (default: the only one).')
  p.add_argument('--size', type=int, default=3, help='Seeds per ensemble.')
  p.add_argument('--combine', default='prob', choices=('prob', 'logprob'),
                 help='Average probabilities or log-probabilities.')
  p.add_argument('--out', default='', help='Write <out>.md and <out>.json.')
  p.add_argument('--data_dir', default='', help="TFDS data_dir of the runs' dataset.")
  args = p.parse_args(argv)
  if args.size < 2:
    raise SystemExit(f'--size must be at least 2, not {args.size}')
  rows = ([args.row] if args.row else
          sorted(os.path.basename(os.path.dirname(d))
                 for d in glob.glob(os.path.join(args.table, '*', 'fold*_seed*'))))
  rows = sorted(set(rows))
  if len(rows) != 1:
    raise SystemExit(f'{args.table}: {"no row with runs" if not rows else "rows " + ", ".join(rows)}'
                     '; name one with --row')
  from mer_jax import contract
  contract.quiet_libraries()
  preds = collect(os.path.join(args.table, rows[0]), args.data_dir)
  if not preds:
    raise SystemExit(f'no finished run under {os.path.join(args.table, rows[0])}')
  res = evaluate(preds, args.size, args.combine)
  table = markdown(res, args.size)
  print(table)
  if args.out:
    from experiments import baselines
    baselines.write_results(args.out, table, {'table': os.path.abspath(args.table),
                                              'row': rows[0], 'size': args.size,
                                              'combine': args.combine, **res})


if __name__ == '__main__':
  main()

"""Paper-style tables from the runs of an experiment directory.

Layout written by `experiments.run`:
  <root>/<experiment>/<variant>/<run>/results.json   one training (fold, seed)
  <root>/<experiment>/<variant>/<run>/robustness.json  optional corruption sweep
Tables written here, beside the runs:
  table.md, table.csv    one row per variant: mean ± std of each metric over runs
  runs.csv               every run's metrics (the numbers the means come from)
  robustness.md/.csv/.png  accuracy against the corruption rate (when swept)

Metrics are in percent. std is the sample standard deviation (n - 1 in the
denominator) over the runs of a variant, 0 for a single run.
"""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np


def slug(name: str) -> str:
  """A directory name for a variant label ('IT-4 + CT-4 (full)' -> 'it-4_ct-4_full')."""
  s = re.sub(r'[^a-zA-Z0-9.-]+', '_', name.strip().lower()).strip('_')
  return s or 'variant'


def run_name(fold, seed) -> str:
  return f'seed{seed}' if fold is None else f'fold{fold}_seed{seed}'


def mean_std(values) -> tuple[float, float]:
  x = np.asarray(values, np.float64)
  if x.size == 0:
    return float('nan'), float('nan')
  return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def collect(exp_dir: str, variants: list[str], split: str = 'test') -> list[dict]:
  """Per-run rows {variant, run, fold, seed, metrics...} of every finished run."""
  rows = []
  for variant in variants:
    vdir = os.path.join(exp_dir, slug(variant))
    if not os.path.isdir(vdir):
      continue
    for run in sorted(os.listdir(vdir)):
      path = os.path.join(vdir, run, 'results.json')
      if not os.path.exists(path):
        continue
      with open(path) as f:
        res = json.load(f)
      if split not in res:
        continue
      prov = res.get('provenance') or {}
      fold = prov.get('fold') or {}
      data = prov.get('dataset') or {}
      row = {'variant': variant, 'run': run, 'fold': fold.get('index', ''),
             'seed': prov.get('seed', ''), 'config': prov.get('config_arg', ''),
             'preset_variant': prov.get('variant', ''), 'config_hash': prov.get('config_hash', ''),
             'commit': (prov.get('code') or {}).get('commit', 'unknown'),
             'dataset': data.get('name', res.get('dataset', '')),
             'dataset_version': data.get('version', ''),
             'data_fingerprint': data.get('fingerprint', ''),
             'test_groups': ' '.join(map(str, fold.get('test', []))),
             'split': split, 'steps': res.get('steps'), 'train_time_s': res.get('train_time_s')}
      row.update({k: v for k, v in res[split].items() if np.ndim(v) == 0})
      rows.append(row)
  return rows


def summarize(rows: list[dict], variants: list[str], metrics) -> list[dict]:
  out = []
  for variant in variants:
    mine = [r for r in rows if r['variant'] == variant]
    s = {'variant': variant, 'n': len(mine)}
    for m in metrics:
      s[m + '_mean'], s[m + '_std'] = mean_std([r[m] for r in mine])
    out.append(s)
  return out


_LABELS = {'accuracy': 'Accuracy', 'wa': 'WA', 'uar': 'UAR', 'macro_precision': 'Precision',
           'macro_recall': 'Recall', 'macro_f1': 'F1'}


def markdown(summary: list[dict], metrics, title: str = '', notes: str = '') -> str:
  lines = []
  if title:
    lines += [f'### {title}', '']
  lines.append('| variant | runs | ' + ' | '.join(_LABELS.get(m, m) for m in metrics) + ' |')
  lines.append('|---|---|' + '---|' * len(metrics))
  for s in summary:
    cells = [f"{100 * s[m + '_mean']:.2f} ± {100 * s[m + '_std']:.2f}" if s['n'] else '-'
             for m in metrics]
    lines.append(f"| {s['variant']} | {s['n']} | " + ' | '.join(cells) + ' |')
  lines.append('')
  lines.append('Test split, percent, mean ± sample std over folds and seeds '
               '(macro averages over classes; UAR = mean per-class recall; WA = accuracy).')
  if notes:
    lines += ['', notes]
  return '\n'.join(lines) + '\n'


def provenance_note(rows: list[dict]) -> str:
  """What the table's runs were made from: datasets, code commits, wall time."""
  if not rows:
    return ''
  data = sorted({f"{r['dataset']} {r['dataset_version']} (records {r['data_fingerprint']})"
                 for r in rows})
  commits = sorted({str(r['commit'])[:12] for r in rows})
  hours = sum(float(r.get('train_time_s') or 0.0) for r in rows) / 3600
  return (f"\nData: {'; '.join(data)}. Code: {', '.join(commits)}. "
          f'Training time: {hours:.2f} h over {len(rows)} runs (runs.csv has every run).\n')


def _write_csv(path: str, rows: list[dict]):
  if not rows:
    open(path, 'w').close()
    return
  keys = []
  for r in rows:
    keys += [k for k in r if k not in keys]
  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)


def write_tables(exp_dir: str, variants: list[str], metrics, title: str = '',
                 notes: str = '') -> dict:
  """Writes table.md, table.csv and runs.csv; returns the summary rows."""
  rows = collect(exp_dir, variants)
  summary = summarize(rows, variants, metrics)
  with open(os.path.join(exp_dir, 'table.md'), 'w') as f:
    f.write(markdown(summary, metrics, title, notes) + provenance_note(rows))
  _write_csv(os.path.join(exp_dir, 'table.csv'), summary)
  _write_csv(os.path.join(exp_dir, 'runs.csv'), rows)
  return {'runs': rows, 'summary': summary}


def _condition(row: dict) -> str:
  if not row['modality']:
    return 'clean'
  if row['kind'] == 'missing':
    return f"{row['modality']} missing"
  return f"{row['modality']} {int(round(100 * row['rate']))}%"


def write_robustness(exp_dir: str, variants: list[str], title: str = '') -> dict:
  """robustness.md/.csv/.png from every run's robustness.json (test accuracy)."""
  from mer_jax import plots
  per = {}  # (variant, condition) -> [accuracy over runs]
  order = []
  flat = []
  for variant in variants:
    vdir = os.path.join(exp_dir, slug(variant))
    if not os.path.isdir(vdir):
      continue
    for run in sorted(os.listdir(vdir)):
      path = os.path.join(vdir, run, 'robustness.json')
      if not os.path.exists(path):
        continue
      with open(path) as f:
        sweep = json.load(f)
      for row in sweep:
        cond = _condition(row)
        if cond not in order:
          order.append(cond)
        per.setdefault((variant, cond), []).append(row['accuracy'])
        flat.append({'variant': variant, 'run': run, 'condition': cond, **row})
  if not flat:
    return {}
  _write_csv(os.path.join(exp_dir, 'robustness.csv'), flat)
  present = [v for v in variants if any(k[0] == v for k in per)]
  lines = [f'### {title or "Robustness"}', '',
           '| condition | ' + ' | '.join(present) + ' |', '|---|' + '---|' * len(present)]
  for cond in order:
    cells = []
    for v in present:
      vals = per.get((v, cond))
      if vals:
        m, s = mean_std(vals)
        cells.append(f'{100 * m:.2f} ± {100 * s:.2f}')
      else:
        cells.append('-')
    lines.append(f'| {cond} | ' + ' | '.join(cells) + ' |')
  lines += ['', 'Test accuracy (%), mean ± sample std over runs. "audio 30%": 30% of the audio '
            'values replaced by random values at test time; "missing": the modality hidden.']
  with open(os.path.join(exp_dir, 'robustness.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  curves, missing = {}, {}
  for v in present:
    for modality in ('audio', 'video'):
      if (v, f'{modality} missing') in per:
        missing[f'{v}: {modality}'] = mean_std(per[(v, f'{modality} missing')])
      pts = [(0.0, per[(v, 'clean')])] if (v, 'clean') in per else []
      pts += [(r / 100, per[(v, f'{modality} {r}%')]) for r in range(5, 100, 5)
              if (v, f'{modality} {r}%') in per]
      if len(pts) > 1:
        stats = [mean_std(acc) for _, acc in pts]
        curves[f'{v}: {modality}'] = ([p[0] for p in pts], [s[0] for s in stats],
                                      [s[1] for s in stats])
  if curves:
    plots.robustness(curves, os.path.join(exp_dir, 'robustness.png'), title, missing)
  return {'conditions': order, 'variants': present}

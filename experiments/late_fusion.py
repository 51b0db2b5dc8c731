"""Score-level fusion of two trained unimodal runs, its weight chosen on validation.

For each fold and seed of a table's two unimodal rows (e.g. the `audio` and `face`
rows of `mmt_ca_ferplus_fusion`, which read the same paired dataset), both best
checkpoints score every validation and test example; the fused decision is

    w * log p_audio + (1 - w) * log p_face,

with w on a grid in [0, 1] chosen by validation UAR (ties: validation accuracy, then
the w nearest 0.5), or fixed with `--weight`: w = 0.5 is the product of the two
posteriors, the Bayes decision when the modalities are independent given the class
and the classes balanced (true by construction of a pairing such as RAVDESS x FER+,
whose face is drawn at random among the utterance's class). Test examples are scored
once. No training: this is the classical late-fusion baseline beside the fused models
that learn their fusion.

  python -m experiments.late_fusion --table=runs/mmt_ca_ferplus_fusion \
      --rows=audio,face --out=experiments/results/ravdess_ferplus_fusion/score_fusion
"""

from __future__ import annotations

import argparse
import glob
import os
import re

import numpy as np


def log_probs(workdir: str, split: str, data_dir: str = ''):
  """(log-probabilities [N, C], labels [N]) of a run's best checkpoint on a split of
  its own dataset (its fold), every example once, in the pipeline's order."""
  return split_log_probs(workdir, (split,), data_dir)[split]


def split_log_probs(workdir: str, splits, data_dir: str = '') -> dict:
  """{split: (log-probabilities [N, C], labels [N])} of a run's best checkpoint, the
  checkpoint restored once for all `splits`."""
  import jax
  from data_pipelines import input_pipeline
  from mer_jax import assembly, sharding
  from mer_jax import contract as bc
  run, state, _ = assembly.restore_run(workdir)
  cfg = run.config.dataset.copy_and_resolve_references()
  if data_dir:
    with cfg.unlocked():
      cfg.data_dir = data_dir
  data = input_pipeline.prepare(cfg)
  bs = run.config.input.eval_batch_size

  @jax.jit
  def predict(batch):
    batch = bc.mask_modalities(batch, run.masked)  # as the run's own evaluation
    out = state.apply_fn(assembly.eval_variables(state), batch, train=False)
    return jax.nn.log_softmax(out['logits'].astype(np.float32), axis=-1)

  result = {}
  for split in splits:
    ds, _ = input_pipeline.eval_dataset(data.builder, data.split(split), bs,
                                        audio_norm=run.config.input.audio_norm)
    lp, labels = [], []
    for batch in input_pipeline.as_numpy(ds):
      keep = batch['valid'] > 0
      lp.append(np.asarray(sharding.to_host(predict(batch)))[keep])
      labels.append(batch['label'][keep])
    result[split] = (np.concatenate(lp), np.concatenate(labels))
  return result


def _uar(y, pred, num_classes):
  rec = [np.mean(pred[y == c] == c) for c in range(num_classes) if np.any(y == c)]
  return float(np.mean(rec))


def _scores(lp, y, num_classes) -> tuple[float, float]:
  """(UAR, accuracy) of the argmax decisions of log-probabilities `lp`."""
  pred = np.argmax(lp, -1)
  return _uar(y, pred, num_classes), float(np.mean(pred == y))


def choose_weight(lp_a, lp_b, y, grid: int = 21) -> tuple[float, float, float]:
  """(w, validation UAR, validation accuracy) maximising UAR, then accuracy, then
  nearness to 0.5."""
  best = None
  c = lp_a.shape[1]
  for w in np.linspace(0.0, 1.0, grid):
    key = (*_scores(w * lp_a + (1 - w) * lp_b, y, c), -abs(w - 0.5))
    if best is None or key > best[0]:
      best = (key, float(w))
  (u, a, _), w = best
  return w, u, a


def fuse_run(dir_a: str, dir_b: str, grid: int = 21, data_dir: str = '',
             weight: float | None = None) -> dict:
  """Scores of the fused decision on a pair of runs; `weight` fixes w (else chosen)."""
  a = split_log_probs(dir_a, ('val', 'test'), data_dir)
  b = split_log_probs(dir_b, ('val', 'test'), data_dir)
  (va_a, yv), (te_a, yt) = a['val'], a['test']
  (va_b, yv2), (te_b, yt2) = b['val'], b['test']
  if not (np.array_equal(yv, yv2) and np.array_equal(yt, yt2)):
    raise ValueError(f'{dir_a} and {dir_b} do not read the same examples in the same order')
  c = va_a.shape[1]
  if weight is None:
    w, val_uar, val_acc = choose_weight(va_a, va_b, yv, grid)
  else:
    w = float(weight)
    val_uar, val_acc = _scores(w * va_a + (1 - w) * va_b, yv, c)
  res = {'w': w, 'val_uar': val_uar, 'val_accuracy': val_acc, 'n_val': int(yv.size),
         'n_test': int(yt.size)}
  for name, lp in (('fused', w * te_a + (1 - w) * te_b), ('a', te_a), ('b', te_b)):
    res[f'{name}_test_uar'], res[f'{name}_test_accuracy'] = _scores(lp, yt, c)
  return res


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--table', required=True, help='Directory of a table run by experiments.run '
                 '(one folder per row, fold*_seed* inside).')
  p.add_argument('--rows', default='audio,face',
                 help='The two unimodal rows: the first gets w, the second 1-w.')
  p.add_argument('--grid', type=int, default=21, help='Number of weights on [0, 1].')
  p.add_argument('--weight', default='val',
                 help="'val' (w chosen on the validation split) or a fixed w in [0, 1]; "
                 '0.5 = the product of the two posteriors.')
  p.add_argument('--out', default='', help='Write <out>.md and <out>.json.')
  p.add_argument('--data_dir', default='',
                 help="TFDS data_dir of the runs' dataset (default: the runs').")
  args = p.parse_args(argv)
  from mer_jax import contract
  contract.quiet_libraries()
  row_a, row_b = args.rows.split(',')
  weight = None if args.weight == 'val' else float(args.weight)
  if weight is not None and not 0.0 <= weight <= 1.0:
    raise SystemExit(f'--weight must be in [0, 1] or "val", not {args.weight}')
  runs = {}
  for d in sorted(glob.glob(os.path.join(args.table, row_a, 'fold*_seed*'))):
    name = os.path.basename(d)
    other = os.path.join(args.table, row_b, name)
    if not (os.path.exists(os.path.join(d, 'results.json'))
            and os.path.exists(os.path.join(other, 'results.json'))):
      print(f'{name}: a row has no finished run; skipped', flush=True)
      continue
    runs[name] = fuse_run(d, other, args.grid, args.data_dir, weight)
    r = runs[name]
    print(f"{name}: w={r['w']:.2f} (val UAR {100 * r['val_uar']:.1f})  test acc "
          f"{row_a} {100 * r['a_test_accuracy']:.1f}  {row_b} {100 * r['b_test_accuracy']:.1f}  "
          f"fused {100 * r['fused_test_accuracy']:.1f}", flush=True)
  if not runs:
    raise SystemExit(f'no pair of finished runs under {args.table}/{{{row_a},{row_b}}}')
  table = markdown(runs, row_a, row_b)
  print(table)
  if args.out:
    from experiments import baselines
    baselines.write_results(args.out, table, {'table': os.path.abspath(args.table),
                                              'rows': [row_a, row_b], 'grid': args.grid,
                                              'weight': args.weight,
                                              'runs': runs})


def _ms(v):
  v = 100 * np.asarray(v, float)
  return f'{v.mean():.1f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.1f}'


def markdown(runs: dict, row_a: str, row_b: str) -> str:
  lines = [f'| run | w ({row_a}) | val UAR | test acc {row_a} | test acc {row_b} | '
           f'test acc fused | fused - {row_b} |', '|---|---|---|---|---|---|---|']
  for name, r in runs.items():
    lines.append(f"| {name} | {r['w']:.2f} | {100 * r['val_uar']:.1f} | "
                 f"{100 * r['a_test_accuracy']:.1f} | {100 * r['b_test_accuracy']:.1f} | "
                 f"{100 * r['fused_test_accuracy']:.1f} | "
                 f"{100 * (r['fused_test_accuracy'] - r['b_test_accuracy']):+.1f} |")
  col = lambda k: [r[k] for r in runs.values()]
  diff = np.array(col('fused_test_accuracy')) - np.array(col('b_test_accuracy'))
  lines.append(f"| **mean ± std ({len(runs)} runs)** | | | {_ms(col('a_test_accuracy'))} | "
               f"{_ms(col('b_test_accuracy'))} | {_ms(col('fused_test_accuracy'))} | "
               f"{_ms(diff)} |")
  seeds = sorted({int(re.search(r'seed(\d+)', n).group(1)) for n in runs})
  if len(seeds) > 1:
    per_seed = {s: [r for n, r in runs.items() if n.endswith(f'seed{s}')] for s in seeds}
    means = lambda k: [np.mean([r[k] for r in v]) for v in per_seed.values()]
    lines.append('')
    lines.append('Per-seed means (over folds), test accuracy: ' + '; '.join(
        f"seed {s}: {row_a} {100 * a:.1f}, {row_b} {100 * b:.1f}, fused {100 * f:.1f}"
        for s, a, b, f in zip(seeds, means('a_test_accuracy'), means('b_test_accuracy'),
                              means('fused_test_accuracy'))))
    fm, bm = np.array(means('fused_test_accuracy')), np.array(means('b_test_accuracy'))
    lines.append(f'Spread over seeds (std of the per-seed means): fused {100 * fm.std(ddof=1):.1f}, '
                 f'{row_b} {100 * bm.std(ddof=1):.1f}; fused - {row_b} per seed: '
                 + ', '.join(f'{100 * d:+.1f}' for d in fm - bm))
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()

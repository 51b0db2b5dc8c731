"""Classical baselines for FER+ faces: HOG + linear SVM, pixels + logistic regression.

They read the same TFRecords and split strings as the deep run they are compared
with (`configs/mmt_ca.py:ferplus_face+tuned+heldout` by default), so train,
selection and test images are the same. C is chosen on the selection split by
accuracy; the test split is scored once, with the chosen C.

  python -m experiments.face_baselines --data_dir=/tmp/tfds_real \
      --out=experiments/results/ferplus_face_baselines
writes <out>.md (markdown table) and <out>.json.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from experiments import baselines

HOG_GRID = {'C': [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3]}
LR_GRID = {'C': [1e-3, 3e-3, 1e-2, 3e-2, 0.1]}


def hog_features(faces: np.ndarray) -> np.ndarray:
  """u8 [N, 48, 48] grey faces -> f32 [N, 900] HOG (8-px cells, 2x2-cell blocks, 9 bins)."""
  import cv2
  size = faces.shape[1]
  hog = cv2.HOGDescriptor((size, size), (16, 16), (8, 8), (8, 8), 9)
  return np.stack([hog.compute(np.ascontiguousarray(f)).ravel() for f in faces]).astype(np.float32)


def load_split(builder, split: str):
  """(u8 grey faces [N, H, W], int labels [N]) of one TFDS split string."""
  import tensorflow_datasets as tfds
  faces, labels = [], []
  for ex in tfds.as_numpy(builder.as_dataset(split=split, batch_size=1024)):
    faces.append(ex['video'][:, 0, :, :, 0])  # [B, 1, H, W, 3] with equal channels
    labels.append(ex['label'])
  return np.concatenate(faces), np.concatenate(labels).astype(np.int64)


def scores(y, pred, num_classes: int) -> dict:
  return {'accuracy': float(np.mean(pred == y)), 'uar': baselines.uar(y, pred, num_classes)}


def run_model(name, make, grid, x_tr, y_tr, x_sel, y_sel, x_te, y_te, num_classes) -> dict:
  t0 = time.time()
  tried = []
  best = None
  for c in grid['C']:
    model = make(c).fit(x_tr, y_tr)
    sel = scores(y_sel, model.predict(x_sel), num_classes)
    tried.append({'C': c, **{f'sel_{k}': v for k, v in sel.items()}})
    print(f'  {name} C={c}: selection acc {sel["accuracy"]:.4f}', flush=True)
    if best is None or sel['accuracy'] > best[0]['accuracy']:
      best = (sel, c, model)
  sel, c, model = best
  test = scores(y_te, model.predict(x_te), num_classes)
  return {'model': name, 'C': c, 'selection': sel, 'test': test, 'grid': tried,
          'seconds': time.time() - t0}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='configs/mmt_ca.py:ferplus_face+tuned+heldout',
                 help='the deep run whose dataset and splits to use')
  p.add_argument('--data_dir', default='')
  p.add_argument('--manual_dir', default='../shared/data/ferplus')
  p.add_argument('--out', default='experiments/results/ferplus_face_baselines')
  args = p.parse_args(argv)

  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  from sklearn.svm import LinearSVC

  from data_pipelines import input_pipeline
  from experiments import definitions as defs
  config = defs.load_config(args.config)
  with config.unlocked():
    if args.data_dir:
      config.dataset.data_dir = args.data_dir
    config.dataset.manual_dir = args.manual_dir
  ds = config.dataset
  builder = input_pipeline.get_builder(ds)
  t0 = time.time()
  data = {role: load_split(builder, split) for role, split in
          (('train', ds.train_split), ('selection', ds.val_split), ('test', ds.test_split))}
  print('faces: ' + ', '.join(f'{r} {len(v[1])}' for r, v in data.items()), flush=True)
  n = int(ds.num_classes)
  feats = {
      'HOG + linear SVM': {r: hog_features(f) for r, (f, _) in data.items()},
      'pixels + logistic regression': {r: f.reshape(len(f), -1).astype(np.float32) / 255.0
                                       for r, (f, _) in data.items()},
  }
  print(f'features in {time.time() - t0:.0f} s', flush=True)
  makers = {
      'HOG + linear SVM': (lambda c: make_pipeline(StandardScaler(), LinearSVC(C=c, dual=False)),
                           HOG_GRID),
      'pixels + logistic regression': (
          lambda c: make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300)),
          LR_GRID),
  }
  ys = {r: y for r, (_, y) in data.items()}
  results = []
  for name, (make, grid) in makers.items():
    f = feats[name]
    results.append(run_model(name, make, grid, f['train'], ys['train'], f['selection'],
                             ys['selection'], f['test'], ys['test'], n))
    r = results[-1]
    print(f'{name}: C={r["C"]} selection {r["selection"]["accuracy"]:.4f} '
          f'test {r["test"]["accuracy"]:.4f} UAR {r["test"]["uar"]:.4f} ({r["seconds"]:.0f} s)',
          flush=True)
  meta = {'config': args.config, 'dataset': ds.name,
          'splits': {'train': ds.train_split, 'selection': ds.val_split, 'test': ds.test_split},
          'sizes': {r: int(len(y)) for r, y in ys.items()}}
  with open(args.out + '.json', 'w') as fh:
    json.dump({'meta': meta, 'results': results}, fh, indent=1)
  lines = [f'FER+ `{ds.name}`: train `{ds.train_split}` ({meta["sizes"]["train"]}), '
           f'selection `{ds.val_split}` ({meta["sizes"]["selection"]}), test '
           f'`{ds.test_split}` ({meta["sizes"]["test"]}); C chosen on selection accuracy.', '',
           '| model | C | selection acc | test acc | test UAR | fit s (grid) |',
           '|---|---|---|---|---|---|']
  for r in results:
    lines.append(f'| {r["model"]} | {r["C"]} | {100 * r["selection"]["accuracy"]:.1f} | '
                 f'{100 * r["test"]["accuracy"]:.1f} | {100 * r["test"]["uar"]:.1f} | '
                 f'{r["seconds"]:.0f} |')
  with open(args.out + '.md', 'w') as fh:
    fh.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()

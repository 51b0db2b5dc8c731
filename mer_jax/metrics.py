"""Classification metrics as the emotion-recognition papers report them.

All are computed from one confusion matrix (rows: true class, columns:
predicted), accumulated exactly over an evaluation split.
- accuracy = WA (weighted accuracy, the IEMOCAP literature's name)
- UAR = UA = mean per-class recall = macro recall
- macro precision / recall / F1: unweighted means over classes; a class with
  no predictions (or no examples) counts 0 for that metric, as scikit-learn
  does with zero_division=0.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ('accuracy', 'wa', 'uar', 'macro_precision', 'macro_recall', 'macro_f1')


def confusion_matrix(labels, preds, num_classes: int, weights=None) -> np.ndarray:
  labels = np.asarray(labels, np.int64)
  preds = np.asarray(preds, np.int64)
  w = np.ones_like(labels, np.int64) if weights is None else np.asarray(weights).astype(np.int64)
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, preds), w)
  return cm


def per_class(cm: np.ndarray) -> dict:
  cm = np.asarray(cm, np.float64)
  tp = np.diag(cm)
  support = cm.sum(axis=1)
  predicted = cm.sum(axis=0)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  return {'precision': precision, 'recall': recall, 'f1': f1, 'support': support}


def from_confusion(cm) -> dict:
  """Scalar metrics (fractions in [0, 1]) and the matrix itself."""
  cm = np.asarray(cm)
  total = cm.sum()
  pc = per_class(cm)
  # Macro averages over the classes that occur in the labels or predictions,
  # matching sklearn's label set when `labels=` is not given.
  present = (pc['support'] > 0) | (cm.sum(axis=0) > 0)
  if not present.any():
    present = np.ones_like(present)
  acc = float(np.trace(cm) / total) if total else 0.0
  out = {
      'accuracy': acc,
      'wa': acc,
      'macro_precision': float(pc['precision'][present].mean()),
      'macro_recall': float(pc['recall'][present].mean()),
      'macro_f1': float(pc['f1'][present].mean()),
      'num_examples': int(total),
      'confusion_matrix': cm.astype(int).tolist(),
  }
  # UAR averages recall over the classes that have examples.
  has = pc['support'] > 0
  out['uar'] = float(pc['recall'][has].mean()) if has.any() else 0.0
  return out


def format_table(rows: dict, names=('accuracy', 'macro_precision', 'macro_recall',
                                    'macro_f1', 'uar')) -> str:
  """Markdown table: one row per split, metrics in percent."""
  header = '| split | ' + ' | '.join(names) + ' |'
  lines = [header, '|' + '---|' * (len(names) + 1)]
  for split, m in rows.items():
    lines.append(f'| {split} | ' + ' | '.join(f'{100 * m[n]:.2f}' for n in names) + ' |')
  return '\n'.join(lines)

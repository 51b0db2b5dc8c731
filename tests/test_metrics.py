"""Metrics from the confusion matrix equal scikit-learn's."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mer_jax import metrics


@pytest.mark.parametrize('seed,num_classes', [(0, 6), (1, 8), (2, 4)])
def test_metrics_equal_sklearn(seed, num_classes):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, 200)
  # A biased classifier, so precision and recall differ per class.
  preds = np.where(rng.uniform(size=200) < 0.6, labels, rng.integers(0, num_classes - 1, 200))
  cm = metrics.confusion_matrix(labels, preds, num_classes)
  np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds, labels=range(num_classes)))
  m = metrics.from_confusion(cm)
  assert m['accuracy'] == pytest.approx(skm.accuracy_score(labels, preds))
  assert m['wa'] == m['accuracy']
  p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, average='macro', zero_division=0)
  assert m['macro_precision'] == pytest.approx(p)
  assert m['macro_recall'] == pytest.approx(r)
  assert m['macro_f1'] == pytest.approx(f)
  assert m['uar'] == pytest.approx(skm.balanced_accuracy_score(labels, preds))


def test_class_never_predicted_counts_zero_precision():
  labels = np.array([0, 0, 1, 1, 2, 2])
  preds = np.array([0, 0, 0, 1, 1, 1])
  m = metrics.from_confusion(metrics.confusion_matrix(labels, preds, 3))
  p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, average='macro', zero_division=0)
  assert (m['macro_precision'], m['macro_recall'], m['macro_f1']) == pytest.approx((p, r, f))

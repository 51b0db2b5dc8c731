"""Cross-validation folds over speakers, actors or sessions.

The papers report means over k speaker-independent folds (ATTSF-Net: 5 folds
on RAVDESS; the IEMOCAP literature: leave-one-session-out). A fold is chosen
in the config, not in the builder:

  config.dataset.fold.num_folds   k; 0 keeps the builder's own splits
  config.dataset.fold.index       which fold is the test set (0..k-1)
  config.dataset.fold.group_key   the feature that names the group ('speaker',
                                  'actor', 'session'); '' asks the builder
                                  (its FOLD_GROUP_KEY) and falls back to 'speaker'
  config.dataset.fold.source_splits  TFDS split string pooled before folding
                                  ('all': every split, e.g. RAVDESS's actor_01..24)
  config.dataset.fold.val_groups  validation groups: -1 the next fold
                                  (needs k >= 3), n > 0 the n groups that
                                  follow the test fold, 0 the test fold itself
                                  (protocols without a validation set; the
                                  reported numbers are then optimistic)
  config.dataset.fold.val_key     with val_groups = n > 0: take the validation
                                  set as n groups of this second feature (e.g.
                                  'speaker') from the training groups instead of
                                  whole groups, so IEMOCAP trains on sessions 1-4
                                  and validates on speakers carved from them

`wrap(builder, dataset_cfg)` returns a stand-in for the TFDS builder whose
splits named by `train_split`, `val_split` and `test_split` are the fold's
subsets of the pooled examples; everything else passes through, so the input
pipeline and the training loop do not know folds exist.

Builders plug in by storing the group id as a feature (an integer or a
string) and optionally by defining
  FOLD_GROUP_KEY = 'actor'
  def fold_groups(self, groups: list, num_folds: int) -> list[list]
to fix the assignment (e.g. IEMOCAP's five sessions as five folds). By
default the sorted group ids are cut into k contiguous, near-equal chunks.

Datasets built with augmented training copies (feature 'copy_index' > 0, see
builder_lib.build_splits) keep the copies only in the fold's training subset;
validation and test hold originals only.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np


def fold_config(dataset_cfg) -> dict:
  fold = dataset_cfg.get('fold', None)
  if fold is None:
    return {}
  return fold.to_dict() if hasattr(fold, 'to_dict') else dict(fold)


def enabled(dataset_cfg) -> bool:
  return int(fold_config(dataset_cfg).get('num_folds', 0) or 0) > 0


def _as_python(x):
  x = x.item() if hasattr(x, 'item') else x
  return x.decode() if isinstance(x, bytes) else x


COPY_KEY = 'copy_index'


def has_copies(builder) -> bool:
  return COPY_KEY in builder.info.features


def group_counts(builder, source_splits: str, group_key: str, second_key: str = '',
                 originals_only: bool = False) -> dict:
  """{group id: number of examples} over `source_splits`, decoding only the group
  feature(s); with `second_key`, keys are (group id, second id) pairs.
  `originals_only` leaves out augmented copies (copy_index > 0).
  """
  import tensorflow_datasets as tfds
  keys = [k for k in (group_key, second_key) if k]
  for k in keys:
    if k not in builder.info.features:
      raise KeyError(f'{builder.name} has no feature {k!r} to fold on; features: '
                     f'{sorted(builder.info.features.keys())}')
  copies = originals_only and has_copies(builder)
  wanted = {**{k: True for k in keys}, **({COPY_KEY: True} if copies else {})}
  ds = builder.as_dataset(split=source_splits, shuffle_files=False,
                          decoders=tfds.decode.PartialDecoding(wanted))
  examples = (ex for ex in tfds.as_numpy(ds) if not copies or int(ex[COPY_KEY]) == 0)
  if second_key:
    counts = collections.Counter((_as_python(ex[group_key]), _as_python(ex[second_key]))
                                 for ex in examples)
  else:
    counts = collections.Counter(_as_python(ex[group_key]) for ex in examples)
  return dict(sorted(counts.items()))


def assign_groups(groups: list, num_folds: int) -> list[list]:
  """Sorted groups cut into `num_folds` contiguous chunks of near-equal size."""
  if num_folds > len(groups):
    raise ValueError(f'{num_folds} folds but only {len(groups)} groups')
  return [list(chunk) for chunk in np.array_split(np.asarray(sorted(groups), dtype=object),
                                                   num_folds)]


@dataclasses.dataclass
class FoldPlan:
  """Which groups form the train, validation and test subsets of one fold."""
  group_key: str
  source_splits: str
  index: int
  num_folds: int
  train: list
  validation: list
  test: list
  counts: dict  # subset name -> number of examples
  val_key: str = ''  # validation is these `val_key` values, taken out of the train groups
  val_values: list = dataclasses.field(default_factory=list)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def make_plan(builder, fold: dict) -> FoldPlan:
  k = int(fold['num_folds'])
  index = int(fold.get('index', 0))
  if not 0 <= index < k:
    raise ValueError(f'fold index {index} outside 0..{k - 1}')
  key = fold.get('group_key') or getattr(builder, 'FOLD_GROUP_KEY', '') or 'speaker'
  source = fold.get('source_splits') or 'all'
  counts = group_counts(builder, source, key)
  originals = group_counts(builder, source, key, originals_only=True) \
      if has_copies(builder) else counts
  groups = list(counts)
  custom = getattr(builder, 'fold_groups', None)
  chunks = custom(groups, k) if callable(custom) else assign_groups(groups, k)
  if len(chunks) != k:
    raise ValueError(f'{builder.name}.fold_groups returned {len(chunks)} folds, wanted {k}')
  test = list(chunks[index])
  rest = [g for j in range(1, k) for g in chunks[(index + j) % k]]  # in order after the test fold
  val_groups = int(fold.get('val_groups', -1))
  val_key = fold.get('val_key', '') or ''
  if val_key:
    return _plan_with_val_key(builder, key, source, index, k, test, rest, val_key, val_groups)
  if val_groups < 0:
    if k < 3:
      raise ValueError('val_groups=-1 (the next fold) needs num_folds >= 3; set '
                       'dataset.fold.val_groups to a group count')
    validation = list(chunks[(index + 1) % k])
  elif val_groups == 0:
    validation = list(test)
  else:
    if val_groups >= len(rest):
      raise ValueError(f'val_groups={val_groups} leaves no training groups')
    validation = rest[:val_groups]
  train = [g for g in rest if g not in validation]
  n = lambda gs, c=counts: int(sum(c.get(g, 0) for g in gs))
  # Augmented copies train only: held-out subsets count originals.
  return FoldPlan(key, source, index, k, train, validation, test,
                  {'train': n(train), 'validation': n(validation, originals),
                   'test': n(test, originals)})


def _plan_with_val_key(builder, key, source, index, k, test, rest, val_key, val_groups):
  """Validation = `val_groups` values of `val_key` spread over the training groups."""
  if val_groups <= 0:
    raise ValueError(f'val_key={val_key!r} needs val_groups > 0')
  pairs = group_counts(builder, source, key, val_key)
  originals = group_counts(builder, source, key, val_key, originals_only=True) \
      if has_copies(builder) else pairs
  in_test = {v for (g, v) in pairs if g in test}
  candidates = sorted({v for (g, v) in pairs if g in rest} - in_test)
  if val_groups >= len(candidates):
    raise ValueError(f'val_groups={val_groups} of {val_key!r} leaves no training data '
                     f'({len(candidates)} candidates)')
  picks = np.unique(np.round(np.linspace(0, len(candidates) - 1, val_groups)).astype(int))
  val_values = [candidates[i] for i in picks]
  n = lambda pred, c=pairs: int(sum(x for (g, v), x in c.items() if pred(g, v)))
  # Augmented copies train only: held-out subsets count originals.
  counts = {'train': n(lambda g, v: g in rest and v not in val_values),
            'validation': n(lambda g, v: g in rest and v in val_values, originals),
            'test': n(lambda g, v: g in test, originals)}
  return FoldPlan(key, source, index, k, list(rest), list(rest), test, counts, val_key,
                  val_values)


class _SplitInfo:
  def __init__(self, num_examples: int):
    self.num_examples = num_examples


class _FoldedSplits(collections.abc.Mapping):
  def __init__(self, base, subsets: dict):
    self._base, self._subsets = base, subsets

  def __getitem__(self, name):
    if name in self._subsets:
      return _SplitInfo(self._subsets[name])
    return self._base[name]

  def __iter__(self):
    return iter(self._subsets)

  def __len__(self):
    return len(self._subsets)


class _FoldedInfo:
  def __init__(self, info, subsets: dict):
    self._info = info
    self.splits = _FoldedSplits(info.splits, subsets)

  def __getattr__(self, name):
    return getattr(self._info, name)


class FoldedBuilder:
  """A TFDS builder whose configured split names select one fold's groups."""

  def __init__(self, builder, plan: FoldPlan, split_names: dict):
    self._builder = builder
    self.fold_plan = plan
    # config split name ('train', 'validation', ...) -> list of groups
    self._groups = {name: getattr(plan, subset) for name, subset in split_names.items()}
    self._subset = dict(split_names)
    self._held_out = {name for name, subset in split_names.items() if subset != 'train'}
    self.info = _FoldedInfo(builder.info, {name: plan.counts[subset]
                                           for name, subset in split_names.items()})

  def __getattr__(self, name):
    return getattr(self._builder, name)

  def as_dataset(self, split=None, **kwargs):
    if not isinstance(split, str) or split not in self._groups:
      return self._builder.as_dataset(split=split, **kwargs)
    import tensorflow as tf
    plan = self.fold_plan
    ds = self._builder.as_dataset(split=plan.source_splits, **kwargs)

    drop_copies = split in self._held_out and COPY_KEY in ds.element_spec

    def member(ex, key, values):
      spec = ds.element_spec[key]
      wanted = tf.constant(values, dtype=tf.string if spec.dtype == tf.string else tf.int64)
      value = ex[key] if spec.dtype == tf.string else tf.cast(ex[key], tf.int64)
      return tf.reduce_any(tf.equal(value, wanted))

    groups = self._groups[split]
    subset = self._subset[split]

    def keep(ex):
      ok = member(ex, plan.group_key, groups)
      if plan.val_key and subset != 'test':
        ok = tf.logical_and(ok, tf.equal(member(ex, plan.val_key, plan.val_values),
                                         subset == 'validation'))
      if drop_copies:  # copies of held-out examples would leak augmented test data
        ok = tf.logical_and(ok, tf.equal(tf.cast(ex[COPY_KEY], tf.int64), 0))
      return ok
    return ds.filter(keep)


def wrap(builder, dataset_cfg) -> Any:
  """The fold's view of `builder` when `dataset_cfg.fold.num_folds > 0`, else `builder`."""
  if not enabled(dataset_cfg):
    return builder
  plan = make_plan(builder, fold_config(dataset_cfg))
  names = {dataset_cfg.train_split: 'train', dataset_cfg.val_split: 'validation',
           dataset_cfg.test_split: 'test'}
  if len(names) != 3:
    raise ValueError('train_split, val_split and test_split must differ when folding')
  return FoldedBuilder(builder, plan, names)

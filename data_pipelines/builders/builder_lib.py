"""Pieces every real-dataset builder shares.

- `require_manual_dir`: stop before any work when the raw files are missing,
  with instructions for obtaining them.
- `process_files`: run a per-file function over many files on all cores
  (spawned workers: TensorFlow and JAX do not survive fork) with a progress
  bar; each file either yields an example or a skip record with the reason.
- `SkipReport`: every skipped file with its reason, logged and written as
  `skipped.json` next to the TFRecords.
- `train_augment_copies` (build_splits `train_copies=K`): K waveform-augmented
  copies of every training example, made after the split is known so that
  validation and test never hold any; each example stores 'copy_index'
  (0 original, 1..K copies) so fold re-splits can drop copies from held-out
  groups (data_pipelines/folds.py).
- `assign_units`: the default speaker-independent train/validation/test
  splits by fold unit (actor, subject). Cross-validation folds are chosen at
  training time over the stored group feature (data_pipelines/folds.py), so
  every fold reads the same TFRecords without a rebuild.
- Apache Beam: with `MER_JAX_BUILD_RUNNER=beam` (`use_beam`), `build_splits`
  returns one `beam.PTransform` per split instead of generators, and TFDS
  runs the per-file work and the TFRecord writing as one Beam pipeline on
  the runner of its `DownloadConfig` (`beam_download_config`): Beam's local
  runner on all cores, or Dataflow / Flink / Spark through pipeline options.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import threading
from typing import Callable, Iterable, Iterator, Optional, Sequence

from mer_jax.contract import logger as logging

# Worker count for builds; 1 runs in-process (tests, debugging).
WORKERS_ENV = 'MER_JAX_BUILD_WORKERS'
# 'local' (default): spawned process pool; 'beam': Apache Beam through TFDS.
RUNNER_ENV = 'MER_JAX_BUILD_RUNNER'
RUNNERS = ('local', 'beam')


class ManualDirError(FileNotFoundError):
  """The raw dataset files are not where the builder expects them."""


def manual_dir_of(dl_manager):
  """The download manager's manual folder, or None when it is missing.

  (TFDS raises its own terse AssertionError for a missing folder; builders
  replace it by their instructions.)
  """
  try:
    return dl_manager.manual_dir
  except AssertionError:
    return None


def require_manual_dir(name: str, manual_dir, must_contain: Sequence[str],
                       instructions: str, any_of: bool = True) -> str:
  """Checks the manual folder before any work starts; returns it as a string.

  must_contain: relative paths (glob patterns) of which at least one
  (`any_of`) or all must exist.
  """
  import glob
  if manual_dir is None or not os.path.isdir(os.fspath(manual_dir)):
    raise ManualDirError(
        f'{name}: manual folder {manual_dir!s} does not exist. Pass '
        f'--manual_dir=DIR (tfds build) or config.dataset.manual_dir.\n{instructions}')
  manual_dir = os.fspath(manual_dir)
  found = [p for p in must_contain
           if glob.glob(os.path.join(manual_dir, p), recursive=True)]
  ok = bool(found) if any_of else len(found) == len(must_contain)
  if not ok:
    raise ManualDirError(
        f'{name}: {manual_dir} does not contain {"any of" if any_of else "all of"} '
        f'{list(must_contain)}.\n{instructions}')
  return manual_dir


def build_workers() -> int:
  env = os.environ.get(WORKERS_ENV)
  if env:
    return max(int(env), 1)
  return max(os.cpu_count() or 1, 1)


_POOL = None
_POOL_LOCK = threading.Lock()


def _pool(n: int):
  """One spawned pool per process, reused by every split of every builder."""
  global _POOL
  with _POOL_LOCK:
    if _POOL is None:
      _POOL = mp.get_context('spawn').Pool(n)
      import atexit
      atexit.register(_POOL.terminate)
  return _POOL


def shared_pool():
  """The spawned worker pool every build of this process shares (build_workers() processes)."""
  return _pool(build_workers())


def close_pool():
  """Stops the worker processes (they hold TF/OpenCV/librosa in memory)."""
  global _POOL
  with _POOL_LOCK:
    if _POOL is not None:
      _POOL.close()
      _POOL.join()
      _POOL = None


def _call(task):
  """Runs `module.func(item, cfg)`; any failure becomes a skip record."""
  module, func, item, cfg = task
  try:
    fn = getattr(importlib.import_module(module), func)
    return fn(item, cfg)
  except Exception as e:  # one bad file must not stop a 7000-file build
    return Skip(describe(item), f'{type(e).__name__}: {e}')


def _call_indexed(task):
  index, task = task
  return index, _call(task)


def describe(item) -> str:
  """A short name (the file path) for a work item."""
  if isinstance(item, dict):
    for k in ('path', 'video_path', 'audio_path', 'id'):
      if item.get(k):
        return str(item[k])
  return str(item)


def plain_config(cfg):
  """A builder config as a SimpleNamespace of its fields.

  Workers unpickle it without importing the builder's own module, which
  `tfds build path/to/x.py` loads under a name workers cannot import.
  """
  import dataclasses
  import types
  if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
    return types.SimpleNamespace(**{f.name: getattr(cfg, f.name)
                                    for f in dataclasses.fields(cfg)})
  return cfg


class Skip:
  """A file that did not become an example, and why."""

  def __init__(self, path: str, reason: str):
    self.path, self.reason = str(path), str(reason)

  def as_dict(self):
    return {'path': self.path, 'reason': self.reason}


def process_files(module: str, func: str, items: Sequence, cfg, desc: str,
                  report: 'SkipReport', split: str, indexed: bool = False) -> Iterator:
  """Yields `func(item, cfg)` results (tfds (key, example) pairs), skipping failures.

  `module`/`func` name a top-level function by its importable path, so that
  spawned workers can find it whatever name the builder was loaded under.
  The function returns (key, example), None (nothing to write) or a Skip.
  `indexed` yields (item index, result) pairs instead.
  """
  from tqdm import tqdm
  items = list(items)
  n = min(build_workers(), len(items)) if items else 1
  cfg = plain_config(cfg)
  tasks = list(enumerate((module, func, item, cfg) for item in items))
  if n <= 1:
    results = map(_call_indexed, tasks)
  else:
    results = shared_pool().imap_unordered(_call_indexed, tasks, chunksize=1)
  for index, res in tqdm(results, total=len(tasks), desc=desc, unit='file',
                         mininterval=2.0,
                         disable=os.environ.get('MER_JAX_NO_PROGRESS') == '1'):
    if res is None:
      continue
    if isinstance(res, Skip):
      report.add(split, res.path, res.reason)
      continue
    yield (index, res) if indexed else res


class SkipReport:
  """Collects skipped files per split and writes them to `<dir>/skipped.json`."""

  def __init__(self, name: str):
    self.name = name
    self.entries = {}

  def add(self, split: str, path: str, reason: str):
    logging.warning('%s: skipping %s: %s', self.name, path, reason)
    self.entries.setdefault(split, []).append({'path': str(path), 'reason': reason})

  def all(self) -> list:
    return [e for v in self.entries.values() for e in v]

  def count(self) -> int:
    return sum(len(v) for v in self.entries.values())

  def write(self, directory) -> Optional[str]:
    """Writes the report; returns its path (None when the folder is unknown)."""
    if directory is None:
      return None
    import tensorflow as tf
    path = os.path.join(os.fspath(directory), 'skipped.json')
    tf.io.gfile.makedirs(os.fspath(directory))
    with tf.io.gfile.GFile(path, 'w') as f:
      json.dump({'dataset': self.name, 'num_skipped': self.count(),
                 'skipped': self.entries}, f, indent=1, sort_keys=True)
    return path


def read_skip_report(data_dir) -> dict:
  """The `skipped.json` of a built dataset folder (builder.data_dir)."""
  import tensorflow as tf
  with tf.io.gfile.GFile(os.path.join(os.fspath(data_dir), 'skipped.json')) as f:
    return json.load(f)


def report_generator(gen: Iterable, report: SkipReport, directory_fn: Callable[[], str]):
  """Wraps a split generator so the skip report is rewritten when it ends."""
  yield from gen
  path = report.write(directory_fn())
  if report.count():
    logging.warning('%s: %d files skipped; see %s', report.name, report.count(), path)


# ----------------------------------------------------------------------------
# Process first, then split: a split is only declared when it has examples.


def build_splits(builder, module: str, func: str, items: Sequence, report: SkipReport,
                 unit_fn: Callable[[dict], object], val_frac: float = 0.2,
                 test_frac: float = 0.2, fixed: Optional[dict] = None,
                 train_copies: int = 0,
                 item_unit_fn: Optional[Callable[[dict], object]] = None) -> dict:
  """Processes every item, then returns {split: generator} over the survivors.

  Examples are cached on disk (under the builder's temporary data folder)
  between the two phases, so memory stays flat. Units (actors, subjects)
  whose files were all skipped get no split share, and TFDS never sees an
  empty split. `fixed` ({split: [units]}) replaces the fractional rule.
  `train_copies` > 0 adds that many augmented copies of each 'train' example
  (`func` called on the item with 'copy_index' set; it returns the keys that
  differ from the original, see `augmented_audio_copy`) and stores
  'copy_index' in every example.

  With the Beam runner (`use_beam()`) it returns {split: beam.PTransform}
  instead (see `beam_splits`); `item_unit_fn(item)` must equal
  `unit_fn(example)`.
  """
  if use_beam():
    if train_copies:
      raise ValueError(f'{builder.name}: augmented training copies are built by the plain '
                       'runner only; build without MER_JAX_BUILD_RUNNER=beam')
    if item_unit_fn is None:
      raise ValueError(f'{builder.name}: the Beam runner needs item_unit_fn to declare '
                       'splits before processing')
    return beam_splits(builder, module, func, items, report, unit_fn, item_unit_fn,
                       val_frac, test_frac, fixed)
  import pickle
  import shutil
  import tensorflow as tf
  cache_dir = os.path.join(os.fspath(builder.data_dir), '_examples')
  tf.io.gfile.makedirs(cache_dir)
  by_unit = {}
  name = builder.name + '/' + builder.builder_config.name
  item_paths = {}  # item index -> cached paths of its examples
  i = 0

  def cache(key, example, name=None):
    nonlocal i
    path = os.path.join(cache_dir, name or f'{i:08d}.pkl')
    i += 1
    with open(path, 'wb') as f:
      pickle.dump((key, example), f, protocol=pickle.HIGHEST_PROTOCOL)
    return path

  for index, result in process_files(module, func, items, builder.builder_config,
                                     f'{name} files', report, 'files', indexed=True):
    # A work item gives one (key, example) or a list of them (e.g. windows).
    for entry in (result if isinstance(result, list) else [result]):
      if isinstance(entry, Skip):  # a bad part of a good file (e.g. one trial)
        report.add('files', entry.path, entry.reason)
        continue
      key, example = entry
      if train_copies:
        example = dict(example, copy_index=0)
      path = cache(key, example)
      item_paths.setdefault(index, []).append(path)
      by_unit.setdefault(unit_fn(example), []).append(path)
  if not by_unit:
    close_pool()
    report.write(builder.data_dir)
    shutil.rmtree(cache_dir, ignore_errors=True)
    raise ValueError(f'{name}: every one of the {len(items)} files was skipped; see '
                     f'{os.path.join(os.fspath(builder.data_dir), "skipped.json")} '
                     f'(first reasons: {[e["reason"] for e in report.all()[:3]]})')
  if fixed is not None:
    splits = {s: [u for u in units if u in by_unit] for s, units in fixed.items()}
    splits = {s: u for s, u in splits.items() if u}
  else:
    splits = assign_units(by_unit, val_frac, test_frac)
  if train_copies and splits.get('train'):
    train_paths = {p for u in splits['train'] for p in by_unit[u]}
    sources = [(idx, paths[0]) for idx, paths in sorted(item_paths.items())
               if len(paths) == 1 and paths[0] in train_paths]
    if len(sources) != sum(1 for paths in item_paths.values() if paths[0] in train_paths):
      raise ValueError(f'{name}: train_augment_copies needs one example per file')
    tasks = [dict(items[idx], copy_index=c) for idx, _ in sources
             for c in range(1, train_copies + 1)]
    source_of = [path for _, path in sources for _ in range(train_copies)]
    for t, (key, changed) in process_files(module, func, tasks, builder.builder_config,
                                           f'{name} augmented copies', report, 'files',
                                           indexed=True):
      with open(source_of[t], 'rb') as f:
        base_key, example = pickle.load(f)
      example = dict(example, **changed, copy_index=tasks[t]['copy_index'])
      # Named after the original so the sorted split order keeps copies beside it.
      c = tasks[t]['copy_index']
      path = cache(f'{base_key}#copy{c}', example,
                   os.path.basename(source_of[t])[:-4] + f'.c{c}.pkl')
      by_unit[unit_fn(example)].append(path)
  close_pool()  # all files are processed; training should not keep idle workers
  remaining = [len(splits)]

  def gen(paths):
    for path in sorted(paths):
      with open(path, 'rb') as f:
        yield pickle.load(f)
      os.remove(path)
    remaining[0] -= 1
    if remaining[0] == 0:
      shutil.rmtree(cache_dir, ignore_errors=True)

  report.write(builder.data_dir)
  logging.info('%s splits by %s: %s', name, 'fixed units' if fixed else 'sorted units',
               {s: list(u) for s, u in splits.items()})
  return {s: gen([p for u in units for p in by_unit[u]]) for s, units in splits.items()}


def augmented_audio_copy(item, cfg):
  """(key, {'audio'}) of an augmented copy: the item's audio with
  `cfg.wave_augment` applied, seeded by the item id and `item['copy_index']`.
  Other modalities are taken from the original example by `build_splits`."""
  from data_pipelines.features import audio as audio_features
  from data_pipelines.features import clip
  copy = int(item['copy_index'])
  seed = audio_features.augment_seed(item.get('id') or describe(item), copy)
  feats, info = clip.preprocess_av(
      audio_path=item.get('audio_path') or item.get('video_path'), audio_cfg=cfg.audio,
      wave_augment=(cfg.wave_augment, seed), return_info=True)
  return item.get('id'), {'audio': feats['audio'], 'audio_length': info['audio_length']}


# ----------------------------------------------------------------------------
# Speaker-independent default splits.


def assign_units(units, val_frac: float = 0.2, test_frac: float = 0.2) -> dict:
  """{'train', 'validation', 'test'}: lists of fold units (actors, subjects, ...).

  The sorted units are cut in order: the last `test_frac` (at least one) test,
  the `val_frac` before them (at least one, when two are left for training)
  validate, the rest train. Splits without units are left out, so a folder
  with a single actor still builds (train only).
  """
  units = sorted(set(units))
  n = len(units)
  n_test = max(1, int(round(test_frac * n))) if n >= 2 and test_frac > 0 else 0
  n_val = max(1, int(round(val_frac * n))) if n - n_test >= 3 and val_frac > 0 else 0
  out = {'train': units[:n - n_test - n_val],
         'validation': units[n - n_test - n_val:n - n_test],
         'test': units[n - n_test:]}
  return {k: v for k, v in out.items() if v}


# ----------------------------------------------------------------------------
# Apache Beam (optional: `pip install -e .[beam]`).


def build_runner() -> str:
  """'local' or 'beam', from MER_JAX_BUILD_RUNNER (default 'local')."""
  value = (os.environ.get(RUNNER_ENV) or 'local').strip().lower()
  if value not in RUNNERS:
    raise ValueError(f'{RUNNER_ENV}={value!r}: use one of {RUNNERS}')
  return value


def use_beam() -> bool:
  """Whether builders hand their per-file work to Apache Beam."""
  if build_runner() != 'beam':
    return False
  try:
    import apache_beam  # noqa: F401
  except ImportError:
    raise ImportError(f'{RUNNER_ENV}=beam needs apache-beam: pip install -e .[beam]') from None
  return True


LOCAL_RUNNERS = ('DirectRunner', 'PrismRunner')


def beam_pipeline_flags(runner: str = 'DirectRunner', num_workers: Optional[int] = None,
                        options: Sequence[str] = ()) -> list:
  """Beam command-line flags for `runner`.

  The local runners get one worker process per core (`MER_JAX_BUILD_WORKERS`
  or os.cpu_count()); other runners (DataflowRunner, FlinkRunner,
  SparkRunner) take their settings from `options` (e.g. 'project=...',
  'region=...', 'temp_location=gs://...') unchanged.
  """
  flags = [f'--runner={runner}']
  given = {o.split('=', 1)[0].lstrip('-') for o in options}
  if runner in LOCAL_RUNNERS:
    n = num_workers or build_workers()
    if 'direct_num_workers' not in given:
      flags.append(f'--direct_num_workers={n}')
    if 'direct_running_mode' not in given:
      # Processes, not threads: decoding and feature code hold the GIL.
      flags.append('--direct_running_mode=multi_processing')
  flags += [o if o.startswith('--') else f'--{o}' for o in options if o]
  return flags


def beam_download_config(runner: str = 'DirectRunner', num_workers: Optional[int] = None,
                         options: Sequence[str] = (), **kwargs):
  """A `tfds.download.DownloadConfig` that prepares datasets with Apache Beam.

  Pass it to `builder.download_and_prepare(download_config=...)` with
  MER_JAX_BUILD_RUNNER=beam set; `kwargs` go to DownloadConfig (manual_dir, ...).
  """
  import tensorflow_datasets as tfds
  from apache_beam.options.pipeline_options import PipelineOptions
  return tfds.download.DownloadConfig(
      beam_options=PipelineOptions(beam_pipeline_flags(runner, num_workers, options)),
      **kwargs)


def download_config(manual_dir=None, beam_runner: str = '', beam_options: str = ''):
  """The DownloadConfig of a build: plain, or on `beam_runner` when one is named.

  For builds started from a training config (`config.dataset.beam_runner`,
  `config.dataset.beam_options` as 'key=value,key=value'). Naming a runner
  sets MER_JAX_BUILD_RUNNER=beam for this process.
  """
  import tensorflow_datasets as tfds
  if not beam_runner:
    return tfds.download.DownloadConfig(manual_dir=manual_dir)
  os.environ[RUNNER_ENV] = 'beam'
  use_beam()  # a clear error when apache-beam is missing
  options = [o for o in str(beam_options or '').split(',') if o]
  return beam_download_config(beam_runner, options=options, manual_dir=manual_dir)


def _beam_process(item, module, func, cfg):
  """One work item -> its (key, example) pairs; skips go to the 'skips' output."""
  from apache_beam import pvalue
  result = _call((module, func, item, cfg))
  for entry in (result if isinstance(result, list) else [result]):
    if entry is None:
      continue
    if isinstance(entry, Skip):
      yield pvalue.TaggedOutput('skips', entry.as_dict())
    else:
      yield entry


def _assign(units, val_frac, test_frac, fixed) -> dict:
  """{split: [units]} for the given units, by the fixed or the fractional rule."""
  units = sorted(set(units))
  if fixed is not None:
    splits = {s: [u for u in us if u in units] for s, us in fixed.items()}
    return {s: u for s, u in splits.items() if u}
  return assign_units(units, val_frac, test_frac)


def _in_split(key_example, unit_fn, split, assignment) -> bool:
  return unit_fn(key_example[1]) in assignment.get(split, ())


def _write_beam_skips(skipped, name, scanned, data_dir):
  """Writes skipped.json from the scan-time entries and the pipeline's skips."""
  report = SkipReport(name)
  report.entries = {k: list(v) for k, v in scanned.items()}
  for entry in sorted(skipped, key=lambda e: e['path']):
    report.add('files', entry['path'], entry['reason'])
  report.write(data_dir)


def beam_splits(builder, module: str, func: str, items: Sequence, report: SkipReport,
                unit_fn, item_unit_fn, val_frac: float = 0.2, test_frac: float = 0.2,
                fixed: Optional[dict] = None) -> dict:
  """{split: beam.PTransform} yielding (key, example) pairs.

  Every item is processed once (`func(item, cfg)` in Beam workers). Units
  are assigned to splits inside the pipeline among the units that kept
  examples, as the local build does, so both write the same splits. TFDS
  needs the split names before the pipeline runs: they are those the units
  of all files found would get, and a declared split that loses all its
  units to skipped files (e.g. 3 actors of which 1 is unreadable) fails with
  TFDS's "No examples were yielded". Skipped files are written to
  `skipped.json` by the pipeline, as in the local build.
  """
  import apache_beam as beam
  name = builder.name + '/' + builder.builder_config.name
  # TFDS needs the split names now: those of the units of the files found.
  declared = _assign([item_unit_fn(i) for i in items], val_frac, test_frac, fixed)
  logging.info('%s splits by %s (Beam, before skips): %s', name,
               'fixed units' if fixed else 'sorted units', declared)
  cfg = plain_config(builder.builder_config)
  items = list(items)
  scanned = {k: list(v) for k, v in report.entries.items()}
  data_dir = os.fspath(builder.data_dir)
  shared = {}  # one processing stage per pipeline, read by every split

  def processed(pipeline):
    if id(pipeline) not in shared:
      out = (pipeline
             | 'ListFiles' >> beam.Create(items)
             | 'Spread' >> beam.Reshuffle()  # one file per bundle on any runner
             | 'ProcessFiles' >> beam.FlatMap(_beam_process, module, func, cfg)
             .with_outputs('skips', main='examples'))
      _ = (out.skips
           | 'CollectSkips' >> beam.combiners.ToList()
           | 'WriteSkipReport' >> beam.Map(_write_beam_skips, name, scanned, data_dir))
      # As in the local build, units are assigned among those that kept examples.
      assignment = (out.examples
                    | 'Units' >> beam.Map(lambda kv: unit_fn(kv[1]))
                    | 'DistinctUnits' >> beam.Distinct()
                    | 'ListUnits' >> beam.combiners.ToList()
                    | 'AssignUnits' >> beam.Map(_assign, val_frac, test_frac, fixed))
      shared[id(pipeline)] = (out.examples, beam.pvalue.AsSingleton(assignment))
    return shared[id(pipeline)]

  @beam.ptransform_fn
  def split_examples(pbegin, split):
    examples, assignment = processed(pbegin.pipeline)
    return examples | f'Keep_{split}' >> beam.Filter(_in_split, unit_fn, split, assignment)

  return {s: split_examples(s) for s in declared}  # pylint: disable=no-value-for-parameter


def beam_flat_map(split_transform, fn, *args, **kwargs):
  """A split's PTransform followed by `beam.FlatMap(fn, *args, **kwargs)`."""
  import apache_beam as beam

  @beam.ptransform_fn
  def then(pbegin):
    return pbegin | split_transform | beam.FlatMap(fn, *args, **kwargs)

  return then()  # pylint: disable=no-value-for-parameter

"""Every preset (and every variant) of every config, on its real dataset format.

  python -m experiments.check_presets                      # all five papers
  python -m experiments.check_presets --papers=002 --presets=ravdess,crema_d
  python -m experiments.check_presets --variants=none      # presets only
  python -m experiments.check_presets --variants=step      # step every variant too
  python -m experiments.check_presets --jobs=1             # one check at a time

For each preset: build its dataset with the builder config the preset names,
from `../shared/data` (RAVDESS, CREMA-D, FER+) or from small official-layout
fixtures (IEMOCAP, CMU-MOSEI, DEAP; `data_pipelines/fixtures.py`); read a real
batch; check that the builder's shapes are the ones the config declares;
assemble the run from that batch; run one train step and one eval step; the
loss must be finite. Variants run on the preset their paper's tables use (the
first row of the config's TABLES whose preset is real data), or on `tiny`, unless
the config's VARIANT_BASES names the one preset a variant is for. By default a
variant's steps are traced and lowered on that real batch (every shape, parameter
and loss term is checked) but not compiled: compiling costs 30-90 s per variant at
paper shapes (many variants also run at tiny shapes in the unit tests);
`--variants=step` compiles and runs them like the presets. The `tiny` presets are
lowered the same way (`--lower_presets`): the unit tests compile and train them.

Prints one row per check (config, dataset config, input shapes, ok or why) and
exits 0 only if every check passes. Built datasets are cached under --work.
Each dataset is built once; the builds and checks share --jobs worker
processes, a check starting as soon as its dataset is built, the costliest
first, and rows are printed as checks finish. A reference whose
resolved config equals an earlier one's (e.g. `paper_shapes` and the paper's
dataset preset) reuses that check's result and says so. A check runs each step
once, on whatever values: by default they are drawn with numpy (`--init=host`), which
skips compiling the model's initialisers (ATTSF-Net at paper shapes: 16.8 -> 2.3 s).
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time
import traceback

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('papers', '000,001,002,003,004', 'Papers to check.')
flags.DEFINE_string('presets', '', 'Only these presets (comma-separated).')
flags.DEFINE_enum('variants', 'lower', ['step', 'lower', 'none'],
                  "Variants: 'step' checks them as presets, 'lower' traces and lowers their "
                  "steps on the real batch without compiling them, 'none' skips them.")
flags.DEFINE_string('lower_presets', 'tiny',
                    "Presets traced and lowered like the variants, not compiled ('' for none): "
                    'the unit tests compile and train every tiny preset on synthetic_av/small.')
flags.DEFINE_string('shared_data', '', 'Folder with the real samples (default ../shared/data).')
flags.DEFINE_string('work', '', 'Folder for fixtures and built datasets (default: a temp dir).')
flags.DEFINE_integer('batch_size', 2, 'Examples per checked step.')
flags.DEFINE_integer('one_example_above', 5_000_000,
                     'Steps whose inputs have more values per example check one example '
                     '(90 frames of 224x224: a train step of two takes a minute here).')
flags.DEFINE_integer('fast_compile_below', 5_000_000,
                     'Steps whose inputs have at most this many values per example compile '
                     'with XLA backend optimisation off (faster to compile, slower to run).')
flags.DEFINE_bool('compile_cache', True, "Share compiled programs between checks through "
                  "JAX's persistent cache under --work.")
flags.DEFINE_enum('init', 'host', ['host', 'model'],
                  "Initial values: 'host' draws them with numpy (no compiled init, 5-20 s "
                  "less per paper-size model), 'model' runs the model's initialisers.")
flags.DEFINE_integer('jobs', 0, 'Checks run at once, each in its own process '
                     '(0: one per core; compilation is mostly single-threaded).')

REPO = pathlib.Path(__file__).resolve().parents[1]
# Presets that describe inputs without a dataset of their own are checked on the
# dataset they name like any other.
_SYNTHETIC = ('synthetic_av',)


def _sources(shared: pathlib.Path, work: pathlib.Path) -> dict:
  """Manual folder per dataset family; fixtures are written once, on demand."""
  from data_pipelines import fixtures

  def ferplus():
    d = work / 'fixtures' / 'ferplus'
    if not (d / 'FER2013Test' / 'label.csv').exists():
      fixtures.write_ferplus(d, shared / 'ferplus')
    return d

  def ravdess_ferplus():
    d = work / 'fixtures' / 'ravdess_ferplus'
    if not d.exists():
      d.mkdir(parents=True)
      os.symlink(shared / 'ravdess', d / 'ravdess')
      os.symlink(ferplus(), d / 'ferplus')
    return d

  def iemocap():
    d = work / 'fixtures' / 'iemocap'
    if not d.exists():
      fixtures.write_iemocap(d, shared / 'ravdess/Video_Speech_Actor_01/Actor_01/'
                             '01-01-01-01-01-01-01.mp4')
    return d

  def cached(name, writer):
    def fn():
      d = work / 'fixtures' / name
      if not d.exists():
        writer(d)
      return d
    return fn

  return {
      'synthetic_av': lambda: None,
      'ravdess': lambda: shared / 'ravdess',
      'crema_d': lambda: shared / 'crema_d',
      'ferplus': ferplus,
      'ravdess_ferplus': ravdess_ferplus,
      'iemocap': iemocap,
      'cmu_mosei': cached('cmu_mosei', fixtures.write_cmu_mosei),
      'deap': cached('deap', fixtures.write_deap),
  }


def _real_batch(builder, batch_size: int) -> dict:
  """`batch_size` real examples of the first non-empty split (repeated if it is smaller)."""
  import numpy as np
  from data_pipelines import input_pipeline
  for split in ('train', 'validation', 'test'):
    if split in builder.info.splits and builder.info.splits[split].num_examples:
      ds, _ = input_pipeline.eval_dataset(builder, split, batch_size)
      batch = next(input_pipeline.as_numpy(ds))
      # A split smaller than the batch is padded for evaluation; train on real
      # examples only, repeated.
      real = np.flatnonzero(batch['valid'] > 0)
      rows = real[np.arange(batch_size) % len(real)]
      return {k: np.asarray(v)[rows] for k, v in batch.items()}
  raise ValueError(f'{builder.name}: every split is empty')


def _checked_config(ref: str, sources: dict, data_dir: str):
  from experiments import definitions as defs
  config = defs.load_config(ref)
  family = config.dataset.name.split('/')[0]
  manual = sources[family]()
  config.dataset.data_dir = data_dir
  config.dataset.manual_dir = str(manual) if manual else ''
  config.dataset.fold.num_folds = 0  # the check reads the builder's own splits
  return config


def prepare(ref: str, sources: dict, data_dir: str) -> str:
  """Builds the dataset `ref` reads (once per dataset config); '' or why it failed."""
  from data_pipelines import input_pipeline
  try:
    input_pipeline.get_builder(_checked_config(ref, sources, data_dir).dataset)
    return ''
  except Exception as e:  # the check of every preset on it reports the failure
    return f'{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ""}'


def check(ref: str, sources: dict, data_dir: str, batch_size: int,
          fast_compile_below: int = 0, init: str = 'model', one_example_above: int = 0,
          lower_only: bool = False) -> dict:
  """One preset: real batch, shapes, assembled run, one train and one eval step
  (with `lower_only`, both steps traced and lowered, not compiled or run)."""
  import numpy as np
  from data_pipelines import input_pipeline
  from experiments import definitions as defs
  from mer_jax import assembly, sharding
  row = {'config': ref.replace('configs/', ''), 'dataset': '', 'shapes': '', 'ok': False,
         'why': ''}
  t0 = time.time()
  try:
    config = _checked_config(ref, sources, data_dir)
    row['dataset'] = config.dataset.name
    builder = input_pipeline.get_builder(config.dataset)
    declared = assembly.example_shapes(config)
    if one_example_above and _values(declared) > one_example_above:
      batch_size = 1
    batch = _real_batch(builder, batch_size)
    row['batch_size'] = batch_size
    shapes = {k: tuple(v.shape[1:]) for k, v in batch.items() if k in ('audio', 'video',
                                                                        'text', 'physio')}
    row['shapes'] = ' '.join(f'{k}{list(s)}' for k, s in shapes.items())
    for k, s in shapes.items():
      if declared.get(k) != s:
        raise ValueError(f'{k}: the builder gives {s}, the config declares {declared.get(k)}')
    # paper_shapes presets may name inputs no dataset of theirs has (for benchmarks):
    # the check runs the model on what the dataset provides.
    needed = set(config.model.get('modalities', ())) - set(shapes)
    if needed and config.preset == 'paper_shapes':
      config.model.modalities = tuple(m for m in config.model.modalities if m in shapes)
      needed = set()
    if needed:
      raise ValueError(f'the model needs {sorted(needed)} but {config.dataset.name} '
                       f'provides {sorted(shapes)}')
    t = time.time()
    run = assembly.build_run(config, steps_per_epoch=1, total_steps=1, init_batch=batch,
                             init=init)
    placed = sharding.place_batch(batch, run.mesh)
    row['init_s'] = time.time() - t
    if lower_only:
      t = time.time()
      run.train_step.lower(run.state, placed)
      run.eval_step().lower(run.state, placed)
      row['lower_s'] = time.time() - t
      row['ok'] = True
      row['seconds'] = time.time() - t0
      return row
    # Each step runs once: compiling it fast saves more than the slower code costs
    # (AVT-CA at paper shapes: compile 42 -> 31 s, steps 2 -> 4 s), except on
    # Tucker fusion's 90 frames of 224x224, where the step's run dominates.
    fast = _values(shapes) <= fast_compile_below
    opts = {'compiler_options': assembly.FAST_COMPILE} if fast else {}
    t = time.time()
    train_step = run.train_step.lower(run.state, placed).compile(**opts)
    eval_step = run.eval_step().lower(run.state, placed).compile(**opts)
    row['compile_s'] = time.time() - t
    t = time.time()
    state, metrics = train_step(run.state, placed)
    out = sharding.to_host(eval_step(state, placed))
    row['steps_s'] = time.time() - t
    loss = float(metrics['loss'])
    if not np.isfinite(loss) or not np.isfinite(float(out['loss_sum'])):
      raise FloatingPointError(f'non-finite loss {loss}')
    row['ok'] = True
  except Exception as e:  # report and go on with the other presets
    row['why'] = f'{type(e).__name__}: {str(e).splitlines()[0][:160]}' if str(e) else \
        type(e).__name__
    if os.environ.get('MER_JAX_CHECK_TRACEBACK'):
      traceback.print_exc()
  row['seconds'] = time.time() - t0
  return row


def _timing(row: dict) -> str:
  """'41s: init 6, compile 30, steps 3' (the rest: building the batch, imports)."""
  parts = [f'{k} {row[k + "_s"]:.0f}' for k in ('init', 'lower', 'compile', 'steps')
           if k + '_s' in row]
  if parts and row.get('batch_size') == 1:
    parts.append('one example')
  return f"{row['seconds']:.0f}s" + (': ' + ', '.join(parts) if parts and row['seconds'] else '')


def _variant_base(mod) -> str:
  """The preset the config's tables run variants on (first real-data row)."""
  for table in getattr(mod, 'TABLES', {}).values():
    for r in table.rows:
      preset = r[1].split('+')[0].split(',')[0]
      if preset not in ('synthetic', 'tiny'):
        return preset
  return 'tiny'


def references(papers, presets_filter, with_variants) -> list[str]:
  from experiments import definitions as defs
  refs = []
  for paper in papers:
    path = defs.PAPER_CONFIGS[paper]
    mod = defs.load_module(path)
    for preset in mod.PRESETS:
      if not presets_filter or preset in presets_filter:
        refs.append(f'{path}:{preset}')
    if with_variants:
      base = _variant_base(mod)
      own = getattr(mod, 'VARIANT_BASES', {})  # variants meant for one preset only
      for variant in getattr(mod, 'VARIANTS', {}):
        refs.append(f'{path}:{own.get(variant, base)}+{variant}')
  return refs


def is_lowered(ref: str, variants: str, lower_presets: tuple) -> bool:
  """Whether `ref`'s steps are only traced and lowered (with --variants=lower)."""
  return variants == 'lower' and (is_variant(ref) or ref.rpartition(':')[2] in lower_presets)


def is_variant(ref: str) -> bool:
  """'configs/x.py:ravdess+no_sim' names a variant; 'configs/x.py:ravdess' a preset."""
  return '+' in ref.rpartition(':')[2]


def _same_as(refs: list[str]) -> dict:
  """ref -> the earlier ref whose resolved config is identical (a preset such as
  `paper_shapes`, or a variant that restates the preset's default), so that
  each distinct config is compiled and stepped once."""
  import json
  from experiments import definitions as defs
  first, out = {}, {}
  for ref in refs:
    try:
      c = defs.load_config(ref).to_dict()
    except Exception:  # the check reports it
      continue
    for k in ('arg', 'preset', 'variant', 'reference', 'protocol'):  # names, not the run
      c.pop(k, None)
    key = json.dumps(c, sort_keys=True, default=str)
    if key in first:
      out[ref] = first[key]
    else:
      first[key] = ref
  return out


def _sources_for(ref: str, sources: dict) -> None:
  """Writes the fixtures `ref` reads (errors surface in its check)."""
  from experiments import definitions as defs
  try:
    sources[defs.load_config(ref).dataset.name.split('/')[0]]()
  except Exception:
    pass


def _build_key(config) -> tuple:
  return (config.dataset.name, int(config.dataset.get('train_augment_copies', 0) or 0))


def _values(shapes: dict) -> int:
  """Input values per example: what a check's compile and step times grow with
  (video frames dominate both)."""
  import numpy as np
  return sum(int(np.prod(s)) for s in shapes.values())


def _cost(config) -> float:
  """A check's expected cost, for ordering only."""
  from mer_jax import assembly
  try:
    return float(_values(assembly.example_shapes(config)))
  except Exception:  # the check reports it
    return 0.0


def _schedule(pool, jobs: int, builds: list, checks: list, needs: dict, cost: dict):
  """Runs `builds` ((key, ref) pairs) first, then each check once its build is
  done, the costliest ready one first (the longest jobs start early, the short
  ones fill the end), at most `jobs` at a time. Yields ('built', ref, why),
  ('builds done', None, None) and ('checked', ref, row) as they finish."""
  import concurrent.futures as cf
  pending_builds = list(builds)
  built = set()
  waiting = sorted(checks, key=lambda r: -cost.get(r, 0.0))
  running = {}
  announced = False
  while pending_builds or waiting or running:
    while len(running) < jobs and (pending_builds or waiting):
      if pending_builds:
        _, ref = pending_builds.pop(0)
        running[pool.submit(_prepare_in_worker, ref)] = ('built', ref)
        continue
      ready = [r for r in waiting if needs.get(r) is None or needs[r] in built]
      if not ready:
        break
      waiting.remove(ready[0])
      running[pool.submit(_check_in_worker, ready[0])] = ('checked', ready[0])
    finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
    for fut in finished:
      event, ref = running.pop(fut)
      if event == 'built':
        built.add(needs[ref])
      yield event, ref, fut.result()
    if not announced and not pending_builds and not any(
        e == 'built' for e, _ in running.values()):
      announced = True
      yield 'builds done', None, None


# Worker processes: each imports jax and the builders once and keeps them.
_WORKER = {}


def _init_worker(shared: str, work: str, batch_size: int, fast_compile_below: int,
                 compile_cache: bool = False, init: str = 'model',
                 one_example_above: int = 0, variants: str = 'step',
                 lower_presets: tuple = ()) -> None:
  from mer_jax import contract
  contract.quiet_libraries()
  import jax
  # With --init=model: XLA's random-bit generator compiles to a smaller program than
  # threefry, which flax calls once per parameter (ATTSF-Net: 659; init compile 19 -> 13 s).
  jax.config.update('jax_default_prng_impl', 'unsafe_rbg')
  if compile_cache:
    # Shared by the workers: variants that keep the model's parameters (loss or
    # training switches) compile the same init, which at paper shapes costs ~18 s.
    jax.config.update('jax_compilation_cache_dir', str(pathlib.Path(work) / 'jax_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  _WORKER.update(sources=_sources(pathlib.Path(shared), pathlib.Path(work)),
                 data_dir=str(pathlib.Path(work) / 'tfds'), batch_size=batch_size,
                 fast_compile_below=fast_compile_below, init=init,
                 one_example_above=one_example_above, variants=variants,
                 lower_presets=lower_presets)


def _prepare_in_worker(ref: str) -> str:
  return prepare(ref, _WORKER['sources'], _WORKER['data_dir'])


def _check_in_worker(ref: str) -> dict:
  return check(ref, _WORKER['sources'], _WORKER['data_dir'], _WORKER['batch_size'],
               _WORKER['fast_compile_below'], _WORKER['init'], _WORKER['one_example_above'],
               lower_only=is_lowered(ref, _WORKER['variants'], _WORKER['lower_presets']))


def _lower_presets() -> tuple:
  return tuple(p for p in FLAGS.lower_presets.split(',') if p)


def _pool(jobs: int, shared: pathlib.Path, work: pathlib.Path):
  import concurrent.futures
  import multiprocessing
  # spawn: jax and TensorFlow do not survive fork; one check per task keeps
  # rows in order while both workers stay busy.
  return concurrent.futures.ProcessPoolExecutor(
      jobs, mp_context=multiprocessing.get_context('spawn'), initializer=_init_worker,
      initargs=(str(shared), str(work), FLAGS.batch_size, FLAGS.fast_compile_below,
                FLAGS.compile_cache, FLAGS.init, FLAGS.one_example_above, FLAGS.variants,
                _lower_presets()))


def main(argv):
  del argv
  from mer_jax import contract
  contract.quiet_libraries()
  os.environ.setdefault('MER_JAX_BUILD_WORKERS', '1')
  os.environ.setdefault('MER_JAX_NO_PROGRESS', '1')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # the workers inherit it
  shared = pathlib.Path(FLAGS.shared_data or REPO.parent / 'shared' / 'data')
  if not shared.is_dir():
    print(f'real sample data not found at {shared}: RAVDESS, CREMA-D and FER+ presets '
          'cannot be checked here')
    sys.exit(2)
  work = pathlib.Path(FLAGS.work or tempfile.mkdtemp(prefix='check_presets_'))
  sources = _sources(shared, work)
  refs = references([p for p in FLAGS.papers.split(',') if p],
                    [p for p in FLAGS.presets.split(',') if p], FLAGS.variants != 'none')
  print(f'{len(refs)} checks; datasets under {work}', flush=True)
  data_dir = str(work / 'tfds')
  # One build per dataset config, so that no two workers write the same files;
  # each check starts as soon as the build it reads is done.
  from experiments import definitions as defs
  first, needs, cost = {}, {}, {}
  for ref in refs:
    try:
      config = defs.load_config(ref)
    except Exception:  # the check reports it
      continue
    needs[ref] = _build_key(config)
    first.setdefault(needs[ref], ref)
    # A lowered variant costs a tenth of a compiled check of the same inputs.
    cost[ref] = _cost(config) * (0.1 if is_lowered(ref, FLAGS.variants, _lower_presets()) else 1)
  for ref in first.values():
    _sources_for(ref, sources)
  jobs = FLAGS.jobs or os.cpu_count() or 1
  same = _same_as(refs)
  todo = [r for r in refs if r not in same]
  t0 = time.time()
  header = f"{'config':44s} {'dataset config':28s} {'shapes':58s} result"
  rows = {}
  print(f'{jobs} worker(s); builds first, then checks, the costliest first\n{header}\n'
        + '-' * len(header), flush=True)

  def report(ref, r, note=''):
    rows[ref] = r
    print(f"[{len(rows):{len(str(len(refs)))}d}/{len(refs)}] {r['config']:44s} "
          f"{r['dataset']:28s} {r['shapes'][:58]:58s} "
          f"{'ok' if r['ok'] else 'FAIL ' + r['why']} ({_timing(r)}){note}", flush=True)

  with _pool(jobs, shared, work) as pool:
    for event, ref, result in _schedule(pool, jobs, list(first.items()), todo, needs, cost):
      if event == 'built':
        key = needs[ref]
        print(f'built {key[0]}' + (f' (copies={key[1]})' if key[1] else '') +
              (f': FAILED {result}' if result else '') + f' ({time.time() - t0:.0f}s)',
              flush=True)
        continue
      if event == 'builds done':
        print(f'datasets ready in {time.time() - t0:.0f}s', flush=True)
        continue
      report(ref, result)
      for other in refs:
        if same.get(other) == ref:
          report(other, dict(result, config=other.replace('configs/', ''), seconds=0.0),
                 f" (same config as {ref.replace('configs/', '')})")
  rows = [rows[r] for r in refs]
  failed = [r for r in rows if not r['ok']]
  for r in failed:
    print(f"FAILED {r['config']}: {r['why']}")
  lowered = sum('lower_s' in r for r in rows)
  print(f'\n{len(rows) - len(failed)} passed'
        + (f' ({lowered} lowered, not run)' if lowered else '')
        + f', {len(failed)} failed in {time.time() - t0:.0f}s')
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  app.run(main)

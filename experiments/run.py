"""Runs an experiment's trainings (folds x seeds x variants) and writes its table.

  python -m experiments.run --experiment=avt_ca_ablation --root=runs
  python -m experiments.run --experiment=avt_ca_ablation --preset=tiny --folds=2 \
      --val_groups=2 --seeds=0,1 --root=/tmp/runs       # rehearsal on synthetic data
  python -m experiments.run --config=configs/avt_ca.py:synthetic --folds=3 --seeds=0,1,2
  python -m experiments.run --list

Every training is its own `python -m mer_jax.main` process (log in the run's
`log.txt`), so a crash or a kill loses one run at most. Re-running the same
command skips finished runs (results.json present) and resumes unfinished
ones from their checkpoints. A failed run is reported and the others go on;
the table counts the finished runs (the 'runs' column).

A row's overrides may name other runs, for warm starts (paper 004's fused model
from its trained face and audio models): `{run:ROW}` is the workdir of row ROW
at the same fold and seed (that run goes first; if it fails, so does this one),
`{input:NAME}` a directory given as `--input=NAME=DIR` (e.g. a trained FER+ run).
Experiments with `robustness` then score every run under the corruption sweep
(`experiments.robustness_eval`, one process per run, skipped when its
robustness.json exists) and plot accuracy against the corruption rate.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time

from absl import app, flags

from experiments import definitions as defs
from experiments import tables

FLAGS = flags.FLAGS
flags.DEFINE_string('experiment', '', 'Name of a table (the TABLES of configs/*.py; --list).')
flags.DEFINE_string('config', '', 'Or a single config reference, configs/<paper>.py:<preset>.')
flags.DEFINE_string('name', '', 'Directory name for a --config experiment (default: derived).')
flags.DEFINE_string('root', 'runs', 'Where experiment directories go.')
flags.DEFINE_string('preset', '', "Swap every variant's preset, e.g. 'tiny' or 'synthetic'.")
flags.DEFINE_integer('folds', -1, 'Override the protocol\'s number of folds (0: builder splits).')
flags.DEFINE_string('fold_indices', '', 'Override which folds run, e.g. "0,1".')
flags.DEFINE_string('seeds', '', 'Override the protocol\'s seeds, e.g. "0,1,2".')
flags.DEFINE_integer('val_groups', -2, 'Override the validation groups (see data_pipelines/folds.py).')
flags.DEFINE_string('group_key', '', 'Override the feature that names fold groups.')
flags.DEFINE_multi_string('set', [], 'Extra config override for every run, KEY=VALUE '
                          '(becomes --config.KEY=VALUE), e.g. --set=train.max_steps=20.')
flags.DEFINE_multi_string('input', [], 'NAME=DIR for the {input:NAME} of rows\' overrides.')
flags.DEFINE_string('data_dir', '', 'TFDS data_dir for every run (--config.dataset.data_dir).')
flags.DEFINE_integer('parallel', 1, 'Trainings at once.')
flags.DEFINE_bool('robustness', None, 'Force the corruption sweep on or off.')
flags.DEFINE_string('robustness_rates', '0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9',
                    'Corruption rates of the sweep.')
flags.DEFINE_string('compilation_cache', '', 'Persistent XLA compilation cache shared by the '
                    'runs (same shapes compile once); default <root>/.jax_cache, "none" disables.')
flags.DEFINE_string('refit_from', '', 'A finished run of the same experiment with validation '
                    '(same variants, folds, seeds): every fold trains again on its training '
                    'and validation groups together (val_groups=0), for the median over '
                    "seeds of the epochs that fold's validation chose, and reports its last "
                    'weights; no selection reads the test groups (refit_plan.json).')
flags.DEFINE_bool('dry_run', False, 'Print the commands without running them.')
flags.DEFINE_bool('list', False, 'List the experiments and exit.')


def _protocol(exp: defs.Experiment) -> defs.Protocol:
  p = exp.protocol
  changes = {}
  if FLAGS.folds >= 0:
    changes.update(folds=FLAGS.folds, fold_indices=())
  if FLAGS.fold_indices:
    changes['fold_indices'] = tuple(int(x) for x in FLAGS.fold_indices.split(','))
  if FLAGS.seeds:
    changes['seeds'] = tuple(int(x) for x in FLAGS.seeds.split(','))
  if FLAGS.val_groups != -2:
    changes['val_groups'] = FLAGS.val_groups
  if FLAGS.refit_from:
    changes['val_groups'] = 0
  if FLAGS.group_key:
    changes['group_key'] = FLAGS.group_key
  return defs.dataclasses.replace(p, **changes) if changes else p


def _experiment() -> defs.Experiment:
  if FLAGS.experiment:
    if FLAGS.experiment not in defs.EXPERIMENTS:
      raise app.UsageError(f'unknown experiment {FLAGS.experiment!r}; --list shows them')
    exp = defs.EXPERIMENTS[FLAGS.experiment]
  elif FLAGS.config:
    label = os.path.basename(FLAGS.config)  # 'avt_ca.py:tiny'
    name = FLAGS.name or tables.slug(label.replace('.py:', '_'))
    exp = defs.Experiment(name, '', FLAGS.config, (defs.Variant(label, FLAGS.config),))
  else:
    raise app.UsageError('give --experiment=NAME or --config=configs/<paper>.py:<preset>')
  if FLAGS.robustness is not None:
    exp = defs.dataclasses.replace(exp, robustness=FLAGS.robustness)
  return defs.dataclasses.replace(exp, protocol=_protocol(exp))


def config_args(exp: defs.Experiment, variant: defs.Variant, fold, seed) -> list[str]:
  """The --config flags of one run (shared by training and the robustness sweep)."""
  ref = defs.swap_preset(variant.config, FLAGS.preset)
  path, _, arg = ref.partition(':')
  args = [f'--config={os.path.join(defs.REPO, path)}' + (f':{arg}' if arg else ''),
          f'--config.seed={seed}']
  p = exp.protocol
  if fold is not None:
    args += [f'--config.dataset.fold.num_folds={p.folds}', f'--config.dataset.fold.index={fold}',
             f'--config.dataset.fold.val_groups={p.val_groups}']
    if p.group_key:
      args.append(f'--config.dataset.fold.group_key={p.group_key}')
    if p.val_key:
      args.append(f'--config.dataset.fold.val_key={p.val_key}')
  if FLAGS.data_dir:
    args.append(f'--config.dataset.data_dir={FLAGS.data_dir}')
  args += [f'--config.{kv}' for kv in variant.overrides]
  args += [f'--config.{kv}' for kv in FLAGS.set]
  return args


def refit_epochs(source_dir: str, variant_slug: str, fold, seeds) -> tuple[int, list]:
  """(epochs to refit fold `fold` for, the best epochs it is the median of): the epoch
  of each seed's best-on-validation checkpoint in `source_dir`, rounded up."""
  best = []
  for seed in seeds:
    path = os.path.join(source_dir, variant_slug, tables.run_name(fold, seed), 'results.json')
    if not os.path.exists(path):
      raise app.UsageError(f'--refit_from: {path} is missing (that run has not finished)')
    with open(path) as f:
      r = json.load(f)
    if r.get('best_step', -1) <= 0 or not r.get('epochs'):
      raise app.UsageError(f'--refit_from: {path} has no validation-chosen checkpoint')
    per_epoch = r['steps'] / r['epochs']
    best.append(int(math.ceil(r['best_step'] / per_epoch - 1e-6)))
  return max(1, int(math.ceil(statistics.median(best) - 1e-6))), best


def _die_with_parent():
  # A killed runner takes its trainings with it (Linux), so a re-run never
  # finds a stray process still writing the same checkpoints.
  try:
    import ctypes
    ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except Exception:
    pass


_REF = re.compile(r'\{(run|input):([^{}]+)\}')


def resolve_refs(args: list[str], run_dirs: dict, inputs: dict) -> tuple[list[str], list[str]]:
  """(args with {run:ROW} / {input:NAME} replaced, the run workdirs they name).

  run_dirs maps a row's name (or its slug) to its workdir at this fold and seed.
  """
  used = []

  def sub(m):
    kind, name = m.group(1), m.group(2)
    table = run_dirs if kind == 'run' else inputs
    key = name if name in table else tables.slug(name)
    if key not in table:
      what = 'rows' if kind == 'run' else 'inputs (--input=NAME=DIR)'
      raise app.UsageError(f'{m.group(0)}: no such {kind}; {what}: {sorted(table)}')
    if kind == 'run':
      used.append(table[key])
    return table[key]

  return [_REF.sub(sub, a) for a in args], used


class Job:
  def __init__(self, label: str, workdir: str, cmd: list[str], done_file: str, deps=()):
    self.label, self.workdir, self.cmd, self.done_file = label, workdir, cmd, done_file
    self.deps = list(deps)  # jobs whose workdirs this one reads
    self.proc = None
    self.t0 = 0.0

  def done(self) -> bool:
    return os.path.exists(os.path.join(self.workdir, self.done_file))

  def start(self):
    os.makedirs(self.workdir, exist_ok=True)
    env = dict(os.environ)
    env['PYTHONPATH'] = defs.REPO + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    cache = FLAGS.compilation_cache or os.path.join(os.path.abspath(FLAGS.root), '.jax_cache')
    if cache != 'none':
      # Folds and seeds share shapes: later runs load the compiled steps (about half
      # of a small run's time) instead of compiling them again.
      env.setdefault('JAX_COMPILATION_CACHE_DIR', cache)
    log = open(os.path.join(self.workdir, 'log.txt'), 'a')
    log.write(f'\n$ {" ".join(self.cmd)}\n')
    log.flush()
    self.t0 = time.time()
    self.proc = subprocess.Popen(self.cmd, cwd=defs.REPO, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    log.close()


def run_jobs(jobs: list[Job], parallel: int) -> list[Job]:
  """Runs the unfinished jobs, `parallel` at a time; returns the failed ones."""
  todo = [j for j in jobs if not j.done()]
  skipped = len(jobs) - len(todo)
  if skipped:
    print(f'{skipped} of {len(jobs)} already finished; skipping them', flush=True)
  running, failed = [], []
  for j in todo:
    if FLAGS.dry_run:
      print(' '.join(j.cmd))
  if FLAGS.dry_run:
    return []

  def reap(block: bool):
    for j in list(running):
      rc = j.proc.wait() if block else j.proc.poll()
      if rc is None:
        continue
      running.remove(j)
      took = time.time() - j.t0
      ok = rc == 0 and j.done()
      print(f"{'done' if ok else 'FAILED'} {j.label} in {took:.0f}s"
            + ('' if ok else f' (exit {rc}; see {j.workdir}/log.txt)'), flush=True)
      if not ok:
        failed.append(j)

  try:
    for j in todo:
      while len(running) >= max(parallel, 1) or any(d in running for d in j.deps):
        reap(block=False)
        time.sleep(0.5)
      missing = [d.label for d in j.deps if not d.done()]
      if missing:
        print(f'FAILED {j.label}: the runs it starts from did not finish: {missing}', flush=True)
        failed.append(j)
        continue
      print(f'start {j.label} -> {j.workdir}', flush=True)
      j.start()
      running.append(j)
    while running:
      reap(block=False)
      time.sleep(0.5)
  except KeyboardInterrupt:
    for j in running:
      j.proc.terminate()
    raise
  return failed


def main(argv):
  del argv
  if FLAGS.list:
    for e in defs.EXPERIMENTS.values():
      runs = len(e.protocol.runs()) * len(e.variants)
      print(f'{e.name:24s} paper {e.paper:4s} {runs:3d} runs  {e.title}')
    return
  exp = _experiment()
  problems = defs.check(exp, FLAGS.preset)
  if problems:
    raise app.UsageError('cannot run ' + exp.name + ':\n  ' + '\n  '.join(problems))
  exp_dir = os.path.abspath(os.path.join(FLAGS.root, exp.name + (f'_{FLAGS.preset}' if FLAGS.preset else '')))
  os.makedirs(exp_dir, exist_ok=True)
  python = sys.executable
  inputs = {}
  for kv in FLAGS.input:
    name, sep, path = kv.partition('=')
    if not sep or not path:
      raise app.UsageError(f'--input={kv}: expected NAME=DIR')
    inputs[name] = os.path.abspath(path)
  train_jobs, sweep_jobs = [], []
  by_workdir = {}
  refit_plan = {}
  for v in exp.variants:
    for fold, seed in exp.protocol.runs():
      workdir = os.path.join(exp_dir, tables.slug(v.name), tables.run_name(fold, seed))
      run_dirs = {tables.slug(u.name): os.path.join(exp_dir, tables.slug(u.name),
                                                    tables.run_name(fold, seed))
                  for u in exp.variants if u is not v}
      args, used = resolve_refs(config_args(exp, v, fold, seed), run_dirs, inputs)
      if FLAGS.refit_from:
        seeds = sorted({s for f, s in exp.protocol.runs() if f == fold})
        epochs, best = refit_epochs(os.path.abspath(FLAGS.refit_from), tables.slug(v.name),
                                    fold, seeds)
        refit_plan.setdefault(tables.slug(v.name), {})[str(fold)] = {
            'epochs': epochs, 'best_epochs_by_seed': dict(zip(map(str, seeds), best))}
        # Validated once, at the end (the fold's test groups: reported, never chosen from).
        args += [f'--config.train.num_epochs={epochs}', f'--config.train.eval_every_epochs={epochs}',
                 '--config.train.early_stopping_patience=0']
      label = f'{v.name} / {tables.run_name(fold, seed)}'
      job = Job(label, workdir, [python, '-m', 'mer_jax.main', f'--workdir={workdir}',
                                 '--mode=train'] + args, 'results.json')
      train_jobs.append(job)
      by_workdir[workdir] = job
      job.deps = used
      sweep_jobs.append(Job(label + ' robustness', workdir,
                            [python, '-m', 'experiments.robustness_eval', f'--workdir={workdir}',
                             f'--rates={FLAGS.robustness_rates}'] + args, 'robustness.json'))
  print(f'{exp.name}: {len(exp.variants)} variants x {len(exp.protocol.runs())} runs -> {exp_dir}',
        flush=True)
  if refit_plan:
    with open(os.path.join(exp_dir, 'refit_plan.json'), 'w') as f:
      json.dump({'source': os.path.abspath(FLAGS.refit_from), 'plan': refit_plan}, f, indent=2)
    print(f'refit epochs per fold: {json.dumps(refit_plan)}', flush=True)
  for j in train_jobs:
    j.deps = [by_workdir[d] for d in j.deps]
    if any(train_jobs.index(d) > train_jobs.index(j) for d in j.deps):
      raise app.UsageError(f'{j.label}: a {{run:ROW}} must name an earlier row of the table')
  failed = run_jobs(train_jobs, FLAGS.parallel)
  if exp.robustness:
    trained = [s for s, t in zip(sweep_jobs, train_jobs) if t.done()]
    failed += run_jobs(trained, FLAGS.parallel)
  if FLAGS.dry_run:
    return
  names = [v.name for v in exp.variants]
  result = tables.write_tables(exp_dir, names, exp.metrics, exp.title, exp.notes)
  print(open(os.path.join(exp_dir, 'table.md')).read())
  if exp.robustness:
    tables.write_robustness(exp_dir, names, exp.title)
    if os.path.exists(os.path.join(exp_dir, 'robustness.md')):
      print(open(os.path.join(exp_dir, 'robustness.md')).read())
  print(f"{len(result['runs'])} runs in the table; tables in {exp_dir}")
  if failed:
    print(f'{len(failed)} runs failed: ' + ', '.join(j.label for j in failed))
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)

"""Experiment runner: folds x seeds in subprocesses, tables, resuming after a kill."""

from __future__ import annotations

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import workflow_helpers as wh


def test_fold_plan_partitions_speakers(tiny_data_dir):
  from configs import avt_ca
  from data_pipelines import folds, input_pipeline
  cfg = avt_ca.get_config('tiny')
  cfg.dataset.data_dir = tiny_data_dir
  cfg.dataset.fold.num_folds = 2
  cfg.dataset.fold.val_groups = 2
  base = input_pipeline.get_builder(cfg.dataset)
  plans = []
  for index in (0, 1):
    cfg.dataset.fold.index = index
    b = folds.wrap(base, cfg.dataset)
    p = b.fold_plan
    assert p.group_key == 'speaker'
    assert not set(p.train) & set(p.validation) and not set(p.train) & set(p.test)
    assert not set(p.validation) & set(p.test)
    assert len(p.train) + len(p.validation) + len(p.test) == 12 and len(p.validation) == 2
    assert b.info.splits['test'].num_examples == p.counts['test'] == 6 * 6 * 2
    # the filtered split yields exactly the counted examples, all from test speakers
    speakers = [int(ex['speaker']) for ex in
                input_pipeline.as_numpy(b.as_dataset(split='test', shuffle_files=False))]
    assert len(speakers) == p.counts['test'] and set(speakers) == set(p.test)
    plans.append(p)
  assert set(plans[0].test) | set(plans[1].test) == set(range(12))  # each speaker tested once
  assert folds.wrap(base, avt_ca.get_config('tiny').dataset) is base  # off by default


def test_fold_validation_carved_by_a_second_key(tiny_data_dir):
  # IEMOCAP's protocol in miniature: whole groups for test, validation taken as
  # values of a second feature out of the training groups.
  from configs import avt_ca
  from data_pipelines import folds, input_pipeline
  cfg = avt_ca.get_config('tiny')
  cfg.dataset.data_dir = tiny_data_dir
  cfg.dataset.fold.update(num_folds=3, index=2, group_key='speaker', val_key='id',
                          val_groups=5)
  b = folds.wrap(input_pipeline.get_builder(cfg.dataset), cfg.dataset)
  p = b.fold_plan
  ids = {name: [(int(ex['speaker']), ex['id']) for ex in input_pipeline.as_numpy(
      b.as_dataset(split=name, shuffle_files=False))] for name in ('train', 'validation', 'test')}
  assert {len(v) for k, v in ids.items() if k == 'validation'} == {5}
  for name in ids:
    assert len(ids[name]) == p.counts[name] == b.info.splits[name].num_examples
  test_speakers = {s for s, _ in ids['test']}
  assert test_speakers == set(p.test)
  assert not test_speakers & {s for s, _ in ids['train'] + ids['validation']}
  assert not {i for _, i in ids['train']} & {i for _, i in ids['validation']}


def _results(exp_dir):
  out = {}
  for path in sorted(glob.glob(os.path.join(exp_dir, '*', '*', 'results.json'))):
    out[os.path.basename(os.path.dirname(path))] = wh.load_json(path)
  return out


def _checkpointed(variant_dir):
  """Run directories holding a completed 'latest' checkpoint (a step-numbered folder)."""
  steps = glob.glob(os.path.join(variant_dir, '*', 'checkpoints', 'latest', '*'))
  return sorted({p.split(os.sep + 'checkpoints' + os.sep)[0] for p in steps
                 if os.path.basename(p).isdigit()})


@pytest.mark.slow
def test_runner_two_folds_two_seeds_resumes_after_kill(tiny_data_dir, tmp_path):
  root = str(tmp_path / 'runs')
  args = [f'--config={wh.TINY}', '--name=cv', f'--root={root}', '--folds=2', '--val_groups=2',
          '--seeds=0,1', '--set=train.max_steps=8', '--set=train.checkpoint_every_steps=2',
          f'--data_dir={tiny_data_dir}', '--parallel=2']
  exp_dir = os.path.join(root, 'cv')
  variant_dir = os.path.join(exp_dir, 'avt_ca.py_tiny')

  # Start, and kill the runner as soon as some run has saved a checkpoint.
  env = dict(os.environ, PYTHONPATH=wh.ROOT)
  log_path = tmp_path / 'runner.log'
  with open(log_path, 'w') as log:
    proc = subprocess.Popen([sys.executable, '-m', 'experiments.run', *args], cwd=wh.ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 900
  while time.time() < deadline and proc.poll() is None:
    if _checkpointed(variant_dir):
      break
    time.sleep(0.2)
  assert proc.poll() is None, 'runner ended before it could be killed:\n' + log_path.read_text()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  time.sleep(1.0)  # the training children die with their parent
  interrupted = [d for d in _checkpointed(variant_dir)
                 if not os.path.exists(os.path.join(d, 'results.json'))]
  assert interrupted

  # Re-run: the interrupted runs resume from their checkpoints, the rest train.
  wh.run_module('experiments.run', *args)
  for d in interrupted:
    assert 'Resumed from step' in open(os.path.join(d, 'log.txt')).read(), d
  mtimes = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(variant_dir, '*', 'results.json'))}
  assert len(mtimes) == 4
  # A third run finds everything finished: nothing is retrained.
  out = wh.run_module('experiments.run', *args).stdout
  assert '4 of 4 already finished' in out
  assert {p: os.path.getmtime(p) for p in mtimes} == mtimes
  first = os.path.join(variant_dir, 'fold0_seed0')

  results = _results(exp_dir)
  assert sorted(results) == ['fold0_seed0', 'fold0_seed1', 'fold1_seed0', 'fold1_seed1']
  with open(os.path.join(exp_dir, 'table.csv')) as f:
    table = list(csv.DictReader(f))
  assert len(table) == 1 and table[0]['variant'] == 'avt_ca.py:tiny' and table[0]['n'] == '4'
  for metric in ('accuracy', 'macro_precision', 'macro_recall', 'macro_f1', 'uar'):
    values = np.array([r['test'][metric] for r in results.values()])
    assert float(table[0][metric + '_mean']) == pytest.approx(values.mean(), abs=1e-12)
    assert float(table[0][metric + '_std']) == pytest.approx(values.std(ddof=1), abs=1e-12)
  with open(os.path.join(exp_dir, 'runs.csv')) as f:
    assert len(list(csv.DictReader(f))) == 4
  md = open(os.path.join(exp_dir, 'table.md')).read()
  mean, std = 100 * values.mean(), 100 * values.std(ddof=1)
  assert f'| avt_ca.py:tiny | 4 | ' in md and f'{mean:.2f} ± {std:.2f}' in md
  cfg = json.load(open(os.path.join(first, 'config.json')))
  assert cfg['dataset']['fold']['num_folds'] == 2 and cfg['seed'] == 0
  plans = [wh.load_json(os.path.join(variant_dir, f'fold{i}_seed0', 'fold_plan.json'))
           for i in (0, 1)]
  assert not set(plans[0]['test']) & set(plans[1]['test'])
  assert results['fold0_seed0']['test']['num_examples'] == plans[0]['counts']['test']
  # Tables read fold and seed from each run's provenance, not from directory names.
  with open(os.path.join(exp_dir, 'runs.csv')) as f:
    runs = {r['run']: r for r in csv.DictReader(f)}
  assert runs['fold1_seed0']['fold'] == '1' and runs['fold1_seed0']['seed'] == '0'
  assert runs['fold1_seed0']['data_fingerprint'] and runs['fold1_seed0']['commit']
  assert 'Data: synthetic_av/small' in md


def test_definitions_and_tables(tmp_path):
  from experiments import definitions as defs, tables
  assert defs.swap_preset('configs/avt_ca.py:ravdess+it1', 'tiny') == 'configs/avt_ca.py:tiny+it1'
  # every definition names a protocol with runs, and the AVT-CA ablation resolves in 'tiny'
  for e in defs.EXPERIMENTS.values():
    assert e.variants and e.protocol.runs()
    assert defs.check(e) == [], e.name  # every row names a preset and variants that exist
  assert defs.check(defs.EXPERIMENTS['avt_ca_ablation'], 'tiny') == []
  # protocols come from the presets: IEMOCAP session 5 with speaker-carved validation
  p = defs.EXPERIMENTS['attsf_net_iemocap'].protocol
  assert (p.folds, p.val_key) == (5, 'speaker')
  # robustness table and plot from per-run sweeps
  for variant in ('A', 'B'):
    for seed in (0, 1):
      d = tmp_path / tables.slug(variant) / f'seed{seed}'
      d.mkdir(parents=True)
      rows = [{'modality': '', 'rate': 0.0, 'kind': 'random', 'accuracy': 0.9}]
      rows += [{'modality': m, 'rate': r, 'kind': 'random', 'accuracy': 0.9 - r / 2 - seed / 100}
               for m in ('audio', 'video') for r in (0.1, 0.5, 0.9)]
      rows += [{'modality': 'audio', 'rate': 1.0, 'kind': 'missing', 'accuracy': 0.3}]
      (d / 'robustness.json').write_text(json.dumps(rows))
  info = tables.write_robustness(str(tmp_path), ['A', 'B'], 'test')
  assert 'audio 50%' in info['conditions'] and 'audio missing' in info['conditions']
  md = (tmp_path / 'robustness.md').read_text()
  assert '| audio 50% | 64.50 ± 0.71 | 64.50 ± 0.71 |' in md
  assert (tmp_path / 'robustness.png').stat().st_size > 1000


def test_runner_warm_start_refs_and_dependencies(tmp_path):
  from absl import app as absl_app
  from absl import flags
  from experiments import run
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  dirs = {'audio': '/r/audio/fold0_seed0', 'face': '/r/face/fold0_seed0'}
  args, used = run.resolve_refs(
      ["--config.model_init.sources=({'path': '{run:audio}'}, {'path': '{run:Face}'})",
       '--config.model_init.path={input:fer}', '--config.seed=0'], dirs, {'fer': '/in/fer'})
  assert args[0] == ("--config.model_init.sources=({'path': '/r/audio/fold0_seed0'}, "
                     "{'path': '/r/face/fold0_seed0'})")
  assert args[1] == '--config.model_init.path=/in/fer' and args[2] == '--config.seed=0'
  assert used == ['/r/audio/fold0_seed0', '/r/face/fold0_seed0']
  with pytest.raises(absl_app.UsageError, match=r'\{run:video\}: no such run'):
    run.resolve_refs(['{run:video}'], dirs, {})
  with pytest.raises(absl_app.UsageError, match='--input=NAME=DIR'):
    run.resolve_refs(['{input:fer}'], dirs, {})

  # A run whose source run fails is not started; an independent one still runs.
  def job(name, ok, deps=()):
    code = f"open({str(tmp_path / name / 'results.json')!r}, 'w')" if ok else 'raise SystemExit(3)'
    return run.Job(name, str(tmp_path / name), [sys.executable, '-c', code], 'results.json', deps)
  audio, face = job('audio', ok=False), job('face', ok=True)
  fused, other = job('fused', ok=True, deps=[audio, face]), job('other', ok=True)
  failed = run.run_jobs([audio, face, fused, other], parallel=2)
  assert [j.label for j in failed] == ['audio', 'fused']
  assert face.done() and other.done() and not fused.done()
  assert not os.path.exists(tmp_path / 'fused' / 'log.txt')  # never started


def test_refit_from_a_validated_run(tmp_path):
  """--refit_from: each fold trains on its training and validation groups for the median
  of the epochs its validation chose over the seeds; the test groups choose nothing."""
  from absl import app as absl_app
  from absl import flags
  from experiments import run
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  src = tmp_path / 'src'
  for fold, best_steps in ((0, (21, 35, 63)), (1, (7, 70, 14))):
    for seed, best in enumerate(best_steps):
      d = src / 'avt_ca.py_tiny' / f'fold{fold}_seed{seed}'
      d.mkdir(parents=True)
      # 7 steps per epoch; seed 2 of fold 1 stopped early after 4 epochs.
      steps, epochs = (28, 4) if (fold, seed) == (1, 2) else (70, 10)
      (d / 'results.json').write_text(json.dumps(
          {'steps': steps, 'epochs': epochs, 'best_step': best}))
  assert run.refit_epochs(str(src), 'avt_ca.py_tiny', 0, [0, 1, 2]) == (5, [3, 5, 9])
  assert run.refit_epochs(str(src), 'avt_ca.py_tiny', 1, [0, 1, 2]) == (2, [1, 10, 2])
  with pytest.raises(absl_app.UsageError, match='is missing'):
    run.refit_epochs(str(src), 'avt_ca.py_tiny', 0, [0, 3])
  out = wh.run_module('experiments.run', f'--config={wh.TINY}', '--name=rf',
                      f'--root={tmp_path / "runs"}', '--folds=2', '--seeds=0,1,2',
                      f'--refit_from={src}', '--dry_run').stdout
  cmds = [line for line in out.splitlines() if 'mer_jax.main' in line]
  assert len(cmds) == 6
  for line in cmds:
    assert '--config.dataset.fold.val_groups=0' in line
    assert '--config.train.early_stopping_patience=0' in line
    epochs = 5 if '--config.dataset.fold.index=0' in line else 2
    assert f'--config.train.num_epochs={epochs} --config.train.eval_every_epochs={epochs}' in line
  plan = json.loads((tmp_path / 'runs' / 'rf' / 'refit_plan.json').read_text())['plan']
  assert plan['avt_ca.py_tiny']['1'] == {'epochs': 2,
                                         'best_epochs_by_seed': {'0': 1, '1': 10, '2': 2}}


def test_score_fusion_weight_chosen_on_validation():
  from experiments import late_fusion
  rng = np.random.default_rng(0)
  n, c = 400, 4
  y = rng.integers(0, c, n)
  onehot = np.eye(c)[y]
  # a knows classes 0-1, b knows classes 2-3; each is a coin toss on the others.
  know_a, know_b = np.isin(y, [0, 1])[:, None], np.isin(y, [2, 3])[:, None]
  lp_a = np.log(np.where(know_a, 0.7 * onehot + 0.1, 0.25))
  lp_b = np.log(np.where(know_b, 0.7 * onehot + 0.1, 0.25))
  w, uar, acc = late_fusion.choose_weight(lp_a, lp_b, y, grid=11)
  assert 0.0 < w < 1.0 and uar > 0.99 and acc > 0.99
  # The fixed product rule (w = 0.5) needs no validation data to combine them.
  uar, acc = late_fusion._scores(0.5 * lp_a + 0.5 * lp_b, y, c)
  assert uar > 0.99 and acc > 0.99
  with pytest.raises(SystemExit, match='--weight'):
    late_fusion.main(['--table=/nonexistent', '--weight=1.5'])
  # A useless first input gets a weight small enough to change nothing.
  noise = np.log(rng.dirichlet(np.ones(c), n))
  good = np.log(0.9 * onehot + 0.025)
  w, uar, _ = late_fusion.choose_weight(noise, good, y, grid=11)
  assert w < 0.5 and uar == 1.0
  np.testing.assert_array_equal(np.argmax(w * noise + (1 - w) * good, -1), y)
  # With the roles swapped the weight follows the useful input.
  w2, uar2, _ = late_fusion.choose_weight(good, noise, y, grid=11)
  assert w2 > 0.5 and uar2 == 1.0
  runs = {f'fold{k}_seed{s}': {'w': 0.3, 'val_uar': 0.7, 'a_test_accuracy': 0.4,
                              'b_test_accuracy': 0.6 + 0.01 * s, 'fused_test_accuracy': 0.65}
          for k in range(2) for s in range(2)}
  table = late_fusion.markdown(runs, 'audio', 'face')
  assert '| **mean ± std (4 runs)** |' in table and 'fused - face per seed: +5.0, +4.0' in table


def test_seed_ensemble_averages_posteriors_of_disjoint_seed_groups():
  from experiments import seed_ensemble
  assert seed_ensemble.groups([4, 0, 2, 1, 3], 2) == [(0, 1), (2, 3)]
  rng = np.random.default_rng(0)
  lps = [np.log(rng.dirichlet(np.ones(5), 7)) for _ in range(3)]
  for how, want in (('prob', np.log(np.mean([np.exp(l) for l in lps], 0))),
                    ('logprob', None)):
    got = seed_ensemble.combine(lps, how)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-9)
    if want is not None:
      np.testing.assert_allclose(got, want, rtol=1e-9)
  with pytest.raises(ValueError, match='prob'):
    seed_ensemble.combine(lps, 'max')
  # Three members, each right on a different third of the examples and confidently
  # wrong nowhere else: each alone scores 1/3 + chance, their average scores 1.
  n, c = 300, 3
  y = np.arange(n) % c
  members = []
  for k in range(3):
    mine = (np.arange(n) // 100 == k)[:, None]
    right = np.eye(c)[y]
    wrong = np.eye(c)[(y + 1) % c]
    p = np.where(mine, 0.1 + 0.7 * right, 0.25 + 0.05 * right + 0.2 * wrong)
    members.append(np.log(p))
  preds = {0: {s: {'val': (members[s], y), 'test': (members[s], y)} for s in range(3)}}
  res = seed_ensemble.evaluate(preds, 3)
  assert len(res['singles']) == 3 and len(res['ensembles']) == 1
  assert res['ensembles'][0]['test_accuracy'] == 1.0
  assert all(r['test_accuracy'] < 1.0 for r in res['singles'])
  table = seed_ensemble.markdown(res, 3)
  assert '| ensembles of 3 seeds | 1 |' in table
  # Members that do not score the same examples are refused.
  preds[0][1]['test'] = (members[1], y[::-1].copy())
  with pytest.raises(ValueError, match='same test examples'):
    seed_ensemble.evaluate(preds, 3)

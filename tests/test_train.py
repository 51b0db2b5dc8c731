"""The training loop.

In-process (default tier): learning, results and provenance, checkpoint cadence,
resume, early stopping, a missing test split. Subprocess end-to-end runs (slow
tier): exact resume after a SIGKILL, device-count invariance, two processes.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_CACHE = pathlib.Path(os.environ.get('TMPDIR', '/tmp')) / f'mer_jax_test_jax_cache_{os.getuid()}'


def _env(**extra):
  env = dict(os.environ)
  env['PYTHONPATH'] = str(ROOT) + os.pathsep + env.get('PYTHONPATH', '')
  # Runs of the same config share compiled programs (the resumed run, both processes).
  env.setdefault('JAX_COMPILATION_CACHE_DIR', str(_CACHE))
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  env.update(extra)
  return env


def _main_cmd(workdir, data_dir, *overrides):
  return [sys.executable, '-m', 'mer_jax.main', '--config=configs/avt_ca.py:tiny',
          f'--workdir={workdir}', f'--config.dataset.data_dir={data_dir}', *overrides]


def _run(cmd, **env):
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(**env), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def _results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def _tiny(data_dir, **train):
  from configs import avt_ca
  cfg = avt_ca.get_config('tiny')
  cfg.dataset.data_dir = data_dir
  cfg.train.update(train)
  return cfg


@pytest.fixture(scope='module')
def uninterrupted(tiny_data_dir, tmp_path_factory):
  from mer_jax import train
  workdir = tmp_path_factory.mktemp('uninterrupted')
  # A checkpoint at every epoch end: the reference for the deferred-best test below.
  train.train_and_evaluate(_tiny(tiny_data_dir, checkpoint_min_interval_s=0.0), str(workdir))
  return workdir


def test_training_lowers_loss_and_writes_results(uninterrupted):
  res = _results(uninterrupted)
  for split in ('val', 'test'):
    for key in ('accuracy', 'macro_precision', 'macro_recall', 'macro_f1', 'uar',
                'confusion_matrix'):
      assert key in res[split]
    assert np.sum(res[split]['confusion_matrix']) == res[split]['num_examples']
  assert res['steps'] == 18 and res['train_time_s'] > 0
  lines = [json.loads(l) for l in open(os.path.join(uninterrupted, 'metrics.jsonl'))]
  train_loss = [l['loss'] for l in lines if l['kind'] == 'train']
  assert np.mean(train_loss[-2:]) < train_loss[0], train_loss
  assert any(l['kind'] == 'val' for l in lines)
  assert list(pathlib.Path(uninterrupted, 'tensorboard').glob('events.out.tfevents.*'))
  assert 'per_class' in res['test'] and len(res['test']['per_class']) == 6
  for figure in ('curves.png', 'confusion_val.png', 'confusion_test.png'):
    assert pathlib.Path(uninterrupted, figure).stat().st_size > 1000, figure


def test_results_carry_their_provenance(uninterrupted):
  prov = _results(uninterrupted)['provenance']
  assert prov['paper'] == '002' and prov['preset'] == 'tiny' and prov['seed'] == 0
  assert len(prov['config_hash']) == 16 and prov['code']['commit']
  ds = prov['dataset']
  assert ds['name'] == 'synthetic_av/small' and ds['version'] and len(ds['fingerprint']) == 16
  assert prov['fold'] is None


def test_checkpoint_cadence_and_in_process_resume(uninterrupted, tiny_data_dir, tmp_path,
                                                 monkeypatch):
  from mer_jax import checkpointing, train
  workdir = str(tmp_path / 'resumed')

  class Crash(Exception):
    pass

  # tiny: 9 steps per epoch, a checkpoint every 4 steps and at every epoch end. The
  # run dies right after saving step 8, then runs again in the same directory.
  save = checkpointing.Checkpoints.save_latest

  def save_then_crash(self, step, state, meta):
    save(self, step, state, meta)
    if step == 8:
      raise Crash()

  monkeypatch.setattr(checkpointing.Checkpoints, 'save_latest', save_then_crash)
  with pytest.raises(Crash):
    train.train_and_evaluate(_tiny(tiny_data_dir), workdir)
  monkeypatch.setattr(checkpointing.Checkpoints, 'save_latest', save)
  ckpts = checkpointing.Checkpoints(workdir, keep=2)
  assert ckpts.all_steps()['latest'] == [4, 8]  # the cadence, keeping the last two
  ckpts.close()
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  res = train.train_and_evaluate(_tiny(tiny_data_dir), workdir)
  full = _results(uninterrupted)
  assert res['steps'] == full['steps'] == 18
  for split in ('val', 'test'):
    assert res[split]['confusion_matrix'] == full[split]['confusion_matrix']
    assert res[split]['loss'] == pytest.approx(full[split]['loss'], rel=1e-5)


def test_deferred_best_checkpoint_is_the_immediate_one(uninterrupted, tiny_data_dir, tmp_path,
                                                       monkeypatch):
  """`checkpoint_min_interval_s`: epoch ends inside the interval skip the 'latest' save,
  and a new best is written just before the next one; the run ends on the same best
  checkpoint (so the same results) as the reference run, which saves at every epoch end."""
  from mer_jax import checkpointing, train
  calls = []
  for name in ('save_latest', 'save_best'):
    def wrapped(self, step, state, meta, _f=getattr(checkpointing.Checkpoints, name), _n=name):
      calls.append((_n, step))
      return _f(self, step, state, meta)
    monkeypatch.setattr(checkpointing.Checkpoints, name, wrapped)
  res = train.train_and_evaluate(_tiny(tiny_data_dir, checkpoint_min_interval_s=1e9),
                                 str(tmp_path / 'deferred'))
  # tiny: 9 steps per epoch, 18 steps, a 'latest' every 4 steps; none at step 9.
  assert [s for n, s in calls if n == 'save_latest'] == [4, 8, 12, 16, 18]
  best = [s for n, s in calls if n == 'save_best']
  assert best and best[-1] == res['best_step']
  for i, (n, s) in enumerate(calls):  # each best goes out with the next 'latest'
    if n == 'save_best':
      assert calls[i + 1][0] == 'save_latest' and calls[i + 1][1] >= s
  full = _results(uninterrupted)
  assert res['best_step'] == full['best_step']
  for split in ('val', 'test'):
    assert res[split]['confusion_matrix'] == full[split]['confusion_matrix']
    assert res[split]['loss'] == pytest.approx(full[split]['loss'], rel=1e-5)


def test_resume_refuses_a_changed_config(uninterrupted, tiny_data_dir, tmp_path):
  """A workdir's checkpoints resume only under their own config; where data and logs go
  and how often it saves may change."""
  import shutil
  from mer_jax import train
  workdir = str(tmp_path / 'finished')
  shutil.copytree(uninterrupted, workdir)
  cfg = _tiny(tiny_data_dir, checkpoint_min_interval_s=0.0)
  cfg.input.batch_size = cfg.input.batch_size * 2
  with pytest.raises(ValueError, match=r'another config \(input.batch_size: 8 -> 16\)'):
    train.train_and_evaluate(cfg, workdir)
  # The refused run left the workdir as it was.
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['input']['batch_size'] == 8
  res = train.train_and_evaluate(
      _tiny(tiny_data_dir, checkpoint_min_interval_s=5.0, log_every_steps=3), workdir)
  assert res['steps'] == _results(uninterrupted)['steps']


def test_run_without_test_split_ends_on_validation(tiny_data_dir, tmp_path):
  from mer_jax import train
  cfg = _tiny(tiny_data_dir, max_steps=3)
  cfg.dataset.test_split = 'nonexistent'
  res = train.train_and_evaluate(cfg, str(tmp_path / 'no_test'))
  assert 'test' not in res and res['val']['num_examples'] > 0
  assert os.path.exists(tmp_path / 'no_test' / 'checkpoints' / 'best')


def test_missing_train_split_fails_before_training(tiny_data_dir, tmp_path):
  from mer_jax import train
  cfg = _tiny(tiny_data_dir)
  cfg.dataset.val_split = 'valid'
  with pytest.raises(ValueError, match="no split 'valid'"):
    train.train_and_evaluate(cfg, str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad' / 'checkpoints')


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(uninterrupted, tiny_data_dir, tmp_path):
  workdir = tmp_path / 'killed'
  latest = workdir / 'checkpoints' / 'latest'
  proc = subprocess.Popen(_main_cmd(workdir, tiny_data_dir), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  killed_at = None
  while time.time() < deadline and proc.poll() is None:
    steps = [int(p.name) for p in latest.glob('*') if p.name.isdigit()] if latest.exists() else []
    if steps and max(steps) >= 8:  # mid-run: past the first epoch's checkpoint
      proc.send_signal(signal.SIGKILL)
      killed_at = max(steps)
      break
    time.sleep(0.2)
  proc.wait()
  assert killed_at is not None, 'the run finished or stalled before it could be killed'
  assert not (workdir / 'results.json').exists()
  _run(_main_cmd(workdir, tiny_data_dir))
  a, b = _results(uninterrupted), _results(workdir)
  assert b['steps'] == a['steps']
  for split in ('val', 'test'):
    assert a[split]['confusion_matrix'] == b[split]['confusion_matrix']
    assert a[split]['loss'] == pytest.approx(b[split]['loss'], rel=1e-5)


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_loss():
  outs = {}
  for n in (1, 8):
    proc = _run([sys.executable, str(ROOT / 'tests' / 'loss_on_devices.py')],
                XLA_FLAGS=f'--xla_force_host_platform_device_count={n}', JAX_PLATFORMS='cpu')
    outs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
  assert outs[1]['devices'] == 1 and outs[8]['devices'] == 8
  np.testing.assert_allclose(outs[1]['losses'], outs[8]['losses'], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outs[1]['grad_norm'], outs[8]['grad_norm'], rtol=1e-4)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_together(tiny_data_dir, tmp_path):
  """Two local CPU processes joined by jax.distributed train one model."""
  port = _free_port()
  workdir = tmp_path / 'multiprocess'
  procs = [subprocess.Popen(
      _main_cmd(workdir, tiny_data_dir, '--config.train.max_steps=4',
                f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                f'--process_id={i}'),
      cwd=ROOT, env=_env(JAX_PLATFORMS='cpu'), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=900)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  res = _results(workdir)
  assert res['steps'] == 4
  assert res['test']['num_examples'] == 36  # each example once across both processes
  assert 'on 2 devices' in outs[0]


def test_early_stopping_ends_the_run(tiny_data_dir, tmp_path):
  # With a zero learning rate validation never improves after the first epoch.
  from mer_jax import train
  cfg = _tiny(tiny_data_dir, num_epochs=6, early_stopping_patience=2)
  cfg.optim.learning_rate = 0.0
  res = train.train_and_evaluate(cfg, str(tmp_path / 'early'))
  assert res['early_stopped'] is True
  # (BatchNorm's running statistics still move at lr 0, so the best epoch may be 1 or 2.)
  best_epoch = res['best_step'] // 9
  assert best_epoch in (1, 2) and res['best_step'] % 9 == 0
  assert res['epochs'] == best_epoch + 2 and res['steps'] == 9 * res['epochs']  # then 2 without gain


def test_update_ema_ramps_then_holds_its_decay():
  import jax.numpy as jnp
  from mer_jax import assembly
  ema, p = {'w': jnp.zeros(3)}, {'w': jnp.ones(3)}
  # Step 0: decay min(0.99, 1/10), so the average is mostly the new weights.
  np.testing.assert_allclose(assembly.update_ema(ema, p, 0, 0.99)['w'], 0.9, rtol=1e-6)
  # Late in a run the configured decay holds.
  np.testing.assert_allclose(assembly.update_ema(ema, p, 10_000, 0.99)['w'], 0.01, rtol=1e-5)


def test_weight_average_is_what_evaluation_and_warm_starts_use(tiny_data_dir, tmp_path):
  import jax
  from mer_jax import assembly, evaluate, pretrained, train
  cfg = _tiny(tiny_data_dir, max_steps=6)
  cfg.optim.ema_decay = 0.9
  workdir = str(tmp_path / 'ema')
  res = train.train_and_evaluate(cfg, workdir)
  run, state, _ = assembly.restore_run(workdir)
  leaves = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
  avg, raw = leaves(state.ema_params), leaves(state.params)
  assert avg.shape == raw.shape and not np.allclose(avg, raw)
  np.testing.assert_array_equal(leaves(assembly.eval_variables(state)['params']), avg)
  np.testing.assert_array_equal(leaves(pretrained.restore_workdir_variables(workdir)['params']),
                                avg)
  # The run's test figures are the average's: re-scoring the checkpoint reproduces them,
  # while the raw weights score a different loss.
  from data_pipelines import input_pipeline
  from mer_jax import evaluators
  data = input_pipeline.prepare(cfg.dataset, build_if_missing=False)
  # The restored run's eval step serves both scorings (assembling again compiles again).
  again = evaluate.evaluate_checkpoint(cfg, workdir, 'test', figures=False, run=run, data=data)
  assert again['loss'] == pytest.approx(res['test']['loss'], rel=1e-5)
  raw_loss = evaluators.score(run, state.replace(ema_params=None), data, 'test')['loss']
  assert raw_loss != pytest.approx(res['test']['loss'], rel=1e-4)


def test_seed_ensemble_rescores_the_runs_best_checkpoint(uninterrupted, tmp_path):
  from experiments import seed_ensemble
  # Two "seeds" that are the same run: their ensemble decides as the run did.
  row = tmp_path / 'table' / 'row'
  row.mkdir(parents=True)
  for s in (0, 1):
    os.symlink(uninterrupted, row / f'fold0_seed{s}')
  out = tmp_path / 'ens'
  seed_ensemble.main([f'--table={tmp_path / "table"}', '--size=2', f'--out={out}'])
  res = json.loads(out.with_suffix('.json').read_text())
  want = _results(uninterrupted)
  for r in res['singles'] + res['ensembles']:
    for split in ('val', 'test'):
      assert r[f'{split}_accuracy'] == pytest.approx(want[split]['accuracy'], abs=1e-9)
  assert '| ensembles of 2 seeds | 1 |' in out.with_suffix('.md').read_text()

"""Checkpoint evaluation: exact reproduction of training's metrics, reports, figures, corruption."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from tests import workflow_helpers as wh


@pytest.fixture(scope='module')
def run(tiny_data_dir, tmp_path_factory):
  base = tmp_path_factory.getbasetemp() / 'workflow'
  workdir = wh.trained_run(str(base), tiny_data_dir)
  from configs import avt_ca
  from data_pipelines import input_pipeline
  from mer_jax import train
  cfg = avt_ca.get_config('tiny')
  cfg.dataset.data_dir = tiny_data_dir
  data = input_pipeline.prepare(cfg.dataset)
  # One assembled run for every test: its eval steps compile once.
  return cfg, workdir, dict(run=train.assemble(cfg, data), data=data)


def test_eval_reproduces_training_metrics(run):
  from mer_jax import evaluate
  cfg, workdir, reuse = run
  trained = wh.load_json(os.path.join(workdir, 'results.json'))
  res = evaluate.evaluate_checkpoint(cfg, workdir, split='test', checkpoint='best',
                                     example_index=1, **reuse)
  for k, v in trained['test'].items():
    assert res[k] == v, k  # same code path, same checkpoint: bit-identical
  prefix = os.path.join(workdir, 'eval_synthetic_av_test_best')
  assert wh.load_json(prefix + '.json')['accuracy'] == trained['test']['accuracy']
  report = wh.load_json(prefix + '_report.json')
  assert sorted(report['per_class']) == sorted(trained['label_names'])
  assert sum(r['support'] for r in report['per_class'].values()) == trained['test']['num_examples']
  assert 'macro avg' in open(prefix + '_report.txt').read()
  for png in ('_confusion.png', '_attention_1.png'):
    assert os.path.getsize(prefix + png) > 1000
  maps = np.load(prefix + '_attention_1.npz')
  a2v = maps['attention_audio_to_video']
  assert a2v.ndim == 3 and np.allclose(a2v.sum(-1), 1.0, atol=1e-4)  # softmax over video time


def test_eval_latest_and_numbered_step(run):
  from mer_jax import evaluate
  cfg, workdir, reuse = run
  trained = wh.load_json(os.path.join(workdir, 'results.json'))
  latest = evaluate.evaluate_checkpoint(cfg, workdir, split='validation', checkpoint='latest',
                                        figures=False, **reuse)
  assert latest['checkpoint_step'] == trained['steps']
  step = evaluate.evaluate_checkpoint(cfg, workdir, split='validation',
                                      checkpoint=str(trained['steps']), figures=False,
                                      **reuse)
  assert step['confusion_matrix'] == latest['confusion_matrix']
  with pytest.raises(FileNotFoundError):
    evaluate.evaluate_checkpoint(cfg, workdir, checkpoint='99999', figures=False, **reuse)


def test_corruption_is_deterministic_and_rate_sized():
  from mer_jax import corruption
  audio = np.random.default_rng(0).normal(size=(4, 50, 10)).astype(np.float32)
  batch = {'audio': jnp.asarray(audio),
           'video': jnp.full((4, 2, 8, 8, 3), 7, jnp.uint8),
           'label': jnp.zeros((4,), jnp.int32), 'mask': jnp.ones((4, 4))}
  a = corruption.corrupt_batch(batch, 'audio', 0.3)
  b = corruption.corrupt_batch(batch, 'audio', 0.3)
  assert np.array_equal(a['audio'], b['audio'])
  changed = float(np.mean(np.asarray(a['audio']) != audio))
  assert 0.25 < changed < 0.35
  assert np.array_equal(a['video'], batch['video'])  # other modality untouched
  v = corruption.corrupt_batch(batch, 'video', 0.7)
  assert v['video'].dtype == jnp.uint8 and 0.65 < float(np.mean(np.asarray(v['video']) != 7)) < 0.75
  m = corruption.corrupt_batch(batch, 'audio', kind='missing')
  assert float(jnp.abs(m['audio']).sum()) == 0.0 and float(m['mask'][:, 0].sum()) == 0.0
  assert corruption.apply(batch, {'modality': '', 'rate': 0.5}) is batch


def test_robustness_sweep_clean_row_matches_training(run):
  from mer_jax import evaluate
  cfg, workdir, reuse = run
  trained = wh.load_json(os.path.join(workdir, 'results.json'))
  conds = evaluate.robustness_conditions((0.5,), ('audio',), missing=True)
  rows = evaluate.robustness_sweep(cfg, workdir, conds, **reuse)
  assert [r['kind'] for r in rows] == ['random', 'random', 'missing']
  assert rows[0]['accuracy'] == trained['test']['accuracy']
  assert all(0.0 <= r['accuracy'] <= 1.0 for r in rows)
  # The same sweep as a configured evaluator; each setting compiles its own step once.
  from mer_jax import assembly, evaluators
  state, _ = assembly.restore(reuse['run'], workdir, 'best')
  out = evaluators.run_all(reuse['run'], state, reuse['data'], {'robustness': {
      'type': 'corruption', 'split': 'test', 'rates': (0.5,), 'modalities': ('audio',),
      'missing': True}})
  assert [r['accuracy'] for r in out['robustness']['rows']] == [r['accuracy'] for r in rows]
  assert len(reuse['run']._eval_steps) >= 3

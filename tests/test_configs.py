"""The preset grammar shared by every config file, and what presets promise."""

import importlib
import time

import pytest

from mer_jax import config_lib, models

PAPERS = ('ofcmaer_cat', 'tucker_fusion', 'avt_ca', 'attsf_net', 'mmt_ca')


def _module(paper):
  return importlib.import_module(f'configs.{paper}')


def test_parse_arg_grammar():
  p = config_lib.parse_arg('ravdess+it1,seed=3,fold=2,runlocal')
  assert (p.preset, p.variants, p.seed, p.fold, p.runlocal) == ('ravdess', ('it1',), 3, 2, True)
  p = config_lib.parse_arg('ravdess,variant=no_sab+l2')
  assert p.variants == ('no_sab', 'l2')
  assert config_lib.parse_arg('').preset == 'synthetic'
  with pytest.raises(ValueError, match='unknown key'):
    config_lib.parse_arg('ravdess,lr=3')
  with pytest.raises(ValueError, match='neither'):
    config_lib.parse_arg('ravdess,it1')


def test_both_spellings_give_the_same_config():
  mod = _module('avt_ca')
  a = mod.get_config('ravdess+it1,seed=1')
  b = mod.get_config('ravdess,variant=it1,seed=1')
  a.arg = b.arg = ''
  assert a.to_json() == b.to_json()
  assert a.preset == 'ravdess' and a.variant == 'it1' and a.seed == 1


@pytest.mark.parametrize('paper', PAPERS)
def test_every_preset_and_variant_builds(paper):
  mod = _module(paper)
  for preset in mod.PRESETS:
    c = mod.get_config(preset)
    assert c.model.name == paper and c.preset == preset
    assert c.paper == models.get(paper).paper
    own = getattr(mod, 'VARIANT_BASES', {})
    for variant in mod.VARIANTS:
      if variant in own and preset != own[variant]:
        continue
      assert mod.get_config(f'{preset}+{variant}').variant == variant


def test_mmt_ca_tuned_recipe_follows_the_head():
  mod = _module('mmt_ca')
  face = mod.get_config('ferplus_face+tuned+heldout')
  assert face.model.face_convs_per_block == 2 and face.model.audio_conv_channels == ()
  assert (face.dataset.train_split, face.dataset.val_split, face.dataset.test_split) == (
      'train[:95%]', 'train[95%:]', 'validation')
  audio = mod.get_config('ravdess_audio+tuned')
  assert audio.model.audio_conv_channels == (64, 64) and audio.model.face_convs_per_block == 1
  fused = mod.get_config('ravdess+tuned')  # both branches as the tuned unimodal runs
  assert fused.model.face_convs_per_block == 2 and fused.model.audio_conv_channels == (64, 64)
  # The pairing: every head has both branches at the face run's width and the
  # small-data training, on faces the FER+ run never saw, with prosody when asked.
  pairing = {h: mod.get_config(f'ravdess_ferplus+{h}+heldout+tuned+prosody')
             for h in ('audio', 'face', 'hybrid')}
  for c in pairing.values():
    assert c.dataset.name == 'ravdess_ferplus/paired_heldout_prosody'
    assert c.model.d_model == face.model.d_model == 128
    assert c.model.face_channels == face.model.face_channels
    assert c.model.audio_conv_channels == (64, 64) and c.input.batch_size == 16
  assert mod.get_config('ravdess_audio+tuned+prosody').dataset.name == (
      'ravdess/speech_audio_prosody')
  with pytest.raises(ValueError, match="put '\+heldout' first"):
    mod.get_config('ravdess_ferplus+prosody')


def test_unknown_names_are_rejected():
  mod = _module('avt_ca')
  with pytest.raises(ValueError, match='unknown preset'):
    mod.get_config('nope')
  with pytest.raises(ValueError, match='unknown variant'):
    mod.get_config('ravdess+nope')
  with pytest.raises(ValueError, match='no k-fold protocol'):
    mod.get_config('synthetic,fold=1')


def test_fold_selects_the_protocol_fold():
  c = _module('attsf_net').get_config('ravdess,fold=3')
  assert c.dataset.fold.num_folds == 5 and c.dataset.fold.index == 3


def test_iemocap_presets_train_on_sessions_1_to_4_and_validate_apart_from_test():
  for paper in ('attsf_net', 'ofcmaer_cat', 'tucker_fusion'):
    c = _module(paper).get_config('iemocap')
    f = c.dataset.fold
    assert (f.num_folds, f.index, f.group_key) == (5, 4, 'session')  # session 5 is test
    assert f.val_groups > 0 and f.val_key == 'speaker'  # validation carved from speakers


def test_real_data_presets_use_hard_labels_and_state_their_target():
  for paper in PAPERS:
    mod = _module(paper)
    for preset in mod.PRESETS:
      c = mod.get_config(preset)
      assert c.loss.soft_labels is False
      if preset not in ('synthetic', 'tiny', 'paper_shapes', 'ravdess_ferplus', 'ravdess'):
        assert c.reference.metric, f'{paper}:{preset} states no target'


def test_ofcmaer_cnn_only_row_trains_on_cross_entropy_alone():
  c = _module('ofcmaer_cat').get_config('iemocap+cnn_only')
  assert c.loss.lambda2 == 0.0 and c.loss.lambda3 == 0.0
  full = _module('ofcmaer_cat').get_config('iemocap')
  assert full.loss.lambda2 > 0 and full.loss.lambda3 > 0


def test_runlocal_shrinks_the_run():
  c = _module('mmt_ca').get_config('synthetic,runlocal')
  assert 0 < c.train.max_steps <= config_lib.RUNLOCAL_STEPS


@pytest.mark.parametrize('paper', PAPERS)
def test_every_model_knob_is_a_config_field(paper):
  # A module attribute that the config lacks could not be set from the command line.
  import dataclasses
  cls = models.get(paper).module_cls
  fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name', 'num_classes'}
  config = _module(paper).get_config('tiny')
  assert fields <= set(config.model.keys()), sorted(fields - set(config.model.keys()))
  assert set(config.model.keys()) - {'name'} <= fields  # and nothing the module ignores


def test_preset_check_runs_each_distinct_config_once():
  from experiments import check_presets
  refs = ['configs/avt_ca.py:ravdess', 'configs/avt_ca.py:paper_shapes',
          'configs/avt_ca.py:ravdess+it1', 'configs/avt_ca.py:ravdess,seed=1']
  same = check_presets._same_as(refs)
  assert same == {'configs/avt_ca.py:paper_shapes': 'configs/avt_ca.py:ravdess'}


def test_preset_check_schedule_builds_first_then_the_costliest_ready_check(monkeypatch):
  import concurrent.futures
  import threading
  from experiments import check_presets
  log, lock, running = [], threading.Lock(), [0, 0]

  def task(kind, fail=False):
    def fn(ref):
      with lock:
        running[0] += 1
        running[1] = max(running[1], running[0])
        log.append(('start', kind, ref))
      time.sleep(0.05)
      with lock:
        running[0] -= 1
        log.append(('end', kind, ref))
      if kind == 'build':
        return 'ValueError: no files' if ref == 'b:broken' else ''
      return {'ref': ref}
    return fn

  monkeypatch.setattr(check_presets, '_prepare_in_worker', task('build'))
  monkeypatch.setattr(check_presets, '_check_in_worker', task('check'))
  builds = [(('a', 0), 'a:small'), (('b', 0), 'b:broken')]
  needs = {'a:small': ('a', 0), 'a:big': ('a', 0), 'b:broken': ('b', 0), 'b:other': ('b', 0)}
  checks = ['a:small', 'a:big', 'b:broken', 'b:other', 'c:unloadable']
  cost = {'a:small': 1, 'a:big': 100, 'b:broken': 5, 'b:other': 50, 'c:unloadable': 0}
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    events = list(check_presets._schedule(pool, 2, builds, checks, needs, cost))
  assert running[1] <= 2
  checked = [r for e, r, _ in events if e == 'checked']
  assert sorted(checked) == sorted(checks)  # a failed build's checks still run (and report it)
  built = {r: why for e, r, why in events if e == 'built'}
  assert built == {'a:small': '', 'b:broken': 'ValueError: no files'}
  assert sum(e == 'builds done' for e, _, _ in events) == 1
  started = [(k, r) for what, k, r in log if what == 'start']
  assert started[:2] == [('build', 'a:small'), ('build', 'b:broken')]
  ended_build = {r: i for i, (what, k, r) in enumerate(log) if what == 'end' and k == 'build'}
  for i, (what, kind, ref) in enumerate(log):
    if what == 'start' and kind == 'check' and ref in needs:
      build_ref = {'a': 'a:small', 'b': 'b:broken'}[needs[ref][0]]
      assert ended_build[build_ref] < i, f'{ref} started before its dataset was built'
  # Among checks ready together, the costliest starts first.
  order = [r for k, r in started if k == 'check']
  assert order.index('a:big') < order.index('a:small')
  assert order.index('b:other') < order.index('b:broken')


def test_preset_check_lowers_a_variant_on_the_real_batch_without_compiling_it(tiny_data_dir,
                                                                             monkeypatch):
  import pathlib
  from experiments import check_presets
  assert check_presets.is_variant('configs/attsf_net.py:tiny+no_sim')
  assert not check_presets.is_variant('configs/attsf_net.py:tiny,seed=1')
  assert check_presets.is_lowered('configs/attsf_net.py:ravdess+no_sim', 'lower', ('tiny',))
  assert check_presets.is_lowered('configs/attsf_net.py:tiny', 'lower', ('tiny',))
  assert not check_presets.is_lowered('configs/attsf_net.py:ravdess', 'lower', ('tiny',))
  assert not check_presets.is_lowered('configs/attsf_net.py:tiny', 'step', ('tiny',))
  sources = check_presets._sources(pathlib.Path('unused'), pathlib.Path('unused'))
  row = check_presets.check('configs/attsf_net.py:tiny+no_sim', sources, tiny_data_dir, 2,
                            init='host', lower_only=True)
  assert row['ok'], row['why']
  assert 'lower_s' in row and 'compile_s' not in row and 'steps_s' not in row
  # A variant whose model cannot be traced on that batch fails the lowered check.
  checked = check_presets._checked_config

  def broken(*args):
    config = checked(*args)
    config.model.num_heads = 3  # does not divide d_model
    return config

  monkeypatch.setattr(check_presets, '_checked_config', broken)
  row = check_presets.check('configs/attsf_net.py:tiny+no_sim', sources, tiny_data_dir, 2,
                            init='host', lower_only=True)
  assert not row['ok'] and 'divisible' in row['why'], row['why']

"""Papers 000, 001, 003 and 004: forward + backward in the tiny presets, output
shapes, finite gradients, train/eval behaviour, variants and the ResNet import;
the switches for the papers' ambiguous points (002, 003, 000).

One jitted train-mode step per model (called several times with the same
shapes); everything else runs un-jitted to keep compilation short.
"""

from __future__ import annotations

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mer_jax import contract as bc
from mer_jax import assembly, models
from mer_jax.models import attsf_net

PAPERS = ['ofcmaer_cat', 'tucker_fusion', 'attsf_net', 'mmt_ca']
B = 4


def _config(paper, arg='tiny'):
  return importlib.import_module(f'configs.{paper}').get_config(arg)


def _random_batch(config, seed=0, batch_size=B):
  batch = assembly.example_batch(config, batch_size)
  rng = np.random.default_rng(seed)
  for k, v in list(batch.items()):
    if k == 'video' and v.dtype == np.uint8:
      batch[k] = rng.integers(0, 256, v.shape, dtype=np.uint8)
    elif k in bc.MODALITIES:
      batch[k] = rng.standard_normal(v.shape).astype(np.float32)
  batch['label'] = rng.integers(0, config.dataset.num_classes, batch_size).astype(np.int32)
  return batch


def _init(model, batch):
  return model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
                    batch, train=False)


@pytest.fixture(scope='module', params=PAPERS)
def setup(request):
  config = _config(request.param)
  model = models.build(config.model, config.dataset.num_classes)
  loss_fn = models.get(config.model.name).loss_fn
  batch = _random_batch(config)
  variables = _init(model, batch)

  @jax.jit
  def train_step(params, batch_stats, batch, rng):
    def f(p):
      out, upd = model.apply({'params': p, 'batch_stats': batch_stats}, batch, train=True,
                             rngs={'dropout': rng, 'noise': rng}, mutable=['batch_stats'])
      loss, aux = loss_fn(out, batch, config.loss)
      return loss, (out, upd)
    (loss, (out, upd)), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, out, upd, grads

  return request.param, config, model, variables, batch, train_step


def test_forward_backward_shapes_and_finite_grads(setup):
  paper, config, model, variables, batch, train_step = setup
  loss, out, upd, grads = train_step(variables['params'], variables.get('batch_stats', {}), batch,
                                     jax.random.PRNGKey(3))
  chex.assert_shape(out['logits'], (B, config.dataset.num_classes))
  chex.assert_tree_all_finite(out['logits'])
  assert np.isfinite(float(loss))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), f'{paper}: non-finite gradient at {jax.tree_util.keystr(path)}'
  # Every parameter takes part in the loss, except where a softmax runs over a
  # single entry and is constant: the query/key of SAB's self-attention over its
  # one token, and OF-CMAER-CAT's W_phi with one partner modality (alpha = 1).
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g))]
  dead = [d for d in dead if not ('sab_' in d and "['self']" in d
                                  and ("['query']" in d or "['key']" in d))]
  if len(config.model.get('modalities', ())) == 2:
    dead = [d for d in dead if d != "['w_phi']"]
  assert not dead, f'{paper}: parameters with zero gradient: {dead}'
  chex.assert_trees_all_equal_structs(grads, variables['params'])


def test_host_values_have_the_models_structure_and_train(setup):
  # What experiments.check_presets steps on: no compiled init, same variables.
  paper, config, model, variables, batch, train_step = setup
  host = assembly.host_variables(config, model, batch, seed=0)
  for part in ('params', 'batch_stats'):
    want = variables.get(part, {})
    chex.assert_trees_all_equal_shapes_and_dtypes(host[part], want)
  for path, leaf in jax.tree_util.tree_leaves_with_path(host['params']):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      assert np.all(leaf == 1.0), name
    elif leaf.ndim >= 2:
      fan_in = np.prod(leaf.shape[:-1])
      if leaf.size >= 256:
        assert 0.5 < np.std(leaf) * np.sqrt(fan_in) < 1.5, name
  loss, out, _, grads = train_step(host['params'], host['batch_stats'], batch,
                                   jax.random.PRNGKey(3))
  assert np.isfinite(float(loss)), paper
  chex.assert_tree_all_finite(grads)
  with pytest.raises(ValueError, match="init must be 'model' or 'host'"):
    assembly.build_run(config, init='numpy')


def test_dropout_makes_train_mode_stochastic(setup):
  paper, config, model, variables, batch, train_step = setup
  bs = variables.get('batch_stats', {})
  _, out1, _, _ = train_step(variables['params'], bs, batch, jax.random.PRNGKey(10))
  _, out2, _, _ = train_step(variables['params'], bs, batch, jax.random.PRNGKey(11))
  _, out3, _, _ = train_step(variables['params'], bs, batch, jax.random.PRNGKey(10))
  assert not np.allclose(out1['logits'], out2['logits']), f'{paper}: dropout has no effect'
  np.testing.assert_allclose(out1['logits'], out3['logits'], rtol=1e-5, atol=1e-6)


def test_batchnorm_uses_batch_statistics_in_train(setup):
  paper, config, model, variables, batch, train_step = setup
  bs = variables['batch_stats']
  rng = jax.random.PRNGKey(5)
  _, out, upd, _ = train_step(variables['params'], bs, batch, rng)
  # Running statistics move in train mode.
  moved = [not np.allclose(a, b) for a, b in
           zip(jax.tree.leaves(bs), jax.tree.leaves(upd['batch_stats']))]
  assert any(moved), f'{paper}: batch_stats unchanged by a train step'
  # In train mode example 0 depends on the rest of the batch; in eval mode it does not.
  other = _random_batch(config, seed=1)
  mixed = {k: np.concatenate([batch[k][:1], other[k][1:]]) for k in batch}
  _, out_mixed, _, _ = train_step(variables['params'], bs, mixed, rng)
  assert not np.allclose(out['logits'][0], out_mixed['logits'][0], atol=1e-6)
  ev = model.apply(variables, batch, train=False)['logits']
  ev_mixed = model.apply(variables, mixed, train=False)['logits']
  np.testing.assert_allclose(ev[0], ev_mixed[0], rtol=1e-4, atol=1e-5)
  # Eval mode is deterministic.
  np.testing.assert_allclose(ev, model.apply(variables, batch, train=False)['logits'])


def test_registry_and_presets():
  for paper in PAPERS:
    assert paper in models.names()
    for preset in ('synthetic', 'tiny', 'paper_shapes'):
      c = _config(paper, preset)
      assert assembly.example_shapes(c), (paper, preset)
  assert _config('mmt_ca', 'synthetic').dataset.name == 'synthetic_av/default'
  assert _config('attsf_net', 'ravdess').optim.schedule == 'step'
  assert _config('attsf_net', 'ravdess+no_sim').loss.lambda_sim == 0.0
  assert not _config('ofcmaer_cat', 'iemocap+cnn_only').model.use_cmaa
  assert assembly.example_shapes(_config('tucker_fusion', 'paper_shapes'))['video'] == (
      90, 224, 224, 3)


def test_mmt_ca_unimodal_heads_and_single_images():
  face = _config('mmt_ca', 'tiny+face')
  rng = np.random.default_rng(0)
  # A FER+-like batch: one image per example, no audio.
  batch = {'video': rng.integers(0, 256, (B, 1, 32, 32, 3), dtype=np.uint8),
           'label': np.zeros((B,), np.int32), 'valid': np.ones((B,), np.float32)}
  batch['mask'] = bc.presence_mask(batch.keys(), B)
  model = models.build(face.model, 6)
  variables = _init(model, batch)
  out = model.apply(variables, batch, train=False)
  chex.assert_shape(out['logits'], (B, 6))
  assert 'audio_logits' not in out
  # Images without a time axis are a sequence of one.
  flat = dict(batch, video=batch['video'][:, 0])
  np.testing.assert_allclose(model.apply(variables, flat, train=False)['logits'], out['logits'],
                             rtol=1e-5, atol=1e-6)
  # The face-only parameters restore into the fused model's face branch.
  fb = _random_batch(_config('mmt_ca', 'tiny'))
  fused_vars = _init(models.build(_config('mmt_ca', 'tiny').model, 6), fb)
  for name in ('face_cnn', 'face_encoder', 'face_classifier'):
    chex.assert_trees_all_equal_shapes(variables['params'][name], fused_vars['params'][name])
  # Late fusion with the video masked equals the audio head's decision.
  late_cfg = _config('mmt_ca', 'tiny+late')
  late = models.build(late_cfg.model, 6)
  lv = _init(late, fb)
  masked = bc.mask_modalities(fb, ['video'])
  out = late.apply(lv, masked, train=False)
  np.testing.assert_allclose(out['logits'], jax.nn.log_softmax(out['audio_logits']),
                             rtol=1e-5, atol=1e-5)


def test_mmt_ca_statistics_dropout_switch():
  # audio_stats_dropout: the statistics' classifier's own input dropout (< 0: head_dropout).
  config = _config('mmt_ca', 'tiny+audio')
  batch = _random_batch(config)
  ens = models.build(config.model, 6).clone(audio_input_stats='ensemble', head_dropout=0.5)
  v = _init(ens, batch)

  def stats_logits(model, seed):
    out, _ = model.apply(v, batch, train=True, rngs={'dropout': jax.random.PRNGKey(seed)},
                         mutable=['batch_stats'])
    return np.asarray(out['audio_stats_logits'])

  assert not np.allclose(stats_logits(ens, 1), stats_logits(ens, 2))
  off = ens.clone(audio_stats_dropout=0.0)
  np.testing.assert_allclose(stats_logits(off, 1), stats_logits(off, 2), rtol=1e-6)


def test_mmt_ca_audio_input_stats_reach_the_classifier():
  """`audio_input_stats`: the classifier's input gains the mean and std over valid
  steps of each input feature, and those statistics alone move the decision."""
  config = _config('mmt_ca', 'tiny+audio')
  batch = _random_batch(config)
  f = batch['audio'].shape[-1]
  plain = models.build(config.model, 6)
  model = plain.clone(audio_input_stats='concat')
  pv, variables = _init(plain, batch), _init(model, batch)
  width = pv['params']['audio_classifier']['kernel'].shape[0]
  chex.assert_shape(variables['params']['audio_classifier']['kernel'], (width + 2 * f, 6))
  # Only the statistics' rows of the kernel changed: the logits move by exactly their
  # contribution, the mean and std of the (un-normalised, audio_input_norm='none') input.
  params = jax.tree.map(lambda x: x, variables['params'])
  kernel = np.asarray(params['audio_classifier']['kernel'])
  bumped = kernel.copy()
  bumped[width:] += 0.1
  params['audio_classifier'] = dict(params['audio_classifier'], kernel=jnp.asarray(bumped))
  before = np.asarray(model.apply(variables, batch, train=False)['logits'])
  after = np.asarray(model.apply(dict(variables, params=params), batch, train=False)['logits'])
  x, valid = batch['audio'], np.asarray(bc.time_valid(batch, 'audio'))[..., None]
  mean = (x * valid).sum(1) / valid.sum(1)
  std = np.sqrt((((x - mean[:, None]) ** 2) * valid).sum(1) / valid.sum(1) + 1e-5)
  want = 0.1 * (mean.sum(1) + std.sum(1))
  np.testing.assert_allclose(after - before, np.repeat(want[:, None], 6, 1), rtol=1e-4, atol=1e-4)
  # 'ensemble': the statistics' own linear classifier, added to the plain model's logits,
  # with its own loss term.
  ens = plain.clone(audio_input_stats='ensemble')
  ev = _init(ens, batch)
  out = ens.apply(ev, batch, train=False)
  stats = np.concatenate([mean, std], -1)
  sc = ev['params']['audio_stats_classifier']
  np.testing.assert_allclose(out['audio_stats_logits'], stats @ sc['kernel'] + sc['bias'],
                             rtol=1e-4, atol=1e-4)
  without = {k: v for k, v in ev['params'].items() if k != 'audio_stats_classifier'}
  np.testing.assert_allclose(out['audio_logits'] - out['audio_stats_logits'],
                             plain.apply(dict(ev, params=without), batch, train=False)['logits'],
                             rtol=1e-4, atol=1e-4)
  loss, aux = models.get('mmt_ca').loss_fn(out, batch, config.loss)
  assert np.isfinite(float(aux['ce_audio_stats'])) and float(loss) > float(aux['ce_audio_stats'])
  # deep_weight: the sequence branch's own CE (its logits without the statistics') joins.
  np.testing.assert_allclose(out['audio_deep_logits'],
                             out['audio_logits'] - out['audio_stats_logits'], rtol=1e-5, atol=1e-5)
  assert 'ce_audio_deep' not in aux
  deep_cfg = config.loss.copy_and_resolve_references()
  deep_cfg.deep_weight = 2.0
  loss2, aux2 = models.get('mmt_ca').loss_fn(out, batch, deep_cfg)
  np.testing.assert_allclose(float(loss2), float(loss) + 2.0 * float(aux2['ce_audio_deep']),
                             rtol=1e-5)
  # stats_l2: a penalty on the statistics classifier's kernel, like a logistic regression's.
  l2_cfg = config.loss.copy_and_resolve_references()
  l2_cfg.stats_l2 = 0.5
  loss3, _ = models.get('mmt_ca').loss_fn(out, batch, l2_cfg)
  np.testing.assert_allclose(float(loss3), float(loss) + 0.5 * float(np.sum(sc['kernel'] ** 2)),
                             rtol=1e-5)
  # Functionals: + every feature's slope, + p10/p50/p90 and range of the listed features.
  fn = ens.clone(audio_stats_slope=True, audio_stats_percentiles=(0, -1))
  fv = _init(fn, batch)
  sc = fv['params']['audio_stats_classifier']
  chex.assert_shape(sc['kernel'], (3 * f + 4 * 2, 6))
  n = valid[:, :, 0].sum(1).astype(int)
  extra = []
  for i in range(x.shape[0]):
    xi = x[i, :n[i]]
    t = np.arange(n[i]) - (n[i] - 1) / 2
    slope = ((t / t.std())[:, None] * (xi - xi.mean(0))).mean(0)
    p = np.percentile(xi[:, [0, f - 1]], [10, 50, 90], axis=0)
    extra.append(np.concatenate([slope, p.reshape(-1), p[2] - p[0]]))
  want = np.concatenate([stats, np.stack(extra)], -1) @ sc['kernel'] + sc['bias']
  np.testing.assert_allclose(fn.apply(fv, batch, train=False)['audio_stats_logits'], want,
                             rtol=1e-3, atol=1e-3)
  with pytest.raises(ValueError, match='audio_stats_slope'):
    _init(plain.clone(audio_stats_slope=True), batch)


def test_ofcmaer_three_modalities_and_missing_one():
  config = _config('ofcmaer_cat')
  config.model.modalities = ('audio', 'video', 'physio')
  config.input.example_shapes = dict(config.input.example_shapes.to_dict(), physio=(40, 6))
  batch = _random_batch(config)
  batch['mask'][1:, bc.modality_index('physio')] = 0.0
  for head in ('projection', 'concat'):
    config.model.head = head
    model = models.build(config.model, 6)
    variables = _init(model, batch)
    out = model.apply(variables, batch, train=False)
    chex.assert_shape(out['logits'], (B, 6))
    w = np.asarray(out['modality_weights'])
    chex.assert_shape(w, (B, 3))
    np.testing.assert_array_equal(w[1:, 2], 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    assert np.all(w[0] > 0)


def test_attsf_fusion_variants_and_ablations():
  for arg in ('tiny+gat', 'tiny+l2', 'tiny+no_sab', 'tiny+no_audio_aux+linear'):
    config = _config('attsf_net', arg)
    model = models.build(config.model, 6)
    batch = _random_batch(config)
    variables = _init(model, batch)
    out = model.apply(variables, batch, train=False)
    chex.assert_shape(out['logits'], (B, 6))
    assert ('sab_token' in out) == config.model.use_sab
    assert ('audio_aux_logits' in out) == config.model.use_audio_aux
    loss, aux = models.get('attsf_net').loss_fn(out, batch, config.loss)
    assert np.isfinite(float(loss))
    assert ('L_sim' in aux) == config.model.use_sab


def test_attsf_text_stream_joins_at_the_concatenation():
  config = _config('attsf_net')
  config.model.use_text = True
  config.input.example_shapes = dict(config.input.example_shapes.to_dict(), text=(12, 20))
  batch = _random_batch(config)
  model = models.build(config.model, 6)
  variables = _init(model, batch)
  assert 'avam_text_0' in variables['params'] and 'text_proj' in variables['params']
  out = model.apply(variables, batch, train=False)['logits']
  chex.assert_shape(out, (B, 6))
  changed = dict(batch, text=batch['text'] + 1.0)
  assert not np.allclose(out, model.apply(variables, changed, train=False)['logits'])
  # A missing transcript contributes nothing.
  hidden = bc.mask_modalities(batch, ['text'])
  hidden_changed = dict(hidden, text=hidden['text'] + 1.0)
  np.testing.assert_allclose(model.apply(variables, hidden, train=False)['logits'],
                             model.apply(variables, hidden_changed, train=False)['logits'],
                             atol=1e-5)


def test_tucker_model_naive_path_matches():
  config = _config('tucker_fusion')
  batch = _random_batch(config)
  fast = models.build(config.model, 6)
  variables = _init(fast, batch)
  naive = models.build(_config('tucker_fusion', 'tiny+naive').model, 6)
  np.testing.assert_allclose(fast.apply(variables, batch, train=False)['logits'],
                             naive.apply(variables, batch, train=False)['logits'],
                             rtol=1e-4, atol=1e-5)


def _torch_layout(variables, stage_sizes):
  """Inverse of resnet_import.convert_resnet_state_dict (for a torch-free round trip)."""
  p, s = variables['params'], variables['batch_stats']
  sd = {}
  conv = lambda k: np.transpose(np.asarray(k['kernel']), (3, 2, 0, 1))

  def bn(prefix, pp, ss):
    sd.update({prefix + '.weight': np.asarray(pp['scale']), prefix + '.bias': np.asarray(pp['bias']),
               prefix + '.running_mean': np.asarray(ss['mean']),
               prefix + '.running_var': np.asarray(ss['var'])})

  sd['conv1.weight'] = conv(p['conv1'])
  bn('bn1', p['bn1'], s['bn1'])
  for i, n in enumerate(stage_sizes):
    for j in range(n):
      name, tp = f'layer{i + 1}_{j}', f'layer{i + 1}.{j}'
      sd[tp + '.conv1.weight'], sd[tp + '.conv2.weight'] = conv(p[name]['conv1']), conv(p[name]['conv2'])
      bn(tp + '.bn1', p[name]['bn1'], s[name]['bn1'])
      bn(tp + '.bn2', p[name]['bn2'], s[name]['bn2'])
      if 'downsample_conv' in p[name]:
        sd[tp + '.downsample.0.weight'] = conv(p[name]['downsample_conv'])
        bn(tp + '.downsample.1', p[name]['downsample_bn'], s[name]['downsample_bn'])
  sd['fc.weight'], sd['fc.bias'] = np.asarray(p['fc']['kernel']).T, np.asarray(p['fc']['bias'])
  return sd


def test_resnet_import_round_trip(tmp_path):
  from mer_jax.models import resnet, resnet_import
  net = resnet.ResNet((1, 1), (8, 16), num_classes=5)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = net.init(jax.random.PRNGKey(0), x, train=False)
  path = str(tmp_path / 'sd.npz')
  np.savez(path, **_torch_layout(variables, (1, 1)))
  loaded = resnet_import.load_torchvision_resnet(path, stage_sizes=(1, 1))
  chex.assert_trees_all_close(loaded, jax.device_get(variables))


def test_resnet_matmul_impl_equals_xla():
  """Custom-gradient convs and max-pool (CPU) give XLA's outputs, gradients and
  batch statistics, with the same variables."""
  from mer_jax.models import resnet
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 32, 30, 3))
  nets = {impl: resnet.ResNet((1, 1), (8, 16), num_classes=5, impl=impl)
          for impl in ('xla', 'matmul')}
  variables = nets['xla'].init(jax.random.PRNGKey(1), x, train=False)
  chex.assert_trees_all_equal_shapes(variables, nets['matmul'].init(jax.random.PRNGKey(1), x,
                                                                    train=False))

  def loss(params, impl):
    y, upd = nets[impl].apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y)), upd

  (la, sa), ga = jax.value_and_grad(loss, has_aux=True)(variables['params'], 'xla')
  (lb, sb), gb = jax.value_and_grad(loss, has_aux=True)(variables['params'], 'matmul')
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  chex.assert_trees_all_close(sa, sb, atol=1e-5)
  chex.assert_trees_all_close(ga, gb, atol=2e-5, rtol=1e-4)


def test_resnet18_matches_torchvision(tmp_path):
  try:
    import torch
    import torchvision
  except ImportError as e:
    pytest.skip(f'torch/torchvision not installed ({e}); the converter itself needs neither')
  from mer_jax.models import resnet, resnet_import
  torch.manual_seed(0)
  tnet = torchvision.models.resnet18(weights=None).eval()
  # Non-trivial running statistics so that BatchNorm conversion is exercised.
  for m in tnet.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.uniform_(-0.5, 0.5)
      m.running_var.uniform_(0.5, 1.5)
  path = str(tmp_path / 'resnet18.pth')
  torch.save(tnet.state_dict(), path)
  variables = resnet_import.load_torchvision_resnet(path)
  image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
  with torch.no_grad():
    want = tnet(torch.from_numpy(image)).numpy()
  got = resnet.resnet18(1000).apply(variables, jnp.asarray(image.transpose(0, 2, 3, 1)),
                                    train=False)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=1e-3)


def test_torch_zip_reader_without_torch(tmp_path, monkeypatch):
  """Writes a checkpoint in torch's zip layout with stand-in `torch` modules, then
  reads it back with the torch-free reader (including a strided tensor)."""
  import collections
  import pickle
  import sys
  import types
  import zipfile
  from mer_jax.models import resnet_import

  fake_torch, fake_utils = types.ModuleType('torch'), types.ModuleType('torch._utils')

  class FloatStorage:
    pass

  def _rebuild_tensor_v2(*args):
    raise AssertionError('only used by name when pickling')

  FloatStorage.__module__, FloatStorage.__qualname__ = 'torch', 'FloatStorage'
  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = 'torch._utils', '_rebuild_tensor_v2'
  fake_torch.FloatStorage, fake_utils._rebuild_tensor_v2 = FloatStorage, _rebuild_tensor_v2
  fake_torch._utils = fake_utils
  monkeypatch.setitem(sys.modules, 'torch', fake_torch)
  monkeypatch.setitem(sys.modules, 'torch._utils', fake_utils)

  class Storage:
    def __init__(self, key, data):
      self.key, self.data = key, data

  class Tensor:
    def __init__(self, storage, offset, size, stride):
      self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
      return _rebuild_tensor_v2, self.args

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, Storage):
        return ('storage', FloatStorage, obj.key, 'cpu', obj.data.size)
      return None

  rng = np.random.default_rng(0)
  conv = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
  base = rng.standard_normal((6, 5)).astype(np.float32)
  scalar = np.float32(3.5)
  storages = {'0': Storage('0', conv.ravel()), '1': Storage('1', base.ravel()),
              '2': Storage('2', np.array([0.0, scalar], np.float32))}
  sd = collections.OrderedDict([
      ('conv.weight', Tensor(storages['0'], 0, (4, 3, 2, 2), (12, 4, 2, 1))),
      ('fc.weight', Tensor(storages['1'], 0, (5, 6), (1, 5))),  # a transposed view
      ('count', Tensor(storages['2'], 1, (), ())),
  ])
  path = tmp_path / 'model.pth'
  with zipfile.ZipFile(path, 'w') as z:
    with z.open('model/data.pkl', 'w') as f:
      Pickler(f, protocol=2).dump(sd)
    for key, s in storages.items():
      z.writestr(f'model/data/{key}', s.data.astype('<f4').tobytes())
  monkeypatch.delitem(sys.modules, 'torch')
  monkeypatch.delitem(sys.modules, 'torch._utils')
  loaded = resnet_import.read_state_dict(str(path))
  np.testing.assert_array_equal(loaded['conv.weight'], conv)
  np.testing.assert_array_equal(loaded['fc.weight'], base.T)
  assert loaded['count'].shape == () and float(loaded['count']) == scalar


def _switch_pair(paper, superset, other):
  """Initialises the model with `superset` overrides (the larger parameter set)
  and applies both variants to the same variables and batch."""
  config = _config(paper)
  batch = _random_batch(config)
  base = models.build(config.model, 6)
  big, small = base.clone(**superset), base.clone(**other)
  variables = _init(big, batch)
  return (variables['params'], big.apply(variables, batch, train=False),
          small.apply(variables, batch, train=False), batch)


def test_avt_ca_cross_self_attention_reading():
  config = _config('avt_ca')
  assert not models.build(config.model, 6).csa_self_attention  # Section III-C reading
  params, with_self, without, _ = _switch_pair('avt_ca', {'csa_self_attention': True},
                                               {'csa_self_attention': False})
  assert 'csa_audio_self' in params and 'csa_video_self' in params
  assert not np.allclose(with_self['logits'], without['logits'], atol=1e-5)
  plain = _init(models.build(config.model, 6), _random_batch(config))['params']
  assert 'csa_audio_self' not in plain and 'csa_audio_to_video' in plain


def test_attsf_positional_embedding_switch():
  params, with_pos, without, _ = _switch_pair('attsf_net', {'use_positional_embedding': True},
                                              {'use_positional_embedding': False})
  config = _config('attsf_net')
  assert params['audio_pos'].shape == (config.model.seq_len, config.model.d_model)
  assert 'video_pos' in params
  assert not np.allclose(with_pos['logits'], without['logits'], atol=1e-5)
  no_pos = models.build(config.model, 6).clone(use_positional_embedding=False)
  assert 'audio_pos' not in _init(no_pos, _random_batch(config))['params']


def test_attsf_table_viii_replacements():
  config = _config('attsf_net')
  batch = _random_batch(config)
  base = models.build(config.model, 6)
  assert (base.fusion_block, base.aux_encoder) == ('cmb', 'avam')
  # CMB -> similarity-aware enhancement block: one block per layer serves both directions.
  seb = base.clone(fusion_block='seb')
  variables = _init(seb, batch)
  names = set(variables['params'])
  assert {'seb_audio_self', 'seb_layers'} <= names and not any(n.startswith('cmb_') for n in names)
  out = seb.apply(variables, batch, train=False)
  loss, aux = models.get('attsf_net').loss_fn(out, batch, config.loss)
  assert np.isfinite(float(loss)) and 'L_sim' in aux
  # AVAM -> temporal pooling: no auxiliary transformer, the auxiliary heads remain.
  pool = base.clone(aux_encoder='pool')
  variables = _init(pool, batch)
  names = set(variables['params'])
  assert not any(n.startswith('avam_audio_') and n[-1].isdigit() for n in names)
  assert {'avam_audio_classifier', 'avam_video_classifier'} <= names
  out = pool.apply(variables, batch, train=False)
  chex.assert_shape(out['audio_aux_logits'], (B, 6))
  full = _init(base, batch)
  assert 'avam_audio_0' in full['params']
  for bad in ({'fusion_block': 'x'}, {'aux_encoder': 'x'}):
    with pytest.raises(ValueError):
      _init(base.clone(**bad), batch)


@pytest.mark.parametrize('fusion_block', ['cmb', 'seb'])
def test_attsf_scanned_layers_match_the_unrolled_ones(fusion_block):
  # One scan over stacked weights compiles each layer once; same numbers as one
  # parameter group per layer, whose checkpoints stack_layer_params converts.
  config = _config('attsf_net')
  batch = _random_batch(config)
  scanned = models.build(config.model, 6).clone(fusion_block=fusion_block)
  assert scanned.scan_layers
  unrolled = scanned.clone(scan_layers=False)
  variables = _init(unrolled, batch)
  assert f'{fusion_block}_layers' not in variables['params']
  stacked = dict(variables, params=attsf_net.stack_layer_params(variables['params'],
                                                                scanned.num_layers))
  chex.assert_trees_all_equal_structs(stacked['params'], _init(scanned, batch)['params'])
  assert stacked['params']['sab_layers']['block']['self']['query']['kernel'].shape[0] == \
      scanned.num_layers
  rngs = {'dropout': jax.random.PRNGKey(5)}
  for train in (False, True):
    want = unrolled.apply(variables, batch, train=train, rngs=rngs, mutable=['batch_stats',
                                                                              'intermediates'])
    got = scanned.apply(stacked, batch, train=train, rngs=rngs, mutable=['batch_stats',
                                                                          'intermediates'])
    if not train:  # dropout masks are drawn per layer in either layout, differently
      chex.assert_trees_all_close(got[0], want[0], atol=1e-5)
      chex.assert_trees_all_close(got[1]['intermediates'], want[1]['intermediates'], atol=1e-5)
    chex.assert_trees_all_close(got[1]['batch_stats'], want[1]['batch_stats'], atol=1e-5)


def test_ofcmaer_transformer_reads_weighted_features():
  config = _config('ofcmaer_cat')
  assert models.build(config.model, 6).transformer_input == 'weighted'
  params, weighted, unweighted, batch = _switch_pair(
      'ofcmaer_cat', {'transformer_input': 'weighted'}, {'transformer_input': 'unweighted'})
  assert not np.allclose(weighted['logits'], unweighted['logits'], atol=1e-5)
  np.testing.assert_allclose(weighted['modality_weights'], unweighted['modality_weights'])
  with pytest.raises(ValueError):
    _init(models.build(config.model, 6).clone(transformer_input='x'), batch)


@pytest.mark.slow
def test_attsf_l2_fusion_gradients_stay_finite_with_a_hidden_modality():
  # A hidden modality makes a branch feature exactly zero; its L2 norm's gradient
  # must not be NaN.
  config = _config('attsf_net', 'tiny+l2')
  batch = bc.mask_modalities(_random_batch(config), ('video',))
  model = models.build(config.model, 6)
  variables = jax.jit(lambda b: _init(model, b))(batch)

  def loss(params):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, batch,
                         train=True, rngs={'dropout': jax.random.PRNGKey(1)},
                         mutable=['batch_stats'])
    return models.get('attsf_net').loss_fn(out, batch, config.loss)[0]

  # Compiled: the init and backward dispatched op by op take twice as long (147 against 66 s).
  grads = jax.jit(jax.grad(loss))(variables['params'])
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('paper', ['tucker_fusion', 'mmt_ca'])
def test_fast_compiled_init_gives_the_optimised_inits_variables(paper):
  # init_variables compiles with XLA's backend optimisation off; the variables must not move.
  config = _config(paper)
  model = models.build(config.model, config.dataset.num_classes)
  batch = _random_batch(config, batch_size=1)
  rng = jax.random.PRNGKey(3)
  got = assembly.init_variables(config, model, batch, rng, pretrained=False)
  small = {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in 'biuf'}
  # The reference compiles with XLA's optimisation on, whatever XLA_FLAGS the tests run with.
  ref = jax.jit(lambda r, b: model.init({'params': r, 'dropout': r}, b, train=False)).lower(
      rng, small).compile(compiler_options={'xla_backend_optimization_level': 3,
                                            'xla_llvm_disable_expensive_passes': False})(rng, small)
  ref = {'params': ref['params'], 'batch_stats': ref.get('batch_stats', {})}
  chex.assert_trees_all_close(got, ref, atol=1e-6, rtol=1e-6)

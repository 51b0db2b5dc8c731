"""Pretrained initialisation: torch checkpoints written here without torch, in the
zip and legacy formats, with EfficientFace's and torchvision's key names, and
orbax checkpoints of trained-model states, loaded through `pretrained.apply_init`."""

import argparse
import collections
import pickle
import struct
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mer_jax import pretrained
from mer_jax.models import avt_ca, efficientface, encoders, mmt_ca, resnet_import, tucker_fusion


# --------------------------------------------------------------------------- torch writer

@pytest.fixture
def torch_writer(monkeypatch):
  """write(path, obj, legacy=False): saves `obj` (np arrays as tensors) as torch.save would."""
  fake_torch, fake_utils = types.ModuleType('torch'), types.ModuleType('torch._utils')
  storage_types = {}
  for np_dtype, name in ((np.float32, 'FloatStorage'), (np.int64, 'LongStorage')):
    cls = type(name, (), {})
    cls.__module__, cls.__qualname__ = 'torch', name
    setattr(fake_torch, name, cls)
    storage_types[np.dtype(np_dtype)] = cls

  def _rebuild_tensor_v2(*args):
    raise AssertionError('only used by name when pickling')

  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = 'torch._utils', '_rebuild_tensor_v2'
  fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  fake_torch._utils = fake_utils
  monkeypatch.setitem(sys.modules, 'torch', fake_torch)
  monkeypatch.setitem(sys.modules, 'torch._utils', fake_utils)

  class Storage:
    def __init__(self, key, data):
      self.key, self.data = key, data

  class Tensor:
    def __init__(self, storage, shape):
      stride = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
      self.args = (storage, 0, tuple(shape), stride, False, collections.OrderedDict())

    def __reduce__(self):
      return _rebuild_tensor_v2, self.args

  def write(path, obj, legacy=False):
    storages = []

    def wrap(o):
      if isinstance(o, np.ndarray):
        s = Storage(str(len(storages)), np.ascontiguousarray(o).ravel())
        storages.append(s)
        return Tensor(s, o.shape)
      if isinstance(o, collections.OrderedDict):
        return collections.OrderedDict((k, wrap(v)) for k, v in o.items())
      if isinstance(o, dict):
        return {k: wrap(v) for k, v in o.items()}
      return o

    wrapped = wrap(obj)

    class Pickler(pickle.Pickler):
      def persistent_id(self, o):
        if isinstance(o, Storage):
          st = storage_types[o.data.dtype]
          if legacy:
            return ('storage', st, o.key, 'cpu', o.data.size, None)
          return ('storage', st, o.key, 'cpu', o.data.size)
        return None

    if legacy:
      with open(path, 'wb') as f:
        pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({'protocol_version': 1001, 'little_endian': True}, f, protocol=2)
        Pickler(f, protocol=2).dump(wrapped)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
          f.write(struct.pack('<q', s.data.size))
          f.write(s.data.astype(s.data.dtype.newbyteorder('<')).tobytes())
    else:
      with zipfile.ZipFile(path, 'w') as z:
        with z.open('archive/data.pkl', 'w') as f:
          Pickler(f, protocol=2).dump(wrapped)
        for s in storages:
          z.writestr(f'archive/data/{s.key}', s.data.astype(s.data.dtype.newbyteorder('<')).tobytes())

  return write


# --------------------------------------------------------------------------- state_dicts

def _bn(sd, rng, name, c):
  sd[name + '.weight'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
  sd[name + '.bias'] = rng.standard_normal(c).astype(np.float32)
  sd[name + '.running_mean'] = rng.standard_normal(c).astype(np.float32)
  sd[name + '.running_var'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
  sd[name + '.num_batches_tracked'] = np.array(7, np.int64)


def _w(rng, *shape):
  fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
  return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def efficientface_state_dict(seed=0, repeats=(4, 8, 4), ch=(29, 116, 232, 464, 1024), classes=7):
  """Random values under the names and shapes of EfficientFace's PyTorch modules."""
  rng = np.random.default_rng(seed)
  sd = collections.OrderedDict()
  sd['conv1.0.weight'] = _w(rng, ch[0], 3, 3, 3)
  _bn(sd, rng, 'conv1.1', ch[0])
  inp = ch[0]
  for s, (n, out) in enumerate(zip(repeats, ch[1:4]), start=2):
    bf = out // 2
    for i in range(n):
      p = f'stage{s}.{i}'
      if i == 0:
        sd[p + '.branch1.0.weight'] = _w(rng, inp, 1, 3, 3)
        _bn(sd, rng, p + '.branch1.1', inp)
        sd[p + '.branch1.2.weight'] = _w(rng, bf, inp, 1, 1)
        _bn(sd, rng, p + '.branch1.3', bf)
      sd[p + '.branch2.0.weight'] = _w(rng, bf, inp if i == 0 else bf, 1, 1)
      _bn(sd, rng, p + '.branch2.1', bf)
      sd[p + '.branch2.3.weight'] = _w(rng, bf, 1, 3, 3)
      _bn(sd, rng, p + '.branch2.4', bf)
      sd[p + '.branch2.5.weight'] = _w(rng, bf, bf, 1, 1)
      _bn(sd, rng, p + '.branch2.6', bf)
    inp = out
  for k in range(1, 5):
    sd[f'local.conv{k}_1.weight'] = _w(rng, ch[1], 1, 3, 3)  # 29 groups, 4 outputs each
    _bn(sd, rng, f'local.bn{k}_1', ch[1])
    sd[f'local.conv{k}_2.weight'] = _w(rng, ch[1], 1, 3, 3)
    _bn(sd, rng, f'local.bn{k}_2', ch[1])
  r = ch[1] // 16
  c, s = 'modulator.channel_att.gate_c.gate_c_', 'modulator.spatial_att.gate_s.gate_s_'
  sd[c + 'fc_0.weight'], sd[c + 'fc_0.bias'] = _w(rng, r, ch[1]), _w(rng, r)
  _bn(sd, rng, c + 'bn_1', r)
  sd[c + 'fc_final.weight'], sd[c + 'fc_final.bias'] = _w(rng, ch[1], r), _w(rng, ch[1])
  sd[s + 'conv_reduce0.weight'], sd[s + 'conv_reduce0.bias'] = _w(rng, r, ch[1], 1, 1), _w(rng, r)
  _bn(sd, rng, s + 'bn_reduce0', r)
  for i in range(2):
    sd[s + f'conv_di_{i}.weight'], sd[s + f'conv_di_{i}.bias'] = _w(rng, r, r, 3, 3), _w(rng, r)
    _bn(sd, rng, s + f'bn_di_{i}', r)
  sd[s + 'conv_final.weight'], sd[s + 'conv_final.bias'] = _w(rng, 1, r, 1, 1), _w(rng, 1)
  sd['conv5.0.weight'] = _w(rng, ch[4], ch[3], 1, 1)
  _bn(sd, rng, 'conv5.1', ch[4])
  sd['fc.weight'], sd['fc.bias'] = _w(rng, classes, ch[4]), _w(rng, classes)
  return sd


def torchvision_resnet_state_dict(seed=0, stage_sizes=(1, 1), widths=(8, 16), classes=10):
  """Random values under torchvision's ResNet (BasicBlock) names and shapes."""
  rng = np.random.default_rng(seed)
  sd = collections.OrderedDict()
  sd['conv1.weight'] = _w(rng, widths[0], 3, 7, 7)
  _bn(sd, rng, 'bn1', widths[0])
  inp = widths[0]
  for i, (n, w) in enumerate(zip(stage_sizes, widths)):
    for j in range(n):
      p = f'layer{i + 1}.{j}'
      sd[p + '.conv1.weight'] = _w(rng, w, inp, 3, 3)
      _bn(sd, rng, p + '.bn1', w)
      sd[p + '.conv2.weight'] = _w(rng, w, w, 3, 3)
      _bn(sd, rng, p + '.bn2', w)
      if inp != w or (j == 0 and i > 0):
        sd[p + '.downsample.0.weight'] = _w(rng, w, inp, 1, 1)
        _bn(sd, rng, p + '.downsample.1', w)
      inp = w
  sd['fc.weight'], sd['fc.bias'] = _w(rng, classes, inp), _w(rng, classes)
  return sd


def _hwio(w):
  return w.transpose(2, 3, 1, 0)


def _n_leaves(tree):
  return len(jax.tree.leaves(tree))


# --------------------------------------------------------------------------- models

def _random_variables(model, batch, seed=0):
  """The model's variable tree (traced, not run) filled with random values: the
  loaders only need its structure, and the tests need values to tell apart."""
  shapes = jax.eval_shape(lambda b: model.init(jax.random.PRNGKey(0), b, train=False), batch)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


def _avt_ca_variables(frame_arch='efficientface'):
  model = avt_ca.AVTCA(num_classes=4, d_model=16, audio_channels=(8,), it_heads=2, ct_heads=2,
                       max_len=8, frame_arch=frame_arch)
  batch = {'audio': jnp.zeros((1, 8, 10)), 'video': jnp.zeros((1, 2, 32, 32, 3), jnp.uint8),
           'label': jnp.zeros((1,), jnp.int32)}
  return _random_variables(model, batch, seed=1)


@pytest.fixture(scope='module')
def avt_vars():
  return _avt_ca_variables()


# --------------------------------------------------------------------------- efficientface

def test_efficientface_pth_lands_in_avt_ca(tmp_path, torch_writer, avt_vars):
  sd = efficientface_state_dict()
  path = str(tmp_path / 'EfficientFace_Trained_on_AffectNet7.pth.tar')
  # As the authors save it: DataParallel names inside {'state_dict': ...}, plus bookkeeping.
  torch_writer(path, {'state_dict': collections.OrderedDict(('module.' + k, v) for k, v in sd.items()),
                      'epoch': 12, 'args': argparse.Namespace(lr=0.1)})
  cfg = ml_collections.ConfigDict({'kind': 'efficientface', 'path': path, 'target': '',
                                   'checkpoint': 'best', 'strict': True})
  out = pretrained.apply_init(cfg, avt_vars)
  bb = out['params']['frame_encoder']['backbone']
  st = out['batch_stats']['frame_encoder']['backbone']
  eq = np.testing.assert_array_equal
  eq(bb['conv1']['Conv_0']['kernel'], _hwio(sd['conv1.0.weight']))
  eq(bb['conv1']['BatchNorm_0']['scale'], sd['conv1.1.weight'])
  eq(st['conv1']['BatchNorm_0']['var'], sd['conv1.1.running_var'])
  u = bb['stage2_0']
  eq(u['branch1_dw']['kernel'], _hwio(sd['stage2.0.branch1.0.weight']))
  eq(u['branch1_bn']['bias'], sd['stage2.0.branch1.1.bias'])
  eq(u['branch1_pw']['PointwiseConv_0']['kernel'], _hwio(sd['stage2.0.branch1.2.weight']))
  eq(u['branch1_pw']['BatchNorm_0']['scale'], sd['stage2.0.branch1.3.weight'])
  u = bb['stage3_5']
  eq(u['branch2_pw1']['PointwiseConv_0']['kernel'], _hwio(sd['stage3.5.branch2.0.weight']))
  eq(u['branch2_pw1']['BatchNorm_0']['bias'], sd['stage3.5.branch2.1.bias'])
  eq(u['branch2_dw']['kernel'], _hwio(sd['stage3.5.branch2.3.weight']))
  eq(u['branch2_bn']['scale'], sd['stage3.5.branch2.4.weight'])
  eq(u['branch2_pw2']['PointwiseConv_0']['kernel'], _hwio(sd['stage3.5.branch2.5.weight']))
  eq(st['stage3_5']['branch2_pw2']['BatchNorm_0']['mean'], sd['stage3.5.branch2.6.running_mean'])
  eq(bb['local']['conv3_1']['kernel'], _hwio(sd['local.conv3_1.weight']))
  eq(st['local']['bn4_2']['mean'], sd['local.bn4_2.running_mean'])
  m = bb['modulator']
  g = 'modulator.channel_att.gate_c.gate_c_'
  eq(m['channel_fc_0']['kernel'], sd[g + 'fc_0.weight'].T)
  eq(m['channel_fc_final']['bias'], sd[g + 'fc_final.bias'])
  eq(st['modulator']['channel_bn_1']['var'], sd[g + 'bn_1.running_var'])
  g = 'modulator.spatial_att.gate_s.gate_s_'
  eq(m['spatial_conv_reduce0']['kernel'], _hwio(sd[g + 'conv_reduce0.weight']))
  eq(m['spatial_conv_di_1']['kernel'], _hwio(sd[g + 'conv_di_1.weight']))
  eq(m['spatial_conv_final']['bias'], sd[g + 'conv_final.bias'])
  eq(st['modulator']['spatial_bn_di_0']['mean'], sd[g + 'bn_di_0.running_mean'])
  eq(bb['conv5']['PointwiseConv_0']['kernel'], _hwio(sd['conv5.0.weight']))
  # Every tensor but the classifier and the step counters lands; nothing else changes.
  n_src = sum(1 for k in sd if not k.startswith('fc.') and not k.endswith('num_batches_tracked'))
  n_dst = _n_leaves(avt_vars['params']['frame_encoder']['backbone']) + _n_leaves(
      avt_vars['batch_stats']['frame_encoder']['backbone'])
  assert n_src == n_dst
  for a, b in zip(jax.tree.leaves(avt_vars['params']['frame_encoder']['backbone']),
                  jax.tree.leaves(bb)):
    assert not np.array_equal(a, b)
  for name in ('proj',):
    jax.tree.map(np.testing.assert_array_equal, out['params']['frame_encoder'][name],
                 avt_vars['params']['frame_encoder'][name])
  jax.tree.map(np.testing.assert_array_equal, out['params']['classifier'],
               avt_vars['params']['classifier'])


@pytest.mark.parametrize('form', ['bare', 'legacy', 'npz'])
def test_efficientface_checkpoint_forms(tmp_path, torch_writer, avt_vars, form):
  sd = efficientface_state_dict(seed=3)
  if form == 'npz':
    path = str(tmp_path / 'ef.npz')
    np.savez(path, **sd)
  else:
    path = str(tmp_path / 'ef.pth')
    torch_writer(path, sd, legacy=form == 'legacy')
  out = pretrained.apply_init({'kind': 'efficientface', 'path': path}, avt_vars)
  np.testing.assert_array_equal(out['params']['frame_encoder']['backbone']['stage4_3']['branch2_dw'][
      'kernel'], _hwio(sd['stage4.3.branch2.3.weight']))
  np.testing.assert_array_equal(out['batch_stats']['frame_encoder']['backbone']['conv5'][
      'BatchNorm_0']['var'], sd['conv5.1.running_var'])


def test_efficientface_strict_errors_list_keys(tmp_path, torch_writer, avt_vars):
  sd = efficientface_state_dict(seed=1)
  del sd['stage3.2.branch2.3.weight']
  sd['stage2.0.branch3.0.weight'] = np.zeros((4, 4, 1, 1), np.float32)
  sd['conv5.0.weight'] = np.zeros((1024, 232, 1, 1), np.float32)
  path = str(tmp_path / 'broken.pth')
  torch_writer(path, sd)
  with pytest.raises(ValueError) as e:
    pretrained.apply_init({'kind': 'efficientface', 'path': path}, avt_vars)
  msg = str(e.value)
  assert path in msg
  assert 'missing in source' in msg and 'params/stage3_2/branch2_dw/kernel' in msg
  assert 'unexpected in source' in msg and 'stage2.0.branch3.0.weight' in msg
  assert 'shape mismatches' in msg and 'stage5' not in msg
  assert 'params/conv5/PointwiseConv_0/kernel (source conv5.0.weight): source (1, 1, 232, 1024) ' \
         'vs model (1, 1, 464, 1024)' in msg
  # Not strict: the rest is copied, the broken ones keep their initial values.
  out = pretrained.apply_init({'kind': 'efficientface', 'path': path, 'strict': False}, avt_vars)
  bb, bb0 = out['params']['frame_encoder']['backbone'], avt_vars['params']['frame_encoder']['backbone']
  np.testing.assert_array_equal(bb['conv5']['PointwiseConv_0']['kernel'],
                                bb0['conv5']['PointwiseConv_0']['kernel'])
  np.testing.assert_array_equal(bb['stage3_2']['branch2_dw']['kernel'],
                                bb0['stage3_2']['branch2_dw']['kernel'])
  np.testing.assert_array_equal(bb['stage3_1']['branch2_dw']['kernel'],
                                _hwio(sd['stage3.1.branch2.3.weight']))
  text = pretrained.describe(path, 'efficientface')
  assert 'stage3.1.branch2.3.weight (116, 1, 3, 3) -> params/stage3_1/branch2_dw/kernel' in text
  assert 'UNMAPPED: stage2.0.branch3.0.weight' in text and 'excluded: fc.weight' in text
  # The pretraining classifier is unexpected once not excluded.
  with pytest.raises(ValueError, match=r'fc\.weight'):
    pretrained.apply_init({'kind': 'efficientface', 'path': path, 'exclude': []}, avt_vars)


def test_efficientface_encoder_runs_with_loaded_weights(tmp_path, torch_writer):
  enc = encoders.EfficientFrameEncoder(out_dim=8, arch='efficientface')
  frames = jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)), jnp.uint8)
  variables = _random_variables(enc, frames)
  variables['batch_stats'] = jax.tree.map(jnp.abs, variables['batch_stats'])
  path = str(tmp_path / 'ef.pth')
  torch_writer(path, efficientface_state_dict(seed=2))
  loaded = pretrained.apply_init({'kind': 'efficientface', 'path': path, 'target': 'backbone'},
                                 variables)
  out = jax.jit(lambda v, x: enc.apply(v, x, train=False))(loaded, frames)
  assert out.shape == (2, 8) and np.isfinite(np.asarray(out)).all()


def test_efficientface_into_compact_encoder_fails_loudly(tmp_path, torch_writer):
  variables = _avt_ca_variables('compact')
  path = str(tmp_path / 'ef.pth')
  torch_writer(path, efficientface_state_dict())
  with pytest.raises(ValueError, match="no scope 'frame_encoder/backbone'"):
    pretrained.apply_init({'kind': 'efficientface', 'path': path}, variables)
  with pytest.raises(ValueError, match='missing in source'):
    pretrained.apply_init({'kind': 'efficientface', 'path': path, 'target': 'frame_encoder'},
                          variables)


# --------------------------------------------------------------------------- layout pieces

@pytest.mark.parametrize('size', [7, 8])
def test_torch_stride2_padding(size):
  """Strided depthwise conv and max-pool with torch's padding=1 on odd and even sizes."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, size, size + 1, 5)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 1, 5)), jnp.float32)
  want = jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=5)
  from mer_jax.models import layers
  for impl in ('xla', 'matmul'):
    conv = layers.DepthwiseConv(3, 2, impl=impl)
    got = efficientface.torch_stride2(lambda h: conv.apply({'params': {'kernel': k}}, h), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    pooled = efficientface.torch_stride2(lambda h: layers.max_pool_2d(h, 3, 2, impl=impl), x,
                                         fill=-jnp.inf)
    want_pool = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                      ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_array_equal(pooled, want_pool)


def test_local_grouped_conv_and_shuffle_follow_torch():
  rng = np.random.default_rng(0)
  # Grouped conv 3 -> 6 channels (3 groups): the local branch's first conv per patch.
  x = rng.standard_normal((1, 8, 8, 3)).astype(np.float32)
  mod = efficientface.LocalFeatureExtractor(6, impl='xla')
  variables = mod.init(jax.random.PRNGKey(0), x, train=False)
  torch_w = rng.standard_normal((6, 1, 3, 3)).astype(np.float32)
  params = jax.tree.map(np.asarray, variables['params'])
  params['conv1_1']['kernel'] = _hwio(torch_w)
  for k in range(1, 5):  # identity second conv, identity BN: isolates the grouped conv
    ident = np.zeros((3, 3, 1, 6), np.float32)
    ident[1, 1] = 1
    params[f'conv{k}_2']['kernel'] = ident
  out = mod.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, train=False)
  patch = x[:, :4, :4]
  want = jax.lax.conv_general_dilated(patch, _hwio(torch_w), (2, 2), ((1, 1), (1, 1)),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=3)
  bn = lambda v: v / np.sqrt(1 + 1e-5)  # fresh BN: mean 0, var 1, scale 1
  np.testing.assert_allclose(out[:, :2, :2], bn(np.maximum(bn(np.maximum(want, 0)), 0)),
                             rtol=1e-5, atol=1e-5)
  # Channel shuffle: torch views [N, 2, C/2, H, W], swaps the two axes, flattens.
  a, b = rng.standard_normal((2, 1, 2, 2, 4)).astype(np.float32)
  nchw = np.concatenate([a, b], -1).transpose(0, 3, 1, 2)
  want = nchw.reshape(1, 2, 4, 2, 2).transpose(0, 2, 1, 3, 4).reshape(1, 8, 2, 2)
  np.testing.assert_array_equal(np.asarray(efficientface.channel_shuffle(a, b)).transpose(0, 3, 1, 2),
                                want)


# --------------------------------------------------------------------------- torchvision

def test_torchvision_resnet_into_tucker(tmp_path, torch_writer):
  model = tucker_fusion.TuckerCrossAttentionFusion(
      num_classes=3, d_model=8, t_common=4, audio_channels=(4,), resnet_stage_sizes=(1, 1),
      resnet_widths=(8, 16), gru_hidden=8, num_heads=2, rank_t=2, rank_a=4, rank_v=4, fbp_dim=8)
  batch = {'audio': jnp.zeros((1, 16, 8)), 'video': jnp.zeros((1, 2, 32, 32, 3), jnp.uint8),
           'label': jnp.zeros((1,), jnp.int32)}
  variables = _random_variables(model, batch)
  sd = torchvision_resnet_state_dict()
  path = str(tmp_path / 'resnet18-f37072fd.pth')
  torch_writer(path, sd)
  out = pretrained.apply_init({'kind': 'torchvision_resnet18', 'path': path}, variables)
  r, s = out['params']['resnet'], out['batch_stats']['resnet']
  np.testing.assert_array_equal(r['conv1']['kernel'], _hwio(sd['conv1.weight']))
  np.testing.assert_array_equal(r['layer2_0']['downsample_conv']['kernel'],
                                _hwio(sd['layer2.0.downsample.0.weight']))
  np.testing.assert_array_equal(s['layer2_0']['downsample_bn']['var'],
                                sd['layer2.0.downsample.1.running_var'])
  np.testing.assert_array_equal(r['layer1_0']['bn2']['scale'], sd['layer1.0.bn2.weight'])
  # The same values as the existing converter gives.
  ref = resnet_import.load_torchvision_resnet(path, stage_sizes=(1, 1), include_fc=False)
  jax.tree.map(np.testing.assert_array_equal, ref['params'], jax.device_get(r))
  jax.tree.map(np.testing.assert_array_equal, ref['batch_stats'], jax.device_get(s))
  jax.tree.map(np.testing.assert_array_equal, out['params']['classifier'],
               variables['params']['classifier'])
  # A ResNet-18 file into a 2-stage ResNet: the extra layers are listed.
  path18 = str(tmp_path / 'r18.pth')
  torch_writer(path18, torchvision_resnet_state_dict(stage_sizes=(2, 2), widths=(8, 16)))
  with pytest.raises(ValueError, match=r'layer1_1/conv1/kernel \(source layer1\.1\.conv1\.weight\)'):
    pretrained.apply_init({'kind': 'torchvision_resnet18', 'path': path18}, variables)


def test_config_errors(tmp_path, avt_vars):
  assert pretrained.apply_init(None, avt_vars) is avt_vars
  assert pretrained.apply_init({'kind': ''}, avt_vars) is avt_vars
  with pytest.raises(ValueError, match='kind must be one of'):
    pretrained.apply_init({'kind': 'imagenet'}, avt_vars)
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['trget'\]"):
    pretrained.apply_init({'kind': 'efficientface', 'trget': 'x'}, avt_vars)
  with pytest.raises(FileNotFoundError, match='nowhere.pth'):
    pretrained.apply_init({'kind': 'efficientface', 'path': str(tmp_path / 'nowhere.pth')}, avt_vars)
  with pytest.raises(ValueError, match=r"'workdir' does not use \['target'\]"):
    pretrained.apply_init({'kind': 'workdir', 'path': str(tmp_path), 'target': 'x'}, avt_vars)
  with pytest.raises(ValueError, match=r"does not use \['source_scopes'\]"):
    pretrained.apply_init({'kind': 'efficientface', 'path': 'x.pth', 'source_scopes': ['a']},
                          avt_vars)
  bad = tmp_path / 'bad.pth'
  bad.write_bytes(b'not a checkpoint')
  with pytest.raises(ValueError, match='bad.pth'):
    pretrained.apply_init({'kind': 'efficientface', 'path': str(bad)}, avt_vars)


# --------------------------------------------------------------------------- workdir

def _mmt(head):
  return mmt_ca.MMTCA(num_classes=3, head=head, d_model=16, audio_layers=1, face_layers=1,
                      num_heads=2, d_ff_ratio=2, face_channels=(4, 8))


def _mmt_batch():
  return {'audio': jnp.zeros((2, 6, 10)), 'video': jnp.zeros((2, 16, 16, 3), jnp.uint8),
          'label': jnp.zeros((2,), jnp.int32)}


def _save_run(workdir, head, seed, which='best'):
  import optax
  from mer_jax import checkpointing
  variables = _random_variables(_mmt(head), _mmt_batch(), seed)
  state = {'step': jnp.asarray(2), 'params': variables['params'],
           'batch_stats': variables.get('batch_stats', {}),
           'opt_state': optax.adam(1e-3).init(variables['params']), 'rng': jax.random.PRNGKey(0)}
  ckpts = checkpointing.Checkpoints(str(workdir))
  (ckpts.save_best if which == 'best' else ckpts.save_latest)(2, state, {'epoch': 1})
  ckpts.close()
  return variables


def test_workdir_round_trip_face_and_audio_into_fused(tmp_path):
  face = _save_run(tmp_path / 'face', 'face', seed=1)
  audio = _save_run(tmp_path / 'audio', 'audio', seed=2, which='latest')
  fused = _random_variables(_mmt('fused'), _mmt_batch(), 3)
  cfg = ml_collections.ConfigDict({'kind': '', 'sources': [
      {'kind': 'workdir', 'path': str(tmp_path / 'face'), 'checkpoint': 'best',
       'source_scopes': ['face_*'], 'strict': True},
      {'kind': 'workdir', 'path': str(tmp_path / 'audio'), 'checkpoint': 'latest',
       'source_scopes': ['audio_*'], 'strict': True}]})
  out = pretrained.apply_init(cfg, fused)
  for col in ('params', 'batch_stats'):
    for scope, src in [(s, face) for s in face[col]] + [(s, audio) for s in audio.get(col, {})]:
      jax.tree.map(np.testing.assert_array_equal, out[col][scope], src[col][scope])
  assert set(face['params']) == {'face_cnn', 'face_encoder', 'face_classifier'}
  assert 'face_cnn' in face['batch_stats']
  for scope in ('cross_audio_to_face_0', 'early_fusion', 'early_classifier'):
    jax.tree.map(np.testing.assert_array_equal, out['params'][scope], fused['params'][scope])
  assert not np.array_equal(out['params']['face_classifier']['kernel'],
                            fused['params']['face_classifier']['kernel'])
  # A list of entries is the same thing; target_scopes renames.
  out2 = pretrained.apply_init(
      [{'kind': 'workdir', 'path': str(tmp_path / 'face'), 'source_scopes': ['face_classifier'],
        'target_scopes': ['early_classifier']}], fused)
  np.testing.assert_array_equal(out2['params']['early_classifier']['kernel'],
                                face['params']['face_classifier']['kernel'])
  # All scopes of a face run into an audio-only model: the face scopes are not there.
  audio_only = _random_variables(_mmt('audio'), _mmt_batch(), 4)
  with pytest.raises(ValueError, match='no scope'):
    pretrained.apply_init({'kind': 'workdir', 'path': str(tmp_path / 'face')}, audio_only)
  with pytest.raises(ValueError, match=r"no scope matches 'audio_\*'"):
    pretrained.apply_init({'kind': 'workdir', 'path': str(tmp_path / 'face'),
                           'source_scopes': ['audio_*']}, fused)
  with pytest.raises(FileNotFoundError, match="best.* holds no checkpoint"):
    pretrained.apply_init({'kind': 'workdir', 'path': str(tmp_path / 'audio')}, fused)


def test_workdir_shape_mismatch_lists_keys(tmp_path):
  _save_run(tmp_path / 'face', 'face', seed=1)
  wider = mmt_ca.MMTCA(num_classes=3, head='fused', d_model=16, audio_layers=1, face_layers=1,
                       num_heads=2, d_ff_ratio=2, face_channels=(4, 12))
  fused = _random_variables(wider, _mmt_batch(), 3)
  with pytest.raises(ValueError) as e:
    pretrained.apply_init({'kind': 'workdir', 'path': str(tmp_path / 'face'),
                           'source_scopes': ['face_cnn']}, fused)
  msg = str(e.value)
  assert str(tmp_path / 'face') in msg and "scope 'face_cnn'" in msg
  assert 'params/ConvBNAct_1/Conv_0/kernel: source (3, 3, 4, 8) vs model (3, 3, 4, 12)' in msg
  assert 'batch_stats/ConvBNAct_1/BatchNorm_0/mean: source (8,) vs model (12,)' in msg


# --------------------------------------------------------------------------- whole network

def _reference_efficientface(sd, x, repeats=(4, 8, 4)):
  """EfficientFace's forward written from its PyTorch definition, on NCHW arrays and
  the state_dict's own tensors (OIHW weights, BatchNorm from running statistics)."""
  lax = jax.lax

  def conv(x, name, stride=1, pad=0, dil=1, groups=1, bias=False):
    y = lax.conv_general_dilated(x, sd[name + '.weight'], (stride, stride), ((pad, pad), (pad, pad)),
                                 rhs_dilation=(dil, dil), dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
                                 feature_group_count=groups)
    return y + sd[name + '.bias'][None, :, None, None] if bias else y

  def bn(x, name):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    r = lambda k: sd[f'{name}.{k}'].reshape(shape)
    return (x - r('running_mean')) / jnp.sqrt(r('running_var') + 1e-5) * r('weight') + r('bias')

  relu = jax.nn.relu

  def unit(x, p, stride):
    c = x.shape[1]
    if stride == 1:
      x1, x2 = x[:, : c // 2], x[:, c // 2:]
    else:
      x1 = bn(conv(x, p + '.branch1.0', stride, 1, groups=c), p + '.branch1.1')
      x1 = relu(bn(conv(x1, p + '.branch1.2'), p + '.branch1.3'))
      x2 = x
    h = relu(bn(conv(x2, p + '.branch2.0'), p + '.branch2.1'))
    h = bn(conv(h, p + '.branch2.3', stride, 1, groups=h.shape[1]), p + '.branch2.4')
    h = relu(bn(conv(h, p + '.branch2.5'), p + '.branch2.6'))
    out = jnp.concatenate([x1, h], axis=1)
    n, c, hh, ww = out.shape
    return out.reshape(n, 2, c // 2, hh, ww).transpose(0, 2, 1, 3, 4).reshape(n, c, hh, ww)

  def local(x):
    h, w = x.shape[2] // 2, x.shape[3] // 2
    patches = {1: x[:, :, :h, :w], 2: x[:, :, h:, :w], 3: x[:, :, :h, w:], 4: x[:, :, h:, w:]}
    out = {}
    for k, p in patches.items():
      p = relu(bn(conv(p, f'local.conv{k}_1', 2, 1, groups=x.shape[1]), f'local.bn{k}_1'))
      out[k] = relu(bn(conv(p, f'local.conv{k}_2', 1, 1, groups=p.shape[1]), f'local.bn{k}_2'))
    return jnp.concatenate([jnp.concatenate([out[1], out[2]], 2),
                            jnp.concatenate([out[3], out[4]], 2)], 3)

  def modulator(x):
    c, s = 'modulator.channel_att.gate_c.gate_c_', 'modulator.spatial_att.gate_s.gate_s_'
    g = x.mean(axis=(2, 3)) @ sd[c + 'fc_0.weight'].T + sd[c + 'fc_0.bias']
    g = relu(bn(g, c + 'bn_1')) @ sd[c + 'fc_final.weight'].T + sd[c + 'fc_final.bias']
    a = relu(bn(conv(x, s + 'conv_reduce0', bias=True), s + 'bn_reduce0'))
    for i in range(2):
      a = relu(bn(conv(a, s + f'conv_di_{i}', 1, 4, dil=4, bias=True), s + f'bn_di_{i}'))
    a = conv(a, s + 'conv_final', bias=True)
    return x * jax.nn.sigmoid(g[:, :, None, None] * a)

  x = relu(bn(conv(x, 'conv1.0', 2, 1), 'conv1.1'))
  x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                        ((0, 0), (0, 0), (1, 1), (1, 1)))
  y = x
  for i in range(repeats[0]):
    y = unit(y, f'stage2.{i}', 2 if i == 0 else 1)
  x = modulator(y) + local(x)
  for s, n in ((3, repeats[1]), (4, repeats[2])):
    for i in range(n):
      x = unit(x, f'stage{s}.{i}', 2 if i == 0 else 1)
  x = relu(bn(conv(x, 'conv5.0'), 'conv5.1'))
  return x.mean(axis=(2, 3))


def test_loaded_efficientface_computes_the_published_network(tmp_path, torch_writer):
  """The .pth through apply_init gives the same features as EfficientFace's PyTorch
  forward (written independently above)."""
  sd = efficientface_state_dict(seed=5)
  path = str(tmp_path / 'ef.pth')
  torch_writer(path, sd)
  net = efficientface.EfficientFace()
  rng = np.random.default_rng(0)
  for size in (48,):  # even sizes early, odd ones in stages 3-4
    x = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    variables = pretrained.apply_init({'kind': 'efficientface', 'path': path, 'target': '/'},
                                      _random_variables(net, x))
    got = jax.jit(lambda v, x: net.apply(v, x, train=False))(variables, x)
    want = _reference_efficientface({k: jnp.asarray(v) for k, v in sd.items()},
                                    jnp.asarray(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-4)

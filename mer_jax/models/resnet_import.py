"""Loads torchvision's ResNet-18 state_dict (a local .pth file) into `resnet.ResNet`.

Usage:
  variables = resnet_import.load_torchvision_resnet('resnet18-f37072fd.pth')
  # {'params': ..., 'batch_stats': ...} for resnet.resnet18(num_classes=1000)

The .pth reader does not need torch: a torch zip checkpoint is a pickle whose
tensors point at raw little-endian storages inside the archive, and
`read_torch_zip` rebuilds them as numpy arrays. When torch is importable it is
not used either, so the result is the same on every machine. Plain .npz files
with the state_dict's keys are accepted too; the legacy (pre-1.6, non-zip)
torch format is not: re-save such a file with a current torch, or as .npz.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from typing import Mapping

import numpy as np

_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'BFloat16Storage': None,
}


class _StorageType:
  def __init__(self, name):
    self.name = name


def _rebuild_tensor(storage, offset, size, stride, *unused):
  if not size:
    return storage[offset:offset + 1].reshape(()).copy()
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(
      storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)).copy()


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix

  def find_class(self, module, name):
    if module == 'torch._utils' and name in ('_rebuild_tensor_v2', '_rebuild_tensor'):
      return _rebuild_tensor
    if module == 'torch' and name.endswith('Storage'):
      return _StorageType(name)
    if module == 'collections' and name == 'OrderedDict':
      return collections.OrderedDict
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return lambda data, requires_grad, hooks: data
    raise pickle.UnpicklingError(f'unsupported object in checkpoint: {module}.{name}')

  def persistent_load(self, pid):
    # ('storage', storage_type, key, location, numel)
    _, storage_type, key, _, _ = pid
    name = storage_type.name if isinstance(storage_type, _StorageType) else str(storage_type)
    dtype = _DTYPES.get(name)
    if dtype is None:
      raise pickle.UnpicklingError(f'unsupported storage {name}')
    raw = self._archive.read(f'{self._prefix}/data/{key}')
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder('<'))


def read_torch_zip(path: str) -> dict:
  """state_dict of a torch (>= 1.6 zip format) checkpoint as numpy arrays."""
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
    if not pkl:
      raise ValueError(f'{path} is not a torch zip checkpoint')
    prefix = pkl[0].rsplit('/', 1)[0] if '/' in pkl[0] else ''
    with archive.open(pkl[0]) as f:
      return dict(_Unpickler(f, archive, prefix).load())


def read_state_dict(path: str) -> dict:
  if path.endswith('.npz'):
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  return read_torch_zip(path)


def convert_resnet_state_dict(sd: Mapping[str, np.ndarray], stage_sizes=(2, 2, 2, 2),
                              include_fc: bool = True) -> dict:
  """torchvision key layout -> {'params', 'batch_stats'} of `resnet.ResNet`."""
  params, stats = {}, {}

  def conv(prefix):
    return {'kernel': np.transpose(np.asarray(sd[prefix + '.weight']), (2, 3, 1, 0))}

  def bn(prefix, p_tree, s_tree, name):
    p_tree[name] = {'scale': np.asarray(sd[prefix + '.weight']),
                    'bias': np.asarray(sd[prefix + '.bias'])}
    s_tree[name] = {'mean': np.asarray(sd[prefix + '.running_mean']),
                    'var': np.asarray(sd[prefix + '.running_var'])}

  params['conv1'] = conv('conv1')
  bn('bn1', params, stats, 'bn1')
  for i, n in enumerate(stage_sizes):
    for j in range(n):
      tp, name = f'layer{i + 1}.{j}', f'layer{i + 1}_{j}'
      bp, bs = {}, {}
      bp['conv1'], bp['conv2'] = conv(tp + '.conv1'), conv(tp + '.conv2')
      bn(tp + '.bn1', bp, bs, 'bn1')
      bn(tp + '.bn2', bp, bs, 'bn2')
      if tp + '.downsample.0.weight' in sd:
        bp['downsample_conv'] = conv(tp + '.downsample.0')
        bn(tp + '.downsample.1', bp, bs, 'downsample_bn')
      params[name], stats[name] = bp, bs
  if include_fc and 'fc.weight' in sd:
    params['fc'] = {'kernel': np.asarray(sd['fc.weight']).T, 'bias': np.asarray(sd['fc.bias'])}
  return {'params': params, 'batch_stats': stats}


def load_torchvision_resnet(path: str, stage_sizes=(2, 2, 2, 2), include_fc: bool = True) -> dict:
  """Variables for `resnet.ResNet(stage_sizes, num_classes=1000 if include_fc else None)`."""
  return convert_resnet_state_dict(read_state_dict(path), stage_sizes, include_fc)

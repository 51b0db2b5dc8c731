"""Loads torchvision's ResNet-18 state_dict (a local .pth file) into `resnet.ResNet`.

Usage:
  variables = resnet_import.load_torchvision_resnet('resnet18-f37072fd.pth')
  # {'params': ..., 'batch_stats': ...} for resnet.resnet18(num_classes=1000)

The .pth reader does not need torch: a torch checkpoint is a pickle whose
tensors point at raw little-endian storages, and `read_torch_checkpoint`
rebuilds them as numpy arrays. When torch is importable it is not used either,
so the result is the same on every machine. Both torch formats are read: the
zip archive (torch >= 1.6) and the legacy stream (torch < 1.6, which older
published checkpoints use). Objects other than tensors and containers (an
argparse.Namespace of training options, say) load as inert placeholders: the
reader never imports or calls anything named in the file. Plain .npz files with
the state_dict's keys are accepted too.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, Mapping

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


class Opaque:
  """Stand-in for an object of a class the reader does not rebuild (`cls`: module.name)."""
  cls = '?'

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs, self.state = args, kwargs, None

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f'<{self.cls}>'


def _opaque_class(module: str, name: str):
  return type('Opaque', (Opaque,), {'cls': f'{module}.{name}'})


class _Storage:
  """A typed storage; `array` is set when the data is read (at once for zip files,
  after the object pickle for the legacy format)."""

  def __init__(self, dtype, numel):
    self.dtype, self.numel, self.array = dtype, numel, None


class _View:
  """A legacy storage view: `numel` elements of `base` from `offset`."""

  def __init__(self, base, offset, numel):
    self.base, self.offset, self.numel = base, offset, numel


class _LazyTensor:
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def materialise(self) -> np.ndarray:
    st, offset = self.storage, self.offset
    if isinstance(st, _View):
      st, offset = st.base, offset + st.offset
    data = st.array
    if not self.size:
      return data[offset:offset + 1].reshape(()).copy()
    itemsize = data.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        data[offset:], shape=self.size, strides=tuple(s * itemsize for s in self.stride)).copy()


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _LazyTensor(storage, offset, size, stride)


def _storage_dtype(storage_type):
  name = storage_type.name if isinstance(storage_type, _StorageType) else str(storage_type)
  dtype = _DTYPES.get(name)
  if dtype is None:
    raise pickle.UnpicklingError(f'unsupported storage {name}')
  return np.dtype(dtype).newbyteorder('<')


class _Unpickler(pickle.Unpickler):
  """Rebuilds tensors as `_LazyTensor`; `load_storage(pid)` supplies the storages."""

  def __init__(self, file, load_storage):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if module == 'torch._utils' and name in ('_rebuild_tensor_v2', '_rebuild_tensor'):
      return _rebuild_tensor
    if module == 'torch' and name.endswith('Storage'):
      return _StorageType(name)
    if module == 'collections' and name == 'OrderedDict':
      return collections.OrderedDict
    if module == 'torch._utils' and name == '_rebuild_parameter':
      return lambda data, requires_grad, hooks: data
    return _opaque_class(module, name)

  def persistent_load(self, pid):
    return self._load_storage(pid)


def _materialise(obj: Any) -> Any:
  if isinstance(obj, _LazyTensor):
    return obj.materialise()
  if isinstance(obj, dict):
    return type(obj)((k, _materialise(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  return obj


def _read_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
    if not pkl:
      raise ValueError(f'{path} is a zip file but not a torch checkpoint (no data.pkl)')
    prefix = pkl[0].rsplit('/', 1)[0] if '/' in pkl[0] else ''
    storages = {}

    def load_storage(pid):
      # ('storage', storage_type, key, location, numel)
      _, storage_type, key, _, numel = pid
      if key not in storages:
        st = _Storage(_storage_dtype(storage_type), numel)
        raw = archive.read(f'{prefix}/data/{key}' if prefix else f'data/{key}')
        st.array = np.frombuffer(raw, dtype=st.dtype)
        storages[key] = st
      return storages[key]

    with archive.open(pkl[0]) as f:
      return _materialise(_Unpickler(f, load_storage).load())


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _read_legacy(path: str) -> Any:
  """torch < 1.6: pickles of magic, protocol, sys_info, the object and the storage
  keys, then each storage as an int64 element count followed by its raw data."""
  with open(path, 'rb') as f:
    data = f.read()
  f = io.BytesIO(data)
  try:
    magic = pickle.load(f)
  except Exception as e:
    raise ValueError(f'{path} is neither a torch checkpoint nor .npz ({e})') from None
  if magic != _LEGACY_MAGIC:
    raise ValueError(f'{path} is not a torch checkpoint (bad magic number)')
  pickle.load(f)  # protocol version
  pickle.load(f)  # sys_info
  storages = {}

  def load_storage(pid):
    # ('storage', storage_type, root_key, location, numel, view_metadata)
    _, storage_type, key, _, numel, view = pid
    if key not in storages:
      storages[key] = _Storage(_storage_dtype(storage_type), numel)
    if view is not None:
      view_key, offset, view_numel = view
      return _View(storages[key], offset, view_numel)
    return storages[key]

  obj = _Unpickler(f, load_storage).load()
  for key in pickle.load(f):
    st = storages[key]
    (count,) = struct.unpack('<q', f.read(8))
    st.array = np.frombuffer(f.read(count * st.dtype.itemsize), dtype=st.dtype)
  return _materialise(obj)


def read_torch_checkpoint(path: str) -> Any:
  """Whatever object a torch checkpoint holds, with tensors as numpy arrays."""
  if zipfile.is_zipfile(path):
    return _read_zip(path)
  return _read_legacy(path)


def read_torch_zip(path: str) -> dict:
  """state_dict of a torch (>= 1.6 zip format) checkpoint as numpy arrays."""
  return dict(_read_zip(path))


def unwrap_state_dict(obj: Any, path: str = '<checkpoint>') -> dict:
  """The state_dict of a checkpoint: `obj` itself or its 'state_dict' entry, with
  DataParallel's 'module.' prefixes removed."""
  if isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
    obj = obj['state_dict']
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    kinds = sorted({type(v).__name__ for v in obj.values()}) if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f'{path}: expected a state_dict of tensors (or {{"state_dict": ...}}), '
                     f'found {kinds}')
  return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in obj.items()}


def read_state_dict(path: str) -> dict:
  if path.endswith('.npz'):
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  return unwrap_state_dict(read_torch_checkpoint(path), path)


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

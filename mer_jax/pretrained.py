"""Pretrained initialisation from the config: `apply_init(config.model_init, variables)`.

`variables` is the model's {'params': ..., 'batch_stats': ...} right after init;
the result has the configured subtrees replaced. A config entry has the fields

  kind           '' (nothing) | 'torchvision_resnet18' | 'efficientface' | 'workdir'
  path           the .pth/.npz file, or the run directory of a trained mer_jax model
  target         '/'-separated scope receiving the weights; '' = the kind's default
                 ('resnet' for torchvision_resnet18, 'frame_encoder/backbone' for
                 efficientface), '/' = the model root. Not used by 'workdir'
                 (fields that do not apply to a kind must be empty).
  checkpoint     'best' | 'latest' (workdir): which of WORKDIR/checkpoints/{best,latest}
  strict         True: every key of the target must come from the source, every
                 source key must land, shapes must agree; otherwise the error lists
                 them. False: copies what matches and logs the rest.
  exclude        (.pth kinds) torch key prefixes dropped before matching; None = the
                 default ('fc.', the pretraining classifier); [] drops nothing
  source_scopes  (workdir) scopes of the trained model to copy; fnmatch patterns
                 ('face_*') expand over its top-level scopes; default: all of them
  target_scopes  (workdir) where each source scope goes; default: the same names

`config.model_init` may be one entry, a list of entries, or an entry whose
`sources` field lists entries (paper 004 restores a face run and an audio run).

Torch checkpoints are read without torch (`resnet_import.read_state_dict`): zip
or legacy format, a bare state_dict or {'state_dict': ...}, 'module.' prefixes
removed. Torch leaves map by name: conv `weight` [O, I, kh, kw] -> `kernel`
[kh, kw, I, O]; linear `weight` [O, I] -> `kernel` [I, O]; BatchNorm weight/bias
-> params scale/bias, running_mean/var -> batch_stats mean/var;
num_batches_tracked is dropped. Module names map as follows.

torchvision ResNet-18 -> models/resnet.py:
  conv1, bn1 -> conv1, bn1;  layerI.J.{conv1,bn1,conv2,bn2} -> layerI_J/{same};
  layerI.J.downsample.{0,1} -> layerI_J/downsample_{conv,bn};  fc -> fc.

EfficientFace (the authors' code; also the visual model of the 2022
multimodal-emotion-recognition code AVT-CA forks) -> models/efficientface.py:
  conv1.{0,1} -> conv1/{Conv_0,BatchNorm_0};  conv5.{0,1} -> conv5/{PointwiseConv_0,BatchNorm_0}
  stageS.I.branch1.{0,1,2,3} -> stageS_I/{branch1_dw, branch1_bn, branch1_pw/PointwiseConv_0,
                                          branch1_pw/BatchNorm_0}
  stageS.I.branch2.{0,1,3,4,5,6} -> stageS_I/{branch2_pw1/PointwiseConv_0, branch2_pw1/BatchNorm_0,
                                    branch2_dw, branch2_bn, branch2_pw2/PointwiseConv_0,
                                    branch2_pw2/BatchNorm_0}
  local.{convK_J, bnK_J} -> local/{same}
  modulator.channel_att.gate_c.gate_c_X -> modulator/channel_X
  modulator.spatial_att.gate_s.gate_s_X -> modulator/spatial_X
  fc -> (excluded by default: the AffectNet classifier)
The encoder's 'proj' Dense (1024 -> d) after the backbone is ours and stays as
initialised. `python -m mer_jax.pretrained FILE --kind efficientface` prints where
each tensor of a file goes.
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mer_jax.contract import logger as logging
from mer_jax.models import resnet_import

KINDS = ('', 'torchvision_resnet18', 'efficientface', 'workdir')
FIELDS = ('kind', 'path', 'target', 'checkpoint', 'strict', 'exclude', 'source_scopes',
          'target_scopes', 'sources')
DEFAULT_TARGET = {'torchvision_resnet18': 'resnet', 'efficientface': 'frame_encoder/backbone'}
DEFAULT_EXCLUDE = {'torchvision_resnet18': ('fc.',), 'efficientface': ('fc.',)}
COLLECTIONS = ('params', 'batch_stats')
_MAX_LISTED = 60

Flat = dict  # {(collection, name, ..., leaf): array}


# --------------------------------------------------------------------------- config

def _get(entry, name: str, default=None):
  if entry is None:
    return default
  if hasattr(entry, 'get'):
    value = entry.get(name, default)
  else:
    value = getattr(entry, name, default)
  return default if value is None else value


def _keys(entry) -> list:
  if hasattr(entry, 'keys'):
    return list(entry.keys())
  return [k for k in vars(entry) if not k.startswith('_')]


def entries(init_cfg) -> list:
  """The init entries of `config.model_init` (one, a list, or one with `sources`)."""
  if init_cfg is None or init_cfg == '':
    return []
  if isinstance(init_cfg, (list, tuple)):
    out = []
    for e in init_cfg:
      out.extend(entries(e))
    return out
  unknown = sorted(set(_keys(init_cfg)) - set(FIELDS))
  if unknown:
    raise ValueError(f'model_init: unknown field(s) {unknown}; known: {list(FIELDS)}')
  out = [init_cfg] if _get(init_cfg, 'kind', '') else []
  for e in _get(init_cfg, 'sources', ()) or ():
    out.extend(entries(e))
  return out


# --------------------------------------------------------------------------- trees

def _flatten(tree: Any, prefix: tuple = ()) -> Flat:
  out = {}
  if isinstance(tree, Mapping):
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
  else:
    out[prefix] = tree
  return out


def _subtree(variables: Mapping, scope: tuple) -> Flat:
  """Leaves under `scope` of every collection, keyed (collection,) + path below scope."""
  out = {}
  for col in COLLECTIONS:
    node = variables.get(col, {})
    for s in scope:
      node = node.get(s) if isinstance(node, Mapping) else None
      if node is None:
        break
    if node is not None:
      for k, v in _flatten(node).items():
        out[(col,) + k] = v
  return out


def _set_leaf(variables: dict, path: tuple, value) -> None:
  node = variables
  for k in path[:-1]:
    node = node[k]
  node[path[-1]] = value


def _mutable(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {k: _mutable(v) for k, v in tree.items()}
  return tree


def _scope(target: str) -> tuple:
  return tuple(s for s in target.strip('/').split('/') if s)


def _fmt(key: tuple) -> str:
  return '/'.join(key)


def _listing(title: str, items: list) -> str:
  if not items:
    return ''
  shown = items[:_MAX_LISTED]
  more = f'\n    ... and {len(items) - len(shown)} more' if len(items) > len(shown) else ''
  return f'\n  {title} ({len(items)}):\n    ' + '\n    '.join(shown) + more


def graft(variables: Mapping, source: Flat, scope: tuple, strict: bool, origin: str,
          source_names: Optional[Mapping[tuple, str]] = None,
          unmapped: Iterable[str] = ()) -> dict:
  """Copies `source` ({(collection, ...path below scope): array}) under `scope`.

  `source_names` gives the original (e.g. torch) name of a source key for messages;
  `unmapped` are source keys no rule could place (always 'unexpected').
  """
  source_names = source_names or {}
  where = _fmt(scope) or '<root>'
  dest = _subtree(variables, scope)
  if not dest:
    tops = sorted(variables.get('params', {}).keys())
    raise ValueError(f'{origin}: the model has no scope {where!r} to initialise '
                     f'(top-level scopes: {tops})')
  name = lambda k: f'{_fmt(k)} (source {source_names[k]})' if k in source_names else _fmt(k)
  missing = sorted(_fmt(k) for k in dest if k not in source)
  unexpected = sorted([name(k) for k in source if k not in dest] + list(unmapped))
  mismatched = sorted(f'{name(k)}: source {tuple(np.shape(source[k]))} vs model '
                      f'{tuple(np.shape(dest[k]))}'
                      for k in source if k in dest and np.shape(source[k]) != np.shape(dest[k]))
  problems = (_listing('missing in source (model keys the file does not provide)', missing)
              + _listing('unexpected in source (file keys the model does not have)', unexpected)
              + _listing('shape mismatches', mismatched))
  copy = [k for k in source if k in dest and np.shape(source[k]) == np.shape(dest[k])]
  if problems and (strict or not copy):
    raise ValueError(f'{origin} does not match the model scope {where!r}'
                     f'{"" if strict else " (nothing matched)"}:{problems}')
  if problems:
    logging.warning('%s -> %s: copied %d of %d arrays; the rest keep their initial values:%s',
                    origin, where, len(copy), len(dest), problems)
  out = _mutable(variables)
  for k in copy:
    old = dest[k]
    new = jnp.asarray(np.asarray(source[k]), dtype=old.dtype)
    if isinstance(old, jax.Array) and hasattr(old, 'sharding'):
      new = jax.device_put(new, old.sharding)
    _set_leaf(out, (k[0],) + scope + k[1:], new)
  logging.info('Initialised %s from %s (%d arrays)', where, origin, len(copy))
  return out


# --------------------------------------------------------------------------- torch

def _torch_leaf(module: tuple, leaf: str, value: np.ndarray):
  """(collection, path, array) of one torch tensor; None for num_batches_tracked."""
  value = np.asarray(value)
  if leaf == 'num_batches_tracked':
    return None
  if leaf == 'running_mean':
    return 'batch_stats', module + ('mean',), value
  if leaf == 'running_var':
    return 'batch_stats', module + ('var',), value
  if leaf == 'bias':
    return 'params', module + ('bias',), value
  if leaf == 'weight':
    if value.ndim == 4:  # conv [O, I/groups, kh, kw] -> HWIO
      return 'params', module + ('kernel',), value.transpose(2, 3, 1, 0)
    if value.ndim == 2:  # linear [O, I]
      return 'params', module + ('kernel',), value.T
    if value.ndim == 1:  # BatchNorm / LayerNorm scale
      return 'params', module + ('scale',), value
  raise ValueError(f'no rule for a torch {leaf!r} of shape {value.shape}')


def resnet_module(parts: list) -> Optional[tuple]:
  """torchvision ResNet module path -> models/resnet.py scope."""
  if len(parts) == 1 and parts[0] in ('conv1', 'bn1', 'fc'):
    return (parts[0],)
  if len(parts) >= 3 and re.fullmatch(r'layer\d+', parts[0]) and parts[1].isdigit():
    block = f'{parts[0]}_{parts[1]}'
    rest = parts[2:]
    if len(rest) == 1 and re.fullmatch(r'(conv|bn)\d', rest[0]):
      return (block, rest[0])
    if rest[0] == 'downsample' and len(rest) == 2 and rest[1] in ('0', '1'):
      return (block, 'downsample_conv' if rest[1] == '0' else 'downsample_bn')
  return None


_BRANCH1 = {'0': ('branch1_dw',), '1': ('branch1_bn',), '2': ('branch1_pw', 'PointwiseConv_0'),
            '3': ('branch1_pw', 'BatchNorm_0')}
_BRANCH2 = {'0': ('branch2_pw1', 'PointwiseConv_0'), '1': ('branch2_pw1', 'BatchNorm_0'),
            '3': ('branch2_dw',), '4': ('branch2_bn',),
            '5': ('branch2_pw2', 'PointwiseConv_0'), '6': ('branch2_pw2', 'BatchNorm_0')}
_SEQ = {'conv1': {'0': ('Conv_0',), '1': ('BatchNorm_0',)},
        'conv5': {'0': ('PointwiseConv_0',), '1': ('BatchNorm_0',)}}


def efficientface_module(parts: list) -> Optional[tuple]:
  """EfficientFace module path -> models/efficientface.py scope (see the module doc)."""
  if len(parts) == 2 and parts[0] in _SEQ and parts[1] in _SEQ[parts[0]]:
    return (parts[0],) + _SEQ[parts[0]][parts[1]]
  if len(parts) == 4 and re.fullmatch(r'stage\d', parts[0]) and parts[1].isdigit():
    table = {'branch1': _BRANCH1, 'branch2': _BRANCH2}.get(parts[2], {})
    if parts[3] in table:
      return (f'{parts[0]}_{parts[1]}',) + table[parts[3]]
  if len(parts) == 2 and parts[0] == 'local' and re.fullmatch(r'(conv|bn)\d_\d', parts[1]):
    return ('local', parts[1])
  if len(parts) == 4 and parts[0] == 'modulator':
    gate = {('channel_att', 'gate_c'): 'channel', ('spatial_att', 'gate_s'): 'spatial'}
    g = gate.get((parts[1], parts[2]))
    if g and parts[3].startswith(f'gate_{g[0]}_'):
      return ('modulator', f'{g}_{parts[3][len("gate_x_"):]}')
  return None


def torch_to_flat(state_dict: Mapping[str, np.ndarray], module_rule: Callable,
                  exclude: Iterable[str] = ()):
  """(flat source, {source key: torch name}, [unmapped torch keys])."""
  flat, names, unmapped = {}, {}, []
  for key, value in state_dict.items():
    if any(key.startswith(p) for p in exclude):
      continue
    parts = key.split('.')
    module = module_rule(parts[:-1])
    if module is None:
      if parts[-1] != 'num_batches_tracked':
        unmapped.append(f'{key} (no rule maps it) {tuple(np.shape(value))}')
      continue
    leaf = _torch_leaf(module, parts[-1], value)
    if leaf is None:
      continue
    col, path, arr = leaf
    flat[(col,) + path] = arr
    names[(col,) + path] = key
  return flat, names, unmapped


_MODULE_RULES = {'torchvision_resnet18': resnet_module, 'efficientface': efficientface_module}


def _init_from_pth(entry, variables, kind: str) -> dict:
  path = str(_get(entry, 'path', ''))
  if not path:
    raise ValueError(f'model_init kind {kind!r} needs a path')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'model_init ({kind}): no file {path}')
  exclude = _get(entry, 'exclude', DEFAULT_EXCLUDE.get(kind, ()))
  try:
    sd = resnet_import.read_state_dict(path)
  except Exception as e:
    raise ValueError(f'model_init ({kind}): cannot read {path}: {e}') from e
  flat, names, unmapped = torch_to_flat(sd, _MODULE_RULES[kind], tuple(exclude))
  target = _get(entry, 'target', '') or DEFAULT_TARGET[kind]
  return graft(variables, flat, _scope(target), bool(_get(entry, 'strict', True)),
               f'{path} ({kind})', names, unmapped)


# --------------------------------------------------------------------------- workdir

def restore_workdir_variables(workdir: str, checkpoint: str = 'best') -> dict:
  """{'params', 'batch_stats'} of a trained run's best or latest checkpoint."""
  from mer_jax import checkpointing
  if checkpoint not in ('best', 'latest'):
    raise ValueError(f"model_init checkpoint must be 'best' or 'latest', got {checkpoint!r}")
  root = os.path.join(os.path.abspath(workdir), 'checkpoints', checkpoint)
  try:
    state, step = checkpointing.read_state(workdir, checkpoint)
  except FileNotFoundError as e:
    raise FileNotFoundError(f'model_init (workdir): {e}') from e
  if not isinstance(state, Mapping) or 'params' not in state:
    raise ValueError(f'model_init (workdir): {root} step {step} has no params')
  # The weights the run evaluated with: their moving average where it kept one.
  params = state.get('ema_params') or state['params']
  return {'params': params, 'batch_stats': state.get('batch_stats') or {}}


def _init_from_workdir(entry, variables) -> dict:
  workdir = str(_get(entry, 'path', ''))
  if not workdir:
    raise ValueError("model_init kind 'workdir' needs a path (the trained run's directory)")
  ckpt = str(_get(entry, 'checkpoint', 'best'))
  src = restore_workdir_variables(workdir, ckpt)
  origin = f'{workdir} ({ckpt} checkpoint)'
  tops = sorted(src['params'].keys())
  patterns = list(_get(entry, 'source_scopes', ()) or ()) or ['*']
  src_scopes = []
  for p in patterns:
    if any(c in p for c in '*?['):
      hits = [t for t in tops if fnmatch.fnmatchcase(t, p)]
      if not hits:
        raise ValueError(f'{origin}: no scope matches {p!r} (scopes: {tops})')
      src_scopes.extend(h for h in hits if h not in src_scopes)
    else:
      src_scopes.append(p)
  dst_scopes = list(_get(entry, 'target_scopes', ()) or ()) or src_scopes
  if len(dst_scopes) != len(src_scopes):
    raise ValueError(f'{origin}: {len(src_scopes)} source scopes {src_scopes} but '
                     f'{len(dst_scopes)} target scopes {dst_scopes}')
  strict = bool(_get(entry, 'strict', True))
  for s, t in zip(src_scopes, dst_scopes):
    flat = _subtree(src, _scope(s))
    if not flat:
      raise ValueError(f'{origin}: the checkpoint has no scope {s!r} (scopes: {tops})')
    variables = graft(variables, flat, _scope(t), strict, f'{origin} scope {s!r}')
  return variables


# --------------------------------------------------------------------------- entry point

def apply_init(init_cfg, variables: Mapping) -> dict:
  """`variables` with the subtrees that `init_cfg` names replaced (see the module doc)."""
  out = variables
  for entry in entries(init_cfg):
    kind = str(_get(entry, 'kind', ''))
    if kind not in KINDS:
      raise ValueError(f'model_init kind must be one of {KINDS}, got {kind!r}')
    # Fields that do not apply to the kind must stay empty rather than be ignored.
    unused = (('target', 'exclude') if kind == 'workdir' else ('source_scopes', 'target_scopes'))
    set_fields = [f for f in unused if _get(entry, f, None) not in (None, '', (), [])]
    if set_fields:
      raise ValueError(f'model_init kind {kind!r} does not use {set_fields}')
    if kind == 'workdir':
      out = _init_from_workdir(entry, out)
    else:
      out = _init_from_pth(entry, out, kind)
  return out


def describe(path: str, kind: str, exclude: Optional[Iterable[str]] = None) -> str:
  """Where each tensor of a .pth goes (torch name, shape -> our path), and what no
  rule places: for checking a downloaded file before a run."""
  if kind not in _MODULE_RULES:
    raise ValueError(f'describe needs one of {sorted(_MODULE_RULES)}, got {kind!r}')
  sd = resnet_import.read_state_dict(path)
  exclude = DEFAULT_EXCLUDE.get(kind, ()) if exclude is None else tuple(exclude)
  flat, names, unmapped = torch_to_flat(sd, _MODULE_RULES[kind], exclude)
  lines = [f'{path}: {len(sd)} tensors, {len(flat)} mapped under {DEFAULT_TARGET[kind]!r}']
  lines += [f'  {names[k]} {tuple(np.shape(sd[names[k]]))} -> {_fmt(k)}' for k in flat]
  lines += [f'  excluded: {k}' for k in sd if any(k.startswith(p) for p in exclude)]
  lines += [f'  UNMAPPED: {u}' for u in unmapped]
  return '\n'.join(lines)


if __name__ == '__main__':
  import argparse
  parser = argparse.ArgumentParser(description='Shows how a .pth maps onto our parameters.')
  parser.add_argument('path')
  parser.add_argument('--kind', default='efficientface', choices=sorted(_MODULE_RULES))
  args = parser.parse_args()
  print(describe(args.path, args.kind))

"""Model registry: a paper is a module, a loss and a line here."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from mer_jax import losses


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  module_cls: Any
  loss_fn: Callable  # (outputs, batch, loss_config) -> (scalar loss, dict of scalars)


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, module_cls, loss_fn: Callable = losses.classification_loss):
  _REGISTRY[name] = ModelEntry(module_cls, loss_fn)


def get(name: str) -> ModelEntry:
  _ensure_registered()
  if name not in _REGISTRY:
    raise ValueError(f'unknown model {name!r}; registered: {sorted(_REGISTRY)}')
  return _REGISTRY[name]


def names() -> list[str]:
  _ensure_registered()
  return sorted(_REGISTRY)


def build(model_config, num_classes: int):
  """Instantiates the module named by `model_config.name` with the other fields."""
  entry = get(model_config.name)
  kwargs = {k: _to_python(v) for k, v in model_config.items() if k != 'name'}
  return entry.module_cls(num_classes=num_classes, **kwargs)


def _to_python(v):
  if hasattr(v, 'to_dict'):
    return {k: _to_python(x) for k, x in v.to_dict().items()}
  if isinstance(v, list):
    return tuple(_to_python(x) for x in v)
  return v


def _ensure_registered():
  # Imported lazily so that `mer_jax.models.layers` has no import cycle.
  if _REGISTRY:
    return
  from mer_jax.models import avt_ca
  register('avt_ca', avt_ca.AVTCA)
  from mer_jax.models import mmt_ca
  register('mmt_ca', mmt_ca.MMTCA, losses.mmt_ca_loss)
  from mer_jax.models import attsf_net
  register('attsf_net', attsf_net.ATTSFNet, losses.attsf_loss)
  from mer_jax.models import ofcmaer_cat
  register('ofcmaer_cat', ofcmaer_cat.OFCMAERCAT, losses.ofcmaer_loss)
  from mer_jax.models import tucker_fusion
  register('tucker_fusion', tucker_fusion.TuckerCrossAttentionFusion)

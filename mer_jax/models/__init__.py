"""Model registry: one explicit table, a paper's module and its loss side by side.

Each paper module defines its Flax module and `loss(outputs, batch, loss_config)
-> (scalar, dict of scalars)`; adding a paper is a file here and a row below.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from mer_jax.models import attsf_net, avt_ca, mmt_ca, ofcmaer_cat, tucker_fusion


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  module_cls: Any
  loss_fn: Callable  # (outputs, batch, loss_config) -> (scalar loss, dict of scalars)
  paper: str


REGISTRY: dict[str, ModelEntry] = {
    'ofcmaer_cat': ModelEntry(ofcmaer_cat.OFCMAERCAT, ofcmaer_cat.loss, '000'),
    'tucker_fusion': ModelEntry(tucker_fusion.TuckerCrossAttentionFusion, tucker_fusion.loss, '001'),
    'avt_ca': ModelEntry(avt_ca.AVTCA, avt_ca.loss, '002'),
    'attsf_net': ModelEntry(attsf_net.ATTSFNet, attsf_net.loss, '003'),
    'mmt_ca': ModelEntry(mmt_ca.MMTCA, mmt_ca.loss, '004'),
}


def get(name: str) -> ModelEntry:
  if name not in REGISTRY:
    raise ValueError(f'unknown model {name!r}; registered: {sorted(REGISTRY)}')
  return REGISTRY[name]


def names() -> list[str]:
  return sorted(REGISTRY)


def build(model_config, num_classes: int):
  """Instantiates the module named by `model_config.name` with the other fields.

  Fields under `model_config.init` (pretrained initialisation) are not module
  arguments and are skipped.
  """
  entry = get(model_config.name)
  kwargs = {k: _to_python(v) for k, v in model_config.items() if k not in ('name', 'init')}
  return entry.module_cls(num_classes=num_classes, **kwargs)


def _to_python(v):
  if hasattr(v, 'to_dict'):
    return {k: _to_python(x) for k, x in v.to_dict().items()}
  if isinstance(v, list):
    return tuple(_to_python(x) for x in v)
  return v

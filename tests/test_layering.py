"""The import graph: data_pipelines depends on mer_jax only through the leaf contract."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imports(path: pathlib.Path) -> set:
  tree = ast.parse(path.read_text())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out |= {f'{node.module}.{a.name}' for a in node.names}
  return out


def test_data_pipelines_import_only_the_contract_of_mer_jax():
  offending = {}
  for path in sorted((ROOT / 'data_pipelines').rglob('*.py')):
    bad = {m for m in _imports(path) if m.startswith('mer_jax')
           and m not in ('mer_jax', 'mer_jax.contract') and not m.startswith('mer_jax.contract.')}
    if bad:
      offending[str(path.relative_to(ROOT))] = sorted(bad)
  assert not offending, offending


def test_contract_is_a_leaf():
  mods = {m for m in _imports(ROOT / 'mer_jax' / 'contract.py') if m.startswith(('mer_jax',
                                                                               'data_pipelines'))}
  assert not mods, mods


def test_registry_lists_every_paper_module():
  from mer_jax import models
  papers = {p.stem for p in (ROOT / 'mer_jax' / 'models').glob('*.py')} - {
      '__init__', 'layers', 'encoders', 'resnet', 'resnet_import', 'efficientface'}
  assert set(models.names()) == papers
  for name in papers:  # each paper module owns its loss
    entry = models.get(name)
    assert entry.loss_fn.__module__ in (f'mer_jax.models.{name}', 'mer_jax.losses')

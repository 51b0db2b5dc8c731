"""Named experiments: the papers' tables, declared as presets in the config files.

Each `configs/<paper>.py` lists its tables in `TABLES` (rows of presets and
variants, `mer_jax.config_lib.Table`); the protocol of a row (k folds over
speaker/actor/session groups, seeds) is its preset's `config.protocol`. This
module gathers them, adds the tables that span all five papers, and turns a row
into the config references of its runs:

    configs/avt_ca.py:ravdess+it1,fold=2,seed=0

`python -m experiments.run --experiment=NAME` trains every (row, fold, seed) and
writes the table; `--list` prints them all. The runner's `--preset=tiny` (or
`synthetic`) swaps each row's preset, keeping its variants, so every table can be
rehearsed on the built-in synthetic data.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os

from mer_jax import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The metrics every table shows; WA leads where the dataset's literature uses it (IEMOCAP).
METRICS = ('accuracy', 'macro_precision', 'macro_recall', 'macro_f1', 'uar')
METRICS_WA = ('wa', 'uar', 'accuracy', 'macro_precision', 'macro_recall', 'macro_f1')

PAPER_CONFIGS = {
    '000': 'configs/ofcmaer_cat.py',
    '001': 'configs/tucker_fusion.py',
    '002': 'configs/avt_ca.py',
    '003': 'configs/attsf_net.py',
    '004': 'configs/mmt_ca.py',
}
MODEL_NAMES = {'000': 'OF-CMAER-CAT', '001': 'Tucker fusion', '002': 'AVT-CA',
               '003': 'ATTSF-Net', '004': 'MMT-CA'}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of a table."""
  name: str
  config: str  # 'configs/avt_ca.py:ravdess+it1'
  overrides: tuple = ()  # ('mask_modalities=video', ...): passed as --config.KEY=VALUE


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Which folds and seeds each row is trained on (from the preset's config.protocol)."""
  folds: int = 0  # k; 0 keeps the builder's own train/validation/test splits
  fold_indices: tuple = ()  # () runs all k folds
  seeds: tuple = (0,)
  group_key: str = ''
  val_groups: int = -1
  val_key: str = ''

  def runs(self) -> list[tuple]:
    """[(fold or None, seed)] in the order they are trained."""
    folds = list(self.fold_indices) or (list(range(self.folds)) if self.folds else [None])
    return [(f, s) for f in folds for s in self.seeds]


@dataclasses.dataclass(frozen=True)
class Experiment:
  name: str
  paper: str
  title: str
  variants: tuple
  protocol: Protocol = Protocol()
  metrics: tuple = METRICS
  robustness: bool = False
  notes: str = ''


def load_module(path: str):
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  rel = os.path.relpath(full, REPO)
  if not rel.startswith('..'):  # inside the repository: import as a package module
    return importlib.import_module(os.path.splitext(rel)[0].replace(os.sep, '.'))
  spec = importlib.util.spec_from_file_location(os.path.basename(full)[:-3], full)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def load_config(ref: str):
  """The ConfigDict of 'configs/<paper>.py:<arg>'."""
  path, _, arg = ref.partition(':')
  mod = load_module(path)
  return mod.get_config(arg) if arg else mod.get_config()


def protocol_of(ref: str) -> Protocol:
  p = load_config(ref).protocol
  return Protocol(folds=int(p.folds), fold_indices=tuple(p.fold_indices),
                  seeds=tuple(p.seeds), group_key=p.group_key,
                  val_groups=int(p.val_groups), val_key=p.val_key)


def _experiment(name: str, paper: str, path: str, table: config_lib.Table) -> Experiment:
  variants = tuple(Variant(row[0], f'{path}:{row[1]}', tuple(row[2:])) for row in table.rows)
  return Experiment(name, paper, table.title, variants, protocol_of(variants[0].config),
                    METRICS_WA if table.wa else METRICS, table.robustness, table.notes)


def _all_models(preset: str, seeds=(0,)) -> tuple:
  return tuple(Variant(MODEL_NAMES[p], f'{c}:{preset}') for p, c in PAPER_CONFIGS.items())


def _collect() -> dict:
  out = {}
  for paper, path in PAPER_CONFIGS.items():
    for name, table in getattr(load_module(path), 'TABLES', {}).items():
      out[name] = _experiment(name, paper, path, table)
  five = _all_models('ravdess')
  protocol = protocol_of(five[0].config)
  out['robustness'] = Experiment(
      'robustness', '003', 'Robustness to a corrupted or missing modality, every model '
      '(003 Table V)', five, protocol, robustness=True,
      notes='10%..90% of one modality\'s values replaced by random values at test time, '
      'plus each modality missing; models trained on clean data.')
  # Every paper's synthetic preset on the built-in data, 3 seeds (README's table).
  out['synthetic'] = Experiment(
      'synthetic', 'all', 'The five models on synthetic_av (built-in), 3 seeds',
      _all_models('synthetic'), Protocol(folds=0, seeds=(0, 1, 2)),
      notes='Speaker-independent builder splits: 48 train / 12 validation / 12 test '
      'speakers; best validation checkpoint.')
  out['compare_ravdess'] = Experiment('compare_ravdess', 'all',
                                      'The five models on RAVDESS, same folds', five, protocol)
  return out


EXPERIMENTS = _collect()


def swap_preset(ref: str, preset: str) -> str:
  """'configs/x.py:ravdess+it1' with preset 'tiny' -> 'configs/x.py:tiny+it1'."""
  if not preset:
    return ref
  path, _, arg = ref.partition(':')
  p = config_lib.parse_arg(arg)
  return f'{path}:' + '+'.join((preset,) + p.variants)


def check(experiment: Experiment, preset: str = '') -> list[str]:
  """Problems that would stop the experiment: missing config files, unknown presets."""
  problems = []
  for v in experiment.variants:
    ref = swap_preset(v.config, preset)
    if not os.path.exists(os.path.join(REPO, ref.partition(':')[0])):
      problems.append(f'{v.name}: {ref.partition(":")[0]} does not exist')
      continue
    try:
      load_config(ref)
    except Exception as e:  # an unknown preset or variant name
      problems.append(f'{v.name}: {ref}: {e}')
  return problems

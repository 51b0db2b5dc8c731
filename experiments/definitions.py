"""Named experiments: the papers' tables that our datasets can produce.

An experiment is a list of variants (a config reference plus overrides), a
protocol (folds over speaker/actor/session groups and seeds) and the metrics
of its table. `python -m experiments.run --experiment=NAME` trains every
(variant, fold, seed) and writes the table; `--list` prints them all.

Config references are `configs/<paper>.py:<preset>[+<ablation>]`. The
runner's `--preset=tiny` (or `synthetic`) swaps the preset part, keeping the
ablation, so every table can be rehearsed on the built-in synthetic data.

Folds: the real builders name their group feature (FOLD_GROUP_KEY: actor on
RAVDESS and CREMA-D, session on IEMOCAP); see data_pipelines/folds.py.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The metrics every table shows; WA is added where the dataset's literature uses it (IEMOCAP).
METRICS = ('accuracy', 'macro_precision', 'macro_recall', 'macro_f1', 'uar')
METRICS_WA = ('wa', 'uar', 'accuracy', 'macro_precision', 'macro_recall', 'macro_f1')


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of a table."""
  name: str
  config: str  # 'configs/avt_ca.py:ravdess+it1'
  overrides: tuple = ()  # ('mask_modalities=video', ...): passed as --config.KEY=VALUE
  # Overrides that move a preset to another real dataset; dropped when the runner's
  # --preset swaps in a synthetic preset.
  dataset_overrides: tuple = ()


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Which folds and seeds each variant is trained on."""
  folds: int = 0  # k; 0 keeps the builder's own train/validation/test splits
  fold_indices: tuple = ()  # () runs all k folds; (4,) only the fifth (e.g. IEMOCAP session 5)
  seeds: tuple = (0,)
  group_key: str = ''  # '' lets the builder say (FOLD_GROUP_KEY)
  val_groups: int = -1  # -1 next fold, n>0 n groups after the test fold, 0 the test fold

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
  robustness: bool = False  # also sweep eval-time corruption (paper 003 Table V)
  notes: str = ''


# Protocols as the papers describe them.
RAVDESS_5FOLD = Protocol(folds=5, seeds=(0,))  # 003: actor-independent 6:2:2, 5 folds
CREMA_D_5FOLD = Protocol(folds=5, seeds=(0,))
IEMOCAP_SESSION5 = Protocol(folds=5, fold_indices=(4,), val_groups=0, seeds=(0, 1, 2))
# ^ 003: sessions 1-4 train, session 5 test; no validation set is described.
SEEDS5 = Protocol(folds=0, seeds=(0, 1, 2, 3, 4))  # 000: five seeds, speaker-independent split


def _v(name, config, *overrides):
  return Variant(name, config, tuple(overrides))


PAPER_CONFIGS = {
    '000': 'configs/ofcmaer_cat.py',
    '001': 'configs/tucker_fusion.py',
    '002': 'configs/avt_ca.py',
    '003': 'configs/attsf_net.py',
    '004': 'configs/mmt_ca.py',
}
MODEL_NAMES = {'000': 'OF-CMAER-CAT', '001': 'Tucker fusion', '002': 'AVT-CA',
               '003': 'ATTSF-Net', '004': 'MMT-CA'}


def _all_models(preset: str) -> tuple:
  """The five models on one dataset. OF-CMAER-CAT has no RAVDESS preset (the paper
  does not use RAVDESS): its IEMOCAP settings are moved to the dataset, audio + video."""
  out = []
  for p, c in PAPER_CONFIGS.items():
    if p == '000' and preset != 'iemocap':
      names = {'ravdess': ('ravdess/speech_av', 8), 'crema_d': ('crema_d/av', 6)}[preset]
      out.append(Variant(MODEL_NAMES[p], f'{c}:iemocap', (), (
          f'dataset.name={names[0]}', f'dataset.num_classes={names[1]}',
          "model.modalities=('audio', 'video')")))
    else:
      out.append(_v(MODEL_NAMES[p], f'{c}:{preset}'))
  return tuple(out)


EXPERIMENTS = {e.name: e for e in [
    # --- 000 OF-CMAER-CAT ---------------------------------------------------
    Experiment('ofcmaer_cat_main', '000', 'OF-CMAER-CAT on IEMOCAP (Table 2, audio + video + text)',
               (_v('OF-CMAER-CAT', 'configs/ofcmaer_cat.py:iemocap'),),
               SEEDS5, METRICS_WA,
               notes='The paper also reports CMU-MOSEI and DEAP, which we do not build.'),
    Experiment('ofcmaer_cat_ablation', '000', 'OF-CMAER-CAT ablation on IEMOCAP (Table 4)',
               (_v('CNN only', 'configs/ofcmaer_cat.py:iemocap+cnn_only'),
                _v('+ CMAA', 'configs/ofcmaer_cat.py:iemocap+cmaa'),
                _v('+ AWOM', 'configs/ofcmaer_cat.py:iemocap+awom'),
                _v('+ contrastive', 'configs/ofcmaer_cat.py:iemocap+contrastive'),
                _v('+ transformer (full)', 'configs/ofcmaer_cat.py:iemocap')),
               SEEDS5, METRICS_WA),
    # --- 001 Tucker fusion ---------------------------------------------------
    Experiment('tucker_fusion_main', '001', 'Tucker cross-attention fusion (Tables 2-4)',
               (_v('RAVDESS', 'configs/tucker_fusion.py:ravdess'),
                _v('CREMA-D', 'configs/tucker_fusion.py:crema_d'),
                _v('IEMOCAP', 'configs/tucker_fusion.py:iemocap')),
               Protocol(folds=5, seeds=(0,)), METRICS_WA,
               notes='The paper uses one random 80:20 split; we report 5 speaker-independent folds.'),
    # --- 002 AVT-CA -----------------------------------------------------------
    Experiment('avt_ca_main', '002', 'AVT-CA on RAVDESS and CREMA-D (Table III)',
               (_v('RAVDESS', 'configs/avt_ca.py:ravdess'),
                _v('CREMA-D', 'configs/avt_ca.py:crema_d')),
               Protocol(folds=5, seeds=(0,))),
    Experiment('avt_ca_ablation', '002', 'AVT-CA ablation on RAVDESS (Table V)',
               (_v('IT-1', 'configs/avt_ca.py:ravdess+it1'),
                _v('IT-4', 'configs/avt_ca.py:ravdess+it4'),
                _v('CT-1', 'configs/avt_ca.py:ravdess+ct1'),
                _v('CT-4', 'configs/avt_ca.py:ravdess+ct4'),
                _v('IT-4 + CT-4 (full)', 'configs/avt_ca.py:ravdess+full')),
               RAVDESS_5FOLD),
    # --- 003 ATTSF-Net --------------------------------------------------------
    Experiment('attsf_net_main', '003', 'ATTSF-Net on RAVDESS (Table III)',
               (_v('ATTSF-Net', 'configs/attsf_net.py:ravdess'),), RAVDESS_5FOLD),
    Experiment('attsf_net_iemocap', '003', 'ATTSF-Net on IEMOCAP, audio + video (Table IV)',
               (_v('ATTSF-Net', 'configs/attsf_net.py:iemocap'),), IEMOCAP_SESSION5, METRICS_WA),
    Experiment('attsf_net_modalities', '003', 'Unimodal vs multimodal on RAVDESS (Table VI)',
               (_v('audio only', 'configs/attsf_net.py:ravdess', 'mask_modalities=video'),
                _v('video only', 'configs/attsf_net.py:ravdess', 'mask_modalities=audio'),
                _v('audio + video', 'configs/attsf_net.py:ravdess')),
               RAVDESS_5FOLD),
    Experiment('attsf_net_ablation', '003', 'ATTSF-Net ablation on RAVDESS (Table VII)',
               (_v('w/o L_sim', 'configs/attsf_net.py:ravdess+no_sim'),
                _v('w/o audio AVAM', 'configs/attsf_net.py:ravdess+no_audio_aux'),
                _v('w/o video AVAM', 'configs/attsf_net.py:ravdess+no_video_aux'),
                _v('w/o SAB', 'configs/attsf_net.py:ravdess+no_sab'),
                _v('full', 'configs/attsf_net.py:ravdess')),
               RAVDESS_5FOLD),
    Experiment('attsf_net_fusion', '003', 'Fusion variants and alignment on RAVDESS (Table VIII)',
               (_v('ATTSF-Net (sum)', 'configs/attsf_net.py:ravdess+sum'),
                _v('ATTSF-L2', 'configs/attsf_net.py:ravdess+l2'),
                _v('ATTSF-Gat', 'configs/attsf_net.py:ravdess+gat'),
                _v('LSTM -> Linear', 'configs/attsf_net.py:ravdess+linear')),
               RAVDESS_5FOLD),
    # --- 004 MMT-CA -----------------------------------------------------------
    Experiment('mmt_ca_main', '004', 'Audio, face and fused heads on RAVDESS (Section 5)',
               (_v('audio', 'configs/mmt_ca.py:ravdess+audio'),
                _v('face', 'configs/mmt_ca.py:ravdess+face'),
                _v('early fusion', 'configs/mmt_ca.py:ravdess+early'),
                _v('late fusion', 'configs/mmt_ca.py:ravdess+late'),
                _v('hybrid fusion', 'configs/mmt_ca.py:ravdess+hybrid')),
               RAVDESS_5FOLD),
    # --- all five models -------------------------------------------------------
    Experiment('robustness', '003', 'Robustness to a corrupted or missing modality, every model '
               '(003 Table V)', _all_models('ravdess'), RAVDESS_5FOLD, robustness=True,
               notes='10%..90% of one modality\'s values replaced by random values at test time, '
               'plus each modality missing; models trained on clean data.'),
    Experiment('compare_ravdess', 'all', 'The five models on RAVDESS, same folds',
               _all_models('ravdess'), RAVDESS_5FOLD),
]}


def swap_preset(ref: str, preset: str) -> str:
  """'configs/x.py:ravdess+it1' with preset 'tiny' -> 'configs/x.py:tiny+it1'."""
  if not preset:
    return ref
  path, _, arg = ref.partition(':')
  _, plus, ablation = arg.partition('+')
  return f'{path}:{preset}{plus}{ablation}'


def load_config(ref: str):
  """The ConfigDict of 'configs/<paper>.py:<arg>' (imported as a module)."""
  path, _, arg = ref.partition(':')
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  rel = os.path.relpath(full, REPO)
  if not rel.startswith('..'):  # inside the repository: import as a package module
    mod = importlib.import_module(os.path.splitext(rel)[0].replace(os.sep, '.'))
  else:
    spec = importlib.util.spec_from_file_location(os.path.basename(full)[:-3], full)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
  return mod.get_config(arg) if arg else mod.get_config()


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
    except Exception as e:  # an unknown preset or ablation name
      problems.append(f'{v.name}: {ref}: {e}')
  return problems

"""OF-CMAER-CAT (paper 000): CNN encoders, cross-modal attention alignment,
adaptive weight optimisation and a transformer contextual block.

  python -m mer_jax.main --config=configs/ofcmaer_cat.py:synthetic --workdir=/tmp/ofcmaer_cat

Presets (grammar: mer_jax/config_lib.py):
  synthetic     the built-in `synthetic_av` dataset, audio + video (README table)
  tiny          a very small model on `synthetic_av/small` for tests (seconds)
  iemocap       IEMOCAP 4-class, audio + video + text; targets accuracy 93.2 (Table 1);
                sessions 1-4 train, session 5 test; 5 seeds
  cmu_mosei     CMU-MOSEI emotions, COVAREP + FACET + GloVe vectors; targets 94.5 (Table 1)
  deap          DEAP valence x arousal, face video + physiological windows (DEAP has no
                speech); targets 94.6 (Table 1); subject-independent folds
  ravdess       not in the paper: audio + video on RAVDESS, for cross-model tables
  paper_shapes  audio + video + physio at the IEMOCAP and DEAP builders' shapes
Variants (Table 4, cumulative): cnn_only, cmaa (+CMAA), awom (+AWOM), contrastive
(+contrastive loss), full (+transformer = OF-CMAER-CAT), e.g.
`configs/ofcmaer_cat.py:iemocap+awom,seed=3`. `--config.model.head=concat` selects
the head of Eqs. 20-22.
"""

from mer_jax import config_lib


def defaults(c):
  c.model.name = 'ofcmaer_cat'
  c.model.modalities = ('audio', 'video')
  c.model.d_model = 128
  c.model.seq_channels = (64, 128)
  c.model.seq_pool = 2
  c.model.frame_channels = (32, 64, 128)
  c.model.frame_stem_stride = 1
  c.model.num_heads = 4
  c.model.num_layers = 2
  c.model.d_ff_ratio = 4
  c.model.dropout_rate = 0.1
  c.model.use_cmaa = True
  c.model.use_awom = True
  c.model.use_transformer = True
  c.model.awom_hidden = 64
  c.model.head = 'projection'  # Eqs. 12-13; 'concat' is Eqs. 20-22
  c.model.head_hidden = 128
  c.model.impl = 'auto'  # 'matmul' (im2col convolutions, custom-gradient pooling) on CPU
  c.model.max_len = 512  # longest sequence of the positional embeddings
  # Section 3.4: the transformer reads the AWOM-weighted features; 'unweighted' feeds
  # it the aligned features before weighting.
  c.model.transformer_input = 'weighted'
  # Eq. 19 weights as the paper names them; the paper gives no values.
  c.loss.lambda1 = 1.0  # classification
  c.loss.lambda2 = 0.1  # contrastive (InfoNCE)
  c.loss.lambda3 = 0.1  # reconstruction
  c.loss.lambda4 = 0.01  # entropy regulariser
  c.loss.lambda5 = 5e-5  # ||Theta||^2, applied as optimiser weight decay 2 * lambda5
  c.loss.temperature = 0.1  # tau of Eqs. 15-16
  # -1: subtract R_ent (reward balanced weights, as the text says); +1: Eq. 19 as printed.
  c.loss.entropy_sign = -1.0


def _paper_training(c, dataset, num_classes, accuracy):
  # Section 4: Adam, lr 1e-4, batch 32, weight decay, early stopping, 5 seeds,
  # speaker-independent.
  c.dataset.name = dataset
  c.dataset.num_classes = num_classes
  c.optim.optimizer = 'adam'
  c.optim.learning_rate = 1e-4
  c.input.batch_size = 32
  c.train.num_epochs = 100
  c.train.early_stopping_patience = 10
  c.optim.weight_decay = 2 * c.loss.lambda5  # Adam's L2 term is grad of (wd/2)||Theta||^2
  # Section 3.1: face augmentation by horizontal flips, random crops and illumination.
  c.input.augment.video_hflip = True
  c.input.augment.video_crop_pad = 8
  c.input.augment.video_brightness = 0.2
  c.protocol.seeds = (0, 1, 2, 3, 4)
  c.reference.update(metric='accuracy', value=accuracy, where='Table 1')


def _iemocap(c):
  _paper_training(c, 'iemocap/4class', 4, 93.2)
  config_lib.use_iemocap_session5(c)
  c.protocol.seeds = (0, 1, 2, 3, 4)
  c.model.modalities = ('audio', 'video', 'text')


def _cmu_mosei(c):
  _paper_training(c, 'cmu_mosei/emotions', 6, 94.5)
  c.model.modalities = ('audio', 'video', 'text')
  # MOSEI's video is pre-extracted FACET vectors: no image augmentation.
  c.input.augment.update(video_hflip=False, video_crop_pad=0, video_brightness=0.0)


def _deap(c):
  # high/low valence x arousal; face video beside the physiological windows
  _paper_training(c, 'deap/valence_arousal_face', 4, 94.6)
  c.model.modalities = ('video', 'physio')
  c.protocol.folds = 4  # subject-independent folds


def _ravdess(c):
  # Not a dataset of the paper: audio + video on RAVDESS speech AV clips, so the
  # five models can be compared on the same folds.
  _paper_training(c, 'ravdess/speech_av', 8, 0.0)
  c.reference.update(metric='', value=0.0, where='')
  c.protocol.update(folds=5, seeds=(0,))


def _paper_shapes(c):
  _paper_training(c, 'iemocap/4class', 4, 93.2)
  c.model.modalities = ('audio', 'video', 'physio')
  c.input.example_shapes = {'audio': (360, 39), 'video': (15, 112, 112, 3),
                            'physio': (320, 40)}


def _synthetic(c):
  config_lib.use_synthetic(c)
  c.model.update(d_model=64, seq_channels=(32, 64), frame_channels=(16, 32, 64, 64),
                 frame_stem_stride=2, num_layers=1, head_hidden=64)


def _tiny(c):
  config_lib.use_tiny(c)
  c.model.update(d_model=16, seq_channels=(8, 16), frame_channels=(8, 16), num_layers=1,
                 num_heads=2, d_ff_ratio=2, awom_hidden=8, head_hidden=16)


PRESETS = {
    'synthetic': _synthetic,
    'tiny': _tiny,
    'iemocap': _iemocap,
    'cmu_mosei': _cmu_mosei,
    'deap': _deap,
    'ravdess': _ravdess,
    'paper_shapes': _paper_shapes,
}

# Table 4 rows, cumulative. The rows before '+contrastive' train on cross-entropy
# alone (no contrastive, no reconstruction term); '+contrastive' adds Eq. 19's
# auxiliary losses.
_ARCH_ONLY = dict(lambda2=0.0, lambda3=0.0)
VARIANTS = {
    'cnn_only': config_lib.overrides(
        model=dict(use_cmaa=False, use_awom=False, use_transformer=False), loss=_ARCH_ONLY),
    'cmaa': config_lib.overrides(
        model=dict(use_cmaa=True, use_awom=False, use_transformer=False), loss=_ARCH_ONLY),
    'awom': config_lib.overrides(
        model=dict(use_cmaa=True, use_awom=True, use_transformer=False), loss=_ARCH_ONLY),
    'contrastive': config_lib.overrides(
        model=dict(use_cmaa=True, use_awom=True, use_transformer=False)),
    'full': config_lib.overrides(model=dict(use_cmaa=True, use_awom=True, use_transformer=True)),
    # The other reading of Section 3.4: the transformer reads the unweighted features.
    'unweighted_transformer': config_lib.overrides(model=dict(transformer_input='unweighted')),
}


TABLES = {
    'ofcmaer_cat_main': config_lib.Table('OF-CMAER-CAT (Table 1)', (
        ('IEMOCAP', 'iemocap'), ('CMU-MOSEI', 'cmu_mosei'), ('DEAP', 'deap'))),
    'ofcmaer_cat_ablation': config_lib.Table('OF-CMAER-CAT ablation on IEMOCAP (Table 4)', (
        ('CNN only', 'iemocap+cnn_only'), ('+ CMAA', 'iemocap+cmaa'), ('+ AWOM', 'iemocap+awom'),
        ('+ contrastive', 'iemocap+contrastive'), ('+ transformer (full)', 'iemocap')),
        wa=True),
}


def get_config(arg: str = 'synthetic'):
  return config_lib.build(arg, paper='000', defaults=defaults, presets=PRESETS,
                          variants=VARIANTS)

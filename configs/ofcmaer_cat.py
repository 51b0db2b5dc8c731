"""OF-CMAER-CAT (paper 000): CNN encoders, cross-modal attention alignment,
adaptive weight optimisation and a transformer contextual block.

  python -m mer_jax.main --config=configs/ofcmaer_cat.py:synthetic --workdir=/tmp/ofcmaer_cat

Presets (the part after ':'):
  synthetic     the built-in `synthetic_av` dataset (audio + video); 15 min on 2 shared
                CPU cores, test acc 0.97
  tiny          a very small model on `synthetic_av/small` for tests (seconds)
  iemocap       IEMOCAP 4-class, audio + video + text
  cmu_mosei     CMU-MOSEI emotions, audio + video + text
  deap          DEAP valence/arousal, face video + physiological windows (DEAP
                has no speech, so audio is left out)
  paper_shapes  the paper's setting for benchmarks (audio + video + physio)
Ablations of Table 4, appended with '+': cnn_only, cmaa (+CMAA), awom (+AWOM),
contrastive (+contrastive loss), full (+transformer = OF-CMAER-CAT), e.g.
`configs/ofcmaer_cat.py:iemocap+awom`. `--config.model.head=concat` selects
the head of Eqs. 20-22.
"""

from mer_jax import config_lib


def _paper_training(c):
  # Section 4: Adam, lr 1e-4, batch 32, weight decay, early stopping.
  c.optim.optimizer = 'adam'
  c.optim.learning_rate = 1e-4
  c.input.batch_size = 32
  c.train.num_epochs = 100
  c.train.early_stopping_patience = 10
  c.optim.weight_decay = 2 * c.loss.lambda5  # Adam's L2 term is grad of (wd/2)||Theta||^2


def _iemocap(c):
  _paper_training(c)
  c.dataset.name = 'iemocap/4class'
  c.dataset.num_classes = 4
  c.model.modalities = ('audio', 'video', 'text')
  # 3 s of 40 log-mels x (static, delta, delta-delta) at a 10 ms hop; 16 face frames
  # of 112x112; 50 word vectors of 300 dimensions.
  c.input.example_shapes = {'audio': (300, 120), 'video': (16, 112, 112, 3),
                            'text': (50, 300)}


def _cmu_mosei(c):
  _iemocap(c)
  c.dataset.name = 'cmu_mosei/emotions'
  c.dataset.num_classes = 6


def _deap(c):
  _paper_training(c)
  c.dataset.name = 'deap/valence_arousal'
  c.dataset.num_classes = 4  # high/low valence x high/low arousal
  c.model.modalities = ('video', 'physio')
  # 3 s windows of 32 EEG + 8 peripheral channels at 128 Hz.
  c.input.example_shapes = {'video': (16, 112, 112, 3), 'physio': (384, 40)}


def _paper_shapes(c):
  _paper_training(c)
  c.dataset.num_classes = 4
  c.model.modalities = ('audio', 'video', 'physio')
  c.input.example_shapes = {'audio': (300, 120), 'video': (16, 112, 112, 3),
                            'physio': (384, 40)}


def _synthetic(c):
  config_lib.use_synthetic(c)
  c.model.update(d_model=64, seq_channels=(32, 64), frame_channels=(16, 32, 64, 64), frame_stem_stride=2, num_layers=1,
                 head_hidden=64)


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
    'paper_shapes': _paper_shapes,
}

# Table 4 rows, cumulative: (model overrides, loss overrides).
ABLATIONS = {
    'cnn_only': (dict(use_cmaa=False, use_awom=False, use_transformer=False),
                 dict(lambda2=0.0)),
    'cmaa': (dict(use_cmaa=True, use_awom=False, use_transformer=False), dict(lambda2=0.0)),
    'awom': (dict(use_cmaa=True, use_awom=True, use_transformer=False), dict(lambda2=0.0)),
    'contrastive': (dict(use_cmaa=True, use_awom=True, use_transformer=False), {}),
    'full': (dict(use_cmaa=True, use_awom=True, use_transformer=True), {}),
}


def get_config(arg: str = 'synthetic'):
  preset, _, ablation = arg.partition('+')
  c = config_lib.base_config()
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
  # Eq. 19 weights as the paper names them; the paper gives no values.
  c.loss.lambda1 = 1.0  # classification
  c.loss.lambda2 = 0.1  # contrastive (InfoNCE)
  c.loss.lambda3 = 0.1  # reconstruction
  c.loss.lambda4 = 0.01  # entropy regulariser
  c.loss.lambda5 = 5e-5  # ||Theta||^2, applied as optimiser weight decay 2 * lambda5
  c.loss.temperature = 0.1  # tau of Eqs. 15-16
  # -1: subtract R_ent (reward balanced weights, as the text says); +1: Eq. 19 as printed.
  c.loss.entropy_sign = -1.0

  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose from {sorted(PRESETS)}')
  PRESETS[preset](c)
  if ablation:
    if ablation not in ABLATIONS:
      raise ValueError(f'unknown ablation {ablation!r}; choose from {sorted(ABLATIONS)}')
    model_over, loss_over = ABLATIONS[ablation]
    c.model.update(model_over)
    c.loss.update(loss_over)
  return c

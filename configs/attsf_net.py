"""ATTSF-Net (paper 003): attention-based similarity fusion network, audio + video.

  python -m mer_jax.main --config=configs/attsf_net.py:synthetic --workdir=/tmp/attsf_net

Presets (the part after ':'):
  synthetic     the built-in `synthetic_av` dataset; 26 min on 2 heavily shared CPU cores, test acc 0.93
  tiny          a very small model on `synthetic_av/small` for tests (seconds)
  ravdess       Table II and Section IV-B settings on RAVDESS speech AV clips
  iemocap       the same for IEMOCAP 4-class (audio + video)
  iemocap_avt   IEMOCAP 4-class with text (A+V+T), joined at the concatenation
  paper_shapes  the paper's input shapes (MFCC-12 over 3.6 s, 15 frames of 224x224)
Ablations, appended with '+' (Table VII): no_sim, no_audio_aux, no_video_aux,
no_sab; (Table VIII / Section III-F): l2, gat (fusion variants), linear (LSTM ->
Linear), e.g. `configs/attsf_net.py:ravdess+no_sab`.
"""

from mer_jax import config_lib


def _paper_training(c, batch_size, lr):
  # Section IV-B: Adam, 200 epochs, from epoch 30 lr x 0.9 every 20 epochs,
  # weight decay 1e-5, dropout 0.4, early stopping.
  c.optim.optimizer = 'adam'
  c.optim.learning_rate = lr
  c.optim.weight_decay = 1e-5
  c.optim.schedule = 'step'
  c.optim.decay_start_epoch = 30
  c.optim.decay_epochs = 20
  c.optim.decay_rate = 0.9
  c.input.batch_size = batch_size
  c.train.num_epochs = 200
  c.train.early_stopping_patience = 30
  c.model.dropout_rate = 0.4


def _paper_inputs(c):
  # MFCC: 50 ms Hamming window, 30 ms shift, first 12 coefficients over 3.6 s
  # (120 frames); 15 uniformly sampled face frames of 224x224.
  c.input.example_shapes = {'audio': (120, 12), 'video': (15, 224, 224, 3)}


def _ravdess(c):
  _paper_training(c, batch_size=8, lr=4e-4)
  _paper_inputs(c)
  c.dataset.name = 'ravdess/speech_av'
  c.dataset.num_classes = 8
  c.model.update(seq_len=128, num_layers=6, aux_layers=2, d_ff=256, aux_d_ff=256)


def _iemocap(c):
  _paper_training(c, batch_size=32, lr=1e-3)
  _paper_inputs(c)
  c.dataset.name = 'iemocap/4class'
  c.dataset.num_classes = 4
  c.model.update(seq_len=64, num_layers=5, aux_layers=1, d_ff=256, aux_d_ff=128)


def _iemocap_avt(c):
  # The paper uses BERT features; the builder's transcript vectors stand in.
  _iemocap(c)
  c.model.use_text = True


def _paper_shapes(c):
  _ravdess(c)


def _synthetic(c):
  config_lib.use_synthetic(c)
  c.model.update(d_model=64, seq_len=16, num_layers=2, aux_layers=1, d_ff=128, aux_d_ff=128,
                 dropout_rate=0.1, audio_channels=(16, 32, 64, 32), frame_stem_features=16,
                 frame_stage_features=(32, 64), frame_dim=64)


def _tiny(c):
  config_lib.use_tiny(c)
  c.model.update(d_model=16, seq_len=8, num_layers=1, aux_layers=1, num_heads=2, d_ff=32,
                 aux_d_ff=32, dropout_rate=0.1, audio_channels=(8, 8), frame_stem_features=8,
                 frame_stage_features=(8, 16), frame_dim=16)


PRESETS = {
    'synthetic': _synthetic,
    'tiny': _tiny,
    'ravdess': _ravdess,
    'iemocap': _iemocap,
    'iemocap_avt': _iemocap_avt,
    'paper_shapes': _paper_shapes,
}

# Each entry: (model overrides, loss overrides).
ABLATIONS = {
    'no_sim': ({}, {'lambda_sim': 0.0}),  # Table VII: without L_sim
    'no_audio_aux': ({'use_audio_aux': False}, {}),  # without the audio AVAM
    'no_video_aux': ({'use_video_aux': False}, {}),  # without the video AVAM
    'no_sab': ({'use_sab': False}, {}),  # without SAB (and so without L_sim)
    'sum': ({'fusion': 'sum'}, {}),  # ATTSF-Net
    'l2': ({'fusion': 'l2'}, {}),  # ATTSF-L2
    'gat': ({'fusion': 'gat'}, {}),  # ATTSF-Gat
    'linear': ({'audio_align': 'linear'}, {}),  # Table VIII: LSTM -> Linear
}


def get_config(arg: str = 'synthetic'):
  preset, _, ablation = arg.partition('+')
  c = config_lib.base_config()
  c.model.name = 'attsf_net'
  c.model.d_model = 128
  c.model.seq_len = 128
  c.model.num_layers = 6
  c.model.aux_layers = 2
  c.model.num_heads = 4
  c.model.d_ff = 256
  c.model.aux_d_ff = 256
  c.model.dropout_rate = 0.4
  c.model.audio_channels = (64, 128, 256, 128)
  c.model.audio_align = 'lstm'
  c.model.frame_stem_features = 29
  c.model.frame_stage_features = (116, 232)
  c.model.frame_expansion = 2
  c.model.local_grid = 2
  c.model.frame_dim = 128
  c.model.video_kernel = 3
  c.model.use_sab = True
  c.model.use_audio_aux = True
  c.model.use_video_aux = True
  c.model.fusion = 'sum'
  c.model.impl = 'auto'
  # Eq. 18 weights as the paper names them.
  c.loss.lambda_a = 0.5
  c.loss.lambda_v = 0.5
  c.loss.lambda_sim = 0.3
  c.loss.sim_stats = 'feature'  # see losses.gaussian_stats

  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose from {sorted(PRESETS)}')
  PRESETS[preset](c)
  for name in filter(None, ablation.split('+')):
    if name not in ABLATIONS:
      raise ValueError(f'unknown ablation {name!r}; choose from {sorted(ABLATIONS)}')
    model_over, loss_over = ABLATIONS[name]
    c.model.update(model_over)
    c.loss.update(loss_over)
  return c

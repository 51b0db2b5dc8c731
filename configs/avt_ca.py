"""AVT-CA (paper 002): audio-video transformer with cross-attention.

  python -m mer_jax.main --config=configs/avt_ca.py:synthetic --workdir=/tmp/avt_ca

Presets (the part after ':'):
  synthetic  the built-in `synthetic_av` dataset; ~5 min on 2 CPU cores
  tiny       a very small model on `synthetic_av/small` for tests (seconds)
  ravdess    the paper's settings on RAVDESS speech AV clips
  crema_d    the paper's settings on CREMA-D
  cmu_mosei  the paper's settings on CMU-MOSEI (6 emotions)
  paper_shapes  the public code's input shapes (15 frames of 224x224, MFCC 10x156)
Ablations of Table V, appended with '+': it1, it4, ct1, ct4 (the full model is
IT-4 + CT-4), e.g. `configs/avt_ca.py:ravdess+it1`. Unimodal baselines:
`--config.mask_modalities=audio` (or video).
"""

from mer_jax import config_lib


def _paper_training(c):
  # Section 4 of the paper: Adam, lr 0.01, weight decay 1e-3, batch 8, 128 epochs.
  c.optim.optimizer = 'adam'
  c.optim.learning_rate = 0.01
  c.optim.weight_decay = 1e-3
  c.input.batch_size = 8
  c.train.num_epochs = 128


def _public_code_inputs(c):
  # The authors' public code: 15 frames of 224x224, MFCC-10 at 22 050 Hz over 3.6 s
  # (156 frames at hop 512).
  c.input.example_shapes = {'audio': (156, 10), 'video': (15, 224, 224, 3)}


ABLATIONS = {
    # Table V: the intermediate transformer alone with 1 or 4 heads ...
    'it1': dict(use_intermediate_transformer=True, it_heads=1, use_cross_attention=False),
    'it4': dict(use_intermediate_transformer=True, it_heads=4, use_cross_attention=False),
    # ... the cross-attention alone with 1 or 4 heads ...
    'ct1': dict(use_intermediate_transformer=False, use_cross_attention=True, ct_heads=1),
    'ct4': dict(use_intermediate_transformer=False, use_cross_attention=True, ct_heads=4),
    # ... and the full model, IT-4 + CT-4.
    'full': dict(use_intermediate_transformer=True, it_heads=4, use_cross_attention=True,
                 ct_heads=4),
}


def get_config(arg: str = 'synthetic'):
  preset, _, ablation = arg.partition('+')
  c = config_lib.base_config()
  c.model.name = 'avt_ca'
  c.model.d_model = 128
  c.model.audio_channels = (64, 128)
  c.model.frame_stem_features = 29
  c.model.frame_stage_features = (116, 232)
  c.model.frame_expansion = 2
  c.model.local_grid = 2
  c.model.use_intermediate_transformer = True
  c.model.it_heads = 4
  c.model.use_cross_attention = True
  c.model.ct_heads = 4
  c.model.d_ff_ratio = 4  # paper: d_ff = 4d
  c.model.dropout_rate = 0.1
  c.model.head_dropout = 0.0
  c.model.impl = 'auto'  # 'matmul' is the fast 1x1/depthwise path on CPU

  if preset == 'synthetic':
    config_lib.use_synthetic(c, learning_rate=2e-3, num_epochs=14)
    c.model.d_model = 64
    c.model.audio_channels = (32, 64)
    c.model.frame_stem_features = 16
    c.model.frame_stage_features = (32, 64)
    c.input.augment.video_crop_pad = 2
    c.input.augment.audio_noise_std = 0.5
    c.train.checkpoint_every_steps = 100
  elif preset == 'tiny':
    config_lib.use_tiny(c)
    c.model.d_model = 16
    c.model.audio_channels = (8, 16)
    c.model.frame_stem_features = 8
    c.model.frame_stage_features = (8, 16)
    c.model.it_heads = 2
    c.model.ct_heads = 2
  elif preset in ('ravdess', 'crema_d', 'cmu_mosei', 'paper_shapes'):
    _paper_training(c)
    _public_code_inputs(c)
    if preset == 'ravdess':
      c.dataset.name = 'ravdess/avt_ca'
      c.dataset.num_classes = 8
    elif preset == 'crema_d':
      c.dataset.name = 'crema_d/avt_ca'
      c.dataset.num_classes = 6
    elif preset == 'cmu_mosei':
      c.dataset.name = 'cmu_mosei/emotions'
      c.dataset.num_classes = 6
    else:
      c.dataset.num_classes = 8
  else:
    raise ValueError(f'unknown preset {preset!r}')

  if ablation:
    if ablation not in ABLATIONS:
      raise ValueError(f'unknown ablation {ablation!r}; choose from {sorted(ABLATIONS)}')
    c.model.update(ABLATIONS[ablation])
  return c

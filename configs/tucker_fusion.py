"""Tucker-decomposed cross-attention fusion (paper 001): audio log-mels + ResNet-18 faces.

  python -m mer_jax.main --config=configs/tucker_fusion.py:synthetic --workdir=/tmp/tucker_fusion

Presets (the part after ':'):
  synthetic     the built-in `synthetic_av` dataset with a slim ResNet; 26 min on 2
                heavily shared CPU cores, test acc 0.98
  tiny          a very small model on `synthetic_av/small` for tests (seconds)
  ravdess       the paper's settings on RAVDESS speech AV clips
  crema_d       the paper's settings on CREMA-D
  iemocap       the paper's settings on IEMOCAP (4 classes)
  paper_shapes  the paper's input shapes (128 mels x 256 frames, 90 frames of 224x224)
Variant '+naive' forms the outer-product tensor before the Tucker products (same
result, ~100x the memory; for checks). ImageNet weights for the ResNet-18:
`mer_jax.models.resnet_import.load_torchvision_resnet(path, include_fc=False)` and
`tucker_fusion.with_pretrained_resnet`.
"""

from mer_jax import config_lib


def _paper_training(c, num_classes, dataset):
  # Section IV: Adam, lr 1e-4 .. 1e-3, batch 128, 50-100 epochs, dropout 0.5,
  # weight decay 1e-4, random 80:20 split.
  c.dataset.name = dataset
  c.dataset.num_classes = num_classes
  c.optim.optimizer = 'adam'
  c.optim.learning_rate = 1e-4
  c.optim.weight_decay = 1e-4
  c.input.batch_size = 128
  c.train.num_epochs = 100
  c.model.dropout_rate = 0.5
  # 16 kHz, 3 s, 128 mels at a 10 ms hop cropped to 256 frames; 90 frames of 224x224.
  c.input.example_shapes = {'audio': (256, 128), 'video': (90, 224, 224, 3)}
  c.input.augment.video_hflip = True
  c.input.augment.video_crop_pad = 16
  c.input.augment.audio_noise_std = 0.1


PRESETS = {
    'ravdess': lambda c: _paper_training(c, 8, 'ravdess/speech_av'),
    'crema_d': lambda c: _paper_training(c, 6, 'crema_d/av'),
    'iemocap': lambda c: _paper_training(c, 4, 'iemocap/4class'),
    'paper_shapes': lambda c: _paper_training(c, 8, 'ravdess/speech_av'),
}


def _synthetic(c):
  config_lib.use_synthetic(c, learning_rate=2e-3)
  c.model.update(d_model=64, t_common=16, audio_channels=(16, 32), resnet_stage_sizes=(1, 1, 1, 1),
                 resnet_widths=(16, 32, 64, 64), gru_hidden=32, rank_t=8, rank_a=32, rank_v=32,
                 fbp_dim=128, fbp_rank=2, dropout_rate=0.2)


def _tiny(c):
  config_lib.use_tiny(c)
  c.model.update(d_model=16, t_common=8, audio_channels=(8,), resnet_stage_sizes=(1, 1),
                 resnet_widths=(8, 16), gru_hidden=8, num_heads=2, rank_t=4, rank_a=8, rank_v=8,
                 fbp_dim=16, fbp_rank=1, dropout_rate=0.3)


PRESETS.update(synthetic=_synthetic, tiny=_tiny)


def get_config(arg: str = 'synthetic'):
  preset, _, variant = arg.partition('+')
  c = config_lib.base_config()
  c.model.name = 'tucker_fusion'
  c.model.d_model = 256  # both modalities projected to 256
  c.model.t_common = 60  # T_common
  c.model.audio_channels = (64, 128)
  c.model.resnet_stage_sizes = (2, 2, 2, 2)  # ResNet-18
  c.model.resnet_widths = (64, 128, 256, 512)
  c.model.gru_hidden = 256
  c.model.num_heads = 4
  c.model.rank_t = 30  # A_T: 60 x 30
  c.model.rank_a = 128  # A_a: 256 x 128
  c.model.rank_v = 128  # A_v: 256 x 128
  c.model.fbp_dim = 512
  c.model.fbp_rank = 1
  c.model.dropout_rate = 0.5
  c.model.attention_dropout = 0.1
  c.model.tucker_naive = False

  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose from {sorted(PRESETS)}')
  PRESETS[preset](c)
  if variant == 'naive':
    c.model.tucker_naive = True
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; choose from ['naive']")
  return c

"""Tucker-decomposed cross-attention fusion (paper 001): audio log-mels + ResNet-18 faces.

  python -m mer_jax.main --config=configs/tucker_fusion.py:synthetic --workdir=/tmp/tucker_fusion

Presets (grammar: mer_jax/config_lib.py):
  synthetic     the built-in `synthetic_av` dataset with a slim ResNet (README table)
  tiny          a very small model on `synthetic_av/small` for tests (seconds)
  ravdess       RAVDESS speech AV clips as the paper preprocesses them
                (`ravdess/tucker_fusion`: 128 log-mels x 256 frames, 90 frames of 224x224);
                targets accuracy 92.46 (Table 4); 5 actor folds
  crema_d       CREMA-D (`crema_d/tucker_fusion`); targets 87.31 (Table 4)
  iemocap       IEMOCAP with Table 3's eight classes (`iemocap/tucker_fusion`); targets
                83.22 (Table 4); sessions 1-4 train, session 5 test
  paper_shapes  the paper's input shapes, for benchmarks
Variant '+naive' forms the outer-product tensor before the Tucker products (same
result, ~100x the memory; for checks). ImageNet weights for the ResNet-18:
`--config.model_init.kind=torchvision_resnet18 --config.model_init.path=resnet18-f37072fd.pth`.
"""

from mer_jax import config_lib


def defaults(c):
  c.model.name = 'tucker_fusion'
  c.model.d_model = 256  # Section 3: both modalities projected to 256
  c.model.t_common = 60  # T_common, the audio CNN's output length
  c.model.audio_channels = (64, 128)
  c.model.resnet_stage_sizes = (2, 2, 2, 2)  # ResNet-18
  c.model.resnet_widths = (64, 128, 256, 512)
  c.model.gru_hidden = 256
  c.model.num_heads = 4  # Section 3.3: 4-head cross-attention, dim 256
  c.model.rank_t = 30  # A_T: 60 x 30
  c.model.rank_a = 128  # A_a: 256 x 128
  c.model.rank_v = 128  # A_v: 256 x 128
  c.model.fbp_dim = 512  # FBP output
  c.model.fbp_rank = 1
  c.model.dropout_rate = 0.5  # Section 4: dropout 0.5
  c.model.attention_dropout = 0.1
  c.model.tucker_naive = False
  c.model.impl = 'auto'  # ResNet convs and max-pool: 'matmul' (CPU-fast gradients) or 'xla'


def _paper_training(c, dataset, num_classes, accuracy):
  # Section 4: Adam, lr 1e-4 .. 1e-3, batch 128, 50-100 epochs, weight decay 1e-4.
  # The paper's random 80:20 split is replaced by speaker-independent folds.
  c.dataset.name = dataset
  c.dataset.num_classes = num_classes
  c.optim.optimizer = 'adam'
  c.optim.learning_rate = 1e-4
  c.optim.weight_decay = 1e-4
  c.input.batch_size = 128
  c.train.num_epochs = 100
  # Section 4 / Table A1: video hflip, rotation and random crop; pitch shift, time
  # stretch and background noise on the waveform, as augmented copies of each
  # training clip built into the dataset (RAVDESS, CREMA-D; the paper gives no
  # counts or ranges).
  c.input.augment.video_hflip = True
  c.input.augment.video_crop_pad = 16
  c.input.augment.video_rotate = 10.0
  if not dataset.startswith('iemocap'):  # the IEMOCAP builder has no waveform copies yet
    c.dataset.train_augment_copies = 2
  c.protocol.folds = 5
  c.reference.update(metric='accuracy', value=accuracy, where='Table 4')


def _iemocap(c):
  _paper_training(c, 'iemocap/tucker_fusion', 8, 83.22)
  config_lib.use_iemocap_session5(c)


PRESETS = {
    'ravdess': lambda c: _paper_training(c, 'ravdess/tucker_fusion', 8, 92.46),
    'crema_d': lambda c: _paper_training(c, 'crema_d/tucker_fusion', 6, 87.31),
    'iemocap': _iemocap,
    'paper_shapes': lambda c: _paper_training(c, 'ravdess/tucker_fusion', 8, 92.46),
}


def _synthetic(c):
  # 20 epochs, not 12: the product fusion sits on a plateau (audio's arousal
  # only, val ~33 %) until the face path is picked up, at epoch 2 to 7 depending
  # on the seed; with 12 epochs a late escape left too little of the schedule
  # (69-85 % test). With 20, seeds 0-2 reach 96.5-99.7 % test.
  config_lib.use_synthetic(c, learning_rate=2e-3, num_epochs=20)
  c.model.update(d_model=64, t_common=16, audio_channels=(16, 32), resnet_stage_sizes=(1, 1, 1, 1),
                 resnet_widths=(16, 32, 64, 64), gru_hidden=32, rank_t=8, rank_a=32, rank_v=32,
                 fbp_dim=128, fbp_rank=2, dropout_rate=0.2)


def _tiny(c):
  config_lib.use_tiny(c)
  c.model.update(d_model=16, t_common=8, audio_channels=(8,), resnet_stage_sizes=(1, 1),
                 resnet_widths=(8, 16), gru_hidden=8, num_heads=2, rank_t=4, rank_a=8, rank_v=8,
                 fbp_dim=16, fbp_rank=1, dropout_rate=0.3)


PRESETS.update(synthetic=_synthetic, tiny=_tiny)

VARIANTS = {'naive': config_lib.overrides(model=dict(tucker_naive=True))}


TABLES = {
    'tucker_fusion_main': config_lib.Table('Tucker cross-attention fusion (Table 4)', (
        ('RAVDESS', 'ravdess'), ('CREMA-D', 'crema_d'), ('IEMOCAP', 'iemocap')), wa=True,
        notes='The paper uses one random 80:20 split; we report speaker-independent folds '
              '(IEMOCAP: session 5).'),
}


def get_config(arg: str = 'synthetic'):
  return config_lib.build(arg, paper='001', defaults=defaults, presets=PRESETS,
                          variants=VARIANTS)

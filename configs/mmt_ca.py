"""Transformer + cross-modal attention, real time (paper 004): audio and face.

  python -m mer_jax.main --config=configs/mmt_ca.py:synthetic --workdir=/tmp/mmt_ca

Presets (the part after ':'):
  synthetic     the built-in `synthetic_av` dataset, fused audio + face; 6 min on 2 busy CPU cores, test acc 0.92
  tiny          a very small model on `synthetic_av/small` for tests (seconds)
  ravdess       the paper's training recipe on RAVDESS speech AV clips, fused
  ferplus       the paper's face model on FER+ (head='face', a single image per example)
  paper_shapes  the paper's input shapes for benchmarks (MFCC frames + face crops)
  ravdess_audio   the audio model on RAVDESS speech wavs (`ravdess/speech_audio`),
                  speaker-independent: the builder's actor splits (on the four sample
                  actors: train 1-2, validation 3, test 4)
  ferplus_face    the face model on the FER+ images (`ferplus/majority`, standard
                  splits); `ferplus_face+from_validation` carves train/val/test
                  (80/10/10) from FER2013Valid when only that folder is available
  ravdess_ferplus the pairing of RAVDESS speech with same-emotion FER+ faces, fused
                  (compare with its unimodal parts via `+audio` and `+face`)
Real-data presets need the raw files: `--config.dataset.manual_dir=DIR` (built
on the fly), e.g. DIR=../shared/data/ravdess (or ../shared/data for the pairing,
which expects DIR/ravdess and DIR/ferplus).
Variants, appended with '+': audio, face (unimodal heads), early, late, hybrid
(fusion modes), e.g. `configs/mmt_ca.py:synthetic+late`.
The paper's recipe is three runs: the face model on FER+, the audio model on
RAVDESS (`ravdess+audio`), then the fused model.
"""

from mer_jax import config_lib


def _paper_training(c):
  # Section IV: Adam, lr 0.0001, batch 32, 100 epochs.
  c.optim.optimizer = 'adam'
  c.optim.learning_rate = 1e-4
  c.input.batch_size = 32
  c.train.num_epochs = 100


def _synthetic(c):
  config_lib.use_synthetic(c)
  c.model.d_model = 64
  c.model.audio_layers = 2
  c.model.face_layers = 1
  c.model.face_channels = (16, 32, 64, 64)  # 4 pools: the mouth shape needs a wide receptive field
  c.model.face_stem_stride = 2  # full-resolution convs are slow on CPU and add nothing here


def _tiny(c):
  config_lib.use_tiny(c)
  c.model.d_model = 16
  c.model.audio_layers = 1
  c.model.face_layers = 1
  c.model.num_heads = 2
  c.model.d_ff_ratio = 2
  c.model.face_channels = (8, 16)


def _ravdess(c):
  _paper_training(c)
  c.dataset.name = 'ravdess/speech_av'
  c.dataset.num_classes = 8
  _paper_inputs(c)


def _ferplus(c):
  _paper_training(c)
  c.dataset.name = 'ferplus/majority'
  c.dataset.num_classes = 8
  c.model.head = 'face'
  # FER+ images: 48x48 face crops, one per example.
  c.input.example_shapes = {'video': (1, 48, 48, 3)}


def _paper_inputs(c):
  # librosa defaults (22 050 Hz, hop 512) over 3 s give ~130 MFCC frames; 40
  # coefficients; face crops at FER+'s 48x48, 5 per segment (the paper's real-time
  # rate is 2-5 frames per second).
  c.input.example_shapes = {'audio': (130, 40), 'video': (5, 48, 48, 3)}


def _paper_shapes(c):
  _paper_training(c)
  c.dataset.num_classes = 8
  _paper_inputs(c)


def _ravdess_audio(c):
  _paper_training(c)
  c.dataset.name = 'ravdess/speech_audio'
  c.dataset.num_classes = 8
  c.model.head = 'audio'
  c.input.example_shapes = {'audio': (360, 39)}  # builder: MFCC-13+deltas, 3.6 s at 10 ms


def _ferplus_face(c):
  _paper_training(c)
  c.dataset.name = 'ferplus/majority'
  c.dataset.num_classes = 8
  c.model.head = 'face'
  c.input.example_shapes = {'video': (1, 48, 48, 3)}
  c.input.augment.video_hflip = True
  c.input.augment.video_crop_pad = 4


def _ferplus_face_from_validation(c):
  # Only FER2013Valid is available: 80/10/10 of it (disjoint images).
  c.dataset.train_split = 'validation[:80%]'
  c.dataset.val_split = 'validation[80%:90%]'
  c.dataset.test_split = 'validation[90%:]'


def _ravdess_ferplus(c):
  _paper_training(c)
  c.dataset.name = 'ravdess_ferplus/paired'
  c.dataset.num_classes = 7  # the emotions RAVDESS and FER+ share
  c.input.example_shapes = {'audio': (360, 39), 'video': (1, 48, 48, 3)}
  c.input.augment.video_hflip = True


PRESETS = {
    'synthetic': _synthetic,
    'tiny': _tiny,
    'ravdess': _ravdess,
    'ferplus': _ferplus,
    'paper_shapes': _paper_shapes,
    'ravdess_audio': _ravdess_audio,
    'ferplus_face': _ferplus_face,
    'ravdess_ferplus': _ravdess_ferplus,
}

VARIANTS = {
    'audio': dict(head='audio'),
    'face': dict(head='face'),
    'early': dict(head='fused', fusion='early'),
    'late': dict(head='fused', fusion='late'),
    'hybrid': dict(head='fused', fusion='hybrid'),
}


def get_config(arg: str = 'synthetic'):
  preset, _, variant = arg.partition('+')
  c = config_lib.base_config()
  c.model.name = 'mmt_ca'
  c.model.head = 'fused'
  c.model.fusion = 'hybrid'
  c.model.d_model = 128
  c.model.audio_layers = 2
  c.model.face_layers = 2
  c.model.cross_layers = 1
  c.model.num_heads = 4
  c.model.d_ff_ratio = 4
  c.model.dropout_rate = 0.1
  c.model.face_channels = (32, 64, 128)
  c.model.face_convs_per_block = 1
  c.model.face_stem_stride = 1
  c.model.head_dropout = 0.1
  # Each unimodal head also learns from the labels, so late fusion has classifiers to combine.
  c.loss.unimodal_weight = 0.5

  if preset not in PRESETS:
    raise ValueError(f'unknown preset {preset!r}; choose from {sorted(PRESETS)}')
  PRESETS[preset](c)

  if preset == 'ferplus_face' and variant == 'from_validation':
    _ferplus_face_from_validation(c)
    variant = ''
  if variant:
    if variant not in VARIANTS:
      raise ValueError(f'unknown variant {variant!r}; choose from {sorted(VARIANTS)}')
    c.model.update(VARIANTS[variant])
  return c

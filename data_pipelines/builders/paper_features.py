"""Each paper's own audio and video preprocessing, as builder-config settings.

RAVDESS and CREMA-D offer a builder config per paper (`ravdess/avt_ca`,
`crema_d/attsf_net`, ...) so that every model trains on the inputs its paper
describes.
"""

from data_pipelines.features.audio import AudioFeatureConfig
from data_pipelines.features.video import VideoFeatureConfig

PAPER_FEATURES = {
    # 002 AVT-CA (its public code): MFCC-10 at 22 050 Hz over 3.6 s, librosa's
    # default 2048/512 frames (156 frames); 15 MTCNN face frames of 224x224.
    'avt_ca': (AudioFeatureConfig(sample_rate=22050, duration_s=3.6, kind='mfcc', n_mfcc=10,
                                  n_fft=2048, hop_length=512, num_frames=156),
               VideoFeatureConfig(num_frames=15, size=224, face_detector='mtcnn')),
    # 003 ATTSF-Net: 16 kHz mono, 3.6 s, MFCC with a 50 ms Hamming window and a
    # 30 ms shift, first 12 coefficients (121 frames); 15 MTCNN face frames of 224x224.
    'attsf_net': (AudioFeatureConfig(sample_rate=16000, duration_s=3.6, kind='mfcc', n_mfcc=12,
                                     n_fft=800, win_length=800, hop_length=480,
                                     window='hamming', num_frames=121),
                  VideoFeatureConfig(num_frames=15, size=224, face_detector='mtcnn')),
    # 001 Tucker fusion: 16 kHz, 3 s, 128 log-mels with a 25 ms window and 10 ms
    # hop cropped to 256 frames; 90 frames of 224x224 (about 13 MB per clip).
    'tucker_fusion': (AudioFeatureConfig(sample_rate=16000, duration_s=3.0, kind='logmel',
                                         n_mels=128, n_fft=400, win_length=400,
                                         hop_length=160, num_frames=256),
                      VideoFeatureConfig(num_frames=90, size=224)),
}

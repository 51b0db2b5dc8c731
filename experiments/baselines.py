"""Classical baselines for RAVDESS speech emotion: utterance statistics + LR / RBF SVM.

Every wav becomes one fixed-length vector of statistics over time (MFCC with
deltas, log-mel, spectral shape, RMS energy, F0 from pYIN), standardised on the
training actors only. Folds are the deep model's leave-one-actor-out folds
(data_pipelines/folds.py with num_folds = number of actors, val_groups=-1):
fold k tests actor k, validates on the next actor, trains on the rest.

Hyperparameters never see the test actor. Two protocols:
  val    fit on the training actors, pick (C, gamma) on the fold's validation
         actor, report the model fitted on the training actors (the deep
         model's data: same train, validation and test actors);
  inner  pick (C, gamma) by inner leave-one-actor-out over the training and
         validation actors, refit on all of them (the test actor is untouched);
  refit  pick (C, gamma) as `val` does, then refit on the training and
         validation actors (the deep model's `refit` runs: train on both for the
         number of epochs its validation actor chose).

  python -m experiments.baselines --data=../shared/data/ravdess \
      --out=experiments/results/ravdess_audio_baselines
writes <out>.md (markdown table) and <out>.json (per-fold figures).
`--groups=all,mfcc13_d,...` (see FEATURE_GROUPS) fits the same models on subsets
of the statistics, e.g. only those of the deep audio model's input.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import sys
import time

import numpy as np

# Imported first: it points numba's cache (pYIN) away from site-packages.
from data_pipelines.features import audio as audio_features

SAMPLE_RATE = 16000
N_MFCC = 20
N_MELS = 40
N_FFT = 800  # 50 ms
HOP = 160  # 10 ms
F0_MIN, F0_MAX = 65.0, 600.0

# Subsets of the statistics (by name) for --groups; `mfcc13_d` is what the deep audio
# model's MFCC-13 + delta input carries, `prosody` what `AudioFeatureConfig.prosody` adds.
_MFCC13 = r'(mfcc|dmfcc)([0-9]|1[0-2])_'
_PROSODY = r'(f0|rms|centroid|bandwidth|rolloff|flatness|contrast|zcr)'
FEATURE_GROUPS = {
    'all': r'.',
    'mfcc13_d': _MFCC13,
    'prosody': _PROSODY,
    'mfcc13_d+prosody': f'{_MFCC13}|{_PROSODY}',
    'no_f0': r'(?!f0)',
    'logmel': r'logmel',
}

LR_GRID = {'C': [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0]}
SVM_GRID = {'C': [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0],
            'gamma': ['scale', 0.3, 1.0, 3.0]}  # numbers are multiples of 1/n_features


def _stats(x: np.ndarray, prefix: str, names: list, values: list) -> None:
  """Mean and std over time of each row of x [F, T]."""
  for i, row in enumerate(np.atleast_2d(x)):
    names += [f'{prefix}{i}_mean', f'{prefix}{i}_std']
    values += [float(np.mean(row)), float(np.std(row))]


@audio_features.numba_locked(lambda wave, sr: None)
def utterance_features(wave: np.ndarray, sr: int) -> tuple[np.ndarray, list]:
  """A waveform -> (f32[D] utterance statistics, their D names)."""
  import librosa
  wave = audio_features.resample(audio_features.to_mono(wave), sr, SAMPLE_RATE)
  if audio_features.is_silent(wave):
    raise ValueError('silent waveform')
  wave = audio_features.normalize_amplitude(wave)
  # Leading/trailing silence dilutes every mean; RAVDESS takes have ~1 s of it.
  trimmed, _ = librosa.effects.trim(wave, top_db=40)
  wave = trimmed if trimmed.size >= N_FFT else wave
  names, values = [], []
  mel = librosa.feature.melspectrogram(y=wave, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP,
                                       n_mels=N_MELS)
  logmel = librosa.power_to_db(mel, ref=1.0, top_db=80.0)
  mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=N_MFCC)
  width = max(3, min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2)))
  _stats(mfcc, 'mfcc', names, values)
  _stats(librosa.feature.delta(mfcc, width=width, mode='nearest'), 'dmfcc', names, values)
  _stats(librosa.feature.delta(mfcc, order=2, width=width, mode='nearest'), 'ddmfcc', names,
         values)
  _stats(logmel, 'logmel', names, values)
  spec = np.abs(librosa.stft(wave, n_fft=N_FFT, hop_length=HOP))
  for fname, f in (('centroid', librosa.feature.spectral_centroid),
                   ('bandwidth', librosa.feature.spectral_bandwidth),
                   ('rolloff', librosa.feature.spectral_rolloff)):
    _stats(f(S=spec, sr=SAMPLE_RATE) / 1000.0, fname, names, values)
  _stats(librosa.feature.spectral_flatness(S=spec), 'flatness', names, values)
  _stats(librosa.feature.spectral_contrast(S=spec, sr=SAMPLE_RATE), 'contrast', names, values)
  _stats(librosa.feature.zero_crossing_rate(wave, frame_length=N_FFT, hop_length=HOP), 'zcr',
         names, values)
  rms_db = librosa.amplitude_to_db(
      librosa.feature.rms(y=wave, frame_length=N_FFT, hop_length=HOP)[0], ref=1.0, top_db=80.0)
  q = np.percentile(rms_db, [10, 50, 90])
  names += ['rms_db_mean', 'rms_db_std', 'rms_db_p10', 'rms_db_p50', 'rms_db_p90']
  values += [float(rms_db.mean()), float(rms_db.std()), *map(float, q)]
  f0, voiced, _ = librosa.pyin(wave, fmin=F0_MIN, fmax=F0_MAX, sr=SAMPLE_RATE,
                               frame_length=2048, hop_length=HOP * 2)
  f0 = f0[voiced & np.isfinite(f0)] if voiced is not None else np.array([])
  names += ['f0_voiced_frac', 'f0_log_mean', 'f0_log_std', 'f0_log_p10', 'f0_log_p90',
            'f0_log_range', 'f0_slope']
  if f0.size >= 2:
    lf = np.log2(f0)  # octaves: speakers differ in register, emotions in relative pitch
    p10, p90 = np.percentile(lf, [10, 90])
    slope = float(np.polyfit(np.arange(lf.size) / lf.size, lf, 1)[0])
    values += [float(voiced.mean()), float(lf.mean()), float(lf.std()), float(p10),
               float(p90), float(p90 - p10), slope]
  else:
    values += [float(np.mean(voiced)) if voiced is not None else 0.0] + [0.0] * 6
  names += ['duration_s']
  values += [wave.size / SAMPLE_RATE]
  return np.asarray(values, np.float32), names


def list_wavs(data_dir: str) -> list[tuple[str, int, int]]:
  """(path, actor, label) of every RAVDESS audio-only speech wav under data_dir."""
  from data_pipelines.builders import ravdess
  out = []
  for root, _, files in os.walk(data_dir):
    for f in sorted(files):
      if not f.endswith('.wav'):
        continue
      path = os.path.join(root, f)
      try:
        n = ravdess.parse_name(path)
      except ravdess.RavdessNameError as e:
        print(f'skipping {e}', file=sys.stderr)
        continue
      if n.modality == 3 and n.vocal_channel == 1:
        out.append((path, n.actor, n.label))
  if not out:
    raise FileNotFoundError(f'{data_dir}: no RAVDESS speech wavs (03-01-*.wav) found')
  return sorted(out)


def load_features(items, cache_dir: str = '') -> tuple[np.ndarray, list]:
  """Features of every (path, actor, label), cached per file in cache_dir."""
  import soundfile as sf
  rows, names = [], None
  for path, _, _ in items:
    cached = ''
    if cache_dir:
      key = hashlib.sha1(f'{os.path.abspath(path)}:{os.path.getmtime(path)}'.encode()).hexdigest()
      cached = os.path.join(cache_dir, key[:16] + '.npz')
    if cached and os.path.exists(cached):
      z = np.load(cached)
      x, n = z['x'], list(z['names'])
    else:
      try:
        wave, sr = sf.read(path, dtype='float32')
        x, n = utterance_features(wave, sr)
      except Exception as e:
        raise ValueError(f'{path}: cannot extract features: {e}') from e
      if cached:
        os.makedirs(cache_dir, exist_ok=True)
        np.savez(cached, x=x, names=np.asarray(n))
    names = names or n
    rows.append(x)
  return np.stack(rows), names


def loao_folds(actors) -> list[dict]:
  """The deep model's folds: fold k tests actor k, validates on the next, trains on the rest.

  Mirrors data_pipelines.folds.make_plan with num_folds = len(actors), val_groups=-1.
  """
  groups = sorted(set(int(a) for a in actors))
  if len(groups) < 3:
    raise ValueError(f'leave-one-actor-out with a validation actor needs >= 3 actors, got {groups}')
  k = len(groups)
  return [{'index': i, 'test': [groups[i]], 'validation': [groups[(i + 1) % k]],
           'train': [groups[(i + j) % k] for j in range(2, k)]} for i in range(k)]


def _model(kind: str, params: dict, n_features: int, seed: int):
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  from sklearn.svm import SVC
  if kind == 'lr':
    clf = LogisticRegression(C=params['C'], max_iter=5000, random_state=seed)
  elif kind == 'svm':
    g = params['gamma']
    clf = SVC(C=params['C'], kernel='rbf', gamma=g if g == 'scale' else g / n_features,
              random_state=seed)
  else:
    raise ValueError(f'unknown model {kind!r}')
  # Statistics of the training actors only; the scaler is refitted in every fit.
  return make_pipeline(StandardScaler(), clf)


def _grid(kind: str):
  grid = LR_GRID if kind == 'lr' else SVM_GRID
  keys = sorted(grid)
  return [dict(zip(keys, v)) for v in itertools.product(*(grid[k] for k in keys))]


def uar(y_true, y_pred, num_classes: int) -> float:
  """Unweighted average recall over the classes present in y_true."""
  recalls = [np.mean(y_pred[y_true == c] == c) for c in range(num_classes) if np.any(y_true == c)]
  return float(np.mean(recalls))


def select(kind: str, x, y, actors, fit_actors, protocol: str, val_actors=(), seed: int = 0,
           num_classes: int = 8) -> tuple[dict, float]:
  """(best params, their selection UAR), using only examples of fit_actors + val_actors."""
  best, best_score = None, -1.0
  for params in _grid(kind):
    if protocol == 'val':
      tr, va = np.isin(actors, fit_actors), np.isin(actors, val_actors)
      m = _model(kind, params, x.shape[1], seed).fit(x[tr], y[tr])
      score = uar(y[va], m.predict(x[va]), num_classes)
    elif protocol == 'inner':
      pool = list(fit_actors)
      scores = []
      for held in pool:
        tr = np.isin(actors, [a for a in pool if a != held])
        va = actors == held
        m = _model(kind, params, x.shape[1], seed).fit(x[tr], y[tr])
        scores.append(uar(y[va], m.predict(x[va]), num_classes))
      score = float(np.mean(scores))
    else:
      raise ValueError(f'unknown protocol {protocol!r}')
    if score > best_score + 1e-9:  # ties keep the earlier (smaller C) setting
      best, best_score = params, score
  return best, best_score


def run_fold(kind: str, protocol: str, fold: dict, x, y, actors, seed: int = 0,
             num_classes: int = 8) -> dict:
  if protocol in ('val', 'refit'):
    fit_actors, val_actors = fold['train'], fold['validation']
    params, sel = select(kind, x, y, actors, fit_actors, 'val', val_actors, seed, num_classes)
    if protocol == 'refit':
      fit_actors = fold['train'] + fold['validation']
  elif protocol == 'inner':
    fit_actors, val_actors = fold['train'] + fold['validation'], ()
    params, sel = select(kind, x, y, actors, fit_actors, 'inner', (), seed, num_classes)
  else:
    raise ValueError(f'unknown protocol {protocol!r}')
  tr, te = np.isin(actors, fit_actors), np.isin(actors, fold['test'])
  m = _model(kind, params, x.shape[1], seed).fit(x[tr], y[tr])
  pred = m.predict(x[te])
  return {'fold': fold['index'], 'test_actors': fold['test'], 'fit_actors': list(fit_actors),
          'val_actors': list(val_actors), 'params': params, 'selection_uar': sel,
          'accuracy': float(np.mean(pred == y[te])), 'uar': uar(y[te], pred, num_classes),
          'n_train': int(tr.sum()), 'n_test': int(te.sum())}


def feature_group(names, group: str) -> np.ndarray:
  """Column indices of the statistics in FEATURE_GROUPS[group]."""
  if group not in FEATURE_GROUPS:
    raise ValueError(f'unknown feature group {group!r}; one of {sorted(FEATURE_GROUPS)}')
  cols = np.array([i for i, n in enumerate(names) if re.match(FEATURE_GROUPS[group], n)], int)
  if not cols.size:
    raise ValueError(f'feature group {group!r} matches no feature')
  return cols


def speaker_normalize(x: np.ndarray, actors: np.ndarray) -> np.ndarray:
  """Each actor's rows z-scored by that actor's own mean and std (all of its clips,
  labels unused), as the deep model's audio_norm='speaker'."""
  z = np.empty_like(x, dtype=np.float64)
  for a in np.unique(actors):
    m = actors == a
    z[m] = (x[m] - x[m].mean(0)) / (x[m].std(0) + 1e-8)
  return z


def write_results(out: str, table: str, payload: dict) -> None:
  """`<out>.md` (the table) and `<out>.json` (everything), creating the folder."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + '.md', 'w') as f:
    f.write(table)
  with open(out + '.json', 'w') as f:
    json.dump(payload, f, indent=2)


def _mean_std(v):
  v = np.asarray(v, float)
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def markdown(results: dict) -> str:
  lines = ['| model | protocol | ' + ' | '.join(f'fold {r["fold"]} (test {r["test_actors"][0]:02d}) acc / UAR'
                                           for r in next(iter(results.values()))['folds'])
           + ' | acc mean ± std | UAR mean ± std |',
           '|' + '---|' * (4 + len(next(iter(results.values()))['folds']))]
  for name, res in results.items():
    cells = [f'{100 * r["accuracy"]:.1f} / {100 * r["uar"]:.1f}' for r in res['folds']]
    a, u = res['accuracy'], res['uar']
    lines.append(f'| {res["model"]} | {res["protocol"]} | ' + ' | '.join(cells)
                 + f' | {100 * a[0]:.1f} ± {100 * a[1]:.1f} | {100 * u[0]:.1f} ± {100 * u[1]:.1f} |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data', default='../shared/data/ravdess',
                 help='folder with the RAVDESS audio speech wavs (searched recursively)')
  p.add_argument('--actors', default='', help='comma-separated actor ids to use (default: all found)')
  p.add_argument('--models', default='lr,svm')
  p.add_argument('--protocols', default='val,inner')
  p.add_argument('--groups', default='all',
                 help=f'comma-separated feature subsets, of {sorted(FEATURE_GROUPS)}')
  p.add_argument('--speaker_norm', action='store_true',
                 help="z-score every actor's statistics by its own clips (audio_norm='speaker')")
  p.add_argument('--cache', default='/tmp/ravdess_utterance_features',
                 help="per-file feature cache ('' disables)")
  p.add_argument('--out', default='', help='write <out>.md and <out>.json')
  args = p.parse_args(argv)

  items = list_wavs(args.data)
  if args.actors:
    keep = {int(a) for a in args.actors.split(',')}
    items = [it for it in items if it[1] in keep]
  t0 = time.time()
  x, names = load_features(items, args.cache)
  actors = np.array([a for _, a, _ in items])
  y = np.array([lab for _, _, lab in items])
  if args.speaker_norm:
    x = speaker_normalize(x, actors)
  print(f'{len(items)} clips, {len(set(actors))} actors, {x.shape[1]} features '
        f'({time.time() - t0:.0f} s)', file=sys.stderr)
  folds = loao_folds(actors)
  results = {}
  groups = args.groups.split(',')
  for group in groups:
    cols = feature_group(names, group)
    for kind in args.models.split(','):
      for protocol in args.protocols.split(','):
        t0 = time.time()
        per_fold = [run_fold(kind, protocol, f, x[:, cols], y, actors) for f in folds]
        model = {'lr': 'logistic regression', 'svm': 'RBF SVM'}[kind]
        key = f'{kind}_{protocol}' if groups == ['all'] else f'{group}_{kind}_{protocol}'
        results[key] = {
            'model': model if groups == ['all'] else f'{model}, {group} ({cols.size})',
            'protocol': protocol, 'features': group, 'n_features': int(cols.size),
            'folds': per_fold, 'accuracy': _mean_std([r['accuracy'] for r in per_fold]),
            'uar': _mean_std([r['uar'] for r in per_fold]), 'wall_s': time.time() - t0}
  table = markdown(results)
  print(table)
  if args.out:
    write_results(args.out, table, {
        'data': os.path.abspath(args.data), 'n_clips': len(items),
        'speaker_norm': bool(args.speaker_norm), 'n_features': len(names),
        'feature_names': names, 'results': results})


if __name__ == '__main__':
  main()

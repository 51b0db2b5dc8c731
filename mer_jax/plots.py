"""Figures: confusion matrices, training curves, attention maps, robustness curves,
emotion timelines.

Everything renders off-screen (Agg) to PNG so it works on headless machines.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def _plt():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path: str):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  _plt().close(fig)
  return path


def confusion_matrix(cm, label_names: Sequence[str], path: str, title: str = '') -> str:
  """Row-normalised confusion matrix (true class per row) with the raw counts printed."""
  plt = _plt()
  cm = np.asarray(cm, np.float64)
  rows = cm.sum(axis=1, keepdims=True)
  norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
  n = len(label_names)
  fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
  im = ax.imshow(norm, cmap='Blues', vmin=0.0, vmax=1.0)
  ax.set_xticks(range(n), label_names, rotation=45, ha='right')
  ax.set_yticks(range(n), label_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  for i in range(n):
    for j in range(n):
      ax.text(j, i, f'{int(cm[i, j])}', ha='center', va='center', fontsize=8,
              color='white' if norm[i, j] > 0.5 else 'black')
  fig.colorbar(im, ax=ax, fraction=0.046, label='fraction of the true class')
  ax.set_title(title or 'confusion matrix')
  return _save(fig, path)


def training_curves(metrics_path: str, path: str, title: str = '') -> str:
  """Training loss and accuracy per logged step, validation accuracy and UAR per
  evaluation, from a run's metrics.jsonl."""
  import json
  plt = _plt()
  rows = {'train': [], 'val': []}
  with open(metrics_path) as f:
    for line in f:
      r = json.loads(line)
      if r.get('kind') in rows:
        rows[r['kind']].append(r)
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
  tr = rows['train']
  if tr:
    steps = [r['step'] for r in tr]
    ax_loss.plot(steps, [r.get('loss', np.nan) for r in tr], label='train loss')
    ax_acc.plot(steps, [r.get('accuracy', np.nan) for r in tr], alpha=0.5, label='train accuracy')
  va = rows['val']
  if va:
    steps = [r['step'] for r in va]
    ax_acc.plot(steps, [r.get('accuracy', np.nan) for r in va], 'o-', label='val accuracy')
    ax_acc.plot(steps, [r.get('macro_recall', np.nan) for r in va], 's--', label='val UAR')
  ax_loss.set_xlabel('step')
  ax_loss.set_ylabel('loss')
  ax_acc.set_xlabel('step')
  ax_acc.set_ylabel('fraction')
  ax_acc.set_ylim(0.0, 1.0)
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(title or 'training curves')
  return _save(fig, path)


def attention_maps(maps: dict, path: str, title: str = '', query_label: str = 'query',
                   key_label: str = 'key') -> str:
  """One panel per map (averaged over heads) plus its heads, as [heads, Tq, Tk] arrays."""
  plt = _plt()
  names = list(maps)
  heads = max(np.asarray(maps[n]).shape[0] for n in names)
  fig, axes = plt.subplots(len(names), heads + 1, figsize=(2.6 * (heads + 1), 2.6 * len(names)),
                           squeeze=False)
  for r, name in enumerate(names):
    m = np.asarray(maps[name], np.float32)
    panels = [('mean over heads', m.mean(axis=0))] + [(f'head {h}', m[h]) for h in range(m.shape[0])]
    for c in range(heads + 1):
      ax = axes[r, c]
      if c >= len(panels):
        ax.axis('off')
        continue
      label, img = panels[c]
      ax.imshow(img, aspect='auto', cmap='viridis', interpolation='nearest')
      ax.set_title(f'{name}\n{label}' if c == 0 else label, fontsize=8)
      q, k = query_label, key_label
      if '_to_' in name:  # 'attention_audio_to_video': audio queries attend to video keys
        src, dst = name.split('/')[-1].replace('attention_', '').split('_to_', 1)
        q, k = f'{src} time', f'{dst} time'
      ax.set_xlabel(k, fontsize=7)
      ax.set_ylabel(q, fontsize=7)
      ax.tick_params(labelsize=6)
  fig.suptitle(title or 'attention', fontsize=9)
  return _save(fig, path)


def robustness(curves: dict, path: str, title: str = '', missing: dict | None = None) -> str:
  """Accuracy against the corruption rate.

  `curves`: {label: (rates, means, stds)} with accuracies in [0, 1]; drawn
  with a shaded band of one standard deviation. `missing`: {label: (mean, std)}
  of the modality removed altogether, drawn as a cross at 100 % in the
  colour of the curve with the same label.
  """
  plt = _plt()
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  missing = missing or {}
  for label, (rates, means, stds) in curves.items():
    rates, means, stds = (np.asarray(x, np.float64) * 100 for x in (rates, means, stds))
    style = '--' if 'video' in label else '-'
    line, = ax.plot(rates, means, style, marker='o', markersize=3, label=label)
    ax.fill_between(rates, means - stds, means + stds, alpha=0.15, color=line.get_color())
    if label in missing:
      m, sd = (100 * v for v in missing[label])
      ax.errorbar([100], [m], yerr=[sd], marker='x', markersize=7, color=line.get_color(),
                  capsize=3)
  ax.set_xlabel('values replaced by random values (%); x at 100: modality missing')
  ax.set_ylabel('accuracy (%)')
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  ax.set_title(title or 'robustness to a corrupted modality')
  return _save(fig, path)


def timeline(times_s, probs, label_names: Sequence[str], path: str, title: str = '',
             duration_s: float = 0.0) -> str:
  """Class probabilities of each window, plotted at the window centres over [0, duration]."""
  plt = _plt()
  probs = np.asarray(probs)
  fig, ax = plt.subplots(figsize=(8, 3.6))
  for c, name in enumerate(label_names):
    ax.plot(times_s, probs[:, c], marker='.', label=name)
  if duration_s:
    ax.set_xlim(0, duration_s)
  ax.set_xlabel('time (s, window centre)')
  ax.set_ylabel('probability')
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=min(len(label_names), 4), loc='upper right')
  ax.set_title(title or 'emotion timeline')
  return _save(fig, path)

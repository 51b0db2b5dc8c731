"""Where a result came from: config, code and data, recorded in every results file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_version(repo: str = REPO) -> dict:
  """{'commit', 'dirty'} of the checkout holding this code; 'unknown' outside git."""
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo, capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    status = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=repo,
                            capture_output=True, text=True, timeout=10, check=True).stdout
    return {'commit': commit or 'unknown', 'dirty': bool(status.strip())}
  except (OSError, subprocess.SubprocessError):
    return {'commit': 'unknown', 'dirty': None}


def config_hash(config) -> str:
  """sha256 of the config's canonical JSON: equal configs, equal hashes."""
  text = json.dumps(json.loads(config.to_json_best_effort()), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def record(config, data) -> dict:
  """The provenance block of results.json and of every table row."""
  fold = None
  if data.fold_plan:
    p = data.fold_plan
    fold = {'index': p['index'], 'num_folds': p['num_folds'], 'group_key': p['group_key'],
            'train': p['train'], 'validation': p['validation'], 'test': p['test']}
    if p.get('val_key'):
      fold.update(val_key=p['val_key'], val_values=p['val_values'])
  return {
      'paper': config.get('paper', ''),
      'config_arg': config.get('arg', ''),
      'preset': config.get('preset', ''),
      'variant': config.get('variant', ''),
      'seed': int(config.seed),
      'fold': fold,
      'mask_modalities': config.get('mask_modalities', ''),
      'config_hash': config_hash(config),
      'code': code_version(),
      'dataset': data.provenance(),
  }

"""Scores one trained run under the corruption sweep of paper 003 Table V.

  python -m experiments.robustness_eval --config=configs/avt_ca.py:tiny --workdir=DIR \
      [--rates=0.1,0.3,0.5] [--split=test] [--checkpoint=best]

Writes DIR/robustness.json: one row per condition (clean; each rate for audio
and for video; each modality missing) with its metrics. `experiments.run`
calls this for experiments with `robustness=True`.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config the run was trained with.')
flags.DEFINE_string('workdir', None, 'The run directory (with checkpoints).')
flags.DEFINE_string('rates', '0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9', 'Corruption rates.')
flags.DEFINE_string('modalities', 'audio,video', 'Modalities to corrupt, one at a time.')
flags.DEFINE_bool('missing', True, 'Also score each modality missing.')
flags.DEFINE_string('split', 'test', 'Split to score.')
flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a step.")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  from mer_jax import contract as log, evaluate
  log.quiet_libraries()
  conds = evaluate.robustness_conditions(
      tuple(float(r) for r in FLAGS.rates.split(',') if r),
      tuple(m for m in FLAGS.modalities.split(',') if m), FLAGS.missing)
  rows = evaluate.robustness_sweep(FLAGS.config, FLAGS.workdir, conds, FLAGS.split,
                                   FLAGS.checkpoint)
  tmp = os.path.join(FLAGS.workdir, 'robustness.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(rows, f, indent=2)
  os.replace(tmp, os.path.join(FLAGS.workdir, 'robustness.json'))  # done only when complete
  for r in rows:
    print(f"{r['kind']:8s} {r['modality'] or 'clean':6s} {r['rate']:.1f}  "
          f"accuracy {100 * r['accuracy']:.2f}")


if __name__ == '__main__':
  app.run(main)

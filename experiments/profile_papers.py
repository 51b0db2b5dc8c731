"""Profile table of the five papers' train and eval steps at their paper shapes.

  python -m experiments.profile_papers                 # 'paper_shapes' presets
  python -m experiments.profile_papers --tiny          # 'tiny' presets, seconds
  python -m experiments.profile_papers --papers=002,003 --batch_size=8 --out=prof.json
  python -m experiments.profile_papers --flops_only     # FLOPs per step only, no compile
  python -m experiments.profile_papers --papers=001 --out=new.json --compare=old.json

Synthetic random batches of each config's input shapes (its builder's); no dataset
needed. Columns as in `mer_jax.profiling`. A paper whose config is missing or
fails is shown with its error and the others go on.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from experiments import definitions as defs

FLAGS = flags.FLAGS
flags.DEFINE_bool('tiny', False, "Use the 'tiny' presets (quick check) instead of 'paper_shapes'.")
flags.DEFINE_string('preset', '', 'Any other preset name (overrides --tiny).')
flags.DEFINE_string('papers', '000,001,002,003,004', 'Papers to profile.')
flags.DEFINE_integer('batch_size', 0, 'Batch size (default: each config\'s).')
flags.DEFINE_integer('repeats', 5, 'Timed steps after one warm-up step.')
flags.DEFINE_string('out', '', 'Also write the rows as JSON here.')
flags.DEFINE_bool('flops_only', False, 'Only lower on abstract shapes: FLOPs and bytes per '
                  'step, no compile, no timing (seconds even at paper shapes on a CPU).')
flags.DEFINE_string('compare', '', 'A JSON file from an earlier --out: print it beside this run.')
flags.DEFINE_string('trace_dir', '', 'Write a jax.profiler trace and optimised HLO per paper here.')


def profile_papers(preset: str, papers, batch_size: int = 0, repeats: int = 5,
                   trace_dir: str = '', flops_only: bool = False) -> list[dict]:
  from mer_jax import profiling
  rows = []
  for paper in papers:
    ref = f'{defs.PAPER_CONFIGS[paper]}:{preset}'
    label = f'{paper} {defs.MODEL_NAMES[paper]}'
    try:
      config = defs.load_config(ref)
      out = os.path.join(trace_dir, paper) if trace_dir else ''
      if flops_only:
        found = profiling.cost_only(config, batch_size or None)
      else:
        found = profiling.profile_config(config, batch_size or None, repeats, out_dir=out,
                                         trace=bool(out), hlo=bool(out))
      for r in found:
        rows.append(dict(r, paper=label))
    except Exception as e:  # keep going: one paper's failure should not hide the others
      rows.append({'paper': label, 'model': ref, 'error': f'{type(e).__name__}: {e}'})
    print(profiling.format_table(rows[-2:] if 'error' not in rows[-1] else rows[-1:]),
          flush=True)
  return rows


def main(argv):
  del argv
  from mer_jax import contract as log, profiling
  log.quiet_libraries()
  import jax
  preset = FLAGS.preset or ('tiny' if FLAGS.tiny else 'paper_shapes')
  papers = [p for p in FLAGS.papers.split(',') if p]
  rows = profile_papers(preset, papers, FLAGS.batch_size, FLAGS.repeats, FLAGS.trace_dir,
                        FLAGS.flops_only)
  print()
  print(f"preset '{preset}' on {jax.device_count()}x {jax.devices()[0].device_kind}")
  print(profiling.format_table(rows))
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      json.dump(rows, f, indent=2)
  if FLAGS.compare:
    with open(FLAGS.compare) as f:
      before = json.load(f)
    print()
    print(profiling.format_comparison(before, rows, (os.path.basename(FLAGS.compare), 'this run')))


if __name__ == '__main__':
  app.run(main)

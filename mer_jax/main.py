"""Command-line entry point; the logic lives in the library.

  python -m mer_jax.main --config=configs/avt_ca.py:synthetic --workdir=DIR \
      [--mode=train|eval|profile] [--config.optim.learning_rate=1e-3 ...]
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/avt_ca.py:synthetic.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'profile'], 'What to do with the config.')
flags.DEFINE_string('eval_split', 'test', 'eval mode: split to evaluate.')
flags.DEFINE_string('checkpoint', 'best', "eval mode: 'best', 'latest' or a step number.")
flags.DEFINE_string('eval_data_dir', '', 'eval mode: evaluate on the dataset built under this '
                    'TFDS data_dir instead of the config\'s (e.g. unseen speakers).')
flags.DEFINE_string('eval_dataset', '', 'eval mode: TFDS name of another dataset to score.')
flags.DEFINE_integer('example_index', -1, 'eval mode: also plot the attention maps of this '
                     'example of the split (models that sow attention).')
flags.DEFINE_integer('profile_batch_size', 0, 'profile mode: batch size (default: the config\'s).')
flags.DEFINE_integer('profile_repeats', 5, 'profile mode: timed steps after warm-up.')
flags.DEFINE_bool('profile_trace', False, 'profile mode: write a jax.profiler trace '
                  '(TensorBoard / Perfetto) under workdir/profile.')
flags.DEFINE_bool('profile_hlo', False, 'profile mode: write the optimised HLO under workdir/profile.')
flags.DEFINE_string('coordinator_address', '', 'host:port of process 0 for multi-process runs.')
flags.DEFINE_integer('num_processes', 1, 'Processes in a multi-process run.')
flags.DEFINE_integer('process_id', 0, 'This process\'s index in a multi-process run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mer_jax import contract as log
  log.quiet_libraries()
  from mer_jax import sharding
  sharding.maybe_initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
  if FLAGS.mode == 'train':
    from mer_jax import train
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == 'profile':
    from mer_jax import profiling
    profiling.profile_main(FLAGS.config, FLAGS.workdir, batch_size=FLAGS.profile_batch_size,
                           repeats=FLAGS.profile_repeats, trace=FLAGS.profile_trace,
                           hlo=FLAGS.profile_hlo)
  else:
    from mer_jax import evaluate
    evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir, split=FLAGS.eval_split,
                                 checkpoint=FLAGS.checkpoint, data_dir=FLAGS.eval_data_dir,
                                 dataset=FLAGS.eval_dataset, example_index=FLAGS.example_index)


if __name__ == '__main__':
  app.run(main)

"""TFDS's own `build` command, runnable without the CLI's optional extras.

`tfds build` imports apache-beam and mlcroissant at start-up for its other
subcommands; this entry point runs the same `build` command without them:

  python -m data_pipelines.build ravdess --config=speech_av \
      --manual_dir=/data/RAVDESS --data_dir=~/tensorflow_datasets

A dataset is named by its builder name (`ravdess`, `crema_d`, ...; see
data_pipelines/registry.py) or by its module path
(`data_pipelines/builders/ravdess.py`). Every flag of `tfds build` is
accepted, plus

  --beam_runner=RUNNER   run the per-file work and the writing as an Apache
      Beam pipeline (`pip install -e .[beam]`). DirectRunner / PrismRunner run
      locally with one worker process per core (MER_JAX_BUILD_WORKERS);
      DataflowRunner, FlinkRunner, SparkRunner take their settings from
      `--beam_pipeline_options=project=...,region=...,temp_location=...`.

See data_pipelines/README.md for examples.
"""

import os
import sys

from absl import app

_BUILDERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'builders')


_NOT_BUILDERS = ('__init__', 'builder_lib', 'paper_features', 'synthetic_render')


def builder_names() -> list:
  return sorted(f[:-3] for f in os.listdir(_BUILDERS_DIR)
                if f.endswith('.py') and f[:-3] not in _NOT_BUILDERS)


def builder_name_of(arg: str):
  """`ravdess` or `data_pipelines/builders/ravdess.py` -> 'ravdess'; else None."""
  base = arg.split('/')[0] if not arg.endswith('.py') else None
  if arg.endswith('.py') and os.path.isfile(arg):
    if os.path.dirname(os.path.abspath(arg)) == _BUILDERS_DIR:
      base = os.path.basename(arg)[:-3]
  return base if base in builder_names() else None


def rewrite_argv(argv):
  """Maps dataset names/paths to registered names and --beam_runner to Beam options.

  A builder of this package, named or given by path, is imported by its
  package name (`--imports=data_pipelines.builders.NAME`), so that worker
  processes can import it too. Sets MER_JAX_BUILD_RUNNER=beam when a Beam
  runner is asked for (by --beam_runner or --beam_pipeline_options).
  """
  from data_pipelines.builders import builder_lib
  out, runner, options, imports = [argv[0]], None, [], []
  args = iter(argv[1:])
  for arg in args:
    if arg.startswith('--beam_runner'):
      runner = arg.split('=', 1)[1] if '=' in arg else next(args, '')
      if not runner:
        raise SystemExit('data_pipelines.build: --beam_runner needs a runner name')
      continue
    if arg.startswith('--beam_pipeline_options'):
      value = arg.split('=', 1)[1] if '=' in arg else next(args, '')
      options += [o for o in value.split(',') if o]
      continue
    if arg.startswith(('--imports', '--module_import')) or arg == '-i':
      value = arg.split('=', 1)[1] if '=' in arg else next(args, '')
      imports += [m for m in value.split(',') if m]
      continue
    name = None if arg.startswith('-') else builder_name_of(arg)
    if name:
      imports.append(f'data_pipelines.builders.{name}')
      arg = name + arg[len(arg.split('/')[0]):] if not arg.endswith('.py') else name
    elif not arg.startswith('-') and arg.endswith('.py') and not os.path.isfile(arg):
      raise SystemExit(f'data_pipelines.build: {arg} does not exist; builders: '
                       f'{builder_names()}')
    out.append(arg)
  if imports:
    out.append('--imports=' + ','.join(imports))
  given_runner = next((o.split('=', 1)[1] for o in options
                       if o.lstrip('-').startswith('runner=')), None)
  if runner or options:
    os.environ[builder_lib.RUNNER_ENV] = 'beam'
    # Beam's local worker processes import the builders too.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get('PYTHONPATH', '')
    if root not in path.split(os.pathsep):
      os.environ['PYTHONPATH'] = os.pathsep.join([root] + ([path] if path else []))
    options = [o for o in options if not o.lstrip('-').startswith('runner=')]
    flags = builder_lib.beam_pipeline_flags(runner or given_runner or 'DirectRunner',
                                            options=options)
    out.append('--beam_pipeline_options=' + ','.join(f.lstrip('-') for f in flags))
  return out


def main(args) -> None:
  import tensorflow_datasets as tfds
  tfds.core.visibility.set_availables([tfds.core.visibility.DatasetType.TFDS_PUBLIC,
                                       tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC])
  args.execute()


def _parse(argv):
  from tensorflow_datasets.scripts.cli import build, cli_utils
  parser = cli_utils.make_flags_parser(build.Args, description='Build a TFDS dataset')
  return parser(rewrite_argv(argv))


if __name__ == '__main__':
  # The builders import `data_pipelines` (also in Beam's worker processes).
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  app.run(main, flags_parser=_parse)

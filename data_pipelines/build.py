"""TFDS's own `build` command, runnable without the CLI's optional extras.

`tfds build` imports apache-beam and mlcroissant at start-up for its other
subcommands; this entry point runs the same `build` command without them:

  python -m data_pipelines.build data_pipelines/builders/ravdess.py \
      --config=speech_av --manual_dir=/data/RAVDESS --data_dir=~/tensorflow_datasets

Every flag of `tfds build` is accepted. With `pip install apache-beam mlcroissant`
the standard `tfds build` takes the same arguments.
"""

from absl import app


def main(args) -> None:
  import tensorflow_datasets as tfds
  tfds.core.visibility.set_availables([tfds.core.visibility.DatasetType.TFDS_PUBLIC,
                                       tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC])
  args.execute()


def _parse(argv):
  from tensorflow_datasets.scripts.cli import build, cli_utils
  parser = cli_utils.make_flags_parser(build.Args, description='Build a TFDS dataset')
  return parser(argv)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse)

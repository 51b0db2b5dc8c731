"""Dataset builds on Apache Beam's local runner give exactly the plain build's examples.

Also: `python -m data_pipelines.build` accepts a dataset's name or its module path.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from data_pipelines import build as build_cli  # noqa: E402
from data_pipelines.builders import builder_lib  # noqa: E402
from tests.test_data_fixture_builders import deap_dir, iemocap_dir  # noqa: E402,F401


def _require_beam():
  try:
    import apache_beam  # noqa: F401
  except ImportError:
    pytest.skip('apache_beam is not installed (optional extra: pip install -e .[beam])')


def _examples(builder):
  out = {}
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
      out[(split, ex['id'].decode())] = ex
  return out


def _assert_same(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    assert sorted(a[key]) == sorted(b[key]), key
    for field in a[key]:
      np.testing.assert_array_equal(a[key][field], b[key][field], err_msg=f'{key} {field}')


def _build(name, data_dir, monkeypatch, runner, beam_options=(), **config):
  monkeypatch.setenv(builder_lib.RUNNER_ENV, runner)
  builder = tfds.builder(name, data_dir=str(data_dir))
  if runner == 'beam':
    dl = builder_lib.beam_download_config('DirectRunner', num_workers=2,
                                          options=beam_options, **config)
  else:
    dl = tfds.download.DownloadConfig(**config)
  builder.download_and_prepare(download_config=dl)
  return builder


def test_ravdess_beam_equals_plain(shared_data, tmp_path, monkeypatch):
  _require_beam()
  from data_pipelines.builders import ravdess  # noqa: F401  (registers the builder)
  monkeypatch.setenv(builder_lib.WORKERS_ENV, '1')
  monkeypatch.setenv('MER_JAX_NO_PROGRESS', '1')
  src = shared_data / 'ravdess' / 'Audio_Speech_Actors_01-24'
  manual = tmp_path / 'manual'
  for actor in ('01', '02', '03', '04'):
    os.makedirs(manual / f'Actor_{actor}')
    for f in sorted(os.listdir(src / f'Actor_{actor}'))[:2]:
      os.symlink(src / f'Actor_{actor}' / f, manual / f'Actor_{actor}' / f)
  bad = manual / 'Actor_04' / '03-01-05-01-01-01-04.wav'
  bad.write_bytes(b'not a wav')  # must be skipped and reported by both runners
  name = 'ravdess/speech_audio_small'
  plain = _build(name, tmp_path / 'plain', monkeypatch, 'local', manual_dir=str(manual))
  beam = _build(name, tmp_path / 'beam', monkeypatch, 'beam', manual_dir=str(manual))
  a, b = _examples(plain), _examples(beam)
  assert len(a) == 8
  assert {s: v.num_examples for s, v in beam.info.splits.items()} == {
      'train': 4, 'validation': 2, 'test': 2}
  _assert_same(a, b)
  reports = [builder_lib.read_skip_report(x.data_dir) for x in (plain, beam)]
  assert [r['num_skipped'] for r in reports] == [1, 1]
  assert json.dumps(reports[0], sort_keys=True) == json.dumps(reports[1], sort_keys=True)
  assert str(bad) in reports[1]['skipped']['files'][0]['path']


def test_synthetic_av_beam_equals_plain(tmp_path, monkeypatch):
  _require_beam()
  from data_pipelines.builders import synthetic_av  # noqa: F401
  name = 'synthetic_av/small'
  plain = _build(name, tmp_path / 'plain', monkeypatch, 'local')
  # One in-process worker: the multi-process path is covered above, and each
  # worker process pays TensorFlow's import.
  beam = _build(name, tmp_path / 'beam', monkeypatch, 'beam',
                beam_options=['direct_num_workers=1', 'direct_running_mode=in_memory'])
  a, b = _examples(plain), _examples(beam)
  assert len(a) == 12 * 6 * 2
  _assert_same(a, b)


def test_beam_runner_env_rejects_unknown(monkeypatch):
  monkeypatch.setenv(builder_lib.RUNNER_ENV, 'spark')
  with pytest.raises(ValueError, match='MER_JAX_BUILD_RUNNER'):
    builder_lib.use_beam()
  monkeypatch.setenv(builder_lib.RUNNER_ENV, 'local')
  assert not builder_lib.use_beam()


def test_beam_pipeline_flags(monkeypatch):
  flags = builder_lib.beam_pipeline_flags('DirectRunner', num_workers=3)
  assert flags == ['--runner=DirectRunner', '--direct_num_workers=3',
                   '--direct_running_mode=multi_processing']
  monkeypatch.setenv(builder_lib.WORKERS_ENV, '2')  # the default: the build's worker count
  assert builder_lib.beam_pipeline_flags()[1] == '--direct_num_workers=2'
  cluster = builder_lib.beam_pipeline_flags(
      'DataflowRunner', options=['project=p', 'region=europe-west4'])
  assert cluster == ['--runner=DataflowRunner', '--project=p', '--region=europe-west4']


def test_build_cli_accepts_names_and_paths(monkeypatch):
  monkeypatch.setenv(builder_lib.RUNNER_ENV, 'local')  # restored after the test
  monkeypatch.delenv(builder_lib.RUNNER_ENV)
  monkeypatch.setenv('PYTHONPATH', os.environ.get('PYTHONPATH', ''))
  by_name = build_cli.rewrite_argv(['build', 'ravdess', '--config=speech_audio',
                                    '--manual_dir=/m'])
  by_path = build_cli.rewrite_argv(['build', 'data_pipelines/builders/ravdess.py',
                                    '--config=speech_audio', '--manual_dir=/m'])
  want = ['build', 'ravdess', '--config=speech_audio', '--manual_dir=/m',
          '--imports=data_pipelines.builders.ravdess']
  assert by_name == want and by_path == want
  assert os.environ.get(builder_lib.RUNNER_ENV) is None
  with pytest.raises(SystemExit, match='builders:'):
    build_cli.rewrite_argv(['build', 'data_pipelines/builders/nope.py'])
  beam = build_cli.rewrite_argv(['build', 'crema_d', '--beam_runner=DataflowRunner',
                                 '--beam_pipeline_options=project=p,temp_location=gs://b/t'])
  assert beam == ['build', 'crema_d', '--imports=data_pipelines.builders.crema_d',
                  '--beam_pipeline_options=runner=DataflowRunner,project=p,'
                  'temp_location=gs://b/t']
  assert os.environ[builder_lib.RUNNER_ENV] == 'beam'
  both = build_cli.rewrite_argv(['build', 'deap', '--imports=my.module'])
  assert both == ['build', 'deap', '--imports=data_pipelines.builders.deap,my.module']


def test_download_config_plain_and_beam(monkeypatch):
  monkeypatch.setenv(builder_lib.RUNNER_ENV, 'local')
  dl = builder_lib.download_config('/m')
  assert str(dl.manual_dir) == '/m' and dl.beam_options is None
  assert not builder_lib.use_beam()
  _require_beam()
  dl = builder_lib.download_config('/m', 'DirectRunner', 'direct_num_workers=1')
  assert builder_lib.use_beam()
  opts = dl.beam_options.get_all_options()
  assert opts['runner'] == 'DirectRunner' and opts['direct_num_workers'] == 1
  assert opts['direct_running_mode'] == 'multi_processing'


@pytest.mark.parametrize('name,fixture', [('deap/valence_arousal', 'deap_dir'),
                                          ('iemocap/4class_small', 'iemocap_dir')])
def test_fixture_builders_beam_equals_plain(name, fixture, request, tmp_path, monkeypatch):
  # The raw-file fixtures of test_data_fixture_builders (DEAP pickles with a
  # truncated subject file, whose subject must get no split share either way;
  # IEMOCAP sessions with wavs and dialog videos), built both ways.
  _require_beam()
  manual = request.getfixturevalue(fixture)
  monkeypatch.setenv(builder_lib.WORKERS_ENV, '1')
  monkeypatch.setenv('MER_JAX_NO_PROGRESS', '1')
  plain = _build(name, tmp_path / 'plain', monkeypatch, 'local', manual_dir=str(manual))
  beam = _build(name, tmp_path / 'beam', monkeypatch, 'beam', manual_dir=str(manual),
                beam_options=['direct_num_workers=1', 'direct_running_mode=in_memory'])
  a = _examples(plain)
  assert a
  _assert_same(a, _examples(beam))
  assert (builder_lib.read_skip_report(plain.data_dir)['num_skipped']
          == builder_lib.read_skip_report(beam.data_dir)['num_skipped'])

"""The project's logger: our progress lines at INFO, libraries' chatter kept at WARNING."""

import logging as _logging
import sys

logger = _logging.getLogger('mer_jax')
if not logger.handlers:
  _handler = _logging.StreamHandler(sys.stderr)
  _handler.setFormatter(_logging.Formatter('%(asctime)s %(levelname).1s %(message)s', '%H:%M:%S'))
  logger.addHandler(_handler)
  logger.setLevel(_logging.INFO)
  logger.propagate = False


def quiet_libraries():
  """absl-logging libraries (orbax, TFDS) log every checkpoint at INFO; keep warnings only."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  _logging.getLogger('absl').setLevel(_logging.WARNING)

"""Imports every dataset builder so that `tfds.builder(name)` finds it."""

from data_pipelines.builders import synthetic_av  # noqa: F401

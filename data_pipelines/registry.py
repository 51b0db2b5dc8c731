"""Imports every dataset builder so that `tfds.builder(name)` finds it."""

from data_pipelines.builders import synthetic_av  # noqa: F401
from data_pipelines.builders import ravdess  # noqa: F401
from data_pipelines.builders import crema_d  # noqa: F401
from data_pipelines.builders import ferplus  # noqa: F401
from data_pipelines.builders import iemocap  # noqa: F401
from data_pipelines.builders import cmu_mosei  # noqa: F401
from data_pipelines.builders import deap  # noqa: F401
from data_pipelines.builders import ravdess_ferplus  # noqa: F401

"""The device mesh: batch sharded over 'data', parameters replicated.

The same code runs on one device, on N simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N) and across processes
started with `jax.distributed.initialize`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
  """Per-process batch size; the global batch must split evenly over devices."""
  n = mesh.devices.size
  if global_batch % n:
    raise ValueError(f'global batch size {global_batch} is not divisible by the '
                     f'{n} devices of the mesh')
  return global_batch // jax.process_count()


def place_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded along the batch axis."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def maybe_initialize_distributed(coordinator: str, num_processes: int, process_id: int):
  """Joins a multi-process run; on CPU the collectives go through gloo."""
  if not coordinator:
    return
  if jax.config.jax_platforms in (None, '', 'cpu') or 'cpu' in str(jax.config.jax_platforms):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator, num_processes, process_id)


def to_host(tree):
  """Replicated (or process-local) jax.Arrays -> numpy, also in multi-process runs,
  where `jax.device_get` refuses arrays spanning other processes' devices."""
  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(get, tree)

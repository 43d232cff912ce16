"""The device mesh and how arrays are laid out on it.

Data parallel: the batch is split over the `data` axis, parameters and
optimizer state are replicated. `state_sharding` is the one place to change for
FSDP-style sharding later (shard large parameter and optimizer leaves over
`data` as well); the jitted step takes its layout from here.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices, or over `devices` when given."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_sharding(mesh: Mesh, state):
  """Sharding of every leaf of the train state: replicated (pure data parallelism)."""
  return jax.tree.map(lambda _: replicated(mesh), state)


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Assembles this process's share of the batch into global arrays sharded on `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def to_host(tree):
  """Replicated global arrays as numpy, in every process.

  `jax.device_get` refuses arrays that span other processes' devices; a
  replicated array's local shard already holds the whole value.
  """
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(fetch, tree)

"""The device mesh and how arrays are laid out on it.

The batch is split over the `data` axis. The train state is either replicated
(`config.sharding = "replicate"`, pure data parallelism) or, with `"fsdp"`,
each large leaf of the parameters and optimizer state is split over the same
`data` axis along its largest dimension that the device count divides; leaves
smaller than `config.fsdp_min_bytes` (biases, norms, counters) stay replicated.
This is the rule of big_vision's `fsdp` sharding. XLA gathers a sharded
parameter where a layer needs it and reduce-scatters its gradient; reductions
such as the optimizers' global norms stay global because they are ordinary
jitted reductions over NamedSharding arrays.
"""

import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
SHARDINGS = ("replicate", "fsdp")


def create_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all (global) devices, or over `devices` when given."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, itemsize: int, num_devices: int, min_bytes: int) -> P:
  """The FSDP layout of one leaf: its largest dimension divisible by `num_devices` on `data`.

  Replicated when the leaf has fewer than `min_bytes` bytes or no such dimension.
  """
  if num_devices == 1 or math.prod(shape) * itemsize < min_bytes:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):  # stable: first largest wins
    if shape[axis] % num_devices == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA_AXIS
      return P(*spec)
  return P()


def state_sharding(mesh: Mesh, state, mode: str = "replicate", min_bytes: int = 0):
  """Sharding of every leaf of `state` (arrays or shape structs): see the module docstring."""
  if mode == "replicate":
    return jax.tree.map(lambda _: replicated(mesh), state)
  if mode != "fsdp":
    raise ValueError(f"sharding={mode!r} is not valid; choose one of {', '.join(SHARDINGS)}.")
  size = mesh.shape[DATA_AXIS]
  return jax.tree.map(
    lambda x: NamedSharding(mesh, fsdp_spec(x.shape, np.dtype(x.dtype).itemsize, size, min_bytes)), state
  )


def bytes_per_device(state, shardings) -> int:
  """Bytes of `state` (arrays or shape structs) that one device holds under `shardings`."""

  def leaf_bytes(x, sharding):
    return math.prod(sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize

  return sum(jax.tree.leaves(jax.tree.map(leaf_bytes, state, shardings)))


def global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Assembles this process's share of the batch into global arrays sharded on `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def to_host(tree):
  """Global arrays as numpy, in every process.

  `jax.device_get` refuses arrays that span other processes' devices; a
  replicated array's local shard already holds the whole value, a sharded one
  (FSDP) is gathered from all processes.
  """

  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.sharding.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(fetch, tree)

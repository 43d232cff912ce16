"""Bytes of parameters + optimizer state per device, replicated vs FSDP, for the ViTs.

    python -m benchmarks.state_memory [--devices 8] [--optimizers sgd,msam,adamw,adamw_msam,lion,lion_msam]

Shapes only (`jax.eval_shape` of the train state): nothing is trained or
allocated. The layouts are `msam_jax.training.mesh.state_sharding`'s, on a mesh
of `--devices` virtual CPU devices, with the default `config.fsdp_min_bytes`.
The last column is the optimizer state's bytes (whole, unsharded) minus those
of its registry base: what the method adds. For the MSAM family that is a few
scalars (c, an update count, the injected rho), never a parameter-sized
buffer; `lion_msam` is `msam_of(optax.lion)`. Prints a markdown table.
"""

import argparse
import functools
import os


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--optimizers", default="sgd,msam,adamw,adamw_msam,lion,lion_msam")
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # after XLA_FLAGS

  from msam_jax import models
  from msam_jax.training import base_config, set_optimizer
  from msam_jax.training import mesh as mesh_lib
  from msam_jax.training.optimizer import build_optimizer
  from msam_jax.training.train_state import create_train_state

  from msam_jax.optim import registry

  mesh = mesh_lib.create_mesh()
  mib = 2**20
  print(
    f"| model | optimizer | parameters | replicated MiB/device | fsdp MiB/device ({args.devices} devices) "
    "| state bytes over its base |"
  )
  print("|---|---|---:|---:|---:|---:|")

  def abstract_state(model, optimizer):
    config = base_config()
    set_optimizer(config, optimizer)
    tx = build_optimizer(config, steps_per_epoch=1000)
    init = functools.partial(create_train_state, model, tx, image_shape=(224, 224, 3))
    state = jax.eval_shape(init, jax.random.key(0))
    return {"params": state.params, "opt_state": state.opt_state}

  state_bytes = lambda state: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state["opt_state"]))
  for label, size, patch in (("ViT-S/32", "S", 32), ("ViT-B/16", "B", 16)):
    model = models.build("vit", 1000, size=size, patch_size=patch, image_size=224)
    for optimizer in args.optimizers.split(","):
      state = abstract_state(model, optimizer)
      base = registry.get(optimizer).base
      extra = state_bytes(state) - state_bytes(abstract_state(model, base))
      counts = {}
      for mode in mesh_lib.SHARDINGS:
        sharding = mesh_lib.state_sharding(mesh, state, mode, base_config().fsdp_min_bytes)
        counts[mode] = mesh_lib.bytes_per_device(state, sharding) / mib
      num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
      print(
        f"| {label} | {optimizer} | {num_params / 1e6:.1f} M | {counts['replicate']:.1f} | {counts['fsdp']:.1f} "
        f"| {extra:,} ({base}) |",
        flush=True,
      )


if __name__ == "__main__":
  main()

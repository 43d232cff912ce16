"""Forward + backward throughput of the paper's models on the machine this runs on.

    python -m benchmarks.model_throughput [--batch_size 32] [--steps 5] [--dtype float32]

Times one jitted training-mode pass (logits, cross-entropy, gradient w.r.t. all
parameters, updated batch-norm statistics) per step at a fixed batch of random
images, after one untimed step that compiles it, and prints a markdown table.
No optimizer update: this measures the models, not the training loop.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from msam_jax import models

# (label, build name, num_classes, kwargs, image size)
BENCHMARKS = {
  "wrn-16-4": ("wrn", 100, dict(depth=16, width=4), 32),
  "resnet50-cifar": ("resnet_cifar", 100, dict(depth=50), 32),
  "vit-s32": ("vit", 1000, dict(size="S", patch_size=32, image_size=224), 224),
}


def gradient_step(model):
  """(params, batch_stats, images, labels) -> (loss, grads, new batch_stats), jitted."""

  def loss_fn(params, batch_stats, images, labels):
    variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates.get("batch_stats", {})

  def step(params, batch_stats, images, labels):
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, images, labels)
    return loss, grads, new_stats

  return jax.jit(step)


def benchmark(name, num_classes, kwargs, size, batch_size, steps, dtype):
  model = models.build(name, num_classes, dtype=dtype, **kwargs)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(batch_size, size, size, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, num_classes, batch_size))
  # An "rbg" key: initialising with threefry compiles for a long time on CPU.
  variables = jax.jit(lambda key: model.init(key, images[:1], train=False))(jax.random.key(0, impl="rbg"))
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
  step = gradient_step(model)

  start = time.perf_counter()
  jax.block_until_ready(step(params, batch_stats, images, labels))
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    loss, grads, batch_stats = step(params, batch_stats, images, labels)
  jax.block_until_ready((loss, grads, batch_stats))
  seconds = (time.perf_counter() - start) / steps
  return num_params, compile_s, seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5, help="timed steps after the compiling one")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--models", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
  args = parser.parse_args()

  device = jax.devices()[0]
  print(
    f"device: {device.platform} / {device.device_kind} (x{jax.device_count()}), "
    f"jax {jax.__version__}, dtype {args.dtype}, batch {args.batch_size}, "
    f"{args.steps} timed steps\n"
  )
  print("| model | input | params | compile (s) | step (ms) | images/s |")
  print("|---|---|---:|---:|---:|---:|")
  for label in args.models:
    name, num_classes, kwargs, size = BENCHMARKS[label]
    num_params, compile_s, seconds = benchmark(name, num_classes, kwargs, size, args.batch_size, args.steps, args.dtype)
    print(
      f"| {label} | {size}x{size}x3 | {num_params / 1e6:.2f}M | {compile_s:.1f} | "
      f"{seconds * 1e3:.0f} | {args.batch_size / seconds:.1f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()

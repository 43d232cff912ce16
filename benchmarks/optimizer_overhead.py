"""Step time of every optimizer relative to its base, on a small CNN and a small ViT.

    python -m benchmarks.optimizer_overhead [--batch_size 16] [--repetitions 7]
        [--steps 5] [--models cnn,vit] [--vit_depth 2] [--mesa_weight 0.3]

One jitted training step (forward, backward, optimizer update, apply; for the
SAM family also its extra passes through `loss_fn`) per optimizer, with
parameters, batch statistics and optimizer state donated. Repetitions are
interleaved (every optimizer runs `--steps` steps in turn, in a rotating
order), so each ratio compares times measured under the same machine load;
the ratio column is the median over repetitions of (step time / base step
time of the same repetition). MSAM's claim is "no overhead": its ratio to SGD
should be about 1. "sgd, again" is a second, identical SGD run: its ratio to
SGD shows how much of any ratio is measurement noise. `--mesa_weight` adds
"sgd+mesa" and "msam+mesa": the same step with MESA's term on (the EMA model's
forward pass in evaluation mode, the KL term, the EMA update; see
msam_jax/training/mesa.py), each compared with its optimizer without MESA.

Besides wall time, each ratio is also given in process CPU time (robust to
other processes on a shared machine) and in XLA's static cost analysis of
the compiled step (flops, bytes accessed: deterministic). A second table
times the optimizer alone (update + apply on the model's parameters, buffers
donated) to show where any difference comes from.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import msam_jax
from msam_jax import models
from msam_jax.optim import needs_loss_fn, registry
from msam_jax.training import mesa as mesa_lib
from msam_jax.training.loss import distillation_kl

NUM_CLASSES = 10
IMAGE_SIZE = 32
LABEL_SMOOTHING = 0.1


# The original's defaults for each base optimizer, and rho per family.
HYPERPARAMS = {
  "sgd": dict(learning_rate=0.05, momentum=0.9, weight_decay=5e-4),
  "adamw": dict(learning_rate=1e-3, weight_decay=5e-2),
  "lion": dict(learning_rate=1e-4),  # b1, b2, weight decay: optax.lion's defaults
}
RHO = {"base": None, "msam": 0.3, "sam": 0.05}


MESA_RUNS = ("sgd", "msam")  # timed with MESA too when --mesa_weight > 0


def optimizers(mesa_weight: float = 0.0) -> dict[str, tuple[optax.GradientTransformation, str]]:
  """label -> (transformation, label of its base), every optimizer of the registry.

  SAM-family labels name the base they wrap ("sam(sgd)") unless the name does.
  With `mesa_weight > 0` also "<name>+mesa" for MESA_RUNS, based on "<name>".
  """
  runs = {}
  for name in registry.names():
    entry = registry.get(name)
    tx = registry.build(name, **HYPERPARAMS[entry.base], rho=RHO[entry.family])
    label = f"{name}({entry.base})" if entry.family == "sam" and entry.base not in name else name
    runs[label] = (tx, entry.base)
    if name == "sgd":  # A/A control: the noise floor of the ratios
      runs["sgd, again"] = (registry.build("sgd", **HYPERPARAMS["sgd"]), "sgd")
  if mesa_weight > 0:
    for name in MESA_RUNS:
      entry = registry.get(name)
      runs[f"{name}+mesa"] = (registry.build(name, **HYPERPARAMS[entry.base], rho=RHO[entry.family]), name)
  return runs


def build_model(name: str, vit_depth: int):
  if name == "cnn":
    return models.build("cnn", num_classes=NUM_CLASSES)
  if name == "vit":
    return models.build("vit", num_classes=NUM_CLASSES, size="Ti", patch_size=4, image_size=IMAGE_SIZE, depth=vit_depth)
  raise ValueError(f"unknown model {name!r}; valid: cnn, vit")


def make_train_step(model, tx, mesa: mesa_lib.Mesa | None = None):
  """The jitted step (params, batch_stats, opt_state, [ema,] images, labels) -> same + loss.

  With `mesa` the EMA model (`ema`, carried) gives the teacher logits of MESA's term.
  """

  def per_example_loss(params, batch_stats, images, labels, teacher=None):
    if batch_stats is None:
      logits, new_stats = model.apply({"params": params}, images, train=True), None
    else:
      logits, updated = model.apply(
        {"params": params, "batch_stats": batch_stats}, images, train=True, mutable=["batch_stats"]
      )
      new_stats = updated["batch_stats"]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, NUM_CLASSES), LABEL_SMOOTHING)
    losses = optax.softmax_cross_entropy(logits, targets)
    if teacher is not None:
      losses = losses + mesa.weight * distillation_kl(logits, teacher, mesa.temperature)
    return losses, new_stats

  def step(params, batch_stats, opt_state, *ema_images_labels):
    *ema, images, labels = ema_images_labels
    teacher = None
    if mesa is not None:
      variables = ema[0] if batch_stats is not None else {"params": ema[0]["params"]}
      teacher = jax.lax.stop_gradient(model.apply(variables, images, train=False))

    def mean_loss(p):
      losses, new_stats = per_example_loss(p, batch_stats, images, labels, teacher)
      return losses.mean(), (losses, new_stats)

    (loss, (losses, new_stats)), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)

    def loss_fn(p, indices=None):  # SAM family's second passes: batch statistics discarded
      x, y = (images, labels) if indices is None else (images[indices], labels[indices])
      t = teacher if indices is None or teacher is None else teacher[indices]
      return per_example_loss(p, batch_stats, x, y, t)[0]

    updates, opt_state = tx.update(grads, opt_state, params, loss_fn=loss_fn, losses=losses)
    params = optax.apply_updates(params, updates)
    if mesa is not None:
      stats = {} if new_stats is None else new_stats
      ema = [mesa_lib.update_ema(ema[0], msam_jax.eval_params(params, opt_state), stats, mesa.decay)]
    return params, new_stats, opt_state, *ema, loss

  return jax.jit(step, donate_argnums=(0, 1, 2, 3) if mesa is not None else (0, 1, 2))


def benchmark_model(model_name: str, args) -> list[dict]:
  model = build_model(model_name, args.vit_depth)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(args.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, size=args.batch_size), jnp.int32)
  variables = model.init(jax.random.key(0), images[:2], train=False)
  num_params = sum(x.size for x in jax.tree.leaves(variables["params"]))

  runs = {}
  for name, (tx, base) in optimizers(args.mesa_weight).items():
    mesa = mesa_lib.Mesa(args.mesa_weight) if name.endswith("+mesa") else None
    params = jax.tree.map(jnp.copy, variables["params"])
    stats = jax.tree.map(jnp.copy, variables.get("batch_stats")) if "batch_stats" in variables else None
    ema = (
      [] if mesa is None else [mesa_lib.init_ema(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats or {}))]
    )
    step = make_train_step(model, tx, mesa).lower(params, stats, tx.init(params), *ema, images, labels).compile()
    cost = step.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    carry = step(params, stats, tx.init(params), *ema, images, labels)  # first step
    jax.block_until_ready(carry)
    runs[name] = {
      "step": step,
      "carry": carry[:-1],
      "base": base,
      "times": [],
      "cpu_times": [],
      "flops": cost.get("flops", float("nan")),
      "bytes": cost.get("bytes accessed", float("nan")),
    }

  names = list(runs)
  for rep in range(args.repetitions):
    order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no fixed position
    for name in order:
      run = runs[name]
      carry = run["carry"]
      start, start_cpu = time.perf_counter(), time.process_time()
      for _ in range(args.steps):
        *carry, loss = run["step"](*carry, images, labels)
      jax.block_until_ready((carry, loss))
      run["times"].append((time.perf_counter() - start) / args.steps)
      run["cpu_times"].append((time.process_time() - start_cpu) / args.steps)
      run["carry"] = tuple(carry)

  rows = []
  update_ms = update_only_times(variables["params"], args)
  for name, run in runs.items():
    ratios = [t / b for t, b in zip(run["times"], runs[run["base"]]["times"])]
    cpu_ratios = [t / b for t, b in zip(run["cpu_times"], runs[run["base"]]["cpu_times"])]
    rows.append(
      {
        "model": f"{model_name} ({num_params / 1e6:.2f}M params)",
        "optimizer": name,
        "base": run["base"],
        "ms": 1e3 * statistics.median(run["times"]),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "cpu_ratio": statistics.median(cpu_ratios),
        "flops_ratio": run["flops"] / runs[run["base"]]["flops"],
        "bytes_ratio": run["bytes"] / runs[run["base"]]["bytes"],
        "update_ms": update_ms.get(name),
      }
    )
  return rows


def update_only_times(params, args) -> dict[str, float]:
  """Median ms of `update` + `apply_updates` alone for the one-gradient optimizers."""
  txs = {name: tx for name, (tx, _) in optimizers().items() if not needs_loss_fn(tx) and name != "sgd, again"}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  steps, carries, times = {}, {}, {name: [] for name in txs}
  for name, tx in txs.items():

    def step(p, s, g, tx=tx):
      updates, s = tx.update(g, s, p)
      return optax.apply_updates(p, updates), s

    steps[name] = jax.jit(step, donate_argnums=(0, 1))
    p = jax.tree.map(jnp.copy, params)
    carries[name] = jax.block_until_ready(steps[name](p, tx.init(p), grads))
  for _ in range(args.repetitions):
    for name in txs:
      carry = carries[name]
      start = time.perf_counter()
      for _ in range(10 * args.steps):
        carry = steps[name](*carry, grads)
      jax.block_until_ready(carry)
      times[name].append((time.perf_counter() - start) / (10 * args.steps))
      carries[name] = carry
  return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--repetitions", type=int, default=7, help="interleaved rounds; medians are taken over them")
  parser.add_argument(
    "--steps",
    type=int,
    default=5,
    help="steps per optimizer per round (LookSAM: a multiple of k=5 averages its SAM and reuse steps)",
  )
  parser.add_argument("--models", default="cnn,vit")
  parser.add_argument("--vit_depth", type=int, default=2, help="transformer blocks of the ViT-Ti/4 (the preset has 12)")
  parser.add_argument(
    "--mesa_weight", type=float, default=0.0, help="> 0: also time sgd and msam with MESA's term (this lambda)"
  )
  args = parser.parse_args()
  if not args.mesa_weight >= 0:
    parser.error(f"--mesa_weight must be >= 0, got {args.mesa_weight}.")

  print(
    f"jax {jax.__version__}, {jax.devices()[0].platform} x{jax.device_count()}, "
    f"batch {args.batch_size}, {IMAGE_SIZE}x{IMAGE_SIZE} images, {args.repetitions} "
    f"interleaved rounds of {args.steps} steps, buffers donated\n"
  )
  rows = [row for name in args.models.split(",") for row in benchmark_model(name, args)]
  print(
    "| model | optimizer | median step (ms) | ratio to base: median [min, max] "
    "| CPU-time ratio | XLA flops ratio | XLA bytes ratio |"
  )
  print("|---|---|---:|---|---:|---:|---:|")
  for r in rows:
    if r["optimizer"] == r["base"]:
      ratios = "- | - | - | -"
    else:
      ratios = (
        f"{r['ratio']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}] vs {r['base']} | "
        f"{r['cpu_ratio']:.3f} | {r['flops_ratio']:.4f} | {r['bytes_ratio']:.4f}"
      )
    print(f"| {r['model']} | {r['optimizer']} | {r['ms']:.1f} | {ratios} |")
  print(
    "\nCPU-time ratio: process CPU time, less disturbed by other processes than wall "
    "time. XLA ratios: the compiled step's static cost analysis (deterministic; it counts "
    "both branches of LookSAM's lax.cond)."
  )
  print("\nOptimizer alone (update + apply_updates, donated buffers):\n")
  print("| model | optimizer | median update (ms) | share of its full step |")
  print("|---|---|---:|---:|")
  for r in rows:
    if r["update_ms"] is not None:
      print(f"| {r['model']} | {r['optimizer']} | {r['update_ms']:.2f} | {100 * r['update_ms'] / r['ms']:.1f}% |")


if __name__ == "__main__":
  main()

"""The training loop: `train_and_evaluate(config, workdir)`.

Flat on purpose: build data, model, optimizer and state; restore the latest
checkpoint; run jitted steps, logging, evaluating and checkpointing on a fixed
cadence; finally recompute batch-norm statistics at the unperturbed point (MSAM
family) and write `results.json`.
"""
import contextlib
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from clu import metric_writers, periodic_actions

import msam_jax
from msam_jax import data, models
from msam_jax.training import checkpoint, mesh as mesh_lib, steps
from msam_jax.training.config import validate
from msam_jax.training.optimizer import build_optimizer
from msam_jax.training.train_state import TrainState, create_train_state

MSAM_FAMILY = ("msam", "adamw_msam")


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite."""


def _accumulating_train_step(state, acc, first_bad, batch, rng, **kwargs):
  """A train step that also merges its metrics and remembers the first non-finite step.

  Both live on the device, so the loop synchronises with the host only when it logs.
  """
  state, step_metrics = steps.train_step(state, batch, rng, **kwargs)
  finite = jnp.isfinite(step_metrics.loss.total) & jnp.isfinite(step_metrics.grad_norm.total)
  first_bad = jnp.where((first_bad < 0) & ~finite, state.step, first_bad)
  return state, acc.merge(step_metrics), first_bad


class _StepClock:
  """Training seconds per step: without the first step (compilation) and side work.

  Evaluation, sharpness probes and checkpointing are paused out; the device
  queue is drained first, so queued training work still counts as training.
  """

  def __init__(self):
    self.start, self.excluded = None, 0.0

  def first_step_done(self, state) -> None:
    jax.block_until_ready(state)
    self.start = time.time()

  @contextlib.contextmanager
  def paused(self, state):
    jax.block_until_ready(state)
    begin = time.time()
    yield
    self.excluded += time.time() - begin

  def seconds(self, end: float) -> float:
    return end - self.start - self.excluded


def _all_finite(tree) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.array([jnp.isfinite(x).all() for x in leaves]))


def _check_finite(first_bad, last_good_step: int | None, state: TrainState | None = None) -> None:
  """Raises NonFiniteLossError if a step's loss (or the state about to be saved) is not finite."""
  bad = int(mesh_lib.to_host(first_bad))
  if bad < 0 and state is not None and not mesh_lib.to_host(jax.jit(_all_finite)(state)):
    bad = int(mesh_lib.to_host(state.step))
  if bad >= 0:
    where = (f"the last good checkpoint is step {last_good_step}" if last_good_step is not None
             else "no checkpoint was written")
    raise NonFiniteLossError(
        f"Training loss (or state) became non-finite at step {bad}; {where}. Lower the learning rate or rho.")


def _evaluate(eval_fn, config, mesh, state, batch_stats=None) -> dict[str, float]:
  """Every test example once (padded, masked batches), at the unperturbed parameters."""
  acc = None
  for local in data.eval_iterator(
      config.dataset, global_batch_size=config.eval_batch_size, data_dir=config.data_dir,
      image_size=config.image_size, num_devices=mesh.size):
    m = eval_fn(state, state.batch_stats if batch_stats is None else batch_stats,
                mesh_lib.global_batch(mesh, local))
    acc = m if acc is None else acc.merge(m)
  return {k: float(v) for k, v in mesh_lib.to_host(acc.compute()).items()}


def _train_iterator(config, mesh, *, seed: int, start_step: int = 0):
  """This process's training batches; other seeds give the probe and batch-norm batches."""
  return data.train_iterator(
      config.dataset, global_batch_size=config.batch_size, seed=seed, start_step=start_step,
      data_dir=config.data_dir, image_size=config.image_size, num_devices=mesh.size)


def _recompute_batch_norm(bn_fn, config, mesh, state: TrainState, num_batches: int):
  """Running batch-norm statistics re-estimated at the unperturbed parameters.

  MSAM trains at perturbed parameters, so the running statistics belong to the
  wrong point; like the original, rerun forward passes in training mode.
  """
  batch_stats = state.batch_stats
  train_iter = _train_iterator(config, mesh, seed=config.seed + 1)
  for _ in range(num_batches):
    batch_stats = bn_fn(state, batch_stats, mesh_lib.global_batch(mesh, next(train_iter)))
  return batch_stats


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       mesh: jax.sharding.Mesh | None = None) -> dict[str, Any]:
  """Trains as `config` says, resuming from `workdir` if it holds a checkpoint.

  Returns the results dict that is also written to `workdir/results.json`.
  """
  mesh = mesh_lib.create_mesh() if mesh is None else mesh
  validate(config, num_devices=mesh.size, process_count=jax.process_count())
  is_primary = jax.process_index() == 0

  info = data.dataset_info(config.dataset, image_size=config.image_size)
  steps_per_epoch = data.steps_per_epoch(info, config.batch_size)
  num_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
  model = models.build(config.model, info.num_classes, dtype=jnp.dtype(config.dtype),
                       **config.model_kwargs)
  tx = build_optimizer(config, steps_per_epoch)

  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  init = functools.partial(create_train_state, model, tx, image_shape=info.image_shape)
  state_sharding = mesh_lib.state_sharding(mesh, jax.eval_shape(init, init_rng))
  replicated = mesh_lib.replicated(mesh)
  state = jax.jit(init, out_shardings=state_sharding)(init_rng)

  manager = checkpoint.create_manager(workdir, config.max_checkpoints_to_keep, config.async_checkpointing)
  state = checkpoint.restore_latest(manager, state)
  start_step = int(mesh_lib.to_host(state.step))
  if start_step:
    logging.info("Resuming from the checkpoint of step %d.", start_step)

  writer = metric_writers.create_default_writer(workdir, just_logging=not is_primary)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items() if not isinstance(v, dict)})

  train_kwargs = dict(model=model, tx=tx, label_smoothing=config.label_smoothing)
  train_fn = jax.jit(
      functools.partial(_accumulating_train_step, **train_kwargs),
      in_shardings=(state_sharding, replicated, replicated, mesh_lib.batch_sharding(mesh), replicated),
      out_shardings=(state_sharding, replicated, replicated),
      donate_argnums=(0, 1, 2))
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=model, label_smoothing=config.label_smoothing))
  train_collection = steps.metrics_collection(info.num_classes, train=True)

  sharpness_fn = None
  if config.sharpness_every_steps > 0:
    probe_batch = mesh_lib.global_batch(mesh, next(_train_iterator(config, mesh, seed=config.seed + 2)))
    sharpness_fn = jax.jit(functools.partial(
        steps.sharpness_step, model=model, batch=probe_batch, label_smoothing=config.label_smoothing,
        rho=config.sharpness_rho, num_iters=config.sharpness_num_iters))

  train_iter = data.prefetch.to_devices(  # the next batches copy to the devices during the step
      _train_iterator(config, mesh, seed=config.seed, start_step=start_step),
      functools.partial(mesh_lib.global_batch, mesh))
  hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)] if is_primary else []
  acc = jax.device_put(train_collection.empty(), replicated)
  first_bad = jax.device_put(jnp.array(-1, jnp.int32), replicated)
  last_good_checkpoint = manager.latest_step()
  eval_history = []
  train_scalars = {}
  train_start = time.time()
  clock = _StepClock()
  sharpness = None

  try:  # an error (a non-finite loss, Ctrl-C) still lets the in-flight checkpoint finish
    for step in range(start_step + 1, num_steps + 1):
      batch = next(train_iter)
      state, acc, first_bad = train_fn(state, acc, first_bad, batch, dropout_rng)
      if step == start_step + 1:
        clock.first_step_done(state)
      for hook in hooks:
        hook(step)
      is_last = step == num_steps
      if step % config.log_every_steps == 0 or is_last:
        _check_finite(first_bad, last_good_checkpoint)
        train_scalars = mesh_lib.to_host(acc.compute())
        writer.write_scalars(step, {f"train_{k}": v for k, v in train_scalars.items()})
        acc = jax.device_put(train_collection.empty(), replicated)
      if sharpness_fn is not None and (step % config.sharpness_every_steps == 0 or is_last):
        with clock.paused(state):
          sharpness = mesh_lib.to_host(sharpness_fn(state))
          writer.write_scalars(step, sharpness)
      epoch_end = step % steps_per_epoch == 0
      if (epoch_end and (step // steps_per_epoch) % config.eval_every_epochs == 0) or is_last:
        with clock.paused(state):
          eval_metrics = _evaluate(eval_fn, config, mesh, state)
          writer.write_scalars(step, {f"eval_{k}": v for k, v in eval_metrics.items()})
          eval_history.append({"step": step, "epoch": step / steps_per_epoch,
                               "seconds": time.time() - train_start, **eval_metrics})
      if (config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0) or is_last:
        with clock.paused(state):
          _check_finite(first_bad, last_good_checkpoint, state)
          checkpoint.save(manager, step, state)
        last_good_checkpoint = step
    jax.block_until_ready(state)
    train_end = time.time()
  finally:
    manager.wait_until_finished()
  train_seconds = train_end - train_start
  timed_steps = num_steps - start_step - 1
  timed_seconds = clock.seconds(train_end) if timed_steps > 0 else 0.0

  results = {
      "optimizer": config.optimizer, "dataset": config.dataset, "model": config.model,
      "steps": num_steps, "epochs": num_steps / steps_per_epoch,
      "train_seconds": train_seconds,
      "steps_per_second": timed_steps / timed_seconds if timed_steps > 0 else float("nan"),
      "seconds_per_step_excluding_compilation": timed_seconds / timed_steps if timed_steps > 0 else float("nan"),
      "input_wait_fraction": train_iter.wait_seconds / timed_seconds if timed_steps > 0 else float("nan"),
      "eval_history": eval_history,
  }
  # Averages over the last logging interval of this process's run.
  results.update({f"final_train_{k}": float(train_scalars[k]) for k in ("loss", "accuracy") if k in train_scalars})
  final = eval_history[-1] if eval_history and eval_history[-1]["step"] == num_steps else None
  if final is None:  # resumed after the last step: evaluate the restored state
    final = _evaluate(eval_fn, config, mesh, state)
  bn_batches = steps_per_epoch if config.bn_recompute_batches < 0 else config.bn_recompute_batches
  if config.optimizer in MSAM_FAMILY and state.batch_stats and bn_batches > 0:
    bn_fn = jax.jit(functools.partial(steps.batch_norm_step, model=model))
    batch_stats = _recompute_batch_norm(bn_fn, config, mesh, state, bn_batches)
    results["eval_accuracy_before_bn_recompute"] = final["accuracy"]
    results["eval_loss_before_bn_recompute"] = final["loss"]
    final = _evaluate(eval_fn, config, mesh, state, batch_stats)
    writer.write_scalars(num_steps, {f"eval_after_bn_recompute_{k}": v for k, v in final.items()})
  results["final_param_norm"] = float(mesh_lib.to_host(jax.jit(_unperturbed_norm)(state)))
  results["final_eval_accuracy"] = final["accuracy"]
  results["final_eval_loss"] = final["loss"]
  if "accuracy_top5" in final:
    results["final_eval_accuracy_top5"] = final["accuracy_top5"]
  if sharpness_fn is not None:
    if start_step == num_steps:  # resumed after the last step
      sharpness = mesh_lib.to_host(sharpness_fn(state))
    results.update({f"final_{k}": float(v) for k, v in sharpness.items()})
  writer.flush()
  if is_primary:
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w") as f:
      json.dump(results, f, indent=2)
    os.replace(path + ".tmp", path)
  return results


def _unperturbed_norm(state: TrainState) -> jax.Array:
  return optax.tree.norm(msam_jax.eval_params(state.params, state.opt_state))


"""The training loop: `train_and_evaluate(config, workdir)`.

Flat on purpose: validate everything (config, workdir, dataset) before any
side effect; build data, model, optimizer and state; restore the newest
readable checkpoint; run jitted steps, logging, evaluating and checkpointing on
a fixed cadence; finally recompute batch-norm statistics at the unperturbed
point (MSAM family), save that evaluated model and write `results.json`. What
the workdir records (run identity, evaluation history) is `run_record`'s.
"""

import contextlib
import functools
import logging as std_logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metric_writers, periodic_actions

import msam_jax
from msam_jax import data, models
from msam_jax.training import checkpoint, evaluated_model, loss_scale, preemption, run_record, steps
from msam_jax.training import mesa as mesa_lib
from msam_jax.training import config as config_lib
from msam_jax.training import mesh as mesh_lib
from msam_jax.training.config import validate
from msam_jax.training.optimizer import build_optimizer
from msam_jax.training.train_state import TrainState, create_train_state

# The run's own lines (startup summary, evaluations, result); the command line
# keeps them at INFO while library internals (orbax, absl) stay at WARNING.
log = std_logging.getLogger("msam_jax.training")


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite."""


def _accumulating_train_step(state, acc, first_bad, batch, rng, **kwargs):
  """A train step that also merges its metrics and remembers the first non-finite step.

  Both live on the device, so the loop synchronises with the host only when it logs.
  """
  state, step_metrics = steps.train_step(state, batch, rng, **kwargs)
  finite = jnp.isfinite(step_metrics.loss.total)
  if hasattr(step_metrics, "grad_norm"):  # absent with per-device m-sharpness
    finite &= jnp.isfinite(step_metrics.grad_norm.total)
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
    where = (
      f"the last good checkpoint is step {last_good_step}"
      if last_good_step is not None
      else "no checkpoint was written"
    )
    raise NonFiniteLossError(
      f"Training loss (or state) became non-finite at step {bad}; {where}. Lower the learning rate or rho."
    )


def _evaluate(eval_fn, config, mesh, state, batch_stats=None) -> dict[str, float]:
  """Every test example once (padded, masked batches), at the unperturbed parameters."""
  acc = None
  for local in data.eval_iterator(
    config.dataset,
    global_batch_size=config.eval_batch_size,
    data_dir=config.data_dir,
    image_size=config.image_size,
    num_devices=mesh.size,
    synthetic=config_lib.synthetic_spec(config),
  ):
    m = eval_fn(state, state.batch_stats if batch_stats is None else batch_stats, mesh_lib.global_batch(mesh, local))
    acc = m if acc is None else acc.merge(m)
  return {k: float(v) for k, v in mesh_lib.to_host(acc.compute()).items()}


def _train_iterator(config, mesh, *, seed: int, start_step: int = 0):
  """This process's training batches; other seeds give the probe and batch-norm batches."""
  return data.train_iterator(
    config.dataset,
    global_batch_size=config.batch_size,
    seed=seed,
    start_step=start_step,
    data_dir=config.data_dir,
    image_size=config.image_size,
    num_devices=mesh.size,
    synthetic=config_lib.synthetic_spec(config),
  )


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


def _check_prepared(config, mesh) -> None:
  """Raises data.DatasetNotFoundError unless the test split can be read (training data lives beside it)."""
  next(
    iter(
      data.eval_iterator(
        config.dataset,
        global_batch_size=config.eval_batch_size,
        data_dir=config.data_dir,
        image_size=config.image_size,
        num_devices=mesh.size,
      )
    )
  )


def _summary(config, info, steps_per_epoch: int, num_steps: int, start_step: int, state, mesh) -> str:
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  start = f"Resuming from the checkpoint of step {start_step}" if start_step else "Starting"
  return (
    f"{config.model} ({num_params:,} parameters) on {config.dataset} "
    f"({info.num_train:,} train / {info.num_test:,} test examples, batch {config.batch_size}); "
    f"{config.optimizer} lr {config.learning_rate:g} ({config.lr_schedule}) rho {config.rho:g} "
    f"({config.rho_schedule}){_mesa_summary(config)}; {mesh.size} devices, {jax.process_count()} processes; "
    f"{num_steps} steps ({num_steps / steps_per_epoch:g} epochs of {steps_per_epoch}). {start}."
  )


def _mesa_summary(config) -> str:
  if not config.mesa_weight:
    return ""
  return (
    f" with MESA (weight {config.mesa_weight:g}, EMA decay {config.mesa_decay:g}, temperature "
    f"{config.mesa_temperature:g}, from epoch {config.mesa_start_epoch:g})"
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir, *, mesh: jax.sharding.Mesh | None = None
) -> dict[str, Any]:
  """Trains as `config` says, resuming from `workdir` if it holds a checkpoint.

  Everything is checked before the workdir is touched or anything compiled:
  the config (ConfigError), the workdir (run_record.WorkdirError), the run it
  may hold (run_record.RunMismatchError), the dataset (data.DatasetNotFoundError).
  A finished run is not rerun: its stored results are returned, nothing written.
  `workdir` may be local (`~` expanded) or remote (`gs://`).

  Returns the results dict that is also written to `workdir/results.json`.
  """
  mesh = mesh_lib.create_mesh() if mesh is None else mesh
  config = config_lib.resolve(config)  # model_kwargs: every option of the model
  validate(config, num_devices=mesh.size, process_count=jax.process_count())
  workdir = run_record.check_workdir(workdir)
  if config.data_dir is not None:
    config.data_dir = str(run_record.as_path(config.data_dir))
  is_primary = jax.process_index() == 0

  info = data.dataset_info(config.dataset, image_size=config.image_size, synthetic=config_lib.synthetic_spec(config))
  steps_per_epoch = data.steps_per_epoch(info, config.batch_size)
  num_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
  finished = run_record.check_run(workdir, config, num_steps)
  if finished is not None:
    log.info("%s holds this run finished; nothing to do.", workdir)
    return finished
  _check_prepared(config, mesh)
  model = models.build(config.model, info.num_classes, dtype=jnp.dtype(config.dtype), **config.model_kwargs)
  tx = build_optimizer(config, steps_per_epoch)
  if config.dtype == "float16":
    tx = loss_scale.dynamic_loss_scale(tx)

  init_rng, dropout_rng = jax.random.split(jax.random.key(config.seed))
  mesa = mesa_lib.from_config(config, steps_per_epoch)
  init = functools.partial(create_train_state, model, tx, image_shape=info.image_shape, mesa=mesa is not None)
  abstract_state = jax.eval_shape(init, init_rng)
  state_sharding = mesh_lib.state_sharding(mesh, abstract_state, config.sharding, config.fsdp_min_bytes)
  replicated = mesh_lib.replicated(mesh)
  state = jax.jit(init, out_shardings=state_sharding)(init_rng)

  manager = checkpoint.create_manager(workdir, config.max_checkpoints_to_keep, config.async_checkpointing)
  state = checkpoint.restore_latest(manager, state)
  start_step = int(mesh_lib.to_host(state.step))
  if start_step > num_steps:
    raise config_lib.ConfigError(
      f"config.num_train_steps={config.num_train_steps} ends the run at step {num_steps}, but {workdir} "
      f"already holds a checkpoint of step {start_step}; set --config.num_train_steps to at least {start_step}."
    )
  if is_primary:
    run_record.record_config(workdir, config)
  if is_primary:
    log.info("%s", _summary(config, info, steps_per_epoch, num_steps, start_step, state, mesh))

  writer = metric_writers.create_default_writer(str(workdir), just_logging=not is_primary)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in config.to_dict().items() if not isinstance(v, dict)})

  train_kwargs = dict(
    model=model,
    tx=tx,
    label_smoothing=config.label_smoothing,
    grad_accum_steps=config.grad_accum_steps,
    group_mesh=mesh if config.sam_group_size else None,
    mesa=mesa,
  )
  train_fn = jax.jit(
    functools.partial(_accumulating_train_step, **train_kwargs),
    in_shardings=(state_sharding, replicated, replicated, mesh_lib.batch_sharding(mesh), replicated),
    out_shardings=(state_sharding, replicated, replicated),
    donate_argnums=(0, 1, 2),
  )
  eval_fn = jax.jit(functools.partial(steps.eval_step, model=model, label_smoothing=config.label_smoothing))
  train_collection = steps.metrics_collection(
    info.num_classes, train=True, grad_norm=not config.sam_group_size, mesa=mesa is not None
  )

  sharpness_fn = None
  if config.sharpness_every_steps > 0:
    probe_batch = mesh_lib.global_batch(mesh, next(_train_iterator(config, mesh, seed=config.seed + 2)))
    sharpness_fn = jax.jit(
      functools.partial(
        steps.sharpness_step,
        model=model,
        batch=probe_batch,
        label_smoothing=config.label_smoothing,
        rho=config.sharpness_rho,
        num_iters=config.sharpness_num_iters,
      )
    )

  train_iter = data.prefetch.to_devices(  # the next batches copy to the devices during the step
    _train_iterator(config, mesh, seed=config.seed, start_step=start_step),
    functools.partial(mesh_lib.global_batch, mesh),
  )
  hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)] if is_primary else []
  acc = jax.device_put(train_collection.empty(), replicated)
  first_bad = jax.device_put(jnp.array(-1, jnp.int32), replicated)
  last_good_checkpoint = manager.latest_step()
  eval_history = run_record.load_history(workdir, start_step)
  train_scalars = {}
  train_start = time.time()
  clock = _StepClock()
  sharpness = None

  preempt = preemption.Preemption(config.checkpoint_on_preemption).start()
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
        writer.write_scalars(step, {f"train/{k}": v for k, v in train_scalars.items()})
        acc = jax.device_put(train_collection.empty(), replicated)
      if sharpness_fn is not None and (step % config.sharpness_every_steps == 0 or is_last):
        with clock.paused(state):
          sharpness = mesh_lib.to_host(sharpness_fn(state))
          writer.write_scalars(step, {f"train/{k}": v for k, v in sharpness.items()})
      epoch_end = step % steps_per_epoch == 0
      if (epoch_end and (step // steps_per_epoch) % config.eval_every_epochs == 0) or is_last:
        with clock.paused(state):
          eval_metrics = _evaluate(eval_fn, config, mesh, state)
          writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
          eval_history.append(
            {"step": step, "epoch": step / steps_per_epoch, "seconds": time.time() - train_start, **eval_metrics}
          )
          if is_primary:
            run_record.save_history(workdir, eval_history)
            log.info(
              "step %d (epoch %g): eval accuracy %.4f, loss %.4f",
              step,
              step / steps_per_epoch,
              eval_metrics["accuracy"],
              eval_metrics["loss"],
            )
      if (config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0) or is_last:
        with clock.paused(state):
          _check_finite(first_bad, last_good_checkpoint, state)
          checkpoint.save(manager, step, state)
        last_good_checkpoint = step
      if not is_last and preempt.reached(step):  # SIGTERM: checkpoint this step and stop
        if last_good_checkpoint != step:
          _check_finite(first_bad, last_good_checkpoint, state)
          checkpoint.save(manager, step, state)
        raise preemption.Preempted(step)
    jax.block_until_ready(state)
    train_end = time.time()
  finally:
    preempt.stop()
    manager.wait_until_finished()
  train_seconds = train_end - train_start
  timed_steps = num_steps - start_step - 1
  timed_seconds = clock.seconds(train_end) if timed_steps > 0 else 0.0

  results = {
    "optimizer": config.optimizer,
    "dataset": config.dataset,
    "model": config.model,
    "steps": num_steps,
    "epochs": num_steps / steps_per_epoch,
    "train_seconds": train_seconds,
    "steps_per_second": timed_steps / timed_seconds if timed_steps > 0 else float("nan"),
    "seconds_per_step_excluding_compilation": timed_seconds / timed_steps if timed_steps > 0 else float("nan"),
    "input_wait_fraction": train_iter.wait_seconds / timed_seconds if timed_steps > 0 else float("nan"),
    "eval_history": eval_history,
    "sharding": config.sharding,
    "grad_accum_steps": config.grad_accum_steps,
    "params_bytes_per_device": mesh_lib.bytes_per_device(abstract_state.params, state_sharding.params),
    "opt_state_bytes_per_device": mesh_lib.bytes_per_device(abstract_state.opt_state, state_sharding.opt_state),
  }
  if mesa is not None:  # MESA's EMA of the model: one parameter-sized buffer (plus batch statistics)
    results["mesa_ema_bytes_per_device"] = mesh_lib.bytes_per_device(abstract_state.ema, state_sharding.ema)
  # Averages over the last logging interval of this process's run.
  results.update({f"final_train_{k}": float(train_scalars[k]) for k in ("loss", "accuracy") if k in train_scalars})
  final = eval_history[-1] if eval_history and eval_history[-1]["step"] == num_steps else None
  if final is None:  # resumed after the last step: evaluate the restored state
    final = _evaluate(eval_fn, config, mesh, state)
  bn_batches = steps_per_epoch if config.bn_recompute_batches < 0 else config.bn_recompute_batches
  batch_stats = state.batch_stats
  if msam_jax.optim.perturbs_params(state.opt_state) and state.batch_stats and bn_batches > 0:
    bn_fn = jax.jit(functools.partial(steps.batch_norm_step, model=model))
    batch_stats = _recompute_batch_norm(bn_fn, config, mesh, state, bn_batches)
    results["eval_accuracy_before_bn_recompute"] = final["accuracy"]
    results["eval_loss_before_bn_recompute"] = final["loss"]
    final = _evaluate(eval_fn, config, mesh, state, batch_stats)
    writer.write_scalars(num_steps, {f"eval/{k}_after_bn_recompute": v for k, v in final.items()})
  results["final_param_norm"] = float(mesh_lib.to_host(jax.jit(_unperturbed_norm)(state)))
  results["final_eval_accuracy"] = final["accuracy"]
  results["final_eval_loss"] = final["loss"]
  if "accuracy_top5" in final:
    results["final_eval_accuracy_top5"] = final["accuracy_top5"]
  if sharpness_fn is not None:
    if start_step == num_steps:  # resumed after the last step
      sharpness = mesh_lib.to_host(sharpness_fn(state))
    results.update({f"final_{k}": float(v) for k, v in sharpness.items()})
  variables = {"params": jax.jit(_unperturbed_params)(state)}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  results["evaluated_model"] = str(evaluated_model.save(workdir, num_steps, variables))
  writer.flush()
  if is_primary:
    run_record.write_results(workdir, results)
    before = results.get("eval_accuracy_before_bn_recompute")
    log.info(
      "final eval accuracy %.4f%s; model saved in %s; results in %s",
      results["final_eval_accuracy"],
      "" if before is None else f" ({before:.4f} before the batch-norm recomputation)",
      results["evaluated_model"],
      workdir / run_record.RESULTS_FILE,
    )
  return results


def _unperturbed_params(state: TrainState):
  return msam_jax.eval_params(state.params, state.opt_state)


def _unperturbed_norm(state: TrainState) -> jax.Array:
  return optax.tree.norm(msam_jax.eval_params(state.params, state.opt_state))

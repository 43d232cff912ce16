"""The training loop: `train_and_evaluate(config, workdir)`.

Flat on purpose: validate everything (config, workdir, dataset) before any
side effect; build data, model, optimizer and state; restore the newest
readable checkpoint; run jitted steps, logging, evaluating and checkpointing on
a fixed cadence; finally recompute batch-norm statistics at the unperturbed
point (MSAM family), save that evaluated model and write `results.json`. What
the workdir records (run identity, evaluation history) is `run_record`'s.
"""

import contextlib
import dataclasses
import itertools
import logging as std_logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from clu import metric_writers, periodic_actions

import msam_jax
from msam_jax import data
from msam_jax.training import checkpoint, evaluated_model, preemption, run_record
from msam_jax.training import config as config_lib
from msam_jax.training import mesh as mesh_lib
from msam_jax.training import setup as setup_lib
from msam_jax.training.setup import Setup
from msam_jax.training.train_state import TrainState

# The run's own lines (startup summary, evaluations, result); the command line
# keeps them at INFO while library internals (orbax, absl) stay at WARNING.
log = std_logging.getLogger("msam_jax.training")


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite."""


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


def evaluate(s: Setup, state: TrainState, batches, batch_stats=None) -> dict[str, float]:
  """Metrics over `batches` (this process's padded, masked batches of a split), at the unperturbed parameters.

  The test split is `s.test_batches()`; `batch_stats` default to the state's.
  """
  acc = None
  for local in batches:
    m = s.eval_step(state, state.batch_stats if batch_stats is None else batch_stats, s.global_batch(local))
    acc = m if acc is None else acc.merge(m)
  return {k: float(v) for k, v in mesh_lib.to_host(acc.compute()).items()}


# Key prefix of each evaluated split's metrics (eval history, results.json, TensorBoard):
# the test split's are unprefixed; "noisy_train" is the training split against the labels it
# trains with (noisy under label_noise), i.e. memorisation.
_SPLIT_PREFIX = {"test": "", "validation": "validation_", "train": "noisy_train_"}


def evaluate_all(s: Setup, state: TrainState, batch_stats=None, splits=None) -> dict[str, float]:
  """Test metrics as `accuracy`, `loss`, ...; then `validation_*` and `noisy_train_*` where the
  config asks for them (`config_lib.evaluated_splits`), or of `splits` only."""
  metrics = {}
  for split in config_lib.evaluated_splits(s.config) if splits is None else splits:
    split_metrics = evaluate(s, state, s.eval_batches(split), batch_stats)
    metrics.update({_SPLIT_PREFIX[split] + k: v for k, v in split_metrics.items()})
  return metrics


def _eval_line(metrics: dict[str, float]) -> str:
  """'eval accuracy 0.9861, loss 0.1093; validation accuracy ...; noisy_train accuracy ...'."""
  parts = [f"eval accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}"]
  for prefix in ("validation_", "noisy_train_"):
    if f"{prefix}accuracy" in metrics:
      parts.append(f"{prefix[:-1]} accuracy {metrics[prefix + 'accuracy']:.4f}, loss {metrics[prefix + 'loss']:.4f}")
  return "; ".join(parts)


def _recompute_batch_norm(s: Setup, state: TrainState, num_batches: int, between=lambda: None):
  """Running batch-norm statistics re-estimated at the unperturbed parameters.

  MSAM trains at perturbed parameters, so the running statistics belong to the
  wrong point; like the original, rerun forward passes in training mode.
  `between()` runs after every batch (the preemption check).
  """
  batch_stats = state.batch_stats
  batches = s.train_batches(seed=s.config.seed + 1)
  for _ in range(num_batches):
    batch_stats = s.batch_norm_step(state, batch_stats, s.global_batch(next(batches)))
    between()
  return batch_stats


def _mesa_summary(config) -> str:
  if not config.mesa_weight:
    return ""
  return (
    f" with MESA (weight {config.mesa_weight:g}, EMA decay {config.mesa_decay:g}, temperature "
    f"{config.mesa_temperature:g}, from epoch {config.mesa_start_epoch:g})"
  )


def _summary(s: Setup, start_step: int) -> str:
  config, info = s.config, s.info
  num_params = sum(x.size for x in jax.tree.leaves(s.abstract_state.params))
  start = f"Resuming from the checkpoint of step {start_step}" if start_step else "Starting"
  return (
    f"{config.model} ({num_params:,} parameters) on {config.dataset} "
    f"({info.num_train:,} train / {info.num_test:,} test examples, batch {config.batch_size}); "
    f"{config.optimizer} lr {config.learning_rate:g} ({config.lr_schedule}) rho {config.rho:g} "
    f"({config.rho_schedule}){_mesa_summary(config)}; {s.mesh.size} devices, {jax.process_count()} processes; "
    f"{s.num_steps} steps ({s.num_steps / s.steps_per_epoch:g} epochs of {s.steps_per_epoch}). {start}."
  )


@dataclasses.dataclass
class _Trained:
  """What the training phase hands to finalisation."""

  state: TrainState
  start_step: int
  writer: metric_writers.MetricWriter
  eval_history: list[dict]
  train_scalars: dict  # the last logging interval's averages
  sharpness: dict | None  # the last probe's values
  train_seconds: float
  timed_steps: int  # steps after the first (compilation) of this process's run
  timed_seconds: float
  input_wait_seconds: float


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
  s = setup_lib.build(config, mesh_lib.create_mesh() if mesh is None else mesh)
  workdir = run_record.check_workdir(workdir)
  finished = run_record.check_run(workdir, s.config, s.num_steps)
  if finished is not None:
    log.info("%s holds this run finished; nothing to do.", workdir)
    return finished
  next(iter(s.test_batches()))  # data.DatasetNotFoundError unless the data is prepared
  manager = checkpoint.create_manager(workdir, s.config.max_checkpoints_to_keep, s.config.async_checkpointing)
  preempt = preemption.Preemption(s.config.checkpoint_on_preemption).start()  # from the first step to results.json
  try:
    trained = _train(s, workdir, manager, preempt)
    return _finalise(s, workdir, trained, preempt)
  finally:
    preempt.stop()


def _restore(s: Setup, workdir, manager) -> tuple[TrainState, int]:
  """The newest readable checkpoint's state (or the initial one) and its step."""
  state = checkpoint.restore_latest(manager, s.init_state())
  start_step = int(mesh_lib.to_host(state.step))
  if start_step > s.num_steps:
    raise config_lib.ConfigError(
      f"config.num_train_steps={s.config.num_train_steps} ends the run at step {s.num_steps}, but {workdir} "
      f"already holds a checkpoint of step {start_step}; set --config.num_train_steps to at least {start_step}."
    )
  return state, start_step


def _open_run(s: Setup, workdir, manager):
  """The restored state and its step, the run's config recorded and announced, and its metric writer."""
  is_primary = jax.process_index() == 0
  state, start_step = _restore(s, workdir, manager)
  if is_primary:
    run_record.record_config(workdir, s.config)
    log.info("%s", _summary(s, start_step))
  writer = metric_writers.create_default_writer(str(workdir), just_logging=not is_primary)
  if start_step == 0:
    writer.write_hparams({k: v for k, v in s.config.to_dict().items() if not isinstance(v, dict)})
  return state, start_step, writer


def _train(s: Setup, workdir, manager, preempt: preemption.Preemption) -> _Trained:
  """Steps from the restored state to `s.num_steps`: logs, probes, evaluates and checkpoints on cadence."""
  config, num_steps, is_primary = s.config, s.num_steps, jax.process_index() == 0
  state, start_step, writer = _open_run(s, workdir, manager)
  probe_batch = s.global_batch(next(s.train_batches(seed=config.seed + 2))) if config.sharpness_every_steps else None
  train_iter = data.prefetch.to_devices(  # the next batches copy to the devices during the step
    s.train_batches(seed=config.seed, start_step=start_step), s.global_batch
  )
  hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)] if is_primary else []
  acc, first_bad = s.empty_metrics()
  last_good = manager.latest_step()
  history = run_record.load_history(workdir, start_step)
  train_scalars, sharpness, clock, train_start = {}, None, _StepClock(), time.time()
  try:  # an error (a non-finite loss, Ctrl-C) still lets the in-flight checkpoint finish
    for step in range(start_step + 1, num_steps + 1):
      train_step = s.train_step_at(step - 1)  # decided on the host: with or without a second gradient
      state, acc, first_bad = train_step(state, acc, first_bad, next(train_iter), s.dropout_rng)
      if step == start_step + 1:
        clock.first_step_done(state)
      for hook in hooks:
        hook(step)
      is_last = step == num_steps
      if step % config.log_every_steps == 0 or is_last:
        _check_finite(first_bad, last_good)
        train_scalars = mesh_lib.to_host(acc.compute())
        writer.write_scalars(step, {f"train/{k}": v for k, v in train_scalars.items()})
        acc, _ = s.empty_metrics()
      if probe_batch is not None and (step % config.sharpness_every_steps == 0 or is_last):
        with clock.paused(state):
          sharpness = mesh_lib.to_host(s.sharpness_step(state, probe_batch))
          writer.write_scalars(step, {f"train/{k}": v for k, v in sharpness.items()})
      epoch_end = step % s.steps_per_epoch == 0
      if (epoch_end and (step // s.steps_per_epoch) % config.eval_every_epochs == 0) or is_last:
        with clock.paused(state):
          _evaluate_and_record(s, state, step, time.time() - train_start, history, workdir, writer, manager)
      if (config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0) or is_last:
        with clock.paused(state):
          _check_finite(first_bad, last_good, state)
          checkpoint.save(manager, step, state)
        last_good = step
      if preempt.reached(step) and not is_last:  # SIGTERM: checkpoint this step and stop
        if last_good != step:
          _check_finite(first_bad, last_good, state)
          checkpoint.save(manager, step, state)
        raise preemption.Preempted(step)
    jax.block_until_ready(state)
    train_end = time.time()
  finally:
    manager.wait_until_finished()
  if sharpness is None and probe_batch is not None:  # resumed after the last step
    sharpness = mesh_lib.to_host(s.sharpness_step(state, probe_batch))
  timed_steps = num_steps - start_step - 1
  return _Trained(
    state=state,
    start_step=start_step,
    writer=writer,
    eval_history=history,
    train_scalars=train_scalars,
    sharpness=sharpness,
    train_seconds=train_end - train_start,
    timed_steps=timed_steps,
    timed_seconds=clock.seconds(train_end) if timed_steps > 0 else 0.0,
    input_wait_seconds=train_iter.wait_seconds,
  )


def _evaluate_and_record(s: Setup, state, step: int, seconds: float, history: list, workdir, writer, manager) -> None:
  """Evaluates on the test split (and validation, noisy train), keeps the best model on validation,
  logs it and rewrites the evaluation history."""
  batch_stats = _evaluation_batch_stats(s, state)
  metrics = evaluate_all(s, state, batch_stats)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
  history.append({"step": step, "epoch": step / s.steps_per_epoch, "seconds": seconds, **metrics})
  _keep_best(s, workdir, history, manager.all_steps(), state, batch_stats)  # before the history names it
  if jax.process_index() == 0:
    run_record.save_history(workdir, history)
    log.info("step %d (epoch %g): %s", step, step / s.steps_per_epoch, _eval_line(metrics))


def _evaluate_ema(s: Setup, state: TrainState) -> dict[str, float]:
  """MESA's EMA model (its averaged parameters and batch-norm statistics) on the test and validation
  splits: what the SAF code reports."""
  ema = TrainState(step=state.step, params=state.ema["params"], batch_stats=state.ema["batch_stats"], opt_state=())
  return evaluate_all(s, ema, splits=[split for split in config_lib.evaluated_splits(s.config) if split != "train"])


def _model_variables(state: TrainState, batch_stats) -> dict:
  """The unperturbed parameters with `batch_stats`: the model an evaluation measures."""
  variables = {"params": jax.jit(_unperturbed_params)(state)}
  if batch_stats:
    variables["batch_stats"] = batch_stats
  return variables


# Orbax's own keep-best (`CheckpointManagerOptions(best_fn=...)`) does not fit: it ranks by one scalar
# (no tie-break on the validation loss), writes every evaluation's model, and trusts the metrics on
# disk, also those of evaluations a run resumed from an older checkpoint is about to redo. Here the
# best is derived from the evaluation history, which a resumed run trims to its checkpoint.
def _keep_best(s: Setup, workdir, history: list[dict], checkpoint_steps, state: TrainState, batch_stats) -> None:
  """Saves the model of the evaluation just recorded if it is the best on validation so far, and
  deletes the best models no run resumed from a kept checkpoint could report."""
  metric = config_lib.best_model_metric(s.config)
  if not metric:
    return
  candidates = [*evaluated_model.with_best_model(workdir, history[:-1]), history[-1]]
  if run_record.best_evaluation(candidates, metric) is not history[-1]:
    return
  evaluated_model.save(workdir, history[-1]["step"], _model_variables(state, batch_stats), which="best")
  evaluated_model.keep_only(workdir, run_record.best_steps_needed(candidates, checkpoint_steps, metric))


def _named(prefix: str, metrics: dict) -> dict[str, float]:
  """An evaluation's metrics under results.json's names: `{prefix}_eval_accuracy` (the test split's),
  `{prefix}_validation_loss`, `{prefix}_noisy_train_accuracy`, ..."""
  split_prefixes = tuple(p for p in _SPLIT_PREFIX.values() if p)
  return {
    f"{prefix}_{k}" if k.startswith(split_prefixes) else f"{prefix}_eval_{k}": v
    for k, v in metrics.items()
    if k not in ("step", "epoch", "seconds")
  }


def _best_results(s: Setup, workdir, history: list[dict], final: dict, variables: dict) -> dict[str, Any]:
  """results.json's `best_*`: the evaluation best on validation, the final model's included (a run
  resumed after its last step may hold no evaluation of it in its history)."""
  metric = config_lib.best_model_metric(s.config)
  if not metric:
    return {}
  last = {**final, "step": s.num_steps, "epoch": s.num_steps / s.steps_per_epoch}
  best = run_record.best_evaluation([*evaluated_model.with_best_model(workdir, history), last], metric)
  if best is last:
    evaluated_model.save(workdir, s.num_steps, variables, which="best")
  evaluated_model.keep_only(workdir, {best["step"]})
  return {
    "best_step": best["step"],
    "best_epoch": best["epoch"],
    **_named("best", best),
    "best_model": str(workdir / evaluated_model.BEST_MODEL_DIR / str(best["step"])),
  }


def _finalise(s: Setup, workdir, t: _Trained, preempt: preemption.Preemption) -> dict[str, Any]:
  """Batch norm at the unperturbed point (MSAM family), final evaluation, model and results.json.

  SIGTERM still stops the run here, between these parts, with the last step's
  checkpoint; the training's own numbers are recorded first, so the rerun
  finishes the run with the same results.
  """
  num_steps = s.num_steps
  training = _training_numbers(s, workdir, t)
  finishing_points = itertools.count(num_steps + 1)  # numbered on from the last step (multi-process sync)

  def stop_if_preempted():
    if preempt.reached(next(finishing_points)):
      raise preemption.Preempted(num_steps)

  if jax.process_index() == 0:
    log.info("step %d: training done; finishing the run (final evaluation, model, results).", num_steps)
  stop_if_preempted()
  results = _run_facts(s, t, training)
  final, batch_stats = _final_evaluation(s, t, results, stop_if_preempted)
  results["final_param_norm"] = float(mesh_lib.to_host(jax.jit(_unperturbed_norm)(t.state)))
  results.update(_named("final", final))  # final_eval_accuracy, final_validation_loss, ...
  if s.mesa is not None:  # final_ema_eval_accuracy, final_ema_validation_accuracy, ...
    results.update(_named("final_ema", _evaluate_ema(s, t.state)))
    stop_if_preempted()
  if t.sharpness is not None:
    results.update({f"final_{k}": float(v) for k, v in t.sharpness.items()})
  variables = _model_variables(t.state, batch_stats)
  results["evaluated_model"] = str(evaluated_model.save(workdir, num_steps, variables))
  results.update(_best_results(s, workdir, t.eval_history, final, variables))
  t.writer.flush()
  stop_if_preempted()
  if jax.process_index() == 0:
    run_record.write_results(workdir, results)
    before = results.get("eval_accuracy_before_bn_recompute")
    log.info(
      "final eval accuracy %.4f%s%s%s; model saved in %s%s; results in %s",
      results["final_eval_accuracy"],
      "" if before is None else f" ({before:.4f} before the batch-norm recomputation)",
      "".join(f"; {part}" for part in _eval_line(final).split("; ")[1:]),
      f"; MESA's EMA model: eval accuracy {results['final_ema_eval_accuracy']:.4f}" if s.mesa is not None else "",
      results["evaluated_model"],
      _best_line(results),
      workdir / run_record.RESULTS_FILE,
    )
  return results


def _best_line(results: dict) -> str:
  """'; best on validation: step 60 (epoch 3), eval accuracy 0.9611, validation accuracy 0.9653, in DIR'."""
  if "best_step" not in results:
    return ""
  return (
    f"; best on validation: step {results['best_step']} (epoch {results['best_epoch']:g}), eval accuracy"
    f" {results['best_eval_accuracy']:.4f}, validation accuracy {results['best_validation_accuracy']:.4f},"
    f" in {results['best_model']}"
  )


def _training_numbers(s: Setup, workdir, t: _Trained) -> dict[str, Any]:
  """Throughput and the last train metrics; recorded in `training.json` by the run that trained.

  A rerun that finds the run stopped while finishing has no training of its own:
  it reports the recorded numbers.
  """
  timed = t.timed_steps > 0
  training = {
    "train_seconds": t.train_seconds,
    "steps_per_second": t.timed_steps / t.timed_seconds if timed else float("nan"),
    "seconds_per_step_excluding_compilation": t.timed_seconds / t.timed_steps if timed else float("nan"),
    "input_wait_fraction": t.input_wait_seconds / t.timed_seconds if timed else float("nan"),
    # Averages over the last logging interval of this process's run.
    **{f"final_train_{k}": float(t.train_scalars[k]) for k in ("loss", "accuracy") if k in t.train_scalars},
  }
  if t.start_step < s.num_steps and jax.process_index() == 0:
    run_record.save_training(workdir, training)
  elif t.start_step == s.num_steps:
    training = run_record.load_training(workdir) or training
  return training


def _run_facts(s: Setup, t: _Trained, training: dict[str, Any]) -> dict[str, Any]:
  """What ran: config facts, memory per device, the training's numbers and the data's labels."""
  config = s.config
  results = {
    "optimizer": config.optimizer,
    "dataset": config.dataset,
    "model": config.model,
    "steps": s.num_steps,
    "epochs": s.num_steps / s.steps_per_epoch,
    **{k: v for k, v in training.items() if not k.startswith("final_train_")},
    "eval_history": t.eval_history,
    "sharding": config.sharding,
    "grad_accum_steps": config.grad_accum_steps,
    "params_bytes_per_device": mesh_lib.bytes_per_device(s.abstract_state.params, s.state_sharding.params),
    "opt_state_bytes_per_device": mesh_lib.bytes_per_device(s.abstract_state.opt_state, s.state_sharding.opt_state),
  }
  if s.mesa is not None:  # MESA's EMA of the model: one parameter-sized buffer (plus batch statistics)
    results["mesa_ema_bytes_per_device"] = mesh_lib.bytes_per_device(s.abstract_state.ema, s.state_sharding.ema)
  results.update({k: v for k, v in training.items() if k.startswith("final_train_")})
  results.update(
    label_noise=config.label_noise,
    label_noise_seed=config.label_noise_seed,
    # The fraction of training labels the noise changed (None for ImageNet: not counted).
    label_noise_realised_fraction=data.realised_noise_fraction(
      config.dataset,
      config_lib.training_labels(config),
      data_dir=config.data_dir,
      synthetic=config_lib.synthetic_spec(config),
      global_batch_size=config.batch_size,
    ),
    validation_fraction=config.validation_fraction,
    num_train_examples=s.info.num_train,
    num_validation_examples=s.info.num_validation,
  )
  return results


def _evaluation_batch_stats(s: Setup, state: TrainState, between=lambda: None):
  """The batch-norm statistics an evaluation of `state` uses (and its saved model holds).

  The running statistics, except for the MSAM family with batch norm: it trains at perturbed
  parameters, so their running statistics belong to the wrong point and are recomputed at the
  unperturbed ones (`_recompute_batch_norm`, `config.bn_recompute_batches` batches) for every
  evaluation, the periodic ones included, so that the best model on validation is chosen and
  saved as the final one is.
  """
  bn_batches = s.steps_per_epoch if s.config.bn_recompute_batches < 0 else s.config.bn_recompute_batches
  if msam_jax.optim.perturbs_params(state.opt_state) and state.batch_stats and bn_batches > 0:
    return _recompute_batch_norm(s, state, bn_batches, between=between)
  return state.batch_stats


def _final_evaluation(s: Setup, t: _Trained, results: dict, stop_if_preempted) -> tuple[dict, Any]:
  """The last evaluation and the batch statistics to save with the model.

  MSAM family with batch norm: the statistics recomputed at the unperturbed parameters
  (`_evaluation_batch_stats`); what the training's running statistics give goes into
  `results` as `eval_*_before_bn_recompute`.
  """
  state, history = t.state, t.eval_history
  batch_stats = _evaluation_batch_stats(s, state, between=stop_if_preempted)
  final = history[-1] if history and history[-1]["step"] == s.num_steps else None
  if final is None:  # resumed after the last step: evaluate the restored state
    final = evaluate_all(s, state, batch_stats)
    stop_if_preempted()
  if batch_stats is not state.batch_stats:
    before = evaluate_all(s, state, splits=["test"])
    results["eval_accuracy_before_bn_recompute"] = before["accuracy"]
    results["eval_loss_before_bn_recompute"] = before["loss"]
    stop_if_preempted()
  return final, batch_stats


def _unperturbed_params(state: TrainState):
  return msam_jax.eval_params(state.params, state.opt_state)


def _unperturbed_norm(state: TrainState) -> jax.Array:
  return optax.tree.norm(msam_jax.eval_params(state.params, state.opt_state))

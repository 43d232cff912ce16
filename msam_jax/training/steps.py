"""The per-step functions the loop jits: train, evaluate, recompute batch norm.

One training step serves every optimizer. The MSAM family is a plain
one-gradient step (the model holds the perturbed parameters and the optimizer
moves them); every optimizer receives `loss_fn` (the SAM family uses it, the
others ignore it, as optax's extra arguments go), which reruns the
forward pass in training mode but throws its batch-norm statistics away, so the
running statistics are updated by the first pass only (as the original does).

`second_gradient` (a Python bool, or None) reaches the optimizer's `update`
unchanged, in every mode below: the SAM family's static choice of whether this
update takes its second gradient (msam_jax.optim.sam), which the loop decides
on the host; other optimizers ignore it. None passes nothing.

With `grad_accum_steps = k > 1` both passes run over k micro-batches (see
`accumulation`): the SAM family then also receives `grad_fn`, the accumulated
gradient of the mean loss, for its second pass at the perturbed point.
With a float16 loss scale in the optimizer state (`loss_scale.py`) the first
pass differentiates the scaled loss and the optimizer gets unscaled gradients
(not combined with accumulation: the config refuses float16 with k > 1).

With per-device m-sharpness (`config.sam_group_size = m`, the optimizer built
with ``group_size=m, axis_name="data"``) the first pass is forward only (losses,
metrics, batch statistics) and the optimizer's update runs under
`jax.shard_map`: each device's groups come from its own examples and their
second-pass gradients are averaged over the devices, the step's only gradient
collective. The step then reports no first-pass gradient norm. Each device
folds its index into the dropout key, so dropout masks differ across devices
(within a device they repeat across groups, which are vmapped with one key).
The update holds the whole parameters and optimizer state on every device, so
the config refuses it with FSDP.

With MESA (`mesa.py`; `mesa` given, the state a `MesaTrainState`) the EMA
model's logits on the batch are computed first, in evaluation mode and without
gradient (per micro-batch when accumulating, skipped by `lax.cond` before the
start step), and every pass, the SAM family's included, differentiates the
per-example objective `CE + weight T^2 KL(EMA || model)` against those fixed
logits. The metric `loss` stays the cross-entropy alone; `mesa_loss` is the
weighted term. After the update the EMA takes the new unperturbed parameters
and batch statistics. Without `mesa` the step is exactly the plain one.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from clu import metrics
from jax.sharding import PartitionSpec as P

import msam_jax
from msam_jax import analysis
from msam_jax.optim import current_hyperparams
from msam_jax.training import accumulation, loss_scale
from msam_jax.training import mesa as mesa_lib
from msam_jax.training.loss import distillation_kl, smoothed_kl_loss, top_k_correct
from msam_jax.training.mesh import DATA_AXIS
from msam_jax.training.train_state import TrainState


@functools.cache
def metrics_collection(
  num_classes: int, train: bool, grad_norm: bool = True, mesa: bool = False
) -> type[metrics.Collection]:
  """The clu metrics a step returns; top-5 accuracy wherever there are > 5 classes.

  `grad_norm`: whether a training step reports its first-pass gradient norm
  (not with per-device m-sharpness, whose step computes no whole-batch gradient).
  `mesa`: whether it reports MESA's weighted KL term (`mesa_loss`).

  Cached: each call of `Collection.create` makes a new class, and a new pytree
  type in a jitted function's output would retrace it every step.
  """
  fields = {"loss": metrics.Average.from_output("loss"), "accuracy": metrics.Average.from_output("accuracy")}
  if num_classes > 5:
    fields["accuracy_top5"] = metrics.Average.from_output("accuracy_top5")
  if train:
    fields.update(
      learning_rate=metrics.LastValue.from_output("learning_rate"), rho=metrics.LastValue.from_output("rho")
    )
  if train and grad_norm:
    fields["grad_norm"] = metrics.Average.from_output("grad_norm")
  if train and mesa:
    fields["mesa_loss"] = metrics.Average.from_output("mesa_loss")
  return metrics.Collection.create(**fields)


def _variables(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _accuracies(logits, labels):
  out = {"accuracy": top_k_correct(logits, labels, 1)}
  if logits.shape[-1] > 5:
    out["accuracy_top5"] = top_k_correct(logits, labels, 5)
  return out


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  model,
  tx,
  label_smoothing: float,
  grad_accum_steps: int = 1,
  group_mesh: jax.sharding.Mesh | None = None,
  mesa: mesa_lib.Mesa | None = None,
  second_gradient: bool | None = None,
) -> tuple[TrainState, metrics.Collection]:
  """One optimizer step on one global batch; returns the new state and its metrics.

  `group_mesh`: the mesh, for per-device m-sharpness (module docstring); None otherwise.
  `mesa`: MESA's hyper-parameters (module docstring); None: off.
  `second_gradient`: passed to `tx.update` (module docstring); None: not passed.
  """
  dropout_rng = jax.random.fold_in(rng, state.step)
  if mesa is not None:  # a traced 0 before the start step: the term vanishes, exactly
    mesa_weight = jnp.where(state.step >= mesa.start_step, mesa.weight, 0.0)
    teacher = _ema_logits(state, batch["image"], model, mesa, grad_accum_steps)

  def forward(params, images, labels, dropout_rng=dropout_rng, teacher_logits=None):
    logits, new_vars = model.apply(
      _variables(params, state.batch_stats), images, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_rng}
    )
    losses = smoothed_kl_loss(logits, labels, label_smoothing)
    if teacher_logits is not None:
      losses = losses + mesa_weight * distillation_kl(logits, teacher_logits, mesa.temperature)
    return losses, (logits, new_vars)

  scale = loss_scale.current_scale(state.opt_state)  # float16: see loss_scale.py; else None

  first = {} if mesa is None else {"teacher_logits": teacher}

  def mean_loss(params):
    losses, aux = forward(params, batch["image"], batch["label"], **first)
    total = losses.mean()
    return (total if scale is None else total * scale), (losses, aux)

  accumulated = {}  # grad_fn for the SAM family when accumulating
  decided = {} if second_gradient is None else {"second_gradient": second_gradient}
  if group_mesh is not None:
    if scale is not None or grad_accum_steps > 1:
      raise ValueError("per-device m-sharpness is not combined with float16 or accumulation")
    losses, (logits, new_vars) = forward(state.params, batch["image"], batch["label"], **first)
    grads = None
  elif grad_accum_steps == 1:
    (_, (losses, (logits, new_vars))), grads = jax.value_and_grad(mean_loss, has_aux=True)(state.params)
  else:
    if scale is not None:
      raise ValueError("float16 loss scaling is not combined with gradient accumulation")
    losses, logits, new_vars, grads, accumulated["grad_fn"] = _accumulated_first_pass(
      forward, state.params, batch if mesa is None else {**batch, "teacher": teacher}, grad_accum_steps, dropout_rng
    )
  if scale is not None:
    grads = loss_scale.unscale(grads, scale)

  def loss_fn_of(images, labels, rng=dropout_rng, teacher_logits=None):
    def loss_fn(params, indices=None):  # the SAM family's further passes; others ignore it
      if indices is None:
        return forward(params, images, labels, rng, teacher_logits=teacher_logits)[0]  # batch statistics discarded
      chosen = None if teacher_logits is None else teacher_logits[indices]
      return forward(params, images[indices], labels[indices], rng, teacher_logits=chosen)[0]

    return loss_fn

  if group_mesh is None:
    updates, opt_state = tx.update(
      grads,
      state.opt_state,
      state.params,
      loss_fn=loss_fn_of(batch["image"], batch["label"], **first),
      losses=losses,
      **accumulated,
      **decided,
    )
  else:

    def device_update(opt_state, params, images, labels, *teacher_logits):
      device_rng = dropout_rng  # several devices: each folds in its index, so masks differ per device
      if group_mesh.size > 1:
        device_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(DATA_AXIS))
      loss_fn = loss_fn_of(images, labels, device_rng, *teacher_logits)
      return tx.update(None, opt_state, params, loss_fn=loss_fn, **decided)

    device_data = (batch["image"], batch["label"]) + (() if mesa is None else (teacher,))
    updates, opt_state = jax.shard_map(
      device_update,
      mesh=group_mesh,
      in_specs=(P(), P()) + (P(DATA_AXIS),) * len(device_data),
      out_specs=(P(), P()),
    )(state.opt_state, state.params, *device_data)

  hyper = current_hyperparams(opt_state)
  norm = {}
  if grads is not None:
    norm["grad_norm"] = optax.tree.norm(grads)
    if scale is not None:  # an overflow is a skipped step, not a failed run: counted as norm 0
      norm["grad_norm"] = jnp.where(jnp.isfinite(norm["grad_norm"]), norm["grad_norm"], 0.0)
  if mesa is not None:  # the metric `loss` is the cross-entropy alone, comparable with runs without MESA
    norm["mesa_loss"] = mesa_weight * distillation_kl(logits, teacher, mesa.temperature)
    losses = smoothed_kl_loss(logits, batch["label"], label_smoothing)
  step_metrics = metrics_collection(
    logits.shape[-1], train=True, grad_norm=grads is not None, mesa=mesa is not None
  ).single_from_model_output(
    loss=losses,
    **norm,
    learning_rate=hyper.get("learning_rate", jnp.nan),
    rho=hyper.get("rho", jnp.nan),
    **_accuracies(logits, batch["label"]),
  )
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    batch_stats=new_vars.get("batch_stats", state.batch_stats),
    opt_state=opt_state,
  )
  if mesa is not None:
    new_state = new_state.replace(
      ema=mesa_lib.update_ema(
        state.ema, msam_jax.eval_params(new_state.params, opt_state), new_state.batch_stats, mesa.decay
      )
    )
  return new_state, step_metrics


def _ema_logits(state, images, model, mesa: mesa_lib.Mesa, k: int) -> jax.Array:
  """The EMA model's logits in evaluation mode, without gradient; zeros before the start step.

  With k > 1 micro-batches one micro-batch's activations are alive at a time.
  """
  variables = _variables(state.ema["params"], state.ema["batch_stats"])

  def logits_of(x):
    return jax.lax.stop_gradient(model.apply(variables, x, train=False))

  def teacher(x):
    if k == 1:
      return logits_of(x)
    return accumulation.merge(jax.lax.map(logits_of, accumulation.split(x, k)))

  shape = jax.eval_shape(logits_of, images)
  return jax.lax.cond(state.step >= mesa.start_step, teacher, lambda x: jnp.zeros(shape.shape, shape.dtype), images)


def _accumulated_first_pass(forward, params, batch, k: int, dropout_rng):
  """The first pass over k micro-batches, and `grad_fn` for a second pass over them.

  Batch norm normalises each micro-batch with its own statistics. The running
  statistics' update is linear in the batch statistics, so the mean of the k
  micro-batches' updated statistics is one update with their mean statistics.
  Dropout masks differ per micro-batch but are the same in both passes.
  """
  micro_batches = accumulation.split(batch, k)

  def micro_loss(p, micro_batch, index):
    losses, aux = forward(
      p,
      micro_batch["image"],
      micro_batch["label"],
      jax.random.fold_in(dropout_rng, index),
      teacher_logits=micro_batch.get("teacher"),  # MESA's EMA logits, when on
    )
    return losses.mean(), (losses, aux)

  (losses, (logits, new_vars)), grads = accumulation.value_and_grad(micro_loss, params, micro_batches)
  losses, logits = accumulation.merge((losses, logits))
  new_vars = jax.tree.map(lambda x: x.mean(0), new_vars)

  def grad_fn(p):  # batch statistics discarded, as in `loss_fn`
    return accumulation.mean_grad(lambda q, b, i: micro_loss(q, b, i)[0], p, micro_batches)

  return losses, logits, new_vars, grads, grad_fn


def eval_step(
  state: TrainState, batch_stats: Any, batch: dict[str, jax.Array], *, model, label_smoothing: float
) -> metrics.Collection:
  """Metrics of one (padded, masked) test batch at the unperturbed parameters.

  `batch_stats` is explicit so that evaluating with recomputed statistics reuses
  the same compiled function.
  """
  params = msam_jax.eval_params(state.params, state.opt_state)
  logits = model.apply(_variables(params, batch_stats), batch["image"], train=False)
  return metrics_collection(logits.shape[-1], train=False).single_from_model_output(
    loss=smoothed_kl_loss(logits, batch["label"], label_smoothing),
    mask=batch["mask"],
    **_accuracies(logits, batch["label"]),
  )


def batch_norm_step(state: TrainState, batch_stats: Any, batch: dict[str, jax.Array], *, model) -> Any:
  """Updates running batch-norm statistics with one training batch at the unperturbed point.

  Training mode without dropout randomness mattering: only `batch_stats` is kept.
  """
  params = msam_jax.eval_params(state.params, state.opt_state)
  _, new_vars = model.apply(
    _variables(params, batch_stats),
    batch["image"],
    train=True,
    mutable=["batch_stats"],
    rngs={"dropout": jax.random.key(0)},
  )
  return new_vars["batch_stats"]


def sharpness_step(
  state: TrainState, *, model, batch, label_smoothing: float, rho: float, num_iters: int
) -> dict[str, jax.Array]:
  """SAM sharpness and top Hessian eigenvalue of the training loss on a fixed batch.

  At the unperturbed parameters, with batch statistics of the batch itself
  (training-mode batch norm, statistics discarded), so the probed loss is a
  function of the parameters alone.
  """
  params = msam_jax.eval_params(state.params, state.opt_state)

  def loss_fn(p):
    logits, _ = model.apply(
      _variables(p, state.batch_stats),
      batch["image"],
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": jax.random.key(0)},
    )
    return smoothed_kl_loss(logits, batch["label"], label_smoothing).mean()

  return analysis.sharpness_metrics(loss_fn, params, jax.random.key(1), rho=rho, num_iters=num_iters)

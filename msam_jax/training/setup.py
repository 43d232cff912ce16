"""Everything a training step needs, built once from a config and a mesh: `build(config, mesh)`.

The loop (`loop.py`), the benchmarks and the tests build their steps here, so
what they time and test is what trains. `build` validates the config, reads
nothing from disk and compiles nothing (the jitted functions compile on first
call); `Setup.init_state()` creates the initial state on the mesh.

The train step comes in variants, one per value of the SAM family's
``second_gradient`` (msam_jax.optim.sam): the host knows from the config which
updates take the second gradient (rho above 0, LookSAM's every k-th, RST's
draws: `optimizer.second_gradient_steps`), so `Setup.train_step_at(step)`
hands out the variant compiled for it and no conditional runs on the device.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metrics

from msam_jax import data, models
from msam_jax.optim import registry
from msam_jax.training import config as config_lib
from msam_jax.training import mesa as mesa_lib
from msam_jax.training import mesh as mesh_lib
from msam_jax.training import run_record, steps
from msam_jax.training.optimizer import build_optimizer, second_gradient_steps
from msam_jax.training.step_plan import StepPlan
from msam_jax.training.train_state import TrainState, create_train_state


@dataclasses.dataclass(frozen=True)
class Setup:
  """A run's model, optimizer, state layout and jitted steps (see `build`).

  Attributes:
    config: the resolved, validated config (`model_kwargs` complete, `data_dir` absolute).
    info: the dataset's facts (`data.DatasetInfo`).
    steps_per_epoch, num_steps: the run's length.
    plan: how the step runs (`step_plan.StepPlan`).
    mesa: MESA's hyper-parameters (`mesa.Mesa`; the state then carries the EMA), or None.
    train_steps: the jitted train steps by their ``second_gradient``: True and False for the
      SAM family, None alone for the other optimizers (which take no second gradient).
      Each is ``(state, metrics, first_bad, batch, rng) -> (state, metrics, first_bad)``;
      merges the step's metrics into `metrics` and records the first non-finite step
      (-1 while all are finite); donates its first three arguments. Each compiles on its
      first call, so only the variants a run uses compile. Call the one `train_step_at`
      (or `step_variant`) picks.
    eval_step: jitted ``(state, batch_stats, batch) -> metrics`` at the unperturbed parameters.
    batch_norm_step: jitted ``(state, batch_stats, batch) -> batch_stats`` at the unperturbed parameters.
    sharpness_step: jitted ``(state, batch) -> {sharpness, ...}`` (`steps.sharpness_step`).
    train_metrics: the clu collection `train_step` accumulates (`empty_metrics()` is one on the mesh).
  """

  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  info: Any
  steps_per_epoch: int
  num_steps: int
  plan: StepPlan
  mesa: mesa_lib.Mesa | None
  model: Any
  tx: Any
  abstract_state: TrainState
  state_sharding: Any
  train_steps: Mapping[bool | None, Callable]
  eval_step: Callable
  batch_norm_step: Callable
  sharpness_step: Callable
  train_metrics: type[metrics.Collection]

  @functools.cached_property
  def second_gradients(self) -> np.ndarray | None:
    """Per update (0-based count < `num_steps`): whether it takes the second gradient; None outside the SAM family."""
    return second_gradient_steps(self.config, self.steps_per_epoch, self.num_steps)

  def step_variant(self, step: int) -> bool | None:
    """The key of `train_steps` for the update from a state at `step` (its `state.step`, 0-based)."""
    if self.second_gradients is None:
      return None
    if not 0 <= step < self.num_steps:
      raise ValueError(f"step must be in [0, {self.num_steps}) (the run's updates), got {step}")
    return bool(self.second_gradients[step])

  def train_step_at(self, step: int) -> Callable:
    """The jitted train step for the update from a state at `step` (its `state.step`, 0-based)."""
    return self.train_steps[self.step_variant(step)]

  @property
  def replicated(self) -> jax.sharding.NamedSharding:
    return mesh_lib.replicated(self.mesh)

  def init_state(self) -> TrainState:
    """The initial state (from `config.seed`), laid out as `state_sharding`."""
    return jax.jit(self._init, out_shardings=self.state_sharding)(self.init_rng)

  @property
  def _init(self):
    return functools.partial(
      create_train_state, self.model, self.tx, image_shape=self.info.image_shape, mesa=self.mesa is not None
    )

  @property
  def init_rng(self) -> jax.Array:
    return jax.random.split(jax.random.key(self.config.seed))[0]

  @property
  def dropout_rng(self) -> jax.Array:
    return jax.random.split(jax.random.key(self.config.seed))[1]

  def empty_metrics(self):
    """`train_step`'s metrics before any step, and its first-bad-step marker (-1)."""
    return (
      jax.device_put(self.train_metrics.empty(), self.replicated),
      jax.device_put(jnp.array(-1, jnp.int32), self.replicated),
    )

  def train_batches(self, *, seed: int, start_step: int = 0):
    """This process's training batches (numpy); other seeds give the probe and batch-norm batches."""
    c = self.config
    return data.train_iterator(
      c.dataset,
      global_batch_size=c.batch_size,
      seed=seed,
      start_step=start_step,
      data_dir=c.data_dir,
      image_size=c.image_size,
      num_devices=self.mesh.size,
      synthetic=config_lib.synthetic_spec(c),
      labels=config_lib.training_labels(c),
    )

  def test_batches(self):
    """This process's test batches (numpy, padded and masked): every test example once."""
    return self.eval_batches("test")

  def eval_batches(self, split: str):
    """This process's batches of `split` (data.SPLITS: test, validation, train as trained), padded and masked."""
    c = self.config
    return data.eval_iterator(
      c.dataset,
      global_batch_size=c.eval_batch_size,
      data_dir=c.data_dir,
      image_size=c.image_size,
      num_devices=self.mesh.size,
      synthetic=config_lib.synthetic_spec(c),
      split=split,
      labels=config_lib.training_labels(c),
    )

  def global_batch(self, local_batch) -> dict[str, jax.Array]:
    return mesh_lib.global_batch(self.mesh, local_batch)


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


def resolve(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> ml_collections.ConfigDict:
  """A resolved copy of `config` (`config.resolve`), validated for `mesh`; `data_dir` made absolute."""
  config = config_lib.resolve(config)
  config_lib.validate(config, num_devices=mesh.size, process_count=jax.process_count())
  if config.data_dir is not None:
    config.data_dir = str(run_record.as_path(config.data_dir))
  return config


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Setup:
  """The setup of the run `config` describes on `mesh`; raises `ConfigError` for a bad config."""
  config = resolve(config, mesh)
  info = data.dataset_info(
    config.dataset,
    image_size=config.image_size,
    synthetic=config_lib.synthetic_spec(config),
    validation_fraction=config.validation_fraction,
  )
  steps_per_epoch = data.steps_per_epoch(info, config.batch_size)
  num_steps = config.num_train_steps if config.num_train_steps > 0 else config.num_epochs * steps_per_epoch
  plan = StepPlan.of(config)
  model = models.build(config.model, info.num_classes, dtype=jnp.dtype(config.dtype), **config.model_kwargs)
  tx = build_optimizer(config, steps_per_epoch, plan)

  mesa = mesa_lib.from_config(config, steps_per_epoch)
  init = functools.partial(create_train_state, model, tx, image_shape=info.image_shape, mesa=mesa is not None)
  abstract_state = jax.eval_shape(init, jax.random.key(0))
  state_sharding = mesh_lib.state_sharding(mesh, abstract_state, config.sharding, config.fsdp_min_bytes)
  replicated = mesh_lib.replicated(mesh)
  train_step = functools.partial(
    _accumulating_train_step,
    model=model,
    tx=tx,
    label_smoothing=config.label_smoothing,
    grad_accum_steps=plan.grad_accum_steps,
    group_mesh=mesh if plan.per_device_groups else None,
    mesa=mesa,
  )
  variants = (True, False) if registry.get(config.optimizer).family == "sam" else (None,)
  train_steps = {
    variant: jax.jit(
      functools.partial(train_step, second_gradient=variant),
      in_shardings=(state_sharding, replicated, replicated, mesh_lib.batch_sharding(mesh), replicated),
      out_shardings=(state_sharding, replicated, replicated),
      donate_argnums=(0, 1, 2),
    )
    for variant in variants
  }
  sharpness_step = functools.partial(
    steps.sharpness_step,
    model=model,
    label_smoothing=config.label_smoothing,
    rho=config.sharpness_rho,
    num_iters=config.sharpness_num_iters,
  )
  return Setup(
    config=config,
    mesh=mesh,
    info=info,
    steps_per_epoch=steps_per_epoch,
    num_steps=num_steps,
    plan=plan,
    mesa=mesa,
    model=model,
    tx=tx,
    abstract_state=abstract_state,
    state_sharding=state_sharding,
    train_steps=train_steps,
    eval_step=jax.jit(functools.partial(steps.eval_step, model=model, label_smoothing=config.label_smoothing)),
    batch_norm_step=jax.jit(functools.partial(steps.batch_norm_step, model=model)),
    sharpness_step=jax.jit(lambda state, batch: sharpness_step(state, batch=batch)),
    train_metrics=steps.metrics_collection(
      info.num_classes, train=True, grad_norm=plan.grad_norm, mesa=mesa is not None
    ),
  )

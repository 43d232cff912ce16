"""MESA (msam_jax/training/mesa.py): the KL term, the EMA, the training step, resume, train.py."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import pytest

import msam_jax
from msam_jax import models, training
from msam_jax.training import mesa as mesa_lib
from msam_jax.training import mesh as mesh_lib
from msam_jax.training import loop, setup, steps
from msam_jax.training.config import ConfigError, validate_fields
from msam_jax.training.loss import distillation_kl, smoothed_kl_loss
from msam_jax.training.optimizer import build_optimizer
from msam_jax.training.train_state import MesaTrainState, TrainState, create_train_state

from helpers import REPO, assert_trees_equal, final_checkpoint, iter_eqns, load_config, tree_arrays

# ----------------------------------------------------------------------------- the KL term


def _softmax64(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 5.0])
def test_kl_term_matches_a_hand_computation(x64, temperature):
  """T^2 sum_c q_c (log q_c - log p_c), q the teacher's softmax at temperature T, p the model's."""
  rng = np.random.default_rng(0)
  logits, teacher = rng.normal(size=(5, 7)) * 3, rng.normal(size=(5, 7)) * 3
  q, p = _softmax64(teacher / temperature), _softmax64(logits / temperature)
  expected = temperature**2 * (q * (np.log(q) - np.log(p))).sum(-1)
  got = distillation_kl(jnp.asarray(logits), jnp.asarray(teacher), temperature)
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, expected, rtol=1e-13)
  np.testing.assert_allclose(distillation_kl(jnp.asarray(teacher), jnp.asarray(teacher), temperature), 0, atol=1e-13)


def test_kl_term_gradient_is_t_times_p_minus_q_and_none_reaches_the_teacher(x64):
  """d/dz T^2 KL(q || softmax(z / T)) = T (softmax(z / T) - q); the teacher gets no gradient."""
  rng = np.random.default_rng(1)
  logits, teacher, t = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), 5.0
  g_model, g_teacher = jax.grad(lambda z, y: distillation_kl(z, y, t).sum(), argnums=(0, 1))(
    jnp.asarray(logits), jnp.asarray(teacher)
  )
  np.testing.assert_allclose(g_model, t * (_softmax64(logits / t) - _softmax64(teacher / t)), rtol=1e-12)
  np.testing.assert_array_equal(g_teacher, 0.0)


def test_ema_update_matches_a_hand_computation():
  rng = np.random.default_rng(2)
  ema = {"params": {"w": rng.normal(size=(3, 2)).astype(np.float32)}, "batch_stats": {"mean": np.ones(2, np.float32)}}
  params, stats = {"w": rng.normal(size=(3, 2)).astype(np.float32)}, {"mean": np.zeros(2, np.float32)}
  new = mesa_lib.update_ema(ema, params, stats, 0.9)
  np.testing.assert_allclose(new["params"]["w"], 0.9 * ema["params"]["w"] + 0.1 * params["w"], rtol=1e-6)
  np.testing.assert_allclose(new["batch_stats"]["mean"], [0.9, 0.9], rtol=1e-6)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
  "field,value,expected",
  [
    ("mesa_weight", -0.1, "config.mesa_weight=-0.1 must be >= 0.0."),
    ("mesa_decay", 1.0, "config.mesa_decay=1.0 must be in [0, 1)."),
    ("mesa_start_epoch", -1.0, "config.mesa_start_epoch=-1.0 must be >= 0.0."),
    ("mesa_temperature", 0.0, "config.mesa_temperature=0.0 must be > 0.0."),
  ],
)
def test_bad_mesa_fields_give_one_line(field, value, expected):
  with pytest.raises(ConfigError, match="^[^\n]*$") as info:
    validate_fields(load_config("digits", **{field: value}))
  assert expected in str(info.value)


def test_mesa_defaults_are_the_saf_codes_and_off():
  config = training.base_config()
  assert (config.mesa_weight, config.mesa_decay, config.mesa_temperature, config.mesa_start_epoch) == (
    0.0,
    0.9998,
    5.0,
    6.0,
  )
  assert mesa_lib.from_config(config, steps_per_epoch=10) is None
  config.mesa_weight, config.mesa_start_epoch = 0.3, 0.5
  assert mesa_lib.from_config(config, steps_per_epoch=11) == mesa_lib.Mesa(0.3, 0.9998, 5.0, start_step=6)


def test_mesa_class_checks_its_arguments():
  with pytest.raises(ValueError, match="decay must be in"):
    mesa_lib.Mesa(0.3, decay=1.5)
  with pytest.raises(ValueError, match="start_step must be an integer >= 0"):
    mesa_lib.Mesa(0.3, start_step=-1)


# ----------------------------------------------------------------------------- the training step

SMOOTHING = 0.1


class _TinyNet(nn.Module):
  """Batch norm (the EMA model runs it in evaluation mode) and dropout, cheap to compile."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(16)(x.reshape(x.shape[0], -1))
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    x = nn.Dropout(0.2, deterministic=not train)(x)
    return nn.Dense(10)(x)


class _TinyMLP(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    return nn.Dense(10)(nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1))))


def _setup(optimizer, mesa, **config_overrides):
  config = load_config("digits", optimizer=optimizer, rho=0.05, **config_overrides)
  model = _TinyNet()
  tx = build_optimizer(config, steps_per_epoch=10)
  init = functools.partial(create_train_state, model, tx, image_shape=(8, 8, 1), mesa=mesa)
  state = jax.jit(init)(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {
    "image": jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
  }
  return model, tx, state, batch


def _step(model, tx, mesa, **kwargs):
  return jax.jit(
    functools.partial(steps.train_step, model=model, tx=tx, label_smoothing=SMOOTHING, mesa=mesa, **kwargs)
  )


def test_mesa_off_carries_nothing_parameter_sized():
  model = _TinyNet()
  tx = build_optimizer(load_config("digits"), steps_per_epoch=10)
  plain, with_ema = (
    jax.eval_shape(functools.partial(create_train_state, model, tx, image_shape=(8, 8, 1), mesa=m), jax.random.key(0))
    for m in (False, True)
  )
  assert type(plain) is TrainState and not hasattr(plain, "ema")
  assert isinstance(with_ema, MesaTrainState)
  assert jax.tree.structure(with_ema.ema) == jax.tree.structure(
    {"params": plain.params, "batch_stats": plain.batch_stats}
  )


CASES = {"weight 0": mesa_lib.Mesa(0.0), "before the start step": mesa_lib.Mesa(0.3, start_step=5)}


@pytest.mark.parametrize(
  "optimizer,case",
  [  # the plain gradient path, and the SAM family's loss_fn
    ("msam", "weight 0"),
    pytest.param("msam", "before the start step", marks=pytest.mark.slow),
    pytest.param("sam", "weight 0", marks=pytest.mark.slow),
  ],
)
def test_weight_zero_and_steps_before_the_start_equal_the_plain_step_bit_for_bit(optimizer, case):
  model, tx, plain, batch = _setup(optimizer, mesa=False)
  _, _, with_ema, _ = _setup(optimizer, mesa=True)
  plain_step, mesa_step = _step(model, tx, None), _step(model, tx, CASES[case])
  a, b = plain, with_ema
  for _ in range(2):
    a, ma = plain_step(a, batch, jax.random.key(1))
    b, mb = mesa_step(b, batch, jax.random.key(1))
  for field in ("step", "params", "batch_stats", "opt_state"):
    assert_trees_equal(getattr(a, field), getattr(b, field))
  assert ma.compute()["loss"] == mb.compute()["loss"]
  assert mb.compute()["mesa_loss"] == 0.0


@pytest.mark.slow  # compiles the step and its transcription
@pytest.mark.parametrize("optimizer", ["msam", "sam"])  # the plain gradient path and the SAM family's loss_fn
def test_mesa_step_matches_a_hand_transcription(optimizer):
  """Objective, gradient, optimizer update (the SAM family's second pass included) and EMA, written out again."""
  model, tx, state, batch = _setup(optimizer, mesa=True)
  mesa = mesa_lib.Mesa(0.7, decay=0.9, temperature=3.0, start_step=1)
  step = _step(model, tx, mesa)
  init = state
  state, _ = step(state, batch, jax.random.key(1))  # step 0: no term, moves the EMA away from the params
  # The EMA starts as the unperturbed initial model: after one step it is decay * init + (1 - decay) * new.
  first = jax.tree.map(
    lambda e, m: 0.9 * e + 0.1 * m,
    {"params": msam_jax.eval_params(init.params, init.opt_state), "batch_stats": init.batch_stats},
    {"params": msam_jax.eval_params(state.params, state.opt_state), "batch_stats": state.batch_stats},
  )
  for x, y in zip(tree_arrays(first), tree_arrays(state.ema), strict=True):
    np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-7)
  expected_ema_in = state.ema

  # The transcription: teacher logits of the EMA model in evaluation mode, on the same batch.
  teacher = model.apply(state.ema, batch["image"], train=False)
  dropout = jax.random.fold_in(jax.random.key(1), state.step)

  def per_example(params, images=batch["image"], labels=batch["label"], teacher=teacher):
    logits, new_vars = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      images,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": dropout},
    )
    log_p = jax.nn.log_softmax(logits / 3.0)
    q = jax.nn.softmax(teacher / 3.0)
    kl = 9.0 * jnp.sum(q * (jnp.log(q) - log_p), axis=-1)
    return smoothed_kl_loss(logits, labels, SMOOTHING) + 0.7 * kl, new_vars

  def loss_fn(params, indices=None):
    if indices is None:
      return per_example(params)[0]
    return per_example(params, batch["image"][indices], batch["label"][indices], teacher[indices])[0]

  @jax.jit
  def transcription(state):
    (_, new_vars), grads = jax.value_and_grad(lambda p: (per_example(p)[0].mean(), per_example(p)[1]), has_aux=True)(
      state.params
    )
    updates, opt_state = tx.update(
      grads, state.opt_state, state.params, loss_fn=loss_fn, losses=per_example(state.params)[0]
    )
    params = jax.tree.map(jnp.add, state.params, updates)
    stats = new_vars["batch_stats"]
    unperturbed = msam_jax.eval_params(params, opt_state)
    ema = jax.tree.map(lambda e, m: 0.9 * e + 0.1 * m, expected_ema_in, {"params": unperturbed, "batch_stats": stats})
    return params, stats, opt_state, ema

  params, stats, opt_state, ema = transcription(state)

  got, metrics = step(state, batch, jax.random.key(1))
  for x, y in zip(
    tree_arrays((params, stats, opt_state, ema)), tree_arrays((got.params, got.batch_stats, got.opt_state, got.ema))
  ):
    np.testing.assert_allclose(y, x, rtol=2e-5, atol=2e-6)
  # train/loss stays the cross-entropy alone; train/mesa_loss is the added term.
  total = float(jnp.mean(per_example(state.params)[0]))
  logits, _ = model.apply(
    {"params": state.params, "batch_stats": state.batch_stats},
    batch["image"],
    train=True,
    mutable=["batch_stats"],
    rngs={"dropout": dropout},
  )
  cross_entropy = float(jnp.mean(smoothed_kl_loss(logits, batch["label"], SMOOTHING)))
  reported = metrics.compute()
  np.testing.assert_allclose(reported["loss"], cross_entropy, rtol=1e-5)
  np.testing.assert_allclose(reported["mesa_loss"], total - cross_entropy, rtol=1e-4)
  assert reported["mesa_loss"] > 0


def test_the_ema_forward_pass_is_one_lax_cond_on_the_step_count():
  """Skipped before the start step: the step's only `cond` with MESA (sgd has none without it)."""
  model, tx = _TinyNet(), build_optimizer(load_config("digits", optimizer="sgd"), steps_per_epoch=10)
  batch = {"image": jnp.zeros((4, 8, 8, 1)), "label": jnp.zeros(4, jnp.int32)}
  counts = []
  for mesa in (None, mesa_lib.Mesa(0.3, start_step=3)):
    state = jax.eval_shape(
      functools.partial(create_train_state, model, tx, image_shape=(8, 8, 1), mesa=mesa is not None),
      jax.random.key(0),
    )
    step = functools.partial(steps.train_step, model=model, tx=tx, label_smoothing=0.0, mesa=mesa)
    jaxpr = jax.make_jaxpr(step)(state, batch, jax.random.key(1))
    counts.append(sum(e.primitive.name == "cond" for e in iter_eqns(jaxpr.jaxpr)))
  assert counts == [0, 1]


# Without batch norm or dropout accumulation must reproduce the one-batch step, the EMA term included.
@pytest.mark.slow  # compiles accumulated and one-batch steps
def test_mesa_with_accumulation_equals_one_batch():
  config = load_config("digits", optimizer="sam", rho=0.05)
  model = _TinyMLP()
  tx = build_optimizer(config, steps_per_epoch=10)
  state = create_train_state(model, tx, jax.random.key(0), image_shape=(8, 8, 1), mesa=True)
  rng = np.random.default_rng(0)
  batch = {
    "image": jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
  }
  mesa = mesa_lib.Mesa(0.5, decay=0.5, start_step=0)
  results = []
  for k in (1, 2):
    s, step = state, _step(model, tx, mesa, grad_accum_steps=k)
    for _ in range(2):
      s, m = step(s, batch, jax.random.key(1))
    results.append((s, m.compute()))
  (a, ma), (b, mb) = results
  for x, y in zip(tree_arrays(a), tree_arrays(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(ma["mesa_loss"], mb["mesa_loss"], rtol=1e-3, atol=1e-6)
  assert ma["mesa_loss"] > 0


@pytest.mark.slow  # compiles a shard_map step
def test_mesa_with_per_device_m_sharpness_of_the_whole_batch_equals_sam():
  """One device whose group is its whole batch: the shard_map path equals the plain SAM step, the term included."""
  mesa = mesa_lib.Mesa(0.5, decay=0.5, start_step=0)
  model, tx_groups, state, batch = _setup("sam", mesa=True, sam_group_size=16)
  _, tx_whole, _, _ = _setup("sam", mesa=True)
  one_device = mesh_lib.create_mesh(jax.devices()[:1])
  a, _ = _step(model, tx_groups, mesa, group_mesh=one_device)(state, batch, jax.random.key(1))
  b, _ = _step(model, tx_whole, mesa)(state, batch, jax.random.key(1))
  plain, _ = _step(model, tx_whole, None)(
    TrainState(**{k: v for k, v in vars(state).items() if k != "ema"}), batch, jax.random.key(1)
  )
  for x, y in zip(tree_arrays(a.params), tree_arrays(b.params), strict=True):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
  assert not np.allclose(tree_arrays(b.params)[0], tree_arrays(plain.params)[0])


def test_the_ema_is_sharded_like_the_parameters_under_fsdp():
  model = models.build("cnn", 10, width=4)
  tx = build_optimizer(load_config("digits"), steps_per_epoch=10)
  abstract = jax.eval_shape(
    lambda r: create_train_state(model, tx, r, image_shape=(8, 8, 1), mesa=True), jax.random.key(0)
  )
  sharding = mesh_lib.state_sharding(mesh_lib.create_mesh(), abstract, "fsdp", min_bytes=0)
  assert jax.tree.leaves(sharding.ema["params"]) == jax.tree.leaves(sharding.params)
  assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(sharding.ema["params"]))


# ----------------------------------------------------------------------------- runs

RUN = {
  "mesa_weight": 0.3,
  "mesa_start_epoch": 0.2,  # 22 steps per epoch: the term starts at step 5
  "mesa_decay": 0.9,
  "log_every_steps": 4,
  "checkpoint_every_steps": 4,
  "eval_every_epochs": 100,
  "bn_recompute_batches": 2,
  "async_checkpointing": False,
}


@pytest.mark.slow  # one train.py run and two in-process runs
def test_a_mesa_run_trains_through_train_py_and_resumes_exactly(tmp_path, one_device_mesh):
  """train.py runs 4 steps; resumed to 8 in-process it equals an uninterrupted 8-step run, the EMA included."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", TF_CPP_MIN_LOG_LEVEL="2")
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  flags = [f"--config.{k}={v}" for k, v in RUN.items()]
  interrupted = tmp_path / "interrupted"
  cmd = [
    sys.executable,
    os.path.join(REPO, "train.py"),
    f"--config={REPO}/configs/digits.py",
    f"--workdir={interrupted}",
  ]
  result = subprocess.run(
    [*cmd, *flags, "--config.num_train_steps=4"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "with MESA (weight 0.3" in result.stderr and "MESA's EMA model accuracy" in result.stdout
  first = json.loads((interrupted / "results.json").read_text())
  assert first["mesa_ema_bytes_per_device"] >= first["params_bytes_per_device"]

  resumed = training.train_and_evaluate(
    load_config("digits", num_train_steps=8, **RUN), str(interrupted), mesh=one_device_mesh
  )
  whole = training.train_and_evaluate(
    load_config("digits", num_train_steps=8, **RUN), str(tmp_path / "whole"), mesh=one_device_mesh
  )
  _, a = final_checkpoint(str(interrupted))
  _, b = final_checkpoint(str(tmp_path / "whole"))
  assert "ema" in a and not np.allclose(tree_arrays(a["ema"]["params"])[0], tree_arrays(a["params"])[0])
  for x, y in zip(tree_arrays(a), tree_arrays(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert resumed["final_eval_accuracy"] == whole["final_eval_accuracy"]
  assert whole["final_eval_loss"] < np.log(10)  # it learns: below the chance-level loss of 10 classes
  for key in ("final_ema_eval_accuracy", "final_ema_eval_loss", "final_ema_validation_accuracy"):
    assert resumed[key] == whole[key], key
  # final_ema_*: the EMA's parameters and batch-norm statistics evaluated (as the SAF code reports).
  s = setup.build(load_config("digits", num_train_steps=8, **RUN), one_device_mesh)
  ema = TrainState(step=np.int32(8), params=b["ema"]["params"], batch_stats=b["ema"]["batch_stats"], opt_state=())
  for split, prefix in (("test", "final_ema_eval_"), ("validation", "final_ema_validation_")):
    metrics = loop.evaluate(s, ema, s.eval_batches(split))
    assert whole[f"{prefix}accuracy"] == metrics["accuracy"], split
    np.testing.assert_allclose(whole[f"{prefix}loss"], metrics["loss"], rtol=1e-6)
  assert abs(whole["final_ema_eval_loss"] - whole["final_eval_loss"]) > 1e-3  # not the trained model's
  assert not any(k.startswith("final_ema_noisy_train") for k in whole)

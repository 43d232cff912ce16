"""Pod-scale pieces in-process: the FSDP layout rule, gradient accumulation, resharding restores."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import final_checkpoint, load_config, tree_arrays
from jax.sharding import PartitionSpec as P

import msam_jax
from msam_jax import models, training
from msam_jax.training import accumulation, preemption, steps
from msam_jax.training import mesh as mesh_lib
from msam_jax.training.config import ConfigError, validate
from msam_jax.training.optimizer import build_optimizer
from msam_jax.training.train_state import create_train_state


@pytest.mark.parametrize(
  "shape,itemsize,min_bytes,expected",
  [
    ((3, 16, 8), 4, 0, P(None, "data", None)),  # largest divisible dimension
    ((24, 16), 4, 0, P("data", None)),
    ((6, 16), 4, 0, P(None, "data")),  # the largest (6) is not divisible
    ((6, 5), 4, 0, P()),  # none is
    ((8, 8), 4, 0, P("data", None)),  # a tie: the first
    ((), 4, 0, P()),
    ((64, 64), 4, 64 * 64 * 4 + 1, P()),  # below the size threshold
    ((64, 64), 4, 64 * 64 * 4, P("data", None)),
  ],
)
def test_fsdp_spec(shape, itemsize, min_bytes, expected):
  assert mesh_lib.fsdp_spec(shape, itemsize, 8, min_bytes) == expected


def test_bytes_per_device_counts_shards():
  mesh = mesh_lib.create_mesh()
  tree = {"w": jax.ShapeDtypeStruct((16, 3), jnp.float32), "b": jax.ShapeDtypeStruct((3,), jnp.float32)}
  fsdp = mesh_lib.state_sharding(mesh, tree, "fsdp", min_bytes=100)
  assert fsdp["w"].spec == P("data", None) and fsdp["b"].spec == P()
  assert mesh_lib.bytes_per_device(tree, fsdp) == 2 * 3 * 4 + 3 * 4
  assert mesh_lib.bytes_per_device(tree, mesh_lib.state_sharding(mesh, tree)) == 16 * 3 * 4 + 3 * 4


def test_split_and_merge_are_inverse_and_keep_device_blocks():
  x = jnp.arange(16)
  micro = accumulation.split(x, 4)
  np.testing.assert_array_equal(micro[1], [1, 5, 9, 13])  # examples j::k
  np.testing.assert_array_equal(accumulation.merge(micro), x)
  # 2 devices hold 0..7 and 8..15; each holds one contiguous half of every micro-batch.
  assert all(set(np.asarray(m[:2])) <= set(range(8)) for m in micro)


# ViT without batch norm or dropout: accumulation must reproduce the one-batch step.
@pytest.mark.slow  # compiles accumulated and one-batch training steps on 8 devices
@pytest.mark.parametrize("optimizer", ["msam", "adamw_msam", "sam", "adamw_sam", "looksam", "sgd"])
def test_accumulated_step_equals_one_big_batch(optimizer):
  config = load_config(
    "digits",
    optimizer=optimizer,
    rho=0.05,
    optimizer_kwargs={"k": 1} if optimizer == "looksam" else {},
    grad_clip_norm=1.0,
    model="vit",
    model_kwargs={},
  )
  model = models.build("vit", 10, size="Ti", depth=1, dim=16, mlp_dim=32, heads=2, patch_size=4, image_size=8)
  tx = build_optimizer(config, steps_per_epoch=10)
  state = create_train_state(model, tx, jax.random.key(0), image_shape=(8, 8, 1))
  rng = np.random.default_rng(0)
  batch = {
    "image": jnp.asarray(rng.normal(size=(32, 8, 8, 1)), jnp.float32),
    "label": jnp.asarray(rng.integers(0, 10, 32), jnp.int32),
  }
  results = []
  for k in (1, 4):
    step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_smoothing=0.1, grad_accum_steps=k))
    s = state
    for _ in range(3):  # later steps use the optimizer state (momentum, LookSAM's direction)
      s, m = step(s, batch, jax.random.key(1))
    results.append((s, m.compute()))
  (a, ma), (b, mb) = results
  assert not np.allclose(tree_arrays(a.params)[0], tree_arrays(state.params)[0])
  for x, y in zip(tree_arrays(a), tree_arrays(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
  for key in ("loss", "accuracy", "grad_norm"):
    np.testing.assert_allclose(ma[key], mb[key], rtol=1e-5)


@pytest.mark.slow  # compiles accumulated and one-batch training steps on 8 devices
def test_accumulation_averages_batch_norm_statistics():
  """CNN with batch norm: the running statistics move by the micro-batches' mean statistics."""
  config = load_config("digits", num_train_steps=1)
  model = models.build("cnn", 10, width=4)
  tx = build_optimizer(config, steps_per_epoch=10)
  state = create_train_state(model, tx, jax.random.key(0), image_shape=(8, 8, 1))
  images = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 1)), jnp.float32)
  batch = {"image": images, "label": jnp.zeros(8, jnp.int32)}
  new, _ = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, label_smoothing=0.0, grad_accum_steps=2))(
    state, batch, jax.random.key(1)
  )
  expected = []
  for j in range(2):  # micro-batch j: examples j::2, through the model alone
    _, v = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, images[j::2], train=True, mutable=["batch_stats"]
    )
    expected.append(v["batch_stats"])
  expected = jax.tree.map(lambda a, b: (a + b) / 2, *expected)
  for x, y in zip(tree_arrays(new.batch_stats), tree_arrays(expected), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "overrides,expected",
  [
    ({"sharding": "zero3"}, "config.sharding='zero3' is not valid; choose one of replicate, fsdp."),
    ({"grad_accum_steps": 3}, "config.grad_accum_steps=3 does not divide the per-device batch 8"),
    ({"grad_accum_steps": 0}, "config.grad_accum_steps=0 must be >= 1."),
    ({"grad_accum_steps": 2, "optimizer": "esam"}, "not supported with esam"),
    ({"fsdp_min_bytes": -1}, "config.fsdp_min_bytes=-1 must be >= 0."),
  ],
)
def test_bad_pod_fields_give_one_line(overrides, expected):
  with pytest.raises(ConfigError, match="^[^\n]*$") as info:
    validate(load_config("digits", **overrides), num_devices=8)
  assert expected in str(info.value)


def _preempt_at(step, monkeypatch):
  monkeypatch.setattr(preemption.Preemption, "reached", lambda self, s: s == step)


@pytest.mark.slow  # trains and checkpoints under two layouts
def test_fsdp_equals_replicated_and_checkpoints_restore_across_layouts(tmp_path, monkeypatch):
  """8 devices replicated vs fsdp; a replicated 8-device run preempted at step 3 resumes as fsdp on 4 devices."""
  flags = dict(
    num_train_steps=6,
    log_every_steps=3,
    bn_recompute_batches=0,
    eval_every_epochs=100,
    fsdp_min_bytes=0,
    grad_accum_steps=2,
  )
  eight, four = mesh_lib.create_mesh(), mesh_lib.create_mesh(jax.devices()[:4])
  replicated = training.train_and_evaluate(load_config("digits", **flags), str(tmp_path / "r"), mesh=eight)
  fsdp = training.train_and_evaluate(load_config("digits", sharding="fsdp", **flags), str(tmp_path / "f"), mesh=eight)
  assert fsdp["opt_state_bytes_per_device"] < replicated["opt_state_bytes_per_device"] / 4
  assert fsdp["params_bytes_per_device"] < replicated["params_bytes_per_device"] / 4

  with monkeypatch.context() as m:
    _preempt_at(3, m)
    with pytest.raises(training.Preempted, match="step 3"):
      training.train_and_evaluate(load_config("digits", **flags), str(tmp_path / "x"), mesh=eight)
  assert final_checkpoint(str(tmp_path / "x"))[0] == 3
  resumed = training.train_and_evaluate(load_config("digits", sharding="fsdp", **flags), str(tmp_path / "x"), mesh=four)
  assert resumed["sharding"] == "fsdp"

  _, r = final_checkpoint(str(tmp_path / "r"))
  for other in ("f", "x"):
    step, o = final_checkpoint(str(tmp_path / other))
    assert step == 6
    for a, b in zip(tree_arrays(r), tree_arrays(o), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sam_and_looksam_take_the_second_gradient_from_grad_fn():
  """Hand case: loss = |w|^2, so g = 2w, e = rho g/|g|, g2 = 2(w + e); sgd(0.1) gives -0.1 g2."""
  params = {"w": jnp.array([1.0, -2.0])}

  def loss_fn(p, indices=None):
    return jnp.full(3, jnp.sum(p["w"] ** 2))

  def unusable_loss_fn(p, indices=None):
    raise AssertionError("loss_fn called although grad_fn was given")

  grad_fn = jax.grad(lambda p: loss_fn(p).mean())
  grads = grad_fn(params)
  e = 0.5 * grads["w"] / jnp.sqrt(20.0)
  expected = -0.1 * 2 * (params["w"] + e)
  for tx in (msam_jax.sam(optax.sgd(0.1), 0.5), msam_jax.looksam(optax.sgd(0.1), 0.5, k=1)):
    state = tx.init(params)
    plain, _ = tx.update(grads, state, params, loss_fn=loss_fn)
    via, _ = tx.update(grads, state, params, loss_fn=unusable_loss_fn, grad_fn=grad_fn)
    np.testing.assert_allclose(plain["w"], expected, rtol=1e-6)
    np.testing.assert_allclose(via["w"], expected, rtol=1e-6)

"""Config -> optimizer: every name builds, follows its schedules, clips where the config says."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
from msam_jax.optim import current_hyperparams, needs_loss_fn, perturbs_params, registry, schedules
from msam_jax.training.config import OPTIMIZERS, base_config
from msam_jax.training.optimizer import build_optimizer

from helpers import everyday, load_config

STEPS_PER_EPOCH = 4
PARAMS = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.3)}
TARGETS = jnp.array([[0.5, 1.0, -1.0], [1.0, 0.0, 2.0]])


def loss_fn(params, indices=None):
  targets = TARGETS if indices is None else TARGETS[indices]
  return jnp.sum((params["w"] - targets) ** 2, axis=-1) + params["b"] ** 2


def _run(tx, num_steps):
  params, state = PARAMS, tx.init(PARAMS)
  hypers = []
  for _ in range(num_steps):
    grads = jax.grad(lambda p: loss_fn(p).mean())(params)
    updates, state = tx.update(grads, state, params, loss_fn=loss_fn, losses=loss_fn(params))
    params = optax.apply_updates(params, updates)
    hypers.append({k: float(v) for k, v in current_hyperparams(state).items()})
  return params, state, hypers


@pytest.mark.parametrize("name", everyday(OPTIMIZERS, keep=("msam", "sam", "gsam")))
def test_every_optimizer_follows_the_configured_schedules(name):
  config = load_config(
    "cifar100_wrn16_4",
    optimizer=name,
    num_epochs=3,
    rho=0.5,
    rho_schedule="start_ramp",
    rho_ramp_epochs=1.0,
    esam_gamma=1.0,
  )
  tx = build_optimizer(config, STEPS_PER_EPOCH)
  family = registry.get(name).family
  assert needs_loss_fn(tx) == (family == "sam")
  params, state, hypers = _run(tx, 6)
  lr = schedules.lr_start_ramp_cos(0.5, epochs=3, steps_per_epoch=STEPS_PER_EPOCH, ramp_epochs=1.0)
  rho = schedules.rho_start_ramp(0.5, steps_per_epoch=STEPS_PER_EPOCH, ramp_epochs=1.0)
  if registry.get(name).rho_follows_lr:  # GSAM: rho from config.rho down to gsam_rho_min, with lr
    rho = schedules.gsam_rho(lr, lr_max=0.5, lr_min=0.0, rho_max=0.5, rho_min=config.gsam_rho_min)
  # The state after update n holds the hyper-parameters update n used (count n - 1).
  np.testing.assert_allclose([h["learning_rate"] for h in hypers], [lr(n) for n in range(6)], rtol=1e-6)
  if family != "base":
    np.testing.assert_allclose([h["rho"] for h in hypers], [rho(n) for n in range(6)], rtol=1e-6)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  moved = msam_jax.eval_params(params, state)
  assert perturbs_params(state) == (family == "msam")
  assert (family == "msam") != all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(params))
  )


def test_msam_from_config_equals_the_plain_optimizer():
  config = load_config(
    "cifar100_wrn16_4", optimizer="msam", lr_schedule="const", learning_rate=0.1, rho=0.2, weight_decay=1e-3
  )
  expected, _, _ = _run(msam_jax.msam(0.1, momentum=0.9, rho=0.2, weight_decay=1e-3), 4)
  got, _, _ = _run(build_optimizer(config, STEPS_PER_EPOCH), 4)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_vit_config_clips_gradients_before_adamw():
  config = load_config("imagenet_vit", optimizer="adamw", lr_schedule="const")
  big = {"w": jnp.array([300.0, -400.0, 0.0]), "b": jnp.array(0.0)}
  tx = build_optimizer(config, STEPS_PER_EPOCH)
  reference = optax.chain(optax.clip_by_global_norm(1.0), msam_jax.adamw(1e-3, weight_decay=0.1))
  u1, _ = tx.update(big, tx.init(PARAMS), PARAMS)
  u2, _ = reference.update(big, reference.init(PARAMS), PARAMS)
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_vit_rho_jumps_on_after_eight_epochs():
  config = load_config("imagenet_vit", optimizer="adamw_msam")
  tx = build_optimizer(config, 2)
  _, _, hypers = _run(tx, 18)
  rhos = [h["rho"] for h in hypers]
  assert rhos[:15] == [0.0] * 15 and rhos[16:] == [10.0, 10.0]


def test_every_registry_entry_reads_existing_config_fields():
  config = base_config()
  for name in OPTIMIZERS:
    for keyword, field in registry.get(name).config_fields.items():
      assert field in config, f"{name}: {keyword} reads config.{field}, which base_config lacks"


def test_sam_family_clips_the_gradient_its_base_steps_with():
  """Clipping sits inside SAM, around the base: the SGD step takes the clipped second gradient."""
  config = load_config("cifar100_wrn16_4", optimizer="sam", lr_schedule="const", rho=0.05, grad_clip_norm=1.0)
  reference = msam_jax.sam(
    optax.chain(optax.clip_by_global_norm(1.0), msam_jax.sgd(0.5, momentum=0.9, weight_decay=5e-4)), rho=0.05
  )
  steep_loss_fn = lambda p, indices=None: 1e3 * loss_fn(p, indices)  # second gradient norm >> 1
  grads = jax.grad(lambda p: steep_loss_fn(p).mean())(PARAMS)
  got, want = [
    tx.update(grads, tx.init(PARAMS), PARAMS, loss_fn=steep_loss_fn)[0]
    for tx in (build_optimizer(config, STEPS_PER_EPOCH), reference)
  ]
  assert float(optax.tree.norm(want)) < 0.51  # lr times the clipped norm, plus the weight decay
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6)

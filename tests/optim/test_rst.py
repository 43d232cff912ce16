"""`rst`: randomized SAM. p = 0 is the base and p = 1 is `sam` (the original's SAM
trajectories), exactly; in between, the steps the draws pick are SAM steps and
only those evaluate `loss_fn` (one gradient on base steps), against a
transcription of the rule that draws independently from the seed and the count."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
import optim_oracle as oracle
from msam_jax.optim.numerics import global_norm
from test_oracle import check_common

from helpers import assert_trees_equal

NAME = "SAM/A"  # the original's SAM, SGD base; its batches serve every test here
H = oracle.hyper(NAME)


def sgd():
  return msam_jax.sgd(H["learning_rate"], momentum=H["momentum"], weight_decay=H["weight_decay"])


def test_p_one_is_sam_and_matches_the_original_sam(x64):
  records = oracle.run(msam_jax.rst(sgd(), rho=H["rho"], p=1.0), NAME)
  check_common(NAME, records)
  for got, want in zip(records, oracle.run(msam_jax.sam(sgd(), rho=H["rho"]), NAME), strict=True):
    assert_trees_equal(got["params"], want["params"])
    assert_trees_equal(got["state"].base_state, want["state"].base_state)


def test_p_zero_is_the_base_with_one_gradient_per_step(x64):
  records = oracle.run(msam_jax.rst(sgd(), rho=H["rho"], p=0.0), NAME, steps=4)
  base = oracle.run(sgd(), NAME, steps=4)
  for got, want in zip(records, base, strict=True):
    assert_trees_equal(got["params"], want["params"])
    assert_trees_equal(got["state"].base_state, want["state"])
    assert got["loss_fn_calls"] == []


def draws(p, seed, steps):
  """SAM step? per update, as the rule says: uniform(fold_in(PRNGKey(seed), count)) < p."""
  key = jax.random.PRNGKey(seed)
  return [bool(jax.random.uniform(jax.random.fold_in(key, count)) < p) for count in range(steps)]


def transcription(p, seed, steps):
  """The rule written out: draw from the seed's key chain, then SAM's or the base's gradient."""
  base, params = sgd(), oracle.init_params()
  base_state, sam_steps, out = base.init(params), [], []
  grad = jax.jit(jax.grad(lambda q, x, y: jnp.mean(oracle.per_example_loss(q, x, y))))
  for t, sam in enumerate(draws(p, seed, steps), start=1):
    x, y = oracle.batch(NAME, t)
    g = grad(params, x, y)
    if sam:
      scale = H["rho"] / (global_norm(g) + 1e-12)
      g = grad(jax.tree.map(lambda a, b, s=scale: a + s * b, params, g), x, y)
      sam_steps.append(t)
    updates, base_state = base.update(g, base_state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out, sam_steps


@pytest.mark.parametrize("seed", [0])
def test_the_drawn_steps_are_sam_steps_and_only_they_take_a_second_gradient(x64, seed):
  expected, sam_steps = transcription(0.5, seed, 12)
  assert 0 < len(sam_steps) < 12  # both kinds of step happen
  records = oracle.run(msam_jax.rst(sgd(), rho=H["rho"], p=0.5, seed=seed), NAME)
  for t, (rec, params) in enumerate(zip(records, expected), start=1):
    oracle.assert_close(rec["params"], params, 1e-12, f"step {t}")
    assert len(rec["loss_fn_calls"]) == (1 if t in sam_steps else 0), t
  # The host's draws (vectorised rst_coin) are the device's, bit for bit.
  host = jax.vmap(lambda c: msam_jax.optim.rst_coin(c, 0.5, seed))(np.arange(12))
  assert [t + 1 for t in np.flatnonzero(np.asarray(host))] == sam_steps


def test_the_seed_decides_the_draws():
  picked = lambda seed: [t for t, sam in enumerate(draws(0.5, seed, 12)) if sam]
  assert picked(0) != picked(3) and picked(0) == picked(0)


@pytest.mark.slow
def test_the_drawn_branch_at_p_one_is_sam_to_round_off(x64):
  """p injected (traced): the lax.cond path, every draw below 1."""
  rst = optax.inject_hyperparams(msam_jax.rst, static_args=("base",))(base=sgd(), rho=H["rho"], p=1.0)
  for got, want in zip(oracle.run(rst, NAME, steps=3), oracle.run(msam_jax.sam(sgd(), rho=H["rho"]), NAME, steps=3)):
    oracle.assert_close(got["params"], want["params"], 1e-14)
    assert len(got["loss_fn_calls"]) == 1


def test_p_schedule(x64):
  """p = 0 for the first 3 updates, then 1: no second gradient, then always one."""
  p = optax.join_schedules([optax.constant_schedule(0.0), optax.constant_schedule(1.0)], [3])
  records = oracle.run(msam_jax.rst(sgd(), rho=H["rho"], p=p), NAME, steps=6)
  assert [len(r["loss_fn_calls"]) for r in records] == [0, 0, 0, 1, 1, 1]


@pytest.mark.slow
def test_groups_at_p_one_are_sams_groups(x64):
  rst = msam_jax.rst(sgd(), rho=H["rho"], p=1.0, group_size=2)
  sam = msam_jax.sam(sgd(), rho=H["rho"], group_size=2)
  for got, want in zip(oracle.run(rst, NAME, steps=2), oracle.run(sam, NAME, steps=2), strict=True):
    oracle.assert_close(got["params"], want["params"], 1e-13)


def test_bad_p_is_one_line():
  with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
    msam_jax.rst(sgd(), p=1.5)

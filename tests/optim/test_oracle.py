"""Every optimizer against the original PyTorch code's trajectories (float64).

After every step: the parameters the model holds, `eval_params` (the
unperturbed parameters of the MSAM family), the per-example losses of the step
and the optimizer's buffers, all within 1e-10 relative of the original.
"""

import numpy as np
import optax
import pytest

import msam_jax
import optim_oracle as oracle

RTOL = 1e-10


def build(name: str):
  """msam_jax's counterpart of oracle case `name`, hyper-parameters from the json."""
  opt = name.split("/")[0]
  h = oracle.hyper(name)
  lr = oracle.learning_rate_schedule(name)
  sgd = lambda: msam_jax.sgd(lr, momentum=h["momentum"], weight_decay=h["weight_decay"], nesterov=h["nesterov"])
  adamw = lambda: msam_jax.adamw(lr, b1=h["b1"], b2=h["b2"], eps=h["eps"], weight_decay=h["weight_decay"])
  if opt == "SGD":
    return sgd()
  if opt == "MSAM":
    return msam_jax.msam(lr, momentum=h["momentum"], rho=h["rho"], weight_decay=h["weight_decay"])
  if opt == "AdamW":
    return adamw()
  if opt == "AdamW_MSAM":
    return msam_jax.adamw_msam(lr, b1=h["b1"], b2=h["b2"], eps=h["eps"], weight_decay=h["weight_decay"], rho=h["rho"])
  if opt == "SAM":
    return msam_jax.sam(sgd(), rho=h["rho"])
  if opt == "AdamW_SAM":
    return msam_jax.sam(adamw(), rho=h["rho"])
  if opt == "ESAM":
    return msam_jax.esam(sgd(), rho=h["rho"], beta=h["beta"], gamma=original_esam_gamma(name))
  if opt == "LookSAM":
    return msam_jax.looksam(sgd(), rho=h["rho"], k=h["k"], alpha=h["alpha"])
  raise KeyError(name)


def original_esam_gamma(name: str) -> float:
  """The gamma that makes msam-jax keep what the original kept: (floor(gamma B) - 1) / B."""
  batch_size = oracle.arrays()["data/targets"].shape[1]
  return (int(oracle.hyper(name)["gamma"] * batch_size) - 1) / batch_size


def check_common(name, records):
  """Parameters, eval_params and losses after every step."""
  msam_family = "MSAM" in name
  for t, rec in enumerate(records, start=1):
    what = f"{name} step {t}"
    oracle.assert_close(rec["params"], oracle.recorded(name, t, "params"), RTOL, what + " params")
    expected_eval = oracle.recorded(name, t, "unperturbed" if msam_family else "params")
    oracle.assert_close(rec["eval_params"], expected_eval, RTOL, what + " eval_params")
    oracle.assert_close({"loss": rec["losses"]}, {"loss": oracle.arrays()[f"{name}/step{t:02d}/loss"]}, RTOL, what)


@pytest.mark.parametrize("name", ["SGD/A", "MSAM/A", "MSAM/sched_lr", "AdamW/A", "AdamW_MSAM/A"])
def test_main_loop_optimizers_match_original(x64, name):
  records = oracle.run(build(name), name)
  assert len(records) == oracle.n_steps(name) == 12
  check_common(name, records)
  group = lambda t, key: oracle.arrays()[f"{name}/step{t:02d}/group/{key}"]
  for t, rec in enumerate(records, start=1):
    state, what = rec["state"], f"{name} step {t} state"
    if name.startswith("SGD"):
      oracle.assert_close(optax.tree.get(state, "trace"), oracle.recorded_state(name, t, "momentum_buffer"), RTOL, what)
    elif name.startswith("MSAM"):
      oracle.assert_close(state.momentum, oracle.recorded_state(name, t, "momentum_buffer"), RTOL, what)
      # msam-jax stores c = rho/(||v||+1e-12); the original 1/(||v||+1e-12) and rho.
      c_original = group(t, "rho") * group(t, "inverse_norm_buffer")
      np.testing.assert_allclose(state.offset_scale, c_original, rtol=RTOL)
    else:  # AdamW, AdamW_MSAM
      oracle.assert_close(state.mu, oracle.recorded_state(name, t, "exp_avg"), RTOL, what)
      oracle.assert_close(state.nu, oracle.recorded_state(name, t, "exp_avg_sq"), RTOL, what)
      steps = oracle.recorded_state(name, t, "step")
      assert all(int(s) == int(state.count) == t for s in steps.values())
      if name.startswith("AdamW_MSAM"):
        np.testing.assert_allclose(state.offset_scale, group(t, "norm_factor")[0], rtol=RTOL)


def test_learning_rate_schedule_is_the_recorded_one(x64):
  """The optax schedule built from the json gives the lr the original used at each step."""
  name = "MSAM/sched_lr"
  schedule = oracle.learning_rate_schedule(name)
  recorded_lr = oracle.arrays()[f"{name}/lr"]
  np.testing.assert_array_equal([schedule(count) for count in range(12)], recorded_lr)
  assert len(set(recorded_lr.tolist())) == 2  # it really changes mid-run


def test_injected_adamw_msam_matches_original(x64):
  """With b1 injected (traced) the update reads the old momentum instead of recomputing it."""
  name = "AdamW_MSAM/A"
  h = oracle.hyper(name)
  tx = optax.inject_hyperparams(msam_jax.adamw_msam)(
    learning_rate=h["learning_rate"], b1=h["b1"], b2=h["b2"], eps=h["eps"], weight_decay=h["weight_decay"], rho=h["rho"]
  )
  check_common(name, oracle.run(tx, name))


def test_schedule_under_inject_hyperparams_matches_original(x64):
  """The same run with the lr schedule injected (how the training loop builds it)."""
  name = "MSAM/sched_lr"
  h = oracle.hyper(name)
  tx = optax.inject_hyperparams(msam_jax.msam)(
    learning_rate=oracle.learning_rate_schedule(name),
    momentum=h["momentum"],
    rho=h["rho"],
    weight_decay=h["weight_decay"],
  )
  records = oracle.run(tx, name)
  check_common(name, records)
  lrs = [float(msam_jax.optim.current_hyperparams(r["state"])["learning_rate"]) for r in records]
  # The logged value is the one the *last* update used.
  np.testing.assert_array_equal(lrs, oracle.arrays()[f"{name}/lr"])


@pytest.mark.parametrize("name", ["SAM/A", "AdamW_SAM/A", "ESAM/A", "LookSAM/A"])
def test_sam_family_matches_original(x64, name):
  records = oracle.run(build(name), name)
  check_common(name, records)
  n_forward = oracle.arrays()[f"{name}/n_forward"]
  for t, rec in enumerate(records, start=1):
    state, what = rec["state"], f"{name} step {t} state"
    # The training step's own forward pass + the optimizer's loss_fn evaluations.
    assert 1 + len(rec["loss_fn_calls"]) == n_forward[t - 1], what
    if name.startswith("AdamW"):
      oracle.assert_close(optax.tree.get(state, "mu"), oracle.recorded_state(name, t, "exp_avg"), RTOL, what)
      oracle.assert_close(optax.tree.get(state, "nu"), oracle.recorded_state(name, t, "exp_avg_sq"), RTOL, what)
    else:
      oracle.assert_close(optax.tree.get(state, "trace"), oracle.recorded_state(name, t, "momentum_buffer"), RTOL, what)
    if name.startswith("ESAM"):
      # The sub-batch the second backward ran on is the one the original selected.
      kept = rec["loss_fn_calls"][-1]
      selected = oracle.arrays()[f"{name}/step{t:02d}/esam_selected"]
      np.testing.assert_array_equal(kept, np.flatnonzero(selected))
    if name.startswith("LookSAM"):
      oracle.assert_close(
        state.orthogonal_direction, oracle.recorded_state(name, t, "normalized_orthogonal_gradient"), RTOL, what
      )


def test_esam_without_first_pass_losses_matches_original(x64):
  """ESAM recomputes the first-pass losses itself when `losses=` is not passed."""
  name = "ESAM/A"
  records = oracle.run(build(name), name, steps=3, pass_losses=False)
  check_common(name, records[:3])
  assert [len(r["loss_fn_calls"]) for r in records] == [3, 3, 3]

"""`msam_of`: MSAM around any optax optimizer with a momentum.

Reductions in float64 (the original's AdamW-MSAM trajectories, `msam`, the
base at rho = 0), the coupled-weight-decay difference against a transcription
of its rule, a hand-derived two-step case, the buffer finder, and the state
size (the base's state plus two scalars, no parameter-sized buffer).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
import optim_oracle as oracle
from msam_jax.optim import perturbs_params
from msam_jax.optim.momentum import find_momentum
from test_oracle import RTOL, check_common

from helpers import assert_trees_equal


def test_adamw_base_matches_the_original_adamw_msam(x64):
  name = "AdamW_MSAM/A"
  h = oracle.hyper(name)
  base = msam_jax.adamw(h["learning_rate"], b1=h["b1"], b2=h["b2"], eps=h["eps"], weight_decay=h["weight_decay"])
  records = oracle.run(msam_jax.msam_of(base, rho=h["rho"]), name)
  check_common(name, records)
  for t, rec in enumerate(records, start=1):
    np.testing.assert_allclose(rec["state"].offset_scale, oracle.arrays()[f"{name}/step{t:02d}/group/norm_factor"][0])
    oracle.assert_close(rec["state"].base_state.mu, oracle.recorded_state(name, t, "exp_avg"), RTOL)


def oracle_run(tx, steps=6):
  return oracle.run(tx, "MSAM/A", steps=steps)


def test_sgd_base_without_weight_decay_is_msam(x64):
  h = oracle.hyper("MSAM/A")
  lr, mu, rho = h["learning_rate"], h["momentum"], h["rho"]
  got = oracle_run(msam_jax.msam_of(msam_jax.sgd(lr, momentum=mu), rho=rho))
  want = oracle_run(msam_jax.msam(lr, momentum=mu, rho=rho))
  for g, w in zip(got, want, strict=True):
    oracle.assert_close(g["params"], w["params"], 1e-12)
    oracle.assert_close(g["eval_params"], w["eval_params"], 1e-12)
    oracle.assert_close(optax.tree.get(g["state"], "trace"), w["state"].momentum, 1e-12)


def coupled_decay_transcription(lr, mu, wd, rho, steps):
  """msam_of(sgd(lr, mu, wd), rho) by its rule in numpy: the decay term at the unperturbed p."""
  p_tilde = {k: np.asarray(v) for k, v in oracle.init_params().items()}
  v = {k: np.zeros_like(x) for k, x in p_tilde.items()}
  c = 0.0
  loss_and_grad = jax.jit(oracle.mean_loss_and_grad)
  out = []
  for t in range(1, steps + 1):
    _, g = loss_and_grad(p_tilde, *oracle.batch("MSAM/A", t))
    p = {k: p_tilde[k] + c * v[k] for k in p_tilde}  # undo with the old c and v
    for k in p:
      v[k] = mu * v[k] + np.asarray(g[k]) + wd * p[k]  # msam (the original): wd * p_tilde
      p[k] = p[k] - lr * v[k]
    c = rho / (np.sqrt(sum(np.sum(x * x) for x in v.values())) + 1e-12)
    p_tilde = {k: p[k] - c * v[k] for k in p}
    out.append((dict(p_tilde), p))
  return out


def test_coupled_weight_decay_is_applied_at_the_unperturbed_point(x64):
  h = oracle.hyper("MSAM/A")
  lr, mu, rho, wd = h["learning_rate"], h["momentum"], h["rho"], 0.05
  got = oracle_run(msam_jax.msam_of(msam_jax.sgd(lr, momentum=mu, weight_decay=wd), rho=rho))
  for rec, (p_tilde, p) in zip(got, coupled_decay_transcription(lr, mu, wd, rho, 6), strict=True):
    oracle.assert_close(rec["params"], p_tilde, RTOL)
    oracle.assert_close(rec["eval_params"], p, RTOL)
  # ... and that is not msam's (the original's) rule, by far more than round-off:
  original = oracle_run(msam_jax.msam(lr, momentum=mu, rho=rho, weight_decay=wd))
  gap = max(np.max(np.abs(got[-1]["params"][k] - original[-1]["params"][k])) for k in got[-1]["params"])
  assert gap > 1e-6, gap


@pytest.mark.parametrize(
  "base",
  [
    pytest.param(lambda: optax.lion(0.01), id="lion", marks=pytest.mark.slow),
    pytest.param(lambda: optax.adam(0.01), id="adam", marks=pytest.mark.slow),
    pytest.param(lambda: msam_jax.adamw(0.01, weight_decay=0.1), id="adamw", marks=pytest.mark.slow),
  ],
)
def test_rho_zero_is_the_base_bit_for_bit(base, x64):
  """Op by op (under jit XLA may fuse the base's arithmetic differently: ~1e-16 apart)."""
  plain = oracle.run(base(), "MSAM/A", steps=3, jit=False)
  wrapped = oracle.run(msam_jax.msam_of(base(), rho=0.0), "MSAM/A", steps=3, jit=False)
  for a, b in zip(plain, wrapped, strict=True):
    assert_trees_equal(a["params"], b["params"])
    assert_trees_equal(a["state"], b["state"].base_state)


def test_rho_zero_is_the_base_on_a_tiny_tree():
  """The everyday tier's version of the test above: three updates op by op."""
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array(0.5)}
  results = []
  for tx in (optax.lion(0.1), msam_jax.msam_of(optax.lion(0.1), rho=0.0)):
    p, state = params, tx.init(params)
    for scale in (1.0, -0.5, 2.0):
      updates, state = tx.update(jax.tree.map(lambda x, s=scale: s * (x + 0.25), p), state, p)
      p = optax.apply_updates(p, updates)
    results.append(p)
  assert_trees_equal(*results)


def test_two_steps_by_hand():
  """Trace momentum 0.5, lr 0.1, rho 0.5 on fixed gradients (worked out in the comments)."""
  tx = msam_jax.msam_of(optax.sgd(0.1, momentum=0.5), rho=0.5)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  # m = (3, 4), ||m|| = 5, c = 0.1; update = -0.1 m - 0.1 m
  updates, state = tx.update({"w": jnp.array([3.0, 4.0])}, state, params)
  params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(params["w"], [-0.6, -0.8], rtol=1e-6)
  np.testing.assert_allclose(msam_jax.eval_params(params, state)["w"], [-0.3, -0.4], rtol=1e-6)
  # m = 0.5 (3, 4) + (-1.5, 4) = (0, 6), c = 1/12; update = 0.1 (3, 4) - 0.1 m - m / 12
  updates, state = tx.update({"w": jnp.array([-1.5, 4.0])}, state, params)
  np.testing.assert_allclose(updates["w"], [0.3, -0.7], rtol=1e-6)
  params = optax.apply_updates(params, updates)
  np.testing.assert_allclose(msam_jax.eval_params(params, state)["w"], [-0.3, -1.0], rtol=1e-6)
  np.testing.assert_allclose(state.offset_scale, 0.5 / 6, rtol=1e-6)


PARAMS = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}


@pytest.mark.parametrize(
  "base,field",
  [
    (lambda: optax.sgd(0.1, momentum=0.9), "trace"),
    (lambda: msam_jax.sgd(0.1, weight_decay=1e-3), "trace"),
    (lambda: optax.adamw(0.1), "mu"),
    (lambda: msam_jax.adamw(0.1), "mu"),
    (lambda: optax.lion(0.1), "mu"),
    (lambda: optax.adabelief(0.1), "mu"),
    (lambda: optax.adafactor(0.1, momentum=0.9), "ema"),
  ],
  ids=["optax.sgd", "sgd", "optax.adamw", "adamw", "lion", "adabelief", "adafactor"],
)
def test_finds_the_momentum_of_known_optimizers(base, field):
  state = msam_jax.msam_of(base()).init(PARAMS)
  found = state.momentum_of(state.base_state)
  assert found is optax.tree.get(state.base_state, field)
  assert jax.tree.structure(found) == jax.tree.structure(PARAMS)


def test_finds_muons_two_buffers_and_merges_them():
  """contrib.muon keeps Muon's momentum for matrices and Adam's for the rest."""
  state = msam_jax.msam_of(optax.contrib.muon(0.1)).init(PARAMS)
  found = find_momentum(state.base_state)
  assert jax.tree.map(jnp.shape, found) == {"w": (3, 4), "b": (4,)}
  muon = [s for s in jax.tree.leaves(state.base_state, is_leaf=lambda x: hasattr(x, "ns_coeffs")) if hasattr(s, "mu")]
  assert found["w"] is muon[0].mu["w"]


@pytest.mark.parametrize(
  "base",
  [lambda: optax.sgd(0.1), lambda: msam_jax.sgd(0.1, momentum=0.0), lambda: optax.adafactor(0.1)],
  ids=["optax.sgd", "sgd-momentum-0", "adafactor"],
)
def test_a_base_without_momentum_is_one_clear_error_at_init(base):
  tx = msam_jax.msam_of(base())
  with pytest.raises(ValueError, match="found no gradient-momentum buffer.*pass momentum=lambda base_state"):
    tx.init(PARAMS)


def test_two_buffers_need_the_momentum_option_which_then_works():
  base = optax.chain(optax.trace(0.9), optax.scale_by_adam(), optax.scale(-0.1))
  with pytest.raises(ValueError, match="several momentum buffers.*pass momentum="):
    msam_jax.msam_of(base).init(PARAMS)
  tx = msam_jax.msam_of(base, rho=0.2, momentum=lambda s: s[1].mu)
  state = tx.init(PARAMS)
  grads = jax.tree.map(lambda x: 0.5 * x, PARAMS)
  updates, state = tx.update(grads, state, PARAMS)
  params = optax.apply_updates(PARAMS, updates)
  # eval_params undoes along Adam's mu (the static momentum function in the state), not the trace.
  undone = jax.tree.map(lambda p, m: p + state.offset_scale * m, params, state.base_state[1].mu)
  jax.tree.map(np.testing.assert_allclose, msam_jax.eval_params(params, state), undone)
  with pytest.raises(ValueError, match="momentum that is not a tree like the params"):
    msam_jax.msam_of(base, momentum=lambda s: s[1].mu["w"]).init(PARAMS)


@pytest.mark.parametrize(
  "base",
  [lambda: optax.lion(0.1), lambda: msam_jax.adamw(0.1), lambda: optax.contrib.muon(0.1)],
  ids=["lion", "adamw", "muon"],
)
def test_state_is_the_base_state_plus_two_scalars(base):
  """c and the update count; no parameter-sized buffer (benchmarks/state_memory.py shows the bytes)."""
  base_state = jax.eval_shape(base().init, PARAMS)
  state = jax.eval_shape(msam_jax.msam_of(base()).init, PARAMS)
  assert state.base_state == base_state
  sizes = lambda tree: sorted(x.size for x in jax.tree.leaves(tree))
  assert sorted(sizes(base_state) + [1, 1]) == sizes(state)
  assert perturbs_params(state) and not perturbs_params(base_state)


def test_something_after_it_in_a_chain_is_refused_by_eval_params():
  tx = optax.chain(msam_jax.msam_of(optax.lion(0.1)), optax.scale(0.5))
  with pytest.raises(ValueError, match="member 0 of an optax.chain of 2"):
    msam_jax.eval_params(PARAMS, tx.init(PARAMS))

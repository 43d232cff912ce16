"""Properties that hold by construction, and small cases worked out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
from msam_jax.optim import current_hyperparams, needs_loss_fn
import optim_oracle as oracle
from helpers import assert_trees_close, assert_trees_equal, everyday


def run_fixed_grads(tx, params, grads_seq, *, loss_fn=None):
  """Feeds `tx` a given gradient sequence; returns the params after each step and the states."""
  extra = {} if loss_fn is None else {"loss_fn": loss_fn}

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  out = []
  for grads in grads_seq:
    params, state = step(params, state, grads)
    out.append((params, state))
  return out


def random_tree(key, dtype=jnp.float32):
  k1, k2 = jax.random.split(key)
  return {"w": jax.random.normal(k1, (4, 3), dtype), "b": jax.random.normal(k2, (3,), dtype)}


def random_grads(n, seed=1, dtype=jnp.float32):
  return [random_tree(k, dtype) for k in jax.random.split(jax.random.key(seed), n)]


# ---------------------------------------------------------------- rho = 0 gives the base


@pytest.mark.parametrize("dtype", everyday(["float32", "float64"], keep=("float64",)))
def test_msam_with_rho_zero_is_sgd_bit_for_bit(x64, dtype):
  """On the oracle problem (real gradients at the params each optimizer holds).

  Op by op (no jit) the two are bit-identical. Under `jax.jit` XLA may contract
  SGD's ``p + (-lr) v`` into one fused multiply-add, which MSAM's
  ``p + (c_old v_old - (lr + c) v)`` cannot match, so there the two agree to
  one rounding per step (compounded over the 12 steps).
  """
  params = jax.tree.map(lambda p: p.astype(dtype), oracle.init_params())
  for jit, steps in ((False, 4), (True, 12)):
    msam = oracle.run(
      msam_jax.msam(0.05, momentum=0.9, rho=0.0, weight_decay=5e-3), "SGD/A", params=params, jit=jit, steps=steps
    )
    sgd = oracle.run(msam_jax.sgd(0.05, momentum=0.9, weight_decay=5e-3), "SGD/A", params=params, jit=jit, steps=steps)
    for a, b in zip(msam, sgd):
      if jit:
        assert_trees_close(a["params"], b["params"], rtol=100 * np.finfo(dtype).eps)
      else:
        assert_trees_equal(a["params"], b["params"])
        assert_trees_equal(a["eval_params"], b["params"])
        assert_trees_equal(a["state"].momentum, optax.tree.get(b["state"], "trace"))


def test_adamw_msam_with_rho_zero_is_adamw_bit_for_bit(x64):
  msam = oracle.run(msam_jax.adamw_msam(0.01, weight_decay=5e-3, rho=0.0), "AdamW/A")
  adamw = oracle.run(msam_jax.adamw(0.01, weight_decay=5e-3), "AdamW/A")
  for a, b in zip(msam, adamw):
    assert_trees_equal(a["params"], b["params"])


@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_sam_with_rho_zero_is_its_base(x64, base):
  make = {
    "sgd": lambda: msam_jax.sgd(0.05, weight_decay=5e-3),
    "adamw": lambda: msam_jax.adamw(0.01, weight_decay=5e-3),
  }[base]
  wrapped = oracle.run(msam_jax.sam(make(), rho=0.0), "SGD/A", steps=4)
  plain = oracle.run(make(), "SGD/A", steps=4)
  for a, b in zip(wrapped, plain):
    assert_trees_equal(a["params"], b["params"])


# ------------------------------------------------- eval_params recovers the unperturbed point


def test_eval_params_follows_sgd_under_the_same_gradients():
  """Fed the same gradients, MSAM's unperturbed point moves exactly like SGD."""
  params, grads = random_tree(jax.random.key(0)), random_grads(6)
  msam = run_fixed_grads(msam_jax.msam(0.1, momentum=0.9, rho=0.5), params, grads)
  sgd = run_fixed_grads(msam_jax.sgd(0.1, momentum=0.9), params, grads)
  for (p_msam, s_msam), (p_sgd, _) in zip(msam, sgd):
    assert_trees_close(msam_jax.eval_params(p_msam, s_msam), p_sgd, rtol=1e-5)
    # ... and the stored point is p - c v with ||c v|| = rho.
    offset = jax.tree.map(lambda a, b: a - b, msam_jax.eval_params(p_msam, s_msam), p_msam)
    np.testing.assert_allclose(optax.tree.norm(offset), 0.5, rtol=1e-5)


def test_eval_params_follows_adamw_under_the_same_gradients():
  params, grads = random_tree(jax.random.key(0)), random_grads(6)
  msam = run_fixed_grads(msam_jax.adamw_msam(0.1, weight_decay=0.1, rho=0.5), params, grads)
  adamw = run_fixed_grads(msam_jax.adamw(0.1, weight_decay=0.1), params, grads)
  for (p_msam, s_msam), (p_adamw, _) in zip(msam, adamw):
    assert_trees_close(msam_jax.eval_params(p_msam, s_msam), p_adamw, rtol=1e-5)


def test_eval_params_is_identity_without_msam_state():
  params = random_tree(jax.random.key(0))
  for tx in (msam_jax.sgd(0.1), msam_jax.adamw(0.1), msam_jax.sam(msam_jax.sgd(0.1))):
    assert msam_jax.eval_params(params, tx.init(params)) is params


def test_eval_params_finds_msam_state_in_wrappers():
  """inside chain, inject_hyperparams, MultiSteps and multi_transform."""
  params, grads = random_tree(jax.random.key(0)), random_grads(4)
  reference = run_fixed_grads(msam_jax.msam(0.1, rho=0.5), params, grads)[-1]
  expected = msam_jax.eval_params(*reference)
  wrapped = [
    optax.chain(optax.identity(), msam_jax.msam(0.1, rho=0.5)),
    optax.inject_hyperparams(msam_jax.msam)(learning_rate=0.1, rho=0.5),
    optax.MultiSteps(msam_jax.msam(0.1, rho=0.5), every_k_schedule=1),
  ]
  for tx in wrapped:
    p, s = run_fixed_grads(tx, params, grads)[-1]
    assert_trees_close(p, reference[0], rtol=1e-6)
    assert_trees_close(msam_jax.eval_params(p, s), expected, rtol=1e-6)
  # Two MSAM instances on disjoint parts of the tree: both offsets are undone.
  tx = optax.multi_transform({"w": msam_jax.msam(0.1, rho=0.5), "b": msam_jax.msam(0.2, rho=0.3)}, {"w": "w", "b": "b"})
  p, s = run_fixed_grads(tx, params, grads)[-1]
  alone = {
    k: run_fixed_grads(msam_jax.msam(lr, rho=r), {k: params[k]}, [{k: g[k]} for g in grads])[-1]
    for k, lr, r in (("w", 0.1, 0.5), ("b", 0.2, 0.3))
  }
  for k, (p_k, s_k) in alone.items():
    np.testing.assert_allclose(msam_jax.eval_params(p, s)[k], msam_jax.eval_params(p_k, s_k)[k], rtol=1e-6)


def test_msam_after_gradient_clipping_in_a_chain():
  """chain(clip_by_global_norm, msam): msam sees clipped gradients; eval_params still exact."""
  params, grads = random_tree(jax.random.key(0)), random_grads(5)
  clip = optax.clip_by_global_norm(1.0)
  clipped = [clip.update(g, clip.init(params))[0] for g in grads]
  chained = run_fixed_grads(optax.chain(clip, msam_jax.msam(0.1, rho=0.5)), params, grads)
  direct = run_fixed_grads(msam_jax.msam(0.1, rho=0.5), params, clipped)
  sgd = run_fixed_grads(msam_jax.sgd(0.1), params, clipped)
  for (p_c, s_c), (p_d, _), (p_sgd, _) in zip(chained, direct, sgd):
    assert_trees_close(p_c, p_d, rtol=1e-6)
    assert_trees_close(msam_jax.eval_params(p_c, s_c), p_sgd, rtol=1e-5)


# ------------------------------------------------------------------ worked out by hand


def quadratic_loss_fn(a=2.0):
  """One example, L(w) = a w^2 / 2: gradient a w."""
  return lambda params, indices=None: 0.5 * a * params["w"][None] ** 2


def run_quadratic(tx, w0=1.0, steps=2):
  loss_fn = quadratic_loss_fn()
  params = {"w": jnp.asarray(w0, jnp.float64)}
  state = tx.init(params)
  out = []
  for _ in range(steps):
    grads = jax.grad(lambda p: loss_fn(p).mean())(params)
    updates, state = tx.update(grads, state, params, loss_fn=loss_fn)
    params = optax.apply_updates(params, updates)
    out.append((float(params["w"]), float(msam_jax.eval_params(params, state)["w"])))
  return out


def test_msam_two_steps_by_hand(x64):
  # w0 = 1, L = w^2 (a = 2), lr = 0.1, mu = 0.9, rho = 0.05.
  # step 1: g = 2, v = 2, p = 1 - 0.2 = 0.8, c = 0.05/2, p~ = 0.8 - 0.05 = 0.75
  # step 2: g = 1.5, v = 1.8 + 1.5 = 3.3, p = 0.75 + 0.05 - 0.33 = 0.47, p~ = 0.47 - 0.05 = 0.42
  got = run_quadratic(msam_jax.msam(0.1, momentum=0.9, rho=0.05))
  np.testing.assert_allclose(got, [(0.75, 0.8), (0.42, 0.47)], rtol=1e-11)


def test_sam_two_steps_by_hand(x64):
  # step 1: g1 = 2, e = +0.05, g2 = 2 * 1.05 = 2.1, v = 2.1, w = 1 - 0.21 = 0.79
  # step 2: g1 = 1.58, e = +0.05, g2 = 2 * 0.84 = 1.68, v = 1.89 + 1.68 = 3.57, w = 0.433
  got = run_quadratic(msam_jax.sam(msam_jax.sgd(0.1, momentum=0.9), rho=0.05))
  np.testing.assert_allclose(got, [(0.79, 0.79), (0.433, 0.433)], rtol=1e-11)


def test_looksam_two_steps_by_hand(x64):
  # step 1 (SAM step): as SAM, w = 0.79 (momentum 0). In 1-D g2 is parallel to g,
  # but the 1e-12 in <g2,g>/(||g||^2 + 1e-12) leaves a tiny remainder of g2 > 0,
  # which the normalisation turns into gv = +1 (as in the original).
  # step 2: g = 1.58, g + alpha |g| gv = 1.58 * 1.2 = 1.896, w = 0.79 - 0.1896 = 0.6004
  got = run_quadratic(msam_jax.looksam(msam_jax.sgd(0.1, momentum=0.0), rho=0.05, k=2, alpha=0.2))
  np.testing.assert_allclose(got, [(0.79, 0.79), (0.6004, 0.6004)], rtol=1e-11)


def test_adamw_msam_first_step_by_hand(x64):
  # Adam's first step is lr * sign(g) (eps = 0): p = 1 - 0.1 = 0.9, then the decay
  # (1 - lr wd) = 0.99 gives 0.891; m = 0.1 * 2 = 0.2, c = 0.05/0.2, p~ = 0.891 - 0.05.
  got = run_quadratic(msam_jax.adamw_msam(0.1, eps=0.0, weight_decay=0.1, rho=0.05), steps=1)
  np.testing.assert_allclose(got, [(0.841, 0.891)], rtol=1e-11)


# ------------------------------------------------------------- inject_hyperparams & co


def test_sam_family_under_inject_hyperparams(x64):
  """rho injectable (with a schedule), base inject-wrapped; same numbers, hyperparams visible."""
  rho_schedule = optax.linear_schedule(0.1, 0.3, 10)
  plain = msam_jax.sam(msam_jax.sgd(0.05, momentum=0.9), rho=rho_schedule)
  injected = optax.inject_hyperparams(msam_jax.sam, static_args=("base",))(
    base=optax.inject_hyperparams(msam_jax.sgd)(learning_rate=0.05, momentum=0.9), rho=rho_schedule
  )
  a = oracle.run(plain, "SAM/A", steps=4)
  b = oracle.run(injected, "SAM/A", steps=4)
  for ra, rb in zip(a, b):
    assert_trees_close(rb["params"], ra["params"], rtol=1e-13)
  hyper = current_hyperparams(b[-1]["state"])
  np.testing.assert_allclose(hyper["rho"], rho_schedule(3))
  assert float(hyper["learning_rate"]) == 0.05 and float(hyper["momentum"]) == 0.9
  assert needs_loss_fn(injected) and needs_loss_fn(b[-1]["state"])


@pytest.mark.parametrize("name", ["ESAM", "LookSAM"])
def test_esam_looksam_under_inject_hyperparams(x64, name):
  """Works with the static arguments listed; gamma left dynamic fails clearly under jit."""
  if name == "ESAM":
    make = lambda **kw: optax.inject_hyperparams(msam_jax.esam, **kw)(
      base=msam_jax.sgd(0.05), rho=0.2, beta=1.0, gamma=0.5
    )
    plain = msam_jax.esam(msam_jax.sgd(0.05), rho=0.2, beta=1.0, gamma=0.5)
    static = ("base", "gamma", "seed")
  else:
    make = lambda **kw: optax.inject_hyperparams(msam_jax.looksam, **kw)(
      base=msam_jax.sgd(0.05), rho=0.2, k=2, alpha=0.7
    )
    plain = msam_jax.looksam(msam_jax.sgd(0.05), rho=0.2, k=2, alpha=0.7)
    static = ("base", "k")
  a = oracle.run(plain, "SGD/A", steps=3)
  b = oracle.run(make(static_args=static), "SGD/A", steps=3)
  for ra, rb in zip(a, b):
    assert_trees_close(rb["params"], ra["params"], rtol=1e-13)
  assert float(current_hyperparams(b[-1]["state"])["rho"]) == 0.2
  if name == "ESAM":
    with pytest.raises(ValueError, match="gamma"):
      oracle.run(make(static_args=("base",)), "SGD/A", steps=1)


def test_needs_loss_fn_and_current_hyperparams():
  sgd = msam_jax.sgd(0.1)
  assert not needs_loss_fn(sgd)
  assert not needs_loss_fn(optax.inject_hyperparams(msam_jax.msam)(learning_rate=0.1))
  for tx in (
    msam_jax.sam(sgd),
    msam_jax.esam(sgd),
    msam_jax.looksam(sgd),
    optax.chain(optax.clip_by_global_norm(1.0), msam_jax.sam(sgd)),
    optax.inject_hyperparams(msam_jax.sam, static_args="base")(base=sgd, rho=0.1),
  ):
    assert needs_loss_fn(tx)
  assert current_hyperparams(sgd.init({"w": jnp.zeros(3)})) == {}
  state = optax.inject_hyperparams(msam_jax.msam)(learning_rate=0.1, rho=0.2).init({"w": jnp.zeros(3)})
  assert set(current_hyperparams(state)) == {"learning_rate", "momentum", "rho", "weight_decay"}


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
  "make, argument",
  [
    (lambda: msam_jax.msam(-0.1), "learning_rate"),
    (lambda: msam_jax.msam(0.1, rho=-0.3), "rho"),
    (lambda: msam_jax.msam(0.1, momentum=1.0), "momentum"),
    (lambda: msam_jax.msam(0.1, momentum=-0.1), "momentum"),
    (lambda: msam_jax.sgd(-1.0), "learning_rate"),
    (lambda: msam_jax.sgd(0.1, momentum=1.5), "momentum"),
    (lambda: msam_jax.adamw(-0.1), "learning_rate"),
    (lambda: msam_jax.adamw(0.1, b2=1.0), "b2"),
    (lambda: msam_jax.adamw_msam(0.1, rho=-1.0), "rho"),
    (lambda: msam_jax.sam(msam_jax.sgd(0.1), rho=-0.05), "rho"),
    (lambda: msam_jax.sam(lambda g: g), "base"),
    (lambda: msam_jax.esam(msam_jax.sgd(0.1), gamma=0.0), "gamma"),
    (lambda: msam_jax.esam(msam_jax.sgd(0.1), gamma=1.5), "gamma"),
    (lambda: msam_jax.esam(msam_jax.sgd(0.1), beta=0.0), "beta"),
    (lambda: msam_jax.esam(msam_jax.sgd(0.1), beta=1.01), "beta"),
    (lambda: msam_jax.esam(msam_jax.sgd(0.1), rho=-1.0), "rho"),
    (lambda: msam_jax.looksam(msam_jax.sgd(0.1), k=0), "k"),
    (lambda: msam_jax.looksam(msam_jax.sgd(0.1), k=2.5), "k"),
    (lambda: msam_jax.looksam(msam_jax.sgd(0.1), rho=-1.0), "rho"),
    (lambda: optax.inject_hyperparams(msam_jax.msam)(learning_rate=0.1, rho=-1.0).init({"w": jnp.zeros(2)}), "rho"),
  ],
)
def test_bad_hyperparameters_raise_naming_the_argument(make, argument):
  with pytest.raises(ValueError, match=rf"^{argument} must be"):
    make()


def test_good_edge_values_are_accepted():
  msam_jax.msam(0.0, momentum=0.0, rho=0.0)
  msam_jax.esam(msam_jax.sgd(0.1), beta=1.0, gamma=1.0)
  msam_jax.looksam(msam_jax.sgd(0.1), k=1)
  msam_jax.msam(optax.constant_schedule(-1.0))  # schedules are not evaluated at construction

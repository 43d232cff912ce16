"""``second_gradient=``: the SAM family's per-update static choice of whether to take the second gradient.

The host-decided path (two compiled variants, picked per update from
`registry.second_gradient_steps`) follows the same trajectory as the path
without the argument (LookSAM's and RST's `lax.cond`, the others' second
gradient on every update) to float64 round-off, on the oracle problem; the
skipped updates evaluate no `loss_fn`; and the updates of a rho schedule that
starts at 0 are the base optimizer's, exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
import optim_oracle as oracle
from msam_jax.optim import registry, schedules

from helpers import assert_trees_equal, everyday

NAME = "SAM/A"
H = oracle.hyper(NAME)
STEPS = 12
RTOL = 1e-12


def sgd():
  return msam_jax.sgd(H["learning_rate"], momentum=H["momentum"], weight_decay=H["weight_decay"])


def run(tx, decide, steps=STEPS):
  """`tx` on the oracle batches; `decide(count)` -> `second_gradient` (None: not passed).

  Returns per update: the parameters after it and how many times `loss_fn` ran.
  """
  log = oracle.ForwardLog()
  compiled = {}

  def step_for(flag):
    def step(params, state, x, y):
      losses, grads = oracle.mean_loss_and_grad(params, x, y)
      extra = {} if flag is None else {"second_gradient": flag}
      loss_fn = oracle.make_loss_fn(x, y, log)
      updates, state = tx.update(grads, state, params, loss_fn=loss_fn, losses=losses, **extra)
      return optax.apply_updates(params, updates), state

    return compiled.setdefault(flag, jax.jit(step))

  params = oracle.init_params()
  state, out = tx.init(params), []
  for count in range(steps):
    x, y = oracle.batch(NAME, count % oracle.n_steps(NAME) + 1)
    params, state = step_for(decide(count))(params, state, x, y)
    out.append((params, len(log.take())))
  return out


def assert_same_trajectory(got, want, rtol=RTOL):
  for t, ((p, calls), (q, want_calls)) in enumerate(zip(got, want, strict=True)):
    oracle.assert_close(p, q, rtol, f"update {t}")
    assert calls <= want_calls, t


def host_decisions(name, rho, **hyperparams):
  counts = np.arange(STEPS)
  rho_values = rho(jnp.asarray(counts)) if callable(rho) else rho
  return registry.second_gradient_steps(name, counts, np.asarray(rho_values), hyperparams)


def test_looksam_host_decided_equals_its_lax_cond(x64):
  k = 3
  tx = msam_jax.looksam(sgd(), rho=H["rho"], k=k, alpha=0.5)
  decided = host_decisions("looksam", H["rho"], k=k, alpha=0.5)
  np.testing.assert_array_equal(decided, np.arange(STEPS) % k == 0)
  host = run(tx, lambda c: bool(decided[c]))
  assert_same_trajectory(host, run(tx, lambda c: None))
  assert [calls for _, calls in host] == [1 if d else 0 for d in decided]


def test_rst_host_decided_equals_its_lax_cond_and_the_coins_agree(x64):
  tx = msam_jax.rst(sgd(), rho=H["rho"], p=0.5, seed=3)
  decided = host_decisions("rst", H["rho"], p=0.5, seed=3)
  assert 2 < decided.sum() < STEPS - 2  # several steps of each kind
  cond = run(tx, lambda c: None)
  assert [calls for _, calls in cond] == [1 if d else 0 for d in decided]  # device draws == host draws
  assert_same_trajectory(run(tx, lambda c: bool(decided[c])), cond)


JUMP = 5  # rho_start_jump with 1 step per epoch: rho 0 on updates 0..3, then rho


def late(name):
  """`name` with a rho schedule that starts at 0, and its keyword values for the host rule."""
  rho = schedules.rho_start_jump(H["rho"], steps_per_epoch=1, jump_epochs=JUMP - 1)
  builders = {
    "sam": lambda: (msam_jax.sam(sgd(), rho), {}),
    "sam_groups": lambda: (msam_jax.sam(sgd(), rho, group_size=2), {}),
    "asam": lambda: (msam_jax.asam(sgd(), rho, eta=0.01), {}),
    "gsam": lambda: (msam_jax.gsam(sgd(), rho, alpha=0.3), {}),
    "esam": lambda: (msam_jax.esam(sgd(), rho, beta=0.5, gamma=1.0), {}),
    "looksam": lambda: (msam_jax.looksam(sgd(), rho, k=2, alpha=0.5), {"k": 2}),
    "rst": lambda: (msam_jax.rst(sgd(), rho, p=0.5, seed=1), {"p": 0.5, "seed": 1}),
  }
  tx, hyperparams = builders[name]()
  return tx, host_decisions(name.removesuffix("_groups"), rho, **hyperparams)


@pytest.mark.parametrize("name", ["sam", "sam_groups", "asam", "gsam", "esam", "looksam", "rst"])
def test_a_rho_schedule_from_zero_skips_the_second_gradient_until_it_jumps(x64, name):
  """Host-decided == without the argument (round-off: at rho 0 the second pass is at p + 0);
  the rho-0 updates are the base optimizer's, bit for bit, and evaluate no loss_fn.

  With groups (m-sharpness) every pass runs per group (of 2 examples here): the rho-0 updates
  take each group's first-pass gradient (one pass), their mean the base's gradient to round-off.
  """
  tx, decided = late(name)
  assert not decided[: JUMP - 1].any() and decided[JUMP - 1 :].any()
  host = run(tx, lambda c: bool(decided[c]))
  assert_same_trajectory(host, run(tx, lambda c: None))
  groups = oracle.batch(NAME, 1)[0].shape[0] // 2 if name == "sam_groups" else 0
  assert [calls for _, calls in host] == [groups * (1 + d) if groups else int(d) for d in decided]
  for (got, _), (want, _) in zip(host[: JUMP - 1], run(sgd(), lambda c: None, steps=JUMP - 1), strict=True):
    if groups:
      oracle.assert_close(got, want, RTOL)
    else:
      assert_trees_equal(got, want)


def test_looksam_jump_between_its_sam_steps_trains_as_the_base_until_the_next_one(x64):
  """rho turns on at update 4, k = 3: updates 4 and 5 reuse gv, still zero (docs/algorithms.md),
  so they are the base's steps; the first SAM step is update 6."""
  rho = schedules.rho_start_jump(H["rho"], steps_per_epoch=1, jump_epochs=4)
  tx = msam_jax.looksam(sgd(), rho, k=3, alpha=0.5)
  decided = host_decisions("looksam", rho, k=3)
  np.testing.assert_array_equal(decided, [False] * 6 + [True, False, False] * 2)
  host = run(tx, lambda c: bool(decided[c]))
  assert_same_trajectory(host, run(tx, lambda c: None))
  base = run(sgd(), lambda c: None, steps=7)
  for (got, _), (want, _) in zip(host[:6], base[:6], strict=True):
    assert_trees_equal(got, want)
  assert not np.allclose(host[6][0]["0.weight"], base[6][0]["0.weight"], rtol=1e-9)


def test_esam_without_second_gradient_is_the_base_step_not_its_rho_zero_subset_step(x64):
  """Below gamma 0.99 ESAM at rho 0 still steps with the gradient of a subset (chosen by
  round-off "sharpness"); second_gradient=False (what a loop passes at rho 0) steps with the
  whole batch's gradient, as the base does."""
  tx = msam_jax.esam(sgd(), rho=0.0, beta=1.0, gamma=0.5)
  skipped, own = run(tx, lambda c: False, steps=2), run(tx, lambda c: None, steps=2)
  for (got, calls), (want, _) in zip(skipped, run(sgd(), lambda c: None, steps=2), strict=True):
    assert_trees_equal(got, want)
    assert calls == 0
  assert not np.allclose(own[0][0]["0.weight"], skipped[0][0]["0.weight"], rtol=1e-6)


@pytest.mark.parametrize("name", everyday(registry.names(), keep=("msam", "lion", "esam", "looksam", "rst")))
def test_every_optimizer_accepts_the_argument_and_only_the_sam_family_reads_it(x64, name):
  """Passed through a chain (as a clipped training optimizer is), for every registry entry."""
  params = oracle.init_params()
  x, y = oracle.batch(NAME, 1)
  losses, grads = oracle.mean_loss_and_grad(params, x, y)
  tx = optax.chain(optax.clip_by_global_norm(10.0), registry.build(name, learning_rate=0.1, rho=0.05, p=1.0))
  state = tx.init(params)

  def update(**extra):
    return tx.update(grads, state, params, loss_fn=oracle.make_loss_fn(x, y), losses=losses, **extra)[0]

  plain, without, with_ = update(), update(second_gradient=False), update(second_gradient=True)
  if registry.get(name).family != "sam":
    assert_trees_equal(without, plain)
    assert_trees_equal(with_, plain)
  else:  # LookSAM's first update and RST at p = 1 are SAM steps
    oracle.assert_close(with_, plain, RTOL)  # round-off: lax.cond's branch compiles apart
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(without), jax.tree.leaves(with_)))


def test_second_gradient_is_a_python_bool():
  params = {"w": jnp.ones(2)}
  tx = msam_jax.sam(msam_jax.sgd(0.1))
  loss_fn = lambda p, indices=None: jnp.sum(p["w"] ** 2, keepdims=True)
  with pytest.raises(ValueError, match=r"^second_gradient must be None, True or False .*got Array"):
    tx.update(params, tx.init(params), params, loss_fn=loss_fn, second_gradient=jnp.array(True))

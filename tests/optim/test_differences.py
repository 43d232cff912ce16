"""Where msam-jax deliberately differs from the original, the difference is exactly that one.

1. MSAM stores ``c = rho/||v||`` and undoes the perturbation it made; the
   original stores ``1/||v||`` and undoes with the rho of the *next* step. When
   rho changes, the original's unperturbed point jumps by
   ``(rho_new - rho_old) v/||v||``; nothing else differs.
2. ESAM keeps ``floor(gamma B)`` examples; the original one fewer.
"""

import jax
import numpy as np
import optax

import msam_jax
import optim_oracle as oracle
from test_oracle import RTOL, original_esam_gamma

NAME = "MSAM/A"


def original_msam(rhos):
  """The original MSAM's rule (docs/algorithms.md), rho given per step; numpy float64.

  Returns one record per step: the stored params, the unperturbed params (moved
  back with the rho in force), the momentum and 1/(||v|| + 1e-12).
  """
  h = oracle.hyper(NAME)
  lr, mu, wd = h["learning_rate"], h["momentum"], h["weight_decay"]
  p_tilde = {k: np.asarray(v) for k, v in oracle.init_params().items()}
  v = {k: np.zeros_like(x) for k, x in p_tilde.items()}
  inverse_norm = 0.0
  records = []
  loss_and_grad = jax.jit(oracle.mean_loss_and_grad)
  for t, rho in enumerate(rhos, start=1):
    _, grads = loss_and_grad(p_tilde, *oracle.batch(NAME, t))
    for k in p_tilde:
      d = np.asarray(grads[k]) + wd * p_tilde[k]
      p = p_tilde[k] + rho * inverse_norm * v[k]  # undo with the *current* rho
      v[k] = mu * v[k] + d
      p_tilde[k] = p - lr * v[k]
    inverse_norm = 1.0 / (np.sqrt(sum(np.sum(x * x) for x in v.values())) + 1e-12)
    p_tilde = {k: p_tilde[k] - rho * inverse_norm * v[k] for k in p_tilde}
    records.append(
      {
        "params": dict(p_tilde),
        "unperturbed": {k: p_tilde[k] + rho * inverse_norm * v[k] for k in p_tilde},
        "momentum": dict(v),
        "inverse_norm": inverse_norm,
      }
    )
  return records


def test_reference_of_the_original_msam_reproduces_the_oracle(x64):
  """The transcription used below is the original: it matches the recorded trajectory."""
  records = original_msam([oracle.hyper(NAME)["rho"]] * oracle.n_steps(NAME))
  for t, rec in enumerate(records, start=1):
    oracle.assert_close(rec["params"], oracle.recorded(NAME, t, "params"), RTOL)
    oracle.assert_close(rec["unperturbed"], oracle.recorded(NAME, t, "unperturbed"), RTOL)


def test_msam_rho_change_differs_from_the_original_by_exactly_the_undo_jump(x64):
  change_step, rho_old, rho_new = 6, 0.3, 0.1
  rho = optax.join_schedules([optax.constant_schedule(rho_old), optax.constant_schedule(rho_new)], [change_step - 1])
  original = original_msam([float(rho(count)) for count in range(oracle.n_steps(NAME))])
  h = oracle.hyper(NAME)
  tx = msam_jax.msam(h["learning_rate"], momentum=h["momentum"], rho=rho, weight_decay=h["weight_decay"])
  step = jax.jit(lambda p, s, x, y: oracle.train_step(tx, p, s, x, y))
  params = oracle.init_params()
  state = tx.init(params)
  for t in range(1, oracle.n_steps(NAME) + 1):
    params, state, _ = step(params, state, *oracle.batch(NAME, t))
    expected = original[t - 1]
    if t == change_step:
      # The original undid the step-5 perturbation (made with rho_old) with rho_new:
      before = original[t - 2]
      jump = {k: (rho_old - rho_new) * before["inverse_norm"] * before["momentum"][k] for k in params}
      shifted = lambda tree, jump=jump: {k: np.asarray(tree[k]) - jump[k] for k in tree}
      oracle.assert_close(shifted(params), expected["params"], RTOL, f"step {t}")
      oracle.assert_close(shifted(msam_jax.eval_params(params, state)), expected["unperturbed"], RTOL, f"step {t}")
      assert max(np.max(np.abs(j)) for j in jump.values()) > 1e-3  # a real difference
      # Shift our run by the jump: from here on it is the original again.
      params = jax.tree.map(lambda p, j: p - j, params, jump)
    else:
      oracle.assert_close(params, expected["params"], RTOL, f"step {t}")
      oracle.assert_close(msam_jax.eval_params(params, state), expected["unperturbed"], RTOL, f"step {t}")
    oracle.assert_close(state.momentum, expected["momentum"], RTOL, f"step {t}")


def test_esam_keeps_floor_gamma_b_where_the_original_keeps_one_fewer(x64):
  name = "ESAM/A"
  h = oracle.hyper(name)
  batch_size = oracle.arrays()["data/targets"].shape[1]
  assert original_esam_gamma(name) * batch_size == int(h["gamma"] * batch_size) - 1 == 7

  make = lambda gamma: msam_jax.esam(
    msam_jax.sgd(h["learning_rate"], momentum=h["momentum"], weight_decay=h["weight_decay"]),
    rho=h["rho"],
    beta=h["beta"],
    gamma=gamma,
  )
  records = oracle.run(make(h["gamma"]), name)
  kept = [r["loss_fn_calls"][-1] for r in records]
  assert all(k.shape == (int(h["gamma"] * batch_size),) == (8,) for k in kept)

  # Step 1 (same starting point as the original): the original's 7 plus the 8th sharpest.
  sharpness = oracle.arrays()[f"{name}/step01/esam_instance_sharpness"]
  selected = oracle.arrays()[f"{name}/step01/esam_selected"]
  eighth = np.argsort(-sharpness)[7]
  assert not selected[eighth]
  np.testing.assert_array_equal(kept[0], np.sort(np.append(np.flatnonzero(selected), eighth)))

  # ... and the step is the original's with that one example added to the second pass:
  # first SGD step p - lr (g2 + wd p), g2 over the 8 examples at p + e (e recorded).
  p0 = oracle.init_params()
  x, y = oracle.batch(name, 1)
  e = oracle.recorded_state(name, 1, "e_w")
  g2 = jax.grad(lambda p: oracle.per_example_loss(p, x[kept[0]], y[kept[0]]).mean())({k: p0[k] + e[k] for k in p0})
  expected = {k: p0[k] - h["learning_rate"] * (g2[k] + h["weight_decay"] * p0[k]) for k in p0}
  oracle.assert_close(records[0]["params"], expected, RTOL)
  # With gamma = 7/16 the same step is the original's (test_oracle checks all 12 steps).
  assert not np.allclose(records[0]["params"]["2.weight"], oracle.recorded(name, 1, "params")["2.weight"], rtol=1e-6)

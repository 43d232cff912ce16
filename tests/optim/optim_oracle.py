"""The oracle problem: the original PyTorch code's trajectories, beside this file.

A tiny float64 MLP in torch layout, ``tanh(x @ W0.T + b0) @ W2.T + b2``, the
original's label-smoothed KL loss, and a driver that runs an optax
transformation for the recorded number of steps the way the original's
training loop did. Everything about the problem is read from
trajectories.json / trajectories.npz, nothing is typed in by hand.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

import msam_jax

DATA = pathlib.Path(__file__).resolve().parent
META = json.loads((DATA / "trajectories.json").read_text())
PROBLEM = META["problem"]
PARAM_NAMES = PROBLEM["param_names"]
SMOOTHING = META["cases"]["SGD/A"]["Args"]["label_smoothing"]
_ARRAYS = None


def arrays():
  """The npz contents as a dict of numpy arrays (loaded once)."""
  global _ARRAYS
  if _ARRAYS is None:
    with np.load(DATA / "trajectories.npz", allow_pickle=False) as f:
      _ARRAYS = {k: f[k] for k in f.files}
  return _ARRAYS


def case(name: str) -> dict:
  return META["cases"][name]


def n_steps(name: str) -> int:
  return case(name)["n_steps"]


def recorded(name: str, step: int, what: str) -> dict[str, np.ndarray]:
  """Per-parameter arrays `<name>/stepNN/<what>/<p>` (what: params, unperturbed, ...)."""
  return {p: arrays()[f"{name}/step{step:02d}/{what}/{p}"] for p in PARAM_NAMES}


def recorded_state(name: str, step: int, key: str) -> dict[str, np.ndarray]:
  return {p: arrays()[f"{name}/step{step:02d}/state/{p}/{key}"] for p in PARAM_NAMES}


def init_params() -> dict[str, jax.Array]:
  return {p: jnp.asarray(arrays()[f"init/params/{p}"]) for p in PARAM_NAMES}


def batch(name: str, step: int) -> tuple[jax.Array, jax.Array]:
  """Inputs and targets of 1-based step `step` of case `name`."""
  index = int(arrays()[f"{name}/batch_index"][step - 1])
  return (jnp.asarray(arrays()["data/inputs"][index]), jnp.asarray(arrays()["data/targets"][index]))


def logits(params, x):
  hidden = jnp.tanh(x @ params["0.weight"].T + params["0.bias"])
  return hidden @ params["2.weight"].T + params["2.bias"]


def per_example_loss(params, x, y, smoothing: float = SMOOTHING):
  """The original's smooth_crossentropy: KL(q || softmax), q = 1-s / s/(C-1)."""
  z = logits(params, x)
  num_classes = z.shape[-1]
  q = jnp.full(z.shape, smoothing / (num_classes - 1), z.dtype)
  q = q.at[jnp.arange(z.shape[0]), y].set(1.0 - smoothing)
  return jnp.sum(q * (jnp.log(q) - jax.nn.log_softmax(z)), axis=-1)


class ForwardLog:
  """Records, at run time, every evaluation of `loss_fn` (and its `indices`)."""

  def __init__(self):
    self.calls: list = []

  def record(self, indices=None):
    self.calls.append(None if indices is None else np.asarray(indices))

  def take(self) -> list:
    jax.effects_barrier()
    calls, self.calls = self.calls, []
    return calls


def make_loss_fn(x, y, log: ForwardLog | None = None):
  """`loss_fn(params, indices=None)` -> per-example losses, as the SAM family wants it."""

  def loss_fn(params, indices=None):
    if log is not None:
      if indices is None:
        jax.debug.callback(log.record)
      else:
        jax.debug.callback(log.record, indices)
    if indices is not None:
      return per_example_loss(params, x[indices], y[indices])
    return per_example_loss(params, x, y)

  return loss_fn


def mean_loss_and_grad(params, x, y):
  def mean_loss(p):
    losses = per_example_loss(p, x, y)
    return losses.mean(), losses

  (_, losses), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
  return losses, grads


def train_step(tx, params, opt_state, x, y, *, pass_losses=True, log=None):
  """One step as the training loop does it (loss_fn always; only the SAM family uses it)."""
  losses, grads = mean_loss_and_grad(params, x, y)
  extra = {"loss_fn": make_loss_fn(x, y, log)}
  if pass_losses:
    extra["losses"] = losses
  updates, opt_state = tx.update(grads, opt_state, params, **extra)
  return optax.apply_updates(params, updates), opt_state, losses


def run(tx, name: str, *, steps: int | None = None, jit: bool = True, params=None, pass_losses: bool = True):
  """Runs `tx` on the batches of case `name`; one record per step.

  Each record holds the parameters after the step (`params`), `eval_params`,
  the per-example losses of the step, the optimizer state, and `loss_fn_calls`:
  the `indices` argument (None: whole batch) of every `loss_fn` evaluation the
  optimizer made at run time.
  """
  steps = n_steps(name) if steps is None else steps
  params = init_params() if params is None else params
  state = tx.init(params)
  log = ForwardLog()
  step_fn = lambda p, s, x, y: train_step(tx, p, s, x, y, pass_losses=pass_losses, log=log)
  if jit:
    step_fn = jax.jit(step_fn)
  records = []
  for t in range(1, steps + 1):
    x, y = batch(name, t)
    params, state, losses = step_fn(params, state, x, y)
    records.append(
      {
        "params": params,
        "eval_params": msam_jax.eval_params(params, state),
        "losses": losses,
        "state": state,
        "loss_fn_calls": log.take(),
      }
    )
  return records


def assert_close(actual, expected, rtol=1e-10, what=""):
  """Elementwise within `rtol` relative (plus a floor of rtol * the tensor's scale)."""
  for key in expected:
    a, e = np.asarray(actual[key]), np.asarray(expected[key])
    assert a.shape == e.shape, (what, key, a.shape, e.shape)
    scale = max(np.max(np.abs(e)), 1e-300)
    np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * 1e-3 * scale, err_msg=f"{what} {key}")


def hyper(name: str) -> dict:
  """The case's constructor kwargs, renamed to msam_jax's argument names."""
  kw = dict(case(name)["constructor_kwargs"])
  out = {"learning_rate": kw.pop("lr")}
  if "betas" in kw:
    out["b1"], out["b2"] = kw.pop("betas")
  out.update(kw)
  return out


def learning_rate_schedule(name: str):
  """The case's learning rate as an optax schedule (update count -> lr).

  The recorded schedule sets `lr` before 1-based step `from_step`, i.e. for
  update counts >= from_step - 1.
  """
  lr = hyper(name)["learning_rate"]
  changes = case(name)["schedule"]
  if not changes:
    return lr
  pieces, boundaries = [optax.constant_schedule(lr)], []
  for change in changes:
    assert set(change) == {"from_step", "lr"}, change
    pieces.append(optax.constant_schedule(change["lr"]))
    boundaries.append(change["from_step"] - 1)
  return optax.join_schedules(pieces, boundaries)

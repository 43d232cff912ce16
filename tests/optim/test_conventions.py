"""optax's conventions, checked over every registered optimizer (`optimizer_zoo.OPTIMIZERS`).

The checks optax applies to its own optimizers: extra update arguments are
accepted, a second jitted call does not recompile, small standard problems are
solved (at `eval_params` for the MSAM family), `optax.inject_hyperparams` and
`optax.MultiSteps` wrap it, and low/high-precision parameters keep their dtype
with finite updates. Every update gets ``loss_fn=`` and ``losses=``, as the
training step passes them: optimizers that need no loss ignore them.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import everyday
from optimizer_zoo import MSAM_FAMILY, OPTIMIZERS, make

import msam_jax

NAMES = sorted(OPTIMIZERS)
# Hyper-parameters that fix static shapes (ESAM's sub-batch size) stay Python numbers.
STATIC_ARGS = ("gamma",)


def parabola(dtype=jnp.float32):
  """An ill-conditioned quadratic (curvatures 1 and 10), as two equal 'examples'."""
  curvature, target = jnp.asarray([1.0, 10.0], dtype), jnp.asarray([1.0, -2.0], dtype)

  def loss_fn(params, indices=None):
    losses = jnp.full(2, 0.5 * jnp.sum(curvature * (params["w"] - target) ** 2))
    return losses if indices is None else losses[indices]

  return {"w": jnp.zeros(2, dtype)}, loss_fn, {"w": target}


def least_squares(dtype=jnp.float32):
  """Linear regression on 16 examples with an exact solution; two leaves."""
  x = jax.random.normal(jax.random.key(0), (16, 3)).astype(dtype)
  w_true, b_true = jnp.asarray([0.5, -1.0, 2.0], dtype), jnp.asarray(0.3, dtype)
  y = x @ w_true + b_true

  def loss_fn(params, indices=None):
    xs, ys = (x, y) if indices is None else (x[indices], y[indices])
    return 0.5 * (xs @ params["w"] + params["b"] - ys) ** 2

  return ({"w": jnp.zeros(3, dtype), "b": jnp.zeros([], dtype)}, loss_fn, {"w": w_true, "b": b_true})


PROBLEMS = {"parabola": parabola, "least_squares": least_squares}


def step(tx, params, state, loss_fn):
  losses = loss_fn(params)
  grads = jax.grad(lambda p: loss_fn(p).mean())(params)
  updates, state = tx.update(grads, state, params, loss_fn=loss_fn, losses=losses)
  return optax.apply_updates(params, updates), state


def run(tx, params, loss_fn, num_steps):
  def body(carry, _):
    return step(tx, *carry, loss_fn), None

  (params, state), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=num_steps)
  return params, state


@pytest.mark.parametrize("name", everyday(NAMES, keep=("msam", "sam")))
def test_update_accepts_and_ignores_extra_args(name):
  tx = make(name)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  params, loss_fn, _ = least_squares()
  grads = jax.grad(lambda p: loss_fn(p).mean())(params)
  state = tx.init(params)
  expected, _ = tx.update(grads, state, params, loss_fn=loss_fn, losses=loss_fn(params))
  got, _ = tx.update(
    grads, state, params, loss_fn=loss_fn, losses=loss_fn(params), value=jnp.asarray(1.0), unrelated="x"
  )
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  # Inside a chain whose other member wants an argument of its own.
  chained = optax.chain(tx, optax.contrib.reduce_on_plateau(patience=5))
  chained.update(grads, chained.init(params), params, loss_fn=loss_fn, value=jnp.asarray(1.0))


@pytest.mark.parametrize("name", NAMES)
def test_second_jitted_call_does_not_recompile(name):
  tx = make(name)
  params, loss_fn, _ = least_squares()
  jitted = jax.jit(lambda p, s: step(tx, p, s, loss_fn))
  state = tx.init(params)
  for _ in range(3):
    params, state = jitted(params, state)
  assert jitted._cache_size() == 1


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("name", NAMES)
def test_converges(name, problem):
  params, loss_fn, solution = PROBLEMS[problem]()
  params, state = run(make(name), params, loss_fn, 600)
  at = msam_jax.eval_params(params, state)
  error = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(at), jax.tree.leaves(solution)))
  assert error < 0.05, (name, problem, error)
  if name in MSAM_FAMILY:  # the model holds perturbed parameters; eval_params matters
    assert at is not params and float(state.offset_scale) > 0


@pytest.mark.parametrize("name", everyday(NAMES, keep=("msam", "sam")))
def test_works_under_inject_hyperparams(name, x64):
  fn, kwargs = OPTIMIZERS[name]
  params, loss_fn, _ = least_squares(jnp.float64)
  plain, _ = run(fn(**kwargs), params, loss_fn, 5)
  bound = fn.keywords if isinstance(fn, functools.partial) else {}  # ASAM's training mask: not a schedule
  static = tuple(a for a in (*STATIC_ARGS, *bound) if a in inspect.signature(fn).parameters)
  injected, state = run(optax.inject_hyperparams(fn, static_args=static)(**kwargs), params, loss_fn, 5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), injected, plain)
  assert state.hyperparams  # the numeric hyper-parameters were injected


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float64"])
@pytest.mark.parametrize("name", everyday(NAMES, keep=("msam", "sam")))
def test_dtype_is_preserved_and_updates_finite(name, dtype, x64):
  params, loss_fn, _ = least_squares(jnp.dtype(dtype))
  tx = make(name)
  state = tx.init(params)
  for _ in range(3):
    grads = jax.grad(lambda p: loss_fn(p).mean())(params)
    updates, state = tx.update(grads, state, params, loss_fn=loss_fn, losses=loss_fn(params))
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
      assert u.dtype == p.dtype and bool(jnp.all(jnp.isfinite(u)))
    params = optax.apply_updates(params, updates)
  for p in jax.tree.leaves(msam_jax.eval_params(params, state)):
    assert p.dtype == jnp.dtype(dtype) and bool(jnp.all(jnp.isfinite(p)))


SAM_FAMILY = tuple(n for n in NAMES if "base" in OPTIMIZERS[n][1])


@pytest.mark.parametrize("name", everyday([n for n in NAMES if n not in SAM_FAMILY], keep=("msam",)))
def test_works_inside_multi_steps(name):
  k = 3
  params, loss_fn, _ = least_squares()
  tx = optax.MultiSteps(make(name), every_k_schedule=k)
  state = tx.init(params)
  for i in range(2 * k):
    start = params
    params, state = step(tx, params, state, loss_fn)
    moved = any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(start)))
    assert moved == ((i + 1) % k == 0), i
  assert not msam_jax.optim.needs_loss_fn(tx)


SAM_FAMILY_FACTORIES = {
  "sam": lambda: msam_jax.sam(msam_jax.sgd(0.1), rho=0.3),
  "asam": lambda: msam_jax.asam(msam_jax.sgd(0.1), rho=0.3),
  "gsam": lambda: msam_jax.gsam(msam_jax.sgd(0.1), rho=0.3, alpha=0.2),
  "esam": lambda: msam_jax.esam(msam_jax.sgd(0.1), rho=0.3),
  "looksam": lambda: msam_jax.looksam(msam_jax.sgd(0.1), rho=0.3, k=2),
  "rst": lambda: msam_jax.rst(msam_jax.sgd(0.1), rho=0.3, p=0.5),
}


@pytest.mark.parametrize("wrap", ["plain", "jit", "chained"])
@pytest.mark.parametrize("name", everyday(sorted(SAM_FAMILY_FACTORIES), keep=("sam", "esam")))
def test_sam_family_refuses_multi_steps_at_the_first_update(name, wrap):
  """MultiSteps hands the inner update each micro-batch's loss_fn: the second
  gradient would be the last micro-batch's alone. One line, naming the fix."""
  inner = SAM_FAMILY_FACTORIES[name]()
  if wrap == "chained":
    inner = optax.chain(optax.identity(), inner)
  tx = optax.MultiSteps(inner, every_k_schedule=2)
  params, loss_fn, _ = least_squares()
  update = lambda s: step(tx, params, s, loss_fn)
  with pytest.raises(ValueError, match=rf"^{name} cannot run inside optax.MultiSteps: .*grad_fn="):
    (jax.jit(update) if wrap == "jit" else update)(tx.init(params))


@pytest.mark.parametrize("name", everyday(["sam", "gsam", "looksam", "rst"], keep=("sam",)))
def test_sam_family_accumulation_equals_the_whole_batch(name, x64):
  """Accumulating k micro-batches for the SAM family: `grads` the micro-batches'
  mean gradient, `grad_fn` the whole batch's, equals the step on the whole batch
  in float64. `optax.MultiSteps` either refuses or must match it too (it did
  neither: 2.9e-2 apart after one step of sam with k = 2)."""
  pytest.importorskip("flax", reason="msam_jax.training.accumulation: the train extra")
  from msam_jax.training import accumulation

  k, num_steps = 2, 2
  params, loss_fn, _ = least_squares(jnp.float64)
  examples = jnp.arange(16)
  micro_batches = accumulation.split(examples, k)  # micro-batch j: examples j::k
  micro_loss = lambda p, indices, _: loss_fn(p, indices).mean()

  whole = SAM_FAMILY_FACTORIES[name]()
  whole_params, whole_state = params, whole.init(params)
  acc_params, acc_state = params, whole.init(params)
  for _ in range(num_steps):
    whole_params, whole_state = step(whole, whole_params, whole_state, loss_fn)
    grads = accumulation.mean_grad(micro_loss, acc_params, micro_batches)
    grad_fn = lambda p: accumulation.mean_grad(micro_loss, p, micro_batches)
    updates, acc_state = whole.update(grads, acc_state, acc_params, loss_fn=loss_fn, grad_fn=grad_fn)
    acc_params = optax.apply_updates(acc_params, updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14), acc_params, whole_params)
  assert (
    max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(whole_params), jax.tree.leaves(params))) > 0.1
  )

  multi = optax.MultiSteps(SAM_FAMILY_FACTORIES[name](), every_k_schedule=k)
  multi_params, multi_state = params, None
  try:
    multi_state = multi.init(params)
    for _ in range(num_steps):
      for indices in micro_batches:
        micro_fn = lambda p, i=None, indices=indices: loss_fn(p, indices if i is None else indices[i])
        multi_params, multi_state = step(multi, multi_params, multi_state, micro_fn)
  except ValueError as error:
    assert "MultiSteps" in str(error)
  else:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10), multi_params, whole_params)


@pytest.mark.parametrize("name", everyday(MSAM_FAMILY, keep=("msam",)))
def test_multi_steps_equals_one_step_on_the_mean_gradient(name, x64):
  """The perturbed point stays put while gradients accumulate: k micro-batch
  gradients taken there, averaged, give one msam step. (optax's running mean
  rounds at about 1e-8 relative even in float64, hence the tolerance.)"""
  k = 4
  params, loss_fn, _ = least_squares(jnp.float64)
  micro = lambda i: lambda p: loss_fn(p, jnp.arange(4 * i, 4 * i + 4)).mean()
  accumulated, reference = optax.MultiSteps(make(name), k), make(name)
  acc_params, acc_state = params, accumulated.init(params)
  ref_params, ref_state = params, reference.init(params)
  for _ in range(3):  # several outer steps: the perturbation is in place from the second on
    for i in range(k):
      g = jax.grad(micro(i))(acc_params)
      updates, acc_state = accumulated.update(g, acc_state, acc_params)
      acc_params = optax.apply_updates(acc_params, updates)
    mean = jax.tree.map(lambda *g: sum(g) / k, *[jax.grad(micro(i))(ref_params) for i in range(k)])
    updates, ref_state = reference.update(mean, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), acc_params, ref_params)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
      msam_jax.eval_params(acc_params, acc_state),
      msam_jax.eval_params(ref_params, ref_state),
    )
  assert float(ref_state.offset_scale) > 0


@pytest.mark.parametrize("name", everyday([n for n in NAMES if "base" in OPTIMIZERS[n][1]], keep=("sam",)))
def test_sam_family_forwards_unused_extra_args_to_its_base(name):
  """As optax.chain does: the base receives what the wrapper does not consume."""
  fn, kwargs = OPTIMIZERS[name]
  plateau = optax.contrib.reduce_on_plateau(patience=1, factor=0.5, accumulation_size=1)
  tx = fn(**{**kwargs, "base": optax.chain(kwargs["base"], plateau)})
  params, loss_fn, _ = least_squares()
  grads = jax.grad(lambda p: loss_fn(p).mean())(params)
  state = tx.init(params)
  for value in (1.0, 2.0, 3.0):  # a rising loss: the plateau halves the scale
    _, state = tx.update(grads, state, params, loss_fn=loss_fn, value=jnp.asarray(value))
  plateau_state = state.base_state[1]
  assert float(plateau_state.best_value) == 1.0 and float(plateau_state.scale) < 1.0

"""The recipes in examples/ run, on their tiny problems, and do what they claim."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
  spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_example_is_tested():
  assert {p.stem for p in EXAMPLES.glob("*.py")} == {"nnx_msam", "train_state", "optax_loop"}


@pytest.mark.parametrize("name", ["nnx_msam", "train_state"])
def test_msam_and_sam_train_and_evaluate_at_the_unperturbed_point(name):
  results = load(name).main(num_steps=300)
  assert results["msam"] >= 0.9 and results["sam"] >= 0.9, results


def test_nnx_eval_params_takes_nnx_states_and_undoes_the_perturbation():
  from flax import nnx

  import msam_jax

  example = load("nnx_msam")
  x, y = example.two_moons()
  model = example.MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, msam_jax.msam(0.1, rho=0.3), wrt=nnx.Param)
  for _ in range(3):
    example.msam_step(model, optimizer, x, y)
  clean = example.unperturbed(model, optimizer)
  state = nnx.as_pure(optimizer.opt_state)
  for (path, p), c in zip(
    jax.tree_util.tree_leaves_with_path(nnx.as_pure(nnx.state(model, nnx.Param))),
    jax.tree.leaves(nnx.as_pure(nnx.state(clean, nnx.Param))),
  ):
    v = state.momentum
    for key in path:
      v = v[key.key]
    np.testing.assert_allclose(c, p + state.offset_scale * v, rtol=1e-6, err_msg=str(path))
  assert float(state.offset_scale) > 0


def test_optax_loop_converges_and_restores_the_optimizer_state(tmp_path):
  example = load("optax_loop")
  assert example.main(num_steps=200, workdir=str(tmp_path / "run")) < 1e-2
  import jax.numpy as jnp

  params = {"w": jnp.arange(4.0), "b": jnp.ones([])}
  tx = example.make_optimizer(steps_per_epoch=2, accumulate=2)
  x, y = example.problem()
  params, state = example.train(params, tx.init(params), tx, x, y, 5, 16)
  restored_params, restored_state = example.save_and_restore(str(tmp_path / "ckpt"), params, state)
  assert jax.tree.structure(restored_state) == jax.tree.structure(state)
  jax.tree.map(np.testing.assert_array_equal, (restored_params, restored_state), (params, state))

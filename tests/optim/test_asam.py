"""ASAM against both reference codes (numpy transcriptions), its reductions, its mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import msam_jax
from msam_jax.optim import all_but_biases
import variants_oracle as oracle
import variants_problem as vp

LR, MOMENTUM, WD = 0.1, 0.9, 5e-3


def sgd():
  return msam_jax.sgd(LR, momentum=MOMENTUM, weight_decay=WD)


def test_asam_matches_samsunglabs_asam(x64):
  """eta = 0.01 on kernels (torch "weight"), T = 1 on biases; their 1e-16 vs our 1e-12
  changes the perturbation by 1e-12 / ||T g|| relative, far below the tolerance."""
  rho, eta = 0.5, 0.01
  expected = oracle.trajectory(lambda p, x, y, t: oracle.samsunglabs_asam(p, x, y, rho, eta), [LR] * oracle.STEPS)
  got = vp.run(msam_jax.asam(sgd(), rho=rho, eta=eta, mask=all_but_biases))
  vp.assert_trajectory_close(got, expected)


def test_asam_matches_davda54_adaptive_sam(x64):
  rho = 2.0  # davda54/sam's suggested rho for adaptive=True
  expected = oracle.trajectory(lambda p, x, y, t: oracle.davda54_adaptive_sam(p, x, y, rho), [LR] * oracle.STEPS)
  got = vp.run(msam_jax.asam(sgd(), rho=rho, eta=0.0))
  vp.assert_trajectory_close(got, expected)


def test_the_two_references_differ_on_this_problem(x64):
  """So that the two tests above pin down the mask and eta (not a vacuous match)."""
  a = vp.run(msam_jax.asam(sgd(), rho=0.5, eta=0.01, mask=all_but_biases), steps=3)
  b = vp.run(msam_jax.asam(sgd(), rho=0.5, eta=0.01), steps=3)
  c = vp.run(msam_jax.sam(sgd(), rho=0.5), steps=3)
  for other in (b, c):
    assert not np.allclose(a[-1]["Dense_0"]["kernel"], other[-1]["Dense_0"]["kernel"], rtol=1e-6, atol=0)


def test_asam_with_mask_all_false_is_sam_bit_for_bit(x64):
  none = lambda params: jax.tree.map(lambda _: False, params)
  vp.assert_trees_equal(
    vp.run(msam_jax.asam(sgd(), rho=0.3, eta=0.01, mask=none), steps=4), vp.run(msam_jax.sam(sgd(), rho=0.3), steps=4)
  )


def test_mask_as_tree_callable_or_boolean_arrays_agree(x64):
  params = oracle.to_flax(oracle.problem()[0])
  tree = all_but_biases(params)
  arrays = jax.tree.map(jnp.asarray, tree)
  runs = [vp.run(msam_jax.asam(sgd(), mask=m), steps=3) for m in (all_but_biases, tree, arrays)]
  for other in runs[1:]:
    for a, b in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(other)):
      np.testing.assert_allclose(a, b, rtol=1e-14)


def test_all_but_biases_on_flax_parameter_trees():
  flax_linen = pytest.importorskip("flax.linen")

  class Net(flax_linen.Module):
    @flax_linen.compact
    def __call__(self, tokens):
      x = flax_linen.Embed(10, 4)(tokens)
      x = flax_linen.Conv(4, (3,))(x)
      x = flax_linen.LayerNorm()(x)
      x = flax_linen.BatchNorm(use_running_average=True)(x)
      return flax_linen.Dense(2)(x)

  variables = Net().init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))
  flat = {
    "/".join(k.key for k in path): flag
    for path, flag in jax.tree_util.tree_flatten_with_path(all_but_biases(variables["params"]))[0]
  }
  assert flat == {
    "Embed_0/embedding": True,
    "Conv_0/kernel": True,
    "Conv_0/bias": False,
    "LayerNorm_0/scale": True,
    "LayerNorm_0/bias": False,
    "BatchNorm_0/scale": True,
    "BatchNorm_0/bias": False,
    "Dense_0/kernel": True,
    "Dense_0/bias": False,
  }


def test_asam_rho_zero_is_the_base_bit_for_bit(x64):
  vp.assert_trees_equal(
    vp.run(msam_jax.asam(sgd(), rho=0.0, mask=all_but_biases), steps=4), vp.run_base(sgd(), steps=4)
  )


@pytest.mark.parametrize(
  "make, argument",
  [
    (lambda: msam_jax.asam(msam_jax.sgd(0.1), rho=-0.5), "rho"),
    (lambda: msam_jax.asam(msam_jax.sgd(0.1), eta=-0.01), "eta"),
    (lambda: msam_jax.asam(msam_jax.sgd(0.1), group_size=0), "group_size"),
    (lambda: msam_jax.asam(lambda g: g), "base"),
  ],
)
def test_bad_hyperparameters_raise_naming_the_argument(make, argument):
  with pytest.raises(ValueError, match=rf"^{argument} must be"):
    make()


def test_mask_of_another_structure_fails_at_the_first_update(x64):
  tx = msam_jax.asam(sgd(), mask={"Dense_0": {"kernel": True, "bias": False}})
  with pytest.raises(ValueError, match=r"^mask must have the structure of the params"):
    vp.run(tx, steps=1)

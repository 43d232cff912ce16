"""Small variants of every family: jitted training steps, bfloat16, dropout and batch norm."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from msam_jax import models
from msam_jax.models import resnet
from helpers import everyday

NUM_CLASSES = 5
# name -> (a small variant, image shape): the same code paths as the full models.
TINY = {
  "wrn": (lambda **kw: models.build("wrn", NUM_CLASSES, depth=10, width=2, dropout=0.3, **kw), (16, 16, 3)),
  # One block per stage (the depth -> stages tables are covered by the parameter
  # counts): CIFAR stem with basic blocks, ImageNet stem with bottlenecks.
  "resnet_cifar": (
    lambda **kw: resnet.ResNet(
      NUM_CLASSES,
      (1, 1, 1, 1),
      bottleneck=False,
      imagenet_stem=False,
      kernel_init=resnet.td.torch_default_kernel_init,
      width=8,
      **kw,
    ),
    (16, 16, 3),
  ),
  "resnet": (
    lambda **kw: resnet.ResNet(
      NUM_CLASSES,
      (1, 1, 1, 1),
      bottleneck=True,
      imagenet_stem=True,
      kernel_init=resnet.td.he_normal_fan_out,
      width=4,
      **kw,
    ),
    (32, 32, 3),
  ),
  "vit": (
    lambda **kw: models.build(
      "vit", NUM_CLASSES, size="Ti", depth=2, dim=32, heads=2, mlp_dim=64, patch_size=4, image_size=16, **kw
    ),
    (16, 16, 3),
  ),
  "vgg": (
    lambda **kw: models.build("vgg", NUM_CLASSES, depth=11, batch_norm=True, width=8, classifier_width=16, **kw),
    (32, 32, 3),
  ),
  "cnn": (lambda **kw: models.build("cnn", NUM_CLASSES, width=8, **kw), (8, 8, 1)),
}


def key(seed):
  """An "rbg" key: XLA's own generator compiles far faster on CPU than threefry."""
  return jax.random.key(seed, impl="rbg")


def init(model, images):
  return jax.jit(lambda k, x: model.init(k, x, train=False))(key(0), images)


def batch(image_shape, size=4, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(size, *image_shape)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size)
  return jnp.asarray(images), jnp.asarray(labels)


@pytest.mark.slow  # trains every model for several jitted steps
@pytest.mark.parametrize("name", sorted(TINY))
def test_jitted_training_steps_reduce_the_loss_and_update_batch_stats(name):
  make, image_shape = TINY[name]
  model = make()
  images, labels = batch(image_shape)
  variables = init(model, images)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  tx = optax.sgd(0.05, momentum=0.9)

  @jax.jit
  def step(params, batch_stats, opt_state, dropout_key):
    def loss_fn(p):
      logits, updates = model.apply(
        {"params": p, "batch_stats": batch_stats},
        images,
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": dropout_key},
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, updates.get("batch_stats", {}))

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss, logits, grads

  opt_state = tx.init(params)
  losses = []
  for i in range(4):
    params, new_stats, opt_state, loss, logits, grads = step(params, batch_stats, opt_state, key(i))
    if i == 0:
      assert logits.shape == (4, NUM_CLASSES) and logits.dtype == jnp.float32
      grads = [np.asarray(g) for g in jax.tree.leaves(grads)]  # numpy: no per-leaf compiles
      assert all(np.isfinite(g).all() for g in grads) and any(g.any() for g in grads)
      for old, new in zip(jax.tree.leaves(batch_stats), jax.tree.leaves(new_stats)):
        assert np.any(np.asarray(old) != np.asarray(new)), "running statistics move in training"
    batch_stats = new_stats
    losses.append(float(loss))
  assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", everyday(sorted(TINY), keep=("cnn",)))
def test_bfloat16_computes_in_bfloat16_with_float32_parameters(name):
  make, image_shape = TINY[name]
  model = make(dtype=jnp.bfloat16)
  images, labels = batch(image_shape)
  variables = init(model, images)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}

  def loss_fn(params):
    logits, _ = model.apply(
      {**variables, "params": params}, images, train=True, mutable=["batch_stats"], rngs={"dropout": key(1)}
    )
    assert logits.dtype == jnp.float32
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  # Every convolution and matmul of a training step, forward and backward, is in
  # bfloat16 (tracing shows it; compiling the backward pass would only cost time).
  jaxpr = str(jax.make_jaxpr(jax.value_and_grad(loss_fn))(variables["params"]))
  matmuls = [line for line in jaxpr.splitlines() if "conv_general_dilated" in line or "dot_general" in line]
  assert matmuls and all("bf16" in line for line in matmuls)
  _, grads = jax.eval_shape(jax.value_and_grad(loss_fn), variables["params"])
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}

  loss, logits = jax.jit(lambda p: (loss_fn(p), model.apply({**variables, "params": p}, images, train=False)))(
    variables["params"]
  )
  assert np.isfinite(float(loss)) and logits.dtype == jnp.float32
  # The same function as in float32, up to bfloat16 rounding (evaluation mode:
  # batch statistics of 4 examples would amplify the rounding).
  reference = jax.jit(lambda v: make().apply(v, images, train=False))(variables)
  scale = float(jnp.max(jnp.abs(reference)))
  np.testing.assert_allclose(logits, reference, atol=0.05 * scale + 0.02)


def test_dropout_uses_the_dropout_stream_only_in_training():
  make, image_shape = TINY["wrn"]
  model = make()
  images, _ = batch(image_shape)
  variables = init(model, images)
  train = jax.jit(
    lambda dropout_key: model.apply(
      variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key}
    )[0]
  )
  assert not np.allclose(train(key(1)), train(key(2)))
  np.testing.assert_array_equal(train(key(1)), train(key(1)))
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda v: model.apply(v, images, train=True, mutable=["batch_stats"]), variables)
  # Evaluation needs no rng and is deterministic.
  evaluate = jax.jit(lambda: model.apply(variables, images, train=False))
  np.testing.assert_array_equal(evaluate(), evaluate())


def test_batch_norm_running_stats_use_torch_momentum_and_evaluation_uses_them():
  """running = 0.9 running + 0.1 batch statistic (torch's momentum 0.1); eval is per-example."""
  model = models.build("cnn", NUM_CLASSES, width=4)
  images, _ = batch((8, 8, 1), size=16)
  variables = init(model, images)
  _, state = jax.jit(
    lambda v: model.apply(
      v,
      images,
      train=True,
      mutable=["batch_stats", "intermediates"],
      capture_intermediates=lambda module, _: module.name == "Conv_0",
    )
  )(variables)
  conv_out = np.asarray(state["intermediates"]["Conv_0"]["__call__"][0])
  stats = state["batch_stats"]["BatchNorm_0"]
  np.testing.assert_allclose(stats["mean"], 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * conv_out.var(axis=(0, 1, 2)), rtol=1e-5)
  # With running statistics, an example's logits do not depend on the rest of the batch.
  trained = {"params": variables["params"], "batch_stats": state["batch_stats"]}
  evaluate = jax.jit(lambda x: model.apply(trained, x, train=False))
  whole, alone = evaluate(images), evaluate(images[:3])
  np.testing.assert_allclose(whole[:3], alone, rtol=1e-5, atol=1e-6)

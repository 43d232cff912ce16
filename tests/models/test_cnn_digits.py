"""The small CNN learns the 8x8 digits (scikit-learn's copy, no download) in seconds."""

import jax
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from msam_jax import models


@pytest.mark.slow  # a training run to 95% accuracy
def test_cnn_reaches_95_percent_test_accuracy_on_digits():
  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
  order = np.random.default_rng(0).permutation(len(images))
  images, labels = images[order], digits.target[order]
  train_x, train_y, test_x, test_y = images[:1400], labels[:1400], images[1400:], labels[1400:]

  model = models.build("cnn", 10)
  variables = jax.jit(lambda key: model.init(key, train_x[:1], train=False))(jax.random.key(0, impl="rbg"))
  steps = 200
  tx = optax.sgd(optax.cosine_decay_schedule(0.1, steps), momentum=0.9, nesterov=True)
  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, batch_stats, opt_state, x, y):
    def loss_fn(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    (_, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    deltas, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, deltas), updates["batch_stats"], opt_state

  rng = np.random.default_rng(1)
  for _ in range(steps):
    index = rng.integers(0, len(train_x), 64)
    params, batch_stats, opt_state = step(params, batch_stats, opt_state, train_x[index], train_y[index])
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))({"params": params, "batch_stats": batch_stats}, test_x)
  accuracy = float(np.mean(np.asarray(logits).argmax(-1) == test_y))
  assert accuracy > 0.95, accuracy

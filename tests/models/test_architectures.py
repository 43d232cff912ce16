"""Parameter counts and output shapes of the full-size models, without materialising them.

The counts are those of the PyTorch models the original trains (its own WRN and
CIFAR ResNet, lucidrains' SimpleViT, torchvision's ResNet and VGG).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msam_jax import models

# (name, num_classes, kwargs, image size, trainable parameters of the PyTorch original)
ORIGINALS = [
  ("wrn", 100, dict(depth=16, width=4), 32, 2_772_020),
  ("resnet_cifar", 100, dict(depth=50), 32, 23_705_252),
  ("vit", 1000, dict(size="S", patch_size=32, image_size=224), 224, 22_847_848),
  ("resnet", 1000, dict(depth=50), 224, 25_557_032),
  ("resnet", 1000, dict(depth=18), 224, 11_689_512),  # torchvision resnet18
  ("vgg", 1000, dict(depth=16), 224, 138_357_544),  # torchvision vgg16
  ("vgg", 1000, dict(depth=16, batch_norm=True), 224, 138_365_992),  # vgg16_bn
]
CONFIGURED = [  # (name, num_classes, kwargs, input shape of one image)
  ("wrn", 100, dict(depth=16, width=4), (32, 32, 3)),
  ("resnet_cifar", 100, dict(depth=50), (32, 32, 3)),
  ("resnet", 1000, dict(depth=50), (224, 224, 3)),
  ("vit", 1000, dict(size="S", patch_size=32, image_size=224), (224, 224, 3)),
  ("vgg", 1000, dict(depth=16, batch_norm=True), (224, 224, 3)),
  ("vgg", 10, dict(depth=11), (32, 32, 3)),
  ("cnn", 10, dict(), (8, 8, 1)),
]
HAS_BATCH_NORM = {"wrn": True, "resnet_cifar": True, "resnet": True, "vit": False, "cnn": True}


def abstract_variables(model, image_shape, batch=1):
  images = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def num_params(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize(
  "name,num_classes,kwargs,size,expected",
  ORIGINALS,
  ids=[f"{o[0]}-{'-'.join(map(str, o[2].values()))}" for o in ORIGINALS],
)
def test_trainable_parameters_equal_the_original(name, num_classes, kwargs, size, expected):
  variables = abstract_variables(models.build(name, num_classes, **kwargs), (size, size, 3))
  assert num_params(variables["params"]) == expected


@pytest.mark.parametrize(
  "name,num_classes,kwargs,image_shape", CONFIGURED, ids=[f"{c[0]}-{c[3][0]}px" for c in CONFIGURED]
)
def test_output_shape_and_collections_at_configured_size(name, num_classes, kwargs, image_shape):
  model = models.build(name, num_classes, **kwargs)
  variables = abstract_variables(model, image_shape)
  batch_norm = HAS_BATCH_NORM.get(name, kwargs.get("batch_norm", False))
  assert set(variables) == ({"params", "batch_stats"} if batch_norm else {"params"})
  if batch_norm:  # running statistics live in batch_stats only, and nowhere in params
    stats_names = {path[-1].key for path, _ in jax.tree_util.tree_leaves_with_path(variables["batch_stats"])}
    assert stats_names == {"mean", "var"}
    param_names = {path[-1].key for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])}
    assert param_names.isdisjoint({"mean", "var"})
  images = jax.ShapeDtypeStruct((2, *image_shape), jnp.float32)
  logits, updates = jax.eval_shape(
    lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}),
    variables,
    images,
  )
  assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32
  assert jax.tree.structure(updates.get("batch_stats", {})) == jax.tree.structure(variables.get("batch_stats", {}))
  eval_logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert eval_logits.shape == (2, num_classes)


@pytest.mark.parametrize(
  "name,kwargs,size",
  [
    ("wrn", dict(depth=16, width=4), 32),
    ("resnet", dict(depth=50), 224),
    ("vit", dict(size="S", patch_size=32, image_size=224), 224),
  ],
)
def test_bfloat16_keeps_float32_parameters_and_logits(name, kwargs, size):
  model = models.build(name, 10, dtype=jnp.bfloat16, **kwargs)
  variables = abstract_variables(model, (size, size, 3))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  assert logits.dtype == jnp.float32


def test_vgg_at_32px_replicates_the_1x1_map_into_the_7x7_head():
  """torchvision's head on CIFAR-size inputs: 25088 inputs to the first linear layer."""
  variables = abstract_variables(models.build("vgg", 10, depth=11), (32, 32, 3))
  first_dense = variables["params"]["Dense_0"]["kernel"]
  assert first_dense.shape == (512 * 7 * 7, 4096)


def test_vit_rejects_images_of_another_size():
  model = models.build("vit", 10, size="Ti", depth=1, patch_size=16, image_size=64)
  with pytest.raises(ValueError, match="64x64"):
    abstract_variables(model, (32, 32, 3))

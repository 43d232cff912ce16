"""Each augmentation against a numpy transcription of the original's (torchvision's) definition."""

import math

import numpy as np
import pytest
import tensorflow as tf

from msam_jax.data import augment, cifar

NUM_DRAWS = 2000  # a rate of 1/2 within +-0.056 is 5 sigma


def _map_batched(fn, inputs) -> np.ndarray:
  """fn over the rows of `inputs` (tensor slices), stacked; through tf.data, so fast."""
  ds = tf.data.Dataset.from_tensor_slices(inputs).map(fn, num_parallel_calls=tf.data.AUTOTUNE)
  return np.concatenate(list(ds.batch(4096).as_numpy_iterator()))


def _seeds(num, first=7) -> np.ndarray:
  return np.stack([np.full(num, first), np.arange(num)], axis=1).astype(np.int64)


# --------------------------------------------------------------------- CIFAR


@pytest.fixture(scope="module")
def cifar_draws():
  """The CIFAR augmentation parameters of NUM_DRAWS images."""
  key = tf.constant([3, 4], tf.int64)
  return {k: v.numpy() for k, v in cifar.sample_augmentation(key, NUM_DRAWS).items()}


def test_augmentation_parameter_distributions(cifar_draws):
  assert abs(cifar_draws["flip"].mean() - 0.5) < 0.056
  assert abs(cifar_draws["cutout_apply"].mean() - 0.5) < 0.056
  centres, offsets = cifar_draws["cutout_centre"], cifar_draws["crop_offset"]
  # Centres uniform over all pixels (squares may overhang the border): the original's
  # top = randint(-8, 32 - 8), i.e. centre = top + 8 in 0..31.
  assert set(centres[:, 0]) == set(range(32)) and set(centres[:, 1]) == set(range(32))
  # Crop offsets in the padded image: 0..8 each, all 81 windows reachable.
  assert offsets.min() == 0 and offsets.max() == 8
  assert len({tuple(o) for o in offsets}) == 81


def _original_cifar_augment(image, flip, apply, centre, offset, fill):
  """The original's transform list on one uint8 image, transcribed to numpy.

  RandomHorizontalFlip, then Cutout (utility/augmentation.py: fills the uint8
  array with mean * 255, truncated by numpy), then RandomCrop(32, padding=4)
  with zero padding.
  """
  img = image[:, ::-1].copy() if flip else image.copy()
  if apply:
    top, left = centre[0] - 8, centre[1] - 8
    bottom, right = min(32, top + 16), min(32, left + 16)
    for c in range(3):
      img[max(0, top) : bottom, max(0, left) : right, c].fill(fill[c] * 255)
  padded = np.pad(img, [(4, 4), (4, 4), (0, 0)])
  return padded[offset[0] : offset[0] + 32, offset[1] : offset[1] + 32]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_augmentation_equals_the_original_pixel_for_pixel(cifar_draws, name):
  images = np.random.default_rng(0).integers(0, 256, [NUM_DRAWS, 32, 32, 3], dtype=np.uint8)
  got = augment.flip_cutout_pad_crop(
    tf.constant(images),
    {k: tf.constant(v) for k, v in cifar_draws.items()},
    cutout_size=16,
    fill=cifar.CUTOUT_FILL[name],
    padding=4,
  ).numpy()
  assert got.dtype == np.uint8
  for i in range(NUM_DRAWS):
    want = _original_cifar_augment(
      images[i],
      cifar_draws["flip"][i],
      cifar_draws["cutout_apply"][i],
      cifar_draws["cutout_centre"][i],
      cifar_draws["crop_offset"][i],
      cifar.MEAN[name],
    )
    np.testing.assert_array_equal(got[i], want)
  # The draws cover flipped, cut, overhanging and shifted cases.
  clipped = cifar_draws["cutout_apply"] & np.any(
    (cifar_draws["cutout_centre"] < 8) | (cifar_draws["cutout_centre"] > 24), axis=1
  )
  assert clipped.any() and cifar_draws["flip"].any()


def test_cifar_constants_are_the_originals():
  # utility/data.py of the original, dataSetStatistics (full float32 precision).
  assert cifar.MEAN["cifar100"][0] == 0.5070753693580627
  assert cifar.STD["cifar10"][2] == 0.26158687472343445
  # mean * 255 truncated: 129.30 -> 129, 124.07 -> 124, 112.43 -> 112.
  assert cifar.CUTOUT_FILL == {"cifar10": (125, 122, 113), "cifar100": (129, 124, 112)}


def test_cifar_train_preprocess_normalises_after_augmenting():
  name = "cifar100"
  mean, std = np.array(cifar.MEAN[name]), np.array(cifar.STD[name])
  image = np.random.default_rng(0).integers(0, 256, [1, 32, 32, 3], dtype=np.uint8)
  augmentation = {"flip": [True], "cutout_apply": [True], "cutout_centre": [[2, 30]], "crop_offset": [[0, 8]]}
  out = cifar.train_preprocess(
    tf.constant(image), {k: tf.constant(v) for k, v in augmentation.items()}, name=name
  ).numpy()[0]
  want = _original_cifar_augment(image[0], True, True, (2, 30), (0, 8), mean)
  np.testing.assert_allclose(out, (want / 255 - mean) / std, rtol=1e-6, atol=1e-6)
  # The Cutout square (rows 0..9 of the flipped image, columns 22..31, moved down 4, left 4).
  np.testing.assert_allclose(
    out[4:14, 18:28], np.broadcast_to((np.array([129, 124, 112]) / 255 - mean) / std, (10, 10, 3)), atol=1e-6
  )
  assert np.all(out[:4] == out[0, 0]) and np.allclose(out[0, 0], -mean / std)  # zero padding


def test_normalize_per_channel_and_max_value():
  image = tf.constant([[[0.5, 0.25, 1.0]]])
  out = augment.normalize(image, (0.5, 0.0, 0.5), (1.0, 0.5, 0.25), max_value=1.0).numpy()
  np.testing.assert_allclose(out, [[[0.0, 0.5, 2.0]]])
  out = augment.normalize(tf.constant([[[255, 0]]], tf.uint8), (0.5, 0.5), (0.5, 0.25)).numpy()
  np.testing.assert_allclose(out, [[[1.0, -2.0]]])


# ------------------------------------------------------ RandomResizedCrop


def _torchvision_get_params(height, width, uniform, randint, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision.transforms.RandomResizedCrop.get_params, transcribed line by line.

  `uniform(low, high)` stands for torch.empty(1).uniform_(low, high).item(),
  `randint(low, high)` for torch.randint(low, high, size=(1,)).item().
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * uniform(scale[0], scale[1])
    aspect_ratio = math.exp(uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      i = randint(0, height - h + 1)
      j = randint(0, width - w + 1)
      return i, j, h, w
  # Fallback to central crop
  in_ratio = float(width) / float(height)
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:  # whole image
    w = width
    h = height
  i = (height - h) // 2
  j = (width - w) // 2
  return i, j, h, w


class _GivenUniforms:
  """Feeds _torchvision_get_params the uniforms [4, 10] that the TF window also gets."""

  def __init__(self, uniforms):
    self.u, self.attempt, self.calls = uniforms, 0, 0

  def uniform(self, low, high):
    row = self.calls % 2  # area, then log-ratio, per attempt
    value = low + (high - low) * self.u[row, self.attempt]
    self.calls += 1
    self.attempt = self.calls // 2
    return value

  def randint(self, low, high):
    row = 2 if self.calls % 2 == 0 else 3  # top, then left, of the accepted attempt
    value = low + math.floor(self.u[row, self.attempt - 1] * (high - low))
    self.calls += 1
    return value


def test_random_resized_crop_window_is_torchvision_given_the_same_uniforms():
  rng = np.random.default_rng(0)
  shapes = [(375, 500), (500, 375), (333, 500), (64, 64), (20, 400), (400, 20), (7, 5), (1, 1)]
  cases = [(shape, rng.uniform(size=(4, 10))) for shape in shapes for _ in range(400)]
  shape_arr = np.array([[h, w, 3] for (h, w), _ in cases], np.int32)
  uniforms = np.stack([u for _, u in cases])
  got = _map_batched(lambda s, u: augment.resized_crop_window_from_uniforms(s, *tf.unstack(u)), (shape_arr, uniforms))
  fallbacks = 0
  for ((h, w), u), window in zip(cases, got):
    want = _torchvision_get_params(h, w, (g := _GivenUniforms(u)).uniform, g.randint)
    assert tuple(window) == want, ((h, w), u)
    fallbacks += g.calls == 20
  assert fallbacks > 400  # the thin shapes exercise the centre-crop fallback


@pytest.mark.parametrize(
  "shape, window",
  [
    ((1, 1000), (0, 499, 1, 1)),  # too wide: h = 1, w = round(1 * 4/3) = 1
    ((1000, 1), (499, 0, 1, 1)),  # too tall: w = 1, h = round(1 / (3/4)) = 1
    ((2, 1000), (0, 498, 2, 3)),  # w = round(2 * 4/3) = 3
  ],
)
def test_random_resized_crop_fallback_centre_crop(shape, window):
  # No attempt can fit (h >= round(sqrt(0.08 * area * 3/4)) > H): always the fallback.
  windows = _map_batched(lambda seed: augment.random_resized_crop_window(tf.constant([*shape, 3]), seed), _seeds(50))
  assert {tuple(w) for w in windows} == {window}


NUM_CROPS = 20_000
_KS_C = math.sqrt(-math.log(1e-4 / 2) / 2)  # two-sample KS at significance 1e-4
_SIGMAS = 4.5


def _assert_same_distribution(got, want, what):
  """Mean, quantiles and the whole CDF (two-sample Kolmogorov-Smirnov) within sampling error.

  The draws are fixed (seeded), so the test is deterministic; the tolerances
  are what two independent samples of this size differ by at most, except
  with probability ~1e-5 (4.5 sigma) or 1e-4 (KS).
  """
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  n, m = len(got), len(want)
  se = math.sqrt(got.var() / n + want.var() / m)
  assert abs(got.mean() - want.mean()) <= _SIGMAS * se + 1e-12, (what, got.mean(), want.mean(), se)
  for q in (0.05, 0.25, 0.5, 0.75, 0.95):
    # The share of `got` below want's q-quantile is q up to binomial error of both samples.
    share = np.mean(got <= np.quantile(want, q, method="inverted_cdf"))
    tol = _SIGMAS * math.sqrt(q * (1 - q) * (1 / n + 1 / m))
    assert abs(share - np.mean(want <= np.quantile(want, q, method="inverted_cdf"))) <= tol, (what, q, share)
  grid = np.union1d(got, want)
  ks = np.abs(
    np.searchsorted(np.sort(got), grid, "right") / n - np.searchsorted(np.sort(want), grid, "right") / m
  ).max()
  assert ks <= _KS_C * math.sqrt((n + m) / (n * m)), (what, ks)


def _crop_statistics(windows, height, width):
  top, left, h, w = np.asarray(windows, np.float64).T
  return {"area": h * w / (height * width), "aspect": w / h, "top": top, "left": left}


def _torchvision_windows(height, width, num, seed):
  rng = np.random.default_rng(seed)
  return [
    _torchvision_get_params(height, width, lambda lo, hi: rng.uniform(lo, hi), lambda lo, hi: int(rng.integers(lo, hi)))
    for _ in range(num)
  ]


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(375, 500), (500, 500), (333, 500), (500, 375), (60, 600)])
def test_random_resized_crop_distribution_matches_torchvision(shape):
  image_shape = tf.constant([*shape, 3], tf.int32)
  got = _map_batched(lambda seed: augment.random_resized_crop_window(image_shape, seed), _seeds(NUM_CROPS))
  want = _torchvision_windows(*shape, NUM_CROPS, seed=1)
  got_stats, want_stats = _crop_statistics(got, *shape), _crop_statistics(want, *shape)
  for what in got_stats:
    _assert_same_distribution(got_stats[what], want_stats[what], f"{what} of {shape}")


@pytest.mark.slow
def test_the_distribution_check_rejects_tensorflows_inception_crop():
  """Control: TF's sample_distorted_bounding_box (the crop this replaced) fails the check."""
  shape = (375, 500)
  whole = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])

  def tf_window(seed):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.constant([*shape, 3]),
      bounding_boxes=whole,
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])

  got = _crop_statistics(_map_batched(tf_window, _seeds(NUM_CROPS)), *shape)
  want = _crop_statistics(_torchvision_windows(*shape, NUM_CROPS, seed=1), *shape)
  assert got["area"].mean() < want["area"].mean() - 0.03  # the 0.370 vs 0.431
  with pytest.raises(AssertionError):
    _assert_same_distribution(got["area"], want["area"], "area")


def _jpeg(height, width, seed=0) -> tf.Tensor:
  image = np.random.default_rng(seed).integers(0, 256, [height, width, 3], dtype=np.uint8)
  return tf.io.encode_jpeg(tf.constant(image), quality=95)


def test_decode_and_random_resized_crop_output():
  jpeg = _jpeg(120, 90)
  out = _map_batched(lambda seed: augment.decode_and_random_resized_crop(jpeg, seed, image_size=48), _seeds(50))
  assert out.shape == (50, 48, 48, 3) and out.dtype == np.uint8
  assert len({o.tobytes() for o in out}) == 50  # different crops


def test_decode_and_random_resized_crop_is_the_window_decoded_and_resized():
  rows, cols = np.meshgrid(np.linspace(0, 1, 150), np.linspace(0, 1, 200), indexing="ij")
  smooth = np.stack([rows, cols, (rows + cols) / 2], -1) * 255
  jpeg = tf.io.encode_jpeg(tf.constant(smooth.astype(np.uint8)), quality=95)
  seed = tf.constant([1, 2], tf.int64)
  got = augment.decode_and_random_resized_crop(jpeg, seed, image_size=32).numpy()
  crop_seed = seed  # the window is drawn from the same seed
  top, left, h, w = augment.random_resized_crop_window(tf.constant([150, 200, 3]), crop_seed).numpy()
  full = tf.image.decode_jpeg(jpeg, channels=3)[top : top + h, left : left + w]
  want = tf.image.resize(full, [32, 32], method="bilinear", antialias=True).numpy()
  np.testing.assert_allclose(got, want, atol=2.5)


@pytest.mark.parametrize(
  "shape, window",
  [
    ((375, 500), [24, 86, 328, 328]),  # side = int(0.875 * 375) = 328
    ((500, 375), [86, 24, 328, 328]),
    ((256, 256), [16, 16, 224, 224]),
  ],
)
def test_centre_crop_window(shape, window):
  got = augment.centre_crop_window(tf.constant([*shape, 3]), crop_fraction=0.875)
  np.testing.assert_array_equal(got.numpy(), window)


def test_decode_and_centre_crop_equals_decode_then_crop():
  # Smooth content: the fused decoder upsamples chroma at the window edge slightly
  # differently, which only noise-like images would turn into visible differences.
  rows, cols = np.meshgrid(np.linspace(0, 1, 150), np.linspace(0, 1, 200), indexing="ij")
  smooth = np.stack([rows, cols, (rows + cols) / 2], -1) * 255
  jpeg = tf.io.encode_jpeg(tf.constant(smooth.astype(np.uint8)), quality=95)
  got = augment.decode_and_centre_crop(jpeg, image_size=64).numpy()
  full = tf.image.decode_jpeg(jpeg, channels=3)
  top, left, side, _ = augment.centre_crop_window(tf.shape(full)).numpy()
  assert (top, left, side) == (10, 35, 131)
  crop = full[top : top + side, left : left + side]
  want = tf.image.resize(crop, [64, 64], method="bicubic", antialias=True)
  assert got.dtype == np.uint8 and got.shape == (64, 64, 3)
  np.testing.assert_allclose(got, np.clip(want.numpy(), 0, 255), atol=2)

"""An independent numpy oracle for ASAM, GSAM and m-sharpness (no JAX, no msam_jax).

The reference codes cannot run here (PyTorch; a big_vision pmap trainer), so
their update formulas are transcribed below in numpy, step for step, on a tiny
float64 MLP whose gradients are written out by hand (backpropagation in numpy):

* `samsunglabs_asam`: SamsungLabs/ASAM `ASAM.ascent_step` / `descent_step`
  (``T = |w| + eta`` on parameters whose torch name contains "weight", the norm
  ``+ 1e-16``, the perturbation subtracted again before the base step).
* `davda54_adaptive_sam`: davda54/sam `SAM(adaptive=True)` ``first_step`` /
  ``second_step`` (``|w|`` in the norm, ``w^2`` in the step, ``+ 1e-12``, old
  parameters restored).
* `big_vision_gsam`: big_vision `gsam_gradient` (rho from the learning rate,
  both `minimize_fp` branches).
* `torch_sgd`: `torch.optim.SGD` with momentum and coupled weight decay.

Parameters are held in torch layout and names ("0.weight" [H, I], "0.bias",
"2.weight" [C, H], "2.bias"); `to_flax` gives the Flax tree the JAX side uses
(``Dense_0/kernel = 0.weight.T``).
"""

import numpy as np

NAMES = ("0.weight", "0.bias", "2.weight", "2.bias")
BATCH, IN, HIDDEN, CLASSES, STEPS = 8, 5, 7, 3, 12


def problem(seed=0):
  """Initial torch-layout params and per-step batches (xs [STEPS, B, IN], ys [STEPS, B])."""
  rng = np.random.default_rng(seed)
  params = {
    "0.weight": rng.normal(size=(HIDDEN, IN)) * 0.5,
    "0.bias": rng.normal(size=(HIDDEN,)) * 0.1,
    "2.weight": rng.normal(size=(CLASSES, HIDDEN)) * 0.5,
    "2.bias": rng.normal(size=(CLASSES,)) * 0.1,
  }
  xs = rng.normal(size=(STEPS, BATCH, IN))
  ys = rng.integers(0, CLASSES, size=(STEPS, BATCH))
  return params, xs, ys


def to_flax(params):
  return {
    "Dense_0": {"kernel": params["0.weight"].T, "bias": params["0.bias"]},
    "Dense_1": {"kernel": params["2.weight"].T, "bias": params["2.bias"]},
  }


def from_flax(tree):
  return {
    "0.weight": np.asarray(tree["Dense_0"]["kernel"]).T,
    "0.bias": np.asarray(tree["Dense_0"]["bias"]),
    "2.weight": np.asarray(tree["Dense_1"]["kernel"]).T,
    "2.bias": np.asarray(tree["Dense_1"]["bias"]),
  }


def grad(params, x, y):
  """Gradient of the mean cross-entropy of ``tanh(x W0^T + b0) W2^T + b2``, by hand."""
  h = np.tanh(x @ params["0.weight"].T + params["0.bias"])
  z = h @ params["2.weight"].T + params["2.bias"]
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  dz = p.copy()
  dz[np.arange(len(y)), y] -= 1.0
  dz /= len(y)
  da = (dz @ params["2.weight"]) * (1.0 - h**2)
  return {"0.weight": da.T @ x, "0.bias": da.sum(0), "2.weight": dz.T @ h, "2.bias": dz.sum(0)}


def norm(tree):
  return np.sqrt(sum(np.sum(v**2) for v in tree.values()))


class TorchSGD:
  """torch.optim.SGD(momentum=mu, weight_decay=wd, dampening=0, nesterov=False)."""

  def __init__(self, momentum, weight_decay):
    self.mu, self.wd, self.buf = momentum, weight_decay, None

  def step(self, params, grads, lr):
    d = {n: grads[n] + self.wd * params[n] for n in NAMES}
    if self.buf is None:
      self.buf = {n: d[n].copy() for n in NAMES}
    else:
      self.buf = {n: self.mu * self.buf[n] + d[n] for n in NAMES}
    return {n: params[n] - lr * self.buf[n] for n in NAMES}


# --- the gradient each reference hands its base optimizer, for one batch (x, y) ---


def samsunglabs_asam(params, x, y, rho, eta):
  g = grad(params, x, y)
  t = {n: np.abs(params[n]) + eta for n in NAMES if "weight" in n}
  g = {n: g[n] * t[n] if n in t else g[n] for n in NAMES}
  wgrad_norm = np.linalg.norm(np.stack([np.linalg.norm(g[n]) for n in NAMES])) + 1e-16
  eps = {n: (g[n] * t[n] if n in t else g[n]) * (rho / wgrad_norm) for n in NAMES}
  perturbed = {n: params[n] + eps[n] for n in NAMES}
  g2 = grad(perturbed, x, y)
  restored = {n: perturbed[n] - eps[n] for n in NAMES}  # descent_step: p.sub_(eps)
  return g2, restored


def davda54_adaptive_sam(params, x, y, rho):
  g = grad(params, x, y)
  grad_norm = np.linalg.norm(np.stack([np.linalg.norm(np.abs(params[n]) * g[n]) for n in NAMES]))
  scale = rho / (grad_norm + 1e-12)
  perturbed = {n: params[n] + np.power(params[n], 2) * g[n] * scale for n in NAMES}
  return grad(perturbed, x, y), params  # second_step restores the old parameters


def dual_vector(tree):
  length = norm(tree)
  return {n: v / length for n, v in tree.items()}


def big_vision_gsam(params, x, y, rho, alpha, minimize_fp):
  g_clean = grad(params, x, y)
  length = norm(g_clean)
  param_sam = {n: params[n] + rho * g_clean[n] / (length + 1e-12) for n in NAMES}
  g_robust = grad(param_sam, x, y)
  if minimize_fp:
    u = dual_vector(g_robust)
    along = sum(np.vdot(u[n], g_clean[n]) for n in NAMES)
    residual = {n: g_clean[n] - along * u[n] for n in NAMES}
    return {n: g_robust[n] - residual[n] * alpha for n in NAMES}, params
  v = dual_vector(g_clean)
  along = sum(np.vdot(v[n], g_robust[n]) for n in NAMES)
  residual = {n: g_robust[n] - along * v[n] for n in NAMES}
  return {n: g_clean[n] + residual[n] * alpha for n in NAMES}, params


def gsam_rho(lr, lr_max, lr_min, rho_max, rho_min):
  """big_vision's rho from the learning rate (unclamped, as there)."""
  if lr_max == lr_min:
    return rho_max
  return rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min)


def sam_gradient(params, x, y, rho):
  g = grad(params, x, y)
  scale = rho / (norm(g) + 1e-12)
  return grad({n: params[n] + scale * g[n] for n in NAMES}, x, y), params


def trajectory(direction, lrs, *, momentum=0.9, weight_decay=5e-3, group_size=None, seed=0):
  """Params after each step: `direction(params, x, y, step) -> (gradient, params)` feeds SGD.

  With `group_size` m, `direction` runs on each group of m consecutive examples
  and the base steps with the mean of the groups' gradients (m-sharpness).
  """
  params, xs, ys = problem(seed)
  sgd = TorchSGD(momentum, weight_decay)
  out = []
  for step, lr in enumerate(lrs):
    x, y = xs[step], ys[step]
    m = len(y) if group_size is None else group_size
    results = [direction(params, x[i : i + m], y[i : i + m], step) for i in range(0, len(y), m)]
    g = {n: sum(r[0][n] for r in results) / len(results) for n in NAMES}
    params = sgd.step(results[0][1] if group_size is None else params, g, lr)
    out.append({n: v.copy() for n, v in params.items()})
  return out

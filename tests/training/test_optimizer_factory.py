"""Config -> optimizer: every name builds, follows its schedules, clips where the config says."""

import concurrent.futures
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import msam_jax
from msam_jax import training
from msam_jax.optim import current_hyperparams, needs_loss_fn, perturbs_params, registry, schedules
from msam_jax.training import config as config_lib
from msam_jax.training.config import OPTIMIZERS, base_config
from msam_jax.training.optimizer import build_optimizer

from helpers import everyday, load_config

REPO = pathlib.Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 4
PARAMS = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.3)}
TARGETS = jnp.array([[0.5, 1.0, -1.0], [1.0, 0.0, 2.0]])


def loss_fn(params, indices=None):
  targets = TARGETS if indices is None else TARGETS[indices]
  return jnp.sum((params["w"] - targets) ** 2, axis=-1) + params["b"] ** 2


def _run(tx, num_steps):
  params, state = PARAMS, tx.init(PARAMS)
  hypers = []
  for _ in range(num_steps):
    grads = jax.grad(lambda p: loss_fn(p).mean())(params)
    updates, state = tx.update(grads, state, params, loss_fn=loss_fn, losses=loss_fn(params))
    params = optax.apply_updates(params, updates)
    hypers.append({k: float(v) for k, v in current_hyperparams(state).items()})
  return params, state, hypers


@pytest.mark.parametrize("name", everyday(OPTIMIZERS, keep=("msam", "sam", "gsam")))
def test_every_optimizer_follows_the_configured_schedules(name):
  config = load_config(
    "cifar100_wrn16_4",
    optimizer=name,
    num_epochs=3,
    rho=0.5,
    rho_schedule="start_ramp",
    rho_ramp_epochs=1.0,
    optimizer_kwargs={"gamma": 1.0} if name == "esam" else {},  # ESAM: every example selected
  )
  tx = build_optimizer(config, STEPS_PER_EPOCH)
  family = registry.get(name).family
  assert needs_loss_fn(tx) == (family == "sam")
  params, state, hypers = _run(tx, 6)
  lr = schedules.lr_start_ramp_cos(0.5, epochs=3, steps_per_epoch=STEPS_PER_EPOCH, ramp_epochs=1.0)
  rho = schedules.rho_start_ramp(0.5, steps_per_epoch=STEPS_PER_EPOCH, ramp_epochs=1.0)
  if registry.get(name).rho_follows_lr:  # GSAM: rho from config.rho down to gsam_rho_min, with lr
    rho = schedules.gsam_rho(lr, lr_max=0.5, lr_min=0.0, rho_max=0.5, rho_min=config.gsam_rho_min)
  # The state after update n holds the hyper-parameters update n used (count n - 1).
  np.testing.assert_allclose([h["learning_rate"] for h in hypers], [lr(n) for n in range(6)], rtol=1e-6)
  if family != "base":
    np.testing.assert_allclose([h["rho"] for h in hypers], [rho(n) for n in range(6)], rtol=1e-6)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  moved = msam_jax.eval_params(params, state)
  assert perturbs_params(state) == (family == "msam")
  assert (family == "msam") != all(
    np.array_equal(a, b) for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(params))
  )


def test_msam_from_config_equals_the_plain_optimizer():
  config = load_config(
    "cifar100_wrn16_4",
    optimizer="msam",
    lr_schedule="const",
    learning_rate=0.1,
    rho=0.2,
    optimizer_kwargs={"weight_decay": 1e-3},
  )
  expected, _, _ = _run(msam_jax.msam(0.1, momentum=0.9, rho=0.2, weight_decay=1e-3), 4)
  got, _, _ = _run(build_optimizer(config, STEPS_PER_EPOCH), 4)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_vit_config_clips_gradients_before_adamw():
  config = load_config("imagenet_vit", optimizer="adamw", lr_schedule="const")
  big = {"w": jnp.array([300.0, -400.0, 0.0]), "b": jnp.array(0.0)}
  tx = build_optimizer(config, STEPS_PER_EPOCH)
  reference = optax.chain(optax.clip_by_global_norm(1.0), msam_jax.adamw(1e-3, weight_decay=0.1))
  u1, _ = tx.update(big, tx.init(PARAMS), PARAMS)
  u2, _ = reference.update(big, reference.init(PARAMS), PARAMS)
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_vit_rho_jumps_on_after_eight_epochs():
  config = load_config("imagenet_vit", optimizer="adamw_msam")
  tx = build_optimizer(config, 2)
  _, _, hypers = _run(tx, 18)
  rhos = [h["rho"] for h in hypers]
  assert rhos[:15] == [0.0] * 15 and rhos[16:] == [10.0, 10.0]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_late_phase_sam_takes_no_second_gradient_before_the_jump(name):
  """rho_schedule=start_jump at 80 % of the run (late-phase SAM): the SAM family's host plan
  skips the second gradient on every step before the jump (GSAM, whose rho follows the learning
  rate, is refused that schedule); the other families take none to skip."""
  config = load_config("digits", optimizer=name, num_epochs=10, rho_schedule="start_jump", rho_jump_epochs=8.0)
  entry = registry.get(name)
  if entry.rho_follows_lr:
    with pytest.raises(config_lib.ConfigError, match="set --config.rho_schedule=const"):
      config_lib.validate_fields(config)
    return
  config_lib.validate_fields(config)
  plan = training.optimizer.second_gradient_steps(config, STEPS_PER_EPOCH, 10 * STEPS_PER_EPOCH)
  if entry.family != "sam":
    assert plan is None
    return
  jump = 8 * STEPS_PER_EPOCH  # update count 31 runs at progress 32 / 4 = 8 epochs, still rho 0
  assert not plan[:jump].any() and plan[jump:].any()
  assert plan[jump:].all() == (name not in ("looksam", "rst"))  # their own rules pick among the rest


def test_every_registry_entry_reads_existing_config_fields():
  config = base_config()
  for name in OPTIMIZERS:
    for keyword, field in registry.get(name).config_fields.items():
      assert field in config, f"{name}: {keyword} reads config.{field}, which base_config lacks"


def test_sam_family_clips_the_gradient_its_base_steps_with():
  """Clipping sits inside SAM, around the base: the SGD step takes the clipped second gradient."""
  config = load_config("cifar100_wrn16_4", optimizer="sam", lr_schedule="const", rho=0.05, grad_clip_norm=1.0)
  reference = msam_jax.sam(
    optax.chain(optax.clip_by_global_norm(1.0), msam_jax.sgd(0.5, momentum=0.9, weight_decay=5e-4)), rho=0.05
  )
  steep_loss_fn = lambda p, indices=None: 1e3 * loss_fn(p, indices)  # second gradient norm >> 1
  grads = jax.grad(lambda p: steep_loss_fn(p).mean())(PARAMS)
  got, want = [
    tx.update(grads, tx.init(PARAMS), PARAMS, loss_fn=steep_loss_fn)[0]
    for tx in (build_optimizer(config, STEPS_PER_EPOCH), reference)
  ]
  assert float(optax.tree.norm(want)) < 0.51  # lr times the clipped norm, plus the weight decay
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_optimizer_kwargs_hold_every_option_and_switching_keeps_the_shared_ones():
  config = load_config("digits")  # msam with the file's momentum and weight decay
  assert dict(config.optimizer_kwargs) == {"momentum": 0.9, "weight_decay": 5e-4}
  training.set_optimizer(config, "esam", beta=0.6)
  assert dict(config.optimizer_kwargs) == {
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "nesterov": False,
    "beta": 0.6,
    "gamma": 0.5,
  }
  assert registry.static_hyperparams(registry.get("esam"), config) == {"beta": 0.6, "gamma": 0.5, "seed": 0}
  with pytest.raises(training.ConfigError, match="^config.optimizer_kwargs.beta is not an option of optimizer 'sgd'"):
    training.set_optimizer(config, "sgd", beta=0.5)
  config.optimizer = "adamw"  # switched as a flat field: other optimizers' options are dropped, shared ones kept
  assert dict(training.resolve(config).optimizer_kwargs) == {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "weight_decay": 5e-4}
  config.optimizer_kwargs.betta = 0.5  # no optimizer's option
  with pytest.raises(training.ConfigError, match="^config.optimizer_kwargs.betta is not an option of optimizer"):
    training.resolve(config)


@pytest.mark.parametrize("old, new", config_lib.RENAMED_FIELDS.items())
def test_an_old_per_optimizer_field_names_its_new_spelling(old, new):
  assert new.split(".")[1] in {option for name in OPTIMIZERS for option in registry.options(name)}
  config = load_config("digits")
  config[old] = 0.5
  with pytest.raises(training.ConfigError, match=f"^config.{old} is now config.{new}; set --config.{new} instead.$"):
    training.validate_fields(config)


def test_a_new_registry_entry_needs_no_config_edit(monkeypatch):
  """An entry's options come from its factory's signature: config, validation and factory take them."""

  def toy(learning_rate, decay: float = 0.5):
    if not 0 < decay < 1:
      raise ValueError(f"decay must be in (0, 1), got {decay}")
    return optax.chain(optax.scale_by_learning_rate(learning_rate), optax.scale(decay))

  table = {**registry.REGISTRY, "toy": registry.Entry("toy", "base", toy, base="sgd")}
  monkeypatch.setattr(registry, "REGISTRY", table)
  config = load_config("digits", optimizer="toy", optimizer_kwargs={"decay": 0.25}, lr_schedule="const")
  assert dict(config.optimizer_kwargs) == {"decay": 0.25}
  training.validate_fields(config)
  tx = build_optimizer(config, STEPS_PER_EPOCH)
  updates, _ = tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.zeros(2)}))
  np.testing.assert_allclose(updates["w"], -config.learning_rate * 0.25)
  config.optimizer_kwargs.decay = 2.0
  with pytest.raises(training.ConfigError, match=r"^config.optimizer_kwargs.decay=2.0: decay must be in \(0, 1\)"):
    training.validate_fields(config)


@pytest.mark.parametrize(
  "start, switch_to, rho",
  [
    ("base", "sam", 0.05),  # base_config's rho 3.0 is MSAM's: SAM gets its own default
    ("base", "asam", 0.5),
    ("base", "msam", 3.0),  # a base optimizer's rho is its Momentum-SAM's: kept
    ("digits", "sam", 0.05),  # msam at 0.3 -> sam
    ("digits", "gsam", 0.05),
    ("digits", "adamw_msam", 0.3),  # the same scale: the file's rho kept
    ("digits", "msam", 0.3),  # no switch
    ("digits", "sgd", 0.3),
    ("imagenet_vit", "adamw_msam", 10.0),  # adamw's file rho is for adamw_msam
    ("imagenet_vit", "adamw_sam", 0.05),
  ],
)
def test_switching_the_optimizer_never_keeps_a_rho_of_another_scale(start, switch_to, rho):
  config = base_config() if start == "base" else load_config(start)
  training.set_optimizer(config, switch_to)
  assert (config.optimizer, config.rho) == (switch_to, rho)
  assert training.resolve(config).rho == rho  # resolving keeps it
  training.set_optimizer(config, "esam" if switch_to == "sam" else switch_to, rho=0.2)  # given: always taken
  assert config.rho == 0.2


def test_a_sam_rho_stays_on_the_sam_scale_through_a_base_optimizer():
  config = load_config("digits")
  training.set_optimizer(config, "sam", rho=0.1)
  training.set_optimizer(config, "sgd")  # sgd's rho is its Momentum-SAM's: msam's default
  assert config.rho == registry.get("msam").default_rho == 0.3
  training.set_optimizer(config, "msam")
  assert config.rho == 0.3


@pytest.mark.parametrize(
  "name", ["cifar100_wrn16_4", "cifar100_resnet50", "digits", "imagenet_resnet50", "imagenet_vit"]
)
def test_config_files_keep_their_rho(name):
  config = config_lib.load_file(str(REPO / "configs" / f"{name}.py"))
  assert training.resolve(config).rho == config.rho == load_config(name).rho


def test_every_default_rho_is_its_factorys():
  defaults = {name: registry.get(name).default_rho for name in OPTIMIZERS}
  assert defaults["msam"] == defaults["adamw_msam"] == defaults["lion_msam"] == 0.3
  assert defaults["sam"] == defaults["esam"] == defaults["gsam"] == 0.05 and defaults["asam"] == 0.5
  assert [n for n, rho in defaults.items() if rho is None] == ["sgd", "adamw", "lion"]
  assert config_lib.rho_scale("adamw") == config_lib.rho_scale("lion") == 0.3


# (arguments after --config FILE, the rho the run trains at, whether train.py prints a note).
_CLI_CASES = [
  ("digits", ["--config.optimizer=sam"], 0.05, True),
  ("digits", ["--config.optimizer=sam", "--config.rho=0.2"], 0.2, False),
  ("digits", ["--config.optimizer=adamw_msam"], 0.3, False),
  ("cifar100_wrn16_4", ["--config.optimizer=msam"], 3.0, False),
  ("cifar100_wrn16_4", ["--config.optimizer=sam"], 0.05, True),
]
_SHOW_CONFIG = "import sys, train; train._parse_flags(sys.argv); c = train._config(); print(c.optimizer, c.rho)"


@pytest.mark.slow  # a subprocess per command line (seconds each; nothing compiles)
def test_switching_the_optimizer_on_the_command_line_takes_its_rho():
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")

  def run(config, args):
    argv = [
      sys.executable,
      "-c",
      _SHOW_CONFIG,
      "--config",
      str(REPO / "configs" / f"{config}.py"),
      *args,
      "--workdir=x",
    ]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False)

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    runs = [pool.submit(run, config, args) for config, args, _, _ in _CLI_CASES]
  for (config, args, rho, note), proc in zip(_CLI_CASES, runs):
    proc = proc.result()
    assert proc.returncode == 0, proc.stderr[-600:]
    name = next((a.split("=")[1] for a in args if a.startswith("--config.optimizer=")), load_config(config).optimizer)
    assert proc.stdout.split() == [name, repr(rho)], (config, args, proc.stdout)
    assert ("note: config.rho=" in proc.stderr) == note, (config, args, proc.stderr)

"""train.py as users run it: killed and resumed, two processes, a diverging run, bad flags."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import REPO, final_checkpoint, tree_arrays

pytestmark = pytest.mark.slow  # every test here runs train.py in subprocesses

DIGITS = os.path.join(REPO, "configs", "digits.py")


def _env(num_devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _train_cmd(workdir, *overrides):
  return [sys.executable, os.path.join(REPO, "train.py"), f"--config={DIGITS}", f"--workdir={workdir}", *overrides]


def _run(workdir, *overrides, num_devices=1, timeout=300):
  return subprocess.run(
    _train_cmd(workdir, *overrides), env=_env(num_devices), capture_output=True, text=True, timeout=timeout, cwd=REPO
  )


def _finalised_checkpoints(workdir):
  path = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(path):
    return []
  return [d for d in os.listdir(path) if d.isdigit()]


RESUME_FLAGS = (  # also the SIGTERM test's (test_pod_processes.py), which shares the reference run
  "--config.num_train_steps=200",
  "--config.checkpoint_every_steps=30",
  "--config.log_every_steps=50",
  "--config.eval_every_epochs=1",  # every 20 steps: the best model on validation changes between checkpoints
  "--config.bn_recompute_batches=2",
)


def _evaluated_steps(workdir):
  try:
    return [e["step"] for e in json.loads((workdir / "eval_history.json").read_text())]
  except (FileNotFoundError, json.JSONDecodeError):
    return []


def assert_same_best_model(workdir, reference):
  """The same best model on validation as the reference run: step, numbers and saved arrays."""
  expected, got = (json.loads((w / "results.json").read_text()) for w in (reference, workdir))
  numbers = [k for k in expected if k.startswith("best_") and k != "best_model"]
  assert {"best_step", "best_eval_accuracy", "best_validation_loss"} <= set(numbers)
  assert {k: got[k] for k in numbers} == {k: expected[k] for k in numbers}
  assert os.listdir(workdir / "best_model") == [str(expected["best_step"])]  # nothing else kept
  from msam_jax import training

  a, b = (training.load_for_eval(w, which="best")[1] for w in (reference, workdir))
  for x, y in zip(tree_arrays(a), tree_arrays(b), strict=True):
    np.testing.assert_array_equal(x, y)


# RST: the host draws which steps take the second gradient from (seed, step), so a resumed run
# draws the same (a shorter run than the shared reference: its own reference runs here).
RST_RESUME_FLAGS = (
  "--config.optimizer=rst",
  "--config.rho=0.05",
  "--config.num_train_steps=100",
  "--config.checkpoint_every_steps=10",
  "--config.log_every_steps=50",
  "--config.eval_every_epochs=100",
  "--config.bn_recompute_batches=0",
)


def _killed_when_ready(workdir, flags, after_an_evaluation: bool):
  """Starts a run and SIGKILLs it once it has a checkpoint (and, if asked, an evaluation newer than it)."""
  proc = subprocess.Popen(
    _train_cmd(workdir, *flags), env=_env(1), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 240
  checkpoints, evaluated = [], []
  while proc.poll() is None and time.time() < deadline:
    checkpoints, evaluated = [int(c) for c in _finalised_checkpoints(workdir)], _evaluated_steps(workdir)
    if checkpoints and (not after_an_evaluation or max(evaluated, default=0) > max(checkpoints)):
      break
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  if after_an_evaluation:
    assert checkpoints and max(evaluated) > max(checkpoints), "killed before an evaluation newer than a checkpoint"
  assert not (workdir / "results.json").exists()


@pytest.mark.parametrize("optimizer", ["msam", "rst"])
def test_killed_run_resumes_bit_identically(tmp_path, request, optimizer):
  """SIGKILL, then resume: the run ends as the uninterrupted one. msam is killed after an evaluation
  newer than the newest checkpoint (whose best model is then newer than the step the run resumes
  from) and keeps the same best model; rst draws the same second-gradient steps."""
  flags = RESUME_FLAGS if optimizer == "msam" else RST_RESUME_FLAGS
  if optimizer == "msam":
    reference = request.getfixturevalue("digits_reference")
  else:
    reference = tmp_path / "reference"
    assert _run(reference, *flags).returncode == 0
  workdir = tmp_path / "killed"
  _killed_when_ready(workdir, flags, after_an_evaluation=optimizer == "msam")

  resumed = _run(workdir, *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming from the checkpoint of step" in resumed.stderr
  step_a, a = final_checkpoint(str(reference))
  step_b, b = final_checkpoint(str(workdir))
  num_steps = next(f for f in flags if f.startswith("--config.num_train_steps="))
  assert step_a == step_b == int(num_steps.split("=")[1])
  for x, y in zip(tree_arrays(a), tree_arrays(b)):
    np.testing.assert_array_equal(x, y)
  if optimizer == "msam":
    assert_same_best_model(workdir, reference)


def test_diverging_run_names_the_step_and_keeps_a_good_checkpoint(tmp_path):
  result = _run(
    tmp_path,
    "--config.learning_rate=1e6",
    "--config.lr_schedule=const",
    "--config.num_train_steps=40",
    "--config.checkpoint_every_steps=1",
    "--config.log_every_steps=1",
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  message = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(message) == 1 and "non-finite at step" in message[0], result.stderr[-3000:]
  bad_step = int(message[0].split("non-finite at step ")[1].split(";")[0])
  step, state = final_checkpoint(str(tmp_path))
  assert step < bad_step
  assert all(np.isfinite(a).all() for a in tree_arrays(state))


# Each field's check is tested in-process (test_train.py); these show the command-line surface.
@pytest.mark.parametrize(
  "flag,expected",
  [
    ("--config.optimizer=adam", "config.optimizer='adam' is not valid; choose one of sgd, msam, sam"),
    ("--config.rho=-1", "config.rho=-1.0 must be >= 0"),
  ],
)
def test_bad_flags_give_one_line_and_no_traceback(tmp_path, flag, expected):
  result = _run(tmp_path, flag, num_devices=1, timeout=120)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert f"error: {expected}" in result.stderr


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_together_like_one(tmp_path):
  """Two processes with 2 CPU devices each equal one process with 4 devices on the same global batches."""
  flags = (
    "--config.num_train_steps=8",
    "--config.log_every_steps=4",
    "--config.checkpoint_every_steps=4",
    "--config.bn_recompute_batches=2",
  )
  port = _free_port()
  workdir = tmp_path / "multi"
  procs = [
    subprocess.Popen(
      _train_cmd(workdir, *flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"),
      env=_env(2),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  # Both processes end with the same parameters (they print the norm of their own copy).
  norms = [out.split("parameter norm ")[1].split(";")[0] for out, _ in outputs]
  assert norms[0] == norms[1]
  single = _run(tmp_path / "single", *flags, num_devices=4)
  assert single.returncode == 0, single.stderr[-3000:]

  step_m, multi_state = final_checkpoint(str(workdir))
  _, single_state = final_checkpoint(str(tmp_path / "single"))
  assert step_m == 8
  for a, b in zip(tree_arrays(multi_state["params"]), tree_arrays(single_state["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert (workdir / "results.json").exists()
  # Only process 0 writes TensorBoard events (process 1 only logs).
  assert sum(name.startswith("events.out.tfevents") for name in os.listdir(workdir)) == 1


def test_missing_dataset_says_how_to_prepare_it(tmp_path):
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  result = _run(
    tmp_path / "run", "--config.dataset=cifar100", f"--config.data_dir={data_dir}", num_devices=1, timeout=120
  )
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  message = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(message) == 1, result.stderr[-3000:]
  assert "cifar100" in message[0] and str(data_dir) in message[0]
  assert "tfds build cifar100" in message[0]
  assert not any(data_dir.iterdir()), "nothing may be downloaded"

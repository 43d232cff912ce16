"""train.py under pod conditions: SIGTERM mid-run, and 2 processes with fsdp and accumulation."""

import json
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers import REPO, final_checkpoint, tree_arrays
from test_processes import (
  RESUME_FLAGS,
  _env,
  _finalised_checkpoints,
  _free_port,
  _run,
  _train_cmd,
  assert_same_best_model,
)

from msam_jax.training.preemption import EXIT_CODE

pytestmark = pytest.mark.slow

SIGTERM_FLAGS = RESUME_FLAGS  # 200 steps; batch-norm recomputation (msam) while finishing
FINISHING = "training done; finishing the run"  # the line the loop logs after the last step


def _stopped_step(err: str) -> int:
  message = [line for line in err.splitlines() if line.startswith("stopped: preempted")]
  assert len(message) == 1, err[-3000:]
  return int(message[0].split("checkpoint of step ")[1].split(";")[0])


def test_sigterm_checkpoints_exits_75_and_resumes_bit_identically(tmp_path, digits_reference):
  """SIGTERM mid-run, then SIGTERM while the resumed run finishes (batch-norm
  recomputation): both exit 75; the next rerun completes the run with the
  uninterrupted run's checkpoint, final numbers and best model on validation."""
  workdir = tmp_path / "preempted"
  proc = subprocess.Popen(
    _train_cmd(workdir, *SIGTERM_FLAGS),
    env=_env(1),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 240
  while not _finalised_checkpoints(workdir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be preempted"
  proc.send_signal(signal.SIGTERM)
  sent = time.time()
  _, err = proc.communicate(timeout=120)
  assert time.time() - sent < 60
  assert proc.returncode == EXIT_CODE, err[-3000:]
  assert "Traceback" not in err
  step = _stopped_step(err)
  assert final_checkpoint(str(workdir))[0] == step < 200
  assert not (workdir / "results.json").exists()

  # Resumed; SIGTERM once the last step is done, while the run finishes.
  proc = subprocess.Popen(
    _train_cmd(workdir, *SIGTERM_FLAGS),
    env=_env(1),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  seen = []
  for line in proc.stderr:
    seen.append(line)
    if FINISHING in line:
      proc.send_signal(signal.SIGTERM)
      break
  _, err = proc.communicate(timeout=120)
  err = "".join(seen) + err
  assert FINISHING in err and f"Resuming from the checkpoint of step {step}" in err, err[-3000:]
  assert proc.returncode == EXIT_CODE, err[-3000:]
  assert "Traceback" not in err and _stopped_step(err) == 200
  assert not (workdir / "results.json").exists()

  finished = _run(workdir, *SIGTERM_FLAGS)
  assert finished.returncode == 0, finished.stderr[-3000:]
  step_a, a = final_checkpoint(str(digits_reference))
  step_b, b = final_checkpoint(str(workdir))
  assert step_a == step_b == 200
  for x, y in zip(tree_arrays(a), tree_arrays(b), strict=True):
    np.testing.assert_array_equal(x, y)
  expected, got = (json.loads((w / "results.json").read_text()) for w in (digits_reference, workdir))
  numbers = [k for k in expected if k.startswith(("final_", "eval_")) and k != "eval_history"]
  assert {"final_train_loss", "final_eval_accuracy", "eval_accuracy_before_bn_recompute"} <= set(numbers)
  assert {k: got[k] for k in numbers} == {k: expected[k] for k in numbers}
  history = lambda r: [(e["step"], e["accuracy"], e["loss"]) for e in r["eval_history"]]
  assert history(got) == history(expected)
  assert_same_best_model(workdir, digits_reference)


def test_two_processes_with_fsdp_and_accumulation_equal_one_replicated_process(tmp_path):
  """2 processes x 4 CPU devices (fsdp, 2 micro-batches) vs 1 process x 8 devices (replicated)."""
  flags = (
    "--config.num_train_steps=4",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.bn_recompute_batches=1",
    "--config.eval_every_epochs=100",
    "--config.grad_accum_steps=2",
  )
  port = _free_port()
  workdir = tmp_path / "multi"
  procs = [
    subprocess.Popen(
      _train_cmd(
        workdir,
        *flags,
        "--config.sharding=fsdp",
        "--config.fsdp_min_bytes=0",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ),
      env=_env(4),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=400) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  norms = [out.split("parameter norm ")[1].split(";")[0] for out, _ in outputs]
  assert norms[0] == norms[1]
  single = _run(tmp_path / "single", *flags, num_devices=8)
  assert single.returncode == 0, single.stderr[-3000:]

  step_m, multi_state = final_checkpoint(str(workdir))
  _, single_state = final_checkpoint(str(tmp_path / "single"))
  assert step_m == 4
  for a, b in zip(tree_arrays(multi_state), tree_arrays(single_state), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step(tmp_path):
  """JAX's preemption sync manager spreads the notice; both checkpoint one agreed step and exit 75."""
  flags = (
    "--config.num_train_steps=400",
    "--config.checkpoint_every_steps=20",
    "--config.log_every_steps=50",
    "--config.eval_every_epochs=100",
    "--config.bn_recompute_batches=1",
  )
  port = _free_port()
  workdir = tmp_path / "multi"
  procs = [
    subprocess.Popen(
      _train_cmd(workdir, *flags, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"),
      env=_env(1),
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  deadline = time.time() + 300
  while not _finalised_checkpoints(workdir) and procs[0].poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert procs[0].poll() is None, "the run finished before it could be preempted"
  procs[0].send_signal(signal.SIGTERM)
  errs = [p.communicate(timeout=120)[1] for p in procs]
  steps = []
  for p, err in zip(procs, errs):
    assert p.returncode == EXIT_CODE, err[-3000:]
    message = [line for line in err.splitlines() if line.startswith("stopped: preempted")]
    assert len(message) == 1, err[-3000:]
    steps.append(int(message[0].split("checkpoint of step ")[1].split(";")[0]))
  assert steps[0] == steps[1] == final_checkpoint(str(workdir))[0] < 400

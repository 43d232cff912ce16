"""train.py on the command line: every user mistake is one `error:` line, exit status 2, nothing written.

Each case runs train.py as a subprocess; all but the dataset case fail before
TensorFlow is imported, so they take seconds and run in parallel threads.
"""

import concurrent.futures
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(REPO, "configs", "digits.py")

# (name, arguments after the script, text the error line must contain).
# {tmp} is a fresh directory holding `afile` (a file) and `bad_config.py` (raises).
CASES = [
  ("missing config file", ["--config", "{tmp}/nope.py", "--workdir", "{tmp}/run"], "nope.py: no such config file"),
  ("config file raises", ["--config", "{tmp}/bad_config.py", "--workdir", "{tmp}/run"], "ZeroDivisionError"),
  ("no workdir", ["--config", DIGITS], "--workdir"),
  ("unknown field", ["--config", DIGITS, "--config.no_such=1", "--workdir", "{tmp}/run"], "config.no_such"),
  ("unknown flag", ["--config", DIGITS, "--no_such_flag=1", "--workdir", "{tmp}/run"], "no_such_flag"),
  ("stray argument", ["--config", DIGITS, "--workdir", "{tmp}/run", "stray"], "'stray'"),
  (
    "nan learning rate",
    ["--config", DIGITS, "--config.learning_rate=nan", "--workdir", "{tmp}/run"],
    "config.learning_rate=nan",
  ),
  ("inf rho", ["--config", DIGITS, "--config.rho=inf", "--workdir", "{tmp}/run"], "config.rho=inf"),
  (
    "negative learning rate",
    ["--config", DIGITS, "--config.learning_rate=-1", "--workdir", "{tmp}/run"],
    "config.learning_rate=-1",
  ),
  (
    "momentum 1",
    ["--config", DIGITS, "--config.optimizer_kwargs.momentum=1.0", "--workdir", "{tmp}/run"],
    "config.optimizer_kwargs.momentum=1.0",
  ),
  (
    "old spelling",
    ["--config", DIGITS, "--config.esam_beta=0.3", "--workdir", "{tmp}/run"],
    "config.esam_beta is now config.optimizer_kwargs.beta",
  ),
  (
    "option of another optimizer",
    ["--config", DIGITS, "--config.optimizer=sgd", "--config.optimizer_kwargs.beta=0.3", "--workdir", "{tmp}/run"],
    "config.optimizer_kwargs.beta is not an option of optimizer 'sgd'",
  ),
  (
    "label smoothing",
    ["--config", DIGITS, "--config.label_smoothing=1.5", "--workdir", "{tmp}/run"],
    "config.label_smoothing=1.5",
  ),
  ("zero batch", ["--config", DIGITS, "--config.batch_size=0", "--workdir", "{tmp}/run"], "config.batch_size=0"),
  ("float epochs", ["--config", DIGITS, "--config.num_epochs=1.5", "--workdir", "{tmp}/run"], "config.num_epochs=1.5"),
  (
    "optimizer choice",
    ["--config", DIGITS, "--config.optimizer=adam", "--workdir", "{tmp}/run"],
    "config.optimizer='adam'",
  ),
  (
    "schedule choice",
    ["--config", DIGITS, "--config.lr_schedule=linear", "--workdir", "{tmp}/run"],
    "config.lr_schedule='linear'",
  ),
  ("unknown model", ["--config", DIGITS, "--config.model=mlp", "--workdir", "{tmp}/run"], "config.model='mlp'"),
  (
    "option of another model",
    ["--config", DIGITS, "--config.model_kwargs.depth=3", "--workdir", "{tmp}/run"],
    "config.model_kwargs.depth",
  ),
  (
    "unknown option after switching",
    [
      "--config",
      DIGITS,
      "--config.model=wrn",
      "--config.model_kwargs.depth=10",
      "--config.model_kwargs.heads=2",
      "--workdir",
      "{tmp}/run",
    ],
    "config.model_kwargs.heads",
  ),
  (
    "bad option value",
    ["--config", DIGITS, "--config.model=wrn", "--config.model_kwargs.depth=11", "--workdir", "{tmp}/run"],
    "wrn depth must be 6n + 4",
  ),
  (
    "model and synthetic data shapes differ",
    [
      "--config",
      os.path.join(REPO, "configs", "imagenet_vit.py"),
      "--config.dataset=synthetic",
      "--config.synthetic.image_shape=(32, 32, 3)",
      "--config.num_train_steps=2",
      "--workdir",
      "{tmp}/run",
    ],
    "config.image_size=224 (vit takes 224x224 images) but config.synthetic.image_shape=(32, 32, 3)",
  ),
  (
    "best model chosen on the test split",
    ["--config", DIGITS, "--config.best_model_metric=accuracy", "--workdir", "{tmp}/run"],
    "config.best_model_metric='accuracy' names the test split",
  ),
  ("workdir is a file", ["--config", DIGITS, "--workdir", "{tmp}/afile"], "afile is a file"),
  ("workdir under a file", ["--config", DIGITS, "--workdir", "{tmp}/afile/run"], "which is a file"),
  (
    "dataset not prepared",
    ["--config", DIGITS, "--config.dataset=cifar10", "--config.data_dir={tmp}/tfds", "--workdir", "{tmp}/run"],
    "'cifar10' was not found",
  ),
]

# What TensorFlow's C++ logging prints on import, whatever the log level (only the dataset case imports it).
_TF_IMPORT_NOISE = ("WARNING: All log messages before absl::InitializeLog()", "oneDNN custom operations")


def _run(args, tmp):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
    [sys.executable, os.path.join(REPO, "train.py"), *(a.format(tmp=tmp) for a in args)],
    capture_output=True,
    text=True,
    env=env,
    cwd=tmp,
    timeout=300,
    check=False,
  )


@pytest.mark.slow
def test_every_bad_invocation_is_one_line_exit_2_and_writes_nothing(tmp_path):
  dirs = {}
  for name, _, _ in CASES:
    tmp = tmp_path / name.replace(" ", "_")
    tmp.mkdir()
    (tmp / "afile").write_text("")
    (tmp / "bad_config.py").write_text("def get_config():\n  return 1 / 0\n")
    (tmp / "tfds").mkdir()
    dirs[name] = tmp
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    runs = {name: pool.submit(_run, args, dirs[name]) for name, args, _ in CASES}
  failures = []
  for name, _, expected in CASES:
    proc = runs[name].result()
    lines = [
      line for line in proc.stderr.splitlines() if line.strip() and not any(noise in line for noise in _TF_IMPORT_NOISE)
    ]
    created = sorted(p.name for p in dirs[name].iterdir()) != ["afile", "bad_config.py", "tfds"]
    created = created or any((dirs[name] / "tfds").iterdir())
    ok = (
      proc.returncode == 2
      and len(lines) == 1
      and lines[0].startswith("error: ")
      and expected in lines[0]
      and "Traceback" not in proc.stderr
      and not created
    )
    if not ok:
      failures.append(f"{name}: rc={proc.returncode} created={created} stderr={proc.stderr[-600:]!r}")
  assert not failures, "\n".join(failures)

"""Train a model: `python train.py --config configs/digits.py --workdir runs/digits`.

Every config field can be overridden, e.g. `--config.optimizer=msam --config.rho=3`,
and every option of the model and of the optimizer, also after switching them
(`--config.model=wrn --config.model_kwargs.depth=28`,
`--config.optimizer=esam --config.optimizer_kwargs.beta=0.6`).

Restarting with the same workdir resumes from its newest readable checkpoint;
only the fields in `msam_jax.training.config.RESUMABLE_FIELDS` (logging,
evaluation and checkpoint cadence, data_dir, num_train_steps) may differ from
the config the workdir recorded. Rerunning a finished run reports its results
and changes nothing. At the end the evaluated model (unperturbed parameters,
recomputed batch-norm statistics) is saved in `workdir/evaluated_model/`, and
with a validation split the model best on validation in `workdir/best_model/`;
read them back with `msam_jax.training.load_for_eval(workdir)` and
`load_for_eval(workdir, which="best")`.

A mistake on the command line (a flag, a config field, the workdir, the
dataset) is reported as one `error: ...` line with exit status 2 before
anything is written or compiled. Library logging stays at WARNING unless
`--verbosity` asks for more. For several processes (TPU pods, multi-node GPU)
pass `--multihost` (cluster auto-detection) or the explicit coordinator flags.
"""

import logging as std_logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
# Unlocked with new attributes accepted, so that an unknown field or model option
# reaches `validate_fields`, which names it, instead of failing inside flag parsing.
config_flags.DEFINE_config_file(
  "config", None, "Path to a config file (configs/*.py).", lock_config=False, accept_new_attributes=True
)
flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, TensorBoard events and results.json (local, ~/..., or gs://...)."
)
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with cluster auto-detection.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a manual multi-process launch.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for a manual multi-process launch.")
flags.DEFINE_integer("process_id", None, "This process's index, for a manual multi-process launch.")
flags.mark_flags_as_required(["config", "workdir"])

USAGE_ERROR = 2


def _fail(message, status: int = USAGE_ERROR):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def _one_line(error: BaseException) -> str:
  """The first line of an error message, plus the exception a quoted traceback ends with."""
  lines = [line for line in str(error).strip().splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if any(line.startswith("Traceback") for line in lines):
    return f"{lines[0].rstrip(':')}: {lines[-1].strip()}"
  return " ".join(line.strip() for line in lines[:3]) if lines[0].endswith(":") else lines[0]


def _config_path(argv) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return "?"


def _parse_flags(argv):
  """absl's flag parsing, every mistake reported as one line (exit status 2)."""
  path = _config_path(argv)
  if path not in ("?", "") and not os.path.isfile(path.split(":", 1)[0]):
    _fail(f"--config {path}: no such config file; pass one such as configs/digits.py.")
  try:
    rest = FLAGS(argv)
    _ = FLAGS.config.to_dict()  # a config file that failed to load raises on first access
  except flags.Error as e:
    _fail(_one_line(e))
  except OSError as e:
    _fail(
      f"--config {_config_path(argv)}: the config file cannot be read ({_one_line(e)}); "
      "pass one such as configs/digits.py."
    )
  except Exception as e:
    _fail(
      f"--config {_config_path(argv)}: the config file failed to load "
      f"({type(e).__name__}: {_one_line(e)}); fix the file."
    )
  return rest


def _config():
  """The parsed config; after `--config.model=...` (`--config.optimizer=...`) its
  model_kwargs (optimizer_kwargs) are that model's (optimizer's) options."""
  from msam_jax import training

  config = FLAGS.config
  overrides = config_flags.get_override_values(FLAGS["config"])
  if "model" in overrides:  # the file's options were for its own model: keep only the command line's
    kwargs = {k: v for k, v in config.model_kwargs.items() if f"model_kwargs.{k}" in overrides and k != "image_size"}
    if "model_kwargs.image_size" in overrides:
      config.image_size = overrides["model_kwargs.image_size"]
    training.set_model(config, config.model, **kwargs)
  # Options the file's optimizer shares with a new one keep their values; each option the
  # command line sets must be one of the (new) optimizer's. The file's rho was chosen for the
  # file's optimizer: switching from it as set_optimizer does gives the new one's default rho
  # where the scales differ (msam -> sam), unless --config.rho is given too.
  kwargs = {k: v for k, v in config.optimizer_kwargs.items() if f"optimizer_kwargs.{k}" in overrides}
  name, file_rho = config.optimizer, config.rho
  if "optimizer" in overrides:
    config.optimizer = FLAGS["config.optimizer"].default  # the file's
  file_optimizer = config.optimizer
  training.set_optimizer(config, name, rho=overrides.get("rho"), **kwargs)
  if config.rho != file_rho:
    print(
      f"note: config.rho={config.rho:g}, {name}'s default; the file's rho {file_rho:g} was set for"
      f" {file_optimizer}, on another scale. Pass --config.rho to choose it.",
      file=sys.stderr,
    )
  return config


def _quiet_libraries() -> None:
  """Library internals (orbax, absl, TensorFlow) at WARNING; the run's own lines at INFO."""
  if FLAGS["verbosity"].present:
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  absl_logging.set_verbosity(absl_logging.WARNING)
  std_logging.getLogger("msam_jax").setLevel(std_logging.INFO)


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected argument {argv[1]!r}; flags are written --name=value (see --help).")
  from msam_jax import training
  from msam_jax.training import run_record

  try:
    config = _config()
    training.validate_fields(config)
    run_record.check_workdir(FLAGS.workdir)
  except (training.ConfigError, run_record.WorkdirError) as e:
    _fail(e)
  _quiet_libraries()

  import jax

  if FLAGS.coordinator_address:
    # CPU processes need a collectives backend; other platforms ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes, process_id=FLAGS.process_id
    )
  elif FLAGS.multihost:
    jax.distributed.initialize()

  from msam_jax import data
  from msam_jax.training import preemption

  try:
    results = training.train_and_evaluate(config, FLAGS.workdir)
  except (training.ConfigError, training.WorkdirError, training.RunMismatchError, data.DatasetNotFoundError) as e:
    _fail(e)
  except (training.NonFiniteLossError, training.CheckpointError) as e:
    _fail(e, status=1)
  except preemption.Preempted as e:  # SIGTERM: checkpoint saved; rerun to resume
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(preemption.EXIT_CODE)
  others = "".join(
    f"; {name} accuracy {results[f'final_{key}_accuracy']:.4f}"
    for key, name in (("validation", "validation"), ("noisy_train", "noisy-train"))
    if f"final_{key}_accuracy" in results
  )
  if "final_ema_eval_accuracy" in results:
    others += f"; MESA's EMA model accuracy {results['final_ema_eval_accuracy']:.4f}"
  noise = f" (label noise {results['label_noise']:g})" if results.get("label_noise") else ""
  print(
    f"final eval accuracy: {results['final_eval_accuracy']:.4f} "
    f"(loss {results['final_eval_loss']:.4f}){others}{noise}, parameter norm {results['final_param_norm']!r}; "
    f"results in {run_record.as_path(FLAGS.workdir) / run_record.RESULTS_FILE}"
  )
  if "best_step" in results:
    print(
      f"best on validation ({config.best_model_metric}): step {results['best_step']} (epoch"
      f" {results['best_epoch']:g}), eval accuracy {results['best_eval_accuracy']:.4f}, validation accuracy"
      f" {results['best_validation_accuracy']:.4f}; model in {results['best_model']}"
    )


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)

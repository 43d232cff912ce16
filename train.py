"""Train a model: `python train.py --config configs/digits.py --workdir runs/digits`.

Every config field can be overridden, e.g. `--config.optimizer=msam --config.rho=3`.
Restarting with the same workdir resumes from its latest checkpoint. For several
processes (TPU pods, multi-node GPU) pass `--multihost` (cluster auto-detection)
or the explicit coordinator flags.
"""
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and results.json.")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with cluster auto-detection.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a manual multi-process launch.")
flags.DEFINE_integer("num_processes", None, "Number of processes, for a manual multi-process launch.")
flags.DEFINE_integer("process_id", None, "This process's index, for a manual multi-process launch.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  import jax  # noqa: PLC0415 (after flag parsing, so --help stays fast)

  if FLAGS.coordinator_address:
    # CPU processes need a collectives backend; other platforms ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif FLAGS.multihost:
    jax.distributed.initialize()

  from msam_jax import data, training  # noqa: PLC0415

  try:
    results = training.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (training.ConfigError, data.DatasetNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except training.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except training.Preempted as e:  # SIGTERM: checkpoint saved; rerun to resume
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(training.preemption.EXIT_CODE)
  logging.info("final eval accuracy %.4f", results["final_eval_accuracy"])
  print(f"final eval accuracy: {results['final_eval_accuracy']:.4f} "
        f"(loss {results['final_eval_loss']:.4f}), parameter norm {results['final_param_norm']!r}; results in {FLAGS.workdir}/results.json")


if __name__ == "__main__":
  app.run(main)

"""The embedded default: a small CNN trained with MSAM on scikit-learn's digits.

Runs offline on a laptop CPU in about a minute:
`python train.py --config configs/digits.py --workdir runs/digits`.
"""

from msam_jax.training import base_config, set_model, set_optimizer


def get_config():
  config = base_config()
  config.dataset = "digits"
  set_model(config, "cnn")
  config.num_epochs = 30
  config.batch_size = 64
  config.eval_batch_size = 128
  set_optimizer(config, "msam", momentum=0.9, weight_decay=5e-4)
  config.learning_rate = 0.1
  config.lr_schedule = "start_ramp_cos"
  config.lr_ramp_epochs = 1.0
  config.label_smoothing = 0.1
  # A tenth of the training digits held out (stratified, clean labels): choose hyper-parameters
  # on it, never on the test split.
  config.validation_fraction = 0.1
  config.rho = 0.3
  config.rho_schedule = "const"
  config.log_every_steps = 20
  config.eval_every_epochs = 5
  config.checkpoint_every_steps = 200
  return config

"""ResNet-50 (CIFAR stem) on CIFAR-100, the original's `CIFAR100_ResNet50.ini`."""

from msam_jax.training import base_config, set_model, set_optimizer


def get_config():
  config = base_config()
  config.dataset = "cifar100"
  set_model(config, "resnet_cifar", depth=50)
  config.num_epochs = 200
  config.batch_size = 256
  set_optimizer(config, "sgd", momentum=0.9, weight_decay=1e-3)
  config.learning_rate = 0.1
  config.lr_schedule = "start_ramp_cos"
  config.lr_ramp_epochs = 1.0
  config.label_smoothing = 0.1
  config.rho = 3.0
  config.rho_schedule = "const"
  return config

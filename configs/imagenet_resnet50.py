"""ResNet-50 on ImageNet-2012, the original's `ImageNet_ResNet50.ini` (SAM paper's setup, batch 1024)."""

from msam_jax.training import base_config, set_model, set_optimizer


def get_config():
  config = base_config()
  config.dataset = "imagenet2012"
  config.image_size = 224
  set_model(config, "resnet", depth=50)
  config.num_epochs = 100
  config.batch_size = 1024
  config.eval_batch_size = 1024
  set_optimizer(config, "sgd", momentum=0.9, weight_decay=1e-4)
  config.learning_rate = 1.0
  config.lr_schedule = "start_ramp_cos"
  config.lr_ramp_epochs = 1.0
  config.label_smoothing = 0.1
  config.rho = 0.3
  config.rho_schedule = "const"
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2500
  return config

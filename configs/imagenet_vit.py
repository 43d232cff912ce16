"""SimpleViT-S/32 on ImageNet-2012, the original's `ImageNet_ViT.ini`.

MSAM: `--config.optimizer=adamw_msam --config.rho=3`; SAM: `--config.optimizer=adamw_sam --config.rho=0.2`.
"""

from msam_jax.training import base_config, set_model, set_optimizer


def get_config():
  config = base_config()
  config.dataset = "imagenet2012"
  config.image_size = 224
  set_model(config, "vit", size="S", patch_size=32)  # its image_size is config.image_size
  config.num_epochs = 90
  config.batch_size = 1024
  config.eval_batch_size = 1024
  set_optimizer(config, "adamw", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1)
  config.learning_rate = 1e-3
  config.lr_schedule = "cos_warmup"
  config.lr_warmup_epochs = 8.0
  config.grad_clip_norm = 1.0
  config.label_smoothing = 0.0
  config.rho = 10.0
  config.rho_schedule = "start_jump"
  config.rho_jump_epochs = 8.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2500
  return config

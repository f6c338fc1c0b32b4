"""MobileNetV4 on ImageNet after timm's trainings: `--config=configs/mnv4.py:conv_small`.

Variants: conv_small (default), conv_medium, conv_large, hybrid_medium, hybrid_large; other widths
with `--config.model.width` (conv_small 0.35 / 0.5, hybrids 0.75: timm's `mobilenetv4_*_050` etc.).

Sources (timm 1.0.31): the image size is each model's default_cfg input size (224 / 256 / 384) and
the epochs its default weights' tag (conv_small.e2400_r224_in1k, conv_medium.e500_r256_in1k,
conv_large.e600_r384_in1k, hybrid_medium.ix_e550_r256_in1k, hybrid_large.ix_e600_r384_in1k). The model
cards say these were trained "with timm scripts using hyper-parameters (mostly) similar to those in the
paper"; R. Wightman's "MobileNet baselines" post (huggingface.co/blog/rwightman/mobilenet-baselines)
describes that template: AdamW with beta1 lowered from 0.9 to 0.6, cosine schedule, high dropout and
augmentation, very long schedules. UNVERIFIED: the per-tag learning rate, weight decay, warm-up, batch
and dropout below could not be read from timm's hparams files here; they follow the MobileNetV4 paper's
AdamW template and must be checked against timm's published yaml before a full run. Not expressible
here: AdamW beta1 0.6 (this project's AdamW uses 0.9), RandAugment, mixup / cutmix, random erasing,
stochastic depth.
"""
from configs import base

# variant -> (image size, epochs, peak learning rate, weight decay, dropout)
VARIANTS = {
    "conv_small": (224, 2400, 0.002, 0.01, 0.25),
    "conv_medium": (256, 500, 0.004, 0.1, 0.2),
    "conv_large": (384, 600, 0.004, 0.2, 0.2),
    "hybrid_medium": (256, 550, 0.004, 0.1, 0.2),
    "hybrid_large": (384, 600, 0.004, 0.2, 0.2),
}


def get_config(arg=None):
    variant = arg or "conv_small"
    if variant not in VARIANTS:
        raise ValueError(f"unknown mnv4 variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    image_size, epochs, lr, weight_decay, dropout = VARIANTS[variant]
    config = base.get_config()
    config.model.name = "mobilenet_v4"
    config.model.variant = variant
    config.model.num_classes = 1000
    config.model.dropout = dropout
    config.dataset.image_size = image_size

    config.train.batch_size = 4096
    config.train.epochs = epochs

    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = lr
    config.optimizer.weight_decay = weight_decay
    config.optimizer.eps = 1e-8
    config.optimizer.decay_bn_and_bias = False  # timm filters BN, bias and layer-scale parameters out

    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 5.0
    config.schedule.end_lr = 1e-5 * lr

    config.ema.decay = 0.9998
    config.loss.label_smoothing = 0.1
    config.checkpoint.every_epochs = 5
    config.checkpoint.keep = 5
    return config

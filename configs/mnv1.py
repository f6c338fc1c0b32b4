"""MobileNetV1, the MindSpore model-zoo recipe (seed 002): ImageNet, or CIFAR-10 with `:cifar10`.

    --config=configs/mnv1.py            ImageNet2012 (seed 002's config2)
    --config=configs/mnv1.py:cifar10    CIFAR-10     (seed 002's config1)

Seed 002 reports Top-1 71.28%, Top-5 90.10% on ImageNet (4 x Ascend 910, 90 epochs, 1251 steps
per epoch); that is the result the ImageNet variant aims at. The seed trains 1001 classes
(a background class); TFDS ImageNet has 1000. Seed 002 reports no CIFAR-10 result.
"""
from configs import base

VARIANTS = ("imagenet2012", "cifar10")


def get_config(arg=None):
    variant = arg or "imagenet2012"
    if variant not in VARIANTS:
        raise ValueError(f"unknown mnv1 variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    config = base.get_config()
    config.model.name = "mobilenet_v1"
    config.model.dropout = 0.0
    config.optimizer.name = "momentum"
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 1e-4
    config.optimizer.decay_bn_and_bias = False  # the seed decays conv and dense kernels only
    config.train.epochs = 90
    config.checkpoint.every_epochs = 5
    config.checkpoint.keep = 10
    config.mixed_precision.loss_scale = 1024.0

    if variant == "imagenet2012":
        config.model.num_classes = 1000
        config.dataset.name = "imagenet2012"
        config.train.batch_size = 256 * 4  # 256 per device on 4 devices (seed: 1251 steps per epoch)
        config.optimizer.learning_rate = 0.8
        config.schedule.name = "linear"
        config.schedule.warmup_epochs = 0.0
        config.schedule.end_lr = 0.0
        config.loss.label_smoothing = 0.1
    else:
        config.model.num_classes = 10
        config.dataset.name = "cifar10"
        config.train.batch_size = 32
        config.optimizer.learning_rate = 0.1
        config.schedule.name = "poly"
        config.schedule.warmup_epochs = 5.0
        config.schedule.init_lr = 0.01
        config.schedule.end_lr = 1e-5
    return config

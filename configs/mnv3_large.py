"""MobileNetV3-Large on ImageNet, the mindcv recipe (seed 001, configs/mobilenetv3/v3_large_Ascend.yaml).

Seed 001 reports Top-1 75.14%, Top-5 92.33% (8 x Ascend 910, graph mode, 420 epochs); that is
the result this recipe aims at.
"""
from configs import base


def get_config(arg=None):
    base.no_argument("mnv3_large", arg)
    config = base.get_config()
    config.model.name = "mobilenet_v3_large"
    config.model.num_classes = 1000
    config.model.dropout = 0.2

    config.train.batch_size = 75 * 8  # 75 per device on 8 devices
    config.train.epochs = 420

    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 1.08
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 2e-5

    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 4.0

    config.loss.label_smoothing = 0.1
    config.mixed_precision.level = "O3"
    return config

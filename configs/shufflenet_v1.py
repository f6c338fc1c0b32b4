"""ShuffleNetV1 2.0x, groups 3, on ImageNet: the MindSpore model-zoo recipe (seed 004).

Seed 004 reports Top-1 73.86%, Top-5 91.36% (8 x Ascend 910, 250 epochs, 1251 steps per epoch);
that is the result this recipe aims at.
"""
from configs import base


def get_config(arg=None):
    base.no_argument("shufflenet_v1", arg)
    config = base.get_config()
    config.model.name = "shufflenet_v1"
    config.model.width = 2.0
    config.model.groups = 3
    config.model.num_classes = 1000
    config.model.dropout = 0.0

    config.train.batch_size = 128 * 8  # 128 per device on 8 devices (seed: 1251 steps per epoch)
    config.train.epochs = 250

    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.5  # lr_max
    config.optimizer.momentum = 0.9
    config.optimizer.weight_decay = 4e-5

    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = 4.0
    config.schedule.init_lr = 0.0
    config.schedule.end_lr = 0.0

    config.loss.label_smoothing = 0.1
    config.checkpoint.every_epochs = 1
    config.checkpoint.keep = 5
    config.mixed_precision.level = "O3"
    config.mixed_precision.loss_scale = 1024.0
    return config

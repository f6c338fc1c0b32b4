"""Fine-tune MobileNetV3 on your own image folder: the recipe of seed 003 (Ascend TF model zoo).

    python main.py --config=configs/mnv3_transfer.py --workdir=DIR \\
        --config.dataset.path=PHOTOS --config.init.weights=mobilenetv3_large_100.safetensors

PHOTOS holds train/<class>/*.jpg and validation/<class>/*.jpg; model.num_classes is taken from
the folder. Seed 003 trains two classes with learning rate 0.001 for 20 epochs (batch 2; we use
16 so BatchNorm sees meaningful batch statistics) and reports no accuracy. Start from pretrained
weights with init.weights; add --config.init.freeze=backbone to train only the head.
"""
from configs import base


def get_config(arg=None):
    base.no_argument("mnv3_transfer", arg)
    config = base.get_config()
    config.model.name = "mobilenet_v3_large"
    config.model.num_classes = 2
    config.model.dropout = 0.2
    config.dataset.name = "folder"
    config.dataset.image_size = 224
    config.train.batch_size = 16
    config.train.epochs = 20
    config.train.log_every_steps = 10
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 0.001
    config.optimizer.weight_decay = 0.0
    config.schedule.name = "constant"
    config.schedule.warmup_epochs = 0.0
    config.eval.batch_size = 32
    config.checkpoint.keep = 3
    return config

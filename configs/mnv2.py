"""MobileNetV2 on ImageNet, timm's recipe for `mobilenetv2_*`: `--config=configs/mnv2.py:100`.

Variants are timm's model names without the family: 050, 075, 100 (default), 140 (width 0.5 ... 1.4).

Source: timm 1.0.31's model cards name the recipe of mobilenetv2_100.ra_in1k and mobilenetv2_140.ra_in1k
"RA": RandAugment, RMSProp with TF 1.0 behaviour, EMA of the weights, step (exponential, staircase) LR
schedule with warm-up. timm publishes no command line for MobileNetV2 itself; the one it publishes for
the RA recipe on the closest network, MobileNetV3-Large-100 (pytorch-image-models
docs/training_hparam_examples.md, 2 GPUs), is
    -b 512 --sched step --epochs 600 --decay-epochs 2.4 --decay-rate .973 --opt rmsproptf --opt-eps .001
    --warmup-lr 1e-6 --weight-decay 1e-5 --drop 0.2 --drop-connect 0.2 --model-ema --model-ema-decay 0.9999
    --aa rand-m9-mstd0.5 --remode pixel --reprob 0.2 --amp --lr .064 --lr-noise 0.42 0.9
and that is what this recipe takes. Not here: RandAugment, random erasing, drop-connect (stochastic
depth) and LR noise, which this project does not implement. Image size: timm's default_cfg, 224
(crop 0.875, bicubic). mobilenetv2_050's weights (lamb_in1k) came from a LAMB recipe instead.
"""
from configs import base

WIDTHS = {"050": 0.5, "075": 0.75, "100": 1.0, "140": 1.4}


def get_config(arg=None):
    variant = arg or "100"
    if variant not in WIDTHS:
        raise ValueError(f"unknown mnv2 variant {variant!r}; choose one of {', '.join(WIDTHS)}")
    config = base.get_config()
    config.model.name = "mobilenet_v2"
    config.model.width = WIDTHS[variant]
    config.model.num_classes = 1000
    config.model.dropout = 0.2  # --drop 0.2
    config.dataset.image_size = 224

    config.train.batch_size = 512  # -b 512 (256 per GPU on 2 GPUs)
    config.train.epochs = 600

    config.optimizer.name = "rmsprop"  # rmsproptf: TF 1.0 RMSProp, decay 0.9, momentum 0.9
    config.optimizer.learning_rate = 0.064
    config.optimizer.momentum = 0.9
    config.optimizer.decay = 0.9
    config.optimizer.eps = 1e-3
    config.optimizer.weight_decay = 1e-5
    config.optimizer.decay_bn_and_bias = False  # timm filters BN and bias parameters out of weight decay

    config.schedule.name = "exponential"  # --sched step: x 0.973 every 2.4 epochs
    config.schedule.decay_epochs = 2.4
    config.schedule.decay_rate = 0.973
    config.schedule.warmup_epochs = 3.0  # timm train.py's default --warmup-epochs
    config.schedule.init_lr = 1e-6  # --warmup-lr

    config.ema.decay = 0.9999
    config.loss.label_smoothing = 0.1  # timm train.py's default --smoothing
    config.checkpoint.every_epochs = 5
    config.checkpoint.keep = 5
    return config

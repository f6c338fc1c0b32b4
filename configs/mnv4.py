"""MobileNetV4 on ImageNet, the paper's published recipes: `--config=configs/mnv4.py:conv_small`.

Variants: conv_small (default), conv_medium, conv_large, hybrid_medium, hybrid_large; other widths
with `--config.model.width` (conv_small 0.35 / 0.5, hybrids 0.75: timm's `mobilenetv4_*_050` etc.).

Source: the MobileNetV4 authors' TF Model Garden experiments, tensorflow/models
official/vision/configs/experiments/image_classification/imagenet_mobilenetv4_<variant>_tpu.yaml
(Top-1 73.8 / 79.9 / 82.9 / 80.7 / 83.7 %). timm publishes no hyperparameter file for its
MobileNetV4 weights; their model cards say they were trained "with timm scripts using
hyper-parameters (mostly) similar to those in the paper", i.e. these. What differs in timm is the
length: its weights' tags say conv_small.e2400_r224, conv_medium.e500_r256, conv_large.e600_r384,
hybrid_medium.ix_e550_r256, hybrid_large.ix_e600_r384 (e.g. `--config.train.epochs=2400`). Image
sizes are the yamls' input_size, which are timm's default_cfg sizes (224 / 256 / 384).

Taken from the yamls: global batch, epochs (train_steps x batch / 1,281,167 images, rounded),
linear warm-up of 1560 steps (5 epochs at batch 4096, 20 at 16384), cosine decay to 0 (hybrid_large:
alpha 0.001 of the peak), AdamW peak rate, beta1 (0.6 for conv_small), epsilon (1e-6 for conv_small,
else Keras' 1e-7), decoupled weight decay rate (not on BatchNorm), dropout, label smoothing 0.1,
weight EMA 0.9999 (conv_small only), BatchNorm momentum and epsilon.
Not expressible here: RandAugment, mixup / cutmix (conv_large, hybrid_large), stochastic depth
(0.075 / 0.2 / 0.35), conv_small's extra L2 loss of 1e-5 and its EMA start at step 1560. The
classifier's bias is not decayed here (the yamls exclude only BatchNorm from decay).
"""
from configs import base

# variant -> image size, batch, epochs, warm-up epochs, peak rate, end rate / peak, AdamW beta1, AdamW eps,
#            weight decay, dropout, EMA decay, BatchNorm (decay, epsilon)
VARIANTS = {
    "conv_small": dict(size=224, batch=4096, epochs=9600, warmup=5.0, lr=0.002, end=0.0, beta1=0.6, eps=1e-6,
                       wd=0.01, dropout=0.3, ema=0.9999, bn=(0.95, 1e-6)),
    "conv_medium": dict(size=256, batch=4096, epochs=500, warmup=5.0, lr=0.004, end=0.0, beta1=0.9, eps=1e-7,
                        wd=0.1, dropout=0.2, ema=0.0, bn=(0.997, 1e-3)),
    "conv_large": dict(size=384, batch=16384, epochs=500, warmup=20.0, lr=0.004, end=0.0, beta1=0.9, eps=1e-7,
                       wd=0.2, dropout=0.2, ema=0.0, bn=(0.997, 1e-3)),
    "hybrid_medium": dict(size=256, batch=16384, epochs=500, warmup=20.0, lr=0.016, end=0.0, beta1=0.9, eps=1e-7,
                          wd=0.1, dropout=0.2, ema=0.0, bn=(0.997, 1e-3)),
    "hybrid_large": dict(size=384, batch=16384, epochs=500, warmup=20.0, lr=0.01, end=0.001, beta1=0.9, eps=1e-7,
                         wd=0.2, dropout=0.2, ema=0.0, bn=(0.997, 1e-3)),
}


def get_config(arg=None):
    variant = arg or "conv_small"
    if variant not in VARIANTS:
        raise ValueError(f"unknown mnv4 variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    v = VARIANTS[variant]
    config = base.get_config()
    config.model.name = "mobilenet_v4"
    config.model.variant = variant
    config.model.num_classes = 1000
    config.model.dropout = v["dropout"]
    config.model.bn_decay, config.model.bn_eps = v["bn"]
    config.dataset.image_size = v["size"]

    config.train.batch_size = v["batch"]
    config.train.epochs = v["epochs"]

    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = v["lr"]
    config.optimizer.beta1 = v["beta1"]
    config.optimizer.beta2 = 0.999
    config.optimizer.eps = v["eps"]
    config.optimizer.weight_decay = v["wd"]
    config.optimizer.decay_bn_and_bias = False

    config.schedule.name = "cosine"
    config.schedule.warmup_epochs = v["warmup"]
    config.schedule.end_lr = v["end"] * v["lr"]

    config.ema.decay = v["ema"]
    config.loss.label_smoothing = 0.1
    config.checkpoint.every_epochs = 5
    config.checkpoint.keep = 5
    return config

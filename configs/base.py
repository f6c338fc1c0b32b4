"""Defaults every recipe starts from; a recipe overrides what its seed specifies.

The schema is shared by both engines. Fields whose value is None by default are typed
placeholders, so `--config.x.y=value` overrides are still type-checked.
"""
import ml_collections
from ml_collections import config_dict


def no_argument(recipe: str, arg) -> None:
    """For a recipe without variants: `--config=configs/<recipe>.py:<arg>` is refused, not ignored."""
    if arg:
        raise ValueError(f"{recipe} has no variants (got {arg!r}); use --config=configs/{recipe}.py")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict()
    # mobilenet_v1 | mobilenet_v2 | mobilenet_v3_small | mobilenet_v3_large | mobilenet_v4 | shufflenet_v1
    config.model.name = "mobilenet_v3_small"
    config.model.width = 1.0
    config.model.groups = config_dict.placeholder(int)  # ShuffleNetV1 only: 1, 2, 3, 4 or 8
    # MobileNetV4 only: conv_small | conv_medium | conv_large | hybrid_medium | hybrid_large
    config.model.variant = config_dict.placeholder(str)
    config.model.num_classes = 1000
    config.model.dropout = 0.2  # before the classifier
    config.model.bn_eps = 1e-5  # timm and MindSpore default; TF-slim / Keras weights use 1e-3
    config.model.bn_decay = 0.9  # running-average decay (PyTorch momentum 0.1, MindSpore momentum 0.9)
    # How depthwise / grouped convolutions are computed; same parameters and values either way.
    # auto: "fast" on CPU, "xla" elsewhere. fast: JAX k x k shifted multiply-adds and grouped
    # matmuls (mobilenets_jax/layers.py); MindSpore the stride-1 depthwise input gradient as a
    # forward convolution (mobilenets_ms/layers.py). xla: each framework's own convolution
    # (lax.conv with feature_group_count; MindSpore's Conv2D and its gradients).
    config.model.conv_impl = "auto"
    # Whose network a family is, where references differ (mobilenets_core/specs.py): "timm" (timm's
    # widths, symmetric padding, ReLU6 MobileNetV1) or "mindcv" (mindcv's MobileNetV1 with ReLU,
    # MobileNetV3 with "same"-padded depthwise convs, its widths and head; ShuffleNetV1 is the same
    # under both). A weight file brings its own, as it brings its BatchNorm epsilon.
    config.model.convention = "timm"

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "imagenet2012"  # a TFDS name, "folder" or "digits" (embedded)
    config.dataset.data_dir = config_dict.placeholder(str)  # TFDS data_dir
    config.dataset.path = config_dict.placeholder(str)  # root of train/<class>/ and validation/<class>/
    config.dataset.image_size = 224
    config.dataset.max_image_pixels = 178_956_970  # larger images are skipped and counted, never decoded

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 256  # global batch, split over all devices
    config.train.epochs = 100
    config.train.seed = 0
    config.train.dtype = "float32"  # float32 | bfloat16 | float16 (compute dtype; weights stay float32)
    config.train.log_every_steps = 50

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "momentum"  # momentum | rmsprop | adamw
    config.optimizer.learning_rate = 0.1  # peak learning rate of the schedule
    config.optimizer.momentum = 0.9
    config.optimizer.decay = 0.9  # RMSProp second-moment decay
    config.optimizer.eps = 1e-8
    config.optimizer.beta1 = 0.9  # AdamW first-moment decay (the MobileNetV4 recipes lower it to 0.6)
    config.optimizer.beta2 = 0.999  # AdamW second-moment decay
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 1e-4
    config.optimizer.decay_bn_and_bias = True  # False: no weight decay on BatchNorm and bias parameters

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "cosine"  # cosine | linear | poly | exponential | constant
    config.schedule.warmup_epochs = 0.0
    config.schedule.init_lr = 0.0  # learning rate at step 0 of the warm-up
    config.schedule.end_lr = 0.0  # learning rate at the end of training (cosine, linear, poly)
    config.schedule.decay_epochs = 2.4  # exponential: decay every this many epochs
    config.schedule.decay_rate = 0.97  # exponential: multiply by this each decay_epochs

    config.loss = ml_collections.ConfigDict()
    config.loss.label_smoothing = 0.0

    config.init = ml_collections.ConfigDict()
    config.init.weights = config_dict.placeholder(str)  # canonical / timm .safetensors, timm .pth, MindSpore or mindcv .ckpt, workdir
    config.init.freeze = ""  # "backbone": train only the classifier (and MobileNetV3's head conv)

    config.ema = ml_collections.ConfigDict()
    config.ema.decay = 0.0  # > 0: keep an exponential moving average of the weights and evaluate it

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 256  # global; the last batch is padded and masked, never dropped
    config.eval.every_epochs = 1  # evaluate the validation split every this many epochs (and at the end)
    config.eval.checkpoint = config_dict.placeholder(int)  # --mode=eval: this step instead of the newest
    config.eval.image_size = config_dict.placeholder(int)  # eval/predict/export: the checkpoint's when unset

    config.predict = ml_collections.ConfigDict()
    config.predict.inputs = config_dict.placeholder(str)  # an image, a directory or a glob
    config.predict.output = config_dict.placeholder(str)  # optional .jsonl with every prediction
    config.predict.top_k = 5

    config.convert = ml_collections.ConfigDict()
    config.convert.output = config_dict.placeholder(str)  # --mode=convert: where the converted weights go
    config.convert.format = ""  # canonical | timm | mindspore | mindcv | workdir (of --backend); "" = from the output's name

    config.export = ml_collections.ConfigDict()
    config.export.format = "all"  # jax: tflite | saved_model | stablehlo | all; mindspore: mindir | onnx | air | all
    config.export.calibration_images = 100  # training images that calibrate the int8 TFLite model
    config.export.agreement_images = 500  # validation images on which int8 Top-1 agreement with float is measured

    config.resume = ml_collections.ConfigDict()
    config.resume.allow = ""  # recipe fields a resume may change, e.g. "train.epochs,optimizer.learning_rate"

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_epochs = 1
    config.checkpoint.keep = 5

    config.mixed_precision = ml_collections.ConfigDict()
    config.mixed_precision.level = "O0"  # MindSpore AMP level: O0 | O1 | O2 | O3
    config.mixed_precision.loss_scale = 1.0  # fixed loss scale; 0 means dynamic
    config.mixed_precision.dynamic_init = 2.0 ** 24  # dynamic scale: the first scale,
    config.mixed_precision.dynamic_factor = 2.0  # what it is divided by on a skipped step, multiplied by
    config.mixed_precision.dynamic_window = 2000  # after this many finite steps in a row

    config.mindspore = ml_collections.ConfigDict()  # the MindSpore engine only
    config.mindspore.device = "auto"  # auto (Ascend, else GPU, else CPU) | Ascend | GPU | CPU
    config.mindspore.mode = "graph"  # graph (compiled, the default) | pynative

    config.bench = ml_collections.ConfigDict()  # --mode=bench: throughput on synthetic data, nothing read or written
    config.bench.batch_size = 32  # global batch of the timed steps (train.batch_size is the recipe's, often 2048)
    config.bench.warmup_steps = 2  # untimed steps first (the first one compiles)
    config.bench.steps = 5  # steps per timed run
    config.bench.repeats = 3  # timed runs; the reported figure is their median
    # "synthetic", or a dataset ("folder" with dataset.path, a TFDS name) whose real pipeline also
    # feeds the timed training step: train img/s end to end and data_ms beside the synthetic figure
    config.bench.data = "synthetic"

    return config


# Settings a recipe's ImageNet-scale values give way to on the embedded dataset, so that
# `--config.dataset.name=digits` alone trains in minutes on a laptop CPU. A key given on the
# command line always wins over the profile.
DATASET_PROFILES = {
    "digits": {
        "model.num_classes": 10,
        "dataset.image_size": 32,
        "train.batch_size": 64,
        "train.epochs": 15,
        "train.log_every_steps": 11,
        "optimizer.learning_rate": 0.01,
        "schedule.warmup_epochs": 1.0,
        "eval.batch_size": 128,
        "checkpoint.every_epochs": 5,
    },
}


def apply_dataset_profile(config, explicit_keys=()) -> dict:
    """Apply the profile of config.dataset.name, except keys in `explicit_keys`; returns what changed.

    An image folder brings its class count: model.num_classes = the number of train/<class> folders."""
    profile = dict(DATASET_PROFILES.get(config.dataset.name, {}))
    if config.dataset.name == "folder" and config.dataset.path:
        from mobilenets_core.data.sources import folder_class_names

        names = folder_class_names(config.dataset.path)
        if names:
            profile["model.num_classes"] = len(names)
    changed = {}
    for key, value in profile.items():
        section, field = key.split(".")
        if key not in explicit_keys and config[section][field] != value:
            config[section][field] = value
            changed[key] = value
    return changed

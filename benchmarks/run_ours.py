"""One --mode=bench measurement of our engines, as compare.py runs it (one JSON line on stdout).

    .venv/bin/python benchmarks/run_ours.py --backend jax --model mobilenet_v3_small [--conv-impl xla]

Builds the config from configs/base.py (the recipe's optimizer would differ between models; the
comparison uses momentum SGD everywhere, as the peers' scripts do) and calls the engine's
`bench(config)`, exactly what `main.py --mode=bench` calls (after the same restart onto huge
pages for the JAX engine, mobilenets_core/huge_pages.py).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from mobilenets_core import huge_pages  # noqa: E402


def build_config(args):
    config = base.get_config()
    config.model.name, config.model.width, config.model.groups = args.model, args.width, args.groups
    config.model.variant = args.variant
    config.model.num_classes = 1000
    config.dataset.image_size = args.size
    config.train.dtype = args.dtype
    config.optimizer.name, config.optimizer.learning_rate, config.optimizer.weight_decay = "momentum", 0.01, 1e-5
    config.bench.batch_size, config.bench.warmup_steps = args.batch, args.warmup
    config.bench.steps, config.bench.repeats = args.steps, args.repeats
    config.mixed_precision.level = "O0"
    if args.conv_impl:
        config.model.conv_impl = args.conv_impl  # both engines: their fast depthwise forms or the frameworks' own
    return config


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("jax", "mindspore"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--groups", type=int, default=None)
    parser.add_argument("--variant", default=None, help="MobileNetV4's model.variant, e.g. conv_small")
    parser.add_argument("--conv-impl", default="", choices=("", "auto", "fast", "xla"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="JAX compute dtype")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = build_config(args)
    if args.backend == "jax":
        huge_pages.restart_with_huge_pages()  # as main.py does for the JAX engine
        from mobilenets_jax.bench import bench
    else:
        from mobilenets_ms.bench import bench
    bench(config, None)


if __name__ == "__main__":
    main()

"""mindcv (MindSpore's model zoo) throughput, the peer of our MindSpore engine; run by compare.py
with the mindcv env's python.

    /work/peer/mindcv/bin/python benchmarks/peer_mindcv.py --model mobilenet_v3_small_100

Same protocol as `--mode=bench`: graph mode, one random NCHW batch created once, a training
step = MindSpore's standard nn.TrainOneStepCell(nn.WithLossCell(net, softmax cross-entropy),
nn.Momentum), warm-up steps, then the median over repeats of timed runs; inference is the
network in eval mode. Prints one JSON line with the keys of our bench record.
"""
import argparse
import json
import os
import resource
import sys

os.environ.setdefault("GLOG_v", "3")

import mindcv  # noqa: E402
import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mobilenets_core.bench import median_seconds_per_step  # noqa: E402  the timing loop of --mode=bench


def _wait(output):
    output.asnumpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="CPU")
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device(args.device)
    ms.set_seed(0)
    net = mindcv.create_model(args.model, num_classes=1000)
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.01, momentum=0.9, weight_decay=1e-5)
    train_step = nn.TrainOneStepCell(nn.WithLossCell(net, loss), optimizer)
    train_step.set_train(True)
    rng = np.random.default_rng(0)
    images = Tensor(rng.standard_normal((args.batch, 3, args.size, args.size), dtype=np.float32))
    labels = Tensor(rng.integers(0, 1000, args.batch).astype(np.int32))
    train_s, _ = median_seconds_per_step(lambda: train_step(images, labels), _wait, args.warmup, args.steps,
                                         args.repeats)
    net.set_train(False)
    infer_s, _ = median_seconds_per_step(lambda: net(images), _wait, args.warmup, args.steps, args.repeats)
    print(json.dumps({
        "model": args.model, "backend": "mindcv", "device": args.device, "batch_size": args.batch,
        "image_size": args.size, "dtype": "float32",
        "train_images_per_sec": round(args.batch / train_s, 2), "infer_images_per_sec": round(args.batch / infer_s, 2),
        "step_ms": round(1000 * train_s, 2), "infer_ms": round(1000 * infer_s, 2),
        "peak_memory": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "peak_memory_source": "process peak RSS", "mode": "graph", "mindspore": ms.__version__,
        "mindcv": mindcv.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()

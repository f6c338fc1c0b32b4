"""timm (PyTorch) throughput, the peer of our JAX engine; run by compare.py with the torch env's python.

    /work/peer/torch/bin/python benchmarks/peer_timm.py --model mobilenetv3_small_100 [--device cuda --amp] [--compile]

Same protocol as `--mode=bench`: one random batch kept on the device, a training step =
forward + cross-entropy + backward + SGD-momentum update (timm's usual loop), warm-up steps,
then the median over repeats of timed runs. CPU: float32, channels_last; GPU: optionally AMP
(bfloat16/float16 autocast) and channels_last, as timm's train.py --amp --channels-last.
Prints one JSON line with the keys of our bench record.
"""
import argparse
import json
import os
import platform
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import timm  # noqa: E402
import torch  # noqa: E402

from mobilenets_core.bench import median_seconds_per_step  # noqa: E402  the timing loop of --mode=bench


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="autocast (GPU): bfloat16 where supported")
    parser.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (timm's train.py --torchcompile)")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    memory_format = getattr(torch, args.memory_format + ("_format" if args.memory_format == "contiguous" else ""))
    model = timm.create_model(args.model, num_classes=1000).to(device).to(memory_format=memory_format)
    if args.compile:
        model = torch.compile(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-5)
    loss_fn = torch.nn.CrossEntropyLoss()
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    amp_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def context():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with context():
            loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()

    model.train()
    train_s, _ = median_seconds_per_step(train_step, lambda _: sync(), args.warmup, args.steps, args.repeats)
    model.eval()

    def infer_step():
        with torch.inference_mode(), context():
            model(images)

    infer_s, _ = median_seconds_per_step(infer_step, lambda _: sync(), args.warmup, args.steps, args.repeats)
    if device.type == "cuda":
        memory, source = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        memory, source = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"
    print(json.dumps({
        "model": args.model, "backend": "timm",
        "device": f"{device.type}:"
                  + (torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()),
        "batch_size": args.batch, "image_size": args.size,
        "dtype": str(amp_dtype).replace("torch.", "") + " autocast" if args.amp else "float32",
        "train_images_per_sec": round(args.batch / train_s, 2), "infer_images_per_sec": round(args.batch / infer_s, 2),
        "step_ms": round(1000 * train_s, 2), "infer_ms": round(1000 * infer_s, 2), "peak_memory": int(memory),
        "peak_memory_source": source, "memory_format": args.memory_format, "torch": torch.__version__, "timm": timm.__version__,
        "threads": torch.get_num_threads(), "compiled": args.compile,
    }), flush=True)


if __name__ == "__main__":
    main()

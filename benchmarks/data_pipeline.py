"""Input-pipeline throughput: decode + augment images/s, per worker thread and in total.

    .venv/bin/python benchmarks/data_pipeline.py [--images 256] [--size 224] [--workers 1 2]

Writes synthetic 500x375 JPEGs (quality 90) into a temporary image folder, then times full
training epochs of `mobilenets_core.data` (random resized crop + flip + normalize, batch 64)
for each worker count, reporting the median of --repeats epochs after one warm-up epoch.
No engine is imported: this measures what feeds either engine.
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

from configs import base
from mobilenets_core.data import build_dataset


def write_folder(root: str, images: int) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", images), ("validation", 8)):
        for i in range(count):
            folder = os.path.join(root, split, f"class_{i % 4}")
            os.makedirs(folder, exist_ok=True)
            # smooth random fields compress like photos, unlike white noise
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(os.path.join(folder, f"{i}.jpg"), quality=90)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        write_folder(root, args.images)
        config = base.get_config()
        config.dataset.name, config.dataset.path, config.dataset.image_size = "folder", root, args.size
        for workers in args.workers:
            os.environ["MOBILENETS_DATA_WORKERS"] = str(workers)
            from mobilenets_core.data import dataset as dataset_module
            dataset_module._decode_pool.cache_clear()
            ds = build_dataset(config, "train")
            times = []
            for epoch in range(args.repeats + 1):
                start = time.perf_counter()
                n = sum(len(b["label"]) for b in ds.train_batches(args.batch, epoch=epoch))
                if epoch:
                    times.append(time.perf_counter() - start)
            rate = n / statistics.median(times)
            print(json.dumps({"benchmark": "data_pipeline", "machine": platform.processor() or platform.machine(),
                              "cpus": os.cpu_count(), "workers": workers, "image_size": args.size,
                              "images_per_sec": round(rate, 1), "images_per_sec_per_worker": round(rate / workers, 1)}))


if __name__ == "__main__":
    main()

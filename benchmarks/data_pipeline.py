"""Input-pipeline throughput: decode + augment images/s, ours for a sweep of worker counts against
tf.data with fused decode-and-crop, on the same files, in one run.

    .venv/bin/python benchmarks/data_pipeline.py [--images 512] [--size 224] [--workers 1 2] [--rounds 3]

Writes synthetic 500x375 JPEGs (quality 90, smooth random fields that compress like photos) into a
temporary image folder, then, for each round, times one training epoch of each pipeline in turn,
each in a process of its own (after one warm-up epoch there; TensorFlow's thread pools in the
process would slow the pipeline measured after them): ours (`mobilenets_core.data`, random resized crop + flip, uint8
batches of --batch) with N worker processes, and the anchor, tf.data doing what the flax ImageNet
example and big_vision do (`tf.image.sample_distorted_bounding_box` + `tf.image.decode_and_crop_jpeg`,
bilinear resize, flip, normalize, batch) with N threads (`private_threadpool_size` and
`num_parallel_calls` = N). Prints one JSON line per configuration with the median over rounds,
images/s per worker, and ours / tf.data at the same N. `--no-tf` skips the anchor (no TensorFlow).

`--tfds` also writes the same JPEGs as a prepared TFDS dataset and times ours reading it (blocks
of 256 examples, the next block read in the background while one is decoded), and
the raw block reads alone: whether reading ever limits decoding.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402
from mobilenets_core.data import build_dataset, preprocess, workers  # noqa: E402


def write_folder(root: str, images: int) -> list:
    rng = np.random.default_rng(0)
    paths = []
    for split, count in (("train", images), ("validation", 8)):
        for i in range(count):
            folder = os.path.join(root, split, f"class_{i % 4}")
            os.makedirs(folder, exist_ok=True)
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            path = os.path.join(folder, f"{i}.jpg")
            Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(path, quality=90)
            if split == "train":
                paths.append(path)
    return paths


def _our_epochs(dataset_fields: dict, size: int, batch: int, count: int):
    """A function running one more training epoch of our pipeline on config.dataset = dataset_fields."""
    config = base.get_config()
    config.dataset.update(dataset_fields)
    config.dataset.image_size, config.dataset.workers = size, count
    dataset = build_dataset(config, "train")
    epoch = [0]

    def one_epoch() -> int:
        epoch[0] += 1
        return sum(len(b["label"]) for b in dataset.train_batches(batch, epoch=epoch[0]))

    return one_epoch


def ours(root: str, size: int, batch: int, count: int):
    return _our_epochs({"name": "folder", "path": root}, size, batch, count)


def tf_anchor(paths: list, size: int, batch: int, threads: int):
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    mean = tf.constant(preprocess.NORMALIZE_MEAN)
    std = tf.constant(preprocess.NORMALIZE_STD)

    def decode_and_random_crop(path, seed):
        data = tf.io.read_file(path)
        shape = tf.io.extract_jpeg_shape(data)
        begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, tf.zeros([0, 0, 4]), seed=seed, min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
        offset_y, offset_x, _ = tf.unstack(begin)
        height, width, _ = tf.unstack(crop)
        image = tf.io.decode_and_crop_jpeg(data, tf.stack([offset_y, offset_x, height, width]), channels=3)
        image = tf.image.resize(image, [size, size], method="bilinear")
        image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
        return (image - mean) / std

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.deterministic = True
    seeds = tf.data.Dataset.from_tensor_slices(np.arange(2 * len(paths), dtype=np.int64).reshape(-1, 2))
    dataset = (tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(paths), seeds))
               .map(decode_and_random_crop, num_parallel_calls=threads)
               .batch(batch, drop_remainder=True).prefetch(2).with_options(options))

    def one_epoch() -> int:
        return sum(len(b) for b in dataset.as_numpy_iterator())

    return one_epoch


TFDS_NAME, TFDS_BLOCK = "mobilenets_bench_jpegs", 256


def tfds_builder(root: str):
    """The folder's train JPEGs (bytes as they are) as a TFDS dataset prepared under root/tfds."""
    import tensorflow_datasets as tfds

    class MobilenetsBenchJpegs(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        url_infos, _checksums_path = None, None  # no checksum files to look up

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=4)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples("train"), "validation": self._generate_examples("validation")}

        def _generate_examples(self, split):
            folder = os.path.join(root, split)
            for name in sorted(os.listdir(folder)):
                for file in sorted(os.listdir(os.path.join(folder, name))):
                    yield f"{name}/{file}", {"image": os.path.join(folder, name, file), "label": int(name[-1])}

    return MobilenetsBenchJpegs(data_dir=os.path.join(root, "tfds"))


def ours_tfds(root: str, size: int, batch: int, count: int):
    from mobilenets_core.data import tfds_source

    tfds_builder(root)  # registers the name
    tfds_source.TFDS_BLOCK_SIZE = TFDS_BLOCK
    return _our_epochs({"name": TFDS_NAME, "data_dir": os.path.join(root, "tfds")}, size, batch, count)


def tfds_reads(root: str):
    """Images/s of reading every block of the split, one after another, encoded (no decoding)."""
    from mobilenets_core.data import tfds_source

    tfds_builder(root)
    tfds_source.TFDS_BLOCK_SIZE = TFDS_BLOCK
    source = tfds_source.TfdsSource(TFDS_NAME, os.path.join(root, "tfds"), "train")

    def one_epoch() -> int:
        blocks = range(-(-source.num_examples // source.block_size))
        return sum(len(source._load_block(b)[1]) for b in blocks)

    return one_epoch


def measure(pipeline: str, root: str, size: int, batch: int, count: int) -> float:
    """Images/s of one training epoch of `pipeline` after a warm-up epoch, in this process."""
    if pipeline == "ours":
        one_epoch = ours(root, size, batch, count)
    elif pipeline == "ours-tfds":
        one_epoch = ours_tfds(root, size, batch, count)
    elif pipeline == "tfds-reads":
        one_epoch = tfds_reads(root)
    else:
        paths = sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(root, "train")) for f in files)
        one_epoch = tf_anchor(paths, size, batch, count)
    one_epoch()
    start = time.perf_counter()
    seen = one_epoch()
    return seen / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-tf", action="store_true", help="ours only (no TensorFlow import)")
    parser.add_argument("--tfds", action="store_true", help="also ours from a prepared TFDS copy, and its reads")
    parser.add_argument("--one", nargs=2, metavar=("PIPELINE", "ROOT"), help=argparse.SUPPRESS)  # a child's task
    args = parser.parse_args()
    if args.one:
        print(measure(args.one[0], args.one[1], args.size, args.batch, args.workers[0]))
        return
    pipelines = ["ours"] + ([] if args.no_tf else ["tf.data"])
    with tempfile.TemporaryDirectory() as root:
        write_folder(root, args.images)
        times = {(name, count): [] for count in args.workers for name in pipelines}
        if args.tfds:
            tfds_builder(root).download_and_prepare()
            times.update({("ours-tfds", count): [] for count in args.workers})
            times[("tfds-reads", 1)] = []
        for round_ in range(args.rounds):
            keys = list(times) if round_ % 2 == 0 else list(times)[::-1]  # alternate who goes first
            for name, count in keys:
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", name, root,
                                      "--size", str(args.size), "--batch", str(args.batch), "--workers", str(count)],
                                     capture_output=True, text=True, check=True)
                times[(name, count)].append(float(out.stdout.strip().splitlines()[-1]))
        rates = {key: statistics.median(values) for key, values in times.items()}
        cpu = platform.processor() or platform.machine()
        for (name, count), rate in rates.items():
            record = {"benchmark": "data_pipeline", "pipeline": name, "workers": count, "cpu": cpu,
                      "cpus": workers.usable_cores(), "image_size": args.size, "batch": args.batch,
                      "images": args.images, "rounds": args.rounds, "images_per_sec": round(rate, 1),
                      "images_per_sec_per_worker": round(rate / count, 1),
                      "rates": [round(r, 1) for r in times[(name, count)]]}
            if name == "ours" and ("tf.data", count) in rates:
                record["vs_tf_data"] = round(rate / rates[("tf.data", count)], 3)
            if count != args.workers[0] and (name, args.workers[0]) in rates:
                record[f"scaling_vs_{args.workers[0]}"] = round(rate / rates[(name, args.workers[0])], 3)
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()

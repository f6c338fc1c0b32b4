"""Batches for the engines: order, sharding over hosts, and parallel decode+augment.

The rules that make a run reproducible on any number of hosts and on either engine:
- an epoch's order is a permutation of the split that depends on (train.seed, epoch) only;
- an example's augmentation depends on (train.seed, epoch, example index) only;
- the global batch of step s is order[s * B:(s + 1) * B]; a host takes its contiguous rows.
So resuming at step s needs no state but (epoch, s), and skipped steps are never decoded.

A record that cannot be decoded (preprocess.BadImage) becomes a gray placeholder image with its
label, counted in `decode_report` and listed in the log, so one bad file neither stops a week-long
run nor shifts the batches of every later step. Many bad files are not an accident: when more than
MAX_BAD_FRACTION of the images decoded in a pass (and more than MAX_BAD_IMAGES) fail, the run stops.
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
import os

import numpy as np

from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import preprocess
from mobilenets_core.data.sources import SPLITS, DigitsSource, FolderSource, Source

# Domain tags keep the order stream and the augmentation streams independent.
_ORDER_STREAM, _AUGMENT_STREAM = 0x0D3E, 0xA06E
PREFETCH_BATCHES = 2  # batches being decoded ahead of the one handed out
MAX_BAD_FRACTION, MAX_BAD_IMAGES = 0.1, 10


@functools.lru_cache(maxsize=1)
def _decode_pool() -> concurrent.futures.ThreadPoolExecutor:
    """One pool per process; PIL releases the GIL while decoding and resampling."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = int(os.environ.get("MOBILENETS_DATA_WORKERS", 0)) or min(32, usable)
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="mobilenets-data")


def _seed_words(seed: int) -> list:
    seed = int(seed) % (1 << 64)  # SeedSequence wants non-negative words
    return [seed & 0xFFFFFFFF, seed >> 32]


def epoch_order(num_examples: int, seed: int, epoch: int, block_size: int | None = None) -> np.ndarray:
    """The example indices of one epoch, in visiting order.

    With blocks (streaming sources) the contiguous blocks of `block_size` indices are visited in a
    permuted order and permuted inside; without, it is one uniform permutation."""
    rng = np.random.default_rng([_ORDER_STREAM, *_seed_words(seed), int(epoch)])
    if not block_size or block_size >= num_examples:
        return rng.permutation(num_examples)
    starts = np.arange(0, num_examples, block_size)
    parts = []
    for start in rng.permutation(starts):
        stop = min(num_examples, start + block_size)
        parts.append(start + rng.permutation(stop - start))
    return np.concatenate(parts)


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([_AUGMENT_STREAM, *_seed_words(seed), int(epoch), int(index)])


class Dataset:
    """One split of a source, as NumPy batches for one host."""

    def __init__(self, source: Source, *, image_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, max_pixels: int = preprocess.MAX_IMAGE_PIXELS):
        if not isinstance(process_count, int) or process_count < 1:
            raise ValueError(f"process_count={process_count!r} must be a positive integer")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index!r} must be in [0, {process_count})")
        if not isinstance(image_size, int) or image_size < 8:
            raise ConfigError(f"dataset.image_size={image_size!r} must be an integer >= 8")
        self._source = source
        self.name, self.split = source.name, source.split
        self.num_examples = source.num_examples
        self.num_classes, self.class_names = source.num_classes, list(source.class_names)
        self.image_size = image_size
        self.max_pixels = int(max_pixels)
        self.seed = seed
        self.process_index, self.process_count = process_index, process_count
        self.decode_report = preprocess.DecodeReport()
        self.notes = list(getattr(source, "notes", []))  # what the source skipped while listing files

    def take_report(self) -> str | None:
        """One line of what decoding repaired since the last call (None if nothing), then reset."""
        line = self.decode_report.summary()
        self.decode_report.reset()
        return f"{self.name} {self.split}: {line}" if line else None

    def __repr__(self):
        return (f"Dataset({self.name!r}, split={self.split!r}, num_examples={self.num_examples}, "
                f"num_classes={self.num_classes}, image_size={self.image_size}, "
                f"host {self.process_index}/{self.process_count})")

    @property
    def small_images(self) -> bool:
        return self._source.small_images

    @property
    def flip(self) -> bool:
        return self._source.flip

    # ------------------------------------------------------------------------- sizes

    def _local_batch(self, global_batch: int, drop_remainder: bool) -> int:
        if not isinstance(global_batch, (int, np.integer)) or global_batch < 1:
            raise ValueError(f"global batch size {global_batch!r} must be a positive integer")
        if global_batch % self.process_count:
            raise ConfigError(f"global batch size {global_batch} is not divisible by process_count="
                              f"{self.process_count}; use a multiple of {self.process_count}")
        if drop_remainder and global_batch > self.num_examples:
            raise ConfigError(f"global batch size {global_batch} is larger than the {self.split} split of "
                              f"{self.name} ({self.num_examples} examples): an epoch would have no step")
        return global_batch // self.process_count

    def steps_per_epoch(self, global_batch: int) -> int:
        """Train: full batches only. Validation: every example, the last batch padded."""
        if self.split == "train":
            self._local_batch(global_batch, drop_remainder=True)
            return self.num_examples // global_batch
        self._local_batch(global_batch, drop_remainder=False)
        return -(-self.num_examples // global_batch)

    # ------------------------------------------------------------------------- iteration

    def train_batches(self, global_batch: int, *, epoch: int, start_step: int = 0):
        """Steps start_step.. of epoch `epoch` (full batches; the remainder is dropped), this host's rows.

        Yields {"image": float32 (b, H, W, 3), "label": int32 (b,)} with b = global_batch // process_count."""
        self._local_batch(global_batch, drop_remainder=True)
        steps = self.num_examples // global_batch
        if not isinstance(start_step, (int, np.integer)) or not 0 <= start_step <= steps:
            raise ValueError(f"start_step={start_step!r} must be in [0, {steps}] (steps per epoch at "
                             f"global batch {global_batch})")
        order = epoch_order(self.num_examples, self.seed, epoch, self._source.block_size)
        return self._batches(order, global_batch, range(int(start_step), steps), epoch=int(epoch), train=True)

    def eval_batches(self, global_batch: int):
        """Every example once, in index order; the last batch padded. Adds a bool "mask" (False = padding)."""
        self._local_batch(global_batch, drop_remainder=False)
        order = np.arange(self.num_examples)
        steps = -(-self.num_examples // global_batch)
        return self._batches(order, global_batch, range(steps), epoch=0, train=False)

    def _batches(self, order, global_batch, steps, *, epoch, train):
        local = global_batch // self.process_count
        first_row = self.process_index * local
        self._source.begin_pass(order)
        pool = _decode_pool()
        preprocess_one = functools.partial(preprocess.preprocess, size=self.image_size, train=train,
                                           small=self._source.small_images, flip=self._source.flip,
                                           max_pixels=self.max_pixels)
        report = self.decode_report
        placeholder = np.broadcast_to(np.round(preprocess.NORMALIZE_MEAN).astype(np.uint8),
                                      (self.image_size, self.image_size, 3))
        seen, bad_here = [0], []  # images decoded in this pass, and the bad ones among them

        def work(record, index):
            rng = example_rng(self.seed, epoch, index) if train else None
            try:
                return preprocess_one(record, rng=rng, report=report)
            except preprocess.BadImage as e:
                add = report.add_too_large if isinstance(e, preprocess.TooLarge) else report.add_bad
                add(preprocess.describe_record(record), str(e))
                bad_here.append((preprocess.describe_record(record), str(e)))  # list.append is atomic
                return placeholder

        def check_bad(rows):
            seen[0] += rows
            bad = len(bad_here)
            if bad > MAX_BAD_IMAGES and bad > MAX_BAD_FRACTION * seen[0]:
                what, reason = bad_here[-1]
                raise ConfigError(f"{bad} of the last {seen[0]} images of {self.name} {self.split} could not be "
                                  f"decoded (latest: {what}: {reason}); fix or remove those files, or check "
                                  f"that dataset.path / dataset.name point at image data")

        def submit(step):
            positions = step * global_batch + first_row + np.arange(local)
            valid = positions < len(order)
            indices = order[positions[valid]]
            records, labels = self._source.read(indices)
            futures = [pool.submit(work, record, index) for record, index in zip(records, indices.tolist())]
            return futures, labels, valid

        def assemble(futures, labels, valid):
            images = np.zeros((local, self.image_size, self.image_size, 3), np.uint8)
            rows = np.flatnonzero(valid)
            for row, future in zip(rows, futures):  # each result lands in its own row
                images[row] = future.result()
            check_bad(len(rows))
            batch = {"image": preprocess.normalize(images), "label": np.zeros((local,), np.int32)}
            batch["label"][rows] = labels
            if not train:
                batch["image"][~valid] = 0.0
                batch["mask"] = valid
            return batch

        def generate():
            pending = collections.deque()
            upcoming = iter(steps)
            for step in upcoming:
                pending.append(submit(step))
                if len(pending) > PREFETCH_BATCHES:
                    break
            while pending:
                batch = assemble(*pending.popleft())
                step = next(upcoming, None)
                if step is not None:
                    pending.append(submit(step))
                yield batch

        return generate()


def build_dataset(config, split: str, *, process_index: int = 0, process_count: int = 1) -> Dataset:
    """The `split` ("train" | "validation") of config.dataset, batched for host `process_index`."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    data = config.dataset
    name = data.name
    if not name:
        raise ConfigError("dataset.name is empty; use 'digits', 'folder' or a TFDS name such as 'imagenet2012'")
    if name == "digits":
        source = DigitsSource(split)
    elif name == "folder":
        source = FolderSource(data.get("path"), split)
    else:
        from mobilenets_core.data.tfds_source import TfdsSource  # imports TensorFlow

        source = TfdsSource(name, data.get("data_dir"), split)
    return Dataset(source, image_size=data.image_size, seed=config.train.seed,
                   process_index=process_index, process_count=process_count,
                   max_pixels=data.get("max_image_pixels") or preprocess.MAX_IMAGE_PIXELS)

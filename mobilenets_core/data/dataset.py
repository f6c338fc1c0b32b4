"""Batches for the engines: order, sharding over hosts, and decode+augment in worker processes.

The rules that make a run reproducible on any number of hosts and on either engine:
- an epoch's order is a permutation of the split that depends on (train.seed, epoch) only;
- an example's augmentation depends on (train.seed, epoch, example index) only;
- the global batch of step s is order[s * B:(s + 1) * B]; a host takes its contiguous rows.
So resuming at step s needs no state but (epoch, s), and skipped steps are never decoded. Batches
are uint8 {"image": (b, H, W, 3), "label", ("mask")}: the engines normalize on the device
(`preprocess.normalize` is the reference), a quarter of the bytes to move as float32 would be.

Decoding runs in `workers.py`'s processes (dataset.workers, one per core by default), each writing
its rows into shared memory; where the records are small arrays already in memory (digits) the
work is less than shipping it and runs in the calling process. The bytes are the same either way.

A record that cannot be decoded (preprocess.BadImage) becomes a gray placeholder image with its
label, counted in `decode_report` and listed in the log, so one bad file neither stops a week-long
run nor shifts the batches of every later step. Many bad files are not an accident: when more than
MAX_BAD_FRACTION of the images decoded in a pass (and more than MAX_BAD_IMAGES) fail, the run stops.
"""
from __future__ import annotations

import collections
import contextlib

import numpy as np

from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import preprocess, workers
from mobilenets_core.data.preprocess import example_rng
from mobilenets_core.data.sources import SPLITS, DigitsSource, FolderSource, Source
from mobilenets_core.failures import RunError

_ORDER_STREAM = 0x0D3E  # domain tag: the order stream never meets the augmentation streams
PREFETCH_BATCHES = 2  # batches being decoded ahead of the one handed out (more with many workers)
MAX_BAD_FRACTION, MAX_BAD_IMAGES = 0.1, 10


def epoch_order(num_examples: int, seed: int, epoch: int, block_size: int | None = None) -> np.ndarray:
    """The example indices of one epoch, in visiting order.

    With blocks (streaming sources) the contiguous blocks of `block_size` indices are visited in a
    permuted order and permuted inside; without, it is one uniform permutation."""
    rng = np.random.default_rng([_ORDER_STREAM, *preprocess.seed_words(seed), int(epoch)])
    if not block_size or block_size >= num_examples:
        return rng.permutation(num_examples)
    starts = np.arange(0, num_examples, block_size)
    parts = []
    for start in rng.permutation(starts):
        stop = min(num_examples, start + block_size)
        parts.append(start + rng.permutation(stop - start))
    return np.concatenate(parts)


__all__ = ["Dataset", "build_dataset", "epoch_order", "example_rng"]


class Dataset:
    """One split of a source, as NumPy batches for one host."""

    def __init__(self, source: Source, *, image_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, max_pixels: int = preprocess.MAX_IMAGE_PIXELS,
                 workers: int | None = None):
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
        self.workers = workers  # decode processes (None: workers.worker_count's default)
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
        options = dict(size=self.image_size, train=train, small=self._source.small_images, flip=self._source.flip,
                       seed=self.seed, epoch=epoch, max_pixels=self.max_pixels)
        if self._source.in_memory:
            decode = _InProcess(options, self.decode_report, local)
        else:
            decode = _InWorkers(options, self.decode_report, local, workers.worker_count(self.workers))
        seen, bad = [0], [0]  # images decoded in this pass, and the bad ones among them

        def check_bad(rows, newly_bad):
            seen[0] += rows
            bad[0] += len(newly_bad)
            if newly_bad and bad[0] > MAX_BAD_IMAGES and bad[0] > MAX_BAD_FRACTION * seen[0]:
                what, reason = newly_bad[-1]
                raise ConfigError(f"{bad[0]} of the last {seen[0]} images of {self.name} {self.split} could not be "
                                  f"decoded (latest: {what}: {reason}); fix or remove those files, or check "
                                  f"that dataset.path / dataset.name point at image data")

        def submit(step):
            positions = step * global_batch + first_row + np.arange(local)
            valid = positions < len(order)
            indices = order[positions[valid]]
            records, labels = self._source.read(indices)
            return decode.submit(np.flatnonzero(valid), records, indices.tolist()), labels, valid

        def assemble(job, labels, valid):
            images, newly_bad = decode.collect(job)
            check_bad(int(valid.sum()), newly_bad)
            batch = {"image": images, "label": np.zeros((local,), np.int32)}
            batch["label"][valid] = labels
            if not train:
                batch["image"][~valid] = 0
                batch["mask"] = valid
            return batch

        def generate():
            pending = collections.deque()
            upcoming = iter(steps)
            try:
                for step in upcoming:
                    pending.append(submit(step))
                    if len(pending) > decode.ahead:
                        break
                while pending:
                    batch = assemble(*pending.popleft())
                    step = next(upcoming, None)
                    if step is not None:
                        pending.append(submit(step))
                    yield batch
            finally:  # also when the consumer stops early: nothing of this pass outlives it
                decode.close(job for job, _, _ in pending)

        return generate()


class _InProcess:
    """Decode in the calling process (records already in memory: shipping them costs more)."""

    ahead = 0

    def __init__(self, options: dict, report: preprocess.DecodeReport, rows: int):
        self.options, self.report, self.rows = options, report, rows

    def submit(self, rows, records, indices):
        return rows, records, indices

    def collect(self, job):
        rows, records, indices = job
        size = self.options["size"]
        images = np.zeros((self.rows, size, size, 3), np.uint8)
        before = len(self.report.bad) + len(self.report.too_large)
        for row, record, index in zip(rows, records, indices):
            images[row] = preprocess.decode_example(record, index, report=self.report, **self.options)
        newly_bad = (self.report.bad + self.report.too_large)[before:]
        return images, newly_bad

    def close(self, jobs):
        del jobs


class _InWorkers:
    """Decode in `workers.py`'s processes, a batch per slot of a shared-memory ring."""

    def __init__(self, options: dict, report: preprocess.DecodeReport, rows: int, count: int):
        self.options, self.report, self.rows = options, report, rows
        # enough batches in flight to give every worker two tasks
        self.ahead = max(PREFETCH_BATCHES, -(-2 * count * workers.CHUNK_ROWS // max(1, rows)))
        try:
            self.pool = workers.pool(count)
        except OSError as e:
            raise RunError(f"could not start {count} data worker processes ({e.strerror or e}); lower "
                           f"dataset.workers (or MOBILENETS_DATA_WORKERS)") from None
        self.ring = workers.take_ring(self.ahead + 2, rows, options["size"])
        self.free = collections.deque(range(self.ahead + 2))

    def submit(self, rows, records, indices):
        slot = self.free.popleft()
        chunk = workers.CHUNK_ROWS
        with self._reporting_deaths():
            tasks = [self.pool.submit("decode_rows", self.ring.path, self.ring.shape, slot,
                                      rows[start:start + chunk].tolist(), list(records[start:start + chunk]),
                                      indices[start:start + chunk], self.options)
                     for start in range(0, len(rows), chunk)]
        return slot, tasks

    def collect(self, job):
        slot, tasks = job
        newly_bad = []
        for task in tasks:
            with self._reporting_deaths():
                counts = self.pool.result(task)
            self.report.merge(counts)
            newly_bad += counts["bad"] + counts["too_large"]
        images = self.ring.array[slot].copy()
        self.free.append(slot)
        return images, newly_bad

    @contextlib.contextmanager
    def _reporting_deaths(self):
        try:
            yield
        except workers.WorkerDied as e:
            workers.forget_pool()  # the next pass starts a fresh pool
            raise RunError(f"{e}; it may have run out of memory: lower dataset.workers (or "
                           f"MOBILENETS_DATA_WORKERS), then run again to resume") from None

    def close(self, jobs):
        abandoned = [task for _, tasks in jobs for task in tasks]
        self.pool.abandon(abandoned)
        workers.hand_back_ring(self.ring, writes_in_flight=bool(abandoned))


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
                   max_pixels=data.get("max_image_pixels") or preprocess.MAX_IMAGE_PIXELS,
                   workers=data.get("workers"))

"""A prepared TFDS dataset as a block-streaming source (TensorFlow is imported here only, lazily).

TFRecord files cannot be read at random, so the split is cut into contiguous blocks of
`TFDS_BLOCK_SIZE` examples (in the files' own order, read sequentially: example index = position
in the split). An epoch visits the blocks in a permuted order and each block's examples in a
permuted order (dataset.epoch_order); TFDS writes examples pre-shuffled, so this is a good shuffle
at a memory cost of about two blocks of *encoded* images. Blocks are read with TFDS split slicing
(`train[a:b]`), which skips whole files, and the next block is read in the background while the
current one is decoded. Images stay encoded (`SkipDecoding`); decoding happens in preprocess.py.

Every host reads every block (raw bytes, cheap next to decoding) and decodes only its own rows:
that is what makes the global batch independent of the number of hosts.
"""
from __future__ import annotations

import concurrent.futures
import threading

import numpy as np

from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import preprocess
from mobilenets_core.data.sources import Source

TFDS_BLOCK_SIZE = 8192  # ~0.9 GB of encoded ImageNet JPEGs per block
READ_BATCH = 256  # records per tf.data -> NumPy conversion while a block is read
# Datasets whose classes change under a horizontal mirror (digits, characters).
NO_FLIP_DATASETS = frozenset({"mnist", "emnist", "kmnist", "binarized_mnist", "svhn_cropped", "omniglot"})


def _import_tfds():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:  # the engines own the accelerators; tf.data runs on the host CPU only
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialized by someone else
        pass
    return tf, tfds


class TfdsSource(Source):

    def __init__(self, name: str, data_dir: str | None, split: str):
        tf, tfds = _import_tfds()
        self._tf, self._tfds = tf, tfds
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ConfigError(f"dataset.name={name!r} is neither 'digits', 'folder' nor a registered TFDS "
                              f"dataset (see tfds.list_builders()): {str(e).splitlines()[0]}") from None
        features = builder.info.features
        if "image" not in features.keys() or "label" not in features.keys():
            raise ConfigError(f"TFDS dataset {name!r} has features {sorted(features.keys())}; "
                              "an image classification dataset with 'image' and 'label' is needed")
        self._builder = builder
        known_splits = set(builder.info.splits.keys())
        if split == "train":
            self.tfds_split = "train"
        else:  # datasets without a validation split (cifar10, mnist) validate on test
            self.tfds_split = "validation" if "validation" in known_splits else "test"
        if known_splits and self.tfds_split not in known_splits:
            raise ConfigError(f"TFDS dataset {name!r} has no {self.tfds_split!r} split; it has {sorted(known_splits)}")
        try:
            full = self._as_dataset(self.tfds_split)
        except AssertionError:  # TFDS's way of saying the files are not there
            raise ConfigError(f"TFDS dataset {name!r} is not prepared in data_dir={str(builder.data_dir_root)!r} "
                              f"(no files at {builder.data_dir}); download=False here, so prepare it first: "
                              f"`tfds build {name} --data_dir={data_dir or '~/tensorflow_datasets'}` "
                              "(imagenet2012 also needs the manual download in <data_dir>/downloads/manual)") from None
        num_examples = int(full.cardinality())
        if num_examples < 0:  # unknown cardinality: trust the metadata
            num_examples = builder.info.splits[self.tfds_split].num_examples
        image_shape = features["image"].shape
        height, width = image_shape[0], image_shape[1]
        small = height is not None and width is not None and preprocess.is_small_image(height, width)
        super().__init__(name, split, num_examples, list(features["label"].names),
                         small_images=small, flip=name.split("/")[0] not in NO_FLIP_DATASETS)
        self.block_size = min(TFDS_BLOCK_SIZE, num_examples)
        self._blocks = {}  # block id -> Future of (records, labels)
        self._sequence, self._rank = [], {}
        self._lock = threading.Lock()
        self._loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"tfds-{name}")

    def _as_dataset(self, split_spec: str):
        tf, tfds = self._tf, self._tfds
        ds = self._builder.as_dataset(
            split=split_spec, shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()},
            # one file at a time, in file order: an example's index is its position in the split
            read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False))
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.with_options(options)
        return ds.map(lambda ex: (ex["image"], ex["label"]), num_parallel_calls=tf.data.AUTOTUNE,
                      deterministic=True).prefetch(tf.data.AUTOTUNE)

    def _load_block(self, block: int):
        start = block * self.block_size
        stop = min(self.num_examples, start + self.block_size)
        spec = self.tfds_split if (start, stop) == (0, self.num_examples) else f"{self.tfds_split}[{start}:{stop}]"
        records, labels = [], []
        # in batches: one NumPy conversion per READ_BATCH records, not per record (the per-record
        # overhead of as_numpy_iterator made reading cost a third of a core at decode speed)
        for images, batch_labels in self._as_dataset(spec).batch(READ_BATCH).as_numpy_iterator():
            records.extend(list(images))  # bytes objects (or arrays, under tfds mock data)
            labels.extend(batch_labels.tolist())
        if len(records) != stop - start:
            raise RuntimeError(f"TFDS {self.name} {spec}: read {len(records)} examples, expected {stop - start}")
        return records, np.asarray(labels, dtype=np.int32)

    def _block(self, block: int) -> concurrent.futures.Future:
        with self._lock:
            if block not in self._blocks:
                self._blocks[block] = self._loader.submit(self._load_block, block)
            return self._blocks[block]

    def begin_pass(self, order):
        blocks = order // self.block_size
        _, first = np.unique(blocks, return_index=True)
        self._sequence = [int(b) for b in blocks[np.sort(first)]]
        self._rank = {b: i for i, b in enumerate(self._sequence)}

    def read(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        if not len(indices):
            return [], np.zeros((0,), np.int32)
        blocks = indices // self.block_size
        needed = sorted(set(blocks.tolist()))
        loaded = {b: self._block(b).result() for b in needed}
        ranks = [self._rank[b] for b in needed if b in self._rank]
        upcoming = self._sequence[max(ranks) + 1] if ranks and max(ranks) + 1 < len(self._sequence) else None
        if upcoming is not None:
            self._block(upcoming)  # read ahead while this block is decoded
        with self._lock:  # keep only what the next reads can still need
            for b in list(self._blocks):
                if b not in loaded and b != upcoming:
                    del self._blocks[b]
        offsets = indices - blocks * self.block_size
        records = [loaded[b][0][o] for b, o in zip(blocks.tolist(), offsets.tolist())]
        labels = np.asarray([loaded[b][1][o] for b, o in zip(blocks.tolist(), offsets.tolist())], dtype=np.int32)
        return records, labels

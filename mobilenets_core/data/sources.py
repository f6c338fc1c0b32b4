"""Where examples come from: a source maps an example index to (record, label).

A record is whatever `preprocess.open_image` decodes (uint8 array, encoded bytes, file path);
sources never decode or augment. Random-access sources (digits, folder) have
`block_size = None`; the streaming TFDS source reads contiguous blocks (see tfds_source.py).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import preprocess

SPLITS = ("train", "validation")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

DIGITS_VALIDATION_FRACTION = 0.2
DIGITS_SPLIT_SEED = 1797  # fixed: the validation images never depend on train.seed


@dataclasses.dataclass
class Source:
    name: str
    split: str
    num_examples: int
    class_names: list
    small_images: bool  # which preprocessing policy applies (preprocess.is_small_image)
    flip: bool  # whether a horizontal mirror is still an example of the same class
    block_size = None  # None: any index can be read at equal cost
    in_memory = False  # True: records are small arrays in memory, decoded in the calling process

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def begin_pass(self, order: np.ndarray) -> None:
        """Called with the index order of a pass before its first read (streaming sources plan I/O)."""

    def read(self, indices: np.ndarray) -> tuple:
        """(records, labels) for these example indices."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return images, digits.target.astype(np.int32)


def digits_split_indices(split: str) -> np.ndarray:
    """Sorted indices into load_digits() of a fixed, per-class stratified 80/20 split."""
    _, labels = _digits_arrays()
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)  # legacy generator: its stream is frozen across NumPy versions
    validation = []
    for cls in range(10):
        members = np.flatnonzero(labels == cls)
        take = int(round(len(members) * DIGITS_VALIDATION_FRACTION))
        validation.append(rng.permutation(members)[:take])
    validation = np.sort(np.concatenate(validation))
    if split == "validation":
        return validation
    return np.setdiff1d(np.arange(len(labels)), validation)


class DigitsSource(Source):
    """scikit-learn's 1797 8x8 handwritten digits, stored as uint8 grayscale."""

    in_memory = True

    def __init__(self, split: str):
        images, labels = _digits_arrays()
        keep = digits_split_indices(split)
        self._images, self._labels = images[keep], labels[keep]
        # digits are not mirror-symmetric: a flipped 2 is not a 2
        super().__init__("digits", split, len(keep), [str(i) for i in range(10)], small_images=True, flip=False)

    def read(self, indices):
        return [self._images[i] for i in indices], self._labels[indices]


# ----------------------------------------------------------------------------- image folder


def _list_classes(split_dir: str) -> list:
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())


def folder_class_names(root: str) -> list:
    """Class names of an image folder (its train/<class> directories); [] if there is no train/."""
    train_dir = os.path.join(root, "train")
    return _list_classes(train_dir) if os.path.isdir(train_dir) else []


def _class_files(class_dir: str) -> list:
    """Every file under a class folder, sub-folders included (as predict reads a directory), by
    relative path; symbolic links to directories are not followed, so a link loop cannot hang."""
    found = []
    for root, dirs, files in os.walk(class_dir):
        dirs.sort()
        found.extend(os.path.relpath(os.path.join(root, f), class_dir) for f in files
                     if os.path.isfile(os.path.join(root, f)))
    return sorted(found)


def _list_images(split_dir: str, class_names: list) -> tuple:
    """(paths, labels, {class: count of other files skipped}, [classes without images])."""
    paths, labels, skipped, empty = [], [], {}, []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        entries = _class_files(class_dir)
        files = [f for f in entries if f.lower().endswith(IMAGE_EXTENSIONS)]
        if len(files) < len(entries):
            skipped[name] = len(entries) - len(files)
        if not files:
            empty.append(name)
        paths.extend(os.path.join(class_dir, f) for f in files)
        labels.extend([label] * len(files))
    return paths, np.asarray(labels, dtype=np.int32), skipped, empty


def _typical_size(paths: list) -> tuple:
    """(width, height) of the median image, by its longer side, among the first 32 decodable ones:
    neither one bad file nor one odd size (a 1x1 icon among photos) decides the dataset's policy."""
    sizes = []
    for path in paths[:32]:
        try:
            sizes.append(preprocess.open_image(path).size)
        except (OSError, ValueError, SyntaxError, EOFError):
            continue
    if sizes:
        return sorted(sizes, key=max)[len(sizes) // 2]
    split_dir = os.path.dirname(os.path.dirname(paths[0]))
    raise ConfigError(f"none of the first {min(len(paths), 32)} images under {split_dir} can be decoded "
                      f"(first: {paths[0]}); is dataset.path a folder of images?")


class FolderSource(Source):
    """`path/{train,validation}/<class>/*.jpg|jpeg|png`; classes are the sorted folder names of train."""

    def __init__(self, path: str | None, split: str):
        if not path:
            raise ConfigError("dataset.name='folder' needs dataset.path: the directory holding "
                              "train/<class>/*.jpg and validation/<class>/*.jpg")
        if not os.path.isdir(path):
            raise ConfigError(f"dataset.path={path!r} does not exist or is not a directory")
        split_dirs = {s: os.path.join(path, s) for s in SPLITS}
        for s in ("train", split):
            if not os.path.isdir(split_dirs[s]):
                raise ConfigError(f"dataset.path={path!r} has no {s}/ directory; expected "
                                  f"{path}/train/<class>/ and {path}/validation/<class>/")
        class_names = _list_classes(split_dirs["train"])
        if not class_names:
            raise ConfigError(f"{split_dirs['train']} holds no class directories")
        if split != "train":
            found = _list_classes(split_dirs[split])
            if found != class_names:
                missing = sorted(set(class_names) - set(found))
                extra = sorted(set(found) - set(class_names))
                raise ConfigError(f"classes of {split_dirs[split]} differ from train/: "
                                  f"missing {missing}, not in train {extra}")
        self._paths, self._labels, skipped, empty = _list_images(split_dirs[split], class_names)
        if not self._paths:
            raise ConfigError(f"{split_dirs[split]} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
        if empty and split == "train":  # a class the network would be asked to predict but never see
            raise ConfigError(f"{split_dirs['train']}/{empty[0]}/ holds no {'/'.join(IMAGE_EXTENSIONS)} images"
                              + (f" (nor do {len(empty) - 1} other class folders: {empty[1:6]})" if len(empty) > 1
                                 else "") + "; add images or remove the folder")
        self.notes = []
        if empty:
            self.notes.append(f"{split_dirs[split]}: {len(empty)} class folder(s) without images: {empty[:10]}")
        if skipped:
            self.notes.append(f"{split_dirs[split]}: skipped {sum(skipped.values())} file(s) that are not "
                              f"{'/'.join(IMAGE_EXTENSIONS)} (in {sorted(skipped)[:10]})")
        # the policy follows the source's image size, judged on its typical training image
        train_paths = self._paths if split == "train" else _list_images(split_dirs["train"], class_names)[0]
        if not train_paths:
            raise ConfigError(f"{split_dirs['train']} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
        width, height = _typical_size(train_paths)
        super().__init__("folder", split, len(self._paths), class_names,
                         small_images=preprocess.is_small_image(height, width), flip=True)

    def read(self, indices):
        return [self._paths[i] for i in indices], self._labels[indices]

"""Input pipeline shared by both engines: a source -> NumPy batches, one preprocessing.

`build_dataset(config, split)` returns a `Dataset` whose `train_batches` / `eval_batches` yield
{"image": float32 NHWC normalized, "label": int32 (, "mask": bool)} for this host. Sources:
"digits" (embedded, scikit-learn), "folder" (train/<class>/, validation/<class>/) and any
prepared TFDS dataset. Framework-free: never imports an engine; TensorFlow only inside the
TFDS source.
"""
from mobilenets_core.data.dataset import Dataset, build_dataset, epoch_order, example_rng
from mobilenets_core.data.preprocess import NORMALIZE_MEAN, NORMALIZE_STD, normalize

__all__ = ["Dataset", "build_dataset", "epoch_order", "example_rng", "NORMALIZE_MEAN", "NORMALIZE_STD",
           "normalize"]

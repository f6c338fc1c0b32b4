"""Input pipeline: sources, determinism across hosts and resumption, eval coverage, preprocessing."""
import collections
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import base
from mobilenets_core import data
from mobilenets_core.data import dataset as dataset_lib
from mobilenets_core.data import preprocess, sources


def data_config(name="digits", image_size=16, seed=0, **fields):
    config = base.get_config()
    config.dataset.name, config.dataset.image_size, config.train.seed = name, image_size, seed
    for key, value in fields.items():
        config.dataset[key] = value
    return config


def all_train_batches(ds, global_batch, epoch, start_step=0):
    return list(ds.train_batches(global_batch, epoch=epoch, start_step=start_step))


# ----------------------------------------------------------------------------- digits


def test_digits_split_sizes_fixed_and_stratified():
    train = data.build_dataset(data_config(seed=0), "train")
    val = data.build_dataset(data_config(seed=123), "validation")
    assert train.num_examples + val.num_examples == 1797
    assert val.num_examples == 359
    assert train.class_names == [str(i) for i in range(10)] and train.num_classes == 10
    # validation images are the same whatever train.seed is
    a = np.concatenate([b["image"] for b in data.build_dataset(data_config(seed=1), "validation").eval_batches(128)])
    b = np.concatenate([b["image"] for b in val.eval_batches(128)])
    np.testing.assert_array_equal(a, b)
    assert not set(sources.digits_split_indices("train")) & set(sources.digits_split_indices("validation"))
    counts = np.bincount(np.concatenate([b["label"][b["mask"]] for b in val.eval_batches(100)]), minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # 20% of 174..183 per class


def test_digits_batch_shapes_dtypes_and_normalization():
    ds = data.build_dataset(data_config(image_size=24), "train")
    assert not ds.flip and ds.small_images
    batch = next(ds.train_batches(32, epoch=0))
    # uint8 pixels: the engines normalize on the device (a quarter of float32's bytes to move)
    assert batch["image"].shape == (32, 24, 24, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
    assert set(batch) == {"image", "label"}
    # the digits' brightness (~78 / 255 on average; the zero padding of the random crop darkens a
    # little), identical in the three channels
    raw_mean = sources._digits_arrays()[0].mean()
    pixel_mean = batch["image"].mean(axis=(0, 1, 2))
    assert 70 < raw_mean < 85
    np.testing.assert_allclose(pixel_mean, raw_mean, rtol=0.25)
    np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 1])  # grayscale: equal channels
    normalized = data.normalize(batch["image"])
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(normalized.mean(axis=(0, 1, 2)), (pixel_mean - data.NORMALIZE_MEAN) / data.NORMALIZE_STD,
                               atol=1e-4)
    assert ds.steps_per_epoch(32) == 1438 // 32
    assert data.build_dataset(data_config(), "validation").steps_per_epoch(100) == 4


def test_normalize_matches_imagenet_statistics():
    pixels = np.array([[0, 0, 0], [255, 255, 255], [124, 116, 104]], np.uint8)
    out = data.normalize(pixels)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], [-2.1179, -2.0357, -1.8044], atol=1e-4)
    np.testing.assert_allclose(out[1], [2.2489, 2.4286, 2.64], atol=1e-4)
    np.testing.assert_allclose(data.NORMALIZE_MEAN, [123.675, 116.28, 103.53], atol=1e-4)
    np.testing.assert_allclose(data.NORMALIZE_STD, [58.395, 57.12, 57.375], atol=1e-4)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_and_epoch_give_identical_batches_other_epoch_reorders():
    ds = data.build_dataset(data_config(), "train")
    again = data.build_dataset(data_config(), "train")
    first = all_train_batches(ds, 256, epoch=3)
    second = all_train_batches(again, 256, epoch=3)
    assert len(first) == 1438 // 256 == 5
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    other = dataset_lib.epoch_order(1438, 0, 4)
    order = dataset_lib.epoch_order(1438, 0, 3)
    assert sorted(order) == list(range(1438)) and (order != other).mean() > 0.9
    assert (dataset_lib.epoch_order(1438, 1, 3) != order).mean() > 0.9
    labels = np.concatenate([b["label"] for b in all_train_batches(ds, 256, epoch=4)])
    assert (labels != np.concatenate([b["label"] for b in first])).mean() > 0.5


def test_start_step_resumes_exactly():
    ds = data.build_dataset(data_config(seed=5), "train")
    full = all_train_batches(ds, 200, epoch=2)
    resumed = all_train_batches(ds, 200, epoch=2, start_step=4)
    assert len(full) == 7 and len(resumed) == 3
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert all_train_batches(ds, 200, epoch=2, start_step=7) == []


def test_start_step_does_not_decode_skipped_examples(monkeypatch):
    ds = data.build_dataset(data_config(), "train")
    decoded = []
    real = preprocess.preprocess
    monkeypatch.setattr(preprocess, "preprocess", lambda record, **kw: decoded.append(1) or real(record, **kw))
    list(ds.train_batches(100, epoch=0, start_step=13))
    assert len(decoded) == 100  # only step 13 of 14


def test_host_slices_concatenate_to_the_global_batch():
    config = data_config(seed=11)
    single = all_train_batches(data.build_dataset(config, "train"), 64, epoch=1, start_step=20)
    hosts = [all_train_batches(data.build_dataset(config, "train", process_index=i, process_count=2), 64,
                               epoch=1, start_step=20) for i in range(2)]
    assert len(single) == len(hosts[0]) == len(hosts[1]) == 2
    for step, whole in enumerate(single):
        assert hosts[0][step]["image"].shape == (32, 16, 16, 3)
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([hosts[0][step][key], hosts[1][step][key]]), whole[key])


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """40 train / 6 validation JPEG photos (96 x 72: the ImageNet-style policy, random resized crops)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("validation", 6)):
        for i in range(count):
            folder = root / split / f"c{i % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((96, 72), Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)
    return str(root)


def test_batches_are_the_same_bytes_for_1_2_and_4_workers_and_in_process(photo_folder):
    config = data_config("folder", image_size=32, seed=3, path=photo_folder)
    epochs = {}
    for count in (1, 2, 4):
        config.dataset.workers = count
        dataset = data.build_dataset(config, "train")
        assert not dataset.small_images and dataset.flip
        epochs[count] = all_train_batches(dataset, 8, epoch=2)
    assert len(epochs[1]) == 5 and epochs[1][0]["image"].shape == (8, 32, 32, 3)
    for count in (2, 4):
        for a, b in zip(epochs[1], epochs[count]):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
    # the workers compute what preprocess computes in this process, row by row
    dataset = data.build_dataset(config, "train")
    order = dataset_lib.epoch_order(dataset.num_examples, 3, 2)
    paths, _ = dataset._source.read(order[:8])
    report = preprocess.DecodeReport()
    expected = [preprocess.decode_example(p, i, size=32, train=True, small=False, flip=True, seed=3, epoch=2,
                                          report=report) for p, i in zip(paths, order[:8].tolist())]
    np.testing.assert_array_equal(np.stack(expected), epochs[1][0]["image"])


def test_worker_processes_keep_host_sharding_and_mid_epoch_resume(photo_folder):
    config = data_config("folder", image_size=32, seed=4, path=photo_folder, workers=2)
    whole = all_train_batches(data.build_dataset(config, "train"), 8, epoch=1)
    hosts = [all_train_batches(data.build_dataset(config, "train", process_index=i, process_count=2), 8, epoch=1)
             for i in range(2)]
    for step, batch in enumerate(whole):
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([hosts[0][step][key], hosts[1][step][key]]), batch[key])
    resumed = all_train_batches(data.build_dataset(config, "train"), 8, epoch=1, start_step=3)
    assert len(resumed) == 2
    for a, b in zip(whole[3:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    # a pass stopped early leaves nothing behind: the next one gives the same batches
    first = next(data.build_dataset(config, "train").train_batches(8, epoch=1))
    np.testing.assert_array_equal(first["image"], whole[0]["image"])


def test_a_finished_pass_lends_its_ring_to_the_next_one_a_stopped_one_unlinks_it(photo_folder, tmp_path):
    from mobilenets_core.data import workers

    config = data_config("folder", image_size=32, seed=4, path=photo_folder, workers=2)
    dataset = data.build_dataset(config, "train")
    workers.close_spare_rings()
    first = all_train_batches(dataset, 8, epoch=1)
    (spare,) = workers._SPARE_RINGS
    again = all_train_batches(dataset, 8, epoch=1)  # decoded into the same ring: the same bytes
    assert workers._SPARE_RINGS == [spare] and os.path.exists(spare.path)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
    batches = dataset.train_batches(8, epoch=1)
    next(batches)
    assert workers._SPARE_RINGS == []  # the pass holds it
    batches.close()  # stopped with tasks in flight: they may still write into the ring
    assert workers._SPARE_RINGS == [] and not os.path.exists(spare.path)
    # a ring file left by a process that was killed is removed by the next ring made there
    orphan = tmp_path / "mobilenets-batches-999999999-abc"
    orphan.write_bytes(b"x")
    alive = tmp_path / f"mobilenets-batches-{os.getpid()}-abc"
    alive.write_bytes(b"x")
    workers._remove_orphan_rings(str(tmp_path))
    assert not orphan.exists() and alive.exists()


def test_a_worker_that_dies_is_one_line_naming_it(photo_folder):
    from mobilenets_core.data import workers
    from mobilenets_core.failures import RunError

    config = data_config("folder", image_size=32, path=photo_folder, workers=2)
    dataset = data.build_dataset(config, "train")
    pool = workers.pool(2)
    victim = pool._workers[0].process
    victim.kill()
    victim.wait()
    with pytest.raises(RunError, match=rf"^a data worker process \(pid {victim.pid}\) ended unexpectedly \(killed by "
                                       r"SIGKILL\); it may have run out of memory: lower dataset.workers"):
        all_train_batches(dataset, 8, epoch=0)
    assert len(all_train_batches(dataset, 8, epoch=0)) == 5  # a fresh pool takes over


def test_batch_size_errors():
    ds = data.build_dataset(data_config(), "train", process_index=1, process_count=3)
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        ds.train_batches(64, epoch=0)
    with pytest.raises(ValueError, match="larger than the train split"):
        ds.train_batches(1440, epoch=0)
    with pytest.raises(ValueError, match="start_step"):
        ds.train_batches(96, epoch=0, start_step=99)
    with pytest.raises(ValueError, match="not divisible"):
        data.build_dataset(data_config(), "validation", process_count=2).eval_batches(101)
    with pytest.raises(ValueError, match="process_index"):
        data.build_dataset(data_config(), "train", process_index=2, process_count=2)
    with pytest.raises(ValueError, match="split='test'"):
        data.build_dataset(data_config(), "test")


# ----------------------------------------------------------------------------- eval


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once_with_padding(process_count):
    config = data_config()
    val = data.build_dataset(config, "validation")
    expected_labels = np.concatenate([b["label"] for b in val.eval_batches(val.num_examples)])
    host_batches = [list(data.build_dataset(config, "validation", process_index=i, process_count=process_count)
                         .eval_batches(64)) for i in range(process_count)]
    assert all(len(batches) == val.steps_per_epoch(64) == 6 for batches in host_batches)
    labels, images, masks = [], [], []
    for step in range(6):
        parts = [batches[step] for batches in host_batches]
        assert all(p["mask"].dtype == bool and p["image"].shape[0] == 64 // process_count for p in parts)
        mask = np.concatenate([p["mask"] for p in parts])
        masks.append(mask)
        labels.append(np.concatenate([p["label"] for p in parts])[mask])
        images.append(np.concatenate([p["image"] for p in parts])[mask])
    assert sum(m.sum() for m in masks) == 359 and (~masks[-1]).sum() == 6 * 64 - 359
    assert masks[-1][:359 - 5 * 64].all() and not masks[-1][359 - 5 * 64:].any()
    np.testing.assert_array_equal(np.concatenate(labels), expected_labels)  # same order, each once
    assert collections.Counter(np.concatenate(labels).tolist()) == collections.Counter(
        val._source.read(np.arange(359))[1].tolist())
    flat = np.concatenate(images).reshape(359, -1)
    assert len(np.unique(flat, axis=0)) > 340  # distinct images, not one repeated


# ----------------------------------------------------------------------------- preprocessing


def test_eval_center_crop_of_a_known_image():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, size=(256, 320, 3), dtype=np.uint8)  # shorter side is already 224 / 0.875
    out = preprocess.preprocess(source, size=224, train=False, small=False, flip=True)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, source[16:240, 48:272])
    # a larger image: the shorter side is resized to 256 first
    big = np.zeros((512, 640, 3), np.uint8)
    big[:, 320:] = 255  # right half white
    out = preprocess.preprocess(big, size=224, train=False, small=False, flip=False)
    assert out[:, :110].max() == 0 and out[:, 114:].min() == 255  # the edge stays at the crop's center


def test_random_resized_crop_box_and_output():
    rng = np.random.default_rng(1)
    areas, ratios = [], []
    for _ in range(300):
        left, top, w, h = preprocess.random_resized_crop_box(400, 300, rng)
        assert 0 <= left and left + w <= 400 and 0 <= top and top + h <= 300
        areas.append(w * h / 120000)
        ratios.append(w / h)
    assert 0.07 < min(areas) < 0.2 and max(areas) > 0.9
    assert min(ratios) > 0.7 and max(ratios) < 1.4
    # fallback for an extreme aspect: a centered crop with the widest allowed aspect
    assert preprocess.random_resized_crop_box(1000, 10, rng, attempts=0) == (493, 0, 13, 10)
    image = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    out = preprocess.preprocess(image, size=96, train=True, small=False, flip=True, rng=np.random.default_rng(3))
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8


def test_jpeg_train_crop_is_deterministic_per_example():
    rng = np.random.default_rng(4)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)).save(buffer, "JPEG")
    encoded = buffer.getvalue()
    outs = [preprocess.preprocess(encoded, size=64, train=True, small=False, flip=True,
                                  rng=dataset_lib.example_rng(0, 1, 17)) for _ in range(2)]
    np.testing.assert_array_equal(outs[0], outs[1])
    other = preprocess.preprocess(encoded, size=64, train=True, small=False, flip=True,
                                  rng=dataset_lib.example_rng(0, 2, 17))
    assert not np.array_equal(outs[0], other)


def test_plain_jpegs_decode_directly_to_the_pixels_pil_decodes(monkeypatch):
    rng = np.random.default_rng(5)
    small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    encoded = {}
    for name, options in (("baseline", {}), ("4:4:4", {"subsampling": 0}), ("progressive", {"progressive": True})):
        buffer = io.BytesIO()
        Image.fromarray(small).resize((517, 389), Image.BICUBIC).save(buffer, "JPEG", quality=90, **options)
        encoded[name] = buffer.getvalue()
    direct_calls = []
    decode_jpeg = preprocess.simplejpeg.decode_jpeg
    monkeypatch.setattr(preprocess.simplejpeg, "decode_jpeg", lambda *a, **k: direct_calls.append(1) or decode_jpeg(*a, **k))
    # every DCT scale PIL's draft would pick: 1, 1/2 and 1/4 (crops at least 2x and 4x the output)
    sizes = (224, 120, 60)
    direct = {(name, size, i): preprocess.preprocess(data, size=size, train=True, small=False, flip=True,
                                                    rng=dataset_lib.example_rng(1, 0, i))
              for name, data in encoded.items() for size in sizes for i in range(4)}
    assert len(direct_calls) == len(direct)
    image, jpeg = preprocess._decode(encoded["baseline"], None)
    assert jpeg == encoded["baseline"] and image.size == (517, 389)
    monkeypatch.setattr(preprocess.simplejpeg, "decode_jpeg", lambda *a, **k: (_ for _ in ()).throw(ValueError("x")))
    for (name, size, i), pixels in direct.items():  # the PIL path decodes the same bytes to the same pixels
        through_pil = preprocess.preprocess(encoded[name], size=size, train=True, small=False, flip=True,
                                            rng=dataset_lib.example_rng(1, 0, i))
        assert pixels.shape == (size, size, 3) and pixels.flags.c_contiguous
        np.testing.assert_array_equal(pixels, through_pil, err_msg=f"{name} at {size} px, example {i}")
    # not plain JPEGs: PIL decodes them (grayscale, PNG)
    gray, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(small[..., 0]).save(gray, "JPEG")
    Image.fromarray(small).save(png, "PNG")
    assert preprocess._decode(gray.getvalue(), None)[1] is None and preprocess._decode(png.getvalue(), None)[1] is None


def test_training_crop_resize_is_bilinear_without_antialiasing():
    flat = np.full((300, 400, 3), 77, np.uint8)
    out = preprocess.preprocess(flat, size=64, train=True, small=False, flip=True, rng=np.random.default_rng(0))
    assert (out == 77).all()
    # columns alternating 0 / 240, cropped and shrunk about 5x: antialiasing would give ~120
    # everywhere; bilinear at half-pixel centers (tf.data's, OpenCV's) gives this, column by column
    stripes = np.zeros((300, 400, 3), np.uint8)
    stripes[:, 1::2] = 240
    left, top, w, h = preprocess.random_resized_crop_box(400, 300, np.random.default_rng(2))
    out = preprocess.preprocess(stripes, size=32, train=True, small=False, flip=False, rng=np.random.default_rng(2))
    x = np.clip((np.arange(32) + 0.5) * w / 32 - 0.5, 0, w - 1)
    column = stripes[0, left:left + w, 0].astype(np.float64)
    below = np.floor(x).astype(int)
    expected = column[below] * (1 - (x - below)) + column[np.minimum(below + 1, w - 1)] * (x - below)
    assert w / 32 > 4 and np.ptp(expected) > 100
    np.testing.assert_allclose(out[h // 64, :, 0], expected, atol=1.01)
    assert (out == out[:1]).all()  # every row the same: stripes are vertical


def test_small_image_train_pads_crops_and_flips_only_when_allowed():
    image = np.zeros((8, 8), np.uint8)
    image[:, :2] = 255  # a bright left edge: a flip would move it to the right
    for i in range(50):
        out = preprocess.preprocess(image, size=16, train=True, small=True, flip=False,
                                    rng=dataset_lib.example_rng(0, 0, i))
        assert out.shape == (16, 16, 3)
        assert out[:, 8:].max() == 0  # never mirrored, shifted by at most 16 / 8 = 2
    flipped = sum(preprocess.preprocess(image, size=16, train=True, small=True, flip=True,
                                        rng=dataset_lib.example_rng(0, 0, i))[:, 8:].max() > 0 for i in range(50))
    assert 10 < flipped < 40
    shifted = preprocess.small_train(Image.fromarray(np.full((16, 16), 200, np.uint8)), 16,
                                     np.random.default_rng(0), flip=False)
    assert (shifted == 0).any() or (shifted == 200).all()  # zero padding enters from the border
    assert set(np.unique(shifted)) <= {0, 200}


# ----------------------------------------------------------------------------- folder


def _write_digit_folder(root, splits=("train", "validation"), classes=("0", "1", "2"), per_class=4, fmt="JPEG"):
    images, labels = sources._digits_arrays()
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            members = np.flatnonzero(labels == int(cls))[:per_class]
            for k, index in enumerate(members):
                suffix = "jpg" if fmt == "JPEG" else "png"
                Image.fromarray(images[index]).resize((32, 32)).convert("RGB").save(
                    root / split / cls / f"{k:03d}.{suffix}", fmt)
    return root


def test_folder_source_reads_real_jpegs(tmp_path):
    _write_digit_folder(tmp_path)
    (tmp_path / "train" / "2" / "notes.txt").write_text("not an image")
    config = data_config("folder", image_size=32, path=str(tmp_path))
    train, val = data.build_dataset(config, "train"), data.build_dataset(config, "validation")
    assert train.class_names == ["0", "1", "2"] and train.num_classes == 3
    assert train.num_examples == val.num_examples == 12
    assert train.small_images and train.flip  # 32 px sources; folders are natural images
    batch = next(train.train_batches(6, epoch=0))
    assert batch["image"].shape == (6, 32, 32, 3) and batch["image"].dtype == np.uint8
    batches = list(val.eval_batches(5))
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 4))
    # eval of a 32 px image at size 32 is the decoded JPEG itself
    decoded = np.asarray(Image.open(tmp_path / "validation" / "0" / "000.jpg").convert("RGB"))
    np.testing.assert_array_equal(batches[0]["image"][0], decoded)


def test_folder_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="nowhere"):
        data.build_dataset(data_config("folder", path=str(missing)), "train")
    with pytest.raises(ValueError, match="dataset.path"):
        data.build_dataset(data_config("folder"), "train")
    _write_digit_folder(tmp_path, splits=("train",), classes=("0", "1", "2"), per_class=1, fmt="PNG")
    _write_digit_folder(tmp_path, splits=("validation",), classes=("0", "1", "3"), per_class=1, fmt="PNG")
    config = data_config("folder", path=str(tmp_path))
    assert data.build_dataset(config, "train").num_examples == 3
    with pytest.raises(ValueError, match=r"missing \['2'\], not in train \['3'\]"):
        data.build_dataset(config, "validation")


# ----------------------------------------------------------------------------- TFDS


def test_core_data_imports_no_framework():
    code = ("import sys; import mobilenets_core.data as d; from configs import base; c = base.get_config(); "
            "c.dataset.name = 'digits'; c.dataset.image_size = 8; next(d.build_dataset(c, 'train').train_batches(8, epoch=0)); "
            "print(sorted(m for m in ('tensorflow', 'jax', 'mindspore', 'tensorflow_datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def tfds():
    return pytest.importorskip("tensorflow_datasets")


def test_tfds_cifar10_under_mock_data(tfds):
    config = data_config("cifar10", image_size=32, seed=3)
    with tfds.testing.mock_data(num_examples=40):
        train = data.build_dataset(config, "train")
        val = data.build_dataset(config, "validation")
        hosts = [data.build_dataset(config, "train", process_index=i, process_count=2) for i in range(2)]
        assert train.num_examples == val.num_examples == 40
        assert val._source.tfds_split == "test"  # cifar10 has no validation split
        assert train.num_classes == len(train.class_names) == 10  # names need label files the mock lacks
        assert train.small_images and train.flip
        full = all_train_batches(train, 16, epoch=1)
        assert len(full) == 2 and full[0]["image"].shape == (16, 32, 32, 3)
        resumed = all_train_batches(train, 16, epoch=1, start_step=1)
        np.testing.assert_array_equal(resumed[0]["image"], full[1]["image"])
        halves = [all_train_batches(h, 16, epoch=1) for h in hosts]
        np.testing.assert_array_equal(np.concatenate([halves[0][1]["image"], halves[1][1]["image"]]), full[1]["image"])
        again = all_train_batches(data.build_dataset(config, "train"), 16, epoch=1)
        np.testing.assert_array_equal(again[0]["image"], full[0]["image"])
        batches = list(val.eval_batches(16))
        assert [int(b["mask"].sum()) for b in batches] == [16, 16, 8]
        labels = np.concatenate([b["label"][b["mask"]] for b in batches])
        assert collections.Counter(labels.tolist()) == collections.Counter(val._source.read(np.arange(40))[1].tolist())


def test_tfds_imagenet_style_under_mock_data(tfds):
    config = data_config("imagenet2012", image_size=48)
    with tfds.testing.mock_data(num_examples=8):
        train = data.build_dataset(config, "train")
        assert train.num_classes == 1000 and train.class_names[0] == "n01440764"
        assert not train.small_images and train.flip
        batch = next(train.train_batches(8, epoch=0))
        assert batch["image"].shape == (8, 48, 48, 3) and batch["label"].max() < 1000
        val = next(data.build_dataset(config, "validation").eval_batches(8))
        assert val["mask"].all() and val["image"].shape == (8, 48, 48, 3)


def test_tfds_unknown_and_unprepared_errors(tfds, tmp_path):
    with pytest.raises(ValueError, match="not_a_dataset_xyz.*registered TFDS"):
        data.build_dataset(data_config("not_a_dataset_xyz"), "train")
    with pytest.raises(ValueError, match="not prepared.*tfds build cifar10"):
        data.build_dataset(data_config("cifar10", data_dir=str(tmp_path)), "train")


@pytest.fixture(scope="module")
def tiny_tfds_dir(tfds, tmp_path_factory):
    """A real prepared TFDS dataset (40 + 40 examples) whose image encodes the example's identity."""

    class MobilenetsTinyIds(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        # no checksum files: skips TFDS's source lookup (needs importlib_resources, not a dependency)
        url_infos, _checksums_path = None, None

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(num_classes=10)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0), "test": self._generate_examples(100)}

        def _generate_examples(self, offset):
            for i in range(40):
                yield i, {"image": np.full((8, 8, 1), offset + i, np.uint8), "label": i % 10}

    data_dir = tmp_path_factory.mktemp("tfds")
    MobilenetsTinyIds(data_dir=str(data_dir)).download_and_prepare()
    return str(data_dir)


def _identity(batch):
    """Recover the example id from the constant image (size 8, no resize: exact pixels)."""
    return batch["image"][..., 0].max(axis=(1, 2)).astype(int)


def test_tfds_prepared_dataset_in_blocks(tiny_tfds_dir, monkeypatch):
    from mobilenets_core.data import tfds_source

    monkeypatch.setattr(tfds_source, "TFDS_BLOCK_SIZE", 7)  # 6 blocks: slicing + read-ahead + eviction
    config = data_config("mobilenets_tiny_ids", image_size=8, seed=9, data_dir=tiny_tfds_dir)
    train = data.build_dataset(config, "train")
    assert train.num_examples == 40 and train._source.block_size == 7 and train.small_images
    full = all_train_batches(train, 8, epoch=0)
    ids = np.concatenate([_identity(b) for b in full])
    assert sorted(ids) == list(range(40))  # a permutation of the split
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in full]), ids % 10)  # records match labels
    np.testing.assert_array_equal(np.concatenate([_identity(b) for b in all_train_batches(train, 8, epoch=0,
                                                                                           start_step=3)]), ids[24:])
    host = data.build_dataset(config, "train", process_index=1, process_count=2)
    np.testing.assert_array_equal(_identity(all_train_batches(host, 8, epoch=0)[2]), ids[20:24])
    val = data.build_dataset(config, "validation")
    batches = list(val.eval_batches(16))
    val_ids = np.concatenate([_identity(b)[b["mask"]] for b in batches])
    assert sorted(val_ids) == list(range(100, 140))
    np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]), val_ids % 10)


def test_images_in_sub_folders_of_a_class_are_read_and_counted(tmp_path):
    from PIL import Image

    from mobilenets_core.data.sources import FolderSource

    for split in ("train", "validation"):
        for relative in ("cat/1.png", "cat/indoor/2.png", "cat/indoor/deeper/3.png", "dog/4.png"):
            path = tmp_path / split / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 40)).save(path)
    (tmp_path / "train" / "dog" / "loop").symlink_to(tmp_path / "train" / "dog")  # never followed
    source = FolderSource(str(tmp_path), "train")
    paths, labels = source.read(np.arange(4))
    assert [os.path.relpath(p, tmp_path / "train") for p in paths] == [
        "cat/1.png", "cat/indoor/2.png", "cat/indoor/deeper/3.png", "dog/4.png"]
    assert labels.tolist() == [0, 0, 0, 1] and source.num_examples == 4


def test_one_tiny_image_does_not_decide_the_preprocessing_policy(tmp_path):
    from mobilenets_core.data.preprocess import SMALL_IMAGE_MAX_SIDE
    from mobilenets_core.data.sources import FolderSource

    side = SMALL_IMAGE_MAX_SIDE + 32
    for split in ("train", "validation"):
        for name, size in (("0.png", 1), ("1.png", side), ("2.png", side), ("3.png", side)):
            path = tmp_path / split / "cat" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (size, size)).save(path)
    assert FolderSource(str(tmp_path), "train").small_images is False  # the 1x1 icon sorts first

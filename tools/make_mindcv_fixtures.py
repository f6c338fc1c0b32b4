"""Make the mindcv parity fixtures in tests/fixtures/mindcv_<model>.npz.

Run with the mindcv peer environment (outside the repo), from the repo root:

    ../shared/tools/peer_env.sh mindcv /work/peers/mindcv
    /work/peers/mindcv/bin/python tools/make_mindcv_fixtures.py

For each model in tests/mindcv_reference.FIXTURE_MODELS it builds `mindcv.create_model(name,
num_classes=10)`, loads the deterministic weights of `random_state` (every parameter: it stops if
mindcv reports one not loaded), runs it in eval mode on `random_input` (NCHW) and stores mindcv's
parameter names and shapes in `parameters_and_names()` order, the logits, the trainable parameter
counts with 1000 and 10 classes, the multiply-adds at 224 px (forward hooks on Conv2d / Dense, the
convention of tools/reference_counts.py) and the versions. Fixtures are a few KB each.
"""
import contextlib
import io
import os
import sys

import mindspore as ms
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))
from reference_counts import _ms_hook_macs  # noqa: E402

from tests import mindcv_reference as ref  # noqa: E402


def prime_numpy_bridge():
    """MindSpore 2.10 under NumPy 2 fails its first PyNative op taking a tuple once (see
    mobilenets_ms.models.prime_numpy_bridge); every later op works."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            ms.ops.reshape(ms.Tensor(np.zeros((1, 1), np.float32)), (1,))
    except (ImportError, SystemError):
        pass


def main():
    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)  # forward hooks need PyNative
    prime_numpy_bridge()
    import mindcv

    out_dir = os.path.join(ROOT, "tests", "fixtures")
    count = lambda m: sum(int(np.prod(p.shape)) for p in m.trainable_params())  # noqa: E731
    for mindcv_name, (name, width, groups) in ref.FIXTURE_MODELS.items():
        model = mindcv.create_model(mindcv_name, num_classes=ref.NUM_CLASSES)
        model.set_train(False)
        keys = [(n, tuple(p.shape)) for n, p in model.parameters_and_names()]
        state = ref.random_state(keys)
        not_loaded, _ = ms.load_param_into_net(model, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in state.items()})
        if not_loaded:
            sys.exit(f"{mindcv_name}: {len(not_loaded)} parameters not loaded: {not_loaded[:5]}")
        logits = model(ms.Tensor(ref.random_input().transpose(0, 3, 1, 2).copy())).asnumpy()
        full = mindcv.create_model(mindcv_name, num_classes=1000)
        full.set_train(False)
        meta = {"mindcv_model": mindcv_name, "model": name, "width": width, "groups": groups,
                "num_classes": ref.NUM_CLASSES, "params": count(full), "params_num_classes_10": count(model),
                "macs": _ms_hook_macs(full, ms.Tensor(np.zeros((1, 3, 224, 224), np.float32))),
                "mindcv_version": mindcv.__version__, "mindspore_version": ms.__version__}
        path = os.path.join(out_dir, f"mindcv_{mindcv_name}.npz")
        ref.save_fixture(path, keys, logits, meta)
        print(f"{path}: {len(keys)} tensors, logits std {logits.std():.3f}, max |logit| {np.abs(logits).max():.3f}, "
              f"params {meta['params']}, macs {meta['macs']}", flush=True)


if __name__ == "__main__":
    main()
    os._exit(0)  # MindSpore's Cell.__del__ prints a traceback per cell at interpreter exit

"""Check in mindcv itself that what `--mode=convert --config.convert.format=mindcv` writes loads there.

Run from the repo root with the project's environment, naming the mindcv peer environment's python
(../shared/tools/peer_env.sh mindcv DIR builds it):

    .venv/bin/python tools/check_mindcv_load.py --mindcv-python /work/peers/mindcv/bin/python

For every network of tests/mindcv_reference.FIXTURE_MODELS this writes the fixture's weights as
mindcv's own checkpoint would hold them, converts that through the canonical hub and a MindSpore
checkpoint of ours back to mindcv's format with the converter of `--mode=convert`, then runs itself
under the mindcv python (`--load`) to build `mindcv.create_model(name, num_classes=10,
checkpoint_path=FILE)`, report the parameters `load_param_into_net` left out (and the file's tensors it
did not use), and compare mindcv's eval-mode logits with the fixture's. Exits 1 if any network has a
parameter left out or logits more than 1e-4 away.
"""
import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests import mindcv_reference as ref  # noqa: E402


def fixture(mindcv_name):
    return ref.load_fixture(os.path.join(ROOT, "tests", "fixtures", f"mindcv_{mindcv_name}.npz"))


def write(directory: str) -> dict:
    """mindcv name -> the .ckpt our converter wrote for it, by way of canonical and MindSpore files."""
    from configs import base
    from mobilenets_core.weights import convert, mindspore_ckpt

    files = {}
    for mindcv_name, (name, width, groups) in ref.FIXTURE_MODELS.items():
        keys, _, meta = fixture(mindcv_name)
        chain = [f"{mindcv_name}.source.ckpt", f"{mindcv_name}.safetensors", f"{mindcv_name}.ours.ckpt",
                 f"{mindcv_name}.ckpt"]
        mindspore_ckpt.write(os.path.join(directory, chain[0]), ref.random_state(keys))
        for (source, target), fmt in zip(zip(chain, chain[1:]), ("canonical", "mindspore", "mindcv")):
            config = base.get_config()  # the default convention (timm): the file's wins
            config.model.name, config.model.width, config.model.groups = name, width, groups
            config.model.num_classes = meta["num_classes"]
            config.init.weights, config.convert.output = os.path.join(directory, source), os.path.join(directory, target)
            config.convert.format = fmt
            with contextlib.redirect_stdout(io.StringIO()):
                convert.convert(config)
        files[mindcv_name] = os.path.join(directory, chain[-1])
    return files


def load(manifest: str) -> int:
    """In the mindcv environment: load every file in mindcv, compare logits; the number of failures."""
    import mindspore as ms

    ms.set_device("CPU")
    try:  # MindSpore 2.10 under NumPy 2 fails its first PyNative op taking a tuple once
        with contextlib.redirect_stderr(io.StringIO()):
            ms.ops.reshape(ms.Tensor(np.zeros((1, 1), np.float32)), (1,))
    except (ImportError, SystemError):
        pass
    import mindcv

    failures = 0
    images = ms.Tensor(ref.random_input().transpose(0, 3, 1, 2).copy())
    print(f"mindcv {mindcv.__version__}, MindSpore {ms.__version__}")
    for mindcv_name, path in json.load(open(manifest)).items():
        _, expected, meta = fixture(mindcv_name)
        model = mindcv.create_model(mindcv_name, num_classes=meta["num_classes"], checkpoint_path=path)
        model.set_train(False)
        diff = float(np.abs(model(images).asnumpy() - expected).max())
        fresh = mindcv.create_model(mindcv_name, num_classes=meta["num_classes"])
        not_loaded, unused = ms.load_param_into_net(fresh, ms.load_checkpoint(path))
        total = len(list(fresh.get_parameters()))
        ok = not not_loaded and not unused and diff < 1e-4
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} mindcv.create_model({mindcv_name!r}, checkpoint_path=...): "
              f"{total - len(not_loaded)}/{total} parameters loaded, {len(unused)} file tensors unused, "
              f"max |logit - fixture| {diff:.2e}", flush=True)
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mindcv-python", help="python of the mindcv peer environment")
    ap.add_argument("--load", help=argparse.SUPPRESS)  # manifest.json: the half run under --mindcv-python
    args = ap.parse_args()
    if args.load:
        failures = load(args.load)
        sys.stdout.flush()
        os._exit(1 if failures else 0)  # MindSpore's Cell.__del__ prints a traceback per cell at exit
    if not args.mindcv_python:
        ap.error("--mindcv-python=PATH is required (the mindcv peer environment's bin/python)")
    with tempfile.TemporaryDirectory() as directory:
        manifest = os.path.join(directory, "manifest.json")
        with open(manifest, "w") as f:
            json.dump(write(directory), f)
        result = subprocess.run([args.mindcv_python, os.path.abspath(__file__), "--load", manifest], cwd=ROOT,
                                env=dict(os.environ, GLOG_v="3"), stderr=subprocess.DEVNULL)
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()

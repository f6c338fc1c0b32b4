"""Make the timm parity fixtures in tests/fixtures/timm_<model>.npz.

Run with the PyTorch/timm peer environment (shared/tools/peer_env.sh torch DIR):

    DIR/bin/python tools/make_timm_fixtures.py [TIMM_NAME ...]   (names: only those)

For each model in tests/timm_reference.FIXTURE_MODELS it builds the timm model, fills it with
the deterministic weights of `random_state`, runs it in eval mode on `random_input` and stores
timm's key names and shapes, the logits and the timm version. Fixtures are a few KB each.
"""
import os
import sys

import numpy as np
import timm
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests import timm_reference as ref  # noqa: E402


def main():
    out_dir = os.path.join(ROOT, "tests", "fixtures")
    only = set(sys.argv[1:])  # timm names to (re)make; none: all
    for timm_name, (name, width, variant) in ref.FIXTURE_MODELS.items():
        if only and timm_name not in only:
            continue
        model = timm.create_model(timm_name, pretrained=False, num_classes=ref.NUM_CLASSES).eval()
        keys = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        state = ref.random_state(keys)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
        x = torch.from_numpy(ref.random_input().transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            logits = model(x).numpy()
        meta = {"timm_model": timm_name, "model": name, "width": width, "variant": variant, "num_classes": ref.NUM_CLASSES,
                "timm_version": timm.__version__, "torch_version": torch.__version__}
        path = os.path.join(out_dir, f"timm_{timm_name}.npz")
        ref.save_fixture(path, keys, logits, meta)
        print(f"{path}: logits std {logits.std():.3f}, max |logit| {np.abs(logits).max():.3f}")


if __name__ == "__main__":
    main()

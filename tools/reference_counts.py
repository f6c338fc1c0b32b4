"""Record reference parameter / multiply-add counts from timm and mindcv for the tests.

The numbers land in ``tests/fixtures/reference_counts.json``; the tests compare our JAX and
MindSpore models against them. This script is run with a *peer* Python (an environment built by
``tools/peer_env.sh``, outside the repo), never with the project's own environment.

Regenerate (from the repo root)::

    bash tools/peer_env.sh torch  /work/peer/torch      # peer_env.sh: tools/ here or /work/shared/tools/
    bash tools/peer_env.sh mindcv /work/peer/mindcv
    /work/peer/mindcv/bin/pip install 'numpy<2'          # MindSpore 2.10's compiled ops break on NumPy 2
    /work/peer/torch/bin/python  tools/reference_counts.py          --out tests/fixtures/reference_counts.json --keys-dir tests/fixtures
    /work/peer/mindcv/bin/python tools/reference_counts.py --mindcv --out tests/fixtures/reference_counts.json --keys-dir tests/fixtures

Each run rewrites only its own top-level section ("timm" or "mindcv") of the JSON and keeps the
other. ``--keys-dir`` also writes the state-dict / parameter listings (``timm_keys_<model>.txt``,
``mindcv_keys_<model>.txt``: one ``name shape`` per line, in definition order).

What is recorded, per model:

* ``params``: trainable parameter count with 1000 classes (timm: sum of ``p.numel()`` over
  ``model.parameters()``; mindcv: sum over ``model.trainable_params()``). BatchNorm running
  statistics are buffers / non-trainable and are not included.
* ``params_num_classes_10``: the same with ``num_classes=10``.
* ``num_param_tensors``: number of trainable tensors (a cheap structural check).
* ``macs``: multiply-adds of one forward pass, batch 1, 3x224x224 input.
  timm: ``torch.utils.flop_counter.FlopCounterMode`` total FLOPs / 2. Its registry counts only
  matrix products: convolutions (2 * output elements * Cin/groups * kh * kw) and mm/addmm/bmm
  (2 * m * n * k); bias adds, BatchNorm, activations, SE gating multiplies, residual adds and
  pooling are not counted. As a cross-check the script also sums the same quantity with forward
  hooks on Conv2d / Linear modules and asserts the two agree.
  mindcv: the same convention, summed with forward hooks on ``nn.Conv2d`` / ``nn.Dense`` (output
  elements * Cin/groups * kh * kw; in * out for Dense), no bias / BN / pooling / shuffle.

timm MobileNetV1 widths other than 1.0 are not registered; they are built exactly like the
registered ``mobilenetv1_100`` by calling timm's own generator with another channel multiplier:
``timm.models.efficientnet._gen_mobilenet_v1('mobilenetv1_100', channel_multiplier=W)`` (the
variant string only selects the pretrained config; no weights are loaded).
"""
import argparse
import json
import os
import sys

TIMM_MNV1_WIDTHS = {"mobilenetv1_025": 0.25, "mobilenetv1_050": 0.5, "mobilenetv1_075": 0.75, "mobilenetv1_100": 1.0}
TIMM_MNV3 = ["mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_small_100",
             "mobilenetv3_large_075", "mobilenetv3_large_100"]
TIMM_MNV2 = ["mobilenetv2_050", "mobilenetv2_075", "mobilenetv2_100", "mobilenetv2_140"]
TIMM_MNV4 = ["mobilenetv4_conv_small_035", "mobilenetv4_conv_small_050", "mobilenetv4_conv_small",
             "mobilenetv4_conv_medium", "mobilenetv4_conv_large", "mobilenetv4_hybrid_medium_075",
             "mobilenetv4_hybrid_medium", "mobilenetv4_hybrid_large_075", "mobilenetv4_hybrid_large"]
TIMM_KEY_DUMPS = ["mobilenetv1_100", "mobilenetv3_small_100", "mobilenetv3_large_100", "mobilenetv2_100",
                  "mobilenetv4_conv_small", "mobilenetv4_hybrid_medium"]
MINDCV_KEY_DUMPS = ["shufflenet_v1_g3_10"]
IMAGE = 224


# ----------------------------------------------------------------------------- timm
def _timm_build(name, num_classes):
    import timm
    from timm.models.efficientnet import _gen_mobilenet_v1

    if name in TIMM_MNV1_WIDTHS:
        width = TIMM_MNV1_WIDTHS[name]
        model = _gen_mobilenet_v1("mobilenetv1_100", channel_multiplier=width, num_classes=num_classes)
        how = f"timm.models.efficientnet._gen_mobilenet_v1('mobilenetv1_100', channel_multiplier={width})"
    else:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        how = f"timm.create_model('{name}')"
    return model.eval(), how


def _torch_hook_macs(model, x):
    import torch

    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, torch.nn.Conv2d):
            kh, kw = mod.kernel_size
            total[0] += out.numel() * (mod.in_channels // mod.groups) * kh * kw
        else:  # Linear
            total[0] += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0]


def _torch_attention_macs(model, x):
    """The two matrix products of each MobileNetV4 attention (softmax(q k^T) v), which no Conv2d / Linear
    hook sees: heads * query pixels * key pixels * (key_dim + value_dim)."""
    import torch

    total = [0]

    def hook(mod, inp, out):
        _, _, h, w = inp[0].shape
        kv = mod.key(inp[0]).shape
        total[0] += mod.num_heads * h * w * kv[2] * kv[3] * (mod.key_dim + mod.value_dim)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if type(m).__name__ == "MultiQueryAttention2d"]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0]


def run_timm(keys_dir):
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    available = set(timm.list_models("mobilenetv[234]_*"))
    models = {}
    for name in list(TIMM_MNV1_WIDTHS) + TIMM_MNV3 + TIMM_MNV2 + TIMM_MNV4:
        if name not in TIMM_MNV1_WIDTHS and name not in available:
            print(f"skip {name}: not registered in this timm", file=sys.stderr)
            continue
        model, how = _timm_build(name, 1000)
        x = torch.zeros(1, 3, IMAGE, IMAGE)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
        flops = counter.get_total_flops()
        ops = sorted(str(k) for k in counter.get_flop_counts().get("Global", {}))
        assert flops % 2 == 0
        macs = flops // 2
        hook_macs = _torch_hook_macs(model, x) + _torch_attention_macs(model, x)
        assert hook_macs == macs, (name, hook_macs, macs)
        model10, _ = _timm_build(name, 10)
        models[name] = {
            "built_with": how,
            "params": sum(p.numel() for p in model.parameters()),
            "params_num_classes_10": sum(p.numel() for p in model10.parameters()),
            "num_param_tensors": sum(1 for p in model.parameters() if p.requires_grad),
            "macs": macs,
            "counted_ops": ops,
        }
        print(name, models[name]["params"], macs, file=sys.stderr)
        if keys_dir and name in TIMM_KEY_DUMPS:
            with open(os.path.join(keys_dir, f"timm_keys_{name}.txt"), "w") as f:
                for k, v in model.state_dict().items():
                    f.write(f"{k} {tuple(v.shape)}\n")
    return {
        "versions": {"timm": timm.__version__, "torch": torch.__version__},
        "macs_convention": "FlopCounterMode total / 2 at 1x3x224x224: conv + matmul only "
                           "(no bias, BN, activation, SE gate multiply, residual add, pooling)",
        "models": models,
    }


# ----------------------------------------------------------------------------- mindcv
def _ms_hook_macs(model, x):
    from mindspore import nn

    total = [0]

    def hook(cell, args, out):
        if isinstance(cell, nn.Conv2d):
            kh, kw = cell.kernel_size
            total[0] += int(out.size) * (cell.in_channels // cell.group) * kh * kw
        else:  # Dense
            total[0] += int(out.size) * cell.in_channels

    handles = [c.register_forward_hook(hook) for _, c in model.cells_and_names()
               if isinstance(c, (nn.Conv2d, nn.Dense))]
    model(x)
    for h in handles:
        h.remove()
    return total[0]


def run_mindcv(keys_dir):
    import mindcv
    import mindspore as ms
    import numpy as np

    if hasattr(ms, "set_device"):
        ms.set_device("CPU")
    else:  # older MindSpore
        ms.set_context(device_target="CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)  # forward hooks need PyNative
    names = sorted(n for n in mindcv.list_models("shufflenet_v1*"))
    models = {}
    for name in names:
        model = mindcv.create_model(name, num_classes=1000)
        model.set_train(False)
        x = ms.Tensor(np.zeros((1, 3, IMAGE, IMAGE), np.float32))
        macs = _ms_hook_macs(model, x)
        model10 = mindcv.create_model(name, num_classes=10)
        count = lambda m: sum(int(np.prod(p.shape)) for p in m.trainable_params())
        models[name] = {
            "built_with": f"mindcv.create_model('{name}')",
            "params": count(model),
            "params_num_classes_10": count(model10),
            "num_param_tensors": len(model.trainable_params()),
            "macs": macs,
        }
        print(name, models[name]["params"], macs, file=sys.stderr)
        if keys_dir and name in MINDCV_KEY_DUMPS:
            trainable = {id(p) for p in model.trainable_params()}
            with open(os.path.join(keys_dir, f"mindcv_keys_{name}.txt"), "w") as f:
                for pname, p in model.parameters_and_names():
                    tag = "" if id(p) in trainable else " non-trainable"
                    f.write(f"{pname} {tuple(p.shape)}{tag}\n")
    return {
        "versions": {"mindcv": mindcv.__version__, "mindspore": ms.__version__},
        "macs_convention": "forward hooks on nn.Conv2d / nn.Dense at 1x3x224x224: "
                           "out elements * Cin/groups * kh * kw (+ in*out for Dense); "
                           "same convention as the timm FlopCounterMode numbers",
        "models": models,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mindcv", action="store_true",
                    help="record the mindcv section (needs the mindcv peer env); default: the timm section")
    ap.add_argument("--out", default="tests/fixtures/reference_counts.json",
                    help="JSON file to update (other sections are kept)")
    ap.add_argument("--keys-dir", default=None,
                    help="also write the *_keys_<model>.txt listings into this folder")
    args = ap.parse_args(argv)

    section, result = ("mindcv", run_mindcv(args.keys_dir)) if args.mindcv else ("timm", run_timm(args.keys_dir))
    data = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            data = json.load(f)
    data[section] = result
    data["_regenerate"] = ("see tools/reference_counts.py header: run it with the torch peer python, "
                           "then with the mindcv peer python and --mindcv")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()

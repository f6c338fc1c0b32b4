"""The architecture tables equal the reference implementations: parameters and multiply-adds.

Reference numbers come from timm and mindcv themselves (tests/fixtures/reference_counts.json,
made by tools/reference_counts.py with the peer environments).
"""
import json
import os

import pytest

from mobilenets_core import specs

REFERENCE = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "reference_counts.json")))
W = {"025": 0.25, "035": 0.35, "050": 0.5, "075": 0.75, "100": 1.0, "140": 1.4, "05": 0.5, "10": 1.0, "15": 1.5,
     "20": 2.0}


def reference_variants():
    """(reference name, our name, width, groups, variant, reference entry) for every reference model."""
    out = []
    for name, entry in REFERENCE["timm"]["models"].items():
        if name.startswith("mobilenetv4_"):  # mobilenetv4_<variant>[_<width>]: no suffix is width 1.0
            variant, _, width = name[len("mobilenetv4_"):].rpartition("_")
            variant, width = (variant, W[width]) if width in W else (f"{variant}_{width}", 1.0)
            out.append((name, "mobilenet_v4", width, None, variant, entry))
            continue
        family, width = name.rsplit("_", 1)
        ours = {"mobilenetv1": "mobilenet_v1", "mobilenetv2": "mobilenet_v2", "mobilenetv3_small": "mobilenet_v3_small",
                "mobilenetv3_large": "mobilenet_v3_large"}[family]
        out.append((name, ours, W[width], None, None, entry))
    for name, entry in REFERENCE["mindcv"]["models"].items():
        _, _, g, width = name.split("_")
        out.append((name, "shufflenet_v1", W[width], int(g[1:]), None, entry))
    return out


def test_every_supported_width_has_a_reference_except_shufflenet_groups_1_2_4():
    covered = {(ours, width, groups, variant) for _, ours, width, groups, variant, _ in reference_variants()}
    for name, widths in specs.SUPPORTED_WIDTHS.items():
        for width in widths:
            for groups in (specs.SHUFFLENET_GROUPS if name == "shufflenet_v1" else (None,)):
                if groups in (1, 2, 4):
                    continue  # no reference implementation defines these (see test below)
                assert (name, width, groups, None) in covered, (name, width, groups)
    for variant, widths in specs.MOBILENET_V4_WIDTHS.items():
        for width in widths:
            assert ("mobilenet_v4", width, None, variant) in covered, (variant, width)


@pytest.mark.parametrize("ref_name,name,width,groups,variant,entry", reference_variants(), ids=lambda v: str(v)[:28])
def test_params_and_macs_equal_reference(ref_name, name, width, groups, variant, entry):
    arch = specs.build_architecture(name, width, groups, 1000, variant=variant)
    assert specs.count_params(arch) == entry["params"]
    assert specs.count_macs(arch, 224) == entry["macs"]
    small = specs.build_architecture(name, width, groups, 10, variant=variant)
    assert specs.count_params(small) == entry["params_num_classes_10"]
    assert sum(trainable for _, trainable in specs.canonical_shapes(arch).values()) == entry["num_param_tensors"]


def test_headline_numbers():
    counts = {n: specs.count_params(specs.build_architecture(n, 1.0, g)) for n, g in
              [("mobilenet_v1", None), ("mobilenet_v3_small", None), ("mobilenet_v3_large", None),
               ("shufflenet_v1", 3)]}
    assert counts == {"mobilenet_v1": 4_231_976, "mobilenet_v3_small": 2_542_856,
                      "mobilenet_v3_large": 5_483_032, "shufflenet_v1": 1_864_728}
    assert specs.count_params(specs.build_architecture("mobilenet_v2")) == 3_504_872
    v4 = {v: specs.count_params(specs.build_architecture("mobilenet_v4", variant=v)) for v in specs.MOBILENET_V4}
    assert v4 == {"conv_small": 3_774_024, "conv_medium": 9_715_512, "conv_large": 32_590_864,
                  "hybrid_medium": 11_074_648, "hybrid_large": 37_764_624}  # timm 1.0.31, issue 21
    # MobileNetV3-Small: every implementation counts ~56.5M, not the paper's 66M
    assert specs.count_macs(specs.build_architecture("mobilenet_v3_small")) == 56_510_400


@pytest.mark.parametrize("groups,paper_mflops", [(1, 143), (2, 140), (3, 137), (4, 133), (8, 137)])
def test_shufflenet_1x_complexity_matches_paper_table(groups, paper_mflops):
    """ShuffleNet paper Table 2 counts multiply-adds without the classifier."""
    arch = specs.build_architecture("shufflenet_v1", 1.0, groups)
    body = specs.count_macs(arch) - arch.head.in_ch * 1000
    assert abs(body / 1e6 - paper_mflops) / paper_mflops < 0.005


def test_shufflenet_stage_channels_are_the_papers_at_1x():
    for groups, stages in specs.SHUFFLENET_V1_CHANNELS_1X.items():
        assert specs.shufflenet_v1_channels(groups, 1.0)[1:] == stages


@pytest.mark.parametrize("v,expected", [(16 * 0.75, 16), (18, 24), (72, 72), (88.08, 88), (4, 8), (960 * 0.75, 720)])
def test_make_divisible(v, expected):
    assert specs.make_divisible(v) == expected


def test_same_padding():
    assert specs.same_padding(112, 3, 2) == (0, 1)
    assert specs.same_padding(7, 3, 2) == (1, 1)
    assert specs.same_padding(8, 3, 1) == (1, 1)


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="mobilenet_v5"), "model.name='mobilenet_v5' is not a known model; choose one of mobilenet_v1"),
    (dict(name="mobilenet_v2", width=0.35), "model.width=0.35 is not supported for mobilenet_v2; supported widths: 0.5, 0.75, 1.0, 1.4"),
    (dict(name="mobilenet_v4"), "model.variant=None is not a mobilenet_v4 variant; choose one of conv_small, conv_medium, conv_large, hybrid_medium, hybrid_large"),
    (dict(name="mobilenet_v4", variant="conv_tiny"), "model.variant='conv_tiny' is not a mobilenet_v4 variant; choose one of conv_small,"),
    (dict(name="mobilenet_v4", variant="conv_medium", width=0.5), "model.width=0.5 is not supported for mobilenet_v4 conv_medium; supported widths: 1.0"),
    (dict(name="mobilenet_v2", variant="conv_small"), "model.variant='conv_small' applies to mobilenet_v4 only"),
    (dict(name="mobilenet_v2", convention="mindcv"), "model.convention='mindcv' is not defined for mobilenet_v2; use model.convention='timm'"),
    (dict(name="mobilenet_v3_large", width=0.35), "model.width=0.35 is not supported for mobilenet_v3_large; supported widths: 0.75, 1.0"),
    (dict(name="shufflenet_v1", groups=5), "model.groups=5 is not supported for shufflenet_v1; supported groups: 1, 2, 3, 4, 8"),
    (dict(name="mobilenet_v1", groups=3), "model.groups=3 applies to shufflenet_v1 only"),
    (dict(name="mobilenet_v1", num_classes=0), "model.num_classes=0 must be a positive integer"),
])
def test_bad_model_fields_name_the_key_and_the_valid_values(kwargs, message):
    with pytest.raises(ValueError) as e:
        specs.build_architecture(**kwargs)
    assert message in str(e.value)

"""The architecture tables equal the reference implementations: parameters and multiply-adds.

Reference numbers come from timm and mindcv themselves (tests/fixtures/reference_counts.json,
made by tools/reference_counts.py with the peer environments).
"""
import json
import os

import pytest

from mobilenets_core import specs

REFERENCE = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "reference_counts.json")))
W = {"025": 0.25, "050": 0.5, "075": 0.75, "100": 1.0, "05": 0.5, "10": 1.0, "15": 1.5, "20": 2.0}


def reference_variants():
    """(reference name, our name, width, groups, reference entry) for every reference model."""
    out = []
    for name, entry in REFERENCE["timm"]["models"].items():
        family, width = name.rsplit("_", 1)
        ours = {"mobilenetv1": "mobilenet_v1", "mobilenetv3_small": "mobilenet_v3_small",
                "mobilenetv3_large": "mobilenet_v3_large"}[family]
        out.append((name, ours, W[width], None, entry))
    for name, entry in REFERENCE["mindcv"]["models"].items():
        _, _, g, width = name.split("_")
        out.append((name, "shufflenet_v1", W[width], int(g[1:]), entry))
    return out


def test_every_supported_width_has_a_reference_except_shufflenet_groups_1_2_4():
    covered = {(ours, width, groups) for _, ours, width, groups, _ in reference_variants()}
    for name, widths in specs.SUPPORTED_WIDTHS.items():
        for width in widths:
            for groups in (specs.SHUFFLENET_GROUPS if name == "shufflenet_v1" else (None,)):
                if groups in (1, 2, 4):
                    continue  # no reference implementation defines these (see test below)
                assert (name, width, groups) in covered, (name, width, groups)


@pytest.mark.parametrize("ref_name,name,width,groups,entry", reference_variants(), ids=lambda v: str(v)[:24])
def test_params_and_macs_equal_reference(ref_name, name, width, groups, entry):
    arch = specs.build_architecture(name, width, groups, 1000)
    assert specs.count_params(arch) == entry["params"]
    assert specs.count_macs(arch, 224) == entry["macs"]
    assert specs.count_params(specs.build_architecture(name, width, groups, 10)) == entry["params_num_classes_10"]


def test_headline_numbers():
    counts = {n: specs.count_params(specs.build_architecture(n, 1.0, g)) for n, g in
              [("mobilenet_v1", None), ("mobilenet_v3_small", None), ("mobilenet_v3_large", None),
               ("shufflenet_v1", 3)]}
    assert counts == {"mobilenet_v1": 4_231_976, "mobilenet_v3_small": 2_542_856,
                      "mobilenet_v3_large": 5_483_032, "shufflenet_v1": 1_864_728}
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
    (dict(name="mobilenet_v2"), "model.name='mobilenet_v2' is not a known model; choose one of mobilenet_v1"),
    (dict(name="mobilenet_v3_large", width=0.35), "model.width=0.35 is not supported for mobilenet_v3_large; supported widths: 0.75, 1.0"),
    (dict(name="shufflenet_v1", groups=5), "model.groups=5 is not supported for shufflenet_v1; supported groups: 1, 2, 3, 4, 8"),
    (dict(name="mobilenet_v1", groups=3), "model.groups=3 applies to shufflenet_v1 only"),
    (dict(name="mobilenet_v1", num_classes=0), "model.num_classes=0 must be a positive integer"),
])
def test_bad_model_fields_name_the_key_and_the_valid_values(kwargs, message):
    with pytest.raises(ValueError) as e:
        specs.build_architecture(**kwargs)
    assert message in str(e.value)

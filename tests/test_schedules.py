"""Every recipe's learning rate, per step, against values computed by hand."""
import importlib.util
import math
import os

import numpy as np
import pytest

from mobilenets_core import schedules
from mobilenets_core.config_check import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def cosine(peak, warmup, total, step, init=0.0, end=0.0):
    if step < warmup:
        return init + (peak - init) * step / warmup
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


# ImageNet: 1,281,167 training images
CASES = {
    # mnv3_small: batch 2048 -> 625 steps/epoch, 370 epochs, warmup 4, cosine to 0 from 0.05
    ("mnv3_small", None, 625): {0: 0.0, 1: 0.05 / 2500, 1250: 0.025, 2500: 0.05,
                                2500 + (231250 - 2500) // 2: 0.025, 231249: cosine(0.05, 2500, 231250, 231249)},
    # mnv3_large: batch 600 -> 2135 steps/epoch, 420 epochs, warmup 4, cosine from 1.08
    ("mnv3_large", None, 2135): {0: 0.0, 4270: 0.54, 8540: 1.08, 100000: cosine(1.08, 8540, 896700, 100000)},
    # mnv1 ImageNet: batch 1024 -> 1251 steps/epoch, 90 epochs, no warmup, linear 0.8 -> 0
    ("mnv1", None, 1251): {0: 0.8, 1: 0.8 * (1 - 1 / 112590), 56295: 0.4, 112589: 0.8 / 112590},
    # mnv1 CIFAR-10: batch 32 -> 1562 steps/epoch, 90 epochs, warmup 5 from 0.01 to 0.1, poly (power 2) to 1e-5
    ("mnv1", "cifar10", 1562): {0: 0.01, 3905: 0.055, 7810: 0.1,
                                7810 + 66385: 1e-5 + (0.1 - 1e-5) * 0.25, 140579: 1e-5 + (0.1 - 1e-5) / 132770 ** 2},
    # shufflenet_v1: batch 1024 -> 1251 steps/epoch, 250 epochs, warmup 4, cosine 0.5 -> 0
    ("shufflenet_v1", None, 1251): {0: 0.0, 2502: 0.25, 5004: 0.5, 5004 + 153873: 0.25, 312749: cosine(0.5, 5004, 312750, 312749)},
    # mnv4 conv_small: batch 4096 -> 312 steps/epoch, 9600 epochs, warm-up 1560 steps (the yaml's), cosine 0.002 -> 0
    ("mnv4", "conv_small", 312): {0: 0.0, 780: 0.001, 1560: 0.002, 1560 + (2995200 - 1560) // 2: 0.001,
                                  2995199: cosine(0.002, 1560, 2995200, 2995199)},
    # mnv4 hybrid_large: batch 16384 -> 78 steps/epoch, 500 epochs = the yaml's 39000 steps, warm-up 1560,
    # cosine 0.01 -> 1e-5 (alpha 0.001)
    ("mnv4", "hybrid_large", 78): {0: 0.0, 1560: 0.01, 1560 + 37440 // 2: 0.5 * (0.01 + 1e-5),
                                   38999: cosine(0.01, 1560, 39000, 38999, end=1e-5)},
}


@pytest.mark.parametrize("name,arg,steps_per_epoch", list(CASES), ids=lambda v: str(v))
def test_recipe_schedule_matches_hand_computed_values(name, arg, steps_per_epoch):
    config = recipe(name, arg)
    table = schedules.lr_table(config, steps_per_epoch)
    assert table.shape == (config.train.epochs * steps_per_epoch,)
    assert table.dtype == np.float32
    for step, expected in CASES[(name, arg, steps_per_epoch)].items():
        assert table[step] == pytest.approx(expected, rel=1e-5, abs=1e-9), step


def test_exponential_staircase_like_the_paper():
    """MobileNetV3 paper style: x0.01 every 3 epochs after warm-up (here 10 steps per epoch)."""
    table = schedules.lr_values("exponential", 0.1, 100, 0, 10, decay_epochs=3, decay_rate=0.01)
    assert table[0] == pytest.approx(0.1) and table[29] == pytest.approx(0.1)
    assert table[30] == pytest.approx(0.001) and table[60] == pytest.approx(1e-5)


def test_constant_with_warmup():
    table = schedules.lr_values("constant", 0.2, 20, 4, 10)
    np.testing.assert_allclose(table[:5], [0.0, 0.05, 0.1, 0.15, 0.2])
    assert (table[4:] == np.float32(0.2)).all()


def test_bad_schedule_settings_name_the_key():
    with pytest.raises(ConfigError, match="schedule.name='step' is not known; choose one of cosine"):
        schedules.lr_values("step", 0.1, 10, 0, 1)
    with pytest.raises(ConfigError, match="schedule.warmup_epochs gives 20 warm-up steps, more than the 10 steps"):
        schedules.lr_values("cosine", 0.1, 10, 20, 1)

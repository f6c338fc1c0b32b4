"""The one check that a set of tensors is the set a network needs, and the one BatchNorm name table.

Every reader and writer of weights (the canonical file, timm, MindSpore parameters, Flax
variables, training-state checkpoints) compares what it found with what it expected through
`compare`, so every refusal names its tensors the same way.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mobilenets_core import specs

# canonical BatchNorm leaf -> (MindSpore parameter, timm / PyTorch tensor); Flax uses the canonical leaves
BATCHNORM_NAMES = {"scale": ("gamma", "weight"), "bias": ("beta", "bias"),
                   "mean": ("moving_mean", "running_mean"), "var": ("moving_variance", "running_var")}
MINDSPORE_BATCHNORM = {leaf: names[0] for leaf, names in BATCHNORM_NAMES.items()}
TIMM_BATCHNORM = {leaf: names[1] for leaf, names in BATCHNORM_NAMES.items()}


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """What differs between the tensors found and those expected (names; "name: shape != expected shape")."""

    missing: list
    unexpected: list
    wrong: list

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.wrong)

    def lines(self, limit: int = 8) -> list:
        """One indented line per kind of difference, the first `limit` names of each."""
        out = []
        for title, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("shape mismatch", self.wrong)):
            if items:
                shown = ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")
                out.append(f"  {title}: {shown}")
        return out


def compare(found: dict, expected: dict) -> Mismatch:
    """`found`: name -> array (or anything with a shape); `expected`: name -> shape."""
    shape = {name: tuple(np.shape(value)) for name, value in found.items()}
    return Mismatch(missing=[n for n in expected if n not in shape],
                    unexpected=[n for n in shape if n not in expected],
                    wrong=[f"{n}: {shape[n]} != expected {tuple(expected[n])}"
                           for n in expected if n in shape and shape[n] != tuple(expected[n])])


def check(found: dict, expected: dict, title: str) -> None:
    """Raise ValueError: `title`, then the tensors missing from, extra in, or misshapen in `found`."""
    mismatch = compare(found, expected)
    if mismatch:
        raise ValueError("\n".join([title, *mismatch.lines()]))


def expected_shapes(arch: specs.Architecture) -> dict:
    """canonical name -> shape of every tensor of `arch`, in forward order."""
    return {name: shape for name, (shape, _) in specs.canonical_shapes(arch).items()}


def check_state(state: dict, arch: specs.Architecture, source: str = "weights") -> None:
    """Raise ValueError if `state` is not exactly the canonical tensors of `arch`."""
    check(state, expected_shapes(arch), f"{source} do not fit {arch.name} width={arch.width} groups={arch.groups} "
                                        f"num_classes={arch.head.num_classes}:")

"""MindSpore's CPU kernels (oneDNN) capped at AVX2 on CPUs with AVX-512.

MindSpore 2.10's oneDNN picks its AVX-512 (and AMX) kernels where the CPU has them, and on the
2-core Intel Xeon (AVX-512, AMX) this project meets they are several times slower than its AVX2
ones for these networks: a MobileNetV3-Small training step at batch 32, 224 px, 7.8 -> 38 img/s,
inference 19.6 -> 135 img/s (BENCHMARKS.md; capped at AVX512_CORE it stays at 7.9 img/s). oneDNN
reads `ONEDNN_MAX_CPU_ISA` once, when it first dispatches a kernel, so the cap is set in this
process's environment before MindSpore is imported (`mobilenets_ms/__init__.py`).

A user's own `ONEDNN_MAX_CPU_ISA` (or its older name `DNNL_MAX_CPU_ISA`) wins:
`ONEDNN_MAX_CPU_ISA=ALL` gives oneDNN's own choice back. CPUs without AVX-512 are left alone.
"""
from __future__ import annotations

import os

VARIABLE = "ONEDNN_MAX_CPU_ISA"
OLD_VARIABLE = "DNNL_MAX_CPU_ISA"  # oneDNN 1.x/2.x's name, still read by 3.x
CAP = "AVX2"
CPUINFO = "/proc/cpuinfo"


def cpu_flags(path: str = CPUINFO) -> set[str]:
    """The first CPU's feature flags from /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cap_for(environ, flags: set[str]) -> str | None:
    """The value to give `ONEDNN_MAX_CPU_ISA`, or None where nothing is to be set (no AVX-512,
    or the user already chose)."""
    if VARIABLE in environ or OLD_VARIABLE in environ:
        return None
    return CAP if "avx512f" in flags else None


def apply(environ=os.environ, cpuinfo: str = CPUINFO) -> str | None:
    """Set the cap in `environ` where it applies; returns the value set, or None."""
    value = cap_for(environ, cpu_flags(cpuinfo))
    if value is not None:
        environ[VARIABLE] = value
    return value


def current(environ=os.environ) -> str:
    """oneDNN's ISA limit in effect for this process, for the bench record ('default': none)."""
    return environ.get(VARIABLE) or environ.get(OLD_VARIABLE) or "default"

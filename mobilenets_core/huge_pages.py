"""Transparent huge pages for the JAX engine's buffers: the process restarts itself once with
glibc's `glibc.malloc.hugetlb=1` tunable.

XLA:CPU allocates its arrays and each step's temporaries with malloc; glibc serves allocations
above 32 MiB with fresh mmap()s and unmaps them on free, so every step takes a page fault (and
the kernel zeroes a page) for every 4 KiB it writes. With the tunable, glibc asks the kernel for
2 MiB transparent huge pages on those mappings (it matters where THP is `madvise`, the common
default; where it is `always` the kernel does so anyway). Measured on a 2-core AMD EPYC, 224 px,
batch 32: an elementwise `x * 2` over 128 MiB 3.2 -> 17 GB/s, a MobileNetV3-Small training
step 540 -> 360-405 ms, inference 110 -> 80-86 ms (BENCHMARKS.md). timm measured no change, and
MindSpore, which pools its own memory, slowed down (its process spent 16.6 s in the kernel instead
of 3.4 s in one MobileNetV3-Small bench), so only the JAX engine restarts.

glibc reads tunables when a process starts, hence the restart (`os.execv`, same PID, same
arguments, before any engine is imported). MOBILENETS_HUGE_PAGES=0 turns it off; it never
happens off glibc >= 2.35 (the tunable's first release), without THP, or when GLIBC_TUNABLES
already sets `glibc.malloc.hugetlb`.
"""
from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
VALUE = "1"
OPT_OUT = "MOBILENETS_HUGE_PAGES"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def _entries(tunables: str | None) -> list[str]:
    """GLIBC_TUNABLES' colon-separated `name=value` entries."""
    return [e for e in (tunables or "").split(":") if e]


def _value(tunables: str | None) -> str | None:
    """The huge-page tunable's value in `tunables`, None where unset."""
    return dict(e.split("=", 1) for e in _entries(tunables) if "=" in e).get(TUNABLE)


def tunables_with_huge_pages(current: str | None) -> str | None:
    """GLIBC_TUNABLES with the huge-page tunable added to `current` (colon-separated), or None
    where `current` already sets it (a user's own value wins)."""
    if _value(current) is not None:
        return None
    return ":".join(_entries(current) + [f"{TUNABLE}={VALUE}"])


def _glibc_supports_tunable() -> bool:
    libc, version = platform.libc_ver()
    if libc != "glibc":
        return False
    try:
        major, minor = (int(p) for p in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (2, 35)


def _thp_available(path: str = THP_ENABLED) -> bool:
    """True where the kernel offers THP to madvise()d mappings ('[always]' or '[madvise]')."""
    try:
        with open(path) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def applies(environ=os.environ) -> bool:
    """Whether this machine and environment call for the restart (glibc >= 2.35, THP, no opt-out)."""
    return (environ.get(OPT_OUT, "1") != "0" and sys.platform == "linux" and _glibc_supports_tunable()
            and _thp_available())


def restart_with_huge_pages(environ=os.environ) -> None:
    """Replace this process by itself with the tunable set, where it applies; else return."""
    tunables = tunables_with_huge_pages(environ.get("GLIBC_TUNABLES"))
    if tunables is None or not applies(environ):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], dict(environ, GLIBC_TUNABLES=tunables))


def active(environ=os.environ) -> bool:
    """Whether this process runs with huge pages asked of malloc (for the bench record)."""
    return (_value(environ.get("GLIBC_TUNABLES")) or "0") != "0"

"""mobilenets_core/huge_pages.py: the GLIBC_TUNABLES it writes and the restart main.py makes."""
import os
import subprocess
import sys

import pytest

from mobilenets_core import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("import os, sys; sys.path.insert(0, {root!r}); from mobilenets_core import huge_pages; "
         "huge_pages.restart_with_huge_pages(); print(os.environ.get('GLIBC_TUNABLES'), huge_pages.active())")


def test_tunable_is_added_after_the_users_own():
    assert huge_pages.tunables_with_huge_pages(None) == "glibc.malloc.hugetlb=1"
    assert huge_pages.tunables_with_huge_pages("") == "glibc.malloc.hugetlb=1"
    assert huge_pages.tunables_with_huge_pages("glibc.malloc.tcache_count=0") == \
        "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"


def test_a_users_own_hugetlb_setting_wins():
    assert huge_pages.tunables_with_huge_pages("glibc.malloc.hugetlb=0") is None
    assert huge_pages.tunables_with_huge_pages("glibc.malloc.check=0:glibc.malloc.hugetlb=2") is None
    assert huge_pages.active({"GLIBC_TUNABLES": "glibc.malloc.check=0:glibc.malloc.hugetlb=1"})
    assert not huge_pages.active({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert not huge_pages.active({})


def probe(**env) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", huge_pages.OPT_OUT)}
    out = subprocess.run([sys.executable, "-c", PROBE.format(root=ROOT)], env=dict(base, **env),
                         capture_output=True, text=True, check=True).stdout
    return out.splitlines()


@pytest.mark.skipif(not huge_pages.applies({}), reason="needs glibc >= 2.35 and transparent huge pages")
def test_restart_sets_the_tunable_once():
    assert probe() == ["glibc.malloc.hugetlb=1 True"]  # one line: the first process never reached print
    assert probe(GLIBC_TUNABLES="glibc.malloc.tcache_count=0") == [
        "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1 True"]


def test_opt_out_and_a_users_setting_leave_the_process_alone():
    assert probe(MOBILENETS_HUGE_PAGES="0") == ["None False"]
    assert probe(GLIBC_TUNABLES="glibc.malloc.hugetlb=0") == ["glibc.malloc.hugetlb=0 False"]

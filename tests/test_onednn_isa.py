"""mobilenets_ms/onednn_isa.py: oneDNN capped at AVX2 where the CPU has AVX-512, unless the user chose."""
import os
import subprocess
import sys

from mobilenets_ms import onednn_isa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX512 = {"fpu", "sse2", "avx2", "fma", "avx512f", "avx512bw", "amx_tile"}
AVX2_ONLY = {"fpu", "sse2", "avx2", "fma"}


def test_cap_only_where_the_cpu_has_avx512():
    assert onednn_isa.cap_for({}, AVX512) == "AVX2"
    assert onednn_isa.cap_for({}, AVX2_ONLY) is None
    assert onednn_isa.cap_for({}, set()) is None  # no /proc/cpuinfo


def test_a_users_own_limit_wins_under_either_name():
    assert onednn_isa.cap_for({"ONEDNN_MAX_CPU_ISA": "ALL"}, AVX512) is None
    assert onednn_isa.cap_for({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}, AVX512) is None
    assert onednn_isa.current({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}) == "AVX512_CORE"
    assert onednn_isa.current({}) == "default"


def test_apply_reads_the_flags_line_of_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu sse2 avx2 avx512f amx_tile\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512f amx_tile\n")
    environ = {}
    assert onednn_isa.apply(environ, str(cpuinfo)) == "AVX2"
    assert environ == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    environ = {}
    assert onednn_isa.apply(environ, str(cpuinfo)) is None and environ == {}
    assert onednn_isa.apply(environ, str(tmp_path / "missing")) is None and environ == {}


def test_importing_the_engine_sets_the_cap_before_any_kernel_runs():
    base = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    probe = "import os, mobilenets_ms; print(os.environ.get('ONEDNN_MAX_CPU_ISA'))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=dict(base, GLOG_v="3"),
                         capture_output=True, text=True, check=True).stdout.split()
    expected = "AVX2" if "avx512f" in onednn_isa.cpu_flags() else "None"
    assert out[-1:] == [expected]
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=dict(base, GLOG_v="3", ONEDNN_MAX_CPU_ISA="ALL"),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[-1:] == ["ALL"]

"""Test-run settings every test and every subprocess it starts inherit.

Most of the suite's time is compilation: the same tiny JAX programs are compiled by many tests and
by the `main.py` processes they start. One persistent compilation cache under the checkout
(`.cache/`, ignored by git, so a fresh clone starts with it empty) is shared by all of them; it is
set through the environment before JAX is imported, so child processes use it too. Entries are keyed
by the program, the compile options and the jax version, so a stale entry can only miss, never
change a result.
"""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache", "jax_compilation")

os.makedirs(CACHE, exist_ok=True)  # before any test looks at the checkout (test_bench lists it)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Hypothesis keeps its files there too, not in a new .hypothesis/ in the checkout.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(ROOT, ".cache", "hypothesis"))

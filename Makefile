# Set-up is one idempotent step: .venv/ with the versions in requirements.lock.
# `make demo` and `make test` run it first, so each is one command on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONHASHSEED := 0
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: setup demo lint test test-slow
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required, found {sys.version.split()[0]}"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

# The main job: MobileNetV3-Small trained on the embedded digits dataset, then the saved
# checkpoint evaluated. Run again, it resumes (here: finds the run complete) and re-evaluates.
DEMO_WORKDIR ?= workdir/mnv3_small_digits
demo: setup
	$(PY) main.py --config=configs/mnv3_small.py --workdir=$(DEMO_WORKDIR) --config.dataset.name=digits
	$(PY) main.py --config=configs/mnv3_small.py --workdir=$(DEMO_WORKDIR) --config.dataset.name=digits --mode=eval

# The test suite, without the checks marked slow (~24 minutes on 2 cores); `make test-slow`
# runs those (whole-network and multi-process checks, every family; ~30 minutes); CI runs both.
# Tests run in TEST_WORKERS processes (pytest-xdist): most of the time is single-threaded
# compilation. The quick suite keeps each file on one worker (its module fixtures train once);
# the slow checks are spread test by test. tests/conftest.py shares one compilation cache.
TEST_WORKERS ?= 2
test: setup lint
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --durations=20 tests

# ruff (pinned in requirements.lock), settings in pyproject.toml; a second or two.
lint: setup
	$(PY) -m ruff check .

test-slow: setup
	$(PY) -m pytest -q -m slow -n $(TEST_WORKERS) --dist load --durations=20 tests

# The two commands of the README. Both create .venv on first use and install the project
# with constraints.txt, so that on a CPU-only machine torch is the local CPU build of 2.13.0
# and nothing pulls CUDA packages.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.kmax-installed
APT := $(if $(filter 0,$(shell id -u)),apt-get,sudo -n apt-get)

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned, so that no later requirement lets pip pick a CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -c constraints.txt torch==2.13.0
	# [fast]: the PNG accelerators, so that CI tests both them and their Pillow fallback.
	$(PIP) install -c constraints.txt -e '.[test,fast,app,export]'
	# Headless Chromium for tests/test_app_browser.py (Debian's package; playwright drives it
	# through executable_path, never `playwright install`). Skipped when present; where apt
	# cannot install it the browser test skips with a message.
	command -v chromium >/dev/null 2>&1 || { $(APT) update && $(APT) install -y chromium; } \
		|| echo "chromium could not be installed: tests/test_app_browser.py will be skipped"
	# Official evaluators used as test oracles: --no-deps (they pin numpy<2 / pull GUI deps).
	$(PIP) install --no-deps panopticapi-lite==0.2.0 cityscapesscripts==2.3.0 pyquaternion==0.9.9
	touch $(STAMP)

install: $(STAMP)

# OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning; on a loaded machine
# spinning threads made the suite 10x slower (57 min instead of 5).
demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/kmax demo

test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -p no:cacheprovider

# Every benchmark with its defaults (long on a CPU); `make bench BENCH_ARGS=--quick` for a smoke run.
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo_output .pytest_cache

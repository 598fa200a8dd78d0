# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv with the machine's python3.11 if it is missing and install the project.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
export RAY_AUTH_MODE ?= disabled
export MPLBACKEND ?= Agg

.PHONY: demo test test-slow install install-test bench gpu-check gpu-check-dry-run chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# Stamps make a second `make test` skip the install when pyproject.toml is unchanged.
$(VENV)/.installed: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e .
	touch $@

# Tests include the DeepSpeed training path (it runs on CPU), so the test install has it.
$(VENV)/.installed-test: pyproject.toml constraints.txt | $(PY)
	$(PIP) install -q -c constraints.txt -e ".[test,deepspeed]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/videocups demo --out runs/demo --config configs/demo.yaml --config configs/pseudolabel/synthdrive_256x512.yaml --config configs/train/demo.yaml

test: $(VENV)/.installed-test chromium
	$(PY) -m pytest -q

# Headless Chromium renders the report in tests/test_report.py. Installed here when missing and
# we are root (CI is); otherwise that test skips and says why (in CI it fails instead).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium is missing and we are not root: the report's browser test will skip"

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.installed
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The one prepared GPU check (benchmarks/gpu_check.py): run on the GPU machine with its own
# python3 (torch, CuPy, Numba; no Ray, no pydantic, so no venv). The dry run is in `make test`.
GPU_PYTHON ?= python3
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --out runs/gpu_check.md $(ARGS)

gpu-check-dry-run:
	$(GPU_PYTHON) benchmarks/gpu_check.py --dry-run --out runs/gpu_check_dry_run.md

clean:
	rm -rf runs .cache

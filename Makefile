# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv with the machine's python3.11 if it is missing and install the project.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
export RAY_AUTH_MODE ?= disabled
export MPLBACKEND ?= Agg

.PHONY: demo test test-slow install install-test bench clean

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

test: $(VENV)/.installed-test
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -q -m slow

bench: $(VENV)/.installed
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs .cache

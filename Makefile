# The two commands: `make run` (the main job) and `make test` (the test suite). Everything they need is
# installed here, into .venv, so a fresh clone on a fresh machine needs nothing installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# torch 2.13.0 is the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

STAMP_DEPS := $(VENV)/.deps-installed
STAMP_BUILD := $(VENV)/.mprec-built
EXT_SOURCES := $(shell find csrc -type f) CMakeLists.txt setup.py pyproject.toml

.PHONY: build run test bench bench-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP_DEPS): $(PY) Makefile
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "setuptools>=64" wheel cmake ninja numpy pytest hypothesis expecttest pytest-benchmark matplotlib
	touch $@

$(STAMP_BUILD): $(STAMP_DEPS) $(EXT_SOURCES)
	$(PIP) install -q --no-build-isolation -e .
	touch $@

build: $(STAMP_BUILD)

run: build
	$(PY) -m mprec.cli run

test: build
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

# Peers for the benchmarks: FBGEMM's CPU build, and TorchRec without its declared CUDA fbgemm dependency.
bench-deps: $(VENV)/.bench-deps-installed
$(VENV)/.bench-deps-installed: $(STAMP_DEPS)
	$(PIP) install -q fbgemm-gpu-cpu==1.8.0
	$(PIP) install -q --no-deps torchrec==1.8.0
	# What torchrec imports, without their own dependency trees (no CUDA wheels).
	$(PIP) install -q --no-deps tensordict==0.15.3 pyvers==0.2.3 cloudpickle==3.1.3 pyre-extensions==0.0.32 \
		typing-inspect==0.9.0 mypy-extensions==1.2.0
	touch $@

bench: build bench-deps
	$(PY) bench/run.py

clean:
	rm -rf build mprec/_C*.so *.egg-info $(STAMP_BUILD)

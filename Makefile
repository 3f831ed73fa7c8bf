# The two commands: `make run` (the main job) and `make test` (the test suite). Everything they need is
# installed here, into .venv, so a fresh clone on a fresh machine needs nothing installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# torch 2.13.0 is the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Triton for the GPU kernels; without a GPU the tests run them in its interpreter (TRITON_INTERPRET=1).
TRITON_SPEC ?= triton==3.9.0
PYTEST_ARGS ?=

STAMP_DEPS := $(VENV)/.deps-installed
STAMP_BUILD := $(VENV)/.mprec-built
EXT_SOURCES := $(shell find csrc -type f) CMakeLists.txt setup.py pyproject.toml

# The CUDA kernels (csrc/cuda/*.cu) need no torch, so they are compiled here on any machine with nvcc, GPU or
# not: a kernel that does not compile fails `make test`. Without nvcc the target says so and skips.
NVCC ?= nvcc
CUDA_SOURCES := $(wildcard csrc/cuda/*.cu)
CUDA_OBJECTS := $(patsubst csrc/cuda/%.cu,build/cuda-objects/%.o,$(CUDA_SOURCES))
CUDA_HEADERS := $(shell find csrc/include -type f)
HAVE_NVCC := $(shell command -v $(NVCC) 2>/dev/null)

.PHONY: build run test test-xla bench-xla bench bench-deps clean cuda-objects

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP_DEPS): $(PY) Makefile
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "setuptools>=64" wheel cmake ninja numpy pytest hypothesis expecttest pytest-benchmark matplotlib
	$(PIP) install -q "$(TRITON_SPEC)"
	touch $@

$(STAMP_BUILD): $(STAMP_DEPS) $(EXT_SOURCES)
	$(PIP) install -q --no-build-isolation -e .
	touch $@

build: $(STAMP_BUILD)

run: build
	$(PY) -m mprec.cli run

test: build cuda-objects
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

ifneq ($(HAVE_NVCC),)
cuda-objects: $(CUDA_OBJECTS)
else
cuda-objects:
	@echo "cuda-objects: $(NVCC) not found, the CUDA kernels were not compiled"
endif

build/cuda-objects/%.o: csrc/cuda/%.cu $(CUDA_HEADERS)
	@mkdir -p $(@D)
	$(NVCC) -std=c++17 -arch=sm_90 -O3 -Icsrc/include -c $< -o $@

# The XLA lane. torch_xla pairs only with torch 2.9, so it gets its own environment; PyPI's torch 2.9 is a
# CUDA build (about 4 GB with its nvidia libraries), used here on the CPU: XLA runs on its CPU client
# (PJRT_DEVICE=CPU). mprec is installed there as a package (its own build of mprec._C against torch 2.9,
# in its own build folder), and python -P keeps the source tree, whose mprec._C is the main environment's,
# off the import path.
VENV_XLA ?= .venv-xla
PY_XLA := $(VENV_XLA)/bin/python
XLA_SPEC ?= torch==2.9.0 torch_xla==2.9.0

$(PY_XLA):
	$(PYTHON) -m venv $(VENV_XLA)

$(VENV_XLA)/.deps-installed: $(PY_XLA) Makefile
	$(PY_XLA) -m pip install -q --disable-pip-version-check $(XLA_SPEC)
	$(PY_XLA) -m pip install -q --disable-pip-version-check "setuptools>=64" wheel "cmake<4" ninja numpy pytest
	touch $@

$(VENV_XLA)/.mprec-installed: $(VENV_XLA)/.deps-installed $(EXT_SOURCES) $(shell find mprec -name '*.py')
	# torch's CMake config for a CUDA torch looks for a CUDA toolkit even when nothing CUDA is built.
	CUDA_PATH=$${CUDA_PATH:-/usr/local/cuda} MPREC_WITH_CUDA=0 \
		$(PY_XLA) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps .
	touch $@

test-xla: $(VENV_XLA)/.mprec-installed
	PJRT_DEVICE=CPU $(PY_XLA) -P -m pytest tests/xla -q -p no:cacheprovider $(PYTEST_ARGS)

bench-xla: $(VENV_XLA)/.mprec-installed
	PJRT_DEVICE=CPU $(PY_XLA) -P bench/bench_xla.py

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

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
# A test that has not ended after this many seconds ends the run with every thread's stack (pytest-timeout).
# The thread method, because a kernel that loops forever never hands the interpreter back to a signal handler,
# and a hang would otherwise hold the run until CI's own limit, naming no test.
TEST_TIMEOUT ?= 900
PYTEST_TIMEOUT := --timeout=$(TEST_TIMEOUT) --timeout-method=thread

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

.PHONY: build run test test-sanitize fuzz test-xla bench-xla bench bench-deps clean cuda-objects device-prep

$(PY):
	$(PYTHON) -m venv $(VENV)

# TorchRec (mprec.distributed, and a benchmark peer) with FBGEMM's CPU build: TorchRec's declared dependency is
# FBGEMM's CUDA build, so it is installed without its dependencies, and what it imports is listed here.
TORCHREC_SPEC ?= torchrec==1.8.0
TORCHREC_DEPS ?= fbgemm-gpu-cpu==1.8.0 tensordict==0.15.3 pyvers==0.2.3 cloudpickle==3.1.3 pyre-extensions==0.0.32 \
	typing-inspect==0.9.0 mypy-extensions==1.2.0

$(STAMP_DEPS): $(PY) Makefile
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q "setuptools>=64" wheel cmake ninja numpy pytest pytest-timeout hypothesis expecttest pytest-benchmark \
		matplotlib
	$(PIP) install -q "$(TRITON_SPEC)"
	$(PIP) install -q --no-deps $(TORCHREC_DEPS)
	$(PIP) install -q --no-deps "$(TORCHREC_SPEC)"
	touch $@

$(STAMP_BUILD): $(STAMP_DEPS) $(EXT_SOURCES)
	$(PIP) install -q --no-build-isolation -e .
	touch $@

build: $(STAMP_BUILD)

run: build
	$(PY) -m mprec.cli run

test: build cuda-objects
	$(PY) -m pytest tests -q $(PYTEST_TIMEOUT) $(PYTEST_ARGS)

# The CPU op, layer and data tests against an mprec._C built with AddressSanitizer and UndefinedBehaviorSanitizer
# (MPREC_SANITIZE in CMakeLists.txt), in its own folder: the package is staged there with that module, and
# python -P keeps the source tree, whose mprec._C is the regular build, off the import path. Python is not
# instrumented, so the ASan runtime is preloaded; leak checking is off (the interpreter's allocations alive at
# exit are not leaks). Any finding aborts the process, and pytest reports the test that ran into it.
SANITIZE_DIR := build/sanitize
SANITIZE_TESTS ?= tests/test_ops_embedding_bag.py tests/test_ops_embedding_bag_backward.py \
	tests/test_ops_embedding_bag_errors.py tests/test_ops_embedding_bag_update.py tests/test_ops_cache.py \
	tests/test_ops_composite.py tests/test_ops_dhe.py tests/test_ops_dhe_errors.py tests/test_ops_interaction.py \
	tests/test_ops_mlp.py \
	tests/test_opcheck.py tests/test_isa.py tests/test_nn_embedding_bag.py tests/test_nn_dhe.py tests/test_nn_cache.py \
	tests/test_nn_mlp.py tests/test_nn_functional_opinfo.py tests/test_concurrency.py tests/test_models_dlrm.py \
	tests/test_data_criteo.py tests/test_fuzz.py tests/test_autograd.py tests/test_gather_probe.py
# libstdc++ is preloaded too: ASan intercepts C++ throws only if it is loaded when ASan starts, and Python does
# not link it.
SANITIZE_ENV := LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	PYTHONPATH=$(abspath $(SANITIZE_DIR))/pkg

test-sanitize: build
	$(VENV)/bin/cmake -S . -B $(SANITIZE_DIR) -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV))/bin/ninja \
		-DMPREC_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
		-DCMAKE_PREFIX_PATH=$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)') \
		-DPython_EXECUTABLE=$(abspath $(PY)) -DCMAKE_LIBRARY_OUTPUT_DIRECTORY=$(abspath $(SANITIZE_DIR))/lib
	$(VENV)/bin/cmake --build $(SANITIZE_DIR) --parallel
	rm -rf $(SANITIZE_DIR)/pkg && mkdir -p $(SANITIZE_DIR)/pkg
	cp -r mprec $(SANITIZE_DIR)/pkg/ && rm -f $(SANITIZE_DIR)/pkg/mprec/_C*.so
	cp $(SANITIZE_DIR)/lib/_C*.so $(SANITIZE_DIR)/pkg/mprec/
	$(SANITIZE_ENV) $(PY) -P -c "import mprec; assert '$(SANITIZE_DIR)/pkg' in mprec._C.__file__, mprec._C.__file__"
	# --capture=sys: a sanitizer's report, written to the process's stderr, reaches the terminal.
	$(SANITIZE_ENV) $(PY) -P -m pytest $(SANITIZE_TESTS) -q -p no:cacheprovider --capture=sys $(PYTEST_TIMEOUT) \
		$(PYTEST_ARGS)

# The op fuzzer at length (tests/fuzz_ops.py; the suite runs it briefly under hypothesis): random, mostly invalid
# arguments for every op through the CPU and fake kernels; exits non-zero on a finding.
FUZZ_CALLS ?= 1000000
FUZZ_SEED ?= 0
fuzz: build
	$(PY) tests/fuzz_ops.py --calls $(FUZZ_CALLS) --seed $(FUZZ_SEED)

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

# The GPU run, prepared here: the GPU machine (bench/gpu.sh) runs Python 3.12 with torch 2.11.0+cu130 and
# triton 3.6.0, and its lease is too short to spend compiling or training. This lane reproduces that software
# on the CPU (PyPI's torch 2.11.0 is that very CUDA build, about 5 GB with its CUDA libraries; no GPU is
# needed): it builds mprec._C for it with the CUDA kernels, runs the GPU tests there (the Triton kernels in
# Triton 3.6's interpreter, compiled for sm_90 by its compiler, the CUDA glue against torch 2.11's headers),
# trains and evaluates the three DLRMs, and lays what the GPU run needs in .device/, the folder to carry.
# Python 3.12: on the PATH, or else one pyenv holds (its shim answers only where 3.12 is selected).
PYTHON_DEVICE ?= $(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null || \
	ls -d $$HOME/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -1)
VENV_DEVICE ?= .venv-device
PY_DEVICE := $(VENV_DEVICE)/bin/python
DEVICE_SPEC ?= torch==2.11.0 triton==3.6.0
DEVICE_DIR ?= .device
CRITEO_SAMPLE ?= ../shared/data/criteo_kaggle_sample

$(PY_DEVICE):
	@test -n "$(PYTHON_DEVICE)" || { echo "device-prep: no Python 3.12 found (set PYTHON_DEVICE)"; exit 1; }
	$(PYTHON_DEVICE) -m venv $(VENV_DEVICE)

$(VENV_DEVICE)/.deps-installed: $(PY_DEVICE) Makefile
	$(PY_DEVICE) -m pip install -q --disable-pip-version-check $(DEVICE_SPEC)
	# numpy < 2.4: Triton 3.6's interpreter turns one-element arrays into Python ints, which numpy 2.4 refuses.
	$(PY_DEVICE) -m pip install -q --disable-pip-version-check "setuptools>=64,<82" wheel cmake ninja "numpy<2.4" \
		pytest hypothesis expecttest matplotlib
	touch $@

$(VENV_DEVICE)/.mprec-built: $(VENV_DEVICE)/.deps-installed $(EXT_SOURCES)
	MPREC_WITH_CUDA=1 $(PY_DEVICE) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

device-prep: build $(VENV_DEVICE)/.mprec-built
	$(PY_DEVICE) -m pytest tests/test_ops_gpu.py tests/test_kernels_compile.py tests/test_cuda_sources.py \
		tests/test_bench_gpu.py -q -p no:cacheprovider $(PYTEST_ARGS)
	rm -rf $(DEVICE_DIR)
	mkdir -p $(DEVICE_DIR)/data
	cp $$($(PY_DEVICE) -c "import mprec._C; print(mprec._C.__file__)") $(DEVICE_DIR)/
	cp $(CRITEO_SAMPLE)/train.txt $(CRITEO_SAMPLE)/valid.txt $(DEVICE_DIR)/data/
	$(PY) -m mprec.cli run --train-only --data-dir $(DEVICE_DIR)/data --out $(DEVICE_DIR)/models
	$(PY_DEVICE) -c "import json, platform, subprocess, torch, triton, mprec; json.dump(dict(python=platform.python_version(), \
		torch=torch.__version__, triton=triton.__version__, build=mprec.build_info()['torch_version'], \
		sources=subprocess.run(['bash', 'bench/ext_sources.sh'], capture_output=True, text=True).stdout.strip(), \
		commit=subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip(), \
		uncommitted_changes=bool(subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], \
		capture_output=True, text=True).stdout.strip())), \
		open('$(DEVICE_DIR)/manifest.json', 'w'), indent=1)"
	@du -sh $(DEVICE_DIR)
	@echo "device-prep: $(DEVICE_DIR) is ready; copy it to the GPU machine with the working tree and run bash bench/gpu.sh there"

# Peers for the benchmarks: FBGEMM's CPU build and TorchRec, which every environment has (see TORCHREC_SPEC).
bench-deps: $(STAMP_DEPS)

bench: build bench-deps
	$(PY) bench/run.py

clean:
	rm -rf build mprec/_C*.so *.egg-info $(STAMP_BUILD)

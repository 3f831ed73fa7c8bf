"""mprec's CUDA C++ ops on the CPU, through a CUDA emulator (include/cuda_emulator.h).

What runs is the code a GPU runs, but for the runtime header:

- the kernels (``csrc/cuda/*.cu``) are compiled by the host compiler, their ``<<<...>>>`` launches rewritten
  into ``cuda_emulator::launch`` calls (``#line`` keeps the original file's names and lines in messages);
- the torch glue (``csrc/cuda/*_cuda.cpp``) is compiled as it is, with ``include/`` first on the include path,
  so that ``mprec/cuda/torch_runtime.h`` is the emulator's (CPU tensors for device memory, no streams);
- the glue's ``TORCH_LIBRARY_IMPL(mprec, CUDA, m)`` registers its kernels as the CPU kernels of
  ``mprec_cuda_emulator::<op>`` instead, whose schemas are copied from ``mprec::<op>``.

So ``load().embedding_bag(...)`` on CPU tensors runs what ``torch.ops.mprec.embedding_bag(...)`` runs on CUDA
tensors with the CUDA C++ backend. It checks the kernels' logic (indexing, shapes, modes, dtypes, errors, warp
collectives), not their speed or their memory model.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.utils.cpp_extension as cpp_extension

import mprec  # noqa: F401  (mprec._C defines the schemas copied here)

NAMESPACE = "mprec_cuda_emulator"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
# What the glue calls from csrc/cpu: the argument checks and messages it shares with the CPU kernels.
SHARED_SOURCES = [ROOT / "csrc" / "cpu" / "embedding_bag_checks.cpp"]
BUILD_DIR = ROOT / "build" / "cuda-emulator"

# kernel<<<config>>>( -> cuda_emulator::launch(&kernel, {config}, ...; a template-id's arguments may not hold
# a semicolon or a brace, which no kernel name's do.
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:\s*<[^;{}]*?>)?)\s*<<<(.*?)>>>\s*\(\s*(\))?", re.S)
_IMPL = re.compile(r'\bm\.impl\(\s*"(\w+)"')


def rewrite_launches(source: str) -> str:
    """The kernel launches of a .cu file as C++ calls into the emulator."""

    def call(match: re.Match) -> str:
        kernel, config, no_arguments = match.groups()
        head = f"::cuda_emulator::launch(&{kernel}, ::cuda_emulator::Config{{{config}}}"
        return head + (")" if no_arguments else ", ")

    return _LAUNCH.sub(call, source)


# The ops the emulator serves: every op a glue file registers a CUDA kernel for.
OPS = tuple(name for glue in sorted(CUDA_DIR.glob("*_cuda.cpp")) for name in _IMPL.findall(glue.read_text()))


def _write_if_changed(path: Path, text: str) -> Path:
    # The build is incremental on files' times: an unchanged source keeps its object.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def _sources(build: Path) -> list[Path]:
    sources = []
    for kernel in sorted(CUDA_DIR.glob("*.cu")):
        text = f'#line 1 "{kernel.relative_to(ROOT)}"\n' + rewrite_launches(kernel.read_text())
        sources.append(_write_if_changed(build / f"{kernel.stem}.emulated.cpp", text))
    for glue in sorted(CUDA_DIR.glob("*_cuda.cpp")):
        text = "\n".join([
            f"// {glue.relative_to(ROOT)}, registered as the CPU kernels of {NAMESPACE}::<op>.",
            "#include <torch/library.h>",
            "#undef TORCH_LIBRARY_IMPL",
            f"#define TORCH_LIBRARY_IMPL(ns, k, m) _TORCH_LIBRARY_IMPL({NAMESPACE}, CPU, m, C10_UID)",
            f'#include "{glue}"',
            ""])
        sources.append(_write_if_changed(build / f"{glue.stem}.emulated.cpp", text))
    return sources + SHARED_SOURCES


def _define_schemas() -> torch.library.Library:
    library = torch.library.Library(NAMESPACE, "DEF")
    for name in OPS:
        schema = str(getattr(torch.ops.mprec, name).default._schema)
        library.define(schema.split("::", 1)[1])
    return library


# The schemas (defined once a process: a namespace has one definition), the ops once built, or why they
# could not be (raised again rather than rebuilt by every test).
_state: dict = {}


def load(address_sanitizer: bool = False, verbose: bool = False):
    """``torch.ops.mprec_cuda_emulator``, built on the first call (cached under build/cuda-emulator).

    With ``address_sanitizer`` the kernels and the glue are built with AddressSanitizer, so that a read or
    write outside any tensor fails the process with a report. The process must have been started with the
    sanitizer's runtime preloaded (see ``sanitizer_environment``)."""
    if "ops" in _state:
        return _state["ops"]
    if "error" in _state:
        raise _state["error"]
    if "schemas" not in _state:
        _state["schemas"] = _define_schemas()
    flags = ["-fsanitize=address", "-fno-omit-frame-pointer"] if address_sanitizer else []
    # One build per Python and torch, as setup.py's: environments must not load each other's builds.
    build = BUILD_DIR / (f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__.split('+')[0]}"
                         + ("-asan" if address_sanitizer else ""))
    build.mkdir(parents=True, exist_ok=True)
    try:
        cpp_extension.load(
            name=NAMESPACE, sources=[str(s) for s in _sources(build)],
            extra_include_paths=[str(HERE / "include"), str(ROOT / "csrc" / "include")],
            # C++20 for std::source_location (the emulator's diagnostics name the collective's line). No strict
            # aliasing: __ldg and packets read one type's bytes as another, as CUDA code does.
            extra_cflags=["-std=c++20", "-O2", "-fno-strict-aliasing", *flags], extra_ldflags=flags,
            build_directory=str(build), is_python_module=False, verbose=verbose)
    except Exception as error:
        _state["error"] = error
        raise
    _state["ops"] = getattr(torch.ops, NAMESPACE)
    return _state["ops"]


def sanitizer_environment(compiler: str = "g++") -> dict | None:
    """The environment a Python process needs to load code built with AddressSanitizer: its runtime preloaded
    (before anything else, as it requires), with libstdc++ so that it can intercept C++ throws; leaks are not
    reported (Python and torch keep memory until exit by design). None when the compiler has no runtime."""
    preload = []
    for name in ("libasan.so", "libstdc++.so"):
        found = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(found):
            return None
        preload.append(found)
    return {**os.environ, "LD_PRELOAD": " ".join(preload), "ASAN_OPTIONS": "detect_leaks=0"}


"""The CUDA implementations of the mprec ops, and the choice between Triton and CUDA C++.

Every op's CUDA kernel comes from one of three places:

* the Triton kernels in :mod:`mprec.kernels` (embedding bags forward and backward, ``dhe_encode``,
  ``dhe_encode_linear``), wrapped by each family's GPU glue (``mprec/ops/<family>/gpu.py``): argument checks,
  allocation, launch on the current stream, and the error flag turned into the CPU kernel's message;
* the CUDA C++ kernels in ``csrc/cuda`` (embedding bags forward and backward), registered by
  ``TORCH_LIBRARY_IMPL(mprec, CUDA, m)`` when mprec was built against a CUDA torch;
* aten compositions (each family's ``composite.py``, gathered by :mod:`mprec.ops.composite`) for every other
  op a model runs.

This module registers them and switches the embedding-bag ops between Triton and CUDA C++.

``MPREC_GPU_BACKEND=triton|cuda`` (read at import; :func:`set_backend` at run time) picks which of the
first two serves the embedding-bag ops. The default, :data:`DEFAULT_BACKEND`, is Triton; where the CUDA
C++ kernels are not built, Triton is the only choice. Registering a CUDA kernel needs no GPU, so this
module does its registrations on every machine; the wrapped Triton launches also run on CPU tensors under
``TRITON_INTERPRET=1``, which is how CI tests them (``tests/test_ops_gpu.py``).

The kernels check index ranges and offsets inside their loops and only raise a flag; reading the flag
back costs one device synchronisation per call, the price of an exception instead of a device assert.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Optional

import torch

from .arguments import refusing_none
from .dhe.gpu import TRITON_KERNELS as _TRITON_DHE_KERNELS
from .embedding_bag.gpu import OPS as _EMBEDDING_BAG_OPS
from .embedding_bag.gpu import TRITON_KERNELS as _TRITON_KERNELS

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "TRITON_KERNELS", "backend", "set_backend", "triton_available",
           "cuda_kernels_built"]

#: Every op's Triton-backed implementation (each family's GPU glue), by op name.
TRITON_KERNELS = {**_TRITON_KERNELS, **_TRITON_DHE_KERNELS}

BACKENDS = ("triton", "cuda")
DEFAULT_BACKEND = "triton"


def triton_available() -> bool:
    """Whether the triton package is installed (it is imported on the first Triton launch, not before:
    importing it costs time that CPU-only users should not pay)."""
    return importlib.util.find_spec("triton") is not None


# --- registration ------------------------------------------------------------------------------------------

def _has_cpp_cuda_kernel(name: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"mprec::{name}", "CUDA")


# Which embedding-bag ops the C++ extension registered for CUDA, seen before Python registers anything.
_CPP_CUDA_OPS = frozenset(name for name in _EMBEDDING_BAG_OPS if _has_cpp_cuda_kernel(name))


def cuda_kernels_built() -> bool:
    """Whether this build of mprec holds the CUDA C++ embedding-bag kernels (``csrc/cuda``)."""
    return _CPP_CUDA_OPS == frozenset(_EMBEDDING_BAG_OPS)


# Registrations live in Library objects: dropping one removes its kernels and brings back the ones it
# covered (the C++ kernels, when Triton is switched off).
_base_library: Optional[torch.library.Library] = None
_triton_library: Optional[torch.library.Library] = None
_backend: Optional[str] = None


def backend() -> str:
    """The implementation serving the embedding-bag ops on CUDA: ``"triton"`` or ``"cuda"``."""
    return _backend


def set_backend(name: str) -> None:
    """Serves the CUDA embedding-bag ops from the Triton kernels (``"triton"``) or from the CUDA C++ ones
    (``"cuda"``). Raises if the chosen implementation is not available in this installation."""
    global _triton_library, _backend
    if name not in BACKENDS:
        raise ValueError(f"mprec: the GPU backend must be one of {BACKENDS}, got {name!r}")
    if name == "cuda" and not cuda_kernels_built():
        raise RuntimeError("mprec: the CUDA C++ kernels are not built in this installation (build with a CUDA "
                           "torch and nvcc: MPREC_WITH_CUDA=1 pip install --no-build-isolation -e .)")
    if name == "triton" and not triton_available():
        raise RuntimeError("mprec: the Triton backend needs the triton package (pip install triton)")
    if _triton_library is not None:
        _triton_library._destroy()
        _triton_library = None
    if name == "triton":
        _triton_library = torch.library.Library("mprec", "IMPL")
        with warnings.catch_warnings():
            # Over the CUDA C++ kernels, when they are built: the dispatcher warns of the override, which is
            # the point here (dropping the library brings them back).
            warnings.filterwarnings("ignore", message="(?s).*Overriding a previously registered kernel")
            for op_name, fn in _TRITON_KERNELS.items():
                _triton_library.impl(op_name, refusing_none(f"mprec::{op_name}", fn), "CUDA")
    _backend = name


def _register() -> None:
    global _base_library
    from .composite import KERNELS as composite_kernels

    _base_library = torch.library.Library("mprec", "IMPL")
    for op_name, fn in composite_kernels.items():
        if not _has_cpp_cuda_kernel(op_name):
            _base_library.impl(op_name, refusing_none(f"mprec::{op_name}", fn), "CUDA")
    if triton_available():
        for op_name, fn in _TRITON_DHE_KERNELS.items():
            _base_library.impl(op_name, refusing_none(f"mprec::{op_name}", fn), "CUDA")
    requested = os.environ.get("MPREC_GPU_BACKEND", "").strip().lower()
    if requested:
        set_backend(requested)
    elif triton_available() and (DEFAULT_BACKEND == "triton" or not cuda_kernels_built()):
        set_backend("triton")
    elif cuda_kernels_built():
        set_backend("cuda")


_register()

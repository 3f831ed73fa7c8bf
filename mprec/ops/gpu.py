"""The CUDA implementations of the mprec ops, and the choice between Triton and CUDA C++.

Every op's CUDA kernel comes from one of three places:

* the Triton kernels in :mod:`mprec.kernels` (embedding bags forward and backward, ``dhe_encode``,
  ``dhe_encode_linear``), wrapped here: argument checks, allocation, launch on the current stream, and
  the error flag turned into the CPU kernel's message;
* the CUDA C++ kernels in ``csrc/cuda`` (embedding bags forward and backward), registered by
  ``TORCH_LIBRARY_IMPL(mprec, CUDA, m)`` when mprec was built against a CUDA torch;
* aten compositions (:mod:`mprec.ops.composite`) for every other op a model runs.

``MPREC_GPU_BACKEND=triton|cuda`` (read at import; :func:`set_backend` at run time) picks which of the
first two serves the embedding-bag ops. The default, :data:`DEFAULT_BACKEND`, is Triton; where the CUDA
C++ kernels are not built, Triton is the only choice. Registering a CUDA kernel needs no GPU, so this
module does its registrations on every machine; the wrapped Triton launches also run on CPU tensors under
``TRITON_INTERPRET=1``, which is how CI tests them (``tests/test_ops_gpu.py``).

The kernels check index ranges and offsets inside their loops and only raise a flag; reading the flag
back costs one device synchronisation per call, the price of an exception instead of a device assert.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor

from .arguments import refusing_none
from .composite import _check_hashes, _checked_per_sample_weights, check_hash_values
from .dhe import _check_activation, _check_linear, activation as apply_activation
from .dhe import dhe_encode_aten
from .embedding_bag import (
    _accumulation_dtype,
    _batched_bags,
    _check_device,
    _check_indices,
    _check_padding_idx,
    _check_scale_grad_by_freq,
    _check_tables,
    _check_weight,
    _single_bags,
    batched_backward_bags,
    check_backward,
    mode_number,
    raise_bag_error,
    raise_max_indices_error,
    single_backward_bags,
)

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "backend", "set_backend", "triton_available", "cuda_kernels_built",
           "embedding_bag", "embedding_bag_backward", "batched_embedding_bag", "batched_embedding_bag_backward",
           "dhe_encode", "dhe_encode_linear"]

BACKENDS = ("triton", "cuda")
DEFAULT_BACKEND = "triton"

_EMBEDDING_BAG_OPS = ("embedding_bag", "embedding_bag_backward", "batched_embedding_bag",
                      "batched_embedding_bag_backward")



def triton_available() -> bool:
    """Whether the triton package is installed (it is imported on the first Triton launch, not before:
    importing it costs time that CPU-only users should not pay)."""
    return importlib.util.find_spec("triton") is not None


class _Lazy:
    """A module of mprec.kernels, imported on first use."""

    def __init__(self, name: str):
        self._name, self._module = name, None

    def __getattr__(self, attr):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


_triton_eb = _Lazy("mprec.kernels.embedding_bag")
_triton_dhe = _Lazy("mprec.kernels.dhe")


# --- the CPU kernels' checks, in their words (c10's spelling: Float, [2, 3]), with the device in place of cpu ---

def _new_error_flag(device: torch.device) -> Tensor:
    return torch.zeros(1, dtype=torch.int32, device=device)


# --- embedding bags (Triton) ------------------------------------------------------------------------------

_SINGLE = "mprec::embedding_bag"
_BATCHED = "mprec::batched_embedding_bag"


def _single_setup(op, weight, scale_bias, indices, offsets, mode, per_sample_weights, padding_idx,
                  include_last_offset):
    """The CPU kernel's checks, in its order; returns what the launch needs."""
    mode = mode_number(op, mode)
    device = weight.device
    _check_weight(op, weight, scale_bias, "weight", device, allow_quantized=False)
    _check_indices(op, indices, offsets, device)
    bags = _single_bags(op, offsets, include_last_offset)
    _check_padding_idx(op, padding_idx, weight.shape[0])
    psw = _checked_per_sample_weights(op, per_sample_weights, mode, indices.shape[0], _accumulation_dtype(weight))
    _check_device(op, device, per_sample_weights=psw)
    tables = _triton_eb.table_args([weight.contiguous()], [padding_idx])
    # Offsets beyond the bags are not read; B + 1 offsets with include_last_offset end the last bag.
    offsets = offsets[: bags + 1] if include_last_offset else offsets
    return mode, bags, None if psw is None else psw.contiguous(), tables, indices.contiguous(), offsets.contiguous()


def embedding_bag(weight: Tensor, indices: Tensor, offsets: Tensor, mode: int = 0,
                  per_sample_weights: Optional[Tensor] = None, padding_idx: int = -1,
                  include_last_offset: bool = False, scale_bias: Optional[Tensor] = None, sparse: bool = False,
                  scale_grad_by_freq: bool = False):
    op = _SINGLE
    _check_scale_grad_by_freq(op, scale_grad_by_freq, mode_number(op, mode))
    mode, bags, psw, tables, indices, offsets = _single_setup(
        op, weight, scale_bias, indices, offsets, mode, per_sample_weights, padding_idx, include_last_offset)
    error = _new_error_flag(weight.device)
    out, max_indices = _triton_eb.pool(tables, indices, offsets, bags, mode, psw, error)
    if error.item():
        raise_bag_error(op, indices, offsets, bags, [weight.shape[0]], [padding_idx])
    return out, max_indices


def embedding_bag_backward(grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor, max_indices: Tensor,
                           mode: int, per_sample_weights: Optional[Tensor], padding_idx: int,
                           include_last_offset: bool) -> Tensor:
    op = "mprec::embedding_bag_backward"
    bags = single_backward_bags(op, weight, indices, offsets, mode, padding_idx, include_last_offset, weight.device)
    check_backward(op, "dense", grad, [weight], indices, mode, bags, per_sample_weights, max_indices)
    _check_device(op, weight.device, grad=grad)
    mode, bags, psw, tables, indices, offsets = _single_setup(
        op, weight, None, indices, offsets, mode, per_sample_weights, padding_idx, include_last_offset)
    grad = grad.contiguous()
    error = _new_error_flag(weight.device)
    (grad_weight,) = _triton_eb.pool_backward(tables, grad, indices, offsets, bags, mode, psw,
                                              max_indices.contiguous(), error)
    if error.item():
        if mode == 2:
            raise_max_indices_error(op, max_indices, [0], [weight.shape[0]])
        raise_bag_error(op, indices, offsets, bags, [weight.shape[0]], [padding_idx])
    return grad_weight


def _batched_setup(op, weights, scale_bias, indices, offsets, mode, per_sample_weights, padding_idx):
    """The CPU kernel's checks, in its order; returns what the launch needs."""
    mode = mode_number(op, mode)
    weights = list(weights)
    device = weights[0].device if weights else None
    _check_tables(op, weights, scale_bias, padding_idx, device, allow_quantized=False)
    _check_indices(op, indices, offsets, device)
    bags = _batched_bags(op, offsets, len(weights))
    psw = _checked_per_sample_weights(op, per_sample_weights, mode, indices.shape[0], _accumulation_dtype(weights[0]))
    _check_device(op, device, per_sample_weights=psw)
    tables = _triton_eb.table_args([w.contiguous() for w in weights], list(padding_idx))
    return (mode, bags, None if psw is None else psw.contiguous(), tables, indices.contiguous(), offsets.contiguous(),
            weights)


def batched_embedding_bag(weights: Sequence[Tensor], indices: Tensor, offsets: Tensor, mode: int = 0,
                          per_sample_weights: Optional[Tensor] = None, padding_idx: Sequence[int] = (),
                          scale_bias: Optional[Sequence[Tensor]] = None, sparse: bool = False):
    op = _BATCHED
    mode, bags, psw, tables, indices, offsets, weights = _batched_setup(
        op, weights, scale_bias, indices, offsets, mode, per_sample_weights, padding_idx)
    error = _new_error_flag(weights[0].device)
    out, max_indices = _triton_eb.pool(tables, indices, offsets, bags, mode, psw, error)
    if error.item():
        raise_bag_error(op, indices, offsets, bags, [w.shape[0] for w in weights], list(padding_idx))
    return out, max_indices


def batched_embedding_bag_backward(grad: Tensor, weights: Sequence[Tensor], indices: Tensor, offsets: Tensor,
                                   max_indices: Tensor, mode: int, per_sample_weights: Optional[Tensor],
                                   padding_idx: Sequence[int]) -> list[Tensor]:
    op = "mprec::batched_embedding_bag_backward"
    device = weights[0].device if len(weights) else None
    bags = batched_backward_bags(op, weights, indices, offsets, mode, padding_idx, device)
    check_backward(op, "dense", grad, weights, indices, mode, bags, per_sample_weights, max_indices)
    _check_device(op, device, grad=grad)
    mode, bags, psw, tables, indices, offsets, weights = _batched_setup(
        op, weights, None, indices, offsets, mode, per_sample_weights, padding_idx)
    grad = grad.contiguous()
    error = _new_error_flag(weights[0].device)
    grads = _triton_eb.pool_backward(tables, grad, indices, offsets, bags, mode, psw, max_indices.contiguous(), error)
    if error.item():
        rows = [w.shape[0] for w in weights]
        if mode == 2:
            cols = [sum(w.shape[1] for w in weights[:t]) for t in range(len(weights))]
            raise_max_indices_error(op, max_indices, cols, rows)
        raise_bag_error(op, indices, offsets, bags, rows, list(padding_idx))
    return grads


# --- DHE (Triton) -----------------------------------------------------------------------------------------

def _raise_dhe_error(op: str, ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int) -> None:
    """The CPU kernel's message for the first bad hash parameter, else the first negative id."""
    check_hash_values(op, hash_a, hash_b, p)
    flat = ids.detach().reshape(-1).to("cpu")
    negative = (flat < 0).nonzero()
    if negative.shape[0]:
        i = int(negative[0])
        raise ValueError(f"{op}: ids[{i}] = {int(flat[i])} is negative; DHE ids must be >= 0")
    raise RuntimeError(f"{op}: internal error: the kernel flagged input that the checks cannot find")


def dhe_encode(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str = "uniform") -> Tensor:
    op = "mprec::dhe_encode"
    _check_device(op, ids.device, hash_a=hash_a, hash_b=hash_b)
    k = _check_hashes(op, ids, hash_a, hash_b, p, m, transform, check_values=False)
    error = _new_error_flag(ids.device)
    out = _triton_dhe.encode(ids.reshape(-1).contiguous(), hash_a.contiguous(), hash_b.contiguous(), p, m,
                             transform == "gaussian", error)
    if error.item():
        _raise_dhe_error(op, ids, hash_a, hash_b, p)
    return out.view(*ids.shape, k)


def dhe_encode_linear(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str, weight: Tensor,
                      bias: Optional[Tensor] = None, activation: str = "none") -> Tensor:
    op = "mprec::dhe_encode_linear"
    _check_device(op, ids.device, hash_a=hash_a, hash_b=hash_b, weight=weight, bias=bias)
    k = _check_hashes(op, ids, hash_a, hash_b, p, m, transform, check_values=False)
    _check_linear(op, weight, bias, k, "k")
    _check_activation(op, activation)
    if weight.dtype == torch.float64:
        # float64 is for checking gradients, not for speed: aten ops compute it exactly.
        check_hash_values(op, hash_a, hash_b, p)
        if bool((ids < 0).any()):
            _raise_dhe_error(op, ids, hash_a, hash_b, p)
        encoded = dhe_encode_aten(ids, hash_a, hash_b, p, m, transform, torch.float64)
        return apply_activation(torch.nn.functional.linear(encoded, weight, bias), activation)
    error = _new_error_flag(ids.device)
    out = _triton_dhe.encode_linear(ids.reshape(-1).contiguous(), hash_a.contiguous(), hash_b.contiguous(), p, m,
                                    transform == "gaussian", weight, None if bias is None else bias.contiguous(),
                                    activation, error)
    if error.item():
        _raise_dhe_error(op, ids, hash_a, hash_b, p)
    return out.view(*ids.shape, weight.shape[0])


# --- registration ------------------------------------------------------------------------------------------

_TRITON_KERNELS = {
    "embedding_bag": embedding_bag,
    "embedding_bag_backward": embedding_bag_backward,
    "batched_embedding_bag": batched_embedding_bag,
    "batched_embedding_bag_backward": batched_embedding_bag_backward,
}
_TRITON_DHE_KERNELS = {"dhe_encode": dhe_encode, "dhe_encode_linear": dhe_encode_linear}


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

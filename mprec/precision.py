"""Which floating-point precision the dense layers run in: chosen by the hardware unless the user says.

``"auto"`` (the default everywhere a precision is taken: :class:`mprec.training.RunConfig`, ``mprec train
--precision``, the scheduler's paths) is bfloat16 autocast where the CPU computes bfloat16 natively and float32
elsewhere. "Natively" is oneDNN's own answer (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: AVX-512 with
the BW/VL/DQ extensions, AVX512-BF16 or AMX), the same test that decides whether :func:`mprec.ops.linear` sends
bfloat16 products to oneDNN. Without it (AVX2-only CPUs) every bfloat16 product goes through scalar
conversion loops and runs many times slower than float32, so ``"auto"`` never picks it there, and an explicit
``"bf16"`` (or a DHE layer with bfloat16 weights) on such a CPU warns once per process with the slowdown
measured on this machine.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings

import torch
from torch.nn import functional as F

from .timing import median_ms

__all__ = ["PRECISIONS", "bf16_native", "resolve", "autocast", "bf16_slowdown", "warn_if_bf16_emulated"]

PRECISIONS = ("auto", "fp32", "bf16")
# The layer the slowdown is measured on: DLRM's 512 -> 256 at its training batch (rows, in, out). Smaller
# batches understate the slowdown; where bfloat16 is slow the probe costs a few hundred ms, once.
_PROBE_SHAPE = (2048, 512, 256)


@functools.lru_cache(maxsize=None)
def bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively, as oneDNN reports it."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _native_on(device_type: str) -> bool:
    if device_type == "cpu":
        return bf16_native()
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return True  # the accelerators mprec lowers to (XLA's TPUs, IPUs) compute bfloat16 natively


def resolve(precision: str, what: str = "mprec", device_type: str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` (one of :data:`PRECISIONS`): ``"auto"`` is bf16 where the
    device computes it natively, else fp32. An explicit ``"bf16"`` on a CPU without it warns once (``what``
    names the caller in the warning)."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what}: precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if _native_on(device_type) else "fp32"
    if precision == "bf16" and device_type == "cpu":
        warn_if_bf16_emulated(what)
    return precision


def autocast(precision: str, device_type: str = "cpu", what: str = "mprec"):
    """The autocast context of ``precision`` (resolved by :func:`resolve`): bfloat16 autocast, or nothing."""
    if resolve(precision, what, device_type) != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


@functools.lru_cache(maxsize=None)
def bf16_slowdown() -> float:
    """How many times longer a bfloat16 linear layer takes than the same float32 one on this CPU (one of
    DLRM's MLP layers as autocast runs it, ``F.linear``; medians of a few runs; measured once per process)."""
    rows, fan_in, fan_out = _PROBE_SHAPE
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, w, b = (torch.randn(*shape).to(dtype) for shape in ((rows, fan_in), (fan_out, fan_in), (fan_out,)))
        times[dtype] = median_ms(lambda: F.linear(x, w, b), rounds=3, warmup=1)
    return times[torch.bfloat16] / times[torch.float32]


_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_if_bf16_emulated(what: str) -> None:
    """Warns once per ``what`` and process when bfloat16 is asked for on a CPU without native bfloat16."""
    if bf16_native() or what in _warned:
        return
    with _warned_lock:  # layers may be called from several threads at once
        if what in _warned:
            return
        _warned.add(what)
    warnings.warn(f"{what}: bfloat16 was asked for, but this CPU has no native bfloat16 (oneDNN reports none); "
                  f"a bfloat16 linear layer runs {bf16_slowdown():.1f}x slower than float32 here (measured). "
                  f"precision 'auto' uses float32 on this CPU.", RuntimeWarning, stacklevel=2)

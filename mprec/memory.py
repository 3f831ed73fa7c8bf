"""Table memory on transparent huge pages, and activation memory kept for reuse.

A lookup into a multi-GB table lands on a different 4 KiB page almost every time, so on 4 KiB pages
nearly every row read also misses the TLB and walks the page table. On 2 MiB pages the same tables
need 512x fewer TLB entries. Linux gives an anonymous mapping huge pages when the region is marked
``MADV_HUGEPAGE`` before it is touched (THP in ``madvise`` mode, the default of most distributions;
``always`` needs no marking, ``never`` ignores it). :func:`empty` allocates a tensor whose data starts on a
2 MiB boundary and marks it; anywhere this does not apply (not Linux, not CPU, small tensors, THP off) it
is a plain ``torch.empty``.

:func:`retain_freed_memory` is for the step loops: a training step allocates and frees megabytes of
activations and gradients, and glibc's malloc hands blocks that large back to the kernel (``munmap``, or a
trimmed heap top) when they are freed, so the next step's allocations fault every page in again, zeroed by
the kernel. It tells malloc to keep them.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Optional, Sequence

import torch

__all__ = ["empty", "huge_pages_available", "retain_freed_memory", "HUGE_PAGE_BYTES", "MIN_BYTES"]

# glibc's mallopt parameters (malloc.h) and the values retain_freed_memory sets: blocks up to 32 MiB (the
# largest threshold glibc accepts on 64-bit) come from the heap, not their own mappings, and up to 2 GiB of free
# heap top stays mapped.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = (1 << 31) - 1
_retained = False

HUGE_PAGE_BYTES = 2 << 20
MIN_BYTES = 2 * HUGE_PAGE_BYTES  # below this the alignment padding outweighs what it saves
_MADV_HUGEPAGE = 14


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "never"
    return text[text.index("[") + 1:text.index("]")] if "[" in text else "never"


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MODE = _thp_mode()
_MADVISE_FN = _madvise()


def huge_pages_available() -> bool:
    """Whether :func:`empty` can place tensors on transparent huge pages here."""
    return _MADVISE_FN is not None and _MODE in ("always", "madvise")


def empty(shape: Sequence[int], dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
    """``torch.empty(shape)``, on 2 MiB pages where the machine offers them (see the module doc). The result
    is a contiguous view that starts on a 2 MiB boundary of a slightly larger buffer."""
    dtype = dtype or torch.get_default_dtype()
    device = torch.device("cpu") if device is None else torch.device(device)
    numel = 1
    for s in shape:
        numel *= int(s)
    itemsize = dtype.itemsize
    if device.type != "cpu" or numel * itemsize < MIN_BYTES or not huge_pages_available():
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    pad = HUGE_PAGE_BYTES // itemsize
    buf = torch.empty(numel + pad, dtype=dtype)
    start = buf.data_ptr()
    aligned = (start + HUGE_PAGE_BYTES - 1) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    # torch's CPU allocations are 64-byte aligned, so the gap is a whole number of (power-of-two) items.
    offset = (aligned - start) // itemsize
    length = (numel * itemsize) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if _MODE == "madvise" and length:
        _MADVISE_FN(aligned, length, _MADV_HUGEPAGE)  # advice only: on failure the pages are simply 4 KiB
    return buf[offset:offset + numel].view(tuple(shape))


def retain_freed_memory() -> bool:
    """Makes this process's malloc keep freed blocks of up to 32 MiB (tensors of a training or inference step)
    for the next allocations instead of returning them to the kernel, which then faults and zeroes every page
    again each step (on a 2-core AVX2 EPYC, 17% of a Kaggle DLRM training step). The process's resident memory
    stays at its peak. Returns whether it applies (glibc only); calling it again does nothing. ``mprec train``,
    ``mprec eval`` and the scheduler's server call it; the DLRM benchmarks call it once for every model they
    compare (they share the process)."""
    global _retained
    if _retained:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _retained = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _retained

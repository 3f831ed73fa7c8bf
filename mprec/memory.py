"""Table memory on transparent huge pages.

A lookup into a multi-GB table lands on a different 4 KiB page almost every time, so on 4 KiB pages
nearly every row read also misses the TLB and walks the page table. On 2 MiB pages the same tables
need 512x fewer TLB entries. Linux gives an anonymous mapping huge pages when the region is marked
``MADV_HUGEPAGE`` before it is touched (THP in ``madvise`` mode, the default of most distributions;
``always`` needs no marking, ``never`` ignores it). :func:`empty` allocates a tensor whose data starts on a
2 MiB boundary and marks it; anywhere this does not apply (not Linux, not CPU, small tensors, THP off) it
is a plain ``torch.empty``.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Optional, Sequence

import torch

__all__ = ["empty", "huge_pages_available", "HUGE_PAGE_BYTES", "MIN_BYTES"]

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

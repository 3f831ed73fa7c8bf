"""How c10 writes sizes and dtypes in the C++ kernels' error messages (``[2, 3]``, ``Float``), for the checks
made in Python: by the fake kernels, the aten compositions and the GPU wrappers, so that an error reads the
same on every device and under tracing."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sizes", "dtype_name", "float_text"]


def sizes(t: Tensor) -> str:
    """``[2, 3]``, as c10 prints a tensor's sizes."""
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def dtype_name(dtype: torch.dtype) -> str:
    """c10's ScalarType name: ``Float`` for torch.float32, ``Long`` for torch.int64, ..."""
    legacy = torch.empty(0, dtype=dtype).type()  # "torch.FloatTensor"
    return legacy.removeprefix("torch.").removesuffix("Tensor")


def float_text(x: float) -> str:
    """A float as std::ostream writes it (6 significant digits; x86's NaN from 0/0 carries its sign)."""
    if x != x:
        return "-nan" if torch.tensor(x).signbit() else "nan"
    return f"{x:g}"

"""Linear layers with a fused activation, for the MLPs of DLRM and the DHE decoders.

:func:`linear` is ``activation(x @ weight.T + bias)``. When nothing needs a gradient (inference), on a CPU
build of torch with oneDNN, it runs as one oneDNN call with the activation applied to the GEMM's output
tile while it is still in cache (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor emits for
the same pattern); under CPU autocast it computes in the autocast dtype, as ``F.linear`` would. Otherwise
(training, other devices, other activations) it is ``F.linear`` followed by the activation, in place.
Both give the same values up to the GEMM's rounding order.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["linear", "ACTIVATIONS"]

ACTIVATIONS = ("none", "relu")
_FUSED = {"none": ("none", []), "relu": ("relu", [None])}


def _fused_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_HAS_FUSED = _fused_available()


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: str = "none") -> Tensor:
    if activation not in ACTIVATIONS:
        raise ValueError(f"mprec.ops.linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if _HAS_FUSED and not needs_grad and x.device.type == "cpu" and x.dim() == 2 and x.shape[0] > 0:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if dtype in (torch.float32, torch.bfloat16) and weight.dtype in (torch.float32, torch.bfloat16):
            name, scalars = _FUSED[activation]
            return torch.ops.mkldnn._linear_pointwise(x.to(dtype), weight.to(dtype),
                                                      None if bias is None else bias.to(dtype), name, scalars, "")
    y = F.linear(x, weight, bias)
    return torch.relu_(y) if activation == "relu" else y

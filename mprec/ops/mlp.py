"""Linear layers with a fused activation, for the MLPs of DLRM and the DHE decoders.

:func:`linear` is ``activation(x @ weight.T + bias)``. On a CPU build of torch with oneDNN, for 2-D float32
or bfloat16 inputs, every product runs through oneDNN's matmul (``torch.ops.mkldnn._linear_pointwise``,
the kernel inductor emits for the same pattern):

- the forward is one call with the activation applied to the GEMM's output tile while it is still in
  cache; under CPU autocast it computes in the autocast dtype, as ``F.linear`` would;
- with autograd (training), :class:`_OneDNNLinear` computes the input gradient as ``grad @ weight`` and
  the weight gradient as ``grad.T @ x`` through the same matmul, reading the transposes as strided views
  (no copies).

Why not ``F.linear``: torch sends float32 ``mm``/``addmm`` to MKL, and MKL on AMD CPUs runs its AVX2
kernels; oneDNN dispatches on the ISA alone and runs AVX-512 there. On a 2-core Zen 5 the DLRM shapes
(B=2048, 368x512, 512x256) go at 200-220 GFLOP/s through MKL and 380-500 through oneDNN (forward and
input gradient), 300-330 for the weight gradient. The products are float32 throughout (no bf16/tf32
shortcut); only the summation order differs. bfloat16 goes to oneDNN only where the CPU computes it
(AVX-512 or AMX). Weight gradients of thin layers (a side under 64) stay on
``mm``, where oneDNN is slower. Everything else (other devices and dtypes, N-d inputs) is ``F.linear``
followed by the activation, in place.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["linear", "ACTIVATIONS"]

ACTIVATIONS = ("none", "relu")
_FUSED = {"none": ("none", []), "relu": ("relu", [None])}
# Below this width on either side of the weight, oneDNN's weight-gradient product is slower than mm's.
_ONEDNN_WEIGHT_GRAD_MIN = 64


def _fused_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_HAS_FUSED = _fused_available()
# oneDNN computes bfloat16 products only on CPUs with AVX-512 (or AMX); elsewhere it refuses to build the
# primitive, and bfloat16 goes through F.linear like every other case.
_ONEDNN_DTYPES = (torch.float32, torch.bfloat16) if _HAS_FUSED and torch.ops.mkldnn._is_mkldnn_bf16_supported() \
    else (torch.float32,)


def _matmul_t(a: Tensor, b: Tensor, activation: str = "none", bias: Optional[Tensor] = None) -> Tensor:
    """``activation(a @ b.T + bias)`` by oneDNN; ``a`` and ``b`` may be strided views."""
    name, scalars = _FUSED[activation]
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, name, scalars, "")


class _OneDNNLinear(torch.autograd.Function):
    """``activation(x @ weight.T + bias)`` with all three products on oneDNN (2-D, one dtype)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str) -> Tensor:
        y = _matmul_t(x, weight, activation, bias)
        relu = activation == "relu"
        # ReLU's backward needs only its output (y > 0), so x is the one activation kept per layer.
        ctx.save_for_backward(x, weight, y if relu else None)
        ctx.relu = relu
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, y = ctx.saved_tensors
        if not grad.is_contiguous():
            grad = grad.contiguous()
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul_t(grad, weight.t())
        if ctx.needs_input_grad[1]:
            if min(weight.shape) >= _ONEDNN_WEIGHT_GRAD_MIN:
                grad_w = _matmul_t(grad.t(), x.t())
            else:
                grad_w = grad.t().mm(x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: str = "none") -> Tensor:
    if activation not in ACTIVATIONS:
        raise ValueError(f"mprec.ops.linear: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if _HAS_FUSED and x.device.type == "cpu" and weight.device.type == "cpu" and x.dim() == 2 and x.shape[0] > 0:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        if dtype in _ONEDNN_DTYPES and weight.dtype in (torch.float32, torch.bfloat16):
            # The casts are autograd ops: gradients come back in each parameter's own dtype.
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
            needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                      or (bias is not None and bias.requires_grad))
            if not needs_grad:
                return _matmul_t(x, weight, activation, bias)
            with torch.autocast("cpu", enabled=False):
                return _OneDNNLinear.apply(x.contiguous(), weight.contiguous(), bias, activation)
    y = F.linear(x, weight, bias)
    return torch.relu_(y) if activation == "relu" else y

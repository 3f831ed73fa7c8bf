"""DLRM's dot interaction as an op: typed wrapper, fake kernels, autograd.

Schemas: ``csrc/registration.cpp``. CPU kernel: ``csrc/cpu/interaction*.cpp``. Reference:
:func:`mprec.ops.reference.dot_interaction_reference`.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dot_interaction"]


def dot_interaction(x: Tensor) -> Tensor:
    """``[B, F, D] -> [B, F (F - 1) / 2]``: for each example, the dot products of its feature vectors
    ``i`` and ``j < i``, pairs in row order ((1, 0), (2, 0), (2, 1), ...), as DLRM's interaction without
    the diagonal. Differentiable in ``x``."""
    return torch.ops.mprec.dot_interaction(x)


def _check(op: str, x: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be [B, F, D], got shape {tuple(x.shape)}")
    if x.shape[1] < 2:
        raise ValueError(f"{op}: x needs at least 2 features to interact, got {x.shape[1]}")


@torch.library.register_fake("mprec::dot_interaction")
def _dot_interaction_fake(x):
    _check("mprec::dot_interaction", x)
    f = x.shape[1]
    return x.new_empty((x.shape[0], f * (f - 1) // 2))


@torch.library.register_fake("mprec::dot_interaction_backward")
def _dot_interaction_backward_fake(grad, x):
    _check("mprec::dot_interaction_backward", x)
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    (x,) = inputs
    ctx.save_for_backward(x)


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.mprec.dot_interaction_backward(grad, x)


torch.library.register_autograd("mprec::dot_interaction", _backward, setup_context=_setup_context)

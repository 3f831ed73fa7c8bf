"""DLRM's dot interaction as an op: typed wrappers and fake kernels.

Schemas: ``csrc/registration.cpp``. CPU kernel: ``csrc/cpu/interaction*.cpp``. Autograd:
``csrc/autograd/interaction.cpp``. The tests' oracle:
``dot_interaction_reference`` in ``tests/reference.py``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..arguments import register_fake
from ..spelling import dtype_name, sizes

# Overloads looked up once, not by name on every call.
_DOT_INTERACTION = torch.ops.mprec.dot_interaction.default
_DLRM_INTERACTION = torch.ops.mprec.dlrm_interaction.default

__all__ = ["dot_interaction", "dlrm_interaction", "dlrm_interaction_width"]


def dot_interaction(x: Tensor) -> Tensor:
    """``[B, F, D] -> [B, F (F - 1) / 2]``: for each example, the dot products of its feature vectors
    ``i`` and ``j < i``, pairs in row order ((1, 0), (2, 0), (2, 1), ...), as DLRM's interaction without
    the diagonal. Differentiable in ``x``."""
    return _DOT_INTERACTION(x)


def dlrm_interaction(dense: Tensor, sparse: Tensor, pad_to: int = 1, order: Optional[Sequence[int]] = None) -> Tensor:
    """DLRM's top-MLP input in one pass: ``cat([dense, dot_interaction(cat([dense, sparse]))])``.

    ``dense`` is the bottom MLP's output ``[B, D]``; ``sparse`` holds the T pooled features ``[B, T * D]``
    (as :class:`mprec.nn.EmbeddingBagCollection` returns them) or ``[B, T, D]``. The result is
    ``[B, D + (T + 1) T / 2]``, with zero columns appended up to a multiple of ``pad_to`` (GEMMs run faster
    on aligned widths: :class:`mprec.models.DLRM` pads to 8), in ``dense``'s dtype. Each input is read in
    its own dtype, so a bf16 bottom MLP (autocast) and fp32 tables meet with no conversion pass.

    ``order`` (a permutation of ``range(T)``): the interaction's table ``t`` is ``sparse``'s vector
    ``order[t]``, as if ``sparse`` were ``sparse.view(B, T, D)[:, order]``, but read in place; the gradient
    goes back to the same places. A sharded collection returns its vectors rank by rank; this reads them in
    the model's order without a reordering copy each way. Differentiable in both inputs."""
    return _DLRM_INTERACTION(dense, sparse, pad_to, None if order is None else list(order))


def dlrm_interaction_width(dim: int, tables: int, pad_to: int = 1) -> int:
    """The width of :func:`dlrm_interaction`'s output."""
    width = dim + (tables + 1) * tables // 2
    return (width + pad_to - 1) // pad_to * pad_to


def _check_float(op: str, name: str, t: Tensor) -> None:
    if t.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise ValueError(f"{op}: {name} must be float32, float64, bfloat16 or float16, got {dtype_name(t.dtype)}")


def _check_x(op: str, x: Tensor) -> None:
    _check_float(op, "x", x)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be [B, F, D], got shape {sizes(x)}")
    if x.shape[1] < 2:
        raise ValueError(f"{op}: x needs at least 2 features to interact, got {x.shape[1]}")


def _check_dlrm(op: str, dense: Tensor, sparse: Tensor) -> tuple[int, int, int]:
    """(batch, tables, dim), after csrc/cpu/interaction.cpp check_dlrm."""
    _check_float(op, "dense", dense)
    _check_float(op, "sparse", sparse)
    if dense.dim() != 2:
        raise ValueError(f"{op}: dense must be [B, D], got shape {sizes(dense)}")
    batch, dim = dense.shape
    if dim < 1:
        raise ValueError(f"{op}: dense must have at least one column, got shape {sizes(dense)}")
    if sparse.dim() not in (2, 3):
        raise ValueError(f"{op}: sparse must be [B, T * D] or [B, T, D], got shape {sizes(sparse)}")
    if sparse.shape[0] != batch:
        raise ValueError(f"{op}: sparse has {sparse.shape[0]} rows but dense has {batch}")
    if sparse.dim() == 3:
        if sparse.shape[2] != dim:
            raise ValueError(f"{op}: sparse's feature width {sparse.shape[2]} differs from dense's {dim}")
    elif sparse.shape[1] % dim:
        raise ValueError(f"{op}: sparse's width {sparse.shape[1]} is not a multiple of dense's width {dim}")
    tables = sparse.shape[1] if sparse.dim() == 3 else sparse.shape[1] // dim
    if tables < 1:
        raise ValueError(f"{op}: sparse needs at least one table, got shape {sizes(sparse)}")
    return batch, tables, dim


@register_fake("mprec::dot_interaction")
def _dot_interaction_fake(x):
    _check_x("mprec::dot_interaction", x)
    f = x.shape[1]
    return x.new_empty((x.shape[0], f * (f - 1) // 2))


@register_fake("mprec::dot_interaction_backward")
def _dot_interaction_backward_fake(grad, x):
    _check_x("mprec::dot_interaction_backward", x)
    _check_float("mprec::dot_interaction_backward", "grad", grad)
    return x.new_empty(x.shape)




# csrc/cpu/interaction.cpp kMaxPadTo: padding is for GEMM alignment; past this it would only allocate zeros.
_MAX_PAD_TO = 1024


def _check_pad_to(op: str, pad_to: int) -> None:
    if not 1 <= pad_to <= _MAX_PAD_TO:
        raise ValueError(f"{op}: pad_to must be in [1, {_MAX_PAD_TO}], got {pad_to}")


def _check_order(op: str, order: Optional[Sequence[int]], tables: int) -> None:
    """After csrc/cpu/interaction.cpp checked_order: each of sparse's vectors listed once."""
    if order is None:
        return
    if len(order) != tables:
        raise ValueError(f"{op}: order must list each of sparse's {tables} vectors once, got {len(order)} entries")
    seen = set()
    for t, v in enumerate(order):
        if not 0 <= v < tables:
            raise ValueError(f"{op}: order[{t}] is {v}, not one of sparse's {tables} vectors")
        if v in seen:
            raise ValueError(f"{op}: order[{t}] repeats vector {v} (order must list each vector once)")
        seen.add(v)


@register_fake("mprec::dlrm_interaction")
def _dlrm_interaction_fake(dense, sparse, pad_to=1, order=None):
    B, T, D = _check_dlrm("mprec::dlrm_interaction", dense, sparse)
    _check_pad_to("mprec::dlrm_interaction", pad_to)
    _check_order("mprec::dlrm_interaction", order, T)
    return dense.new_empty((B, dlrm_interaction_width(D, T, pad_to)))


@register_fake("mprec::dlrm_interaction_backward")
def _dlrm_interaction_backward_fake(grad, dense, sparse, pad_to=1, order=None):
    _, T, _ = _check_dlrm("mprec::dlrm_interaction_backward", dense, sparse)
    _check_float("mprec::dlrm_interaction_backward", "grad", grad)
    _check_pad_to("mprec::dlrm_interaction_backward", pad_to)
    _check_order("mprec::dlrm_interaction_backward", order, T)
    return dense.new_empty(dense.shape), sparse.new_empty(sparse.shape)



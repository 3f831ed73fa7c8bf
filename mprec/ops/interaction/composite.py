"""The interaction family's aten compositions: the CUDA kernels of the dot and DLRM interactions (their inputs are
small next to the tables). See :mod:`mprec.ops.composite`."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from ..spelling import sizes
from . import _check_dlrm, _check_float, _check_order, _check_pad_to, _check_x, dlrm_interaction_width

__all__ = ["KERNELS"]


# As the CPU kernels: float32 and bfloat16 (and float16) computed in float32, everything in float64 when any
# operand is float64, results rounded once to the output's dtype. Here the pairs come out of a batched Gram
# matrix (bmm), which computes each pair twice but is one GEMM.

def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _pair_indices(features: int, device) -> Tensor:
    """Pairs (i, j), j < i, row by row: (1, 0), (2, 0), (2, 1), ..."""
    return torch.tril_indices(features, features, offset=-1, device=device)


def _pairs(x: Tensor) -> Tensor:
    """[B, F, D] -> [B, F (F - 1) / 2]."""
    i, j = _pair_indices(x.shape[1], x.device)
    return torch.bmm(x, x.transpose(1, 2))[:, i, j]


def _pairs_backward(grad: Tensor, x: Tensor) -> Tensor:
    """Gradient of _pairs: row i of x gets sum_j g_ij x_j over the symmetric pair gradients g."""
    features = x.shape[1]
    i, j = _pair_indices(features, x.device)
    g = x.new_zeros((x.shape[0], features, features))
    g[:, i, j] = grad
    return torch.bmm(g + g.transpose(1, 2), x)




def dot_interaction(x: Tensor) -> Tensor:
    _check_x("mprec::dot_interaction", x)
    return _pairs(x.to(_compute_dtype(x))).to(x.dtype)


def dot_interaction_backward(grad: Tensor, x: Tensor) -> Tensor:
    op = "mprec::dot_interaction_backward"
    _check_x(op, x)
    _check_float(op, "grad", grad)
    batch, features = x.shape[0], x.shape[1]
    pairs = features * (features - 1) // 2
    if grad.dim() != 2 or grad.shape[0] != batch or grad.shape[1] != pairs:
        raise ValueError(f"{op}: grad must have shape [{batch}, {pairs}], got {sizes(grad)}")
    acc = _compute_dtype(x, grad)
    return _pairs_backward(grad.to(acc), x.to(acc)).to(x.dtype)




def _checked_pad_to(op: str, pad_to: int) -> int:
    _check_pad_to(op, pad_to)
    return pad_to


def _tables(sparse: Tensor, acc: torch.dtype, batch: int, tables: int, dim: int,
            order: Optional[Sequence[int]]) -> Tensor:
    """sparse's vectors [B, T, D] in the interaction's order."""
    vectors = sparse.to(acc).reshape(batch, tables, dim)
    return vectors if order is None else vectors.index_select(1, torch.tensor(order, device=sparse.device))


def dlrm_interaction(dense: Tensor, sparse: Tensor, pad_to: int = 1, order: Optional[Sequence[int]] = None) -> Tensor:
    op = "mprec::dlrm_interaction"
    batch, tables, dim = _check_dlrm(op, dense, sparse)
    width = dlrm_interaction_width(dim, tables, _checked_pad_to(op, pad_to))
    _check_order(op, order, tables)
    acc = _compute_dtype(dense, sparse)
    features = torch.cat([dense.to(acc).unsqueeze(1), _tables(sparse, acc, batch, tables, dim, order)], dim=1)
    out = torch.cat([features[:, 0], _pairs(features)], dim=1)
    return F.pad(out, (0, width - out.shape[1])).to(dense.dtype)


def dlrm_interaction_backward(grad: Tensor, dense: Tensor, sparse: Tensor, pad_to: int = 1,
                              order: Optional[Sequence[int]] = None) -> tuple[Tensor, Tensor]:
    op = "mprec::dlrm_interaction_backward"
    batch, tables, dim = _check_dlrm(op, dense, sparse)
    _check_float(op, "grad", grad)
    width = dlrm_interaction_width(dim, tables, _checked_pad_to(op, pad_to))  # the padding's gradient is unused
    _check_order(op, order, tables)
    if grad.dim() != 2 or grad.shape[0] != batch or grad.shape[1] != width:
        raise ValueError(f"{op}: grad must have shape [{batch}, {width}], got {sizes(grad)}")
    acc = _compute_dtype(dense, sparse, grad)
    features = torch.cat([dense.to(acc).unsqueeze(1), _tables(sparse, acc, batch, tables, dim, order)], dim=1)
    g = grad.to(acc)
    grad_features = _pairs_backward(g.narrow(1, dim, (tables + 1) * tables // 2), features)
    grad_dense = grad_features[:, 0] + g[:, :dim]
    grad_tables = grad_features[:, 1:]
    if order is not None:  # back to sparse's places
        grad_tables = grad_tables.index_select(1, torch.argsort(torch.tensor(order, device=sparse.device)))
    return grad_dense.to(dense.dtype), grad_tables.reshape(sparse.shape).to(sparse.dtype)


KERNELS: dict[str, Callable] = {
    "dot_interaction": dot_interaction,
    "dot_interaction_backward": dot_interaction_backward,
    "dlrm_interaction": dlrm_interaction,
    "dlrm_interaction_backward": dlrm_interaction_backward,
}

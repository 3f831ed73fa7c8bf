"""The embedding-bag family's aten compositions: the CUDA kernels of its ops without a Triton or CUDA C++ one
(the backward ops but the dense one, the fused update, row-wise int8). See :mod:`mprec.ops.composite`."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..arguments import first_true
from ..spelling import dtype_name, float_text, sizes
from . import (FUSED_OPTIMIZERS, _accumulation_dtype, _check_dequantize_input, _check_grad,
               _checked_per_sample_weights, _check_quantize_input, batched_backward_bags, check_backward,
               check_first_offset, raise_bag_error, single_backward_bags)

__all__ = ["KERNELS"]

_SUM, _MEAN, _MAX = 0, 1, 2


class _Table(NamedTuple):
    weight: Tensor
    padding_idx: int  # -1: none
    col: int  # first column in grad


def _raise_bag_error(op: str, tables: list[_Table], indices: Tensor, offsets: Tensor, bags: int) -> None:
    """The CPU kernel's error for the first bad offset or index, in its order and its words."""
    raise_bag_error(op, indices, offsets, bags, [t.weight.shape[0] for t in tables], [t.padding_idx for t in tables])


def _single_call(op: str, weight: Tensor, indices: Tensor, offsets: Tensor, mode: int, padding_idx: int,
                 include_last_offset: bool) -> tuple[list[_Table], int]:
    """The single-table backward ops' argument checks (csrc/cpu single_call): (tables, bags)."""
    bags = single_backward_bags(op, weight, indices, offsets, mode, padding_idx, include_last_offset)
    tables = [_Table(weight, padding_idx, 0)]
    check_first_offset(op, offsets)
    return tables, bags


def _batched_call(op: str, weights: Sequence[Tensor], indices: Tensor, offsets: Tensor, mode: int,
                  padding_idx: Sequence[int]) -> tuple[list[_Table], int]:
    """The batched ops' argument checks (csrc/cpu batched_call): (tables, bags per table)."""
    bags = batched_backward_bags(op, weights, indices, offsets, mode, padding_idx)
    tables, col = [], 0
    for t, w in enumerate(weights):
        tables.append(_Table(w, padding_idx[t] if len(padding_idx) else -1, col))
        col += w.shape[1]
    check_first_offset(op, offsets)
    return tables, bags


class _Lookups(NamedTuple):
    """The non-padding lookups of every bag, in bag order (lookup order within a bag); those of table t
    are [cuts[t], cuts[t + 1])."""
    positions: Tensor  # int64, into indices
    rows: Tensor  # int64
    bags: Tensor  # int64, global bag (t * bags + b)
    cuts: list[int]
    counts: Tensor  # int64 [T * bags]: non-padding lookups per bag


def _lookups(op: str, tables: list[_Table], indices: Tensor, offsets: Tensor, bags: int) -> _Lookups:
    """Validates every bag's bounds and indices, then lists the lookups.

    One sync says whether anything is wrong; if so, raise_bag_error finds the first error (on the host).
    When every bag is well formed, the bags tile indices[0 : ends[-1]] in order, so the lookups are
    positions and their bags come from a searchsorted.
    """
    device = indices.device
    n, num_tables = indices.numel(), len(tables)
    total = num_tables * bags
    o = offsets.to(torch.int64)
    starts, ends = o[:total], o[1 : total + 1]
    if ends.numel() < total:  # one table without include_last_offset: the last bag runs to the end
        ends = torch.cat([ends, o.new_full((1,), n)])
    covered = ends[-1] if total else o.new_zeros(())  # where the last bag ends
    positions = torch.arange(n, device=device)
    in_bags = positions < covered
    # With a malformed bag the ends are unsorted and `bag` is meaningless, but the error is raised anyway;
    # the clamp keeps the table lookups below inside their tensors.
    bag = torch.searchsorted(ends, positions, right=True)
    table = bag.clamp(max=max(total - 1, 0)) // max(bags, 1)
    idx = indices.to(torch.int64)
    pads = torch.tensor([t.padding_idx for t in tables], device=device)[table]
    num_rows = torch.tensor([t.weight.shape[0] for t in tables], device=device)[table]
    keep = in_bags & ((idx != pads) | (pads < 0))  # no padding row (-1): index -1 is an error like any other
    bad_bags = (ends > n) | (ends < starts) | (starts < 0)
    bad_indices = keep & ((idx < 0) | (idx >= num_rows))
    if bool(bad_bags.any() | bad_indices.any()):
        _raise_bag_error(op, tables, indices, offsets, bags)
    kept = keep.nonzero().squeeze(1)
    kept_before = torch.cat([o.new_zeros(1), keep.cumsum(0)])
    counts = kept_before[ends] - kept_before[starts]
    cuts = [0] * (num_tables + 1)
    if bags:
        cuts = torch.cat([o.new_zeros(1), counts.view(num_tables, bags).sum(1).cumsum(0)]).tolist()
    return _Lookups(kept, idx[kept], bag[kept], cuts, counts)


def _scales(lookups: _Lookups, mode: int, psw: Optional[Tensor], acc: torch.dtype) -> Optional[Tensor]:
    """Each lookup's factor in its bag: 1 / count in mean mode, its per-sample weight, or None for 1."""
    if mode == _MEAN:
        return (1 / lookups.counts.to(acc))[lookups.bags]  # as the CPU: the reciprocal, then a product
    if psw is not None:
        return psw[lookups.positions]
    return None


def _contributions(grad: Tensor, table: _Table, t: int, bags: int, lookups: _Lookups,
                   scales: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """(rows, scale * grad[bag, table's columns]) of table t's lookups."""
    part = slice(lookups.cuts[t], lookups.cuts[t + 1])
    values = grad.narrow(1, table.col, table.weight.shape[1]).index_select(0, lookups.bags[part] - t * bags)
    if scales is not None:
        values = values * scales[part].unsqueeze(1)
    return lookups.rows[part], values


def _sparse_backward(op: str, grad: Tensor, tables: list[_Table], bags: int, indices: Tensor, offsets: Tensor,
                     mode: int, per_sample_weights: Optional[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    check_backward(op, "sparse", grad, [t.weight for t in tables], indices, mode, bags, per_sample_weights)
    acc = _accumulation_dtype(tables[0].weight)
    psw = None if per_sample_weights is None else per_sample_weights.to(acc)
    lookups = _lookups(op, tables, indices, offsets, bags)
    g = grad.to(acc)
    scales = _scales(lookups, mode, psw, acc)
    rows, values = [], []
    for t, table in enumerate(tables):
        r, v = _contributions(g, table, t, bags, lookups, scales)
        rows.append(r)
        values.append(v.to(table.weight.dtype))
    return rows, values


def embedding_bag_sparse_backward(grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor, mode: int,
                                  per_sample_weights: Optional[Tensor], padding_idx: int,
                                  include_last_offset: bool) -> tuple[Tensor, Tensor]:
    op = "mprec::embedding_bag_sparse_backward"
    tables, bags = _single_call(op, weight, indices, offsets, mode, padding_idx, include_last_offset)
    rows, values = _sparse_backward(op, grad, tables, bags, indices, offsets, mode, per_sample_weights)
    return rows[0], values[0]


def batched_embedding_bag_sparse_backward(grad: Tensor, weights: list[Tensor], indices: Tensor, offsets: Tensor,
                                          mode: int, per_sample_weights: Optional[Tensor],
                                          padding_idx: list[int]) -> tuple[list[Tensor], list[Tensor]]:
    op = "mprec::batched_embedding_bag_sparse_backward"
    tables, bags = _batched_call(op, weights, indices, offsets, mode, padding_idx)
    return _sparse_backward(op, grad, tables, bags, indices, offsets, mode, per_sample_weights)


def _per_sample_weights_backward(op: str, grad: Tensor, tables: list[_Table], bags: int, indices: Tensor,
                                 offsets: Tensor, mode: int) -> Tensor:
    check_backward(op, "per_sample_weights", grad, [t.weight for t in tables], indices, mode, bags)
    lookups = _lookups(op, tables, indices, offsets, bags)
    acc = _accumulation_dtype(tables[0].weight)
    g = grad.to(acc)
    # d out[bag] / d psw[i] = <grad[bag], weight[row i]>; 0 for padding lookups and lookups in no bag.
    out = g.new_zeros(indices.numel())
    for t, table in enumerate(tables):
        rows, values = _contributions(g, table, t, bags, lookups, None)
        dots = (values * table.weight.index_select(0, rows).to(acc)).sum(1)
        out.index_copy_(0, lookups.positions[lookups.cuts[t] : lookups.cuts[t + 1]], dots)
    return out


def embedding_bag_per_sample_weights_backward(grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor,
                                              mode: int, padding_idx: int, include_last_offset: bool) -> Tensor:
    op = "mprec::embedding_bag_per_sample_weights_backward"
    tables, bags = _single_call(op, weight, indices, offsets, mode, padding_idx, include_last_offset)
    return _per_sample_weights_backward(op, grad, tables, bags, indices, offsets, mode)


def batched_embedding_bag_per_sample_weights_backward(grad: Tensor, weights: list[Tensor], indices: Tensor,
                                                      offsets: Tensor, mode: int, padding_idx: list[int]) -> Tensor:
    op = "mprec::batched_embedding_bag_per_sample_weights_backward"
    tables, bags = _batched_call(op, weights, indices, offsets, mode, padding_idx)
    return _per_sample_weights_backward(op, grad, tables, bags, indices, offsets, mode)


def batched_embedding_bag_update(weights: list[Tensor], state: list[Tensor], grad: Tensor, indices: Tensor,
                                 offsets: Tensor, pooling_mode: int = 0, per_sample_weights: Optional[Tensor] = None,
                                 padding_idx: Sequence[int] = (), optimizer: str = "sgd", lr: float = 0.01,
                                 eps: float = 1e-8) -> None:
    """The backward fused with SGD or row-wise Adagrad, in place: each looked-up row sums its contributions
    (into one row per distinct row looked up, so no [rows, D] gradient exists) and is updated once."""
    op = "mprec::batched_embedding_bag_update"
    if optimizer not in FUSED_OPTIMIZERS:
        raise ValueError(f"{op}: optimizer must be 'sgd' or 'rowwise_adagrad', got '{optimizer}'")
    tables, bags = _batched_call(op, weights, indices, offsets, pooling_mode, padding_idx)
    if pooling_mode == _MAX:
        raise ValueError(f"{op}: fused optimizers support mode sum (0) and mean (1), got max (2)")
    _check_grad(op, grad, bags, sum(t.weight.shape[1] for t in tables))
    for t, w in enumerate(weights):
        if not w.is_contiguous():
            raise ValueError(f"{op}: weights[{t}] must be contiguous (it is updated in place)")
    if not (lr >= 0 and lr != float("inf")):
        raise ValueError(f"{op}: lr must be finite and >= 0, got {float_text(lr)}")
    if not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {float_text(eps)}")
    acc = _accumulation_dtype(weights[0])
    if optimizer == "rowwise_adagrad":
        if len(state) != len(weights):
            raise ValueError(f"{op}: rowwise_adagrad needs one state tensor per table ({len(weights)}), "
                             f"got {len(state)}")
        for t, s in enumerate(state):
            if not (s.dim() == 1 and s.shape[0] == weights[t].shape[0] and s.dtype == acc and s.is_contiguous()):
                raise ValueError(f"{op}: state[{t}] must be a contiguous {dtype_name(acc)} tensor of "
                                 f"{weights[t].shape[0]} entries (one per row), got {dtype_name(s.dtype)} {sizes(s)}")
    elif len(state):
        raise ValueError(f"{op}: sgd takes no state, got {len(state)} tensors")
    psw = _checked_per_sample_weights(op, per_sample_weights, pooling_mode, indices.numel(), acc)
    # Every lookup is validated before any row changes, so bad input leaves every table as it was.
    lookups = _lookups(op, tables, indices, offsets, bags)
    g = grad.to(acc)
    scales = _scales(lookups, pooling_mode, psw, acc)
    with torch.no_grad():  # the tables are parameters; the update is not part of any graph
        for t, table in enumerate(tables):
            rows, values = _contributions(g, table, t, bags, lookups, scales)
            if rows.numel() == 0:
                continue
            distinct, group = torch.unique(rows, return_inverse=True)
            # Accumulating index_put rather than index_add: deterministic on CUDA (it sorts the rows instead
            # of adding with atomics), so a training step is reproducible, as it is on CPU.
            step_rows = values.new_zeros((distinct.numel(), values.shape[1])).index_put_((group,), values,
                                                                                         accumulate=True)
            updated = table.weight.index_select(0, distinct).to(acc)
            if optimizer == "rowwise_adagrad":
                s = state[t].index_select(0, distinct) + (step_rows * step_rows).sum(1) / values.shape[1]
                state[t].index_copy_(0, distinct, s)
                updated -= (lr / (s.sqrt() + eps)).unsqueeze(1) * step_rows
            else:
                updated -= lr * step_rows
            table.weight.index_copy_(0, distinct, updated.to(table.weight.dtype))


# --- row-wise int8 ------------------------------------------------------------------------------------------

def quantize_rowwise_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    op = "mprec::quantize_rowwise_int8"
    _check_quantize_input(op, weight)
    w = weight.float()  # as the CPU kernel: float64 weights are rounded first, so 1e300 is not finite
    first = int(first_true(~w.isfinite().flatten()))
    if first < w.numel():
        r, d = divmod(first, w.shape[1])
        raise RuntimeError(f"{op}: weight[{r}, {d}] = {float_text(float(w[r, d]))} is not finite")
    # Per row: bias = min, scale = (max - min) / 255, q = round((x - bias) / scale), as the CPU kernel.
    lo = w.amin(dim=1, keepdim=True) if w.shape[1] else w.new_zeros(w.shape[0], 1)
    hi = w.amax(dim=1, keepdim=True) if w.shape[1] else w.new_zeros(w.shape[0], 1)
    scale = (hi - lo) / 255.0
    q = torch.where(scale > 0, torch.round((w - lo) / torch.where(scale > 0, scale, 1.0)), 0.0)
    return q.clamp(0, 255).to(torch.uint8), torch.cat([scale, lo], dim=1)


def dequantize_rowwise_int8(qweight: Tensor, scale_bias: Tensor) -> Tensor:
    _check_dequantize_input("mprec::dequantize_rowwise_int8", qweight, scale_bias)
    # The CPU kernel's formula, one aten op: bias + q * scale.
    return torch.addcmul(scale_bias[:, 1:], qweight.float(), scale_bias[:, :1])


KERNELS: dict[str, Callable] = {
    "embedding_bag_sparse_backward": embedding_bag_sparse_backward,
    "batched_embedding_bag_sparse_backward": batched_embedding_bag_sparse_backward,
    "embedding_bag_per_sample_weights_backward": embedding_bag_per_sample_weights_backward,
    "batched_embedding_bag_per_sample_weights_backward": batched_embedding_bag_per_sample_weights_backward,
    "batched_embedding_bag_update": batched_embedding_bag_update,
    "quantize_rowwise_int8": quantize_rowwise_int8,
    "dequantize_rowwise_int8": dequantize_rowwise_int8,
}

"""Triton kernels for the embedding-bag ops: pooled forward and dense weight gradient.

One kernel serves one table and T tables alike (FBGEMM's TBE layout): the tables are described by
per-table arrays, and program ``(g, j)`` pools bag ``g = t * B + b`` over columns ``j * BLOCK_D ...`` of
table ``t``. The tables are addressed FBGEMM's way, as element offsets from one base pointer (the first
table's), so the base is a real kernel argument whose alignment Triton can see and vectorise on.

Invalid input never leads to a read outside a tensor: a lookup whose index is neither the table's
padding row nor in ``[0, rows)`` is not read, and bad offsets pool nothing. Either sets ``error[0]``; the
caller reads that flag after the launch and raises the CPU kernel's message (:mod:`mprec.ops.gpu`).

The launchers work on any device Triton runs on, including CPU tensors under ``TRITON_INTERPRET=1``,
which is how the kernels are tested without a GPU.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["TableArgs", "table_args", "default_blocks", "pool", "pool_backward", "interpreting"]

_TL_DTYPES = {
    torch.float32: tl.float32,
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float64: tl.float64,
}


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (on CPU tensors) rather than compiling them."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _not_padding(idx, padding):
    """Lookups that are not the padding row; with no padding row (-1), every lookup, -1 included (an error).
    The padding test is made a block, like ``idx``: Triton's interpreter cannot or a block with a scalar."""
    return (idx != padding) | (tl.zeros_like(idx) + padding < 0)


@triton.jit
def _bag_bounds(offsets_ptr, g, num_offsets, num_indices, error_ptr):
    """``[start, end)`` of bag ``g``; an empty range, with the error flag set, when the offsets are bad."""
    start = tl.load(offsets_ptr + g).to(tl.int64)
    has_next = g + 1 < num_offsets
    end = tl.load(offsets_ptr + g + 1, mask=has_next, other=0).to(tl.int64)
    end = tl.where(has_next, end, num_indices)
    bad = (start < 0) | (end < start) | (end > num_indices) | ((g == 0) & (start != 0))
    if bad:
        tl.store(error_ptr, 1)
        end = start
    return start, end


@triton.jit
def _program_slot(table_dims_ptr, bags_per_table, DIM_MULTIPLE: tl.constexpr, BLOCK_D: tl.constexpr):
    """(bag g = t * B + b, table t, bag b of the table, the table's width, this program's columns)."""
    g = tl.program_id(0).to(tl.int64)
    t = g // bags_per_table
    b = g - t * bags_per_table
    dim = tl.multiple_of(tl.load(table_dims_ptr + t), DIM_MULTIPLE)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    return g, t, b, dim, cols


@triton.jit
def _lookups(indices_ptr, positions, end, rows, padding, error_ptr):
    """(rows, which of them to read) for the lookups at ``positions`` of a bag ending at ``end``; an index
    that is neither the padding row nor in ``[0, rows)`` is not read and sets the error flag."""
    in_bag = positions < end
    idx = tl.load(indices_ptr + positions, mask=in_bag, other=0).to(tl.int64)
    looked_up = in_bag & _not_padding(idx, padding)
    if tl.max((looked_up & ((idx < 0) | (idx >= rows))).to(tl.int32), axis=0) > 0:
        tl.store(error_ptr, 1)
    return idx, looked_up & (idx >= 0) & (idx < rows)


@triton.jit
def _embedding_bag_kernel(
    out_ptr, max_indices_ptr, weights_ptr, indices_ptr, offsets_ptr, per_sample_weights_ptr,
    table_offsets_ptr, table_rows_ptr, table_dims_ptr, table_cols_ptr, table_padding_ptr, error_ptr,
    bags_per_table, num_offsets, num_indices, out_stride,
    MODE: tl.constexpr, HAS_PER_SAMPLE_WEIGHTS: tl.constexpr, ACC_DTYPE: tl.constexpr, DIM_MULTIPLE: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, ARGS: tl.constexpr,
):
    g, t, b, dim, cols = _program_slot(table_dims_ptr, bags_per_table, DIM_MULTIPLE, BLOCK_D)
    if tl.program_id(1) * BLOCK_D < dim:
        col_mask = cols < dim
        rows = tl.load(table_rows_ptr + t)
        padding = tl.load(table_padding_ptr + t)
        weight_base = weights_ptr + tl.multiple_of(tl.load(table_offsets_ptr + t), DIM_MULTIPLE)
        start, end = _bag_bounds(offsets_ptr, g, num_offsets, num_indices, error_ptr)

        if MODE == 2:
            acc = tl.full([BLOCK_D], float("-inf"), ACC_DTYPE)
            arg = tl.full([BLOCK_D], -1, tl.int64)
        else:
            acc = tl.zeros([BLOCK_D], ACC_DTYPE)
        count = 0
        lanes = tl.arange(0, BLOCK_L)
        for i0 in range(start, end, BLOCK_L):
            positions = i0 + lanes
            idx, valid = _lookups(indices_ptr, positions, end, rows, padding, error_ptr)
            count += tl.sum(valid.to(tl.int32), axis=0)
            mask = valid[:, None] & col_mask[None, :]
            values = tl.load(weight_base + idx[:, None] * dim + cols[None, :], mask=mask, other=0.0).to(ACC_DTYPE)
            if MODE == 2:
                # The CPU kernels keep the first strictly greater value: NaN never wins, -inf never beats
                # the start value, so both count as -inf here and the first maximum's row is kept.
                values = tl.where(mask & (values == values), values, float("-inf"))
                block_max = tl.max(values, axis=0)
                better = block_max > acc
                acc = tl.where(better, block_max, acc)
                if ARGS:  # ARGS: the call wants the argmax (max_indices)
                    first = tl.argmax(values, axis=0, tie_break_left=True)
                    block_arg = tl.sum(tl.where(lanes[:, None] == first[None, :], idx[:, None], 0), axis=0)
                    arg = tl.where(better, block_arg, arg)
            else:
                if HAS_PER_SAMPLE_WEIGHTS:
                    scale = tl.load(per_sample_weights_ptr + positions, mask=valid, other=0.0).to(ACC_DTYPE)
                    values = values * scale[:, None]
                acc += tl.sum(values, axis=0)

        # Table t's columns of the output; the first is a sum of widths, so a multiple of DIM_MULTIPLE too.
        out_cols = tl.multiple_of(tl.load(table_cols_ptr + t), DIM_MULTIPLE) + cols
        if MODE == 2:
            acc = tl.where(count > 0, acc, 0.0)
            if ARGS:
                tl.store(max_indices_ptr + b * out_stride + out_cols, arg, mask=col_mask)
        if MODE == 1:
            acc = acc / tl.maximum(count, 1).to(ACC_DTYPE)
        tl.store(out_ptr + b * out_stride + out_cols, acc.to(out_ptr.dtype.element_ty), mask=col_mask)


@triton.jit
def _embedding_bag_backward_kernel(
    grad_weights_ptr, grad_ptr, max_indices_ptr, indices_ptr, offsets_ptr, per_sample_weights_ptr,
    table_offsets_ptr, table_rows_ptr, table_dims_ptr, table_cols_ptr, table_padding_ptr, error_ptr,
    bags_per_table, num_offsets, num_indices, grad_stride,
    MODE: tl.constexpr, HAS_PER_SAMPLE_WEIGHTS: tl.constexpr, ACC_DTYPE: tl.constexpr, DIM_MULTIPLE: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    g, t, b, dim, cols = _program_slot(table_dims_ptr, bags_per_table, DIM_MULTIPLE, BLOCK_D)
    if tl.program_id(1) * BLOCK_D < dim:
        col_mask = cols < dim
        rows = tl.load(table_rows_ptr + t)
        grad_base = grad_weights_ptr + tl.multiple_of(tl.load(table_offsets_ptr + t), DIM_MULTIPLE)
        grad_cols = b * grad_stride + tl.multiple_of(tl.load(table_cols_ptr + t), DIM_MULTIPLE) + cols
        grad = tl.load(grad_ptr + grad_cols, mask=col_mask, other=0.0).to(ACC_DTYPE)
        if MODE == 2:
            # Each column's gradient goes to the row that won it in the forward pass (-1: an empty bag).
            row = tl.load(max_indices_ptr + grad_cols, mask=col_mask, other=-1)
            if tl.max(((row < -1) | (row >= rows)).to(tl.int32), axis=0) > 0:
                tl.store(error_ptr, 1)
            hit = col_mask & (row >= 0) & (row < rows)
            tl.atomic_add(grad_base + row * dim + cols, grad, mask=hit, sem="relaxed")
        else:
            padding = tl.load(table_padding_ptr + t)
            start, end = _bag_bounds(offsets_ptr, g, num_offsets, num_indices, error_ptr)
            lanes = tl.arange(0, BLOCK_L)
            scale_all = 1.0
            if MODE == 1:
                # mean: every lookup gets 1 / (non-padding lookups of the bag); one pass to count them.
                count = 0
                for i0 in range(start, end, BLOCK_L):
                    positions = i0 + lanes
                    in_bag = positions < end
                    idx = tl.load(indices_ptr + positions, mask=in_bag, other=0).to(tl.int64)
                    count += tl.sum((in_bag & _not_padding(idx, padding)).to(tl.int32), axis=0)
                scale_all = 1.0 / tl.maximum(count, 1).to(ACC_DTYPE)
            for i0 in range(start, end, BLOCK_L):
                positions = i0 + lanes
                idx, valid = _lookups(indices_ptr, positions, end, rows, padding, error_ptr)
                if HAS_PER_SAMPLE_WEIGHTS:
                    scale = tl.load(per_sample_weights_ptr + positions, mask=valid, other=0.0).to(ACC_DTYPE)
                else:
                    scale = tl.full([BLOCK_L], 1.0, ACC_DTYPE) * scale_all
                mask = valid[:, None] & col_mask[None, :]
                tl.atomic_add(grad_base + idx[:, None] * dim + cols[None, :], scale[:, None] * grad[None, :],
                              mask=mask, sem="relaxed")


class TableArgs:
    """The per-table arrays the kernels read, built once per call on the tables' device."""

    def __init__(self, base: Tensor, offsets: Tensor, rows: Tensor, dims: Tensor, cols: Tensor, padding: Tensor,
                 dim_multiple: int, max_dim: int, total_dim: int):
        self.base, self.offsets, self.rows, self.dims = base, offsets, rows, dims
        self.cols, self.padding = cols, padding
        self.dim_multiple, self.max_dim, self.total_dim = dim_multiple, max_dim, total_dim


def _dim_multiple(dims: Sequence[int], element_offsets: Sequence[int]) -> int:
    """The largest of 8, 4, 2, 1 that divides every width and table offset: lets Triton vectorise row loads."""
    for v in (8, 4, 2):
        if all(d % v == 0 for d in dims) and all(o % v == 0 for o in element_offsets):
            return v
    return 1


def table_args(weights: Sequence[Tensor], padding_idx: Sequence[int]) -> TableArgs:
    """Describes contiguous ``weights`` (one dtype) as offsets from the first table's data pointer."""
    base = weights[0]
    itemsize = base.element_size()
    element_offsets = []
    for w in weights:
        delta = w.data_ptr() - base.data_ptr()
        # Every tensor's data is aligned to its element size, so the difference is a whole number of elements.
        assert delta % itemsize == 0
        element_offsets.append(delta // itemsize)
    dims = [w.shape[1] for w in weights]
    cols = [0]
    for d in dims[:-1]:
        cols.append(cols[-1] + d)
    pads = list(padding_idx) if len(padding_idx) else [-1] * len(weights)
    device = base.device
    as_tensor = lambda values: torch.tensor(values, dtype=torch.int64).to(device, non_blocking=True)  # noqa: E731
    return TableArgs(base, as_tensor(element_offsets), as_tensor([w.shape[0] for w in weights]), as_tensor(dims),
                     as_tensor(cols), as_tensor(pads), _dim_multiple(dims, element_offsets), max(dims), sum(dims))


def default_blocks(max_dim: int, itemsize: int) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_L, num_warps): a whole row of up to 256 columns per program, and enough lookups in
    flight (a tile of about 4 KiB) to keep the memory system busy."""
    block_d = min(triton.next_power_of_2(max(max_dim, 1)), 256)
    block_l = max(1, min(32, 4096 // (block_d * itemsize)))
    num_warps = 4 if block_d * block_l >= 1024 else 2
    return block_d, triton.next_power_of_2(block_l), num_warps


def _checked_blocks(blocks: tuple[int, int, int]) -> tuple[int, int, int]:
    """A caller's (BLOCK_D, BLOCK_L, num_warps), for measuring launch shapes against the default: any
    powers of two give the same result (columns and lookups are masked), only the speed changes."""
    if len(blocks) != 3 or any(v < 1 or v & (v - 1) for v in blocks):
        raise ValueError(f"blocks must be three powers of two (BLOCK_D, BLOCK_L, num_warps), got {blocks}")
    return tuple(int(v) for v in blocks)


def pool(tables: TableArgs, indices: Tensor, offsets: Tensor, bags: int, mode: int,
         per_sample_weights: Optional[Tensor], error: Tensor,
         blocks: Optional[tuple[int, int, int]] = None, return_max_indices: bool = True) -> tuple[Tensor, Tensor]:
    """Pools ``bags`` bags per table into ``[bags, total_dim]`` (and max_indices in max mode, unless
    ``return_max_indices`` is false: then ``[0, 0]``, and the kernel finds no argmax).

    ``offsets`` holds ``T * bags + 1`` entries, or ``bags`` for one table whose last bag runs to the end
    of ``indices``. Sets ``error[0]`` on invalid input. ``blocks`` replaces the launch shape the launcher
    would choose (benchmarks compare shapes with it).
    """
    base = tables.base
    num_tables = tables.rows.shape[0]
    out = torch.empty((bags, tables.total_dim), dtype=base.dtype, device=base.device)
    args = mode == 2 and return_max_indices
    max_indices = torch.empty((bags, tables.total_dim) if args else (0, 0), dtype=torch.int64, device=base.device)
    if bags == 0 or tables.total_dim == 0:
        return out, max_indices
    acc_dtype = tl.float64 if base.dtype == torch.float64 else tl.float32
    block_d, block_l, num_warps = (_checked_blocks(blocks) if blocks is not None
                                   else default_blocks(tables.max_dim, base.element_size()))
    grid = (num_tables * bags, triton.cdiv(tables.max_dim, block_d))
    _embedding_bag_kernel[grid](
        out, max_indices, base, indices, offsets, per_sample_weights,
        tables.offsets, tables.rows, tables.dims, tables.cols, tables.padding, error,
        bags, offsets.shape[0], indices.shape[0], tables.total_dim,
        MODE=mode, HAS_PER_SAMPLE_WEIGHTS=per_sample_weights is not None, ACC_DTYPE=acc_dtype,
        DIM_MULTIPLE=tables.dim_multiple, BLOCK_L=block_l, BLOCK_D=block_d, ARGS=args, num_warps=num_warps)
    return out, max_indices


def pool_backward(tables: TableArgs, grad: Tensor, indices: Tensor, offsets: Tensor, bags: int, mode: int,
                  per_sample_weights: Optional[Tensor], max_indices: Tensor, error: Tensor) -> list[Tensor]:
    """Dense weight gradients, one ``[rows_t, D_t]`` tensor per table in the table's dtype.

    Lookups add into one float32 (float64 for float64 tables) buffer laid out table after table, with
    atomics: the order of the additions, and so the last bits of a row hit by several lookups, depends on
    the schedule (as in torch's CUDA ``embedding_bag`` backward).
    """
    base = tables.base
    num_tables = tables.rows.shape[0]
    acc_torch = torch.float64 if base.dtype == torch.float64 else torch.float32
    rows = tables.rows.tolist()
    dims = tables.dims.tolist()
    sizes = [r * d for r, d in zip(rows, dims)]
    flat = torch.zeros(sum(sizes), dtype=acc_torch, device=base.device)
    starts = [0]
    for s in sizes[:-1]:
        starts.append(starts[-1] + s)
    if bags > 0 and tables.total_dim > 0:
        grad_offsets = torch.tensor(starts, dtype=torch.int64).to(base.device, non_blocking=True)
        block_d, block_l, num_warps = default_blocks(tables.max_dim, 4)
        grid = (num_tables * bags, triton.cdiv(tables.max_dim, block_d))
        _embedding_bag_backward_kernel[grid](
            flat, grad, max_indices, indices, offsets, per_sample_weights,
            grad_offsets, tables.rows, tables.dims, tables.cols, tables.padding, error,
            bags, offsets.shape[0], indices.shape[0], grad.stride(0),
            MODE=mode, HAS_PER_SAMPLE_WEIGHTS=per_sample_weights is not None,
            ACC_DTYPE=tl.float64 if acc_torch == torch.float64 else tl.float32,
            DIM_MULTIPLE=_dim_multiple(dims, starts), BLOCK_L=block_l, BLOCK_D=block_d, num_warps=num_warps)
    return [flat[s : s + n].view(r, d).to(base.dtype) for s, n, r, d in zip(starts, sizes, rows, dims)]

"""The tests' oracles: pure-aten references for the mprec ops.

Written from the definitions, not from the kernels, with only differentiable aten ops (index_select,
index_add, scatter_reduce, searchsorted), so that tests can compare the kernels, the compositions and the
lowerings against them in float64 and differentiate them with autograd. No library code imports them: what the
library computes in aten ops (the GPU compositions, the lowerings) it writes itself.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from mprec.ops.embedding_bag import mode_number

__all__ = [
    "embedding_bag_reference",
    "batched_embedding_bag_reference",
    "quantize_rowwise_int8_reference",
    "dequantize_rowwise_int8_reference",
    "dhe_hash_reference",
    "dhe_encode_reference",
    "dhe_encode_linear_reference",
    "rowwise_linear_reference",
    "batched_embedding_bag_update_reference",
    "dot_interaction_reference",
    "dlrm_interaction_reference",
    "multiply_shift_reference",
    "cache_table_reference",
    "count_min_reference",
]


def dequantize_rowwise_int8_reference(qweight: Tensor, scale_bias: Tensor, dtype=torch.float32) -> Tensor:
    return qweight.to(dtype) * scale_bias[:, :1].to(dtype) + scale_bias[:, 1:].to(dtype)


def quantize_rowwise_int8_reference(weight: Tensor) -> tuple[Tensor, Tensor]:
    w = weight.float()
    lo = w.amin(dim=1, keepdim=True) if w.shape[1] else w.new_zeros(w.shape[0], 1)
    hi = w.amax(dim=1, keepdim=True) if w.shape[1] else w.new_zeros(w.shape[0], 1)
    scale = (hi - lo) / 255.0
    q = torch.where(scale > 0, torch.round((w - lo) / torch.where(scale > 0, scale, 1.0)), 0.0)
    return q.clamp(0, 255).to(torch.uint8), torch.cat([scale, lo], dim=1)


def _bag_of_lookups(offsets: Tensor, num_indices: int, bags: int, include_last_offset: bool):
    """(first lookup, end of lookups, bag number of each lookup in between)."""
    offsets = offsets.to(torch.int64)
    if include_last_offset:
        ends = offsets[1 : bags + 1]
    else:
        ends = torch.cat([offsets[1:bags], offsets.new_tensor([num_indices])]) if bags else offsets[:0]
    if bags == 0:
        return 0, 0, offsets[:0]
    first, last = int(offsets[0]), int(ends[-1])
    positions = torch.arange(first, last, device=offsets.device)
    return first, last, torch.searchsorted(ends, positions, right=True)


def embedding_bag_reference(
    weight: Tensor,
    indices: Tensor,
    offsets: Tensor,
    mode: Union[str, int] = 0,
    per_sample_weights: Optional[Tensor] = None,
    padding_idx: int = -1,
    include_last_offset: bool = False,
    scale_bias: Optional[Tensor] = None,
    scale_grad_by_freq: bool = False,
) -> Tensor:
    """``embedding_bag`` from its definition; computes in ``weight``'s dtype (float32 for uint8 weights).
    ``scale_grad_by_freq`` divides the gradient each lookup sends to its row by the number of lookups of that
    row in the bags."""
    mode = mode_number("embedding_bag_reference", mode)
    if weight.dtype == torch.uint8:
        weight = dequantize_rowwise_int8_reference(weight, scale_bias)
    bags = offsets.numel() - 1 if include_last_offset else offsets.numel()
    first, last, bag = _bag_of_lookups(offsets, indices.numel(), bags, include_last_offset)
    rows = indices[first:last].to(torch.int64)
    keep = rows != padding_idx
    rows, bag = rows[keep], bag[keep]
    values = weight.index_select(0, rows)
    if scale_grad_by_freq:
        _, inverse, uses = torch.unique(rows, return_inverse=True, return_counts=True)
        scale = (1.0 / uses[inverse].to(weight.dtype)).unsqueeze(1)
        # The same values (v - v is exactly 0), with the gradient to the rows scaled.
        values = values.detach() + (values - values.detach()) * scale
    if per_sample_weights is not None:
        values = values * per_sample_weights[first:last][keep].to(weight.dtype).unsqueeze(1)
    dim = weight.shape[1]
    counts = torch.bincount(bag, minlength=bags)[:bags] if bags else bag.new_zeros(0)
    if mode == 2:
        out = weight.new_full((bags, dim), float("-inf"))
        out = out.scatter_reduce(0, bag.unsqueeze(1).expand(-1, dim), values, "amax", include_self=True)
        return torch.where((counts > 0).unsqueeze(1), out, torch.zeros_like(out))
    out = weight.new_zeros((bags, dim)).index_add(0, bag, values)
    if mode == 1:
        out = out / counts.clamp(min=1).to(out.dtype).unsqueeze(1)
    return out


def batched_embedding_bag_reference(
    weights: Sequence[Tensor],
    indices: Tensor,
    offsets: Tensor,
    mode: Union[str, int] = 0,
    per_sample_weights: Optional[Tensor] = None,
    padding_idx: Sequence[int] = (),
    scale_bias: Optional[Sequence[Tensor]] = None,
) -> Tensor:
    """``batched_embedding_bag`` as T single-table references over the TBE layout."""
    num_tables = len(weights)
    bags = (offsets.numel() - 1) // num_tables
    outs = []
    for t, w in enumerate(weights):
        table_offsets = offsets[t * bags : (t + 1) * bags + 1]
        outs.append(embedding_bag_reference(
            w, indices, table_offsets, mode, per_sample_weights,
            padding_idx[t] if len(padding_idx) else -1, True,
            None if scale_bias is None else scale_bias[t]))
    return torch.cat(outs, dim=1)


# --- DHE ------------------------------------------------------------------------------------------------

def dhe_hash_reference(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int) -> Tensor:
    """int64 ``[*ids.shape, k]``: ``((a_j * (x mod p) + b_j) mod p) mod m``, exact in int64 (p^2 < 2^63)."""
    x = ids.to(torch.int64).remainder(p)
    return (x.unsqueeze(-1) * hash_a + hash_b).remainder(p).remainder(m)


def dhe_encode_reference(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str = "uniform",
                         dtype: torch.dtype = torch.float64) -> Tensor:
    """DHE encodings computed in ``dtype`` (float64 by default) from the integer hashes."""
    h = dhe_hash_reference(ids, hash_a, hash_b, p, m).to(dtype)
    if transform == "uniform":
        return h / (m - 1) * 2 - 1
    if transform != "gaussian":
        raise ValueError(f"dhe_encode_reference: transform must be 'uniform' or 'gaussian', got {transform!r}")
    u = (h + 1) / m
    radius = torch.sqrt(-2 * torch.log(u[..., 0::2]))
    angle = 2 * torch.pi * u[..., 1::2]
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).flatten(-2)


def _activation_reference(x: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return torch.relu(x)
    if activation == "mish":
        return torch.nn.functional.mish(x)
    if activation != "none":
        raise ValueError(f"activation must be 'none', 'relu' or 'mish', got {activation!r}")
    return x


def rowwise_linear_reference(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                             activation: str = "none") -> Tensor:
    return _activation_reference(torch.nn.functional.linear(input, weight, bias), activation)


def dhe_encode_linear_reference(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str,
                                weight: Tensor, bias: Optional[Tensor] = None, activation: str = "none",
                                dtype: torch.dtype = torch.float64) -> Tensor:
    """``activation(encode(ids) @ weight.T + bias)`` with everything in ``dtype`` (float64 by default)."""
    encoded = dhe_encode_reference(ids, hash_a, hash_b, p, m, transform, dtype)
    return rowwise_linear_reference(encoded, weight.to(dtype), None if bias is None else bias.to(dtype), activation)


def batched_embedding_bag_update_reference(weights: Sequence[Tensor], state: Sequence[Tensor], grad: Tensor,
                                           indices: Tensor, offsets: Tensor, mode="sum",
                                           per_sample_weights: Optional[Tensor] = None,
                                           padding_idx=None, optimizer: str = "sgd", lr: float = 0.01,
                                           eps: float = 1e-8) -> tuple[list[Tensor], list[Tensor]]:
    """(new weights, new state) of the fused optimizers, from the dense gradient of the reference
    (autograd through :func:`batched_embedding_bag_reference`), in the weights' dtype or float64."""
    leaves = [w.detach().clone().requires_grad_(True) for w in weights]
    out = batched_embedding_bag_reference(leaves, indices, offsets, mode_number("reference", mode), per_sample_weights,
                                          () if padding_idx is None else padding_idx)
    out.backward(grad.to(out.dtype))
    new_weights, new_state = [], []
    for t, w in enumerate(leaves):
        g = w.grad
        if optimizer == "sgd":
            new_weights.append((w - lr * g).detach())
        else:
            s = state[t].to(g.dtype) + g.pow(2).mean(1)
            new_weights.append((w - lr * g / (s.sqrt() + eps).unsqueeze(1)).detach())
            new_state.append(s)
    return new_weights, new_state


def dot_interaction_reference(x: Tensor) -> Tensor:
    """DLRM's interaction as torch writes it: the Gram matrix by bmm, then its strict lower triangle."""
    f = x.shape[1]
    rows, cols = torch.tril_indices(f, f, offset=-1)
    return torch.bmm(x, x.transpose(1, 2))[:, rows, cols]


def dlrm_interaction_reference(dense: Tensor, sparse: Tensor, pad_to: int = 1, order=None) -> Tensor:
    """``cat([dense, pairs of cat([dense, sparse])])`` in the dtype of ``dense``, as the DLRM reference
    writes its top-MLP input, then zero columns up to a multiple of ``pad_to``; with ``order``, sparse's
    vectors taken in that order first."""
    B, D = dense.shape
    T = sparse.shape[1] if sparse.dim() == 3 else sparse.shape[1] // D
    tables = sparse.reshape(B, T, D) if order is None else sparse.reshape(B, T, D)[:, list(order)]
    features = torch.cat([dense.unsqueeze(1), tables.to(dense.dtype)], dim=1)
    out = torch.cat([dense, dot_interaction_reference(features)], dim=1)
    pad = -out.shape[1] % pad_to
    return torch.nn.functional.pad(out, (0, pad)) if pad else out


# --- MLP (mprec.ops.mlp) ---------------------------------------------------------------------------------
def relu_backward_bias_reference(grad: Tensor, output: Tensor) -> tuple[Tensor, Tensor]:
    """(grad * (output > 0), its column sums): ReLU's backward from the layer's output, then the bias gradient."""
    masked = torch.where(output > 0, grad, torch.zeros((), dtype=grad.dtype))
    return masked, masked.sum(0)


# --- cache (mprec.ops.cache) -----------------------------------------------------------------------------
def multiply_shift_reference(ids: Tensor, multiplier: int, buckets: int) -> Tensor:
    """Bucket ``(id * multiplier mod 2^64) >> (64 - log2 buckets)`` of each id, in Python integers."""
    bits = buckets.bit_length() - 1
    return torch.tensor([((int(i) * multiplier) % (1 << 64)) >> (64 - bits) for i in ids.tolist()], dtype=torch.int64)


def cache_table_reference(table: Tensor) -> dict:
    """``{id: entry}`` held by a cache table, after checking the linear-probing invariant: every key sits
    at the end of an unbroken run of occupied slots from its home slot (so a probe finds it)."""
    from mprec.ops.cache import TABLE_MULTIPLIER

    capacity = table.shape[0]
    keys, entries = table[:, 0].tolist(), table[:, 1].tolist()
    occupied = [i for i, k in enumerate(keys) if k >= 0]
    homes = multiply_shift_reference(torch.tensor([keys[i] for i in occupied], dtype=torch.int64), TABLE_MULTIPLIER,
                                     capacity).tolist()
    held = {}
    for slot, home in zip(occupied, homes):
        for i in range(home, home + (slot - home) % capacity):
            assert keys[i % capacity] >= 0, f"key {keys[slot]} at slot {slot} is cut off from its home {home}"
        assert keys[slot] not in held, f"key {keys[slot]} is held twice"
        held[keys[slot]] = entries[slot]
    assert all(k == -1 for k in keys if k < 0), "a free slot must hold -1"
    return held


def count_min_reference(updates: Sequence[tuple[Tensor, Tensor]], rows: int, buckets: int) -> tuple[Tensor, Tensor]:
    """The sketch after ``(ids, occurrences)`` updates applied in order, and the last update's estimates."""
    from mprec.ops.cache import SKETCH_MULTIPLIERS

    sketch = torch.zeros(rows, buckets, dtype=torch.int64)
    estimate = torch.zeros(0, dtype=torch.int64)
    for ids, occurrences in updates:
        cells = [multiply_shift_reference(ids, SKETCH_MULTIPLIERS[r], buckets) for r in range(rows)]
        estimate = torch.empty(ids.shape, dtype=torch.int64)
        for i in range(ids.numel()):  # in order: an id repeated within an update sees its earlier adds
            for r in range(rows):
                sketch[r, cells[r][i]] += occurrences[i]
            estimate[i] = min(int(sketch[r, cells[r][i]]) for r in range(rows))
    return sketch, estimate


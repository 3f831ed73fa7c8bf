"""Device-agnostic implementations of the mprec ops that get no dedicated GPU kernel.

The ops on the hot path of a DLRM step (the embedding-bag forward and dense backward, ``dhe_encode``,
``dhe_encode_linear``) have Triton/CUDA kernels. The others work on tensors that are small next to the tables
(pooled outputs and their gradients, the lookups of one batch, the interaction's features) or are GEMM-bound
(the DHE decoder's weight gradient, ``rowwise_linear``), so aten's kernels do them about as fast as a
dedicated one would: they are written here once, as compositions of aten ops, and run on any device torch
does. ``KERNELS`` maps each op name to its function, with the op's schema signature, for registration as the
op's CUDA kernel::

    lib = torch.library.Library("mprec", "IMPL")
    for name, fn in KERNELS.items():
        lib.impl(name, fn, "CUDA")

Each function computes what the CPU kernel (``csrc/cpu``) computes: the same shapes, dtypes, accumulation
dtype and order of sparse rows, and the same values up to floating-point rounding. It validates its inputs
with the CPU kernel's checks, in the CPU kernel's order and with its messages (sizes written ``[2, 3]`` and
dtypes ``Float``, as c10 writes them), so an error reads the same on every device; the checks that do not
read the data are the fake kernels' own (``_check_*`` in ``dhe.py`` and ``embedding_bag.py``). The checks that need
data (index ranges, monotone offsets, hash parameters, non-negative ids, finite weights) read it on the
host: a synchronisation, on backward, optimizer and quantization paths only. Of the ops an inference step
runs, ``rowwise_linear``, the interactions and ``dequantize_rowwise_int8`` never synchronise;
``unique_ids`` does, as any unique must (its output size is data). No tensor is indexed before its indices
are known to be in range, so bad input raises the CPU kernel's error rather than a device-side assert.

What a composition does not give: the CPU's ``rowwise_linear`` and ``dhe_encode_linear_backward`` compute
each row independently of the batch and of the thread count (fixed GEMM row blocks), which MP-Cache's
bit-exactness relies on; here the GEMM is aten's, whose kernel choice may depend on the batch.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from .dhe import _check_activation, _check_hash, _check_linear, _check_rowwise_linear, activation as apply_activation
from .dhe import dhe_encode_aten
from .cache import _check_unique_ids
from .embedding_bag import (FUSED_OPTIMIZERS, _accumulation_dtype, _check_grad, _check_per_sample_weights,
                            _check_dequantize_input, _check_quantize_input,
                            batched_backward_bags, check_backward, raise_bag_error, single_backward_bags)
from .interaction import _check_dlrm, _check_float, _check_pad_to, _check_x, dlrm_interaction_width
from .spelling import dtype_name, sizes

__all__ = ["KERNELS"]

_SUM, _MEAN, _MAX = 0, 1, 2
_MODE_NAMES = {_SUM: "sum (0)", _MEAN: "mean (1)", _MAX: "max (2)"}
_INDEX_DTYPES = (torch.int32, torch.int64)
# Ids whose DHE encodings exist at once in dhe_encode_linear_backward: 4096 x k (16 MB at k = 1024 in
# float32), so [N, k] never does, and each chunk's GEMM is still large enough to run at full speed.
_ENCODE_ROWS = 4096


# --- c10's spelling, so that messages match the C++ kernels' ---------------------------------------------

def _float_text(x: float) -> str:
    """A float as std::ostream writes it (6 significant digits; x86's NaN from 0/0 carries its sign)."""
    if x != x:
        return "-nan" if torch.tensor(x).signbit() else "nan"
    return f"{x:g}"


def _first_true(mask: Tensor) -> Tensor:
    """Position of the first True of a 1-D mask, len(mask) when there is none, as a device scalar (no sync).
    The appended True gives empty masks an answer; argmax returns the first of equal maxima."""
    return torch.cat([mask, mask.new_ones(1)]).to(torch.uint8).argmax()


def _at(values: Tensor, position: Tensor) -> Tensor:
    """values[position], or 0 when position is past the end (never reads outside ``values``)."""
    return torch.cat([values, values.new_zeros(1)])[position]


# --- embedding bags -----------------------------------------------------------------------------------------

class _Table(NamedTuple):
    weight: Tensor
    padding_idx: int  # -1: none
    col: int  # first column in grad


def _raise_bag_error(op: str, tables: list[_Table], indices: Tensor, offsets: Tensor, bags: int) -> None:
    """The CPU kernel's error for the first bad offset or index, in its order and its words."""
    raise_bag_error(op, indices, offsets, bags, [t.weight.shape[0] for t in tables], [t.padding_idx for t in tables])


def _check_first_offset(op: str, tables: list[_Table], indices: Tensor, offsets: Tensor, bags: int) -> None:
    """offsets[0] == 0, checked with the arguments (as the CPU kernels do), before the other data."""
    if offsets.numel() > 0 and int(offsets[0]) != 0:
        _raise_bag_error(op, tables, indices, offsets, bags)


def _checked_per_sample_weights(op: str, psw: Optional[Tensor], mode: int, num_indices: int,
                                acc: torch.dtype) -> Optional[Tensor]:
    _check_per_sample_weights(op, psw, mode, num_indices)
    return None if psw is None else psw.to(acc)


def _single_call(op: str, weight: Tensor, indices: Tensor, offsets: Tensor, mode: int, padding_idx: int,
                 include_last_offset: bool) -> tuple[list[_Table], int]:
    """The single-table backward ops' argument checks (csrc/cpu single_call): (tables, bags)."""
    bags = single_backward_bags(op, weight, indices, offsets, mode, padding_idx, include_last_offset)
    tables = [_Table(weight, padding_idx, 0)]
    _check_first_offset(op, tables, indices, offsets, bags)
    return tables, bags


def _batched_call(op: str, weights: Sequence[Tensor], indices: Tensor, offsets: Tensor, mode: int,
                  padding_idx: Sequence[int]) -> tuple[list[_Table], int]:
    """The batched ops' argument checks (csrc/cpu batched_call): (tables, bags per table)."""
    bags = batched_backward_bags(op, weights, indices, offsets, mode, padding_idx)
    tables, col = [], 0
    for t, w in enumerate(weights):
        tables.append(_Table(w, padding_idx[t] if len(padding_idx) else -1, col))
        col += w.shape[1]
    _check_first_offset(op, tables, indices, offsets, bags)
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
                                 offsets: Tensor, mode: int = 0, per_sample_weights: Optional[Tensor] = None,
                                 padding_idx: Sequence[int] = (), optimizer: str = "sgd", lr: float = 0.01,
                                 eps: float = 1e-8) -> None:
    """The backward fused with SGD or row-wise Adagrad, in place: each looked-up row sums its contributions
    (into one row per distinct row looked up, so no [rows, D] gradient exists) and is updated once."""
    op = "mprec::batched_embedding_bag_update"
    if optimizer not in FUSED_OPTIMIZERS:
        raise ValueError(f"{op}: optimizer must be 'sgd' or 'rowwise_adagrad', got '{optimizer}'")
    tables, bags = _batched_call(op, weights, indices, offsets, mode, padding_idx)
    if mode == _MAX:
        raise ValueError(f"{op}: fused optimizers support mode sum (0) and mean (1), got max (2)")
    _check_grad(op, grad, bags, sum(t.weight.shape[1] for t in tables))
    for t, w in enumerate(weights):
        if not w.is_contiguous():
            raise ValueError(f"{op}: weights[{t}] must be contiguous (it is updated in place)")
    if not (lr >= 0 and lr != float("inf")):
        raise ValueError(f"{op}: lr must be finite and >= 0, got {_float_text(lr)}")
    if not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {_float_text(eps)}")
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
    psw = _checked_per_sample_weights(op, per_sample_weights, mode, indices.numel(), acc)
    # Every lookup is validated before any row changes, so bad input leaves every table as it was.
    lookups = _lookups(op, tables, indices, offsets, bags)
    g = grad.to(acc)
    scales = _scales(lookups, mode, psw, acc)
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
    first = int(_first_true(~w.isfinite().flatten()))
    if first < w.numel():
        r, d = divmod(first, w.shape[1])
        raise RuntimeError(f"{op}: weight[{r}, {d}] = {_float_text(float(w[r, d]))} is not finite")
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


# --- DHE ----------------------------------------------------------------------------------------------------

def _check_hashes(op: str, ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str,
                  check_values: bool = True) -> int:
    """csrc/cpu/dhe.cpp checked_hashes: returns k. ``check_values=False`` leaves out the hash parameters' values
    (for kernels that check them as they load them)."""
    k = _check_hash(op, ids, hash_a, hash_b, p, m, transform)
    if check_values:
        check_hash_values(op, hash_a, hash_b, p)
    return k


def check_hash_values(op: str, hash_a: Tensor, hash_b: Tensor, p: int) -> None:
    """a_j in [1, p - 1], b_j in [0, p - 1] (one read back to the host)."""
    k = hash_a.shape[0]
    # The CPU kernel checks hash j's a, then its b, for j = 0, 1, ...: the first bad one is reported.
    first = _first_true((hash_a < 1) | (hash_a >= p) | (hash_b < 0) | (hash_b >= p))
    j, a, b = torch.stack([first, _at(hash_a, first), _at(hash_b, first)]).tolist()
    if j < k:
        if not 1 <= a < p:
            raise ValueError(f"{op}: hash_a[{j}] = {a} is outside [1, p - 1] for p = {p}")
        raise ValueError(f"{op}: hash_b[{j}] = {b} is outside [0, p - 1] for p = {p}")


def dhe_encode_linear_backward(grad: Tensor, output: Tensor, ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int,
                               m: int, transform: str, weight: Tensor, bias: Optional[Tensor],
                               activation: str) -> tuple[Tensor, Tensor]:
    """(grad_weight, grad_bias) of act(encode(ids) @ weight^T + bias), with the encodings recomputed
    _ENCODE_ROWS ids at a time. As the CPU kernel: float32 (float64 for float64 weights) throughout, the
    bias gradient summed in float64, both returned in the weight's dtype."""
    op = "mprec::dhe_encode_linear_backward"
    k = _check_hashes(op, ids, hash_a, hash_b, p, m, transform)
    _check_linear(op, weight, bias, k, "k")
    _check_activation(op, activation)
    n, out_features = ids.numel(), weight.shape[0]
    if grad.numel() != n * out_features or output.numel() != n * out_features:
        raise ValueError(f"{op}: grad and output must have shape [..., {out_features}] with {n} rows, got "
                         f"{sizes(grad)} and {sizes(output)}")
    flat_ids = ids.reshape(-1)
    first_negative = int(_first_true(flat_ids < 0))
    if first_negative < n:
        raise ValueError(f"{op}: ids[{first_negative}] = {int(flat_ids[first_negative])} is negative; "
                         "DHE ids must be >= 0")
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    pre_grad = grad.reshape(n, out_features).to(acc)  # d loss / d pre-activation, once the activation is undone
    if activation == "relu":
        pre_grad = torch.ops.aten.threshold_backward(pre_grad, output.reshape(n, out_features).to(acc), 0)
    weight_acc = weight.to(acc)
    bias_acc = None if bias is None else bias.to(acc)
    grad_weight = weight_acc.new_zeros((out_features, k))
    grad_bias = weight_acc.new_zeros(out_features, dtype=torch.float64)
    for r0 in range(0, n, _ENCODE_ROWS):
        rows = min(_ENCODE_ROWS, n - r0)
        # Encoded in float64 and rounded once, as the CPU kernel's hashing loop does.
        encoded = dhe_encode_aten(flat_ids.narrow(0, r0, rows), hash_a, hash_b, p, m, transform, torch.float64).to(acc)
        g = pre_grad.narrow(0, r0, rows)
        if activation == "mish":
            # mish' needs the pre-activation, which the forward did not keep: recomputed per chunk.
            g = torch.ops.aten.mish_backward(g, F.linear(encoded, weight_acc, bias_acc))
        grad_weight.addmm_(g.t(), encoded)
        if bias is not None:
            grad_bias += g.sum(0, dtype=torch.float64)
    if bias is None:
        return grad_weight.to(weight.dtype), weight.new_empty(0)
    return grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)


def rowwise_linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: str = "none") -> Tensor:
    _check_rowwise_linear(input, weight, bias, activation)
    return apply_activation(F.linear(input, weight, bias), activation)


# --- DLRM's dot interaction -----------------------------------------------------------------------------------
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


def dlrm_interaction(dense: Tensor, sparse: Tensor, pad_to: int = 1) -> Tensor:
    op = "mprec::dlrm_interaction"
    batch, tables, dim = _check_dlrm(op, dense, sparse)
    width = dlrm_interaction_width(dim, tables, _checked_pad_to(op, pad_to))
    acc = _compute_dtype(dense, sparse)
    features = torch.cat([dense.to(acc).unsqueeze(1), sparse.to(acc).reshape(batch, tables, dim)], dim=1)
    out = torch.cat([features[:, 0], _pairs(features)], dim=1)
    return F.pad(out, (0, width - out.shape[1])).to(dense.dtype)


def dlrm_interaction_backward(grad: Tensor, dense: Tensor, sparse: Tensor, pad_to: int = 1) -> tuple[Tensor, Tensor]:
    op = "mprec::dlrm_interaction_backward"
    batch, tables, dim = _check_dlrm(op, dense, sparse)
    _check_float(op, "grad", grad)
    width = dlrm_interaction_width(dim, tables, _checked_pad_to(op, pad_to))  # the padding's gradient is unused
    if grad.dim() != 2 or grad.shape[0] != batch or grad.shape[1] != width:
        raise ValueError(f"{op}: grad must have shape [{batch}, {width}], got {sizes(grad)}")
    acc = _compute_dtype(dense, sparse, grad)
    features = torch.cat([dense.to(acc).unsqueeze(1), sparse.to(acc).reshape(batch, tables, dim)], dim=1)
    g = grad.to(acc)
    grad_features = _pairs_backward(g.narrow(1, dim, (tables + 1) * tables // 2), features)
    grad_dense = grad_features[:, 0] + g[:, :dim]
    return grad_dense.to(dense.dtype), grad_features[:, 1:].reshape(sparse.shape).to(sparse.dtype)


# --- unique_ids (DHEEmbeddingBag.forward deduplicates every batch's ids with it) --------------------------

def unique_ids(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """torch.unique's answer reordered by first occurrence, as the CPU kernel's hash table produces it."""
    op = "mprec::unique_ids"
    _check_unique_ids(op, ids)
    values, inverse, counts = torch.unique(ids.reshape(-1), sorted=True, return_inverse=True, return_counts=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = positions.new_full(values.shape, ids.numel()).scatter_reduce_(0, inverse, positions, "amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order).index_copy_(0, order, torch.arange(order.numel(), device=ids.device))
    return values[order], rank[inverse].reshape(ids.shape), counts[order]


KERNELS: dict[str, Callable] = {
    "embedding_bag_sparse_backward": embedding_bag_sparse_backward,
    "batched_embedding_bag_sparse_backward": batched_embedding_bag_sparse_backward,
    "embedding_bag_per_sample_weights_backward": embedding_bag_per_sample_weights_backward,
    "batched_embedding_bag_per_sample_weights_backward": batched_embedding_bag_per_sample_weights_backward,
    "batched_embedding_bag_update": batched_embedding_bag_update,
    "quantize_rowwise_int8": quantize_rowwise_int8,
    "dequantize_rowwise_int8": dequantize_rowwise_int8,
    "dhe_encode_linear_backward": dhe_encode_linear_backward,
    "rowwise_linear": rowwise_linear,
    "dot_interaction": dot_interaction,
    "dot_interaction_backward": dot_interaction_backward,
    "dlrm_interaction": dlrm_interaction,
    "dlrm_interaction_backward": dlrm_interaction_backward,
    "unique_ids": unique_ids,
}

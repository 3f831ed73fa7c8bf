"""The embedding-bag op family: typed wrappers and fake kernels.

Schemas: ``csrc/registration.cpp``. CPU kernels: ``csrc/cpu/embedding_bag*.cpp``. Autograd:
``csrc/autograd/embedding_bag.cpp``. The tests' oracle: ``embedding_bag_reference`` in ``tests/reference.py``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..arguments import check_device, register_fake
from ..spelling import dtype_name, sizes

# Overloads looked up once, not by name on every call.
_EMBEDDING_BAG = torch.ops.mprec.embedding_bag.default
_BATCHED_EMBEDDING_BAG = torch.ops.mprec.batched_embedding_bag.default

__all__ = [
    "MODES",
    "embedding_bag",
    "batched_embedding_bag",
    "quantize_rowwise_int8",
    "dequantize_rowwise_int8",
]

#: Pooling modes by name, numbered as torch numbers them.
MODES = {"sum": 0, "mean": 1, "max": 2}

_FLOAT_WEIGHTS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int32, torch.int64)


# Every spelling of a mode that mode_number accepts, to its number: one lookup per call where the mode is valid.
_MODE_NUMBERS = {**MODES, **{number: number for number in MODES.values()}}


def mode_number(op: str, mode: Union[str, int]) -> int:
    try:
        return _MODE_NUMBERS[mode]
    except (KeyError, TypeError):  # TypeError: unhashable
        pass
    if isinstance(mode, str):
        raise ValueError(f"{op}: mode must be one of {sorted(MODES)}, got {mode!r}")
    raise ValueError(f"{op}: mode must be 0 (sum), 1 (mean) or 2 (max), got {mode}")


def _output_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if weight_dtype == torch.uint8 else weight_dtype


def _accumulation_dtype(weight: Tensor) -> torch.dtype:
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


# --- argument checks: the fake kernels', the compositions' and the GPU wrappers', in the C++ kernels' words ---

def _check_weight(op: str, weight: Tensor, scale_bias: Optional[Tensor], name: str = "weight",
                  device: Optional[torch.device] = None, allow_quantized: bool = True) -> None:
    """csrc/cpu/embedding_bag_checks.cpp checked_weight; the device is checked when one is given."""
    if weight.dim() != 2:
        raise ValueError(f"{op}: {name} must be 2-D [num_embeddings, embedding_dim], got shape {sizes(weight)}")
    if device is not None:
        check_device(op, device, **{name: weight})
    if weight.dtype in _FLOAT_WEIGHTS:
        if scale_bias is not None:
            raise ValueError(f"{op}: scale_bias is only for uint8 (row-wise quantized) weights, but {name} is "
                             f"{dtype_name(weight.dtype)}")
    elif weight.dtype == torch.uint8:
        if not allow_quantized:
            raise ValueError(f"{op}: {name} is uint8 (row-wise quantized); quantized tables are pooled on the CPU "
                             "only: dequantize them (mprec::dequantize_rowwise_int8) to run on the GPU")
        if scale_bias is None:
            raise ValueError(f"{op}: {name} is uint8 (row-wise quantized) and needs scale_bias [num_embeddings, 2] "
                             "from mprec::quantize_rowwise_int8")
        if scale_bias.dtype != torch.float32 or scale_bias.dim() != 2 or scale_bias.shape[0] != weight.shape[0] \
                or scale_bias.shape[1] != 2:
            raise ValueError(f"{op}: scale_bias for {name} must be float32 [{weight.shape[0]}, 2], "
                             f"got {dtype_name(scale_bias.dtype)} {sizes(scale_bias)}")
    else:
        raise ValueError(f"{op}: {name} has dtype {dtype_name(weight.dtype)}; expected float32, float64, float16, "
                         "bfloat16 or uint8 (row-wise quantized)")


def _check_backward_weight(op: str, name: str, weight: Tensor) -> None:
    """csrc/cpu/embedding_bag.cpp check_backward_weight: the backward ops take float tables only."""
    if weight.dtype == torch.uint8:
        raise ValueError(f"{op}: {name} is uint8 (row-wise quantized): quantized tables are inference only")
    if weight.dtype not in _FLOAT_WEIGHTS:
        raise ValueError(f"{op}: {name} has dtype {dtype_name(weight.dtype)}; expected float32, float64, float16 "
                         "or bfloat16")


def _check_tables(op: str, weights: Sequence[Tensor], scale_bias: Optional[Sequence[Tensor]],
                  padding_idx: Sequence[int], device: Optional[torch.device] = None,
                  allow_quantized: bool = True) -> None:
    """csrc/cpu/embedding_bag_checks.cpp check_batched_tables; the device is checked when one is given."""
    if len(weights) == 0:
        raise ValueError(f"{op}: needs at least one table")
    if len(padding_idx) not in (0, len(weights)):
        raise ValueError(f"{op}: padding_idx has {len(padding_idx)} entries for {len(weights)} tables "
                         "(give one per table, or none)")
    if scale_bias is not None and len(scale_bias) != len(weights):
        raise ValueError(f"{op}: scale_bias has {len(scale_bias)} entries for {len(weights)} tables")
    for t, w in enumerate(weights):
        _check_weight(op, w, None if scale_bias is None else scale_bias[t], f"weights[{t}]", device, allow_quantized)
        if w.dtype != weights[0].dtype:
            raise ValueError(f"{op}: every table must have the same dtype; weights[0] is "
                             f"{dtype_name(weights[0].dtype)} but weights[{t}] is {dtype_name(w.dtype)}")
        _check_padding_idx(op, padding_idx[t] if len(padding_idx) else -1, w.shape[0], f" of table {t}")


def _check_padding_idx(op: str, padding_idx: int, num_rows: int, where: str = "") -> None:
    """csrc/cpu/embedding_bag_checks.cpp check_padding_idx."""
    if not -1 <= padding_idx < max(num_rows, 0):
        raise ValueError(f"{op}: padding_idx {padding_idx}{where} must be -1 (none) or in [0, {num_rows})")


def _check_indices(op: str, indices: Tensor, offsets: Tensor, device: Optional[torch.device] = None) -> None:
    """csrc/cpu/embedding_bag_checks.cpp check_indices_offsets; the device is checked when one is given."""
    if indices.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{op}: indices must be int32 or int64, got {dtype_name(indices.dtype)}")
    if offsets.dtype != indices.dtype:
        raise ValueError(f"{op}: offsets ({dtype_name(offsets.dtype)}) must have the same dtype as indices "
                         f"({dtype_name(indices.dtype)})")
    if indices.dim() != 1:
        raise ValueError(f"{op}: indices must be 1-D, got shape {sizes(indices)}")
    if offsets.dim() != 1:
        raise ValueError(f"{op}: offsets must be 1-D, got shape {sizes(offsets)}")
    if device is not None and (indices.device != device or offsets.device != device):
        raise ValueError(f"{op}: indices ({indices.device}) and offsets ({offsets.device}) must be on {device}")


_MODE_NAMES = {0: "sum (0)", 1: "mean (1)", 2: "max (2)"}


def _check_grad(op: str, grad: Tensor, bags: int, total_dim: int) -> None:
    if grad.dim() != 2 or grad.shape[0] != bags or grad.shape[1] != total_dim:
        raise ValueError(f"{op}: grad must have shape [{bags}, {total_dim}], got {sizes(grad)}")


def _check_scale_grad_by_freq(op: str, scale_grad_by_freq: bool, mode: int) -> None:
    """csrc/cpu/embedding_bag_checks.cpp check_scale_grad_by_freq."""
    if scale_grad_by_freq and mode == 2:
        raise ValueError(f"{op}: scale_grad_by_freq is not supported in max mode (mode 2)")


def _check_per_sample_weights(op: str, psw: Optional[Tensor], mode: int, num_indices) -> None:
    """csrc/cpu/embedding_bag_checks.cpp checked_per_sample_weights, less the device and the conversion."""
    if psw is None:
        return
    if mode != 0:
        raise ValueError(f"{op}: per_sample_weights are only supported with mode sum (0), got {_MODE_NAMES[mode]}")
    if psw.dim() != 1 or psw.shape[0] != num_indices:
        raise ValueError(f"{op}: per_sample_weights must be 1-D with one weight per index ({num_indices}), "
                         f"got shape {sizes(psw)}")
    if not psw.dtype.is_floating_point:
        raise ValueError(f"{op}: per_sample_weights must be floating point, got {dtype_name(psw.dtype)}")


def _checked_per_sample_weights(op: str, psw: Optional[Tensor], mode: int, num_indices: int,
                                acc: torch.dtype) -> Optional[Tensor]:
    """The per-sample weights checked and in the accumulation dtype (as checked_per_sample_weights gives them)."""
    _check_per_sample_weights(op, psw, mode, num_indices)
    return None if psw is None else psw.to(acc)


def _single_bags(op: str, offsets: Tensor, include_last_offset: bool):
    if include_last_offset and offsets.shape[0] < 1:
        raise ValueError(f"{op}: include_last_offset=True needs at least one offset")
    return offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]


def _batched_bags(op: str, offsets: Tensor, num_tables: int):
    n = offsets.shape[0]
    if n < 1 or (n - 1) % num_tables != 0:
        raise ValueError(f"{op}: offsets must have T * B + 1 entries (TBE layout) for T = {num_tables} tables, got {n}")
    return (n - 1) // num_tables


# --- mprec::embedding_bag ------------------------------------------------------------------------------

@register_fake("mprec::embedding_bag")
def _embedding_bag_fake(weight, indices, offsets, mode=0, per_sample_weights=None, padding_idx=-1,
                        include_last_offset=False, scale_bias=None, sparse=False, scale_grad_by_freq=False,
                        return_max_indices=True):
    op = "mprec::embedding_bag"
    mode = mode_number(op, mode)
    _check_scale_grad_by_freq(op, scale_grad_by_freq, mode)
    _check_weight(op, weight, scale_bias)
    _check_indices(op, indices, offsets)
    bags = _single_bags(op, offsets, include_last_offset)
    _check_padding_idx(op, padding_idx, weight.shape[0])
    _check_per_sample_weights(op, per_sample_weights, mode, indices.shape[0])
    out = weight.new_empty((bags, weight.shape[1]), dtype=_output_dtype(weight.dtype))
    return out, _max_indices_like(out, mode, return_max_indices)


def _max_indices_like(out: Tensor, mode: int, return_max_indices: bool) -> Tensor:
    """The forward ops' second output: the argmax of every output element in max mode where asked for, else
    ``[0, 0]``."""
    shape = out.shape if mode == 2 and return_max_indices else (0, 0)
    return out.new_empty(shape, dtype=torch.int64)


def single_backward_bags(op: str, weight: Tensor, indices: Tensor, offsets: Tensor, mode: int, padding_idx: int,
                         include_last_offset: bool, device: Optional[torch.device] = None) -> int:
    """csrc/cpu/embedding_bag.cpp single_call, the single-table backward ops' arguments: the bags."""
    mode_number(op, mode)
    _check_indices(op, indices, offsets, device)
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D, got shape {sizes(weight)}")
    _check_backward_weight(op, "weight", weight)
    bags = _single_bags(op, offsets, include_last_offset)
    _check_padding_idx(op, padding_idx, weight.shape[0])
    return bags


def batched_backward_bags(op: str, weights: Sequence[Tensor], indices: Tensor, offsets: Tensor, mode: int,
                          padding_idx: Sequence[int], device: Optional[torch.device] = None) -> int:
    """csrc/cpu/embedding_bag.cpp batched_call, the batched backward ops' arguments: the bags per table."""
    mode_number(op, mode)
    for t, w in enumerate(weights):
        if w.dim() != 2:
            raise ValueError(f"{op}: weights[{t}] must be 2-D, got shape {sizes(w)}")
        _check_backward_weight(op, f"weights[{t}]", w)
    _check_tables(op, weights, None, padding_idx)
    _check_indices(op, indices, offsets, device)
    return _batched_bags(op, offsets, len(weights))


BACKWARDS = ("dense", "sparse", "per_sample_weights")


def check_backward(op: str, kind: str, grad: Tensor, weights: Sequence[Tensor], indices: Tensor, mode: int,
                   bags: int, per_sample_weights: Optional[Tensor] = None,
                   max_indices: Optional[Tensor] = None) -> None:
    """What a backward op (``kind``, one of :data:`BACKWARDS`) checks after its call's arguments, in the CPU
    kernel's order: the gradient, max_indices (dense), per_sample_weights (dense and sparse), the mode."""
    mode = mode_number(op, mode)
    _check_grad(op, grad, bags, sum(w.shape[1] for w in weights))
    if kind == "dense":
        _check_max_indices(op, mode, max_indices, grad)
    if kind in ("dense", "sparse"):
        _check_per_sample_weights(op, per_sample_weights, mode, indices.shape[0])
    if kind == "sparse" and mode == 2:
        raise ValueError(f"{op}: sparse gradients are not supported with mode max (as in torch)")
    if kind == "per_sample_weights" and mode != 0:
        raise ValueError(f"{op}: per_sample_weights are only supported with mode sum (0)")


def _check_max_indices(op: str, mode: int, max_indices: Tensor, grad: Tensor) -> None:
    """csrc/cpu/embedding_bag_checks.cpp check_max_indices; the device is grad's."""
    if mode != 2:
        return
    if max_indices.shape != grad.shape:
        raise ValueError(f"{op}: max_indices must have the shape of grad {sizes(grad)}, got {sizes(max_indices)}")
    if max_indices.dtype != torch.int64:
        raise ValueError(f"{op}: max_indices must be int64, got {dtype_name(max_indices.dtype)}")
    check_device(op, grad.device, max_indices=max_indices)


def _single_backward_checks(op, kind, grad, weight, indices, offsets, mode, psw, padding_idx, include_last_offset,
                            max_indices=None) -> int:
    bags = single_backward_bags(op, weight, indices, offsets, mode, padding_idx, include_last_offset)
    check_backward(op, kind, grad, [weight], indices, mode, bags, psw, max_indices)
    return mode_number(op, mode)


@register_fake("mprec::embedding_bag_backward")
def _embedding_bag_backward_fake(grad, weight, indices, offsets, max_indices, mode, per_sample_weights, padding_idx,
                                 include_last_offset):
    _single_backward_checks("mprec::embedding_bag_backward", "dense", grad, weight, indices, offsets, mode,
                            per_sample_weights, padding_idx, include_last_offset, max_indices)
    return grad.new_empty(weight.shape, dtype=weight.dtype)


@register_fake("mprec::embedding_bag_sparse_backward")
def _embedding_bag_sparse_backward_fake(grad, weight, indices, offsets, mode, per_sample_weights, padding_idx,
                                        include_last_offset):
    _single_backward_checks("mprec::embedding_bag_sparse_backward", "sparse", grad, weight, indices, offsets, mode,
                            per_sample_weights, padding_idx, include_last_offset)
    # As many rows as non-padding lookups: known only from the data.
    rows = torch.library.get_ctx().new_dynamic_size()
    return indices.new_empty((rows,), dtype=torch.int64), grad.new_empty((rows, weight.shape[1]), dtype=weight.dtype)


@register_fake("mprec::embedding_bag_per_sample_weights_backward")
def _embedding_bag_psw_backward_fake(grad, weight, indices, offsets, mode, padding_idx, include_last_offset):
    _single_backward_checks("mprec::embedding_bag_per_sample_weights_backward", "per_sample_weights", grad, weight,
                            indices, offsets, mode, None, padding_idx, include_last_offset)
    return grad.new_empty((indices.shape[0],), dtype=_accumulation_dtype(weight))


def _normalize_padding_idx(op: str, padding_idx: Optional[int], table: Union[Tensor, int]) -> int:
    """torch's convention: None for none, negative counts from the end. ``table``: the weight, or its row count.
    A weight's shape is read only for a padding_idx: after a cache flush that read is a measurable part of a
    narrow table's call, and most calls have none."""
    if padding_idx is None:
        return -1
    num_rows = table if isinstance(table, int) else table.shape[0]
    if not -num_rows <= padding_idx < num_rows:
        raise ValueError(f"{op}: padding_idx {padding_idx} is out of range for a table of {num_rows} rows")
    return padding_idx + num_rows if padding_idx < 0 else padding_idx


def embedding_bag(
    weight: Tensor,
    indices: Tensor,
    offsets: Tensor,
    mode: Union[str, int] = "sum",
    per_sample_weights: Optional[Tensor] = None,
    padding_idx: Optional[int] = None,
    include_last_offset: bool = False,
    scale_bias: Optional[Tensor] = None,
    sparse: bool = False,
    scale_grad_by_freq: bool = False,
) -> Tensor:
    """Pools rows of one table per bag: ``out[b] = reduce(weight[indices[offsets[b]:offsets[b+1]]])``.

    Args:
        weight: ``[num_embeddings, D]``, float32, float16, bfloat16, or uint8 row-wise quantized (then give
            ``scale_bias`` from :func:`quantize_rowwise_int8`; inference only).
        indices: 1-D int32 or int64 rows.
        offsets: 1-D, same dtype as ``indices``, starting at 0 and non-decreasing. ``B`` entries (the last
            bag runs to the end of ``indices``), or ``B + 1`` with ``include_last_offset=True``.
        mode: ``"sum"``, ``"mean"`` or ``"max"`` (or 0, 1, 2).
        per_sample_weights: one weight per index, ``"sum"`` mode only.
        padding_idx: a row that is skipped (it does not count towards ``"mean"``); negative counts from the end.
        sparse: make the weight gradient a sparse COO tensor, as ``torch.nn.EmbeddingBag(sparse=True)``.
        scale_grad_by_freq: divide each row's gradient by the number of times its index occurs in the bags
            (sum and mean modes; dense and sparse gradients).

    Returns:
        ``[B, D]`` in the weight's dtype (float32 for uint8 weights). Empty bags give zeros in every mode. In max
        mode no argmax is found unless a gradient will need it (``torch.ops.mprec.embedding_bag`` returns it).
    """
    op = "mprec::embedding_bag"
    out, _ = _EMBEDDING_BAG(
        weight, indices, offsets, mode_number(op, mode), per_sample_weights,
        _normalize_padding_idx(op, padding_idx, weight), include_last_offset, scale_bias, sparse, scale_grad_by_freq,
        False)
    return out


# --- mprec::batched_embedding_bag ----------------------------------------------------------------------

@register_fake("mprec::batched_embedding_bag")
def _batched_embedding_bag_fake(weights, indices, offsets, mode=0, per_sample_weights=None, padding_idx=(),
                                scale_bias=None, sparse=False, return_max_indices=True):
    op = "mprec::batched_embedding_bag"
    mode = mode_number(op, mode)
    _check_tables(op, weights, scale_bias, padding_idx)
    _check_indices(op, indices, offsets)
    _check_per_sample_weights(op, per_sample_weights, mode, indices.shape[0])
    bags = _batched_bags(op, offsets, len(weights))
    total_dim = sum(w.shape[1] for w in weights)
    out = weights[0].new_empty((bags, total_dim), dtype=_output_dtype(weights[0].dtype))
    return out, _max_indices_like(out, mode, return_max_indices)


def _batched_backward_checks(op, kind, grad, weights, indices, offsets, mode, psw, padding_idx,
                             max_indices=None) -> int:
    bags = batched_backward_bags(op, weights, indices, offsets, mode, padding_idx)
    check_backward(op, kind, grad, weights, indices, mode, bags, psw, max_indices)
    return mode_number(op, mode)


@register_fake("mprec::batched_embedding_bag_backward")
def _batched_embedding_bag_backward_fake(grad, weights, indices, offsets, max_indices, mode, per_sample_weights,
                                         padding_idx):
    _batched_backward_checks("mprec::batched_embedding_bag_backward", "dense", grad, weights, indices, offsets, mode,
                             per_sample_weights, padding_idx, max_indices)
    return [grad.new_empty(w.shape, dtype=w.dtype) for w in weights]


@register_fake("mprec::batched_embedding_bag_sparse_backward")
def _batched_embedding_bag_sparse_backward_fake(grad, weights, indices, offsets, mode, per_sample_weights,
                                                padding_idx):
    _batched_backward_checks("mprec::batched_embedding_bag_sparse_backward", "sparse", grad, weights, indices,
                             offsets, mode, per_sample_weights, padding_idx)
    ctx = torch.library.get_ctx()
    rows, values = [], []
    for w in weights:
        n = ctx.new_dynamic_size()
        rows.append(indices.new_empty((n,), dtype=torch.int64))
        values.append(grad.new_empty((n, w.shape[1]), dtype=w.dtype))
    return rows, values


@register_fake("mprec::batched_embedding_bag_per_sample_weights_backward")
def _batched_embedding_bag_psw_backward_fake(grad, weights, indices, offsets, mode, padding_idx):
    _batched_backward_checks("mprec::batched_embedding_bag_per_sample_weights_backward", "per_sample_weights", grad,
                             weights, indices, offsets, mode, None, padding_idx)
    return grad.new_empty((indices.shape[0],), dtype=_accumulation_dtype(weights[0]))


def batched_embedding_bag(
    weights: Sequence[Tensor],
    indices: Tensor,
    offsets: Tensor,
    mode: Union[str, int] = "sum",
    per_sample_weights: Optional[Tensor] = None,
    padding_idx: Optional[Sequence[Optional[int]]] = None,
    scale_bias: Optional[Sequence[Tensor]] = None,
    sparse: bool = False,
) -> Tensor:
    """Pools T tables in one call, in FBGEMM's TBE layout.

    ``indices`` holds every table's lookups, table by table; ``offsets`` has ``T * B + 1`` entries and bag
    ``b`` of table ``t`` is ``indices[offsets[t*B + b] : offsets[t*B + b + 1]]``. Tables may differ in rows
    and width but share a dtype. Returns ``[B, sum(D_t)]``, table ``t``'s columns after table ``t-1``'s.
    ``padding_idx`` is one entry per table (None for none); the other arguments are as in
    :func:`embedding_bag`.
    """
    op = "mprec::batched_embedding_bag"
    weights = list(weights)
    pads = [] if padding_idx is None else [
        _normalize_padding_idx(op, p, w) for p, w in zip(padding_idx, weights, strict=True)]
    out, _ = _BATCHED_EMBEDDING_BAG(
        weights, indices, offsets, mode_number(op, mode), per_sample_weights, pads,
        None if scale_bias is None else list(scale_bias), sparse, False)
    return out


# --- fused optimizers -----------------------------------------------------------------------------------
FUSED_OPTIMIZERS = ("sgd", "rowwise_adagrad")


@register_fake("mprec::batched_embedding_bag_update")
def _batched_embedding_bag_update_fake(weights, state, grad, indices, offsets, pooling_mode=0, per_sample_weights=None,
                                       padding_idx=(), optimizer="sgd", lr=0.01, eps=1e-8):
    if optimizer not in FUSED_OPTIMIZERS:
        raise ValueError(f"mprec::batched_embedding_bag_update: optimizer must be 'sgd' or 'rowwise_adagrad', "
                         f"got {optimizer!r}")


def batched_embedding_bag_update(
    weights: Sequence[Tensor],
    state: Sequence[Tensor],
    grad: Tensor,
    indices: Tensor,
    offsets: Tensor,
    mode: Union[str, int] = "sum",
    per_sample_weights: Optional[Tensor] = None,
    padding_idx: Optional[Sequence[Optional[int]]] = None,
    optimizer: str = "sgd",
    lr: float = 0.01,
    eps: float = 1e-8,
) -> None:
    """Backward of :func:`batched_embedding_bag` fused with the tables' optimizer step, in place, with no
    ``[rows, D]`` gradient (FBGEMM's TBE training). ``grad`` is the gradient of the pooled output.

    ``optimizer="sgd"``: ``w[r] -= lr * g[r]`` (``state`` empty). ``"rowwise_adagrad"``: one accumulator per
    row in ``state[t]`` (float32, float64 for float64 tables): ``s[r] += mean(g[r]^2)``,
    ``w[r] -= lr * g[r] / (sqrt(s[r]) + eps)``. Only rows the batch looks up change. Modes sum and mean. On the
    CPU, SGD on float32 / float64 tables subtracts each lookup's term from its row in lookup order (the same sum,
    rounded term by term); elsewhere each row's terms are summed and the row updated once.
    """
    op = "mprec::batched_embedding_bag_update"
    weights = list(weights)
    pads = [] if padding_idx is None else [
        _normalize_padding_idx(op, p, w) for p, w in zip(padding_idx, weights, strict=True)]
    torch.ops.mprec.batched_embedding_bag_update(weights, list(state), grad, indices, offsets, mode_number(op, mode),
                                                 per_sample_weights, pads, optimizer, float(lr), float(eps))


# --- row-wise int8 -------------------------------------------------------------------------------------

def _check_quantize_input(op: str, weight: Tensor) -> None:
    """csrc/cpu/embedding_bag.cpp quantize_rowwise_int8_cpu's argument checks (finiteness needs the data)."""
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D, got shape {sizes(weight)}")
    if not weight.dtype.is_floating_point:
        raise ValueError(f"{op}: weight must be floating point, got {dtype_name(weight.dtype)}")


@register_fake("mprec::quantize_rowwise_int8")
def _quantize_rowwise_int8_fake(weight):
    _check_quantize_input("mprec::quantize_rowwise_int8", weight)
    return (weight.new_empty(weight.shape, dtype=torch.uint8),
            weight.new_empty((weight.shape[0], 2), dtype=torch.float32))


def _check_dequantize_input(op: str, qweight: Tensor, scale_bias: Tensor) -> None:
    """csrc/cpu/embedding_bag.cpp dequantize_rowwise_int8_cpu's argument checks."""
    if qweight.dim() != 2 or qweight.dtype != torch.uint8:
        raise ValueError(f"{op}: qweight must be a 2-D uint8 tensor, got {dtype_name(qweight.dtype)} "
                         f"{sizes(qweight)}")
    if not (scale_bias.dtype == torch.float32 and scale_bias.dim() == 2 and scale_bias.shape[0] == qweight.shape[0]
            and scale_bias.shape[1] == 2):
        raise ValueError(f"{op}: scale_bias must be float32 [{qweight.shape[0]}, 2], got "
                         f"{dtype_name(scale_bias.dtype)} {sizes(scale_bias)}")


@register_fake("mprec::dequantize_rowwise_int8")
def _dequantize_rowwise_int8_fake(qweight, scale_bias):
    _check_dequantize_input("mprec::dequantize_rowwise_int8", qweight, scale_bias)
    return qweight.new_empty(qweight.shape, dtype=torch.float32)


def quantize_rowwise_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise 8-bit quantization (FBGEMM's format, with scale and bias kept apart).

    Returns ``(qweight, scale_bias)``: ``qweight`` uint8 ``[rows, D]`` and ``scale_bias`` float32
    ``[rows, 2]`` with, per row, ``scale = (max - min) / 255`` and ``bias = min``, so that
    ``weight ~= qweight * scale + bias`` within ``scale / 2``.
    """
    return torch.ops.mprec.quantize_rowwise_int8(weight)


def dequantize_rowwise_int8(qweight: Tensor, scale_bias: Tensor) -> Tensor:
    """``qweight * scale + bias`` as float32."""
    return torch.ops.mprec.dequantize_rowwise_int8(qweight, scale_bias)


# --- error messages for kernels that can only flag bad input ----------------------------------------------

def check_first_offset(op: str, offsets: Tensor) -> None:
    """``offsets[0] == 0``, which the CPU kernels check with the arguments, before any other value in the data
    (csrc make_layout). Reads one value on the host."""
    if offsets.numel() > 0 and int(offsets[0]) != 0:
        raise RuntimeError(f"{op}: offsets[0] must be 0, got {int(offsets[0])}")


def raise_bag_error(op: str, indices: Tensor, offsets: Tensor, bags: int, rows: Sequence[int],
                    padding_idx: Sequence[int]) -> None:
    """Raises the CPU kernel's message for the first invalid offset or index of a bag layout.

    Kernels that run many bags at once (GPU, and the aten compositions) learn only *that* something was
    invalid; this finds *what*, in the order the CPU kernel walks the bags (offsets[0], then bag by bag:
    the bag's bounds, then its lookups), and words it as the CPU kernel does. ``offsets`` has ``T * bags
    + 1`` entries, or ``bags`` for one table whose last bag runs to the end of ``indices``. Runs on the
    host: it is only called once something is known to be wrong.
    """
    indices = indices.detach().to("cpu", torch.int64)
    offsets = offsets.detach().to("cpu", torch.int64)
    num_indices = indices.shape[0]
    batched = "batched" in op
    if offsets.shape[0] > 0 and int(offsets[0]) != 0:
        raise RuntimeError(f"{op}: offsets[0] must be 0, got {int(offsets[0])}")
    total = len(rows) * bags
    starts = offsets[:total]
    ends = offsets[1 : total + 1]
    if ends.shape[0] < total:  # one table, last bag to the end of indices
        ends = torch.cat([ends, ends.new_tensor([num_indices])])
    bad_bounds = (ends > num_indices) | (ends < starts) | (starts < 0)
    first_bad_bag = int(bad_bounds.nonzero()[0]) if bool(bad_bounds.any()) else total
    # Lookups of the bags before it: their bounds are valid, so they run from 0 to that bag's start.
    last = int(ends[first_bad_bag - 1]) if first_bad_bag > 0 else 0
    if last > 0:
        positions = torch.arange(last)
        table = torch.div(torch.searchsorted(ends[:first_bad_bag], positions, right=True), max(bags, 1),
                          rounding_mode="floor")
        idx = indices[:last]
        table_rows = torch.tensor(list(rows), dtype=torch.int64)[table]
        pads = torch.tensor(list(padding_idx) if len(padding_idx) else [-1] * len(rows), dtype=torch.int64)[table]
        bad = ((idx != pads) | (pads < 0)) & ((idx < 0) | (idx >= table_rows))
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            value, t, n = int(idx[i]), int(table[i]), int(table_rows[i])
            where = f"table {t} " if batched else "the table "
            problem = "is negative" if value < 0 else "is out of range"
            raise RuntimeError(f"{op}: index {value} at position {i} {problem} for {where}with {n} rows "
                               f"(valid indices: 0..{n - 1})")
    if first_bad_bag < total:
        g = first_bad_bag
        end = int(ends[g])
        if end > num_indices:
            raise RuntimeError(f"{op}: offsets[{g + 1}] = {end} is past the end of indices ({num_indices} entries)")
        raise RuntimeError(f"{op}: offsets[{g + 1}] = {end} is smaller than offsets[{g}] = {int(starts[g])}; "
                           "offsets must be non-decreasing")
    raise RuntimeError(f"{op}: internal error: a kernel flagged invalid input that the checks cannot find")


def raise_max_indices_error(op: str, max_indices: Tensor, cols: Sequence[int], rows: Sequence[int]) -> None:
    """The CPU kernel's message for the first max_indices entry outside ``[-1, rows)`` of its table."""
    mi = max_indices.detach().to("cpu")
    for t, (col, n) in enumerate(zip(cols, rows)):
        dim = (cols[t + 1] if t + 1 < len(cols) else mi.shape[1]) - col
        block = mi[:, col : col + dim]
        bad = (block < -1) | (block >= n)
        if bool(bad.any()):
            b, d = (int(v) for v in bad.nonzero()[0])
            raise RuntimeError(f"{op}: max_indices[{b}, {col + d}] = {int(block[b, d])} is out of range for a table "
                               f"of {n} rows")
    raise RuntimeError(f"{op}: internal error: a kernel flagged max_indices that the checks cannot find")

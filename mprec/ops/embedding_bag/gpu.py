"""The embedding-bag family's GPU glue: the Triton kernels (:mod:`mprec.kernels.embedding_bag`) wrapped with the CPU
kernels' checks, in their order and words (with the device in place of cpu), and their error flag turned into
the CPU kernels' messages. :mod:`mprec.ops.gpu` registers them (or the CUDA C++ kernels) as the ops' CUDA kernels."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from torch import Tensor

from ..arguments import check_device
from ..launch import new_error_flag as _new_error_flag
from ..launch import triton_eb as _triton_eb
from . import (_accumulation_dtype, _batched_bags, _check_indices, _check_padding_idx, _check_scale_grad_by_freq,
               _check_tables, _check_weight, _checked_per_sample_weights, _single_bags, batched_backward_bags,
               check_backward, check_first_offset, mode_number, raise_bag_error, raise_max_indices_error,
               single_backward_bags)

__all__ = ["TRITON_KERNELS", "OPS"]


def _failed(error: Tensor, offsets: Tensor) -> bool:
    """Whether the launch found bad input: its error flag, or ``offsets[0] != 0``, which the CPU kernels refuse
    even where no bag reads it (no bags, or a backward that starts each bag at its own offset). One read-back
    for both."""
    bad = error[0] != 0
    if offsets.numel():
        bad = bad | (offsets[0] != 0)
    return bool(bad)


_SINGLE = "mprec::embedding_bag"
_BATCHED = "mprec::batched_embedding_bag"


def _single_setup(op, weight, scale_bias, indices, offsets, mode, per_sample_weights, padding_idx,
                  include_last_offset):
    """The CPU kernel's checks, in its order; returns what the launch needs."""
    mode = mode_number(op, mode)
    device = weight.device
    _check_weight(op, weight, scale_bias, "weight", device, allow_quantized=False)
    _check_indices(op, indices, offsets, device)
    bags = _single_bags(op, offsets, include_last_offset)
    _check_padding_idx(op, padding_idx, weight.shape[0])
    psw = _checked_per_sample_weights(op, per_sample_weights, mode, indices.shape[0], _accumulation_dtype(weight))
    check_device(op, device, per_sample_weights=psw)
    tables = _triton_eb.table_args([weight.contiguous()], [padding_idx])
    # Offsets beyond the bags are not read; B + 1 offsets with include_last_offset end the last bag.
    offsets = offsets[: bags + 1] if include_last_offset else offsets
    return mode, bags, None if psw is None else psw.contiguous(), tables, indices.contiguous(), offsets.contiguous()


def embedding_bag(weight: Tensor, indices: Tensor, offsets: Tensor, mode: int = 0,
                  per_sample_weights: Optional[Tensor] = None, padding_idx: int = -1,
                  include_last_offset: bool = False, scale_bias: Optional[Tensor] = None, sparse: bool = False,
                  scale_grad_by_freq: bool = False, return_max_indices: bool = True):
    op = _SINGLE
    _check_scale_grad_by_freq(op, scale_grad_by_freq, mode_number(op, mode))
    mode, bags, psw, tables, indices, offsets = _single_setup(
        op, weight, scale_bias, indices, offsets, mode, per_sample_weights, padding_idx, include_last_offset)
    error = _new_error_flag(weight.device)
    out, max_indices = _triton_eb.pool(tables, indices, offsets, bags, mode, psw, error,
                                       return_max_indices=return_max_indices)
    if _failed(error, offsets):
        raise_bag_error(op, indices, offsets, bags, [weight.shape[0]], [padding_idx])
    return out, max_indices


def embedding_bag_backward(grad: Tensor, weight: Tensor, indices: Tensor, offsets: Tensor, max_indices: Tensor,
                           mode: int, per_sample_weights: Optional[Tensor], padding_idx: int,
                           include_last_offset: bool) -> Tensor:
    op = "mprec::embedding_bag_backward"
    bags = single_backward_bags(op, weight, indices, offsets, mode, padding_idx, include_last_offset, weight.device)
    check_backward(op, "dense", grad, [weight], indices, mode, bags, per_sample_weights, max_indices)
    check_device(op, weight.device, grad=grad)
    mode, bags, psw, tables, indices, offsets = _single_setup(
        op, weight, None, indices, offsets, mode, per_sample_weights, padding_idx, include_last_offset)
    grad = grad.contiguous()
    error = _new_error_flag(weight.device)
    (grad_weight,) = _triton_eb.pool_backward(tables, grad, indices, offsets, bags, mode, psw,
                                              max_indices.contiguous(), error)
    if _failed(error, offsets):
        check_first_offset(op, offsets)  # checked with the arguments, before max_indices' values
        if mode == 2:
            raise_max_indices_error(op, max_indices, [0], [weight.shape[0]])
        raise_bag_error(op, indices, offsets, bags, [weight.shape[0]], [padding_idx])
    return grad_weight


def _batched_setup(op, weights, scale_bias, indices, offsets, mode, per_sample_weights, padding_idx):
    """The CPU kernel's checks, in its order; returns what the launch needs."""
    mode = mode_number(op, mode)
    weights = list(weights)
    device = weights[0].device if weights else None
    _check_tables(op, weights, scale_bias, padding_idx, device, allow_quantized=False)
    _check_indices(op, indices, offsets, device)
    bags = _batched_bags(op, offsets, len(weights))
    psw = _checked_per_sample_weights(op, per_sample_weights, mode, indices.shape[0], _accumulation_dtype(weights[0]))
    check_device(op, device, per_sample_weights=psw)
    tables = _triton_eb.table_args([w.contiguous() for w in weights], list(padding_idx))
    return (mode, bags, None if psw is None else psw.contiguous(), tables, indices.contiguous(), offsets.contiguous(),
            weights)


def batched_embedding_bag(weights: Sequence[Tensor], indices: Tensor, offsets: Tensor, mode: int = 0,
                          per_sample_weights: Optional[Tensor] = None, padding_idx: Sequence[int] = (),
                          scale_bias: Optional[Sequence[Tensor]] = None, sparse: bool = False,
                          return_max_indices: bool = True):
    op = _BATCHED
    mode, bags, psw, tables, indices, offsets, weights = _batched_setup(
        op, weights, scale_bias, indices, offsets, mode, per_sample_weights, padding_idx)
    error = _new_error_flag(weights[0].device)
    out, max_indices = _triton_eb.pool(tables, indices, offsets, bags, mode, psw, error,
                                       return_max_indices=return_max_indices)
    if _failed(error, offsets):
        raise_bag_error(op, indices, offsets, bags, [w.shape[0] for w in weights], list(padding_idx))
    return out, max_indices


def batched_embedding_bag_backward(grad: Tensor, weights: Sequence[Tensor], indices: Tensor, offsets: Tensor,
                                   max_indices: Tensor, mode: int, per_sample_weights: Optional[Tensor],
                                   padding_idx: Sequence[int]) -> list[Tensor]:
    op = "mprec::batched_embedding_bag_backward"
    device = weights[0].device if len(weights) else None
    bags = batched_backward_bags(op, weights, indices, offsets, mode, padding_idx, device)
    check_backward(op, "dense", grad, weights, indices, mode, bags, per_sample_weights, max_indices)
    check_device(op, device, grad=grad)
    mode, bags, psw, tables, indices, offsets, weights = _batched_setup(
        op, weights, None, indices, offsets, mode, per_sample_weights, padding_idx)
    grad = grad.contiguous()
    error = _new_error_flag(weights[0].device)
    grads = _triton_eb.pool_backward(tables, grad, indices, offsets, bags, mode, psw, max_indices.contiguous(), error)
    if _failed(error, offsets):
        rows = [w.shape[0] for w in weights]
        check_first_offset(op, offsets)  # checked with the arguments, before max_indices' values
        if mode == 2:
            cols = [sum(w.shape[1] for w in weights[:t]) for t in range(len(weights))]
            raise_max_indices_error(op, max_indices, cols, rows)
        raise_bag_error(op, indices, offsets, bags, rows, list(padding_idx))
    return grads


TRITON_KERNELS: dict[str, Callable] = {
    "embedding_bag": embedding_bag,
    "embedding_bag_backward": embedding_bag_backward,
    "batched_embedding_bag": batched_embedding_bag,
    "batched_embedding_bag_backward": batched_embedding_bag_backward,
}
OPS = tuple(TRITON_KERNELS)  # the ops the CUDA C++ kernels (csrc/cuda) serve too

"""Functional forms of the mprec layers, argument for argument like ``torch.nn.functional``."""

from __future__ import annotations

import threading
from typing import Optional

import torch
from torch import Tensor

from ..ops.embedding_bag import _EMBEDDING_BAG, MODES, _normalize_padding_idx

__all__ = ["embedding_bag"]

# max_norm renormalises rows of the weight in place, as torch does. Two threads renormalising one row at once
# could scale it twice, and a thread pooling it meanwhile could read it half scaled; calls with max_norm
# therefore renormalise and pool under one lock. Renormalising is idempotent (a renormalised row's norm is
# below max_norm), so the result does not depend on the order of the calls.
_renorm_lock = threading.Lock()


def embedding_bag(
    input: Tensor,
    weight: Tensor,
    offsets: Optional[Tensor] = None,
    max_norm: Optional[float] = None,
    norm_type: float = 2,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: Optional[Tensor] = None,
    include_last_offset: bool = False,
    padding_idx: Optional[int] = None,
) -> Tensor:
    """Drop-in for :func:`torch.nn.functional.embedding_bag`, computed by ``mprec::embedding_bag``.

    Same arguments, defaults, input forms (1-D ``input`` with ``offsets``, or 2-D ``input`` of fixed-size
    bags) and errors. ``scale_grad_by_freq`` divides each row's gradient by the number of times its index
    occurs in the bags, for dense and sparse gradients (torch's CPU kernel divides some rows by another
    index's count, and refuses sparse gradients).
    Beyond torch: uint8 row-wise quantized weights through :func:`mprec.ops.embedding_bag`, and int32
    and int64 indices mixed with offsets of the other dtype (both are widened to int64, as torch does).
    """
    if per_sample_weights is not None and input.size() != per_sample_weights.size():
        raise ValueError(
            f"embedding_bag: If per_sample_weights ({per_sample_weights.shape}) is not None, "
            f"then it must have the same shape as the input ({input.shape})")
    if weight.dim() != 2:
        raise ValueError(f"weight has to be a 2D Tensor, but got Tensor of dimension {weight.dim()}")
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError(
                "if input is 2D, then offsets has to be None, as input is treated is a mini-batch of fixed "
                f"length sequences. However, found offsets of type {type(offsets)}")
        offsets = torch.arange(0, input.numel(), input.size(1), dtype=input.dtype, device=input.device)
        include_last_offset = False
        input = input.reshape(-1)
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
    elif input.dim() == 1:
        if offsets is None:
            raise ValueError("offsets has to be a 1D Tensor but got None")
        if offsets.dim() != 1:
            raise ValueError("offsets has to be a 1D Tensor")
    else:
        raise ValueError(f"input has to be 1D or 2D Tensor, but got Tensor of dimension {input.dim()}")
    if mode not in MODES:
        raise ValueError("mode has to be one of sum, mean or max")
    if mode == "max" and scale_grad_by_freq:
        raise ValueError("max mode does not support scaling the gradient by the frequency")
    if mode == "max" and sparse:
        raise ValueError("max mode does not support sparse weights")
    if per_sample_weights is not None and mode != "sum":
        raise NotImplementedError(
            "embedding_bag: per_sample_weights was not None. per_sample_weights is only supported for "
            f"mode='sum' (got mode='{mode}').")
    if input.dtype != offsets.dtype:
        input, offsets = input.to(torch.int64), offsets.to(torch.int64)
    padding_idx = _normalize_padding_idx("embedding_bag", padding_idx, weight)
    if max_norm is None:
        return _pool(input, weight, offsets, mode, per_sample_weights, include_last_offset, padding_idx, sparse,
                     scale_grad_by_freq)
    with _renorm_lock:
        # Renormalise, in place and outside autograd, the rows this call reads: what torch does.
        with torch.no_grad():
            torch.embedding_renorm_(weight, input, max_norm, norm_type)
        return _pool(input, weight, offsets, mode, per_sample_weights, include_last_offset, padding_idx, sparse,
                     scale_grad_by_freq)


def _pool(input, weight, offsets, mode, per_sample_weights, include_last_offset, padding_idx, sparse,
          scale_grad_by_freq) -> Tensor:
    out, _ = _EMBEDDING_BAG(weight, input, offsets, MODES[mode], per_sample_weights, padding_idx, include_last_offset,
                            None, sparse, scale_grad_by_freq, False)
    return out

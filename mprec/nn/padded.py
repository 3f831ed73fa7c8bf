"""The features' static-shape forms: bags padded to a fixed number of slots, for the lowerings.

Each feature module (:mod:`mprec.nn.features`) computes its vector from ``ids [B, L]`` (0 in empty slots) and
``mask [B, L]`` (a lookup's per-sample weight, 1 unweighted; 0 for an empty slot) with ``padded(...)``, in ops
every tensor compiler lowers: no custom op, no data-dependent shape. :mod:`mprec.lower.forms` pads a batch's
bags and composes these forms into the model; the pieces they share are here.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pool_slots"]


def pool_slots(rows: Tensor, mask: Tensor, mode: str, weighted: bool) -> Tensor:
    """Pools ``rows [B, L, D]`` over the slots whose ``mask [B, L]`` is non-zero (an empty bag gives zeros)."""
    present = mask != 0
    count = present.sum(1, keepdim=True).to(rows.dtype)
    if mode == "max":
        pooled = rows.masked_fill(~present.unsqueeze(2), float("-inf")).amax(1)
        return torch.where(count > 0, pooled, torch.zeros_like(pooled))
    scale = mask.to(rows.dtype) if weighted else present.to(rows.dtype)
    pooled = (rows * scale.unsqueeze(2)).sum(1)
    return pooled / count.clamp(min=1) if mode == "mean" else pooled

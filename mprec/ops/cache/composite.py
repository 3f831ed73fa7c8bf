"""The cache family's aten composition: ``unique_ids`` on any device (the other cache ops serve MP-Cache on the
CPU only). See :mod:`mprec.ops.composite`."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from . import _check_unique_ids

__all__ = ["KERNELS"]


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


KERNELS: dict[str, Callable] = {"unique_ids": unique_ids}

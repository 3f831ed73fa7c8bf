"""Pooling a list of tables in one TBE call, with the tables' optimizer fused into the backward.

Used by :class:`mprec.nn.EmbeddingBagCollection` (its table features) and by the sharded collection's
kernels (:mod:`mprec.distributed`), which pool each rank's shards the same way. ``weights`` has one entry
per feature, in the TBE layout's feature order; features that share a table repeat the same tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..ops.embedding_bag import _BATCHED_EMBEDDING_BAG, FUSED_OPTIMIZERS, MODES

__all__ = ["FusedOptimizer", "pool_tables", "fused_update"]


@dataclass
class FusedOptimizer:
    """The tables' optimizer, applied inside the backward pass (FBGEMM's TBE training): ``"sgd"`` or
    ``"rowwise_adagrad"`` (one accumulator per row). Change ``lr`` at any time (a schedule)."""

    name: str = "sgd"
    lr: float = 0.01
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in FUSED_OPTIMIZERS:
            raise ValueError(f"FusedOptimizer: name must be one of {FUSED_OPTIMIZERS}, got {self.name!r}")

    def new_state(self, weight: Tensor) -> Optional[Tensor]:
        """The optimizer state of one table (None for SGD): row-wise Adagrad's accumulator, one per row,
        float32 (float64 for float64 tables), zero."""
        if self.name != "rowwise_adagrad":
            return None
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
        return torch.zeros(weight.shape[0], device=weight.device, dtype=acc)


class _FusedTableUpdate(torch.autograd.Function):
    """Pools the tables; its backward applies the optimizer to the looked-up rows in place and returns no
    weight gradient, so no ``[rows, D]`` (or sparse) gradient is ever built."""

    @staticmethod
    def forward(ctx, indices, offsets, mode, per_sample_weights, pads, optimizer, states, *weights):
        out, _ = _BATCHED_EMBEDDING_BAG(list(weights), indices, offsets, mode, per_sample_weights, pads, None, False,
                                        False)
        ctx.args = (list(weights), states, indices, offsets, mode, per_sample_weights, pads, optimizer)
        return out

    @staticmethod
    def backward(ctx, grad):
        weights, states, indices, offsets, mode, psw, pads, optimizer = ctx.args
        with torch.no_grad():
            fused_update(weights, states, grad.contiguous(), indices, offsets, mode, psw, pads, optimizer)
        return (None,) * (7 + len(weights))


def updates_in_place(weights: Sequence[Tensor], optimizer: Optional[FusedOptimizer]) -> bool:
    """Whether :func:`pool_tables` records a fused table update (and so reads the optimizer's states): a fused
    optimizer, autograd recording, and a table that requires grad."""
    return optimizer is not None and torch.is_grad_enabled() and any(w.requires_grad for w in weights)


def pool_tables(weights: Sequence[Tensor], indices: Tensor, offsets: Tensor, mode: int,
                per_sample_weights: Optional[Tensor] = None, padding_idx: Sequence[int] = (),
                optimizer: Optional[FusedOptimizer] = None, states: Sequence[Optional[Tensor]] = (),
                sparse: bool = False) -> Tensor:
    """``[B, sum D]``: one ``mprec::batched_embedding_bag`` call over ``weights`` (one per feature).

    With an ``optimizer`` and autograd recording, the backward updates the tables in place (``states``:
    one per feature, :meth:`FusedOptimizer.new_state`) instead of returning their gradients; otherwise the
    op's own autograd gives dense (or, with ``sparse``, COO) table gradients.
    """
    weights = list(weights)
    if updates_in_place(weights, optimizer):
        if mode == MODES["max"]:
            raise ValueError("fused table optimizers support modes sum and mean, not max")
        if per_sample_weights is not None and per_sample_weights.requires_grad:
            raise ValueError("per_sample_weights cannot require grad with a fused table optimizer")
        return _FusedTableUpdate.apply(indices, offsets, mode, per_sample_weights, list(padding_idx), optimizer,
                                       list(states), *weights)
    out, _ = _BATCHED_EMBEDDING_BAG(weights, indices, offsets, mode, per_sample_weights, list(padding_idx), None,
                                    sparse, False)
    return out


def fused_update(weights: Sequence[Tensor], states: Sequence[Optional[Tensor]], grad: Tensor, indices: Tensor,
                 offsets: Tensor, mode: int, per_sample_weights: Optional[Tensor], padding_idx: Sequence[int],
                 optimizer: FusedOptimizer) -> None:
    """Applies ``optimizer`` in place given the gradient ``[B, sum D]`` of a :func:`pool_tables` output.

    A table that several features share gets one update from the sum of their gradients (FBGEMM's exact
    optimizers), not one per feature: row-wise Adagrad's accumulator sees each row once per step.
    """
    weights, states, pads = list(weights), list(states), list(padding_idx)
    table_of: dict[int, int] = {}
    tables: list[list[int]] = []  # feature positions of each distinct table
    for f, w in enumerate(weights):
        t = table_of.setdefault(id(w), len(tables))
        if t == len(tables):
            tables.append([])
        tables[t].append(f)
    if len(tables) == len(weights):
        _update(weights, states, grad, indices, offsets, mode, per_sample_weights, pads, optimizer)
        return
    # Shared tables: each table's features become one feature of k * B bags (its features' bags one after
    # the other, with their gradient rows stacked), and tables with the same k are updated in one call.
    T = len(weights)
    B = (offsets.numel() - 1) // T
    starts = offsets[::B].tolist() if B else [0] * (T + 1)
    columns = [0]
    for w in weights:
        columns.append(columns[-1] + w.shape[1])
    by_count: dict[int, list[int]] = {}
    for t, features in enumerate(tables):
        by_count.setdefault(len(features), []).append(t)
    for group in by_count.values():
        idx, offs, psw, grads, base = [], [], [], [], 0
        for t in group:
            for f in tables[t]:
                idx.append(indices[starts[f]:starts[f + 1]])
                offs.append(offsets[f * B:(f + 1) * B] - starts[f] + base)
                base += starts[f + 1] - starts[f]
                if per_sample_weights is not None:
                    psw.append(per_sample_weights[starts[f]:starts[f + 1]])
            grads.append(torch.cat([grad[:, columns[f]:columns[f + 1]] for f in tables[t]], 0))
        offs.append(offsets.new_tensor([base]))
        first = [tables[t][0] for t in group]
        _update([weights[f] for f in first], [states[f] for f in first] if states else [],
                # [k * B, D_t] per table, side by side: the update's [B', sum D] layout with B' = k * B
                torch.cat(grads, 1).contiguous(), torch.cat(idx), torch.cat(offs), mode,
                torch.cat(psw) if per_sample_weights is not None else None,
                [pads[f] for f in first] if pads else [], optimizer)


def _update(weights, states, grad, indices, offsets, mode, per_sample_weights, pads, optimizer) -> None:
    state = [s for s in states if s is not None] if optimizer.name == "rowwise_adagrad" else []
    torch.ops.mprec.batched_embedding_bag_update(weights, state, grad, indices, offsets, mode, per_sample_weights,
                                                 pads, optimizer.name, optimizer.lr, optimizer.eps)

"""Embedding-bag layers: a drop-in for ``torch.nn.EmbeddingBag`` and a many-table collection."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from dataclasses import dataclass

from ..ops.embedding_bag import FUSED_OPTIMIZERS, MODES, _normalize_padding_idx
from .. import memory
from . import functional as F

__all__ = ["EmbeddingBag", "EmbeddingBagCollection", "FusedOptimizer"]


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


class _FusedTableUpdate(torch.autograd.Function):
    """Pools the tables; its backward applies the optimizer to the looked-up rows in place and returns no
    weight gradient, so no ``[rows, D]`` (or sparse) gradient is ever built."""

    @staticmethod
    def forward(ctx, indices, offsets, mode, per_sample_weights, pads, optimizer, state, *weights):
        out, _ = torch.ops.mprec.batched_embedding_bag(list(weights), indices, offsets, mode, per_sample_weights,
                                                       pads, None, False)
        ctx.args = (list(weights), state, indices, offsets, mode, per_sample_weights, pads, optimizer)
        return out

    @staticmethod
    def backward(ctx, grad):
        weights, state, indices, offsets, mode, psw, pads, optimizer = ctx.args
        with torch.no_grad():
            torch.ops.mprec.batched_embedding_bag_update(weights, state, grad.contiguous(), indices, offsets, mode,
                                                         psw, pads, optimizer.name, optimizer.lr, optimizer.eps)
        return (None,) * (7 + len(weights))


class EmbeddingBag(nn.Module):
    """Drop-in for :class:`torch.nn.EmbeddingBag`, computed by ``mprec::embedding_bag``.

    Same constructor, ``forward(input, offsets=None, per_sample_weights=None)`` (1-D input with offsets,
    or 2-D input of fixed-size bags), ``from_pretrained``, ``reset_parameters`` and ``state_dict`` (key
    ``weight``), so a model switches by changing the import. ``scale_grad_by_freq=True`` raises
    ``NotImplementedError``.
    """

    __constants__ = ["num_embeddings", "embedding_dim", "max_norm", "norm_type", "scale_grad_by_freq", "mode",
                     "sparse", "include_last_offset", "padding_idx"]

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        _weight: Optional[Tensor] = None,
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if scale_grad_by_freq:
            raise NotImplementedError("mprec.nn.EmbeddingBag: scale_grad_by_freq=True is not supported yet")
        if mode not in MODES:
            raise ValueError("mode has to be one of sum, mean or max")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        if padding_idx is not None:
            if padding_idx > 0:
                assert padding_idx < self.num_embeddings, "padding_idx must be within num_embeddings"
            elif padding_idx < 0:
                assert padding_idx >= -self.num_embeddings, "padding_idx must be within num_embeddings"
                padding_idx = self.num_embeddings + padding_idx
        self.padding_idx = padding_idx
        if _weight is None:
            self.weight = nn.Parameter(torch.empty((num_embeddings, embedding_dim), device=device, dtype=dtype))
            self.reset_parameters()
        else:
            assert list(_weight.shape) == [num_embeddings, embedding_dim], \
                "Shape of weight does not match num_embeddings and embedding_dim"
            self.weight = nn.Parameter(_weight)
        self.mode = mode
        self.sparse = sparse
        self.include_last_offset = include_last_offset

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight)
        self._fill_padding_idx_with_zero()

    def _fill_padding_idx_with_zero(self) -> None:
        if self.padding_idx is not None:
            with torch.no_grad():
                self.weight[self.padding_idx].fill_(0)

    def forward(self, input: Tensor, offsets: Optional[Tensor] = None,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        return F.embedding_bag(input, self.weight, offsets, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                               self.mode, self.sparse, per_sample_weights, self.include_last_offset, self.padding_idx)

    def extra_repr(self) -> str:
        s = "{num_embeddings}, {embedding_dim}"
        if self.max_norm is not None:
            s += ", max_norm={max_norm}"
        if self.norm_type != 2:
            s += ", norm_type={norm_type}"
        s += ", mode={mode!r}"
        if self.padding_idx is not None:
            s += ", padding_idx={padding_idx}"
        return s.format(**{k: getattr(self, k) for k in self.__constants__})

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Tensor,
        freeze: bool = True,
        max_norm: Optional[float] = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        sparse: bool = False,
        include_last_offset: bool = False,
        padding_idx: Optional[int] = None,
    ) -> "EmbeddingBag":
        assert embeddings.dim() == 2, "Embeddings parameter is expected to be 2-dimensional"
        rows, cols = embeddings.shape
        bag = cls(num_embeddings=rows, embedding_dim=cols, _weight=embeddings, max_norm=max_norm,
                  norm_type=norm_type, scale_grad_by_freq=scale_grad_by_freq, mode=mode, sparse=sparse,
                  include_last_offset=include_last_offset, padding_idx=padding_idx)
        bag.weight.requires_grad = not freeze
        return bag


REPRESENTATIONS = ("table", "dhe", "hybrid")


class EmbeddingBagCollection(nn.Module):
    """Many sparse features, each represented as a table, a DHE or a hybrid of both (MP-Rec's "select").

    Args:
        num_embeddings: rows of each feature's table (ids of a DHE feature are not bounded by it).
        embedding_dim: output width of each feature (one int for all, or one per feature).
        mode: ``"sum"``, ``"mean"`` or ``"max"``, shared by the features.
        padding_idx: one per feature (None for none; table features only), or None.
        sparse: sparse COO table gradients, as ``EmbeddingBag(sparse=True)``.
        representations: one of ``"table"``, ``"dhe"``, ``"hybrid"`` per feature (default: all tables).
        dhe: keyword arguments for every :class:`mprec.nn.DHEEmbeddingBag` (``k``, ``m``, ``decoder``, ...);
            feature ``t`` uses seed ``dhe.get("seed", 0) + t`` so features hash differently.
        hybrid_dhe_dim: the DHE share of a hybrid feature's width (default half, rounded down); the table
            takes the rest, so every representation of a feature has the same output width.
        optimizer: a :class:`FusedOptimizer` to train the tables inside the backward pass (no table
            gradient is built; ``table_parameters()`` are then left out of ``torch.optim``). Row-wise
            Adagrad's accumulators are the buffers ``optimizer_state_<i>``.

    ``forward(indices, offsets, per_sample_weights=None)`` takes FBGEMM's TBE layout (indices of every
    feature concatenated, feature by feature; ``offsets`` of ``T * B + 1`` entries) and returns
    ``[B, sum(embedding_dim)]``. All table parts are pooled by one ``mprec::batched_embedding_bag`` call.
    State dict keys: ``weights.<i>`` for the i-th table (features in order, hybrids included) and
    ``dhe.<t>.*`` for feature t's DHE.
    """

    def __init__(
        self,
        num_embeddings: Sequence[int],
        embedding_dim: Union[int, Sequence[int]],
        mode: str = "sum",
        padding_idx: Optional[Sequence[Optional[int]]] = None,
        sparse: bool = False,
        representations: Optional[Sequence[str]] = None,
        dhe: Optional[dict] = None,
        hybrid_dhe_dim: Optional[Union[int, Sequence[int]]] = None,
        optimizer: Optional[FusedOptimizer] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        num_embeddings = list(num_embeddings)
        if not num_embeddings:
            raise ValueError("EmbeddingBagCollection needs at least one table")
        T = len(num_embeddings)
        dims = [embedding_dim] * T if isinstance(embedding_dim, int) else list(embedding_dim)
        if len(dims) != T:
            raise ValueError(f"EmbeddingBagCollection: {len(dims)} embedding dims for {T} tables")
        if mode not in MODES:
            raise ValueError(f"EmbeddingBagCollection: mode must be one of {sorted(MODES)}, got {mode!r}")
        if padding_idx is not None and len(padding_idx) != T:
            raise ValueError(f"EmbeddingBagCollection: {len(padding_idx)} padding_idx for {T} tables")
        reps = ["table"] * T if representations is None else list(representations)
        if len(reps) != T:
            raise ValueError(f"EmbeddingBagCollection: {len(reps)} representations for {T} features")
        for t, r in enumerate(reps):
            if r not in REPRESENTATIONS:
                raise ValueError(f"EmbeddingBagCollection: representation of feature {t} must be one of "
                                 f"{REPRESENTATIONS}, got {r!r}")
            if r != "table" and padding_idx is not None and padding_idx[t] is not None:
                raise ValueError(f"EmbeddingBagCollection: padding_idx is for table features; feature {t} is {r!r}")
        hybrid_dims = [None] * T
        for t, r in enumerate(reps):
            if r == "hybrid":
                h = (dims[t] // 2 if hybrid_dhe_dim is None else
                     hybrid_dhe_dim if isinstance(hybrid_dhe_dim, int) else list(hybrid_dhe_dim)[t])
                if not 0 < h < dims[t]:
                    raise ValueError(f"EmbeddingBagCollection: hybrid feature {t} of width {dims[t]} cannot give "
                                     f"{h} columns to its DHE")
                hybrid_dims[t] = h
        self.num_embeddings = num_embeddings
        self.embedding_dims = dims
        self.representations = reps
        self.mode = mode
        self.sparse = sparse
        self.padding_idx = None if padding_idx is None else [
            None if p is None else _normalize_padding_idx("EmbeddingBagCollection", p, n)
            for p, n in zip(padding_idx, num_embeddings)]
        # Table parts, in feature order: (feature, width).
        self.table_features = [t for t in range(T) if reps[t] != "dhe"]
        table_dims = [dims[t] - (hybrid_dims[t] or 0) for t in self.table_features]
        # Large tables on 2 MiB pages (mprec.memory): random row reads then rarely miss the TLB.
        self.weights = nn.ParameterList(
            [nn.Parameter(memory.empty((num_embeddings[t], d), device=device, dtype=dtype))
             for t, d in zip(self.table_features, table_dims)])
        from .dhe import DHEEmbeddingBag  # dhe.py imports this module

        dhe = dict(dhe or {})
        base_seed = dhe.pop("seed", 0)
        self.dhe = nn.ModuleDict({
            str(t): DHEEmbeddingBag(dims[t] if reps[t] == "dhe" else hybrid_dims[t], mode=mode, seed=base_seed + t,
                                    device=device, dtype=dtype, **dhe)
            for t in range(T) if reps[t] != "table"})
        if optimizer is not None:
            if mode == "max":
                raise ValueError("EmbeddingBagCollection: fused optimizers support modes sum and mean, not max")
            if sparse:
                raise ValueError("EmbeddingBagCollection: a fused optimizer builds no table gradient; sparse=True "
                                 "does not apply")
        self.optimizer = optimizer
        # Row-wise Adagrad's accumulators: buffers, so checkpoints carry them.
        for i, w in enumerate(self.weights):
            if optimizer is not None and optimizer.name == "rowwise_adagrad":
                acc = torch.float64 if w.dtype == torch.float64 else torch.float32
                self.register_buffer(f"optimizer_state_{i}", torch.zeros(w.shape[0], device=device, dtype=acc))
        self.reset_parameters()

    def _optimizer_state(self) -> list:
        if self.optimizer is None or self.optimizer.name != "rowwise_adagrad":
            return []
        return [getattr(self, f"optimizer_state_{i}") for i in range(len(self.weights))]

    def table_parameters(self) -> list:
        """The tables (trained by the fused optimizer when one is set)."""
        return list(self.weights)

    def _pool_tables(self, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor], pads) -> Tensor:
        if self.optimizer is not None and torch.is_grad_enabled() and any(w.requires_grad for w in self.weights):
            if per_sample_weights is not None and per_sample_weights.requires_grad:
                raise ValueError("EmbeddingBagCollection: per_sample_weights cannot require grad with a fused "
                                 "optimizer")
            return _FusedTableUpdate.apply(indices, offsets, MODES[self.mode], per_sample_weights, pads, self.optimizer,
                                           self._optimizer_state(), *self.weights)
        out, _ = torch.ops.mprec.batched_embedding_bag(list(self.weights), indices, offsets, MODES[self.mode],
                                                       per_sample_weights, pads, None, self.sparse)
        return out

    @property
    def num_tables(self) -> int:
        return len(self.num_embeddings)

    def reset_parameters(self) -> None:
        # Uniform in +-1/sqrt(rows), as the DLRM reference initialises its tables.
        with torch.no_grad():
            for i, w in enumerate(self.weights):
                t = self.table_features[i]
                bound = 1.0 / max(1, w.shape[0]) ** 0.5
                w.uniform_(-bound, bound)
                if self.padding_idx is not None and self.padding_idx[t] is not None:
                    w[self.padding_idx[t]].fill_(0)

    def _pads(self, features) -> list:
        return [] if self.padding_idx is None else [-1 if self.padding_idx[t] is None else self.padding_idx[t]
                                                     for t in features]

    def forward(self, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor] = None) -> Tensor:
        if not self.dhe:
            return self._pool_tables(indices, offsets, per_sample_weights, self._pads(range(self.num_tables)))
        T = self.num_tables
        if (offsets.numel() - 1) % T:
            raise ValueError(f"EmbeddingBagCollection: offsets must have T * B + 1 entries for T = {T} features, "
                             f"got {offsets.numel()}")
        B = (offsets.numel() - 1) // T
        starts = offsets[::B].tolist() if B else [0] * (T + 1)
        def lookups(t):
            return slice(starts[t], starts[t + 1])
        def psw(t):
            return None if per_sample_weights is None else per_sample_weights[lookups(t)]
        pieces: list[list[Tensor]] = [[] for _ in range(T)]
        if self.table_features:
            # One TBE call over the table parts: their lookups, re-based offsets.
            idx = torch.cat([indices[lookups(t)] for t in self.table_features])
            offs, base = [], 0
            for t in self.table_features:
                offs.append(offsets[t * B:(t + 1) * B] - starts[t] + base)
                base += starts[t + 1] - starts[t]
            offs.append(offsets.new_tensor([base]))
            weights = None if per_sample_weights is None else torch.cat([psw(t) for t in self.table_features])
            tables = self._pool_tables(idx, torch.cat(offs), weights, self._pads(self.table_features))
            for t, part in zip(self.table_features, tables.split([w.shape[1] for w in self.weights], dim=1)):
                pieces[t].append(part)
        for key, module in self.dhe.items():
            t = int(key)
            pieces[t].append(module(indices[lookups(t)], offsets[t * B:(t + 1) * B] - starts[t], psw(t)))
        return torch.cat([torch.cat(p, dim=1) if len(p) > 1 else p[0] for p in pieces], dim=1)

    def extra_repr(self) -> str:
        return (f"features={list(zip(self.representations, self.num_embeddings, self.embedding_dims))}, "
                f"mode={self.mode}")

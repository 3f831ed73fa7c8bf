"""Embedding-bag layers: a drop-in for ``torch.nn.EmbeddingBag`` and a many-table collection."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..ops.embedding_bag import MODES, _normalize_padding_idx
from . import functional as F

__all__ = ["EmbeddingBag", "EmbeddingBagCollection"]


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


class EmbeddingBagCollection(nn.Module):
    """One table per sparse feature, all pooled by a single ``mprec::batched_embedding_bag`` call.

    Args:
        num_embeddings: rows of each table.
        embedding_dim: width of each table (one int for all, or one per table).
        mode: ``"sum"``, ``"mean"`` or ``"max"``, shared by the tables.
        padding_idx: one per table (None for none), or None.
        sparse: sparse COO weight gradients, as ``EmbeddingBag(sparse=True)``.

    ``forward(indices, offsets, per_sample_weights=None)`` takes FBGEMM's TBE layout (indices of every
    table concatenated, table by table; ``offsets`` of ``T * B + 1`` entries) and returns
    ``[B, sum(embedding_dim)]``. State dict keys: ``weights.<t>``.
    """

    def __init__(
        self,
        num_embeddings: Sequence[int],
        embedding_dim: Union[int, Sequence[int]],
        mode: str = "sum",
        padding_idx: Optional[Sequence[Optional[int]]] = None,
        sparse: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        num_embeddings = list(num_embeddings)
        if not num_embeddings:
            raise ValueError("EmbeddingBagCollection needs at least one table")
        dims = [embedding_dim] * len(num_embeddings) if isinstance(embedding_dim, int) else list(embedding_dim)
        if len(dims) != len(num_embeddings):
            raise ValueError(f"EmbeddingBagCollection: {len(dims)} embedding dims for {len(num_embeddings)} tables")
        if mode not in MODES:
            raise ValueError(f"EmbeddingBagCollection: mode must be one of {sorted(MODES)}, got {mode!r}")
        if padding_idx is not None and len(padding_idx) != len(num_embeddings):
            raise ValueError(f"EmbeddingBagCollection: {len(padding_idx)} padding_idx for {len(num_embeddings)} tables")
        self.num_embeddings = num_embeddings
        self.embedding_dims = dims
        self.mode = mode
        self.sparse = sparse
        self.padding_idx = None if padding_idx is None else [
            None if p is None else _normalize_padding_idx("EmbeddingBagCollection", p, n)
            for p, n in zip(padding_idx, num_embeddings)]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.empty((n, d), device=device, dtype=dtype)) for n, d in zip(num_embeddings, dims)])
        self.reset_parameters()

    @property
    def num_tables(self) -> int:
        return len(self.num_embeddings)

    def reset_parameters(self) -> None:
        # Uniform in +-1/sqrt(rows), as the DLRM reference initialises its tables.
        with torch.no_grad():
            for t, w in enumerate(self.weights):
                bound = 1.0 / max(1, w.shape[0]) ** 0.5
                w.uniform_(-bound, bound)
                if self.padding_idx is not None and self.padding_idx[t] is not None:
                    w[self.padding_idx[t]].fill_(0)

    def forward(self, indices: Tensor, offsets: Tensor, per_sample_weights: Optional[Tensor] = None) -> Tensor:
        pads = [] if self.padding_idx is None else [-1 if p is None else p for p in self.padding_idx]
        out, _ = torch.ops.mprec.batched_embedding_bag(
            list(self.weights), indices, offsets, MODES[self.mode], per_sample_weights, pads, None, self.sparse)
        return out

    def extra_repr(self) -> str:
        return f"tables={list(zip(self.num_embeddings, self.embedding_dims))}, mode={self.mode}"

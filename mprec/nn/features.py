"""The feature kinds of an :class:`mprec.nn.EmbeddingBagCollection`: table, DHE and hybrid.

Each is a module with one interface, so the collection composes them without knowing their kind:

- ``table_dim``: the columns the feature takes from a table (0: it has none). A feature with a table
  holds it as ``weight [num_embeddings, table_dim]``, pooled with ``mode`` and ``padding_idx``; the
  collection pools every feature's table in one ``mprec::batched_embedding_bag`` call (or, sharded, TorchRec
  moves the lookups to the ranks that hold the rows and the pooled rows back).
- ``forward(table, ids, offsets, per_sample_weights)`` completes the feature's vector ``[B,
  embedding_dim]`` from its pooled table columns (``table``, None without a table) and the feature's own
  bags (``ids``, ``offsets`` of ``B`` entries), which a DHE decodes.
- ``dhe``: the :class:`mprec.nn.DHEEmbeddingBag` of a DHE or hybrid feature (caches are enabled on it).
- ``padded(ids, mask, hash_fn, one_hot)``: the same vector from bags padded to fixed slots, in plain aten ops
  with static shapes (:mod:`mprec.nn.padded`): the form the lowerings (:mod:`mprec.lower`) compose.

State dict keys (the module sits at ``embedding_bags.<table name>``): ``weight`` for a table, ``dhe.*`` for a
DHE, both for a hybrid, so a collection of tables has TorchRec's keys.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .. import memory
from ..ops.embedding_bag import MODES, _normalize_padding_idx
from .dhe import DHEEmbeddingBag, hybrid_vectors
from .padded import pool_slots

__all__ = ["TableFeature", "DHEFeature", "HybridFeature", "FEATURE_KINDS", "HYBRID_FORMS"]

#: How a hybrid feature divides its vectors. ``"two"`` (the MP-Rec artifact's): a table vector and a DHE vector,
#: each of the feature's width, side by side; a model interacts them as two features. ``"split"``: one vector
#: of the feature's width, ``table_dim`` columns from the table and the rest from the DHE.
HYBRID_FORMS = ("two", "split")


class _Table(nn.Module):
    """A table part: ``weight`` and how it is pooled and initialised."""

    def __init__(self, num_embeddings: int, table_dim: int, mode: str, padding_idx: Optional[int],
                 init_fn: Optional[Callable[[Tensor], object]], device, dtype) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"{type(self).__name__}: mode must be one of {sorted(MODES)}, got {mode!r}")
        if num_embeddings < 1 or table_dim < 1:
            raise ValueError(f"{type(self).__name__}: a table needs num_embeddings >= 1 and a width >= 1, got "
                             f"[{num_embeddings}, {table_dim}]")
        self.num_embeddings, self.table_dim, self.mode = num_embeddings, table_dim, mode
        self.padding_idx = None if padding_idx is None else _normalize_padding_idx(
            type(self).__name__, padding_idx, num_embeddings)
        self.init_fn = init_fn
        # Large tables on 2 MiB pages (mprec.memory): random row reads then rarely miss the TLB.
        self.weight = nn.Parameter(memory.empty((num_embeddings, table_dim), device=device, dtype=dtype))

    def reset_table(self) -> None:
        """Uniform in +-1/sqrt(rows), as the DLRM reference and TorchRec initialise tables (or ``init_fn``)."""
        if self.weight.device.type == "meta":
            return
        with torch.no_grad():
            if self.init_fn is not None:
                self.init_fn(self.weight)
            else:
                bound = 1.0 / math.sqrt(self.num_embeddings)
                self.weight.uniform_(-bound, bound)
            if self.padding_idx is not None:
                self.weight[self.padding_idx].fill_(0)

    @property
    def padding_row(self) -> int:
        """The padding row as the ops take it (-1: none)."""
        return -1 if self.padding_idx is None else self.padding_idx

    def pool_padded(self, ids: Tensor, mask: Tensor, one_hot: bool = False) -> Tensor:
        """The table part's static-shape form (:mod:`mprec.nn.padded`): a gather, or, with ``one_hot``, a one-hot
        count matrix times the table (a matmul, for small tables)."""
        weight, mode = self.weight, self.mode
        weighted = mode == "sum"
        if self.padding_idx is not None:
            mask = mask * (ids != self.padding_idx).to(mask.dtype)
        if one_hot and mode != "max":
            # [B, rows] counts (or weight sums) of each row in the bag, times the table: a matmul.
            scale = mask if weighted else (mask != 0).to(mask.dtype)
            # A comparison, not F.one_hot: one_hot reads the ids to validate them, a host round trip.
            rows = torch.arange(weight.shape[0], device=ids.device)
            counts = ((ids.unsqueeze(2) == rows).to(weight.dtype) * scale.unsqueeze(2).to(weight.dtype)).sum(1)
            pooled = counts @ weight
            if mode == "mean":
                pooled = pooled / (mask != 0).sum(1, keepdim=True).clamp(min=1).to(pooled.dtype)
            return pooled
        rows = weight.index_select(0, ids.reshape(-1)).view(*ids.shape, weight.shape[1])
        return pool_slots(rows, mask, mode, weighted)


class TableFeature(_Table):
    """A feature pooled from its table: ``weight [num_embeddings, embedding_dim]``."""

    kind = "table"

    def __init__(self, num_embeddings: int, embedding_dim: int, mode: str = "sum", padding_idx: Optional[int] = None,
                 init_fn: Optional[Callable[[Tensor], object]] = None, device=None, dtype=None) -> None:
        super().__init__(num_embeddings, embedding_dim, mode, padding_idx, init_fn, device, dtype)
        self.embedding_dim = embedding_dim
        self.dhe = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_table()

    def forward(self, table: Optional[Tensor], ids: Tensor, offsets: Tensor,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        return table

    def padded(self, ids: Tensor, mask: Tensor, hash_fn: Optional[Callable] = None, one_hot: bool = False) -> Tensor:
        return self.pool_padded(ids, mask, one_hot)

    def extra_repr(self) -> str:
        pad = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}, mode={self.mode!r}{pad}"


class DHEFeature(nn.Module):
    """A feature with no table: its ids are decoded by ``dhe`` (:class:`mprec.nn.DHEEmbeddingBag`), so they are
    not bounded by a row count (``num_embeddings`` only records the range the feature was declared with).
    ``dhe_kwargs`` go to the DHE (``k``, ``m``, ``decoder``, ``seed``, ...)."""

    kind = "dhe"
    table_dim = 0
    padding_row = -1

    def __init__(self, embedding_dim: int, mode: str = "sum", num_embeddings: Optional[int] = None, device=None,
                 dtype=None, **dhe_kwargs) -> None:
        super().__init__()
        self.embedding_dim, self.num_embeddings = embedding_dim, num_embeddings
        self.dhe = DHEEmbeddingBag(embedding_dim, mode=mode, device=device, dtype=dtype, **dhe_kwargs)

    @property
    def mode(self) -> str:
        return self.dhe.mode

    def reset_parameters(self) -> None:
        self.dhe.reset_parameters()

    def forward(self, table: Optional[Tensor], ids: Tensor, offsets: Tensor,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        return self.dhe(ids, offsets, per_sample_weights)

    def padded(self, ids: Tensor, mask: Tensor, hash_fn: Optional[Callable] = None, one_hot: bool = False) -> Tensor:
        return self.dhe.padded(ids, mask, hash_fn)


class HybridFeature(_Table):
    """Table and DHE side by side: ``[table (table_dim columns) | DHE (dhe_dim columns)]``. The table part is
    ``weight`` (pooled, and sharded, as a table feature's), the DHE part ``dhe``. In the ``"two"`` form
    (:data:`HYBRID_FORMS`) both parts have the feature's width; in the ``"split"`` form they share it."""

    kind = "hybrid"

    def __init__(self, num_embeddings: int, table_dim: int, dhe_dim: int, mode: str = "sum",
                 init_fn: Optional[Callable[[Tensor], object]] = None, device=None, dtype=None,
                 **dhe_kwargs) -> None:
        # No padding row: the DHE part would still decode the padding id.
        super().__init__(num_embeddings, table_dim, mode, None, init_fn, device, dtype)
        if dhe_dim < 1:
            raise ValueError(f"HybridFeature: dhe_dim must be >= 1, got {dhe_dim}")
        self.embedding_dim = table_dim + dhe_dim
        self.dhe = DHEEmbeddingBag(dhe_dim, mode=mode, device=device, dtype=dtype, **dhe_kwargs)
        self.reset_table()

    def reset_parameters(self) -> None:
        self.reset_table()
        self.dhe.reset_parameters()

    def forward(self, table: Optional[Tensor], ids: Tensor, offsets: Tensor,
                per_sample_weights: Optional[Tensor] = None) -> Tensor:
        return hybrid_vectors(table, self.dhe(ids, offsets, per_sample_weights))

    def padded(self, ids: Tensor, mask: Tensor, hash_fn: Optional[Callable] = None, one_hot: bool = False) -> Tensor:
        return hybrid_vectors(self.pool_padded(ids, mask, one_hot), self.dhe.padded(ids, mask, hash_fn))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, table_dim={self.table_dim}, mode={self.mode!r}"


FEATURE_KINDS = {"table": TableFeature, "dhe": DHEFeature, "hybrid": HybridFeature}

"""DLRM (Naumov et al., 2019) with a representation per sparse feature: table, DHE or hybrid (MP-Rec).

    dense [B, 13] -> bottom MLP -> x [B, D]
    indices, offsets (TBE layout) or a KeyedJaggedTensor -> EmbeddingBagCollection -> e_1..e_V [B, D] each
    interaction: "dot" (x and the pairwise dot products of x, e_1..e_V, strictly lower triangle, by
                 ``mprec::dlrm_interaction``) or
                 "cat" (x, e_1..e_V concatenated)
    -> top MLP -> logit [B]

A table or DHE feature is one vector; a hybrid feature is two (its table vector and its DHE vector, as in the
MP-Rec artifact: 26 hybrid features give V = 52), or one in the ``"split"`` form.

The sparse features are named ``cat_0 .. cat_{T-1}`` (TorchRec's DLRM names), each with a table of the same
name. The collection's output is read by key, so a collection that returns its keys in another order (sharded
by TorchRec's DistributedModelParallel) gives the same model. ``forward`` returns logits (train with
``BCEWithLogitsLoss``; ``predict`` gives probabilities). The presets are the MP-Rec artifact's: ``kaggle``
(sparse dim 16, bottom 13-512-256-64-16, top 512-256-1) and ``terabyte`` (dim 64, bottom 13-512-256-64, top
512-512-256-1). MLP weights are initialised as the DLRM reference does (normal, std sqrt(2 / (fan_in +
fan_out)); bias std sqrt(1 / fan_out)).

:class:`DLRMTrain` adds the loss in the form TorchRec's train pipelines drive (``torchrec.models.dlrm.DLRMTrain``'s):
sharded by DistributedModelParallel, ``torchrec.distributed.train_pipeline.TrainPipelineSparseDist`` trains it,
starting each batch's input all-to-all while the previous batch computes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..data.criteo import NUM_DENSE
from ..nn.collection import EmbeddingBagCollection
from ..nn.pooling import FusedOptimizer
from ..nn.mlp import MLP
from ..ops.interaction import dlrm_interaction, dlrm_interaction_width

__all__ = ["DLRM", "DLRMTrain", "PRESETS", "INTERACTIONS", "feature_names", "keyed_interaction", "keyed_values",
           "vector_order"]

PRESETS = {
    "kaggle": dict(embedding_dim=16, bottom=(512, 256, 64, 16), top=(512, 256, 1)),
    "terabyte": dict(embedding_dim=64, bottom=(512, 256, 64), top=(512, 512, 256, 1)),
}
INTERACTIONS = ("dot", "cat")
INTERACTION_PAD = 8


def feature_names(num_features: int) -> list[str]:
    """The sparse features' names, as TorchRec's DLRM names Criteo's categorical columns."""
    return [f"cat_{t}" for t in range(num_features)]


def keyed_values(keyed, keys: Sequence[str]) -> Tensor:
    """The columns of a ``torchrec.KeyedTensor`` (or an awaitable of one) in the order of ``keys``."""
    if list(keyed.keys()) == list(keys):
        return keyed.values()
    widths = keyed.length_per_key()
    order = vector_order(keyed, keys, widths[0]) if len(set(widths)) == 1 else None
    if order is not None:
        # A sharded collection's keys in another order (rank by rank), all as wide: one gather of whole vectors,
        # where splitting into keys and concatenating them copied twice as slowly, and its backward as slowly.
        return _PermuteVectors.apply(keyed.values(), order, widths[0])
    by_key = keyed.to_dict()
    return torch.cat([by_key[k] for k in keys], dim=1)


def vector_order(keyed, keys: Sequence[str], width: int) -> Optional[list[int]]:
    """Where each ``width``-wide vector of ``keys`` (in that order, each key's vectors in turn) is among the
    ``width``-wide vectors of ``keyed.values()``: the order :func:`mprec.ops.dlrm_interaction` reads them in
    where they are, for what :func:`keyed_values` would copy. None when they are in that order already, or when
    ``keyed`` does not hold exactly ``keys``, each a whole number of vectors wide."""
    have, keys = list(keyed.keys()), list(keys)
    widths = keyed.length_per_key()
    if have == keys or sorted(have) != sorted(keys) or any(w % width for w in widths):
        return None
    first, start = {}, 0
    for key, w in zip(have, widths):
        first[key] = range(start // width, (start + w) // width)
        start += w
    return [v for key in keys for v in first[key]]


def keyed_interaction(dense: Tensor, keyed, keys: Sequence[str], pad_to: int) -> Tensor:
    """:func:`mprec.ops.dlrm_interaction` of ``dense [B, D]`` and the vectors of a ``torchrec.KeyedTensor`` (or an
    awaitable of one) in the order of ``keys``: a sharded collection's vectors, which arrive rank by rank, are
    read where they are (no reordering copy, forward or backward)."""
    order = vector_order(keyed, keys, dense.shape[1])
    values = keyed_values(keyed, keys) if order is None else keyed.values()
    return dlrm_interaction(dense, values, pad_to, order)


class _PermuteVectors(torch.autograd.Function):
    """``values [B, K * width]`` with its K vectors in the order ``order`` (a permutation); the backward puts the
    gradient's vectors back by the inverse permutation."""

    @staticmethod
    def forward(ctx, values: Tensor, order: list, width: int) -> Tensor:
        index = torch.tensor(order, device=values.device)
        ctx.inverse, ctx.width = torch.argsort(index), width
        return _gather_vectors(values, index, width)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _gather_vectors(grad, ctx.inverse, ctx.width), None, None


def _gather_vectors(values: Tensor, index: Tensor, width: int) -> Tensor:
    rows = values.shape[0]
    return values.reshape(rows, -1, width).index_select(1, index).reshape(rows, -1)


# torch.fx records these calls whole rather than tracing into them: TorchRec's train pipelines trace the model
# symbolically to find each sharded collection's input, and these read the keys of the collection's output.
torch.fx.wrap("keyed_values")
torch.fx.wrap("keyed_interaction")


class DLRM(nn.Module):
    """Args:
        table_sizes: rows per sparse feature (a DHE feature's ids are not bounded by it).
        embedding_dim: width of every sparse feature's vector (and of the bottom MLP's output for "dot").
        bottom: the bottom MLP's widths after the dense input (its last must be embedding_dim for "dot").
        top: the top MLP's widths after the interaction (its last must be 1).
        representations: ``"table" | "dhe" | "hybrid"`` per feature (default all tables).
        interaction: ``"dot"`` or ``"cat"``.
        dhe: keyword arguments for the DHE features (``k``, ``m``, ``decoder``, ...).
        hybrid_form: ``"two"`` (default, the MP-Rec artifact's): a hybrid feature gives the interaction two
            vectors, its table vector and its DHE vector, each ``embedding_dim`` wide; ``"split"``: one vector,
            ``hybrid_dhe_dim`` of its columns from the DHE (default half).
        optimizer: a :class:`mprec.nn.FusedOptimizer` for the tables (None: plain autograd gradients).
        sparse: sparse COO table gradients (when no fused optimizer), as ``EmbeddingBag(sparse=True)``.
        mode: the tables' pooling (``"sum"`` as in DLRM; ``"mean"`` and ``"max"`` too).
        embedding_device: where the collection's parameters are made (``"meta"``: allocated later, shard by
            shard, by TorchRec's DistributedModelParallel; the MLPs are made on the CPU either way).
    """

    def __init__(self, table_sizes: Sequence[int], embedding_dim: int = 16, bottom: Sequence[int] = (512, 256, 64, 16),
                 top: Sequence[int] = (512, 256, 1), representations: Optional[Sequence[str]] = None,
                 interaction: str = "dot", dhe: Optional[dict] = None, hybrid_dhe_dim: Optional[int] = None,
                 optimizer: Optional[FusedOptimizer] = None, sparse: bool = False,
                 num_dense: int = NUM_DENSE, mode: str = "sum", embedding_device=None,
                 hybrid_form: str = "two") -> None:
        super().__init__()
        if interaction not in INTERACTIONS:
            raise ValueError(f"DLRM: interaction must be one of {INTERACTIONS}, got {interaction!r}")
        if not bottom or not top or top[-1] != 1:
            raise ValueError(f"DLRM: bottom and top MLPs need widths and top must end in 1, got {bottom}, {top}")
        if interaction == "dot" and bottom[-1] != embedding_dim:
            raise ValueError(f"DLRM: with the dot interaction the bottom MLP must end in embedding_dim "
                             f"({embedding_dim}), got {bottom[-1]}")
        T = len(table_sizes)
        self.table_sizes = list(table_sizes)
        self.embedding_dim = embedding_dim
        self.interaction = interaction
        self.num_dense = num_dense
        self.bottom = MLP([num_dense, *bottom], last_activation=True, init="dlrm")
        self.embeddings = EmbeddingBagCollection(table_sizes, embedding_dim, mode=mode, representations=representations,
                                                 dhe=dhe, hybrid_dhe_dim=hybrid_dhe_dim, optimizer=optimizer,
                                                 sparse=sparse, names=feature_names(T), device=embedding_device,
                                                 hybrid_form=hybrid_form)
        self.feature_names = self.embeddings.embedding_names
        self._representations = self.embeddings.representations
        # The vectors the interaction sees: every embedding_dim-wide block of the collection's output (two for a
        # hybrid feature in the "two" form), and the bottom MLP's output.
        self.num_vectors = sum(self.embeddings.embedding_dims) // embedding_dim
        features = self.num_vectors + 1
        width = (bottom[-1] + features * (features - 1) // 2) if interaction == "dot" \
            else bottom[-1] + self.num_vectors * embedding_dim
        self.top = MLP([width, *top], last_activation=False, init="dlrm")
        if interaction == "dot":
            # The interaction's output is zero-padded to a multiple of INTERACTION_PAD columns and the top
            # MLP's first layer gets matching zero weight columns: the same function (those columns' inputs
            # are always 0, so their weights' gradients are too), with GEMMs on an aligned width (367 -> 368
            # for Kaggle: 10-25% less time in that layer's three products).
            padded = dlrm_interaction_width(bottom[-1], self.num_vectors, INTERACTION_PAD)
            first = self.top[0]
            with torch.no_grad():
                first.weight = nn.Parameter(torch.cat([first.weight, first.weight.new_zeros(first.out_features,
                                                                                            padded - width)], 1))
            first.in_features = padded

    @classmethod
    def preset(cls, name: str, table_sizes: Sequence[int], **kwargs) -> "DLRM":
        if name not in PRESETS:
            raise ValueError(f"DLRM.preset: unknown preset {name!r}; one of {sorted(PRESETS)}")
        return cls(table_sizes, **{**PRESETS[name], **kwargs})

    @property
    def representations(self) -> list[str]:
        return list(self._representations)

    def dense_parameters(self) -> list[nn.Parameter]:
        """Everything ``torch.optim`` trains: the MLPs, the DHE decoders, and the tables unless a fused
        optimizer trains them."""
        tables = {id(p) for p in self.embeddings.table_parameters()} if self.embeddings.optimizer else set()
        return [p for p in self.parameters() if id(p) not in tables]

    def forward(self, dense: Tensor, indices, offsets: Optional[Tensor] = None) -> Tensor:
        """Logits ``[B]`` of ``dense [B, 13]`` and the sparse features: ``indices`` and ``offsets`` in the TBE
        layout, or a ``KeyedJaggedTensor`` (keys: :attr:`feature_names`) as ``indices``."""
        # The collection first: sharded, it returns an awaitable whose output all-to-all runs while the bottom MLP
        # computes, and its backward all-to-all, created earlier, runs after the bottom MLP's backward starts.
        e = self.embeddings(indices, offsets) if offsets is not None else self.embeddings(indices)  # [B, V * D]
        x = self.bottom(dense)
        if self.interaction == "cat":
            z = torch.cat([x, (keyed_values(e, self.feature_names) if offsets is None else e).to(x.dtype)], dim=1)
        elif offsets is None:  # a KeyedTensor, its vectors read by key
            z = keyed_interaction(x, e, self.feature_names, INTERACTION_PAD)
        else:
            z = dlrm_interaction(x, e, INTERACTION_PAD)  # cat([x, pairs of (x, e_1..e_V), 0]) in one pass
        return self.top(z).squeeze(1)

    def interact_plain(self, x: Tensor, e: Tensor, pair_rows: Tensor, pair_cols: Tensor) -> Tensor:
        """The interaction in plain aten ops, the form tensor compilers lower: ``x [B, D]`` and the features'
        vectors ``e [B, V * D]`` to the top MLP's input, as ``forward`` computes it. ``pair_rows``, ``pair_cols``:
        ``torch.tril_indices(V + 1, V + 1, -1)``, made once by the caller (a constant of its compiled graph)."""
        z = torch.cat([x, e.to(x.dtype)], dim=1)
        if self.interaction == "cat":
            return z
        stacked = z.view(z.shape[0], -1, x.shape[1])  # [B, V + 1, D]
        pairs = torch.bmm(stacked, stacked.transpose(1, 2))[:, pair_rows, pair_cols]
        z = torch.cat([x, pairs], dim=1)
        pad = -z.shape[1] % INTERACTION_PAD
        return nn.functional.pad(z, (0, pad)) if pad else z

    @torch.no_grad()
    def predict(self, dense: Tensor, indices, offsets: Optional[Tensor] = None) -> Tensor:
        return torch.sigmoid(self.forward(dense, indices, offsets).float())

    def extra_repr(self) -> str:
        counts = {r: self.representations.count(r) for r in ("table", "dhe", "hybrid")}
        return f"interaction={self.interaction}, representations={counts}"


class DLRMTrain(nn.Module):
    """``model`` and its loss, as TorchRec's ``DLRMTrain``: ``forward(batch)`` takes a batch with
    ``dense_features [B, 13]``, ``sparse_features`` (a ``KeyedJaggedTensor`` keyed by ``model.feature_names``) and
    ``labels [B]`` (``torchrec.datasets.utils.Batch``) and returns ``(loss, (loss, logits, labels))``, all but the
    first detached: the contract of TorchRec's train pipelines. The loss is the mean binary cross-entropy of the
    logits."""

    def __init__(self, model: DLRM) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch):
        logits = self.model(batch.dense_features, batch.sparse_features)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels.float())
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())

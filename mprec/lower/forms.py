"""DLRM in plain aten ops with static shapes: the form the XLA and IPU lowerings compile.

mprec's custom ops exist only for CPU and CUDA; on another device they would run on the host. The lowered
form computes the same function from ops every tensor compiler lowers:

* bags are padded to a fixed number of slots (``bag_size``) and batches to a bucket of sizes, so a
  compiler sees one shape per bucket: :func:`pad_bags` does this on the host, with a mask of real lookups;
* each feature computes its vector in its own static-shape form (``padded``, :mod:`mprec.nn.padded`): a table
  gathers its rows (``index_select``) and reduces over the slots with the mask, or, for a table of at most
  ``one_hot_max_rows`` rows, multiplies a one-hot count matrix by the table (a matmul); a DHE hashes every
  slot's id with integer ops (``hash_fn``: int64 by default; the IPU form passes exact 32-bit arithmetic) and
  decodes it with ``linear`` layers; a hybrid joins the two as its module does;
* the MLPs are ``linear`` + ReLU (:meth:`mprec.nn.MLP.plain`), the dot interaction a ``bmm`` and the strict
  lower triangle's indices (:meth:`mprec.models.DLRM.interact_plain`).

Each part is the model's own module in its plain form; this module pads the bags and composes them.

The lowered module shares the source model's parameters (no copy): ``LoweredDLRM(model)`` computes what
``model`` computes, in train and eval mode, up to floating-point rounding.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ..ops.dhe import dhe_hash_aten

__all__ = ["PaddedBags", "pad_bags", "bucket", "DEFAULT_BUCKETS", "LoweredDLRM"]

#: Batch-size buckets: each is one compiled shape.
DEFAULT_BUCKETS = tuple(2**i for i in range(15))  # 1 .. 16384


def bucket(batch: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket that holds ``batch`` rows."""
    for b in sorted(buckets):
        if b >= batch:
            return b
    raise ValueError(f"bucket: a batch of {batch} is larger than the largest bucket ({max(buckets)})")


class PaddedBags(NamedTuple):
    """The lookups of T features x B bags in fixed slots."""

    ids: Tensor  # [T, B, L], 0 in empty slots
    mask: Tensor  # [T, B, L] float32: 1 for a lookup (its per-sample weight, if any), 0 for an empty slot
    batch: int  # bags per feature before padding to the bucket


def pad_bags(indices: Tensor, offsets: Tensor, num_features: int, bag_size: int, batch_size: Optional[int] = None,
             per_sample_weights: Optional[Tensor] = None, dtype: torch.dtype = torch.int64) -> PaddedBags:
    """FBGEMM's TBE layout (``offsets`` of ``T * B + 1`` entries) to ``[T, batch_size, bag_size]`` slots.

    Runs on the host, once per query. Raises if a bag holds more than ``bag_size`` lookups: the lowered
    model has no slot for them, and dropping lookups would change the answer.
    """
    op = "pad_bags"
    indices, offsets = indices.detach().cpu(), offsets.detach().cpu().to(torch.int64)
    if offsets.dim() != 1 or offsets.numel() < 1 or (offsets.numel() - 1) % num_features:
        raise ValueError(f"{op}: offsets must have T * B + 1 entries for T = {num_features} features, "
                         f"got {offsets.numel()}")
    batch = (offsets.numel() - 1) // num_features
    batch_size = batch if batch_size is None else batch_size
    if batch_size < batch:
        raise ValueError(f"{op}: batch_size {batch_size} is smaller than the batch ({batch} bags per feature)")
    if int(offsets[0]) != 0 or bool((offsets.diff() < 0).any()) or int(offsets[-1]) > indices.numel():
        raise ValueError(f"{op}: offsets must start at 0, not decrease and end within the "
                         f"{indices.numel()} indices")
    lengths = offsets.diff()
    if lengths.numel() and int(lengths.max()) > bag_size:
        g = int(torch.argmax((lengths > bag_size).to(torch.int8)))
        raise ValueError(f"{op}: bag {g % batch} of feature {g // batch} holds {int(lengths[g])} lookups, more than "
                         f"bag_size = {bag_size}")
    count = int(offsets[-1])
    bag_of = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    slot = torch.arange(count) - offsets[:-1].repeat_interleave(lengths)
    feature, b = bag_of // max(batch, 1), bag_of % max(batch, 1)
    flat = (feature * batch_size + b) * bag_size + slot
    ids = torch.zeros(num_features * batch_size * bag_size, dtype=dtype)
    ids[flat] = indices[:count].to(dtype)
    mask = torch.zeros(num_features * batch_size * bag_size, dtype=torch.float32)
    mask[flat] = 1.0 if per_sample_weights is None else per_sample_weights.detach().cpu()[:count].float()
    shape = (num_features, batch_size, bag_size)
    return PaddedBags(ids.view(shape), mask.view(shape), batch)


class LoweredDLRM(nn.Module):
    """A :class:`mprec.models.DLRM` in plain aten ops on padded bags (see the module docstring).

    ``forward(dense [B, 13], ids [T, B, L], mask [T, B, L])`` returns logits ``[B]``; :meth:`prepare` turns a
    TBE batch into those tensors, padded to a batch bucket, and :meth:`serve` runs a TBE batch end to end.

    Args:
        model: the DLRM (its parameters are shared, not copied).
        bag_size: slots per bag (the most lookups a bag may hold).
        one_hot_max_rows: tables with at most this many rows pool by a one-hot matmul instead of a gather.
        hash_fn: ``(ids, hash_a, hash_b, p, m) -> [N, k]`` integer hashes (default: int64 arithmetic).
        id_dtype: the dtype of the padded ids (int64; the IPU form uses int32).
        buckets: the batch sizes that are compiled.
    """

    def __init__(self, model: nn.Module, bag_size: int = 1, one_hot_max_rows: int = 0, hash_fn: Callable = dhe_hash_aten,
                 id_dtype: torch.dtype = torch.int64, buckets: Sequence[int] = DEFAULT_BUCKETS):
        super().__init__()
        if bag_size < 1:
            raise ValueError(f"LoweredDLRM: bag_size must be >= 1, got {bag_size}")
        embeddings = model.embeddings
        if embeddings.optimizer is not None and model.training:
            raise ValueError("LoweredDLRM: a model whose tables train with a fused optimizer is lowered for "
                             "inference only (call model.eval(), or train with autograd gradients)")
        self.model = model
        self.bag_size, self.id_dtype, self.buckets = bag_size, id_dtype, tuple(sorted(buckets))
        self.hash_fn = hash_fn
        # Each feature computes its own static-shape form (mprec.nn.padded); small tables pool by a one-hot matmul.
        self._one_hot = [bool(f.table_dim) and f.weight.shape[0] <= one_hot_max_rows for f in embeddings.features()]
        features = model.num_vectors + 1
        rows, cols = torch.tril_indices(features, features, offset=-1)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)

    @property
    def num_features(self) -> int:
        return len(self._one_hot)

    def forward(self, dense: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        # The model's parts, each in its plain form: the MLPs, every feature's static form, the interaction.
        model = self.model
        x = model.bottom.plain(dense)
        pooled = [feature.padded(ids[t], mask[t], self.hash_fn, one_hot).to(x.dtype)
                  for t, (feature, one_hot) in enumerate(zip(model.embeddings.features(), self._one_hot))]
        z = model.interact_plain(x, torch.cat(pooled, dim=1), self.pair_rows, self.pair_cols)
        return model.top.plain(z).squeeze(1)

    def prepare(self, dense: Tensor, indices: Tensor, offsets: Tensor,
                per_sample_weights: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, int]:
        """(dense, ids, mask) padded to the batch's bucket, on the host, and the real batch size."""
        batch = dense.shape[0]
        size = bucket(batch, self.buckets)
        bags = pad_bags(indices, offsets, self.num_features, self.bag_size, size, per_sample_weights, self.id_dtype)
        if bags.batch != batch:
            raise ValueError(f"LoweredDLRM: dense has {batch} rows but offsets describe {bags.batch} bags per feature")
        padded = torch.zeros(size, dense.shape[1], dtype=dense.dtype)
        padded[:batch] = dense.detach().cpu()
        return padded, bags.ids, bags.mask, batch

    def serve(self, dense: Tensor, indices: Tensor, offsets: Tensor) -> Tensor:
        """Logits of a TBE batch: padded on the host, computed on the module's device, returned on the host."""
        device = self.pair_rows.device
        padded, ids, mask, batch = self.prepare(dense, indices, offsets)
        out = self(padded.to(device), ids.to(device), mask.to(device))
        # Sliced on the host: a slice on the device would be a graph of its own for every batch size.
        return out.cpu()[:batch]

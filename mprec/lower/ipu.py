"""The IPU lowering: a DLRM for Graphcore IPUs through PopTorch.

    from mprec.lower import ipu
    lowered = ipu.lower(model, bag_size=1)                  # runs anywhere: the CPU checks it
    runner = ipu.inference_model(model, bag_size=1)         # poptorch.inferenceModel of the same form
    dense, ids, mask, n = lowered.prepare(dense, indices, offsets)   # padded on the host, int32 ids
    logits = runner(dense, ids, mask)[:n]

The model runs as :class:`mprec.lower.forms.LoweredDLRM` (plain aten ops on bags padded to ``bag_size``
slots and batches padded to buckets: one compiled graph per bucket) with two IPU-specific choices:

* ids are int32 and the DHE hash is computed exactly in 32-bit integer arithmetic (:func:`hash_int32`):
  the IPU has no 64-bit integers, and the hash's int64 formula ``a * x`` needs up to 62 bits;
* every op of the forward pass is on PopTorch's list of supported operations (``tests/test_lower_ipu.py``
  keeps that list and checks the dispatched ops against it).

Importing this module does not need poptorch; :func:`inference_model` and :func:`training_model` do. PopTorch
ships only with Graphcore's Poplar SDK (built for that SDK's torch, 2.0 for the last releases), so elsewhere
the lowered form is checked on the CPU for equivalence with the model.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .forms import DEFAULT_BUCKETS, LoweredDLRM

__all__ = ["available", "hash_int32", "lower", "inference_model", "training_model", "TrainingStep",
           "IPULoweredDLRM", "PopTorchUnavailable", "ONE_HOT_MAX_ROWS", "INT32_MAX"]

INT32_MAX = 2**31 - 1

#: Tables up to this many rows pool by a one-hot matmul, as in the XLA form: a small dense matmul instead
#: of a gather; both forms are on PopTorch's list.
ONE_HOT_MAX_ROWS = 64

_NO_POPTORCH = ("poptorch is not installed: it ships only with Graphcore's Poplar SDK, as a wheel built for that "
                "SDK's torch (torch 2.0 for the last releases); install the SDK, source its enable script and pip "
                "install the poptorch wheel it ships, in an environment with the matching torch. Without an IPU, "
                "mprec.lower.ipu.lower(model) runs the same lowered form on the CPU.")


class PopTorchUnavailable(ImportError, RuntimeError):
    """poptorch is missing: an ``ImportError`` (a missing module), also caught as the ``RuntimeError`` that
    :func:`mprec.lower.xla.device` raises without torch_xla."""


def available() -> bool:
    """Whether poptorch is importable."""
    return importlib.util.find_spec("poptorch") is not None


def _poptorch(caller: str):
    if not available():
        raise PopTorchUnavailable(f"mprec.lower.ipu.{caller}: {_NO_POPTORCH}")
    import poptorch

    return poptorch


# --- the hash in 32-bit integers ----------------------------------------------------------------------------

def hash_int32(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int) -> Tensor:
    """The DHE hash ``((a_j * (x mod p) + b_j) mod p) mod m``, exactly, in int32 tensors only.

    Args:
        ids: int32 ids ``>= 0`` (any shape).
        hash_a, hash_b: int32 ``[k]``, ``a_j`` in ``[1, p-1]`` and ``b_j`` in ``[0, p-1]`` (as
            :func:`mprec.ops.dhe.dhe_hash_parameters` draws them; :func:`lower` checks a model's).
        p, m: ``2 <= m < p < 2^31``.

    Returns int32 ``[*ids.shape, k]``, equal to :func:`mprec.ops.dhe.dhe_hash_aten`.

    The product ``a_j * x`` needs up to 62 bits, so it is never formed. With ``P_i = (x mod p) * 2^i mod p``,
    ``a_j * x mod p`` is the sum mod p of the ``P_i`` for the bits ``i`` set in ``a_j`` (double-and-add): the
    powers ``P_i`` are ``[N]`` vectors (one modular doubling each) and the ``[N, k]`` work is one masked
    modular addition per bit of ``p - 1`` (20 for m = 10^6, at most 31). Every value stays in int32 because
    of how a modular addition ``r + s mod p`` (``r, s`` in ``[0, p-1]``) is computed: from the complement
    ``t = p - s`` (in ``[1, p]``), ``d = r - t`` lies in ``[-p, p-2]`` and the sum is ``d`` or ``d + p``,
    where ``p`` is added only to the negative ``d`` (so the result is in ``[0, p-1]``). No tensor ever holds
    ``r + s`` itself, not even in a branch of a select that is then discarded: it reaches ``2p - 2``, which
    wraps for ``p > 2^30``.
    """
    op = "hash_int32"
    if not (isinstance(p, int) and isinstance(m, int)) or m < 2 or p <= m:
        raise ValueError(f"{op}: needs integers 2 <= m < p, got m = {m}, p = {p}")
    if p > INT32_MAX:
        raise ValueError(f"{op}: p = {p} does not fit int32: the 32-bit hash needs p < 2^31, so m <= {INT32_MAX - 1} "
                         f"(got m = {m})")
    if ids.dtype != torch.int32:
        raise ValueError(f"{op}: ids must be int32, got {ids.dtype}")
    for name, t in (("hash_a", hash_a), ("hash_b", hash_b)):
        if t.dtype != torch.int32 or t.dim() != 1:
            raise ValueError(f"{op}: {name} must be a 1-D int32 tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if hash_a.shape[0] != hash_b.shape[0] or hash_a.shape[0] < 1:
        raise ValueError(f"{op}: hash_a and hash_b must have the same length k >= 1, got {hash_a.shape[0]} and "
                         f"{hash_b.shape[0]}")
    device = ids.device
    # int32 constants as 0-dim tensors: a Python int in torch.where would make the result int64.
    p_t = torch.full((), p, dtype=torch.int32, device=device)
    zero = torch.zeros((), dtype=torch.int32, device=device)

    def add_mod(r: Tensor, t: Tensor) -> Tensor:
        """``r + s mod p`` from ``r`` in ``[0, p-1]`` and the complement ``t = p - s`` in ``[1, p]``."""
        d = r - t  # in [-p, p-2]
        return d + torch.where(d < 0, p_t, zero)  # d + p only where d < 0: in [0, p-1]

    def has_bit(i: int) -> Tensor:  # [k]: the hashes whose a_j has bit i (i <= 30, so 1 << i fits int32)
        return (hash_a & (1 << i)) != 0

    power = ids.reshape(-1).remainder(p)  # P_0 = x mod p, [N] (floor modulo, as the reference takes it)
    h = torch.where(has_bit(0), power.unsqueeze(1), zero)  # [N, k]: the lowest bit starts the sum
    # a_j <= p - 1 < 2^bits: the higher bits are all zero.
    for i in range(1, (p - 1).bit_length()):
        power = add_mod(power, p - power)  # P_i = P_(i-1) + P_(i-1) mod p; p - P in [1, p]
        # A hash without bit i adds 0 through the complement p: d = h - p < 0, and d + p = h.
        h = add_mod(h, torch.where(has_bit(i), (p - power).unsqueeze(1), p_t))
    h = add_mod(h, p - hash_b)  # + b_j mod p; p - b_j in [1, p]
    if p <= 2 * m:
        # h < p <= 2m: one conditional subtraction is h mod m (the model's p, the prime after m, is below 2m).
        h = h - torch.where(h >= m, torch.full((), m, dtype=torch.int32, device=device), zero)
    else:
        h = h.remainder(m)
    return h.view(*ids.shape, hash_a.shape[0])


def _hash_model_buffers(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int) -> Tensor:
    # The model keeps hash_a / hash_b as int64 buffers (state_dict compatibility); lower() checked that they
    # lie in [0, p) with p < 2^31, so the int32 copies are exact, and they are only k values each.
    return hash_int32(ids, hash_a.to(torch.int32), hash_b.to(torch.int32), p, m)


# --- the lowered model --------------------------------------------------------------------------------------

class IPULoweredDLRM(LoweredDLRM):
    """:class:`LoweredDLRM` with int32 ids and :func:`hash_int32`; :meth:`prepare` also fits the ids to int32.

    Ids travel as int32 (the IPU has no int64). A DHE-only feature's raw ids may be larger (Criteo's are
    32-bit hex values), but its hash reads only ``x mod p``, so :meth:`prepare` reduces them modulo ``p`` on
    the host, exactly; ids of table and hybrid features index a table and must fit int32 as they are.
    Out-of-range ids raise instead of wrapping around.
    """

    def __init__(self, model: nn.Module, bag_size: int = 1, one_hot_max_rows: int = ONE_HOT_MAX_ROWS,
                 buckets: Sequence[int] = DEFAULT_BUCKETS):
        primes = _check_hash_parameters(model)
        super().__init__(model, bag_size=bag_size, one_hot_max_rows=one_hot_max_rows, hash_fn=_hash_model_buffers,
                         id_dtype=torch.int32, buckets=buckets)
        # Feature -> p for the features that are DHE only (their ids are reduced modulo p on the host).
        self.reduce_modulo = {t: primes[t] for t, rep in enumerate(model.embeddings.representations) if rep == "dhe"}

    def prepare(self, dense: Tensor, indices: Tensor, offsets: Tensor,
                per_sample_weights: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, int]:
        return super().prepare(dense, self.int32_ids(indices, offsets), offsets, per_sample_weights)

    def int32_ids(self, indices: Tensor, offsets: Tensor) -> Tensor:
        """``indices`` (TBE layout) as int32: DHE-only features' ids modulo p; raises for ids outside int32."""
        op = "mprec.lower.ipu"
        T = self.num_features
        indices, offsets = indices.detach().cpu(), offsets.detach().cpu().to(torch.int64)
        if offsets.dim() != 1 or offsets.numel() < 1 or (offsets.numel() - 1) % T or int(offsets[-1]) > indices.numel():
            return indices  # malformed: pad_bags names the problem
        batch = (offsets.numel() - 1) // T
        ids = indices[:int(offsets[-1])].to(torch.int64)
        if not ids.numel():
            return ids.to(torch.int32)

        def feature_of(position: int) -> int:
            return (int(torch.searchsorted(offsets, position, right=True)) - 1) // batch

        if int(ids.min()) < 0:
            g = int(torch.argmax((ids < 0).to(torch.int8)))
            raise ValueError(f"{op}: index {g} (feature {feature_of(g)}) is {int(ids[g])}; ids must be >= 0")
        if int(ids.max()) > INT32_MAX and self.reduce_modulo:
            ids = ids.clone()  # the caller's tensor stays as it was
            for t, p in self.reduce_modulo.items():
                start, end = int(offsets[t * batch]), int(offsets[(t + 1) * batch])
                ids[start:end] = ids[start:end].remainder(p)
        if int(ids.max()) > INT32_MAX:
            g = int(torch.argmax((ids > INT32_MAX).to(torch.int8)))
            t = feature_of(g)
            raise ValueError(f"{op}: index {g} (feature {t}, {self.model.embeddings.representations[t]}) is "
                             f"{int(ids[g])}, which does not fit int32; the IPU form takes table and hybrid ids below "
                             f"2^31 (only DHE-only features' ids are reduced modulo p)")
        return ids.to(torch.int32)


def _check_hash_parameters(model: nn.Module) -> dict[int, int]:
    """Feature -> p of every DHE part, after checking that ``hash_int32`` computes its hash exactly."""
    op = "mprec.lower.ipu.lower"
    primes = {}
    for t, feature in enumerate(model.embeddings.features()):
        dhe = feature.dhe
        if dhe is None:
            continue
        p, m = int(dhe.p), int(dhe.m)
        if p > INT32_MAX:
            raise ValueError(f"{op}: feature {t} hashes into m = {m}, so p = {p}, which does not fit int32; the IPU "
                             f"computes the hash in 32-bit integers and needs p < 2^31 (m <= {INT32_MAX - 1})")
        for name, buffer, low in (("hash_a", dhe.hash_a, 1), ("hash_b", dhe.hash_b, 0)):
            values = buffer.detach().cpu().to(torch.int64)
            bad = (values < low) | (values >= p)
            if bool(bad.any()):
                j = int(torch.argmax(bad.to(torch.int8)))
                raise ValueError(f"{op}: feature {t}'s {name}[{j}] = {int(values[j])} is outside [{low}, p - 1] "
                                 f"(p = {p}); the 32-bit hash needs the ranges of docs/architecture.md")
        primes[t] = p
    return primes


def lower(model: nn.Module, bag_size: int = 1, one_hot_max_rows: int = ONE_HOT_MAX_ROWS,
          buckets: Sequence[int] = DEFAULT_BUCKETS) -> IPULoweredDLRM:
    """``model`` (a :class:`mprec.models.DLRM`) as PopTorch compiles it; shares its parameters.

    Raises ``ValueError`` if a DHE feature's ``p`` (the prime after ``m``) does not fit int32 or its hash
    parameters are outside the hash's ranges (docs/architecture.md).
    """
    return IPULoweredDLRM(model, bag_size=bag_size, one_hot_max_rows=one_hot_max_rows, buckets=buckets)


# --- PopTorch ---------------------------------------------------------------------------------------------

class TrainingStep(nn.Module):
    """The lowered model with its loss, as ``poptorch.trainingModel`` needs: ``forward(dense, ids, mask,
    labels, rows)`` returns ``(logits, loss)``, the mean binary cross-entropy with logits over the real rows
    (``rows`` is 1 for them, 0 for the bucket's padding, which must not train the model).

    ``mark_loss`` marks the final loss for PopTorch (``poptorch.identity_loss``: the loss is not one of
    PopTorch's loss modules alone, since the padding is masked out); the identity elsewhere.
    """

    def __init__(self, lowered: LoweredDLRM, mark_loss: Optional[Callable[[Tensor], Tensor]] = None):
        super().__init__()
        self.lowered = lowered
        self.mark_loss = mark_loss

    def forward(self, dense: Tensor, ids: Tensor, mask: Tensor, labels: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.lowered(dense, ids, mask)
        losses = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
        rows = rows.to(logits.dtype)
        loss = (losses * rows).sum() / rows.sum().clamp(min=1.0)
        return logits, (self.mark_loss(loss) if self.mark_loss is not None else loss)

    def prepare(self, dense: Tensor, indices: Tensor, offsets: Tensor, labels: Tensor,
                per_sample_weights: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """A TBE batch and its labels as ``forward``'s arguments, padded to the batch's bucket on the host."""
        dense, ids, mask, batch = self.lowered.prepare(dense, indices, offsets, per_sample_weights)
        size = dense.shape[0]
        if labels.numel() != batch:
            raise ValueError(f"mprec.lower.ipu.TrainingStep: {labels.numel()} labels for a batch of {batch}")
        padded = torch.zeros(size, dtype=torch.float32)
        padded[:batch] = labels.detach().cpu().reshape(-1).float()
        rows = torch.zeros(size, dtype=torch.float32)
        rows[:batch] = 1.0
        return dense, ids, mask, padded, rows


def inference_model(model: nn.Module, bag_size: int = 1, options: Any = None,
                    one_hot_max_rows: int = ONE_HOT_MAX_ROWS, buckets: Sequence[int] = DEFAULT_BUCKETS):
    """``poptorch.inferenceModel`` of the lowered ``model``, which is put in eval mode. It takes
    ``(dense, ids, mask)`` as :meth:`IPULoweredDLRM.prepare` pads them (``lower(model, bag_size).prepare``, on
    the host). Raises :class:`PopTorchUnavailable` without poptorch."""
    poptorch = _poptorch("inference_model")
    lowered = lower(model.eval(), bag_size=bag_size, one_hot_max_rows=one_hot_max_rows, buckets=buckets)
    return poptorch.inferenceModel(lowered, options)


def training_model(model: nn.Module, optimizer: torch.optim.Optimizer, bag_size: int = 1, options: Any = None,
                   one_hot_max_rows: int = ONE_HOT_MAX_ROWS, buckets: Sequence[int] = DEFAULT_BUCKETS):
    """``poptorch.trainingModel`` of a :class:`TrainingStep` over the lowered ``model``: one call runs the
    forward pass, the loss, the backward pass and ``optimizer``'s update on the IPU and returns
    ``(logits, loss)`` for the arguments :meth:`TrainingStep.prepare` pads. ``model`` is put in train mode;
    its tables must train with autograd gradients (no fused optimizer). Raises :class:`PopTorchUnavailable`
    without poptorch."""
    poptorch = _poptorch("training_model")
    lowered = lower(model.train(), bag_size=bag_size, one_hot_max_rows=one_hot_max_rows, buckets=buckets)
    step = TrainingStep(lowered, mark_loss=lambda loss: poptorch.identity_loss(loss, reduction="none"))
    return poptorch.trainingModel(step, options=options, optimizer=optimizer)

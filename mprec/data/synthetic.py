"""Synthetic Criteo-shaped data: Zipf-distributed ids over given table sizes (the Kaggle ones by default),
Criteo-like dense features, and labels from a fixed hidden model, so that training on it can learn.

Ids: rank ``r`` of a Zipf(s) law over a table's ``n`` rows is drawn by inverting the continuous
approximation of its CDF, then scattered over the table by a multiplication modulo ``n`` with a
constant coprime to it, so hot ids are not 0, 1, 2, ... Dense features: ``log(1 + x)`` of log-normal
counts, as Criteo's integer features are heavy-tailed counts. Labels: Bernoulli of a logistic function
of the dense features and a per-id effect (a hash of the id), with a base click rate near Criteo's 25%.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from .criteo import KAGGLE_TABLE_SIZES, NUM_DENSE, Batch

__all__ = ["zipf_ids", "SyntheticCriteo"]

_SCATTER = 0x9E3779B1  # odd, large: rank -> id by multiplication modulo the table size


def zipf_ids(n: int, rows: int, s: float = 1.05, generator: Optional[torch.Generator] = None) -> Tensor:
    """``n`` ids in ``[0, rows)`` with Zipf(s) popularity, hot ids scattered over the range."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if abs(s - 1.0) < 1e-9:
        rank = torch.exp(u * math.log(rows + 1)) - 1
    else:
        a = 1.0 - s
        rank = ((((rows + 1) ** a - 1) * u + 1) ** (1 / a)) - 1
    rank = rank.floor().clamp_(0, rows - 1).to(torch.int64)
    step = _SCATTER % rows if rows > 1 else 0
    while rows > 1 and math.gcd(step, rows) != 1:
        step += 1
    return (rank * step) % rows if rows > 1 else rank


class SyntheticCriteo:
    """``num_batches`` batches of ``batch_size`` examples, reproducible from ``seed``.

    ``table_sizes`` default to the Kaggle ones (33.8M rows); ``zipf`` is the ids' exponent. The hidden
    model that draws the labels comes from ``task_seed``, not ``seed``: streams with different seeds are
    different samples of the same task (training and held-out data).
    """

    def __init__(self, num_batches: int, batch_size: int = 2048, table_sizes: Sequence[int] = KAGGLE_TABLE_SIZES,
                 zipf: float = 1.05, seed: int = 0, task_seed: int = 0) -> None:
        if num_batches < 0 or batch_size < 1:
            raise ValueError(f"SyntheticCriteo: need num_batches >= 0 and batch_size >= 1, got {num_batches}, "
                             f"{batch_size}")
        if any(n < 1 for n in table_sizes):
            raise ValueError(f"SyntheticCriteo: table sizes must be >= 1, got {list(table_sizes)}")
        self.num_batches, self.batch_size = num_batches, batch_size
        self.table_sizes = list(table_sizes)
        self.zipf, self.seed = zipf, seed
        g = torch.Generator().manual_seed(task_seed ^ 0x5EED)
        self._dense_mu = torch.rand(NUM_DENSE, generator=g) * 3
        self._dense_weight = torch.randn(NUM_DENSE, generator=g) * 0.4
        self._id_weight = torch.randn(len(self.table_sizes), generator=g) * 0.5

    def __len__(self) -> int:
        return self.num_batches

    def batch(self, i: int) -> Batch:
        """The i-th batch (each batch has its own generator: batches are independent of access order)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        B = self.batch_size
        counts = torch.exp(torch.randn(B, NUM_DENSE, generator=g) * 1.2 + self._dense_mu)
        dense = torch.log1p(counts.floor()).float()
        sparse = torch.stack([zipf_ids(B, n, self.zipf, g) for n in self.table_sizes], dim=1)
        # Per-id effect in [-1, 1]: a hash of the id, so the same id always pushes the same way.
        effect = ((sparse * 0x2545F491) % 2001).double() / 1000 - 1
        logit = ((dense.double() - dense.double().mean(0)) @ self._dense_weight.double()
                 + effect @ self._id_weight.double() - 1.6)
        labels = torch.bernoulli(torch.sigmoid(logit), generator=g).float()
        return Batch.from_rows(labels, dense, sparse)

    def __iter__(self) -> Iterator[Batch]:
        for i in range(self.num_batches):
            yield self.batch(i)

"""MP-Cache: exact caches of DHE results for hot ids, for inference.

DHE spends its time decoding ids, and real id streams are heavily skewed (Zipf-like), so a few hot ids
account for most lookups. MP-Cache keeps, for hot ids, either

- the **final DHE vector** (decoder cache: a hit skips hashing and the whole decoder), or
- the **first-layer activation** (encoder cache: a hit skips hashing and the ``k``-wide first layer, the
  bulk of the FLOPs, and still runs the small later layers).

Exactness: the DHE ops compute every row independently of the batch and of the thread count
(``mprec::dhe_encode_linear`` and ``mprec::rowwise_linear`` multiply fixed row blocks), so a cached row is
bit-identical to the row the layer would compute now. The owning layer stamps each cache with the
version of every parameter and buffer it depends on and clears it when any of them changes (an optimizer
step, ``load_state_dict``, ``.to()``), so a stale vector is never served.

Filling: ``policy="static"`` holds the ids given to :meth:`EmbeddingCache.fill` (the top-N of a sample)
and never changes on its own; ``policy="lfu"`` also admits ids online: every id seen is counted in a
small frequency sketch, and a missed id replaces the least-used cached id when its estimated count is
higher, within the byte bound.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["EmbeddingCache"]

_SKETCH_BUCKETS = 1 << 16
_SKETCH_ROWS = 4
# Multipliers for the sketch's hash rows: distinct constants that fit int64 (the product wraps, and the
# bits above the lowest 20 pick the bucket).
_SKETCH_MULTIPLIERS = (0x9E3779B97F4A7C15 >> 1, 0xC2B2AE3D27D4EB4F >> 1, 0x165667B19E3779F9, 0x27D4EB2F165667C5)


class EmbeddingCache:
    """id -> vector of ``width`` elements, bounded by ``max_bytes`` (or ``max_entries``).

    Owned by a DHE layer (``DHEEmbeddingBag.enable_cache``); the layer calls :meth:`lookup`,
    :meth:`admit` and :meth:`validate`. Counters: ``hits``/``misses`` count lookups (each occurrence of an
    id in a batch), ``unique_hits``/``unique_misses`` count distinct ids per batch.
    """

    def __init__(self, width: int, dtype: torch.dtype = torch.float32, max_bytes: Optional[int] = None,
                 max_entries: Optional[int] = None, policy: str = "lfu") -> None:
        if policy not in ("lfu", "static"):
            raise ValueError(f"EmbeddingCache: policy must be 'lfu' or 'static', got {policy!r}")
        if (max_bytes is None) == (max_entries is None):
            raise ValueError("EmbeddingCache: give exactly one of max_bytes and max_entries")
        self.width = width
        self.dtype = dtype
        self.policy = policy
        # Each entry holds its vector, its id and its use count.
        self.entry_bytes = width * torch.empty((), dtype=dtype).element_size() + 16
        if max_entries is None:
            max_entries = int(max_bytes) // self.entry_bytes
        if max_entries < 1:
            raise ValueError(f"EmbeddingCache: the bound leaves room for no entry ({self.entry_bytes} bytes each)")
        self.max_entries = int(max_entries)
        self.min_admission_count = 2
        self._sketch = torch.zeros(_SKETCH_ROWS, _SKETCH_BUCKETS, dtype=torch.int64)
        self.version: Optional[tuple] = None
        self.invalidations = 0
        self.reset_stats()
        self.clear()

    # --- state ------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Drops every entry (frequency estimates are kept: they describe the ids, not the model)."""
        self.keys = torch.empty(0, dtype=torch.int64)      # sorted
        self.values = torch.empty(0, self.width, dtype=self.dtype)
        self.counts = torch.empty(0, dtype=torch.int64)

    def reset_stats(self) -> None:
        self.hits = self.misses = self.unique_hits = self.unique_misses = 0

    def __len__(self) -> int:
        return int(self.keys.numel())

    @property
    def nbytes(self) -> int:
        return len(self) * self.entry_bytes

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def stats(self) -> dict:
        return dict(hits=self.hits, misses=self.misses, hit_rate=self.hit_rate, unique_hits=self.unique_hits,
                    unique_misses=self.unique_misses, entries=len(self), bytes=self.nbytes,
                    max_entries=self.max_entries, invalidations=self.invalidations, policy=self.policy)

    def validate(self, version: tuple) -> None:
        """Clears the cache when the owner's parameters changed since its entries were computed."""
        if self.version != version:
            if len(self):
                self.invalidations += 1
            self.clear()
            self.version = version

    # --- frequency sketch (count-min) ---------------------------------------------------------------
    def _buckets(self, ids: Tensor) -> Tensor:
        rows = [((ids * c) >> 20).remainder(_SKETCH_BUCKETS) for c in _SKETCH_MULTIPLIERS]
        return torch.stack(rows)

    def count(self, ids: Tensor, occurrences: Tensor) -> None:
        """Adds ``occurrences`` uses of each of ``ids`` (distinct) to the frequency estimates."""
        buckets = self._buckets(ids)
        for r in range(_SKETCH_ROWS):
            self._sketch[r].index_add_(0, buckets[r], occurrences)

    def estimate(self, ids: Tensor) -> Tensor:
        buckets = self._buckets(ids)
        return torch.stack([self._sketch[r][buckets[r]] for r in range(_SKETCH_ROWS)]).amin(0)

    # --- lookups -----------------------------------------------------------------------------------
    def lookup(self, ids: Tensor, occurrences: Tensor) -> tuple[Tensor, Tensor]:
        """``(hit [U] bool, slot [U])`` for distinct ``ids``; counts the uses of hit entries."""
        n = self.keys.numel()
        if n == 0:
            hit = torch.zeros(ids.shape, dtype=torch.bool)
            slot = torch.zeros(ids.shape, dtype=torch.int64)
        else:
            slot = torch.searchsorted(self.keys, ids).clamp_(max=n - 1)
            hit = self.keys[slot] == ids
            self.counts.index_add_(0, slot[hit], occurrences[hit])
        hits = int(hit.sum())
        self.unique_hits += hits
        self.unique_misses += int(ids.numel()) - hits
        hit_uses = int(occurrences[hit].sum())
        self.hits += hit_uses
        self.misses += int(occurrences.sum()) - hit_uses
        return hit, slot

    def admit(self, ids: Tensor, values: Tensor) -> None:
        """Online (LFU) admission of missed ``ids`` (distinct, not cached) with their computed ``values``.

        Free room is filled by the most frequent candidates; then each remaining candidate, best first,
        replaces the least-used entry while its estimated count is higher. Costs O(entries) per call (a
        partial selection and a merge, no sort of the whole cache).
        """
        if self.policy != "lfu" or ids.numel() == 0:
            return
        score = self.estimate(ids)
        # Ids seen once so far are not admitted (TinyLFU's doorkeeper): in a skewed stream most misses are
        # one-off tail ids, and admitting them would only churn the cache.
        seen_again = score >= self.min_admission_count
        ids, values, score = ids[seen_again], values[seen_again], score[seen_again]
        if ids.numel() == 0:
            return
        order = torch.argsort(score, descending=True, stable=True)
        ids, values, score = ids[order], values[order], score[order]
        take = min(self.max_entries - len(self), ids.numel())
        keep = None
        rest = ids.numel() - take
        if rest and len(self):
            # The least-used entries, fewest uses first (a partial selection, not a sort).
            victims = torch.topk(self.counts, min(rest, len(self)), largest=False, sorted=True).indices
            better = score[take:take + victims.numel()] > self.counts[victims]
            replace = int(better.cumprod(0).sum())  # both lists are ordered: stop at the first loss
            if replace:
                keep = torch.ones(len(self), dtype=torch.bool)
                keep[victims[:replace]] = False
                take += replace
        if take == 0:
            return
        kept = (self.keys, self.values, self.counts) if keep is None else \
            (self.keys[keep], self.values[keep], self.counts[keep])
        self._merge(*kept, ids[:take], values[:take], score[:take])

    def serve(self, ids: Tensor, occurrences: Tensor, version: tuple, compute) -> Tensor:
        """Vectors of distinct ``ids``: hits from the cache, misses from ``compute(missed ids, their
        occurrences)``, which are then offered for admission. ``version`` is the owner's parameter stamp."""
        self.validate(version)
        if self.policy == "lfu":
            self.count(ids, occurrences)
        hit, slot = self.lookup(ids, occurrences)
        miss = ~hit
        miss_ids = ids[miss]
        computed = compute(miss_ids, occurrences[miss])
        out = torch.empty((ids.numel(), self.width), dtype=computed.dtype)
        out[hit] = self.values[slot[hit]].to(computed.dtype)
        out[miss] = computed
        self.admit(miss_ids, computed)
        return out

    def _merge(self, keys: Tensor, values: Tensor, counts: Tensor, new_keys: Tensor, new_values: Tensor,
               new_counts: Tensor) -> None:
        """Sorted entries + new ones, kept sorted by key in O(entries + new log new)."""
        order = torch.argsort(new_keys)
        new_keys, new_values, new_counts = new_keys[order], new_values[order].to(self.dtype), new_counts[order]
        n_old, n_new = keys.numel(), new_keys.numel()
        at = torch.searchsorted(keys, new_keys)  # insertion points, non-decreasing
        new_slot = at + torch.arange(n_new)
        old_slot = torch.arange(n_old) + torch.searchsorted(at, torch.arange(n_old), right=True)
        merged_keys = torch.empty(n_old + n_new, dtype=torch.int64)
        merged_values = torch.empty((n_old + n_new, self.width), dtype=self.dtype)
        merged_counts = torch.empty(n_old + n_new, dtype=torch.int64)
        for merged, old, new in ((merged_keys, keys, new_keys), (merged_values, values, new_values),
                                 (merged_counts, counts, new_counts)):
            merged[old_slot] = old
            merged[new_slot] = new
        self.keys, self.values, self.counts = merged_keys, merged_values, merged_counts

    def fill(self, ids: Tensor, values: Tensor, counts: Optional[Tensor] = None) -> None:
        """Replaces the entries by ``ids`` (distinct) and their ``values``, keeping the first ``max_entries``."""
        ids, values = ids[: self.max_entries], values[: self.max_entries]
        counts = torch.zeros(ids.shape, dtype=torch.int64) if counts is None else counts[: self.max_entries]
        self._store(ids.to(torch.int64), values, counts.to(torch.int64))

    def _store(self, keys: Tensor, values: Tensor, counts: Tensor) -> None:
        order = torch.argsort(keys)
        self.keys, self.values, self.counts = keys[order], values[order].to(self.dtype), counts[order]

    def __repr__(self) -> str:
        return (f"EmbeddingCache(width={self.width}, dtype={self.dtype}, policy={self.policy!r}, "
                f"entries={len(self)}/{self.max_entries}, hit_rate={self.hit_rate:.3f})")

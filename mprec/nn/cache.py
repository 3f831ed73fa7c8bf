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
and never changes on its own; ``policy="lfu"`` also admits ids online: every use of an id that is not
cached is counted in a count-min sketch (a cached entry counts its own hits); while there is room every missed id is admitted, and once the cache is full a missed
id replaces a little-used entry when its estimated count is higher (sampled LFU, as Redis does it: the
victims are the least-used entries of a window of the cache, so no step costs O(entries)). Ids seen only
once are never admitted into a full cache (TinyLFU's doorkeeper): in a skewed stream most misses are
one-off tail ids, and admitting them would only churn the cache.

Concurrency: a cache may be served from several threads at once (a server's workers, a user's thread
pool). One lock guards its state (index, entries, sketch, counters); a call holds it to look up and count,
releases it while the misses are decoded, so threads decode concurrently, and takes it again to admit
what it decoded, skipping the ids another thread admitted meanwhile and everything when the cache was
cleared or refilled meanwhile. A reader therefore never sees half an update, the counters count every
lookup exactly once, and each answer is the vector the layer computes, bit for bit, whatever the
interleaving (which entries are cached may depend on it).

Index: an open-addressing hash table (``mprec::cache_lookup`` and friends, :mod:`mprec.ops.cache`) maps
ids to entries of dense ``keys``/``values``/``counts`` arrays, so a lookup, the gather of the hit vectors
and the use counting are one pass in C++, and admission costs O(admitted ids).
"""

from __future__ import annotations

import random
import threading
from typing import Callable, Optional

import torch
from torch import Tensor

from ..ops.cache import cache_insert, cache_lookup, cache_replace, count_min_add, empty_table, table_capacity

__all__ = ["EmbeddingCache"]

_SKETCH_ROWS = 4
_SKETCH_BUCKETS = 1 << 16
_INITIAL_ENTRIES = 1024
# Victims of a replacement round are the least-used entries among this many per candidate (a window of
# the cache at a random offset): enough that they are nearly the cache's least used, at O(candidates).
_VICTIM_SAMPLE_PER_CANDIDATE = 8


def _bytes_for(entries: int, row_bytes: int) -> int:
    # Per entry: its vector, id and use count; plus the hash table's (key, entry) slots.
    return entries * (row_bytes + 16) + table_capacity(entries) * 16


class EmbeddingCache:
    """id -> vector of ``width`` elements, bounded by ``max_bytes`` (or ``max_entries``).

    Owned by a DHE layer (``DHEEmbeddingBag.enable_cache``), which calls :meth:`serve`. ``max_bytes``
    bounds everything the cache allocates (vectors, ids, counts and the hash table); storage grows with
    the entries, up to the bound. Counters: ``hits``/``misses`` count lookups (each occurrence of an id
    in a batch), ``unique_hits``/``unique_misses`` count distinct ids per batch, ``evictions`` the entries
    replaced by online admission.
    """

    def __init__(self, width: int, dtype: torch.dtype = torch.float32, max_bytes: Optional[int] = None,
                 max_entries: Optional[int] = None, policy: str = "lfu", seed: int = 0) -> None:
        if policy not in ("lfu", "static"):
            raise ValueError(f"EmbeddingCache: policy must be 'lfu' or 'static', got {policy!r}")
        if (max_bytes is None) == (max_entries is None):
            raise ValueError("EmbeddingCache: give exactly one of max_bytes and max_entries")
        self.width = width
        self.dtype = dtype
        self.policy = policy
        self.row_bytes = width * torch.empty((), dtype=dtype).element_size()
        if max_entries is None:
            # The most entries whose storage fits (the table's size steps at powers of two).
            lo, hi = 0, int(max_bytes) // (self.row_bytes + 16)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if _bytes_for(mid, self.row_bytes) <= max_bytes else (lo, mid - 1)
            max_entries = lo
        if max_entries < 1:
            raise ValueError(f"EmbeddingCache: the bound leaves room for no entry "
                             f"({_bytes_for(1, self.row_bytes)} bytes for one)")
        self.max_entries = int(max_entries)
        self.min_admission_count = 2
        self._sketch = torch.zeros(_SKETCH_ROWS, _SKETCH_BUCKETS, dtype=torch.int64)
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        # Counts clears and refills: an admission whose vectors were decoded before one is dropped.
        self._generation = 0
        # Counts admissions: a call whose misses nobody admitted meanwhile knows they are still absent.
        self._admissions = 0
        self.version: Optional[tuple] = None
        self.invalidations = 0
        self.reset_stats()
        self.clear()

    def __getstate__(self) -> dict:
        # A lock cannot be pickled or deep-copied; a copy gets its own.
        with self._lock:
            state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # --- state ------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Drops every entry (frequency estimates are kept: they describe the ids, not the model)."""
        with self._lock:
            self._size = 0
            self._generation += 1
            self._allocate(min(self.max_entries, _INITIAL_ENTRIES))

    def _allocate(self, capacity: int) -> None:
        size = self._size
        keys = torch.empty(capacity, dtype=torch.int64)
        values = torch.empty((capacity, self.width), dtype=self.dtype)
        counts = torch.empty(capacity, dtype=torch.int64)
        if size:
            keys[:size], values[:size], counts[:size] = self._keys[:size], self._values[:size], self._counts[:size]
        self._keys, self._values, self._counts = keys, values, counts
        self._table = empty_table(capacity)
        cache_insert(self._table, keys[:size], torch.arange(size))

    def _reserve(self, entries: int) -> None:
        if entries > self._keys.numel():
            self._allocate(min(self.max_entries, max(entries, 2 * self._keys.numel())))

    # keys, values and counts are copies, consistent with each other even while other threads serve.
    @property
    def keys(self) -> Tensor:
        """Cached ids, in entry order (not sorted)."""
        with self._lock:
            return self._keys[: self._size].clone()

    @property
    def values(self) -> Tensor:
        with self._lock:
            return self._values[: self._size].clone()

    @property
    def counts(self) -> Tensor:
        """Use count of each entry: its id's estimated count when admitted, plus its hits since."""
        with self._lock:
            return self._counts[: self._size].clone()

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(keys, values, counts)`` of the same moment (copies)."""
        with self._lock:
            n = self._size
            return self._keys[:n].clone(), self._values[:n].clone(), self._counts[:n].clone()

    def reset_stats(self) -> None:
        with self._lock:
            self.hits = self.misses = self.unique_hits = self.unique_misses = self.evictions = 0

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes allocated for entries and the hash table (at most ``_bytes_for(max_entries)``)."""
        return self._keys.numel() * (self.row_bytes + 16) + self._table.numel() * 8

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def stats(self) -> dict:
        with self._lock:
            return dict(hits=self.hits, misses=self.misses, hit_rate=self.hit_rate, unique_hits=self.unique_hits,
                        unique_misses=self.unique_misses, entries=len(self), bytes=self.nbytes,
                        max_entries=self.max_entries, evictions=self.evictions, invalidations=self.invalidations,
                        policy=self.policy)

    def validate(self, version: tuple) -> None:
        """Clears the cache when the owner's parameters changed since its entries were computed."""
        with self._lock:
            if self.version != version:
                if self._size:
                    self.invalidations += 1
                self.clear()
                self.version = version

    # --- frequencies ------------------------------------------------------------------------------
    def count(self, ids: Tensor, occurrences: Tensor) -> Tensor:
        """Adds ``occurrences`` uses of each of ``ids`` (distinct) to the frequency sketch; returns the
        ids' estimated counts (never below the true ones)."""
        with self._lock:
            return count_min_add(self._sketch, ids, occurrences)

    # --- lookups -----------------------------------------------------------------------------------
    def lookup(self, ids: Tensor, occurrences: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(vectors [U, width], miss positions, their occurrences)`` for distinct ``ids``; the rows of
        missed ids are zero. Counts the uses of hit entries and the counters."""
        with self._lock:
            out, miss = cache_lookup(self._table, self._values, self._counts, ids, occurrences)
            miss_occurrences = occurrences[miss]
            missed_uses = int(miss_occurrences.sum())
            self.unique_hits += ids.numel() - miss.numel()
            self.unique_misses += miss.numel()
            self.hits += int(occurrences.sum()) - missed_uses
            self.misses += missed_uses
            return out, miss, miss_occurrences

    def serve(self, ids: Tensor, occurrences: Tensor, version: tuple,
              compute: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """Vectors of distinct ``ids``: hits from the cache, misses from ``compute(missed ids, their
        occurrences)``, which are then offered for admission. ``version`` is the owner's parameter stamp.
        Safe to call from several threads at once (``compute`` runs outside the lock)."""
        ids = ids.to(torch.int64)
        with self._lock:
            self.validate(version)
            out, miss, miss_occurrences = self.lookup(ids, occurrences)
            if miss.numel() == 0:
                return out
            miss_ids = ids[miss]
            # The sketch counts uses while not cached (a cached entry counts its own hits), so only misses
            # touch it: an evicted id returns with the count it had.
            score = self.count(miss_ids, miss_occurrences) if self.policy == "lfu" else None
            generation, admissions = self._generation, self._admissions
        computed = compute(miss_ids, miss_occurrences)
        out = out.to(computed.dtype).index_copy_(0, miss, computed)
        if score is not None:
            with self._lock:
                if self._generation == generation and self._admissions == admissions:
                    self.admit(miss_ids, computed, score)  # nothing admitted meanwhile: all still absent
                elif self._generation == generation:
                    # Other threads admitted entries while this one decoded: some of these ids may be among them.
                    absent = self._absent(miss_ids)
                    self.admit(miss_ids[absent], computed[absent], score[absent])
        return out

    def _absent(self, ids: Tensor) -> Tensor:
        """Positions of the ``ids`` not cached (a lookup of no columns that counts no uses)."""
        _, absent = cache_lookup(self._table, self._values[:, :0], self._counts, ids, torch.zeros_like(ids))
        return absent

    def admit(self, ids: Tensor, values: Tensor, score: Tensor) -> None:
        """Online (LFU) admission of missed ``ids`` (distinct, not cached) with their ``values`` and
        estimated counts ``score``: free room takes the most frequent of them; then each remaining one seen
        at least ``min_admission_count`` times, best first, replaces a little-used entry while its score is
        higher than that entry's count."""
        if self.policy != "lfu" or ids.numel() == 0:
            return
        with self._lock:
            free = self.max_entries - self._size
            if ids.numel() <= free:
                self._append(ids, values, score)
                return
            if free:
                order = torch.argsort(score, descending=True, stable=True)
                ids, values, score = ids[order], values[order], score[order]
                self._append(ids[:free], values[:free], score[:free])
                ids, values, score = ids[free:], values[free:], score[free:]
            # Full: ids seen at least min_admission_count times replace little-used entries, in one op.
            self._admissions += 1
            self.evictions += cache_replace(self._table, self._keys, self._values, self._counts, self._size, ids,
                                            values.to(self.dtype), score, self.min_admission_count,
                                            self._rng.randrange(self._size), _VICTIM_SAMPLE_PER_CANDIDATE)

    def _append(self, ids: Tensor, values: Tensor, counts: Tensor) -> None:
        n = ids.numel()
        self._reserve(self._size + n)
        entries = torch.arange(self._size, self._size + n)
        self._keys[entries] = ids
        self._values[entries] = values.to(self.dtype)
        self._counts[entries] = counts
        cache_insert(self._table, ids, entries)
        self._size += n
        self._admissions += 1

    def fill(self, ids: Tensor, values: Tensor, counts: Optional[Tensor] = None) -> None:
        """Replaces the entries by ``ids`` (distinct) and their ``values``, keeping the first ``max_entries``."""
        ids, values = ids[: self.max_entries].to(torch.int64), values[: self.max_entries]
        counts = torch.zeros(ids.shape, dtype=torch.int64) if counts is None else counts[: self.max_entries]
        with self._lock:
            self._size = 0
            self._generation += 1
            self._allocate(max(ids.numel(), min(self.max_entries, _INITIAL_ENTRIES)))
            self._append(ids, values, counts.to(torch.int64))

    def __repr__(self) -> str:
        with self._lock:
            return (f"EmbeddingCache(width={self.width}, dtype={self.dtype}, policy={self.policy!r}, "
                    f"entries={len(self)}/{self.max_entries}, hit_rate={self.hit_rate:.3f})")

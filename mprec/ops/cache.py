"""The cache op family: the hash table and frequency sketch behind MP-Cache (:mod:`mprec.nn.cache`).

Schemas: ``csrc/registration.cpp``. CPU kernels: ``csrc/cpu/cache.cpp``. References (the same hash
functions over Python dicts and tensors): :mod:`mprec.ops.reference`.

- A **table** is an int64 ``[C, 2]`` tensor of ``(key, entry)`` pairs, ``C`` a power of two, key ``-1`` for
  an empty slot; open addressing with linear probing from slot ``home(id) = (id * 0x9E3779B97F4A7C15 mod
  2^64) >> (64 - log2 C)``. The caller keeps the load at most 1/2 (:func:`table_capacity`).
- :func:`unique_ids` deduplicates a batch of ids with the same kind of table.
- A **sketch** is an int64 ``[R, B]`` count-min sketch, ``B`` a power of two, ``R <= 8``.

Ids are int64 ``>= 0``. These ops mutate their first argument and are for inference-side bookkeeping:
they have no autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .arguments import register_fake

__all__ = [
    "TABLE_MULTIPLIER",
    "SKETCH_MULTIPLIERS",
    "table_capacity",
    "empty_table",
    "cache_lookup",
    "cache_insert",
    "cache_erase",
    "cache_replace",
    "count_min_add",
    "unique_ids",
]

#: The table's multiply-shift hash multiplier (2^64 / golden ratio).
TABLE_MULTIPLIER = 0x9E3779B97F4A7C15
#: One multiplier per sketch row (row r uses SKETCH_MULTIPLIERS[r]).
SKETCH_MULTIPLIERS = (0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5, 0x9E3779B97F4A7C15,
                      0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB)


def table_capacity(entries: int) -> int:
    """Slots for ``entries`` keys at a load of at most 1/2 (a power of two, at least 2)."""
    c = 2
    while c < 2 * entries:
        c *= 2
    return c


def empty_table(entries: int) -> Tensor:
    """A table with room for ``entries`` keys."""
    return torch.full((table_capacity(entries), 2), -1, dtype=torch.int64)


def cache_lookup(table: Tensor, values: Tensor, counts: Tensor, ids: Tensor, occurrences: Tensor) -> tuple[Tensor, Tensor]:
    """``(out [U, W], miss [M])`` for distinct ``ids``: ``out[i] = values[entry of ids[i]]`` for cached ids
    (rows of missed ids are zero, for the caller to fill), ``miss`` the positions of the ids the
    table does not hold. Adds ``occurrences[i]`` to ``counts[entry]`` for each hit, in place."""
    return torch.ops.mprec.cache_lookup(table, values, counts, ids, occurrences)


def cache_insert(table: Tensor, ids: Tensor, entries: Tensor) -> None:
    """Maps each of ``ids`` (distinct, not in the table) to the entry at the same position, in place."""
    torch.ops.mprec.cache_insert(table, ids, entries)


def cache_erase(table: Tensor, ids: Tensor) -> Tensor:
    """Removes ``ids`` from the table in place; returns the entries they mapped to (``-1`` where absent)."""
    return torch.ops.mprec.cache_erase(table, ids)


def cache_replace(table: Tensor, keys: Tensor, values: Tensor, counts: Tensor, size: int, ids: Tensor,
                  new_values: Tensor, scores: Tensor, min_count: int, window_start: int,
                  window_per_candidate: int) -> int:
    """LFU replacement in a full cache of ``size`` entries (rows of ``keys``/``values``/``counts``), in place.

    Candidates ``ids`` (not cached) with ``scores >= min_count`` are taken best first (highest score, ties
    in input order); victims are the least-used entries (lowest count, ties by entry number) among
    ``window_per_candidate`` entries per such candidate (at least 64, at most ``size``) from
    ``window_start`` (cyclically), fewest uses first: sampled LFU, O(candidates) not O(entries). Candidate i replaces victim
    i while its score exceeds the victim's count: the table forgets the victim's id, and the entry takes
    the candidate's id, vector (``new_values`` row, in the values' dtype) and score. Returns the number
    replaced."""
    return torch.ops.mprec.cache_replace(table, keys, values, counts, size, ids, new_values, scores, min_count,
                                         window_start, window_per_candidate)


def count_min_add(sketch: Tensor, ids: Tensor, occurrences: Tensor) -> Tensor:
    """Adds ``occurrences[i]`` uses of ``ids[i]`` to the sketch in place; returns each id's estimate
    afterwards (the minimum over the rows, never below the true count)."""
    return torch.ops.mprec.count_min_add(sketch, ids, occurrences)


def unique_ids(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(unique, inverse, counts)`` like ``torch.unique(ids, sorted=False, return_inverse=True,
    return_counts=True)``, with the distinct ids in order of first occurrence: ``unique[inverse] == ids``.
    Hash-based, O(n): the deduplication DHE layers run on every batch."""
    return torch.ops.mprec.unique_ids(ids)


# --- fake kernels (shapes only) -------------------------------------------------------------------------
def _check(op: str, name: str, t: Tensor, dim: int) -> None:
    if t.dtype != torch.int64 or t.dim() != dim:
        raise RuntimeError(f"{op}: {name} must be a {dim}-D int64 tensor, got {t.dtype} {tuple(t.shape)}")


@register_fake("mprec::cache_lookup")
def _cache_lookup_fake(table, values, counts, ids, occurrences):
    op = "mprec::cache_lookup"
    _check(op, "table", table, 2)
    _check(op, "ids", ids, 1)
    _check(op, "occurrences", occurrences, 1)
    if values.dim() != 2:
        raise RuntimeError(f"{op}: values must be a 2-D tensor, got {tuple(values.shape)}")
    misses = torch.library.get_ctx().new_dynamic_size()
    return values.new_empty((ids.shape[0], values.shape[1])), ids.new_empty((misses,))


@register_fake("mprec::cache_insert")
def _cache_insert_fake(table, ids, entries):
    _check("mprec::cache_insert", "table", table, 2)
    _check("mprec::cache_insert", "ids", ids, 1)


@register_fake("mprec::cache_erase")
def _cache_erase_fake(table, ids):
    _check("mprec::cache_erase", "table", table, 2)
    _check("mprec::cache_erase", "ids", ids, 1)
    return ids.new_empty(ids.shape)


@register_fake("mprec::count_min_add")
def _count_min_add_fake(sketch, ids, occurrences):
    _check("mprec::count_min_add", "sketch", sketch, 2)
    _check("mprec::count_min_add", "ids", ids, 1)
    return ids.new_empty(ids.shape)


@register_fake("mprec::unique_ids")
def _unique_ids_fake(ids):
    if ids.dtype not in (torch.int32, torch.int64):
        raise RuntimeError(f"mprec::unique_ids: ids must be int32 or int64, got {ids.dtype}")
    distinct = torch.library.get_ctx().new_dynamic_size()
    return ids.new_empty((distinct,)), ids.new_empty(ids.shape, dtype=torch.int64), \
        ids.new_empty((distinct,), dtype=torch.int64)


@register_fake("mprec::cache_replace")
def _cache_replace_fake(table, keys, values, counts, size, ids, new_values, scores, min_count, window_start,
                        window_per_candidate):
    _check("mprec::cache_replace", "table", table, 2)
    _check("mprec::cache_replace", "ids", ids, 1)
    # The schema returns an int, which the dispatcher needs concrete: how many entries were replaced is known
    # only from the data, so the op cannot run on fake tensors (caches serve eager inference only).
    raise NotImplementedError("mprec::cache_replace: the number of entries replaced depends on the data; the op "
                              "does not run on fake tensors (torch.compile traces the DHE layers without caches)")

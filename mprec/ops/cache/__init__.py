"""The cache op family: the hash table and frequency sketch behind MP-Cache (:mod:`mprec.nn.cache`).

Schemas: ``csrc/registration.cpp``. CPU kernels: ``csrc/cpu/cache.cpp``. The tests' oracles (the same hash
functions over Python dicts and tensors) are in ``tests/reference.py``.

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

from ..arguments import register_fake
from ..spelling import dtype_name, sizes

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
    table does not hold. Adds ``occurrences[i]`` to ``counts[entry]`` for each hit, in place (a count held at the
    int64 limits rather than wrapping)."""
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
    afterwards (the minimum over the rows, never below the true count; a cell held at the int64 limits rather
    than wrapping)."""
    return torch.ops.mprec.count_min_add(sketch, ids, occurrences)


def unique_ids(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(unique, inverse, counts)`` like ``torch.unique(ids, sorted=False, return_inverse=True,
    return_counts=True)``, with the distinct ids in order of first occurrence: ``unique[inverse] == ids``.
    Hash-based, O(n): the deduplication DHE layers run on every batch."""
    return torch.ops.mprec.unique_ids(ids)


# --- argument checks (csrc/cpu/cache.cpp's, in its words and order) and fake kernels (shapes only) ---------
MAX_SKETCH_ROWS = 8  # csrc/cpu/cache.cpp kMaxSketchRows (tests/test_op_agreement.py holds them equal)


def _is_power_of_two(n: int) -> bool:
    return n >= 2 and n & (n - 1) == 0


def _check_cpu(op: str, name: str, t: Tensor) -> None:
    if t.device.type != "cpu":
        raise RuntimeError(f"{op}: {name} must be a CPU tensor, got {t.device}")


def _check_table(op: str, table: Tensor) -> None:
    """csrc check_table."""
    _check_cpu(op, "table", table)
    if not (table.dtype == torch.int64 and table.dim() == 2 and table.shape[1] == 2 and table.is_contiguous()):
        raise RuntimeError(f"{op}: table must be a contiguous int64 [capacity, 2] tensor, got "
                           f"{dtype_name(table.dtype)} {sizes(table)}")
    if not _is_power_of_two(table.shape[0]):
        raise RuntimeError(f"{op}: table capacity must be a power of two >= 2, got {table.shape[0]}")


def _check_ids(op: str, ids: Tensor, name: str = "ids") -> None:
    """csrc check_ids (values, >= 0, are checked where the data is read)."""
    _check_cpu(op, name, ids)
    if ids.dtype != torch.int64 or ids.dim() != 1:
        raise RuntimeError(f"{op}: {name} must be a 1-D int64 tensor, got {dtype_name(ids.dtype)} {sizes(ids)}")


def _check_occurrences(op: str, occurrences: Tensor, ids: Tensor) -> None:
    """csrc check_occurrences."""
    if not (occurrences.dtype == torch.int64 and occurrences.dim() == 1 and occurrences.shape[0] == ids.shape[0]
            and occurrences.device.type == "cpu"):
        raise RuntimeError(f"{op}: occurrences must be a 1-D int64 CPU tensor with one count per id ({ids.shape[0]}), "
                           f"got {dtype_name(occurrences.dtype)} {sizes(occurrences)}")


@register_fake("mprec::cache_lookup")
def _cache_lookup_fake(table, values, counts, ids, occurrences):
    op = "mprec::cache_lookup"
    _check_table(op, table)
    if values.dim() != 2 or values.device.type != "cpu":
        raise RuntimeError(f"{op}: values must be a 2-D CPU tensor, got {sizes(values)}")
    if not (counts.dtype == torch.int64 and counts.dim() == 1 and counts.shape[0] == values.shape[0]
            and counts.is_contiguous()):
        raise RuntimeError(f"{op}: counts must be a contiguous 1-D int64 tensor with one count per values row "
                           f"({values.shape[0]}), got {dtype_name(counts.dtype)} {sizes(counts)}")
    _check_ids(op, ids)
    _check_occurrences(op, occurrences, ids)
    misses = torch.library.get_ctx().new_dynamic_size()
    return values.new_empty((ids.shape[0], values.shape[1])), ids.new_empty((misses,))


@register_fake("mprec::cache_insert")
def _cache_insert_fake(table, ids, entries):
    op = "mprec::cache_insert"
    _check_table(op, table)
    _check_ids(op, ids)
    _check_ids(op, entries, "entries")
    if entries.shape[0] != ids.shape[0]:
        raise RuntimeError(f"{op}: one entry per id: {ids.shape[0]} ids, {entries.shape[0]} entries")


@register_fake("mprec::cache_erase")
def _cache_erase_fake(table, ids):
    _check_table("mprec::cache_erase", table)
    _check_ids("mprec::cache_erase", ids)
    return ids.new_empty(ids.shape)


@register_fake("mprec::count_min_add")
def _count_min_add_fake(sketch, ids, occurrences):
    op = "mprec::count_min_add"
    if not (sketch.device.type == "cpu" and sketch.dtype == torch.int64 and sketch.dim() == 2
            and sketch.is_contiguous()):
        raise RuntimeError(f"{op}: sketch must be a contiguous int64 [rows, buckets] CPU tensor, got "
                           f"{dtype_name(sketch.dtype)} {sizes(sketch)}")
    if not 1 <= sketch.shape[0] <= MAX_SKETCH_ROWS:
        raise RuntimeError(f"{op}: sketch rows must be in [1, {MAX_SKETCH_ROWS}], got {sketch.shape[0]}")
    if not _is_power_of_two(sketch.shape[1]):
        raise RuntimeError(f"{op}: sketch buckets must be a power of two >= 2, got {sketch.shape[1]}")
    _check_ids(op, ids)
    _check_occurrences(op, occurrences, ids)
    return ids.new_empty(ids.shape)


def _check_unique_ids(op: str, ids: Tensor) -> None:
    """csrc/cpu/cache.cpp unique_ids_cpu's argument check."""
    if ids.dtype not in (torch.int32, torch.int64):
        raise RuntimeError(f"{op}: ids must be int32 or int64, got {dtype_name(ids.dtype)}")


@register_fake("mprec::unique_ids")
def _unique_ids_fake(ids):
    _check_unique_ids("mprec::unique_ids", ids)
    distinct = torch.library.get_ctx().new_dynamic_size()
    return ids.new_empty((distinct,)), ids.new_empty(ids.shape, dtype=torch.int64), \
        ids.new_empty((distinct,), dtype=torch.int64)


@register_fake("mprec::cache_replace")
def _cache_replace_fake(table, keys, values, counts, size, ids, new_values, scores, min_count, window_start,
                        window_per_candidate):
    op = "mprec::cache_replace"
    _check_table(op, table)
    _check_ids(op, ids)
    _check_ids(op, keys, "keys")
    if not (keys.is_contiguous() and counts.is_contiguous() and values.is_contiguous()):
        raise RuntimeError(f"{op}: keys, values and counts must be contiguous")
    if not (counts.dtype == torch.int64 and counts.dim() == 1 and counts.shape[0] == keys.shape[0]
            and values.dim() == 2 and values.shape[0] == keys.shape[0]):
        raise RuntimeError(f"{op}: keys [E], values [E, W] and counts [E] int64 must have one row per entry, got "
                           f"{sizes(keys)}, {sizes(values)}, {sizes(counts)}")
    if not 1 <= size <= keys.shape[0]:
        raise RuntimeError(f"{op}: size must be in [1, {keys.shape[0]}], got {size}")
    if not 0 <= window_start < size:
        raise RuntimeError(f"{op}: window_start must be in [0, {size}), got {window_start}")
    if window_per_candidate < 1:
        raise RuntimeError(f"{op}: window_per_candidate must be >= 1, got {window_per_candidate}")
    n = ids.shape[0]
    if not (scores.dtype == torch.int64 and scores.dim() == 1 and scores.shape[0] == n):
        raise RuntimeError(f"{op}: scores must be 1-D int64 with one score per id ({n}), got "
                           f"{dtype_name(scores.dtype)} {sizes(scores)}")
    if not (new_values.dim() == 2 and new_values.shape[0] == n and new_values.shape[1] == values.shape[1]
            and new_values.dtype == values.dtype):
        raise RuntimeError(f"{op}: new_values must be [{n}, {values.shape[1]}] of the values' dtype "
                           f"{dtype_name(values.dtype)}, got {dtype_name(new_values.dtype)} {sizes(new_values)}")
    # The schema returns an int, which the dispatcher needs concrete: how many entries were replaced is known
    # only from the data, so the op cannot run on fake tensors (caches serve eager inference only).
    raise NotImplementedError("mprec::cache_replace: the number of entries replaced depends on the data; the op "
                              "does not run on fake tensors (torch.compile traces the DHE layers without caches)")

"""The cache op family (mprec.ops.cache): unique_ids against torch.unique, the hash table against a dict
model (with the linear-probing invariant checked after every change), the count-min sketch against its
reference, LFU replacement against a model of its definition, errors, and opcheck."""

import random

import pytest
import torch

import mprec  # noqa: F401  (registers the ops)
from mprec.ops.cache import (
    cache_erase,
    cache_insert,
    cache_lookup,
    cache_replace,
    count_min_add,
    empty_table,
    table_capacity,
    unique_ids,
)
from reference import cache_table_reference, count_min_reference


# --- unique_ids -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", [(0,), (1,), (257,), (16, 33)])
@pytest.mark.parametrize("spread", ["dense", "wide", "negative"])
def test_unique_ids_matches_torch_unique(dtype, shape, spread):
    info = torch.iinfo(dtype)
    if spread == "dense":
        ids = torch.randint(0, 20, shape, dtype=dtype)
    elif spread == "wide":
        ids = torch.randint(info.max - 1000, info.max, shape, dtype=dtype)
        ids.view(-1)[::3] = info.max  # the extreme value itself
    else:
        ids = torch.randint(-50, 50, shape, dtype=dtype)
        if ids.numel():
            ids.view(-1)[0] = info.min
    unique, inverse, counts = unique_ids(ids)
    assert unique.dtype == dtype and inverse.dtype == torch.int64 and counts.dtype == torch.int64
    assert inverse.shape == ids.shape
    assert torch.equal(unique[inverse], ids)
    want, want_counts = torch.unique(ids, return_counts=True)
    order = torch.argsort(unique)
    assert torch.equal(unique[order], want) and torch.equal(counts[order], want_counts)
    # Order of first occurrence.
    flat = ids.reshape(-1).tolist()
    assert unique.tolist() == list(dict.fromkeys(flat))


# --- the hash table ----------------------------------------------------------------------------------------
def random_ids(n, generator, high=1 << 62):
    return torch.randint(0, high, (n,), generator=generator, dtype=torch.int64)


@pytest.mark.parametrize("entries", [1, 7, 300])
def test_table_insert_erase_lookup_against_dict(entries):
    g = torch.Generator().manual_seed(entries)
    rng = random.Random(entries)
    table = empty_table(entries)
    assert table.shape == (table_capacity(entries), 2) and table.shape[0] >= 2 * entries
    model = {}
    # Clustered ids (small range) make long probe runs, wrap-around and backward shifts likely.
    universe = list(set(random_ids(4 * entries + 8, g, high=10 * entries + 20).tolist()))
    for step in range(60):
        absent = [i for i in universe if i not in model]
        present = list(model)
        if present and (len(model) == entries or rng.random() < 0.4):
            gone = rng.sample(present, rng.randint(1, len(present)))
            erased = cache_erase(table, torch.tensor(gone + [absent[0]] if absent else gone))
            assert erased.tolist()[: len(gone)] == [model.pop(i) for i in gone]
            if absent:
                assert erased[-1].item() == -1
        else:
            new = rng.sample(absent, min(len(absent), rng.randint(1, entries - len(model))))
            slots = [rng.randrange(1000) for _ in new]
            cache_insert(table, torch.tensor(new, dtype=torch.int64), torch.tensor(slots, dtype=torch.int64))
            model.update(zip(new, slots))
        assert cache_table_reference(table) == model

    # Lookup: hit rows are the entries' values, misses listed, use counts added for hits only.
    values = torch.randn(1000, 3, dtype=torch.float64)
    counts = torch.randint(0, 5, (1000,))
    before = counts.clone()
    query = torch.tensor(rng.sample(universe, len(universe)), dtype=torch.int64)
    occurrences = torch.randint(1, 9, query.shape)
    out, miss = cache_lookup(table, values, counts, query, occurrences)
    assert miss.tolist() == [i for i, q in enumerate(query.tolist()) if q not in model]
    expected_counts = before.clone()
    for i, q in enumerate(query.tolist()):
        if q in model:
            assert torch.equal(out[i], values[model[q]])
            expected_counts[model[q]] += occurrences[i]
    assert torch.equal(counts, expected_counts)


@pytest.mark.parametrize("capacity", [2, 8, 64])
def test_a_full_table_erases_and_refills(capacity):
    """insert fills a table to its last slot; erase must then end its backward shift on the hole it made, as
    no other slot is empty (a walk that looked only for an empty slot ran forever here)."""
    rng = random.Random(capacity)
    table = torch.full((capacity, 2), -1, dtype=torch.int64)
    ids = rng.sample(range(3 * capacity), capacity)  # a small range: long clusters that wrap around
    cache_insert(table, torch.tensor(ids), torch.arange(capacity))
    model = dict(zip(ids, range(capacity)))
    assert cache_table_reference(table) == model and (table[:, 0] >= 0).all()
    with pytest.raises(RuntimeError, match=r"mprec::cache_insert: the table is full \(capacity"):
        cache_insert(table, torch.tensor([3 * capacity]), torch.tensor([0]))
    for gone in rng.sample(ids, capacity):
        assert cache_erase(table, torch.tensor([gone])).tolist() == [model.pop(gone)]
        assert cache_table_reference(table) == model
        if model and rng.random() < 0.3:  # refill the hole now and then, so erases meet full tables again
            new = next(i for i in range(3 * capacity, 6 * capacity) if i not in model)
            cache_insert(table, torch.tensor([new]), torch.tensor([7]))
            model[new] = 7
            assert cache_table_reference(table) == model
            cache_erase(table, torch.tensor([new]))
            del model[new]
    assert not model and (table == -1).all()


def test_erase_ends_on_a_table_without_empty_slots_that_insert_did_not_build():
    """A table of junk (every key 0, every home slot ignored) is no valid table, but erase must still return."""
    table = torch.zeros(4, 2, dtype=torch.int64)
    assert cache_erase(table, torch.tensor([0, 0, 5])).tolist() == [0, 0, -1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("width", [1, 16, 129])
def test_lookup_copies_rows_exactly(dtype, width):
    table = empty_table(40)
    ids = torch.arange(0, 400, 10)
    cache_insert(table, ids, torch.arange(40).flip(0))
    values = torch.randn(40, width).to(dtype)
    query = torch.tensor([5, 390, 0, 7, 200])
    out, miss = cache_lookup(table, values, torch.zeros(40, dtype=torch.int64), query, torch.ones(5, dtype=torch.int64))
    assert out.dtype == dtype and out.shape == (5, width)
    assert miss.tolist() == [0, 3]
    assert not out[0].any() and not out[3].any()  # missed rows are zero
    for i, entry in ((1, 0), (2, 39), (4, 19)):
        assert torch.equal(out[i], values[entry])


def test_lookup_empty_query_and_empty_table():
    table = empty_table(4)
    out, miss = cache_lookup(table, torch.randn(4, 2), torch.zeros(4, dtype=torch.int64),
                             torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    assert out.shape == (0, 2) and miss.numel() == 0
    out, miss = cache_lookup(table, torch.randn(4, 2), torch.zeros(4, dtype=torch.int64), torch.tensor([3, 1]),
                             torch.ones(2, dtype=torch.int64))
    assert miss.tolist() == [0, 1]


# --- the count-min sketch ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,buckets", [(1, 2), (4, 64), (8, 1024)])
def test_count_min_against_reference(rows, buckets):
    g = torch.Generator().manual_seed(rows * buckets)
    sketch = torch.zeros(rows, buckets, dtype=torch.int64)
    updates = []
    true = {}
    for _ in range(5):
        ids = torch.randint(0, 300, (50,), generator=g)  # repeats within an update too
        occurrences = torch.randint(0, 7, (50,), generator=g)
        updates.append((ids, occurrences))
        estimate = count_min_add(sketch, ids, occurrences)
        for i, o in zip(ids.tolist(), occurrences.tolist()):
            true[i] = true.get(i, 0) + o
    want_sketch, want_estimate = count_min_reference(updates, rows, buckets)
    assert torch.equal(sketch, want_sketch)
    assert torch.equal(estimate, want_estimate)
    # Never below the truth (after the last update, for every id in it).
    final = count_min_add(sketch, torch.tensor(list(true)), torch.zeros(len(true), dtype=torch.int64))
    assert all(e >= true[i] for i, e in zip(true, final.tolist()))
    assert int(sketch.sum()) == rows * sum(true.values())


# --- LFU replacement ---------------------------------------------------------------------------------------------
def replace_model(keys, counts, size, ids, scores, min_count, window_start, per_candidate):
    """The documented semantics of cache_replace: [(entry, candidate position)] replaced."""
    candidates = sorted((j for j in range(len(ids)) if scores[j] >= min_count), key=lambda j: -scores[j])
    if not candidates:
        return []
    window = min(size, max(64, per_candidate * len(candidates)))
    sample = sorted((counts[(window_start + w) % size], (window_start + w) % size) for w in range(window))
    out = []
    for j, (count, entry) in zip(candidates, sample):
        if scores[j] <= count:
            break
        out.append((entry, j))
    return out


# The last: a window per candidate so large that its product with the candidates overflows int64 (the whole cache).
@pytest.mark.parametrize("size,n,per_candidate", [(5, 9, 1), (100, 30, 1), (100, 30, 8), (300, 3, 2),
                                                  (100, 30, 2**63 - 1)])
def test_cache_replace_against_model(size, n, per_candidate):
    rng = random.Random(size + n)
    g = torch.Generator().manual_seed(size * n)
    capacity = size + 10
    keys = torch.full((capacity,), -7, dtype=torch.int64)
    keys[:size] = torch.randperm(10 * capacity, generator=g)[:size] * 2  # even ids cached
    counts = torch.randint(0, 6, (capacity,), generator=g)
    values = torch.randn(capacity, 4, generator=g)
    table = empty_table(capacity)
    cache_insert(table, keys[:size], torch.arange(size))
    ids = torch.randperm(10 * capacity, generator=g)[:n] * 2 + 1  # odd ids: not cached
    scores = torch.randint(0, 9, (n,), generator=g)
    new_values = torch.randn(n, 4, generator=g)
    start = rng.randrange(size)
    want = replace_model(keys.tolist(), counts.tolist(), size, ids.tolist(), scores.tolist(), 2, start, per_candidate)
    keys_before, counts_before, values_before = keys.clone(), counts.clone(), values.clone()
    got = cache_replace(table, keys, values, counts, size, ids, new_values, scores, 2, start, per_candidate)
    assert got == len(want)
    expect_keys, expect_counts, expect_values = keys_before.clone(), counts_before.clone(), values_before.clone()
    for entry, j in want:
        expect_keys[entry], expect_counts[entry], expect_values[entry] = ids[j], scores[j], new_values[j]
    assert torch.equal(keys, expect_keys) and torch.equal(counts, expect_counts) and torch.equal(values, expect_values)
    assert cache_table_reference(table) == {k: e for e, k in enumerate(keys[:size].tolist())}


# --- errors ---------------------------------------------------------------------------------------------------
def test_errors_name_the_op_and_value():
    table = empty_table(4)
    cache_insert(table, torch.tensor([3]), torch.tensor([0]))
    with pytest.raises(RuntimeError, match=r"mprec::cache_insert: id 3 is already in the table"):
        cache_insert(table, torch.tensor([3]), torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"mprec::cache_insert: ids must be >= 0, got -4 at position 1"):
        cache_insert(table, torch.tensor([5, -4]), torch.tensor([1, 2]))
    with pytest.raises(RuntimeError, match=r"mprec::cache_insert: entries must be >= 0, got -1"):
        cache_insert(table, torch.tensor([5]), torch.tensor([-1]))
    with pytest.raises(RuntimeError, match=r"mprec::cache_insert: one entry per id: 2 ids, 1 entries"):
        cache_insert(table, torch.tensor([5, 6]), torch.tensor([1]))
    full = empty_table(1)
    cache_insert(full, torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match=r"mprec::cache_insert: the table is full \(capacity 2\)"):
        cache_insert(full, torch.tensor([9]), torch.tensor([2]))
    with pytest.raises(RuntimeError, match=r"mprec::cache_lookup: table capacity must be a power of two >= 2, got 3"):
        cache_lookup(torch.full((3, 2), -1), torch.randn(2, 2), torch.zeros(2, dtype=torch.int64), torch.tensor([1]),
                     torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"mprec::cache_lookup: ids must be a 1-D int64 tensor, got Int"):
        cache_lookup(table, torch.randn(2, 2), torch.zeros(2, dtype=torch.int64), torch.tensor([1], dtype=torch.int32),
                     torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"mprec::cache_lookup: occurrences must be a 1-D int64 CPU tensor with one "
                                           r"count per id \(2\)"):
        cache_lookup(table, torch.randn(2, 2), torch.zeros(2, dtype=torch.int64), torch.tensor([1, 2]),
                     torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"mprec::cache_lookup: counts must be a contiguous 1-D int64 tensor with one "
                                           r"count per values row \(2\)"):
        cache_lookup(table, torch.randn(2, 2), torch.zeros(3, dtype=torch.int64), torch.tensor([1]), torch.tensor([1]))
    # A table pointing past the values is refused, not read.
    with pytest.raises(RuntimeError, match=r"mprec::cache_lookup: the table maps id 3 to entry 0 but values has 0 rows"):
        cache_lookup(table, torch.randn(0, 2), torch.zeros(0, dtype=torch.int64), torch.tensor([3]), torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"mprec::count_min_add: sketch buckets must be a power of two >= 2, got 6"):
        count_min_add(torch.zeros(2, 6, dtype=torch.int64), torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"mprec::count_min_add: sketch rows must be in \[1, 8\], got 9"):
        count_min_add(torch.zeros(9, 8, dtype=torch.int64), torch.tensor([1]), torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"mprec::count_min_add: ids must be >= 0, got -2"):
        count_min_add(torch.zeros(2, 8, dtype=torch.int64), torch.tensor([-2]), torch.tensor([1]))
    with pytest.raises(RuntimeError, match=r"mprec::unique_ids: ids must be int32 or int64, got Float"):
        unique_ids(torch.randn(3))
    keys, values, counts = torch.tensor([3, 0]), torch.randn(2, 2), torch.zeros(2, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"mprec::cache_replace: id 3 is already in the table"):
        cache_replace(table, keys, values, counts, 1, torch.tensor([3]), torch.randn(1, 2), torch.tensor([5]), 2, 0, 1)
    with pytest.raises(RuntimeError, match=r"mprec::cache_replace: new_values must be \[1, 2\] of the values' dtype Float"):
        cache_replace(table, keys, values, counts, 1, torch.tensor([7]), torch.randn(1, 2, dtype=torch.float64),
                      torch.tensor([5]), 2, 0, 1)
    with pytest.raises(RuntimeError, match=r"mprec::cache_replace: size must be in \[1, 2\], got 3"):
        cache_replace(table, keys, values, counts, 3, torch.tensor([7]), torch.randn(1, 2), torch.tensor([5]), 2, 0, 1)
    with pytest.raises(RuntimeError, match=r"mprec::cache_replace: window_start must be in \[0, 1\), got 1"):
        cache_replace(table, keys, values, counts, 1, torch.tensor([7]), torch.randn(1, 2), torch.tensor([5]), 2, 1, 1)
    assert cache_table_reference(table) == {3: 0}  # nothing changed by the refused calls


# --- opcheck -----------------------------------------------------------------------------------------------------
# Data-dependent output sizes: the fake kernels allocate unbacked sizes, which opcheck's AOT tests accept.
def test_opcheck_cache_ops():
    table = empty_table(8)
    cache_insert(table, torch.tensor([4, 9, 100]), torch.tensor([0, 1, 2]))
    values, counts = torch.randn(8, 3), torch.zeros(8, dtype=torch.int64)
    ids, occ = torch.tensor([9, 5, 100]), torch.tensor([2, 1, 1])
    torch.library.opcheck(torch.ops.mprec.unique_ids.default, (torch.tensor([5, 3, 5, 1]),))
    torch.library.opcheck(torch.ops.mprec.cache_lookup.default, (table, values, counts, ids, occ))
    torch.library.opcheck(torch.ops.mprec.count_min_add.default, (torch.zeros(4, 16, dtype=torch.int64), ids, occ))
    torch.library.opcheck(torch.ops.mprec.cache_erase.default, (table.clone(), torch.tensor([4, 6])))
    torch.library.opcheck(torch.ops.mprec.cache_insert.default, (table.clone(), torch.tensor([6]), torch.tensor([3])))


def test_lookup_of_no_columns_only_finds_misses():
    """What a cache asks to learn which ids it holds (mprec.nn.cache): rows of width 0, no use counted."""
    table = empty_table(8)
    cache_insert(table, torch.tensor([4, 9, 17]), torch.tensor([0, 1, 2]))
    values, counts = torch.randn(3, 5), torch.zeros(3, dtype=torch.int64)
    out, miss = cache_lookup(table, values[:, :0], counts, torch.tensor([9, 5, 17, 30]), torch.zeros(4, dtype=torch.int64))
    assert out.shape == (4, 0) and miss.tolist() == [1, 3] and counts.tolist() == [0, 0, 0]
    empty = torch.empty(3, 0)
    out, miss = cache_lookup(table, empty, counts, torch.tensor([4]), torch.ones(1, dtype=torch.int64))
    assert out.shape == (1, 0) and miss.tolist() == [] and counts.tolist() == [1, 0, 0]


def test_use_counts_hold_at_the_int64_limits():
    """Occurrences that would carry a count past int64 leave it at the limit (the fuzzer drew such values; a
    wrapped count would rank the most used entry least used)."""
    top, bottom = 2**63 - 1, -2**63
    sketch = torch.full((2, 8), top - 1, dtype=torch.int64)
    assert count_min_add(sketch, torch.tensor([4]), torch.tensor([5])).tolist() == [top]
    assert int(sketch.max()) == top and int(sketch.min()) == top - 1  # the id's cell in each row, only
    sketch.fill_(bottom + 1)
    assert count_min_add(sketch, torch.tensor([4]), torch.tensor([-5])).tolist() == [bottom]
    table = empty_table(4)
    cache_insert(table, torch.tensor([3, 9]), torch.tensor([0, 1]))
    values, counts = torch.randn(2, 2), torch.tensor([top - 2, bottom + 2])
    cache_lookup(table, values, counts, torch.tensor([3, 9]), torch.tensor([5, -5]))
    assert counts.tolist() == [top, bottom]

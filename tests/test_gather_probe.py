"""The benchmarks' random-row gather probe (mprec._C.gather_probe) and the gather limit built on it
(mprec.benchmark.gather_limit): the rows read, every byte of them and nothing past them, on every ISA."""

import ctypes
import mmap
import re

import pytest
import torch

import mprec
import mprec.benchmark
from mprec.benchmark import GATHER_DISTANCES, GATHER_INTO_L2, GATHER_LINES, gather_limit


def word_sum(table, rows):
    """What the gather probe returns for rows ``rows`` of ``table``: the sum of every row's little-endian 64-bit
    words (its last word zero-padded), wrapping at 2**64."""
    data = table.contiguous().view(torch.uint8).reshape(table.shape[0], -1)[rows]
    padded = torch.zeros(len(rows), (data.shape[1] + 7) // 8 * 8, dtype=torch.uint8)
    padded[:, :data.shape[1]] = data
    return sum(padded.view(torch.int64).flatten().tolist()) % 2**64


def test_gather_limit_reads_the_rows_it_is_given(monkeypatch):
    """The gather limit probes the rows asked for, with the setting found fastest with the caches flushed before
    each timed probe."""
    table = torch.randint(-2**63, 2**63 - 1, (1000, 16))  # 128-byte rows: sums that wrap
    indices = torch.randint(0, 1000, (5000,))
    events = []
    real_probe = mprec._C.gather_probe
    monkeypatch.setattr(mprec._C, "gather_probe", lambda *args: events.append("probe") or real_probe(*args))
    probe = gather_limit([table, table], [indices, indices[:7]], rounds=1, before=lambda: events.append("flush"))
    # Its settings are compared as the kernels are timed: every timed probe (one per table) after a flush.
    settings = len(GATHER_DISTANCES) * len(GATHER_LINES) * len(GATHER_INTO_L2)
    assert events == ["probe", "probe"] * settings + ["flush", "probe", "probe"] * settings
    assert probe() == word_sum(table, indices) + word_sum(table, indices[:7])
    _, distance, into = re.fullmatch(r"(whole rows|\d+ lines? per row) (\d+) ahead into (L1|L2)",
                                     probe.setting).groups()
    assert int(distance) in GATHER_DISTANCES and into in ("L1", "L2")
    # A setting is named by what it prefetches of these rows: two lines are the whole of a 128-byte row.
    for chosen, name in (((8, 2, True), "whole rows 8 ahead into L2"), ((16, 4, False), "whole rows 16 ahead into L1"),
                         ((32, 1, True), "1 line per row 32 ahead into L2")):
        monkeypatch.setattr(mprec.benchmark, "fastest", lambda candidates, *_, chosen=chosen: chosen)
        assert gather_limit([table], [indices]).setting == name
    with pytest.raises(ValueError, match=r"gather_limit: indices\[0\] reach outside its 1000 rows"):
        gather_limit([table], [torch.tensor([0, 1000])])
    with pytest.raises(ValueError, match=r"gather_limit: indices\[0\] must be a contiguous 1-D int64 tensor"):
        gather_limit([table], [indices.int()])
    with pytest.raises(ValueError, match=r"gather_limit: tables\[0\] must be a contiguous 2-D CPU tensor"):
        gather_limit([table.t()], [indices])


def test_gather_probe_reads_every_byte_of_each_row(isa):
    """Each ISA's probe reads every byte of the rows asked for: rows of whole lines (a loop per width up to 16
    lines, the AVX-512, AVX2 and 8-byte loads), rows of other widths (the general loop, with its words and bytes
    past the last whole load), with every prefetch setting and ranges shorter than the prefetch distance."""
    for row_bytes in (1, 3, 7, 8, 9, 31, 32, 33, 63, 64, 65, 128, 192, 256, 512, 1024, 64 * 16 + 8, 64 * 17):
        table = torch.randint(0, 256, (200, row_bytes), dtype=torch.uint8)
        rows = torch.randint(0, 200, (333,))
        for distance, prefetch_lines, into_l2 in ((0, 1, False), (8, 1, True), (32, 2, False), (500, 1 << 20, True)):
            assert mprec._C.gather_probe(table.data_ptr(), row_bytes, rows.data_ptr(), len(rows), distance,
                                         prefetch_lines, into_l2) == word_sum(table, rows), \
                (row_bytes, distance, prefetch_lines, into_l2)
        # Zero lookups read nothing.
        assert mprec._C.gather_probe(table.data_ptr(), row_bytes, rows.data_ptr(), 0, 8, 1, True) == 0


def test_gather_probe_reads_nothing_past_the_last_row(isa):
    """Rows narrower than a load, or ending a byte into their last line, are read within the row: a table that
    ends where an unreadable page begins is probed to its last row without a fault."""
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, 2 * page)
    view = ctypes.c_char.from_buffer(buf)
    base = ctypes.addressof(view)
    mprotect = ctypes.CDLL(None).mprotect
    mprotect.argtypes, mprotect.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    assert mprotect(base + page, page, 0) == 0  # PROT_NONE: any read of the second page faults
    try:
        # Widths of part lines take the general loop, whose words and bytes after the last whole load end the row.
        for row_bytes in (1, 3, 7, 12, 33, 65, 100, 64 * 16 + 1, 64 * 17 + 5):
            rows = page // row_bytes
            start = page - rows * row_bytes
            data = torch.randint(0, 256, (rows * row_bytes,), dtype=torch.uint8)
            buf[start:page] = bytes(data.tolist())
            indices = torch.tensor([rows - 1, 0, rows - 1, rows // 2])
            table = data.view(rows, row_bytes)
            for distance, prefetch_lines, into_l2 in ((0, 1, False), (2, 1, True), (1, 1 << 20, False)):
                assert mprec._C.gather_probe(base + start, row_bytes, indices.data_ptr(), len(indices), distance,
                                             prefetch_lines, into_l2) == word_sum(table, indices), (row_bytes, distance)
    finally:
        mprotect(base + page, page, 3)  # PROT_READ | PROT_WRITE, so that the buffer can be unmapped
        del view
        buf.close()

"""Embedding-bag benchmark: mprec against torch's embedding_bag (and torch's quantized int8 op) and
FBGEMM's CPU TBE, in the same run, one pytest-benchmark group per case.

    make bench                      # runs this file and prints the summary (bench/run.py)
    pytest bench/bench_embedding_bag.py --benchmark-json=out.json

The cases are mprec.benchmark.EMBEDDING_BAG_CASES; every implementation of a case reads the same table
memory. The group "machine" measures the read bandwidth the summary divides by; each case's "gather limit"
(mprec.benchmark.gather_limit) reads every byte of the case's own rows with a plain prefetching loop, the reference the
summary gives each kernel's rate as a fraction of.
"""

import gc
import statistics
import time

import pytest
import torch

import mprec

from mprec.benchmark import EMBEDDING_BAG_CASES, GATHER_LIMIT, cache_flush_bytes, flush_caches, read_bandwidth
from mprec.memory import huge_pages_available, retain_freed_memory
from mprec.timing import round_orders

# As mprec's commands and the DLRM benchmarks do: malloc keeps the outputs' freed memory, so that a call does
# not fault in and zero the pages of the previous call's outputs (max mode's [B, D] int64 argmax too), which on
# a virtual machine cost some rounds several milliseconds and no others.
retain_freed_memory()

_built = {}
_interleaved = {}


def implementations(case):
    # One case's inputs at a time: the 8-table case alone holds 4 GiB of tables.
    if case.name not in _built:
        _built.clear()
        gc.collect()
        _built[case.name] = case.build()
        _interleaved[case.name] = interleaved_medians(_built[case.name], case.rounds, case.before_each_call)
    return _built[case.name]


# Read before every round-robin call (mprec.benchmark.flush_caches: several times this machine's largest
# cache), so each call starts with none of the case's rows cached. Without it a call finds the rows the previous
# call (its own or another implementation's: the same indices) left in L3; a D=16 case's 10 MB of rows fit in a
# 32 MB L3, and which implementation ran before decided the ratios. Real batches do not repeat their ids.
FLUSH_BYTES = cache_flush_bytes()


def interleaved_medians(impls, rounds, before=flush_caches):
    """Median ms per implementation over rounds that call every implementation in turn, each after the caches are
    flushed (``before``: the case's, which warm cases skip), so all see the same moments of a shared machine and
    start from the same cache state; the summary's ratios come from these. Each round takes them in a random order
    (round_orders): in a fixed order each one always follows the same other, and the ratios depended on the order
    (mprec's max against its sum of the same rows measured 0.70-0.73 in the case's order, 0.81-0.84 in another).
    pytest-benchmark's own rounds time each implementation alone, warm."""
    for fn in impls.values():
        fn()
    times = {name: [] for name in impls}
    for order in round_orders(list(impls.items()), rounds):
        for name, fn in order:
            before()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def test_read_bandwidth(benchmark):
    benchmark.group = "machine"
    gbps = read_bandwidth()
    benchmark.extra_info.update(kind="read_bandwidth", gbps=gbps, flush_bytes=FLUSH_BYTES)
    x = torch.ones(2**28)
    benchmark.pedantic(torch.sum, args=(x,), rounds=9, iterations=1, warmup_rounds=1)
    benchmark.extra_info["bytes"] = x.numel() * 4


PARAMS = [(case, impl) for case in EMBEDDING_BAG_CASES for impl in case.implementation_names()]


@pytest.mark.parametrize("case,impl", PARAMS, ids=[f"{c.name}-{i}" for c, i in PARAMS])
def test_embedding_bag(benchmark, case, impl):
    impls = implementations(case)
    benchmark.group = case.name
    benchmark.extra_info.update(case=case.name, impl=impl, bytes=case.row_bytes, dtype=case.dtype, cpu_isa=mprec.cpu_isa(),
                                mode=case.mode, tables=case.tables, dim=case.dim,
                                huge_pages_asked=case.huge_pages, huge_pages=case.huge_pages and huge_pages_available(),
                                warm=case.warm,
                                interleaved_median_ms=_interleaved[case.name][impl])
    if impl == GATHER_LIMIT:
        benchmark.extra_info["gather_setting"] = impls[impl].setting
    benchmark.pedantic(impls[impl], rounds=case.rounds, iterations=1, warmup_rounds=2)

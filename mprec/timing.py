"""The ways mprec times callables on a shared, noisy machine: the median of several calls (how fast something
is), candidates timed side by side in rounds (which of several is fastest), and models' steps timed in turns
of blocks (how fast each trains or serves, all in the same moments of the machine)."""

from __future__ import annotations

import random
import statistics
import time
from typing import Callable, Hashable, Iterator, Mapping, Sequence, TypeVar

__all__ = ["median_ms", "round_orders", "fastest", "in_blocks", "calls_in_blocks"]

T = TypeVar("T")


def median_ms(fn: Callable[[], object], rounds: int = 15, warmup: int = 2) -> float:
    """The median of ``rounds`` timed calls of ``fn``, in ms, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def round_orders(items: Sequence[T], rounds: int, seed: int = 0) -> Iterator[list[T]]:
    """The order in which each of ``rounds`` rounds calls ``items``: a random one per round, drawn from ``seed`` (so
    a run can be repeated call for call). In an order that only rotates from round to round, each item follows the
    same other in most rounds, and what that other leaves behind (the lines it evicted, the state of the memory
    controller and of the CPU's prefetchers) can bias the item's time: two variants of a kernel timed so, the caches
    flushed before every call, differed by 6-11%, which the benchmark, in separate processes, did not show."""
    rng = random.Random(seed)
    for _ in range(rounds):
        order = list(items)
        rng.shuffle(order)
        yield order


def fastest(candidates: Mapping[Hashable, Callable[[], object]], rounds: int,
            before: Callable[[], object] | None = None) -> Hashable:
    """The key of the fastest candidate. Each is called once untimed (first touches, kernel generation); then,
    ``rounds`` times, every candidate is timed once, back to back, in a random order per round (round_orders). A
    candidate's score is the median over rounds of its time over the round's fastest time: the comparison is
    made within a round, so a slow spell of a shared machine that spans a round moves every candidate alike,
    and one that hits a minority of rounds moves no median. Ties go to the first in ``candidates``' order.
    ``before``, where given, is called untimed before every timed call: to start each from the same state (a
    cache flush, where the candidates will be timed with their data out of the caches)."""
    keys = list(candidates)
    for key in keys:
        candidates[key]()
    relative = {key: [] for key in keys}
    for order in round_orders(keys, rounds):
        times = {}
        for key in order:
            if before is not None:
                before()
            start = time.perf_counter()
            candidates[key]()
            times[key] = time.perf_counter() - start
        floor = max(min(times.values()), 1e-9)
        for key in keys:
            relative[key].append(times[key] / floor)
    return min(keys, key=lambda key: statistics.median(relative[key]))


def in_blocks(steps: Mapping[Hashable, Callable[[int], object]], counts: Mapping[Hashable, int], block: int,
              start: int = 0, before: Callable[[], object] | None = None) -> dict:
    """``{key: [seconds]}``: ``counts[key]`` timed calls of each ``steps[key](i)``, the steps taking turns in
    blocks of ``block`` consecutive calls whose first is not timed.

    A step of a model that holds GBs of tables starts with the caches and the page-walk caches full of the
    previous step's data. Timed one step each in turn, every model would pay for the others' tables, as no
    training or serving job does; the untimed first call of a block pays it instead, and the turns still share
    the moments of the machine. ``i`` counts each key's calls from ``start``, untimed ones included, so every
    key steps through the same sequence (of batches, say) and every process of a group makes the same calls.
    ``before()`` runs before each timed call (a barrier, for instance)."""
    if block < 2:
        raise ValueError(f"in_blocks: block must be at least 2 (one untimed call, then timed ones), got {block}")
    times = {key: [] for key in steps}
    calls = {key: start for key in steps}
    while any(len(times[key]) < counts[key] for key in steps):
        for key, step in steps.items():
            left = counts[key] - len(times[key])
            if left <= 0:
                continue
            step(calls[key])
            calls[key] += 1
            for _ in range(min(block - 1, left)):
                if before is not None:
                    before()
                began = time.perf_counter()
                step(calls[key])
                times[key].append(time.perf_counter() - began)
                calls[key] += 1
    return times


def calls_in_blocks(timed: int, block: int) -> int:
    """The calls :func:`in_blocks` makes of one key for ``timed`` timed ones: each block's untimed first included
    (so a caller knows how many batches, say, its steps read)."""
    return timed + -(-timed // (block - 1))

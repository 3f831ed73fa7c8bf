"""The two ways mprec times a callable on a shared, noisy machine: the median of several calls (how fast
something is), and candidates timed side by side in rounds (which of several is fastest)."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Hashable, Mapping

__all__ = ["median_ms", "fastest"]


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


def fastest(candidates: Mapping[Hashable, Callable[[], object]], rounds: int) -> Hashable:
    """The key of the fastest candidate. Each is called once untimed (first touches, kernel generation); then,
    ``rounds`` times, every candidate is timed once, back to back, the order rotating from round to round. A
    candidate's score is the median over rounds of its time over the round's fastest time: the comparison is
    made within a round, so a slow spell of a shared machine that spans a round moves every candidate alike,
    and one that hits a minority of rounds moves no median. Ties go to the first in ``candidates``' order."""
    keys = list(candidates)
    for key in keys:
        candidates[key]()
    relative = {key: [] for key in keys}
    for round_ in range(rounds):
        times = {}
        for i in range(len(keys)):
            key = keys[(round_ + i) % len(keys)]
            start = time.perf_counter()
            candidates[key]()
            times[key] = time.perf_counter() - start
        floor = max(min(times.values()), 1e-9)
        for key in keys:
            relative[key].append(times[key] / floor)
    return min(keys, key=lambda key: statistics.median(relative[key]))

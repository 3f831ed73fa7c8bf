"""The two ways mprec times a callable on a shared, noisy machine: the median of several calls (how fast
something is), and the fastest call of each candidate timed in turn (which of several is fastest)."""

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
    """The key of the fastest candidate: each is called once untimed (first touches, kernel generation), then
    ``rounds`` times, the candidates in turn so all see the same moments, and each keeps its fastest call, the
    statistic least moved by other work on the machine. Ties go to the first in ``candidates``' order."""
    for fn in candidates.values():
        fn()
    best = {key: float("inf") for key in candidates}
    for _ in range(rounds):
        for key, fn in candidates.items():
            start = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - start)
    return min(candidates, key=best.get)

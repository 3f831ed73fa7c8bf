"""Query streams: Poisson arrivals with heavy-tailed (log-normal) sizes, or a trace file.

A :class:`Query` is ``n`` samples arriving at ``arrival`` seconds (from the stream's start) that should be
answered within ``sla`` seconds. Sizes follow a log-normal with the given median and shape ``sigma``,
rounded and clipped to ``[1, max_size]``, as production recommendation queries do (DeepRecSys, MP-Rec).
A trace is a CSV with a header and the columns ``arrival_s,size`` and optionally ``sla_ms``.
"""

from __future__ import annotations

import csv
import math
from typing import Optional

import numpy as np

from .types import Query

__all__ = ["poisson_stream", "read_trace", "write_trace"]


def poisson_stream(rate: float, count: int, sla: float, median_size: float = 128.0, sigma: float = 1.0,
                   max_size: int = 16384, seed: int = 0) -> list:
    """``count`` queries, Poisson arrivals at ``rate`` per second, log-normal sizes."""
    if not rate > 0 or count < 0 or not sla > 0 or not median_size >= 1 or sigma < 0 or max_size < 1:
        raise ValueError(f"poisson_stream: need rate > 0, count >= 0, sla > 0, median_size >= 1, sigma >= 0 and "
                         f"max_size >= 1, got rate={rate}, count={count}, sla={sla}, median_size={median_size}, "
                         f"sigma={sigma}, max_size={max_size}")
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, count))
    sizes = np.clip(np.rint(rng.lognormal(math.log(median_size), sigma, count)), 1, max_size).astype(np.int64)
    return [Query(i, float(a), int(s), float(sla)) for i, (a, s) in enumerate(zip(arrivals, sizes))]


def read_trace(path: str, sla: Optional[float] = None) -> list:
    """Queries from a CSV trace; ``sla`` (seconds) applies where the trace has no ``sla_ms`` column."""
    queries = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"arrival_s", "size"} <= set(reader.fieldnames):
            raise ValueError(f"read_trace: {path} needs a header with arrival_s and size, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                arrival, size = float(row["arrival_s"]), int(row["size"])
                q_sla = float(row["sla_ms"]) / 1e3 if row.get("sla_ms") not in (None, "") else sla
            except ValueError as error:
                raise ValueError(f"read_trace: {path}:{line}: {error}") from None
            if q_sla is None or not q_sla > 0 or size < 1 or not arrival >= 0:
                raise ValueError(f"read_trace: {path}:{line}: need arrival_s >= 0, size >= 1 and an SLA > 0 "
                                 f"(sla_ms or the sla argument), got {row}")
            queries.append((arrival, size, q_sla))
    queries.sort(key=lambda q: q[0])
    return [Query(i, a, s, t) for i, (a, s, t) in enumerate(queries)]


def write_trace(path: str, queries: list) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arrival_s", "size", "sla_ms"])
        for q in queries:
            w.writerow([f"{q.arrival:.9f}", q.size, f"{q.sla * 1e3:.6f}"])

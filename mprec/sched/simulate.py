"""Discrete-event simulation of serving a query stream from path profiles.

Each device serves one query at a time, first come first served, with a bounded queue of ``capacity``
queries (the one in service included). The policy decides at each arrival; the device then starts the
query when it is free and finishes it after the path's latency for that size, plus the path's idle cost
when the device had been idle (for as long as it had; since the start of the run for its first query).
A query whose device has no room is rejected (counted, never served). The events are ordered by time:
arrivals in order, and each device's completions, which are retired before the next arrival looks at the
queues. A split query (:class:`~mprec.sched.policy.Decision` with parts) enters each part's device queue
and is done when its last part is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional

from .policy import PathInfo, Policy
from .stream import Query

__all__ = ["Outcome", "Simulator", "simulate"]


@dataclass(frozen=True)
class Outcome:
    """What happened to a query: ``path`` None means rejected. A split query has ``parts`` (``(path,
    samples)`` in row order), ``path`` their label, ``start`` its first part's start and ``finish`` its last
    part's finish."""

    query: Query
    path: Optional[str]
    start: float = float("nan")
    finish: float = float("nan")
    parts: tuple = ()

    def pieces(self) -> tuple:
        """``((path, samples), ...)`` of a served query."""
        return self.parts or ((self.path, self.query.size),)

    @property
    def rejected(self) -> bool:
        return self.path is None

    @property
    def latency(self) -> float:
        return self.finish - self.query.arrival

    @property
    def met_sla(self) -> bool:
        # A microsecond of slack: a completion predicted exactly at the deadline is on time.
        return self.path is not None and self.finish <= self.query.arrival + self.query.sla + 1e-6


class _Device:
    __slots__ = ("free", "finishes")

    def __init__(self) -> None:
        self.free = float("-inf")  # when the last query queued finishes
        self.finishes: deque = deque()


class Simulator:
    """The system a policy sees in simulation (a :class:`~mprec.sched.policy.SystemView`)."""

    def __init__(self, paths: Iterable[PathInfo], capacity: int = 64) -> None:
        self.paths = {p.name: p for p in paths}
        if not self.paths:
            raise ValueError("Simulator: no paths")
        if capacity < 1:
            raise ValueError(f"Simulator: capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.devices = {p.device: _Device() for p in self.paths.values()}

    def ready_at(self, path: PathInfo, now: float) -> float:
        d = self.devices[path.device]
        return d.free if d.free >= now else now + path.latency.idle(now - d.free)

    def has_room(self, device: str) -> bool:
        return len(self.devices[device].finishes) < self.capacity

    def run(self, queries: Iterable[Query], policy: Policy) -> list:
        for d in self.devices.values():
            d.free, d.finishes = float("-inf"), deque()
        outcomes = []
        last = float("-inf")
        for q in queries:
            if q.arrival < last:
                raise ValueError(f"Simulator.run: queries must come in arrival order (query {q.id} at {q.arrival} "
                                 f"after {last})")
            last = now = q.arrival
            for d in self.devices.values():  # retire the completions up to now
                while d.finishes and d.finishes[0] <= now:
                    d.finishes.popleft()
            decision = policy.choose(q, now, self)
            if decision is None:
                outcomes.append(Outcome(q, None))
                continue
            starts, finishes = [], []
            for name, n in decision.pieces(q.size):
                info = self.paths[name]
                d = self.devices[info.device]
                if len(d.finishes) >= self.capacity:
                    raise RuntimeError(f"Simulator.run: policy {policy.name} chose {info.name} on a full device")
                starts.append(max(now, d.free))
                d.free = self.ready_at(info, now) + info.latency(n)
                d.finishes.append(d.free)
                finishes.append(d.free)
            outcomes.append(Outcome(q, decision.path, min(starts), max(finishes), decision.parts))
        return outcomes


def simulate(queries: list, paths: Iterable[PathInfo], policy: Policy, capacity: int = 64) -> list:
    return Simulator(paths, capacity).run(queries, policy)

"""Discrete-event simulation of serving a query stream from path profiles.

Each device serves one query at a time, first come first served, with a bounded queue of ``capacity``
queries (the one in service included). The policy decides at each arrival; the device then starts the
query when it is free and finishes it after the path's latency for that size, plus the path's idle cost
when the device had been idle (for as long as it had; since the start of the run for its first query).
A query whose device has no room is rejected (counted, never served). The events are ordered by time:
arrivals in order, and each device's completions, which are retired before the next arrival looks at the
queues. A split query (:class:`~mprec.sched.types.Decision` with parts) enters each part's device queue
and is done when its last part is.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from .policy import Policy
from .types import DeviceTimeline, Outcome, PathInfo, Query

__all__ = ["Simulator", "simulate"]


class _Device(DeviceTimeline):
    """A device's timeline and the predicted durations of its waiting queries, in order."""

    __slots__ = ("durations",)

    def __init__(self) -> None:
        super().__init__()
        self.durations: deque = deque()

    def advance(self, now: float) -> None:
        """Retires the queries predicted to finish by ``now``, each starting the next where it finishes."""
        while self.in_service and self.busy_until <= now:
            self.finish(self.busy_until)
            if self.durations:
                self.start(self.busy_until, self.durations.popleft())


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
        return self.devices[path.device].ready_at(path, now)

    def has_room(self, device: str) -> bool:
        return self.devices[device].load < self.capacity

    def run(self, queries: Iterable[Query], policy: Policy) -> list:
        self.devices = {name: _Device() for name in self.devices}
        outcomes = []
        last = float("-inf")
        for q in queries:
            if q.arrival < last:
                raise ValueError(f"Simulator.run: queries must come in arrival order (query {q.id} at {q.arrival} "
                                 f"after {last})")
            last = now = q.arrival
            for d in self.devices.values():
                d.advance(now)
            decision = policy.choose(q, now, self)
            if decision is None:
                outcomes.append(Outcome(q, None))
                continue
            starts, finishes = [], []
            for name, n in decision.pieces(q.size):
                info = self.paths[name]
                d = self.devices[info.device]
                if d.load >= self.capacity:
                    raise RuntimeError(f"Simulator.run: policy {policy.name} chose {info.name} on a full device")
                idle = d.idle_cost(info, now)
                begins = d.ready_at(info, now) - idle  # when the device turns to this query
                predicted = info.latency(n) + idle
                finishes.append(begins + predicted)
                starts.append(begins)
                d.enqueue(predicted)
                if d.in_service:
                    d.durations.append(predicted)
                else:
                    d.start(now, predicted)
            outcomes.append(Outcome(q, decision.path, min(starts), max(finishes), decision.parts))
        return outcomes


def simulate(queries: list, paths: Iterable[PathInfo], policy: Policy, capacity: int = 64) -> list:
    return Simulator(paths, capacity).run(queries, policy)

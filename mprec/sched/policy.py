"""Scheduling policies: which path serves a query.

A policy sees the system through :class:`SystemView`: each path's device, accuracy and latency model, and
each device's predicted free time and room in its bounded queue. ``choose`` returns a :class:`Decision`
(path and predicted completion) or None to reject the query (no room on any device it would use).

- :class:`StaticPolicy` always uses one path (the baselines).
- :class:`MPRecPolicy` (Hsia et al., ASPLOS 2023): among the paths whose predicted completion (the
  device's queue, then the path's latency for ``n`` samples) is within ``arrival + sla``, the highest
  accuracy, ties to the earliest completion; if none meets the SLA, the earliest completion (a
  violation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from .profile import LatencyModel
from .stream import Query

__all__ = ["PathInfo", "Decision", "SystemView", "Policy", "StaticPolicy", "MPRecPolicy"]


@dataclass(frozen=True)
class PathInfo:
    name: str
    device: str
    accuracy: float
    latency: LatencyModel


@dataclass(frozen=True)
class Decision:
    path: str
    predicted_finish: float


class SystemView(Protocol):
    paths: dict  # name -> PathInfo

    def free_at(self, device: str, now: float) -> float: ...

    def has_room(self, device: str) -> bool: ...


class Policy:
    name = "policy"

    def choose(self, query: Query, now: float, system: SystemView) -> Optional[Decision]:
        raise NotImplementedError


class StaticPolicy(Policy):
    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"static {path}"

    def choose(self, query: Query, now: float, system: SystemView) -> Optional[Decision]:
        if self.path not in system.paths:
            raise ValueError(f"StaticPolicy: no path {self.path!r}; paths: {sorted(system.paths)}")
        info = system.paths[self.path]
        if not system.has_room(info.device):
            return None
        return Decision(info.name, system.free_at(info.device, now) + info.latency(query.size))


class MPRecPolicy(Policy):
    name = "mp-rec"

    def choose(self, query: Query, now: float, system: SystemView) -> Optional[Decision]:
        deadline = query.arrival + query.sla
        best, best_key, earliest = None, None, None
        for info in system.paths.values():
            if not system.has_room(info.device):
                continue
            finish = system.free_at(info.device, now) + info.latency(query.size)
            if earliest is None or finish < earliest.predicted_finish:
                earliest = Decision(info.name, finish)
            if finish <= deadline:
                key = (info.accuracy, -finish)
                if best_key is None or key > best_key:
                    best, best_key = Decision(info.name, finish), key
        return best if best is not None else earliest

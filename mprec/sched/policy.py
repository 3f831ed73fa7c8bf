"""Scheduling policies: which path serves a query.

A policy sees the system through :class:`SystemView`: each path's device, accuracy and latency model, when
each path could start computing a query (its device's queue, or its idle cost on an idle device), and
each device's room in its bounded queue. ``choose`` returns a :class:`Decision`
(path and predicted completion) or None to reject the query (no room on any device it would use).

- :class:`StaticPolicy` always uses one path (the baselines).
- :class:`MPRecPolicy` (Hsia et al., ASPLOS 2023): among the paths whose predicted completion (the
  device's queue, then the path's latency for ``n`` samples) is within ``arrival + sla``, the highest
  accuracy, ties to the earliest completion; if none meets the SLA, the earliest completion (a
  violation).

Splitting (``MPRecPolicy(split=True)``, the default): a query that no single path can serve within its
SLA may be served in two parts by two paths on different devices, its first rows by one and the rest by
the other, answered when both are done. Among the pairs of paths that meet the SLA so, the most accurate
(the parts' sample-weighted accuracy; ties: the earliest completion); the pair's rows go first where
both parts finish earliest (the devices' queues and speeds decide), then as many to the more accurate
path as it can serve in time. A query that misses the SLA either way goes to the single path that
finishes first. Splits are not used to raise the accuracy of a query one path can already serve in
time: in simulations of two-device systems that cost correct-prediction throughput under load (24%
at 1.3x the no-split policy's knee), since such a split spends the SLA's slack and a second device on
one query, and each part pays its path's fixed cost, while rescuing late queries gained 0.3 to 6%.
"""

from __future__ import annotations

from typing import Optional, Protocol

from .types import Decision, PathInfo, Query, split_label

__all__ = ["SystemView", "Policy", "StaticPolicy", "MPRecPolicy"]


def _accuracy(parts, paths: dict) -> float:
    return sum(n * paths[name].accuracy for name, n in parts) / sum(n for _, n in parts)


def _balanced_split(a: PathInfo, ready_a: float, b: PathInfo, ready_b: float, n: int) -> tuple:
    """``(rows for a, finish)``: the split of ``n >= 2`` samples between ``a`` and ``b`` (each at least one)
    that finishes first. ``a``'s finish grows with its rows and ``b``'s shrinks, so the best split is where
    they cross: the first ``k`` at which ``a`` finishes no earlier than ``b``, or the one before it."""
    def finish(k: int) -> float:
        return max(ready_a + a.latency(k), ready_b + b.latency(n - k))

    lo, hi = 1, n - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if ready_a + a.latency(mid) >= ready_b + b.latency(n - mid):
            hi = mid
        else:
            lo = mid + 1
    k = min((c for c in (lo - 1, lo) if 1 <= c <= n - 1), key=finish)
    return k, finish(k)


def _most_rows_by(a: PathInfo, ready_a: float, deadline: float, lo: int, hi: int) -> int:
    """The most rows in ``[lo, hi]`` that ``a`` finishes by ``deadline`` (``lo`` is known to make it; the
    latency never falls as the rows grow)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ready_a + a.latency(mid) <= deadline:
            lo = mid
        else:
            hi = mid - 1
    return lo


class SystemView(Protocol):
    paths: dict  # name -> PathInfo

    def ready_at(self, path: PathInfo, now: float) -> float:
        """When ``path`` would start computing a query submitted at ``now``: its device's queued work done,
        or ``now`` plus the path's idle cost if the device is idle."""
        ...

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
        return Decision(info.name, system.ready_at(info, now) + info.latency(query.size))


class MPRecPolicy(Policy):
    def __init__(self, split: bool = True) -> None:
        self.split = split
        self.name = "mp-rec" if split else "mp-rec (no split)"

    def choose(self, query: Query, now: float, system: SystemView) -> Optional[Decision]:
        deadline = query.arrival + query.sla
        best, best_key, earliest = None, None, None
        open_paths, ready = [], {}
        for info in system.paths.values():
            if not system.has_room(info.device):
                continue
            open_paths.append(info)
            ready[info.name] = system.ready_at(info, now)
            finish = ready[info.name] + info.latency(query.size)
            if earliest is None or finish < earliest.predicted_finish:
                earliest = Decision(info.name, finish)
            if finish <= deadline:
                key = (info.accuracy, -finish)
                if best_key is None or key > best_key:
                    best, best_key = Decision(info.name, finish), key
        if best is None and self.split and query.size > 1 and len({p.device for p in open_paths}) > 1:
            best = self._best_split(query, deadline, open_paths, ready, system.paths)
        return best if best is not None else earliest

    @staticmethod
    def _best_split(query: Query, deadline: float, open_paths: list, ready: dict, paths: dict) -> Optional[Decision]:
        """The most accurate split over two devices that meets the deadline (ties: the earliest), or None;
        ``ready``: each open path's :meth:`SystemView.ready_at`."""
        n = query.size
        # The most rows each path serves by the deadline: a pair can meet it iff theirs add up to n.
        most = {p.name: _most_rows_by(p, ready[p.name], deadline, 1, n) if ready[p.name] + p.latency(1) <= deadline
                else 0 for p in open_paths}
        best, best_key = None, None
        for i, first in enumerate(open_paths):
            if not most[first.name]:
                continue
            for second in open_paths[i + 1:]:
                if first.device == second.device or not most[second.name] or most[first.name] + most[second.name] < n:
                    continue
                a, b = (first, second) if first.accuracy >= second.accuracy else (second, first)
                if a.accuracy > b.accuracy:  # as many rows on the more accurate path as it serves in time
                    k = min(most[a.name], n - 1)
                    finish = max(ready[a.name] + a.latency(k), ready[b.name] + b.latency(n - k))
                else:  # equally accurate: where both parts finish earliest
                    k, finish = _balanced_split(a, ready[a.name], b, ready[b.name], n)
                parts = ((a.name, k), (b.name, n - k))
                key = (_accuracy(parts, paths), -finish)
                if best_key is None or key > best_key:
                    best, best_key = Decision(split_label(parts), finish, parts), key
        return best

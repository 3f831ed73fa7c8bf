"""The scheduler's shared types: a query and its data, a path as the policies see it, a policy's decision, what happened to a
query (simulated or served), and one device's timeline, which the simulator and the server keep alike.

Every other module of :mod:`mprec.sched` imports these from here: the simulator and the server produce the same
:class:`Outcome` s, judged by the same :meth:`Outcome.met_sla`, from the same device bookkeeping
(:class:`DeviceTimeline`), so a real run and its simulation differ only in the latencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from torch import Tensor

    from .profile import LatencyModel

__all__ = ["Query", "Request", "PathInfo", "Decision", "Outcome", "Answer", "DeviceTimeline", "split_label"]


@dataclass(frozen=True)
class Query:
    """``size`` samples arriving at ``arrival`` seconds (from the stream's start, or on the server's clock)
    that should be answered within ``sla`` seconds."""

    id: int
    arrival: float  # seconds
    size: int
    sla: float      # seconds


@dataclass(frozen=True)
class Request:
    """A query's data: ``dense [n, D]`` and the sparse features' ids in FBGEMM's TBE layout (``indices`` feature by
    feature, ``offsets`` of ``T * n + 1`` entries), as the data has them (raw Criteo ids): each path maps them
    into its own model's id space (:class:`mprec.data.IdMap`)."""

    dense: "Tensor"
    indices: "Tensor"
    offsets: "Tensor"

    def __post_init__(self) -> None:
        n = self.dense.shape[0] if self.dense.dim() == 2 else -1
        if n < 1 or self.indices.dim() != 1 or self.offsets.dim() != 1 or (self.offsets.numel() - 1) % n:
            raise ValueError(f"Request: needs dense [n >= 1, D], 1-D indices and offsets of T * n + 1 entries (TBE "
                             f"layout), got dense {list(self.dense.shape)}, indices {list(self.indices.shape)}, "
                             f"offsets {list(self.offsets.shape)}")

    @property
    def size(self) -> int:
        return self.dense.shape[0]

    @property
    def num_features(self) -> int:
        return (self.offsets.numel() - 1) // self.size

    def rows(self, start: int, n: int) -> "Request":
        """Rows ``[start, start + n)``: a split query's part."""
        if start == 0 and n == self.size:
            return self
        import torch

        offsets, batch = self.offsets, self.size
        indices, parts, base = [], [], 0
        for t in range(self.num_features):
            first, last = t * batch + start, t * batch + start + n
            lo, hi = int(offsets[first]), int(offsets[last])
            indices.append(self.indices[lo:hi])
            parts.append(offsets[first:last] - lo + base)
            base += hi - lo
        parts.append(offsets.new_tensor([base]))
        return Request(self.dense[start:start + n], torch.cat(indices), torch.cat(parts))


@dataclass(frozen=True)
class PathInfo:
    """A path as the policies see it: its device, accuracy and latency model."""

    name: str
    device: str
    accuracy: float
    latency: "LatencyModel"


@dataclass(frozen=True)
class Decision:
    """``path`` serves the query; for a split, ``parts`` holds ``(path, samples)`` in row order and ``path``
    their names joined by ``" + "``."""

    path: str
    predicted_finish: float
    parts: tuple = ()

    def pieces(self, size: int) -> tuple:
        """``((path, samples), ...)``: the parts, or the one path with all ``size`` samples."""
        return self.parts or ((self.path, size),)


def split_label(parts) -> str:
    return " + ".join(name for name, _ in parts)


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


@dataclass
class Answer:
    """The server's answer to a query: its status, the path (a split's label) and the predictions."""

    query: Query
    status: str                   # "ok" | "rejected" | "cancelled" | "error"
    path: Optional[str] = None
    predictions: Optional["Tensor"] = None
    submitted: float = float("nan")
    start: float = float("nan")
    finish: float = float("nan")
    error: Optional[BaseException] = None
    parts: tuple = ()             # a split query's ((path, samples), ...)

    def outcome(self) -> Outcome:
        return Outcome(self.query, self.path, self.start, self.finish, self.parts) if self.status == "ok" \
            else Outcome(self.query, None)


class DeviceTimeline:
    """One device's work as the policies see it: first come first served, one query at a time, the queries
    waiting behind it predicted to take ``pending`` seconds in all.

    ``busy_until`` is the running query's predicted finish while one runs, and when the last one finished while
    the device is idle. A query that starts on an idle device pays its path's idle cost for how long the device
    had idled (:meth:`idle_cost`; none while the device has work). The simulator moves the timeline at the
    predicted times; the server at the real ones (a query starts when its worker takes it and finishes when it
    is done), so its predictions restart from what really happened at every start and finish."""

    __slots__ = ("waiting", "in_service", "busy_until", "pending")

    def __init__(self) -> None:
        self.waiting = 0
        self.in_service = False
        self.busy_until = float("-inf")
        self.pending = 0.0

    @property
    def load(self) -> int:
        """Queries on the device: waiting, and the one in service."""
        return self.waiting + self.in_service

    def idle_cost(self, path: PathInfo, now: float) -> float:
        """``path``'s idle cost for a query that arrives at ``now``: none while the device has work."""
        return 0.0 if self.load else path.latency.idle(now - self.busy_until)

    def ready_at(self, path: PathInfo, now: float) -> float:
        """When a query for ``path`` arriving at ``now`` would start computing."""
        return (max(now, self.busy_until) if self.in_service else now) + self.pending + self.idle_cost(path, now)

    def enqueue(self, predicted: float) -> None:
        """A query predicted to take ``predicted`` seconds (its idle cost included) joins the queue."""
        self.waiting += 1
        self.pending += predicted

    def start(self, now: float, predicted: float) -> None:
        """The next waiting query starts at ``now``."""
        self.waiting -= 1
        self.pending = max(0.0, self.pending - predicted) if self.waiting else 0.0
        self.in_service, self.busy_until = True, now + predicted

    def drop_waiting(self) -> None:
        """The waiting queries leave without being served (a shutdown that does not drain)."""
        self.waiting, self.pending = 0, 0.0

    def finish(self, now: float) -> None:
        """The query in service finished at ``now``."""
        self.in_service, self.busy_until = False, now

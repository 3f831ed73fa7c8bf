"""A real threaded server: the policy picks a path per query and a worker per device runs it on the real
model and data, timing real latencies.

- ``submit(dense, indices, offsets, sla_ms)`` takes a request with its data (raw ids in the TBE layout) and
  decides at once (under one lock with the devices' state): a query the policy rejects, or that finds its
  device's bounded queue full, is answered ``rejected`` immediately; any other goes to its device's FIFO
  queue, and the path runs the rows it is given. Every submitted query gets exactly one :class:`Answer`,
  through its future, with its predictions.
- The policy sees when each path could start a query: on a busy device, the running query's predicted
  finish (or now, once it is late) plus the predicted latencies of the queued ones; on an idle device,
  now plus the path's idle cost for how long the device has idled (the same latency models as the
  simulator).
- A split query (:class:`~mprec.sched.types.Decision` with parts) goes to each part's device queue, its
  rows divided in order; it is answered once, when its last part is done, with the parts' predictions
  concatenated (``error`` if a part failed, ``cancelled`` if a part was cancelled).
- ``close`` stops accepting, lets the workers finish what is queued (or, with ``drain=False``, answers the
  queued queries ``cancelled``), and joins them. The server is a context manager.
- ``inline_device``: that device's queue is served by the thread that calls :meth:`Server.work` (what
  :func:`replay` does, from the calling thread) instead of a thread of its own. For the CPU this is the
  main thread: torch's OpenMP runtime (libgomp) keeps the main thread's team spinning between parallel
  regions, while a team led by any other thread is woken through the kernel each time, which doubles
  the latency of a small DLRM query (0.46 ms -> 1.0 ms for 64 samples on 2 cores).

:func:`replay` plays a stream against a server in real time (each query submitted at its arrival, with
rows of a :class:`~mprec.sched.paths.RowPool` as its data: the evaluation rows are the load generator's) and
returns :class:`~mprec.sched.types.Outcome` s, comparable with the simulator's.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from .policy import Policy
from .types import Answer, DeviceTimeline, PathInfo, Query, Request

__all__ = ["Answer", "Server", "replay"]


class _Join:
    """A query's parts (one for a single path) until the last reports; then its one answer."""

    def __init__(self, query: Query, path: str, parts: tuple, future: Future, submitted: float) -> None:
        self.answer = Answer(query, "ok", path, submitted=submitted, parts=parts)
        self.future = future
        self.results: list = [None] * max(1, len(parts))
        self.left = len(self.results)

    def report(self, part: int, status: str, predictions=None, start=math.nan, finish=math.nan,
               error=None) -> Optional[Answer]:
        """Records part ``part``'s outcome (with the server's lock held); the answer once every part has
        reported, else None. The gravest outcome decides the status: error, then cancelled, then ok."""
        a = self.answer
        self.results[part] = predictions
        if not math.isnan(start):
            a.start = start if math.isnan(a.start) else min(a.start, start)
        if not math.isnan(finish):
            a.finish = finish if math.isnan(a.finish) else max(a.finish, finish)
        if _GRAVITY[status] > _GRAVITY[a.status]:
            a.status = status
        if status == "error" and a.error is None:
            a.error = error
        self.left -= 1
        if self.left:
            return None
        if a.status == "ok":
            a.predictions = self.results[0] if len(self.results) == 1 else torch.cat(self.results)
        return a


_GRAVITY = {"ok": 0, "cancelled": 1, "error": 2}


@dataclass
class _Item:
    join: _Join
    part: int
    path: str
    request: Request  # the part's rows
    predicted: float


class _Device(DeviceTimeline):
    """A device's timeline (moved at the real start and finish of each query), its queue and its worker."""

    __slots__ = ("queue", "ready", "thread")

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__()
        self.queue: deque = deque()
        self.ready = threading.Condition(lock)
        self.thread: Optional[threading.Thread] = None


class Server:
    """Serves queries on ``paths`` (:class:`~mprec.sched.paths.Path` s) chosen by ``policy`` with the
    ``latency`` models (path name -> :class:`~mprec.sched.profile.LatencyModel`)."""

    def __init__(self, paths: list, latency: dict, policy: Policy, capacity: int = 64, clock=time.perf_counter,
                 inline_device: Optional[str] = None) -> None:
        if not paths:
            raise ValueError("Server: no paths")
        if capacity < 1:
            raise ValueError(f"Server: capacity must be >= 1, got {capacity}")
        missing = [p.name for p in paths if p.name not in latency]
        if missing:
            raise ValueError(f"Server: no latency model for paths {missing}")
        self.runners = {p.name: p for p in paths}
        self.paths = {p.name: PathInfo(p.name, p.device, p.accuracy, latency[p.name]) for p in paths}
        self.policy, self.capacity, self._clock = policy, capacity, clock
        self._epoch = clock()
        self._lock = threading.Lock()
        self._closing = False
        self._next_id = 0
        self.counts = dict(submitted=0, ok=0, rejected=0, cancelled=0, error=0)
        self.devices = {info.device: _Device(self._lock) for info in self.paths.values()}
        if inline_device is not None and inline_device not in self.devices:
            raise ValueError(f"Server: inline_device {inline_device!r} is not a device of the paths "
                             f"({sorted(self.devices)})")
        self.inline_device = inline_device
        for name, d in self.devices.items():
            if name != inline_device:
                d.thread = threading.Thread(target=self.work, args=(name,), name=f"mprec-serve-{name}", daemon=True)
                d.thread.start()

    # --- the policy's view (called with the lock held) -------------------------------------------------------
    def now(self) -> float:
        return self._clock() - self._epoch

    def ready_at(self, path: PathInfo, now: float) -> float:
        return self.devices[path.device].ready_at(path, now)

    def has_room(self, device: str) -> bool:
        return self.devices[device].load < self.capacity

    # --- serving ---------------------------------------------------------------------------------------------
    def submit(self, dense: Tensor, indices: Tensor, offsets: Tensor, sla_ms: float) -> Future:
        """Serves a request: ``dense [n, D]`` and the sparse ids in the TBE layout (raw ids, as the data has them;
        each path maps them into its model's id space), to be answered within ``sla_ms``. Returns a future of
        the :class:`~mprec.sched.types.Answer`: status ``ok`` with ``predictions [n]`` (click probabilities), or
        ``rejected`` at once (no path can take it), ``cancelled`` (closed without draining) or ``error``."""
        if not sla_ms > 0:
            raise ValueError(f"Server.submit: sla_ms must be > 0, got {sla_ms}")
        request = Request(dense, indices, offsets)
        with self._lock:
            query_id, self._next_id = self._next_id, self._next_id + 1
        return self.submit_query(Query(query_id, self.now(), request.size, sla_ms / 1e3), request)

    def submit_query(self, query: Query, request: Request) -> Future:
        """Queues ``query`` with its data (``request``, ``query.size`` rows) or rejects it: what :meth:`submit`
        does, for a caller that keeps its own query ids and arrival times (a replayed stream)."""
        if request.size != query.size:
            raise ValueError(f"Server.submit_query: query {query.id} has {query.size} samples but its request "
                             f"{request.size} rows")
        future: Future = Future()
        with self._lock:
            if self._closing:
                raise RuntimeError("Server.submit: the server is closed")
            now = self.now()
            self.counts["submitted"] += 1
            decision = self.policy.choose(query, now, self)
            pieces = () if decision is None else decision.pieces(query.size)
            if not pieces or not all(self.has_room(self.paths[name].device) for name, _ in pieces):
                self.counts["rejected"] += 1
                future.set_result(Answer(query, "rejected", submitted=now))
                return future
            join = _Join(query, decision.path, decision.parts, future, now)
            row = 0
            for part, (name, n) in enumerate(pieces):
                info = self.paths[name]
                d = self.devices[info.device]
                predicted = info.latency(n) + d.idle_cost(info, now)
                d.queue.append(_Item(join, part, name, request.rows(row, n), predicted))
                d.enqueue(predicted)
                d.ready.notify()
                row += n
        return future

    def _report(self, item: _Item, status: str, **outcome) -> Optional[tuple]:
        """Records a part's outcome (lock held). When it was the query's last part: counts the answer and
        returns ``(future, answer)`` for the caller to resolve once the lock is released."""
        answer = item.join.report(item.part, status, **outcome)
        if answer is None:
            return None
        self.counts[answer.status] += 1
        return item.join.future, answer

    def work(self, name: str) -> None:
        """Serves device ``name``'s queue until the server is closed and the queue is empty (the inline
        device's loop; the other devices run it in their own threads)."""
        d = self.devices[name]
        while True:
            with self._lock:
                while not d.queue and not self._closing:
                    d.ready.wait()
                if not d.queue:
                    return
                item = d.queue.popleft()
                start = self.now()
                d.start(start, item.predicted)
            status, predictions, error = "ok", None, None
            try:
                predictions = self.runners[item.path].run(item.request)
            except Exception as failure:  # answered, counted, and the worker goes on
                status, error = "error", failure
            finish = self.now()
            with self._lock:
                d.finish(finish)
                done = self._report(item, status, predictions=predictions, start=start, finish=finish, error=error)
            if done is not None:
                done[0].set_result(done[1])

    def close(self, drain: bool = True, timeout: Optional[float] = None) -> None:
        with self._lock:
            self._closing = True
            answered = []
            if not drain:
                for d in self.devices.values():
                    answered += [self._report(item, "cancelled") for item in d.queue]
                    d.queue.clear()
                    d.drop_waiting()
            for d in self.devices.values():
                d.ready.notify_all()
        for future, answer in filter(None, answered):
            future.set_result(answer)
        for d in self.devices.values():
            if d.thread is not None and d.thread is not threading.current_thread():
                d.thread.join(timeout)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def replay(server: Server, queries: list, pool, sleep=time.sleep) -> tuple:
    """Submits each query at its arrival (seconds after the replay starts) with its data, consecutive rows of
    ``pool`` (a :class:`~mprec.sched.paths.RowPool`; the next query's after them), waits for every answer,
    closes the server and returns ``(outcomes, answers)``. Arrival times in the outcomes are on the server's
    clock. With an inline device, the queries are submitted from a helper thread while this thread serves
    that device."""
    # Every query's data is built before the clock starts, as clients would have theirs: building it while the
    # stream plays would take the CPU from the serving it measures.
    requests = pool.requests([q.size for q in queries])
    t0 = server.now()
    futures: list = []
    failure: list = []

    def submit_all() -> None:
        try:
            for q, request in zip(queries, requests):
                wait = t0 + q.arrival - server.now()
                if wait > 0:
                    sleep(wait)
                futures.append(server.submit_query(replace(q, arrival=t0 + q.arrival), request))
            for f in futures:
                f.result()
        except BaseException as error:  # re-raised by the caller
            failure.append(error)
        finally:
            server.close()

    if server.inline_device is None:
        submit_all()
    else:
        feeder = threading.Thread(target=submit_all, name="mprec-replay", daemon=True)
        feeder.start()
        server.work(server.inline_device)
        feeder.join()
    if failure:
        raise failure[0]
    answers = [f.result() for f in futures]
    return [a.outcome() for a in answers], answers

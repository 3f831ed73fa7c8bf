"""Soak: a :class:`~mprec.sched.server.Server` held above its capacity for a while, then shut down under load.

:func:`capacity` measures the most queries a second the server answers (its knee: offered more, it can only
reject), keeping its queues from running empty for a few seconds. :func:`soak` offers a multiple of that as a Poisson stream for
``seconds``, samples the process's resident memory, then closes the server (``drain=False``) while queries
still arrive, and reports what a serving system must guarantee:

- every query submitted gets exactly one answer (none lost, none twice), and the server's counters agree;
- overload is answered with explicit rejections, the shutdown with ``cancelled`` answers and refused
  submissions, never with silence;
- resident memory stays flat after the warm-up;
- every thread the server started has ended.

The bookkeeping holds counters and one byte per query id, allocated before the clock starts, so that what it
measures is the server's memory, not the soak's. ``bench/bench_soak.py`` runs it at length; the suite runs it
briefly.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .server import Server
from .types import Query

__all__ = ["SoakReport", "capacity", "soak", "resident_mb"]


def resident_mb() -> float:
    """This process's resident memory (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class SoakReport:
    offered_qps: float
    seconds: float
    submitted: int = 0
    refused_after_close: int = 0       # submissions the closed server refused (RuntimeError), as it must
    answers: dict = field(default_factory=dict)   # status -> count
    lost: int = 0                      # submitted, never answered
    duplicated: int = 0                # answered more than once
    counts_agree: bool = False         # the server's own counters equal the answers
    thread_errors: list = field(default_factory=list)
    threads_left: list = field(default_factory=list)
    rss_mb: list = field(default_factory=list)    # (seconds, MB) samples
    warmup_s: float = 0.0
    rss_growth: float = math.nan       # (max after warm-up - at warm-up end) / at warm-up end
    close_s: float = math.nan          # how long close() took under load

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.duplicated == 0 and self.counts_agree and not self.thread_errors
                and not self.threads_left and self.answers.get("rejected", 0) > 0 and self.rss_growth < 0.05)

    def to_dict(self) -> dict:
        return dict(asdict(self), ok=self.ok)


def _requests(pool, rng: np.random.Generator, median: float, sigma: float, max_size: int, count: int = 1024) -> list:
    """``count`` requests of log-normal sizes from ``pool``'s rows, built before any clock starts and then cycled:
    building them as queries arrive would take the CPU from the server being measured."""
    return pool.requests(np.clip(np.rint(rng.lognormal(math.log(median), sigma, count)), 1, max_size))


def capacity(make_server: Callable[[], Server], pool, seconds: float = 3.0, median_size: float = 64.0,
             sigma: float = 0.5, max_size: int = 256, sla: float = 1.0, outstanding: int = 8, warmup: float = 1.0,
             seed: int = 0) -> float:
    """Answers a second with the queues never empty: ``outstanding`` queries (rows of ``pool``, a
    :class:`~mprec.sched.paths.RowPool`) are kept in the server (a new one as each is answered) for ``warmup``
    seconds, not counted (the first queries of each size build their GEMM kernels), then for ``seconds``, whose
    ``ok`` answers are counted."""
    rng = np.random.default_rng(seed)
    requests = _requests(pool, rng, median_size, sigma, max_size)
    server = make_server()
    slots = threading.Semaphore(outstanding)
    done = 0
    lock = threading.Lock()

    def count(future) -> None:
        nonlocal done
        if future.result().status == "ok" and time.perf_counter() >= start:
            with lock:
                done += 1
        slots.release()

    start = time.perf_counter() + warmup
    i = 0
    while time.perf_counter() - start < seconds:
        if not slots.acquire(timeout=0.1):
            continue
        request = requests[i % len(requests)]
        server.submit_query(Query(i, 0.0, request.size, sla), request).add_done_callback(count)
        i += 1
    elapsed = time.perf_counter() - start
    server.close(drain=False)
    return done / elapsed


def soak(make_server: Callable[[], Server], pool, rate: float, seconds: float, median_size: float = 64.0,
         sigma: float = 0.5, max_size: int = 256, sla: float = 0.05, warmup: float = 0.25, sample_every: float = 0.5,
         close_timeout: float = 30.0, seed: int = 0) -> SoakReport:
    """Offers ``rate`` queries a second (rows of ``pool``) for ``seconds``, then closes the server while queries
    still arrive (see the module's description); ``warmup`` is the share of the run before memory is held to
    be flat."""
    report = SoakReport(offered_qps=rate, seconds=seconds, warmup_s=seconds * warmup)
    limit = int(rate * (seconds + close_timeout) * 1.5) + 1024
    seen = bytearray(limit)  # answers per query id, allocated before the clock starts
    statuses: dict = {}
    lock = threading.Lock()
    errors: list = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(f"{args.thread.name}: {args.exc_type.__name__}: {args.exc_value}")
    rng = np.random.default_rng(seed)
    requests = _requests(pool, rng, median_size, sigma, max_size)
    gaps = rng.exponential(1.0 / rate, 1 << 16)

    def answered(future) -> None:
        answer = future.result()
        with lock:
            qid = answer.query.id
            if seen[qid] >= 1:
                report.duplicated += 1
            seen[qid] = min(seen[qid] + 1, 255)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1

    server = make_server()
    stop = threading.Event()

    def feed() -> None:
        i, next_at = 0, time.perf_counter()
        while not stop.is_set() and i < limit:
            next_at += gaps[i % len(gaps)]
            wait = next_at - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            request = requests[i % len(requests)]
            try:
                future = server.submit_query(Query(i, 0.0, request.size, sla), request)
            except RuntimeError:  # closed: refused, as a closed server must
                report.refused_after_close += 1
                if report.refused_after_close >= 100:
                    return
                continue
            report.submitted += 1
            future.add_done_callback(answered)
            i += 1

    feeder = threading.Thread(target=feed, name="mprec-soak-feeder", daemon=True)
    start = time.perf_counter()
    feeder.start()
    try:
        while (now := time.perf_counter() - start) < seconds:
            report.rss_mb.append((round(now, 2), round(resident_mb(), 1)))
            time.sleep(sample_every)
        closing = time.perf_counter()
        server.close(drain=False, timeout=close_timeout)  # queries are still arriving
        report.close_s = time.perf_counter() - closing
        time.sleep(0.05)
        stop.set()
        feeder.join(close_timeout)
    finally:
        threading.excepthook = previous_hook
    deadline = time.perf_counter() + close_timeout
    while sum(statuses.values()) < report.submitted and time.perf_counter() < deadline:
        time.sleep(0.01)
    with lock:
        report.answers = dict(statuses)
        report.lost = sum(1 for i in range(report.submitted) if seen[i] == 0)
    report.counts_agree = (server.counts["submitted"] == report.submitted and
                           all(server.counts[s] == statuses.get(s, 0) for s in ("ok", "rejected", "cancelled", "error")))
    report.thread_errors = errors
    report.threads_left = [t.name for t in threading.enumerate() if t.is_alive() and
                           (t.name.startswith("mprec-serve") or t is feeder)]
    after = [mb for t, mb in report.rss_mb if t >= report.warmup_s]
    at_warmup = after[0] if after else math.nan
    report.rss_growth = (max(after) - at_warmup) / at_warmup if after else math.nan
    return report

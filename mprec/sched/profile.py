"""Path profiles: each path's measured latency over batch sizes, and the latency model built from them.

``profile_paths`` times :meth:`Path.run` (on requests built from evaluation rows beforehand) for
batch sizes 1 to 16,384 (powers of two): after :meth:`Path.warmup` (every GEMM shape built once) and
warm-up calls, repetitions until ``repetitions`` or the per-size time budget is reached (at least
``min_repetitions``); it records the median and p99. The sizes take turns in a shuffled order, round
after round, as a server's queries come: repeating one size back to back kept its buffers and caches
warm and measured small batches up to 0.4 ms faster than the same model served a stream. The profile
JSON carries the machine, the versions and each path's accuracy, so profiles from several machines can
be composed into one system (:func:`load_profiles`: a CPU here, a GPU profiled elsewhere).

A device that has been idle serves its next query slower: on the 2-core development machine a table
query of 1 to 128 samples took 0.3 ms more after a 1 ms idle gap, 0.5 ms after 3 ms and about 1 ms
after 10 to 100 ms (its threads and caches go cold), on a back-to-back latency of 1.5 to 3 ms; served
at a light load, where most queries find the device idle, queries took 1.3 to 1.5x their back-to-back
latency. ``profile_paths`` therefore also measures each path's *idle cost*: the extra latency of a
query after the device idled for each of :data:`IDLE_GAPS`, over small batch sizes, against the same
sizes back to back, with the serving thread woken by another as the server wakes it. The simulator and
the server add it to a query that starts on an idle device.

:class:`LatencyModel` interpolates a path's profile: made monotone in the batch size (a larger batch is
never predicted faster), linear between measured sizes, and extended past the largest size at the last
segment's per-sample cost. Its :meth:`LatencyModel.idle` is the idle cost after a gap: linear between
the measured gaps (and from 0 s at no gap), the longest gap's cost beyond them.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import random
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from .report import percentile

__all__ = ["BATCH_SIZES", "IDLE_GAPS", "PathProfile", "LatencyModel", "profile_paths", "save_profile",
           "load_profiles", "machine_info"]

FORMAT = "mprec-profile/1"
BATCH_SIZES = [1 << i for i in range(15)]  # 1 .. 16,384
IDLE_GAPS = [0.0003, 0.001, 0.003, 0.01, 0.03]  # seconds idle before a query, for its idle cost
IDLE_SIZES = [1, 16, 128]  # the batch sizes the idle cost is measured at


@dataclass
class PathProfile:
    name: str
    representation: str
    device: str
    accuracy: float
    batch_sizes: list
    median_ms: list
    p99_ms: list
    repetitions: list
    idle_gaps_ms: list = ()   # gaps the device idled before a query ...
    idle_cost_ms: list = ()   # ... and the query's extra latency after each (none measured: no cost)
    machine: str = ""

    def latency_model(self, statistic: str = "median") -> "LatencyModel":
        if statistic not in ("median", "p99"):
            raise ValueError(f"latency_model: statistic must be 'median' or 'p99', got {statistic!r}")
        ms = self.median_ms if statistic == "median" else self.p99_ms
        return LatencyModel(self.batch_sizes, [v / 1e3 for v in ms], [g / 1e3 for g in self.idle_gaps_ms],
                            [c / 1e3 for c in self.idle_cost_ms])

    def to_dict(self) -> dict:
        return dict(name=self.name, representation=self.representation, device=self.device, accuracy=self.accuracy,
                    batch_sizes=self.batch_sizes, median_ms=self.median_ms, p99_ms=self.p99_ms,
                    repetitions=self.repetitions, idle_gaps_ms=list(self.idle_gaps_ms),
                    idle_cost_ms=list(self.idle_cost_ms))


class LatencyModel:
    """Seconds to serve ``n`` samples, from (batch size, seconds) points; :meth:`idle` the extra seconds after
    the device idled, from (gap, seconds) points."""

    def __init__(self, batch_sizes: Sequence[int], seconds: Sequence[float], idle_gaps: Sequence[float] = (),
                 idle_cost: Sequence[float] = ()) -> None:
        pairs = sorted(zip(batch_sizes, seconds))
        if not pairs or any(n < 1 for n, _ in pairs) or any(not (s >= 0 and math.isfinite(s)) for _, s in pairs):
            raise ValueError(f"LatencyModel: needs batch sizes >= 1 and finite latencies >= 0, got "
                             f"{list(batch_sizes)}, {list(seconds)}")
        if len({n for n, _ in pairs}) != len(pairs):
            raise ValueError(f"LatencyModel: batch sizes repeat: {list(batch_sizes)}")
        self.sizes = [float(n) for n, _ in pairs]
        running, self.seconds = 0.0, []
        for _, s in pairs:  # monotone: the running maximum
            running = max(running, s)
            self.seconds.append(running)
        if len(self.sizes) > 1:
            self.tail_slope = (self.seconds[-1] - self.seconds[-2]) / (self.sizes[-1] - self.sizes[-2])
        else:
            self.tail_slope = self.seconds[0] / self.sizes[0]
        gaps = sorted(zip(idle_gaps, idle_cost))
        if len(idle_gaps) != len(idle_cost) or any(not (g > 0 and math.isfinite(g)) or not (c >= 0 and math.isfinite(c))
                                                   for g, c in gaps) or len({g for g, _ in gaps}) != len(gaps):
            raise ValueError(f"LatencyModel: idle costs need distinct gaps > 0 and finite costs >= 0, one cost per "
                             f"gap, got {list(idle_gaps)}, {list(idle_cost)}")
        self.idle_gaps = [0.0] + [g for g, _ in gaps]
        self.idle_cost = [0.0] + [c for _, c in gaps]

    def idle(self, gap: float) -> float:
        """The extra seconds of a query that starts after the device idled for ``gap`` seconds (0 for none)."""
        return _interpolate(self.idle_gaps, self.idle_cost, gap)

    def __call__(self, n: float) -> float:
        if n >= self.sizes[-1]:
            return self.seconds[-1] + self.tail_slope * (n - self.sizes[-1])
        return _interpolate(self.sizes, self.seconds, n)


def _interpolate(xs: list, ys: list, x: float) -> float:
    """``ys`` at ``x``, linear between the sorted points ``xs`` (and flat outside them)."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    lo, hi = 0, len(xs) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if xs[mid] <= x:
            lo = mid
        else:
            hi = mid
    f = (x - xs[lo]) / (xs[hi] - xs[lo])
    return ys[lo] + f * (ys[hi] - ys[lo])


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = dict(cpu=cpu, threads=torch.get_num_threads(), logical_cpus=os.cpu_count())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def machine_name() -> str:
    """``<cpu>-<threads>t`` (``amd-epyc-2t``): the prefix of the benchmark results measured on this machine."""
    info = machine_info()
    slug = re.sub(r"[^a-z0-9]+", "-", info["cpu"].lower()).strip("-")
    return f"{slug}-{info['threads']}t"


def versions() -> dict:
    import mprec

    return dict(mprec=mprec.__version__, torch=torch.__version__, python=sys.version.split()[0])


def profile_paths(paths: Iterable, pool, batch_sizes: Sequence[int] = BATCH_SIZES, repetitions: int = 20,
                  min_repetitions: int = 3, budget_s: float = 1.0, warmup: int = 2, log=None, seed: int = 0,
                  idle_gaps: Sequence[float] = IDLE_GAPS, idle_sizes: Sequence[int] = IDLE_SIZES,
                  idle_repetitions: int = 10, clock=time.perf_counter, sleep=time.sleep) -> list:
    """Times each path's ``run`` per batch size on requests from ``pool`` (a :class:`~mprec.sched.paths.RowPool`),
    then its idle cost after each of ``idle_gaps`` (seconds; none: no idle cost); returns :class:`PathProfile` s."""
    if not batch_sizes or any(n < 1 for n in batch_sizes):
        raise ValueError(f"profile_paths: batch sizes must be >= 1, got {list(batch_sizes)}")
    if repetitions < 1 or min_repetitions < 1 or idle_repetitions < 1:
        raise ValueError(f"profile_paths: repetitions must be >= 1, got {repetitions}, {min_repetitions}, "
                         f"{idle_repetitions}")
    if any(not g > 0 for g in idle_gaps) or len(set(idle_gaps)) != len(idle_gaps) or (idle_gaps and not idle_sizes) \
            or any(n < 1 for n in idle_sizes):
        raise ValueError(f"profile_paths: idle gaps must be distinct and > 0, measured at batch sizes >= 1, got "
                         f"{list(idle_gaps)} at {list(idle_sizes)}")
    machine = machine_info()["cpu"]
    profiles = []
    order = random.Random(seed)
    for path in paths:
        path.warmup(pool, max(batch_sizes))
        for n in batch_sizes:
            for _ in range(warmup):
                path.run(pool.request(0, n))
        times: dict = {n: [] for n in batch_sizes}
        spent = dict.fromkeys(batch_sizes, 0.0)
        start_row = 0
        while True:
            due = [n for n in batch_sizes if len(times[n]) < repetitions
                   and (len(times[n]) < min_repetitions or spent[n] < budget_s)]
            if not due:
                break
            order.shuffle(due)  # a server sees sizes in any order: so does the profile
            for n in due:
                start_row = (start_row + n) % len(pool)  # different rows each repetition
                request = pool.request(start_row, n)
                t0 = clock()
                path.run(request)
                elapsed = clock() - t0
                times[n].append(elapsed)
                spent[n] += elapsed
        medians = [statistics.median(times[n]) * 1e3 for n in batch_sizes]
        gaps_ms, cost_ms = _idle_cost(path, pool, idle_gaps, idle_sizes, idle_repetitions, order, clock, sleep)
        profiles.append(PathProfile(path.name, path.representation, path.device, path.accuracy, list(batch_sizes),
                                    medians, [percentile(times[n], 0.99) * 1e3 for n in batch_sizes],
                                    [len(times[n]) for n in batch_sizes], gaps_ms, cost_ms, machine))
        if log is not None:
            print(f"profiled {path.name}: " + ", ".join(f"{n}: {m:.2f} ms" for n, m in zip(batch_sizes, medians)
                                                        if n in (1, 64, 1024, 16384))
                  + "; idle cost " + ", ".join(f"{c:.2f} ms after {g:.1f} ms" for g, c in zip(gaps_ms, cost_ms)),
                  file=log)
    return profiles


def _idle_cost(path, pool, gaps: Sequence[float], sizes: Sequence[int], repetitions: int, order: random.Random,
               clock, sleep) -> tuple:
    """``(gaps_ms, cost_ms)``: the median gap measured for each of ``gaps`` and the idle cost after it. Each
    timed query follows a query of a random size of ``sizes``: right away (back to back), or once this
    thread, idle for the gap, is woken by another (as the server's intake wakes an idle device's worker,
    so the cost includes that wake-up), timed from the wake-up call. A gap's cost is, per size, its median
    latency less the back-to-back median, the median over the sizes, made non-decreasing in the gap (a
    longer idle is never cheaper) and at least 0."""
    if not gaps:
        return [], []
    gaps = sorted(gaps)
    cells = [(g, n) for g in [0.0, *gaps] for n in sizes]
    times: dict = {c: [] for c in cells}
    slept: dict = {g: [] for g in gaps}
    row = 0
    waker = _Waker(clock, sleep)
    try:
        for _ in range(repetitions):
            order.shuffle(cells)
            for g, n in cells:
                row = (row + n) % len(pool)
                path.run(pool.request(row, order.choice(sizes)))
                request = pool.request(row, n)
                if g:
                    before = clock()
                    t0 = waker.idle(g)
                    slept[g].append(t0 - before)
                else:
                    t0 = clock()
                path.run(request)
                times[(g, n)].append(clock() - t0)
    finally:
        waker.close()
    base = {n: statistics.median(times[(0.0, n)]) for n in sizes}
    cost = [statistics.median(statistics.median(times[(g, n)]) - base[n] for n in sizes) for g in gaps]
    measured = [statistics.median(slept[g]) for g in gaps]
    if any(b <= a for a, b in zip(measured, measured[1:])) or measured[0] <= 0:
        measured = list(gaps)  # a sleep that overshot into the next gap: the gaps asked for
    return [g * 1e3 for g in measured], [max(0.0, c) * 1e3 for c in _non_decreasing(cost)]


class _Waker:
    """A helper thread that sleeps a gap when asked and then wakes the thread that asked."""

    def __init__(self, clock, sleep) -> None:
        self.clock, self.sleep = clock, sleep
        self.asked, self.woken = threading.Event(), threading.Event()
        self.gap: Optional[float] = None
        self.at = 0.0
        self.thread = threading.Thread(target=self._run, name="mprec-profile-waker", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            self.asked.wait()
            self.asked.clear()
            if self.gap is None:
                return
            self.sleep(self.gap)
            self.at = self.clock()
            self.woken.set()

    def idle(self, gap: float) -> float:
        """Blocks this thread until the helper wakes it ``gap`` seconds on; returns the wake-up call's time."""
        self.woken.clear()
        self.gap = gap
        self.asked.set()
        self.woken.wait()
        return self.at

    def close(self) -> None:
        self.gap = None
        self.asked.set()
        self.thread.join()


def _non_decreasing(ys: Sequence[float]) -> list:
    """The least-squares non-decreasing fit of ``ys`` (pool adjacent violators)."""
    blocks: list = []  # [sum, count] of each pooled run
    for y in ys:
        blocks.append([y, 1])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(count)]


def save_profile(path: str, profiles: list, extra: Optional[dict] = None) -> dict:
    doc = dict(format=FORMAT, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               machine=machine_info(), versions=versions(), paths=[p.to_dict() for p in profiles], **(extra or {}))
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
    return doc


def load_profiles(specs: Sequence[str]) -> list:
    """Profiles composed from several files. A spec is ``FILE`` (all its paths) or ``FILE@DEV1,DEV2`` (the
    paths on those devices only: ``gpu.json@cuda`` takes a GPU machine's GPU paths, not its host CPU's)."""
    profiles = []
    for spec in specs:
        file, _, devices = spec.partition("@")
        wanted = {d.strip() for d in devices.split(",") if d.strip()} or None
        try:
            with open(file) as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"load_profiles: no such profile file: {file}") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"load_profiles: {file} is not JSON: {error}") from None
        if doc.get("format") != FORMAT:
            raise ValueError(f"load_profiles: {file} is not an mprec profile (format {doc.get('format')!r}, "
                             f"expected {FORMAT!r})")
        machine = doc.get("machine", {}).get("gpu") or doc.get("machine", {}).get("cpu", "")
        for p in doc["paths"]:
            if wanted is None or p["device"].split(":")[0] in wanted or p["device"] in wanted:
                profiles.append(PathProfile(**p, machine=machine))
    names = [p.name for p in profiles]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"load_profiles: paths {dup} appear in more than one profile; select devices with "
                         f"FILE@DEVICE")
    if not profiles:
        raise ValueError(f"load_profiles: no paths in {list(specs)}")
    return profiles

"""Path profiles: each path's measured latency over batch sizes, and the latency model built from them.

``profile_paths`` times :meth:`Path.serve` (inputs built from the evaluation rows, then the model) for
batch sizes 1 to 16,384 (powers of two): after :meth:`Path.warmup` (every GEMM shape built once) and
warm-up calls, repetitions until ``repetitions`` or the per-size time budget is reached (at least
``min_repetitions``); it records the median and p99. The sizes take turns in a shuffled order, round
after round, as a server's queries come: repeating one size back to back kept its buffers and caches
warm and measured small batches up to 0.4 ms faster than the same model served a stream. The profile
JSON carries the machine, the versions and each path's accuracy, so profiles from several machines can
be composed into one system (:func:`load_profiles`: a CPU here, a GPU profiled elsewhere).

:class:`LatencyModel` interpolates a path's profile: made monotone in the batch size (a larger batch is
never predicted faster), linear between measured sizes, and extended past the largest size at the last
segment's per-sample cost.
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
import time
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from .report import percentile

__all__ = ["BATCH_SIZES", "PathProfile", "LatencyModel", "profile_paths", "save_profile", "load_profiles",
           "machine_info"]

FORMAT = "mprec-profile/1"
BATCH_SIZES = [1 << i for i in range(15)]  # 1 .. 16,384


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
    machine: str = ""

    def latency_model(self, statistic: str = "median") -> "LatencyModel":
        if statistic not in ("median", "p99"):
            raise ValueError(f"latency_model: statistic must be 'median' or 'p99', got {statistic!r}")
        ms = self.median_ms if statistic == "median" else self.p99_ms
        return LatencyModel(self.batch_sizes, [v / 1e3 for v in ms])

    def to_dict(self) -> dict:
        return dict(name=self.name, representation=self.representation, device=self.device, accuracy=self.accuracy,
                    batch_sizes=self.batch_sizes, median_ms=self.median_ms, p99_ms=self.p99_ms,
                    repetitions=self.repetitions)


class LatencyModel:
    """Seconds to serve ``n`` samples, from (batch size, seconds) points."""

    def __init__(self, batch_sizes: Sequence[int], seconds: Sequence[float]) -> None:
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

    def __call__(self, n: float) -> float:
        sizes, secs = self.sizes, self.seconds
        if n <= sizes[0]:
            return secs[0]
        if n >= sizes[-1]:
            return secs[-1] + self.tail_slope * (n - sizes[-1])
        lo, hi = 0, len(sizes) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if sizes[mid] <= n:
                lo = mid
            else:
                hi = mid
        f = (n - sizes[lo]) / (sizes[hi] - sizes[lo])
        return secs[lo] + f * (secs[hi] - secs[lo])


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


def profile_paths(paths: Iterable, batch_sizes: Sequence[int] = BATCH_SIZES, repetitions: int = 20,
                  min_repetitions: int = 3, budget_s: float = 1.0, warmup: int = 2, log=None, seed: int = 0) -> list:
    """Times each path's ``serve`` per batch size; returns :class:`PathProfile` s."""
    if not batch_sizes or any(n < 1 for n in batch_sizes):
        raise ValueError(f"profile_paths: batch sizes must be >= 1, got {list(batch_sizes)}")
    if repetitions < 1 or min_repetitions < 1:
        raise ValueError(f"profile_paths: repetitions must be >= 1, got {repetitions}, {min_repetitions}")
    machine = machine_info()["cpu"]
    profiles = []
    order = random.Random(seed)
    for path in paths:
        path.warmup(max(batch_sizes))
        for n in batch_sizes:
            for _ in range(warmup):
                path.serve(0, n)
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
                start_row = (start_row + n) % len(path.pool)  # different rows each repetition
                t0 = time.perf_counter()
                path.serve(start_row, n)
                elapsed = time.perf_counter() - t0
                times[n].append(elapsed)
                spent[n] += elapsed
        medians = [statistics.median(times[n]) * 1e3 for n in batch_sizes]
        profiles.append(PathProfile(path.name, path.representation, path.device, path.accuracy, list(batch_sizes),
                                    medians, [percentile(times[n], 0.99) * 1e3 for n in batch_sizes],
                                    [len(times[n]) for n in batch_sizes], machine))
        if log is not None:
            print(f"profiled {path.name}: " + ", ".join(f"{n}: {m:.2f} ms" for n, m in zip(batch_sizes, medians)
                                                        if n in (1, 64, 1024, 16384)), file=log)
    return profiles


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

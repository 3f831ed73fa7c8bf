"""The experiments of ``mprec profile`` / ``mprec serve`` / ``mprec run``: loading trained models as
paths, sweeping a simulated load, serving a stream for real, and the whole MP-Rec story on a data set."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np
import torch

from .. import training
from .paths import LoadedModel, RowPool, discover_paths
from .policy import MPRecPolicy, StaticPolicy
from .profile import BATCH_SIZES, load_profiles, profile_paths, save_profile
from .report import format_table, knee_line, knee_rate, plot_sweep, ratio_to_best_static, summarize
from .server import Server, replay
from .simulate import simulate
from .stream import poisson_stream
from .types import PathInfo

__all__ = ["load_model", "parse_assignments", "path_infos", "policies", "default_rates", "sweep", "run_stream",
           "serve_real", "split_rounds", "in_sequence", "train_and_evaluate", "main_job", "BATCH_SIZES",
           "REPRESENTATIONS"]


def parse_assignments(items: Sequence[str], what: str) -> dict:
    """``["table=a.pt", "dhe=b.pt"]`` -> ``{"table": "a.pt", "dhe": "b.pt"}``."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what}: expected NAME=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _accuracy_from(value: str) -> float:
    """A number, or the JSON file ``mprec eval`` printed."""
    try:
        acc = float(value)
    except ValueError:
        with open(value) as f:
            acc = float(json.load(f)["accuracy"])
    if not 0 <= acc <= 1:
        raise ValueError(f"accuracy must be in [0, 1], got {acc} from {value!r}")
    return acc


def load_model(checkpoint: str, data: str, accuracy: Optional[str] = None, representation: Optional[str] = None,
               pool_rows: Optional[int] = None) -> LoadedModel:
    """A trained checkpoint as a servable model: how it maps raw ids (its vocabulary), its accuracy (from
    ``accuracy``, a number or an ``mprec eval`` JSON, or else evaluated on ``data`` now), and ``data``'s rows as
    the data has them, to generate load from."""
    model, config, vocabulary = training.model_from_checkpoint(training.load_checkpoint(checkpoint), checkpoint)
    config.limit = pool_rows
    evaluation = {}
    if accuracy is None:
        evaluation = training.evaluate(model, training.make_batches(config, data, vocabulary, seed_offset=10_000),
                                       config.precision)
        acc = evaluation["accuracy"]
    else:
        acc = _accuracy_from(accuracy)
    rep = representation or training._summary(config.representations)
    ids, raw = training.id_map(config, vocabulary, data), training.raw_batches(config, data, seed_offset=10_000)
    return LoadedModel(rep, model.eval(), RowPool.from_batches(raw), acc, config.precision, evaluation, ids)


def path_infos(profiles: list, statistic: str = "median") -> list:
    return [PathInfo(p.name, p.device, p.accuracy, p.latency_model(statistic)) for p in profiles]


def policies(infos: list) -> list:
    """MP-Rec; MP-Rec without splitting where there are devices to split a query across (what splitting adds);
    one static policy per path (the baselines)."""
    several_devices = len({i.device for i in infos}) > 1
    return [MPRecPolicy()] + [MPRecPolicy(split=False)] * several_devices + [StaticPolicy(i.name) for i in infos]


def default_rates(infos: list, median_size: float, sigma: float, max_size: int, points: int = 12,
                  seed: int = 0) -> list:
    """Loads spaced geometrically from half the rate the slowest path sustains for the stream's sizes to
    1.3x the rate the fastest one does: every path's knee lies inside."""
    sizes = np.clip(np.rint(np.random.default_rng(seed).lognormal(math.log(median_size), sigma, 4096)), 1, max_size)
    capacities = [1.0 / float(np.mean([i.latency(n) for n in sizes])) for i in infos]
    low, high = 0.5 * min(capacities), 1.3 * max(capacities)
    return [round(float(r), 1) for r in np.geomspace(low, high, points)]


def sweep(infos: list, rates: Sequence[float], sla: float, queries: int, median_size: float = 128.0,
          sigma: float = 1.0, max_size: int = 16384, capacity: int = 64, seed: int = 0) -> list:
    """Every policy over the same stream at each rate (simulated); rows for :func:`format_table`."""
    rows = []
    for rate in rates:
        rows += run_stream(infos, poisson_stream(rate, queries, sla, median_size, sigma, max_size, seed), capacity,
                           rate)
    return rows


def _label_rate(stream: list, rate: Optional[float]) -> float:
    """The rate the rows of ``stream`` are labelled with: ``rate``, or else the stream's own."""
    if not stream:
        raise ValueError("the stream has no queries")
    if rate is not None:
        return rate
    span = stream[-1].arrival - stream[0].arrival
    return round(len(stream) / span, 1) if span > 0 else float("inf")


def split_rounds(stream: list, rounds: int) -> list:
    """``stream`` cut into ``rounds`` consecutive pieces of (nearly) equal length, each starting at time 0."""
    if rounds < 1 or rounds > len(stream):
        raise ValueError(f"rounds must be between 1 and the stream's {len(stream)} queries, got {rounds}")
    bounds = [len(stream) * r // rounds for r in range(rounds + 1)]
    pieces = []
    for lo, hi in zip(bounds, bounds[1:]):
        t0 = stream[lo].arrival
        pieces.append([replace(q, arrival=q.arrival - t0) for q in stream[lo:hi]])
    return pieces


def in_sequence(runs: list) -> list:
    """The outcomes of several runs as one: each run's times shifted to begin where the previous one ended,
    so that :func:`~mprec.sched.report.summarize` counts their durations end to end."""
    if len(runs) == 1:
        return runs[0]
    out, end = [], None
    for outcomes in runs:
        first = min(o.query.arrival for o in outcomes)
        shift = 0.0 if end is None else end - first
        shifted = [replace(o, query=replace(o.query, arrival=o.query.arrival + shift), start=o.start + shift,
                           finish=o.finish + shift) for o in outcomes]
        end = max([o.query.arrival for o in shifted] + [o.finish for o in shifted if not o.rejected])
        out += shifted
    return out


def run_stream(infos: list, stream: list, capacity: int = 64, rate: Optional[float] = None, rounds: int = 1) -> list:
    """Every policy over one stream (simulated); ``rate`` labels the rows (default: the stream's own). With
    ``rounds``, the stream is served as :func:`serve_real` serves it: in pieces, each from an idle system."""
    rate = _label_rate(stream, rate)
    accuracy = {i.name: i.accuracy for i in infos}
    pieces = split_rounds(stream, rounds)
    rows = []
    for policy in policies(infos):
        runs = [simulate(piece, infos, policy, capacity) for piece in pieces]
        rows.append(dict(rate=rate, policy=policy.name, sla_ms=stream[0].sla * 1e3, **summarize(in_sequence(runs),
                                                                                              accuracy)))
    return rows


def serve_real(paths: list, infos: list, stream: list, pool: RowPool, capacity: int = 64,
               rate: Optional[float] = None, policy_names: Optional[Sequence[str]] = None, rounds: int = 1) -> list:
    """Every policy (or those named) serves ``stream`` for real, each query carrying rows of ``pool``; rows as
    :func:`run_stream` gives, from measured latencies. With ``rounds``, the stream is cut into that many pieces
    and the policies take turns piece by piece, in an order that rotates each round, so that a slow spell of a
    shared machine falls on all of them rather than on one."""
    rate = _label_rate(stream, rate)
    by_name = {i.name: i for i in infos}
    missing = [p.name for p in paths if p.name not in by_name]
    if missing:
        raise ValueError(f"serve_real: paths {missing} have no profile")
    latency = {p.name: by_name[p.name].latency for p in paths}
    accuracy = {p.name: p.accuracy for p in paths}
    inline = "cpu" if any(p.device == "cpu" for p in paths) else None
    for p in paths:  # every GEMM shape the stream brings is built before the clock runs
        p.warmup(pool, max(q.size for q in stream))
    chosen = [policy for policy in policies([by_name[p.name] for p in paths])
              if not policy_names or policy.name in policy_names]
    runs: dict = {policy.name: [] for policy in chosen}
    for r, piece in enumerate(split_rounds(stream, rounds)):
        for policy in chosen[r % len(chosen):] + chosen[:r % len(chosen)]:
            with Server(paths, latency, policy, capacity, inline_device=inline) as server:
                outcomes, _ = replay(server, piece, pool)
            runs[policy.name].append(outcomes)
    return [dict(rate=rate, policy=policy.name, sla_ms=stream[0].sla * 1e3,
                 **summarize(in_sequence(runs[policy.name]), accuracy)) for policy in chosen]


REPRESENTATIONS = ("table", "dhe", "hybrid")


def train_and_evaluate(out: str, data_dir: str, epochs: int = 2, log=sys.stdout) -> list:
    """Trains a table, a DHE and a hybrid DLRM on ``data_dir``'s train.txt and evaluates each on its
    valid.txt: ``out/<rep>.pt`` and ``out/eval-<rep>.json`` (what ``mprec profile --model/--accuracy``
    takes), and the models loaded as paths' models."""
    train_file, valid_file = os.path.join(data_dir, "train.txt"), os.path.join(data_dir, "valid.txt")
    for f in (train_file, valid_file):
        if not os.path.isfile(f):
            raise FileNotFoundError(f"mprec run: no {os.path.basename(f)} in {data_dir}")
    os.makedirs(out, exist_ok=True)
    print(f"== 1. train and evaluate ({data_dir}, {epochs} epochs each)", file=log)
    models = []
    for rep in REPRESENTATIONS:
        ckpt = os.path.join(out, f"{rep}.pt")
        if os.path.exists(ckpt):  # a fresh run, not a resumed one
            os.remove(ckpt)
        config = training.RunConfig(data=train_file, representations=[rep] * 26, epochs=epochs, batch_size=128,
                                    checkpoint=ckpt)
        t0 = time.perf_counter()
        training.train(config, progress=False, log=open(os.devnull, "w"))
        m = load_model(ckpt, valid_file, representation=rep)
        with open(os.path.join(out, f"eval-{rep}.json"), "w") as f:
            json.dump(m.evaluation, f, indent=1)
        e = m.evaluation
        print(f"  {rep:<7} accuracy {e['accuracy']:.4f}  AUC {e['auc']:.4f}  log loss {e['log_loss']:.4f}  "
              f"({e['examples']} validation examples; trained in {time.perf_counter() - t0:.1f} s)", file=log)
        models.append(m)
    return models


def main_job(out: str = "mprec-run", data_dir: Optional[str] = None, epochs: int = 2, sla_ms: float = 20.0,
             queries: int = 3000, real_queries: int = 1500, median_size: float = 128.0, sigma: float = 1.0,
             extra_profiles: Sequence[str] = (), threads: Optional[int] = None, rounds: int = 10,
             train_only: bool = False, log=sys.stdout) -> dict:
    """``make run``: train table / DHE / hybrid DLRMs on the data set's train.txt, evaluate them on
    valid.txt, profile every local path, sweep the load in simulation for MP-Rec and every static policy,
    serve the stream for real at and below the sweep's knee, print the tables and write the plot.
    ``train_only`` stops after the training and evaluation."""
    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    data_dir = data_dir or _default_data_dir()
    sla = sla_ms / 1e3
    models = train_and_evaluate(out, data_dir, epochs, log)
    if train_only:
        return dict(checkpoints=[os.path.join(out, f"{rep}.pt") for rep in REPRESENTATIONS],
                    seconds=time.perf_counter() - t_start)

    print("== 2. profile the local paths (batch 1 .. 16,384)", file=log)
    paths = discover_paths(models)
    pool = models[0].pool  # every model's: the validation rows as the data has them
    profiles = profile_paths(paths, pool, BATCH_SIZES, repetitions=10, budget_s=0.4, log=log)
    profile_file = os.path.join(out, "profile.json")
    save_profile(profile_file, profiles)
    if extra_profiles:
        profiles = load_profiles([profile_file] + list(extra_profiles))
    infos = path_infos(profiles)

    print(f"== 3. simulated serving: Poisson arrivals, log-normal sizes (median {median_size:g}, sigma {sigma:g}), "
          f"SLA {sla_ms:g} ms, {queries} queries per point", file=log)
    rates = default_rates(infos, median_size, sigma, 16384)
    rows = sweep(infos, rates, sla, queries, median_size, sigma)
    print(format_table(rows), file=log)
    knee = knee_rate(rows)
    print(knee_line(rows), file=log)
    plot_file = os.path.join(out, "serve.png")
    plot_sweep(rows, plot_file, title=f"MP-Rec vs static paths (simulated, SLA {sla_ms:g} ms)")

    # Each load's stream lasts as long as the knee's (real_queries there, fewer below): a load below the knee
    # needs no more queries to show its ratio, and the real phase is most of the run's time.
    real_load = {round(knee * f, 1): max(rounds, round(real_queries * f)) for f in (0.5, 0.75, 1.0)}
    real_rates = list(real_load)
    print(f"== 4. real serving at 0.5x, 0.75x and 1x the knee ({real_rates} q/s; {list(real_load.values())} queries "
          f"per policy in {rounds} rounds, the policies taking turns)", file=log)
    local = [p for p in paths if p.name in {i.name for i in infos}]
    local_infos = [i for i in infos if i.name in {p.name for p in local}]
    real, sim, comparison = [], [], []
    for rate in real_rates:
        stream = poisson_stream(rate, real_load[rate], sla, median_size, sigma)
        real += serve_real(local, local_infos, stream, pool, rate=rate, rounds=rounds)
        sim += run_stream(local_infos, stream, rate=rate, rounds=rounds)
    print(format_table(real), file=log)
    for rate in real_rates:
        r, s_ = ratio_to_best_static(real, rate), ratio_to_best_static(sim, rate)
        comparison.append(dict(rate=rate, real_ratio=r, simulated_ratio=s_))
        print(f"  {rate} q/s: MP-Rec / best static: real {r:.2f}x, simulated on the same stream {s_:.2f}x "
              f"(difference {abs(r - s_) / s_:.0%})", file=log)
    result = dict(rates=rates, knee=knee, simulated=rows, real=real, simulated_at_real_rates=sim,
                  comparison=comparison, profile=profile_file, plot=plot_file, seconds=time.perf_counter() - t_start)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"== wrote {profile_file}, {plot_file}, {os.path.join(out, 'report.json')} "
          f"({result['seconds']:.0f} s)", file=log)
    return result


def _default_data_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get("MPREC_DATA", ""),
                  os.path.join(here, "..", "..", "..", "shared", "data", "criteo_kaggle_sample")]
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "train.txt")):
            return os.path.normpath(c)
    raise FileNotFoundError("mprec run: no data set found; pass --data-dir (a folder with train.txt and valid.txt) "
                            "or set MPREC_DATA")

"""What a served stream achieved, per policy: correct-prediction throughput (the MP-Rec paper's metric:
over the queries that met their SLA, samples x the path's accuracy, per second), sample and query
throughput, latency percentiles of the answered queries, SLA violations (late answers and rejections)
and the mix of paths. The time base is the stream's: from the first arrival to the later of the last
arrival and the last answer.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence

__all__ = ["percentile", "summarize", "by_rate", "best_static", "ratio_to_best_static", "format_table", "knee_rate",
           "knee_line", "plot_sweep"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) of ``values``, linear between order statistics; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(outcomes: Sequence, accuracy: dict) -> dict:
    """``outcomes``: :class:`~mprec.sched.types.Outcome` s (simulated or measured); ``accuracy``: path ->
    accuracy."""
    if not outcomes:
        raise ValueError("summarize: no outcomes")
    first = min(o.query.arrival for o in outcomes)
    end = max([o.query.arrival for o in outcomes] + [o.finish for o in outcomes if not o.rejected])
    duration = end - first
    served = [o for o in outcomes if not o.rejected]
    met = [o for o in served if o.met_sla]
    correct = sum(n * accuracy[path] for o in met for path, n in o.pieces())
    latencies = [o.latency * 1e3 for o in served]
    mix = Counter(o.path for o in served)
    rate = (lambda x: x / duration) if duration > 0 else (lambda x: float("nan"))
    return dict(
        queries=len(outcomes), samples=sum(o.query.size for o in outcomes), duration_s=duration,
        correct_per_s=rate(correct), samples_per_s=rate(sum(o.query.size for o in served)),
        queries_per_s=rate(len(served)),
        p50_ms=percentile(latencies, 0.50), p95_ms=percentile(latencies, 0.95), p99_ms=percentile(latencies, 0.99),
        late=len(served) - len(met), rejected=len(outcomes) - len(served),
        violation_rate=(len(outcomes) - len(met)) / len(outcomes),
        path_mix={p: c / len(served) for p, c in sorted(mix.items())})


def by_rate(rows: Sequence[dict]) -> dict:
    """rate -> that rate's rows, in first-seen order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["rate"], []).append(r)
    return groups


def best_static(group: Sequence[dict]) -> float:
    """The highest correct-prediction throughput of a static policy among one rate's rows."""
    return max((r["correct_per_s"] for r in group if r["policy"].startswith("static")), default=float("nan"))


def ratio_to_best_static(rows: Sequence[dict], rate: float, policy: str = "mp-rec") -> float:
    group = by_rate(rows)[rate]
    best = best_static(group)
    value = next(r["correct_per_s"] for r in group if r["policy"] == policy)
    return value / best if best > 0 else float("nan")


def format_table(rows: Sequence[dict]) -> str:
    """One line per (rate, policy): the summary's columns and, per rate, each policy's ratio to the best
    static policy's correct-prediction throughput."""
    head = (f"{'load q/s':>9} {'policy':<22} {'correct/s':>11} {'x best static':>13} {'samples/s':>10} "
            f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'viol %':>7} {'rej':>5}  path mix")
    lines = [head, "-" * len(head)]
    for rate, group in by_rate(rows).items():
        best = best_static(group)
        for r in group:
            ratio = r["correct_per_s"] / best if best > 0 else float("nan")
            mix = " ".join(f"{p}:{f:.0%}" for p, f in r["path_mix"].items())
            lines.append(f"{rate:9.1f} {r['policy']:<22} {r['correct_per_s']:11,.0f} {ratio:12.2f}x "
                         f"{r['samples_per_s']:10,.0f} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['p99_ms']:8.2f} "
                         f"{100 * r['violation_rate']:6.1f}% {r['rejected']:5d}  {mix}")
    return "\n".join(lines)


def knee_rate(rows: Sequence[dict]) -> Optional[float]:
    """The load at which the best static policy's correct-prediction throughput peaks: past it, more
    load only adds violations (the sweep's knee)."""
    best = {rate: best_static(group) for rate, group in by_rate(rows).items()}
    best = {rate: b for rate, b in best.items() if not math.isnan(b)}
    if not best:
        return None
    return max(best, key=lambda rate: (best[rate], -rate))


def knee_line(rows: Sequence[dict]) -> str:
    """The sweep's knee and MP-Rec's ratio to the best static policy there and at its best: the figure the
    scheduler's targets are stated in."""
    knee = knee_rate(rows)
    if knee is None:
        return "  knee: none (no static policy answered a query in time)"
    highest = max(ratio_to_best_static(rows, rate) for rate in by_rate(rows))
    return (f"  knee (best static peaks): {knee} q/s; MP-Rec / best static there: "
            f"{ratio_to_best_static(rows, knee):.2f}x; highest over the sweep: {highest:.2f}x")


def plot_sweep(rows: Sequence[dict], path: str, title: str = "") -> None:
    """Correct-prediction throughput and p99 latency against the offered load, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for policy in policies:
        pts = sorted((r["rate"], r["correct_per_s"], r["p99_ms"]) for r in rows if r["policy"] == policy)
        style = dict(linewidth=2.5, color="black") if policy == "mp-rec" else dict(linewidth=1.2)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=policy, **style)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", markersize=3, label=policy, **style)
    sla = sorted({r.get("sla_ms") for r in rows if r.get("sla_ms")})
    for s in sla:
        ax2.axhline(s, color="red", linestyle="--", linewidth=0.8)
    ax1.set(xlabel="offered load (queries/s)", ylabel="correct predictions/s (within SLA)")
    ax2.set(xlabel="offered load (queries/s)", ylabel="p99 latency (ms)", yscale="log")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""The real server held at twice its knee, then shut down under load (``mprec.sched.soak``).

Three paths on this CPU, as the scheduler serves them: a Kaggle-preset DLRM with every feature a table, the
same with every feature a DHE, and the DHE one with MP-Cache (an online LFU decoder cache per layer), on
Kaggle-shaped synthetic rows (tables capped at ``--rows`` rows). Their latency models are profiled first; the
knee is the most queries a second the server answers with its queues never empty; the soak offers twice that
(Poisson arrivals, log-normal sizes around 64) for ``--seconds`` under MP-Rec's policy and a 50 ms SLA, then
closes the server while queries still arrive. Reports every answer's status, lost and duplicated answers, the
server's counters against them, resident memory (samples, growth after the warm-up), the threads left, and
the targets: no answer lost or duplicated, explicit rejections, growth < 5 %, every thread ended. Writes
``results/<cpu>-<threads>t-<isa>-soak.json`` and ``.txt``.

    python bench/bench_soak.py [--seconds 60] [--rows 100000]
"""

from __future__ import annotations

import argparse
import sys

import torch

import mprec
from mprec.benchmark import write_results
from mprec.memory import retain_freed_memory
from mprec.data import KAGGLE_TABLE_SIZES, SyntheticCriteo
from mprec.models import DLRM
from mprec.sched import MPRecPolicy, Server, discover_paths, profile_paths
from mprec.sched.experiment import path_infos
from mprec.sched.paths import LoadedModel, RowPool
from mprec.sched.profile import machine_info
from mprec.sched.soak import capacity, soak


def paths_for(rows: int) -> tuple:
    """The table, DHE and cached-DHE paths of the Kaggle preset, and the rows their requests are drawn from."""
    torch.manual_seed(0)
    sizes = [min(s, rows) for s in KAGGLE_TABLE_SIZES]
    pool = RowPool.from_batches(SyntheticCriteo(4, 256, sizes, seed=7))
    models = []
    for rep, accuracy in (("table", 0.787), ("dhe", 0.789)):
        model = DLRM.preset("kaggle", sizes, representations=[rep] * 26, dhe=dict(k=128, m=1_000_000, decoder=(64,)))
        models.append(LoadedModel(rep, model.eval(), pool, accuracy))
    return discover_paths(models, ["cpu"]), pool


def summarize(data: dict) -> str:
    r = data["report"]
    lines = [f"mprec.sched.Server soak on {data['cpu']} ({data['isa']}), {data['threads']} threads; paths "
             f"{', '.join(data['paths'])}; MP-Rec policy, SLA {data['sla_ms']:.0f} ms",
             f"knee (answers/s, queues never empty): {data['knee_qps']:.1f}; offered {r['offered_qps']:.1f} q/s "
             f"(2x) for {r['seconds']:.0f} s, then closed under load",
             f"submitted {r['submitted']:,}; answers {r['answers']}; refused after close {r['refused_after_close']}",
             f"lost {r['lost']}, duplicated {r['duplicated']}, server counters agree: {r['counts_agree']}; "
             f"close took {r['close_s'] * 1e3:.1f} ms",
             f"resident memory: {r['rss_mb'][0][1]:.0f} MB at start, {data['rss_at_warmup_mb']:.0f} MB after the "
             f"{r['warmup_s']:.0f} s warm-up, at most {data['rss_max_after_mb']:.0f} MB after: growth "
             f"{r['rss_growth']:.1%}",
             f"threads left: {r['threads_left'] or 'none'}; thread errors: {r['thread_errors'] or 'none'}",
             "targets:",
             f"  no answer lost or duplicated: {'met' if r['lost'] == 0 and r['duplicated'] == 0 else 'NOT met'}",
             f"  overload answered by explicit rejections: {'met' if r['answers'].get('rejected', 0) else 'NOT met'}",
             f"  resident memory growth < 5% after warm-up: {r['rss_growth']:.1%} "
             f"{'met' if r['rss_growth'] < 0.05 else 'NOT met'}",
             f"  every thread ended: {'met' if not r['threads_left'] else 'NOT met'}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rows", type=int, default=100_000, help="rows per table at most")
    parser.add_argument("--sla-ms", type=float, default=50.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    retain_freed_memory()  # as the server command runs
    paths, pool = paths_for(args.rows)
    infos = {i.name: i for i in path_infos(profile_paths(paths, pool, repetitions=5, budget_s=0.5))}
    latency = {p.name: infos[p.name].latency for p in paths}
    for p in paths:
        p.warmup(pool, 256)

    def make() -> Server:
        return Server(paths, latency, MPRecPolicy(), capacity=64)

    knee = capacity(make, pool, seconds=5.0, sla=args.sla_ms / 1e3)
    report = soak(make, pool, rate=2 * knee, seconds=args.seconds, sla=args.sla_ms / 1e3)
    r = report.to_dict()
    after = [mb for t, mb in report.rss_mb if t >= report.warmup_s]
    info = machine_info()
    data = dict(cpu=info["cpu"], isa=mprec.cpu_isa(), threads=torch.get_num_threads(), paths=[p.name for p in paths],
                sla_ms=args.sla_ms, knee_qps=knee, report=r, rss_at_warmup_mb=after[0] if after else float("nan"),
                rss_max_after_mb=max(after) if after else float("nan"), versions=dict(torch=torch.__version__))
    text = summarize(data)
    print(text)
    write_results("soak", data, text, args.out)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""`make bench`: runs every bench_<family>.py with pytest-benchmark, saves the JSON under bench/results/
named for this machine and the kernels' ISA (<cpu>-<threads>t-<isa>-<family>.json: mprec.benchmark.results_stem),
and prints the summary next to it; bench_distributed.py, which starts processes of its own, runs as a script (it
writes its own results). `python bench/run.py dhe ...` runs only the named families.

`python bench/run.py --runs N ...` runs each pytest family N times, each in a process of its own, and also writes
<...>-<family>-runs.txt: every target's figure in each run, and in how many runs it was met. The JSON and summary
are the last run's. A run's ratios come from its own interleaved rounds, so they move little within a process,
but on a shared machine they move more between processes (the tables land on other memory, the machine's other
tenants change), and a target near its threshold is met in some runs and missed in others: one run cannot say
which side it is on."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Families that are scripts, not pytest-benchmark suites: run here as scripts, or elsewhere (bench/gpu.sh on a
# GPU machine, make bench-xla in the XLA environment).
SCRIPTS = {"distributed"}
ELSEWHERE = {"gpu", "xla"}

# A summary's target line (summary*.py): "  [ met] target: figure (need minimum)", the figure (and what follows
# the last ": ") optional.
_TARGET = re.compile(r"^\s*\[\s*(met|MISS)\]\s+(.*?)\s*$")
_NEED = re.compile(r"\s*\(need [^)]*\)$")


def target_line(met: bool, text: str) -> str:
    """A summary's line for a target checked, in the form :func:`target_figures` reads: "  [ met] text" or
    "  [MISS] text"."""
    return f"  [{'met' if met else 'MISS':>4}] {text}"


def target_figures(summary: str) -> dict[str, tuple[bool, str]]:
    """The targets of one summary's text: {target: (met, figure)}, the figure as printed ("" where the line
    has none)."""
    targets = {}
    for line in summary.splitlines():
        match = _TARGET.match(line)
        if match:
            name, _, figure = match.group(2).rpartition(": ")
            targets[name or figure] = (match.group(1) == "met", _NEED.sub("", figure) if name else "")
    return targets


def runs_report(summaries: list[str]) -> str:
    """Every target of several runs' summaries: in how many runs it was met, and its figure in each run in order
    ("-" where a run did not report it)."""
    runs = [target_figures(text) for text in summaries]
    names = list(dict.fromkeys(name for run in runs for name in run))
    width = len(str(len(runs)))
    lines = [f"targets over {len(runs)} runs, each in a process of its own (met in how many; the figure of each run):"]

    def figure(run: dict, name: str) -> str:
        if name not in run:
            return "-"
        met, value = run[name]
        return value or ("met" if met else "MISS")

    for name in names:
        met = sum(run[name][0] for run in runs if name in run)
        lines.append(f"  [{met:>{width}}/{len(runs)} met] {name}: {' | '.join(figure(run, name) for run in runs)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help="the families to run (default: all that run here)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each pytest family (default 1)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    sys.path.insert(0, str(HERE))
    import importlib

    import peer_isa

    peer_isa.apply()  # the families run in processes of their own, which inherit the caps

    from mprec.benchmark import results_stem

    results = HERE / "results"
    results.mkdir(exist_ok=True)
    name = results_stem()
    status = 0
    only = set(args.families)
    for bench in sorted(HERE.glob("bench_*.py")):
        family = bench.stem.removeprefix("bench_")
        if (only and family not in only) or family in ELSEWHERE:
            continue
        if family in SCRIPTS:
            status = status or subprocess.call([sys.executable, str(bench)])
            continue
        out = results / f"{name}-{family}.json"
        # summary_<family>.py when the family has its own, else summary.py (embedding bags).
        module = f"summary_{family}" if (HERE / f"summary_{family}.py").exists() else "summary"
        summaries, last_json = [], None
        for _ in range(args.runs):
            out.unlink(missing_ok=True)
            rc = subprocess.call([sys.executable, "-m", "pytest", str(bench), "-q", "-p", "no:cacheprovider",
                                  f"--benchmark-json={out}", "--benchmark-columns=median,iqr,rounds",
                                  "--benchmark-sort=name"])
            status = status or rc
            if out.exists():
                summaries.append(importlib.import_module(module).summarize(out))
                last_json = out.read_bytes()
        if last_json is not None and not out.exists():  # a later run wrote nothing: keep the summary's JSON
            out.write_bytes(last_json)
        if summaries:
            (results / f"{name}-{family}.txt").write_text(summaries[-1] + "\n")
            print(summaries[-1])
        if args.runs > 1 and summaries:
            # The line the last run's summary opens with (the machine), then the targets over the runs.
            report = "last run's " + summaries[-1].splitlines()[0] + "\n\n" + runs_report(summaries)
            (results / f"{name}-{family}-runs.txt").write_text(report + "\n")
            print("\n" + report)
    return status


if __name__ == "__main__":
    raise SystemExit(main())

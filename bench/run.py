"""`make bench`: runs every bench_<family>.py with pytest-benchmark, saves the JSON under bench/results/
named for this machine and the kernels' ISA (<cpu>-<threads>t-<isa>-<family>.json: mprec.benchmark.results_stem), and prints the summary next to it; bench_distributed.py, which starts processes of its
own, runs as a script (it writes its own results). `python bench/run.py dhe ...` runs only the named families."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Families that are scripts, not pytest-benchmark suites: run here as scripts, or elsewhere (bench/gpu.sh on a
# GPU machine, make bench-xla in the XLA environment).
SCRIPTS = {"distributed"}
ELSEWHERE = {"gpu", "xla"}


def main() -> int:
    sys.path.insert(0, str(HERE))
    import importlib

    import peer_isa

    peer_isa.apply()  # the families run in processes of their own, which inherit the caps

    from mprec.benchmark import results_stem

    results = HERE / "results"
    results.mkdir(exist_ok=True)
    name = results_stem()
    status = 0
    only = set(sys.argv[1:])
    for bench in sorted(HERE.glob("bench_*.py")):
        family = bench.stem.removeprefix("bench_")
        if (only and family not in only) or family in ELSEWHERE:
            continue
        if family in SCRIPTS:
            status = status or subprocess.call([sys.executable, str(bench)])
            continue
        out = results / f"{name}-{family}.json"
        rc = subprocess.call([sys.executable, "-m", "pytest", str(bench), "-q", "-p", "no:cacheprovider",
                              f"--benchmark-json={out}", "--benchmark-columns=median,iqr,rounds",
                              "--benchmark-sort=name"])
        status = status or rc
        if out.exists():
            # summary_<family>.py when the family has its own, else summary.py (embedding bags).
            module = f"summary_{family}" if (HERE / f"summary_{family}.py").exists() else "summary"
            text = importlib.import_module(module).summarize(out)
            (results / f"{name}-{family}.txt").write_text(text + "\n")
            print(text)
    return status


if __name__ == "__main__":
    raise SystemExit(main())

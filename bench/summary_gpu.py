"""Reads a bench_gpu.py results file and prints what the GPU issue asks of it: each case's implementations
with their bandwidth or FLOP rate as a fraction of the ceilings measured in the same run and their ratio to
torch or eager; the targets, met or not, per backend; which backend is faster on the embedding-bag cases
(the default is to be the faster one); and each Triton kernel's fastest launch shape against its default.

    python bench/summary_gpu.py bench/results/<gpu>-gpu.json
"""

from __future__ import annotations

import json
import sys

# (description, case, figure, minimum): figure of each mprec implementation of the case.
TARGETS = [
    ("embedding bag float32 >= 75% of copy bandwidth", "embedding_bag_float32", "of_copy", 0.75),
    ("embedding bag float32 >= 1.5x torch", "embedding_bag_float32", "vs_torch", 1.5),
    ("embedding bag bfloat16 >= 75% of copy bandwidth", "embedding_bag_bfloat16", "of_copy", 0.75),
    ("embedding bag bfloat16 >= 1.5x torch", "embedding_bag_bfloat16", "vs_torch", 1.5),
    ("26 Kaggle tables >= 1.5x torch", "kaggle_26_tables", "vs_torch", 1.5),
    ("fused DHE float32 >= 3x eager", "dhe_float32", "vs_eager", 3.0),
    ("fused DHE bfloat16 >= 3x eager", "dhe_bfloat16", "vs_eager", 3.0),
]
BACKEND_CASES = ["embedding_bag_float32", "embedding_bag_float32_train", "embedding_bag_bfloat16",
                 "embedding_bag_bfloat16_train", "kaggle_26_tables"]


def _figures(row) -> str:
    return "  ".join(f"{k}={v:.3g}" for k, v in row.items()
                     if k not in ("case", "impl", "median_ms") and isinstance(v, float))


def summarize(path) -> dict:
    """Prints the summary; returns the verdicts: targets (description, impl, value, met), backend wins and
    the best shape per shapes case."""
    doc = json.load(open(path))
    rows = doc["results"]
    machine = doc["machine"]
    by_case: dict = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    print(f"{machine.get('gpu') or 'no GPU (smoke run)'}; torch {machine['torch']}, triton {machine['triton']}, "
          f"backends {', '.join(machine['backends'])}; cases done: {', '.join(machine.get('cases_done', []))}")
    if machine.get("smoke"):
        print("a smoke run: toy sizes, no measurement; the targets below say nothing of the kernels")
    print()
    for case, entries in by_case.items():
        if case.startswith("shapes_"):
            continue
        for r in entries:
            print(f"{case:<28} {r['impl']:<16} {r['median_ms']:10.3f} ms  {_figures(r)}")
    print()

    targets = []
    print("targets:")
    for description, case, figure, minimum in TARGETS:
        impls = [r for r in by_case.get(case, []) if r["impl"].startswith("mprec_") and figure in r]
        if not impls:
            print(f"  {description}: not measured")
        for r in impls:
            met = r[figure] >= minimum
            targets.append((description, r["impl"], r[figure], met))
            print(f"  {description}: {r['impl']} {r[figure]:.3g} {'met' if met else 'NOT met'}")

    wins: dict = {}
    for case in BACKEND_CASES:
        impls = {r["impl"]: r["median_ms"] for r in by_case.get(case, []) if r["impl"].startswith("mprec_")}
        if len(impls) > 1:
            winner = min(impls, key=impls.get)
            wins[winner] = wins.get(winner, 0) + 1
    if wins:
        print("faster backend, embedding-bag cases: "
              + ", ".join(f"{impl[len('mprec_'):]} {n} of {sum(wins.values())}" for impl, n in wins.items()))

    best = {}
    shape_cases = [c for c in by_case if c.startswith("shapes_")]
    if shape_cases:
        print("launch shapes (the launcher's default, and the fastest other shape):")
    for case in shape_cases:
        entries = by_case[case]
        default = entries[0]
        timed = [r for r in entries[1:] if r["median_ms"] is not None and r.get("rel_error", 1.0) < 2e-2]
        refused = [r["impl"] for r in entries[1:] if r["median_ms"] is None]
        if not timed:
            print(f"  {case}: no alternative measured")
            continue
        fastest = min(timed, key=lambda r: r["median_ms"])
        best[case] = (fastest["impl"], default["median_ms"] / fastest["median_ms"])
        print(f"  {case}: {default['impl']} {default['median_ms']:.3f} ms; fastest other {fastest['impl']} "
              f"{fastest['median_ms']:.3f} ms ({best[case][1]:.2f}x){'; refused: ' + ', '.join(refused) if refused else ''}")
    return dict(targets=targets, backend_wins=wins, best_shapes=best)


if __name__ == "__main__":
    summarize(sys.argv[1] if len(sys.argv) > 1 else "bench/results/h200-gpu.json")

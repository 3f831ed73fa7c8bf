"""Reads a pytest-benchmark JSON of bench_dlrm.py and prints, per case (train / infer, fp32 / bf16), each
implementation's median step (round-robin timing), examples/s and ratios to eager; then the targets.

    python bench/summary_dlrm.py bench/results/<machine>-dlrm.json
"""

import json
import sys
from collections import defaultdict

SAME_PRECISION_TARGET = 1.3
FASTEST_TARGET = 2.0


def summarize(path):
    data = json.load(open(path))
    rate = defaultdict(dict)  # (phase, precision) -> impl -> examples/s
    ms = defaultdict(dict)
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        if "phase" not in e:
            continue
        rate[(e["phase"], e["precision"])][e["impl"]] = e["examples_per_second"]
        ms[(e["phase"], e["precision"])][e["impl"]] = e["interleaved_median_ms"]
    cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "?")
    lines = [f"machine: {cpu}; DLRM kaggle (26 tables, 33.8M rows, dim 16), batch 2048, Zipf(1.05) ids", "",
             f"{'phase':<6} {'precision':<9} {'impl':<9} {'median ms':>10} {'examples/s':>11} {'vs eager':>9} "
             f"{'vs eager fp32':>14}"]
    lines.append("-" * len(lines[-1]))
    for (phase, precision), impls in rate.items():
        for impl, r in impls.items():
            same = r / impls["eager"] if "eager" in impls else float("nan")
            fp32 = r / rate[(phase, "fp32")]["eager"]
            lines.append(f"{phase:<6} {precision:<9} {impl:<9} {ms[(phase, precision)][impl]:10.2f} {r:11,.0f} "
                         f"{same:8.2f}x {fp32:13.2f}x")
    lines += ["", "targets (ratios of examples/s, medians of steps timed round-robin in this run):"]
    for phase in ("train", "infer"):
        for precision in ("fp32", "bf16"):
            impls = rate.get((phase, precision), {})
            if "mprec" in impls and "eager" in impls:
                v = impls["mprec"] / impls["eager"]
                ok = "met" if v >= SAME_PRECISION_TARGET else "MISS"
                lines.append(f"  [{ok:>4}] {phase} {precision}: mprec >= {SAME_PRECISION_TARGET}x eager {precision}: {v:.2f}")
        modes = {p: rate[(phase, p)]["mprec"] for p in ("fp32", "bf16") if "mprec" in rate.get((phase, p), {})}
        if modes and "eager" in rate.get((phase, "fp32"), {}):
            best = max(modes, key=modes.get)
            v = modes[best] / rate[(phase, "fp32")]["eager"]
            ok = "met" if v >= FASTEST_TARGET else "MISS"
            lines.append(f"  [{ok:>4}] {phase}: mprec's fastest mode ({best}) >= {FASTEST_TARGET}x eager fp32: {v:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1]))

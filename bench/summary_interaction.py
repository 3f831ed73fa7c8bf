"""Reads a pytest-benchmark JSON of bench_interaction.py and prints, per case (Kaggle / Terabyte shape) and phase
(inference / training), each implementation's median (timed in turns of blocks), the pairs' GFLOP/s and their
fraction of the matmul rate measured in the same run, and the ratios to eager and to compiled eager; then the
targets.

    python bench/summary_interaction.py bench/results/<machine>-<isa>-interaction.json
"""

import json
import sys
from collections import defaultdict

import peer_isa
from run import target_line

# mprec against torch's interaction, eager and compiled, per case and phase: regression guards, set below the
# ratios measured when this benchmark was written on a 2-core EPYC (AVX-512 and AVX2 kernels alike: 5.7-6.6x eager
# and 3.7-4.9x compiled eager at D=16, 3.1-3.2x and 2.9-4.0x at D=64) by a margin for a shared machine's moves.
EAGER_TARGET = 2.5
COMPILED_TARGET = 2.0


def summarize(path):
    data = json.load(open(path))
    ms, flops = defaultdict(dict), {}
    rate, isa, block, shape = None, "?", None, {}
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        if e.get("kind") == "matmul_rate":
            rate = e["gflops"]["float32"]
            continue
        if "phase" not in e:
            continue
        key = (e["case"], e["dim"], e["phase"])
        ms[key][e["impl"]] = e["interleaved_median_ms"]
        flops[key] = e["flops"]
        isa, block = e.get("cpu_isa", isa), e.get("block", block)
        shape = {"tables": e.get("tables", "?"), "batch": e.get("batch", "?")}
    cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "?")
    peers = peer_isa.describe(data.get("machine_info", {}))
    mm = f"{rate:.0f} GFLOP/s" if rate else "not measured"
    lines = [f"machine: {cpu} ({isa}{peers}); float32 matmul (2048^3, measured in this run): {mm}", "",
             f"DLRM's dot interaction of the dense vector and {shape.get('tables', '?')} tables' vectors, batch "
             f"{shape.get('batch', '?')}, float32; infer: the forward under no_grad, train: the forward and both "
             "inputs' gradients", ""]
    header = (f"{'case':<10} {'D':>3} {'phase':<6} {'impl':<15} {'median ms':>10} {'GFLOP/s':>8} {'of mm':>6} "
              f"{'vs eager':>9} {'vs compiled':>12}")
    lines += [header, "-" * len(header)]
    for (case, dim, phase), impls in ms.items():
        for impl, t in impls.items():
            gflops = flops[(case, dim, phase)] / t / 1e6
            of_mm = f"{gflops / rate:6.0%}" if rate else ""
            eager = f"{impls['eager'] / t:8.2f}x" if "eager" in impls else ""
            compiled = f"{impls['eager compiled'] / t:11.2f}x" if "eager compiled" in impls else ""
            lines.append(f"{case:<10} {dim:>3} {phase:<6} {impl:<15} {t:10.3f} {gflops:8.1f} {of_mm:>6} {eager:>9} "
                         f"{compiled:>12}")
    timing = f"timed in turns of blocks of {block} calls, the first untimed" if block else "timed"
    lines += ["", f"targets (ratio = baseline median / mprec median, medians of calls {timing}, in this run):"]
    for (case, dim, phase), impls in ms.items():
        if "mprec" not in impls:
            continue
        for baseline, minimum in (("eager", EAGER_TARGET), ("eager compiled", COMPILED_TARGET)):
            if baseline in impls:
                v = impls[baseline] / impls["mprec"]
                text = f"{case} D={dim} {phase}: mprec >= {minimum}x {baseline}: {v:.2f}"
                lines.append(target_line(v >= minimum, text))
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1]))

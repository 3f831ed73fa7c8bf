"""Reads a pytest-benchmark JSON of bench_dlrm.py and prints, per case (train / infer, fp32 / bf16), each
implementation's median step (timed in turns of blocks; round-robin in older files), examples/s, ratios to eager
and the MLPs' GEMM floor as a fraction of the step; then the targets, which depend on the machine's kind (AVX-512
or AVX2), and mprec ahead of eager with both under torch.compile, where they were measured.

    python bench/summary_dlrm.py bench/results/<machine>-<isa>-dlrm.json
"""

import json
import sys
from collections import defaultdict

import peer_isa
from run import target_line

# mprec fp32 against eager fp32, by the ISA of the kernels that ran (AVX2 machines have no native bf16 and
# half the vector width: the MLPs, the same GEMMs for both, take most of either step).
SAME_PRECISION_TARGET = {"avx512": 2.0, "avx2": 1.3, "scalar": 1.3}
BF16_TARGET = 1.3         # mprec bf16 against eager bf16, where bf16 is native
FASTEST_TARGET = 2.0      # mprec's fastest mode against eager fp32, where bf16 is native
FLOOR_TARGET = 0.80       # the MLPs' GEMM floor as a fraction of mprec's fp32 step
COMPILED_TARGET = 1.0     # mprec against eager, both under torch.compile: ahead of what compiling torch gives


def summarize(path):
    data = json.load(open(path))
    rate = defaultdict(dict)  # (phase, precision) -> impl -> examples/s
    ms = defaultdict(dict)
    floor, isa, native, block = {}, "?", None, None
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        if "phase" not in e:
            continue
        rate[(e["phase"], e["precision"])][e["impl"]] = e["examples_per_second"]
        ms[(e["phase"], e["precision"])][e["impl"]] = e["interleaved_median_ms"]
        if "gemm_floor_ms" in e:
            floor[e["phase"]] = e["gemm_floor_ms"]
        isa, native = e.get("cpu_isa", isa), e.get("bf16_native", native)
        block = e.get("block", block)
    cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "?")
    bf16 = {True: "native bf16", False: "no native bf16", None: "bf16 ?"}[native]
    peers = peer_isa.describe(data.get("machine_info", {}))
    lines = [f"machine: {cpu} ({isa}, {bf16}{peers}); DLRM kaggle (26 tables, 33.8M rows, dim 16), batch 2048, "
             "Zipf(1.05) ids", ""]
    if floor:
        when = "timed in the same blocks as the fp32 steps" if block else "measured before the steps"
        lines += ["MLP GEMM floor (a step's products alone, each on the fastest of mprec's ways: MKL or oneDNN, either "
                  f"form of the weight gradient; {when}): "
                  + ", ".join(f"{phase} {v:.2f} ms" for phase, v in floor.items()), ""]
    lines.append(f"{'phase':<6} {'precision':<9} {'impl':<14} {'median ms':>10} {'examples/s':>11} {'vs eager':>9} "
                 f"{'vs eager fp32':>14} {'floor/step':>11}")
    lines.append("-" * len(lines[-1]))
    for (phase, precision), impls in rate.items():
        for impl, r in impls.items():
            same = r / impls["eager"] if "eager" in impls else float("nan")
            fp32 = r / rate[(phase, "fp32")]["eager"]
            step = ms[(phase, precision)][impl]
            of_floor = f"{floor[phase] / step:10.0%}" if precision == "fp32" and phase in floor else ""
            lines.append(f"{phase:<6} {precision:<9} {impl:<14} {step:10.2f} {r:11,.0f} {same:8.2f}x {fp32:13.2f}x "
                         f"{of_floor:>11}")
    if native is False:
        lines += ["", "bf16: not measured; this CPU has no native bfloat16, so precision auto (mprec.precision) runs "
                      "fp32 and fp32 is the fastest mode."]
    target = SAME_PRECISION_TARGET.get(isa, 1.3)
    timing = f"timed in turns of blocks of {block} steps, the first untimed" if block else "timed round-robin"
    lines += ["", f"targets ({isa} machine; ratios of examples/s, medians of steps {timing}, in this run):"]

    def check(ok, text):
        lines.append(target_line(ok, text))

    for phase in ("train", "infer"):
        impls = rate.get((phase, "fp32"), {})
        if "mprec" in impls and "eager" in impls:
            v = impls["mprec"] / impls["eager"]
            check(v >= target, f"{phase} fp32: mprec >= {target}x eager fp32: {v:.2f}")
            if phase in floor:
                f = floor[phase] / ms[(phase, "fp32")]["mprec"]
                check(f >= FLOOR_TARGET, f"{phase} fp32: GEMM floor >= {FLOOR_TARGET:.0%} of mprec's step: {f:.0%}")
        if "mprec-compiled" in impls and "eager-compiled" in impls:
            v = impls["mprec-compiled"] / impls["eager-compiled"]
            check(v >= COMPILED_TARGET, f"{phase} fp32, both under torch.compile: mprec >= {COMPILED_TARGET}x eager: "
                                        f"{v:.2f}")
        bf = rate.get((phase, "bf16"), {})
        if "mprec" in bf and "eager" in bf:
            v = bf["mprec"] / bf["eager"]
            check(v >= BF16_TARGET, f"{phase} bf16: mprec >= {BF16_TARGET}x eager bf16: {v:.2f}")
            v = bf["mprec"] / impls["eager"]
            check(v >= FASTEST_TARGET, f"{phase}: mprec's fastest mode (bf16, native here) >= {FASTEST_TARGET}x "
                                       f"eager fp32: {v:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1]))

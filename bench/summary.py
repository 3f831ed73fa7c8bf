"""Reads a pytest-benchmark JSON of bench_embedding_bag.py and prints, per case, each implementation's
median (of rounds timed round-robin over the implementations, where the run has them), GB/s, fraction of the measured read bandwidth and ratio to torch and FBGEMM; then the targets.

    python bench/summary.py bench/results/<machine>-<isa>-embedding_bag.json
"""

import json
import sys
from collections import defaultdict

import peer_isa
from run import target_line

# (description, case, reference case or peer, minimum ratio); ratio = reference median / mprec median ("gather"
# is the gather limit's median: mprec's rate as a fraction of the machine's random-row gather limit). On every
# kind of machine; "every case >= 1.0x torch" is checked below.
TARGETS = [
    ("standard case >= 1.2x torch", "standard f32 sum", ("torch", None), 1.2),
    ("D=16 >= 1.2x torch", "D=16", ("torch", None), 1.2),
    ("standard case >= 85% of the gather limit", "standard f32 sum", ("gather limit", None), 0.85),
    ("8 tables >= 1.2x 8 torch calls", "8 tables batched", ("torch x8", None), 1.2),
    ("8 tables in one call >= 1.0x 8 mprec calls", "8 tables batched", ("mprec x8", None), 1.0),
    # mprec's sum of the same table and ids, timed in the same rounds (mprec.benchmark.SUM_REFERENCE).
    ("max within 1.3x of mprec's sum", "max", ("mprec sum", None), 1 / 1.3),
    ("max with its argmax within 1.3x of mprec's sum", "max, argmax", ("mprec sum", None), 1 / 1.3),
    ("padding_idx within 1.3x of mprec's sum", "padding_idx", ("mprec sum", None), 1 / 1.3),
]
# The AVX-512 machines' earlier targets, where mprec was tuned first.
AVX512_TARGETS = [
    ("standard case >= 1.5x torch", "standard f32 sum", ("torch", None), 1.5),
    ("standard case >= 70% of read bandwidth", "standard f32 sum", ("bandwidth", None), 0.70),
    ("bf16 >= 1.5x torch", "bf16", ("torch", None), 1.5),
    ("8 tables >= 2x FBGEMM TBE", "8 tables batched", ("fbgemm", None), 2.0),
    ("8 tables >= 1.3x 8 torch calls", "8 tables batched", ("torch x8", None), 1.3),
]
GATHER = "gather limit"


def load(path):
    data = json.load(open(path))
    medians = defaultdict(dict)
    info = {}
    bandwidth = None
    for b in data["benchmarks"]:
        extra = b.get("extra_info", {})
        if extra.get("kind") == "read_bandwidth":
            bandwidth = extra["gbps"]
            info["flush_bytes"] = extra.get("flush_bytes")
            continue
        # Round-robin medians where the run has them (every implementation in turn: same moments, same caches).
        medians[extra["case"]][extra["impl"]] = extra.get("interleaved_median_ms", b["stats"]["median"] * 1e3)
        info[extra["case"]] = {**info.get(extra["case"], {}), **extra}
    return data, medians, info, bandwidth


def summarize(path):
    data, medians, info, bandwidth = load(path)
    if bandwidth is None:
        raise SystemExit(f"{path}: no read-bandwidth measurement (test_read_bandwidth) in this run")
    flush = info.pop("flush_bytes", None)
    cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "?")
    isa = data.get("machine_info", {}).get("mprec_cpu_isa") or next(
        (e.get("cpu_isa") for e in info.values() if e.get("cpu_isa")), "?")
    peers = peer_isa.describe(data.get("machine_info", {}))
    row_prefetch = data.get("machine_info", {}).get("mprec_row_prefetch")
    prefetch = f", rows prefetched: {row_prefetch.replace('_', ' ')}" if row_prefetch else ""
    lines = [f"machine: {cpu} ({isa}{prefetch}{peers}), read bandwidth {bandwidth:.1f} GB/s (measured in this run); "
             "gather limit: every byte of the case's own rows read by a plain prefetching loop with the kernels' loads, "
             "the best of its settings, in this run"
             + (f"; caches flushed before each timed call by reading {flush >> 20} MiB" if flush else ""), ""]
    header = (f"{'case':<18} {'impl':<12} {'median ms':>10} {'GB/s':>7} {'of bw':>6} {'of gather':>10} {'vs torch':>9} "
              f"{'vs fbgemm':>10}")
    lines += [header, "-" * len(header)]
    below_torch = []
    for case, impls in medians.items():
        gigabytes = info[case]["bytes"] / 1e9
        torch_ms = impls.get("torch", impls.get(f"torch x{info[case]['tables']}"))
        for impl, ms in sorted(impls.items(), key=lambda kv: kv[0] != "mprec"):
            gbps = gigabytes / (ms * 1e-3)
            vs_torch = f"{torch_ms / ms:8.2f}x" if torch_ms else ""
            vs_fbgemm = f"{impls['fbgemm'] / ms:9.2f}x" if "fbgemm" in impls else ""
            of_gather = f"{impls[GATHER] / ms:10.0%}" if GATHER in impls and impl != GATHER else ""
            lines.append(f"{case:<18} {impl:<12} {ms:10.2f} {gbps:7.1f} {gbps / bandwidth:6.0%} {of_gather:>10} "
                         f"{vs_torch:>9} {vs_fbgemm:>10}")
        if torch_ms and "mprec" in impls and torch_ms / impls["mprec"] < 1.0:
            below_torch.append(f"{case} {torch_ms / impls['mprec']:.2f}")
    for case in (case for case in medians if info[case].get("huge_pages_asked")):
        lines.append(f"{case}: the table on 2 MiB pages, as mprec's modules allocate theirs"
                     if info[case]["huge_pages"] else f"{case}: transparent huge pages are off here, so 4 KiB pages")
    warm = [case for case in medians if info[case].get("warm")]
    if warm:
        lines.append(f"{', '.join(warm)}: the caches warm, not flushed before each call")
    settings = defaultdict(list)  # the gather limit's prefetch setting -> the cases it was fastest for
    for case in medians:
        if info[case].get("gather_setting"):
            settings[info[case]["gather_setting"]].append(case)
    if settings:
        lines.append("gather limit's prefetch, the fastest of its settings per case, in the case's cache state:")
        lines += [f"  {setting}: {', '.join(cases)}" for setting, cases in settings.items()]
    lines += ["", f"targets ({isa} machine; ratio = baseline median / mprec median):"]
    lines.append(target_line(not below_torch, "every case >= 1.0x torch"
                             + (f": below in {', '.join(below_torch)}" if below_torch else "")))
    for text, case, (peer, other_case), minimum in TARGETS + (AVX512_TARGETS if isa == "avx512" else []):
        if case not in medians or "mprec" not in medians[case]:
            lines.append(f"  [ n/a] {text}: not measured")
            continue
        ours = medians[case]["mprec"]
        if peer == "bandwidth":
            value = info[case]["bytes"] / 1e9 / (ours * 1e-3) / bandwidth
        else:
            base = medians.get(other_case or case, {}).get(peer)
            if base is None:
                lines.append(f"  [ n/a] {text}: {peer} not measured")
                continue
            value = base / ours
        lines.append(target_line(value >= minimum, f"{text}: {value:.2f} (need {minimum:.2f})"))
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(sys.argv[1]))

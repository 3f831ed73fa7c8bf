"""The ``mprec`` command.

    mprec                 the main job: a short benchmark table of the ops against their peers
    mprec bench [--quick] the same table (--quick: smaller tables, for a smoke run)
    mprec info            CPU kernel variant, build and threading information
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

import mprec
from mprec.benchmark import EMBEDDING_BAG_CASES, median_ms, read_bandwidth

# The cases of the main job's table: the headline ones of the embedding-bag benchmark (bench/ has all).
MAIN_CASES = ["standard f32 sum", "mean", "max", "padding_idx", "weighted", "bf16", "int8", "8 tables batched"]


def bench_table(quick: bool = False, out=sys.stdout) -> list[dict]:
    bandwidth = read_bandwidth(gib=0.25 if quick else 1.0)
    print(f"mprec {mprec.__version__}  cpu_isa={mprec.cpu_isa()}  threads={torch.get_num_threads()}  "
          f"read bandwidth {bandwidth:.1f} GB/s (measured now)", file=out)
    print(f"{'case':<18} {'impl':<9} {'median ms':>10} {'GB/s':>7} {'x mprec':>8}", file=out)
    rows = []
    for case in EMBEDDING_BAG_CASES:
        if case.name not in MAIN_CASES:
            continue
        if quick:
            case = dataclasses.replace(case, num_rows=50_000, bags=512, rounds=5)
        impls = case.build()
        times = {name: median_ms(fn, case.rounds) for name, fn in impls.items()}
        del impls
        for name, ms in times.items():
            gbps = case.row_bytes / 1e9 / (ms * 1e-3)
            slower = ms / times["mprec"]
            print(f"{case.name:<18} {name:<9} {ms:10.2f} {gbps:7.1f} {slower:7.2f}x", file=out)
            rows.append(dict(case=case.name, impl=name, median_ms=ms, gbps=gbps))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mprec", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    bench = sub.add_parser("bench", help="benchmark table of the ops against their peers")
    bench.add_argument("--quick", action="store_true", help="small tables: a smoke run, not a measurement")
    bench.add_argument("--json", help="also write the rows to this file")
    sub.add_parser("info", help="CPU kernel variant, build and threading information")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(json.dumps(dict(cpu_isa=mprec.cpu_isa(), supported=mprec.supported_cpu_isas(), **mprec.build_info()),
                         indent=2))
        return 0
    rows = bench_table(quick=getattr(args, "quick", False))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

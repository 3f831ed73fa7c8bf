"""XLA benchmark: the lowered DLRM on XLA's CPU client against eager CPU, per batch size, in one run.

    make bench-xla      # in the XLA lane's environment (torch 2.9 + torch_xla), PJRT_DEVICE=CPU;
                        # writes bench/results/<cpu>-<threads>t-xla.json

Three implementations of the same trained-shape model (Kaggle preset, 26 features, tables capped at 100k
rows, DHE k = 1024 with the 1024-128-16 decoder), one id per feature per example:
* ``mprec_cpu``: the model itself on the CPU (mprec's kernels): the scheduler's cpu path;
* ``lowered_eager``: the lowered form (:mod:`mprec.lower.forms`) run eagerly on the CPU, no XLA;
* ``xla_cpu``: the lowered form compiled by XLA for its CPU client (one graph per batch bucket, compiled
  during warm-up), as the scheduler's xla path runs it, host padding and transfers included.
XLA on a CPU is not a TPU: the figures say what the lowering costs and how XLA's CPU backend compares,
not what a TPU would do. Medians of round-robin repetitions, so every implementation sees the same moments
of a shared machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch

from mprec.data import KAGGLE_TABLE_SIZES
from mprec.lower import xla
from mprec.models import DLRM


def make_batch(n, sizes, seed):
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, 13, generator=g)
    indices = torch.cat([torch.randint(0, s, (n,), generator=g) for s in sizes])
    offsets = torch.arange(0, indices.numel() + 1)
    return dense, indices, offsets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="results JSON (default: bench/results/<cpu>-<threads>t-xla.json)")
    parser.add_argument("--batch-sizes", default="1,16,128,1024")
    parser.add_argument("--representations", default="table,dhe,hybrid")
    parser.add_argument("--repetitions", type=int, default=15)
    args = parser.parse_args(argv)
    import torch_xla

    device = torch_xla.device()
    sizes = [min(s, 100_000) for s in KAGGLE_TABLE_SIZES]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    results = []
    for rep in args.representations.split(","):
        torch.manual_seed(0)
        model = DLRM.preset("kaggle", sizes, representations=[rep] * len(sizes),
                            dhe=dict(k=1024, m=1_000_000, decoder=(128,))).eval()
        lowered = xla.lower(copy.deepcopy(model), bag_size=1)
        on_xla = xla.lower(copy.deepcopy(model), bag_size=1).to(device)
        impls = {
            "mprec_cpu": lambda b: model(*b),
            "lowered_eager": lambda b: lowered.serve(*b),
            "xla_cpu": lambda b: on_xla.serve(*b),
        }
        for n in batch_sizes:
            batches = [make_batch(n, sizes, seed) for seed in range(3)]
            with torch.no_grad():
                expected = model(*batches[0])
                for name, fn in impls.items():  # warm-up: XLA compiles this bucket here
                    out = fn(batches[0])
                    error = float((out - expected).abs().max())
                    if error > 1e-3:
                        raise RuntimeError(f"{name} differs from the model by {error} at batch {n} ({rep})")
                times = {name: [] for name in impls}
                for r in range(args.repetitions):
                    for name, fn in impls.items():
                        b = batches[r % len(batches)]
                        t0 = time.perf_counter()
                        fn(b)
                        times[name].append(time.perf_counter() - t0)
            base = statistics.median(times["mprec_cpu"])
            for name, ts in times.items():
                ms = statistics.median(ts) * 1e3
                results.append({"representation": rep, "batch": n, "impl": name, "median_ms": ms,
                                "vs_mprec_cpu": base * 1e3 / ms})
                print(f"{rep:<7} {n:>6} {name:<14} {ms:10.3f} ms  x{base * 1e3 / ms:6.2f} vs mprec_cpu", flush=True)
    info = {"torch": torch.__version__, "torch_xla": torch_xla.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "xla_device": str(device)}
    if args.out is None:
        from mprec.sched.profile import machine_name

        args.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{machine_name()}-xla.json")
    with open(args.out, "w") as f:
        json.dump({"machine": info, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

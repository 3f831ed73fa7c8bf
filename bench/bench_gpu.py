"""GPU benchmark: mprec's CUDA kernels (Triton and CUDA C++) against torch's CUDA ops, in one run.

    python bench/bench_gpu.py --out bench/results/<gpu>-gpu.json      (bench/gpu.sh runs it)

GPU work is timed with CUDA events (``triton.testing.do_bench``: warm-up, then the median of repetitions
with the L2 flushed between them), not with pytest-benchmark's host clock. Every timed call is a whole
op call as a user makes it, including mprec's read-back of the kernels' error flag.

Cases:
* ``machine``: the ceilings the others are divided by, measured in the same run: a device-to-device copy
  (bytes read + written per second) and float32 / bfloat16 matmul rates on random data.
* ``embedding_bag``: E = 10^7 rows, D = 128, B = 65,536 bags of L = 40 uniform random ids, sum; float32
  and bfloat16 tables; forward, and forward + backward (dense weight gradient). GB/s counts the rows read
  (B L D x element size), plus indices and output.
* ``kaggle``: the 26 Criteo Kaggle tables (33.8M rows, D = 128, one id per bag, B = 65,536): torch as 26
  ``embedding_bag`` calls, mprec as one ``batched_embedding_bag`` call.
* ``dhe``: k = 1024 hashes, decoder 1024-512-256-64, 65,536 ids: the eager computation (the MP-Rec
  artifact's ``torch.outer(...).fmod`` hashing, then ``nn.Linear`` layers) against mprec's fused
  ``dhe_encode_linear`` + the rest of the decoder; TFLOP/s against the measured matmul rate.

Each mprec case runs once per available backend (``triton``, and ``cuda`` when the CUDA C++ kernels are
built), side by side.

``--smoke`` runs every case at toy sizes, and without a GPU on the CPU (the CPU kernels, host-clock
timing): not a measurement, but the whole script, so that a mistake in it shows up in the test suite
(tests/test_bench_gpu.py) rather than in a GPU machine's short lease.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
import triton.testing
from torch import nn

import mprec
from mprec.data import KAGGLE_TABLE_SIZES
from mprec.ops import gpu

MS = 1e-3
ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"

# The cases' sizes: the issue's (FULL) and toy ones that run anywhere in seconds (SMOKE).
FULL = dict(copy_elements=1 << 30, matmul=8192, rows=10**7, dim=128, batch=65536, length=40, kaggle_divisor=1,
            dhe_ids=65536, dhe_k=1024)
SMOKE = dict(copy_elements=1 << 16, matmul=64, rows=1000, dim=128, batch=64, length=5, kaggle_divisor=100_000,
             dhe_ids=64, dhe_k=64)


def bench(fn, rep_ms=400):
    """Median milliseconds of ``fn`` (CUDA events; warm-up and repetitions in milliseconds of run time)."""
    if not ON_CUDA:  # --smoke on a machine without a GPU: a host clock, a few calls
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[1]
    return triton.testing.do_bench(fn, warmup=100, rep=rep_ms, return_mode="median")


def empty_cache():
    if ON_CUDA:
        torch.cuda.empty_cache()


def record(results, case, impl, ms, **extra):
    entry = {"case": case, "impl": impl, "median_ms": ms, **extra}
    results.append(entry)
    extras = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
    print(f"{case:<28} {impl:<22} {ms:9.3f} ms  {extras}", flush=True)


def backends():
    if not ON_CUDA:
        return ["cpu"]  # --smoke without a GPU: the CPU kernels
    names = ["triton"] if gpu.triton_available() else []
    return names + (["cuda"] if gpu.cuda_kernels_built() else [])


def use(backend):
    if backend != "cpu":
        gpu.set_backend(backend)


# --- machine ceilings ----------------------------------------------------------------------------------

def copy_bandwidth(results, n):
    src = torch.randn(n // 4, device=DEVICE).repeat(4)  # 4 GiB of float32 at full size: far past the L2
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    copy_gbs = 2 * src.numel() * 4 / (ms * MS) / 1e9
    record(results, "machine", "copy", ms, gb_per_s=copy_gbs)
    return copy_gbs


def machine(results, size):
    copy_gbs = copy_bandwidth(results, size["copy_elements"])
    rates = {}
    n = size["matmul"]
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(n, n, device=DEVICE, dtype=dtype)
        b = torch.randn(n, n, device=DEVICE, dtype=dtype)
        ms = bench(lambda: a @ b)
        rates[dtype] = 2 * n**3 / (ms * MS) / 1e12
        record(results, "machine", f"matmul_{str(dtype).split('.')[-1]}", ms, tflop_per_s=rates[dtype])
    return copy_gbs, rates


# --- embedding bags ------------------------------------------------------------------------------------

def embedding_bag_cases(results, copy_gbs, size):
    for dtype in (torch.float32, torch.bfloat16):
        embedding_bag_case(results, copy_gbs, dtype, size["rows"], size["dim"], size["batch"], size["length"])
        empty_cache()


def embedding_bag_case(results, copy_gbs, dtype, rows, dim, batch, length):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    weight = torch.randn(rows, dim, device=DEVICE, dtype=dtype, generator=g)
    indices = torch.randint(0, rows, (batch * length,), device=DEVICE, generator=g)
    offsets = torch.arange(0, batch * length, length, device=DEVICE)
    moved = batch * length * dim * weight.element_size() + indices.numel() * 8 + batch * dim * weight.element_size()
    name = f"embedding_bag_{str(dtype).split('.')[-1]}"
    torch_ms = bench(lambda: torch.nn.functional.embedding_bag(indices, weight, offsets, mode="sum"))
    record(results, name, "torch", torch_ms, gb_per_s=moved / (torch_ms * MS) / 1e9,
           of_copy=moved / (torch_ms * MS) / 1e9 / copy_gbs)
    expected = torch.nn.functional.embedding_bag(indices, weight.float(), offsets, mode="sum")
    for backend in backends():
        use(backend)
        out = mprec.ops.embedding_bag(weight, indices, offsets, "sum")
        error = ((out.float() - expected).norm() / expected.norm()).item()
        ms = bench(lambda: mprec.ops.embedding_bag(weight, indices, offsets, "sum"))
        record(results, name, f"mprec_{backend}", ms, gb_per_s=moved / (ms * MS) / 1e9,
               of_copy=moved / (ms * MS) / 1e9 / copy_gbs, vs_torch=torch_ms / ms, rel_error=error)

    # Forward + backward (dense weight gradient), as in training.
    leaf = weight.detach().requires_grad_(True)
    grad = torch.randn(batch, dim, device=DEVICE, dtype=dtype, generator=g)

    def torch_step():
        leaf.grad = None
        torch.nn.functional.embedding_bag(indices, leaf, offsets, mode="sum").backward(grad)

    torch_ms = bench(torch_step)
    record(results, name + "_train", "torch", torch_ms)
    for backend in backends():
        use(backend)

        def mprec_step():
            leaf.grad = None
            mprec.ops.embedding_bag(leaf, indices, offsets, "sum").backward(grad)

        ms = bench(mprec_step)
        record(results, name + "_train", f"mprec_{backend}", ms, vs_torch=torch_ms / ms)


def kaggle_case(results, copy_gbs, size):
    dim, batch = size["dim"], size["batch"]
    table_rows = [max(1, r // size["kaggle_divisor"]) for r in KAGGLE_TABLE_SIZES]
    g = torch.Generator(device=DEVICE).manual_seed(1)
    weights = [torch.randn(r, dim, device=DEVICE, generator=g) for r in table_rows]
    per_table = [torch.randint(0, r, (batch,), device=DEVICE, generator=g) for r in table_rows]
    indices = torch.cat(per_table)
    offsets = torch.arange(0, indices.numel() + 1, device=DEVICE)
    single_offsets = torch.arange(0, batch, device=DEVICE)
    moved = len(weights) * batch * dim * 4 * 2 + indices.numel() * 8
    torch_ms = bench(lambda: torch.cat([torch.nn.functional.embedding_bag(i, w, single_offsets, mode="sum")
                                        for i, w in zip(per_table, weights)], dim=1))
    record(results, "kaggle_26_tables", "torch", torch_ms, gb_per_s=moved / (torch_ms * MS) / 1e9)
    for backend in backends():
        use(backend)
        ms = bench(lambda: mprec.ops.batched_embedding_bag(weights, indices, offsets, "sum"))
        record(results, "kaggle_26_tables", f"mprec_{backend}", ms, gb_per_s=moved / (ms * MS) / 1e9,
               of_copy=moved / (ms * MS) / 1e9 / copy_gbs, vs_torch=torch_ms / ms)


# --- DHE -----------------------------------------------------------------------------------------------------

def dhe_case(results, rates, size, m=1_000_000, hidden=(512, 256, 64)):
    k, n = size["dhe_k"], size["dhe_ids"]
    widths = (k, *hidden)
    a, b, p = mprec.ops.dhe_hash_parameters(k, m)
    a, b = a.to(DEVICE), b.to(DEVICE)
    ids = torch.randint(0, m, (n,), device=DEVICE)
    flops = 2 * n * sum(x * y for x, y in zip(widths, widths[1:]))
    for dtype in (torch.float32, torch.bfloat16):
        decoder = nn.Sequential(*[layer for i, (x, y) in enumerate(zip(widths, widths[1:]))
                                  for layer in ([nn.Linear(x, y)] + ([nn.ReLU()] if i < len(widths) - 2 else []))])
        decoder = decoder.to(DEVICE, dtype).eval()
        first, rest = decoder[0], decoder[1:]

        @torch.no_grad()
        def eager():
            h = torch.outer(ids, a).add(b).fmod(p).fmod(m)
            return decoder(h.to(dtype).div(m - 1).mul(2).sub(1))

        @torch.no_grad()
        def fused():
            x = mprec.ops.dhe_encode_linear(ids, a, b, p, m, "uniform", first.weight, first.bias, "relu")
            return rest[1:](x)  # rest[0] is the ReLU the fused op applied

        expected = eager().double()
        error = ((fused().double() - expected).norm() / expected.norm()).item()
        name = f"dhe_{str(dtype).split('.')[-1]}"
        eager_ms = bench(eager)
        record(results, name, "eager", eager_ms, tflop_per_s=flops / (eager_ms * MS) / 1e12)
        ms = bench(fused)
        record(results, name, "mprec_triton" if ON_CUDA else "mprec_cpu", ms, tflop_per_s=flops / (ms * MS) / 1e12,
               of_matmul=flops / (ms * MS) / 1e12 / rates[dtype], vs_eager=eager_ms / ms, rel_error=error)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="results JSON")
    parser.add_argument("--cases", default="embedding_bag,kaggle,dhe")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, on the CPU without a GPU: a check of this "
                                                             "script, not a measurement")
    args = parser.parse_args(argv)
    if not ON_CUDA and not args.smoke:
        print("bench_gpu: no CUDA device", file=sys.stderr)
        return 2
    unknown = sorted(set(args.cases.split(",")) - {"embedding_bag", "kaggle", "dhe"})
    if unknown:
        print(f"bench_gpu: unknown cases {unknown}", file=sys.stderr)
        return 2
    size = SMOKE if args.smoke else FULL
    # torch's own float32 matmuls default to full float32; keep both sides of every comparison there.
    torch.backends.cuda.matmul.allow_tf32 = False
    results = []
    started = time.time()
    copy_gbs, rates = machine(results, size)
    cases = args.cases.split(",")
    if "embedding_bag" in cases:
        embedding_bag_cases(results, copy_gbs, size)
    if "kaggle" in cases:
        kaggle_case(results, copy_gbs, size)
        empty_cache()
    if "dhe" in cases:
        dhe_case(results, rates, size)
    info = {
        "gpu": torch.cuda.get_device_name() if ON_CUDA else None,
        "smoke": args.smoke,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "backends": backends(),
        "seconds": round(time.time() - started, 1),
    }
    with open(args.out, "w") as f:
        json.dump({"machine": info, "results": results}, f, indent=1)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())


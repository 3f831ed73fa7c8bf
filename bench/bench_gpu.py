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

* ``eb_shapes``, ``dhe_shapes``: the Triton kernels' launch shapes (block sizes, warps, pipeline stages) on
  the cases above, the launcher's default among alternatives, each checked against the default's output:
  which shape the launchers should choose, measured.

Each mprec case runs once per available backend (``triton``, and ``cuda`` when the CUDA C++ kernels are
built), side by side.

``--smoke`` runs every case at toy sizes, and without a GPU on the CPU (the CPU kernels, host-clock
timing): not a measurement, but the whole script, so that a mistake in it shows up in the test suite
(tests/test_bench_gpu.py) rather than in a GPU machine's short lease.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"
if not ON_CUDA:  # --smoke: the Triton launch shapes run in Triton's interpreter, chosen when triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.testing  # noqa: E402
from torch import nn  # noqa: E402

import mprec  # noqa: E402
from mprec.data import KAGGLE_TABLE_SIZES  # noqa: E402
from mprec.kernels import dhe as triton_dhe  # noqa: E402
from mprec.kernels import embedding_bag as triton_eb  # noqa: E402
from mprec.ops import gpu  # noqa: E402

MS = 1e-3
CASES = ("embedding_bag", "kaggle", "dhe", "eb_shapes", "dhe_shapes")

# The cases' sizes: the issue's (FULL) and toy ones that run anywhere in seconds (SMOKE).
FULL = dict(copy_elements=1 << 30, matmul=8192, rows=10**7, dim=128, batch=65536, length=40, kaggle_divisor=1,
            dhe_ids=65536, dhe_k=1024, shape_bags=65536, lookup_bags=65536 * 26, shapes=None)
# The launch shapes run in Triton's interpreter without a GPU, a Python loop over programs: a few bags, and
# the first two shapes of each list.
SMOKE = dict(copy_elements=1 << 16, matmul=64, rows=1000, dim=128, batch=64, length=5, kaggle_divisor=100_000,
             dhe_ids=64, dhe_k=64, shape_bags=4, lookup_bags=4, shapes=2)


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


def relative_error(out, expected):
    return ((out.double() - expected.double()).norm() / expected.double().norm()).item()


def bag_bytes(bags, length, dim, itemsize):
    """What pooling ``bags`` bags of ``length`` lookups must move: the rows read, the int64 indices, the output."""
    return bags * length * dim * itemsize + bags * length * 8 + bags * dim * itemsize


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
    moved = bag_bytes(batch, length, dim, weight.element_size())
    name = f"embedding_bag_{str(dtype).split('.')[-1]}"
    torch_ms = bench(lambda: torch.nn.functional.embedding_bag(indices, weight, offsets, mode="sum"))
    record(results, name, "torch", torch_ms, gb_per_s=moved / (torch_ms * MS) / 1e9,
           of_copy=moved / (torch_ms * MS) / 1e9 / copy_gbs)
    expected = torch.nn.functional.embedding_bag(indices, weight.float(), offsets, mode="sum")
    for backend in backends():
        use(backend)
        out = mprec.ops.embedding_bag(weight, indices, offsets, "sum")
        error = relative_error(out, expected)
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
    moved = bag_bytes(len(weights) * batch, 1, dim, 4)
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

        error = relative_error(fused(), eager())
        name = f"dhe_{str(dtype).split('.')[-1]}"
        eager_ms = bench(eager)
        record(results, name, "eager", eager_ms, tflop_per_s=flops / (eager_ms * MS) / 1e12)
        ms = bench(fused)
        record(results, name, "mprec_triton" if ON_CUDA else "mprec_cpu", ms, tflop_per_s=flops / (ms * MS) / 1e12,
               of_matmul=flops / (ms * MS) / 1e12 / rates[dtype], vs_eager=eager_ms / ms, rel_error=error)


# --- launch shapes ---------------------------------------------------------------------------------------------

# (BLOCK_D, BLOCK_L, num_warps) for a 128-wide table: more lookups a program, more warps, half rows.
EB_SHAPES = [(128, 1, 1), (128, 2, 1), (128, 4, 2), (128, 8, 2), (128, 8, 4), (128, 16, 4), (128, 16, 8),
             (128, 32, 4), (128, 32, 8), (64, 8, 2)]
# (BLOCK_N, BLOCK_H, BLOCK_K, num_warps, num_stages) for the fused DHE layer.
# Each takes seconds to compile (4 to 14 on a 2-core development machine, for sm_90), so the list is short.
DHE_SHAPES = [(64, 128, 32, 4, 3), (128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (64, 256, 64, 8, 3),
              (128, 256, 32, 8, 3), (128, 64, 64, 4, 3)]


def eb_shapes_case(results, copy_gbs, size):
    """The embedding-bag kernel over its shapes: the standard case (float32 and bfloat16) and the Kaggle
    tables' bags of one lookup."""
    g = torch.Generator(device=DEVICE).manual_seed(2)
    rows, dim, batch, length = size["rows"], size["dim"], size["shape_bags"], size["length"]
    eb_shapes = EB_SHAPES[: size["shapes"]]
    offsets = torch.arange(0, batch * length, length, device=DEVICE)
    indices = torch.randint(0, rows, (batch * length,), device=DEVICE, generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        weight = torch.randn(rows, dim, device=DEVICE, dtype=dtype, generator=g)
        moved = bag_bytes(batch, length, dim, weight.element_size())
        tables = triton_eb.table_args([weight], [-1])
        _eb_shapes(results, f"shapes_embedding_bag_{str(dtype).split('.')[-1]}", tables, indices, offsets, batch,
                   moved, copy_gbs, triton_eb.default_blocks(dim, weight.element_size()), eb_shapes)
        del weight, tables
        empty_cache()

    # The Kaggle shape's bags: one lookup each, over tables of every size (the largest one's rows here).
    kaggle_rows = max(1, KAGGLE_TABLE_SIZES[0] // size["kaggle_divisor"])
    weight = torch.randn(kaggle_rows, dim, device=DEVICE, generator=g)
    single = torch.randint(0, kaggle_rows, (size["lookup_bags"],), device=DEVICE, generator=g)
    tables = triton_eb.table_args([weight], [-1])
    moved = bag_bytes(single.numel(), 1, dim, 4)
    _eb_shapes(results, "shapes_one_lookup_bags", tables, single, torch.arange(0, single.numel(), device=DEVICE),
               single.numel(), moved, copy_gbs, triton_eb.default_blocks(dim, 4), eb_shapes)
    del weight, tables


def dhe_shapes_case(results, rates, size):
    """The fused DHE layer (k = 1024 into 512, ReLU) over its shapes, float32 and bfloat16."""
    g = torch.Generator(device=DEVICE).manual_seed(3)
    dhe_shapes = DHE_SHAPES[: size["shapes"]]
    k, n, m = size["dhe_k"], size["dhe_ids"], 1_000_000
    a, b, p = mprec.ops.dhe_hash_parameters(k, m)
    a, b = a.to(DEVICE), b.to(DEVICE)
    ids = torch.randint(0, m, (n,), device=DEVICE, generator=g)
    hidden = 512
    flops = 2 * n * k * hidden
    for dtype in (torch.float32, torch.bfloat16):
        layer = nn.Linear(k, hidden).to(DEVICE, dtype)
        error = torch.zeros(1, dtype=torch.int32, device=DEVICE)

        def run(blocks=None):
            return triton_dhe.encode_linear(ids, a, b, p, m, False, layer.weight, layer.bias, "relu", error, blocks)

        name = f"shapes_dhe_{str(dtype).split('.')[-1]}"
        with torch.no_grad():
            expected = run()
            default_ms = bench(run)
            record(results, name, "default", default_ms, tflop_per_s=flops / (default_ms * MS) / 1e12,
                   of_matmul=flops / (default_ms * MS) / 1e12 / rates[dtype])
            for blocks in dhe_shapes:
                _timed_shape(results, name, blocks, lambda: run(blocks), expected, default_ms,
                             tflop_per_s=lambda ms: flops / (ms * MS) / 1e12,
                             of_matmul=lambda ms: flops / (ms * MS) / 1e12 / rates[dtype])
        assert error.item() == 0


def _eb_shapes(results, name, tables, indices, offsets, bags, moved, copy_gbs, default_blocks, shapes):
    error = torch.zeros(1, dtype=torch.int32, device=DEVICE)

    def run(blocks=None):
        return triton_eb.pool(tables, indices, offsets, bags, 0, None, error, blocks)[0]

    expected = run()
    default_ms = bench(run)
    record(results, name, f"default {default_blocks}", default_ms, gb_per_s=moved / (default_ms * MS) / 1e9,
           of_copy=moved / (default_ms * MS) / 1e9 / copy_gbs)
    for blocks in shapes:
        _timed_shape(results, name, blocks, lambda: run(blocks), expected, default_ms,
                     gb_per_s=lambda ms: moved / (ms * MS) / 1e9, of_copy=lambda ms: moved / (ms * MS) / 1e9 / copy_gbs)
    assert error.item() == 0


def _timed_shape(results, name, blocks, fn, expected, default_ms, **figures):
    try:
        out = fn()
    except Exception as failure:  # a shape the compiler refuses (too many registers or too much shared memory)
        results.append({"case": name, "impl": str(blocks), "median_ms": None, "failed": repr(failure)[:200]})
        print(f"{name:<28} {str(blocks):<22}   refused: {repr(failure)[:120]}", flush=True)
        return
    ms = bench(fn)
    record(results, name, str(blocks), ms, **{k: f(ms) for k, f in figures.items()}, vs_default=default_ms / ms,
           rel_error=relative_error(out, expected))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="results JSON")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--smoke", action="store_true", help="toy sizes, on the CPU without a GPU: a check of this "
                                                             "script, not a measurement")
    args = parser.parse_args(argv)
    if not ON_CUDA and not args.smoke:
        print("bench_gpu: no CUDA device", file=sys.stderr)
        return 2
    unknown = sorted(set(args.cases.split(",")) - set(CASES))
    if unknown:
        print(f"bench_gpu: unknown cases {unknown}", file=sys.stderr)
        return 2
    size = SMOKE if args.smoke else FULL
    # torch's own float32 matmuls default to full float32; keep both sides of every comparison there.
    torch.backends.cuda.matmul.allow_tf32 = False
    results = []
    started = time.time()
    info = {
        "gpu": torch.cuda.get_device_name() if ON_CUDA else None,
        "smoke": args.smoke,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "backends": backends(),
    }

    def save(done):
        # After every case: a run stopped by its time limit keeps what it measured.
        info.update(seconds=round(time.time() - started, 1), cases_done=done)
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=1)
        os.replace(tmp, args.out)

    copy_gbs, rates = machine(results, size)
    done = ["machine"]
    save(done)
    runs = {"embedding_bag": lambda: embedding_bag_cases(results, copy_gbs, size),
            "kaggle": lambda: kaggle_case(results, copy_gbs, size),
            "dhe": lambda: dhe_case(results, rates, size),
            "eb_shapes": lambda: eb_shapes_case(results, copy_gbs, size),
            "dhe_shapes": lambda: dhe_shapes_case(results, rates, size)}
    for case in args.cases.split(","):
        runs[case]()
        empty_cache()
        done.append(case)
        save(done)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())


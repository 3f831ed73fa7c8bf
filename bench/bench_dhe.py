"""DHE benchmark: mprec's DHE ops and layers against the eager computation of the MP-Rec artifact
(``torch.outer(x, a).add(b).fmod(p).fmod(m)``, the uniform transform, an ``nn.Sequential`` decoder), in
the same run, one pytest-benchmark group per case; and the same eager computation under torch.compile
(inductor, default options), which fuses the hashing and the transform into one pass as mprec does.

    make bench                       # every bench_*.py, then the summaries (bench/run.py)
    pytest bench/bench_dhe.py --benchmark-json=out.json && python bench/summary_dhe.py out.json

Cases: the encode alone (4,096 ids, k = 1024); the full DHE forward (encode + decoder) for the Kaggle
config (1024-128-16, 4,096 ids) and a large one (1024-512-256-64, 16,384 ids); the decoder cache on
batches of 4,096 ids drawn from Zipf(1.05) over 10^6 ids, uncached vs a static top-N cache vs online LFU.
The group "machine" measures the float32 and bfloat16 matmul rates the summary divides by. bfloat16 (the
matmul rate and the "mprec bf16" layers) is measured where the CPU computes it natively, the rule precision
"auto" follows (mprec.precision); elsewhere it is not a mode anyone should run.
"""

import statistics
import time

import pytest
import torch
from torch import nn

import mprec
from mprec.benchmark import matmul_rate
from mprec.nn import DHEEmbeddingBag
from mprec.precision import bf16_native

K, M = 1024, 1_000_000
P = mprec.ops.next_prime(M)
SEED = 0


def eager_encode(ids, a, b):
    """The artifact's hashing, then the uniform transform to float32 (what dhe_encode returns)."""
    h = torch.outer(ids, a).add(b).fmod(P).fmod(M)
    return h.float().div_(M - 1).mul_(2).sub_(1)


def eager_decoder(widths):
    layers = []
    for i, (w_in, w_out) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(w_in, w_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def mprec_layer(widths, dtype=torch.float32):
    layer = DHEEmbeddingBag(widths[-1], k=widths[0], m=M, decoder=widths[1:-1], activation="relu", seed=SEED)
    return layer.to(dtype).eval()


def ids_for(n, seed=1):
    return torch.randint(0, M, (n,), generator=torch.Generator().manual_seed(seed))


def zipf_batches(count, size=4096, num_ids=M, s=1.05, seed=2):
    """Batches of ids drawn from Zipf(s) over num_ids ids, hot ids scattered over the id space."""
    probs = torch.arange(1, num_ids + 1, dtype=torch.float64).pow_(-s)
    probs /= probs.sum()
    scatter = torch.randperm(num_ids, generator=torch.Generator().manual_seed(0))  # the same for every stream
    g = torch.Generator().manual_seed(seed)
    return [scatter[torch.multinomial(probs, size, replacement=True, generator=g)] for _ in range(count)]


def test_matmul_rate(benchmark):
    benchmark.group = "machine"
    rates = {str(dtype).removeprefix("torch."): matmul_rate(dtype)
             for dtype in ((torch.float32, torch.bfloat16) if bf16_native() else (torch.float32,))}
    benchmark.extra_info.update(kind="matmul_rate", gflops=rates, cpu_isa=mprec.cpu_isa(), bf16_native=bf16_native())
    a = torch.randn(2048, 2048)
    benchmark.pedantic(torch.mm, args=(a, a), rounds=5, iterations=1, warmup_rounds=1)


# --- encode --------------------------------------------------------------------------------------------

ENCODE_IMPLS = ["eager", "eager compiled", "mprec", "mprec gaussian"]


@pytest.mark.parametrize("impl", ENCODE_IMPLS)
def test_encode(benchmark, impl):
    a, b, _ = mprec.ops.dhe_hash_parameters(K, M, SEED)
    ids = ids_for(4096)
    benchmark.group = "encode 4096 x 1024"
    benchmark.extra_info.update(case="encode 4096 x 1024", impl=impl, hashes=ids.numel() * K)
    if impl.startswith("eager"):
        encode = torch.compile(eager_encode) if impl == "eager compiled" else eager_encode
        fn = lambda: encode(ids, a, b)
    else:
        transform = "gaussian" if "gaussian" in impl else "uniform"
        fn = lambda: mprec.ops.dhe_encode(ids, a, b, P, M, transform)
    # The warmup rounds compile the compiled implementation.
    benchmark.pedantic(fn, rounds=15 if impl == "eager" else 40, iterations=1, warmup_rounds=2)


# --- full DHE forward (encode + decoder) ---------------------------------------------------------------

FORWARD_CASES = {
    "kaggle 1024-128-16 x4096": ((1024, 128, 16), 4096),
    "large 1024-512-256-64 x16384": ((1024, 512, 256, 64), 16384),
}
FORWARD_IMPLS = ["eager", "eager compiled", "mprec"] + (["mprec bf16"] if bf16_native() else [])


def decoder_flops(widths, n):
    return 2 * n * sum(a * b for a, b in zip(widths, widths[1:]))


@pytest.mark.parametrize("impl", FORWARD_IMPLS)
@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_forward(benchmark, case, impl):
    widths, n = FORWARD_CASES[case]
    ids = ids_for(n)
    layer = mprec_layer(widths)
    benchmark.group = case
    benchmark.extra_info.update(case=case, impl=impl, hashes=n * widths[0], flops=decoder_flops(widths, n),
                                dtype="bfloat16" if "bf16" in impl else "float32")
    if impl.startswith("eager"):
        # The same parameters as the mprec layer, so both compute the same function.
        decoder = eager_decoder(widths)
        with torch.no_grad():
            for lin, ref in zip(layer.layers, [m for m in decoder if isinstance(m, nn.Linear)]):
                ref.weight.copy_(lin.weight)
                ref.bias.copy_(lin.bias)

        def forward(ids):
            return decoder(eager_encode(ids, layer.hash_a, layer.hash_b))

        forward = torch.compile(forward) if impl == "eager compiled" else forward
        fn = lambda: forward(ids)
    else:
        if "bf16" in impl:
            layer = layer.to(torch.bfloat16)
        fn = lambda: layer.embed(ids)
    rounds = 7 if impl == "eager" or n > 8192 else 25
    with torch.no_grad():
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


# --- decoder cache at Zipf(1.05) -----------------------------------------------------------------------

CACHE_CASE = "decoder cache zipf1.05 x4096"
CACHE_IMPLS = ["uncached", "static top-N", "lfu"]
CACHE_ENTRIES = 100_000  # 100k ids x (16 floats + id + count) + a 262,144-slot table = 12.6 MB
# Cached runs are timed in steady state: the LFU cache first sees ~10^6 lookups (as many as the static
# cache's fill sample), enough to fill it and be replacing entries; then fresh batches are timed.
CACHE_WARMUP_BATCHES = 250
CACHE_TIMED_BATCHES = 150


@pytest.fixture(scope="module")
def decoder_cache_setup():
    """One layer and its three cache states, warmed, then timed round-robin over the same fresh batches:
    uncached, static and LFU see the same moments of this shared machine, so their ratio is robust to
    its drift (which moves all three together by up to 40% between runs)."""
    widths = (1024, 128, 16)
    layer = mprec_layer(widths)
    warmup, timed = zipf_batches(CACHE_WARMUP_BATCHES, seed=3), zipf_batches(CACHE_TIMED_BATCHES, seed=4)
    offsets = torch.arange(0, 4096, 1)  # one lookup per bag: every id is its own query row
    caches = {"uncached": None}
    with torch.no_grad():
        for impl in CACHE_IMPLS[1:]:
            layer.disable_cache()
            cache = layer.enable_cache("decoder", max_entries=CACHE_ENTRIES, policy="static" if "static" in impl else "lfu")
            if "static" in impl:
                layer.fill_cache(zipf_batches(1, size=1_000_000, seed=5)[0])  # top-N of a 10^6-lookup sample
            for ids in warmup:
                layer(ids, offsets)
            caches[impl] = cache
        for ids in warmup[:3]:
            layer.decoder_cache = None
            layer(ids, offsets)  # the uncached path's allocations and thread pool
        for cache in caches.values():
            if cache is not None:
                cache.reset_stats()
        times = {impl: [] for impl in CACHE_IMPLS}
        for ids in timed:
            for impl in CACHE_IMPLS:
                layer.decoder_cache = caches[impl]
                start = time.perf_counter()
                layer(ids, offsets)
                times[impl].append(time.perf_counter() - start)
    stats = {impl: cache.stats() for impl, cache in caches.items() if cache is not None}
    layer.decoder_cache = None
    return dict(layer=layer, caches=caches, timed=timed, offsets=offsets, times=times, stats=stats)


@pytest.mark.parametrize("impl", CACHE_IMPLS)
def test_decoder_cache(benchmark, impl, decoder_cache_setup):
    setup = decoder_cache_setup
    layer, timed, offsets = setup["layer"], setup["timed"], setup["offsets"]
    stats = setup["stats"].get(impl, {})
    # pytest-benchmark's own rounds for this impl alone (its table); the summary's ratios use the
    # round-robin medians measured in the fixture.
    layer.decoder_cache = setup["caches"][impl]
    state = {"i": 0}

    def step():
        ids = timed[state["i"] % len(timed)]
        state["i"] += 1
        return layer(ids, offsets)

    benchmark.group = CACHE_CASE
    with torch.no_grad():
        benchmark.pedantic(step, rounds=len(timed), iterations=1, warmup_rounds=0)
    layer.decoder_cache = None
    unique = sum(torch.unique(ids).numel() for ids in timed) / len(timed)
    benchmark.extra_info.update(case=CACHE_CASE, impl=impl, hit_rate=stats.get("hit_rate", 0.0),
                                unique_hit_rate=(stats["unique_hits"] / max(1, stats["unique_hits"] + stats["unique_misses"])
                                                 if stats else 0.0),
                                entries=stats.get("entries", 0), cache_bytes=stats.get("bytes", 0),
                                unique_ids_per_batch=unique,
                                interleaved_median_ms=statistics.median(setup["times"][impl]) * 1e3,
                                interleaved_rounds=len(setup["times"][impl]))

"""Benchmark cases shared by ``bench/`` (pytest-benchmark) and ``mprec`` (the main job's summary table).

A case builds its inputs once and offers one callable per implementation (mprec and its peers: torch's
``embedding_bag``, torch's quantized int8 op, FBGEMM's CPU TBE when ``fbgemm-gpu-cpu`` is installed), all
over the same table memory, so that every implementation is timed on the same data in the same run.
Speed is reported against the machine's measured read bandwidth (:func:`read_bandwidth`) and against its
random-row gather limit on the case's own rows (the ``"gather limit"`` implementation, :func:`gather_limit`); the
compute-bound benchmarks (DHE decoders, the interaction) report theirs against the matmul rate
(:func:`matmul_rate`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch

import mprec
from mprec import memory
from mprec.timing import fastest, median_ms

__all__ = ["EmbeddingBagCase", "EMBEDDING_BAG_CASES", "read_bandwidth", "gather_limit", "median_ms",
           "fbgemm_available", "cache_flush_bytes", "flush_caches", "largest_cache_bytes", "GATHER_LIMIT",
           "SUM_REFERENCE", "matmul_rate", "results_stem", "write_results"]

GATHER_LIMIT = "gather limit"
# mprec's sum pooling of a max or padding_idx case's own table and ids: the reference those modes are held to.
# Comparing them with the standard case instead would compare table memory too (that case reads FBGEMM's
# allocation, these a tensor of their own; the same rows gather at different rates from the two).
SUM_REFERENCE = "mprec sum"
# The gather probe's settings, all tried; the fastest is the limit: prefetch distances (lookups ahead), lines
# prefetched per row (the first n 64-byte lines; the CPU's own prefetchers may fetch the rest sooner) and the cache
# they are prefetched into (L1, or L2 where True).
GATHER_DISTANCES = (8, 16, 32)
GATHER_LINES = (1, 2, 4, 1 << 20)
GATHER_INTO_L2 = (False, True)


def largest_cache_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """The largest CPU cache this machine reports (Linux sysfs: cpu0's caches, the last level shared by all its
    cores), or 0 where it reports none."""
    import glob

    largest = 0
    for path in glob.glob(f"{root}/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text[:-1] if text[-1:] in "KMG" else text
        if digits.isdigit():
            largest = max(largest, int(digits) * unit)
    return largest


def cache_flush_bytes() -> int:
    """How much a benchmark reads between timed calls so that each starts with none of the previous call's data
    cached: four times the largest cache, and at least 256 MiB. Reading just past the cache's size is not enough:
    its replacement is not least-recently-used, and on a 480 MiB L3 a 256 MiB read left the rows the previous
    call had gathered mostly cached (a standard embedding-bag call ran in 5.3 ms after it, 7.1 ms after 2 GiB,
    and no faster after 4 GiB)."""
    return max(256 << 20, 4 * largest_cache_bytes())


@functools.cache
def _flush_buffer() -> torch.Tensor:
    return torch.ones(cache_flush_bytes() // 4)


def flush_caches() -> None:
    """Reads :func:`cache_flush_bytes` (one buffer per process, allocated on first use and kept), so that the
    next call finds none of its data cached."""
    _flush_buffer().sum()


def fbgemm_available() -> bool:
    try:
        import fbgemm_gpu  # noqa: F401
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return False
    return True


@dataclass(frozen=True)
class EmbeddingBagCase:
    name: str
    num_rows: int = 1_000_000
    dim: int = 128
    bags: int = 4096
    bag_size: int = 40
    dtype: str = "float32"  # float32 | float16 | bfloat16 | int8
    mode: str = "sum"
    weighted: bool = False
    padding: bool = False
    tables: int = 1
    # The table on 2 MiB pages (mprec.memory.empty, as mprec's modules allocate theirs; transparent huge pages
    # in "always" mode give every large allocation the same), where lookups seldom miss the TLB.
    huge_pages: bool = False
    # Max mode: mprec returns the argmax too (max_indices, the op's default), as a training forward finds it for
    # the backward. Otherwise mprec is called as its wrappers and modules call it, for the output alone.
    argmax: bool = False
    # The caches warm: no flush before each timed call, so a table that fits in L2 (as many of a DLRM's small tables
    # do) is read from the caches, where the kernels wait on their own instructions more than on memory.
    warm: bool = False
    rounds: int = 15
    notes: str = field(default="", compare=False)

    @property
    def row_bytes(self) -> int:
        """Bytes of table rows one call reads (the traffic that bounds it)."""
        element = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}[self.dtype]
        extra = 8 if self.dtype == "int8" else 0  # per-row scale and bias
        return self.tables * self.bags * self.bag_size * (self.dim * element + extra)

    def before_each_call(self) -> None:
        """What runs before each timed call of the case's implementations: :func:`flush_caches`, unless warm."""
        if not self.warm:
            flush_caches()

    def fbgemm_supported(self) -> bool:
        # FBGEMM's CPU TBE pools sum and mean, without padding_idx, in fp32/fp16 (and int8 for inference).
        # Its TBE allocates its own weights, which cannot be put on huge pages.
        return fbgemm_available() and self.mode != "max" and not self.padding and self.dtype != "bfloat16" \
            and not self.huge_pages

    def has_sum_reference(self) -> bool:
        return self.tables == 1 and self.dtype != "int8" and (self.mode == "max" or self.padding)

    def implementation_names(self) -> list[str]:
        names = ["mprec", "torch" if self.tables == 1 else f"torch x{self.tables}"]
        names += [] if self.tables == 1 else [f"mprec x{self.tables}"]  # the batched op as separate calls
        return names + (["fbgemm"] if self.fbgemm_supported() else []) + \
            ([SUM_REFERENCE] if self.has_sum_reference() else []) + [GATHER_LIMIT]

    def build(self, seed: int = 0) -> dict[str, Callable[[], torch.Tensor]]:
        """The implementations to time, by name, each a no-argument callable."""
        g = torch.Generator().manual_seed(seed)
        n = self.bags * self.bag_size
        indices = [torch.randint(0, self.num_rows, (n,), generator=g) for _ in range(self.tables)]
        psw = torch.rand(n * self.tables, generator=g) if self.weighted else None
        padding_idx = 0 if self.padding else None
        tbe, weights = self._fbgemm_tables(g)
        if weights is None:
            base = torch.randn(self.num_rows, self.dim, generator=g)
            weights = [base.to(getattr(torch, self.dtype)) if self.dtype != "int8" else base
                       for _ in range(self.tables)]
            if self.huge_pages:
                weights = [memory.empty(w.shape, dtype=w.dtype).copy_(w) for w in weights]
        impls: dict[str, Callable[[], torch.Tensor]] = {}
        if self.tables == 1:
            idx, offsets = indices[0], torch.arange(0, n, self.bag_size)
            w = weights[0]
            if self.dtype == "int8":
                q, sb = mprec.ops.quantize_rowwise_int8(w)
                impls["mprec"] = lambda: mprec.ops.embedding_bag(q, idx, offsets, self.mode, psw, padding_idx,
                                                                 scale_bias=sb)
                # A lookup reads its row's scale and bias too, from their own array: the limit gathers both.
                impls[GATHER_LIMIT] = gather_limit([q, sb], [idx, idx], before=self.before_each_call)
                packed = torch.ops.quantized.embedding_bag_byte_prepack(w)
                mode_number = mprec.ops.MODES[self.mode]
                impls["torch"] = lambda: torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
                    packed, idx, offsets, False, mode_number, False, psw, None, False)
            elif self.argmax:  # the op itself: its output and max_indices
                impls["mprec"] = lambda: torch.ops.mprec.embedding_bag(
                    w, idx, offsets, mprec.ops.MODES[self.mode], psw, -1 if padding_idx is None else padding_idx)[0]
            else:
                impls["mprec"] = lambda: mprec.ops.embedding_bag(w, idx, offsets, self.mode, psw, padding_idx)
            if self.dtype != "int8":
                if self.has_sum_reference():
                    impls[SUM_REFERENCE] = lambda: mprec.ops.embedding_bag(w, idx, offsets, "sum", psw)
                impls[GATHER_LIMIT] = gather_limit([w], [idx], before=self.before_each_call)
                impls["torch"] = lambda: torch.nn.functional.embedding_bag(
                    idx, w, offsets, mode=self.mode, per_sample_weights=psw, padding_idx=padding_idx)
            if tbe is not None:
                tbe_offsets = torch.arange(0, n + 1, self.bag_size)
                impls["fbgemm"] = lambda: tbe(idx, tbe_offsets, per_sample_weights=psw) if psw is not None \
                    else tbe(idx, tbe_offsets)
        else:
            all_indices = torch.cat(indices)
            offsets = torch.arange(0, n * self.tables + 1, self.bag_size)
            single_offsets = torch.arange(0, n, self.bag_size)
            impls["mprec"] = lambda: mprec.ops.batched_embedding_bag(weights, all_indices, offsets, self.mode, psw)
            impls[f"torch x{self.tables}"] = lambda: torch.cat([
                torch.nn.functional.embedding_bag(i, w, single_offsets, mode=self.mode)
                for i, w in zip(indices, weights)], dim=1)
            impls[f"mprec x{self.tables}"] = lambda: torch.cat([
                mprec.ops.embedding_bag(w, i, single_offsets, self.mode) for i, w in zip(indices, weights)], dim=1)
            if tbe is not None:
                impls["fbgemm"] = lambda: tbe(all_indices, offsets)
            impls[GATHER_LIMIT] = gather_limit(weights, indices, before=self.before_each_call)
        return impls

    def _fbgemm_tables(self, g):
        """FBGEMM's TBE for this case when it supports it, and its weights as per-table views (so every
        implementation reads the same memory); (None, None) otherwise."""
        if not self.fbgemm_supported():
            return None, None
        from fbgemm_gpu.split_embedding_configs import SparseType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        pooling = PoolingMode.SUM if self.mode == "sum" else PoolingMode.MEAN
        if self.dtype == "int8":
            from fbgemm_gpu.split_table_batched_embeddings_ops_inference import (
                IntNBitTableBatchedEmbeddingBagsCodegen)
            tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
                [("", self.num_rows, self.dim, SparseType.INT8, EmbeddingLocation.HOST)] * self.tables,
                device="cpu", pooling_mode=pooling, output_dtype=SparseType.FP32)
            tbe.fill_random_weights()
            return _no_grad(tbe), None
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen)
        precision = SparseType.FP32 if self.dtype == "float32" else SparseType.FP16
        tbe = SplitTableBatchedEmbeddingBagsCodegen(
            [(self.num_rows, self.dim, EmbeddingLocation.HOST, ComputeDevice.CPU)] * self.tables,
            pooling_mode=pooling, weights_precision=precision, output_dtype=SparseType.FP32)
        weights = tbe.split_embedding_weights()
        with torch.no_grad():
            for w in weights:
                w.copy_(torch.randn(w.shape, generator=g).to(w.dtype))
        return _no_grad(tbe), [w.detach() for w in weights]


def _no_grad(module):
    def call(*args, **kwargs):
        with torch.no_grad():
            return module(*args, **kwargs)
    return call


# The benchmark of the embedding-bag family (targets in the issue that introduced it).
EMBEDDING_BAG_CASES = [
    EmbeddingBagCase("standard f32 sum"),
    EmbeddingBagCase("huge pages", huge_pages=True),
    EmbeddingBagCase("mean", mode="mean"),
    # max and padding_idx are held to mprec's own sum of the same rows, a ratio of two calls of a few ms each beside
    # torch's slow paths: with 7 rounds its median moved from run to run by more than the target's margin.
    EmbeddingBagCase("max", mode="max", rounds=21),
    EmbeddingBagCase("max, argmax", mode="max", argmax=True, rounds=21),
    EmbeddingBagCase("padding_idx", padding=True, rounds=21),
    EmbeddingBagCase("weighted", weighted=True),
    EmbeddingBagCase("bf16", dtype="bfloat16"),
    EmbeddingBagCase("fp16", dtype="float16"),
    EmbeddingBagCase("int8", dtype="int8"),
    EmbeddingBagCase("D=16", dim=16),
    # The Kaggle width on 2 MiB pages: a one-line row per lookup, whose page walk on 4 KiB pages is a large part of
    # its cost, so the pages decide more here than for the standard case's wide rows.
    EmbeddingBagCase("D=16 huge pages", dim=16, huge_pages=True),
    EmbeddingBagCase("D=64", dim=64),
    EmbeddingBagCase("D=256", dim=256),
    # bf16 rows of two passes: the AVX2 kernels pool them in pairs of vectors, not as D=128.
    EmbeddingBagCase("bf16 D=256", dim=256, dtype="bfloat16"),
    # One id per bag, as most of Criteo's sparse features: the work per bag, not per row, is what it measures.
    EmbeddingBagCase("one-hot D=16", dim=16, bags=65536, bag_size=1),
    # A table within the L3's reach (20,000 rows of D=128, 10 MiB): after the flush its rows come from memory once
    # and from the L3 when they repeat, where the prefetch that pays for tables far past the cache need not.
    EmbeddingBagCase("10 MiB table", num_rows=20_000),
    # Tables of about 512 KiB, warm: within what mprec's kernels take as a table that stays in the cache
    # (cached_table_bytes, twice the L2) where a core's L2 is 256 KiB or more; a CPU with a smaller L2 has them
    # prefetched as larger tables are.
    EmbeddingBagCase("warm f32", num_rows=1_000, warm=True),
    EmbeddingBagCase("warm bf16", num_rows=2_000, dtype="bfloat16", warm=True),
    EmbeddingBagCase("warm fp16", num_rows=2_000, dtype="float16", warm=True),
    EmbeddingBagCase("warm D=16", num_rows=8_192, dim=16, warm=True),
    # Narrower 16-bit rows, where each row is a few instructions and the loop's own overhead counts most.
    EmbeddingBagCase("warm bf16 D=64", num_rows=4_096, dim=64, dtype="bfloat16", warm=True),
    EmbeddingBagCase("warm fp16 D=32", num_rows=8_192, dim=32, dtype="float16", warm=True),
    # A table of 2 MiB, warm: larger than a core's L2 on the machines measured and within the L3, as many of a DLRM's
    # mid-sized tables; taken as staying in the cache where the L2 is 1 MiB or more.
    EmbeddingBagCase("warm f32 2 MiB", num_rows=4_096, warm=True),
    EmbeddingBagCase("8 tables batched", tables=8, rounds=9),
]


def gather_limit(tables: list[torch.Tensor], indices: list[torch.Tensor], rounds: int = 3,
                 before: Callable[[], object] | None = None) -> Callable[[], int]:
    """The machine's random-row gather limit on these rows, as a callable to time beside the kernels: it reads
    every byte of rows ``indices[t]`` of ``tables[t]`` (with the widest loads of the active CPU ISA, the kernels',
    over torch's threads) with software prefetch at the distance, lines per row and cache that were fastest here
    among :data:`GATHER_DISTANCES` x :data:`GATHER_LINES` x :data:`GATHER_INTO_L2` (chosen now, by
    :func:`mprec.timing.fastest`). It is the rate of a plain gather loop, a reference for the kernels rather than a
    bound: a kernel that schedules its reads better can exceed it, and the benchmark reports each kernel as a
    fraction of it. The callable's ``setting`` names the setting chosen.

    The settings are compared as the benchmark times the kernels: ``before`` runs before each timed probe, by
    default :func:`flush_caches`, so that every probe finds none of the rows cached. Compared warm,
    the probe of a narrow table (whose rows fit in L3) chose prefetches into L1, which gathered those rows a
    third slower than into L2 once the caches were flushed, and the limit understated the machine."""
    for t, (table, idx) in enumerate(zip(tables, indices)):
        if table.dim() != 2 or not table.is_contiguous() or table.device.type != "cpu":
            raise ValueError(f"gather_limit: tables[{t}] must be a contiguous 2-D CPU tensor")
        if idx.dtype != torch.int64 or idx.dim() != 1 or not idx.is_contiguous():
            raise ValueError(f"gather_limit: indices[{t}] must be a contiguous 1-D int64 tensor")
        if idx.numel() and not (0 <= int(idx.min()) and int(idx.max()) < table.shape[0]):
            raise ValueError(f"gather_limit: indices[{t}] reach outside its {table.shape[0]} rows")

    def probe(distance: int, lines: int, into_l2: bool) -> int:
        return sum(mprec._C.gather_probe(table.data_ptr(), table.shape[1] * table.element_size(), idx.data_ptr(),
                                         idx.numel(), distance, lines, into_l2) for table, idx in zip(tables, indices))

    settings = [(d, lines, l2) for d in GATHER_DISTANCES for lines in GATHER_LINES for l2 in GATHER_INTO_L2]
    best = fastest({s: (lambda s=s: probe(*s)) for s in settings}, rounds, before or flush_caches)

    def limit() -> int:
        return probe(*best)

    distance, lines, into_l2 = best
    # The probe prefetches at most a row's own lines, so a setting of as many lines as the widest row has, or more,
    # prefetches whole rows and is named so.
    widest = max(((table.shape[1] * table.element_size() + 63) // 64 for table in tables), default=0)
    rows = "whole rows" if lines >= widest else f"{lines} line{'s' if lines > 1 else ''} per row"
    limit.setting = f"{rows} {distance} ahead into {'L2' if into_l2 else 'L1'}"
    return limit


def read_bandwidth(gib: float = 1.0, rounds: int = 9) -> float:
    """The machine's read bandwidth in GB/s with torch's threads: the best median of reductions over a
    buffer far larger than the caches (each reads every byte once and writes nothing)."""
    x = torch.ones(int(gib * 2**30) // 4)
    best = 0.0
    for reduce in (torch.sum, torch.amax):
        ms = median_ms(lambda: reduce(x), rounds)
        best = max(best, x.numel() * 4 / (ms * 1e-3) / 1e9)
    return best


def matmul_rate(dtype: torch.dtype = torch.float32, n: int = 2048, rounds: int = 7) -> float:
    """The machine's matrix-product rate in GFLOP/s with torch's threads: the median of ``rounds`` products of two
    ``n x n`` matrices of ``dtype`` (after one untimed), the reference for compute-bound kernels' GFLOP/s."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / (median_ms(lambda: torch.mm(a, b), rounds, warmup=1) * 1e-3) / 1e9


def results_stem() -> str:
    """``<cpu>-<threads>t-<isa>``, the prefix of this machine's benchmark results: the ISA of the kernels in use,
    and where that is not the CPU's best, the best too (``avx2-on-avx512``: the AVX2 kernels checked on an AVX-512
    CPU, whose memory system differs from an AVX2-only CPU's of the same name)."""
    from . import cpu_isa, supported_cpu_isas
    from .sched.profile import machine_name

    isa, best = cpu_isa(), supported_cpu_isas()[0]
    return f"{machine_name()}-{isa}" + (f"-on-{best}" if isa != best else "")


def write_results(family: str, data: dict, text: str, out=None) -> "Path":
    """Writes a script benchmark's ``data`` (JSON) and ``text`` (its summary) as
    ``bench/results/<results_stem()>-<family>.json`` and ``.txt``, or at ``out`` (the JSON's path)."""
    import json
    from pathlib import Path

    path = Path(out) if out else Path(__file__).resolve().parents[1] / "bench" / "results" / \
        f"{results_stem()}-{family}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    path.with_suffix(".txt").write_text(text + "\n")
    return path

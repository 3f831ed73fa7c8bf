"""Shared fixtures and input generators for the mprec tests."""

from __future__ import annotations

import importlib.util
import os
import random

import pytest
import torch

import reference
from torch.utils._python_dispatch import TorchDispatchMode

# Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter; it is chosen when a kernel
# is first compiled, so before mprec launches any.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import mprec  # noqa: E402

# tests/xla needs torch_xla, which has its own environment (make test-xla).
collect_ignore = [] if importlib.util.find_spec("torch_xla") else ["xla"]

# Tolerances against the float64 reference, by weight dtype: the kernels accumulate in float32 (float64
# for float64 tables) and round once to the output dtype, so the error is about one rounding of the
# output (2^-11 for float16, 2^-8 for bfloat16) plus float32 accumulation.
TOLERANCE = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=8e-3, atol=8e-3),
    torch.uint8: dict(rtol=1e-5, atol=1e-5),
}

WEIGHT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.uint8]
INDEX_DTYPES = [torch.int32, torch.int64]
# 128: a whole block of the AVX2 kernels' float32 loops (16 accumulators, the weighted split, max's one pass).
DIMS = [1, 3, 16, 64, 100, 128, 129, 256]
ISAS = mprec.supported_cpu_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test once per CPU kernel variant this machine supports."""
    previous = mprec.cpu_isa()
    mprec.set_cpu_isa(request.param)
    yield request.param
    mprec.set_cpu_isa(previous)


# table_prefetch's settings: (row prefetch policy or None, cached_table_bytes, burst_table_bytes).
_TABLE_PREFETCH = {
    "leading_lines": ("leading_lines", 0, 0),
    "whole_slices": ("whole_slices", 0, 0),
    "whole_slices_near": ("whole_slices_near", 0, 0),
    # The whole-slice policies on tables up to burst_table_bytes: their rows prefetched one by one, never in bursts.
    "whole_slices_row_by_row": ("whole_slices", 0, 1 << 62),
    "whole_slices_near_row_by_row": ("whole_slices_near", 0, 1 << 62),
    "cached": (None, 1 << 62, 0),
}


@pytest.fixture(params=list(_TABLE_PREFETCH))
def table_prefetch(request):
    """Runs the test with every pooling loop on any table: rows prefetched ahead under each policy
    (mprec._C.set_row_prefetch), as for tables larger than mprec._C.cached_table_bytes(), in bursts where the policy
    takes them (as for tables larger than mprec._C.burst_table_bytes()) and one by one; and as for tables that stay
    in the cache, not prefetched from memory (wide rows only from L2 into L1)."""
    policy, cached_bytes, burst_bytes = _TABLE_PREFETCH[request.param]
    previous_bytes = mprec._C.set_cached_table_bytes(cached_bytes)
    previous_burst_bytes = mprec._C.set_burst_table_bytes(burst_bytes)
    previous_policy = mprec._C.row_prefetch()
    if policy is not None:
        mprec._C.set_row_prefetch(policy)
    yield request.param
    mprec._C.set_cached_table_bytes(previous_bytes)
    mprec._C.set_burst_table_bytes(previous_burst_bytes)
    mprec._C.set_row_prefetch(previous_policy)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- small DLRMs for the lowerings (tests/test_lower*.py, tests/xla) ----------------------------------------

LOWERING_SIZES = [50, 7, 300, 20, 1000]


def dlrm_batch(n, sizes=LOWERING_SIZES, bag_size=1, seed=0, empty=False):
    """(dense, indices, offsets) in the TBE layout: up to ``bag_size`` lookups per bag (none allowed if ``empty``)."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, 13, generator=g)
    lengths = torch.randint(0 if empty else 1, bag_size + 1, (len(sizes) * n,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    indices = torch.cat([torch.randint(0, s, (int(lengths[t * n:(t + 1) * n].sum()),), generator=g)
                         for t, s in enumerate(sizes)])
    return dense, indices, offsets


class OpLog(TorchDispatchMode):
    """Every op the dispatcher runs, by name: what a lowered model leaves to each backend."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


def small_dlrm(representation, mode="sum", interaction="dot", seed=0, dtype=torch.float32, **dhe):
    """A Kaggle-preset DLRM over LOWERING_SIZES in eval mode, every feature ``representation`` (or one per
    feature), pooling by ``mode``, with small DHE decoders (``dhe`` overrides their options)."""
    from mprec.models import DLRM

    torch.manual_seed(seed)
    reps = representation if isinstance(representation, list) else [representation] * len(LOWERING_SIZES)
    model = DLRM.preset("kaggle", LOWERING_SIZES, representations=reps, interaction=interaction, mode=mode,
                        dhe=dict(k=64, m=1009, decoder=(32,), **dhe)).to(dtype)
    return model.eval()


def make_bags(num_bags: int, max_len: int, num_rows: int, index_dtype=torch.int64, empty_fraction: float = 0.25,
              padding_idx: int | None = None, padding_fraction: float = 0.2, generator=None):
    """Random jagged bags: (indices, offsets of num_bags + 1 entries). About `empty_fraction` of the bags are
    empty; with `padding_idx`, about `padding_fraction` of the lookups hit it (and some bags are padding only)."""
    g = generator
    lengths = torch.randint(0, max_len + 1, (num_bags,), generator=g)
    if num_bags:
        lengths[torch.rand(num_bags, generator=g) < empty_fraction] = 0
    offsets = torch.zeros(num_bags + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    total = int(offsets[-1])
    indices = torch.randint(0, num_rows, (total,), generator=g)
    if padding_idx is not None and total:
        indices[torch.rand(total, generator=g) < padding_fraction] = padding_idx
        # One bag of padding only, when there is a non-empty bag.
        nonempty = (lengths > 0).nonzero().flatten()
        if len(nonempty):
            b = int(nonempty[0])
            indices[offsets[b] : offsets[b + 1]] = padding_idx
    return indices.to(index_dtype), offsets.to(index_dtype)


def make_weight(num_rows: int, dim: int, dtype: torch.dtype):
    """(weight in `dtype`, scale_bias or None, the same weight as float64 for the reference)."""
    w = torch.randn(num_rows, dim)
    if dtype == torch.uint8:
        q, scale_bias = mprec.ops.quantize_rowwise_int8(w)
        return q, scale_bias, reference.dequantize_rowwise_int8_reference(q, scale_bias, torch.float64)
    w = w.to(dtype)
    return w, None, w.double()


def offsets_for(offsets, include_last_offset: bool):
    """The op's offsets argument from B + 1 offsets."""
    return offsets if include_last_offset else offsets[:-1]


@pytest.fixture
def num_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def pytest_report_header(config):
    return [f"mprec: cpu_isa={mprec.cpu_isa()} supported={ISAS} threads={torch.get_num_threads()} "
            f"MPREC_CPU_ISA={os.environ.get('MPREC_CPU_ISA', '')}"]


# --- Criteo TSV files ----------------------------------------------------------------------------------------

def criteo_tsv(path, n, seed):
    """``n`` lines of Criteo's Kaggle format whose label can be learned (clicks have larger counts and, in the
    first five features, ids of their own); returns the path as a string."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        label = rng.random() < 0.3
        ints = [str(rng.randint(0, 50) + (30 if label else 0)) for _ in range(13)]
        cats = [f"{rng.randint(0, 30) + (31 if label and t < 5 else 0):08x}" for t in range(26)]
        lines.append("\t".join([str(int(label))] + ints + cats))
    path.write_text("\n".join(lines) + "\n")
    return str(path)

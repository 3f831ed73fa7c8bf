"""DLRM's dot interaction: mprec::dlrm_interaction against the same computation in plain torch, as TorchRec's
InteractionArch and the DLRM reference write it (the dense vector stacked on the tables' vectors, a bmm of the
stack with its transpose, the strict lower triangle gathered by index, the dense vector put in front), eager and
under torch.compile (inductor, default options), in the same run.

    make bench                              # every bench_*.py, then the summaries (bench/run.py)
    pytest bench/bench_interaction.py --benchmark-json=out.json && python bench/summary_interaction.py out.json

Cases: the Kaggle and Terabyte presets' shapes (the dense vector and 26 tables' vectors, D = 16 and 64), batch
2,048, float32, each in inference (the forward under no_grad) and in training (the forward and the gradients of
both inputs from a given output gradient). mprec's output is the DLRM model's: zero-padded to a multiple of
mprec.models.dlrm.INTERACTION_PAD columns; torch's is not padded.

The implementations of a case take turns in blocks of consecutive calls, the first of a block untimed
(mprec.timing.in_blocks): eager's [B, F, F] products and index gathers fill the caches with data of their own, so
a call timed straight after another implementation's would pay for that, as no model's interaction does between
its own steps. The inputs stay the same across calls: in a model they are the tables' and the bottom MLP's outputs,
written just before. The group "machine" measures the float32 matmul rate the summary divides by; the summary's
GFLOP/s count the pairs' multiply-adds only (2 B D F(F-1)/2 in the forward, twice that in the backward), not
torch's full F x F products nor mprec's padding.
"""

import statistics

import pytest
import torch

import mprec
from mprec.benchmark import matmul_rate
from mprec.models.dlrm import INTERACTION_PAD, PRESETS
from mprec.ops import dlrm_interaction
from mprec.timing import in_blocks

BATCH = 2048
TABLES = 26
CASES = {name: PRESETS[name]["embedding_dim"] for name in ("kaggle", "terabyte")}
PHASES = ("infer", "train")
IMPLS = ("mprec", "eager", "eager compiled")
ROUNDS = 40
BLOCK = 6  # consecutive calls of one implementation, the first untimed (mprec.timing.in_blocks)


def eager_interaction(dense, sparse, rows, cols):
    """TorchRec's InteractionArch (and the DLRM reference) in plain torch: [B, D] and [B, T * D] to
    [B, D + F(F-1)/2], F = T + 1."""
    batch, dim = dense.shape
    stacked = torch.cat([dense.unsqueeze(1), sparse.view(batch, -1, dim)], dim=1)
    pairs = torch.bmm(stacked, stacked.transpose(1, 2))[:, rows, cols]
    return torch.cat([dense, pairs], dim=1)


def mprec_interaction(dense, sparse, rows, cols):
    return dlrm_interaction(dense, sparse, INTERACTION_PAD)


def pair_flops(dim, batch=BATCH, tables=TABLES):
    """The forward's multiply-adds of the pairs, as FLOPs (the backward does twice as many)."""
    features = tables + 1
    return 2 * batch * dim * features * (features - 1) // 2


def make_call(fn, dim, phase, seed=0):
    """A no-argument call of one implementation in one phase, on inputs of its own (the same values for every
    implementation)."""
    g = torch.Generator().manual_seed(seed)
    dense, sparse = torch.randn(BATCH, dim, generator=g), torch.randn(BATCH, TABLES * dim, generator=g)
    rows, cols = torch.tril_indices(TABLES + 1, TABLES + 1, offset=-1)
    if phase == "infer":
        def call():
            with torch.no_grad():
                return fn(dense, sparse, rows, cols)
        return call
    dense.requires_grad_()
    sparse.requires_grad_()
    with torch.no_grad():
        grad = torch.randn(fn(dense, sparse, rows, cols).shape, generator=g)
    return lambda: torch.autograd.grad(fn(dense, sparse, rows, cols), (dense, sparse), grad)


@pytest.fixture(scope="module")
def interaction_setup():
    """{(case, phase): (calls, times)}: each implementation's call and its times in turns of blocks."""
    compiled = torch.compile(eager_interaction)
    fns = {"mprec": mprec_interaction, "eager": eager_interaction, "eager compiled": compiled}
    setup = {}
    for case, dim in CASES.items():
        for phase in PHASES:
            calls = {impl: make_call(fns[impl], dim, phase) for impl in IMPLS}
            for call in calls.values():  # compiles the compiled implementation's graphs for this shape and phase
                call()
            times = in_blocks({impl: (lambda i, c=call: c()) for impl, call in calls.items()},
                              {impl: ROUNDS for impl in IMPLS}, BLOCK)
            setup[(case, phase)] = calls, times
    return setup


def test_matmul_rate(benchmark):
    benchmark.group = "machine"
    benchmark.extra_info.update(kind="matmul_rate", gflops={"float32": matmul_rate()}, cpu_isa=mprec.cpu_isa())
    a = torch.randn(2048, 2048)
    benchmark.pedantic(torch.mm, args=(a, a), rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("case", list(CASES))
def test_interaction(benchmark, interaction_setup, case, phase, impl):
    dim = CASES[case]
    calls, times = interaction_setup[(case, phase)]
    benchmark.group = f"{case} D={dim} {phase}"
    benchmark.extra_info.update(case=case, dim=dim, tables=TABLES, batch=BATCH, phase=phase, impl=impl,
                                flops=pair_flops(dim) * (1 if phase == "infer" else 3), cpu_isa=mprec.cpu_isa(),
                                interleaved_median_ms=statistics.median(times[impl]) * 1e3,
                                interleaved_rounds=len(times[impl]), block=BLOCK)
    benchmark.pedantic(calls[impl], rounds=10, iterations=1, warmup_rounds=2)

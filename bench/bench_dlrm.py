"""DLRM training and inference throughput on synthetic Kaggle-shaped data (26 tables, 33.8M rows, sparse
dim 16, batch 2,048, Zipf(1.05) ids), in one run:

- eager: the DLRM reference written with torch.nn.EmbeddingBag(sparse=True) per table, torch.optim.SGD
  over everything (sparse table gradients), bmm + tril-index interaction; fp32 and under bf16 autocast;
- mprec: mprec.models.DLRM (one batched embedding-bag call, fused SGD tables, mprec::dot_interaction),
  fp32 and under bf16 autocast;
- torchrec: TorchRec's DLRM on CPU (unsharded EmbeddingBagCollection, dense table gradients, SGD), fp32;
- eager-compiled, mprec-compiled: the eager and mprec models under torch.compile (inductor, default options; the
  loss, backward and optimizer step as for the others), fp32: what a user who compiles gets of each.

Every implementation has the same MLP and table initialisation. The implementations of a case take turns
in blocks of consecutive steps (mprec.timing.in_blocks), the first step of a block untimed: it meets the
caches full of the other implementations' GBs of tables, as no training job does. The turns share the
moments of this shared machine; examples/s = 2,048 / the median step. After the models are built the
machine is given time to settle: filling GBs of tables leaves the next seconds several times slower.

The bf16 cases run where the CPU computes bfloat16 natively (mprec.precision's rule, the one precision
"auto" follows); elsewhere they are skipped, and the summary's fastest mode is fp32.

The MLPs' GEMM floor, measured in the same run: the products of a step (the forward of every layer; in
training also the input gradient of every layer but the first and the weight gradient of every layer) on
their real shapes, each on the faster of MKL (torch's addmm / mm) and oneDNN, run back to back with nothing
else. It takes its turns in the blocks of the fp32 cases like an implementation, so it is measured in the
same moments as the steps. It is the time a step would take if it did nothing but its MLPs' matrix products
at their best rate on this machine; the summary reports it as a fraction of each fp32 step.
"""

import statistics
import time

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mprec
from mprec.memory import retain_freed_memory
from mprec.data import KAGGLE_TABLE_SIZES, SyntheticCriteo
from mprec.models import DLRM
from mprec.nn import FusedOptimizer
from mprec.ops.mlp import product_ways, run_product
from mprec.precision import bf16_native
from mprec.timing import fastest, in_blocks

BATCH = 2048
LR = 0.1
ROUNDS = 20
TORCHREC_ROUNDS = 4
BLOCK = 6  # consecutive steps of one implementation, the first untimed (mprec.timing.in_blocks)
FLOOR = "gemm floor"
SETTLE_SECONDS = 3.0
CASES = [("train", "fp32"), ("train", "bf16"), ("infer", "fp32"), ("infer", "bf16")]
MEASURED_CASES = [c for c in CASES if c[1] == "fp32" or bf16_native()]
FLOOR_RUNS = 7  # rounds of mprec.timing.fastest choosing each product's way
COMPILED = {"eager-compiled": "eager", "mprec-compiled": "mprec"}
IMPLS = ["eager", "mprec", *COMPILED, "torchrec"]
FP32_ONLY = ("torchrec", *COMPILED)  # measured in fp32 only


def gemm_floor(model, batch=BATCH):
    """{"train": fn, "infer": fn}: callables that run the MLPs' matrix products of a step alone, each on the
    fastest of the ways mprec chooses among (mprec.ops.mlp.product_ways: MKL or oneDNN, and the weight
    gradient's transposed form; chosen here by mprec.timing.fastest). They are timed in turns with the steps,
    so the floor and the steps it is compared with come from the same moments of the machine."""
    products = {"train": [], "infer": []}
    layers = [m for mlp in (model.bottom, model.top) for m in mlp if isinstance(m, nn.Linear)]

    def best(product, a, b, bias=None):
        ways = {way: (lambda way=way: run_product(way, a, b, "none", bias)) for way in product_ways(product)}
        return ways[fastest(ways, FLOOR_RUNS)]

    for i, layer in enumerate(layers):
        n, k = layer.weight.shape
        x, w, b, g = torch.randn(batch, k), torch.randn(n, k), torch.randn(n), torch.randn(batch, n)
        forward = best("forward", x, w, b)
        products["infer"].append(forward)
        products["train"] += [forward, best("weight_grad", g.t(), x.t())] + \
            ([best("input_grad", g, w.t())] if i else [])  # the first layer's input needs no gradient

    def run_all(fns):
        def run():
            for fn in fns:
                fn()
        return run
    return {phase: run_all(fns) for phase, fns in products.items()}


def eager_mlp(widths, last_activation):
    """Linear + ReLU as the DLRM reference builds them (the parameters are copied from mprec's model)."""
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class EagerDLRM(nn.Module):
    """The DLRM reference's structure in plain torch."""

    def __init__(self, sizes, dim=16, bottom=(512, 256, 64, 16), top=(512, 256, 1)):
        super().__init__()
        self.bottom = eager_mlp([13, *bottom], last_activation=True)
        self.embeddings = nn.ModuleList([nn.EmbeddingBag(n, dim, mode="sum", sparse=True) for n in sizes])
        f = len(sizes) + 1
        self.top = eager_mlp([dim + f * (f - 1) // 2, *top], last_activation=False)
        rows, cols = torch.tril_indices(f, f, offset=-1)
        self.rows, self.cols = rows, cols

    def forward(self, dense, indices, offsets):
        x = self.bottom(dense)
        B = x.shape[0]
        e = [bag(indices[t * B:(t + 1) * B], offsets[t * B:(t + 1) * B] - offsets[t * B])
             for t, bag in enumerate(self.embeddings)]
        features = torch.stack([x] + [v.to(x.dtype) for v in e], dim=1)
        z = torch.bmm(features, features.transpose(1, 2))[:, self.rows, self.cols]
        return self.top(torch.cat([x, z], dim=1)).squeeze(1)


def torchrec_model(sizes, dim=16):
    from torchrec.models.dlrm import DLRM as TorchRecDLRM
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    tables = [EmbeddingBagConfig(name=f"t{t}", embedding_dim=dim, num_embeddings=n, feature_names=[f"f{t}"])
              for t, n in enumerate(sizes)]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("cpu"))
    return TorchRecDLRM(embedding_bag_collection=ebc, dense_in_features=13, dense_arch_layer_sizes=[512, 256, 64, dim],
                        over_arch_layer_sizes=[512, 256, 1])


def torchrec_input(batch):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    T = len(KAGGLE_TABLE_SIZES)
    return KeyedJaggedTensor.from_lengths_sync(keys=[f"f{t}" for t in range(T)], values=batch.indices,
                                               lengths=torch.ones(T * len(batch), dtype=torch.int64))


def make_step(model, optimizer, phase, precision, forward):
    bf16 = precision == "bf16"

    def step(b):
        if phase == "train":
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = forward(model, b)
            loss = F.binary_cross_entropy_with_logits(logits.float(), b.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                forward(model, b)
    return step


def _plain(model, b):
    return model(b.dense, b.indices, b.offsets)


def _torchrec(model, b):
    return model(b.dense, b.kjt).squeeze(1)


@pytest.fixture(scope="module")
def dlrm_setup():
    retain_freed_memory()  # for every implementation: they share this process
    torch.manual_seed(0)
    batches = [SyntheticCriteo(1, BATCH, seed=100 + i).batch(0) for i in range(16)]
    models = {}
    models["mprec"] = DLRM.preset("kaggle", KAGGLE_TABLE_SIZES, optimizer=FusedOptimizer("sgd", LR))
    eager = EagerDLRM(KAGGLE_TABLE_SIZES)
    with torch.no_grad():  # same parameters as mprec's
        eager.bottom.load_state_dict(models["mprec"].bottom.state_dict())
        top = models["mprec"].top.state_dict()  # mprec's first top layer has zero columns for its padding
        top["0.weight"] = top["0.weight"][:, :eager.top[0].in_features]
        eager.top.load_state_dict(top)
        for bag, w in zip(eager.embeddings, models["mprec"].embeddings.table_parameters()):
            bag.weight.copy_(w)
    models["eager"] = eager
    optimizers = {"mprec": torch.optim.SGD(models["mprec"].dense_parameters(), lr=LR),
                  "eager": torch.optim.SGD(eager.parameters(), lr=LR)}
    forwards = {"mprec": _plain, "eager": _plain}
    for name, of in COMPILED.items():  # the same parameters and optimizer as the model compiled
        models[name], optimizers[name], forwards[name] = torch.compile(models[of]), optimizers[of], _plain
    try:
        models["torchrec"] = torchrec_model(KAGGLE_TABLE_SIZES)
        optimizers["torchrec"] = torch.optim.SGD(models["torchrec"].parameters(), lr=LR)
        forwards["torchrec"] = _torchrec
        for b in batches:
            b.kjt = torchrec_input(b)
    except ImportError:
        pass
    floors = gemm_floor(models["mprec"])
    times, floor = {}, {}
    for phase, precision in MEASURED_CASES:
        impls = [i for i in IMPLS if i in models and not (i in FP32_ONLY and precision != "fp32")]
        steps = {i: make_step(models[i], optimizers[i], phase, precision, forwards[i]) for i in impls}
        for i in impls:
            if i in COMPILED:  # compiles the phase's graphs before the machine settles
                steps[i](batches[0])
        settle_until = time.perf_counter() + SETTLE_SECONDS
        while time.perf_counter() < settle_until:
            for i in impls:
                if i != "torchrec":
                    steps[i](batches[0])
        timed = {i: (lambda n, i=i: steps[i](batches[n % len(batches)])) for i in impls}
        counts = {i: TORCHREC_ROUNDS if i == "torchrec" else ROUNDS for i in impls}
        if precision == "fp32":  # the floor is of fp32 products: it takes its turns in the fp32 cases
            timed[FLOOR], counts[FLOOR] = (lambda n: floors[phase]()), ROUNDS
        case_times = in_blocks(timed, counts, BLOCK)
        if FLOOR in case_times:
            floor[phase] = statistics.median(case_times.pop(FLOOR)) * 1e3
        times[(phase, precision)] = case_times
    return dict(models=models, optimizers=optimizers, forwards=forwards, batches=batches, times=times, floor=floor)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("phase,precision", CASES)
def test_dlrm(benchmark, dlrm_setup, phase, precision, impl):
    setup = dlrm_setup
    if impl not in setup["models"]:
        pytest.skip("torchrec is not installed (make bench-deps)")
    if impl in FP32_ONLY and precision != "fp32":
        pytest.skip(f"{impl} is measured in fp32 only")
    if (phase, precision) not in MEASURED_CASES:
        pytest.skip("this CPU has no native bfloat16: precision auto runs fp32 (mprec.precision)")
    times = setup["times"][(phase, precision)][impl]
    step = make_step(setup["models"][impl], setup["optimizers"][impl], phase, precision, setup["forwards"][impl])
    batches = setup["batches"]
    state = {"i": 0}

    def run():
        step(batches[state["i"] % len(batches)])
        state["i"] += 1

    case = f"dlrm kaggle {phase} {precision} x{BATCH}"
    benchmark.group = case
    benchmark.pedantic(run, rounds=2 if impl == "torchrec" else 5, iterations=1, warmup_rounds=0)
    median = statistics.median(times)
    benchmark.extra_info.update(case=case, impl=impl, phase=phase, precision=precision, batch=BATCH,
                                interleaved_median_ms=median * 1e3, interleaved_rounds=len(times), block=BLOCK,
                                examples_per_second=BATCH / median, cpu_isa=mprec.cpu_isa(),
                                bf16_native=bf16_native(), gemm_floor_ms=setup["floor"][phase])

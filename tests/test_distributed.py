"""mprec's collection sharded by TorchRec's DistributedModelParallel over 2 processes (gloo on loopback).

Per sharding type and compute kernel: the forward equals TorchRec's own unsharded EmbeddingBagCollection
with the same weights, key by key; one training step (fused SGD, fused row-wise Adagrad, or a dense kernel's
gradient) equals the single-process step, shard by shard, and TorchRec's own sharded collection (FBGEMM's
kernels) under the same plan; the profiler sees mprec's kernels, not FBGEMM's. DHE and hybrid features are
replicated. Bad plans and inputs are refused with errors that name them. The TorchRec internals mprec
relies on are checked to be where it expects them.
"""

from __future__ import annotations

import inspect

import pytest
import torch

pytest.importorskip("torchrec", reason="TorchRec is installed by make test")

from workers import Workers  # noqa: E402

WORLD = 2  # the default group; the slow tests use 4


def world() -> int:
    """The group's size, inside a worker."""
    import torch.distributed as dist

    return dist.get_world_size()
BATCH = 3  # per rank
SHARDINGS = ["table_wise", "row_wise", "column_wise", "table_column_wise", "data_parallel"]
# (name, rows, width, features, pooling): t1 serves two features; t2 pools by mean.
TABLES = [("t0", 100, 8, ["f0"], "SUM"), ("t1", 37, 16, ["f1", "f2"], "SUM"), ("t2", 64, 8, ["f3"], "MEAN"),
          ("t3", 50, 8, ["f4"], "SUM")]
FEATURES = [f for t in TABLES for f in t[3]]


@pytest.fixture(scope="module")
def workers():
    group = Workers(WORLD)
    yield group
    group.close()


# --- run on every rank ----------------------------------------------------------------------------------------

def configs(tables=TABLES):
    from torchrec import EmbeddingBagConfig, PoolingType

    return [EmbeddingBagConfig(name=n, num_embeddings=rows, embedding_dim=d, feature_names=list(fs),
                               pooling=PoolingType[p]) for n, rows, d, fs, p in tables]


def global_batch(seed: int, batch: int = None, weighted: bool = False, keys=FEATURES, max_id: int = 37):
    """A KJT of ``batch`` examples (default ``BATCH`` per rank): bags of 0-4 ids below ``max_id`` (every table
    has that many rows)."""
    from torchrec import KeyedJaggedTensor

    batch = BATCH * world() if batch is None else batch
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 5, (len(keys) * batch,), generator=g)
    values = torch.randint(0, max_id, (int(lengths.sum()),), generator=g)
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor(keys=list(keys), values=values, lengths=lengths, weights=weights)


def rank_slice(kjt, rank: int, batch: int = BATCH):
    """Rank ``rank``'s examples of a global batch."""
    from torchrec import KeyedJaggedTensor

    by_key = kjt.to_dict()
    values, lengths, weights = [], [], []
    for key in kjt.keys():
        jt = by_key[key]
        offsets = jt.offsets()
        lo, hi = int(offsets[rank * batch]), int(offsets[(rank + 1) * batch])
        values.append(jt.values()[lo:hi])
        lengths.append(jt.lengths()[rank * batch:(rank + 1) * batch])
        if kjt.weights_or_none() is not None:
            weights.append(jt.weights()[lo:hi])
    return KeyedJaggedTensor(keys=kjt.keys(), values=torch.cat(values), lengths=torch.cat(lengths),
                             weights=torch.cat(weights) if weights else None)


def plan_for(module, sharding: str, kernel: str, sharder, tables=None):
    """A plan written with TorchRec's helpers: every table of ``module`` sharded one way. Table-column-wise
    (which the helpers do not write) is a table's column shards all on one rank, as the planner makes it."""
    import dataclasses

    from torchrec.distributed import sharding_plan as sp
    from torchrec.distributed.types import ShardingPlan

    names = tables or [n for n, f in module.embedding_bags.items() if getattr(f, "table_dim", 1)]
    size = world()
    make = {"table_wise": lambda i: sp.table_wise(rank=i % size, compute_kernel=kernel),
            "row_wise": lambda i: sp.row_wise(compute_kernel=kernel),
            # Two column shards (FBGEMM's kernels, the reference, need shards of at least 4 columns).
            "column_wise": lambda i: sp.column_wise(ranks=[i % size, (i + 1) % size], compute_kernel=kernel),
            "table_column_wise": lambda i: sp.column_wise(ranks=[i % size] * 2, compute_kernel=kernel),
            "data_parallel": lambda i: sp.data_parallel()}[sharding]
    plan = sp.construct_module_sharding_plan(module, {n: make(i) for i, n in enumerate(names)}, local_size=size,
                                             world_size=size, device_type="cpu", sharder=sharder)
    if sharding == "table_column_wise":
        plan = {n: dataclasses.replace(p, sharding_type=sharding) for n, p in plan.items()}
    return ShardingPlan({"": plan})


def shard(module, plan, sharder):
    import torch.distributed as dist
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    return DistributedModelParallel(module, env=ShardingEnv.from_process_group(dist.group.WORLD),
                                    device=torch.device("cpu"), plan=plan, sharders=[sharder])


def local_shards(state_dict: dict) -> dict:
    """``{key: [(offsets, tensor)]}``: this rank's shards of every sharded tensor (plain tensors whole)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    out = {}
    for key, value in state_dict.items():
        if isinstance(value, ShardedTensor):
            out[key] = [(list(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in value.local_shards()]
        elif isinstance(value, torch.Tensor):
            out[key] = [([0] * value.dim(), value.detach().clone())]
    return out


def case_forward(sharding: str, kernel: str, weighted: bool):
    """The sharded forward and TorchRec's unsharded collection's on this rank's batch."""
    import torch.distributed as dist
    import torchrec
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder as TorchRecSharder

    from mprec.distributed import EmbeddingBagCollectionSharder
    from mprec.nn import EmbeddingBagCollection

    rank = dist.get_rank()
    tables = [t[:4] + ("SUM",) for t in TABLES] if weighted else TABLES
    torch.manual_seed(0)
    reference = torchrec.EmbeddingBagCollection(tables=configs(tables), is_weighted=weighted)
    mine = EmbeddingBagCollection(tables=configs(tables), is_weighted=weighted, device="meta")
    sharder = EmbeddingBagCollectionSharder()
    model = shard(mine, plan_for(mine, sharding, kernel, sharder), sharder)
    model.load_state_dict(reference.state_dict())
    kjt = rank_slice(global_batch(1, weighted=weighted), rank)
    got = model(kjt).wait()
    want = reference(kjt)
    # TorchRec's own sharded collection returns its keys in its own order; the reference needs no sharding.
    stock = torchrec.EmbeddingBagCollection(tables=configs(tables), is_weighted=weighted, device=torch.device("meta"))
    stock_sharder = TorchRecSharder()
    stock_model = shard(stock, plan_for(stock, sharding, kernel, stock_sharder, [t[0] for t in tables]), stock_sharder)
    return dict(keys=got.keys(), got=got.to_dict(), want=want.to_dict(), stock_keys=stock_model(kjt).wait().keys(),
                type=type(model.module).__name__)


def train_step(model, kjt, names, lr: float, scale: float, first: int = 0):
    """Forward, a loss that weighs every output value differently (the rows of a fixed global weighting from
    example ``first`` on, times ``scale``), backward, and an SGD step of the parameters no fused optimizer
    trains (a dense kernel's tables)."""
    from torchrec.optim.keyed import KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from mprec.models.dlrm import keyed_values

    out = keyed_values(model(kjt), names)
    weighting = torch.randn(BATCH * 8, out.shape[1], generator=torch.Generator().manual_seed(7))
    loss = (out * weighting[first:first + out.shape[0]]).sum() * scale
    dense = dict(in_backward_optimizer_filter(model.named_parameters()))
    opt = KeyedOptimizerWrapper(dense, lambda params: torch.optim.SGD(params, lr=lr)) if dense else None
    if opt:
        opt.zero_grad()
    loss.backward()
    if opt:
        opt.step()


def case_step(sharding: str, kernel: str, optimizer: str):
    """One training step three ways: sharded on mprec's kernels, sharded on TorchRec's (FBGEMM's), and in one
    process on the global batch; returns this rank's shards of each, with the optimizer states."""
    import torch.distributed as dist
    import torchrec
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torch.profiler import ProfilerActivity, profile
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder as TorchRecSharder

    from mprec.distributed import EmbeddingBagCollectionSharder
    from mprec.nn import EmbeddingBagCollection, FusedOptimizer

    rank = dist.get_rank()
    kind = {"sgd": EmbOptimType.EXACT_SGD, "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD}[optimizer]
    fused = dict(optimizer=kind, learning_rate=0.5, eps=1e-3)
    torch.manual_seed(0)
    start = torchrec.EmbeddingBagCollection(tables=configs()).state_dict()
    batch = global_batch(2)
    names = list(FEATURES)

    def sharded(module, sharder, tables):
        model = shard(module, plan_for(module, sharding, kernel, sharder, tables), sharder)
        model.load_state_dict(start)
        return model

    mine = sharded(EmbeddingBagCollection(tables=configs(), device="meta"), EmbeddingBagCollectionSharder(fused), None)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(mine, rank_slice(batch, rank), names, 0.5, 1.0, rank * BATCH)
    ops = sorted({e.key for e in prof.key_averages() if "::" in e.key})
    stock = sharded(torchrec.EmbeddingBagCollection(tables=configs(), device=torch.device("meta")),
                    TorchRecSharder(fused_params=fused), [t[0] for t in TABLES])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(stock, rank_slice(batch, rank), names, 0.5, 1.0, rank * BATCH)
    stock_ops = sorted({e.key for e in prof.key_averages() if "::" in e.key})

    # One process, the global batch; TorchRec averages table gradients over ranks (DDP does for
    # data-parallel tables), so the same step's loss is the ranks' losses over the world size.
    single = EmbeddingBagCollection(tables=configs(), optimizer=FusedOptimizer(optimizer, lr=0.5, eps=1e-3)
                                    if kernel == "fused" else None)
    single.load_state_dict(start)
    train_step(single, batch, names, 0.5, 1.0 / world())

    return dict(mine=local_shards(mine.state_dict()), stock=local_shards(stock.state_dict()),
                single={k: v.detach().clone() for k, v in single.state_dict().items()},
                mine_optimizer=local_shards(_optimizer_state(mine)),
                stock_optimizer=local_shards(_optimizer_state(stock)),
                single_optimizer=single.optimizer_state_dict(), ops=ops, stock_ops=stock_ops)


def _optimizer_state(model) -> dict:
    """The fused optimizer's state tensors by ``<param key>/<state key>``."""
    state = model.fused_optimizer.state_dict()["state"]
    return {f"{param}/{key}": value for param, values in state.items() for key, value in values.items()}


def case_dhe_and_hybrid(sharding: str):
    """A collection with table, DHE and hybrid features: sharded forward against the unsharded one, and
    where each kind's parameters went (DHE parts replicated, outside the sharded names)."""
    import torch.distributed as dist

    from mprec.distributed import EmbeddingBagCollectionSharder
    from mprec.nn import EmbeddingBagCollection

    rank = dist.get_rank()
    reps = {"t1": "dhe", "t2": "hybrid"}
    dhe = dict(k=16, m=97, decoder=(8,))
    torch.manual_seed(0)
    reference = EmbeddingBagCollection(tables=configs(), representations=reps, dhe=dhe)
    sharder = EmbeddingBagCollectionSharder()
    model = shard(EmbeddingBagCollection(tables=configs(), representations=reps, dhe=dhe, device="meta"),
                  plan_for(reference, sharding, "fused", sharder), sharder)
    model.load_state_dict(reference.state_dict())
    kjt = rank_slice(global_batch(3), rank)
    got, want = model(kjt).wait(), reference(kjt)
    from torchrec.distributed.model_parallel import DistributedModelParallel
    sharded_names = sorted(DistributedModelParallel._sharded_parameter_names(model.module))
    return dict(keys=got.keys(), want_keys=want.keys(), got=got.to_dict(), want=want.to_dict(),
                sharded_names=sharded_names, state_keys=sorted(model.state_dict()),
                want_state_keys=sorted(reference.state_dict()))


def case_errors():
    """Bad plans, inputs and fused parameters, each caught with its message."""
    import torch.distributed as dist
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    from mprec.distributed import EmbeddingBagCollectionSharder
    from mprec.nn import EmbeddingBagCollection

    messages = {}
    sharder = EmbeddingBagCollectionSharder()

    def attempt(name, fn):
        try:
            fn()
        except (ValueError, RuntimeError) as error:
            messages[name] = str(error)
        else:
            messages[name] = None

    def module():
        return EmbeddingBagCollection(tables=configs(), representations={"t3": "dhe"},
                                      dhe=dict(k=8, m=97, decoder=(4,)), device="meta")

    def missing_table():
        m = module()
        plan = plan_for(m, "table_wise", "fused", sharder)
        del plan.plan[""]["t2"]
        shard(m, plan, sharder)

    def unknown_table():
        m = module()
        plan = plan_for(m, "table_wise", "fused", sharder)
        plan.plan[""]["t9"] = plan.plan[""]["t0"]
        shard(m, plan, sharder)

    def dhe_in_plan():
        m = module()
        plan = plan_for(m, "table_wise", "fused", sharder)
        plan.plan[""]["t3"] = plan.plan[""]["t0"]
        shard(m, plan, sharder)

    def bad_optimizer():
        m = module()
        s = EmbeddingBagCollectionSharder({"optimizer": EmbOptimType.ADAM})
        shard(m, plan_for(m, "table_wise", "fused", s), s)

    attempt("missing_table", missing_table)
    attempt("unknown_table", unknown_table)
    attempt("dhe_in_plan", dhe_in_plan)
    attempt("bad_optimizer", bad_optimizer)
    m = module()
    model = shard(m, plan_for(m, "table_wise", "fused", sharder), sharder)
    rank = dist.get_rank()
    good = rank_slice(global_batch(4), rank)
    from torchrec import KeyedJaggedTensor

    attempt("unknown_key", lambda: model(KeyedJaggedTensor(keys=FEATURES + ["f9"], values=good.values(),
                                                           lengths=torch.cat([good.lengths(),
                                                                              torch.zeros(BATCH, dtype=torch.int64)]))))
    attempt("missing_key", lambda: model(KeyedJaggedTensor(keys=FEATURES[:-1], values=good.values()[:0],
                                                           lengths=torch.zeros(BATCH * (len(FEATURES) - 1),
                                                                               dtype=torch.int64))))
    return messages


def case_internals():
    """Which of TorchRec's private attributes that mprec reads are on live instances, per sharding type."""
    from mprec.distributed import EmbeddingBagCollectionSharder
    from mprec.distributed._torchrec import TORCHREC_ATTRIBUTES
    from mprec.nn import EmbeddingBagCollection

    found, kernel_types = {}, {}
    for sharding in ("table_wise", "row_wise", "data_parallel"):
        sharder = EmbeddingBagCollectionSharder()
        m = EmbeddingBagCollection(tables=configs(), device="meta")
        sharded = shard(m, plan_for(m, sharding, "fused", sharder), sharder).module
        lookups = [getattr(lookup, "module", lookup) for lookup in sharded._lookups]  # data-parallel: in DDP
        kernels = [k for lookup in lookups for k in lookup._emb_modules]
        kernel_types[sharding] = sorted({type(k).__name__ for k in kernels})
        objects = [sharded, *sharded._embedding_shardings, *lookups, *kernels]
        for owner, attr in TORCHREC_ATTRIBUTES:
            instances = [o for o in objects if isinstance(o, owner)]
            if instances:
                key = f"{owner.__name__}.{attr}"
                found[key] = found.get(key, True) and all(hasattr(o, attr) for o in instances)
    return found, kernel_types


# --- the tests --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sharding", SHARDINGS)
def test_forward_equals_torchrec_unsharded(workers, sharding):
    kernels = ["dense"] if sharding == "data_parallel" else ["fused", "dense"]
    for kernel in kernels:
        for weighted in (False, True):
            for rank, result in enumerate(workers.run(case_forward, sharding, kernel, weighted)):
                assert result["type"] == "ShardedEmbeddingBagCollection"
                # The keys of TorchRec's own sharded collection, in its order (that of the ranks that pooled them).
                assert result["keys"] == result["stock_keys"]
                assert sorted(result["keys"]) == sorted(FEATURES)
                for key, want in result["want"].items():
                    torch.testing.assert_close(result["got"][key], want, rtol=1e-6, atol=1e-6,
                                               msg=f"{sharding}/{kernel}/weighted={weighted} rank {rank} {key}")


def _check_shards(got: dict, want: dict, what: str, tol: float = 1e-5) -> None:
    """Each of ``got``'s shards equals the same block of ``want``'s (whole tensors, or shards)."""
    for key, pieces in got.items():
        for offsets, tensor in pieces:
            reference = want[key]
            if isinstance(reference, list):  # shards of the same layout
                matches = [t for o, t in reference if o == offsets]
                assert matches, f"{what}: no shard at {offsets} of {key}"
                reference = matches[0]
            else:
                block = tuple(slice(o, o + n) for o, n in zip(offsets, tensor.shape))
                reference = reference[block]
            torch.testing.assert_close(tensor, reference, rtol=tol, atol=tol, msg=f"{what}: {key} at {offsets}")


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("sharding", ["table_wise", "row_wise", "column_wise", "table_column_wise"])
def test_fused_step_equals_single_process_and_torchrec(workers, sharding, optimizer):
    for rank, r in enumerate(workers.run(case_step, sharding, "fused", optimizer)):
        # mprec's kernels ran the step; TorchRec's run of the same plan ran FBGEMM's (which shows that the
        # check can tell them apart).
        assert "mprec::batched_embedding_bag" in r["ops"] and "mprec::batched_embedding_bag_update" in r["ops"]
        assert not [op for op in r["ops"] if op.startswith("fbgemm::") and "embedding" in op], r["ops"]
        assert [op for op in r["stock_ops"] if op.startswith("fbgemm::") and "embedding" in op]
        _check_shards(r["mine"], r["stock"], f"rank {rank} {sharding} {optimizer}: mprec vs FBGEMM")
        _check_shards(r["mine_optimizer"], r["stock_optimizer"], f"rank {rank} {sharding}: optimizer state")
        if optimizer == "rowwise_adagrad":
            assert r["mine_optimizer"] and all(k.endswith(".momentum1") for k in r["mine_optimizer"])
        # Row-wise Adagrad keeps one accumulator per row of each column shard (as FBGEMM does): column-wise
        # sharded tables then differ from one process by design, so they are compared with TorchRec above.
        if optimizer == "sgd" or sharding in ("table_wise", "row_wise"):
            _check_shards(r["mine"], r["single"], f"rank {rank} {sharding} {optimizer}: sharded vs one process")
        if optimizer == "rowwise_adagrad" and sharding in ("table_wise", "row_wise"):
            single = {f"embedding_bags.{k.split('.')[0]}.weight/{k.split('.')[0]}.momentum1": v
                      for k, v in r["single_optimizer"].items()}
            _check_shards(r["mine_optimizer"], single, f"rank {rank} {sharding}: accumulators vs one process")


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_dense_kernel_gradient_step_equals_single_process(workers, sharding):
    for rank, r in enumerate(workers.run(case_step, sharding, "dense", "sgd")):
        assert "mprec::batched_embedding_bag" in r["ops"], r["ops"]
        assert not [op for op in r["ops"] if op.startswith("fbgemm::") and "embedding" in op], r["ops"]
        _check_shards(r["mine"], r["single"], f"rank {rank} {sharding} dense: sharded vs one process")
        _check_shards(r["mine"], r["stock"], f"rank {rank} {sharding} dense: mprec vs FBGEMM")


@pytest.mark.parametrize("sharding", ["table_wise", "row_wise", "column_wise", "data_parallel"])
def test_dhe_and_hybrid_features_are_replicated(workers, sharding):
    for rank, r in enumerate(workers.run(case_dhe_and_hybrid, sharding)):
        assert sorted(r["keys"]) == sorted(r["want_keys"])
        for key, want in r["want"].items():
            torch.testing.assert_close(r["got"][key], want, rtol=1e-5, atol=1e-6, msg=f"{sharding} rank {rank} {key}")
        # Only table parts are sharded (t2 is the hybrid's table); DHE parameters are left to DDP.
        assert r["sharded_names"] == ["embedding_bags.t0.weight", "embedding_bags.t2.weight",
                                      "embedding_bags.t3.weight"]
        assert r["state_keys"] == r["want_state_keys"]


def test_bad_plans_and_inputs_are_refused(workers):
    messages = workers.run(case_errors)[0]
    assert "no sharding for ['t2']" in messages["missing_table"]
    assert "names tables the collection does not have: ['t9']" in messages["unknown_table"]
    assert "['t3'], which are DHE features" in messages["dhe_in_plan"]
    assert ("fused optimizer ADAM is not supported; use EmbOptimType.EXACT_SGD or EmbOptimType.EXACT_ROWWISE_ADAGRAD"
            in messages["bad_optimizer"])
    assert "unknown ['f9']" in messages["unknown_key"]
    assert "missing ['f4']" in messages["missing_key"]


def test_torchrec_internals_are_where_mprec_expects_them(workers):
    import torchrec
    from torchrec.distributed.batched_embedding_kernel import EmbeddingFusedOptimizer
    from torchrec.distributed.embedding_lookup import GroupedPooledEmbeddingsLookup

    from mprec.distributed import _torchrec

    assert torchrec.__version__.split("+")[0] == _torchrec.TORCHREC_VERSION
    for owner, name in _torchrec.TORCHREC_METHODS:
        assert callable(getattr(owner, name, None)), f"torchrec {torchrec.__version__}: {owner.__name__}.{name} is gone"
    # The call shapes mprec uses.
    assert list(inspect.signature(GroupedPooledEmbeddingsLookup.__init__).parameters)[1:8] == [
        "grouped_configs", "device", "pg", "feature_processor", "scale_weight_gradients", "sharding_type", "env"]
    assert list(inspect.signature(GroupedPooledEmbeddingsLookup._create_embedding_kernel).parameters)[1:] == [
        "config", "device", "pg", "sharding_type", "env"]
    assert list(inspect.signature(EmbeddingFusedOptimizer.__init__).parameters)[1:8] == [
        "config", "emb_module", "pg", "create_for_table", "param_weight_for_table", "embedding_weights_by_table",
        "all_optimizer_states"]
    found, kernel_types = workers.run(case_internals)[0]
    wanted = {f"{owner.__name__}.{attr}" for owner, attr in _torchrec.TORCHREC_ATTRIBUTES}
    assert set(found) == wanted, f"no live instance to check: {sorted(wanted - set(found))}"
    moved = sorted(k for k, ok in found.items() if not ok)
    assert not moved, f"torchrec {torchrec.__version__}: these internals moved: {moved}"
    assert kernel_types == {"table_wise": ["MprecFusedEmbeddingBag"], "row_wise": ["MprecFusedEmbeddingBag"],
                            "data_parallel": ["MprecDenseEmbeddingBag"]}


# --- a DLRM trained across processes ------------------------------------------------------------------------

DLRM_SIZES = [40, 25, 60, 30, 50]
DLRM_REPRESENTATIONS = ["table", "dhe", "hybrid", "table", "table"]


def dlrm_batches(steps: int):
    """The DLRM tests' global batches, each with this rank's share of its rows."""
    import torch.distributed as dist

    from mprec.data import Batch, SyntheticCriteo

    rank, world = dist.get_rank(), dist.get_world_size()
    data = SyntheticCriteo(steps, 8 * world, DLRM_SIZES, seed=5)
    for i in range(steps):
        batch = data.batch(i)
        b = len(batch) // world
        rows = slice(rank * b, (rank + 1) * b)
        yield batch, Batch.from_rows(batch.labels[rows], batch.dense[rows], batch.sparse()[rows])


def single_step(model, optimizer, batch) -> float:
    """One single-process training step on the whole global batch; its loss."""
    from torch.nn import functional as F

    loss = F.binary_cross_entropy_with_logits(model(batch.dense, batch.indices, batch.offsets), batch.labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def case_dlrm_training(sharding: str, optimizer: str, steps: int):
    """The same DLRM trained ``steps`` steps on the same global batches in one process and over the group:
    returns both loss curves and this rank's shards of the final weights beside the single-process ones."""
    import torch.distributed as dist

    from mprec.distributed.training import Cluster, DistributedDLRM
    from mprec.models import DLRM
    from mprec.nn import FusedOptimizer

    rank, world = dist.get_rank(), dist.get_world_size()
    dhe = dict(k=16, m=97, decoder=(8,))
    lr = 0.05 if optimizer == "sgd" else 0.02
    kwargs = dict(representations=DLRM_REPRESENTATIONS, dhe=dhe, bottom=(32, 16), top=(32, 1), embedding_dim=16)
    torch.manual_seed(0)
    single = DLRM(DLRM_SIZES, optimizer=FusedOptimizer(optimizer if optimizer == "sgd" else "rowwise_adagrad",
                                                       lr=lr), **kwargs)
    start = {k: v.clone() for k, v in single.state_dict().items()}
    dense_opt = (lambda p: torch.optim.SGD(p, lr=lr)) if optimizer == "sgd" else \
        (lambda p: torch.optim.Adagrad(p, lr=lr, eps=1e-8))
    single_opt = dense_opt(single.dense_parameters())
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    fused = dict(optimizer=EmbOptimType.EXACT_SGD if optimizer == "sgd" else EmbOptimType.EXACT_ROWWISE_ADAGRAD,
                 learning_rate=lr, eps=1e-8)
    model = DLRM(DLRM_SIZES, embedding_device="meta", **kwargs)
    run = DistributedDLRM(model, sharding, Cluster(rank, world, world, torch.device("cpu")), fused, dense_opt)
    run.model.load_state_dict(start)
    single_losses, losses = [], []
    for batch, mine in dlrm_batches(steps):
        loss = run.step(mine)
        total = torch.tensor([loss.item()])
        dist.all_reduce(total)
        losses.append(total.item() / world)
        single_losses.append(single_step(single, single_opt, batch))
    return dict(losses=losses, single_losses=single_losses, mine=local_shards(run.model.state_dict()),
                single={k: v.detach().clone() for k, v in single.state_dict().items()})


@pytest.mark.parametrize("sharding,optimizer", [("auto", "sgd"), ("row-wise", "adagrad"), ("table-wise", "sgd"),
                                                ("column-wise", "sgd"), ("data-parallel", "sgd")])
def test_dlrm_training_over_two_processes_equals_one_process(workers, sharding, optimizer):
    """Table, DHE and hybrid features; 50 steps on the same global batches: the loss curve and every weight
    (shard by shard) match the single-process run within float32 rounding."""
    results = workers.run(case_dlrm_training, sharding, optimizer, 50, timeout=300)
    for rank, r in enumerate(results):
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(r["single_losses"]), rtol=1e-5, atol=1e-6)
        assert set(r["mine"]) == set(r["single"])
        _check_shards(r["mine"], r["single"], f"rank {rank} {sharding} {optimizer}", tol=1e-5)


def case_dlrm_pipelined(sharding: str, steps: int):
    """The DLRM of ``case_dlrm_training`` trained by ``DistributedDLRM(pipeline=True)``, i.e. by TorchRec's
    ``TrainPipelineSparseDist`` (each batch's input all-to-all started during the previous batch) driving a
    ``DLRMTrain``, on this rank's slices of the same global batches as a single-process run: both loss curves,
    whether the pipeline took the collection out of the forward, the names of the run's state, the trained models'
    logits of this rank's first slice, and this rank's shards beside the single-process weights."""
    import torch.distributed as dist
    from torchrec.distributed.types import ShardedModule
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    from mprec.distributed.training import Cluster, DistributedDLRM
    from mprec.models import DLRM
    from mprec.nn import FusedOptimizer

    rank, world = dist.get_rank(), dist.get_world_size()
    lr = 0.05
    kwargs = dict(representations=DLRM_REPRESENTATIONS, dhe=dict(k=16, m=97, decoder=(8,)), bottom=(32, 16),
                  top=(32, 1), embedding_dim=16)
    torch.manual_seed(0)
    single = DLRM(DLRM_SIZES, optimizer=FusedOptimizer("sgd", lr=lr), **kwargs)
    start = {k: v.clone() for k, v in single.state_dict().items()}
    single_opt = torch.optim.SGD(single.dense_parameters(), lr=lr)
    run = DistributedDLRM(DLRM(DLRM_SIZES, embedding_device="meta", **kwargs), sharding,
                          Cluster(rank, world, world, torch.device("cpu")),
                          dict(optimizer=EmbOptimType.EXACT_SGD, learning_rate=lr), lambda p: torch.optim.SGD(p, lr=lr),
                          pipeline=True)
    state = run.state_dict()
    state["model"] = {k: start[k] if k in start else v for k, v in state["model"].items()}
    run.load_state_dict(state)
    mine, single_losses = [], []
    for batch, part in dlrm_batches(steps):
        mine.append(part)
        single_losses.append(single_step(single, single_opt, batch))
    losses = []
    for loss, examples in run.train_batches(mine):
        assert examples == len(mine[0])
        total = loss.reshape(1).clone()
        dist.all_reduce(total)
        losses.append(total.item() / world)
    pipelined = [getattr(m, "is_pipelined", False) for m in run.model.modules() if isinstance(m, ShardedModule)]
    with torch.no_grad():  # the trained model's predictions, outside the pipeline
        logits = run.forward(mine[0]), single(mine[0].dense, mine[0].indices, mine[0].offsets)
    state = run.state_dict()
    return dict(losses=losses, single_losses=single_losses, pipelined=pipelined, mine=local_shards(state["model"]),
                logits=logits,
                optimizer_names=sorted(state["optimizer"]["state"]),
                single={k: v.detach().clone() for k, v in single.state_dict().items()})


@pytest.mark.parametrize("sharding", ["table-wise", "row-wise"])
def test_dlrm_trains_under_torchrec_train_pipeline(workers, sharding):
    """TorchRec's TrainPipelineSparseDist finds the sharded collection in mprec's DLRM (it traces the model
    symbolically) and pipelines its input all-to-all; 20 steps equal the single-process run, and the run's state
    is named as without a pipeline (the checkpoints of both are one format)."""
    results = workers.run(case_dlrm_pipelined, sharding, 20, timeout=300)
    for rank, r in enumerate(results):
        assert r["pipelined"] == [True], f"rank {rank}: the pipeline left the collection in the forward"
        assert len(r["losses"]) == 20
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(r["single_losses"]), rtol=1e-5, atol=1e-6)
        assert set(r["mine"]) == set(r["single"])
        assert r["optimizer_names"] and not any(k.startswith("model.") for k in r["optimizer_names"])
        torch.testing.assert_close(r["logits"][0], r["logits"][1], rtol=1e-5, atol=1e-6)
        _check_shards(r["mine"], r["single"], f"rank {rank} {sharding} pipelined", tol=1e-5)


def case_shutdown():
    """A sharded DLRM trains a step on this rank, then the rank leaves its group twice: with the model still
    held (the group's threads must outlive that, with a warning), then with it dropped. Returns gloo's worker
    threads before, between and after, and each shutdown's warnings."""
    import warnings

    import torch.distributed as dist
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    import mprec.distributed as md
    from mprec.distributed.training import Cluster, DistributedDLRM
    from mprec.models import DLRM

    rank, world = dist.get_rank(), dist.get_world_size()
    model = DLRM(DLRM_SIZES, embedding_device="meta", representations=DLRM_REPRESENTATIONS,
                 dhe=dict(k=16, m=97, decoder=(8,)), bottom=(32, 16), top=(32, 1), embedding_dim=16)
    run = DistributedDLRM(model, "row-wise", Cluster(rank, world, world, torch.device("cpu")),
                          dict(optimizer=EmbOptimType.EXACT_SGD, learning_rate=0.05),
                          lambda p: torch.optim.SGD(p, lr=0.05))
    del model
    _, mine = next(dlrm_batches(1))
    run.step(mine)
    del mine
    threads, said = [md._gloo_threads()], []
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            md.shutdown()
        said.append([str(w.message) for w in caught])
        threads.append(md._gloo_threads())
        run = None
    return dict(threads=threads, warnings=said, initialized=dist.is_initialized())


def test_shutdown_ends_the_process_groups_threads():
    """``mprec.distributed.shutdown`` joins gloo's worker threads, which would otherwise release a collective's
    tensors as the interpreter finalizes and abort the process at exit; it warns where a model still holds the
    group, so that cannot be done."""
    group = Workers(WORLD)
    try:
        results = group.run(case_shutdown, timeout=300)
    finally:
        group.close()
    for rank, r in enumerate(results):
        before, held, dropped = r["threads"]
        assert before > 0, f"rank {rank}: no gloo worker threads found: has torch renamed them?"
        assert held == before and len(r["warnings"][0]) == 1 and "still holds the group" in r["warnings"][0][0], r
        assert dropped == 0 and r["warnings"][1] == [], r
        assert not r["initialized"]


# --- four processes -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workers4():
    group = Workers(4)
    yield group
    group.close()


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["table_wise", "row_wise", "column_wise", "data_parallel"])
def test_four_processes(workers4, sharding):
    """The forward and one training step over 4 ranks, as over 2 (against TorchRec's unsharded collection, one
    process and FBGEMM's kernels), and a DLRM trained 20 steps as in one process."""
    for rank, result in enumerate(workers4.run(case_forward, sharding, "dense", False, timeout=300)):
        for key, want in result["want"].items():
            torch.testing.assert_close(result["got"][key], want, rtol=1e-6, atol=1e-6, msg=f"rank {rank} {key}")
    kernel = "dense" if sharding == "data_parallel" else "fused"
    for rank, r in enumerate(workers4.run(case_step, sharding, kernel, "sgd", timeout=300)):
        _check_shards(r["mine"], r["single"], f"rank {rank} {sharding}: sharded vs one process")
        _check_shards(r["mine"], r["stock"], f"rank {rank} {sharding}: mprec vs FBGEMM")
    cli = {"table_wise": "table-wise", "row_wise": "row-wise", "column_wise": "column-wise",
           "data_parallel": "data-parallel"}[sharding]
    for rank, r in enumerate(workers4.run(case_dlrm_training, cli, "sgd", 20, timeout=300)):
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(r["single_losses"]), rtol=1e-5, atol=1e-6)
        _check_shards(r["mine"], r["single"], f"rank {rank} {sharding} DLRM", tol=1e-5)


@pytest.mark.parametrize("world_size", [2, 3])
def test_table_wise_plan_balances_bytes_and_lookups(world_size):
    """The Kaggle tables: each rank reads 26/N tables, give or take one, and holds close to 1/N of the bytes
    (within 10% on 2 ranks, the benchmark's target; on 3 the largest table alone is 30% of them)."""
    from mprec.data import KAGGLE_TABLE_SIZES
    from mprec.distributed.training import balanced_ranks

    rows = {f"t{t}": n for t, n in enumerate(KAGGLE_TABLE_SIZES)}
    ranks = balanced_ranks({name: n * 64 for name, n in rows.items()}, world_size)
    assert set(ranks) == set(rows) and set(ranks.values()) == set(range(world_size))
    held = [sum(n for name, n in rows.items() if ranks[name] == r) for r in range(world_size)]
    tables = [sum(1 for name in rows if ranks[name] == r) for r in range(world_size)]
    fair = sum(rows.values()) / world_size
    assert max(abs(h - fair) for h in held) <= (0.10 if world_size == 2 else 0.20) * fair, held
    assert max(tables) - min(tables) <= 1, tables


def test_table_wise_plan_weighs_tables_by_their_lookups():
    """A table read by 30 features (of 55 reads per example) shares its rank with few others."""
    from mprec.data import KAGGLE_TABLE_SIZES
    from mprec.distributed.training import balanced_ranks

    rows = {f"t{t}": n * 64 for t, n in enumerate(KAGGLE_TABLE_SIZES)}
    lookups = {name: 1 for name in rows} | {"t25": 30}
    ranks = balanced_ranks(rows, 2, lookups)
    work = [sum(lookups[name] for name in rows if ranks[name] == r) for r in range(2)]
    assert max(work) <= 0.62 * sum(work), work
    assert ranks == balanced_ranks(rows, 2, lookups)  # deterministic: every rank computes the same plan

"""A DLRM trained across processes and hosts on TorchRec's DistributedModelParallel: ``mprec train --sharding``.

    torchrun --nproc-per-node 2 -m mprec.cli train --sharding auto --data synthetic --checkpoint run/
    torchrun --nnodes 2 --node-rank R --master-addr HOST0 --nproc-per-node 8 -m mprec.cli train ...

Each rank holds its shards of the tables (the plan: TorchRec's planner for ``auto``, or every table one way) and
a replica of the MLPs and DHE decoders, which train data-parallel. ``--batch-size`` is the global batch: each
rank trains on ``batch_size / world_size`` examples a step, read from its own slice of the data (a stripe of
each file, or its own stream of the synthetic generator). Losses and the evaluation's metrics are reduced across
ranks; rank 0 reports. Checkpoints are sharded (:mod:`mprec.distributed.checkpoint`): a killed run started
again with the same command resumes at its last checkpoint, and ``mprec eval`` loads one in a single process.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torchrec import KeyedJaggedTensor
from torchrec.datasets.utils import Batch as TorchRecBatch
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed import sharding_plan as plans
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.distributed.types import ShardingEnv, ShardingPlan, ShardingType
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from .. import training as local
from ..data import NUM_DENSE, Batch, Vocabulary
from ..models.dlrm import DLRM, DLRMTrain
from ..nn.collection import EmbeddingBagCollection
from ..ops.mlp import gemm_choices, restore_gemm_choices
from . import checkpoint
from .sharder import EmbeddingBagCollectionSharder

__all__ = ["SHARDINGS", "Cluster", "init", "balanced_ranks", "plan", "shard", "DistributedDLRM", "train", "evaluate"]

#: ``--sharding`` values: TorchRec's planner, or every table sharded one way.
SHARDINGS = ("auto", "table-wise", "row-wise", "column-wise", "data-parallel")
_FUSED = {"sgd": EmbOptimType.EXACT_SGD, "adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD}


@dataclass
class Cluster:
    rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(timeout_s: float = 300.0) -> Cluster:
    """Joins (or starts) the process group: torchrun's environment when present, else a group of one. A
    collective that waits longer than ``timeout_s`` for a rank (one that died) fails instead of hanging."""
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
        else torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                                    timeout=timedelta(seconds=timeout_s))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Cluster(dist.get_rank(), dist.get_world_size(),
                   int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())), device)


# --- plans and sharding -------------------------------------------------------------------------------------

def _collections(model: nn.Module) -> dict:
    return {path: m for path, m in model.named_modules() if isinstance(m, EmbeddingBagCollection)}


def balanced_ranks(table_bytes: dict, world_size: int, lookups: Optional[dict] = None) -> dict:
    """``{table: rank}`` for a table-wise plan that balances both what each rank holds and what it does.

    Each table has a share of all table bytes and a share of all lookups (``lookups``: rows read per example,
    e.g. the features reading it times their pooling factor; default 1 per table). Tables, the largest share
    first, go each to the rank that keeps the most loaded rank, in either measure, least loaded. Bytes alone
    would leave one rank every small table: on the Kaggle tables over 2 ranks, 23 of 26, and so 23/26 of the
    pooling, table updates and all-to-all bytes while its peer waits; balanced in both, each rank holds
    within 7% of half the bytes and reads 13 tables."""
    lookups = lookups or {name: 1 for name in table_bytes}
    total_bytes = sum(table_bytes.values()) or 1
    total_lookups = sum(lookups.values()) or 1
    share = {name: (table_bytes[name] / total_bytes, lookups[name] / total_lookups) for name in table_bytes}
    held, read = [0.0] * world_size, [0.0] * world_size
    ranks = {}
    for name in sorted(share, key=lambda n: -max(share[n])):
        def after(rank: int) -> tuple:  # (the most loaded rank's load, this rank's load) if `name` goes there
            h, r = held[:], read[:]
            h[rank] += share[name][0]
            r[rank] += share[name][1]
            return max(max(h), max(r)), h[rank] + r[rank], rank
        rank = min(range(world_size), key=after)
        held[rank] += share[name][0]
        read[rank] += share[name][1]
        ranks[name] = rank
    return ranks


def plan(model: nn.Module, sharding: str, sharder: EmbeddingBagCollectionSharder, cluster: Cluster) -> ShardingPlan:
    """The plan for every mprec collection in ``model``: TorchRec's planner (``auto``: table-wise, row-wise,
    column-wise or table-column-wise per table, fused kernels), or every table ``sharding``. Table-wise
    balances each rank's table bytes and lookups (:func:`balanced_ranks`)."""
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {SHARDINGS}, got {sharding!r}")
    world = cluster.world_size
    if sharding == "auto":
        constraints = {name: ParameterConstraints(
            sharding_types=[ShardingType.TABLE_WISE.value, ShardingType.ROW_WISE.value,
                            ShardingType.COLUMN_WISE.value, ShardingType.TABLE_COLUMN_WISE.value],
            compute_kernels=["fused"])
            for collection in _collections(model).values() for name in sharder.shardable_parameters(collection)}
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device=cluster.device.type,
                                                             local_world_size=cluster.local_world_size),
                                           constraints=constraints)
        return planner.collective_plan(model, [sharder], dist.GroupMember.WORLD)
    out = {}
    for path, collection in _collections(model).items():
        tables = sharder.shardable_parameters(collection)
        if sharding == "table-wise":
            readers = {c.name: len(c.feature_names) for c in collection.embedding_bag_configs()}
            ranks = balanced_ranks({n: t.numel() * t.element_size() for n, t in tables.items()}, world,
                                   {n: readers.get(n, 1) for n in tables})
            chosen = {name: plans.table_wise(rank=rank, compute_kernel="fused") for name, rank in ranks.items()}
        elif sharding == "row-wise":
            chosen = {name: plans.row_wise(compute_kernel="fused") for name in tables}
        elif sharding == "column-wise":
            chosen = {name: plans.column_wise(ranks=list(range(world)), compute_kernel="fused") for name in tables}
        else:
            chosen = {name: plans.data_parallel() for name in tables}
        if chosen:
            out[path] = plans.construct_module_sharding_plan(collection, chosen, local_size=cluster.local_world_size,
                                                             world_size=world, device_type=cluster.device.type,
                                                             sharder=sharder)
    return ShardingPlan(out)


def shard(model: nn.Module, sharding: str, cluster: Cluster, fused_params: Optional[dict] = None
          ) -> DistributedModelParallel:
    """``model`` under DistributedModelParallel, its mprec collections sharded by ``sharding``."""
    sharder = EmbeddingBagCollectionSharder(fused_params)
    return DistributedModelParallel(model, env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
                                    device=cluster.device, plan=plan(model, sharding, sharder, cluster),
                                    sharders=[sharder])


class DistributedDLRM:
    """A DLRM sharded over the process group, with its optimizers: the tables' fused optimizer (in the
    backward) and ``dense_optimizer`` for the rest (MLPs, DHE decoders, data-parallel tables).
    :meth:`train_batches` trains on this rank's batches; the state (model and both optimizers) is one dict for
    checkpoints, the same with and without a pipeline.

    ``pipeline``: steps run under TorchRec's ``TrainPipelineSparseDist``, which starts the next batch's input
    all-to-all (the routing of its ids to the ranks that hold their tables) before this batch's forward and
    waits for it before the backward, so the exchange overlaps a step's compute instead of preceding it. The
    model computes the same: the routed ids are those a plain step would route. The pipeline drives a
    :class:`~mprec.models.DLRMTrain` (model and loss), whose parameter names carry a ``model.`` prefix that
    :meth:`state_dict` and :meth:`load_state_dict` take off and put back."""

    def __init__(self, model: DLRM, sharding: str, cluster: Cluster, fused_params: dict, dense_optimizer,
                 pipeline: bool = False) -> None:
        self.feature_names = list(model.feature_names)
        self.cluster = cluster
        self._prefix = _TRAIN_PREFIX if pipeline else ""
        self.model = shard(DLRMTrain(model) if pipeline else model, sharding, cluster, fused_params)
        dense = dict(in_backward_optimizer_filter(self.model.named_parameters()))
        optimizers = [("", self.model.fused_optimizer)]
        if dense:
            optimizers.append(("", KeyedOptimizerWrapper(dense, dense_optimizer)))
        self.optimizer = CombinedOptimizer(optimizers)
        self.pipeline = TrainPipelineSparseDist(self.model, self.optimizer, cluster.device) if pipeline else None

    def sparse(self, batch: Batch) -> KeyedJaggedTensor:
        return KeyedJaggedTensor(keys=self.feature_names, values=batch.indices, offsets=batch.offsets)

    def _torchrec_batch(self, batch: Batch) -> TorchRecBatch:
        return TorchRecBatch(dense_features=batch.dense, sparse_features=self.sparse(batch), labels=batch.labels)

    def forward(self, batch: Batch) -> Tensor:
        """Logits of this rank's batch."""
        if self.pipeline is None:
            return self.model(batch.dense.to(self.cluster.device), self.sparse(batch))
        # The collection's own forward back in place (the pipeline's expects its input all-to-all done); the
        # pipeline's next step puts its own back.
        self.pipeline.detach()
        _, (_, logits, _) = self.model(self._torchrec_batch(batch).to(self.cluster.device))
        return logits

    def step(self, batch: Batch) -> Tensor:
        """One training step on this rank's batch (without the pipeline); returns its mean loss (not reduced)."""
        if self.pipeline is not None:
            raise RuntimeError("DistributedDLRM.step: this run trains through its pipeline (train_batches), which "
                               "reads a batch ahead")
        logits = self.forward(batch)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch.labels.to(logits.device))
        self.optimizer.zero_grad()
        loss.backward()  # also steps the tables (fused optimizer)
        self.optimizer.step()
        return loss.detach()

    def train_batches(self, batches: Iterable[Batch]) -> Iterator[tuple]:
        """Trains on each of this rank's ``batches`` in turn; yields ``(mean loss, examples)`` of each step, not
        reduced across ranks. With the pipeline, a step reads the batch two ahead of the one it trains, and routes
        the ids of the next."""
        if self.pipeline is None:
            for batch in batches:
                yield self.step(batch), len(batch)
            return
        feed = (self._torchrec_batch(batch) for batch in batches)
        while True:
            try:
                loss, _, labels = self.pipeline.progress(feed)
            except StopIteration:
                return
            yield loss, len(labels)

    def state_dict(self) -> dict:
        return {"model": _renamed(self.model.state_dict(), self._prefix, ""),
                "optimizer": _renamed_optimizer(self.optimizer.state_dict(), self._prefix, "")}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(_renamed(state["model"], "", self._prefix))
        self.optimizer.load_state_dict(_renamed_optimizer(state["optimizer"], "", self._prefix))

    def load(self, path: str) -> None:
        """Model and optimizers from the sharded checkpoint at ``path``, resharded to this run."""
        state = self.state_dict()
        checkpoint.load(path, state)
        self.load_state_dict(state)


# DLRMTrain's attribute for its model: the start of every parameter name under a pipeline.
_TRAIN_PREFIX = "model."


def _renamed(names: dict, old: str, new: str) -> dict:
    """``names`` (keyed by parameter names) with each key's prefix ``old`` replaced by ``new``."""
    if old == new:
        return names
    return type(names)((new + k.removeprefix(old), v) for k, v in names.items())


def _renamed_optimizer(state: dict, old: str, new: str) -> dict:
    """A TorchRec ``KeyedOptimizer`` state dict with its parameter names renamed as :func:`_renamed` does."""
    if old == new:
        return state
    out = dict(state, state=_renamed(state["state"], old, new))
    if "param_groups" in state:
        out["param_groups"] = [dict(g, params=[new + p.removeprefix(old) for p in g["params"]])
                               for g in state["param_groups"]]
    return out


def build(config: local.RunConfig, table_sizes: list, sharding: str, cluster: Cluster, pipeline: bool = False
          ) -> DistributedDLRM:
    """The run's model (tables made shard by shard on their ranks) and optimizers, as :func:`train` uses them."""
    model = local.build_model(config, table_sizes, embedding_device="meta")
    fused = dict(optimizer=_FUSED[config.optimizer], learning_rate=config.lr)
    if config.optimizer == "adagrad":
        fused["eps"] = 1e-8
    dense = (lambda params: torch.optim.SGD(params, lr=config.lr)) if config.optimizer == "sgd" else \
        (lambda params: torch.optim.Adagrad(params, lr=config.lr, eps=1e-8))
    return DistributedDLRM(model, sharding, cluster, fused, dense, pipeline)


# --- reductions ---------------------------------------------------------------------------------------------

def _all_have(has: bool, op=dist.ReduceOp.MIN) -> bool:
    """Whether every rank (``op`` MAX: any rank) has a batch: the ranks' stripes may hold a few examples more
    or less, and the collectives of a step need every rank."""
    flag = torch.tensor([1 if has else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=op)
    return bool(flag.item())


def pad_batch(batch: Optional[Batch], size: int, num_features: int) -> Batch:
    """``batch`` (None: no examples) grown to ``size`` examples by examples with no lookups: the ranks of a
    step must pool equal shares."""
    n = 0 if batch is None else len(batch)
    if n == size:
        return batch
    lengths = torch.zeros(num_features, size, dtype=torch.int64)
    if batch is not None:
        lengths[:, :n] = batch.offsets.diff().view(num_features, n)
    offsets = torch.zeros(num_features * size + 1, dtype=torch.int64)
    offsets[1:] = lengths.reshape(-1).cumsum(0)
    dense = torch.zeros(size, NUM_DENSE)
    labels = torch.zeros(size)
    indices = torch.zeros(0, dtype=torch.int64)
    if batch is not None:
        dense[:n], labels[:n], indices = batch.dense, batch.labels, batch.indices[:int(batch.offsets[-1])]
    return Batch(dense=dense, indices=indices, offsets=offsets, labels=labels)


def _sum(*values: float) -> list:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(run: DistributedDLRM, batches: Iterable[Batch], batch_size: int) -> Optional[dict]:
    """Metrics over every rank's batches (each rank its slice of the data, in batches of up to ``batch_size``
    examples), computed on rank 0 (None on the others)."""
    model = run.model
    was_training = model.training
    model.eval()
    labels, probs = [], []
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        if not _all_have(batch is not None, dist.ReduceOp.MAX):
            break
        n = 0 if batch is None else len(batch)
        logits = run.forward(pad_batch(batch, batch_size, len(run.feature_names)))
        if n:
            probs.append(torch.sigmoid(logits[:n].float()).cpu())
            labels.append(batch.labels)
    model.train(was_training)
    local_rows = (torch.cat(labels) if labels else torch.zeros(0), torch.cat(probs) if probs else torch.zeros(0))
    gathered = [None] * run.cluster.world_size if run.cluster.is_main else None
    dist.gather_object(local_rows, gathered, dst=0)
    if not run.cluster.is_main:
        return None
    y = torch.cat([g[0] for g in gathered]).double()
    p = torch.cat([g[1] for g in gathered]).double()
    return local.metrics(y, p)


# --- training -----------------------------------------------------------------------------------------------

def train(config: local.RunConfig, sharding: str = "auto", progress: bool = True, log=sys.stderr,
          timeout_s: float = 300.0, pipeline: bool = False) -> Optional[dict]:
    """Trains over the process group (resuming from ``config.checkpoint``, a folder, when it holds a checkpoint);
    returns a summary on rank 0, None on the others. ``pipeline``: under TorchRec's train pipeline (see
    :class:`DistributedDLRM`); the weights are the same either way."""
    config.validate()
    cluster = init(timeout_s)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.batch_size % cluster.world_size:
        raise ValueError(f"--batch-size {config.batch_size} (the global batch) must be a multiple of the "
                         f"{cluster.world_size} processes")
    if config.precision == "bf16":
        raise ValueError("distributed training runs in fp32 (--precision fp32, or auto)")
    config = dataclasses.replace(config, precision="fp32")
    found = checkpoint.latest(config.checkpoint) if config.checkpoint else None
    meta = local.load_checkpoint(found) if found else None
    if meta is not None:
        local.check_resumable(meta, config, found)
        table_sizes, vocabulary = meta["table_sizes"], local.vocabulary_of(meta)
    else:
        vocabulary = None
        if config.data != local.SYNTHETIC and config.max_ind_range is None:
            vocabulary = Vocabulary.build(config.data, min_count=config.min_count)  # every rank: the same one
        table_sizes = local.table_sizes_for(config, vocabulary)
    run = build(config, table_sizes, sharding, cluster, pipeline)
    epoch, step, batch_in_epoch = 0, 0, 0
    if found:
        run.load(found)
        epoch, step, batch_in_epoch = meta["epoch"], meta["step"], meta["batch_in_epoch"]
        # Each rank computes as its predecessor did (at another world size, as rank 0 did).
        choices = meta.get("gemm_choices") or [[]]
        restore_gemm_choices(choices[cluster.rank] if len(choices) == cluster.world_size else choices[0])
        if cluster.is_main:
            print(f"resuming from {found} at epoch {epoch} step {step} ({meta['world_size']} processes then, "
                  f"{cluster.world_size} now)", file=log)

    def save(epoch: int, step: int, batch_in_epoch: int) -> None:
        if config.checkpoint:
            choices = [None] * cluster.world_size  # every rank's GEMM libraries, so a resumed rank uses its own
            dist.all_gather_object(choices, gemm_choices())
            checkpoint.save(config.checkpoint, step, run.state_dict(),
                            dict(config=dataclasses.asdict(config), table_sizes=table_sizes, epoch=epoch,
                                 batch_in_epoch=batch_in_epoch, world_size=cluster.world_size, sharding=sharding,
                                 gemm_choices=choices),
                            dict(vocabulary=vocabulary.state_dict() if vocabulary else None))

    def train_batches(batches: Iterable[Batch]) -> Iterator[tuple]:
        for loss, examples in run.train_batches(batches):
            total, count = _sum(loss.item() * examples, examples)
            yield total / count, int(count)

    run.model.train()
    started = time.perf_counter()
    step, examples = local.run_epochs(
        config, lambda epoch: local.make_batches(config, vocabulary=vocabulary, seed_offset=epoch, rank=cluster.rank,
                                                 world_size=cluster.world_size),
        train_batches, save, (epoch, step, batch_in_epoch), local.Progress(log, enabled=progress and cluster.is_main),
        go_on=_all_have)
    seconds = time.perf_counter() - started
    if not cluster.is_main:
        return None
    return dict(steps=step, examples_trained=examples, seconds=seconds, processes=cluster.world_size,
                sharding=sharding, examples_per_second=examples / seconds if seconds > 0 else float("nan"))


def evaluate_run(config: local.RunConfig, sharding: str, data: Optional[str] = None, timeout_s: float = 300.0
                 ) -> Optional[dict]:
    """The checkpoint of ``config`` evaluated over the process group on ``data`` (default its training data)."""
    cluster = init(timeout_s)
    meta = local.load_checkpoint(config.checkpoint)
    saved, vocabulary = local.saved_config(meta["config"]), local.vocabulary_of(meta)
    run = build(saved, meta["table_sizes"], sharding, cluster)
    run.load(config.checkpoint)
    source = data or saved.data
    saved.limit = config.limit
    batches = local.make_batches(saved, source, vocabulary, seed_offset=10_000, rank=cluster.rank,
                                 world_size=cluster.world_size, drop_last=False)
    return evaluate(run, batches, saved.batch_size // cluster.world_size)

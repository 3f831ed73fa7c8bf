"""DLRM training across processes: mprec against TorchRec, sharded by DistributedModelParallel, in one run.

The Kaggle preset (26 tables, 33.8M rows, dim 16, batch 2,048 global, Zipf(1.05) ids, fused exact SGD for the
tables, SGD for the rest) with gloo, in two layouts of this machine's cores: 1 process x N threads and N
processes x 1 thread. Three models, every collection sharded by the same table-wise plan, mprec's
(``mprec.distributed.training.balanced_ranks``: each rank holds about 1/N of the table bytes and does about 1/N
of the lookups):

- ``mprec``: mprec's DLRM and its collection (mprec's kernels);
- ``torchrec-ebc``: mprec's DLRM with TorchRec's ``EmbeddingBagCollection`` (FBGEMM's CPU kernels): the
  collections compared alone, everything else equal;
- ``torchrec``: TorchRec's own DLRM (``torchrec.models.dlrm.DLRM``: nn.Linear MLPs, its interaction) and
  collection: TorchRec's sharded training as its users run it.

The three live in the same processes and take turns in blocks of ``--block`` consecutive steps, so ratios compare
the same moments of a shared machine; each layout runs ``--rounds`` times, alternating with the other. The first
step of a block is not timed: it finds the caches and the page-walk state full of the other two models' GBs of
tables, which a training job, stepping one model, never sees (alternating single steps timed every step that
way, and the table lookups, which that state slows most, dominated the ratios).

Per model and layout: examples/s (global batch / median step), the embedding collection alone (forward and
backward, ms), the embedding kernels' time per step (profiler: mprec's pooling and fused update, or FBGEMM's
lookup, backward and bounds check), the time per step in collectives (profiler: the all-to-alls of the sparse
features and of the pooled embeddings, the all-reduce of the replicated gradients), and the table bytes each rank
holds against total / N. Writes ``results/<cpu>-<threads>t-<isa>-distributed.json`` and ``.txt``.

    python bench/bench_distributed.py [--steps 30] [--block 6] [--rounds 2] [--batch 2048] [--small] [--pipeline]

``--pipeline`` trains every model with TorchRec's ``TrainPipelineSparseDist`` (each with its loss: mprec's or
TorchRec's ``DLRMTrain``), which starts each batch's input all-to-all during the previous step, and writes
``results/<cpu>-<threads>t-<isa>-distributed-pipelined.{json,txt}``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
from datetime import timedelta
from pathlib import Path

import peer_isa

peer_isa.apply()  # before torch (see peer_isa.py); the workers inherit the caps

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

HERE = Path(__file__).resolve().parent
IMPLS = ("mprec", "torchrec-ebc", "torchrec")
KERNEL_OPS = ("mprec::batched_embedding_bag", "fbgemm::split_embedding", "fbgemm::bounds_check_indices")
LR = 0.1
PROFILED = 5  # steps per model under the profiler (collectives' and kernels' time)
COMM_OPS = ("all_to_all", "alltoall", "allreduce", "all_reduce", "reduce_scatter", "allgather", "all_gather")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _models(sizes, world, pipeline: bool = False):
    """The three models, each sharded by the same plan, with their optimizers; with ``pipeline``, each with its
    loss (``DLRMTrain``, mprec's or TorchRec's) and trained by TorchRec's ``TrainPipelineSparseDist``."""
    import torch.distributed as dist
    import torchrec
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed import sharding_plan as plans
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder as TorchRecSharder
    from torchrec.distributed.types import ShardingEnv, ShardingPlan
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
    from torchrec.models.dlrm import DLRM as TorchRecDLRM, DLRMTrain as TorchRecDLRMTrain
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    from mprec.distributed import EmbeddingBagCollectionSharder
    from mprec.distributed.training import balanced_ranks
    from mprec.models import DLRM, DLRMTrain, PRESETS

    fused = dict(optimizer=EmbOptimType.EXACT_SGD, learning_rate=LR)
    env = ShardingEnv.from_process_group(dist.GroupMember.WORLD)
    ranks = balanced_ranks({f"cat_{t}": n for t, n in enumerate(sizes)}, world)
    preset = PRESETS["kaggle"]
    out = {}
    for impl in IMPLS:
        torch.manual_seed(0)
        model = DLRM.preset("kaggle", sizes, embedding_device="meta")
        configs = model.embeddings.embedding_bag_configs()
        if impl == "torchrec-ebc":
            model.embeddings = torchrec.EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
        elif impl == "torchrec":
            model = TorchRecDLRM(torchrec.EmbeddingBagCollection(tables=configs, device=torch.device("meta")),
                                 dense_in_features=13, dense_arch_layer_sizes=list(preset["bottom"]),
                                 over_arch_layer_sizes=list(preset["top"]))
        if pipeline:
            model = TorchRecDLRMTrain(model) if impl == "torchrec" else DLRMTrain(model)
        path, collection = next((n, m) for n, m in model.named_modules() if hasattr(m, "embedding_bag_configs"))
        sharder = EmbeddingBagCollectionSharder(fused) if impl == "mprec" else TorchRecSharder(fused_params=fused)
        module_plan = plans.construct_module_sharding_plan(
            collection, {name: plans.table_wise(rank=r, compute_kernel="fused") for name, r in ranks.items()},
            local_size=world, world_size=world, device_type="cpu", sharder=sharder)
        dmp = DistributedModelParallel(model, env=env, device=torch.device("cpu"),
                                       plan=ShardingPlan({path: module_plan}), sharders=[sharder])
        dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                      lambda p: torch.optim.SGD(p, lr=LR))
        optimizer = CombinedOptimizer([("", dmp.fused_optimizer), ("", dense)])
        out[impl] = (dmp, optimizer, path,
                     TrainPipelineSparseDist(dmp, optimizer, torch.device("cpu")) if pipeline else None)
    return out


def _table_bytes(dmp) -> int:
    """Bytes of the table shards this rank holds."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    total = 0
    for key, value in dmp.state_dict().items():
        if "embedding_bags." in key and isinstance(value, ShardedTensor):
            total += sum(s.tensor.numel() * s.tensor.element_size() for s in value.local_shards())
    return total


def _worker(rank, world, port, threads, args, results):
    import torch.distributed as dist
    from torch.nn import functional as F
    from torch.profiler import ProfilerActivity, profile
    from torchrec import KeyedJaggedTensor
    from torchrec.datasets.utils import Batch as TorchRecBatch

    from mprec import timing
    from mprec.data import KAGGLE_TABLE_SIZES, SyntheticCriteo
    from mprec.distributed import shutdown
    from mprec.memory import retain_freed_memory
    from mprec.models.dlrm import keyed_values

    torch.set_num_threads(threads)
    retain_freed_memory()  # for every model of the run: they share this process
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))
    sizes = [min(n, 100_000) for n in KAGGLE_TABLE_SIZES] if args.small else list(KAGGLE_TABLE_SIZES)
    models = _models(sizes, world, args.pipeline)
    local = args.batch // world
    count = args.warmup + timing.calls_in_blocks(args.steps, args.block)
    # The profiled steps: a plain loop steps the batches from the warm-up's end again; a pipeline reads its batches
    # in order, so it needs PROFILED more, and one ahead.
    count = count + PROFILED + 1 if args.pipeline else max(count, args.warmup + PROFILED)
    data = SyntheticCriteo(count, local, sizes, seed=rank)
    batches = []
    for i in range(count):
        b = data.batch(i)
        batches.append((b.dense, KeyedJaggedTensor(keys=[f"cat_{t}" for t in range(26)], values=b.indices,
                                                   offsets=b.offsets), b.labels))

    # With --pipeline each model's pipeline reads the batches in order (one ahead of the step it finishes).
    feeds = {impl: iter([TorchRecBatch(dense_features=d, sparse_features=k, labels=y) for d, k, y in batches])
             for impl in IMPLS} if args.pipeline else {}

    def step(impl, i):
        dmp, opt, _, pipe = models[impl]
        if pipe is not None:
            pipe.progress(feeds[impl])
            return
        dense, kjt, labels = batches[i]
        loss = F.binary_cross_entropy_with_logits(dmp(dense, kjt).reshape(-1), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def embeddings_only(impl, i):
        dmp, _, path, _ = models[impl]
        collection = dmp.module.get_submodule(path) if not hasattr(dmp.module, "module") \
            else dmp.module.module.get_submodule(path)
        out = keyed_values(collection(batches[i][1]), [f"cat_{t}" for t in range(26)])
        out.sum().backward()

    def in_blocks(fn, steps: int) -> dict:
        """Seconds of ``steps`` timed calls of ``fn(impl, batch)`` per model, the models taking turns in blocks
        (mprec.timing.in_blocks); every model sees the batches in the same order."""
        return timing.in_blocks({impl: (lambda i, impl=impl: fn(impl, i)) for impl in IMPLS},
                                dict.fromkeys(IMPLS, steps), args.block, start=args.warmup, before=dist.barrier)

    for i in range(args.warmup):
        for impl in IMPLS:
            step(impl, i)
    times = in_blocks(step, args.steps)
    # A pipelined collection runs only inside its pipeline's step: timed alone in plain loops only.
    embedding = {impl: [] for impl in IMPLS} if args.pipeline else in_blocks(embeddings_only, min(args.steps, 10))
    comm, kernels = {}, {}
    for impl in IMPLS:
        dist.barrier()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(args.warmup, args.warmup + PROFILED):
                step(impl, i)
        events = prof.key_averages()
        comm[impl] = sum(e.cpu_time_total for e in events
                         if any(op in e.key.lower() for op in COMM_OPS)) / PROFILED / 1e3
        kernels[impl] = sum(e.self_cpu_time_total for e in events if e.key.startswith(KERNEL_OPS)) / PROFILED / 1e3
    import resource

    results.put(dict(rank=rank, times=times, embedding=embedding, comm_ms=comm, kernel_ms=kernels,
                     table_bytes={impl: _table_bytes(models[impl][0]) for impl in IMPLS},
                     max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
    dist.barrier()
    del models  # they hold the process group, whose threads must end before this process does
    shutdown()


def run_layout(processes: int, threads: int, args) -> list:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, processes, port, threads, args, results)) for r in range(processes)]
    for p in procs:
        p.start()
    out = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a worker of the {processes} x {threads} layout exited with {p.exitcode}")
    return sorted(out, key=lambda r: r["rank"])


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"  # NaN: not measured (a pipelined collection)


def summarize(data: dict) -> str:
    lines = [f"DLRM (Kaggle preset, batch {data['batch']}) training across processes, {data['cpu']} "
             f"({data['isa']}{peer_isa.describe(data)}), {data['cores']} cores, gloo; every collection sharded by the "
             "same balanced table-wise plan; trained by "
             f"{'TrainPipelineSparseDist' if data.get('pipeline') else 'a plain loop'}; "
             f"the models take turns in blocks of {data.get('block', 1)} steps, the first untimed; "
             "medians over steps and rounds", "",
             f"{'layout':<23} {'model':<13} {'examples/s':>11} {'mprec/it':>9} {'collection ms':>14} "
             f"{'kernels ms':>11} {'comm ms':>8} {'tables/rank MB':>15} {'vs total/N':>11}"]
    for layout, row in data["layouts"].items():
        for impl in IMPLS:
            r = row[impl]
            ratio = row["mprec"]["examples_per_second"] / r["examples_per_second"]
            tables = "/".join(f"{b / 2**20:.0f}" for b in r["table_bytes"])
            lines.append(f"{layout:<23} {impl:<13} {r['examples_per_second']:>11,.0f} "
                         f"{(f'{ratio:.2f}x' if impl != 'mprec' else ''):>9} {_ms(r['embedding_ms']):>14} "
                         f"{r['kernel_ms']:>11.1f} {r['comm_ms']:>8.1f} {tables:>15} {r['balance']:>11}")
    t = data["targets"]
    lines += ["", "mprec: mprec's DLRM and collection; torchrec-ebc: mprec's DLRM with TorchRec's collection (the "
              "collections alone differ); torchrec: TorchRec's DLRM and collection. collection ms: the sharded "
              "collection's forward + backward alone; kernels ms: the pooling and table-update kernels per step "
              "(mprec's, or FBGEMM's lookup, backward and bounds check); comm ms: collectives per step.", "",
              "targets:",
              f"  mprec >= 1.3x TorchRec's sharded training (per layout): {t['mprec_vs_torchrec']}",
              f"  (the collections alone, mprec's DLRM either way: {t['mprec_vs_torchrec_ebc']})",
              f"  per-rank table memory within 10% of total / N (balanced table-wise): {t['memory_balance']}",
              f"  {data['cores']} processes x 1 thread >= 0.8x of 1 process x {data['cores']} threads (mprec): "
              f"{t['processes_vs_threads']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--block", type=int, default=6,
                        help="consecutive steps per model before the next takes its turn (the first not timed)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--small", action="store_true", help="tables capped at 100k rows: a smoke run")
    parser.add_argument("--pipeline", action="store_true",
                        help="train every model with TorchRec's TrainPipelineSparseDist (input all-to-all of the next "
                             "batch overlapped with this one) instead of a plain loop")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.block < 2:
        parser.error("--block must be at least 2: the first step of each block is not timed")
    sys.path.insert(0, str(HERE.parent))
    import mprec
    from mprec.benchmark import write_results
    from mprec.sched.profile import machine_info

    cores = os.cpu_count() or 1
    layouts = {f"1 process x {cores} threads": (1, cores), f"{cores} processes x 1 thread": (cores, 1)}
    raw = {name: [] for name in layouts}
    for round_ in range(args.rounds):
        for name, (processes, threads) in layouts.items():
            print(f"round {round_ + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            raw[name].append(run_layout(processes, threads, args))
    summary = {}
    for name, (processes, _) in layouts.items():
        row = {}
        for impl in IMPLS:
            # A step's time is its slowest rank's (the collectives wait for it); the median over steps and rounds.
            steps = [max(ranks[r]["times"][impl][i] for r in range(processes))
                     for ranks in raw[name] for i in range(args.steps)]
            emb = [max(ranks[r]["embedding"][impl][i] for r in range(processes))
                   for ranks in raw[name] for i in range(len(ranks[0]["embedding"][impl]))] or [float("nan")]
            table_bytes = raw[name][0] and [ranks["table_bytes"][impl] for ranks in raw[name][0]]
            total = sum(table_bytes)
            worst = max(abs(b - total / processes) / (total / processes) for b in table_bytes)
            row[impl] = dict(examples_per_second=args.batch / statistics.median(steps),
                             step_ms=statistics.median(steps) * 1e3, embedding_ms=statistics.median(emb) * 1e3,
                             comm_ms=statistics.median([r["comm_ms"][impl] for ranks in raw[name] for r in ranks]),
                             kernel_ms=statistics.median([r["kernel_ms"][impl] for ranks in raw[name] for r in ranks]),
                             table_bytes=table_bytes, balance=f"{worst:.1%}",
                             max_rss_gb=max(r["max_rss_bytes"] for ranks in raw[name] for r in ranks) / 2**30)
        summary[name] = row
    names = list(layouts)

    def ratios(other):
        return [summary[n]["mprec"]["examples_per_second"] / summary[n][other]["examples_per_second"] for n in names]

    spread = summary[names[1]]["mprec"]["examples_per_second"] / summary[names[0]]["mprec"]["examples_per_second"]
    balance = max(float(summary[names[1]][impl]["balance"].rstrip("%")) for impl in IMPLS) / 100
    info = machine_info()
    data = dict(cpu=info["cpu"], isa=mprec.cpu_isa(), isa_caps=peer_isa.in_force(),
                torch_cpu_capability=torch.backends.cpu.get_cpu_capability(), cores=cores, batch=args.batch,
                steps=args.steps, rounds=args.rounds, block=args.block, pipeline=args.pipeline, small=args.small,
                versions=dict(torch=torch.__version__), layouts=summary, raw=raw, targets=dict(
                    mprec_vs_torchrec=" / ".join(f"{r:.2f}x" for r in ratios("torchrec"))
                    + (" met" if min(ratios("torchrec")) >= 1.3 else " NOT met"),
                    mprec_vs_torchrec_ebc=" / ".join(f"{r:.2f}x" for r in ratios("torchrec-ebc")),
                    memory_balance=f"{balance:.1%}" + (" met" if balance <= 0.10 else " NOT met"),
                    processes_vs_threads=f"{spread:.2f}x" + (" met" if spread >= 0.8 else " NOT met")))
    text = summarize(data)
    print(text)
    write_results("distributed-pipelined" if args.pipeline else "distributed", data, text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

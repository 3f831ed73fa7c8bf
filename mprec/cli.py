"""The ``mprec`` command.

    mprec                 the main job (mprec run): train, evaluate, profile and serve under MP-Rec
    mprec run             the same, with options (data set, SLA, stream, extra profiles)
    mprec bench [--quick] a short benchmark table of the ops against their peers (--quick: smoke run)
    mprec info            CPU kernel variant, build and threading information
    mprec train           train a DLRM (table / DHE / hybrid features) on Criteo TSV or synthetic data
    mprec eval            evaluate a checkpoint: accuracy, ROC AUC and log loss as JSON
    mprec profile         measure every path's latency over batch sizes (profile JSON)
    mprec serve           serve a query stream under MP-Rec and every static policy (--simulate: from
                          profiles, a sweep of loads; otherwise for real on the models)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import torch

import mprec
from mprec.benchmark import EMBEDDING_BAG_CASES, median_ms, read_bandwidth
from mprec.memory import retain_freed_memory
from mprec.precision import PRECISIONS, bf16_native
from mprec.precision import resolve as resolve_precision

# The cases of the main job's table: the headline ones of the embedding-bag benchmark (bench/ has all).
MAIN_CASES = ["standard f32 sum", "mean", "max", "padding_idx", "weighted", "bf16", "int8", "8 tables batched"]


def bench_table(quick: bool = False, out=sys.stdout) -> list[dict]:
    bandwidth = read_bandwidth(gib=0.25 if quick else 1.0)
    print(f"mprec {mprec.__version__}  cpu_isa={mprec.cpu_isa()}  threads={torch.get_num_threads()}  "
          f"read bandwidth {bandwidth:.1f} GB/s (measured now)", file=out)
    print(f"{'case':<18} {'impl':<9} {'median ms':>10} {'GB/s':>7} {'x mprec':>8}", file=out)
    rows = []
    for case in EMBEDDING_BAG_CASES:
        if case.name not in MAIN_CASES:
            continue
        if quick:
            case = dataclasses.replace(case, num_rows=50_000, bags=512, rounds=5)
        impls = case.build()
        times = {name: median_ms(fn, case.rounds) for name, fn in impls.items()}
        del impls
        for name, ms in times.items():
            gbps = case.row_bytes / 1e9 / (ms * 1e-3)
            slower = ms / times["mprec"]
            print(f"{case.name:<18} {name:<9} {ms:10.2f} {gbps:7.1f} {slower:7.2f}x", file=out)
            rows.append(dict(case=case.name, impl=name, median_ms=ms, gbps=gbps))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mprec", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    bench = sub.add_parser("bench", help="benchmark table of the ops against their peers")
    bench.add_argument("--quick", action="store_true", help="small tables: a smoke run, not a measurement")
    bench.add_argument("--json", help="also write the rows to this file")
    sub.add_parser("info", help="CPU kernel variant, build and threading information")
    add_train_parser(sub)
    add_eval_parser(sub)
    add_sched_parsers(sub)
    args = parser.parse_args(argv)
    if args.command is None:  # the main job: `mprec run` with its defaults
        args = parser.parse_args(["run"])
    if args.command == "train":
        return run_train(args)
    if args.command == "eval":
        return run_eval(args)
    if args.command in ("profile", "serve", "run"):
        return run_sched(args)
    if args.command == "info":
        print(json.dumps(dict(cpu_isa=mprec.cpu_isa(), supported=mprec.supported_cpu_isas(),
                              bf16_native=bf16_native(), precision_auto=resolve_precision("auto"),
                              **mprec.build_info()), indent=2))
        return 0
    rows = bench_table(quick=getattr(args, "quick", False))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a DLRM", description="Train a DLRM on Criteo TSV or synthetic data. "
                       "A checkpoint that exists is resumed.")
    p.add_argument("--data", default="synthetic", help="a Criteo TSV file (Kaggle train.txt format) or 'synthetic'")
    p.add_argument("--preset", default="kaggle", help="kaggle or terabyte")
    p.add_argument("--representation", default="table",
                   help="table, dhe or hybrid for every feature, or 26 comma-separated (MP-Rec's select)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adagrad"],
                   help="sgd: fused SGD tables + SGD; adagrad: fused row-wise Adagrad tables + Adagrad")
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="bf16: MLPs under bf16 autocast; auto: bf16 where the CPU computes it natively, else fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="examples per epoch")
    p.add_argument("--max-ind-range", type=int, default=None,
                   help="table rows by id modulo this (default: a vocabulary built from the data)")
    p.add_argument("--min-count", type=int, default=1, help="vocabulary: ids seen fewer times share row 0")
    p.add_argument("--synthetic-batches", type=int, default=100, help="synthetic data: batches per epoch")
    p.add_argument("--dhe-k", type=int, default=1024)
    p.add_argument("--dhe-m", type=int, default=1_000_000)
    p.add_argument("--dhe-decoder", default="128", help="hidden widths of the DHE decoder, comma-separated")
    p.add_argument("--hybrid", default="two", choices=["two", "split"],
                   help="a hybrid feature's vectors: two (its table and DHE vectors, each of the full width, as in "
                        "the MP-Rec artifact) or split (one vector, half its columns from each)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (resumed when it exists)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: at the end)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--eval", default=None, help="evaluate on this file (or 'synthetic') after training")
    p.add_argument("--sharding", default=None,
                   choices=["auto", "table-wise", "row-wise", "column-wise", "data-parallel"],
                   help="train across processes (under torchrun) with the tables sharded by TorchRec: its planner "
                        "(auto) or every table one way; --batch-size is then the global batch and --checkpoint a "
                        "folder")
    p.add_argument("--timeout-s", type=float, default=300.0,
                   help="with --sharding: how long a process waits for the others before failing")
    p.add_argument("--pipeline", action="store_true",
                   help="with --sharding: train under TorchRec's train pipeline, which routes the next batch's ids "
                        "to their tables' ranks while this batch computes (the same weights as step by step)")


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (JSON: accuracy, auc, log_loss)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None, help="a Criteo TSV file or 'synthetic' (default: the training data)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)


def run_train(args) -> int:
    from mprec import training

    retain_freed_memory()
    config = training.RunConfig(
        data=args.data, preset=args.preset, representations=training.parse_representations(args.representation),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        precision=args.precision, threads=args.threads, seed=args.seed, limit=args.limit,
        max_ind_range=args.max_ind_range, min_count=args.min_count, synthetic_batches=args.synthetic_batches,
        dhe=dict(k=args.dhe_k, m=args.dhe_m, decoder=[int(w) for w in args.dhe_decoder.split(",") if w]),
        hybrid=args.hybrid, checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every)
    try:
        if args.eval and not args.checkpoint:
            raise ValueError("--eval needs --checkpoint (the model is evaluated from it)")
        if args.sharding or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return _train_distributed(args, config)
        if args.pipeline:
            raise ValueError("--pipeline pipelines the all-to-alls of sharded training: it needs --sharding")
        result = training.train(config, progress=not args.no_progress)
        if args.eval:
            result["eval"] = training.evaluate_checkpoint(args.checkpoint, args.eval)
    except (ValueError, FileNotFoundError) as error:
        print(f"mprec train: {error}", file=sys.stderr)
        return 2
    print(training.dumps(result))
    return 0


def _train_distributed(args, config) -> int:
    from mprec import training
    from mprec.distributed import require_torchrec, shutdown

    require_torchrec()
    import torch.distributed as dist

    from mprec.distributed import training as distributed

    sharding = args.sharding or "auto"
    try:
        result = distributed.train(config, sharding, progress=not args.no_progress, timeout_s=args.timeout_s,
                                   pipeline=args.pipeline)
        if args.eval:
            metrics = distributed.evaluate_run(config, sharding, args.eval, timeout_s=args.timeout_s)
            if result is not None:
                result["eval"] = metrics
    except BaseException:
        if dist.is_initialized():  # the error's frames still hold the model: its group cannot end whole here
            dist.destroy_process_group()
        raise
    shutdown()
    if result is not None:
        print(training.dumps(result))
    return 0


def run_eval(args) -> int:
    from mprec import training

    retain_freed_memory()
    try:
        result = training.evaluate_checkpoint(args.checkpoint, args.data, args.batch_size, args.limit, args.threads)
    except (ValueError, FileNotFoundError) as error:
        print(f"mprec eval: {error}", file=sys.stderr)
        return 2
    print(training.dumps(result))
    return 0


def _stream_args(p) -> None:
    p.add_argument("--sla-ms", type=float, default=20.0, help="latency target per query")
    p.add_argument("--median-size", type=float, default=128.0, help="log-normal query sizes: median samples")
    p.add_argument("--sigma", type=float, default=1.0, help="log-normal query sizes: shape")
    p.add_argument("--max-size", type=int, default=16384)
    p.add_argument("--capacity", type=int, default=64, help="bounded queue per device (queries)")
    p.add_argument("--seed", type=int, default=0)


def add_sched_parsers(sub) -> None:
    p = sub.add_parser("profile", help="measure each path's latency over batch sizes")
    p.add_argument("--model", action="append", required=True, metavar="REP=CHECKPOINT",
                   help="a trained checkpoint per representation (repeat)")
    p.add_argument("--data", required=True, help="evaluation data (Criteo TSV) the queries are drawn from")
    p.add_argument("--accuracy", action="append", default=[], metavar="REP=VALUE",
                   help="accuracy per representation: a number or an `mprec eval` JSON (default: evaluated on --data)")
    p.add_argument("--backends", default=None, help="comma-separated path providers (default: all registered)")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1, 2, 4 .. 16384)")
    p.add_argument("--repetitions", type=int, default=20)
    p.add_argument("--budget-s", type=float, default=1.0, help="time per batch size before stopping early")
    p.add_argument("--idle-gaps-ms", default=None,
                   help="comma-separated idle times the idle cost is measured after (default 0.3, 1, 3, 10, 30; "
                        "'none': no idle cost)")
    p.add_argument("--idle-repetitions", type=int, default=10, help="queries timed per idle time and batch size")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", required=True, help="profile JSON to write")

    s = sub.add_parser("serve", help="serve a query stream under MP-Rec and the static policies")
    s.add_argument("--simulate", action="store_true", help="discrete-event simulation from the profiles")
    s.add_argument("--profile", action="append", required=True, metavar="FILE[@DEVICES]",
                   help="profile JSON (repeat to compose machines; FILE@cuda takes only its cuda paths)")
    s.add_argument("--rates", default=None, help="comma-separated arrival rates, queries/s (default: a sweep)")
    s.add_argument("--queries", type=int, default=5000, help="queries per rate")
    s.add_argument("--trace", default=None, help="CSV trace (arrival_s,size[,sla_ms]) instead of Poisson arrivals")
    s.add_argument("--statistic", default="median", choices=["median", "p99"], help="latency model from")
    s.add_argument("--model", action="append", default=[], metavar="REP=CHECKPOINT", help="real serving: models")
    s.add_argument("--data", default=None, help="real serving: the data the queries are drawn from")
    s.add_argument("--accuracy", action="append", default=[], metavar="REP=VALUE")
    s.add_argument("--plot", default=None, help="PNG of correct predictions/s and p99 against load")
    s.add_argument("--json", default=None, help="write the rows to this file")
    s.add_argument("--rounds", type=int, default=10,
                   help="real serving: the stream in this many pieces, the policies taking turns piece by piece")
    s.add_argument("--threads", type=int, default=None)
    _stream_args(s)

    r = sub.add_parser("run", help="the whole MP-Rec story on a data set (the main job)")
    r.add_argument("--data-dir", default=None, help="a folder with train.txt and valid.txt (default: the Criteo sample)")
    r.add_argument("--out", default="mprec-run", help="folder for checkpoints, profile, report and plot")
    r.add_argument("--epochs", type=int, default=2)
    r.add_argument("--train-only", action="store_true",
                   help="stop after training and evaluating: the checkpoints and eval JSONs mprec profile takes")
    r.add_argument("--queries", type=int, default=3000, help="simulated queries per load")
    r.add_argument("--real-queries", type=int, default=1500,
                   help="queries per policy in real serving at the knee (proportionally fewer below it)")
    r.add_argument("--rounds", type=int, default=10, help="real serving: the policies take turns over this many pieces")
    r.add_argument("--profile", action="append", default=[], metavar="FILE[@DEVICES]",
                   help="profiles of other machines to compose with this one in simulation")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--sla-ms", type=float, default=20.0)
    r.add_argument("--median-size", type=float, default=128.0)
    r.add_argument("--sigma", type=float, default=1.0)


def run_sched(args) -> int:
    from mprec.sched import experiment as ex
    from mprec.sched import (discover_paths, format_table, load_profiles, plot_sweep, poisson_stream, profile_paths,
                             read_trace, save_profile)
    from mprec.sched.report import by_rate, knee_line

    retain_freed_memory()
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.command == "run":
            ex.main_job(out=args.out, data_dir=args.data_dir, epochs=args.epochs, sla_ms=args.sla_ms,
                        queries=args.queries, real_queries=args.real_queries, median_size=args.median_size,
                        sigma=args.sigma, extra_profiles=args.profile, rounds=args.rounds,
                        train_only=args.train_only)
            return 0
        if args.command == "profile":
            # The arguments first: loading the models takes a while.
            idle = {} if args.idle_gaps_ms is None else dict(idle_gaps=_idle_gaps(args.idle_gaps_ms))
            sizes = [int(n) for n in args.batch_sizes.split(",")] if args.batch_sizes else ex.BATCH_SIZES
            models = _load_models(ex, args)
            backends = args.backends.split(",") if args.backends else None
            paths = discover_paths(models, backends)
            if not paths:
                # An empty profile would compose into a system without the device, silently.
                raise ValueError(f"no paths to profile: {'backends ' + args.backends if backends else 'no backend'} "
                                 f"found a device on this machine")
            profiles = profile_paths(paths, models[0].pool, sizes, args.repetitions, budget_s=args.budget_s,
                                     log=sys.stderr, idle_repetitions=args.idle_repetitions, **idle)
            save_profile(args.out, profiles)
            print(json.dumps(dict(out=args.out, paths=[p.name for p in profiles]), indent=2))
            return 0
        # serve: (rate label, stream) per point; a trace is one point labelled with its own rate
        infos = ex.path_infos(load_profiles(args.profile), args.statistic)
        sla = args.sla_ms / 1e3
        if args.trace:
            plan = [(None, read_trace(args.trace, sla))]
        else:
            rates = ([float(r) for r in args.rates.split(",")] if args.rates
                     else ex.default_rates(infos, args.median_size, args.sigma, args.max_size))
            plan = [(rate, poisson_stream(rate, args.queries, sla, args.median_size, args.sigma, args.max_size,
                                          args.seed)) for rate in rates]
        if args.simulate:
            rows = [row for rate, stream in plan for row in ex.run_stream(infos, stream, args.capacity, rate)]
        else:
            if not args.model or not args.data:
                raise ValueError("real serving needs --model REP=CHECKPOINT and --data (or pass --simulate)")
            models = _load_models(ex, args)
            paths = discover_paths(models)
            rows = [row for rate, stream in plan
                    for row in ex.serve_real(paths, infos, stream, models[0].pool, args.capacity, rate,
                                             rounds=args.rounds)]
        print(format_table(rows))
        if len(by_rate(rows)) > 1:  # a sweep
            print(knee_line(rows))
        if args.plot:
            plot_sweep(rows, args.plot, title=f"MP-Rec vs static paths ({'simulated' if args.simulate else 'real'}, "
                                              f"SLA {args.sla_ms:g} ms)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 0
    except (ValueError, FileNotFoundError) as error:
        print(f"mprec {args.command}: {error}", file=sys.stderr)
        return 2


def _idle_gaps(text: str) -> list:
    """``--idle-gaps-ms``: milliseconds, comma-separated, or ``none`` -> seconds."""
    if text.strip().lower() == "none":
        return []
    try:
        gaps = [float(g) / 1e3 for g in text.split(",")]
    except ValueError:
        gaps = []
    if not gaps or not all(g > 0 for g in gaps):
        raise ValueError(f"--idle-gaps-ms: expected milliseconds > 0, comma-separated, or 'none'; got {text!r}")
    return gaps


def _load_models(ex, args) -> list:
    checkpoints = ex.parse_assignments(args.model, "--model")
    accuracy = ex.parse_assignments(args.accuracy, "--accuracy")
    unknown = sorted(set(accuracy) - set(checkpoints))
    if unknown:
        raise ValueError(f"--accuracy for {unknown}, which have no --model")
    return [ex.load_model(ckpt, args.data, accuracy.get(rep), representation=rep) for rep, ckpt in checkpoints.items()]


if __name__ == "__main__":
    raise SystemExit(main())

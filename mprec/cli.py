"""The ``mprec`` command.

    mprec                 the main job: a short benchmark table of the ops against their peers
    mprec bench [--quick] the same table (--quick: smaller tables, for a smoke run)
    mprec info            CPU kernel variant, build and threading information
    mprec train           train a DLRM (table / DHE / hybrid features) on Criteo TSV or synthetic data
    mprec eval            evaluate a checkpoint: accuracy, ROC AUC and log loss as JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

import mprec
from mprec.benchmark import EMBEDDING_BAG_CASES, median_ms, read_bandwidth

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
    args = parser.parse_args(argv)
    if args.command == "train":
        return run_train(args)
    if args.command == "eval":
        return run_eval(args)
    if args.command == "info":
        print(json.dumps(dict(cpu_isa=mprec.cpu_isa(), supported=mprec.supported_cpu_isas(), **mprec.build_info()),
                         indent=2))
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
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: MLPs under bf16 autocast")
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
    p.add_argument("--checkpoint", default=None, help="checkpoint file (resumed when it exists)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints (0: at the end)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--eval", default=None, help="evaluate on this file (or 'synthetic') after training")


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint (JSON: accuracy, auc, log_loss)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=None, help="a Criteo TSV file or 'synthetic' (default: the training data)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)


def run_train(args) -> int:
    from mprec import training

    config = training.RunConfig(
        data=args.data, preset=args.preset, representations=training.parse_representations(args.representation),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        precision=args.precision, threads=args.threads, seed=args.seed, limit=args.limit,
        max_ind_range=args.max_ind_range, min_count=args.min_count, synthetic_batches=args.synthetic_batches,
        dhe=dict(k=args.dhe_k, m=args.dhe_m, decoder=[int(w) for w in args.dhe_decoder.split(",") if w]),
        checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every)
    try:
        result = training.train(config, progress=not args.no_progress)
        if args.eval:
            if not args.checkpoint:
                raise ValueError("--eval needs --checkpoint (the model is evaluated from it)")
            result["eval"] = training.evaluate_checkpoint(args.checkpoint, args.eval)
    except (ValueError, FileNotFoundError) as error:
        print(f"mprec train: {error}", file=sys.stderr)
        return 2
    print(training.dumps(result))
    return 0


def run_eval(args) -> int:
    from mprec import training

    try:
        result = training.evaluate_checkpoint(args.checkpoint, args.data, args.batch_size, args.limit, args.threads)
    except (ValueError, FileNotFoundError) as error:
        print(f"mprec eval: {error}", file=sys.stderr)
        return 2
    print(training.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Model quality per representation on Criteo data: trains DLRM (kaggle preset) with every feature as a
table, a DHE or a hybrid, in fp32 and bf16, over several seeds, and evaluates each on the validation file.

    python bench/quality.py [--train PATH] [--valid PATH] [--epochs N] [--seeds N] [--out NAME]

Defaults: the bundled sample (../shared/data/criteo_kaggle_sample: 7,200 training and 409 validation
lines); the same command runs on the full Kaggle files (point --train/--valid at them). Writes
bench/results/<NAME>.json and .md.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from mprec import training

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent.parent / "shared" / "data" / "criteo_kaggle_sample"
RUNS = [  # (name, representation, precision, hybrid form)
    ("table", "table", "fp32", "two"),
    ("table bf16", "table", "bf16", "two"),
    ("dhe", "dhe", "fp32", "two"),
    ("dhe bf16", "dhe", "bf16", "two"),
    ("hybrid", "hybrid", "fp32", "two"),         # the MP-Rec artifact's: table and DHE vectors, each full width
    ("hybrid split", "hybrid", "fp32", "split"),  # one vector, half table and half DHE columns
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", default=str(SAMPLE / "train.txt"))
    p.add_argument("--valid", default=str(SAMPLE / "valid.txt"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="quality-criteo-sample")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, representation, precision, hybrid in RUNS:
            for seed in range(args.seeds):
                ckpt = os.path.join(tmp, f"{name.replace(' ', '-')}-{seed}.pt")
                config = training.RunConfig(
                    data=args.train, representations=[representation] * 26, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr, precision=precision, seed=seed, threads=args.threads,
                    dhe=dict(k=1024, m=1_000_000, decoder=[128]), hybrid=hybrid, checkpoint=ckpt)
                trained = training.train(config, progress=False)
                valid = training.evaluate_checkpoint(ckpt, args.valid)
                fit = training.evaluate_checkpoint(ckpt, args.train)
                row = dict(run=name, representation=representation, precision=precision, seed=seed,
                           valid_accuracy=valid["accuracy"], valid_auc=valid["auc"], valid_log_loss=valid["log_loss"],
                           train_auc=fit["auc"], parameters=valid["parameters"], bytes=valid["bytes"],
                           examples_per_second=trained["examples_per_second"], valid_examples=valid["examples"],
                           valid_click_rate=valid["click_rate"])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    out = HERE / "results" / args.out
    out.parent.mkdir(exist_ok=True)
    meta = dict(train=os.path.basename(args.train), valid=os.path.basename(args.valid), epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, seeds=args.seeds, threads=args.threads,
                preset="kaggle", dhe="k=1024, m=1e6, decoder 1024-128-16", torch=torch.__version__)
    json.dump(dict(meta=meta, runs=rows), open(f"{out}.json", "w"), indent=1)
    text = render(meta, rows)
    open(f"{out}.md", "w").write(text + "\n")
    print(text)
    return 0


def render(meta, rows) -> str:
    def stat(run, key):
        values = [r[key] for r in rows if r["run"] == run]
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    lines = [f"DLRM {meta['preset']} on {meta['train']} -> {meta['valid']}: {meta['epochs']} epochs, batch "
             f"{meta['batch_size']}, SGD lr {meta['lr']} (fused SGD tables), {meta['seeds']} seeds "
             f"(mean +- std); DHE {meta['dhe']}", "",
             "| run | valid accuracy | valid ROC AUC | valid log loss | train ROC AUC | parameters | bytes | train examples/s |",
             "|---|---|---|---|---|---|---|---|"]
    for run in dict.fromkeys(r["run"] for r in rows):
        first = next(r for r in rows if r["run"] == run)
        cells = [f"{m:.4f} +- {s:.4f}" for m, s in (stat(run, "valid_accuracy"), stat(run, "valid_auc"),
                                                     stat(run, "valid_log_loss"), stat(run, "train_auc"))]
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {first['parameters']:,} | {first['bytes']:,} | "
                     f"{stat(run, 'examples_per_second')[0]:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

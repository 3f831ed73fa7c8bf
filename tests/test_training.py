"""mprec.training and the `mprec train` / `mprec eval` commands: ROC AUC against the pairwise definition,
learning on synthetic data, determinism, resuming a killed run with nothing lost, atomic checkpoints,
TSV data end to end, errors."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import criteo_tsv
from mprec import training
from mprec.cli import main
from mprec.training import RunConfig, roc_auc

SMALL = [50, 20, 300, 5] + [40] * 22


def small_config(tmp_path=None, **kwargs):
    cfg = dict(data="synthetic", table_sizes=SMALL, synthetic_batches=30, batch_size=128, lr=0.1,
               dhe=dict(k=32, m=1009, decoder=[16]), threads=2)
    cfg.update(kwargs)
    return RunConfig(**cfg)


def test_roc_auc_is_the_pairwise_probability():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        labels = (torch.rand(200, generator=g) < 0.3).double()
        scores = torch.randint(0, 20, (200,), generator=g).double()  # many ties
        pos, neg = scores[labels == 1], scores[labels == 0]
        pairwise = ((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean()
        assert roc_auc(labels, scores) == pytest.approx(pairwise.item(), abs=1e-12)
    assert roc_auc(torch.tensor([0.0, 1.0]), torch.tensor([0.2, 0.9])) == 1.0
    assert roc_auc(torch.tensor([1.0, 1.0]), torch.tensor([0.2, 0.9])) != roc_auc(torch.tensor([1.0, 1.0]),
                                                                                  torch.tensor([0.2, 0.9]))  # nan


@pytest.mark.parametrize("representation", ["table", "dhe", "hybrid"])
def test_training_learns_on_synthetic_data(tmp_path, representation):
    ckpt = str(tmp_path / "model.pt")
    adagrad = representation == "table"  # row-wise Adagrad tables + Adagrad, at Adagrad's smaller rate
    cfg = small_config(representations=[representation] * 26, checkpoint=ckpt, epochs=2,
                       optimizer="adagrad" if adagrad else "sgd", lr=0.01 if adagrad else 0.1)
    result = training.train(cfg, progress=False)
    assert result["steps"] == 60 and result["examples_trained"] == 60 * 128
    metrics = training.evaluate_checkpoint(ckpt)  # held-out synthetic batches
    assert metrics["auc"] > 0.62, metrics
    assert 0 < metrics["log_loss"] < 0.69
    assert metrics["parameters"] > 0 and metrics["bytes"] == 4 * metrics["parameters"]


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_deterministic_and_resumes_to_the_same_weights(tmp_path, optimizer):
    a, b = str(tmp_path / "a.pt"), str(tmp_path / "b.pt")
    training.train(small_config(checkpoint=a, epochs=2, optimizer=optimizer), progress=False)
    # The same run in two parts: 1 epoch, then continued to 2 from the checkpoint.
    training.train(small_config(checkpoint=b, epochs=1, optimizer=optimizer), progress=False)
    training.train(small_config(checkpoint=b, epochs=2, optimizer=optimizer), progress=False)
    sa, sb = training.load_checkpoint(a), training.load_checkpoint(b)
    assert sa["step"] == sb["step"] == 60
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    # Row-wise Adagrad's accumulators travel with the checkpoint (outside the model's state dict).
    assert len(sa["table_optimizer"]) == (26 if optimizer == "adagrad" else 0)
    for k, v in sa["table_optimizer"].items():
        assert torch.equal(v, sb["table_optimizer"][k]), k
    with pytest.raises(training.CheckpointError, match=r"was written by a different run \(lr: checkpoint .*, now 0.5\)"):
        training.train(small_config(checkpoint=b, epochs=3, lr=0.5, optimizer=optimizer), progress=False)


KILL_SCRIPT = """
import sys, torch
from mprec import training
cfg = training.RunConfig(data="synthetic", table_sizes=[50, 20, 300, 5] + [40] * 22, synthetic_batches=200,
                         batch_size=64, lr=0.2, threads=1, checkpoint=sys.argv[1], checkpoint_every=3)
training.train(cfg, progress=False)
"""


def test_resumed_run_uses_the_checkpoints_gemm_libraries(tmp_path, monkeypatch):
    """The MLP products' libraries (measured per process, mprec.ops.mlp) travel with the checkpoint, so a resumed
    run computes as the run it continues did."""
    from mprec.ops import mlp

    monkeypatch.setattr(mlp, "_env_library", None)
    monkeypatch.setattr(mlp, "_choices", {})
    path = str(tmp_path / "ck.pt")
    training.train(small_config(checkpoint=path, epochs=1), progress=False)
    state = training.load_checkpoint(path)
    assert {row[0] for row in state["gemm_choices"]} == set(mlp.PRODUCTS)
    flipped = [[*row[:-1], "blas" if row[-1] == "onednn" else "onednn"] for row in state["gemm_choices"]]
    training.save_checkpoint(path, dict(state, gemm_choices=flipped))
    monkeypatch.setattr(mlp, "_choices", {})  # a new process
    monkeypatch.setattr(mlp, "_measure", lambda *args: pytest.fail("a product of the checkpoint was measured again"))
    training.train(small_config(checkpoint=path, epochs=2), progress=False)
    assert sorted(mlp.gemm_choices(), key=str) == sorted(flipped, key=str)


# Runs compared bit for bit are separate processes, which would each measure their GEMM libraries.
FIXED_GEMM = dict(os.environ, MPREC_GEMM="blas")


def test_killed_run_resumes_with_nothing_lost(tmp_path):
    killed, straight = str(tmp_path / "killed.pt"), str(tmp_path / "straight.pt")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, killed], env=FIXED_GEMM)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(killed) and training.load_checkpoint(killed)["step"] >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = training.load_checkpoint(killed)["step"]
    assert 6 <= stopped_at < 200
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, killed], check=True, env=FIXED_GEMM)  # resumes
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, straight], check=True, env=FIXED_GEMM)
    a, b = training.load_checkpoint(killed), training.load_checkpoint(straight)
    assert a["step"] == b["step"] == 200
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.pt")
    training.save_checkpoint(path, {"step": 1})
    real_save = torch.save

    def failing_save(obj, f):
        real_save({"step": "partial"}, f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        training.save_checkpoint(path, {"step": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert training.load_checkpoint(path) == {"step": 1}  # the old checkpoint is intact


def test_previous_checkpoint_is_kept(tmp_path):
    path = str(tmp_path / "ck.pt")
    training.save_checkpoint(path, {"step": 1})
    assert not os.path.exists(training.previous_checkpoint(path))
    training.save_checkpoint(path, {"step": 2})
    training.save_checkpoint(path, {"step": 3})
    assert training.load_checkpoint(path)["step"] == 3
    assert training.load_checkpoint(training.previous_checkpoint(path))["step"] == 2
    assert sorted(os.listdir(tmp_path)) == ["ck.pt", "ck.pt.prev"]  # no temporary file left


def damaged_copies(data: bytes) -> dict:
    return {"truncated": data[: len(data) // 2], "cut-short": data[:-20], "empty": b"",
            "garbage": bytes(range(256)) * 8, "flipped": data[:200] + bytes(b ^ 0xFF for b in data[200:400]) + data[400:]}


@pytest.mark.parametrize("damage", ["truncated", "cut-short", "empty", "garbage", "flipped"])
def test_damaged_checkpoint_says_so_and_nothing_is_overwritten(tmp_path, damage):
    path = str(tmp_path / "run.pt")
    config = small_config(checkpoint=path, epochs=1, synthetic_batches=4)
    training.train(config, progress=False)
    training.train(dataclasses.replace(config, epochs=2), progress=False)  # the second save keeps the first
    good = open(path, "rb").read()
    prev = training.previous_checkpoint(path)
    prev_bytes = open(prev, "rb").read()
    with open(path, "wb") as f:
        f.write(damaged_copies(good)[damage])
    damaged = open(path, "rb").read()
    with pytest.raises(training.CheckpointError) as info:
        training.train(dataclasses.replace(config, epochs=3), progress=False)
    message = str(info.value)
    assert message.startswith(f"{path} ") and f"the previous checkpoint {prev} is intact" in message
    assert open(path, "rb").read() == damaged and open(prev, "rb").read() == prev_bytes  # both left as they were
    with pytest.raises(training.CheckpointError, match="cannot be read|not an mprec"):
        training.evaluate_checkpoint(path)
    # The previous one still resumes.
    resumed = training.train(dataclasses.replace(config, epochs=3, checkpoint=prev), progress=False)
    assert resumed["steps"] == 12


def test_checkpoint_of_another_model_says_so(tmp_path):
    path = str(tmp_path / "run.pt")
    training.train(small_config(checkpoint=path, epochs=1, synthetic_batches=2), progress=False)
    state = training.load_checkpoint(path)
    # Weights that are not the model its configuration describes.
    other = dict(state, model={k: (v[:, :1] if v.dim() == 2 else v) for k, v in state["model"].items()})
    training.save_checkpoint(path, other)
    with pytest.raises(training.CheckpointError, match=r"holds the weights of another model .*size mismatch"):
        training.model_from_checkpoint(training.load_checkpoint(path))
    training.save_checkpoint(path, {"step": 1, "weights": torch.zeros(2)})
    with pytest.raises(training.CheckpointError, match=r"is not an mprec training checkpoint: it lacks \['config'"):
        training.evaluate_checkpoint(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(training.CheckpointError, match="holds a Tensor, not an mprec checkpoint"):
        training.load_checkpoint(path)


@pytest.mark.parametrize("hybrid", ["two", "split"])
def test_hybrid_form_travels_with_the_checkpoint(tmp_path, hybrid):
    """The hybrid form is part of the run's configuration; a checkpoint written before there were two forms
    (its configuration names none) holds split hybrids and loads as such."""
    path = str(tmp_path / "run.pt")
    training.train(small_config(checkpoint=path, epochs=1, synthetic_batches=2, representations=["hybrid"] * 26,
                                hybrid=hybrid), progress=False)
    state = training.load_checkpoint(path)
    model, config, _ = training.model_from_checkpoint(state)
    assert config.hybrid == hybrid and model.num_vectors == (52 if hybrid == "two" else 26)
    older = dict(state, config={k: v for k, v in state["config"].items() if k != "hybrid"})
    if hybrid == "split":
        assert training.model_from_checkpoint(older)[1].hybrid == "split"
    else:  # two-form weights under a configuration that says split: refused, naming the mismatch
        with pytest.raises(training.CheckpointError, match="holds the weights of another model"):
            training.model_from_checkpoint(older)
    with pytest.raises(ValueError, match=r"hybrid must be one of \('two', 'split'\), got 'three'"):
        training.train(small_config(hybrid="three"), progress=False)


def test_cli_reports_a_damaged_checkpoint(tmp_path, capsys):
    path = str(tmp_path / "run.pt")
    with open(path, "wb") as f:
        f.write(b"not a checkpoint")
    assert main(["eval", "--checkpoint", path]) == 2
    assert f"{path} (16 bytes) cannot be read as a checkpoint: it is truncated or corrupt" in capsys.readouterr().err


def test_cli_train_and_eval_on_tsv(tmp_path, capsys):
    train, valid = criteo_tsv(tmp_path / "train.txt", 600, 1), criteo_tsv(tmp_path / "valid.txt", 200, 2)
    ckpt = str(tmp_path / "model.pt")
    rc = main(["train", "--data", train, "--batch-size", "64", "--epochs", "2", "--lr", "0.1",
               "--representation", ",".join(["table"] * 13 + ["dhe"] * 6 + ["hybrid"] * 7), "--dhe-k", "32",
               "--dhe-m", "1009", "--dhe-decoder", "16", "--checkpoint", ckpt, "--eval", valid, "--no-progress",
               "--threads", "2"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 2 * 10 and result["eval"]["examples"] == 200
    assert result["eval"]["auc"] > 0.7  # the labels can be read off the generated features (0.5: chance)
    rc = main(["eval", "--checkpoint", ckpt, "--data", valid])
    metrics = json.loads(capsys.readouterr().out)
    assert rc == 0 and metrics["auc"] == result["eval"]["auc"]
    assert set(metrics) >= {"accuracy", "auc", "log_loss", "examples", "parameters", "bytes"}
    # Table features' rows come from the vocabulary of the training file; DHE features hash raw ids.
    state = training.load_checkpoint(ckpt)
    assert state["table_sizes"][0] == len(state["vocabulary"]["ids.0"]) + 1


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "missing.txt")]) == 2
    assert "no such data file" in capsys.readouterr().err
    assert main(["train", "--representation", "table,dhe"]) == 2
    assert "one representation per sparse feature (26), got 2" in capsys.readouterr().err
    assert main(["train", "--representation", "tables"]) == 2
    assert "representations must be among" in capsys.readouterr().err


def test_bf16_precision_trains(tmp_path):
    ckpt = str(tmp_path / "bf16.pt")
    training.train(small_config(checkpoint=ckpt, precision="bf16"), progress=False)
    metrics = training.evaluate_checkpoint(ckpt)
    assert metrics["auc"] > 0.6


def test_parse_representations():
    assert training.parse_representations("dhe") == ["dhe"] * 26
    assert training.parse_representations("table:20,dhe:6") == ["table"] * 20 + ["dhe"] * 6
    names = ["table", "hybrid"] * 13
    assert training.parse_representations(",".join(names)) == names
    assert training.parse_representations("hybrid:2, table") == ["hybrid", "hybrid", "table"]
    with pytest.raises(ValueError, match=r"representation 'dhe:x': the count after ':' must be a positive integer"):
        training.parse_representations("table:25,dhe:x")
    with pytest.raises(ValueError, match="must be a positive integer"):
        training.parse_representations("table:0")

"""``mprec train --sharding`` under torchrun (2 processes, gloo on loopback): training, sharded checkpoints
(resumed after a rank is killed mid-run, loaded in one process by ``mprec eval`` and the scheduler's paths),
and the errors of runs that cannot go on."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("torchrec", reason="TorchRec is installed by make test")

from conftest import criteo_tsv  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("criteo")
    return criteo_tsv(folder / "train.txt", 3000, seed=1), criteo_tsv(folder / "valid.txt", 500, seed=2)


def train_args(train: str, checkpoint: str, *extra: str) -> list:
    return ["-m", "mprec.cli", "train", "--data", train, "--max-ind-range", "500", "--batch-size", "128",
            "--epochs", "2", "--lr", "0.05", "--checkpoint", checkpoint, "--checkpoint-every", "4", "--no-progress",
            "--timeout-s", "60", *extra]


# Runs compared bit for bit are separate processes: each would measure its own GEMM library per MLP product
# (mprec.ops.mlp) and could pick differently where both are about as fast, so the library is fixed.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MPREC_GEMM="blas")


def torchrun(args: list, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(TORCHRUN + args, capture_output=True, text=True, timeout=timeout, env=ENV)


def weights(checkpoint: str) -> dict:
    """The model of a sharded checkpoint, loaded in this (single) process."""
    from mprec import training

    model, _, _ = training.model_from_checkpoint(training.load_checkpoint(checkpoint))
    return model.state_dict()


def children(pid: int) -> list:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def latest_step(checkpoint: str) -> int:
    try:
        with open(os.path.join(checkpoint, "latest")) as f:
            return int(f.read().strip().split("-")[1])
    except (OSError, ValueError):
        return -1


def steps_per_epoch(path: str, world: int = 2, batch: int = 64) -> int:
    """Steps of an epoch: every rank needs a whole batch, so the shortest stripe decides."""
    from mprec.data import CriteoReader

    return min(len(list(CriteoReader(path, batch, stripe=(r, world), drop_last=True))) for r in range(world))


def test_train_resume_after_a_killed_rank_and_evaluate_in_one_process(data, tmp_path):
    train, valid = data
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    epoch = steps_per_epoch(train)
    # Row-wise Adagrad tables and Adagrad for the rest: resuming must restore both optimizers' state.
    run = ("--sharding", "row-wise", "--epochs", "4", "--optimizer", "adagrad", "--lr", "0.02")
    done = torchrun(train_args(train, straight, *run, "--eval", valid))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["processes"] == 2 and result["steps"] == 4 * epoch
    assert result["examples_trained"] == 4 * epoch * 128
    assert 0.5 < result["eval"]["auc"] <= 1 and result["eval"]["examples"] == 500

    # The same run, with one rank killed once a checkpoint exists: the job stops (no hang), and the same
    # command resumes it from that checkpoint to the same weights.
    process = subprocess.Popen(TORCHRUN + train_args(train, killed, *run),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 180
    while latest_step(killed) < 8 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = children(process.pid)
    assert process.poll() is None and len(workers) == 2, "the run ended before a rank could be killed"
    os.kill(workers[1], signal.SIGKILL)
    killed_at = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert time.monotonic() - killed_at < 60, "the other rank hung after its peer died"
    stopped_at = latest_step(killed)
    assert 8 <= stopped_at < result["steps"]
    resumed = torchrun(train_args(train, killed, *run))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at epoch {(stopped_at - 1) // epoch} step {stopped_at} (2 processes then, 2 now)" in resumed.stderr
    a, b = weights(straight), weights(killed)
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)

    # One process evaluates the two-process checkpoint as the two processes did.
    alone = subprocess.run([sys.executable, "-m", "mprec.cli", "eval", "--checkpoint", straight, "--data", valid],
                           capture_output=True, text=True, timeout=120)
    assert alone.returncode == 0, alone.stderr
    metrics = json.loads(alone.stdout)
    for key in ("examples", "accuracy", "auc"):
        assert metrics[key] == pytest.approx(result["eval"][key], abs=1e-12), key
    assert metrics["log_loss"] == pytest.approx(result["eval"]["log_loss"], abs=1e-7)

    # The scheduler's paths load it too.
    from mprec.sched import experiment

    loaded = experiment.load_model(straight, valid, representation="table")
    assert loaded.accuracy == pytest.approx(result["eval"]["accuracy"], abs=1e-12)

    # Resuming with other settings is refused, naming the checkpoint (each rank exits with 2; torchrun with 1).
    other = torchrun(train_args(train, killed, *run, "--lr", "0.5"))
    assert other.returncode != 0
    assert f"mprec train: {killed}" in other.stderr and "was written by a different run (lr: checkpoint" in other.stderr


def test_planner_with_dhe_and_hybrid_features_and_a_batch_that_does_not_divide(data, tmp_path):
    """TorchRec's planner places the tables (every sharding type is checked against one process in
    test_distributed.py); DHE features are replicated."""
    train, _ = data
    done = torchrun(train_args(train, str(tmp_path / "auto"), "--sharding", "auto", "--epochs", "1",
                               "--representation", "table:20,dhe:3,hybrid:3", "--dhe-k", "16", "--dhe-decoder", "8"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout[done.stdout.index("{"):])["sharding"] == "auto"
    odd = torchrun(train_args(train, str(tmp_path / "odd"), "--sharding", "auto", "--batch-size", "127"))
    assert odd.returncode != 0
    assert "--batch-size 127 (the global batch) must be a multiple of the 2 processes" in odd.stderr


def test_pipelined_training_trains_the_weights_of_step_by_step_training(data, tmp_path):
    """--pipeline (TorchRec's train pipeline: the next batch's ids are routed to their tables' ranks while this
    batch computes) trains the same weights as the step-by-step loop, bit for bit, and writes checkpoints of the
    same format: a pipelined run resumes one written step by step."""
    train, _ = data
    plain, piped = str(tmp_path / "plain"), str(tmp_path / "piped")
    run = ("--sharding", "table-wise", "--optimizer", "adagrad", "--lr", "0.02")
    straight = torchrun(train_args(train, plain, *run))
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = torchrun(train_args(train, piped, *run, "--epochs", "1"))
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun(train_args(train, piped, *run, "--pipeline"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    steps = json.loads(straight.stdout[straight.stdout.index("{"):])["steps"]
    assert json.loads(resumed.stdout[resumed.stdout.index("{"):])["steps"] == steps == 2 * steps_per_epoch(train)
    a, b = weights(plain), weights(piped)
    assert list(a) == list(b)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def _network_namespaces() -> bool:
    if os.geteuid() != 0 or not shutil.which("ip"):
        return False
    name = f"mprec-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return made


@pytest.mark.skipif(not _network_namespaces(), reason="network namespaces need root and iproute2 (ip netns)")
def test_two_hosts_in_network_namespaces_train_as_one_host_does(data, tmp_path):
    """scripts/two-hosts.sh: the ranks of two hosts (namespaces with their own addresses, joined by a veth pair)
    train the same weights as two processes on one host."""
    train, _ = data
    script = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "two-hosts.sh")
    hosts, one = str(tmp_path / "hosts"), str(tmp_path / "one")
    args = train_args(train, hosts, "--sharding", "table-wise", "--epochs", "1")[2:]  # after -m mprec.cli
    done = subprocess.run(["bash", script, "--python", sys.executable, "--", *args], capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["processes"] == 2
    same = torchrun(train_args(train, one, "--sharding", "table-wise", "--epochs", "1"))
    assert same.returncode == 0, same.stderr[-3000:]
    a, b = weights(hosts), weights(one)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

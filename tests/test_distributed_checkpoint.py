"""mprec.distributed.checkpoint in one process (it needs no TorchRec): atomic steps, the newest kept,
``latest`` always naming a complete step, and a checkpoint of another model refused by name."""

from __future__ import annotations

import os

import pytest
import torch

from mprec.distributed import checkpoint
from mprec.models import DLRM


def model(sizes=(20, 30, 40), seed=0):
    torch.manual_seed(seed)
    return DLRM.preset("kaggle", list(sizes), representations=["table", "dhe", "hybrid"],
                       dhe=dict(k=16, m=97, decoder=(8,)))


def test_save_load_keep_and_latest(tmp_path):
    folder = str(tmp_path / "run")
    a = model()
    for step in (3, 6, 9):
        with torch.no_grad():
            a.bottom[0].weight.add_(1.0)
        checkpoint.save(folder, step, {"model": a.state_dict()}, dict(note=step), dict(extra=[step]), keep=2)
    assert sorted(os.listdir(folder)) == ["latest", "step-000000006", "step-000000009"]
    assert checkpoint.latest(folder).endswith("step-000000009") and checkpoint.is_checkpoint(folder)
    b = model(seed=1)
    state = {"model": b.state_dict()}
    meta, extra = checkpoint.load(folder, state)
    b.load_state_dict(state["model"])
    assert meta == dict(note=9, step=9) and extra == dict(extra=[9])
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key
    # An older step, by its folder.
    meta, _ = checkpoint.load(os.path.join(folder, "step-000000006"), {"model": model().state_dict()})
    assert meta["step"] == 6


def test_an_interrupted_save_leaves_the_last_complete_step(tmp_path):
    folder = str(tmp_path / "run")
    checkpoint.save(folder, 1, {"model": model().state_dict()}, {})
    # A save that died before its rename: a hidden folder, and latest still naming step 1.
    os.makedirs(os.path.join(folder, ".step-000000002.tmp"))
    assert checkpoint.latest(folder).endswith("step-000000001")
    with open(os.path.join(folder, "latest"), "w") as f:
        f.write("step-000000002")  # a pointer to a folder that does not exist is not a checkpoint
    assert checkpoint.latest(folder) is None
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        checkpoint.load(folder, {"model": model().state_dict()})


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    folder = str(tmp_path / "run")
    checkpoint.save(folder, 1, {"model": model().state_dict()}, {})
    with pytest.raises(ValueError, match=r"written by another model: model\.embeddings\.embedding_bags\.cat_0\.weight: "
                                         r"saved \[20, 16\], model \[21, 16\]"):
        checkpoint.load(folder, {"model": model((21, 30, 40)).state_dict()})
    bigger = DLRM.preset("kaggle", [20, 30, 40, 50])
    with pytest.raises(ValueError, match=r"does not hold \['model\.embeddings\.embedding_bags\.cat_1\.weight'"):
        checkpoint.load(folder, {"model": bigger.state_dict()})


@pytest.mark.parametrize("damage", ["truncated-shard", "empty-metadata", "bad-meta-json"])
def test_a_damaged_step_says_so_and_names_the_previous_one(tmp_path, damage):
    from mprec.training import CheckpointError

    folder = str(tmp_path / "run")
    for step in (1, 2):
        checkpoint.save(folder, step, {"model": model(seed=step).state_dict()}, {})
    newest = checkpoint.latest(folder)
    if damage == "truncated-shard":
        shard = next(os.path.join(newest, f) for f in os.listdir(newest) if f.endswith(".distcp"))
        with open(shard, "r+b") as f:
            f.truncate(os.path.getsize(shard) // 2)
    elif damage == "empty-metadata":
        open(os.path.join(newest, ".metadata"), "wb").close()
    else:
        with open(os.path.join(newest, "meta.json"), "w") as f:
            f.write('{"step": ')
    state = {"model": model().state_dict()}
    with pytest.raises(CheckpointError, match=rf"checkpoint {newest} cannot be read: it is truncated or corrupt .*"
                                              rf"the previous step {os.path.join(folder, 'step-000000001')} is intact"):
        checkpoint.load(folder, state)
    with open(os.path.join(folder, "latest"), "w") as f:  # what the message says to do
        f.write("step-000000001")
    checkpoint.load(folder, state)
    for key, value in model(seed=1).state_dict().items():
        assert torch.equal(state["model"][key], value), key

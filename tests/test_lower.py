"""The lowered DLRM (mprec.lower): plain aten ops on padded bags, equal to the model it lowers.

These run without torch_xla or poptorch: the lowered form is checked against the model on the CPU, and
its traced graph for the absence of any mprec op. `make test-xla` runs the same form on an XLA device.
"""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from mprec.lower import LoweredDLRM, bucket, pad_bags
from mprec.lower import xla

from conftest import LOWERING_SIZES, OpLog, dlrm_batch, small_dlrm

SIZES = LOWERING_SIZES
batch = dlrm_batch


def model_for(representation, mode="sum", interaction="dot", seed=0, **kwargs):
    return small_dlrm(representation, mode, interaction, seed, torch.float64, **kwargs)


@pytest.mark.parametrize("representation", ["table", "dhe", "hybrid", ["table", "dhe", "hybrid", "dhe", "table"]])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("one_hot", [0, 64])
def test_lowered_equals_model(representation, mode, one_hot):
    model = model_for(representation, mode)
    dense, indices, offsets = batch(11, bag_size=3, empty=True)
    lowered = LoweredDLRM(model, bag_size=3, one_hot_max_rows=one_hot)
    expected = model(dense.double(), indices, offsets)
    out = lowered.serve(dense.double(), indices, offsets)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("transform", ["uniform", "gaussian"])
def test_lowered_dhe_options(transform):
    model = model_for("dhe", transform=transform, activation="mish", batch_norm=True)
    dense, indices, offsets = batch(6, bag_size=2)
    torch.testing.assert_close(LoweredDLRM(model, bag_size=2).serve(dense.double(), indices, offsets),
                               model(dense.double(), indices, offsets), rtol=1e-9, atol=1e-9)


def test_lowered_trains_like_the_model():
    model = model_for("hybrid").train()
    dense, indices, offsets = batch(8, bag_size=2)
    lowered = LoweredDLRM(model, bag_size=2, buckets=(8,))
    padded, ids, mask, n = lowered.prepare(dense.double(), indices, offsets)
    lowered(padded, ids, mask)[:n].pow(2).sum().backward()
    grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
    model.zero_grad()
    model(dense.double(), indices, offsets).pow(2).sum().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad if p.grad is not None else torch.zeros_like(p), rtol=1e-8, atol=1e-10)


def test_padding_and_per_sample_weights():
    indices = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    offsets = torch.tensor([0, 2, 2, 5, 7])  # 2 features x 2 bags, one empty
    psw = torch.arange(1.0, 8.0)
    bags = pad_bags(indices, offsets, 2, bag_size=3, batch_size=4, per_sample_weights=psw)
    assert bags.ids.shape == (2, 4, 3) and bags.batch == 2
    assert bags.ids[0, 0].tolist() == [3, 1, 0] and bags.mask[0, 0].tolist() == [1.0, 2.0, 0.0]
    assert bags.mask[0, 1].sum() == 0 and bags.mask[:, 2:].sum() == 0  # the empty bag, the bucket's padding
    assert bags.ids[1, 0].tolist() == [4, 1, 5] and bags.ids[1, 1].tolist() == [9, 2, 0]
    with pytest.raises(ValueError, match="bag 1 of feature 1 holds 2 lookups, more than bag_size = 1"):
        pad_bags(torch.tensor([0, 0, 0, 0]), torch.tensor([0, 1, 2, 2, 4]), 2, bag_size=1)
    with pytest.raises(ValueError, match="offsets must have T \\* B \\+ 1 entries"):
        pad_bags(indices, offsets[:-1], 2, bag_size=3)


def test_buckets():
    assert [bucket(n) for n in (1, 2, 3, 100, 16384)] == [1, 2, 4, 128, 16384]
    with pytest.raises(ValueError, match="larger than the largest bucket"):
        bucket(16385)


@pytest.mark.parametrize("representation", ["table", "dhe", "hybrid"])
def test_no_mprec_op_in_the_lowered_graph(representation):
    model = model_for(representation)
    lowered = xla.lower(model, bag_size=2)
    padded, ids, mask, _ = lowered.prepare(*batch(5, bag_size=2))
    # The traced graph (what a compiler sees) and the ops actually dispatched.
    graph = make_fx(lowered)(padded.double(), ids, mask).graph
    targets = {str(node.target) for node in graph.nodes if node.op == "call_function"}
    assert targets and not [t for t in targets if "mprec" in t], sorted(targets)
    with OpLog() as log:
        lowered(padded.double(), ids, mask)
    assert log.names and not [n for n in log.names if n.startswith("mprec")], sorted(log.names)
    # The model itself runs mprec's ops: the check can fail.
    dense, indices, offsets = batch(5)
    with OpLog() as log:
        model(dense.double(), indices, offsets)
    assert [n for n in log.names if n.startswith("mprec")]


def test_xla_device_needs_torch_xla():
    if xla.available():
        pytest.skip("torch_xla is installed here")
    with pytest.raises(RuntimeError, match="torch_xla is not installed"):
        xla.device()

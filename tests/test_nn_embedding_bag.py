"""mprec.nn.EmbeddingBag as a drop-in for torch.nn.EmbeddingBag, mprec.nn.functional.embedding_bag, and
mprec.nn.EmbeddingBagCollection."""

import copy

import pytest
import torch

import mprec
from mprec.nn import EmbeddingBag, EmbeddingBagCollection
from conftest import make_bags


def twin_bags(**kwargs):
    """A torch.nn.EmbeddingBag and an mprec.nn.EmbeddingBag with the same weights."""
    torch.manual_seed(1)
    theirs = torch.nn.EmbeddingBag(40, 6, **kwargs)
    ours = EmbeddingBag(40, 6, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


LAYER_CASES = {
    "default-mean": dict(),
    "sum": dict(mode="sum"),
    "max": dict(mode="max"),
    "padding": dict(mode="sum", padding_idx=3),
    "negative-padding": dict(mode="mean", padding_idx=-2),
    "last-offset": dict(mode="sum", include_last_offset=True),
    "sparse": dict(mode="sum", sparse=True),
    "max-norm": dict(mode="sum", max_norm=1.5),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_matches_torch_forward_and_backward(case):
    kwargs = LAYER_CASES[case]
    ours, theirs = twin_bags(**kwargs)
    indices, offsets = make_bags(12, 6, 40, padding_idx=kwargs.get("padding_idx") % 40 if "padding_idx" in kwargs else None)
    if not kwargs.get("include_last_offset"):
        offsets = offsets[:-1]
    out_ours, out_theirs = ours(indices, offsets), theirs(indices, offsets)
    torch.testing.assert_close(out_ours, out_theirs)
    grad = torch.randn_like(out_ours)
    out_ours.backward(grad)
    out_theirs.backward(grad)
    g_ours, g_theirs = ours.weight.grad, theirs.weight.grad
    assert g_ours.layout == g_theirs.layout
    if g_ours.is_sparse:
        g_ours, g_theirs = g_ours.to_dense(), g_theirs.to_dense()
    torch.testing.assert_close(g_ours, g_theirs)
    torch.testing.assert_close(ours.weight, theirs.weight)  # max_norm renormalises both alike


def test_2d_input_and_per_sample_weights_match_torch():
    ours, theirs = twin_bags(mode="sum")
    indices = torch.randint(0, 40, (5, 4))
    psw = torch.randn(5, 4)
    torch.testing.assert_close(ours(indices, per_sample_weights=psw), theirs(indices, per_sample_weights=psw))
    torch.testing.assert_close(ours(indices), theirs(indices))


def test_int32_indices_and_mixed_offsets_dtype():
    ours, theirs = twin_bags(mode="sum")
    indices = torch.randint(0, 40, (10,), dtype=torch.int32)
    offsets = torch.tensor([0, 3, 7])
    torch.testing.assert_close(ours(indices, offsets), theirs(indices, offsets))
    torch.testing.assert_close(ours(indices, offsets.int()), theirs(indices, offsets.int()))


def test_functional_mirrors_torch_signature_and_errors():
    import inspect
    ours = inspect.signature(mprec.nn.functional.embedding_bag)
    theirs = inspect.signature(torch.nn.functional.embedding_bag)
    assert list(ours.parameters) == list(theirs.parameters)
    assert [p.default for p in ours.parameters.values()] == [p.default for p in theirs.parameters.values()]
    w = torch.randn(10, 3)
    for args, kwargs, exc, msg in [
        ((torch.tensor([[1, 2]]), w, torch.tensor([0])), {}, ValueError, "if input is 2D, then offsets has to be None"),
        ((torch.tensor([1, 2]), w), {}, ValueError, "offsets has to be a 1D Tensor but got None"),
        ((torch.tensor([[[1]]]), w), {}, ValueError, "input has to be 1D or 2D Tensor"),
        ((torch.tensor([1, 2]), w, torch.tensor([0])), dict(mode="max", sparse=True), ValueError, "max mode does not support sparse"),
        ((torch.tensor([1, 2]), w, torch.tensor([0])), dict(mode="mean", per_sample_weights=torch.ones(2)),
         NotImplementedError, "per_sample_weights is only supported for mode='sum'"),
        ((torch.tensor([1, 2]), w, torch.tensor([0])), dict(per_sample_weights=torch.ones(3)), ValueError, "same shape as the input"),
        ((torch.tensor([1, 2]), w, torch.tensor([0])), dict(mode="median"), ValueError, "mode has to be one of sum, mean or max"),
        ((torch.tensor([1, 2]), w, torch.tensor([0])), dict(mode="max", scale_grad_by_freq=True), ValueError,
         "max mode does not support scaling the gradient by the frequency"),
    ]:
        with pytest.raises(exc, match=msg):
            mprec.nn.functional.embedding_bag(*args, **kwargs)
        with pytest.raises(exc, match=msg):
            torch.nn.functional.embedding_bag(*args, **kwargs)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_scale_grad_by_freq_layer(mode, sparse):
    """The layer's gradient with scale_grad_by_freq is torch's dense one where torch's CPU kernel is right: every
    index of the batch occurs the same number of times (torch divides by another index's count otherwise)."""
    torch.manual_seed(0)
    ours = EmbeddingBag(40, 6, mode=mode, sparse=sparse, scale_grad_by_freq=True)
    theirs = torch.nn.EmbeddingBag(40, 6, mode=mode, scale_grad_by_freq=True)
    theirs.load_state_dict(ours.state_dict())
    assert "scale_grad_by_freq=True" in repr(ours) and "scale_grad_by_freq=True" in repr(theirs)
    indices = torch.tensor([3, 7, 3, 9, 7, 9, 3, 7, 9])  # each of 3, 7, 9 three times
    offsets = torch.tensor([0, 2, 5])
    grad = torch.randn(3, 6)
    ours(indices, offsets).backward(grad)
    theirs(indices, offsets).backward(grad)
    assert ours.weight.grad.layout == (torch.sparse_coo if sparse else torch.strided)
    torch.testing.assert_close(ours.weight.grad.to_dense(), theirs.weight.grad)
    unscaled = torch.nn.EmbeddingBag(40, 6, mode=mode)
    unscaled.load_state_dict(ours.state_dict())
    unscaled(indices, offsets).backward(grad)
    torch.testing.assert_close(ours.weight.grad.to_dense() * 3, unscaled.weight.grad)


def test_from_pretrained_reset_parameters_and_state_dict():
    pretrained = torch.randn(20, 4)
    bag = EmbeddingBag.from_pretrained(pretrained, mode="sum", padding_idx=2)
    ref = torch.nn.EmbeddingBag.from_pretrained(pretrained, mode="sum", padding_idx=2)
    assert not bag.weight.requires_grad
    assert list(bag.state_dict()) == ["weight"] == list(ref.state_dict())
    idx, off = torch.tensor([1, 2, 3]), torch.tensor([0, 1])
    torch.testing.assert_close(bag(idx, off), ref(idx, off))
    assert EmbeddingBag.from_pretrained(pretrained, freeze=False).weight.requires_grad
    bag = EmbeddingBag(20, 4, padding_idx=5)
    before = bag.weight.detach().clone()
    bag.reset_parameters()
    assert not torch.equal(before, bag.weight)
    assert torch.count_nonzero(bag.weight[5]) == 0 and torch.count_nonzero(bag.weight) > 0
    assert repr(bag) == repr(torch.nn.EmbeddingBag(20, 4, padding_idx=5))
    clone = copy.deepcopy(bag)
    clone.load_state_dict(bag.state_dict())
    assert torch.equal(clone.weight, bag.weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_layer_dtypes(dtype):
    bag = EmbeddingBag(30, 8, mode="sum", dtype=dtype)
    assert bag.weight.dtype == dtype
    out = bag(torch.tensor([1, 2, 3]), torch.tensor([0, 2]))
    assert out.dtype == dtype
    out.float().sum().backward()
    assert bag.weight.grad.dtype == dtype


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_layer_compiles_fullgraph(mode):
    torch._dynamo.reset()
    bag = EmbeddingBag(50, 8, mode=mode)
    indices, offsets = make_bags(16, 5, 50)
    offsets = offsets[:-1]
    compiled = torch.compile(bag, fullgraph=True)
    out = compiled(indices, offsets)
    torch.testing.assert_close(out, bag(indices, offsets))
    out.sum().backward()
    eager = EmbeddingBag(50, 8, mode=mode, _weight=bag.weight.detach().clone())
    eager(indices, offsets).sum().backward()
    torch.testing.assert_close(bag.weight.grad, eager.weight.grad)


# --- EmbeddingBagCollection ----------------------------------------------------------------------------

def collection_inputs(rows, bags, padding=None):
    parts, lengths = [], []
    for t, r in enumerate(rows):
        idx, off = make_bags(bags, 6, r, padding_idx=None if padding is None else padding[t])
        parts.append(idx)
        lengths.append(off[1:] - off[:-1])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cat(lengths).cumsum(0)])
    return torch.cat(parts), offsets


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_collection_matches_one_torch_bag_per_table(mode):
    rows, dims, bags = [100, 20, 57], [8, 16, 4], 9
    ebc = EmbeddingBagCollection(rows, dims, mode=mode, padding_idx=[None, 3, None])
    indices, offsets = collection_inputs(rows, bags, padding=[None, 3, None])
    out = ebc(indices, offsets)
    assert out.shape == (bags, sum(dims))
    cols = 0
    weights = ebc.table_parameters()
    for t, w in enumerate(weights):
        start, stop = int(offsets[t * bags]), int(offsets[(t + 1) * bags])
        ref = torch.nn.functional.embedding_bag(indices[start:stop], w, offsets[t * bags : (t + 1) * bags] - start,
                                                mode=mode, padding_idx=[None, 3, None][t])
        torch.testing.assert_close(out[:, cols : cols + dims[t]], ref)
        cols += dims[t]
    out.sum().backward()
    assert all(w.grad is not None and w.grad.shape == w.shape for w in weights)
    assert list(ebc.state_dict()) == ["embedding_bags.t0.weight", "embedding_bags.t1.weight", "embedding_bags.t2.weight"]
    assert torch.count_nonzero(weights[1].grad[3]) == 0


def test_collection_compiles_fullgraph_and_sparse_gradients():
    torch._dynamo.reset()
    rows, dims = [30, 40], 8
    ebc = EmbeddingBagCollection(rows, dims, mode="sum")
    indices, offsets = collection_inputs(rows, 5)
    out = torch.compile(ebc, fullgraph=True)(indices, offsets)
    torch.testing.assert_close(out, ebc(indices, offsets))
    sparse = EmbeddingBagCollection(rows, dims, mode="sum", sparse=True)
    sparse.load_state_dict(ebc.state_dict())
    sparse(indices, offsets).sum().backward()
    ebc(indices, offsets).sum().backward()
    for s, d in zip(sparse.table_parameters(), ebc.table_parameters()):
        assert s.grad.is_sparse
        torch.testing.assert_close(s.grad.to_dense(), d.grad)


def test_collection_argument_errors():
    with pytest.raises(ValueError, match="at least one table"):
        EmbeddingBagCollection([], 4)
    with pytest.raises(ValueError, match="2 embedding dims for 3 tables"):
        EmbeddingBagCollection([1, 2, 3], [4, 4])
    with pytest.raises(ValueError, match="mode must be one of"):
        EmbeddingBagCollection([10], 4, mode="median")

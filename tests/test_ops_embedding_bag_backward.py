"""Gradients of mprec::embedding_bag and mprec::batched_embedding_bag: weight (dense and sparse COO),
per_sample_weights, and max mode through its argmax."""

import pytest
import torch

import mprec
from reference import batched_embedding_bag_reference, embedding_bag_reference
from conftest import DIMS, INDEX_DTYPES, make_bags, offsets_for

MODE_CASES = [("sum", False), ("sum", True), ("mean", False), ("max", False)]
GRAD_TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
                  torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def reference_grads(weight, indices, offsets, mode, psw, padding_idx, include_last_offset, grad):
    w = weight.detach().double().requires_grad_()
    p = None if psw is None else psw.detach().double().requires_grad_()
    out = embedding_bag_reference(w, indices, offsets, mode, p, padding_idx, include_last_offset)
    out.backward(grad.double())
    return w.grad, None if p is None else p.grad


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("include_last_offset", [False, True], ids=["B", "B+1"])
@pytest.mark.parametrize("mode,weighted", MODE_CASES, ids=["sum", "weighted", "mean", "max"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=["i32", "i64"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
def test_dense_gradients_match_reference(dtype, index_dtype, mode, weighted, include_last_offset, padding, dim):
    padding_idx = 4 if padding else -1
    if mode == "max":
        # Distinct values in every column, so the maximum is unique and the subgradient is well defined
        # (random float16 values tie often enough to matter). Small integers are exact in every dtype.
        weight = (torch.stack([torch.randperm(60) for _ in range(dim)], dim=1) - 30).to(dtype).requires_grad_()
    else:
        weight = torch.randn(60, dim).to(dtype).requires_grad_()
    indices, offsets = make_bags(17, 8, 60, index_dtype, padding_idx=4 if padding else None)
    offs = offsets_for(offsets, include_last_offset)
    psw = torch.randn(indices.numel()).to(dtype).requires_grad_() if weighted else None
    out = mprec.ops.embedding_bag(weight, indices, offs, mode, psw, padding_idx if padding else None,
                                  include_last_offset)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_w, ref_p = reference_grads(weight, indices, offs, mode, psw, padding_idx, include_last_offset, grad)
    assert weight.grad.dtype == dtype and weight.grad.layout == torch.strided
    torch.testing.assert_close(weight.grad.double(), ref_w, **GRAD_TOLERANCE[dtype])
    if weighted:
        assert psw.grad.dtype == dtype
        torch.testing.assert_close(psw.grad.double(), ref_p, **GRAD_TOLERANCE[dtype])
    if padding:
        assert torch.count_nonzero(weight.grad[padding_idx]) == 0


@pytest.mark.parametrize("include_last_offset", [False, True], ids=["B", "B+1"])
@pytest.mark.parametrize("mode,weighted", MODE_CASES, ids=["sum", "weighted", "mean", "max"])
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
def test_gradcheck_float64(mode, weighted, include_last_offset, padding):
    weight = torch.randn(25, 7, dtype=torch.float64, requires_grad=True)
    indices, offsets = make_bags(9, 6, 25, padding_idx=2 if padding else None)
    offs = offsets_for(offsets, include_last_offset)
    psw = torch.randn(indices.numel(), dtype=torch.float64, requires_grad=True) if weighted else None
    inputs = (weight, psw) if weighted else (weight,)

    def f(w, p=None):
        return mprec.ops.embedding_bag(w, indices, offs, mode, p, 2 if padding else None, include_last_offset)

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("mode,weighted", [("sum", False), ("sum", True), ("mean", False)], ids=["sum", "weighted", "mean"])
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_sparse_gradients_equal_dense_and_torch(dtype, mode, weighted, padding):
    indices, offsets = make_bags(30, 6, 40, padding_idx=1 if padding else None)
    psw = torch.randn(indices.numel()).to(dtype) if weighted else None
    base = torch.randn(40, 9).to(dtype)
    grads = {}
    for sparse in (False, True):
        weight = base.clone().requires_grad_()
        out = mprec.ops.embedding_bag(weight, indices, offsets[:-1], mode, psw, 1 if padding else None, sparse=sparse)
        out.backward(torch.ones_like(out) * torch.arange(out.shape[0], dtype=dtype).unsqueeze(1))
        grads[sparse] = weight.grad
    assert grads[True].layout == torch.sparse_coo and grads[True].dtype == dtype
    torch.testing.assert_close(grads[True].to_dense(), grads[False])
    # torch's own sparse gradient: same rows, same values.
    weight = base.clone().requires_grad_()
    out = torch.nn.functional.embedding_bag(indices, weight, offsets[:-1], mode=mode, per_sample_weights=psw,
                                            padding_idx=1 if padding else None, sparse=True)
    out.backward(torch.ones_like(out) * torch.arange(out.shape[0], dtype=dtype).unsqueeze(1))
    ours, theirs = grads[True].coalesce(), weight.grad.coalesce()
    theirs_nonzero = theirs.indices()[0][theirs.values().abs().sum(1) > 0]
    ours_nonzero = ours.indices()[0][ours.values().abs().sum(1) > 0]
    assert torch.equal(ours_nonzero, theirs_nonzero)
    torch.testing.assert_close(ours.to_dense(), theirs.to_dense(), **GRAD_TOLERANCE[dtype])


def test_sparse_gradient_rows_are_the_lookups_without_padding():
    weight = torch.randn(10, 3, requires_grad=True)
    indices = torch.tensor([1, 0, 7, 0, 3])
    out = mprec.ops.embedding_bag(weight, indices, torch.tensor([0, 2]), "sum", padding_idx=0, sparse=True)
    out.sum().backward()
    assert weight.grad._indices().tolist() == [[1, 7, 3]]


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_gradients_same_with_one_and_two_threads(num_threads, mode):
    weight = torch.randn(300, 50)
    indices, offsets = make_bags(400, 20, 300)
    psw = torch.randn(indices.numel()) if mode == "sum" else None
    grads = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        w = weight.clone().requires_grad_()
        p = None if psw is None else psw.clone().requires_grad_()
        out = mprec.ops.embedding_bag(w, indices, offsets[:-1], mode, p)
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
        grads.append((w.grad, None if p is None else p.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    if psw is not None:
        assert torch.equal(grads[0][1], grads[1][1])


def test_uint8_tables_are_inference_only():
    q, sb = mprec.ops.quantize_rowwise_int8(torch.randn(10, 4))
    with pytest.raises(RuntimeError, match="floating point dtype can require gradients"):
        q.requires_grad_()
    psw = torch.rand(3, requires_grad=True)
    out = mprec.ops.embedding_bag(q, torch.tensor([1, 2, 3]), torch.tensor([0]), "sum", psw, scale_bias=sb)
    with pytest.raises(ValueError, match=r"mprec::embedding_bag_per_sample_weights_backward: weight is uint8 "
                                         r"\(row-wise quantized\): quantized tables are inference only"):
        out.sum().backward()


# --- batched -----------------------------------------------------------------------------------------

# Sparse gradients do not exist for max mode (an error, tested in test_ops_embedding_bag_errors).
BATCHED_GRAD_CASES = [(m, w, s) for m, w in MODE_CASES for s in (False, True) if not (s and m == "max")]


@pytest.mark.parametrize("mode,weighted,sparse", BATCHED_GRAD_CASES,
                         ids=[f"{m}{'-weighted' if w else ''}-{'sparse' if s else 'dense'}"
                              for m, w, s in BATCHED_GRAD_CASES])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=["i32", "i64"])
def test_batched_gradients_match_reference(index_dtype, mode, weighted, sparse):
    dims, rows, bags = [5, 16, 1], [30, 12, 50], 11
    weights = [torch.randn(r, d, requires_grad=True) for r, d in zip(rows, dims)]
    parts, lengths, pads = [], [], [3, -1, 0]
    for t in range(3):
        idx, off = make_bags(bags, 7, rows[t], padding_idx=pads[t] if pads[t] >= 0 else None)
        parts.append(idx)
        lengths.append(off[1:] - off[:-1])
    indices = torch.cat(parts).to(index_dtype)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cat(lengths).cumsum(0)]).to(index_dtype)
    psw = torch.randn(indices.numel(), requires_grad=True) if weighted else None
    padding = [None if p < 0 else p for p in pads]
    out = mprec.ops.batched_embedding_bag(weights, indices, offsets, mode, psw, padding, sparse=sparse)
    grad = torch.randn_like(out)
    out.backward(grad)

    w64 = [w.detach().double().requires_grad_() for w in weights]
    p64 = None if psw is None else psw.detach().double().requires_grad_()
    batched_embedding_bag_reference(w64, indices, offsets, mode, p64, pads).backward(grad.double())
    for w, r in zip(weights, w64):
        g = w.grad.to_dense() if sparse else w.grad
        assert w.grad.layout == (torch.sparse_coo if sparse else torch.strided)
        torch.testing.assert_close(g.double(), r.grad, rtol=1e-5, atol=1e-5)
    if weighted:
        torch.testing.assert_close(psw.grad.double(), p64.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_batched_gradcheck_float64(mode):
    weights = [torch.randn(12, 3, dtype=torch.float64, requires_grad=True),
               torch.randn(9, 5, dtype=torch.float64, requires_grad=True)]
    idx0, off0 = make_bags(4, 5, 12)
    idx1, off1 = make_bags(4, 5, 9)
    indices = torch.cat([idx0, idx1])
    offsets = torch.cat([off0, off1[1:] + off0[-1]])
    psw = torch.randn(indices.numel(), dtype=torch.float64, requires_grad=True) if mode == "sum" else None
    inputs = (*weights, psw) if psw is not None else tuple(weights)

    def f(w0, w1, p=None):
        return mprec.ops.batched_embedding_bag([w0, w1], indices, offsets, mode, p)

    assert torch.autograd.gradcheck(f, inputs)


# --- scale_grad_by_freq ----------------------------------------------------------------------------------

def scaled_reference_grad(weight, indices, offsets, mode, psw, padding_idx, include_last_offset, grad):
    w = weight.detach().double().requires_grad_()
    p = None if psw is None else psw.detach().double()
    out = embedding_bag_reference(w, indices, offsets, mode, p, padding_idx, include_last_offset,
                                  scale_grad_by_freq=True)
    out.backward(grad.double())
    return w.grad


@pytest.mark.parametrize("trailing", [False, True], ids=["all", "trailing"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("mode,weighted", MODE_CASES[:3], ids=["sum", "weighted", "mean"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=["i32", "i64"])
@pytest.mark.parametrize("dtype,dim", [(torch.float64, 1), (torch.float64, 129), (torch.float32, 16),
                                       (torch.bfloat16, 16)], ids=["f64-D1", "f64-D129", "f32", "bf16"])
def test_scale_grad_by_freq_matches_reference(dtype, dim, index_dtype, mode, weighted, padding, sparse, trailing):
    g = torch.Generator().manual_seed(11)
    # Few rows for many lookups: most rows occur several times, in the same bag and across bags.
    indices, offsets = make_bags(23, 9, 12, index_dtype, padding_idx=3 if padding else None, generator=g)
    # trailing: the last bag ends before the last index (include_last_offset with B + 1 offsets that stop
    # short); those lookups belong to no bag and count towards no frequency.
    offs, include_last_offset = (offsets[:-1], True) if trailing else (offsets[:-1], False)
    weight = torch.randn(12, dim, generator=g).to(dtype).requires_grad_()
    psw = torch.randn(indices.numel(), generator=g).to(dtype) if weighted else None
    out = mprec.ops.embedding_bag(weight, indices, offs, mode, psw, 3 if padding else None, include_last_offset,
                                  sparse=sparse, scale_grad_by_freq=True)
    grad = torch.randn(out.shape, generator=g).to(dtype)
    out.backward(grad)
    want = scaled_reference_grad(weight, indices, offs, mode, psw, 3 if padding else -1, include_last_offset, grad)
    got = weight.grad
    assert got.layout == (torch.sparse_coo if sparse else torch.strided) and got.dtype == dtype
    torch.testing.assert_close(got.to_dense().double(), want, **GRAD_TOLERANCE[dtype])
    unscaled = weight.detach().clone().requires_grad_()
    mprec.ops.embedding_bag(unscaled, indices, offs, mode, psw, 3 if padding else None,
                            include_last_offset).backward(grad)
    assert not torch.allclose(unscaled.grad.double(), want)  # the scaling changed something


def test_scale_grad_by_freq_divides_by_the_rows_own_count():
    # torch 2.13's CPU kernel gives row 3 0.5 here (the count of row 1); CUDA and the docs say 1.
    for sparse in (False, True):
        weight = torch.ones(4, 3, requires_grad=True)
        mprec.ops.embedding_bag(weight, torch.tensor([1, 1, 3]), torch.tensor([0]), "sum", sparse=sparse,
                                scale_grad_by_freq=True).sum().backward()
        assert weight.grad.to_dense()[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("padding_idx", [None, 2])
def test_scale_grad_by_freq_reference_agrees_with_torch_embedding(padding_idx):
    """The reference against torch's non-bag embedding, whose CPU scaling is right: one lookup per bag."""
    g = torch.Generator().manual_seed(3)
    indices = torch.randint(0, 8, (40,), generator=g)
    weight = torch.randn(8, 5, dtype=torch.float64, generator=g)
    grad = torch.randn(40, 5, dtype=torch.float64, generator=g)
    w1 = weight.clone().requires_grad_()
    torch.nn.functional.embedding(indices, w1, padding_idx=padding_idx, scale_grad_by_freq=True).backward(grad)
    w2 = weight.clone().requires_grad_()
    embedding_bag_reference(w2, indices, torch.arange(40), "sum", None, -1 if padding_idx is None else padding_idx,
                            scale_grad_by_freq=True).backward(grad)
    torch.testing.assert_close(w2.grad, w1.grad, rtol=1e-12, atol=1e-12)
    w3 = weight.clone().requires_grad_()
    mprec.ops.embedding_bag(w3, indices, torch.arange(40), "sum", padding_idx=padding_idx,
                            scale_grad_by_freq=True).backward(grad)
    torch.testing.assert_close(w3.grad, w1.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch", [0, 1])
def test_scale_grad_by_freq_empty(batch):
    weight = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([], dtype=torch.int64)
    out = mprec.ops.embedding_bag(weight, indices, torch.zeros(batch, dtype=torch.int64), "mean",
                                  scale_grad_by_freq=True)
    out.sum().backward()
    assert out.shape == (batch, 4) and torch.count_nonzero(weight.grad) == 0


def test_scale_grad_by_freq_refused_in_max_mode():
    weight, indices, offsets = torch.randn(5, 4), torch.tensor([1, 2]), torch.tensor([0, 1])
    message = r"mprec::embedding_bag: scale_grad_by_freq is not supported in max mode \(mode 2\)"
    with pytest.raises(ValueError, match=message):
        torch.ops.mprec.embedding_bag(weight, indices, offsets, 2, None, -1, False, None, False, True)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode, pytest.raises(ValueError, match=message):
        torch.ops.mprec.embedding_bag(mode.from_tensor(weight), mode.from_tensor(indices), mode.from_tensor(offsets),
                                      2, None, -1, False, None, False, True)
    with pytest.raises(ValueError, match="max mode does not support scaling the gradient by the frequency"):
        mprec.nn.functional.embedding_bag(indices, weight, offsets, mode="max", scale_grad_by_freq=True)

"""mprec.ops.composite, the aten compositions registered as the CUDA kernels of the ops without a dedicated
GPU kernel, against the CPU kernels on the same CPU tensors: the same shapes, dtypes, order of sparse rows
and values up to rounding; the same in-place updates; and the same errors, word for word."""

import inspect
import re

import pytest
import torch

from conftest import make_bags
from mprec.ops.dhe import composite as dhe_composite
from mprec.ops.composite import KERNELS

OPS = [
    "embedding_bag_sparse_backward", "batched_embedding_bag_sparse_backward",
    "embedding_bag_per_sample_weights_backward", "batched_embedding_bag_per_sample_weights_backward",
    "batched_embedding_bag_update", "quantize_rowwise_int8", "dequantize_rowwise_int8",
    "dhe_encode_linear_backward", "rowwise_linear",
    "dot_interaction", "dot_interaction_backward", "dlrm_interaction", "dlrm_interaction_backward",
    "unique_ids",
]

# Composition against CPU kernel, by result dtype: both accumulate in float32 (float64 for float64) with
# different summation orders and round once to the result's dtype, so they differ by a rounding or two of
# the result (bfloat16: 2^-8 relative; two of them, as a value may sit on a rounding boundary).
TOL = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}
FLOATS = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
INDEX_DTYPES = [torch.int32, torch.int64]


def cpu(name, *args):
    return getattr(torch.ops.mprec, name)(*args)


def assert_same(got, want):
    """Same structure, shapes and dtypes; integer tensors equal, float tensors within TOL."""
    if isinstance(want, (tuple, list)):
        assert isinstance(got, (tuple, list)) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
        return
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    if want.dtype.is_floating_point:
        torch.testing.assert_close(got, want, **TOL[want.dtype])
    else:
        assert torch.equal(got, want)


def assert_same_error(name, *args):
    """The composition raises the CPU kernel's exception type with the CPU kernel's message."""
    with pytest.raises(Exception) as want:
        cpu(name, *args)
    with pytest.raises(want.type, match="^" + re.escape(str(want.value)) + "$") as got:
        KERNELS[name](*args)
    assert got.type is want.type


def test_kernels_have_the_schema_signatures():
    assert set(OPS) <= set(KERNELS)
    for name, fn in KERNELS.items():
        arguments = getattr(torch.ops.mprec, name).default._schema.arguments
        parameters = inspect.signature(fn).parameters
        assert list(parameters) == [a.name for a in arguments], name
        for a in arguments:  # defaulted where the schema has a default
            assert (parameters[a.name].default is inspect.Parameter.empty) == (not a.has_default_value()), (name, a)


# --- embedding bags ------------------------------------------------------------------------------------------

def single_case(dtype, index_dtype, bags, dim, padding_idx, include_last_offset, weighted, rows=20):
    weight = torch.randn(rows, dim).to(dtype)
    indices, offsets = make_bags(bags, 5, rows, index_dtype, padding_idx=None if padding_idx < 0 else padding_idx)
    if include_last_offset:  # lookups after the last offset belong to no bag: not even range-checked
        indices = torch.cat([indices, torch.tensor([1, 99], dtype=index_dtype)])  # never read
    else:
        offsets = offsets[:-1]
    grad = torch.randn(bags, dim).to(dtype)
    psw = torch.randn(indices.numel()).to(dtype) if weighted else None
    return weight, indices, offsets, grad, psw


def batched_case(dtype, index_dtype, bags, dims, weighted, rows=(7, 40, 300)):
    weights = [torch.randn(r, d).to(dtype) for r, d in zip(rows, dims)]
    parts, offs, base = [], [], 0
    for r in rows[: len(dims)]:
        idx, off = make_bags(bags, 6, r, index_dtype, padding_idx=2)
        parts.append(idx)
        offs.append(off[:-1] + base)
        base += idx.numel()
    indices = torch.cat(parts)
    offsets = torch.cat(offs + [torch.tensor([base], dtype=index_dtype)])
    grad = torch.randn(bags, sum(dims)).to(dtype)
    psw = torch.randn(indices.numel()).to(dtype) if weighted else None
    padding = [2] + [-1] * (len(dims) - 1)
    return weights, indices, offsets, grad, psw, padding


SHAPES = {"D1": (7, 1), "D129": (7, 129), "B0": (0, 4)}
MODES = {"sum": (0, False), "weighted": (0, True), "mean": (1, False)}


@pytest.mark.parametrize("include_last_offset", [False, True], ids=["", "last-offset"])
@pytest.mark.parametrize("padding_idx", [-1, 2], ids=["", "pad"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_embedding_bag_backward_ops(dtype, index_dtype, shape, mode, padding_idx, include_last_offset):
    bags, dim = SHAPES[shape]
    mode, weighted = MODES[mode]
    weight, indices, offsets, grad, psw = single_case(dtype, index_dtype, bags, dim, padding_idx, include_last_offset,
                                                      weighted)
    args = (grad, weight, indices, offsets, mode, psw, padding_idx, include_last_offset)
    assert_same(KERNELS["embedding_bag_sparse_backward"](*args), cpu("embedding_bag_sparse_backward", *args))
    if mode == 0:
        args = (grad, weight, indices, offsets, mode, padding_idx, include_last_offset)
        name = "embedding_bag_per_sample_weights_backward"
        assert_same(KERNELS[name](*args), cpu(name, *args))


@pytest.mark.parametrize("bags", [9, 0])
@pytest.mark.parametrize("dims", [(1,), (4, 129), (16, 16, 3)], ids=str)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_batched_embedding_bag_backward_ops(dtype, index_dtype, mode, dims, bags):
    mode, weighted = MODES[mode]
    weights, indices, offsets, grad, psw, padding = batched_case(dtype, index_dtype, bags, dims, weighted)
    name = "batched_embedding_bag_sparse_backward"
    args = (grad, weights, indices, offsets, mode, psw, padding)
    assert_same(KERNELS[name](*args), cpu(name, *args))
    args = (grad, weights, indices, offsets, mode, psw, [])  # no padding rows
    assert_same(KERNELS[name](*args), cpu(name, *args))
    if mode == 0:
        name = "batched_embedding_bag_per_sample_weights_backward"
        args = (grad, weights, indices, offsets, mode, padding)
        assert_same(KERNELS[name](*args), cpu(name, *args))


def test_sparse_rows_keep_lookup_order():
    # Repeated rows stay separate, in bag order then lookup order, padding dropped (torch's sparse=True).
    weight = torch.randn(6, 2, dtype=torch.float64)
    indices, offsets = torch.tensor([5, 1, 5, 0, 3, 1]), torch.tensor([0, 3, 3])
    rows, _ = KERNELS["embedding_bag_sparse_backward"](torch.randn(3, 2, dtype=torch.float64), weight, indices,
                                                            offsets, 0, None, 0, False)
    assert rows.tolist() == [5, 1, 5, 3, 1]


@pytest.mark.parametrize("bags", [9, 0])
@pytest.mark.parametrize("dims", [(1,), (4, 129), (16, 16, 3)], ids=str)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_batched_embedding_bag_update(optimizer, dtype, index_dtype, mode, dims, bags):
    mode, weighted = MODES[mode]
    weights, indices, offsets, grad, psw, padding = batched_case(dtype, index_dtype, bags, dims, weighted)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    state = [torch.rand(w.shape[0], dtype=acc) for w in weights] if optimizer == "rowwise_adagrad" else []
    want_w, want_s = [w.clone() for w in weights], [s.clone() for s in state]
    got_w, got_s = [w.clone() for w in weights], [s.clone() for s in state]
    args = (grad, indices, offsets, mode, psw, padding, optimizer, 0.3, 1e-8)
    cpu("batched_embedding_bag_update", want_w, want_s, *args)
    assert KERNELS["batched_embedding_bag_update"](got_w, got_s, *args) is None
    assert_same(got_w, want_w)
    assert_same(got_s, want_s)
    assert torch.equal(got_w[0][2], weights[0][2])  # the padding row


# --- row-wise int8 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(7, 1), (5, 129), (0, 4), (3, 0)], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_quantize_dequantize(dtype, shape):
    weight = (torch.randn(shape) * 3).to(dtype)
    if shape[0] > 2:
        weight[1] = 0.75  # a constant row: scale 0
    q, scale_bias = KERNELS["quantize_rowwise_int8"](weight)
    want_q, want_sb = cpu("quantize_rowwise_int8", weight)
    assert q.dtype == torch.uint8 and torch.equal(q, want_q)
    assert scale_bias.dtype == torch.float32 and torch.equal(scale_bias, want_sb)
    assert_same(KERNELS["dequantize_rowwise_int8"](q, scale_bias), cpu("dequantize_rowwise_int8", q, scale_bias))


# --- DHE ----------------------------------------------------------------------------------------------------------

def dhe_case(transform, dtype, index_dtype, ids_shape, k=6, out_features=5, m=1000, bias=True):
    a, b, p = torch.randint(1, 1009, (k,)), torch.randint(0, 1009, (k,)), 1009  # 1009: the prime above m
    ids = torch.randint(0, 2**31 - 1, ids_shape).to(index_dtype)
    weight = torch.randn(out_features, k).to(dtype)
    bias = torch.randn(out_features).to(dtype) if bias else None
    return ids, a, b, p, m, transform, weight, bias


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("activation", ["none", "relu", "mish"])
@pytest.mark.parametrize("transform", ["uniform", "gaussian"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_dhe_encode_linear_backward(monkeypatch, dtype, transform, activation, with_bias):
    monkeypatch.setattr(dhe_composite, "_ENCODE_ROWS", 5)  # 13 ids: chunks of 5, 5 and 3
    for ids_shape, index_dtype in [((13,), torch.int64), ((3, 4), torch.int32), ((0,), torch.int64)]:
        ids, a, b, p, m, transform, weight, bias = dhe_case(transform, dtype, index_dtype, ids_shape, bias=with_bias)
        output = cpu("dhe_encode_linear", ids, a, b, p, m, transform, weight, bias, activation)
        grad = torch.randn(output.shape).to(dtype)
        args = (grad, output, ids, a, b, p, m, transform, weight, bias, activation)
        assert_same(KERNELS["dhe_encode_linear_backward"](*args), cpu("dhe_encode_linear_backward", *args))


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 129), (7,), (0, 7)], ids=str)
@pytest.mark.parametrize("activation", ["none", "relu", "mish"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_rowwise_linear(dtype, activation, shape):
    x = torch.randn(shape).to(dtype)
    weight = torch.randn(4, shape[-1]).to(dtype)
    for bias in (torch.randn(4).to(dtype), None):
        args = (x, weight, bias, activation)
        assert_same(KERNELS["rowwise_linear"](*args), cpu("rowwise_linear", *args))


# --- interactions --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 2, 1), (5, 4, 129), (0, 3, 4), (4, 27, 16)], ids=str)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_dot_interaction(dtype, shape):
    x = torch.randn(shape).to(dtype)
    out = cpu("dot_interaction", x)
    assert_same(KERNELS["dot_interaction"](x), out)
    for grad_dtype in (dtype, torch.float32):
        grad = torch.randn(out.shape).to(grad_dtype)
        assert_same(KERNELS["dot_interaction_backward"](grad, x), cpu("dot_interaction_backward", grad, x))


@pytest.mark.parametrize("pad_to", [1, 8])
@pytest.mark.parametrize("three_d", [False, True], ids=["2d", "3d"])
@pytest.mark.parametrize("shape", [(4, 3, 16), (0, 2, 4), (3, 1, 1), (2, 2, 129)], ids=str)
@pytest.mark.parametrize("dense_dtype,sparse_dtype", [
    (torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
    (torch.float64, torch.float32), (torch.float16, torch.bfloat16), (torch.bfloat16, torch.bfloat16),
    (torch.float64, torch.float64)], ids=str)
@pytest.mark.parametrize("ordered", [False, True], ids=["in-order", "order"])
def test_dlrm_interaction(dense_dtype, sparse_dtype, shape, three_d, pad_to, ordered):
    B, T, D = shape
    dense = torch.randn(B, D).to(dense_dtype)
    sparse = torch.randn(B, T, D).to(sparse_dtype)
    sparse = sparse if three_d else sparse.reshape(B, T * D)
    order = list(range(T))[::-1] if ordered else None
    out = cpu("dlrm_interaction", dense, sparse, pad_to, order)
    assert_same(KERNELS["dlrm_interaction"](dense, sparse, pad_to, order), out)
    grad = torch.randn(out.shape).to(dense_dtype)
    assert_same(KERNELS["dlrm_interaction_backward"](grad, dense, sparse, pad_to, order),
                cpu("dlrm_interaction_backward", grad, dense, sparse, pad_to, order))


# --- unique_ids ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0,), (50,), (4, 6)], ids=str)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=str)
def test_unique_ids(index_dtype, shape):
    ids = torch.randint(-5, 9, shape).to(index_dtype)
    assert_same(KERNELS["unique_ids"](ids), cpu("unique_ids", ids))


# --- errors ----------------------------------------------------------------------------------------------------------

def eb(grad=None, weight=None, indices=None, offsets=None, mode=0, psw=None, pad=-1, last=False):
    """embedding_bag_sparse_backward's arguments: 4 lookups, 2 bags of a 10-row table."""
    weight = torch.randn(10, 4) if weight is None else weight
    indices = torch.tensor([1, 2, 3, 4]) if indices is None else indices
    offsets = torch.tensor([0, 2]) if offsets is None else offsets
    bags = offsets.numel() - 1 if last else offsets.numel()
    grad = torch.randn(max(bags, 0), weight.shape[-1]) if grad is None else grad
    return grad, weight, indices, offsets, mode, psw, pad, last


def tbe(indices=None, offsets=None, weights=None, pad=(), grad=None):
    """batched arguments (grad, weights, indices, offsets, padding): tables of 10 and 7 rows, 2 bags each."""
    weights = [torch.randn(10, 4), torch.randn(7, 3)] if weights is None else weights
    indices = torch.tensor([1, 2, 3, 4, 0, 6, 5]) if indices is None else indices
    offsets = torch.tensor([0, 2, 4, 5, 7]) if offsets is None else offsets
    grad = torch.randn(2, sum(w.shape[1] for w in weights) if weights else 0) if grad is None else grad
    return grad, weights, indices, offsets, list(pad)


def psw_args(grad, weight, indices, offsets, mode, psw, pad, last):
    return grad, weight, indices, offsets, mode, pad, last


I32 = dict(dtype=torch.int32)
SINGLE_ERRORS = {
    "mode": eb(mode=3),
    "float indices": eb(indices=torch.tensor([1.0, 2.0])),
    "offsets dtype": eb(offsets=torch.tensor([0, 2], **I32)),
    "2-D indices": eb(indices=torch.tensor([[1, 2]]), offsets=torch.tensor([[0]])),
    "1-D weight": eb(weight=torch.randn(10)),
    "last offset": eb(offsets=torch.tensor([], dtype=torch.int64), last=True),
    "padding_idx": eb(pad=10),
    "first offset": eb(offsets=torch.tensor([1, 2])),
    "grad shape": eb(grad=torch.randn(3, 4)),
    "psw with mean": eb(mode=1, psw=torch.ones(4)),
    "psw with max": eb(mode=2, psw=torch.ones(4)),
    "psw length": eb(psw=torch.ones(3)),
    "psw dtype": eb(psw=torch.ones(4, dtype=torch.int64)),
    "max": eb(mode=2),
    "index": eb(indices=torch.tensor([1, 2, 3, 10, 4], **I32), offsets=torch.tensor([0, 2], **I32)),
    "negative index": eb(indices=torch.tensor([1, -3, 3, 4])),
    "huge index": eb(indices=torch.tensor([2**40, 1]), offsets=torch.tensor([0])),
    "decreasing": eb(offsets=torch.tensor([0, 3, 1])),
    "past the end": eb(offsets=torch.tensor([0, 2, 9]), last=True),
    "last bag": eb(offsets=torch.tensor([0, 5])),
    "index before offset": eb(indices=torch.tensor([11, 2, 3, 4]), offsets=torch.tensor([0, 2, 1])),
    "offset before index": eb(indices=torch.tensor([1, 2, 3, 11]), offsets=torch.tensor([0, 2, 1])),
    "first of two bad indices": eb(indices=torch.tensor([1, 2, -1, 12]), pad=2),
}


@pytest.mark.parametrize("case", list(SINGLE_ERRORS))
def test_single_table_errors(case):
    args = SINGLE_ERRORS[case]
    assert_same_error("embedding_bag_sparse_backward", *args)
    if args[5] is None:  # the per_sample_weights backward takes none
        assert_same_error("embedding_bag_per_sample_weights_backward", *psw_args(*args))


BATCHED_ERRORS = {
    "no tables": tbe(weights=[]),
    "1-D table": tbe(weights=[torch.randn(10, 4), torch.randn(7)], grad=torch.randn(2, 4)),
    "padding entries": tbe(pad=[1]),
    "padding range": tbe(pad=[1, 7]),
    "dtypes": tbe(weights=[torch.randn(10, 4), torch.randn(7, 3, dtype=torch.float64)]),
    "TBE offsets": tbe(offsets=torch.tensor([0, 2, 4, 5])),
    "first offset": tbe(offsets=torch.tensor([1, 2, 4, 5, 7])),
    "grad": tbe(grad=torch.randn(2, 8)),
    "index in table 1": tbe(indices=torch.tensor([1, 2, 3, 4, 0, 7, 5])),
    "negative index in table 0": tbe(indices=torch.tensor([1, 2, 3, -4, 0, 6, 5])),
    "decreasing": tbe(offsets=torch.tensor([0, 2, 4, 3, 7])),
    "past the end": tbe(offsets=torch.tensor([0, 2, 4, 5, 8])),
}


@pytest.mark.parametrize("case", list(BATCHED_ERRORS))
def test_batched_errors(case):
    grad, weights, indices, offsets, pad = BATCHED_ERRORS[case]
    assert_same_error("batched_embedding_bag_sparse_backward", grad, weights, indices, offsets, 0, None, pad)
    assert_same_error("batched_embedding_bag_per_sample_weights_backward", grad, weights, indices, offsets, 0, pad)
    assert_same_error("batched_embedding_bag_update", weights, [], grad, indices, offsets, 0, None, pad, "sgd", 0.1,
                      1e-8)


def test_per_sample_weights_backward_errors():
    name = "embedding_bag_per_sample_weights_backward"
    assert_same_error(name, *psw_args(*eb(mode=1)))
    q = torch.randint(0, 255, (10, 4), dtype=torch.uint8)
    assert_same_error(name, *psw_args(*eb(weight=q)))
    assert_same_error(name, *psw_args(*eb(weight=torch.randint(0, 5, (10, 4)))))
    grad, weights, indices, offsets, pad = tbe(weights=[q, q])
    assert_same_error("batched_embedding_bag_per_sample_weights_backward", grad, weights, indices, offsets, 0, pad)


def test_update_errors_leave_the_tables_unchanged():
    grad, weights, indices, offsets, pad = tbe()
    state = [torch.rand(10), torch.rand(7)]

    def check(weights=weights, state=(), grad=grad, indices=indices, offsets=offsets, mode=0, psw=None, pad=pad,
              optimizer="sgd", lr=0.1, eps=1e-8):
        state = list(state)
        before = [w.clone() for w in weights] + [s.clone() for s in state]
        assert_same_error("batched_embedding_bag_update", weights, state, grad, indices, offsets, mode, psw, pad,
                          optimizer, lr, eps)
        assert all(torch.equal(a, b) for a, b in zip(before, list(weights) + state))

    check(optimizer="adam")
    check(mode=2)
    check(weights=[torch.randn(4, 10).t(), weights[1]])
    for lr in (-0.123456789, float("inf"), float("nan")):
        check(lr=lr)
    for eps in (0.0, -1e-30, float("nan")):
        check(eps=eps)
    check(state=state)
    check(optimizer="rowwise_adagrad", state=state[:1])
    check(optimizer="rowwise_adagrad", state=[state[0], state[1].double()])
    check(optimizer="rowwise_adagrad", state=[state[0], torch.rand(6)])
    check(optimizer="rowwise_adagrad", state=[state[0], torch.rand(14)[::2]])
    check(psw=torch.ones(6))
    check(mode=1, psw=torch.ones(7))
    # Bad data in the last table: the first table (and its state) does not change either.
    check(indices=torch.tensor([1, 2, 3, 4, 0, 6, 9]))
    check(optimizer="rowwise_adagrad", state=state, offsets=torch.tensor([0, 2, 4, 5, 4]))


def test_quantize_errors():
    for weight in (torch.randn(4), torch.randint(0, 9, (3, 4)), torch.tensor([[1.0, float("inf")], [0.0, 1.0]]),
                   torch.tensor([[1.0, 2.0], [0.0, 1.0]]) / torch.tensor([[1.0, 1.0], [0.0, 1.0]]),  # 0/0: -nan
                   torch.tensor([[1.0, float("nan")]]), torch.tensor([[1e300, -1e300]], dtype=torch.float64)):
        assert_same_error("quantize_rowwise_int8", weight)
    q, sb = torch.randint(0, 255, (3, 4), dtype=torch.uint8), torch.rand(3, 2)
    assert_same_error("dequantize_rowwise_int8", q.float(), sb)
    assert_same_error("dequantize_rowwise_int8", q[0], sb)
    assert_same_error("dequantize_rowwise_int8", q, sb[:2])
    assert_same_error("dequantize_rowwise_int8", q, torch.rand(3, 3))
    assert_same_error("dequantize_rowwise_int8", q, sb.double())


def test_dhe_errors():
    ids, a, b, p, m, transform, weight, bias = dhe_case("uniform", torch.float32, torch.int64, (6,))
    grad = output = torch.randn(6, 5)

    def check(ids=ids, a=a, b=b, p=p, m=m, transform=transform, weight=weight, bias=bias, activation="relu",
              grad=grad, output=output):
        assert_same_error("dhe_encode_linear_backward", grad, output, ids, a, b, p, m, transform, weight, bias,
                          activation)

    check(ids=ids.float())
    check(m=1)
    check(p=997)
    check(p=3037000507, m=3037000000)
    check(p=1011)
    check(a=a.int())
    check(b=b[None])
    check(b=b[:4])
    check(a=a[:0], b=b[:0], weight=weight[:, :0])
    check(transform="normal")
    check(transform="gaussian", a=a[:5], b=b[:5], weight=weight[:, :5])
    check(a=torch.tensor([5, 7, 0, 1, 1009, 3]))
    check(b=torch.tensor([5, 7, 1009, 1, 1, -1]))
    check(a=torch.tensor([5, 7, 9, 1, 1010, 3]), b=torch.tensor([5, 7, 1, 1009, 1, 1]))  # b[3] before a[4]
    check(weight=weight[0])
    check(weight=weight.half())
    check(weight=weight[:, :4])
    check(bias=bias[:4])
    check(bias=bias.double())
    check(activation="gelu")
    check(grad=torch.randn(6, 4))
    check(output=torch.randn(5, 5))
    check(ids=torch.tensor([3, 4, -1, 5, -7, 2]))
    check(ids=torch.tensor([[3, 4, 1], [5, -7, 2]], dtype=torch.int32))

    x = torch.randn(3, 6)
    for args in [(torch.tensor(1.0), weight, None, "none"), (x, weight.half(), None, "none"),
                 (x[:, :4], weight, None, "none"), (x.double(), weight, None, "none"), (x, weight, bias, "tanh"),
                 (x, weight, bias[:2], "none"), (x, weight, bias.bfloat16(), "none")]:
        assert_same_error("rowwise_linear", *args)


def test_interaction_errors():
    x = torch.randn(3, 4, 5)
    for bad in (x.int(), x[0], x[:, :1]):
        assert_same_error("dot_interaction", bad)
        assert_same_error("dot_interaction_backward", torch.randn(3, 6), bad)
    assert_same_error("dot_interaction_backward", torch.randn(3, 5), x)
    assert_same_error("dot_interaction_backward", torch.randn(3, 6).long(), x)
    dense, sparse = torch.randn(4, 8), torch.randn(4, 24)
    for d, s in [(dense.int(), sparse), (dense, sparse.long()), (dense[0], sparse), (dense[:, :0], sparse),
                 (dense, sparse[0]), (dense, sparse[None]), (dense, sparse[:3]), (dense, sparse[:, :20]),
                 (dense, sparse.reshape(4, 4, 6)), (dense, sparse[:, :0])]:
        assert_same_error("dlrm_interaction", d, s, 1)
        assert_same_error("dlrm_interaction_backward", torch.randn(4, 14), d, s, 1)
    assert_same_error("dlrm_interaction", dense, sparse, 0)
    assert_same_error("dlrm_interaction_backward", torch.randn(4, 14), dense, sparse, 0)
    assert_same_error("dlrm_interaction_backward", torch.randn(4, 14), dense, sparse, 8)
    assert_same_error("dlrm_interaction_backward", torch.randn(4, 14).int(), dense, sparse, 1)
    for order in ([0, 1], [0, 1, 2, 3], [2, 3, 0], [-1, 0, 1], [1, 1, 0]):
        assert_same_error("dlrm_interaction", dense, sparse, 1, order)
        assert_same_error("dlrm_interaction_backward", torch.randn(4, 14), dense, sparse, 1, order)


def test_unique_ids_errors():
    assert_same_error("unique_ids", torch.randn(4))

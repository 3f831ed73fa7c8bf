"""torch.library.opcheck on every mprec op: schema, fake kernel, autograd registration and AOT dispatch,
with and without gradients."""

import pytest
import torch

import mprec
from conftest import make_bags

embedding_bag = torch.ops.mprec.embedding_bag.default
batched = torch.ops.mprec.batched_embedding_bag.default


def single_args(dtype=torch.float32, index_dtype=torch.int64, requires_grad=False, mode=0, weighted=False,
                padding_idx=-1, include_last_offset=False, sparse=False, scale_grad_by_freq=False,
                return_max_indices=True):
    weight = torch.randn(30, 5).to(dtype).requires_grad_(requires_grad)
    indices, offsets = make_bags(8, 5, 30, index_dtype, padding_idx=padding_idx if padding_idx >= 0 else None)
    offsets = offsets if include_last_offset else offsets[:-1]
    psw = torch.randn(indices.numel(), dtype=dtype, requires_grad=requires_grad) if weighted else None
    return (weight, indices, offsets, mode, psw, padding_idx, include_last_offset, None, sparse, scale_grad_by_freq,
            return_max_indices)


SINGLE_CASES = {
    "sum": dict(),
    "sum-i32": dict(index_dtype=torch.int32),
    "weighted": dict(weighted=True),
    "mean-pad": dict(mode=1, padding_idx=2),
    "max": dict(mode=2),
    "max-no-argmax": dict(mode=2, return_max_indices=False),
    "sum-no-argmax": dict(return_max_indices=False),
    "last-offset": dict(include_last_offset=True),
    "bf16": dict(dtype=torch.bfloat16),
    "f64": dict(dtype=torch.float64),
    "scale-grad": dict(mode=1, padding_idx=2, scale_grad_by_freq=True),
}


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("case", list(SINGLE_CASES))
def test_opcheck_embedding_bag(case, requires_grad):
    torch.library.opcheck(embedding_bag, single_args(requires_grad=requires_grad, **SINGLE_CASES[case]))


def test_opcheck_embedding_bag_sparse_gradient():
    # The sparse backward has a data-dependent size; autograd and fake tensors still have to agree.
    for scale_grad_by_freq in (False, True):
        torch.library.opcheck(embedding_bag, single_args(requires_grad=True, sparse=True,
                                                         scale_grad_by_freq=scale_grad_by_freq),
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_opcheck_embedding_bag_uint8():
    q, sb = mprec.ops.quantize_rowwise_int8(torch.randn(30, 5))
    args = list(single_args())
    args[0], args[7] = q, sb
    torch.library.opcheck(embedding_bag, tuple(args))


@pytest.mark.parametrize("mode", [0, 2])
def test_opcheck_backward_ops(mode):
    weight, indices, offsets, _, _, pad, ilo, *_ = single_args(padding_idx=1)
    out, max_indices = embedding_bag(weight, indices, offsets, mode, None, pad, ilo)  # argmax: the default
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.mprec.embedding_bag_backward.default,
                          (grad, weight, indices, offsets, max_indices, mode, None, pad, ilo))
    psw = torch.randn(indices.numel())
    if mode == 0:
        torch.library.opcheck(torch.ops.mprec.embedding_bag_per_sample_weights_backward.default,
                              (grad, weight, indices, offsets, mode, pad, ilo))
        torch.library.opcheck(torch.ops.mprec.embedding_bag_sparse_backward.default,
                              (grad, weight, indices, offsets, mode, psw, pad, ilo),
                              test_utils=("test_schema", "test_faketensor"))


def batched_args(requires_grad=False, mode=0, weighted=False, padding=(), dtype=torch.float32, sparse=False,
                 return_max_indices=True):
    weights = [torch.randn(20, 4).to(dtype).requires_grad_(requires_grad),
               torch.randn(7, 9).to(dtype).requires_grad_(requires_grad)]
    i0, o0 = make_bags(6, 4, 20)
    i1, o1 = make_bags(6, 4, 7)
    indices = torch.cat([i0, i1])
    offsets = torch.cat([o0, o1[1:] + o0[-1]])
    psw = torch.randn(indices.numel(), dtype=dtype, requires_grad=requires_grad) if weighted else None
    return (weights, indices, offsets, mode, psw, list(padding), None, sparse, return_max_indices)


BATCHED_CASES = {
    "sum": dict(),
    "weighted": dict(weighted=True),
    "mean-pad": dict(mode=1, padding=(3, -1)),
    "max": dict(mode=2),
    "max-no-argmax": dict(mode=2, return_max_indices=False),
    "f16": dict(dtype=torch.float16),
}


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("case", list(BATCHED_CASES))
def test_opcheck_batched_embedding_bag(case, requires_grad):
    torch.library.opcheck(batched, batched_args(requires_grad=requires_grad, **BATCHED_CASES[case]))


def test_opcheck_batched_sparse_and_backward_ops():
    torch.library.opcheck(batched, batched_args(requires_grad=True, sparse=True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    weights, indices, offsets, mode, psw, pads, _, _, _ = batched_args(mode=2)
    out, max_indices = batched(weights, indices, offsets, mode)
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.mprec.batched_embedding_bag_backward.default,
                          (grad, weights, indices, offsets, max_indices, 2, None, []))
    torch.library.opcheck(torch.ops.mprec.batched_embedding_bag_per_sample_weights_backward.default,
                          (grad, weights, indices, offsets, 0, []))
    torch.library.opcheck(torch.ops.mprec.batched_embedding_bag_sparse_backward.default,
                          (grad, weights, indices, offsets, 0, None, []), test_utils=("test_schema", "test_faketensor"))


def test_opcheck_quantize():
    weight = torch.randn(12, 7)
    torch.library.opcheck(torch.ops.mprec.quantize_rowwise_int8.default, (weight,))
    q, sb = mprec.ops.quantize_rowwise_int8(weight)
    torch.library.opcheck(torch.ops.mprec.dequantize_rowwise_int8.default, (q, sb))


# --- DHE ------------------------------------------------------------------------------------------------------

dhe_encode = torch.ops.mprec.dhe_encode.default
dhe_encode_linear = torch.ops.mprec.dhe_encode_linear.default
dhe_encode_linear_backward = torch.ops.mprec.dhe_encode_linear_backward.default
rowwise_linear = torch.ops.mprec.rowwise_linear.default
DHE_K, DHE_H1, DHE_N, DHE_M = 8, 4, 5, 1000


def dhe_args(index_dtype=torch.int64, shape=(DHE_N,)):
    a, b, p = mprec.ops.dhe.dhe_hash_parameters(DHE_K, DHE_M, seed=0)
    ids = torch.randint(0, 2**31 - 1, shape).to(index_dtype)
    return ids, a, b, p, DHE_M


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("transform", ["uniform", "gaussian"])
def test_opcheck_dhe_encode(transform, index_dtype):
    torch.library.opcheck(dhe_encode, (*dhe_args(index_dtype), transform))


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("activation", ["none", "relu", "mish"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_opcheck_dhe_encode_linear(dtype, with_bias, activation, requires_grad):
    weight = torch.randn(DHE_H1, DHE_K).to(dtype).requires_grad_(requires_grad)
    bias = torch.randn(DHE_H1).to(dtype).requires_grad_(requires_grad) if with_bias else None
    transform = "gaussian" if activation == "mish" else "uniform"
    torch.library.opcheck(dhe_encode_linear, (*dhe_args(), transform, weight, bias, activation))


def test_opcheck_dhe_encode_linear_2d_ids_int32():
    weight = torch.randn(DHE_H1, DHE_K, requires_grad=True)
    torch.library.opcheck(dhe_encode_linear, (*dhe_args(torch.int32, (2, 3)), "uniform", weight, None, "relu"))


@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("activation", ["none", "mish"])
def test_opcheck_dhe_encode_linear_backward(activation, with_bias):
    ids, a, b, p, m = dhe_args()
    weight = torch.randn(DHE_H1, DHE_K)
    bias = torch.randn(DHE_H1) if with_bias else None
    out = dhe_encode_linear(ids, a, b, p, m, "uniform", weight, bias, activation)
    torch.library.opcheck(dhe_encode_linear_backward,
                          (torch.randn_like(out), out, ids, a, b, p, m, "uniform", weight, bias, activation))


def test_opcheck_dhe_encode_linear_backward_non_contiguous_weight():
    ids, a, b, p, m = dhe_args()
    weight = torch.randn(DHE_K, DHE_H1).t()
    out = dhe_encode_linear(ids, a, b, p, m, "uniform", weight)
    torch.library.opcheck(dhe_encode_linear_backward,
                          (torch.randn_like(out), out, ids, a, b, p, m, "uniform", weight, None, "none"))


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("activation", ["none", "relu", "mish"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_opcheck_rowwise_linear(with_bias, activation, requires_grad):
    x = torch.randn(DHE_N, DHE_K, requires_grad=requires_grad)
    weight = torch.randn(DHE_H1, DHE_K, requires_grad=requires_grad)
    bias = torch.randn(DHE_H1, requires_grad=requires_grad) if with_bias else None
    torch.library.opcheck(rowwise_linear, (x, weight, bias, activation))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["f64", "bf16"])
def test_opcheck_rowwise_linear_dtypes_and_shapes(dtype):
    weight = torch.randn(DHE_H1, DHE_K).to(dtype).requires_grad_()
    bias = torch.randn(DHE_H1).to(dtype).requires_grad_()
    for shape in [(DHE_K,), (2, 3, DHE_K), (0, DHE_K)]:
        torch.library.opcheck(rowwise_linear, (torch.randn(shape).to(dtype).requires_grad_(), weight, bias, "relu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_relu_backward_bias(dtype):
    for shape in [(70, 33), (0, 5), (3, 1)]:
        torch.library.opcheck(torch.ops.mprec.relu_backward_bias_.default,
                              (torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)))

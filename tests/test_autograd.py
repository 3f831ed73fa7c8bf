"""The ops' C++ autograd kernels (csrc/autograd): no node where no gradient is wanted, the same values either way,
gradients against finite differences, gradients of a subset of the inputs, compiled autograd, and the embedding
bags' backward under torch.compile with dynamic shapes."""

import contextlib

import pytest
import torch
from torch._dynamo import compiled_autograd

import mprec
from conftest import make_bags

F64 = torch.float64


def _embedding_bag(g):
    weight = torch.randn(40, 7, generator=g, dtype=F64)
    indices, offsets = make_bags(9, 5, 40, generator=g)
    psw = torch.rand(indices.numel(), generator=g, dtype=F64)
    return (lambda w, p: mprec.ops.embedding_bag(w, indices, offsets[:-1], "sum", p)), [weight, psw]


def _batched(g):
    weights = [torch.randn(30, d, generator=g, dtype=F64) for d in (3, 5)]
    i0, o0 = make_bags(6, 4, 30, generator=g)
    i1, o1 = make_bags(6, 4, 30, generator=g)
    indices, offsets = torch.cat([i0, i1]), torch.cat([o0, o1[1:] + o0[-1]])
    psw = torch.rand(indices.numel(), generator=g, dtype=F64)
    return (lambda w0, w1, p: mprec.ops.batched_embedding_bag([w0, w1], indices, offsets, "sum", p)), weights + [psw]


def _dot_interaction(g):
    return mprec.ops.dot_interaction, [torch.randn(5, 4, 6, generator=g, dtype=F64)]


def _dlrm_interaction(g):
    dense, sparse = torch.randn(5, 6, generator=g, dtype=F64), torch.randn(5, 3 * 6, generator=g, dtype=F64)
    return (lambda d, s: mprec.ops.dlrm_interaction(d, s, 8, [2, 0, 1])), [dense, sparse]


def _dhe_encode_linear(g):
    a, b, p = mprec.ops.dhe_hash_parameters(8, 1000)
    ids = torch.randint(0, 10**6, (11,), generator=g)
    weight, bias = torch.randn(6, 8, generator=g, dtype=F64), torch.randn(6, generator=g, dtype=F64)
    return (lambda w, b_: mprec.ops.dhe_encode_linear(ids, a, b, p, 1000, "uniform", w, b_, "mish")), [weight, bias]


def _rowwise_linear(activation):
    def build(g):
        x, weight = torch.randn(2, 7, 9, generator=g, dtype=F64), torch.randn(4, 9, generator=g, dtype=F64)
        bias = torch.randn(4, generator=g, dtype=F64)
        return (lambda x_, w, b: mprec.ops.rowwise_linear(x_, w, b, activation)), [x, weight, bias]
    return build


OPS = {
    "embedding_bag": _embedding_bag,
    "batched_embedding_bag": _batched,
    "dot_interaction": _dot_interaction,
    "dlrm_interaction": _dlrm_interaction,
    "dhe_encode_linear": _dhe_encode_linear,
    "rowwise_linear_relu": _rowwise_linear("relu"),
    "rowwise_linear_mish": _rowwise_linear("mish"),
    "rowwise_linear_none": _rowwise_linear("none"),
}


def _build(name, requires_grad):
    fn, inputs = OPS[name](torch.Generator().manual_seed(sorted(OPS).index(name)))
    return fn, [t.requires_grad_(requires_grad) for t in inputs]


def _grads(fn, inputs, wrt=None, seed=7):
    out = fn(*inputs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, inputs if wrt is None else wrt, grad)


# (inputs require grad, the context the call runs in, whether a gradient is wanted)
STATES = {
    "no-grad-inputs": (False, contextlib.nullcontext, False),
    "grad-inputs": (True, contextlib.nullcontext, True),
    "grad-inputs-no_grad": (True, torch.no_grad, False),
    "grad-inputs-inference_mode": (True, torch.inference_mode, False),
}


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("name", list(OPS))
def test_node_only_where_a_gradient_is_wanted(name, state):
    requires_grad, context, wanted = STATES[state]
    fn, inputs = _build(name, requires_grad)
    with context():
        got = fn(*inputs)
    assert got.requires_grad == wanted
    assert (got.grad_fn is not None) == wanted
    # The device's kernel called directly, below autograd: the values the autograd kernel must pass on.
    with torch._C._AutoDispatchBelowAutograd(), torch.no_grad():
        expected = fn(*inputs)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_no_node_where_only_non_differentiable_arguments_could_want_one():
    # A uint8 table's float32 scale_bias requiring a gradient does not make the call differentiable.
    q, scale_bias = mprec.ops.quantize_rowwise_int8(torch.randn(20, 8))
    indices, offsets = make_bags(5, 4, 20, generator=torch.Generator().manual_seed(3))
    out = mprec.ops.embedding_bag(q, indices, offsets[:-1], scale_bias=scale_bias.requires_grad_())
    assert out.grad_fn is None and not out.requires_grad


@pytest.mark.parametrize("name", list(OPS))
def test_gradients_against_finite_differences(name):
    fn, inputs = _build(name, True)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("name", list(OPS))
def test_gradient_of_each_input_alone(name):
    # needs_input_grad by edge: asking for one input's gradient gives what the full backward gives for it.
    fn, inputs = _build(name, True)
    full = _grads(fn, inputs)
    for i, t in enumerate(inputs):
        (alone,) = _grads(fn, inputs, [t])
        torch.testing.assert_close(alone, full[i], rtol=0, atol=0)


@pytest.mark.parametrize("name", list(OPS))
def test_compiled_autograd(name):
    fn, inputs = _build(name, True)
    eager = _grads(fn, inputs)
    out = fn(*inputs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    torch._dynamo.reset()
    with compiled_autograd._enable(torch.compile(backend="eager")):
        out.backward(grad)
    for t, e in zip(inputs, eager):
        torch.testing.assert_close(t.grad, e, rtol=0, atol=0)


@pytest.mark.parametrize("include_last_offset", [False, True])
@pytest.mark.parametrize("scale_grad_by_freq", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_embedding_bag_backward_compiles_with_dynamic_shapes(sparse, scale_grad_by_freq, include_last_offset):
    # The backward's own aten ops (the COO gradient, the counts of scale_grad_by_freq) on symbolic sizes: two
    # batches of different sizes through one compiled function, against eager.
    g = torch.Generator().manual_seed(11)
    weight = torch.randn(50, 6, generator=g, dtype=F64, requires_grad=True)

    def loss(w, indices, offsets):
        return mprec.ops.embedding_bag(w, indices, offsets, "mean", include_last_offset=include_last_offset,
                                       sparse=sparse, scale_grad_by_freq=scale_grad_by_freq).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, dynamic=True)
    for bags in (7, 12):
        indices, offsets = make_bags(bags, 6, 50, generator=g)
        offsets = offsets if include_last_offset else offsets[:-1]
        (expected,) = torch.autograd.grad(loss(weight, indices, offsets), [weight])
        (got,) = torch.autograd.grad(compiled(weight, indices, offsets), [weight])
        assert got.layout == expected.layout == (torch.sparse_coo if sparse else torch.strided)
        torch.testing.assert_close(got.to_dense(), expected.to_dense())


@pytest.mark.parametrize("sparse", [False, True])
def test_batched_backward_compiles_with_dynamic_shapes(sparse):
    g = torch.Generator().manual_seed(12)
    weights = [torch.randn(30, d, generator=g, dtype=F64, requires_grad=True) for d in (3, 5)]

    def loss(w0, w1, indices, offsets):
        return mprec.ops.batched_embedding_bag([w0, w1], indices, offsets, "sum", sparse=sparse).square().sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, dynamic=True)
    for bags in (5, 9):
        i0, o0 = make_bags(bags, 4, 30, generator=g)
        i1, o1 = make_bags(bags, 4, 30, generator=g)
        indices, offsets = torch.cat([i0, i1]), torch.cat([o0, o1[1:] + o0[-1]])
        expected = torch.autograd.grad(loss(*weights, indices, offsets), weights)
        got = torch.autograd.grad(compiled(*weights, indices, offsets), weights)
        for e, c in zip(expected, got):
            torch.testing.assert_close(c.to_dense(), e.to_dense())


def test_compiled_wrapper_traces_without_a_graph_break():
    fn, inputs = _build("embedding_bag", False)
    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True)(*inputs)
    torch.testing.assert_close(got, fn(*inputs), rtol=0, atol=0)

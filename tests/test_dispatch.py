"""mprec.ops.dispatch.call: the Python wrappers of the ops with Python autograd formulas dispatch below autograd
where no gradient is wanted, and only there, with the same results as the ops called as registered."""

import contextlib

import pytest
import torch

import mprec
import mprec.ops.dispatch as dispatch
from conftest import make_bags


def _embedding_bag(requires_grad):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(40, 7, generator=g).requires_grad_(requires_grad)
    indices, offsets = make_bags(9, 5, 40, generator=g)
    psw = torch.rand(indices.numel(), generator=g)
    wrapper = lambda: mprec.ops.embedding_bag(weight, indices, offsets[:-1], "sum", psw)  # noqa: E731
    op = lambda: torch.ops.mprec.embedding_bag.default(  # noqa: E731
        weight, indices, offsets[:-1], 0, psw, -1, False, None, False, False)[0]
    return wrapper, op, [weight]


def _batched(requires_grad):
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(30, d, generator=g).requires_grad_(requires_grad) for d in (3, 5)]
    i0, o0 = make_bags(6, 4, 30, generator=g)
    i1, o1 = make_bags(6, 4, 30, generator=g)
    indices, offsets = torch.cat([i0, i1]), torch.cat([o0, o1[1:] + o0[-1]])
    wrapper = lambda: mprec.ops.batched_embedding_bag(weights, indices, offsets, "mean")  # noqa: E731
    op = lambda: torch.ops.mprec.batched_embedding_bag.default(  # noqa: E731
        weights, indices, offsets, 1, None, [], None, False)[0]
    return wrapper, op, weights


def _dot_interaction(requires_grad):
    x = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(3)).requires_grad_(requires_grad)
    return (lambda: mprec.ops.dot_interaction(x)), (lambda: torch.ops.mprec.dot_interaction.default(x)), [x]


def _dlrm_interaction(requires_grad):
    g = torch.Generator().manual_seed(4)
    dense = torch.randn(5, 6, generator=g).requires_grad_(requires_grad)
    sparse = torch.randn(5, 3 * 6, generator=g).requires_grad_(requires_grad)
    wrapper = lambda: mprec.ops.dlrm_interaction(dense, sparse, 8, [2, 0, 1])  # noqa: E731
    op = lambda: torch.ops.mprec.dlrm_interaction.default(dense, sparse, 8, [2, 0, 1])  # noqa: E731
    return wrapper, op, [dense, sparse]


def _dhe_encode_linear(requires_grad):
    g = torch.Generator().manual_seed(5)
    a, b, p = mprec.ops.dhe_hash_parameters(8, 1000)
    ids = torch.randint(0, 10**6, (11,), generator=g)
    weight = torch.randn(6, 8, generator=g).requires_grad_(requires_grad)
    bias = torch.randn(6, generator=g).requires_grad_(requires_grad)
    wrapper = lambda: mprec.ops.dhe_encode_linear(ids, a, b, p, 1000, "uniform", weight, bias, "relu")  # noqa: E731
    op = lambda: torch.ops.mprec.dhe_encode_linear.default(  # noqa: E731
        ids, a, b, p, 1000, "uniform", weight, bias, "relu")
    return wrapper, op, [weight, bias]


def _rowwise_linear(requires_grad):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(7, 9, generator=g).requires_grad_(requires_grad)
    weight = torch.randn(4, 9, generator=g).requires_grad_(requires_grad)
    wrapper = lambda: mprec.ops.rowwise_linear(x, weight, None, "mish")  # noqa: E731
    op = lambda: torch.ops.mprec.rowwise_linear.default(x, weight, None, "mish")  # noqa: E731
    return wrapper, op, [x, weight]


OPS = {f.__name__[1:]: f for f in (_embedding_bag, _batched, _dot_interaction, _dlrm_interaction, _dhe_encode_linear,
                                   _rowwise_linear)}


@pytest.fixture
def below_autograd_entries(monkeypatch):
    """How many times a call went below autograd itself."""
    entries = []
    real = dispatch._below_autograd

    @contextlib.contextmanager
    def counted():
        entries.append(1)
        with real():
            yield

    monkeypatch.setattr(dispatch, "_below_autograd", counted)
    return entries


# (inputs require grad, the context the call runs in, whether a gradient is wanted)
STATES = {
    "no-grad-inputs": (False, contextlib.nullcontext, False),
    "grad-inputs": (True, contextlib.nullcontext, True),
    "grad-inputs-no_grad": (True, torch.no_grad, False),
    "grad-inputs-inference_mode": (True, torch.inference_mode, False),
}


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("name", list(OPS))
def test_below_autograd_only_without_gradients(name, state, below_autograd_entries):
    requires_grad, context, wanted = STATES[state]
    wrapper, op, inputs = OPS[name](requires_grad)
    with context():
        got = wrapper()
    assert len(below_autograd_entries) == (0 if wanted else 1)
    assert got.requires_grad == wanted
    with context():
        expected = op()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    if wanted:
        # The registered autograd formula still runs: the same gradients as the op called as registered.
        grad = torch.randn(got.shape, generator=torch.Generator().manual_seed(7))
        got_grads = torch.autograd.grad(got, inputs, grad)
        expected_grads = torch.autograd.grad(expected, inputs, grad)
        for g, e in zip(got_grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_compiled_wrapper_traces_without_a_graph_break(below_autograd_entries):
    # Inputs that need no gradient take the below-autograd branch in eager mode; dynamo must trace the plain call.
    wrapper, op, _ = _embedding_bag(False)
    torch._dynamo.reset()
    got = torch.compile(wrapper, fullgraph=True)()
    assert not below_autograd_entries
    torch.testing.assert_close(got, op(), rtol=0, atol=0)

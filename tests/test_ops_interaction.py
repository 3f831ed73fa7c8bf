"""mprec::dot_interaction against the bmm + lower-triangle reference: float64 values and gradients, odd
shapes (F = 2, D = 1, D = 129, B = 0, partial lane blocks), every ISA, half types, thread-count
independence, errors, opcheck."""

import pytest
import torch

import mprec
from mprec.ops import dot_interaction
from reference import dot_interaction_reference


@pytest.mark.parametrize("shape", [(0, 3, 4), (1, 2, 1), (17, 27, 16), (33, 5, 129), (64, 9, 3)])
def test_values_and_gradients_float64(isa, shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    got = dot_interaction(x)
    want = dot_interaction_reference(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    (gx,) = torch.autograd.grad(got, x, g)
    (wx,) = torch.autograd.grad(want, x, g)
    torch.testing.assert_close(gx, wx, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    x = torch.randn(19, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dot_interaction, (x,))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_lower_precisions(isa, dtype, tol):
    x = torch.randn(40, 27, 16).to(dtype)
    got = dot_interaction(x)
    assert got.dtype == dtype and got.shape == (40, 351)
    want = dot_interaction_reference(x.double())
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * 4)


def test_pair_order():
    x = torch.zeros(1, 4, 2, dtype=torch.float64)
    x[0, :, 0] = torch.tensor([1.0, 2.0, 3.0, 5.0])
    # (1,0), (2,0), (2,1), (3,0), (3,1), (3,2)
    assert dot_interaction(x)[0].tolist() == [2.0, 3.0, 6.0, 5.0, 10.0, 15.0]


def test_independent_of_threads_and_batch_position(num_threads):
    x = torch.randn(300, 27, 16)
    torch.set_num_threads(1)
    one = dot_interaction(x)
    torch.set_num_threads(2)
    two = dot_interaction(x)
    assert torch.equal(one, two)
    assert torch.equal(dot_interaction(x[5:6]), one[5:6])  # a lane-block boundary does not change a row


def test_errors():
    with pytest.raises(ValueError, match=r"mprec::dot_interaction: x must be \[B, F, D\], got shape \[3, 4\]"):
        torch.ops.mprec.dot_interaction(torch.randn(3, 4))
    with pytest.raises(ValueError, match="needs at least 2 features to interact, got 1"):
        torch.ops.mprec.dot_interaction(torch.randn(3, 1, 4))
    with pytest.raises(ValueError, match="x must be float32, float64, bfloat16 or float16, got Long"):
        torch.ops.mprec.dot_interaction(torch.ones(3, 2, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"grad must have shape \[3, 1\]"):
        torch.ops.mprec.dot_interaction_backward(torch.randn(3, 2), torch.randn(3, 2, 4))


def test_opcheck():
    x = torch.randn(20, 5, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.mprec.dot_interaction.default, (x,))
    torch.library.opcheck(torch.ops.mprec.dot_interaction_backward.default, (torch.randn(20, 10), x.detach()))


# ---- dlrm_interaction: cat([dense, pairs of (dense, tables)], zero padding) ------------------------------
from mprec.ops import dlrm_interaction  # noqa: E402
from reference import dlrm_interaction_reference  # noqa: E402


@pytest.mark.parametrize("B,T,D,pad_to", [(0, 3, 4, 1), (1, 1, 1, 1), (37, 26, 16, 8), (19, 13, 64, 8),
                                          (21, 4, 129, 16), (5, 2, 3, 7), (18, 30, 32, 1), (9, 6, 128, 8),
                                          (11, 3, 8, 1)])
@pytest.mark.parametrize("three_d", [False, True])
def test_dlrm_values_and_gradients_float64(isa, B, T, D, pad_to, three_d):
    dense = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    sparse = torch.randn(B, T, D, dtype=torch.float64) if three_d else torch.randn(B, T * D, dtype=torch.float64)
    sparse.requires_grad_(True)
    got = dlrm_interaction(dense, sparse, pad_to)
    want = dlrm_interaction_reference(dense, sparse, pad_to)
    assert got.shape == want.shape and got.shape[1] % pad_to == 0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    got_grads = torch.autograd.grad(got, (dense, sparse), g)
    want_grads = torch.autograd.grad(want, (dense, sparse), g)
    for a, b in zip(got_grads, want_grads):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("D", [1, 4, 8, 16, 24, 32, 64, 128, 129])
def test_dlrm_float32_every_width(isa, D):
    # float32 runs the vector kernels (float64 has its own): each width the kernels specialise on (whole
    # registers of 4, 8 or 16 lanes, one to several per row) and odd ones, against the float64 reference.
    dense = torch.randn(23, D, requires_grad=True)
    sparse = torch.randn(23, 11 * D, requires_grad=True)
    got = dlrm_interaction(dense, sparse, 8)
    want = dlrm_interaction_reference(dense.double(), sparse.double(), 8)
    scale = max(1.0, D ** 0.5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * scale)
    g = torch.randn(want.shape)
    got_grads = torch.autograd.grad(got, (dense, sparse), g)
    want_grads = torch.autograd.grad(want, (dense, sparse), g.double())
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-4 * scale)


def test_dlrm_padding_is_zero_and_its_gradient_ignored():
    dense, sparse = torch.randn(9, 16), torch.randn(9, 26 * 16)
    out = dlrm_interaction(dense, sparse, 8)
    assert out.shape == (9, 368)
    assert torch.equal(out[:, 367], torch.zeros(9))
    g = torch.randn(9, 368)
    g2 = g.clone()
    g2[:, 367] = 1e6
    a = torch.ops.mprec.dlrm_interaction_backward(g, dense, sparse, 8)
    b = torch.ops.mprec.dlrm_interaction_backward(g2, dense, sparse, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_dlrm_gradcheck():
    dense = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    sparse = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d, s: dlrm_interaction(d, s, 4), (dense, sparse))


@pytest.mark.parametrize("dense_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sparse_dtype", [torch.float32, torch.bfloat16])
def test_dlrm_mixed_dtypes(isa, dense_dtype, sparse_dtype):
    # autocast's case: a bf16 bottom MLP and fp32 tables; the output takes dense's dtype, the gradients
    # their inputs'.
    dense = torch.randn(40, 16).to(dense_dtype).requires_grad_(True)
    sparse = torch.randn(40, 26 * 16).to(sparse_dtype).requires_grad_(True)
    got = dlrm_interaction(dense, sparse, 8)
    assert got.dtype == dense_dtype and got.shape == (40, 368)
    want = dlrm_interaction_reference(dense.double(), sparse.double(), 8)
    tol = 1e-5 if dense_dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * 4)
    g = torch.randn(40, 368).to(dense_dtype)
    gd, gs = torch.autograd.grad(got, (dense, sparse), g)
    assert gd.dtype == dense_dtype and gs.dtype == sparse_dtype
    wd, ws = torch.autograd.grad(want, (dense, sparse), g.double())  # the reference casts, so its grads are float
    torch.testing.assert_close(gd.double(), wd.double(), rtol=3e-2, atol=0.3)
    torch.testing.assert_close(gs.double(), ws.double(), rtol=3e-2, atol=0.3)


def test_dlrm_independent_of_threads(num_threads):
    dense, sparse = torch.randn(300, 16), torch.randn(300, 26 * 16)
    g = torch.randn(300, 368)
    torch.set_num_threads(1)
    one = dlrm_interaction(dense, sparse, 8), torch.ops.mprec.dlrm_interaction_backward(g, dense, sparse, 8)
    torch.set_num_threads(2)
    two = dlrm_interaction(dense, sparse, 8), torch.ops.mprec.dlrm_interaction_backward(g, dense, sparse, 8)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1][0], two[1][0]) and torch.equal(one[1][1], two[1][1])


def test_dlrm_errors():
    op = torch.ops.mprec.dlrm_interaction
    with pytest.raises(ValueError, match=r"mprec::dlrm_interaction: dense must be \[B, D\], got shape \[3, 4, 1\]"):
        op(torch.randn(3, 4, 1), torch.randn(3, 8))
    with pytest.raises(ValueError, match="sparse has 2 rows but dense has 3"):
        op(torch.randn(3, 4), torch.randn(2, 8))
    with pytest.raises(ValueError, match="sparse's width 10 is not a multiple of dense's width 4"):
        op(torch.randn(3, 4), torch.randn(3, 10))
    with pytest.raises(ValueError, match="sparse's feature width 5 differs from dense's 4"):
        op(torch.randn(3, 4), torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match="sparse needs at least one table"):
        op(torch.randn(3, 4), torch.randn(3, 0))
    with pytest.raises(ValueError, match=r"pad_to must be in \[1, 1024\], got 0"):
        op(torch.randn(3, 4), torch.randn(3, 8), 0)
    with pytest.raises(ValueError, match=r"pad_to must be in \[1, 1024\], got 4611686018427387904"):
        op(torch.randn(3, 4), torch.randn(3, 8), 2**62)  # would allocate a width of 2^62 zeros
    with pytest.raises(ValueError, match="sparse must be float32, float64, bfloat16 or float16, got Long"):
        op(torch.randn(3, 4), torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"mprec::dlrm_interaction_backward: grad must have shape \[3, 8\], got \[3, 7\]"):
        torch.ops.mprec.dlrm_interaction_backward(torch.randn(3, 7), torch.randn(3, 4), torch.randn(3, 8), 8)


def test_dlrm_opcheck():
    dense = torch.randn(20, 3, requires_grad=True)
    sparse = torch.randn(20, 12, requires_grad=True)
    torch.library.opcheck(torch.ops.mprec.dlrm_interaction.default, (dense, sparse, 8))
    torch.library.opcheck(torch.ops.mprec.dlrm_interaction_backward.default,
                          (torch.randn(20, 16), dense.detach(), sparse.detach(), 8))


def _shuffled(T: int) -> list:
    """A random order of T tables, never the identity when T > 1 (so reading in place would fail the tests)."""
    order = torch.randperm(T).tolist()
    return order[::-1] if order == sorted(order) else order


@pytest.mark.parametrize("B,T,D", [(0, 3, 4), (1, 1, 1), (37, 26, 16), (21, 4, 129), (18, 11, 32), (9, 9, 8)])
@pytest.mark.parametrize("three_d", [False, True])
def test_dlrm_order_float64(isa, B, T, D, three_d):
    # Tables in another order (a sharded collection's): values and gradients as the reference's on the
    # reordered vectors, the gradient landing where each vector is.
    order = _shuffled(T)
    dense = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    sparse = torch.randn(B, T, D, dtype=torch.float64) if three_d else torch.randn(B, T * D, dtype=torch.float64)
    sparse.requires_grad_(True)
    got = dlrm_interaction(dense, sparse, 8, order)
    want = dlrm_interaction_reference(dense, sparse, 8, order)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (dense, sparse), g), torch.autograd.grad(want, (dense, sparse), g)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("D", [1, 8, 16, 17, 32, 64, 128, 129])
@pytest.mark.parametrize("sparse_dtype", [torch.float32, torch.bfloat16])
def test_dlrm_order_reads_in_place(isa, D, sparse_dtype):
    # The same bits as a reordered copy, forward and backward, on each ISA's float loops: both ways of loading
    # the tables (8 x 8 transposed blocks, 19 tables leaving a tail, and one at a time) and bf16 tables.
    T = 19
    order = _shuffled(T)
    dense, sparse = torch.randn(23, D), torch.randn(23, T * D).to(sparse_dtype)
    copied = sparse.view(23, T, D)[:, order].reshape(23, -1)
    out = dlrm_interaction(dense, sparse, 8, order)
    assert torch.equal(out, dlrm_interaction(dense, copied, 8))
    g = torch.randn(out.shape)
    grad_dense, grad_sparse = torch.ops.mprec.dlrm_interaction_backward(g, dense, sparse, 8, order)
    want_dense, want_copied = torch.ops.mprec.dlrm_interaction_backward(g, dense, copied, 8)
    assert torch.equal(grad_dense, want_dense)
    assert torch.equal(grad_sparse.view(23, T, D)[:, order].reshape(23, -1), want_copied)
    identity = list(range(T))
    assert torch.equal(dlrm_interaction(dense, copied, 8, identity), dlrm_interaction(dense, copied, 8))


@pytest.mark.parametrize("fake", [False, True], ids=["cpu", "fake"])
def test_dlrm_order_errors(fake):
    from torch._subclasses.fake_tensor import FakeTensorMode

    dense, sparse, grad = torch.randn(3, 4), torch.randn(3, 12), torch.randn(3, 10)
    for order, message in [([0, 1], "order must list each of sparse's 3 vectors once, got 2 entries"),
                           ([0, 1, 3], r"order\[2\] is 3, not one of sparse's 3 vectors"),
                           ([2, -1, 0], r"order\[1\] is -1, not one of sparse's 3 vectors"),
                           ([1, 0, 1], r"order\[2\] repeats vector 1 \(order must list each vector once\)")]:
        for op, args in [("dlrm_interaction", (dense, sparse, 1, order)),
                         ("dlrm_interaction_backward", (grad, dense, sparse, 1, order))]:
            with pytest.raises(ValueError, match=f"^mprec::{op}: {message}$"):
                if fake:
                    with FakeTensorMode() as mode:
                        getattr(torch.ops.mprec, op)(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                                       for a in args])
                else:
                    getattr(torch.ops.mprec, op)(*args)


def test_dlrm_order_opcheck():
    dense = torch.randn(20, 3, requires_grad=True)
    sparse = torch.randn(20, 12, requires_grad=True)
    torch.library.opcheck(torch.ops.mprec.dlrm_interaction.default, (dense, sparse, 8, [2, 0, 3, 1]))
    torch.library.opcheck(torch.ops.mprec.dlrm_interaction_backward.default,
                          (torch.randn(20, 16), dense.detach(), sparse.detach(), 8, [2, 0, 3, 1]))

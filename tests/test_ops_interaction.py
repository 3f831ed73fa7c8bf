"""mprec::dot_interaction against the bmm + lower-triangle reference: float64 values and gradients, odd
shapes (F = 2, D = 1, D = 129, B = 0, partial lane blocks), every ISA, half types, thread-count
independence, errors, opcheck."""

import pytest
import torch

import mprec
from mprec.ops import dot_interaction
from mprec.ops.reference import dot_interaction_reference


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

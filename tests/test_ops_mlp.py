"""mprec::relu_backward_bias_ against its float64 reference (odd shapes, every ISA, in place, thread-count
independence, errors), and mprec.nn.MLP's training backward, which runs it on the gradients of its inner layers
only: the same gradients as aten's ReLU backward and sum, and a caller's gradient left as it was."""

import pytest
import torch

import mprec
from mprec.nn import MLP
from mprec.ops import relu_backward_bias_
from mprec.ops.mlp import use_gemm_library
from reference import relu_backward_bias_reference


@pytest.mark.parametrize("shape", [(0, 4), (1, 1), (63, 129), (64, 16), (2048 + 5, 37), (130, 0)])
def test_values_float64_and_in_place(isa, shape):
    grad, output = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    output.view(-1)[::7] = 0.0  # a zero output passes no gradient, as ReLU's backward
    want, want_sums = relu_backward_bias_reference(grad, output)
    storage = grad.data_ptr()
    sums = relu_backward_bias_(grad, output)
    assert grad.data_ptr() == storage and torch.equal(grad, want)
    assert sums.shape == (shape[1],) and sums.dtype == torch.float64
    torch.testing.assert_close(sums, want_sums, rtol=1e-12, atol=1e-12)


def test_float32_and_non_contiguous_grad(isa):
    base = torch.randn(40, 300)
    grad, output = base.t(), torch.randn(300, 40)  # grad [300, 40], not contiguous
    want, want_sums = relu_backward_bias_reference(grad.double(), output.double())
    sums = relu_backward_bias_(grad, output)
    assert torch.equal(grad.double(), want)
    assert torch.equal(base.t(), grad)  # written through to the caller's storage
    torch.testing.assert_close(sums.double(), want_sums, rtol=1e-5, atol=1e-5)


def test_bfloat16_masks_bits_and_sums_in_float32(isa):
    grad = torch.randn(200, 33).bfloat16()
    output = torch.randn(200, 33).bfloat16()
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -1e-40])
    output[0, :7] = specials.bfloat16()  # +0, -0, +inf, -inf, NaN and the subnormals around zero
    want, _ = relu_backward_bias_reference(grad, output)
    want_sums = want.float().sum(0)
    sums = relu_backward_bias_(grad, output)
    assert torch.equal(grad.view(torch.int16), want.view(torch.int16))  # bit for bit
    assert sums.dtype == torch.bfloat16
    torch.testing.assert_close(sums.float(), want_sums, rtol=1e-2, atol=1e-2)


def test_nan_output_passes_nothing():
    grad, output = torch.ones(3, 2), torch.tensor([[float("nan"), 1.0], [-1.0, 2.0], [0.0, float("inf")]])
    assert relu_backward_bias_(grad, output).tolist() == [0.0, 3.0]
    assert grad.tolist() == [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]


def test_independent_of_threads(num_threads):
    grad, output = torch.randn(1000, 77), torch.randn(1000, 77)
    torch.set_num_threads(1)
    g1 = grad.clone()
    one = relu_backward_bias_(g1, output)
    torch.set_num_threads(2)
    g2 = grad.clone()
    two = relu_backward_bias_(g2, output)
    assert torch.equal(one, two) and torch.equal(g1, g2)


def test_errors():
    op = torch.ops.mprec.relu_backward_bias_
    with pytest.raises(ValueError, match="mprec::relu_backward_bias_: grad must be float32, float64 or bfloat16, "
                                         "got Half"):
        op(torch.randn(2, 3).half(), torch.randn(2, 3).half())
    with pytest.raises(ValueError, match="mprec::relu_backward_bias_: output's dtype Double differs from grad's Float"):
        op(torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"mprec::relu_backward_bias_: grad must be \[B, N\], got shape \[6\]"):
        op(torch.randn(6), torch.randn(6))
    with pytest.raises(ValueError, match=r"output's shape \[2, 4\] differs from grad's \[2, 3\]"):
        op(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="mprec::relu_backward_bias_: .*output.* None"):
        op(torch.randn(2, 3), None)


def _mlp_grads(mlp, x, g, fused, bf16):
    mlp.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    previous = mprec.ops.mlp._FUSED_BACKWARD_DTYPES
    mprec.ops.mlp._FUSED_BACKWARD_DTYPES = previous if fused else ()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = mlp(x)
        y.backward(g.to(y.dtype))
    finally:
        mprec.ops.mlp._FUSED_BACKWARD_DTYPES = previous
    return [x.grad] + [p.grad for p in mlp.parameters()]


@pytest.mark.parametrize("last_activation", [False, True])
@pytest.mark.parametrize("bf16", [False, pytest.param(True, marks=pytest.mark.skipif(
    not mprec.precision.bf16_native(), reason="bf16 products run mprec's way only where the CPU computes bf16"))])
def test_mlp_backward_fuses_its_inner_layers_and_leaves_the_callers_gradient(last_activation, bf16):
    # float32 (and bf16 under autocast): the dtypes whose training runs mprec's products (mprec.ops.mlp); float64
    # runs F.linear.
    torch.manual_seed(0)
    mlp = MLP([13, 96, 40, 8], last_activation=last_activation)
    x, g = torch.randn(300, 13), torch.randn(300, 8)
    g_before = g.clone()
    calls = []
    real = torch.ops.mprec.relu_backward_bias_

    def counting(grad, output):
        calls.append(grad.shape)
        return real(grad, output)

    with use_gemm_library("blas"):
        unfused = _mlp_grads(mlp, x, g, fused=False, bf16=bf16)
        original = mprec.ops.mlp.relu_backward_bias_
        mprec.ops.mlp.relu_backward_bias_ = counting
        try:
            fused = _mlp_grads(mlp, x, g, fused=True, bf16=bf16)
        finally:
            mprec.ops.mlp.relu_backward_bias_ = original
    # The two inner ReLUs take the fused pass; the last layer's gradient is the caller's and is not overwritten.
    assert calls == [(300, 40), (300, 96)]
    assert torch.equal(g, g_before)
    tol = 2e-2 if bf16 else 1e-5  # bf16: the bias sums are rounded from float32 sums taken in another order
    for a, b in zip(fused, unfused):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)

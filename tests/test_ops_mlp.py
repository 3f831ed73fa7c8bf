"""mprec::relu_backward_bias_ against its float64 reference (odd shapes, every ISA, in place, thread-count
independence, errors), and mprec.nn.MLP's training backward, which runs it on the gradients of its inner layers
only: the same gradients as aten's ReLU backward and sum, and a caller's gradient left as it was.
mprec::mlp_product (one product on its library) against float64, its errors and opcheck, and a compiled MLP
whose products go through it."""

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


# --- mprec::mlp_product: one product of a layer, as the compiled graph calls it ------------------------------------

PRODUCT_CASES = [("forward", "relu", True), ("forward", "none", False), ("input_grad", "none", False),
                 ("weight_grad", "none", False)]


@pytest.mark.parametrize("way", ["onednn", "blas", "measured"])
@pytest.mark.parametrize("product,activation,with_bias", PRODUCT_CASES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (37, 13, 129), (300, 64, 5)])
def test_mlp_product_against_float64(shape, product, activation, with_bias, way, monkeypatch):
    """activation(a @ b.T + bias) on each library (and the one measured), for b contiguous and as the transposed
    view a backward passes; a weight gradient also on its transposed forms."""
    M, K, N = shape
    monkeypatch.setattr(mprec.ops.mlp, "_choices", {})
    a = torch.randn(M, K)
    bias = torch.randn(N) if with_bias else None
    for b in (torch.randn(N, K), torch.randn(K, N).t()):
        want = a.double() @ b.double().t() + (0 if bias is None else bias.double())
        want = want.relu() if activation == "relu" else want
        with use_gemm_library(None if way == "measured" else way):
            got = torch.ops.mprec.mlp_product(a, b, bias, product, activation)
        assert got.shape == (M, N) and got.dtype == torch.float32 and got.is_contiguous()
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * K ** 0.5)
    if product == "weight_grad":
        for way in ("onednn-transposed", "blas-transposed"):
            monkeypatch.setattr(mprec.ops.mlp, "_choices", {})
            monkeypatch.setattr(mprec.ops.mlp, "_measure", lambda *args, way=way: way)
            got = torch.ops.mprec.mlp_product(a, b, None, product, "none")
            assert got.is_contiguous()
            torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * K ** 0.5)


def test_mlp_product_errors_from_cpu_and_fake_kernels():
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = torch.ops.mprec.mlp_product
    a, b = torch.randn(4, 3), torch.randn(5, 3)
    cases = [
        ((a, b, None, "backward", "none"), r"product must be one of \('forward', 'input_grad', 'weight_grad'\), "
                                           r"got 'backward'"),
        ((a, b, None, "forward", "mish"), r"activation must be one of \('none', 'relu'\), got 'mish'"),
        ((a, b, torch.randn(5), "weight_grad", "none"), "a weight gradient takes no activation or bias, got "
                                                        "activation 'none' and a bias"),
        ((a.double(), b.double(), None, "forward", "none"), "a and b must both be Float.*, got Double and Double"),
        ((a, b.bfloat16(), None, "forward", "none"), "a and b must both be Float.*, got Float and BFloat16"),
        ((a, torch.randn(5, 4), None, "forward", "none"), r"a must be \[M, K\] and b \[N, K\], got shapes \[4, 3\] "
                                                          r"and \[5, 4\]"),
        ((a.view(-1), b, None, "forward", "none"), r"a must be .*, got shapes \[12\] and \[5, 3\]"),
        ((a, b, torch.randn(4), "forward", "relu"), r"bias must be Float \[5\], got Float \[4\]"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match="mprec::mlp_product: " + message):
            op(*args)
        with FakeTensorMode() as mode, pytest.raises(ValueError, match="mprec::mlp_product: " + message):
            op(*[mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in args])
    with pytest.raises(ValueError, match="mprec::mlp_product: .*b.* None"):
        op(a, None, None, "forward", "none")
    # Another device: the fake kernel's words (the meta tensors run it), which the CUDA kernel shares.
    with pytest.raises(ValueError, match="mprec::mlp_product: runs on the CPU, got a on meta"):
        op(a.to("meta"), b.to("meta"), None, "forward", "none")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("mprec::mlp_product", "CUDA")


def test_mlp_product_opcheck():
    a, b = torch.randn(6, 5), torch.randn(7, 5)
    for args in [(a, b, torch.randn(7), "forward", "relu"), (a, torch.randn(5, 7).t(), None, "input_grad", "none"),
                 (a, b, None, "weight_grad", "none")]:
        torch.library.opcheck(torch.ops.mprec.mlp_product.default, args)


@pytest.mark.parametrize("train", [False, True], ids=["infer", "train"])
def test_compiled_mlp_runs_each_product_on_the_measured_library(train, monkeypatch):
    """Under torch.compile (fullgraph, dynamic) an MLP's products stay mprec's: each one the compiled code runs
    goes through the library choice, as in eager, and the results equal eager's."""
    monkeypatch.setattr(mprec.ops.mlp, "_choices", {})
    calls = []
    run_product = mprec.ops.mlp.run_product

    def counting(way, a, b, *args):
        calls.append(way)
        return run_product(way, a, b, *args)

    torch.manual_seed(0)
    mlp = MLP([13, 64, 32, 1])
    compiled = torch.compile(mlp, fullgraph=True, dynamic=True)
    for rows in (50, 77):
        x = torch.randn(rows, 13, requires_grad=train)
        with torch.set_grad_enabled(train):
            want = mlp(x)
            monkeypatch.setattr(mprec.ops.mlp, "run_product", counting)
            got = compiled(x)
            monkeypatch.setattr(mprec.ops.mlp, "run_product", run_product)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if train:
            g = torch.randn_like(want)
            want_grads = torch.autograd.grad(want, [x, *mlp.parameters()], g)
            monkeypatch.setattr(mprec.ops.mlp, "run_product", counting)
            got_grads = torch.autograd.grad(got, [x, *mlp.parameters()], g)
            monkeypatch.setattr(mprec.ops.mlp, "run_product", run_product)
            for a, b in zip(got_grads, want_grads):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # Three layers: a forward product each, and in training an input gradient and a weight gradient each.
    per_call = 3 * 3 if train else 3
    assert len(calls) == 2 * per_call, calls
    assert set(calls) <= set(mprec.ops.mlp.WEIGHT_GRAD_WAYS)

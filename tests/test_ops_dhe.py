"""The DHE op family (mprec::dhe_encode, mprec::dhe_encode_linear and its backward, mprec::rowwise_linear)
against the float64 references, on every CPU kernel variant; the exactness of the hash at extreme ids and
primes; row independence (what MP-Cache relies on); and the hash-parameter helpers."""

import math

import pytest
import torch

import mprec
from mprec.ops import dhe
from reference import (dhe_encode_linear_reference, dhe_encode_reference, dhe_hash_reference,
                                 rowwise_linear_reference)
from conftest import INDEX_DTYPES, ISAS

ACTIVATIONS = ["none", "relu", "mish"]
LINEAR_DTYPES = [torch.float32, torch.bfloat16, torch.float64]
DTYPE_IDS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float64: "f64"}

# Error allowed for a linear layer's output, as a fraction of the sum of the magnitudes of its terms
# (|x| @ |w|^T + |bias|, computed in float64), which bounds what rounding can do whatever the cancellation.
# Unit roundoff u: 2^-24 for float32, 2^-8 for bfloat16 (8 significant bits).
#   float32: encodings rounded once (u) and float32 accumulation over k <= 131 terms: the worst-case bound is
#            ~k * u ~ 8e-6, blocked GEMM summation stays far below it; 1e-5.
#   bfloat16: the encodings are rounded to bfloat16 (u each: u * magnitude), the GEMM output is rounded to
#            bfloat16 (u * |pre|), both go through the activation (mish' <= 1.1) and mish's output is
#            rounded once more (u * |out| <= u * |pre|): <= (1.1 * 2 + 1) u = 3.2 u; 4 u = 1.6e-2.
#   float64: 1e-12.
BF16_U = 2.0**-8
LINEAR_REL = {torch.float32: 1e-5, torch.bfloat16: 4 * BF16_U, torch.float64: 1e-12}


def assert_close_to_magnitude(out, expected, magnitude, rel, what=""):
    """|out - expected| <= rel * magnitude + 1e-30, elementwise (all in float64)."""
    out = out.double()
    assert out.shape == expected.shape, (out.shape, expected.shape)
    if out.numel() == 0:
        return
    assert torch.isfinite(out).all(), f"{what}: non-finite output"
    err = (out - expected).abs()
    bound = rel * magnitude + 1e-30
    worst = (err / bound).max().item()
    assert worst <= 1.0, (f"{what}: error {err.max().item():.3g} is {worst:.3g}x the allowed "
                          f"{rel:g} * magnitude (max magnitude {magnitude.max().item():.3g})")


def linear_magnitude(x, weight, bias):
    """|x| @ |w|^T + |bias| in float64: the scale a linear layer's rounding error is measured against."""
    mag = x.double().abs() @ weight.double().abs().t()
    if bias is not None:
        mag = mag + bias.double().abs()
    return mag


def random_ids(shape, index_dtype, high=None):
    """Random ids over (most of) the id dtype's range, never all zero."""
    if high is None:
        high = 2**31 - 1 if index_dtype == torch.int32 else 2**62
    ids = torch.randint(0, high, shape, dtype=torch.int64)
    if ids.numel() and not ids.any():
        ids.view(-1)[0] = 1
    return ids.to(index_dtype)


def hash_parameters(k, m, seed=0):
    a, b, p = dhe.dhe_hash_parameters(k, m, seed)
    return a, b, p, m


def identity_encode(ids, a, b, p, m, transform):
    """The encodings in double precision: dhe_encode_linear with a float64 identity weight (exact)."""
    k = a.numel()
    return dhe.dhe_encode_linear(ids, a, b, p, m, transform, torch.eye(k, dtype=torch.float64))


# --- dhe_encode ---------------------------------------------------------------------------------------------

SHAPES = {"N0": (0,), "N1": (1,), "N37": (37,), "3x5": (3, 5)}
ENCODE_CASES = [("uniform", k) for k in (1, 2, 3, 16, 129, 1024)] + [("gaussian", k) for k in (2, 16, 130, 1024)]
ENCODE_TOLERANCE = {"uniform": dict(rtol=1e-6, atol=2e-6), "gaussian": dict(rtol=1e-6, atol=1e-5)}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=["i32", "i64"])
@pytest.mark.parametrize("transform,k", ENCODE_CASES, ids=[f"{t}-k{k}" for t, k in ENCODE_CASES])
def test_encode_matches_reference(isa, transform, k, index_dtype, shape):
    a, b, p, m = hash_parameters(k, 1_000_003, seed=k)
    ids = random_ids(shape, index_dtype)
    out = dhe.dhe_encode(ids, a, b, p, m, transform)
    assert out.dtype == torch.float32 and out.shape == (*shape, k) and out.is_contiguous()
    expected = dhe_encode_reference(ids, a, b, p, m, transform)
    torch.testing.assert_close(out.double(), expected, **ENCODE_TOLERANCE[transform])
    if transform == "uniform" and out.numel():
        assert out.abs().max() <= 1


@pytest.mark.parametrize("transform", ["uniform", "gaussian"])
def test_encode_scalar_and_non_contiguous_inputs(isa, transform):
    a, b, p, m = hash_parameters(8, 5000)
    ids = random_ids((6, 9), torch.int64)
    # Transposed ids, every other hash function: same as the contiguous copies.
    a_strided, b_strided = torch.stack([a, a]).t().reshape(-1)[::2], torch.stack([b, b]).t().reshape(-1)[::2]
    assert not ids.t().is_contiguous()
    out = dhe.dhe_encode(ids.t(), a_strided, b_strided, p, m, transform)
    assert torch.equal(out, dhe.dhe_encode(ids.t().contiguous(), a, b, p, m, transform))
    # A 0-d id gives [k].
    scalar = dhe.dhe_encode(ids[2, 3], a, b, p, m, transform)
    assert scalar.shape == (8,)
    assert torch.equal(scalar, dhe.dhe_encode(ids[2, 3:4], a, b, p, m, transform)[0])
    out = dhe.dhe_encode_linear(ids[2, 3], a, b, p, m, transform, torch.randn(3, 8))
    assert out.shape == (3,)


def test_encode_is_a_function_of_the_hash():
    # Equal ids (and ids equal mod p) give equal rows; the uniform values lie on the grid 2 h / (m - 1) - 1.
    a, b, p, m = hash_parameters(16, 97)
    ids = torch.tensor([5, 5 + p, 5 + 1000 * p, 7, 0, p])
    out = dhe.dhe_encode(ids, a, b, p, m)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2]) and torch.equal(out[4], out[5])
    h = torch.round((out.double() + 1) * (m - 1) / 2)
    assert torch.equal(h.long(), dhe_hash_reference(ids, a, b, p, m))


def test_encode_identical_across_isas():
    """Every variant computes in double and rounds once, so the variants agree to the last float32 bit (allowing
    one ulp where the double values straddle a rounding boundary) and to ~1e-15 in double."""
    ids = random_ids((3000,), torch.int64)
    previous = mprec.cpu_isa()
    try:
        for transform, k in [("uniform", 37), ("gaussian", 38)]:
            a, b, p, m = hash_parameters(k, 2**31 - 2)
            outs, doubles, bf16s = {}, {}, {}
            for isa in ISAS:
                mprec.set_cpu_isa(isa)
                outs[isa] = dhe.dhe_encode(ids, a, b, p, m, transform)
                doubles[isa] = identity_encode(ids, a, b, p, m, transform)
                bf16s[isa] = dhe.dhe_encode_linear(ids, a, b, p, m, transform, torch.eye(k, dtype=torch.bfloat16))
            first = ISAS[0]
            for isa in ISAS[1:]:
                torch.testing.assert_close(outs[isa], outs[first], rtol=2**-23, atol=1e-30, msg=f"{isa} vs {first}")
                torch.testing.assert_close(doubles[isa], doubles[first], rtol=0, atol=1e-14, msg=f"{isa} vs {first}")
                torch.testing.assert_close(bf16s[isa].float(), bf16s[first].float(), rtol=2**-7, atol=1e-30,
                                           msg=f"{isa} vs {first}")
    finally:
        mprec.set_cpu_isa(previous)


# --- the hash is exact ----------------------------------------------------------------------------------------

def _largest_allowed_prime():
    p = dhe.MAX_PRIME
    while not dhe.is_prime(p):
        p -= 1
    return p


LARGEST_PRIME = _largest_allowed_prime()
# (p, m): p just below 2^31 with m = p - 1, the largest allowed prime with m = p - 1 (p < 2m: one conditional
# subtraction), and p >= 2m (the general mod-m path), including a tiny m under the largest p.
EXACT_CASES = {
    "p=2^31-1": (2**31 - 1, 2**31 - 2),
    "p=max": (LARGEST_PRIME, LARGEST_PRIME - 1),
    "m10-p23": (23, 10),
    "m1000-p=2^31-1": (2**31 - 1, 1000),
    "m2-p=max": (LARGEST_PRIME, 2),
    "m=max/2": (LARGEST_PRIME, LARGEST_PRIME // 2),
    "m=max/2+1": (LARGEST_PRIME, LARGEST_PRIME // 2 + 1),
}


def extreme_ids(p):
    top = 2**63 - 1
    values = [top, top - 1, top - 2, 2**62 + 12345, 2**62, 0, 1, p, p - 1, p + 1, 2 * p, 17 * p, (top // p) * p,
              (top // p) * p - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 - 1, 2**53, 2**53 + 1]
    return torch.tensor(values, dtype=torch.int64)


def extreme_hashes(p, k=8):
    """hash_a with p - 1 and 1 (and other extremes), hash_b with 0 and p - 1, padded randomly to k."""
    a = [p - 1, 1, 2, p - 2, (p - 1) // 2, 1, p - 1, 3]
    b = [0, p - 1, p - 1, 0, 1, 0, p - 2, p // 2]
    g = torch.Generator().manual_seed(p)
    a = torch.cat([torch.tensor(a), torch.randint(1, p, (max(0, k - 8),), generator=g)])[:k]
    b = torch.cat([torch.tensor(b), torch.randint(0, p, (max(0, k - 8),), generator=g)])[:k]
    return a.to(torch.int64), b.to(torch.int64)


@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_hash_reference_is_exact(case):
    # The oracle itself, against Python's arbitrary-precision integers.
    p, m = EXACT_CASES[case]
    ids, (a, b) = extreme_ids(p), extreme_hashes(p)
    h = dhe_hash_reference(ids, a, b, p, m)
    expected = [[((int(aj) * (int(x) % p) + int(bj)) % p) % m for aj, bj in zip(a, b)] for x in ids]
    assert h.tolist() == expected


@pytest.mark.parametrize("transform", ["uniform", "gaussian"])
@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_hash_is_exact_at_extremes(isa, case, transform):
    """Adjacent hash values differ by 2 / (m - 1) >= 6.6e-10 in the uniform encoding, so agreement to 1e-12 in double
    means the integer hash is exact (checked again by rounding back to h); the gaussian case checks the transform
    to 1e-12 at the same extreme hashes."""
    p, m = EXACT_CASES[case]
    k = 8 if transform == "uniform" else 16
    ids, (a, b) = extreme_ids(p), extreme_hashes(p, k)
    out = identity_encode(ids, a, b, p, m, transform)
    expected = dhe_encode_reference(ids, a, b, p, m, transform)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    if transform == "uniform":
        h = torch.round((out + 1) * (m - 1) / 2).long()
        assert torch.equal(h, dhe_hash_reference(ids, a, b, p, m))
    # The float32 op agrees too, for int64 ids and (for ids that fit) int32 ids.
    torch.testing.assert_close(dhe.dhe_encode(ids, a, b, p, m, transform).double(), expected,
                               **ENCODE_TOLERANCE[transform])
    small = ids[(ids >= 0) & (ids < 2**31)]
    torch.testing.assert_close(identity_encode(small.int(), a, b, p, m, transform),
                               dhe_encode_reference(small, a, b, p, m, transform), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["p=2^31-1", "p=max", "m1000-p=2^31-1"])
def test_hash_is_exact_for_random_large_ids(isa, case):
    p, m = EXACT_CASES[case]
    a, b, _, _ = hash_parameters(64, p - 1, seed=7)  # a in [1, p-1], b in [0, p-1] for this p
    ids = random_ids((500,), torch.int64, high=2**63 - 1)
    out = identity_encode(ids, a, b, p, m, "uniform")
    torch.testing.assert_close(out, dhe_encode_reference(ids, a, b, p, m), rtol=0, atol=1e-12)


# --- dhe_encode_linear ----------------------------------------------------------------------------------------

LINEAR_K = [("uniform", 13), ("gaussian", 18)]


def _bf16_rounded_encoding_reference(ids, a, b, p, m, transform, weight, bias, activation):
    """The reference with the encodings rounded to bfloat16 first, as the bfloat16 kernel does."""
    enc = dhe_encode_reference(ids, a, b, p, m, transform).to(torch.bfloat16).double()
    return rowwise_linear_reference(enc, weight.double(), None if bias is None else bias.double(), activation)


@pytest.mark.parametrize("H1", [1, 7, 128])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("transform,k", LINEAR_K, ids=[f"{t}-k{k}" for t, k in LINEAR_K])
@pytest.mark.parametrize("dtype", LINEAR_DTYPES, ids=[DTYPE_IDS[d] for d in LINEAR_DTYPES])
def test_encode_linear_matches_reference(isa, dtype, transform, k, with_bias, activation, H1):
    a, b, p, m = hash_parameters(k, 100_000, seed=H1)
    weight = (torch.randn(H1, k) / math.sqrt(k)).to(dtype)
    bias = torch.randn(H1).to(dtype) if with_bias else None
    for n in (0, 1, 17, 300):  # 300: three 128-row blocks, the last one short
        ids = random_ids((n,), torch.int64)
        out = dhe.dhe_encode_linear(ids, a, b, p, m, transform, weight, bias, activation)
        assert out.dtype == dtype and out.shape == (n, H1)
        enc = dhe_encode_reference(ids, a, b, p, m, transform)
        expected = dhe_encode_linear_reference(ids, a, b, p, m, transform, weight.double(),
                                               None if bias is None else bias.double(), activation)
        assert_close_to_magnitude(out, expected, linear_magnitude(enc, weight, bias), LINEAR_REL[dtype], f"N={n}")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_encode_linear_bf16_is_rounding_of_bf16_encodings(isa, activation):
    """Tighter bf16 check: against a reference using the same bf16-rounded encodings, only the float32 GEMM and the
    output and activation roundings remain: <= (1.1 + 1) u of the magnitude."""
    a, b, p, m, = hash_parameters(40, 50_000)
    weight = (torch.randn(64, 40) / 6).bfloat16()
    bias = torch.randn(64).bfloat16()
    ids = random_ids((200,), torch.int32)
    out = dhe.dhe_encode_linear(ids, a, b, p, m, "gaussian", weight, bias, activation)
    expected = _bf16_rounded_encoding_reference(ids, a, b, p, m, "gaussian", weight, bias, activation)
    enc = dhe_encode_reference(ids, a, b, p, m, "gaussian").bfloat16().double()
    assert_close_to_magnitude(out, expected, linear_magnitude(enc, weight, bias), 2.1 * BF16_U + 1e-5)


def test_encode_linear_2d_ids_and_int32(isa):
    a, b, p, m = hash_parameters(11, 1000)
    weight = torch.randn(5, 11, dtype=torch.float64)
    ids = random_ids((4, 6), torch.int32)
    out = dhe.dhe_encode_linear(ids, a, b, p, m, "uniform", weight, None, "relu")
    assert out.shape == (4, 6, 5)
    expected = dhe_encode_linear_reference(ids, a, b, p, m, "uniform", weight, None, "relu")
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(out, dhe.dhe_encode_linear(ids.long(), a, b, p, m, "uniform", weight, None, "relu"))


def test_encode_linear_float32_matches_encode_then_linear(isa):
    # The fused op against the two-step computation with mprec's own ops (same float32 encodings).
    a, b, p, m = hash_parameters(32, 10_000)
    weight, bias = torch.randn(9, 32), torch.randn(9)
    ids = random_ids((150,), torch.int64)
    fused = dhe.dhe_encode_linear(ids, a, b, p, m, "gaussian", weight, bias, "mish")
    two_step = dhe.rowwise_linear(dhe.dhe_encode(ids, a, b, p, m, "gaussian"), weight, bias, "mish")
    torch.testing.assert_close(fused, two_step, rtol=1e-6, atol=1e-6)


# --- gradients of dhe_encode_linear -------------------------------------------------------------------------

def reference_linear_grads(ids, a, b, p, m, transform, weight, bias, activation, grad, bf16_encodings=False):
    w = weight.detach().double().requires_grad_()
    bb = None if bias is None else bias.detach().double().requires_grad_()
    enc = dhe_encode_reference(ids, a, b, p, m, transform)
    if bf16_encodings:
        enc = enc.bfloat16().double()
    out = rowwise_linear_reference(enc, w, bb, activation)
    out.backward(grad.double())
    return w.grad, None if bb is None else bb.grad, enc


# Gradient error as a fraction of |dL/dpre|^T @ |enc| (weight) and sum |dL/dpre| (bias); mish' <= 1.1 so the
# upstream |grad| times 1.1 bounds |dL/dpre|. float32: sums over N = 300 rows in float32. bfloat16: computed in
# float32 and rounded once to bfloat16 (u); the backward multiplies by float32 encodings where the reference (and
# the forward) use bf16-rounded ones (u); mish' is taken at a pre-activation that differs by ~u of the
# magnitude (|mish''| <= 0.6): 3 u.
GRAD_REL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 3 * BF16_U}


def check_linear_grads(dtype, transform, k, with_bias, activation, n=300, H1=7, m=5000):
    a, b, p, m = hash_parameters(k, m, seed=k)
    weight = (torch.randn(H1, k) / math.sqrt(k)).to(dtype).requires_grad_()
    bias = torch.randn(H1).to(dtype).requires_grad_() if with_bias else None
    ids = random_ids((n,), torch.int64)
    out = dhe.dhe_encode_linear(ids, a, b, p, m, transform, weight, bias, activation)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_w, ref_b, enc = reference_linear_grads(ids, a, b, p, m, transform, weight, bias, activation, grad,
                                               bf16_encodings=dtype == torch.bfloat16)
    assert weight.grad.dtype == dtype and weight.grad.shape == weight.shape
    g = grad.double().abs() * 1.1
    assert_close_to_magnitude(weight.grad, ref_w, g.t() @ enc.abs(), GRAD_REL[dtype], "grad_weight")
    if with_bias:
        assert bias.grad.dtype == dtype and bias.grad.shape == bias.shape
        assert_close_to_magnitude(bias.grad, ref_b, g.sum(0), GRAD_REL[dtype], "grad_bias")


# k = 131 / 130: the weight gradient's column chunks are 128 wide, so the last chunk is short.
GRAD_K = [("uniform", 131), ("gaussian", 130), ("uniform", 5)]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("transform,k", GRAD_K, ids=[f"{t}-k{k}" for t, k in GRAD_K])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_encode_linear_gradients_match_reference(isa, dtype, transform, k, with_bias, activation):
    check_linear_grads(dtype, transform, k, with_bias, activation)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("transform,k", GRAD_K[:2], ids=[f"{t}-k{k}" for t, k in GRAD_K[:2]])
def test_encode_linear_bf16_gradients(transform, k, activation):
    check_linear_grads(torch.bfloat16, transform, k, True, activation)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("transform", ["uniform", "gaussian"])
def test_encode_linear_gradcheck(transform, activation):
    a, b, p, m = hash_parameters(6, 50)
    ids = random_ids((9,), torch.int64)
    weight = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w, bb: dhe.dhe_encode_linear(ids, a, b, p, m, transform, w, bb, activation), (weight, bias))
    assert torch.autograd.gradcheck(
        lambda w: dhe.dhe_encode_linear(ids, a, b, p, m, transform, w, None, activation), (weight,))


def test_encode_linear_gradient_without_bias_and_empty_batch():
    a, b, p, m = hash_parameters(4, 50)
    weight = torch.randn(3, 4, requires_grad=True)
    out = dhe.dhe_encode_linear(random_ids((5,), torch.int64), a, b, p, m, "uniform", weight)
    out.sum().backward()
    assert weight.grad.shape == (3, 4)
    # Only the weight gets a gradient when bias is None, and a bias that does not require grad gets none.
    bias = torch.randn(3)
    weight.grad = None
    dhe.dhe_encode_linear(random_ids((5,), torch.int64), a, b, p, m, "uniform", weight, bias).sum().backward()
    assert weight.grad is not None and bias.grad is None
    # N = 0: zero gradients of the right shape.
    weight.grad = None
    bias = torch.randn(3, requires_grad=True)
    out = dhe.dhe_encode_linear(torch.zeros(0, dtype=torch.int64), a, b, p, m, "uniform", weight, bias, "mish")
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros(3, 4)) and torch.equal(bias.grad, torch.zeros(3))


def test_encode_linear_gradients_same_with_one_and_two_threads(num_threads):
    a, b, p, m = hash_parameters(260, 5000)
    ids = random_ids((700,), torch.int64)
    grad = torch.randn(700, 16)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        weight = torch.randn(16, 260, generator=torch.Generator().manual_seed(1)).requires_grad_()
        bias = torch.zeros(16, requires_grad=True)
        dhe.dhe_encode_linear(ids, a, b, p, m, "gaussian", weight, bias, "mish").backward(grad)
        results.append((weight.grad, bias.grad))
    for w_grad, b_grad in results[1:]:
        assert torch.equal(w_grad, results[0][0]) and torch.equal(b_grad, results[0][1])


def test_inputs_requiring_grad_with_several_threads(num_threads):
    """The kernels call ATen GEMMs on worker threads, which do not inherit the caller's autograd state: inputs that
    require grad must not reach autograd there ("functions with out=... arguments don't support automatic
    differentiation"). Multi-block batches at 2 threads, with grad enabled and under no_grad, and the backward op
    called directly."""
    torch.set_num_threads(2)
    a, b, p, m = hash_parameters(131, 5000)
    ids = random_ids((700,), torch.int64)
    for dtype in (torch.float32, torch.bfloat16):
        weight = torch.randn(7, 131).to(dtype).requires_grad_()
        bias = torch.randn(7).to(dtype).requires_grad_()
        x = torch.randn(700, 131).to(dtype).requires_grad_()
        for activation in ACTIVATIONS:
            for grad_enabled in (True, False):
                with torch.set_grad_enabled(grad_enabled):
                    out = dhe.dhe_encode_linear(ids, a, b, p, m, "uniform", weight, bias, activation)
                    out2 = dhe.rowwise_linear(x, weight, bias, activation)
                    assert out.requires_grad == out2.requires_grad == grad_enabled
                    grads = torch.ops.mprec.dhe_encode_linear_backward(
                        torch.ones_like(out), out.detach(), ids, a, b, p, m, "uniform", weight, bias, activation)
                    assert grads[0].shape == weight.shape and grads[1].shape == bias.shape
                if grad_enabled:
                    (out.float().sum() + out2.float().sum()).backward()
            with torch.inference_mode():
                out3 = dhe.dhe_encode_linear(ids, a, b, p, m, "uniform", weight, bias, activation)
            assert torch.equal(out3, out.detach())
        assert weight.grad is not None and bias.grad is not None and x.grad is not None


# --- rowwise_linear -----------------------------------------------------------------------------------------

ROWWISE_SHAPES = {"1d": (24,), "N0": (0, 24), "N300": (300, 24), "3d": (3, 5, 24)}


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", LINEAR_DTYPES, ids=[DTYPE_IDS[d] for d in LINEAR_DTYPES])
def test_rowwise_linear_matches_reference(dtype, with_bias, activation):
    weight = (torch.randn(33, 24) / 5).to(dtype)
    bias = torch.randn(33).to(dtype) if with_bias else None
    # bf16 inputs are exact in the reference, so only float32 accumulation and the roundings of the GEMM's output
    # (u * |pre|, times mish' <= 1.1) and of mish's output (u * |out|) remain: <= 2.1 u of the magnitude.
    rel = {torch.float32: 1e-5, torch.bfloat16: 2.1 * BF16_U + 1e-5, torch.float64: 1e-12}[dtype]
    for name, shape in ROWWISE_SHAPES.items():
        x = torch.randn(shape).to(dtype)
        out = dhe.rowwise_linear(x, weight, bias, activation)
        assert out.dtype == dtype and out.shape == (*shape[:-1], 33), name
        expected = rowwise_linear_reference(x.double(), weight.double(), None if bias is None else bias.double(),
                                            activation)
        assert_close_to_magnitude(out, expected, linear_magnitude(x, weight, bias), rel, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_rowwise_linear_matches_torch_linear(dtype):
    x, weight, bias = torch.randn(200, 17, dtype=dtype), torch.randn(9, 17, dtype=dtype), torch.randn(9, dtype=dtype)
    torch.testing.assert_close(dhe.rowwise_linear(x, weight, bias), torch.nn.functional.linear(x, weight, bias))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(6,), (5, 6), (2, 3, 6)], ids=["1d", "2d", "3d"])
def test_rowwise_linear_gradcheck(shape, activation):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: dhe.rowwise_linear(x, w, b, activation), (x, weight, bias))
    assert torch.autograd.gradcheck(lambda x, w: dhe.rowwise_linear(x, w, None, activation), (x, weight))
    # Only some inputs requiring grad.
    assert torch.autograd.gradcheck(lambda w: dhe.rowwise_linear(x.detach(), w, bias.detach(), activation), (weight,))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_rowwise_linear_gradients_match_reference(dtype, activation):
    x = torch.randn(300, 20).to(dtype).requires_grad_()
    weight = (torch.randn(12, 20) / 4).to(dtype).requires_grad_()
    bias = torch.randn(12).to(dtype).requires_grad_()
    out = dhe.rowwise_linear(x, weight, bias, activation)
    grad = torch.randn_like(out)
    out.backward(grad)
    refs = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    rowwise_linear_reference(*refs, activation).backward(grad.double())
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    for t, ref in zip((x, weight, bias), refs):
        assert t.grad.dtype == dtype
        scale = ref.grad.abs().max().item()
        torch.testing.assert_close(t.grad.double() / scale, ref.grad / scale, **tol)


def test_rowwise_linear_empty_batch_gradients():
    x = torch.zeros(0, 6, requires_grad=True)
    weight, bias = torch.randn(4, 6, requires_grad=True), torch.randn(4, requires_grad=True)
    dhe.rowwise_linear(x, weight, bias, "mish").sum().backward()
    assert x.grad.shape == (0, 6)
    assert torch.equal(weight.grad, torch.zeros(4, 6)) and torch.equal(bias.grad, torch.zeros(4))


# --- row independence (MP-Cache serves cached rows bit-identical to recomputed ones) ----------------------

SUBSET_SIZES = [1, 2, 15, 16, 17, 100, 129, 300]


def _starts(n, total=700):
    return sorted({0, 1, 113, 128, 255, total - n})


def _ops(dtype, transform):
    a, b, p, m = hash_parameters(48, 20_000)
    ids = random_ids((700,), torch.int64)
    weight, bias = (torch.randn(40, 48) / 7).to(dtype), torch.randn(40).to(dtype)
    x = torch.randn(700, 48).to(dtype)
    w2, b2 = (torch.randn(24, 48) / 7).to(dtype), torch.randn(24).to(dtype)
    # Narrow outputs too: mish's vector loop has a scalar tail, so rows * H not a multiple of the vector width
    # is where a row's rounding could depend on its position.
    w3, b3 = (torch.randn(7, 48) / 7).to(dtype), torch.randn(7).to(dtype)
    return {
        "dhe_encode_linear-H7": (ids, lambda rows: dhe.dhe_encode_linear(rows, a, b, p, m, transform, w3, b3, "mish")),
        "rowwise_linear-H7": (x, lambda rows: dhe.rowwise_linear(rows, w3, b3, "mish")),
        "dhe_encode_linear": (ids, lambda rows: dhe.dhe_encode_linear(rows, a, b, p, m, transform, weight, bias,
                                                                       "mish")),
        "dhe_encode_linear-nobias": (ids, lambda rows: dhe.dhe_encode_linear(rows, a, b, p, m, transform, weight)),
        "rowwise_linear": (x, lambda rows: dhe.rowwise_linear(rows, w2, b2, "relu")),
        "rowwise_linear-nobias": (x, lambda rows: dhe.rowwise_linear(rows, w2, None, "mish")),
        "dhe_encode": (ids, lambda rows: dhe.dhe_encode(rows, a, b, p, m, transform)),
    }


@pytest.mark.parametrize("transform", ["uniform", "gaussian"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_rows_do_not_depend_on_the_batch(dtype, transform):
    for name, (inputs, f) in _ops(dtype, transform).items():
        full = f(inputs)
        for n in SUBSET_SIZES:
            for start in _starts(n):
                part = f(inputs[start : start + n])
                assert torch.equal(part, full[start : start + n]), f"{name}: rows [{start}, {start + n})"
        # One id at a time, and a batch in a different order.
        perm = torch.randperm(700)
        assert torch.equal(f(inputs[perm]), full[perm]), name
        assert torch.equal(f(inputs[5:6].expand(3, *inputs.shape[1:]))[2], full[5]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_rows_do_not_depend_on_the_thread_count(num_threads, dtype):
    ops = _ops(dtype, "gaussian")
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        results.append({name: f(inputs) for name, (inputs, f) in ops.items()})
    for other in results[1:]:
        for name, out in other.items():
            assert torch.equal(out, results[0][name]), name


def test_rows_do_not_depend_on_the_batch_with_row_blocks_and_threads(num_threads):
    # Subsets at one thread against the full batch at two: both properties at once.
    torch.set_num_threads(2)
    ops = _ops(torch.float32, "uniform")
    full = {name: f(inputs) for name, (inputs, f) in ops.items()}
    torch.set_num_threads(1)
    for name, (inputs, f) in ops.items():
        for n, start in [(1, 699), (17, 120), (129, 300)]:
            assert torch.equal(f(inputs[start : start + n]), full[name][start : start + n]), name


# --- hash parameters and primes -----------------------------------------------------------------------------

def _trial_division_is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def test_is_prime_and_next_prime_small():
    primes = [n for n in range(5000) if _trial_division_is_prime(n)]
    assert [n for n in range(5000) if dhe.is_prime(n)] == primes
    for n in range(-3, 4990):
        assert dhe.next_prime(n) == next(q for q in primes if q > n), n


def test_is_prime_large():
    # Strong pseudoprimes to small bases and Carmichael numbers are composite; primes near 2^31 and MAX_PRIME.
    for n in [561, 1105, 2047, 3277, 4033, 4681, 8321, 1373653, 25326001, 2**31 + 1, dhe.MAX_PRIME]:
        assert not dhe.is_prime(n), n
    for n in [2**31 - 1, 3037000493, 2147483629, 1_000_003]:
        assert dhe.is_prime(n), n
    for n in range(dhe.MAX_PRIME - 40, dhe.MAX_PRIME + 1):
        assert dhe.is_prime(n) == _trial_division_is_prime(n), n
    assert LARGEST_PRIME == 3037000493
    assert dhe.next_prime(2**31 - 2) == 2**31 - 1


def test_op_primality_check_agrees_with_is_prime():
    """The C++ kernels have their own primality test: p must be accepted exactly when it is prime."""
    a = torch.ones(2, dtype=torch.int64)
    ids = torch.tensor([3])
    candidates = list(range(3, 200)) + [2047, 3277, 1373653, 25326001, 2**31 - 1, 2**31 + 1, 3037000493,
                                        dhe.MAX_PRIME] + list(range(dhe.MAX_PRIME - 30, dhe.MAX_PRIME + 1))
    for p in candidates:
        if dhe.is_prime(p):
            dhe.dhe_encode(ids, a, a * 0, p, 2)
        else:
            with pytest.raises(ValueError, match="is not prime"):
                dhe.dhe_encode(ids, a, a * 0, p, 2)


@pytest.mark.parametrize("k,m", [(1, 2), (16, 1000), (7, 2**31 - 2), (4, 3037000492)])
def test_dhe_hash_parameters(k, m):
    a, b, p = dhe.dhe_hash_parameters(k, m, seed=3)
    assert p == dhe.next_prime(m) and p <= dhe.MAX_PRIME
    assert a.dtype == b.dtype == torch.int64 and a.shape == b.shape == (k,)
    assert (a >= 1).all() and (a <= p - 1).all() and (b >= 0).all() and (b <= p - 1).all()
    a2, b2, p2 = dhe.dhe_hash_parameters(k, m, seed=3)
    assert torch.equal(a, a2) and torch.equal(b, b2) and p == p2
    # The op accepts them.
    assert dhe.dhe_encode(torch.tensor([1, 2**40]), a, b, p, m).shape == (2, k)


def test_dhe_hash_parameters_seeds_differ():
    a, b, _ = dhe.dhe_hash_parameters(64, 10**6, seed=0)
    a2, b2, _ = dhe.dhe_hash_parameters(64, 10**6, seed=1)
    assert not torch.equal(a, a2) and not torch.equal(b, b2)
    # Independent of the global generator.
    torch.manual_seed(123)
    assert torch.equal(dhe.dhe_hash_parameters(64, 10**6, seed=0)[0], a)


def test_dhe_hash_parameters_errors():
    with pytest.raises(ValueError, match="k must be >= 1"):
        dhe.dhe_hash_parameters(0, 100)
    with pytest.raises(ValueError, match="m must be >= 2"):
        dhe.dhe_hash_parameters(4, 1)
    with pytest.raises(ValueError, match="too large"):
        dhe.dhe_hash_parameters(4, 3037000493)

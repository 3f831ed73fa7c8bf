"""Bad input to the DHE ops: a ValueError naming the op and the offending value, from the CPU kernels and (for
what does not depend on the data) from the fake kernels too. Negative ids are found by the ISA variants of
the hashing loop, so those cases run on every variant."""

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from mprec.ops import dhe

ENCODE = "mprec::dhe_encode"
LINEAR = "mprec::dhe_encode_linear"
BACKWARD = "mprec::dhe_encode_linear_backward"
ROWWISE = "mprec::rowwise_linear"

M = 10
P = 11


def hashes(k=4, p=P):
    return torch.arange(1, k + 1, dtype=torch.int64) % (p - 1) + 1, torch.arange(k, dtype=torch.int64) % p


def encode(ids=None, hash_a=None, hash_b=None, p=P, m=M, transform="uniform"):
    a, b = hashes()
    ids = torch.tensor([1, 2, 3]) if ids is None else ids
    return torch.ops.mprec.dhe_encode(ids, a if hash_a is None else hash_a, b if hash_b is None else hash_b, p, m,
                                      transform)


def linear(ids=None, hash_a=None, hash_b=None, p=P, m=M, transform="uniform", weight=None, bias=None,
           activation="none"):
    a, b = hashes()
    ids = torch.tensor([1, 2, 3]) if ids is None else ids
    weight = torch.randn(5, 4) if weight is None else weight
    return torch.ops.mprec.dhe_encode_linear(ids, a if hash_a is None else hash_a, b if hash_b is None else hash_b,
                                             p, m, transform, weight, bias, activation)


def backward(ids=None, weight=None, bias=None, activation="none", transform="uniform", p=P, m=M):
    a, b = hashes()
    ids = torch.tensor([1, 2, 3]) if ids is None else ids
    weight = torch.randn(5, 4) if weight is None else weight
    grad = torch.randn(*ids.shape, weight.shape[0])
    return torch.ops.mprec.dhe_encode_linear_backward(grad, grad, ids, a, b, p, m, transform, weight, bias,
                                                      activation)


BOTH = [pytest.param(encode, ENCODE, id="encode"), pytest.param(linear, LINEAR, id="linear"),
        pytest.param(backward, BACKWARD, id="backward")]


# --- negative ids (data-dependent: real kernels only, every ISA) ---------------------------------------------

@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("call,op", BOTH)
def test_negative_id_names_position_and_value(isa, call, op, index_dtype):
    ids = torch.tensor([1, 2, 3, -5, 4], dtype=index_dtype)
    with pytest.raises(ValueError, match=rf"{op}: ids\[3\] = -5 is negative; DHE ids must be >= 0"):
        call(ids)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("call,op", BOTH)
def test_negative_id_in_a_later_row_block(isa, call, op, index_dtype, num_threads):
    # 300 rows: three 128-row blocks; the bad id is in the last one (and found on a worker thread).
    torch.set_num_threads(2)
    ids = torch.arange(300, dtype=index_dtype)
    ids[250] = -(2**31) if index_dtype == torch.int32 else -(2**63)
    with pytest.raises(ValueError, match=rf"{op}: ids\[250\] = {int(ids[250])} is negative"):
        call(ids)


def test_negative_id_in_2d_ids_reports_the_flat_position(isa):
    ids = torch.arange(15).reshape(3, 5)
    ids[0, 3] = -1
    with pytest.raises(ValueError, match=rf"{ENCODE}: ids\[3\] = -1 is negative"):
        encode(ids)
    # Non-contiguous ids: the position is in the row-major order of ids as given ([5, 3]: row 3, column 0).
    with pytest.raises(ValueError, match=rf"{ENCODE}: ids\[9\] = -1 is negative"):
        encode(ids.t())


def test_negative_id_through_the_wrappers_and_autograd(isa):
    a, b = hashes()
    weight = torch.randn(5, 4, requires_grad=True)
    with pytest.raises(ValueError, match=rf"{LINEAR}: ids\[0\] = -3 is negative"):
        dhe.dhe_encode_linear(torch.tensor([-3]), a, b, P, M, "uniform", weight)
    with pytest.raises(ValueError, match=rf"{ENCODE}: ids\[1\] = -3 is negative"):
        dhe.dhe_encode(torch.tensor([0, -3]), a, b, P, M)


# --- hash parameters -----------------------------------------------------------------------------------------

def test_gaussian_needs_even_k():
    a, b = hashes(3)
    with pytest.raises(ValueError, match=rf"{ENCODE}: the gaussian transform pairs hashes \(Box-Muller\), so k must "
                                         rf"be even, got k = 3"):
        encode(hash_a=a, hash_b=b, transform="gaussian")
    with pytest.raises(ValueError, match=rf"{LINEAR}: .*k must be even, got k = 3"):
        linear(hash_a=a, hash_b=b, transform="gaussian", weight=torch.randn(5, 3))


@pytest.mark.parametrize("m", [1, 0, -3])
def test_m_below_two(m):
    with pytest.raises(ValueError, match=rf"{ENCODE}: m \(the hash range\) must be >= 2, got {m}"):
        encode(p=2, m=m)
    with pytest.raises(ValueError, match=rf"{LINEAR}: m \(the hash range\) must be >= 2, got {m}"):
        linear(p=2, m=m)


@pytest.mark.parametrize("p", [10, 7, -11])
def test_p_not_above_m(p):
    with pytest.raises(ValueError, match=rf"{ENCODE}: p must be a prime greater than m = 10, got p = {p}"):
        encode(p=p, m=10)


@pytest.mark.parametrize("p", [15, 21, 561, 2047, 2**31 + 1])
def test_p_not_prime(p):
    with pytest.raises(ValueError, match=rf"{ENCODE}: p must be a prime greater than m = 10, but p = {p} is not prime"):
        encode(p=p, m=10)
    with pytest.raises(ValueError, match=rf"{LINEAR}: .*but p = {p} is not prime"):
        linear(p=p, m=10)


@pytest.mark.parametrize("p", [dhe.next_prime(dhe.MAX_PRIME), dhe.MAX_PRIME + 1, 2**62, 2**63 - 1])
def test_p_too_large(p):
    with pytest.raises(ValueError, match=rf"{ENCODE}: p = {p} is too large; p \(and so m\) must be at most "
                                         rf"{dhe.MAX_PRIME}"):
        encode(p=p, m=10)


@pytest.mark.parametrize("name,values,position,value", [
    ("hash_a", [1, 2, 0, 3], 2, 0),
    ("hash_a", [1, 2, 3, P], 3, P),
    ("hash_a", [-1, 2, 3, 4], 0, -1),
    ("hash_b", [0, -1, 0, 0], 1, -1),
    ("hash_b", [0, 0, P, 0], 2, P),
])
def test_hash_values_out_of_range(name, values, position, value):
    a, b = hashes()
    t = torch.tensor(values, dtype=torch.int64)
    kwargs = {"hash_a": t, "hash_b": b} if name == "hash_a" else {"hash_a": a, "hash_b": t}
    interval = r"\[1, p - 1\]" if name == "hash_a" else r"\[0, p - 1\]"
    message = rf"{name}\[{position}\] = {value} is outside {interval} for p = {P}"
    with pytest.raises(ValueError, match=rf"{ENCODE}: {message}"):
        encode(**kwargs)
    with pytest.raises(ValueError, match=rf"{LINEAR}: {message}"):
        linear(**kwargs)


def test_hash_lengths_differ():
    a, _ = hashes(4)
    _, b = hashes(3)
    with pytest.raises(ValueError, match=rf"{ENCODE}: hash_a and hash_b must have the same length, got 4 and 3"):
        encode(hash_a=a, hash_b=b)


@pytest.mark.parametrize("dtype", [torch.int32, torch.float64, torch.uint8])
def test_hash_dtype(dtype):
    a, b = hashes()
    with pytest.raises(ValueError, match=rf"{ENCODE}: hash_a must be a 1-D int64 tensor, got {_scalar_type(dtype)}"):
        encode(hash_a=a.to(dtype))
    with pytest.raises(ValueError, match=rf"{ENCODE}: hash_b must be a 1-D int64 tensor, got {_scalar_type(dtype)}"):
        encode(hash_b=b.to(dtype))


def test_hash_not_1d():
    a, b = hashes()
    with pytest.raises(ValueError, match=rf"{ENCODE}: hash_a must be a 1-D int64 tensor, got Long of shape \[1, 4\]"):
        encode(hash_a=a.unsqueeze(0), hash_b=b)


def test_no_hash_functions():
    empty = torch.zeros(0, dtype=torch.int64)
    with pytest.raises(ValueError, match=rf"{ENCODE}: k \(the number of hash functions\) must be >= 1, got 0"):
        encode(hash_a=empty, hash_b=empty)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int16, torch.uint8, torch.bool])
def test_ids_dtype(dtype):
    ids = torch.tensor([1, 2, 3]).to(dtype)
    with pytest.raises(ValueError, match=rf"{ENCODE}: ids must be int32 or int64, got {_scalar_type(dtype)}"):
        encode(ids)
    with pytest.raises(ValueError, match=rf"{LINEAR}: ids must be int32 or int64"):
        linear(ids)


@pytest.mark.parametrize("transform", ["normal", "", "Uniform", "gaussian "])
def test_bad_transform(transform):
    with pytest.raises(ValueError, match=rf"{ENCODE}: transform must be 'uniform' or 'gaussian', got "
                                         rf"'{re.escape(transform)}'"):
        encode(transform=transform)
    with pytest.raises(ValueError, match=rf"{LINEAR}: transform must be 'uniform' or 'gaussian'"):
        linear(transform=transform)
    with pytest.raises(ValueError, match=r"transform must be 'uniform' or 'gaussian'"):
        dhe.dhe_encode(torch.tensor([1]), *hashes(), P, M, transform)


# --- the linear layers ---------------------------------------------------------------------------------------

def test_weight_with_wrong_k():
    with pytest.raises(ValueError, match=rf"{LINEAR}: weight has shape \[5, 3\] but k = 4; expected "
                                         rf"\[out_features, 4\]"):
        linear(weight=torch.randn(5, 3))
    with pytest.raises(ValueError, match=rf"{BACKWARD}: weight has shape \[5, 6\] but k = 4"):
        backward(weight=torch.randn(5, 6))


def test_weight_not_2d():
    with pytest.raises(ValueError, match=rf"{LINEAR}: weight must be 2-D \[out_features, k\], got shape \[4\]"):
        linear(weight=torch.randn(4))
    with pytest.raises(ValueError, match=rf"{ROWWISE}: weight must be 2-D \[out_features, in_features\]"):
        torch.ops.mprec.rowwise_linear(torch.randn(3, 4), torch.randn(2, 5, 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64, torch.uint8])
def test_weight_dtype(dtype):
    with pytest.raises(ValueError, match=rf"{LINEAR}: weight must be float32, bfloat16 or float64, got "
                                         rf"{_scalar_type(dtype)}"):
        linear(weight=torch.randn(5, 4).to(dtype))
    with pytest.raises(ValueError, match=rf"{ROWWISE}: weight must be float32, bfloat16 or float64"):
        torch.ops.mprec.rowwise_linear(torch.randn(3, 4).to(dtype), torch.randn(5, 4).to(dtype))


@pytest.mark.parametrize("shape", [(4,), (6,), (5, 1), (1, 5), ()], ids=str)
def test_bias_shape(shape):
    shown = ", ".join(str(s) for s in shape)
    with pytest.raises(ValueError, match=rf"{LINEAR}: bias must have shape \[5\], got \[{shown}\]"):
        linear(bias=torch.randn(shape))
    with pytest.raises(ValueError, match=rf"{ROWWISE}: bias must have shape \[5\], got \[{shown}\]"):
        torch.ops.mprec.rowwise_linear(torch.randn(3, 4), torch.randn(5, 4), torch.randn(shape))


@pytest.mark.parametrize("bias_dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_bias_dtype(bias_dtype):
    with pytest.raises(ValueError, match=rf"{LINEAR}: bias \({_scalar_type(bias_dtype)}\) must have the weight's "
                                         r"dtype \(Float\)"):
        linear(bias=torch.randn(5).to(bias_dtype))
    with pytest.raises(ValueError, match=rf"{ROWWISE}: bias \({_scalar_type(bias_dtype)}\) must have the weight's "
                                         r"dtype \(Float\)"):
        torch.ops.mprec.rowwise_linear(torch.randn(3, 4), torch.randn(5, 4), torch.randn(5).to(bias_dtype))


@pytest.mark.parametrize("activation", ["gelu", "", "ReLU", "Mish", "tanh"])
def test_bad_activation(activation):
    message = rf"activation must be 'none', 'relu' or 'mish', got '{activation}'"
    with pytest.raises(ValueError, match=rf"{LINEAR}: {message}"):
        linear(activation=activation)
    with pytest.raises(ValueError, match=rf"{ROWWISE}: {message}"):
        torch.ops.mprec.rowwise_linear(torch.randn(3, 4), torch.randn(5, 4), None, activation)
    with pytest.raises(ValueError, match=rf"{BACKWARD}: {message}"):
        backward(activation=activation)


@pytest.mark.parametrize("input_dtype,weight_dtype", [(torch.float32, torch.float64), (torch.bfloat16, torch.float32),
                                                      (torch.float64, torch.bfloat16)])
def test_rowwise_linear_dtype_mismatch(input_dtype, weight_dtype):
    with pytest.raises(ValueError, match=rf"{ROWWISE}: input \({_scalar_type(input_dtype)}\) must have the weight's "
                                         rf"dtype \({_scalar_type(weight_dtype)}\)"):
        dhe.rowwise_linear(torch.randn(3, 4).to(input_dtype), torch.randn(5, 4).to(weight_dtype))


def test_rowwise_linear_wrong_in_features_and_scalar_input():
    with pytest.raises(ValueError, match=rf"{ROWWISE}: weight has shape \[5, 3\] but in_features = 4"):
        dhe.rowwise_linear(torch.randn(2, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match=rf"{ROWWISE}: input must have at least one dimension, got a scalar"):
        dhe.rowwise_linear(torch.tensor(1.0), torch.randn(5, 1))


def test_backward_grad_shape():
    a, b = hashes()
    weight = torch.randn(5, 4)
    with pytest.raises(ValueError, match=rf"{BACKWARD}: grad and output must have shape \[\.\.\., 5\] with 3 rows"):
        torch.ops.mprec.dhe_encode_linear_backward(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([1, 2, 3]), a, b,
                                                   P, M, "uniform", weight, None, "none")


# --- the fake kernels (torch.compile, meta) make the same checks ----------------------------------------------

FAKE_CASES = {
    "odd-k-gaussian": (lambda: encode(hash_a=hashes(3)[0], hash_b=hashes(3)[1], transform="gaussian"),
                       rf"{ENCODE}: the gaussian transform pairs hashes \(Box-Muller\), so k must be even, got k = 3"),
    "m<2": (lambda: encode(p=2, m=1), rf"{ENCODE}: m \(the hash range\) must be >= 2, got 1"),
    "p<=m": (lambda: encode(p=7, m=10), rf"{ENCODE}: p must be a prime greater than m = 10, got p = 7"),
    "p-not-prime": (lambda: linear(p=15), rf"{LINEAR}: p must be a prime greater than m = 10, but p = 15 is not prime"),
    "p-too-large": (lambda: encode(p=2**62), rf"{ENCODE}: p = {2**62} is too large; p \(and so m\) must be at most "
                                             r"\d+ so that every hash intermediate fits int64"),
    "float-ids": (lambda: encode(torch.tensor([1.0, 2.0])), rf"{ENCODE}: ids must be int32 or int64, got Float"),
    "hash-dtype": (lambda: encode(hash_a=hashes()[0].int()),
                   rf"{ENCODE}: hash_a must be a 1-D int64 tensor, got Int of shape \[4\]"),
    "hash-lengths": (lambda: encode(hash_a=hashes(4)[0], hash_b=hashes(3)[1]),
                     rf"{ENCODE}: hash_a and hash_b must have the same length, got 4 and 3"),
    "transform": (lambda: encode(transform="normal"),
                  rf"{ENCODE}: transform must be 'uniform' or 'gaussian', got 'normal'"),
    "weight-k": (lambda: linear(weight=torch.randn(5, 3)), rf"{LINEAR}: weight has shape \[5, 3\] but k = 4"),
    "bias-shape": (lambda: linear(bias=torch.randn(4)), rf"{LINEAR}: bias must have shape \[5\], got \[4\]$"),
    "bias-dtype": (lambda: linear(bias=torch.randn(5, dtype=torch.float64)),
                   rf"{LINEAR}: bias \(Double\) must have the weight's dtype \(Float\)"),
    "activation": (lambda: linear(activation="gelu"), rf"{LINEAR}: activation must be 'none', 'relu' or 'mish', "
                                                      r"got 'gelu'"),
    "rowwise-dtype": (lambda: dhe.rowwise_linear(torch.randn(3, 4), torch.randn(5, 4, dtype=torch.float64)),
                      rf"{ROWWISE}: input \(Float\) must have the weight's dtype \(Double\)"),
    "rowwise-activation": (lambda: dhe.rowwise_linear(torch.randn(3, 4), torch.randn(5, 4), None, "tanh"),
                           rf"{ROWWISE}: activation must be 'none', 'relu' or 'mish'"),
}


@pytest.mark.parametrize("case", list(FAKE_CASES))
def test_fake_kernel_errors(case):
    """The same error (ValueError, the same text, shapes and dtypes written as c10 writes them) from the real kernel
    and, with every tensor created under FakeTensorMode, from the fake kernel."""
    call, pattern = FAKE_CASES[case]
    with pytest.raises(ValueError, match=pattern):
        call()
    with FakeTensorMode():
        with pytest.raises(ValueError, match=pattern):
            call()


def test_fake_kernel_does_not_see_negative_ids():
    # Data-dependent: the fake kernel gives the output's shape and the real kernel reports the id.
    with FakeTensorMode():
        out = encode(torch.tensor([1, -2, 3]))
        assert out.shape == (3, 4) and out.dtype == torch.float32
        out = linear(torch.tensor([[1, -2, 3]]), weight=torch.randn(6, 4, dtype=torch.bfloat16))
        assert out.shape == (1, 3, 6) and out.dtype == torch.bfloat16


def test_fake_kernel_rejects_no_hash_functions():
    with FakeTensorMode():
        empty = torch.zeros(0, dtype=torch.int64)
        with pytest.raises(ValueError, match=rf"{ENCODE}: k .* must be >= 1"):
            encode(hash_a=empty, hash_b=empty)


def _scalar_type(dtype):
    """How c10 prints a dtype in an error message (Float, BFloat16, Long, ...)."""
    return {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
            torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.uint8: "Byte",
            torch.bool: "Bool"}[dtype]

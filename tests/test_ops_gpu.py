"""The ops' CUDA kernels (mprec.ops.gpu) against the references and the CPU kernels.

With a GPU, every case runs on CUDA tensors through the dispatcher, the embedding-bag cases once per
backend (Triton, and CUDA C++ when it is built), so the registration is checked too.

Without a GPU, both backends still run, on CPU tensors: the Triton kernels (mprec.kernels) in Triton's
interpreter (tests/conftest.py sets TRITON_INTERPRET=1 when no CUDA device is present), called through their op
wrappers, and the CUDA C++ kernels with their torch glue in the CUDA emulator (tests/cuda_emulator), as the
ops of ``mprec_cuda_emulator``. Sizes stay small: the interpreter runs every program in Python.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

import cuda_emulator
import mprec
from mprec.ops import gpu
import reference as R

pytestmark = pytest.mark.skipif(not gpu.triton_available(), reason="triton is not installed")

ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"

# Tolerances against the float64 reference: the kernels accumulate in float32 (float64 for float64
# tables) and round the result to the table's dtype.
TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


# The backend the embedding-bag cases run under (the `backend` fixture); the other cases use the default.
_backend = {"name": gpu.DEFAULT_BACKEND}


def call(name, *args):
    """The op's CUDA kernel: through the dispatcher on a GPU; without one, the Triton wrapper on CPU tensors, or
    for the CUDA C++ backend the emulated op."""
    if ON_CUDA:
        with_backend = getattr(torch.ops.mprec, name)
        return with_backend(*args)
    if _backend["name"] == "cuda" and name in cuda_emulator.OPS:
        return getattr(cuda_emulator.load(), name)(*args)
    return gpu.TRITON_KERNELS[name](*args)


# Without a GPU the CUDA C++ kernels run in the emulator, so both backends are tested on every machine.
BACKENDS = ["triton", "cuda"] if gpu.cuda_kernels_built() or not ON_CUDA else ["triton"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    """The case once per embedding-bag backend."""
    if ON_CUDA:
        previous = gpu.backend()
        gpu.set_backend(request.param)
        yield request.param
        gpu.set_backend(previous)
    else:
        previous = _backend["name"]
        _backend["name"] = request.param
        yield request.param
        _backend["name"] = previous


per_backend = pytest.mark.usefixtures("backend")
# The models reach the kernels through the dispatcher, which only CUDA tensors take to either backend.
models_per_backend = per_backend if ON_CUDA else (lambda test: test)


def _bags(batch: int, max_len: int, rows: int, index_dtype, generator, empty_bag: bool = True):
    lengths = torch.randint(0, max_len + 1, (batch,), generator=generator)
    if empty_bag and batch > 1:
        lengths[1] = 0
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    indices = torch.randint(0, rows, (int(offsets[-1]),), generator=generator)
    return indices.to(index_dtype), offsets.to(index_dtype)


def _close(actual, expected, dtype, scale=1.0):
    tol = TOL[dtype] * scale
    torch.testing.assert_close(actual.cpu().double(), expected.cpu().double(), atol=tol, rtol=tol)


# --- embedding_bag --------------------------------------------------------------------------------------

@per_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("dim", [1, 4, 129])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_embedding_bag_forward(dtype, mode, dim, index_dtype):
    g = torch.Generator().manual_seed(dim * 10 + mode)
    rows = 37
    weight = torch.randn(rows, dim, generator=g, dtype=torch.float64).to(dtype)
    indices, offsets = _bags(6, 9, rows, index_dtype, g)
    padding = int(indices[0]) if len(indices) else 3  # a padding row that is looked up
    psw = torch.rand(len(indices), generator=g, dtype=torch.float64) + 0.5 if mode == 0 else None
    for include_last in (False, True):
        offs = offsets if include_last else offsets[:-1]
        out, max_indices = call("embedding_bag", weight.to(DEVICE), indices.to(DEVICE), offs.to(DEVICE), mode,
                                None if psw is None else psw.to(DEVICE), padding, include_last)
        expected = R.embedding_bag_reference(weight.double(), indices, offs, mode, psw, padding, include_last)
        assert out.dtype == dtype and out.shape == expected.shape
        _close(out, expected, dtype)
        if mode == 2:
            _, cpu_max = torch.ops.mprec.embedding_bag(weight, indices, offs, mode, None, padding, include_last)
            assert torch.equal(max_indices.cpu(), cpu_max)
        else:
            assert max_indices.numel() == 0
        # Without the argmax: the same output, bit for bit, and no max_indices in any mode.
        out_alone, none = call("embedding_bag", weight.to(DEVICE), indices.to(DEVICE), offs.to(DEVICE), mode,
                               None if psw is None else psw.to(DEVICE), padding, include_last, None, False, False,
                               False)
        assert torch.equal(out_alone.cpu(), out.cpu()) and none.shape == (0, 0) and none.dtype == torch.int64


# The shapes the kernels specialise on: bags longer than a warp's 32 indices (and not a multiple of the rows
# loaded at once), rows of whole 16-byte packets or not (the CUDA kernels' two layouts), one packet or several
# a lane, one pass over the columns or several (D > 32 lanes x the values a lane holds).
@per_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim", [8, 33, 128, 256, 264, 520])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_embedding_bag_long_bags_and_wide_rows(dtype, dim, mode):
    g = torch.Generator().manual_seed(dim + mode)
    rows = 300
    weight = torch.randn(rows, dim, generator=g, dtype=torch.float64).to(dtype)
    lengths = torch.tensor([33, 0, 1, 70, 32, 31, 64, 5])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    indices = torch.randint(0, rows, (int(offsets[-1]),), generator=g)
    indices[40:45] = 7  # a padding row looked up several times, inside a bag longer than a warp
    psw = torch.rand(len(indices), generator=g, dtype=torch.float64) + 0.5 if mode == 0 else None
    out, max_indices = call("embedding_bag", weight.to(DEVICE), indices.to(DEVICE), offsets.to(DEVICE), mode,
                            None if psw is None else psw.to(DEVICE), 7, True)
    expected = R.embedding_bag_reference(weight.double(), indices, offsets, mode, psw, 7, True)
    _close(out, expected, dtype, scale=4)
    _, cpu_max = torch.ops.mprec.embedding_bag(weight, indices, offsets, mode, psw, 7, True)
    if mode == 2:
        assert torch.equal(max_indices.cpu(), cpu_max)
    grad = torch.randn(len(lengths), dim, generator=g, dtype=torch.float64).to(dtype)
    actual = call("embedding_bag_backward", grad.to(DEVICE), weight.to(DEVICE), indices.to(DEVICE),
                  offsets.to(DEVICE), max_indices, mode, None if psw is None else psw.to(DEVICE), 7, True)
    expected = torch.ops.mprec.embedding_bag_backward(grad.double(), weight.double(), indices, offsets, cpu_max, mode,
                                                      psw, 7, True)
    _close(actual, expected, dtype, scale=8)


@per_backend
def test_embedding_bag_rows_off_the_packet_alignment():
    # Rows of 4 floats (16 bytes) whose table starts 4 bytes past an aligned address: the CUDA kernels must take
    # them one value at a time, not in 16-byte loads.
    g = torch.Generator().manual_seed(5)
    storage = torch.randn(1 + 50 * 4, generator=g, dtype=torch.float64).float()
    weight = storage[1:].view(50, 4)
    indices, offsets = _bags(9, 40, 50, torch.int64, g)
    out, _ = call("embedding_bag", weight.to(DEVICE), indices.to(DEVICE), offsets.to(DEVICE), 0, None, -1, True)
    expected = R.embedding_bag_reference(weight.double(), indices, offsets, 0, None, -1, True)
    _close(out, expected, torch.float32)


@per_backend
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_embedding_bag_empty_and_zero_batch(mode):
    weight = torch.randn(5, 3).to(DEVICE)
    empty = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    out, _ = call("embedding_bag", weight, empty, empty, mode, None, -1, False)
    assert out.shape == (0, 3)
    offsets = torch.zeros(4, dtype=torch.int64, device=DEVICE)  # four empty bags
    out, max_indices = call("embedding_bag", weight, empty, offsets, mode, None, -1, False)
    assert torch.equal(out.cpu(), torch.zeros(4, 3))
    if mode == 2:
        assert torch.equal(max_indices.cpu(), torch.full((4, 3), -1))


@per_backend
def test_embedding_bag_max_ties_keep_the_first_row():
    weight = torch.tensor([[1.0, 2.0], [1.0, 5.0], [0.0, 5.0], [float("nan"), float("-inf")]])
    indices = torch.tensor([0, 1, 2, 3, 3, 0])
    offsets = torch.tensor([0, 3, 5])
    out, max_indices = call("embedding_bag", weight.to(DEVICE), indices.to(DEVICE), offsets.to(DEVICE), 2, None, -1,
                            False)
    cpu_out, cpu_max = torch.ops.mprec.embedding_bag(weight, indices, offsets, 2)
    assert torch.equal(max_indices.cpu(), cpu_max)
    torch.testing.assert_close(out.cpu(), cpu_out, equal_nan=True)
    assert cpu_max.tolist() == [[0, 1], [-1, -1], [0, 0]]


@per_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_embedding_bag_backward(dtype, mode, index_dtype):
    g = torch.Generator().manual_seed(mode + 7)
    rows, dim = 11, 6  # few rows: many lookups hit the same row and add up
    weight = torch.randn(rows, dim, generator=g, dtype=torch.float64).to(dtype)
    indices, offsets = _bags(5, 7, rows, index_dtype, g)
    psw = torch.rand(len(indices), generator=g, dtype=torch.float64) + 0.5 if mode == 0 else None
    _, max_indices = torch.ops.mprec.embedding_bag(weight, indices, offsets, mode, psw, 2, True)
    grad = torch.randn(5, dim, generator=g, dtype=torch.float64).to(dtype)
    out = call("embedding_bag_backward", grad.to(DEVICE), weight.to(DEVICE), indices.to(DEVICE), offsets.to(DEVICE),
               max_indices.to(DEVICE), mode, None if psw is None else psw.to(DEVICE), 2, True)
    expected = torch.ops.mprec.embedding_bag_backward(grad.double(), weight.double(), indices, offsets,
                                                      max_indices, mode, psw, 2, True)
    assert out.dtype == dtype and out.shape == weight.shape
    _close(out, expected, dtype, scale=4)


@per_backend
def test_embedding_bag_autograd_matches_reference():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(20, 9, generator=g, dtype=torch.float64)
    indices, offsets = _bags(4, 6, 20, torch.int64, g)
    leaf = weight.clone().to(DEVICE).requires_grad_(True)
    if ON_CUDA:
        out = mprec.ops.embedding_bag(leaf, indices.to(DEVICE), offsets.to(DEVICE), "mean")
        out.pow(2).sum().backward()
        grad = leaf.grad
    else:
        out, _ = call("embedding_bag", leaf.detach(), indices, offsets, 1)
        grad = call("embedding_bag_backward", 2 * out, leaf.detach(), indices, offsets,
                    torch.empty(0, 0, dtype=torch.int64), 1, None, -1, False)
    ref_leaf = weight.clone().requires_grad_(True)
    R.embedding_bag_reference(ref_leaf, indices, offsets, 1).pow(2).sum().backward()
    _close(grad, ref_leaf.grad, torch.float64)


# --- batched_embedding_bag ----------------------------------------------------------------------------------

@per_backend
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_batched_embedding_bag(dtype, mode, index_dtype):
    g = torch.Generator().manual_seed(mode)
    shapes = [(13, 8), (29, 1), (7, 33), (40, 16)]  # mixed widths, odd and even
    weights = [torch.randn(r, d, generator=g, dtype=torch.float64).to(dtype) for r, d in shapes]
    batch = 5
    parts, lengths = [], []
    for rows, _ in shapes:
        idx, offs = _bags(batch, 5, rows, torch.int64, g)
        parts.append(idx)
        lengths.append(offs.diff())
    indices = torch.cat(parts).to(index_dtype)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cat(lengths).cumsum(0)]).to(index_dtype)
    padding = [int(parts[0][0]), -1, -1, 0]
    psw = torch.rand(len(indices), generator=g, dtype=torch.float64) + 0.5 if mode == 0 else None
    out, max_indices = call("batched_embedding_bag", [w.to(DEVICE) for w in weights], indices.to(DEVICE),
                            offsets.to(DEVICE), mode, None if psw is None else psw.to(DEVICE), padding)
    expected = R.batched_embedding_bag_reference([w.double() for w in weights], indices, offsets, mode, psw, padding)
    _close(out, expected, dtype)
    cpu_out, cpu_max = torch.ops.mprec.batched_embedding_bag(weights, indices, offsets, mode, psw, padding)
    if mode == 2:
        assert torch.equal(max_indices.cpu(), cpu_max)
    out_alone, none = call("batched_embedding_bag", [w.to(DEVICE) for w in weights], indices.to(DEVICE),
                           offsets.to(DEVICE), mode, None if psw is None else psw.to(DEVICE), padding, None, False,
                           False)
    assert torch.equal(out_alone.cpu(), out.cpu()) and none.shape == (0, 0)
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
    grads = call("batched_embedding_bag_backward", grad.to(DEVICE), [w.to(DEVICE) for w in weights],
                 indices.to(DEVICE), offsets.to(DEVICE), max_indices, mode, None if psw is None else psw.to(DEVICE),
                 padding)
    expected_grads = torch.ops.mprec.batched_embedding_bag_backward(
        grad.double(), [w.double() for w in weights], indices, offsets, cpu_max, mode, psw, padding)
    for actual, exp, w in zip(grads, expected_grads, weights):
        assert actual.dtype == dtype and actual.shape == w.shape
        _close(actual, exp, dtype, scale=4)


# --- errors: the CPU kernels' messages --------------------------------------------------------------------

def _cpu_message(fn, *args):
    with pytest.raises((RuntimeError, ValueError)) as info:
        fn(*args)
    return str(info.value).splitlines()[0]


@per_backend
@pytest.mark.parametrize("case", ["index_high", "index_negative", "index_minus_one", "offsets_decreasing",
                                  "offsets_past_end", "offsets_start"])
def test_embedding_bag_errors_match_cpu(case):
    weight = torch.randn(10, 4)
    indices = torch.tensor([1, 2, 3, 4, 5, 6])
    offsets = torch.tensor([0, 2, 4])
    if case == "index_high":
        indices[4] = 10
    elif case == "index_negative":
        indices[3] = -2
    elif case == "index_minus_one":  # -1 is padding_idx's "none", never a row to skip
        indices[2] = -1
    elif case == "offsets_decreasing":
        offsets = torch.tensor([0, 4, 2])
    elif case == "offsets_past_end":
        offsets = torch.tensor([0, 2, 9, 9])
    else:
        offsets = torch.tensor([1, 2, 4])
    include_last = case == "offsets_past_end"
    expected = _cpu_message(torch.ops.mprec.embedding_bag, weight, indices, offsets, 0, None, -1, include_last)
    assert expected.startswith("mprec::embedding_bag: ")
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        call("embedding_bag", weight.to(DEVICE), indices.to(DEVICE), offsets.to(DEVICE), 0, None, -1, include_last)
    grad = torch.randn(len(offsets) - include_last, 4)
    expected = _cpu_message(torch.ops.mprec.embedding_bag_backward, grad, weight, indices, offsets,
                            torch.empty(0, 0, dtype=torch.int64), 0, None, -1, include_last)
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        call("embedding_bag_backward", grad.to(DEVICE), weight.to(DEVICE), indices.to(DEVICE), offsets.to(DEVICE),
             torch.empty(0, 0, dtype=torch.int64, device=DEVICE), 0, None, -1, include_last)


@per_backend
def test_batched_embedding_bag_index_error_names_the_table():
    weights = [torch.randn(10, 4), torch.randn(3, 2)]
    indices = torch.tensor([1, 9, 2, 0, 3])  # table 1 has 3 rows: index 3 at position 4
    offsets = torch.tensor([0, 1, 2, 4, 5])
    expected = _cpu_message(torch.ops.mprec.batched_embedding_bag, weights, indices, offsets)
    assert "table 1 with 3 rows" in expected
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        call("batched_embedding_bag", [w.to(DEVICE) for w in weights], indices.to(DEVICE), offsets.to(DEVICE), 0,
             None, [])


@per_backend
def test_max_backward_bad_max_indices_match_cpu():
    weight = torch.randn(6, 3)
    indices, offsets = torch.tensor([0, 1, 2]), torch.tensor([0, 2])
    grad = torch.randn(2, 3)
    max_indices = torch.tensor([[0, 1, 1], [2, 6, 2]])
    expected = _cpu_message(torch.ops.mprec.embedding_bag_backward, grad, weight, indices, offsets, max_indices, 2,
                            None, -1, False)
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        call("embedding_bag_backward", grad.to(DEVICE), weight.to(DEVICE), indices.to(DEVICE), offsets.to(DEVICE),
             max_indices.to(DEVICE), 2, None, -1, False)


ARGUMENT_ERRORS = {
    "offsets_dtype": lambda w, i: ("embedding_bag", (w, i, torch.tensor([0], dtype=torch.int32), 0, None, -1, False)),
    "psw_mode": lambda w, i: ("embedding_bag", (w, i, torch.tensor([0]), 1, torch.ones(2), -1, False)),
    "padding": lambda w, i: ("embedding_bag", (w, i, torch.tensor([0]), 0, None, 7, False)),
    "mode": lambda w, i: ("embedding_bag", (w, i, torch.tensor([0]), 3, None, -1, False)),
    "scale_grad_max": lambda w, i: ("embedding_bag", (w, i, torch.tensor([0]), 2, None, -1, False, None, False, True)),
    "weight_dim": lambda w, i: ("embedding_bag", (w[0], i, torch.tensor([0]), 0, None, -1, False)),
    "weight_dtype": lambda w, i: ("embedding_bag", (w.int(), i, torch.tensor([0]), 0, None, -1, False)),
    "indices_2d": lambda w, i: ("embedding_bag", (w, i.view(1, 2), torch.tensor([0]), 0, None, -1, False)),
    "table_dtypes": lambda w, i: ("batched_embedding_bag", ([w, w.double()], i, torch.tensor([0, 1, 2]), 0, None, [])),
    "tbe_offsets": lambda w, i: ("batched_embedding_bag", ([w, w], i, torch.tensor([0, 1]), 0, None, [])),
    "padding_count": lambda w, i: ("batched_embedding_bag", ([w, w], i, torch.tensor([0, 1, 2]), 0, None, [1])),
    "grad_shape": lambda w, i: ("embedding_bag_backward", (torch.ones(3, 2), w, i, torch.tensor([0]),
                                                           torch.empty(0, 0, dtype=torch.int64), 0, None, -1, False)),
}


def _to(value):
    if isinstance(value, torch.Tensor):
        return value.to(DEVICE)
    if isinstance(value, list):
        return [_to(v) for v in value]
    return value


@per_backend
@pytest.mark.parametrize("case", sorted(ARGUMENT_ERRORS))
def test_argument_errors_match_cpu(case):
    name, args = ARGUMENT_ERRORS[case](torch.randn(5, 2), torch.tensor([0, 1]))
    expected = _cpu_message(getattr(torch.ops.mprec, name), *args)
    assert expected.startswith(f"mprec::{name}: ")
    with pytest.raises(ValueError, match=re.escape(expected)):
        call(name, *[_to(a) for a in args])


@per_backend
def test_quantized_tables_are_refused_with_a_clear_error():
    q, sb = mprec.ops.quantize_rowwise_int8(torch.randn(5, 2))
    with pytest.raises(ValueError, match=r"mprec::embedding_bag: weight is uint8 \(row-wise quantized\); quantized "
                                         r"tables are pooled on the CPU only"):
        call("embedding_bag", q.to(DEVICE), torch.tensor([0]).to(DEVICE), torch.tensor([0]).to(DEVICE), 0, None, -1,
             False, sb.to(DEVICE))


# --- DHE ----------------------------------------------------------------------------------------------------

def _hash(k, m=1000, seed=0):
    a, b, p = mprec.ops.dhe_hash_parameters(k, m, seed)
    return a, b, p, m


@pytest.mark.parametrize("transform", ["uniform", "gaussian"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_dhe_encode(transform, index_dtype):
    a, b, p, m = _hash(70)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 2**31 - 1, (5, 7), generator=g).to(index_dtype)
    out = call("dhe_encode", ids.to(DEVICE), a.to(DEVICE), b.to(DEVICE), p, m, transform)
    assert out.shape == (5, 7, 70) and out.dtype == torch.float32
    expected = R.dhe_encode_reference(ids, a, b, p, m, transform)
    # Box-Muller's log near u = 1 loses float32 digits the uniform transform keeps.
    _close(out, expected, torch.float32, scale=1 if transform == "uniform" else 20)


def test_dhe_encode_large_ids_and_prime():
    # The largest prime the ops accept and ids near 2^62: the int64 products must not overflow.
    from mprec.ops.dhe import MAX_PRIME, is_prime
    p = next(n for n in range(MAX_PRIME, 0, -1) if is_prime(n))
    m = p - 1
    a = torch.tensor([p - 1, 1, 123456789, p - 2])
    b = torch.tensor([p - 1, 0, 987654321, 5])
    ids = torch.tensor([2**62 + 12345, p - 1, 0, 2**31 - 1])
    out = call("dhe_encode", ids.to(DEVICE), a.to(DEVICE), b.to(DEVICE), p, m, "uniform")
    _close(out, R.dhe_encode_reference(ids, a, b, p, m), torch.float32)


@pytest.mark.parametrize("m", [2, 1000, 999_983, 2**31 - 2, "largest"])
def test_dhe_hashes_are_exact(m):
    # The kernels reduce modulo p and m through float64 reciprocals; the hashes must still be exact integers,
    # which the encodings (float32) could not show for large m.
    from mprec.kernels import dhe as kernels
    from mprec.ops.dhe import MAX_PRIME, is_prime

    if m == "largest":
        p = next(n for n in range(MAX_PRIME, 0, -1) if is_prime(n))
        m = p - 1
    else:
        p = mprec.ops.next_prime(m)
    g = torch.Generator().manual_seed(m % 1000)
    k = 64
    a = torch.randint(1, p, (k,), generator=g)
    b = torch.randint(0, p, (k,), generator=g)
    a[:2], b[:2] = p - 1, p - 1  # the largest products and sums
    a[2], b[2] = 1, 0
    ids = torch.cat([torch.randint(0, 2**62, (40,), generator=g), torch.tensor([0, 1, p - 1, p, p + 1, 2**63 - 1]),
                     torch.arange(p - 3, p + 3) * (2**40 // p)])
    error = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    hashes = kernels.encode(ids.to(DEVICE), a.to(DEVICE), b.to(DEVICE), p, m, False, error, raw=True)
    assert error.item() == 0
    assert torch.equal(hashes.cpu(), R.dhe_hash_reference(ids, a, b, p, m))


@pytest.mark.parametrize("transform", ["uniform", "gaussian"])
@pytest.mark.parametrize("activation", ["none", "relu", "mish"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_dhe_encode_linear(transform, activation, dtype, with_bias):
    k, hidden = 96, 40  # k spans one and a half blocks of the K loop; hidden is not a power of two
    a, b, p, m = _hash(k, m=100_003)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 10**12, (3, 23), generator=g)
    weight = (torch.randn(hidden, k, generator=g, dtype=torch.float64) / k**0.5).to(dtype)
    bias = torch.randn(hidden, generator=g, dtype=torch.float64).to(dtype) if with_bias else None
    out = call("dhe_encode_linear", ids.to(DEVICE), a.to(DEVICE), b.to(DEVICE), p, m, transform, weight.to(DEVICE),
               None if bias is None else bias.to(DEVICE), activation)
    assert out.shape == (3, 23, hidden) and out.dtype == dtype
    expected = R.dhe_encode_linear_reference(ids, a, b, p, m, transform, weight, bias, activation)
    scale = {torch.float32: 20, torch.bfloat16: 1, torch.float64: 1}[dtype]  # float32: k products summed
    _close(out, expected, dtype, scale=scale if transform == "uniform" else scale * 20)
    if dtype == torch.bfloat16 and not ON_CUDA and activation != "mish":
        # bfloat16 encodings and weights, float32 products and sums, one rounding at the end: bit for bit
        # what the CPU kernel computes (mish differs in its last bit: a different tanh).
        cpu = torch.ops.mprec.dhe_encode_linear(ids, a, b, p, m, transform, weight, bias, activation)
        torch.testing.assert_close(out, cpu, atol=0, rtol=0)


def test_dhe_errors_match_cpu():
    a, b, p, m = _hash(8)
    weight = torch.randn(4, 8)
    ids = torch.tensor([3, 5, -7, -1])
    expected = _cpu_message(torch.ops.mprec.dhe_encode_linear, ids, a, b, p, m, "uniform", weight, None, "none")
    assert "ids[2] = -7 is negative" in expected
    with pytest.raises(ValueError, match=re.escape(expected)):
        call("dhe_encode_linear", ids.to(DEVICE), a.to(DEVICE), b.to(DEVICE), p, m, "uniform", weight.to(DEVICE),
             None, "none")
    with pytest.raises(ValueError, match=re.escape(_cpu_message(torch.ops.mprec.dhe_encode, ids, a, b, p, m))):
        call("dhe_encode", ids.to(DEVICE), a.to(DEVICE), b.to(DEVICE), p, m, "uniform")
    bad_a = a.clone()
    bad_a[5] = p
    expected = _cpu_message(torch.ops.mprec.dhe_encode, ids.abs(), bad_a, b, p, m)
    assert "hash_a[5]" in expected
    with pytest.raises(ValueError, match=re.escape(expected)):
        call("dhe_encode", ids.abs().to(DEVICE), bad_a.to(DEVICE), b.to(DEVICE), p, m, "uniform")
    with pytest.raises(ValueError, match=r"mprec::dhe_encode_linear: activation must be"):
        call("dhe_encode_linear", ids.abs().to(DEVICE), a.to(DEVICE), b.to(DEVICE), p, m, "uniform",
             weight.to(DEVICE), None, "gelu")


# --- launch shapes (benchmarks try others than the launchers' own) ----------------------------------------------

@pytest.mark.parametrize("blocks", [(1, 1, 1), (4, 2, 1), (8, 32, 2), (256, 4, 8)])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_embedding_bag_launch_shapes_agree(blocks, mode):
    from mprec.kernels import embedding_bag as triton_eb

    g = torch.Generator().manual_seed(7)
    weight = torch.randn(29, 6, generator=g)  # 6 columns: narrower and wider than the blocks tried
    indices, offsets = _bags(7, 9, 29, torch.int64, g)
    tables = triton_eb.table_args([weight.to(DEVICE)], [-1])
    error = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    # B + 1 offsets: the last one ends the last bag.
    out, arg = triton_eb.pool(tables, indices.to(DEVICE), offsets.to(DEVICE), 7, mode, None, error, blocks)
    expected = R.embedding_bag_reference(weight.double(), indices, offsets, mode, include_last_offset=True)
    assert error.item() == 0
    _close(out, expected, torch.float32)
    if mode == 2:
        _, cpu_arg = torch.ops.mprec.embedding_bag(weight, indices, offsets, mode, None, -1, True)
        assert torch.equal(arg.cpu(), cpu_arg)


@pytest.mark.parametrize("blocks", [(16, 16, 16, 1, 1), (32, 64, 32, 4, 2)])
def test_dhe_encode_linear_launch_shapes_agree(blocks):
    from mprec.kernels import dhe as triton_dhe

    k, hidden = 96, 40
    a, b, p, m = _hash(k, m=100_003)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 10**12, (37,), generator=g)
    weight = torch.randn(hidden, k, generator=g) / k**0.5
    error = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    out = triton_dhe.encode_linear(ids.to(DEVICE), a.to(DEVICE), b.to(DEVICE), p, m, False, weight.to(DEVICE), None,
                                   "relu", error, blocks)
    expected = R.dhe_encode_linear_reference(ids, a, b, p, m, "uniform", weight.double(), None, "relu")
    assert error.item() == 0
    _close(out, expected, torch.float32, scale=20)


def test_launch_shapes_are_checked():
    from mprec.kernels import dhe as triton_dhe
    from mprec.kernels import embedding_bag as triton_eb

    tables = triton_eb.table_args([torch.randn(4, 3, device=DEVICE)], [-1])
    error = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    ids = torch.tensor([0, 1], device=DEVICE)
    for blocks in [(128, 3, 4), (128, 8), (0, 8, 4)]:
        with pytest.raises(ValueError, match=re.escape(f"blocks must be three powers of two (BLOCK_D, BLOCK_L, "
                                                       f"num_warps), got {blocks}")):
            triton_eb.pool(tables, ids, ids, 2, 0, None, error, blocks)
    a, b, p, m = _hash(32)
    for blocks in [(8, 16, 16, 4, 2), (16, 16, 16, 3, 2), (16, 16, 16, 4, 0), (16, 16, 16, 4)]:
        with pytest.raises(ValueError, match=re.escape(f"the blocks at least 16, and stages >= 1; got {blocks}")):
            triton_dhe.encode_linear(ids, a.to(DEVICE), b.to(DEVICE), p, m, False, torch.randn(16, 32, device=DEVICE),
                                     None, "none", error, blocks)


# --- registration ---------------------------------------------------------------------------------------

def test_every_op_a_model_runs_has_a_cuda_kernel():
    # Registering a CUDA kernel needs no GPU: this holds on every machine with triton installed.
    for name in ("embedding_bag", "embedding_bag_backward", "batched_embedding_bag", "batched_embedding_bag_backward",
                 "embedding_bag_sparse_backward", "batched_embedding_bag_update", "dhe_encode", "dhe_encode_linear",
                 "dhe_encode_linear_backward", "rowwise_linear", "dlrm_interaction", "dlrm_interaction_backward",
                 "dot_interaction", "dot_interaction_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mprec::{name}", "CUDA"), name


def test_backend_selection():
    assert gpu.backend() in gpu.BACKENDS
    with pytest.raises(ValueError, match="GPU backend must be one of"):
        gpu.set_backend("opencl")
    if not gpu.cuda_kernels_built():
        with pytest.raises(RuntimeError, match="CUDA C.. kernels are not built"):
            gpu.set_backend("cuda")
    previous = gpu.backend()
    gpu.set_backend("triton")
    assert gpu.backend() == "triton"
    gpu.set_backend(previous)


@pytest.mark.skipif(not gpu.cuda_kernels_built(), reason="the CUDA C++ kernels are not built")
def test_switching_backends_warns_nothing():
    # Triton's kernels replace the C++ ones on purpose; the dispatcher's override warning must not reach users,
    # at import (the default backend) or at a switch. A fresh interpreter: the warning is issued once a process.
    import subprocess
    import sys

    code = "\n".join([
        "import json, warnings",
        "with warnings.catch_warnings(record=True) as caught:",
        "    warnings.simplefilter('always')",
        "    import mprec.ops.gpu as g",
        "    g.set_backend('cuda'); g.set_backend('triton'); g.set_backend('cuda')",
        "print(json.dumps([g.backend()] + [str(w.message) for w in caught]))"])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    backend, *messages = json.loads(done.stdout.strip().splitlines()[-1])
    assert backend == "cuda"
    assert not [m for m in messages if "registered kernel" in m], messages


# --- models on CUDA (a GPU only) --------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")


@needs_cuda
@models_per_backend
@pytest.mark.parametrize("representation", ["table", "dhe", "hybrid"])
def test_dlrm_on_cuda_matches_cpu(representation):
    from mprec.models import DLRM

    sizes = [50, 7, 300, 20]
    torch.manual_seed(0)
    model = DLRM.preset("kaggle", sizes, representations=[representation] * len(sizes),
                        dhe=dict(k=64, m=1009, decoder=(32,))).eval()
    g = torch.Generator().manual_seed(1)
    batch = 33
    dense = torch.randn(batch, 13, generator=g)
    indices = torch.cat([torch.randint(0, n, (batch,), generator=g) for n in sizes])
    offsets = torch.arange(0, indices.numel() + 1)
    with torch.no_grad():
        expected = model(dense, indices, offsets)
        out = model.to("cuda")(dense.cuda(), indices.cuda(), offsets.cuda())
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)
    # Training runs on CUDA too: every parameter gets a gradient.
    model.train()
    model(dense.cuda(), indices.cuda(), offsets.cuda()).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@needs_cuda
@models_per_backend
def test_compile_fullgraph_on_cuda():
    from mprec.nn import EmbeddingBagCollection

    layer = EmbeddingBagCollection([40, 25], 8).cuda()
    indices = torch.tensor([1, 5, 39, 0, 24, 3], device="cuda")
    offsets = torch.tensor([0, 2, 3, 5, 6], device="cuda")
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(indices, offsets), layer(indices, offsets))

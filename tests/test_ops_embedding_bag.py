"""mprec::embedding_bag and mprec::batched_embedding_bag forward, against the float64 reference."""

import functools
import os

import pytest
import torch

import reference
from hypothesis import given, settings
from hypothesis import strategies as st

import mprec
from reference import batched_embedding_bag_reference, embedding_bag_reference
from conftest import DIMS, INDEX_DTYPES, TOLERANCE, WEIGHT_DTYPES, make_bags, make_weight, offsets_for

# (mode, weighted): per_sample_weights exist only for sum.
MODE_CASES = [("sum", False), ("sum", True), ("mean", False), ("max", False)]


def tolerance(dtype, mode):
    if mode == "max" and dtype != torch.uint8:
        return dict(rtol=0, atol=0)  # max selects a stored value: exact in every float dtype
    return TOLERANCE[dtype]


def run_case(weight_dtype, index_dtype, mode, weighted, include_last_offset, padding, dim, num_bags=23, max_len=9,
             num_rows=97, bags=None):
    """One call against the reference; `bags(num_bags, num_rows, index_dtype, padding_idx)` makes the (indices,
    B + 1 offsets) in place of make_bags' random jagged ones."""
    padding_idx = 5 if padding else None
    weight, scale_bias, weight64 = make_weight(num_rows, dim, weight_dtype)
    if bags is None:
        indices, offsets = make_bags(num_bags, max_len, num_rows, index_dtype, padding_idx=padding_idx)
    else:
        indices, offsets = bags(num_bags, num_rows, index_dtype, padding_idx)
    psw = torch.randn(indices.numel()) if weighted else None
    offs = offsets_for(offsets, include_last_offset)
    out = mprec.ops.embedding_bag(weight, indices, offs, mode, psw, padding_idx, include_last_offset, scale_bias)
    expected = embedding_bag_reference(weight64, indices, offs, mode, None if psw is None else psw.double(),
                                       -1 if padding_idx is None else padding_idx, include_last_offset)
    assert out.shape == (num_bags, dim)
    assert out.dtype == (torch.float32 if weight_dtype == torch.uint8 else weight_dtype)
    torch.testing.assert_close(out.double(), expected, **tolerance(weight_dtype, mode))
    return out


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("include_last_offset", [False, True], ids=["B", "B+1"])
@pytest.mark.parametrize("mode,weighted", MODE_CASES, ids=["sum", "weighted", "mean", "max"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=["i32", "i64"])
@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES, ids=["f32", "f16", "bf16", "u8"])
def test_forward_matches_reference(isa, table_prefetch, weight_dtype, index_dtype, mode, weighted, include_last_offset,
                                   padding, dim):
    run_case(weight_dtype, index_dtype, mode, weighted, include_last_offset, padding, dim)


@pytest.mark.parametrize("mode,weighted", MODE_CASES, ids=["sum", "weighted", "mean", "max"])
@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES, ids=["f32", "f16", "bf16", "u8"])
def test_forward_of_rows_too_wide_to_prefetch_whole(isa, weight_dtype, mode, weighted):
    """Rows of over 2 KiB in every dtype: the kernels prefetch each pass's slice of them, not the whole row."""
    run_case(weight_dtype, torch.int64, mode, weighted, False, True, 2100)


@pytest.mark.parametrize("dim", [17, 20, 24, 31, 32, 40, 48, 56, 63, 64, 72, 80, 100, 112, 120, 127, 128, 200, 256,
                                 512])
@pytest.mark.parametrize("mode,weighted", MODE_CASES, ids=["sum", "weighted", "mean", "max"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=["i32", "i64"])
def test_forward_of_bf16_rows_in_pairs(isa, table_prefetch, index_dtype, mode, weighted, dim):
    """bf16 rows of one pass (D=17 to D=128) or several, whole or with a partial last pass, over bags of up to 40
    lookups, whose whole passes AVX2 pools two vectors a load (the even and odd elements apart, put back in order at
    the end, the last pairs in a second loop over the rows): in every pass of several, in a pass of D=128 where the
    bags' rows are not prefetched in bursts; and both kernel sets in a pass of one from a table that stays in the
    cache, D=32 to D=128; and rows of one pass from such a table that are not whole pairs, their last elements a
    vector of their own (AVX-512's D=40, 48, 80, 100, 112; AVX2's D=40, 56, 72, 100, 120) or a pair of their own,
    overlapping the pair before (AVX2's D=31, 63, 127; AVX-512's D=63, 120, 127) or masked (AVX-512's D=17 to D=31);
    AVX2's D=120 and D=127 have pairs past the first loop's."""
    run_case(torch.bfloat16, index_dtype, mode, weighted, False, True, dim, max_len=40)


ONE_HOT_SHAPES = ["one-hot", "last bag of two", "one bag empty"]


def one_hot_bags(num_bags, num_rows, index_dtype, padding_idx, shape="one-hot", generator=None):
    """One lookup per bag (about one in seven the padding id), or all but one bag so: (indices, B + 1 offsets)."""
    sizes = torch.ones(num_bags, dtype=torch.int64)
    if shape == "last bag of two":
        sizes[-1] = 2
    elif shape == "one bag empty":
        sizes[num_bags // 2] = 0
    indices = torch.randint(0, num_rows, (int(sizes.sum()),), generator=generator)
    indices[::7] = padding_idx
    offsets = torch.zeros(num_bags + 1, dtype=torch.int64)
    offsets[1:] = sizes.cumsum(0)
    return indices.to(index_dtype), offsets.to(index_dtype)


@pytest.mark.parametrize("shape", ONE_HOT_SHAPES)
@pytest.mark.parametrize("dim", [1, 100])
@pytest.mark.parametrize("include_last_offset", [False, True], ids=["B", "B+1"])
@pytest.mark.parametrize("mode,weighted", MODE_CASES, ids=["sum", "weighted", "mean", "max"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=["i32", "i64"])
@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES, ids=["f32", "f16", "bf16", "u8"])
def test_bags_of_one_lookup(isa, weight_dtype, index_dtype, mode, weighted, include_last_offset, dim, shape):
    """A table of one-hot features (every bag one lookup) takes a loop of its own in the kernels, which reads no
    offsets per bag; bags that are one-hot but for one take the general loop. Enough bags that the threads split
    them, so a thread's range starts past the first bag."""
    g = torch.Generator().manual_seed(dim)
    run_case(weight_dtype, index_dtype, mode, weighted, include_last_offset, True, dim, num_bags=5000,
             bags=functools.partial(one_hot_bags, shape=shape, generator=g))


@pytest.mark.parametrize("mode,weighted", MODE_CASES, ids=["sum", "weighted", "mean", "max"])
def test_batched_tables_of_one_lookup(isa, mode, weighted):
    """One-hot tables in the batched op: every table's bags start past the previous table's lookups."""
    g = torch.Generator().manual_seed(3)
    dims, rows, num_bags = [16, 5, 64], [50, 7, 300], 700
    weights = [torch.randn(r, d, generator=g) for r, d in zip(rows, dims)]
    indices = torch.cat([one_hot_bags(num_bags, r, torch.int64, r - 1, generator=g)[0] for r in rows])
    offsets = torch.arange(len(rows) * num_bags + 1)
    psw = torch.randn(indices.numel(), generator=g) if weighted else None
    pads = [r - 1 for r in rows]
    out = mprec.ops.batched_embedding_bag(weights, indices, offsets, mode, psw, pads)
    expected = batched_embedding_bag_reference([w.double() for w in weights], indices, offsets, mode,
                                               None if psw is None else psw.double(), pads)
    torch.testing.assert_close(out.double(), expected, **tolerance(torch.float32, mode))


@pytest.mark.parametrize("dim", [2, 5, 6, 7, 8, 12, 16, 20, 24])
@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("mode,weighted", MODE_CASES, ids=["sum", "weighted", "mean", "max"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=["i32", "i64"])
@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES, ids=["f32", "f16", "bf16", "u8"])
def test_narrow_rows_of_tables_in_the_cache(isa, table_prefetch, weight_dtype, index_dtype, mode, weighted, padding,
                                            dim):
    """Narrow rows: those of a table that stays in the cache pool a bag's even and odd lookups into two sets of
    accumulators, whole blocks and partial ones; partial ones load their last vector whole or (fewer elements than a
    vector) masked, an odd count of 16-bit elements and every count of bytes too; bags of every length up to 9,
    padding_idx at even and odd positions."""
    run_case(weight_dtype, index_dtype, mode, weighted, False, padding, dim, num_bags=60)


def test_an_id_out_of_range_in_a_one_hot_table_is_named_with_its_position():
    weight = torch.randn(10, 16)
    indices = torch.arange(100) % 10
    indices[63] = 10
    with pytest.raises(RuntimeError, match=r"mprec::embedding_bag: index 10 at position 63 is out of range"):
        mprec.ops.embedding_bag(weight, indices, torch.arange(100), "sum")


@pytest.mark.parametrize("mode,weighted", MODE_CASES, ids=["sum", "weighted", "mean", "max"])
@pytest.mark.parametrize("dim", [1, 129])
def test_float64_forward_is_exact_reference(mode, weighted, dim):
    run_case(torch.float64, torch.int64, mode, weighted, False, True, dim)


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_matches_torch_embedding_bag(isa, weight_dtype, mode):
    weight = torch.randn(50, 37).to(weight_dtype)
    indices, offsets = make_bags(31, 7, 50, padding_idx=3)
    offsets = offsets[:-1]
    ours = mprec.ops.embedding_bag(weight, indices, offsets, mode, padding_idx=3)
    theirs = torch.nn.functional.embedding_bag(indices, weight, offsets, mode=mode, padding_idx=3)
    tol = dict(rtol=0, atol=0) if mode == "max" else TOLERANCE[weight_dtype]
    torch.testing.assert_close(ours.double(), theirs.double(), **tol)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES, ids=["f32", "f16", "bf16", "u8"])
def test_zero_bags(isa, weight_dtype, mode):
    weight, scale_bias, _ = make_weight(10, 16, weight_dtype)
    indices = torch.tensor([1, 2, 3])
    out = mprec.ops.embedding_bag(weight, indices, torch.zeros(0, dtype=torch.int64), mode, scale_bias=scale_bias)
    assert out.shape == (0, 16)
    out = mprec.ops.embedding_bag(weight, indices, torch.zeros(1, dtype=torch.int64), mode, scale_bias=scale_bias,
                                  include_last_offset=True)
    assert out.shape == (0, 16)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES, ids=["f32", "f16", "bf16", "u8"])
def test_all_bags_empty_or_padding_give_zeros(isa, weight_dtype, mode):
    weight, scale_bias, _ = make_weight(10, 21, weight_dtype)
    # Bags: empty, empty, padding only, then one real bag.
    indices = torch.tensor([4, 4, 7])
    offsets = torch.tensor([0, 0, 0, 2])
    out = mprec.ops.embedding_bag(weight, indices, offsets, mode, padding_idx=4, scale_bias=scale_bias)
    assert torch.count_nonzero(out[:3]) == 0
    assert torch.count_nonzero(out[3]) > 0


def test_include_last_offset_ignores_lookups_past_the_last_offset(isa):
    weight = torch.randn(20, 8)
    indices = torch.tensor([1, 2, 3, 4, 5])
    out = mprec.ops.embedding_bag(weight, indices, torch.tensor([0, 2, 3]), "sum", include_last_offset=True)
    torch.testing.assert_close(out, torch.stack([weight[1] + weight[2], weight[3]]))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_large_bags_and_wide_rows(isa, table_prefetch, mode):
    # Bags longer than the prefetch distance, rows wider than one register block (128 fp32 lanes).
    run_case(torch.float32, torch.int64, mode, False, True, True, 300, num_bags=7, max_len=200, num_rows=1000)


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16, torch.uint8], ids=["f32", "bf16", "u8"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_same_result_with_one_and_two_threads(isa, num_threads, weight_dtype, mode):
    weight, scale_bias, _ = make_weight(500, 70, weight_dtype)
    indices, offsets = make_bags(300, 30, 500)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append(mprec.ops.embedding_bag(weight, indices, offsets[:-1], mode, scale_bias=scale_bias))
    assert torch.equal(results[0], results[1])


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 12), min_size=0, max_size=20),
       dim=st.integers(1, 40),
       mode=st.sampled_from(["sum", "mean", "max"]),
       include_last_offset=st.booleans(),
       index_dtype=st.sampled_from(INDEX_DTYPES),
       seed=st.integers(0, 2**31 - 1))
def test_jagged_offsets_hypothesis(lengths, dim, mode, include_last_offset, index_dtype, seed):
    g = torch.Generator().manual_seed(seed)
    num_rows = 30
    weight = torch.randn(num_rows, dim, generator=g)
    offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    indices = torch.randint(0, num_rows, (int(offsets[-1]),), generator=g)
    if not include_last_offset:
        if len(lengths) == 0:
            offsets = offsets[:0]
            indices = indices[:0]
        else:
            offsets = offsets[:-1]
    indices, offsets = indices.to(index_dtype), offsets.to(index_dtype)
    out = mprec.ops.embedding_bag(weight, indices, offsets, mode, include_last_offset=include_last_offset)
    expected = embedding_bag_reference(weight.double(), indices, offsets, mode,
                                       include_last_offset=include_last_offset)
    torch.testing.assert_close(out.double(), expected, **tolerance(torch.float32, mode))


# --- batched -----------------------------------------------------------------------------------------

def make_batched(num_tables, num_bags, dims, rows, weight_dtype, index_dtype, padding=False, max_len=8):
    weights, scale_biases, weights64, pads = [], [], [], []
    all_indices, lengths = [], []
    for t in range(num_tables):
        w, sb, w64 = make_weight(rows[t], dims[t], weight_dtype)
        weights.append(w); scale_biases.append(sb); weights64.append(w64)
        pad = (t + 2) % rows[t] if padding else -1
        pads.append(pad)
        idx, off = make_bags(num_bags, max_len, rows[t], torch.int64, padding_idx=pad if padding else None)
        all_indices.append(idx)
        lengths.append(off[1:] - off[:-1])
    indices = torch.cat(all_indices).to(index_dtype)
    offsets = torch.zeros(num_tables * num_bags + 1, dtype=torch.int64)
    offsets[1:] = torch.cat(lengths).cumsum(0)
    return weights, scale_biases, weights64, pads, indices, offsets.to(index_dtype)


@pytest.mark.parametrize("padding", [False, True], ids=["nopad", "pad"])
@pytest.mark.parametrize("mode,weighted", MODE_CASES, ids=["sum", "weighted", "mean", "max"])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES, ids=["i32", "i64"])
@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES, ids=["f32", "f16", "bf16", "u8"])
def test_batched_matches_reference(isa, weight_dtype, index_dtype, mode, weighted, padding):
    dims, rows = [1, 16, 129, 3, 64], [40, 7, 300, 25, 11]
    weights, sbs, w64, pads, indices, offsets = make_batched(5, 13, dims, rows, weight_dtype, index_dtype, padding)
    psw = torch.randn(indices.numel()) if weighted else None
    out = mprec.ops.batched_embedding_bag(weights, indices, offsets, mode, psw,
                                          pads if padding else None,
                                          sbs if weight_dtype == torch.uint8 else None)
    expected = batched_embedding_bag_reference(w64, indices, offsets, mode,
                                               None if psw is None else psw.double(), pads if padding else ())
    assert out.shape == (13, sum(dims))
    torch.testing.assert_close(out.double(), expected, **tolerance(weight_dtype, mode))


def test_batched_equals_single_calls(isa):
    dims, rows = [16, 32, 8], [100, 50, 70]
    weights, _, _, _, indices, offsets = make_batched(3, 40, dims, rows, torch.float32, torch.int64)
    out = mprec.ops.batched_embedding_bag(weights, indices, offsets, "sum")
    cols = 0
    for t, w in enumerate(weights):
        # The single op wants offsets from 0: give it this table's slice of indices.
        start, stop = int(offsets[t * 40]), int(offsets[(t + 1) * 40])
        single = mprec.ops.embedding_bag(w, indices[start:stop], offsets[t * 40 : (t + 1) * 40 + 1] - start, "sum",
                                         include_last_offset=True)
        assert torch.equal(out[:, cols : cols + dims[t]], single)
        cols += dims[t]


def test_batched_zero_bags(isa):
    weights = [torch.randn(10, 4), torch.randn(5, 3)]
    out = mprec.ops.batched_embedding_bag(weights, torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    assert out.shape == (0, 7)


# --- row-wise int8 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dim", DIMS)
def test_quantize_rowwise_int8_matches_reference(dim):
    weight = torch.randn(64, dim) * torch.rand(64, 1) * 10
    weight[3] = 1.5  # a constant row: scale 0, exact
    q, sb = mprec.ops.quantize_rowwise_int8(weight)
    q_ref, sb_ref = reference.quantize_rowwise_int8_reference(weight)
    assert q.dtype == torch.uint8 and sb.dtype == torch.float32
    assert torch.equal(q, q_ref)
    assert torch.equal(sb, sb_ref)
    restored = mprec.ops.dequantize_rowwise_int8(q, sb)
    err = (restored - weight).abs()
    # Half a quantization step, plus float32 rounding of q * scale + bias (a few ulps of the row's magnitude).
    slack = 4 * torch.finfo(torch.float32).eps * weight.abs().amax(dim=1, keepdim=True)
    assert bool((err <= sb[:, :1] / 2 + slack).all())
    assert torch.equal(restored[3], weight[3])


def _bits(t):
    """The tensor's bits as integers of its width: equal only where every value is, signed zeros and NaNs too."""
    return t.view({torch.float64: torch.int64, torch.float32: torch.int32}.get(t.dtype, torch.int16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [5, 16, 128, 129, 256])
def test_max_keeps_the_first_strictly_greater_row(isa, table_prefetch, dim, dtype):
    """Max mode's value and argmax on rows full of ties, signed zeros, -inf and NaN: a row takes a lane only when
    strictly greater than every row before it (so ties keep the first, -0.0 before +0.0 stays -0.0, NaN never
    wins, and a lane no row exceeds -inf keeps -inf and -1), bit for bit on every kernel variant. Widths of one
    pass and of several, whole and partial."""
    g = torch.Generator().manual_seed(dim)
    palette = torch.tensor([float("-inf"), -1.0, -0.0, 0.0, 1.0, float("nan")], dtype=dtype)
    weight = palette[torch.randint(0, len(palette), (40, dim), generator=g)]
    weight[7] = float("-inf")
    weight[8] = float("nan")
    indices, offsets = make_bags(37, 9, 40, torch.int64, padding_idx=3)
    indices[offsets[5]:offsets[6]] = torch.tensor([7, 8, 7])[torch.arange(int(offsets[6] - offsets[5])) % 3]
    out, max_indices = torch.ops.mprec.embedding_bag(weight, indices, offsets, 2, None, 3, False, None, False, False)
    bounds = offsets.tolist() + [indices.numel()]
    expected = torch.zeros(len(offsets), dim, dtype=dtype)
    expected_arg = torch.full((len(offsets), dim), -1, dtype=torch.int64)
    for b in range(len(offsets)):
        rows = [r for r in indices[bounds[b]:bounds[b + 1]].tolist() if r != 3]
        for d in range(dim):
            best, arg = float("-inf"), -1
            for r in rows:
                if weight[r, d] > best:
                    best, arg = float(weight[r, d]), r
            expected[b, d] = best if rows else 0.0
            if best == 0.0 and arg >= 0:
                expected[b, d] = weight[arg, d]  # the sign of the zero that won
            expected_arg[b, d] = arg
    assert torch.equal(max_indices, expected_arg)
    assert torch.equal(_bits(out), _bits(expected))


@pytest.mark.parametrize("dim", [1, 16, 64, 128, 129, 256])
@pytest.mark.parametrize("weight_dtype", WEIGHT_DTYPES + [torch.float64], ids=["f32", "f16", "bf16", "u8", "f64"])
def test_max_without_the_argmax(isa, table_prefetch, weight_dtype, dim):
    """return_max_indices=False: max mode's output bit for bit as with the argmax, on every kernel variant (the
    argmax tracked in the pass, found by a walk after it, rows of one pass and of several), one table and several,
    and max_indices [0, 0]. The argmax it skips is the one that selects the output's values."""
    index_dtype = torch.int32 if dim % 2 else torch.int64
    weight, scale_bias, weight64 = make_weight(97, dim, weight_dtype)
    indices, offsets = make_bags(23, 9, 97, index_dtype, padding_idx=5)
    offs = offsets[:-1]
    out, max_indices = torch.ops.mprec.embedding_bag(weight, indices, offs, 2, None, 5, False, scale_bias)
    alone, none = torch.ops.mprec.embedding_bag(weight, indices, offs, 2, None, 5, False, scale_bias, False, False,
                                                False)
    assert torch.equal(_bits(alone), _bits(out))
    assert none.shape == (0, 0) and none.dtype == torch.int64
    picked = weight64[max_indices.clamp(min=0), torch.arange(dim)]
    torch.testing.assert_close(out.double(), torch.where(max_indices >= 0, picked, 0.0),
                               **tolerance(weight_dtype, "max"))

    other, other_sb, _ = make_weight(31, 5, weight_dtype)
    second_indices, second_offsets = make_bags(23, 4, 31, index_dtype)
    batched_indices = torch.cat([indices, second_indices])
    batched_offsets = torch.cat([offsets, second_offsets[1:] + offsets[-1]])
    tables = [weight, other]
    sbs = None if scale_bias is None else [scale_bias, other_sb]
    out, max_indices = torch.ops.mprec.batched_embedding_bag(tables, batched_indices, batched_offsets, 2, None, [5, -1],
                                                             sbs)
    alone, none = torch.ops.mprec.batched_embedding_bag(tables, batched_indices, batched_offsets, 2, None, [5, -1],
                                                        sbs, False, False)
    assert max_indices.shape == out.shape
    assert torch.equal(_bits(alone), _bits(out))
    assert none.shape == (0, 0)


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
def test_max_gradient_where_the_call_returns_no_argmax(batched):
    """A max-mode gradient needs the argmax: autograd finds it even where the call asks for none."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(40, 7, generator=g, dtype=torch.float64)
    indices, offsets = make_bags(11, 6, 40, torch.int64)
    grad_out = torch.randn(11, 7, generator=g, dtype=torch.float64)
    grads = []
    for return_max_indices in (True, False):
        leaf = weight.clone().requires_grad_(True)
        if batched:
            out, max_indices = torch.ops.mprec.batched_embedding_bag([leaf], indices, offsets, 2, None, [], None,
                                                                     False, return_max_indices)
        else:
            out, max_indices = torch.ops.mprec.embedding_bag(leaf, indices, offsets[:-1], 2, None, -1, False, None,
                                                             False, False, return_max_indices)
        assert max_indices.shape == ((11, 7) if return_max_indices else (0, 0))
        out.backward(grad_out)
        grads.append(leaf.grad)
    reference_leaf = weight.clone().requires_grad_(True)
    embedding_bag_reference(reference_leaf, indices, offsets[:-1], "max").backward(grad_out)
    assert torch.equal(grads[1], grads[0])
    torch.testing.assert_close(grads[1], reference_leaf.grad)


def test_row_prefetch_follows_the_cpu_and_can_be_set():
    """Larger tables' rows are prefetched by the first lines of a wide slice on Intel, whole from one distance at
    every width on AMD without AVX-512, whole from the per-width distances elsewhere; the vendor is the one
    /proc/cpuinfo names; an unknown policy is a clear error; a set value is returned by the next set."""
    import platform

    vendor = mprec._C.cpu_vendor()
    if not (platform.machine() in ("x86_64", "AMD64") and mprec._C.build_info()["x86_kernels"]):
        assert vendor == "other"
    elif os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            vendor_id = next((line.split(":")[1].strip() for line in f if line.startswith("vendor_id")), "")
        assert vendor == {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(vendor_id, "other")
    expected = "leading_lines" if vendor == "intel" else \
        "whole_slices_near" if vendor == "amd" and "avx512" not in mprec.supported_cpu_isas() else "whole_slices"
    assert mprec._C.row_prefetch() == expected
    with pytest.raises(ValueError, match=r"set_row_prefetch: expected 'leading_lines', 'whole_slices' or "
                                         r"'whole_slices_near', got 'all'"):
        mprec._C.set_row_prefetch("all")
    previous = mprec._C.row_prefetch()
    try:
        for other in ("leading_lines", "whole_slices", "whole_slices_near"):
            mprec._C.set_row_prefetch(other)
            assert mprec._C.row_prefetch() == other
    finally:
        assert mprec._C.set_row_prefetch(previous) == "whole_slices_near"


def test_cached_table_bytes_defaults_to_twice_the_l2_and_can_be_set():
    """The prefetch threshold: twice the L2 that sysconf reports (at least 128 KiB); a negative setting is a
    clear error; a set value is returned by the next set."""
    import shutil
    import subprocess

    if shutil.which("getconf") is None:
        pytest.skip("no getconf to ask for the L2 size")
    answer = subprocess.run(["getconf", "LEVEL2_CACHE_SIZE"], capture_output=True, text=True).stdout.strip()
    l2 = int(answer) if answer.lstrip("-").isdigit() else 0
    assert mprec._C.cached_table_bytes() == max(128 << 10, 2 * max(l2, 0))
    _check_bytes_setting("cached_table_bytes")


def _check_bytes_setting(name: str) -> None:
    """mprec._C.set_<name>: a negative setting is a clear error; a set value is what mprec._C.<name>() returns, and
    the next set returns it."""
    get, set_bytes = getattr(mprec._C, name), getattr(mprec._C, f"set_{name}")
    with pytest.raises(ValueError, match=rf"set_{name}: bytes must be >= 0, got -1"):
        set_bytes(-1)
    previous = set_bytes(12345)
    try:
        assert get() == 12345
    finally:
        assert set_bytes(previous) == 12345


def _sysfs_l3_bytes() -> int:
    """cpu0's L3 as Linux's sysfs gives it (index<k>/level 3, index<k>/size such as "32768K"), or 0."""
    import glob

    for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index[0-9]*")):
        try:
            with open(os.path.join(index, "level")) as f:
                if f.read().strip() != "3":
                    continue
            with open(os.path.join(index, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        units = {"K": 1 << 10, "M": 1 << 20}
        if size[-1:] in units:
            return int(size[:-1]) * units[size[-1]]
        return int(size) if size.isdigit() else 0
    return 0


def test_burst_table_bytes_defaults_to_half_the_l3_and_can_be_set():
    """The burst threshold: half of the L3 that sysfs reports for cpu0 (0 where it reports none); a negative setting
    is a clear error; a set value is returned by the next set."""
    assert mprec._C.burst_table_bytes() == _sysfs_l3_bytes() // 2
    _check_bytes_setting("burst_table_bytes")

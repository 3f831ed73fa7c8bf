"""Bad input to the embedding-bag ops: a clear error naming the op and the offending value, never a crash
and never a read outside the table. Every case runs on every CPU kernel variant."""

import pytest
import torch

import mprec

OP = "mprec::embedding_bag"
BATCHED = "mprec::batched_embedding_bag"


def call(weight=None, indices=None, offsets=None, **kwargs):
    weight = torch.randn(10, 4) if weight is None else weight
    indices = torch.tensor([1, 2, 3, 4]) if indices is None else indices
    offsets = torch.tensor([0, 2]) if offsets is None else offsets
    return torch.ops.mprec.embedding_bag(weight, indices, offsets, **kwargs)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
# Sum, weighted sum (the loops that know the call's weights at compile time are apart), mean, max.
@pytest.mark.parametrize("mode,weighted", [(0, False), (0, True), (1, False), (2, False)],
                         ids=["sum", "weighted", "mean", "max"])
# One pass, several; narrow rows, whole blocks or partial ones, pool a bag's even and odd lookups into two sets of
# accumulators (the second bag's lookups 2 and 3 a pair, 4 the one left over).
@pytest.mark.parametrize("dim,position", [(4, 2), (4, 3), (4, 4), (8, 2), (8, 3), (12, 3), (12, 4), (16, 3), (16, 4),
                                          (256, 3)])
def test_index_out_of_range_names_position_and_value(isa, weight_dtype, index_dtype, mode, weighted, dim, position):
    weight = torch.randn(10, dim).to(weight_dtype)
    indices = torch.tensor([1, 2, 3, 0, 4], dtype=index_dtype)
    indices[position] = 10
    psw = torch.rand(5, dtype=weight_dtype) if weighted else None
    with pytest.raises(RuntimeError,
                       match=rf"{OP}: index 10 at position {position} is out of range for the table with 10 rows"):
        call(weight, indices, torch.tensor([0, 2], dtype=index_dtype), mode=mode, per_sample_weights=psw)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_negative_index(isa, index_dtype):
    indices = torch.tensor([1, -3, 3, 4], dtype=index_dtype)
    with pytest.raises(RuntimeError, match=rf"{OP}: index -3 at position 1 is negative"):
        call(indices=indices, offsets=torch.tensor([0, 2], dtype=index_dtype))


def test_huge_index_does_not_read_outside_the_table(isa):
    with pytest.raises(RuntimeError, match=rf"index {2**40} at position 0 is out of range"):
        call(indices=torch.tensor([2**40, 1]), offsets=torch.tensor([0]))


def test_quantized_index_out_of_range(isa):
    q, sb = mprec.ops.quantize_rowwise_int8(torch.randn(10, 4))
    with pytest.raises(RuntimeError, match=rf"{OP}: index 11 at position 1"):
        call(q, torch.tensor([1, 11]), torch.tensor([0]), scale_bias=sb)


def test_offsets_must_start_at_zero(isa):
    with pytest.raises(RuntimeError, match=rf"{OP}: offsets\[0\] must be 0, got 1"):
        call(offsets=torch.tensor([1, 2]))


def test_decreasing_offsets(isa):
    with pytest.raises(RuntimeError, match=rf"{OP}: offsets\[2\] = 1 is smaller than offsets\[1\] = 3"):
        call(offsets=torch.tensor([0, 3, 1]))


def test_offsets_past_the_end(isa):
    with pytest.raises(RuntimeError, match=rf"{OP}: offsets\[2\] = 9 is past the end of indices \(4 entries\)"):
        call(offsets=torch.tensor([0, 2, 9]), include_last_offset=True)
    with pytest.raises(RuntimeError, match=rf"{OP}: offsets\[1\] = 5 is past the end of indices"):
        call(offsets=torch.tensor([0, 5]))


def test_per_sample_weights_wrong_length():
    with pytest.raises(ValueError, match=rf"{OP}: per_sample_weights must be 1-D with one weight per index \(4\)"):
        call(per_sample_weights=torch.ones(3))


@pytest.mark.parametrize("mode,name", [(1, "mean"), (2, "max")])
def test_per_sample_weights_only_with_sum(mode, name):
    with pytest.raises(ValueError, match=rf"{OP}: per_sample_weights are only supported with mode sum \(0\), got {name}"):
        call(per_sample_weights=torch.ones(4), mode=mode)


def test_weight_must_be_2d():
    with pytest.raises(ValueError, match=rf"{OP}: weight must be 2-D"):
        call(weight=torch.randn(10))


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64, torch.int8])
def test_weight_dtype(dtype):
    with pytest.raises(ValueError, match=rf"{OP}: weight has dtype"):
        call(weight=torch.zeros(10, 4, dtype=dtype))


def test_index_dtype():
    with pytest.raises(ValueError, match=rf"{OP}: indices must be int32 or int64, got Float"):
        call(indices=torch.tensor([1.0, 2.0]), offsets=torch.tensor([0.0]))
    with pytest.raises(ValueError, match=rf"{OP}: offsets \(Int\) must have the same dtype as indices \(Long\)"):
        call(offsets=torch.tensor([0, 2], dtype=torch.int32))


def test_bad_mode_and_padding():
    with pytest.raises(ValueError, match=rf"{OP}: mode must be 0 \(sum\), 1 \(mean\) or 2 \(max\), got 3"):
        call(mode=3)
    with pytest.raises(ValueError, match=rf"{OP}: padding_idx 10 must be -1 \(none\) or in \[0, 10\)"):
        call(padding_idx=10)
    with pytest.raises(ValueError, match=r"mprec::embedding_bag: mode must be one of"):
        mprec.ops.embedding_bag(torch.randn(3, 2), torch.tensor([0]), torch.tensor([0]), "median")
    with pytest.raises(ValueError, match=r"mprec::embedding_bag: mode must be 0 \(sum\), .*, got \[1\]"):
        mprec.ops.embedding_bag(torch.randn(3, 2), torch.tensor([0]), torch.tensor([0]), [1])  # unhashable


def test_uint8_needs_scale_bias():
    q, sb = mprec.ops.quantize_rowwise_int8(torch.randn(10, 4))
    with pytest.raises(ValueError, match=rf"{OP}: weight is uint8 \(row-wise quantized\) and needs scale_bias"):
        call(weight=q)
    with pytest.raises(ValueError, match=rf"{OP}: scale_bias for weight must be float32 \[10, 2\]"):
        call(weight=q, scale_bias=sb[:5])
    with pytest.raises(ValueError, match=rf"{OP}: scale_bias is only for uint8"):
        call(scale_bias=sb)


def test_backward_ops_check_their_inputs():
    weight = torch.randn(10, 4)
    grad = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match=r"mprec::embedding_bag_backward: index 12 at position 1 is out of range"):
        torch.ops.mprec.embedding_bag_backward(grad, weight, torch.tensor([1, 12]), torch.tensor([0, 1]),
                                               torch.empty(0, 0, dtype=torch.int64), 0, None, -1, False)
    with pytest.raises(ValueError, match=r"mprec::embedding_bag_backward: grad must have shape \[2, 4\]"):
        torch.ops.mprec.embedding_bag_backward(torch.randn(3, 4), weight, torch.tensor([1, 2]), torch.tensor([0, 1]),
                                               torch.empty(0, 0, dtype=torch.int64), 0, None, -1, False)
    with pytest.raises(RuntimeError, match=r"mprec::embedding_bag_backward: max_indices\[0, 1\] = 99 is out of range"):
        mi = torch.zeros(2, 4, dtype=torch.int64)
        mi[0, 1] = 99
        torch.ops.mprec.embedding_bag_backward(grad, weight, torch.tensor([1, 2]), torch.tensor([0, 1]), mi, 2, None,
                                               -1, False)
    with pytest.raises(ValueError, match=r"mprec::embedding_bag_sparse_backward: sparse gradients are not supported "
                                         r"with mode max"):
        torch.ops.mprec.embedding_bag_sparse_backward(grad, weight, torch.tensor([1, 2]), torch.tensor([0, 1]), 2,
                                                      None, -1, False)
    with pytest.raises(RuntimeError, match=r"mprec::embedding_bag_per_sample_weights_backward: offsets\[1\] = 7"):
        torch.ops.mprec.embedding_bag_per_sample_weights_backward(grad, weight, torch.tensor([1, 2]),
                                                                  torch.tensor([0, 7]), 0, -1, False)
    # An integer table has no gradient: refused by name, not by the dtype dispatch inside the kernel.
    with pytest.raises(ValueError, match=r"mprec::embedding_bag_per_sample_weights_backward: weight has dtype Int; "
                                         r"expected float32"):
        torch.ops.mprec.embedding_bag_per_sample_weights_backward(grad, weight.int(), torch.tensor([1, 2]),
                                                                  torch.tensor([0, 1]), 0, -1, False)
    with pytest.raises(ValueError, match=r"mprec::batched_embedding_bag_backward: weights\[1\] has dtype Long"):
        torch.ops.mprec.batched_embedding_bag_backward(torch.randn(2, 8), [weight, weight.long()],
                                                       torch.tensor([1, 2]), torch.tensor([0, 1, 2]),
                                                       torch.empty(0, 0, dtype=torch.int64), 0, None, [])


# --- batched -----------------------------------------------------------------------------------------

def batched(weights=None, indices=None, offsets=None, **kwargs):
    weights = [torch.randn(10, 4), torch.randn(5, 3)] if weights is None else weights
    indices = torch.tensor([1, 2, 3, 4, 0, 4]) if indices is None else indices
    offsets = torch.tensor([0, 2, 4, 5, 6]) if offsets is None else offsets
    return torch.ops.mprec.batched_embedding_bag(weights, indices, offsets, **kwargs)


def test_batched_index_out_of_range_names_the_table(isa):
    # Position 4 belongs to table 1, which has 5 rows.
    with pytest.raises(RuntimeError, match=rf"{BATCHED}: index 7 at position 4 is out of range for table 1 with 5 rows"):
        batched(indices=torch.tensor([1, 2, 3, 4, 7, 4]))


def test_batched_offsets_layout():
    with pytest.raises(ValueError, match=rf"{BATCHED}: offsets must have T \* B \+ 1 entries \(TBE layout\) for T = 2"):
        batched(offsets=torch.tensor([0, 2, 4, 5]))
    with pytest.raises(RuntimeError, match=rf"{BATCHED}: offsets\[3\] = 2 is smaller than offsets\[2\] = 4"):
        batched(offsets=torch.tensor([0, 2, 4, 2, 6]))


def test_batched_table_arguments():
    with pytest.raises(ValueError, match=rf"{BATCHED}: needs at least one table"):
        batched(weights=[], offsets=torch.tensor([0]))
    with pytest.raises(ValueError, match=rf"{BATCHED}: every table must have the same dtype"):
        batched(weights=[torch.randn(10, 4), torch.randn(5, 3).half()])
    with pytest.raises(ValueError, match=rf"{BATCHED}: padding_idx has 1 entries for 2 tables"):
        batched(padding_idx=[1])
    with pytest.raises(ValueError, match=rf"{BATCHED}: padding_idx 5 of table 1 must be -1 \(none\) or in \[0, 5\)"):
        batched(padding_idx=[1, 5])
    with pytest.raises(ValueError, match=rf"{BATCHED}: weights\[1\] must be 2-D"):
        batched(weights=[torch.randn(10, 4), torch.randn(5)])


FAKE_CASES = {
    "psw-mode": (lambda: call(per_sample_weights=torch.ones(4), mode=1),
                 rf"{OP}: per_sample_weights are only supported with mode sum \(0\), got mean \(1\)$"),
    "psw-shape": (lambda: call(per_sample_weights=torch.ones(2, 2)),
                  rf"{OP}: per_sample_weights must be 1-D with one weight per index \(4\), got shape \[2, 2\]$"),
    "psw-dtype": (lambda: call(per_sample_weights=torch.ones(4, dtype=torch.int32)),
                  rf"{OP}: per_sample_weights must be floating point, got Int$"),
    "tbe-offsets": (lambda: batched(offsets=torch.tensor([0, 2, 4, 5])),
                    rf"{BATCHED}: offsets must have T \* B \+ 1 entries \(TBE layout\) for T = 2 tables, got 4$"),
    "index-dtype": (lambda: call(indices=torch.tensor([1, 2], dtype=torch.int16),
                                 offsets=torch.tensor([0], dtype=torch.int16)),
                    rf"{OP}: indices must be int32 or int64, got Short$"),
    "offsets-dtype": (lambda: call(offsets=torch.tensor([0, 2], dtype=torch.int32)),
                      rf"{OP}: offsets \(Int\) must have the same dtype as indices \(Long\)$"),
    "indices-2d": (lambda: call(indices=torch.tensor([[1, 2]])), rf"{OP}: indices must be 1-D, got shape \[1, 2\]$"),
    "weight-1d": (lambda: call(weight=torch.randn(10)),
                  rf"{OP}: weight must be 2-D \[num_embeddings, embedding_dim\], got shape \[10\]$"),
    "weight-dtype": (lambda: call(weight=torch.ones(10, 4, dtype=torch.int32)),
                     rf"{OP}: weight has dtype Int; expected float32, float64, float16, bfloat16 or uint8 "
                     r"\(row-wise quantized\)$"),
    "scale-bias-rows": (lambda: call(weight=torch.zeros(10, 4, dtype=torch.uint8), scale_bias=torch.ones(9, 2)),
                        rf"{OP}: scale_bias for weight must be float32 \[10, 2\], got Float \[9, 2\]$"),
    "padding-idx": (lambda: call(padding_idx=10), rf"{OP}: padding_idx 10 must be -1 \(none\) or in \[0, 10\)$"),
    "tbe-padding-idx": (lambda: batched(padding_idx=[1, 5]),
                        rf"{BATCHED}: padding_idx 5 of table 1 must be -1 \(none\) or in \[0, 5\)$"),
    "scale-bias-float": (lambda: call(scale_bias=torch.ones(10, 2)),
                         rf"{OP}: scale_bias is only for uint8 \(row-wise quantized\) weights, but weight is Float$"),
}


@pytest.mark.parametrize("case", list(FAKE_CASES))
def test_fake_kernels_raise_the_same_errors(case):
    """The real kernel's error and, with every tensor created under FakeTensorMode, the fake kernel's: the same text."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    make_call, pattern = FAKE_CASES[case]
    with pytest.raises(ValueError, match=pattern):
        make_call()
    with FakeTensorMode():
        with pytest.raises(ValueError, match=pattern):
            make_call()


def test_forced_isa_must_be_known():
    with pytest.raises(ValueError, match="unknown CPU ISA 'sse9'"):
        mprec.set_cpu_isa("sse9")

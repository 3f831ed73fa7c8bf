"""mprec::batched_embedding_bag_update (backward fused with SGD or row-wise Adagrad) against the reference
(the dense gradient of the reference pooling, then the optimizer formula), in float64; odd shapes, both
index dtypes, sum / mean / weighted, padding rows, thread-count independence, errors."""

import pytest
import torch

from conftest import make_bags
from mprec.ops import batched_embedding_bag_update
from reference import batched_embedding_bag_update_reference

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6),
       torch.bfloat16: dict(rtol=0, atol=2e-2)}


def case(dims, rows, bags, dtype, index_dtype, weighted, seed=0, empty_fraction=0.25):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(r, d, generator=g).to(dtype) for r, d in zip(rows, dims)]
    parts, offs, base = [], [], 0
    for r in rows:
        idx, off = make_bags(bags, 6, r, index_dtype, empty_fraction=empty_fraction)
        parts.append(idx)
        offs.append(off[:-1] + base)
        base += idx.numel()
    indices = torch.cat(parts)
    offsets = torch.cat(offs + [torch.tensor([base], dtype=index_dtype)])
    grad = torch.randn(bags, sum(dims), generator=g, dtype=torch.float64)
    psw = torch.randn(indices.numel(), generator=g, dtype=torch.float64) if weighted else None
    state = [torch.rand(r, generator=g, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
             for r in rows]
    return weights, state, grad, indices, offsets, psw


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
@pytest.mark.parametrize("mode,weighted", [("sum", False), ("sum", True), ("mean", False)])
@pytest.mark.parametrize("dims", [(1,), (4, 129), (16, 16, 3)])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_update_matches_reference(optimizer, mode, weighted, dims, index_dtype, dtype):
    rows = [7, 40, 300][: len(dims)]
    weights, state, grad, indices, offsets, psw = case(dims, rows, 9, dtype, index_dtype, weighted)
    padding = [None] * len(dims)
    padding[0] = 2  # padding rows take no update
    state = state if optimizer == "rowwise_adagrad" else []
    # The reference sees the inputs the op sees: grad and weights rounded to dtype.
    grad, psw = grad.to(dtype).double(), None if psw is None else psw.to(dtype).double()
    want_w, want_s = batched_embedding_bag_update_reference(
        [w.double() for w in weights], [s.double() for s in state], grad, indices, offsets, mode,
        psw, [2] + [-1] * (len(dims) - 1), optimizer, lr=0.3)
    got_w = [w.clone() for w in weights]
    got_s = [s.clone() for s in state]
    batched_embedding_bag_update(got_w, got_s, grad.to(dtype), indices, offsets, mode,
                                 None if psw is None else psw.to(dtype), padding, optimizer, lr=0.3)
    for got, want, before in zip(got_w, want_w, weights):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want.to(dtype).double(), **TOL[dtype])
        assert torch.equal(got[2], before[2]) if got is got_w[0] else True
    for got, want in zip(got_s, want_s):
        torch.testing.assert_close(got.double(), want, **TOL[torch.float32 if dtype != torch.float64 else dtype])


def test_only_looked_up_rows_change_and_empty_batches():
    weights, state, grad, indices, offsets, _ = case((8,), (100,), 5, torch.float32, torch.int64, False)
    before = weights[0].clone()
    batched_embedding_bag_update(weights, state, grad.float(), indices, offsets, optimizer="rowwise_adagrad", lr=0.5)
    touched = set(indices.tolist())
    for r in range(100):
        assert torch.equal(weights[0][r], before[r]) == (r not in touched)
    # B = 0 and bags without lookups change nothing.
    w = [torch.randn(10, 3)]
    batched_embedding_bag_update(w, [], torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64),
                                 torch.zeros(1, dtype=torch.int64), lr=1.0)
    empty = w[0].clone()
    batched_embedding_bag_update(w, [], torch.randn(4, 3), torch.zeros(0, dtype=torch.int64),
                                 torch.zeros(5, dtype=torch.int64), lr=1.0)
    assert torch.equal(w[0], empty)


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
# Two tables: each table's rows split between the threads; six: whole tables per thread.
@pytest.mark.parametrize("dims,rows", [((32, 8), (50, 2000)), ((8, 16, 1, 8, 4, 8), (30, 5, 900, 64, 7, 3000))])
def test_independent_of_thread_count(num_threads, optimizer, dims, rows):  # the fixture restores the thread count
    weights, state, grad, indices, offsets, psw = case(dims, rows, 512, torch.float32, torch.int64, True,
                                                       empty_fraction=0.0)
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        w, s = [x.clone() for x in weights], [x.clone() for x in state] if optimizer == "rowwise_adagrad" else []
        batched_embedding_bag_update(w, s, grad.float(), indices, offsets, "sum", psw.float(),
                                     optimizer=optimizer, lr=0.1)
        results.append((w, s))
    assert not torch.equal(results[0][0][0], weights[0])
    for other in results[1:]:
        for a, b in zip(results[0][0] + results[0][1], other[0] + other[1]):
            assert torch.equal(a, b)


def test_errors_leave_tables_unchanged():
    weights, state, grad, indices, offsets, _ = case((4, 4), (10, 20), 3, torch.float32, torch.int64, False)
    grad = grad.float()
    snapshot = [w.clone() for w in weights]
    bad = indices.clone()
    bad[-1] = 20  # out of range for the second table, after the first table's lookups
    with pytest.raises(RuntimeError, match=r"mprec::batched_embedding_bag_update: .*20"):
        batched_embedding_bag_update(weights, [], grad, bad, offsets, lr=1.0)
    assert all(torch.equal(a, b) for a, b in zip(weights, snapshot))
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'rowwise_adagrad', got 'adam'"):
        batched_embedding_bag_update(weights, [], grad, indices, offsets, optimizer="adam")
    with pytest.raises(ValueError, match=r"fused optimizers support mode sum \(0\) and mean \(1\), got max"):
        batched_embedding_bag_update(weights, [], grad, indices, offsets, mode="max")
    with pytest.raises(ValueError, match="rowwise_adagrad needs one state tensor per table"):
        batched_embedding_bag_update(weights, state[:1], grad, indices, offsets, optimizer="rowwise_adagrad")
    with pytest.raises(ValueError, match=r"state\[1\] must be a contiguous Float tensor of 20 entries"):
        batched_embedding_bag_update(weights, [state[0], torch.zeros(19)], grad, indices, offsets,
                                     optimizer="rowwise_adagrad")
    with pytest.raises(ValueError, match="sgd takes no state"):
        batched_embedding_bag_update(weights, state, grad, indices, offsets)
    with pytest.raises(ValueError, match=r"grad must have shape \[3, 8\]"):
        batched_embedding_bag_update(weights, [], grad[:, :7], indices, offsets)
    with pytest.raises(ValueError, match=r"weights\[0\] must be contiguous"):
        batched_embedding_bag_update([weights[0].t().contiguous().t(), weights[1]], [], grad, indices, offsets)
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        batched_embedding_bag_update(weights, [], grad, indices, offsets, lr=float("nan"))
    assert all(torch.equal(a, b) for a, b in zip(weights, snapshot))


def test_errors_in_several_tables_report_the_first(num_threads):
    # The tables are validated in parallel; the error is the first table's, as a serial pass finds it.
    weights = [torch.randn(10, 4), torch.randn(20, 4)]
    indices, offsets = torch.tensor([1, 17, 3, 4, 5, 33]), torch.arange(7)
    snapshot = [w.clone() for w in weights]
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with pytest.raises(RuntimeError, match=r"index 17 at position 1 is out of range for table 0 with 10 rows"):
            batched_embedding_bag_update(weights, [], torch.randn(3, 8), indices, offsets, lr=1.0)
    assert all(torch.equal(a, b) for a, b in zip(weights, snapshot))


def test_opcheck_update():
    weights, state, grad, indices, offsets, _ = case((4, 3), (10, 20), 3, torch.float32, torch.int64, False)
    torch.library.opcheck(torch.ops.mprec.batched_embedding_bag_update.default,
                          (weights, state, grad.float(), indices, offsets, 0, None, [], "rowwise_adagrad", 0.1, 1e-8))

"""The IPU lowering (mprec.lower.ipu), checked on the CPU: poptorch ships only with Graphcore's Poplar SDK.

* the 32-bit hash equals the int64 reference exactly, and no intermediate ever leaves int32 (each integer op
  is re-run in int64 and must give the same values: a wrap-around, even in a discarded branch, shows);
* the lowered model equals the model, with exactly the reference's DHE hashes;
* every op its forward pass dispatches is on PopTorch's list of supported operations (kept below);
* without poptorch, building the PopTorch models fails with a message saying how to get it.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from mprec.lower import ipu
from mprec.models import DLRM
from mprec.ops.dhe import dhe_hash_parameters, next_prime
from reference import dhe_hash_reference

from conftest import LOWERING_SIZES, OpLog, dlrm_batch, small_dlrm

# PopTorch's supported operations: Graphcore's PopTorch user guide, "IPU supported operations"
# (docs/user_guide/supported_ops.rst in the graphcore/poptorch repository, the PopTorch 3.x version: the one
# with the dispatcher frontend).
# The guide names torch functions and modules; each maps to the aten ops that the lowered model dispatches
# for it on the CPU (the dispatcher frontend PopTorch uses since 3.0 sees these same aten ops); only the
# overloads the lowered model uses are named, so a new op or overload has to be looked up in the guide.
POPTORCH_GUIDE = {
    # Creation ops
    "torch.arange": {"aten.arange.default"},
    "torch.full": {"aten.full.default"},
    "torch.zeros": {"aten.zeros.default"},
    "torch.zeros_like": {"aten.zeros_like.default"},
    # Indexing, slicing, joining and mutating ops ("we will also create tensor views"; slices with constant
    # bounds are supported: select.int and slice.Tensor are those, with Python ints)
    "torch.cat": {"aten.cat.default"},
    "torch.stack": {"aten.stack.default"},
    "torch.index_select": {"aten.index_select.default"},
    "torch.reshape": {"aten.view.default"},
    "torch.squeeze": {"aten.squeeze.dim"},
    "torch.unsqueeze": {"aten.unsqueeze.default"},
    "torch.t": {"aten.t.default"},
    "torch.transpose": {"aten.transpose.int"},
    "torch.where": {"aten.where.self"},
    "tensor.masked_fill": {"aten.masked_fill.Scalar"},
    "slicing": {"aten.select.int", "aten.slice.Tensor"},
    # tensor[index_tensors]: not named in the guide; PopTorch lowers aten::index to a gather
    # (poptorch/source/popart_canonicalization/IndexOps.cpp), and torch.gather is listed.
    "torch.gather": {"aten.index.Tensor"},
    # Pointwise ops
    "torch.add": {"aten.add.Tensor"},
    "torch.sub": {"aten.sub.Tensor", "aten.rsub.Scalar"},  # rsub: scalar - tensor
    "torch.mul": {"aten.mul.Tensor"},
    "torch.div": {"aten.div.Tensor"},
    "torch.remainder": {"aten.remainder.Scalar"},
    "torch.bitwise_and": {"aten.bitwise_and.Scalar"},
    "torch.bitwise_not": {"aten.bitwise_not.default"},
    "torch.clamp": {"aten.clamp.default"},
    "torch.amax": {"aten.amax.default"},
    "torch.cos": {"aten.cos.default"},
    "torch.sin": {"aten.sin.default"},
    "torch.log": {"aten.log.default"},
    "torch.sqrt": {"aten.sqrt.default"},
    "torch.tanh": {"aten.tanh.default"},
    # Reduction ops
    "torch.sum": {"aten.sum.dim_IntList", "aten.sum.default"},
    # Comparison ops
    "torch.eq": {"aten.eq.Tensor"},
    "torch.ne": {"aten.ne.Scalar"},
    "torch.lt": {"aten.lt.Scalar"},
    "torch.ge": {"aten.ge.Scalar"},
    "torch.gt": {"aten.gt.Scalar"},
    # BLAS and LAPACK operations (torch.nn.Linear dispatches t + addmm; a 2-D matmul is mm)
    "torch.addmm": {"aten.addmm.default"},
    "torch.matmul": {"aten.mm.default"},
    "torch.bmm": {"aten.bmm.default"},
    # torch.nn
    "torch.nn.ReLU": {"aten.relu.default"},
    "torch.nn.Softplus": {"aten.softplus.default"},
    "torch.nn.ConstantPad1d": {"aten.constant_pad_nd.default"},
    # BatchNorm1d dispatches native_batch_norm and allocates an empty reserve buffer for it; in training
    # mode it also counts batches in place.
    "torch.nn.BatchNorm1d": {"aten.native_batch_norm.default", "aten.empty.memory_format", "aten.add_.Tensor"},
    "torch.nn.BCEWithLogitsLoss": {"aten.binary_cross_entropy_with_logits.default"},
    # Casts: not in the function lists; the guide's 16-bit section says casts are fully supported by the
    # dispatcher frontend (tensor.to(dtype)).
    "tensor.to": {"aten._to_copy.default"},
}
POPTORCH_SUPPORTED = set().union(*POPTORCH_GUIDE.values())

SIZES = LOWERING_SIZES
INT32_MAX = 2**31 - 1


# --- helpers ------------------------------------------------------------------------------------------------

batch = dlrm_batch


def model_for(representation, mode="sum", interaction="dot", seed=0, **kwargs):
    """A float32 DLRM (the IPU computes in float32)."""
    return small_dlrm(representation, mode, interaction, seed, torch.float32, **kwargs)


def hash_inputs(m, k=48, n=2000, seed=0):
    """ids across [0, 2^31 - 1] with the edge cases, and (a, b) with the extremes among random ones."""
    p = next_prime(m)
    a, b, _ = dhe_hash_parameters(k, m, seed)
    top_bit = 1 << ((p - 1).bit_length() - 1)  # the highest bit a can have
    extremes = [(p - 1, p - 1), (1, 0), (p - 1, 0), (1, p - 1), (top_bit, p - 1), (top_bit | 1, 1)]
    for j, (aj, bj) in enumerate(extremes):
        a[j], b[j] = aj, bj
    special = torch.tensor([0, 1, p - 1, p, p + 1, 2 * p - 1, INT32_MAX - 1, INT32_MAX], dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([special.clamp(max=INT32_MAX), torch.randint(0, 2**31, (n,), generator=g)])
    return ids, a, b, p


class _Int32Only(TorchDispatchMode):
    """Checks that integer arithmetic stays in int32 without wrapping around.

    Every op must produce only int32 or bool tensors (no int64, no float), and each is run a second time on
    int64 copies of its int32 inputs: int64 holds every value an int32 op can produce from int32 operands,
    so any difference is a wrap-around, including in the branch of a select that is then discarded.
    """

    def __init__(self):
        super().__init__()
        self.ops, self.problems = set(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.add(str(func))
        outs = [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        for t in outs:
            if t.dtype not in (torch.int32, torch.bool):
                self.problems.append(f"{func} produced {t.dtype}")
        def widen(x):
            return x.to(torch.int64) if isinstance(x, torch.Tensor) and x.dtype == torch.int32 else x

        wide = func(*tree_map(widen, args), **tree_map(widen, kwargs))
        wides = [t for t in (wide if isinstance(wide, (tuple, list)) else [wide]) if isinstance(t, torch.Tensor)]
        for t, w in zip(outs, wides):
            if t.dtype in (torch.int32, torch.bool) and not torch.equal(t.to(torch.int64), w.to(torch.int64)):
                self.problems.append(f"{func} wrapped around (int32 result differs from the int64 one)")
        return out


# --- the hash -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [2, 1000, 1_000_000, 2**31 - 2])  # 2^31 - 2: the largest m whose p is below 2^31
def test_hash_int32_equals_reference(m):
    ids, a, b, p = hash_inputs(m)
    assert p < 2**31
    h = ipu.hash_int32(ids.to(torch.int32), a.to(torch.int32), b.to(torch.int32), p, m)
    assert h.dtype == torch.int32 and h.shape == (ids.numel(), a.numel())
    assert torch.equal(h.to(torch.int64), dhe_hash_reference(ids, a, b, p, m))


@pytest.mark.parametrize("m", [2, 1000, 1_000_000, 2**31 - 2])
def test_hash_int32_never_leaves_int32(m):
    ids, a, b, p = hash_inputs(m, k=16, n=300, seed=1)
    ids32, a32, b32 = ids.to(torch.int32), a.to(torch.int32), b.to(torch.int32)
    with _Int32Only() as check:
        h = ipu.hash_int32(ids32, a32, b32, p, m)
    assert check.ops and not check.problems, check.problems[:5]
    assert torch.equal(h.to(torch.int64), dhe_hash_reference(ids, a, b, p, m))


def test_the_int32_check_catches_a_wrap_around():
    # The textbook modular addition forms r + s, which wraps for p > 2^30 even when a select discards it.
    p = 2**31 - 1
    r = torch.tensor([p - 1, 5], dtype=torch.int32)
    s = torch.tensor([p - 2, 7], dtype=torch.int32)
    with _Int32Only() as check:
        torch.where(r >= p - s, r - (p - s), r + s)
    assert any("wrapped around" in problem for problem in check.problems)
    with _Int32Only() as check:
        r.to(torch.int64)
    assert any("produced torch.int64" in problem for problem in check.problems)


def test_hash_int32_shapes_and_errors():
    ids, a, b, p = hash_inputs(1000, k=8, n=14)
    ids32 = ids[:15].to(torch.int32).view(3, 5)
    h = ipu.hash_int32(ids32, a.to(torch.int32), b.to(torch.int32), p, 1000)
    assert h.shape == (3, 5, 8)
    assert torch.equal(h.to(torch.int64), dhe_hash_reference(ids[:15].view(3, 5), a, b, p, 1000))
    a32, b32 = a.to(torch.int32), b.to(torch.int32)
    big = next_prime(2**31 - 1)
    with pytest.raises(ValueError, match=f"hash_int32: p = {big} does not fit int32"):
        ipu.hash_int32(ids32, a32, b32, big, 2**31 - 1)
    with pytest.raises(ValueError, match="hash_int32: ids must be int32"):
        ipu.hash_int32(ids32.long(), a32, b32, p, 1000)
    with pytest.raises(ValueError, match="hash_int32: hash_a must be a 1-D int32 tensor"):
        ipu.hash_int32(ids32, a, b32, p, 1000)
    with pytest.raises(ValueError, match="hash_int32: needs integers 2 <= m < p"):
        ipu.hash_int32(ids32, a32, b32, 1000, 1000)


# --- the lowered model ------------------------------------------------------------------------------------------

def _record_hashes(lowered):
    """Wraps each DHE part's hash function so that the hashes the forward pass computes are kept."""
    seen = []

    def recording(ids, hash_a, hash_b, p, m, inner=lowered.hash_fn):
        h = inner(ids, hash_a, hash_b, p, m)
        seen.append((ids, h, hash_a, hash_b, p, m))
        return h

    lowered.hash_fn = recording
    return seen


def _assert_hashes_exact(seen):
    assert seen
    for ids, h, a, b, p, m in seen:
        assert ids.dtype == torch.int32 and h.dtype == torch.int32
        assert torch.equal(h.to(torch.int64), dhe_hash_reference(ids.to(torch.int64), a, b, p, m))


@pytest.mark.parametrize("representation", ["table", "dhe", "hybrid", ["table", "dhe", "hybrid", "dhe", "table"]])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("one_hot", [0, 64])
def test_lowered_equals_model(representation, mode, one_hot):
    model = model_for(representation, mode)
    dense, indices, offsets = batch(11, bag_size=3, empty=True)
    lowered = ipu.lower(model, bag_size=3, one_hot_max_rows=one_hot)
    seen = _record_hashes(lowered)
    with torch.no_grad():
        out = lowered.serve(dense, indices, offsets)
        expected = model(dense, indices, offsets)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    if representation != "table":
        _assert_hashes_exact(seen)


@pytest.mark.parametrize("transform", ["uniform", "gaussian"])
def test_lowered_dhe_options(transform):
    model = model_for("dhe", transform=transform, batch_norm=True)
    dense, indices, offsets = batch(6, bag_size=2)
    with torch.no_grad():
        torch.testing.assert_close(ipu.lower(model, bag_size=2).serve(dense, indices, offsets),
                                   model(dense, indices, offsets), rtol=1e-4, atol=1e-5)


def test_raw_ids_beyond_int32():
    # Criteo's raw ids are 32-bit hex values: DHE-only features take them (reduced modulo p on the host,
    # which leaves the hash unchanged); a table or hybrid feature's id above int32 is an error, not a wrap.
    model = model_for(["dhe", "table", "dhe", "hybrid", "table"])
    dense, indices, offsets = batch(9, bag_size=2)
    raw = indices.clone()
    n = (offsets.numel() - 1) // 5
    for t in (0, 2):
        start, end = int(offsets[t * n]), int(offsets[(t + 1) * n])
        raw[start:end] = torch.randint(2**31, 2**32, (end - start,))
    lowered = ipu.lower(model, bag_size=2)
    seen = _record_hashes(lowered)
    with torch.no_grad():
        torch.testing.assert_close(lowered.serve(dense, raw, offsets), model(dense, raw, offsets),
                                   rtol=1e-4, atol=1e-5)
    _assert_hashes_exact(seen)
    assert torch.equal(raw[int(offsets[0]):int(offsets[n])] >= 2**31, torch.ones(int(offsets[n]), dtype=torch.bool))
    bad = indices.clone()
    bad[int(offsets[3 * n])] = 2**31
    with pytest.raises(ValueError, match=f"index {int(offsets[3 * n])} \\(feature 3, hybrid\\) is 2147483648, "
                                         "which does not fit int32"):
        lowered.prepare(dense, bad, offsets)
    bad[int(offsets[3 * n])] = -1
    with pytest.raises(ValueError, match="feature 3\\) is -1; ids must be >= 0"):
        lowered.prepare(dense, bad, offsets)


def test_lower_checks_the_hash_parameters():
    torch.manual_seed(0)
    too_wide = DLRM.preset("kaggle", SIZES, representations=["table", "dhe", "table", "table", "table"],
                           dhe=dict(k=4, m=2**31 - 1, decoder=(8,)))
    with pytest.raises(ValueError, match=f"feature 1 hashes into m = {2**31 - 1}, so p = {next_prime(2**31 - 1)}, "
                                         "which does not fit int32"):
        ipu.lower(too_wide)
    model = model_for("hybrid")
    dhe = model.embeddings.features()[2].dhe
    dhe.hash_b[5] = dhe.p
    with pytest.raises(ValueError, match=f"feature 2's hash_b\\[5\\] = {dhe.p} is outside \\[0, p - 1\\]"):
        ipu.lower(model)


def test_training_step_equals_the_model_loss():
    model = model_for("hybrid").train()
    dense, indices, offsets = batch(6, bag_size=2)
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    step = ipu.TrainingStep(ipu.lower(model, bag_size=2, buckets=(8,)))
    args = step.prepare(dense, indices, offsets, labels)
    assert args[0].shape[0] == 8 and args[4].tolist() == [1.0] * 6 + [0.0] * 2  # the padded rows do not count
    _, loss = step(*args)
    loss.backward()
    grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
    model.zero_grad()
    expected = F.binary_cross_entropy_with_logits(model(dense, indices, offsets), labels)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad if p.grad is not None else torch.zeros_like(p), rtol=1e-4, atol=1e-6)


# --- PopTorch's supported operations ---------------------------------------------------------------------------

def _dispatched(lowered, *args):
    with torch.no_grad(), OpLog() as log:  # inferenceModel runs without autograd
        lowered(*args)
    return log.names


@pytest.mark.parametrize("representation", ["table", "dhe", "hybrid"])
def test_lowered_ops_are_supported_by_poptorch(representation):
    names = set()
    for mode in ("sum", "mean", "max"):
        for one_hot in (0, 64):
            for interaction in ("dot", "cat"):
                lowered = ipu.lower(model_for(representation, mode, interaction), bag_size=3, one_hot_max_rows=one_hot)
                names |= _dispatched(lowered, *lowered.prepare(*batch(5, bag_size=3, empty=True))[:3])
    if representation != "table":
        for options in (dict(transform="gaussian"), dict(batch_norm=True), dict(activation="none")):
            lowered = ipu.lower(model_for(representation, **options), bag_size=2)
            names |= _dispatched(lowered, *lowered.prepare(*batch(5, bag_size=2))[:3])
    assert names and not names - POPTORCH_SUPPORTED, sorted(names - POPTORCH_SUPPORTED)
    # The model itself runs ops outside the list (mprec's own): the check can fail.
    with torch.no_grad(), OpLog() as log:
        model_for(representation)(*batch(5))
    assert log.names - POPTORCH_SUPPORTED


def test_training_ops_are_supported_by_poptorch():
    model = model_for("hybrid", batch_norm=True).train()
    step = ipu.TrainingStep(ipu.lower(model, bag_size=2))
    args = step.prepare(*batch(5, bag_size=2), torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0]))
    with OpLog() as log:
        step(*args)
    # detach: autograd keeping an activation for the backward pass, which PopTorch builds itself.
    unsupported = log.names - POPTORCH_SUPPORTED - {"aten.detach.default"}
    assert not unsupported, sorted(unsupported)


def test_mish_is_supported_by_poptorch():
    # The lowered form composes mish from softplus and tanh, which PopTorch lists (aten.mish it does not).
    lowered = ipu.lower(model_for("dhe", activation="mish"), bag_size=2)
    names = _dispatched(lowered, *lowered.prepare(*batch(5, bag_size=2))[:3])
    assert not names - POPTORCH_SUPPORTED, sorted(names - POPTORCH_SUPPORTED)


# --- PopTorch itself ---------------------------------------------------------------------------------------------

def test_poptorch_models_need_poptorch():
    if ipu.available():
        pytest.skip("poptorch is installed here")
    model = model_for("hybrid")
    with pytest.raises(ImportError, match="mprec.lower.ipu.inference_model: poptorch is not installed: it ships only "
                                          "with Graphcore's Poplar SDK"):
        ipu.inference_model(model)
    # Also a RuntimeError, as mprec.lower.xla raises without torch_xla.
    with pytest.raises(RuntimeError, match="mprec.lower.ipu.training_model: poptorch is not installed"):
        ipu.training_model(model, torch.optim.SGD(model.parameters(), lr=0.1))

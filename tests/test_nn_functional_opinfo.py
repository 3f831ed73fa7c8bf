"""torch's own OpInfo samples for ``nn.functional.embedding_bag`` through ``mprec.nn.functional.embedding_bag``:
every sample, every dtype torch tests, gives torch's output, leaves the weight as torch leaves it (``max_norm``
renormalises in place) and torch's gradients. With ``scale_grad_by_freq`` the gradients are compared with the
pure-PyTorch reference instead: torch 2.13's CPU kernel divides some rows by another index's count and
refuses sparse gradients."""

import functools

import pytest
import torch

import mprec
from reference import embedding_bag_reference

common = pytest.importorskip("torch.testing._internal.common_methods_invocations")
OPINFO = next(op for op in common.op_db if op.name == "nn.functional.embedding_bag")
TOLERANCE = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
             torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


def samples():
    cases = []
    for dtype in sorted(OPINFO.dtypes, key=str):
        for requires_grad in (False, True):
            for i, _ in enumerate(sample_list(dtype, requires_grad)):
                cases.append(pytest.param(dtype, requires_grad, i, id=f"{str(dtype)[6:]}-grad{int(requires_grad)}-{i}"))
    return cases


@functools.lru_cache(maxsize=None)
def sample_list(dtype, requires_grad):
    # Each test copies what it changes, so the samples are made once per dtype (torch.manual_seed'ed).
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return tuple(OPINFO.sample_inputs("cpu", dtype, requires_grad=requires_grad))


def sample_at(dtype, requires_grad, i):
    return sample_list(dtype, requires_grad)[i]


def run(fn, sample, grad_seed):
    """(output, weight afterwards, weight gradient, per_sample_weights gradient) of ``fn`` on a copy of the
    sample, with a seeded output gradient."""
    weight = sample.input.detach().clone().requires_grad_()
    kwargs = dict(sample.kwargs)
    psw = kwargs.get("per_sample_weights")
    if psw is not None:
        kwargs["per_sample_weights"] = psw = psw.detach().clone().requires_grad_()
    out = fn(sample.args[0], weight, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out.dtype)
    out.backward(grad)
    weight_grad = weight.grad.to_dense() if weight.grad is not None else None
    return out.detach(), weight.detach(), weight_grad, None if psw is None else psw.grad, grad


def scaled_reference_grad(sample, weight_after, grad):
    """The weight gradient with scale_grad_by_freq, from the reference, on the renormalised weight."""
    input, kwargs = sample.args[0], sample.kwargs
    offsets = kwargs.get("offsets")
    if input.dim() == 2:
        offsets = torch.arange(0, input.numel(), input.shape[1], dtype=input.dtype)
        input = input.reshape(-1)
    psw = kwargs.get("per_sample_weights")
    padding_idx = kwargs.get("padding_idx")
    rows = weight_after.shape[0]
    padding_idx = -1 if padding_idx is None else padding_idx % rows
    w = weight_after.double().requires_grad_()
    out = embedding_bag_reference(w, input, offsets, kwargs.get("mode", "mean"),
                                  None if psw is None else psw.reshape(-1).double(), padding_idx,
                                  kwargs.get("include_last_offset", False), scale_grad_by_freq=True)
    out.backward(grad.double())
    return w.grad


@pytest.mark.parametrize("dtype,requires_grad,i", samples())
def test_opinfo_sample(dtype, requires_grad, i):
    sample = sample_at(dtype, requires_grad, i)
    tol = TOLERANCE[dtype]
    got = run(mprec.nn.functional.embedding_bag, sample, i)
    scaled = sample.kwargs.get("scale_grad_by_freq", False)
    if scaled:
        # torch refuses the sparse case and mis-scales the dense one: its forward, without the flag, is the
        # output to match; the gradient comes from the reference.
        kwargs = {k: v for k, v in sample.kwargs.items() if k not in ("scale_grad_by_freq", "sparse")}
        want = run(torch.nn.functional.embedding_bag, common.SampleInput(sample.input, args=sample.args,
                                                                         kwargs=kwargs), i)
    else:
        want = run(torch.nn.functional.embedding_bag, sample, i)
    torch.testing.assert_close(got[0], want[0], **tol)     # output
    torch.testing.assert_close(got[1], want[1], **tol)     # the weight afterwards (max_norm)
    if scaled:
        torch.testing.assert_close(got[2].double(), scaled_reference_grad(sample, want[1], got[4]), **tol)
    else:
        torch.testing.assert_close(got[2], want[2], **tol)
    if want[3] is not None:
        torch.testing.assert_close(got[3], want[3], **tol)


def test_every_sample_is_run():
    total = sum(len(sample_list(dtype, g)) for dtype in OPINFO.dtypes for g in (False, True))
    assert total > 0 and len(samples()) == total
    scaled = sum(s.kwargs.get("scale_grad_by_freq", False) for dtype in OPINFO.dtypes for s in sample_list(dtype, False))
    assert scaled > 0  # the samples that used to raise NotImplementedError are among them

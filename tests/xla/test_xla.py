"""The XLA lane (`make test-xla`): the lowered DLRM (mprec.lower.xla) on an XLA device.

Runs in its own environment (torch 2.9 + torch_xla 2.9) on XLA's CPU client (PJRT_DEVICE=CPU): the same
graphs a TPU compiles, on another backend. Checks that the lowered models compile and match the CPU
model (mprec's own kernels), that no op falls back to the host, and that compilations stay bounded by the
batch buckets.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch_xla
import torch_xla.debug.metrics as met

from mprec.lower import xla
from mprec.models import DLRM

from conftest import dlrm_batch, small_dlrm

DEVICE = torch_xla.device()


def batch(n, bag_size=1, seed=0):
    return dlrm_batch(n, bag_size=bag_size, seed=seed, empty=True)


def model_for(representation, mode="sum"):
    return small_dlrm(representation, mode)


def fallbacks() -> list:
    """Ops that ran on the host instead of the XLA device since the metrics were last cleared."""
    return sorted(set(met.executed_fallback_ops()) | {c for c in met.counter_names() if c.startswith("aten::")})


@pytest.mark.parametrize("representation", ["table", "dhe", "hybrid"])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_lowered_model_matches_the_cpu_model(representation, mode):
    model = model_for(representation, mode)
    dense, indices, offsets = batch(13, bag_size=3)
    with torch.no_grad():
        expected = model(dense, indices, offsets)
        lowered = xla.lower(copy.deepcopy(model), bag_size=3).to(DEVICE)
        met.clear_all()
        out = lowered.serve(dense, indices, offsets)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert fallbacks() == []


def test_compilations_are_bounded_by_the_buckets():
    model = model_for("hybrid")
    buckets = (4, 16, 64)
    lowered = xla.lower(copy.deepcopy(model), bag_size=1, buckets=buckets).to(DEVICE)
    sizes = [1, 3, 4, 5, 9, 16, 17, 40, 64]
    met.clear_all()
    with torch.no_grad():
        for n in sizes:
            torch.testing.assert_close(lowered.serve(*batch(n, seed=n)), model(*batch(n, seed=n)), rtol=1e-4,
                                       atol=1e-5)
        compiled = met.counter_value("UncachedCompile") or 0
        assert 1 <= compiled <= len(buckets), compiled
        for n in sizes:  # every bucket is compiled now: nothing new
            lowered.serve(*batch(n, seed=n + 1))
    assert (met.counter_value("UncachedCompile") or 0) == compiled
    assert fallbacks() == []


def test_training_step_on_xla_matches_cpu():
    model = model_for("hybrid").train()
    dense, indices, offsets = batch(8, bag_size=2)
    reference = copy.deepcopy(model)
    loss = reference(dense, indices, offsets).pow(2).mean()
    loss.backward()
    lowered = xla.lower(copy.deepcopy(model), bag_size=2, buckets=(8,)).to(DEVICE)
    padded, ids, mask, n = lowered.prepare(dense, indices, offsets)
    met.clear_all()
    out = lowered(padded.to(DEVICE), ids.to(DEVICE), mask.to(DEVICE))
    out[:n].pow(2).mean().backward()
    for (name, p), q in zip(lowered.model.named_parameters(), reference.parameters()):
        assert (p.grad is None) == (q.grad is None), name
        if q.grad is not None:
            torch.testing.assert_close(p.grad.cpu(), q.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert fallbacks() == []


def test_scheduler_has_xla_paths_that_profile():
    from mprec.data.synthetic import SyntheticCriteo
    from mprec.sched.paths import LoadedModel, RowPool, discover_paths
    from mprec.sched.profile import profile_paths

    sizes = [50] * 26
    pool = RowPool.from_batches(SyntheticCriteo(2, 32, sizes, seed=7))
    models = []
    for rep in ("table", "dhe"):
        torch.manual_seed(0)
        model = DLRM.preset("kaggle", sizes, representations=[rep] * 26, dhe=dict(k=32, m=10_000, decoder=(16,)))
        models.append(LoadedModel(rep, model.eval(), pool, 0.75))
    paths = discover_paths(models, ["xla"])
    # XLA on this machine's CPU is labelled as such, not as a TPU.
    assert [p.name for p in paths] == ["xla/cpu/table", "xla/cpu/dhe"]
    for path, m in zip(paths, models):
        batch = pool.batch(0, 5)
        with torch.no_grad():
            expected = torch.sigmoid(m.model(batch.dense, batch.indices, batch.offsets))
        torch.testing.assert_close(path.run(pool.request(0, 5)), expected, rtol=1e-4, atol=1e-5)
    profiles = profile_paths(paths, pool, [1, 8], repetitions=3, budget_s=0.5, idle_gaps=())
    assert [p.name for p in profiles] == ["xla/cpu/table", "xla/cpu/dhe"]
    assert all(len(p.median_ms) == 2 and min(p.median_ms) > 0 for p in profiles)

"""The mprec command."""

import io
import json

import mprec.cli


def test_info(capsys):
    assert mprec.cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu_isa"] in info["supported"]
    assert info["precision_auto"] == ("bf16" if info["bf16_native"] else "fp32")


def test_train_refuses_a_pipeline_in_one_process(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert mprec.cli.main(["train", "--data", "synthetic", "--pipeline"]) == 2
    assert "--pipeline pipelines the all-to-alls of sharded training: it needs --sharding" in capsys.readouterr().err


def test_quick_bench_table_lists_mprec_and_peers():
    out = io.StringIO()
    rows = mprec.cli.bench_table(quick=True, out=out)
    cases = {r["case"] for r in rows}
    assert cases == set(mprec.cli.MAIN_CASES)
    for case in cases:
        impls = {r["impl"] for r in rows if r["case"] == case}
        assert "mprec" in impls and len(impls) >= 2
    assert all(r["median_ms"] > 0 for r in rows)
    assert "standard f32 sum" in out.getvalue()


def test_max_and_padding_cases_time_a_sum_of_their_own_table():
    """The reference the max and padding_idx cases are held to pools their own table and ids by sum; both max cases
    (the output alone, and the op's argmax too) pool those by max."""
    import dataclasses

    import torch

    from mprec.benchmark import EMBEDDING_BAG_CASES, SUM_REFERENCE

    held = ("max", "max, argmax", "padding_idx")
    for case in EMBEDDING_BAG_CASES:
        assert (SUM_REFERENCE in case.implementation_names()) == (case.name in held), case.name
        if case.name not in held:
            continue
        small = dataclasses.replace(case, num_rows=3000, bags=64, bag_size=5)
        impls = small.build(seed=3)
        # The case's own inputs, drawn as build draws them: the ids, then the table.
        g = torch.Generator().manual_seed(3)
        idx = torch.randint(0, small.num_rows, (small.bags * small.bag_size,), generator=g)
        table = torch.randn(small.num_rows, small.dim, generator=g)
        offsets = torch.arange(0, idx.numel(), small.bag_size)
        want = torch.nn.functional.embedding_bag(idx, table, offsets, mode="sum")
        torch.testing.assert_close(impls[SUM_REFERENCE](), want)
        if case.mode == "max":
            torch.testing.assert_close(impls["mprec"](),
                                       torch.nn.functional.embedding_bag(idx, table, offsets, mode="max"))


def test_the_batched_case_times_the_same_pooling_three_ways():
    """The 8-table case times the batched op beside eight torch calls and eight calls of mprec's single-table op
    (what the batched op must beat), and all three pool the same rows into the same [B, 8 * D] output."""
    import dataclasses

    import torch

    from mprec.benchmark import EMBEDDING_BAG_CASES

    case = next(c for c in EMBEDDING_BAG_CASES if c.tables > 1)
    names = case.implementation_names()
    assert {"mprec", f"torch x{case.tables}", f"mprec x{case.tables}"} <= set(names)
    small = dataclasses.replace(case, num_rows=3000, bags=64, bag_size=5)
    impls = small.build(seed=5)
    want = impls[f"torch x{case.tables}"]()
    assert want.shape == (small.bags, small.tables * small.dim)
    torch.testing.assert_close(impls["mprec"](), want)
    torch.testing.assert_close(impls[f"mprec x{case.tables}"](), want)


def test_the_huge_pages_case_puts_its_table_on_huge_pages(monkeypatch):
    """The huge-pages case allocates its table with mprec.memory.empty (as mprec's modules do), leaves FBGEMM out
    (its TBE allocates its own weights), and mprec and torch pool that table as the reference does."""
    import dataclasses

    import torch

    from mprec import memory
    from mprec.benchmark import EMBEDDING_BAG_CASES

    case = next(c for c in EMBEDDING_BAG_CASES if c.huge_pages)
    assert "fbgemm" not in case.implementation_names()
    placed = []
    real_empty = memory.empty
    monkeypatch.setattr(memory, "empty", lambda shape, **kw: placed.append(tuple(shape)) or real_empty(shape, **kw))
    small = dataclasses.replace(case, num_rows=3000, bags=64, bag_size=5)
    impls = small.build(seed=4)
    assert placed == [(3000, small.dim)]
    g = torch.Generator().manual_seed(4)
    idx = torch.randint(0, small.num_rows, (small.bags * small.bag_size,), generator=g)
    table = torch.randn(small.num_rows, small.dim, generator=g)
    want = torch.nn.functional.embedding_bag(idx, table, torch.arange(0, idx.numel(), small.bag_size), mode="sum")
    torch.testing.assert_close(impls["mprec"](), want)
    torch.testing.assert_close(impls["torch"](), want)


def test_warm_cases_time_their_calls_without_the_flush(monkeypatch):
    """The warm cases run nothing before each timed call (their rows stay in the caches); every other case flushes."""
    from mprec import benchmark

    flushes = []
    monkeypatch.setattr(benchmark, "flush_caches", lambda: flushes.append(1))
    warm = [case for case in benchmark.EMBEDDING_BAG_CASES if case.warm]
    assert warm
    for case in warm:
        case.before_each_call()
    assert flushes == []
    for case in benchmark.EMBEDDING_BAG_CASES:
        if not case.warm:
            case.before_each_call()
    assert len(flushes) == len(benchmark.EMBEDDING_BAG_CASES) - len(warm)

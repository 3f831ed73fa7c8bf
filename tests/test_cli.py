"""The mprec command."""

import io
import json

import mprec.cli


def test_info(capsys):
    assert mprec.cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cpu_isa"] in info["supported"]
    assert info["precision_auto"] == ("bf16" if info["bf16_native"] else "fp32")


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

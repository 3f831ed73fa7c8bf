"""bench/bench_gpu.py runs end to end (``--smoke``: toy sizes; on the CPU where there is no GPU).

The GPU benchmark only measures on a GPU machine, whose lease is short: a mistake in the script must show up
here, not there. The smoke run goes through every case and writes the results file; this checks that each
case reported each implementation with finite figures, and that mprec's results agree with the peers'.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_gpu") / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_bench_gpu_smoke(smoke_results):
    doc = json.loads(smoke_results.read_text())
    assert doc["machine"]["smoke"] is True
    backends = doc["machine"]["backends"]
    assert backends
    rows = doc["results"]
    found = {(r["case"], r["impl"]) for r in rows}
    mprec_impls = {f"mprec_{b}" for b in backends}
    expected = {("machine", "copy"), ("machine", "matmul_float32"), ("machine", "matmul_bfloat16")}
    for dtype in ("float32", "bfloat16"):
        for case in (f"embedding_bag_{dtype}", f"embedding_bag_{dtype}_train", "kaggle_26_tables"):
            expected |= {(case, "torch")} | {(case, impl) for impl in mprec_impls}
        expected |= {(f"dhe_{dtype}", "eager"), (f"dhe_{dtype}", "mprec_triton" if "triton" in backends
                                                   else f"mprec_{backends[0]}")}
    assert expected <= found, sorted(expected - found)
    # The launch shapes: each kernel's default and the alternatives the smoke run takes (two a kernel).
    shape_cases = ["shapes_embedding_bag_float32", "shapes_embedding_bag_bfloat16", "shapes_one_lookup_bags",
                   "shapes_dhe_float32", "shapes_dhe_bfloat16"]
    for case in shape_cases:
        impls = [r["impl"] for r in rows if r["case"] == case]
        assert len(impls) == 3 and impls[0].startswith("default"), (case, impls)
    assert doc["machine"]["cases_done"] == ["machine", "embedding_bag", "kaggle", "dhe", "eb_shapes",
                                             "dhe_shapes"]
    for r in rows:
        assert "failed" not in r, r
        numbers = [v for k, v in r.items() if isinstance(v, float)]
        assert numbers and all(math.isfinite(v) and v >= 0 for v in numbers), r
    errors = {(r["case"], r["impl"]): r["rel_error"] for r in rows if "rel_error" in r}
    # The forward embedding bags, the two DHE precisions, and two alternative shapes of each shape case.
    assert len(errors) == 2 * len(mprec_impls) + 2 + 2 * len(shape_cases)
    for (case, impl), error in errors.items():
        assert error < (2e-2 if "bfloat16" in case else 1e-5), (case, impl, error)


def test_bench_gpu_refuses_unknown_cases(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--smoke", "--cases", "dhe,foo",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "unknown cases ['foo']" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_summary_reads_the_results(smoke_results, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import summary_gpu
    finally:
        sys.path.remove(str(ROOT / "bench"))
    verdicts = summary_gpu.summarize(smoke_results)
    text = capsys.readouterr().out
    assert "a smoke run: toy sizes, no measurement" in text
    doc = json.loads(smoke_results.read_text())
    mprec_impls = {f"mprec_{b}" for b in doc["machine"]["backends"]}
    # Every target is judged for every mprec implementation of its case, against the figure in the file.
    figures = {(r["case"], r["impl"]): r for r in doc["results"]}
    assert len(verdicts["targets"]) == 5 * len(mprec_impls) + 2
    for description, case, figure, minimum in summary_gpu.TARGETS:
        judged = [t for t in verdicts["targets"] if t[0] == description]
        assert judged, description
        for _, impl, value, met in judged:
            assert value == figures[(case, impl)][figure] and met == (value >= minimum)
            assert f"{description}: {impl} {value:.3g} {'met' if met else 'NOT met'}" in text
    # The fastest alternative shape of each kernel, and its speed against the default.
    assert set(verdicts["best_shapes"]) == {c for c, _ in figures if c.startswith("shapes_")}
    for case, (impl, speedup) in verdicts["best_shapes"].items():
        rows = [r for r in doc["results"] if r["case"] == case]
        fastest = min(rows[1:], key=lambda r: r["median_ms"])
        assert impl == fastest["impl"] and speedup == rows[0]["median_ms"] / fastest["median_ms"]

"""``bench/run.py --runs N``: the targets of N runs' summaries, in how many each was met and its figure per run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import run
    import summary_dlrm
    import summary_interaction
finally:
    sys.path.remove(str(ROOT / "bench"))

# Target lines as the summaries print them (bench/summary.py, summary_dlrm.py, summary_dhe.py), among other lines.
FIRST = """machine: some CPU
case               impl          median ms
D=16               mprec              0.70
targets (avx2 machine; ratio = baseline median / mprec median):
  [ met] every case >= 1.0x torch
  [ met] D=16 >= 1.2x torch: 1.28 (need 1.20)
  [MISS] train fp32: mprec >= 2.0x eager fp32: 1.44
  [ met] decoder cache hit rate >= 60% (lfu): 84.9%
"""
SECOND = """targets:
  [MISS] every case >= 1.0x torch: below in int8 0.95, one-hot D=16 0.98
  [MISS] D=16 >= 1.2x torch: 1.14 (need 1.20)
  [ met] train fp32: mprec >= 2.0x eager fp32: 2.05
"""


def test_target_figures_reads_every_summary_format():
    assert run.target_figures(FIRST) == {
        "every case >= 1.0x torch": (True, ""),
        "D=16 >= 1.2x torch": (True, "1.28"),
        "train fp32: mprec >= 2.0x eager fp32": (False, "1.44"),  # the target's own ": " stays in its name
        "decoder cache hit rate >= 60% (lfu)": (True, "84.9%"),
    }
    assert run.target_figures(SECOND)["every case >= 1.0x torch"] == (False, "below in int8 0.95, one-hot D=16 0.98")
    assert run.target_figures("no targets here\n  [ok] nor here") == {}


def test_runs_report_counts_the_runs_that_met_each_target():
    lines = run.runs_report([FIRST, SECOND, FIRST]).splitlines()
    assert lines[0].startswith("targets over 3 runs")
    assert lines[1:] == [
        "  [2/3 met] every case >= 1.0x torch: met | below in int8 0.95, one-hot D=16 0.98 | met",
        "  [2/3 met] D=16 >= 1.2x torch: 1.28 | 1.14 | 1.28",
        "  [1/3 met] train fp32: mprec >= 2.0x eager fp32: 1.44 | 2.05 | 1.44",
        "  [2/3 met] decoder cache hit rate >= 60% (lfu): 84.9% | - | 84.9%",  # not in the second run
    ]


def test_runs_must_be_at_least_one():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--runs", "0"], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert "--runs must be at least 1, got 0" in result.stderr


def test_dlrm_summary_compares_the_compiled_models(tmp_path):
    """Each implementation's row, and mprec ahead of eager with both under torch.compile."""
    import json

    ms = {("train", "eager"): 50.0, ("train", "mprec"): 40.0, ("train", "eager-compiled"): 48.0,
          ("train", "mprec-compiled"): 32.0, ("infer", "eager"): 15.0, ("infer", "mprec"): 12.0}
    entries = [{"extra_info": {"phase": phase, "precision": "fp32", "impl": impl, "interleaved_median_ms": v,
                               "examples_per_second": 2048 / v * 1e3, "cpu_isa": "avx2", "bf16_native": False}}
               for (phase, impl), v in ms.items()]
    path = tmp_path / "dlrm.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": entries}))
    lines = summary_dlrm.summarize(path).splitlines()
    assert any(line.split()[:4] == ["train", "fp32", "mprec-compiled", "32.00"] for line in lines)
    assert "  [ met] train fp32, both under torch.compile: mprec >= 1.0x eager: 1.50" in lines
    assert not any("infer fp32, both under torch.compile" in line for line in lines)  # eager was not compiled
    assert "  [MISS] train fp32: mprec >= 1.3x eager fp32: 1.25" in lines  # the targets stay uncompiled


def test_interaction_summary_holds_mprec_to_eager_and_compiled(tmp_path):
    """Each implementation's row with its pairs' GFLOP/s and fraction of the matmul rate, and a target line per
    case, phase and baseline."""
    import json

    ms = {"mprec": 0.5, "eager": 2.0, "eager compiled": 0.9}
    entries = [{"extra_info": {"kind": "matmul_rate", "gflops": {"float32": 200.0}}}]
    entries += [{"extra_info": {"case": "kaggle", "dim": 16, "phase": "infer", "impl": impl, "flops": 50_000_000,
                                "interleaved_median_ms": v, "cpu_isa": "avx2", "block": 6}} for impl, v in ms.items()]
    path = tmp_path / "interaction.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": entries}))
    lines = summary_interaction.summarize(path).splitlines()
    # 50 MFLOP in 0.5 ms: 100 GFLOP/s, half the matmul rate; 4x eager, 1.8x compiled eager.
    assert any(line.split() == ["kaggle", "16", "infer", "mprec", "0.500", "100.0", "50%", "4.00x", "1.80x"]
               for line in lines)
    assert f"  [ met] kaggle D=16 infer: mprec >= {summary_interaction.EAGER_TARGET}x eager: 4.00" in lines
    assert f"  [MISS] kaggle D=16 infer: mprec >= {summary_interaction.COMPILED_TARGET}x eager compiled: 1.80" in lines

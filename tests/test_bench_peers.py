"""The peers run at mprec's ISA when it is forced down (bench/peer_isa.py): ``MPREC_CPU_ISA=avx2`` on an AVX-512
machine caps torch's own kernels, FBGEMM, oneDNN and MKL at AVX2, and the summaries say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mprec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
try:
    import peer_isa
    import summary
finally:
    sys.path.remove(str(ROOT / "bench"))

CAP_NAMES = sorted(name for caps in peer_isa.CAPS.values() for name in caps)


def summary_lines(tmp_path, medians, machine_info=None, flush_bytes=None, **extra) -> list[str]:
    """bench/summary.py's lines for a run of one case ("standard f32 sum" unless ``extra`` names another): each
    implementation of ``medians`` ({impl: ms}) with ``extra`` in its extra_info, and the read-bandwidth entry."""
    machine = {"kind": "read_bandwidth", "gbps": 20.0, **({"flush_bytes": flush_bytes} if flush_bytes else {})}
    entries = [{"extra_info": machine, "stats": {"median": 0.01}}]
    for impl, ms in medians.items():
        info = {"case": "standard f32 sum", "impl": impl, "bytes": 4e7, "tables": 1, "interleaved_median_ms": ms,
                **extra}
        entries.append({"extra_info": info, "stats": {"median": ms / 1e3}})
    path = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
    path.write_text(json.dumps(dict(machine_info=machine_info or {}, benchmarks=entries)))
    return summary.summarize(path).splitlines()


def test_an_emulated_avx2_caps_every_peer_and_keeps_caps_set_by_hand():
    environ = {"MPREC_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
    caps = peer_isa.apply(environ)
    assert sorted(caps) == CAP_NAMES == sorted(peer_isa.in_force(environ))
    assert caps["ATEN_CPU_CAPABILITY"] == "avx2" and caps["FBGEMM_ENABLE_INSTRUCTIONS"] == "AVX2"
    assert caps["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert caps["MKL_ENABLE_INSTRUCTIONS"] == "SSE4_2"  # set by hand: kept
    # inductor's compiled graphs, generated for the cap's vector width, are cached apart from uncapped ones
    assert environ["TORCHINDUCTOR_CACHE_DIR"] == peer_isa.inductor_cache_dir("avx2") != peer_isa.inductor_cache_dir("")
    mine = {"MPREC_CPU_ISA": "avx2", "TORCHINDUCTOR_CACHE_DIR": "/elsewhere"}
    peer_isa.apply(mine)
    assert mine["TORCHINDUCTOR_CACHE_DIR"] == "/elsewhere"


@pytest.mark.parametrize("isa", [None, "avx512", "scalar"])
def test_no_caps_where_mprec_is_not_forced_to_avx2(isa):
    environ = {} if isa is None else {"MPREC_CPU_ISA": isa}
    before = dict(environ)
    assert peer_isa.apply(environ) == {} and environ == before


def test_the_caps_reach_torch_and_onednn():
    """The names are the ones the libraries read: in a fresh process, torch's kernels run AVX2 and oneDNN no
    longer offers bfloat16 (as on an AVX2 machine), which is what --precision auto and the benchmarks ask."""
    if "avx2" not in mprec.supported_cpu_isas():
        pytest.skip("this CPU has no AVX2: the caps have nothing to emulate")
    env = {k: v for k, v in os.environ.items() if k not in CAP_NAMES}
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import peer_isa; peer_isa.apply(); import torch; "
             "print(torch.backends.cpu.get_cpu_capability(), torch.ops.mkldnn._is_mkldnn_bf16_supported())")
    done = subprocess.run([sys.executable, "-c", probe, str(ROOT / "bench")], capture_output=True, text=True,
                          env=dict(env, MPREC_CPU_ISA="avx2"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["AVX2", "False"]


def test_the_summary_names_the_caps(tmp_path):
    def results(machine_info):
        return summary_lines(tmp_path, {"mprec": 2.0, "torch": 2.2}, machine_info)[0]

    info = {"cpu": {"brand_raw": "X"}, "mprec_cpu_isa": "avx2", "torch_cpu_capability": "AVX2"}
    capped = results({**info, "isa_caps": peer_isa.apply({"MPREC_CPU_ISA": "avx2"})})
    assert capped.startswith("machine: X (avx2; peers capped at AVX2 (ATEN_CPU_CAPABILITY, ") and \
        "torch's own kernels: AVX2)" in capped
    assert results({**info, "isa_caps": {}}).startswith("machine: X (avx2), ")
    assert results({**info, "isa_caps": {}, "mprec_row_prefetch": "whole_slices"}).startswith(
        "machine: X (avx2, rows prefetched: whole slices), ")


def test_the_cache_flush_outgrows_the_largest_cache(tmp_path):
    """The embedding-bag benchmark flushes several times the largest cache sysfs reports, and its summary says
    how much."""
    from mprec.benchmark import cache_flush_bytes, largest_cache_bytes

    for index, size in [("index0", "48K"), ("index2", "2048K"), ("index3", "491520K"), ("index4", "n/a")]:
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    assert largest_cache_bytes(str(tmp_path)) == 480 << 20
    assert largest_cache_bytes(str(tmp_path / "missing")) == 0
    assert cache_flush_bytes() == max(256 << 20, 4 * largest_cache_bytes())
    first = summary_lines(tmp_path, {"mprec": 2.0}, flush_bytes=1920 << 20)[0]
    assert "caches flushed before each timed call by reading 1920 MiB" in first


def test_the_summary_says_where_huge_pages_were_off(tmp_path):
    """The huge-pages case says whether its table really was on 2 MiB pages."""
    def note(huge_pages):
        lines = summary_lines(tmp_path, {"mprec": 2.0}, case="huge pages", huge_pages_asked=True,
                              huge_pages=huge_pages)
        return [line for line in lines if line.startswith("huge pages:")]

    assert note(True) == ["huge pages: the table on 2 MiB pages, as mprec's modules allocate theirs"]
    assert note(False) == ["huge pages: transparent huge pages are off here, so 4 KiB pages"]


def test_results_of_a_forced_isa_name_the_cpus_best_too():
    """A run of the AVX2 kernels on an AVX-512 CPU writes files of its own, apart from an AVX2-only CPU's of the
    same name: its memory system is the AVX-512 CPU's."""
    from mprec.benchmark import results_stem
    from mprec.sched.profile import machine_name

    best = mprec.supported_cpu_isas()[0]
    previous = mprec.cpu_isa()
    try:
        for isa in mprec.supported_cpu_isas():
            mprec.set_cpu_isa(isa)
            expected = f"{machine_name()}-{isa}" + ("" if isa == best else f"-on-{best}")
            assert results_stem() == expected
    finally:
        mprec.set_cpu_isa(previous)

"""The CUDA emulator (tests/cuda_emulator), which runs the CUDA C++ kernels on the CPU for tests/test_ops_gpu.py:
its launch rewriting, what it computes, and that it refuses what a GPU would leave undefined (divergent or
incomplete warp collectives, a skipped __syncthreads, launches over the hardware's limits).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import cuda_emulator

SELFTEST = cuda_emulator.HERE / "selftest.cu"


def test_launches_are_rewritten_into_calls():
    source = "\n".join([
        "k<<<grid, block, 0, stream>>>(p);",
        "ns::kernel<float, Pair<int, 2>><<<dim3(1, 2), 32>>>(a, b);",
        "none<<<1, 1>>>();",
        "spread<int64_t>\n    <<<blocks,\n       threads>>>(x,\n y);",
    ])
    assert cuda_emulator.rewrite_launches(source).splitlines() == [
        "::cuda_emulator::launch(&k, ::cuda_emulator::Config{grid, block, 0, stream}, p);",
        "::cuda_emulator::launch(&ns::kernel<float, Pair<int, 2>>, ::cuda_emulator::Config{dim3(1, 2), 32}, a, b);",
        "::cuda_emulator::launch(&none, ::cuda_emulator::Config{1, 1});",
        "::cuda_emulator::launch(&spread<int64_t>, ::cuda_emulator::Config{blocks,",
        "       threads}, x,",
        " y);",
    ]


CXX = os.environ.get("CXX", "g++")


def _build_selftest(out, flags=()):
    source = out / "selftest.cpp"
    source.write_text(f'#line 1 "{SELFTEST.name}"\n' + cuda_emulator.rewrite_launches(SELFTEST.read_text()))
    binary = out / ("selftest" + "".join(flags).replace("-", "_").replace("=", "_"))
    built = subprocess.run([CXX, "-std=c++20", "-O1", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing", *flags,
                            f"-I{cuda_emulator.HERE / 'include'}", str(source), "-o", str(binary)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr

    def run(case: str) -> tuple[int, str]:
        done = subprocess.run([str(binary), case], capture_output=True, text=True, timeout=60)
        return done.returncode, (done.stdout + done.stderr).strip()

    return run


@pytest.fixture(scope="module")
def selftest(tmp_path_factory):
    """Runs a case of selftest.cu, compiled through the emulator: (exit status, output)."""
    return _build_selftest(tmp_path_factory.mktemp("cuda-emulator"))


def _sanitizer_environment_or_skip():
    environment = cuda_emulator.sanitizer_environment(CXX)
    if environment is None:
        pytest.skip(f"{CXX} has no AddressSanitizer runtime")
    return environment


def test_shuffles_and_votes(selftest):
    assert selftest("shuffle") == (0, " ".join(str(10 * ((lane + 1) % 32)) for lane in range(32)))
    ballot = sum(1 << lane for lane in range(0, 32, 3))
    assert selftest("vote") == (0, f"1 0 {ballot - (1 << 32) if ballot >= 1 << 31 else ballot} 28")


def test_blocks_warps_shared_memory_and_barriers(selftest):
    # Three blocks of three warps; block b sums 96 * b .. 96 * b + 95.
    expected = [sum(range(96 * b, 96 * b + 96)) for b in range(3)]
    assert selftest("block_sum") == (0, " ".join(map(str, expected)))
    assert selftest("no_arguments") == (0, "ok")


@pytest.mark.parametrize("case, detail", [
    ("divergent", r"divergent warp: thread \(1, 0, 0\) of block \(0, 0, 0\) waits at __any_sync "
                  r"\(selftest.cu:\d+\) and lane 0 at __any_sync \(selftest.cu:\d+\)"),
    ("exited_lane", r"__shfl_sync \(selftest.cu:\d+, mask 0xffffffff\) waits for lane 5, which has returned"),
    ("mask_leaves_out", r"thread \(16, 0, 0\) of block \(0, 0, 0\) calls __any_sync \(selftest.cu:\d+\) with a "
                        r"mask that leaves it out"),
    ("shuffle_outside_mask", r"thread \(0, 0, 0\) of block \(0, 0, 0\) shuffles from lane 20 outside the mask"),
    ("partial_warp", r"__any_sync \(selftest.cu:\d+, mask 0xffffffff\) waits for lane 16, which does not exist"),
    ("barrier_skipped", r"__syncthreads \(selftest.cu:\d+\) waits for threads that have returned"),
])
def test_undefined_warp_behaviour_fails_the_launch(selftest, case, detail):
    status, output = selftest(case)
    assert status == 1
    assert output.startswith(f"{case}: error 719: "), output  # cudaErrorLaunchFailure
    assert re.search(detail, output), output


@pytest.mark.parametrize("case, detail", [
    ("block_too_large", "block (2048, 1, 1) over 1024 threads or a dimension's limit"),
    ("grid_too_tall", "grid (1, 70000, 1) over the limits (2^31 - 1, 65535, 65535)"),
])
def test_launches_over_the_limits_are_invalid_configurations(selftest, case, detail):
    # cudaErrorInvalidConfiguration, as a GPU answers; nothing runs.
    assert selftest(case) == (1, f"{case}: error 9: launch configuration: {detail}")


def test_the_address_sanitizer_sees_emulated_reads(tmp_path):
    # The control for test_kernels_touch_nothing_outside_their_tensors: a kernel reading past a buffer fails.
    _sanitizer_environment_or_skip()
    run = _build_selftest(tmp_path, ("-fsanitize=address",))
    status, output = run("read_past_the_end")
    assert status != 0
    assert "AddressSanitizer: heap-buffer-overflow" in output and "read_past_kernel" in output, output


def test_kernels_touch_nothing_outside_their_tensors():
    # The CUDA C++ embedding-bag kernels and their glue, built with AddressSanitizer, on every shape they
    # specialise on and on bad indices and offsets (tests/cuda_emulator/bounds.py); their results and messages
    # are checked against the CPU kernels' there too.
    environment = _sanitizer_environment_or_skip()
    done = subprocess.run([sys.executable, str(cuda_emulator.HERE / "bounds.py")], capture_output=True, text=True,
                          env=environment, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "ERROR: AddressSanitizer" not in output, output[-6000:]
    checked = int(re.search(r"(\d+) calls checked", done.stdout).group(1))
    assert checked > 500, done.stdout

"""The CUDA kernels (csrc/cuda/*.cu) compile for sm_90 without torch and without warnings.

They are built into mprec._C only against a CUDA build of torch, which CI does not have; nvcc alone can still
compile them, so a kernel that does not compile fails here rather than on the first GPU machine. Running them
needs a GPU: the op tests do that where one is present.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
KERNEL_SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = os.environ.get("NVCC", "nvcc")


def test_there_are_kernel_sources():
    assert KERNEL_SOURCES, f"no .cu files in {CUDA_DIR}"


@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernels_include_no_torch(source):
    # What makes them compilable without a CUDA torch; the torch side lives in csrc/cuda/*.cpp.
    torch_include = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10)/', re.MULTILINE)
    for path in [source, *sorted((ROOT / "csrc" / "include" / "mprec" / "cuda").glob("*.h"))]:
        assert not torch_include.search(path.read_text()), f"{path.relative_to(ROOT)} includes a torch header"


@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernels_compile_for_sm90(source, tmp_path):
    nvcc = shutil.which(NVCC)
    if nvcc is None:
        pytest.skip(f"{NVCC} is not on PATH: the CUDA kernels cannot be compiled on this machine")
    result = subprocess.run(
        [nvcc, "-std=c++17", "-arch=sm_90", "-O3", f"-I{ROOT / 'csrc' / 'include'}", "-c", str(source),
         "-o", str(tmp_path / (source.stem + ".o"))],
        capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"nvcc failed on {source.name}:\n{output}"
    assert "warning" not in output.lower(), f"nvcc warned on {source.name}:\n{output}"
    assert (tmp_path / (source.stem + ".o")).stat().st_size > 0

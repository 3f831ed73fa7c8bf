"""The CUDA kernels (csrc/cuda/*.cu) compile for sm_90 without torch and without warnings, and the torch glue
(csrc/cuda/*_cuda.cpp) compiles against the installed torch's headers and links with the kernels.

They are built into mprec._C only against a CUDA build of torch, which CI does not have; nvcc alone can still
compile the kernels, and a CPU build of torch ships the c10/cuda headers the glue includes, so code that does
not compile fails here rather than on the first GPU machine. What only a CUDA torch has is libc10_cuda (streams,
guards, the caching allocator): the link test checks that those are the only symbols left unresolved. Running
the kernels needs a GPU: the op tests do that where one is present.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch.utils.cpp_extension as cpp_extension

import cuda_emulator

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
KERNEL_SOURCES = sorted(CUDA_DIR.glob("*.cu"))
GLUE_SOURCES = sorted(CUDA_DIR.glob("*.cpp"))
SHARED_SOURCES = cuda_emulator.SHARED_SOURCES  # what the glue calls from csrc/cpu
NVCC = os.environ.get("NVCC", "nvcc")


def test_there_are_kernel_sources():
    assert KERNEL_SOURCES, f"no .cu files in {CUDA_DIR}"


@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernels_include_no_torch(source):
    # What makes them compilable without a CUDA torch; the torch side lives in csrc/cuda/*.cpp.
    torch_include = re.compile(r'^\s*#\s*include\s*[<"](torch|ATen|c10)/', re.MULTILINE)
    # torch_runtime.h is the glue's (csrc/cuda/*_cuda.cpp), not the kernels'.
    headers = [h for h in sorted((ROOT / "csrc" / "include" / "mprec" / "cuda").glob("*.h")) if h.name != "torch_runtime.h"]
    for path in [source, *headers]:
        assert not torch_include.search(path.read_text()), f"{path.relative_to(ROOT)} includes a torch header"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """source -> (object file, nvcc's output with ptxas's resource report), compiled once per source, position
    independent so that the link test can use the same objects."""
    out_dir, done = tmp_path_factory.mktemp("cuda-objects"), {}

    def compile_(source: Path) -> tuple:
        if source not in done:
            nvcc = _nvcc_or_skip()
            obj = out_dir / (source.stem + ".o")
            result = subprocess.run(
                [nvcc, "-std=c++17", "-arch=sm_90", "-O3", "-Xptxas", "-v", "-Xcompiler", "-fPIC",
                 f"-I{ROOT / 'csrc' / 'include'}", "-c", str(source), "-o", str(obj)],
                capture_output=True, text=True)
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"nvcc failed on {source.name}:\n{output}"
            done[source] = (obj, output)
        return done[source]

    return compile_


@pytest.mark.parametrize("source", KERNEL_SOURCES, ids=lambda p: p.name)
def test_kernels_compile_for_sm90(source, compiled):
    obj, output = compiled(source)
    assert "warning" not in output.lower(), f"nvcc warned on {source.name}:\n{output}"
    assert obj.stat().st_size > 0


def test_pool_kernels_of_the_common_shape_keep_their_registers_few(compiled):
    # Registers cap the warps an SM keeps in flight, and a gather hides the latency of its random row reads
    # with warps. Each shape of the pool kernel is its own kernel, sized by the launcher, so the common one
    # (a sum over rows of whole 16-byte packets, one packet a lane, as D = 128 in float, half and bfloat16)
    # is not allocated the registers of the widest shape: those kernels used 91 (float) to 128 (bfloat16)
    # registers a thread when every shape was one kernel, and 63 to 80 once they were apart.
    used = _pool_kernel_registers(compiled)
    # embedding_bag_pool_kernel<float | __half | __nv_bfloat16, int32_t | int64_t, kMax = false, kArgs = false,
    # VEC = 4 | 8, NV = 1>
    shape = re.compile(r"embedding_bag_pool_kernelI(f|6__half|13__nv_bfloat16)[il]Lb0ELb0ELi(4|8)ELi1E")
    common = {name: n for name, n in used.items() if shape.search(name)}
    assert len(common) == 6, f"expected the float, half and bfloat16 sum kernels of one packet a lane for int32 " \
                             f"and int64 indices, found {sorted(common)} among {sorted(used)}"
    assert max(common.values()) <= 80, f"registers a thread: {common}"


def test_max_kernels_without_the_argmax_keep_no_row_numbers(compiled):
    # Max mode for a call that wants no max_indices has kernels of its own (kArgs = false), which track no row
    # numbers: those are 64-bit, two registers for each column a lane owns. On rows of whole packets, where a lane
    # owns the most columns, such a kernel must be allocated fewer registers than the argmax kernel of its shape.
    used = _pool_kernel_registers(compiled)
    # embedding_bag_pool_kernel<WT, IT, kMax = true, kArgs, VEC, NV>
    shape = re.compile(r"embedding_bag_pool_kernelI(f|d|6__half|13__nv_bfloat16)([il])Lb1ELb([01])ELi(\d+)ELi(\d+)E")
    shapes = {}
    for name, n in used.items():
        match = shape.search(name)
        if match and int(match.group(4)) > 1:  # VEC > 1: rows of whole packets
            weight, index, args, vec, nv = match.groups()
            shapes.setdefault((weight, index, vec, nv), {})[args == "1"] = n
    assert len(shapes) == 16 and all(len(both) == 2 for both in shapes.values()), \
        f"expected max kernels with and without the argmax for 4 weight types, 2 index types and 2 packet shapes, " \
        f"found {shapes}"
    grown = {key: both for key, both in shapes.items() if both[False] >= both[True]}
    assert not grown, f"registers a thread without the argmax >= with it ({{argmax: registers}}): {grown}"


def _pool_kernel_registers(compiled) -> dict:
    """{mangled name: registers a thread} of the embedding-bag kernels, from ptxas's report."""
    _, output = compiled(CUDA_DIR / "embedding_bag_kernels.cu")
    used = re.findall(r"Compiling entry function '(\w+)' for 'sm_90'\s+ptxas info\s+: Function properties "
                      r"for \1\s+.*?\s+ptxas info\s+: Used (\d+) registers", output)
    return {name: int(n) for name, n in used}


def _nvcc_or_skip() -> str:
    nvcc = shutil.which(NVCC)
    if nvcc is None:
        pytest.skip(f"{NVCC} is not on PATH: the CUDA sources cannot be compiled on this machine")
    return nvcc


def _toolkit_or_skip(nvcc: str) -> Path:
    # As setup.py looks for it: nvcc may be a wrapper script outside the toolkit.
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), Path(nvcc).resolve().parents[1],
                  "/usr/local/cuda"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "include" / "cuda_runtime_api.h").is_file():
            return Path(candidate)
    pytest.skip("no CUDA toolkit headers (cuda_runtime_api.h) found beside nvcc, in $CUDA_HOME or /usr/local/cuda")


def _run(command: list[str], what: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{what} failed:\n{output}"
    return output


def test_glue_compiles_and_links_against_torch(tmp_path, compiled):
    nvcc = _nvcc_or_skip()
    toolkit = _toolkit_or_skip(nvcc)
    cxx = os.environ.get("CXX", "g++")
    torch_includes = [flag for path in cpp_extension.include_paths() for flag in ("-isystem", path)]
    # The CPU wheel lacks the one header CMake generates for c10_cuda (its export macro); the glue needs none
    # of it on Linux.
    flags = ["-std=c++17", "-O1", "-fPIC", "-Wall", "-Wextra", "-Werror", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
             *torch_includes, "-isystem", str(toolkit / "include"), f"-I{ROOT / 'csrc' / 'include'}"]
    objects = []
    for source in [*GLUE_SOURCES, *SHARED_SOURCES]:
        objects.append(tmp_path / (source.stem + ".o"))
        _run([cxx, *flags, "-c", str(source), "-o", str(objects[-1])], f"{cxx} on {source.name}")
    objects += [compiled(source)[0] for source in KERNEL_SOURCES]

    libraries = [flag for path in cpp_extension.library_paths() for flag in ("-L", path)]
    result = subprocess.run(
        [cxx, "-shared", "-o", str(tmp_path / "glue.so"), *map(str, objects), *libraries, "-ltorch_cpu", "-lc10",
         "-L", str(toolkit / "lib64"), "-lcudart", "-Wl,--no-undefined"],
        capture_output=True, text=True)
    unresolved = sorted(set(re.findall(r"undefined reference to `([^']*)'", result.stdout + result.stderr)))
    assert unresolved, "the link resolved everything: libc10_cuda's symbols were expected to be missing here"
    outside_c10_cuda = [symbol for symbol in unresolved if not symbol.startswith("c10::cuda::")]
    assert not outside_c10_cuda, f"the glue needs symbols no mprec source or torch library defines: {outside_c10_cuda}"

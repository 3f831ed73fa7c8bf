"""Builds mprec and its compiled extension mprec._C through CMake (CMakeLists.txt at the root).

    pip install --no-build-isolation -e .

--no-build-isolation matters: the extension must be compiled against the torch that will import it.
Environment:
  MPREC_WITH_CUDA   "auto" (default): build the CUDA kernels in csrc/cuda when torch is a CUDA build
                    (torch.version.cuda is set) and nvcc is found ($CUDA_HOME/bin, $CUDA_PATH/bin, PATH, or
                    /usr/local/cuda/bin); "1" builds them (and fails without a CUDA torch or nvcc); "0" never.
  TORCH_CUDA_ARCH_LIST  the GPU architectures to compile for, e.g. "9.0" or "8.0;9.0" (default 9.0).
  MPREC_BUILD_JOBS  parallel build jobs; MPREC_BUILD_TYPE (Release) is passed as CMAKE_BUILD_TYPE.
  MPREC_PREBUILT    a compiled mprec._C to install instead of building one: a build made elsewhere for the
                    same Python and torch (`make device-prep` makes one for the GPU machine, whose time is
                    too short to spend compiling). Refused unless its file name carries this Python's ABI tag.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def find_nvcc() -> Path | None:
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(variable)
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return Path(root) / "bin" / "nvcc"
    on_path = shutil.which("nvcc")
    if on_path:
        return Path(on_path)
    default = Path("/usr/local/cuda/bin/nvcc")
    return default if default.is_file() else None


def cuda_build(torch_cuda: str | None, nvcc: Path | None) -> bool:
    """Whether to build csrc/cuda, from MPREC_WITH_CUDA (auto, 1 or 0)."""
    setting = os.environ.get("MPREC_WITH_CUDA", "auto").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return False
    if setting in ("1", "on", "true", "yes"):
        if torch_cuda is None:
            raise RuntimeError("MPREC_WITH_CUDA=1, but the installed torch is a CPU build (torch.version.cuda is None)")
        if nvcc is None:
            raise RuntimeError("MPREC_WITH_CUDA=1, but nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
        return True
    if setting != "auto":
        raise RuntimeError(f"MPREC_WITH_CUDA must be auto, 1 or 0, got {setting!r}")
    return torch_cuda is not None and nvcc is not None


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch  # the torch this build is for

        out = Path(self.get_ext_fullpath(ext.name)).resolve()
        prebuilt = os.environ.get("MPREC_PREBUILT")
        if prebuilt:
            self.install_prebuilt(Path(prebuilt).resolve(), out)
            return
        # One build folder per Python and torch: environments with different torch versions (the XLA lane's
        # torch 2.9 beside the main one) must not share a CMake cache or objects.
        torch_version = torch.__version__.split("+")[0]
        build_dir = ROOT / "build" / f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch_version}"
        build_dir.mkdir(parents=True, exist_ok=True)
        nvcc = find_nvcc()
        with_cuda = cuda_build(torch.version.cuda, nvcc)
        cmake_args = [
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('MPREC_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build_dir / 'lib'}",
            f"-DMPREC_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
        ]
        if with_cuda:
            # The nvcc found may be a wrapper script outside the toolkit; torch's CMake config needs the toolkit
            # itself (headers, libraries), so fall back to CUDA_HOME or the usual install location.
            toolkit = nvcc.resolve().parent.parent
            if not (toolkit / "include" / "cuda_runtime_api.h").is_file():
                toolkit = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
            cmake_args += [f"-DCMAKE_CUDA_COMPILER={toolkit / 'bin' / 'nvcc'}", f"-DCUDA_TOOLKIT_ROOT_DIR={toolkit}"]
        try:
            import ninja  # noqa: F401

            cmake_args += ["-G", "Ninja"]
        except ImportError:
            pass
        jobs = os.environ.get("MPREC_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *cmake_args], check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)
        built = next((build_dir / "lib").glob("_C*.so"), None)
        if built is None:
            raise RuntimeError(f"CMake did not produce mprec._C in {build_dir / 'lib'}")
        out.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(built), str(out))

    def install_prebuilt(self, prebuilt: Path, out: Path) -> None:
        # The suffix (".cpython-312-x86_64-linux-gnu.so") names the interpreter ABI the module was built for;
        # whether it was built for this torch is not checked here: mprec.build_info()["torch_version"] says
        # (bench/gpu.sh checks it after installing).
        if not prebuilt.is_file():
            raise RuntimeError(f"MPREC_PREBUILT: no such file {prebuilt}")
        if not prebuilt.name.endswith(out.name[out.name.index("."):]):
            raise RuntimeError(f"MPREC_PREBUILT: {prebuilt.name} was not built for this Python (wants {out.name})")
        if prebuilt != out:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.copy_file(str(prebuilt), str(out))


setup(
    packages=find_packages(include=["mprec", "mprec.*"]),
    ext_modules=[CMakeExtension("mprec._C")],
    cmdclass={"build_ext": CMakeBuild},
)

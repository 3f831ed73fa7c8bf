"""Builds mprec and its compiled extension mprec._C through CMake (CMakeLists.txt at the root).

    pip install --no-build-isolation -e .

--no-build-isolation matters: the extension must be compiled against the torch that will import it.
Environment: MPREC_WITH_CUDA=1 also builds csrc/cuda; MPREC_BUILD_JOBS sets the parallel build jobs;
MPREC_BUILD_TYPE (Release) is passed as CMAKE_BUILD_TYPE.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch  # the torch this build is for

        out = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = ROOT / "build" / f"py{sys.version_info.major}{sys.version_info.minor}"
        build_dir.mkdir(parents=True, exist_ok=True)
        with_cuda = os.environ.get("MPREC_WITH_CUDA", "0") == "1"
        cmake_args = [
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('MPREC_BUILD_TYPE', 'Release')}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={build_dir / 'lib'}",
            f"-DMPREC_WITH_CUDA={'ON' if with_cuda else 'OFF'}",
        ]
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


setup(
    packages=find_packages(include=["mprec", "mprec.*"]) + ["mprec.kernels"],
    package_dir={"mprec.kernels": "kernels"},
    ext_modules=[CMakeExtension("mprec._C")],
    cmdclass={"build_ext": CMakeBuild},
)

"""Run-time choice of the CPU kernel variant."""

import os
import subprocess
import sys

import pytest
import torch

import mprec


def isa_in_subprocess(value):
    env = dict(os.environ, MPREC_CPU_ISA=value)
    code = ("import mprec, torch; "
            "w = torch.randn(9, 33); print(mprec.cpu_isa()); "
            "print(float(mprec.ops.embedding_bag(w, torch.tensor([1, 2]), torch.tensor([0])).sum()))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_default_is_the_best_supported():
    assert mprec.supported_cpu_isas()[-1] == "scalar"
    assert set(mprec.supported_cpu_isas()) <= {"avx512", "avx2", "scalar"}
    if "MPREC_CPU_ISA" not in os.environ:
        result = isa_in_subprocess("")
        assert result.stdout.split()[0] == mprec.supported_cpu_isas()[0]


@pytest.mark.parametrize("name", mprec.supported_cpu_isas())
def test_environment_variable_forces_a_variant(name):
    result = isa_in_subprocess(name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == name


def test_environment_variable_unknown_value_is_a_clear_error():
    result = isa_in_subprocess("neon")
    assert result.returncode != 0
    assert "unknown CPU ISA 'neon'" in result.stderr


def test_set_cpu_isa_switches_and_restores(isa):
    assert mprec.cpu_isa() == isa


def test_build_info():
    info = mprec.build_info()
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["cuda"] is False or info["cuda"] is True

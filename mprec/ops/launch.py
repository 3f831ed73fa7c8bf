"""What the op families' GPU glue (``mprec/ops/<family>/gpu.py``) shares: the Triton kernel modules, imported
on their first launch, and the error flag the kernels raise instead of a device assert."""

from __future__ import annotations

import importlib

import torch
from torch import Tensor

__all__ = ["LazyModule", "new_error_flag", "triton_eb", "triton_dhe"]


class LazyModule:
    """A module of mprec.kernels, imported on first use (importing triton costs time that CPU-only users should
    not pay)."""

    def __init__(self, name: str):
        self._name, self._module = name, None

    def __getattr__(self, attr):
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


triton_eb = LazyModule("mprec.kernels.embedding_bag")
triton_dhe = LazyModule("mprec.kernels.dhe")


def new_error_flag(device: torch.device) -> Tensor:
    """The flag a kernel sets when it meets bad input; reading it back costs one synchronisation per call."""
    return torch.zeros(1, dtype=torch.int32, device=device)

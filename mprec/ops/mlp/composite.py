"""The MLP family's aten composition: the CUDA kernel of ``relu_backward_bias_`` (see :mod:`mprec.ops.composite`).
The CPU kernel's single pass becomes three aten ops here; the values are the same up to the order of the sums."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from . import _check_relu_backward_bias

__all__ = ["KERNELS"]


def relu_backward_bias_(grad: Tensor, output: Tensor) -> Tensor:
    _check_relu_backward_bias("mprec::relu_backward_bias_", grad, output)
    grad.copy_(torch.where(output > 0, grad, torch.zeros((), dtype=grad.dtype, device=grad.device)))
    return grad.sum(0)


KERNELS: dict[str, Callable] = {"relu_backward_bias_": relu_backward_bias_}

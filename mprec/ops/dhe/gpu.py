"""The DHE family's GPU glue: ``dhe_encode`` and ``dhe_encode_linear`` on the Triton kernels
(:mod:`mprec.kernels.dhe`), with the CPU kernels' checks and messages. :mod:`mprec.ops.gpu` registers them."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..arguments import check_device
from ..launch import new_error_flag as _new_error_flag
from ..launch import triton_dhe as _triton_dhe
from . import _check_activation, _check_hashes, _check_linear, check_hash_values, check_nonnegative_ids, dhe_encode_aten
from . import activation as apply_activation

__all__ = ["TRITON_KERNELS"]


def _raise_dhe_error(op: str, ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int) -> None:
    """The CPU kernel's message for the first bad hash parameter, else the first negative id."""
    check_hash_values(op, hash_a, hash_b, p)
    check_nonnegative_ids(op, ids)
    raise RuntimeError(f"{op}: internal error: the kernel flagged input that the checks cannot find")


def dhe_encode(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str = "uniform") -> Tensor:
    op = "mprec::dhe_encode"
    check_device(op, ids.device, hash_a=hash_a, hash_b=hash_b)
    k = _check_hashes(op, ids, hash_a, hash_b, p, m, transform, check_values=False)
    error = _new_error_flag(ids.device)
    out = _triton_dhe.encode(ids.reshape(-1).contiguous(), hash_a.contiguous(), hash_b.contiguous(), p, m,
                             transform == "gaussian", error)
    if error.item():
        _raise_dhe_error(op, ids, hash_a, hash_b, p)
    return out.view(*ids.shape, k)


def dhe_encode_linear(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str, weight: Tensor,
                      bias: Optional[Tensor] = None, activation: str = "none") -> Tensor:
    op = "mprec::dhe_encode_linear"
    check_device(op, ids.device, hash_a=hash_a, hash_b=hash_b, weight=weight, bias=bias)
    k = _check_hashes(op, ids, hash_a, hash_b, p, m, transform, check_values=False)
    _check_linear(op, weight, bias, k, "k")
    _check_activation(op, activation)
    if weight.dtype == torch.float64:
        # float64 is for checking gradients, not for speed: aten ops compute it exactly.
        check_hash_values(op, hash_a, hash_b, p)
        check_nonnegative_ids(op, ids)
        encoded = dhe_encode_aten(ids, hash_a, hash_b, p, m, transform, torch.float64)
        return apply_activation(torch.nn.functional.linear(encoded, weight, bias), activation)
    error = _new_error_flag(ids.device)
    out = _triton_dhe.encode_linear(ids.reshape(-1).contiguous(), hash_a.contiguous(), hash_b.contiguous(), p, m,
                                    transform == "gaussian", weight, None if bias is None else bias.contiguous(),
                                    activation, error)
    if error.item():
        _raise_dhe_error(op, ids, hash_a, hash_b, p)
    return out.view(*ids.shape, weight.shape[0])


TRITON_KERNELS: dict[str, Callable] = {"dhe_encode": dhe_encode, "dhe_encode_linear": dhe_encode_linear}

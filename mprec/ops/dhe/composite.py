"""The DHE family's aten compositions: the CUDA kernels of ``dhe_encode_linear_backward`` and ``rowwise_linear``
(GEMM-bound, so aten's GEMMs run them as fast as a dedicated kernel would). See :mod:`mprec.ops.composite`."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from ..arguments import first_true, value_at
from ..spelling import sizes
from . import _check_activation, _check_hash, _check_linear, _check_rowwise_linear, dhe_encode_aten
from . import activation as apply_activation

__all__ = ["KERNELS", "check_hash_values"]

# Ids whose DHE encodings exist at once in dhe_encode_linear_backward: 4096 x k (16 MB at k = 1024 in
# float32), so [N, k] never does, and each chunk's GEMM is still large enough to run at full speed.
_ENCODE_ROWS = 4096


def _check_hashes(op: str, ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str,
                  check_values: bool = True) -> int:
    """csrc/cpu/dhe.cpp checked_hashes: returns k. ``check_values=False`` leaves out the hash parameters' values
    (for kernels that check them as they load them)."""
    k = _check_hash(op, ids, hash_a, hash_b, p, m, transform)
    if check_values:
        check_hash_values(op, hash_a, hash_b, p)
    return k


def check_hash_values(op: str, hash_a: Tensor, hash_b: Tensor, p: int) -> None:
    """a_j in [1, p - 1], b_j in [0, p - 1] (one read back to the host)."""
    k = hash_a.shape[0]
    # The CPU kernel checks hash j's a, then its b, for j = 0, 1, ...: the first bad one is reported.
    first = first_true((hash_a < 1) | (hash_a >= p) | (hash_b < 0) | (hash_b >= p))
    j, a, b = torch.stack([first, value_at(hash_a, first), value_at(hash_b, first)]).tolist()
    if j < k:
        if not 1 <= a < p:
            raise ValueError(f"{op}: hash_a[{j}] = {a} is outside [1, p - 1] for p = {p}")
        raise ValueError(f"{op}: hash_b[{j}] = {b} is outside [0, p - 1] for p = {p}")


def dhe_encode_linear_backward(grad: Tensor, output: Tensor, ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int,
                               m: int, transform: str, weight: Tensor, bias: Optional[Tensor],
                               activation: str) -> tuple[Tensor, Tensor]:
    """(grad_weight, grad_bias) of act(encode(ids) @ weight^T + bias), with the encodings recomputed
    _ENCODE_ROWS ids at a time. As the CPU kernel: float32 (float64 for float64 weights) throughout, the
    bias gradient summed in float64, both returned in the weight's dtype."""
    op = "mprec::dhe_encode_linear_backward"
    k = _check_hashes(op, ids, hash_a, hash_b, p, m, transform)
    _check_linear(op, weight, bias, k, "k")
    _check_activation(op, activation)
    n, out_features = ids.numel(), weight.shape[0]
    if grad.numel() != n * out_features or output.numel() != n * out_features:
        raise ValueError(f"{op}: grad and output must have shape [..., {out_features}] with {n} rows, got "
                         f"{sizes(grad)} and {sizes(output)}")
    flat_ids = ids.reshape(-1)
    first_negative = int(first_true(flat_ids < 0))
    if first_negative < n:
        raise ValueError(f"{op}: ids[{first_negative}] = {int(flat_ids[first_negative])} is negative; "
                         "DHE ids must be >= 0")
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    pre_grad = grad.reshape(n, out_features).to(acc)  # d loss / d pre-activation, once the activation is undone
    if activation == "relu":
        pre_grad = torch.ops.aten.threshold_backward(pre_grad, output.reshape(n, out_features).to(acc), 0)
    weight_acc = weight.to(acc)
    bias_acc = None if bias is None else bias.to(acc)
    grad_weight = weight_acc.new_zeros((out_features, k))
    grad_bias = weight_acc.new_zeros(out_features, dtype=torch.float64)
    for r0 in range(0, n, _ENCODE_ROWS):
        rows = min(_ENCODE_ROWS, n - r0)
        # Encoded in float64 and rounded once, as the CPU kernel's hashing loop does.
        encoded = dhe_encode_aten(flat_ids.narrow(0, r0, rows), hash_a, hash_b, p, m, transform, torch.float64).to(acc)
        g = pre_grad.narrow(0, r0, rows)
        if activation == "mish":
            # mish' needs the pre-activation, which the forward did not keep: recomputed per chunk.
            g = torch.ops.aten.mish_backward(g, F.linear(encoded, weight_acc, bias_acc))
        grad_weight.addmm_(g.t(), encoded)
        if bias is not None:
            grad_bias += g.sum(0, dtype=torch.float64)
    if bias is None:
        return grad_weight.to(weight.dtype), weight.new_empty(0)
    return grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)


def rowwise_linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: str = "none") -> Tensor:
    _check_rowwise_linear(input, weight, bias, activation)
    return apply_activation(F.linear(input, weight, bias), activation)


KERNELS: dict[str, Callable] = {
    "dhe_encode_linear_backward": dhe_encode_linear_backward,
    "rowwise_linear": rowwise_linear,
}

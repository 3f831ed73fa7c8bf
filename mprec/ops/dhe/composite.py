"""The DHE family's aten compositions: the CUDA kernels of ``dhe_encode_linear_backward`` and ``rowwise_linear``
(GEMM-bound, so aten's GEMMs run them as fast as a dedicated kernel would). See :mod:`mprec.ops.composite`."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from ..spelling import sizes
from . import (_check_activation, _check_hashes, _check_linear, _check_rowwise_linear, check_nonnegative_ids,
               dhe_encode_aten)
from . import activation as apply_activation

__all__ = ["KERNELS"]

# Ids whose DHE encodings exist at once in dhe_encode_linear_backward: 4096 x k (16 MB at k = 1024 in
# float32), so [N, k] never does, and each chunk's GEMM is still large enough to run at full speed.
_ENCODE_ROWS = 4096


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
    check_nonnegative_ids(op, ids)
    flat_ids = ids.reshape(-1)
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

"""``MLP``: a stack of Linear and ReLU layers that runs each Linear + ReLU pair as one fused op.

It is an ``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU`` (state_dict keys ``0.weight``, ``2.weight``, ...,
as the same stack built by hand), so checkpoints and ``load_state_dict`` from a plain Sequential work.
The forward runs the layers as one :func:`mprec.ops.mlp.linear_stack`: each GEMM on the library measured fastest
for it, with its ReLU fused, and in training one autograd node for the stack.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..ops.mlp import linear_stack

__all__ = ["MLP", "bucket_rows"]

# Exact row counts up to this; above it, BUCKETS_PER_OCTAVE sizes per power of two.
EXACT_ROWS = 16
BUCKETS_PER_OCTAVE = 8


def bucket_rows(rows: int) -> int:
    """The row count an inference batch of ``rows`` runs its GEMMs on: ``rows`` itself up to 16, else rounded
    up to a multiple of 1/8 of its power of two (at most 12.5% more rows).

    oneDNN builds (JIT-compiles) a kernel per GEMM shape, about 0.4 ms per layer the first time a shape is
    seen, and caches 1,024 of them. A server sees queries of every size, so without buckets most queries
    would pay for new kernels; with them a model has about 100 row counts per layer from 1 to 16,384, all
    of which stay cached."""
    if rows <= EXACT_ROWS:
        return rows
    step = (1 << (rows.bit_length() - 1)) // BUCKETS_PER_OCTAVE
    return -(-rows // step) * step


class MLP(nn.Sequential):
    """``MLP([13, 512, 256], last_activation=True)``: Linear(13, 512), ReLU, Linear(512, 256), ReLU.

    ``init="dlrm"`` initialises as the DLRM reference does (normal weights, std sqrt(2 / (fan_in + fan_out));
    bias std sqrt(1 / fan_out)); ``init="torch"`` keeps ``nn.Linear``'s."""

    def __init__(self, widths: Sequence[int], last_activation: bool = False, init: str = "dlrm") -> None:
        if len(widths) < 2:
            raise ValueError(f"MLP: needs at least an input and an output width, got {list(widths)}")
        if init not in ("dlrm", "torch"):
            raise ValueError(f"MLP: init must be 'dlrm' or 'torch', got {init!r}")
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            layer = nn.Linear(fan_in, fan_out)
            if init == "dlrm":
                with torch.no_grad():
                    layer.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
                    layer.bias.normal_(0.0, math.sqrt(1.0 / fan_out))
            layers.append(layer)
            if i < len(widths) - 2 or last_activation:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        # Not under torch.compile, where the row count may be symbolic: there each new row count costs oneDNN a
        # kernel build once, as it would without buckets.
        if x.dim() == 2 and x.device.type == "cpu" and not torch.compiler.is_compiling():
            rows = x.shape[0]
            padded = bucket_rows(rows)
            if padded != rows and not (torch.is_grad_enabled() and (
                    x.requires_grad or any(p.requires_grad for p in self.parameters()))):
                # Inference on a batch of unusual size: run the GEMMs on a bucketed row count (see bucket_rows).
                return self._forward(torch.cat([x, x.new_zeros(padded - rows, x.shape[1])])).narrow(0, 0, rows)
        return self._forward(x)

    def plain(self, x: Tensor) -> Tensor:
        """The same function in ``F.linear`` and ReLU only: the form tensor compilers lower (the lowerings'), with
        no GEMM library chosen and no bucketing."""
        for layer in self:
            x = nn.functional.linear(x, layer.weight, layer.bias) if isinstance(layer, nn.Linear) else torch.relu(x)
        return x

    def _forward(self, x: Tensor) -> Tensor:
        # Each run of Linear (+ ReLU) layers is one linear_stack; anything else in the Sequential runs as itself.
        weights, biases, activations = [], [], []
        layers = list(self)
        i = 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, nn.Linear):
                relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
                weights.append(layer.weight)
                biases.append(layer.bias)
                activations.append("relu" if relu else "none")
                i += 2 if relu else 1
                continue
            x = layer(linear_stack(x, weights, biases, activations))
            weights, biases, activations = [], [], []
            i += 1
        return linear_stack(x, weights, biases, activations)

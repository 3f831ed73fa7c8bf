"""``MLP``: a stack of Linear and ReLU layers that runs each Linear + ReLU pair as one fused op.

It is an ``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU`` (state_dict keys ``0.weight``, ``2.weight``, ...,
as the same stack built by hand), so checkpoints and ``load_state_dict`` from a plain Sequential work.
The forward goes through :func:`mprec.ops.mlp.linear`: fused GEMM + activation where nothing needs a
gradient, ``F.linear`` and an in-place ReLU where something does.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..ops.mlp import linear

__all__ = ["MLP"]


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
        layers = list(self)
        i = 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, nn.Linear):
                relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
                x = linear(x, layer.weight, layer.bias, "relu" if relu else "none")
                i += 2 if relu else 1
            else:
                x = layer(x)
                i += 1
        return x

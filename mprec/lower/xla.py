"""The XLA lowering: a DLRM for torch_xla (TPUs; XLA's CPU client where no TPU is present).

    from mprec.lower import xla
    lowered = xla.lower(model, bag_size=1).to(xla.device())
    logits = lowered.serve(dense, indices, offsets)        # TBE batch in, logits on the host

The model runs as :class:`mprec.lower.forms.LoweredDLRM`: only aten ops that torch_xla lowers, on bags
padded to ``bag_size`` slots and batches padded to buckets, so XLA compiles one graph per bucket it
sees (and reuses it), and no mprec custom op reaches the device. Importing this module does not need
torch_xla; :func:`device` does.
"""

from __future__ import annotations

import importlib.util
from typing import Sequence

from torch import nn

from .forms import DEFAULT_BUCKETS, LoweredDLRM

__all__ = ["available", "device", "lower", "ONE_HOT_MAX_ROWS"]

#: Tables up to this many rows pool by a one-hot matmul: on a TPU a small dense matmul beats a gather.
ONE_HOT_MAX_ROWS = 64


def available() -> bool:
    """Whether torch_xla is installed."""
    return importlib.util.find_spec("torch_xla") is not None


def device():
    """The XLA device (``PJRT_DEVICE`` chooses TPU or CPU)."""
    if not available():
        raise RuntimeError("mprec.lower.xla: torch_xla is not installed; it pairs with torch 2.9 "
                           "(pip install torch==2.9.* torch_xla==2.9.0), see `make test-xla`")
    import torch_xla

    return torch_xla.device()


def lower(model: nn.Module, bag_size: int = 1, one_hot_max_rows: int = ONE_HOT_MAX_ROWS,
          buckets: Sequence[int] = DEFAULT_BUCKETS) -> LoweredDLRM:
    """``model`` (a :class:`mprec.models.DLRM`) as XLA compiles it; shares its parameters."""
    return LoweredDLRM(model, bag_size=bag_size, one_hot_max_rows=one_hot_max_rows, buckets=buckets)

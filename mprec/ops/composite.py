"""Device-agnostic implementations of the mprec ops that get no dedicated GPU kernel.

The ops on the hot path of a DLRM step (the embedding-bag forward and dense backward, ``dhe_encode``,
``dhe_encode_linear``) have Triton/CUDA kernels. The others work on tensors that are small next to the tables
(pooled outputs and their gradients, the lookups of one batch, the interaction's features) or are GEMM-bound
(the DHE decoder's weight gradient, ``rowwise_linear``), so aten's kernels do them about as fast as a
dedicated one would: they are written here once, as compositions of aten ops, and run on any device torch
does. ``KERNELS`` maps each op name to its function, with the op's schema signature, for registration as the
op's CUDA kernel::

    lib = torch.library.Library("mprec", "IMPL")
    for name, fn in KERNELS.items():
        lib.impl(name, fn, "CUDA")

Each function computes what the CPU kernel (``csrc/cpu``) computes: the same shapes, dtypes, accumulation
dtype and order of sparse rows, and the same values up to floating-point rounding. It validates its inputs
with the CPU kernel's checks, in the CPU kernel's order and with its messages (sizes written ``[2, 3]`` and
dtypes ``Float``, as c10 writes them), so an error reads the same on every device; the checks that do not
read the data are the fake kernels' own (each family's checks, beside its fake kernels). The checks that need
data (index ranges, monotone offsets, hash parameters, non-negative ids, finite weights) read it on the
host: a synchronisation, on backward, optimizer and quantization paths only. Of the ops an inference step
runs, ``rowwise_linear``, the interactions and ``dequantize_rowwise_int8`` never synchronise;
``unique_ids`` does, as any unique must (its output size is data). No tensor is indexed before its indices
are known to be in range, so bad input raises the CPU kernel's error rather than a device-side assert.

What a composition does not give: the CPU's ``rowwise_linear`` and ``dhe_encode_linear_backward`` compute
each row independently of the batch and of the thread count (fixed GEMM row blocks), which MP-Cache's
bit-exactness relies on; here the GEMM is aten's, whose kernel choice may depend on the batch.
"""

from __future__ import annotations

from typing import Callable

from .cache import composite as _cache
from .dhe import composite as _dhe
from .embedding_bag import composite as _embedding_bag
from .interaction import composite as _interaction
from .mlp import composite as _mlp

__all__ = ["KERNELS"]

# Each family's compositions are in its own package (``mprec/ops/<family>/composite.py``).
KERNELS: dict[str, Callable] = {**_embedding_bag.KERNELS, **_dhe.KERNELS, **_interaction.KERNELS, **_cache.KERNELS,
                                **_mlp.KERNELS}

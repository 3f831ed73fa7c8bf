"""The mprec op surface, as typed Python functions.

The schemas live in ``csrc/registration.cpp`` (``torch.ops.mprec.*``). Each module here holds, for one
op family, the typed wrapper with its docstring, the fake kernel (``register_fake``: checks and
allocates, never reads data), the autograd formula (``register_autograd``) and the argument checks the fake
kernel, the aten compositions (``composite.py``) and the GPU wrappers (``gpu.py``) share. The tests' oracles
are in ``tests/reference.py``, outside the library.
"""

from . import cache
from .interaction import dlrm_interaction, dot_interaction
from .mlp import gemm_choices, linear, use_gemm_library
from .dhe import (
    dhe_encode,
    dhe_encode_linear,
    dhe_hash_parameters,
    next_prime,
    rowwise_linear,
)
from .embedding_bag import (
    MODES,
    FUSED_OPTIMIZERS,
    batched_embedding_bag,
    batched_embedding_bag_update,
    dequantize_rowwise_int8,
    embedding_bag,
    quantize_rowwise_int8,
)

__all__ = [
    "cache",
    "dot_interaction",
    "dlrm_interaction",
    "linear",
    "use_gemm_library",
    "gemm_choices",
    "MODES",
    "embedding_bag",
    "batched_embedding_bag",
    "batched_embedding_bag_update",
    "FUSED_OPTIMIZERS",
    "quantize_rowwise_int8",
    "dequantize_rowwise_int8",
    "dhe_encode",
    "dhe_encode_linear",
    "dhe_hash_parameters",
    "next_prime",
    "rowwise_linear",
]

# The CUDA kernels of every op (Triton, CUDA C++ or aten compositions); registering them needs no GPU.
from . import gpu  # noqa: E402

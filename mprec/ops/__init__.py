"""The mprec op surface, as typed Python functions.

The schemas live in ``csrc/registration.cpp`` (``torch.ops.mprec.*``). Each op family is a package here
(``embedding_bag``, ``dhe``, ``interaction``, ``cache``, ``mlp``): its ``__init__`` holds the typed wrappers with
their docstrings, the argument checks and the fake kernels (``register_fake``: they check and allocate, never
read data); its ``composite.py`` the aten compositions, its ``gpu.py`` the Triton glue, both calling the same
checks. :mod:`.gpu` registers the CUDA kernels of every family. The autograd kernels are C++, in
``csrc/autograd``. The tests' oracles are in ``tests/reference.py``, outside the library.
"""

from . import cache
from .interaction import dlrm_interaction, dot_interaction
from .mlp import gemm_choices, linear, linear_stack, relu_backward_bias_, use_gemm_library
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
    "linear_stack",
    "relu_backward_bias_",
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

"""The DHE (deep hash embedding) op family: typed wrappers and fake kernels.

Schemas: ``csrc/registration.cpp``. CPU kernels: ``csrc/cpu/dhe*.cpp``. Autograd: ``csrc/autograd/dhe.cpp``. The
ops in aten ops, which the compositions and the lowerings use: :func:`dhe_hash_aten`, :func:`dhe_encode_aten`,
:func:`activation`. The tests' oracles: ``tests/reference.py``.

The hash, exactly (``docs/architecture.md``): for hash function ``j`` with ``a_j`` in ``[1, p-1]``, ``b_j`` in
``[0, p-1]`` and ``p`` a prime above ``m``, ``h_j(x) = ((a_j * (x mod p) + b_j) mod p) mod m`` for ids
``x >= 0``. The uniform transform maps ``h`` to ``h / (m - 1) * 2 - 1``; the gaussian one applies
Box-Muller to the pairs ``(2i, 2i+1)`` of ``U = (h + 1) / m``: ``z_2i = R cos(2 pi U_2i+1)``,
``z_2i+1 = R sin(2 pi U_2i+1)``, ``R = sqrt(-2 log U_2i)``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..arguments import first_true, register_fake, value_at
from ..spelling import dtype_name, sizes

# Overloads looked up once, not by name on every call.
_DHE_ENCODE_LINEAR = torch.ops.mprec.dhe_encode_linear.default
_ROWWISE_LINEAR = torch.ops.mprec.rowwise_linear.default

__all__ = [
    "TRANSFORMS",
    "ACTIVATIONS",
    "MAX_PRIME",
    "next_prime",
    "is_prime",
    "dhe_hash_parameters",
    "dhe_encode",
    "dhe_encode_linear",
    "rowwise_linear",
]

TRANSFORMS = ("uniform", "gaussian")
ACTIVATIONS = ("none", "relu", "mish")
#: Largest p the ops accept: p^2 must fit int64 (and p < 2^32 for the kernels' exact arithmetic).
MAX_PRIME = 3037000499

_INDEX_DTYPES = (torch.int32, torch.int64)
_WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def is_prime(n: int) -> bool:
    """Deterministic for every n the ops accept (Miller-Rabin, bases 2, 3, 5, 7 decide n < 3.2e9)."""
    if n < 2:
        return False
    for q in (2, 3, 5, 7):
        if n % q == 0:
            return n == q
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for base in (2, 3, 5, 7):
        x = pow(base, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


# --- the ops in aten ops (the compositions' and the lowerings' form) -------------------------------------------

def dhe_hash_aten(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int) -> Tensor:
    """The hash in int64 integer ops, ``[*ids.shape, k]``: exact, as ``p^2 + p < 2^63``."""
    x = ids.to(torch.int64).remainder(p)
    return (x.unsqueeze(-1) * hash_a + hash_b).remainder(p).remainder(m)


def dhe_encode_aten(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str,
                    dtype: torch.dtype, hash_fn=dhe_hash_aten) -> Tensor:
    """The encodings in aten ops, computed in ``dtype`` from the integer hashes (``hash_fn``: the IPU lowering
    passes its 32-bit one)."""
    h = hash_fn(ids, hash_a, hash_b, p, m).to(dtype)
    if transform == "uniform":
        return h / (m - 1) * 2.0 - 1.0
    u = (h + 1.0) / m
    radius = torch.sqrt(-2.0 * torch.log(u[..., 0::2]))
    angle = (2.0 * torch.pi) * u[..., 1::2]
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).flatten(-2)


def activation(x: Tensor, name: str) -> Tensor:
    """One of :data:`ACTIVATIONS` in aten ops. Mish is composed (``x tanh(softplus(x))``), which every tensor
    compiler lowers (PopTorch's op list has no mish)."""
    if name == "relu":
        return torch.relu(x)
    if name == "mish":
        return x * torch.tanh(torch.nn.functional.softplus(x))
    return x


def next_prime(m: int) -> int:
    """The smallest prime greater than ``m`` (the hash's ``p``)."""
    n = m + 1
    while not is_prime(n):
        n += 1
    return n


def dhe_hash_parameters(k: int, m: int, seed: int = 0) -> tuple[Tensor, Tensor, int]:
    """``(hash_a, hash_b, p)`` for ``k`` hash functions into ``[0, m)``, drawn from a seeded generator.

    The same ``(k, m, seed)`` gives the same parameters on every machine (torch's CPU generator).
    """
    if k < 1:
        raise ValueError(f"dhe_hash_parameters: k must be >= 1, got {k}")
    if m < 2:
        raise ValueError(f"dhe_hash_parameters: m must be >= 2, got {m}")
    p = next_prime(m)
    if p > MAX_PRIME:
        raise ValueError(f"dhe_hash_parameters: m = {m} is too large; the prime above it must be <= {MAX_PRIME}")
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(1, p, (k,), generator=g, dtype=torch.int64)
    b = torch.randint(0, p, (k,), generator=g, dtype=torch.int64)
    return a, b, p


# --- checks shared by the fake kernels (the C++ kernels make the same checks) -------------------------

def _check_hash(op: str, ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str) -> int:
    """csrc/cpu/dhe.cpp checked_hashes, less the devices and the hash parameters' values: returns k."""
    if ids.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{op}: ids must be int32 or int64, got {dtype_name(ids.dtype)}")
    if m < 2:
        raise ValueError(f"{op}: m (the hash range) must be >= 2, got {m}")
    if p <= m:
        raise ValueError(f"{op}: p must be a prime greater than m = {m}, got p = {p}")
    if p > MAX_PRIME:
        raise ValueError(f"{op}: p = {p} is too large; p (and so m) must be at most {MAX_PRIME} so that every hash "
                         "intermediate fits int64")
    if not is_prime(p):
        raise ValueError(f"{op}: p must be a prime greater than m = {m}, but p = {p} is not prime")
    for name, t in (("hash_a", hash_a), ("hash_b", hash_b)):
        if t.dtype != torch.int64 or t.dim() != 1:
            raise ValueError(f"{op}: {name} must be a 1-D int64 tensor, got {dtype_name(t.dtype)} of shape {sizes(t)}")
    k = hash_a.shape[0]
    if hash_b.shape[0] != k:
        raise ValueError(f"{op}: hash_a and hash_b must have the same length, got {k} and {hash_b.shape[0]}")
    if k < 1:
        raise ValueError(f"{op}: k (the number of hash functions) must be >= 1, got 0")
    if transform not in TRANSFORMS:
        raise ValueError(f"{op}: transform must be 'uniform' or 'gaussian', got '{transform}'")
    if transform == "gaussian" and k % 2:
        raise ValueError(f"{op}: the gaussian transform pairs hashes (Box-Muller), so k must be even, got k = {k}")
    return k


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


def check_nonnegative_ids(op: str, ids: Tensor) -> None:
    """Every id >= 0, else the CPU kernels' message for the first negative one (reads the data on the host)."""
    flat = ids.detach().reshape(-1)
    first = int(first_true(flat < 0))
    if first < flat.numel():
        raise ValueError(f"{op}: ids[{first}] = {int(flat[first])} is negative; DHE ids must be >= 0")


def _check_linear(op: str, weight: Tensor, bias: Optional[Tensor], in_features, in_name: str) -> None:
    """csrc/cpu/dhe.cpp check_float_weight, less the device."""
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D [out_features, {in_name}], got shape {sizes(weight)}")
    if weight.dtype not in _WEIGHT_DTYPES:
        raise ValueError(f"{op}: weight must be float32, bfloat16 or float64, got {dtype_name(weight.dtype)}")
    if weight.shape[1] != in_features:
        raise ValueError(f"{op}: weight has shape {sizes(weight)} but {in_name} = {in_features}; "
                         f"expected [out_features, {in_features}]")
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != weight.shape[0]:
            raise ValueError(f"{op}: bias must have shape [{weight.shape[0]}], got {sizes(bias)}")
        if bias.dtype != weight.dtype:
            raise ValueError(f"{op}: bias ({dtype_name(bias.dtype)}) must have the weight's dtype "
                             f"({dtype_name(weight.dtype)})")


def _check_activation(op: str, activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be 'none', 'relu' or 'mish', got '{activation}'")


@register_fake("mprec::dhe_encode")
def _dhe_encode_fake(ids, hash_a, hash_b, p, m, transform="uniform"):
    k = _check_hash("mprec::dhe_encode", ids, hash_a, hash_b, p, m, transform)
    return ids.new_empty((*ids.shape, k), dtype=torch.float32)


@register_fake("mprec::dhe_encode_linear")
def _dhe_encode_linear_fake(ids, hash_a, hash_b, p, m, transform, weight, bias=None, activation="none"):
    op = "mprec::dhe_encode_linear"
    k = _check_hash(op, ids, hash_a, hash_b, p, m, transform)
    _check_linear(op, weight, bias, k, "k")
    _check_activation(op, activation)
    return weight.new_empty((*ids.shape, weight.shape[0]))


@register_fake("mprec::dhe_encode_linear_backward")
def _dhe_encode_linear_backward_fake(grad, output, ids, hash_a, hash_b, p, m, transform, weight, bias, activation):
    grad_bias = bias.new_empty(bias.shape) if bias is not None else weight.new_empty((0,))
    return weight.new_empty(weight.shape), grad_bias


def _check_rowwise_linear(input: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str) -> None:
    op = "mprec::rowwise_linear"
    if input.dim() < 1:
        raise ValueError(f"{op}: input must have at least one dimension, got a scalar")
    _check_linear(op, weight, bias, input.shape[-1], "in_features")
    if input.dtype != weight.dtype:
        raise ValueError(f"{op}: input ({dtype_name(input.dtype)}) must have the weight's dtype "
                         f"({dtype_name(weight.dtype)})")
    _check_activation(op, activation)


@register_fake("mprec::rowwise_linear")
def _rowwise_linear_fake(input, weight, bias=None, activation="none"):
    _check_rowwise_linear(input, weight, bias, activation)
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


# --- typed wrappers -----------------------------------------------------------------------------------

def dhe_encode(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str = "uniform") -> Tensor:
    """DHE encodings of ``ids``: float32 ``[*ids.shape, k]``, ``k = len(hash_a)``.

    Args:
        ids: int32 or int64 ids, any shape, all ``>= 0`` (any int64 value: the arithmetic is exact).
        hash_a, hash_b: int64 ``[k]`` hash parameters (see :func:`dhe_hash_parameters`).
        p: a prime greater than ``m``, at most :data:`MAX_PRIME`.
        m: the hash range, ``>= 2``.
        transform: ``"uniform"`` (values in [-1, 1]) or ``"gaussian"`` (standard normal; ``k`` even).
    """
    return torch.ops.mprec.dhe_encode(ids, hash_a, hash_b, p, m, transform)


def dhe_encode_linear(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, transform: str,
                      weight: Tensor, bias: Optional[Tensor] = None, activation: str = "none") -> Tensor:
    """``activation(dhe_encode(ids) @ weight.T + bias)``, fused: ``[*ids.shape, H1]`` in ``weight.dtype``.

    The encodings are produced in blocks of rows that stay in cache and are multiplied at once, so the
    ``[N, k]`` matrix never exists. ``weight`` is ``[H1, k]``, float32, bfloat16 (bfloat16 encodings and
    products, float32 accumulation) or float64. Differentiable in ``weight`` and ``bias``. Each output row
    is computed independently of the other ids and of the thread count.
    """
    return _DHE_ENCODE_LINEAR(ids, hash_a, hash_b, p, m, transform, weight, bias, activation)


def rowwise_linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, activation: str = "none") -> Tensor:
    """``activation(input @ weight.T + bias)`` with every row computed independently of the others.

    Same values as :func:`torch.nn.functional.linear` up to rounding, and the same speed; the difference is
    that a row's bits do not depend on the batch it came in or on the thread count, which MP-Cache needs.
    """
    return _ROWWISE_LINEAR(input, weight, bias, activation)

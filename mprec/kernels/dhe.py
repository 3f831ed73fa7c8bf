"""Triton kernels for DHE: the hash encoding alone, and fused with the decoder's first layer.

``dhe_encode_linear`` computes ``act(encode(ids) @ W^T + b)`` one ``[BLOCK_N, BLOCK_H]`` output tile per
program: the hashes of a ``[BLOCK_N, BLOCK_K]`` slice are computed in registers, transformed, and fed
straight to ``tl.dot`` with the matching slice of ``W``, so the ``[N, k]`` encodings never reach memory.
The hash is exact in int64 (``p^2 + p < 2^63``; docs/architecture.md). The gaussian transform pairs hash
``2i`` with ``2i+1`` (Box-Muller); the kernel walks pairs and multiplies the two halves with the even and
odd columns of ``W``, so no shuffle is needed.

A negative id (encoded as id 0) or a hash parameter out of range sets ``error[0]``; the caller raises
(:mod:`mprec.ops.gpu`).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .embedding_bag import interpreting

__all__ = ["encode", "encode_linear", "ACTIVATION_CODES"]

ACTIVATION_CODES = {"none": 0, "relu": 1, "mish": 2}


@triton.jit
def _reduce(t, d):
    """``t mod d`` for ``0 <= t`` and ``t / d < 2^32``, exact: the quotient from a float64 multiply by the
    reciprocal is off by at most one (t / d < 2^32 leaves over 20 bits of margin in float64's 53), and one
    correction each way fixes it. GPUs have no 64-bit integer divider: ``%`` on int64 runs a long software
    routine per element, this a handful of instructions."""
    q = (t.to(tl.float64) * (1.0 / d.to(tl.float64))).to(tl.int64)
    r = t - q * d
    r = tl.where(r < 0, r + d, r)
    return tl.where(r >= d, r - d, r)


@triton.jit
def _hash(x, a, b, p, m):
    """``((a x + b) mod p) mod m`` for ``x = id mod p``: ``a x + b < p^2 + p < 2^63`` and both quotients are
    under 2^32 (``p < 2^32``), as :func:`_reduce` needs."""
    t = x[:, None] * a[None, :] + b[None, :]
    return _reduce(_reduce(t, p.to(tl.int64)), m.to(tl.int64))


@triton.jit
def _hash_parameters(hash_a_ptr, hash_b_ptr, j, mask, p, error_ptr):
    """(a_j, b_j) for the hash functions ``j``; a parameter outside ``a in [1, p-1]``, ``b in [0, p-1]``
    would break the exactness of the int64 arithmetic, so it sets the error flag."""
    a = tl.load(hash_a_ptr + j, mask=mask, other=1)
    b = tl.load(hash_b_ptr + j, mask=mask, other=0)
    if tl.max(((a < 1) | (a >= p) | (b < 0) | (b >= p)).to(tl.int32), axis=0) > 0:
        tl.store(error_ptr, 1)
    return a, b


@triton.jit
def _hashes(x, hash_a_ptr, hash_b_ptr, j, mask, p, m, error_ptr):
    """The hashes ``[rows, len(j)]`` of the rows' ``x = id mod p`` under hash functions ``j``."""
    a, b = _hash_parameters(hash_a_ptr, hash_b_ptr, j, mask, p, error_ptr)
    return _hash(x, a, b, p, m)


@triton.jit
def _gaussian_pairs(x, hash_a_ptr, hash_b_ptr, pairs, mask, p, m, error_ptr):
    """The gaussian encodings ``(z_2i, z_2i+1)`` of the hash pairs ``i`` in ``pairs``."""
    h0 = _hashes(x, hash_a_ptr, hash_b_ptr, 2 * pairs, mask, p, m, error_ptr)
    h1 = _hashes(x, hash_a_ptr, hash_b_ptr, 2 * pairs + 1, mask, p, m, error_ptr)
    return _box_muller(h0, h1, m)


@triton.jit
def _box_muller(h0, h1, m):
    u0 = (h0 + 1).to(tl.float32) / m
    u1 = (h1 + 1).to(tl.float32) / m
    radius = tl.sqrt(-2.0 * tl.log(u0))
    angle = 6.283185307179586 * u1
    return radius * tl.cos(angle), radius * tl.sin(angle)


@triton.jit
def _row_ids(ids_ptr, error_ptr, rows, n, p):
    """``ids mod p`` as int64 for the rows of a tile; negative ids flag the error and hash as 0."""
    row_mask = rows < n
    ids = tl.load(ids_ptr + rows, mask=row_mask, other=0).to(tl.int64)
    if tl.max((row_mask & (ids < 0)).to(tl.int32), axis=0) > 0:
        tl.store(error_ptr, 1)
    return tl.where(ids >= 0, ids, 0) % p


@triton.jit
def _dhe_encode_kernel(out_ptr, ids_ptr, hash_a_ptr, hash_b_ptr, error_ptr, n, k, p, m, uniform_scale,
                       GAUSSIAN: tl.constexpr, RAW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n
    x = _row_ids(ids_ptr, error_ptr, rows, n, p)
    if GAUSSIAN:
        pairs = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        pair_mask = pairs < k // 2
        z0, z1 = _gaussian_pairs(x, hash_a_ptr, hash_b_ptr, pairs, pair_mask, p, m, error_ptr)
        mask = row_mask[:, None] & pair_mask[None, :]
        base = out_ptr + rows[:, None] * k + 2 * pairs[None, :]
        tl.store(base, z0, mask=mask)
        tl.store(base + 1, z1, mask=mask)
    else:
        cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        col_mask = cols < k
        h = _hashes(x, hash_a_ptr, hash_b_ptr, cols, col_mask, p, m, error_ptr)
        if RAW:  # the integer hashes themselves (tests check them exactly)
            encoded = h
        else:
            encoded = h.to(tl.float32) * uniform_scale - 1.0
        tl.store(out_ptr + rows[:, None] * k + cols[None, :], encoded, mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _round_to_bfloat16(x):
    """float32 values rounded to the nearest bfloat16 (ties to even), kept in float32. Triton's interpreter
    truncates when it casts float32 to bfloat16; compiled Triton rounds. This makes both round."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _dot(acc, encoded, weight_ptrs, mask, DOT_DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr,
         INPUT_PRECISION: tl.constexpr):
    w = tl.load(weight_ptrs, mask=mask, other=0.0)
    if EMULATE_BF16:
        # Triton's interpreter has no bfloat16 dot: bfloat16 operands multiplied in float32 give the same
        # products (exact in float32) and the same float32 accumulation.
        encoded = _round_to_bfloat16(encoded)
    return tl.dot(encoded.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)


@triton.jit
def _dhe_encode_linear_kernel(
    out_ptr, ids_ptr, hash_a_ptr, hash_b_ptr, weight_ptr, bias_ptr, error_ptr,
    n, k, out_features, p, m, uniform_scale, stride_wh, stride_wk,
    GAUSSIAN: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    DOT_DTYPE: tl.constexpr, EMULATE_BF16: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n
    outs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    out_mask = outs < out_features
    x = _row_ids(ids_ptr, error_ptr, rows, n, p)
    acc = tl.zeros([BLOCK_N, BLOCK_H], tl.float32)
    if GAUSSIAN:
        for j0 in range(0, k // 2, BLOCK_K):
            pairs = j0 + tl.arange(0, BLOCK_K)
            pair_mask = pairs < k // 2
            z0, z1 = _gaussian_pairs(x, hash_a_ptr, hash_b_ptr, pairs, pair_mask, p, m, error_ptr)
            z0 = tl.where(pair_mask[None, :], z0, 0.0)
            z1 = tl.where(pair_mask[None, :], z1, 0.0)
            w_mask = pair_mask[:, None] & out_mask[None, :]
            w_even = weight_ptr + outs[None, :] * stride_wh + (2 * pairs[:, None]) * stride_wk
            acc = _dot(acc, z0, w_even, w_mask, DOT_DTYPE, EMULATE_BF16, INPUT_PRECISION)
            acc = _dot(acc, z1, w_even + stride_wk, w_mask, DOT_DTYPE, EMULATE_BF16, INPUT_PRECISION)
    else:
        for k0 in range(0, k, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_mask = cols < k
            h = _hashes(x, hash_a_ptr, hash_b_ptr, cols, col_mask, p, m, error_ptr)
            encoded = tl.where(col_mask[None, :], h.to(tl.float32) * uniform_scale - 1.0, 0.0)
            w_ptrs = weight_ptr + outs[None, :] * stride_wh + cols[:, None] * stride_wk
            acc = _dot(acc, encoded, w_ptrs, col_mask[:, None] & out_mask[None, :], DOT_DTYPE, EMULATE_BF16,
                       INPUT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + outs, mask=out_mask, other=0.0).to(tl.float32)[None, :]
    if ACTIVATION == 1:
        acc = tl.maximum(acc, 0.0)
    if ACTIVATION == 2:
        # mish(x) = x tanh(softplus(x)), softplus with torch's threshold (x above 20 is its own softplus).
        softplus = tl.where(acc > 20.0, acc, tl.log(1.0 + tl.exp(tl.minimum(acc, 20.0))))
        acc = acc * (2.0 * tl.sigmoid(2.0 * softplus) - 1.0)
    if EMULATE_BF16:
        acc = _round_to_bfloat16(acc)
    tl.store(out_ptr + rows[:, None] * out_features + outs[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & out_mask[None, :])


def _uniform_scale(m: int) -> float:
    return 2.0 / (m - 1)


def encode(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, gaussian: bool, error: Tensor,
           raw: bool = False) -> Tensor:
    """float32 ``[N, k]`` encodings of the flat ``ids`` (``raw``: the int64 hashes, before the transform)."""
    n, k = ids.shape[0], hash_a.shape[0]
    gaussian = gaussian and not raw
    out = torch.empty((n, k), dtype=torch.int64 if raw else torch.float32, device=ids.device)
    if n == 0:
        return out
    block_n, block_k = 32, 64
    width = k // 2 if gaussian else k
    grid = (triton.cdiv(n, block_n), triton.cdiv(width, block_k))
    _dhe_encode_kernel[grid](out, ids, hash_a, hash_b, error, n, k, p, m, _uniform_scale(m),
                             GAUSSIAN=gaussian, RAW=raw, BLOCK_N=block_n, BLOCK_K=block_k)
    return out


def encode_linear(ids: Tensor, hash_a: Tensor, hash_b: Tensor, p: int, m: int, gaussian: bool, weight: Tensor,
                  bias: Optional[Tensor], activation: str, error: Tensor,
                  blocks: Optional[tuple[int, int, int, int, int]] = None) -> Tensor:
    """``[N, H]`` in ``weight``'s dtype (float32 or bfloat16) for the flat ``ids``. ``blocks``, ``(BLOCK_N,
    BLOCK_H, BLOCK_K, num_warps, num_stages)``, replaces the launch shape chosen here (benchmarks compare
    shapes with it; ``tl.dot`` needs each block at least 16)."""
    n, k = ids.shape[0], hash_a.shape[0]
    out_features = weight.shape[0]
    out = torch.empty((n, out_features), dtype=weight.dtype, device=ids.device)
    if n == 0 or out_features == 0:
        return out
    bf16 = weight.dtype == torch.bfloat16
    emulate_bf16 = bf16 and interpreting()
    dot_dtype = tl.bfloat16 if bf16 and not emulate_bf16 else tl.float32
    # float32 weights multiply as torch's matmul would: TF32 only where torch allows it.
    precision = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    if blocks is None:
        block_n, block_k, num_warps, num_stages = 64, 32 if gaussian else 64, 4, None
        block_h = max(16, min(128, triton.next_power_of_2(out_features)))
    else:
        if len(blocks) != 5 or any(v < 1 or v & (v - 1) for v in blocks[:4]) or min(blocks[:3]) < 16 \
                or blocks[4] < 1:
            raise ValueError(f"blocks must be (BLOCK_N, BLOCK_H, BLOCK_K, num_warps, num_stages): powers of two, "
                             f"the blocks at least 16, and stages >= 1; got {blocks}")
        block_n, block_h, block_k, num_warps, num_stages = (int(v) for v in blocks)
    # Triton's own number of pipeline stages unless one is given.
    stages = {} if num_stages is None else dict(num_stages=num_stages)
    grid = (triton.cdiv(n, block_n), triton.cdiv(out_features, block_h))
    _dhe_encode_linear_kernel[grid](
        out, ids, hash_a, hash_b, weight, bias, error,
        n, k, out_features, p, m, _uniform_scale(m), weight.stride(0), weight.stride(1),
        GAUSSIAN=gaussian, HAS_BIAS=bias is not None, ACTIVATION=ACTIVATION_CODES[activation],
        DOT_DTYPE=dot_dtype, EMULATE_BF16=emulate_bf16, INPUT_PRECISION=precision,
        BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_K=block_k, num_warps=num_warps, **stages)
    return out


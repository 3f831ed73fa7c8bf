"""The CUDA C++ embedding-bag kernels, built with AddressSanitizer, on every shape they specialise on and on bad
inputs: a read or write outside a tensor aborts this process with the sanitizer's report.

Run by tests/test_cuda_emulator.py in a process with the sanitizer's runtime preloaded
(cuda_emulator.sanitizer_environment). Tensors are allocated at their exact sizes, so the sanitizer's guard
bytes lie right after every table, index list and output. Results are compared with the CPU kernels' too
(values, max's rows, error messages), since a kernel that writes the wrong element inside a tensor is not a
sanitizer's concern. Prints the number of calls checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import cuda_emulator  # noqa: E402

EMPTY_MAX = torch.empty(0, 0, dtype=torch.int64)
TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}


def bags(lengths, rows, g, index_dtype):
    lengths = torch.tensor(lengths)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    indices = torch.randint(0, rows, (int(offsets[-1]),), generator=g)
    return indices.to(index_dtype), offsets.to(index_dtype)


def message(fn, *args) -> str:
    try:
        fn(*args)
    except (RuntimeError, ValueError) as error:
        return str(error).splitlines()[0]
    return "(no error)"


def main() -> int:
    ops = cuda_emulator.load(address_sanitizer=True)
    cpu = torch.ops.mprec
    g = torch.Generator().manual_seed(0)
    calls = 0

    def same(actual, expected, dtype, what):
        if not torch.allclose(actual.double(), expected.double(), rtol=TOL[dtype], atol=TOL[dtype]):
            raise AssertionError(f"{what}: differs from the CPU kernel by {(actual.double() - expected.double()).abs().max()}")

    # Every shape: packets and single values, one and several a lane, one and several passes, long bags.
    lengths = [33, 0, 1, 70, 32, 31, 5]
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for dim in (1, 4, 8, 33, 128, 129, 256, 264, 520):
            # Both index dtypes at one width; elsewhere int32 for even widths and int64 for odd ones.
            both = (torch.int32, torch.int64)
            for index_dtype in both if dim == 8 else both[dim % 2:dim % 2 + 1]:
                rows = 97
                weight = torch.randn(rows, dim, generator=g, dtype=torch.float64).to(dtype)
                indices, offsets = bags(lengths, rows, g, index_dtype)
                for mode in (0, 1, 2):
                    for padding in (-1, int(indices[40])):
                        psw = (torch.rand(len(indices), generator=g, dtype=torch.float64).to(
                            torch.float64 if dtype == torch.float64 else torch.float32) if mode == 0 else None)
                        args = (indices, offsets, mode, psw, padding, True)
                        out, arg = ops.embedding_bag(weight, *args)
                        cpu_out, cpu_arg = cpu.embedding_bag(weight, *args)
                        same(out, cpu_out, dtype, f"forward {dtype} D={dim} mode {mode}")
                        if mode == 2 and not torch.equal(arg, cpu_arg):
                            raise AssertionError(f"max rows {dtype} D={dim}")
                        grad = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype)
                        back = ops.embedding_bag_backward(grad, weight, indices, offsets, arg, mode, psw, padding, True)
                        cpu_back = cpu.embedding_bag_backward(grad, weight, indices, offsets, cpu_arg, mode, psw,
                                                              padding, True)
                        same(back, cpu_back, dtype, f"backward {dtype} D={dim} mode {mode}")
                        calls += 2

    # Several tables: the descriptor array, tables of different widths and rows, empty bags.
    for dtype in (torch.float32, torch.bfloat16):
        shapes = [(13, 8), (29, 1), (7, 264), (40, 16), (3, 33)]
        weights = [torch.randn(r, d, generator=g, dtype=torch.float64).to(dtype) for r, d in shapes]
        parts, lens = [], []
        for rows, _ in shapes:
            idx, offs = bags([3, 0, 40, 1], rows, g, torch.int64)
            parts.append(idx)
            lens.append(offs.diff())
        indices = torch.cat(parts)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cat(lens).cumsum(0)])
        for mode in (0, 1, 2):
            out, arg = ops.batched_embedding_bag(weights, indices, offsets, mode, None, [1, -1, -1, 0, 2])
            cpu_out, cpu_arg = cpu.batched_embedding_bag(weights, indices, offsets, mode, None, [1, -1, -1, 0, 2])
            same(out, cpu_out, dtype, f"batched forward mode {mode}")
            grad = torch.randn(out.shape, generator=g).to(dtype)
            back = ops.batched_embedding_bag_backward(grad, weights, indices, offsets, arg, mode, None,
                                                      [1, -1, -1, 0, 2])
            cpu_back = cpu.batched_embedding_bag_backward(grad, weights, indices, offsets, cpu_arg, mode, None,
                                                          [1, -1, -1, 0, 2])
            for a, e in zip(back, cpu_back):
                same(a, e, dtype, f"batched backward mode {mode}")
            calls += 2

    # Bad inputs: out-of-range rows anywhere in a long bag, bad offsets; the kernels must read none of them.
    weight = torch.randn(50, 8)
    indices, offsets = bags([3, 70, 2], 50, g, torch.int64)
    bad_rows = [50, -1, -2, 2**40, -(2**62), 2**62]
    for position in (0, 3, 3 + 31, 3 + 32, 3 + 69, 74):
        for row in bad_rows:
            bad = indices.clone()
            bad[position] = row
            for mode in (0, 1, 2):
                args = (weight, bad, offsets, mode, None, -1, True)
                expected, actual = message(cpu.embedding_bag, *args), message(ops.embedding_bag, *args)
                if actual != expected:
                    raise AssertionError(f"index {row} at {position}: {actual!r} != {expected!r}")
                calls += 1
                if mode == 2:
                    continue  # max's backward reads max_indices, not the indices (checked below)
                grad = torch.randn(3, 8, generator=g)
                args = (grad, weight, bad, offsets, EMPTY_MAX, mode, None, -1, True)
                expected = message(cpu.embedding_bag_backward, *args)
                actual = message(ops.embedding_bag_backward, *args)
                if actual != expected:
                    raise AssertionError(f"backward, index {row} at {position}: {actual!r} != {expected!r}")
                calls += 1
    for bad_offsets in ([0, 80, 3, 75], [0, 3, 200, 75], [0, -5, 3, 75], [0, 3, 73, 76], [2, 3, 73, 75]):
        offs = torch.tensor(bad_offsets)
        for mode in (0, 1, 2):
            args = (weight, indices, offs, mode, None, -1, True)
            expected, actual = message(cpu.embedding_bag, *args), message(ops.embedding_bag, *args)
            if actual != expected:
                raise AssertionError(f"offsets {bad_offsets}: {actual!r} != {expected!r}")
            calls += 1
    grad = torch.randn(3, 8, generator=g)
    for bad in (50, -2, 2**40):
        winners = torch.zeros(3, 8, dtype=torch.int64)
        winners[2, 7] = bad
        args = (grad, weight, indices, offsets, winners, 2, None, -1, True)
        expected, actual = message(cpu.embedding_bag_backward, *args), message(ops.embedding_bag_backward, *args)
        if actual != expected:
            raise AssertionError(f"max_indices {bad}: {actual!r} != {expected!r}")
        calls += 1
    print(f"{calls} calls checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())

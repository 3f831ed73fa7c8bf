"""Every op's backends refuse the same arguments with the same words: the fake kernel, the aten composition
(where an op has one), the GPU wrapper (where it has one) and the CPU kernel, called on the op fuzzer's random,
often invalid, arguments.

- Fake kernel: whatever it refuses, the CPU kernel refuses with the same exception type and message. A fake kernel
  sees shapes only, so the CPU kernel may refuse more (a bad value in the data), and may meet a bad value before
  the structural error the fake reports (DATA_ERRORS).
- Composition: the same outcome as the CPU kernel, both ways: both accept, or both raise the same error.
- GPU wrapper (the Triton kernels' glue, in Triton's interpreter where no GPU is present): the same, but for what
  the GPU does not do.
"""

import random
import re
import zlib

import pytest
import torch
from torch._subclasses.fake_tensor import DynamicOutputShapeException, FakeTensorMode

import fuzz_ops
from mprec.ops import cache, gpu
from mprec.ops.arguments import refusing_none
from mprec.ops.composite import KERNELS

OPS = fuzz_ops.op_names()
CALLS = 60
# Errors about values in the data, which no fake kernel can see.
DATA_ERRORS = re.compile(r"offsets\[\d+\]|: index -?\d+ at position|hash_[ab]\[\d+\] = |ids must be >= 0|"
                         r"is not finite|max_indices\[")
# The dispatcher's own refusals, before any kernel runs: an argument of the wrong Python type, or no tensor at all
# to dispatch on. A fake or a composition called directly meets them differently.
DISPATCHER = re.compile(r"Expected a value of type|There were no tensor arguments|object has no attribute")


def _outcome(fn, args, fake=False):
    try:
        if fake:
            with FakeTensorMode() as mode:
                fn(*fuzz_ops._fake_args(mode, args))
        else:
            fn(*args)
        return ("ok",)
    except DynamicOutputShapeException:  # the fake's output size depends on the data: accepted
        return ("ok",)
    except Exception as error:  # noqa: BLE001
        message = str(error).split("\n")[0]
        return ("dispatcher",) if DISPATCHER.search(message) else (type(error).__name__, message)


def _copy(args):
    def one(a):
        if isinstance(a, torch.Tensor):
            return a.clone()
        return [one(x) for x in a] if isinstance(a, list) else a
    return [one(a) for a in args]


def _tensor_for_a_scalar(op, args) -> bool:
    """A tensor passed where the schema takes a number or a string: the dispatcher converts or refuses it before a
    registered composition would see it."""
    schema = getattr(torch.ops.mprec, op).default._schema
    for arg, value in zip(schema.arguments, args):
        if isinstance(value, torch.Tensor) and not isinstance(arg.type, (torch.TensorType, torch.OptionalType)):
            return True
    return False


@pytest.mark.parametrize("op", OPS)
def test_fake_kernel_refuses_as_the_cpu_kernel(op):
    rng = random.Random(zlib.crc32(op.encode()))
    fn = getattr(torch.ops.mprec, op)
    compared = 0
    for _ in range(CALLS):
        args = fuzz_ops.arguments(op, rng)
        cpu = _outcome(fn, _copy(args))
        fake = _outcome(fn, _copy(args), fake=True)
        if fake[0] in ("ok", "dispatcher") or cpu == ("dispatcher",):
            continue
        if op == "cache_replace" and "does not run on fake tensors" in fake[1]:
            continue  # refused by design after its checks: the number of entries replaced is data
        if len(cpu) == 2 and DATA_ERRORS.search(cpu[1]):
            continue
        compared += 1
        assert fake == cpu, f"args: {fuzz_ops.describe(args)}"
    assert compared > 0, "no call was refused by the fake kernel: the arguments are not invalid enough"


def _compare_with_the_cpu_kernel(op: str, implementation, seed: int, judge) -> None:
    """Calls ``implementation`` (as gpu.py registers it: behind the None check) and the CPU kernel on the fuzzer's
    arguments; ``judge(args, cpu, got)`` asserts, or returns False to leave a pair uncompared."""
    rng = random.Random(zlib.crc32(op.encode()) + seed)
    fn = getattr(torch.ops.mprec, op)
    wrapped = refusing_none(f"mprec::{op}", implementation)
    compared = 0
    for _ in range(CALLS):
        args = fuzz_ops.arguments(op, rng)
        cpu = _outcome(fn, _copy(args))
        if cpu == ("dispatcher",) or _tensor_for_a_scalar(op, args):
            continue
        compared += judge(args, cpu, _outcome(wrapped, _copy(args))) is not False
    assert compared > 0, "every call was refused by the dispatcher: nothing was compared"


@pytest.mark.parametrize("op", sorted(KERNELS))
def test_composition_agrees_with_the_cpu_kernel(op):
    def judge(args, cpu, got):
        assert got == cpu, f"args: {fuzz_ops.describe(args)}"

    _compare_with_the_cpu_kernel(op, KERNELS[op], 0, judge)


@pytest.mark.skipif(not gpu.triton_available() or torch.cuda.is_available(),
                    reason="the Triton wrappers run on CPU tensors in Triton's interpreter, where no GPU is present")
@pytest.mark.parametrize("op", sorted(gpu.TRITON_KERNELS))
def test_gpu_wrapper_refuses_as_the_cpu_kernel(op):
    """The Triton-backed implementation (each family's GPU glue), on CPU tensors in the interpreter: the CPU
    kernel's outcome, both ways, but for what the GPU does not do (quantized tables are pooled on the CPU only)."""
    def judge(args, cpu, got):
        if len(got) == 2 and "on the CPU only" in got[1]:
            return False  # a capability the GPU lacks, refused by name
        if len(cpu) == 2 and DATA_ERRORS.search(cpu[1]) and got[0] != "ok" and got != cpu:
            # As a fake kernel does, the wrapper checks the arguments before it reads the data (a read is a
            # device synchronisation); it reads the data once, with its kernel's error flag.
            fake = _outcome(getattr(torch.ops.mprec, op), _copy(args), fake=True)
            assert got == fake, f"args: {fuzz_ops.describe(args)}"
            return False
        assert got == cpu, f"args: {fuzz_ops.describe(args)}"

    _compare_with_the_cpu_kernel(op, gpu.TRITON_KERNELS[op], 1, judge)


def test_sketch_rows_limit_is_the_kernels():
    ids, occurrences = torch.tensor([1, 2]), torch.tensor([1, 1])
    torch.ops.mprec.count_min_add(torch.zeros(cache.MAX_SKETCH_ROWS, 8, dtype=torch.int64), ids, occurrences)
    with pytest.raises(RuntimeError, match=rf"sketch rows must be in \[1, {cache.MAX_SKETCH_ROWS}\], got "
                                           rf"{cache.MAX_SKETCH_ROWS + 1}"):
        torch.ops.mprec.count_min_add(torch.zeros(cache.MAX_SKETCH_ROWS + 1, 8, dtype=torch.int64), ids, occurrences)

"""The op fuzzer (tests/fuzz_ops.py) in the suite: hypothesis draws the random source, so a failure shrinks and
replays; every op gets the same share. ``make fuzz`` runs the harness for a million calls."""

import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_ops

OPS = fuzz_ops.op_names()


def test_every_op_has_argument_generators():
    registered = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("mprec::")}
    assert set(OPS) == registered and len(OPS) >= 26
    import random

    for op in OPS:
        fuzz_ops.arguments(op, random.Random(0))  # raises KeyError for an argument without a generator


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False), op=st.sampled_from(OPS))
def test_ops_refuse_bad_arguments_by_name(rng, op):
    """CPU kernel and fake kernel: return, or raise an error naming the op."""
    fuzz_ops.fuzz_once(rng, op, fake_every=1)


@pytest.mark.parametrize("op", OPS)
def test_each_op_many_times(op):
    import random

    rng = random.Random(zlib.crc32(op.encode()))  # not hash(): it changes with every process
    outcomes = [fuzz_ops.fuzz_once(rng, op, fake_every=1) for _ in range(40)]
    assert any("error" in o for o in outcomes), "no call was refused: the arguments are not invalid enough"


@pytest.mark.parametrize("op", OPS)
def test_none_for_each_tensor_argument_is_refused_by_name(op):
    """torch hands None given for a Tensor to the kernel as an undefined tensor: every argument of every op, on the
    CPU kernel and the fake kernel."""
    import random

    schema = getattr(torch.ops.mprec, op).default._schema
    tensors = [i for i, a in enumerate(schema.arguments) if isinstance(a.type, torch._C.TensorType)]
    rng = random.Random(1)
    for i in tensors:
        args = fuzz_ops.arguments(op, rng, junk_allowed=False)
        args[i] = None
        for fake in (False, True):
            assert fuzz_ops.call(op, args, fake) == "error", (op, schema.arguments[i].name, fake)


def test_a_finding_is_reported():
    def unnamed(*args):
        raise IndexError("tuple index out of range")

    def named(*args):
        raise ValueError("mprec::unique_ids: ids must be int32 or int64")

    with pytest.raises(fuzz_ops.Finding, match="does not name it: IndexError"):
        fuzz_ops.call("unique_ids", [torch.zeros(2)], fake=False, fn=unnamed)
    assert fuzz_ops.call("unique_ids", [torch.zeros(2)], fake=False, fn=named) == "error"
    assert fuzz_ops.call("unique_ids", [torch.zeros(2, dtype=torch.int64)], fake=False) == "ok"


def test_a_call_that_does_not_return_is_reported():
    """The harness's watchdog ends the process naming the op, rather than letting a looping kernel hang it."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("import time, torch, fuzz_ops\n"
              "w = fuzz_ops.Watchdog(0.2)\n"
              "w.current = (time.monotonic(), 'cache_erase', [torch.zeros(4, 2, dtype=torch.int64)])\n"
              "time.sleep(30)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent)
    assert done.returncode == 3, done.stderr
    assert "FINDING: mprec::cache_erase has not returned after 0.2 s\nargs: int64[4, 2]" in done.stdout

"""The op fuzzer: random, mostly invalid arguments for every ``torch.ops.mprec`` op, through the CPU kernels and
the fake kernels. A call must return or raise an error that names the op (``mprec::<op>``); a crash ends the
process, a call that does not return ends it too (the watchdog of the long runs names it), and a read outside a
tensor is what ``make test-sanitize`` (which runs the suite's short fuzz) finds.

Arguments are made by name from one set of sizes per call (rows, width, lookups, bags, tables, ...), so most
are consistent with each other and reach the kernels' value checks and loops; then, half of the time, one or
two are replaced by something of another kind (another dtype or rank, an extreme integer, None, a list).

    python tests/fuzz_ops.py --calls 1000000 --seed 0      # what `make fuzz` runs

``tests/test_fuzz.py`` runs the same harness under hypothesis, briefly, in the suite.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import random
import sys
import threading
import time
import traceback

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

import mprec  # noqa: F401  (registers the ops)

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ALL_DTYPES = FLOATS + (torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool)
EXTREME_INTS = (-(2**63), -(2**31), -7, -1, 0, 1, 2, 3, 8, 61, 2**31 - 1, 2**31, 2**62, 2**63 - 1)
STRINGS = ("none", "relu", "mish", "uniform", "gaussian", "sgd", "rowwise_adagrad", "", "bogus")


def op_names() -> list[str]:
    return sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("mprec::"))


class Sizes:
    """The sizes one call's arguments share."""

    def __init__(self, rng: random.Random) -> None:
        small = lambda hi: rng.choice((0, 1, 1, 2, 3, rng.randint(0, hi)))  # noqa: E731
        self.R, self.D, self.N, self.B, self.T = small(40) + 1, small(20) + 1, small(60), small(10), small(3) + 1
        self.K, self.O, self.I, self.F = small(16) + 1, small(12) + 1, small(12) + 1, small(5) + 1
        self.U, self.M, self.W = small(20) + 1, small(30), small(6) + 1
        self.C = 1 << rng.randint(1, 7)
        self.p = rng.choice((2, 3, 7, 10007, 1000003, 2**31 - 1))
        self.float = rng.choice(FLOATS)
        self.index = rng.choice((torch.int32, torch.int64))


def _floats(rng: random.Random, shape, dtype) -> torch.Tensor:
    t = torch.randn(shape, generator=torch.Generator().manual_seed(rng.getrandbits(32))).to(dtype)
    if t.numel() and rng.random() < 0.1:
        t.view(-1)[rng.randrange(t.numel())] = rng.choice((math.nan, math.inf, -math.inf, 1e30))
    return t


def _ints(rng: random.Random, shape, lo: int, hi: int, dtype=torch.int64) -> torch.Tensor:
    n = math.prod(shape)
    values = [rng.randint(lo, hi) for _ in range(n)]
    if n and rng.random() < 0.05:
        values[rng.randrange(n)] = rng.choice(EXTREME_INTS)
    info = torch.iinfo(dtype)
    return torch.tensor([min(max(v, info.min), info.max) for v in values], dtype=dtype).reshape(shape)


def _offsets(rng: random.Random, bags: int, n: int, dtype, last: bool) -> torch.Tensor:
    cuts = sorted(rng.randint(0, n) for _ in range(max(bags - 1, 0)))
    values = ([0] + cuts if bags else []) + ([n] if last else [])
    if values and rng.random() < 0.1:  # out of order, past the end, not starting at 0
        values[rng.randrange(len(values))] = rng.choice((-1, n + 1, n + 100, 1))
    return torch.tensor(values, dtype=dtype)


def junk(rng: random.Random):
    """Something of another kind: a tensor of any dtype and rank, an integer, None, a list or a string."""
    kind = rng.random()
    if kind < 0.55:
        shape = [rng.choice((0, 1, 2, 3, 5)) for _ in range(rng.randint(0, 3))]
        dtype = rng.choice(ALL_DTYPES)
        t = _floats(rng, shape, dtype) if dtype.is_floating_point else _ints(rng, shape, -3, 9).to(dtype)
        if t.dim() >= 2 and rng.random() < 0.3:
            t = t.transpose(0, 1)  # not contiguous
        return t
    if kind < 0.75:
        return rng.choice(EXTREME_INTS)
    if kind < 0.85:
        return None
    if kind < 0.95:
        return [junk(rng) for _ in range(rng.randint(0, 3))]
    return rng.choice(STRINGS)


def argument(name: str, op: str, s: Sizes, rng: random.Random):
    """A mostly consistent value for argument ``name`` of ``op``."""
    batched = op.startswith("batched")
    dhe = op.startswith("dhe")
    if name == "weights":
        return [_floats(rng, (s.R + t, s.D), s.float) for t in range(s.T)]
    if name == "weight":
        if dhe:
            return _floats(rng, (s.O, s.K), s.float)
        if op == "rowwise_linear":
            return _floats(rng, (s.O, s.I), s.float)
        if rng.random() < 0.15:
            return _ints(rng, (s.R, s.D), 0, 255, torch.uint8)
        return _floats(rng, (s.R, s.D), s.float)
    if name == "qweight":
        return _ints(rng, (s.R, s.D), 0, 255, torch.uint8)
    if name == "scale_bias":
        one = lambda r: _floats(rng, (r, 2), torch.float32)  # noqa: E731
        if rng.random() < 0.5 and op != "dequantize_rowwise_int8":
            return None
        return [one(s.R + t) for t in range(s.T)] if batched else one(s.R)
    if name == "indices":
        return _ints(rng, (s.N,), -1 if rng.random() < 0.1 else 0, s.R + (rng.random() < 0.1), s.index)
    if name == "offsets":
        return _offsets(rng, s.T * s.B if batched else s.B, s.N, s.index, batched or rng.random() < 0.5)
    if name in ("mode", "pooling_mode"):
        return rng.choice((0, 1, 2, 0, 1, 2, 3, -1))
    if name == "per_sample_weights":
        return None if rng.random() < 0.5 else _floats(rng, (s.N,), s.float)
    if name == "padding_idx":
        if batched:
            return [] if rng.random() < 0.5 else [rng.randint(-2, s.R + 1) for _ in range(s.T)]
        return rng.randint(-2, s.R + 1)
    if name == "sparse" and op.startswith("dlrm_interaction"):
        return _floats(rng, (s.B, s.T * s.D), s.float)
    if name in ("include_last_offset", "sparse", "scale_grad_by_freq", "return_max_indices"):
        return rng.random() < 0.5
    if name == "grad":
        if dhe:
            return _floats(rng, (s.N, s.O), s.float)
        if op == "dot_interaction_backward":
            return _floats(rng, (s.B, s.F * (s.F - 1) // 2), s.float)
        if op == "relu_backward_bias_":
            return _floats(rng, (s.N, s.O), s.float)
        if op == "dlrm_interaction_backward":
            return _floats(rng, (s.B, s.D + (s.T + 1) * s.T // 2), s.float)
        return _floats(rng, (s.B, s.D * (s.T if batched else 1)), s.float)
    if name == "max_indices":
        return _ints(rng, (s.B, s.D * (s.T if batched else 1)), -1, s.R) if rng.random() < 0.6 else \
            torch.empty(0, 0, dtype=torch.int64)
    if name == "state":
        return [_floats(rng, (s.R + t,), torch.float32).abs() for t in range(s.T)] if rng.random() < 0.5 else []
    if name == "optimizer":
        return rng.choice(("sgd", "rowwise_adagrad", "adam"))
    if name in ("lr", "eps"):
        return rng.choice((0.01, 1e-8, 0.0, -1.0, math.nan, math.inf))
    if name == "table":
        table = torch.full((s.C, 2), -1, dtype=torch.int64)
        # Now and then a table with no empty slot, as cache_insert can leave one: probes must end without one.
        for slot in rng.sample(range(s.C), s.C if rng.random() < 0.1 else rng.randint(0, s.C // 2)):
            table[slot] = torch.tensor([rng.randint(0, 50), rng.randint(-1, s.U)])
        return table
    if name in ("values", "new_values"):
        return _floats(rng, (s.U if name == "values" else s.M, s.W), s.float)
    if name in ("counts", "scores", "occurrences"):
        return _ints(rng, (s.U if name == "counts" else s.M,), -1 if rng.random() < 0.1 else 0, 5)
    if name in ("ids", "keys"):
        n = s.U if name == "keys" else s.M
        ids = _ints(rng, (n,), -1 if rng.random() < 0.1 else 0, 60)
        if op != "unique_ids" and rng.random() < 0.8:
            ids = torch.unique(ids)[torch.randperm(torch.unique(ids).numel())]  # mostly distinct
        return ids.to(s.index) if op in ("unique_ids", "dhe_encode", "dhe_encode_linear") else ids
    if name == "entries":
        return _ints(rng, (s.M,), -1, s.U)
    if name in ("size", "window_start", "window_per_candidate", "min_count"):
        return rng.choice((rng.randint(-1, s.U + 1), rng.randint(0, s.U)))
    if name == "sketch":
        return torch.zeros(rng.randint(1, 9), 1 << rng.randint(0, 6), dtype=torch.int64)
    if name in ("hash_a", "hash_b"):
        return _ints(rng, (s.K,), 0 if rng.random() < 0.9 else -2, s.p)
    if name == "p":
        return s.p if rng.random() < 0.9 else rng.choice(EXTREME_INTS)
    if name == "m":
        return rng.choice((1, 2, s.p, 10**6, 0, -1))
    if name == "transform":
        return rng.choice(("uniform", "gaussian", "uniform", "bogus"))
    if name == "activation":
        return rng.choice(("none", "relu", "mish", "none", "tanh"))
    if name == "bias":
        return None if rng.random() < 0.3 else _floats(rng, (s.O,), s.float)
    if name == "output":
        return _floats(rng, (s.N, s.O), s.float)
    if name == "input":
        return _floats(rng, (s.N, s.I), s.float)
    if name == "x":
        return _floats(rng, (s.B, s.F, s.D), s.float)
    if name == "a":  # mlp_product's [M, K]; b [N, K], now and then a transposed view as a backward passes it
        return _floats(rng, (s.N, s.I), s.float)
    if name == "b":
        return _floats(rng, (s.I, s.O), s.float).t() if rng.random() < 0.3 else _floats(rng, (s.O, s.I), s.float)
    if name == "product":
        return rng.choice(("forward", "input_grad", "weight_grad", "forward", "backward"))
    if name == "dense":
        return _floats(rng, (s.B, s.D), s.float)
    if name == "pad_to":
        return rng.choice((1, 2, 8, 0, -1))
    if name == "order":  # the interaction's table order: none, a permutation, or one that repeats, misses or overruns
        if rng.random() < 0.4:
            return None
        order = rng.sample(range(s.T), s.T)
        if order and rng.random() < 0.3:
            order[rng.randrange(len(order))] = rng.choice((-1, s.T, order[0], rng.choice(EXTREME_INTS)))
        if rng.random() < 0.1:
            order = order[:-1] if order and rng.random() < 0.5 else order + [0]
        return order
    if name == "data":
        return _criteo_bytes(rng)
    if name in ("num_dense", "num_sparse"):
        return rng.choice((13, 26, 0, 1, 3, -1, 1000))
    if name == "missing_id":
        return rng.choice((0, 7, -1, 2**62))
    raise KeyError(f"fuzz_ops: no generator for argument {name!r} of mprec::{op}")


def _criteo_bytes(rng: random.Random) -> torch.Tensor:
    lines = []
    for _ in range(rng.randint(0, 4)):
        fields = [rng.choice("01")] + [rng.choice(("", str(rng.randint(-5, 10**6)))) for _ in range(13)] + \
                 [rng.choice(("", "%08x" % rng.getrandbits(32))) for _ in range(26)]
        line = "\t".join(fields)
        if rng.random() < 0.3:  # damage: drop, add or garble a field, or cut the line
            cut = rng.randrange(len(line) + 1)
            line = rng.choice((line[:cut], line + "\t1", line.replace("\t", "", 1), line[:cut] + "\xff\x00" + line[cut:]))
        lines.append(line)
    text = "\n".join(lines) + rng.choice(("\n", "", "\r\n"))
    data = text.encode("utf-8", "surrogateescape")
    return torch.tensor(list(data), dtype=torch.uint8)


def arguments(op: str, rng: random.Random, junk_allowed: bool = True) -> list:
    schema = getattr(torch.ops.mprec, op).default._schema
    s = Sizes(rng)
    args = [argument(a.name, op, s, rng) for a in schema.arguments]
    if junk_allowed and rng.random() < 0.5:
        for i in rng.sample(range(len(args)), min(len(args), rng.randint(1, 2))):
            args[i] = junk(rng)
    return args


def _names_the_op(error: BaseException, op: str) -> bool:
    return f"mprec::{op}" in str(error)


def _fake_args(mode: FakeTensorMode, args: list) -> list:
    def fake(value):
        if isinstance(value, torch.Tensor):
            return mode.from_tensor(value)
        if isinstance(value, list):
            return [fake(v) for v in value]
        return value
    return [fake(a) for a in args]


class Finding(AssertionError):
    pass


def call(op: str, args: list, fake: bool, fn=None) -> str:
    """Runs the op (or ``fn`` in its place) once; returns "ok" or "error" (one that names the op); raises
    Finding otherwise."""
    fn = fn or getattr(torch.ops.mprec, op)
    try:
        if fake:
            with FakeTensorMode(shape_env=ShapeEnv()) as mode:
                fn(*_fake_args(mode, args))
        else:
            fn(*args)
        return "ok"
    except Exception as error:  # noqa: BLE001
        if _names_the_op(error, op):
            return "error"
        raise Finding(f"mprec::{op} ({'fake' if fake else 'cpu'}) raised an error that does not name it: "
                      f"{type(error).__name__}: {str(error)[:300]}\nargs: {describe(args)}") from error


def describe(args: list) -> str:
    def one(v):
        if isinstance(v, torch.Tensor):
            return f"{str(v.dtype)[6:]}{list(v.shape)}" + ("" if v.is_contiguous() else "(strided)")
        if isinstance(v, list):
            return "[" + ", ".join(one(x) for x in v) + "]"
        return repr(v)
    return ", ".join(one(a) for a in args)


class Watchdog:
    """Ends the process when one call has not returned within ``seconds``, naming the op and its arguments: a
    kernel that loops forever is a finding too. The kernels release the GIL, so this thread runs while one
    loops. ``close`` stops it, so that no thread outlives the run into the interpreter's shutdown."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.current: tuple[float, str, list] | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="fuzz-watchdog")
        self._thread.start()

    def _watch(self):
        while not self._closed.wait(min(1.0, self.seconds / 4)):
            current = self.current
            if current is not None and time.monotonic() - current[0] > self.seconds:
                print(f"FINDING: mprec::{current[1]} has not returned after {self.seconds:g} s\n"
                      f"args: {describe(current[2])}", flush=True)
                os._exit(3)

    def close(self):
        self._closed.set()
        self._thread.join()


def fuzz_once(rng: random.Random, op: str, fake_every: int = 1, counter: int = 0,
              watchdog: Watchdog | None = None) -> tuple[str, ...]:
    """One op on one set of arguments, through the CPU kernel and (every ``fake_every``-th call) the fake one."""
    args = arguments(op, rng)
    if watchdog is not None:
        watchdog.current = (time.monotonic(), op, args)
    try:
        outcomes = [call(op, args, fake=False)]
        if counter % fake_every == 0:
            outcomes.append(call(op, [a.clone() if isinstance(a, torch.Tensor) else a for a in args], fake=True))
    finally:
        if watchdog is not None:
            watchdog.current = None
    return tuple(outcomes)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="op calls in all (CPU and fake)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fake-every", type=int, default=4, help="also call the fake kernel every n-th time")
    parser.add_argument("--hang-seconds", type=float, default=120.0,
                        help="a call that has not returned after this long is a finding (the process ends)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    ops = op_names()
    watchdog = Watchdog(args.hang_seconds)
    counts = collections.Counter()
    findings: dict[str, str] = {}
    calls, start, last_report, i = 0, time.perf_counter(), time.perf_counter(), 0
    try:
        while calls < args.calls:
            op = ops[i % len(ops)]
            try:
                for outcome in fuzz_once(rng, op, args.fake_every, i // len(ops), watchdog):
                    counts[(op, outcome)] += 1
                    calls += 1
            except Finding as finding:
                key = str(finding).splitlines()[0][:160]
                if key not in findings:
                    findings[key] = "".join(traceback.format_exception(finding))
                    print(f"FINDING: {finding}", flush=True)
                calls += 1
            i += 1
            now = time.perf_counter()
            if now - last_report > 30:
                last_report = now
                print(f"{calls:,} calls, {now - start:.0f} s, {len(findings)} findings", flush=True)
    finally:
        watchdog.close()
    seconds = time.perf_counter() - start
    print(f"{calls:,} calls ({sum(v for (o, r), v in counts.items() if r == 'error'):,} refused with an error "
          f"naming the op, {sum(v for (o, r), v in counts.items() if r == 'ok'):,} accepted) over {len(ops)} ops "
          f"in {seconds:.0f} s, seed {args.seed}; {len(findings)} findings")
    for op in ops:
        print(f"  mprec::{op}: {counts[(op, 'ok')]:,} accepted, {counts[(op, 'error')]:,} refused")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

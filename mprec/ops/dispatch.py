"""Calling an op whose autograd formula is registered from Python, without that formula's Python kernel where
no gradient is wanted.

``torch.library.register_autograd`` puts a Python kernel in front of the op: every call runs it, grad or not,
and where no argument requires a gradient (or grad mode is off) all it does is dispatch again below autograd.
That Python layer cost as much per call as the C++ op's own dispatch and checks, and after a cache flush (a
table much larger than the caches between two calls) it ran cold, costing a narrow table's call a measurable
share of its time. :func:`call` makes the kernel's own test first and, where it finds no gradient wanted,
dispatches below autograd itself: the same kernel runs on the same arguments, with one Python frame fewer and
no autograd machinery. Every other call, and every call that torch.compile traces, goes through the op as
registered.
"""

from __future__ import annotations

import torch

__all__ = ["call"]

_below_autograd = torch._C._AutoDispatchBelowAutograd
_any_requires_grad = torch._C._any_requires_grad
_grad_enabled = torch.is_grad_enabled
_is_compiling = torch.compiler.is_compiling


def call(op: torch._ops.OpOverload, *args):
    """``op(*args)``; below autograd where the op's autograd kernel would only have dispatched there (grad mode
    off, or no argument requiring a gradient: that kernel's own test). Under torch.compile, always ``op(*args)``,
    which dynamo traces."""
    if _is_compiling() or (_grad_enabled() and _any_requires_grad(*args)):
        return op(*args)
    with _below_autograd():
        return op(*args)

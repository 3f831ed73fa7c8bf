"""What every op's Python implementations (fake kernels, the GPU wrappers) check before their own checks, and
the helpers their checks of values in the data share.

torch hands None, given where a schema says ``Tensor``, straight to the implementation; the C++ kernels refuse
it by name (``csrc/include/mprec/checks.h``), and so do these, with the same words, before anything reads an
attribute of it.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
from torch import Tensor

__all__ = ["check_tensor_arguments", "refusing_none", "register_fake", "first_true", "value_at", "check_device"]


@functools.lru_cache(maxsize=None)
def _tensor_arguments(qualname: str) -> tuple[tuple[int, str, bool], ...]:
    """(position, name, is a list) of the schema's non-optional Tensor and Tensor[] arguments."""
    namespace, name = qualname.split("::")
    schema = getattr(getattr(torch.ops, namespace), name).default._schema
    found = []
    for i, argument in enumerate(schema.arguments):
        kind = argument.type
        if isinstance(kind, torch._C.TensorType):
            found.append((i, argument.name, False))
        elif isinstance(kind, torch._C.ListType) and isinstance(kind.getElementType(), torch._C.TensorType):
            found.append((i, argument.name, True))
    return tuple(found)


def check_tensor_arguments(qualname: str, args: tuple, kwargs: dict) -> None:
    """Raises ValueError naming the op and the argument where None stands for a tensor (or in a tensor list)."""
    for i, name, is_list in _tensor_arguments(qualname):
        if i < len(args):
            value = args[i]
        elif name in kwargs:
            value = kwargs[name]
        else:
            continue
        if value is None:
            raise ValueError(f"{qualname}: {name} must be a tensor, got None")
        if is_list and any(v is None for v in value):
            raise ValueError(f"{qualname}: {name} must be a list of tensors, got None in it")


def refusing_none(qualname: str, fn: Callable) -> Callable:
    """``fn`` behind :func:`check_tensor_arguments`."""
    @functools.wraps(fn)
    def checked(*args, **kwargs):
        check_tensor_arguments(qualname, args, kwargs)
        return fn(*args, **kwargs)
    return checked


def register_fake(qualname: str) -> Callable:
    """``torch.library.register_fake(qualname)`` for a fake kernel that first refuses None for a tensor."""
    def register(fn: Callable) -> Callable:
        # _stacklevel: torch checks that the fake lives in the module csrc/registration.cpp names, and looks
        # at the frame that registers it: the op family's module, which applies this decorator.
        torch.library.register_fake(qualname, _stacklevel=2)(refusing_none(qualname, fn))
        return fn
    return register


# --- checks of values in the data, without a host synchronisation per element ----------------------------------

def first_true(mask: Tensor) -> Tensor:
    """Position of the first True of a 1-D mask, len(mask) when there is none, as a device scalar (no sync).
    The appended True gives empty masks an answer; argmax returns the first of equal maxima."""
    return torch.cat([mask, mask.new_ones(1)]).to(torch.uint8).argmax()


def value_at(values: Tensor, position: Tensor) -> Tensor:
    """values[position], or 0 when position is past the end (never reads outside ``values``)."""
    return torch.cat([values, values.new_zeros(1)])[position]


def check_device(op: str, device: torch.device, **tensors: Optional[Tensor]) -> None:
    """csrc/cpu/embedding_bag_checks.cpp check_device, for each named tensor given (None: not given)."""
    for name, t in tensors.items():
        if t is not None and t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device}, expected {device}")

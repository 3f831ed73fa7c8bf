"""mprec: embedding-bag and deep-hash-embedding ops for recommendation models, and the MP-Rec scheduler.

Importing mprec loads the compiled extension, which registers every op under ``torch.ops.mprec``, and
the Python side of each op (fake kernels, autograd) in :mod:`mprec.ops`.
"""

import torch  # noqa: F401  (loads libtorch before the extension that links against it)

from . import _C
from . import ops
from . import nn
from . import data  # noqa: F401  (parse_criteo's fake kernel)

__version__ = "0.1.0"


def cpu_isa() -> str:
    """The CPU kernel variant in use: ``'avx512'``, ``'avx2'`` or ``'scalar'``.

    Chosen at run time from the CPU's features; ``MPREC_CPU_ISA`` forces one at start-up and
    :func:`set_cpu_isa` at any time.
    """
    return _C.cpu_isa()


def set_cpu_isa(name: str) -> None:
    """Force the CPU kernel variant for this process; raises if the CPU cannot run it."""
    _C.set_cpu_isa(name)


def supported_cpu_isas() -> list[str]:
    """The CPU kernel variants this CPU and build can run, best first."""
    return list(_C.supported_cpu_isas())


def build_info() -> dict:
    """How the extension was built (torch version, compiler, kernels present) and torch's threading."""
    return dict(_C.build_info())


__all__ = ["ops", "nn", "cpu_isa", "set_cpu_isa", "supported_cpu_isas", "build_info", "__version__"]

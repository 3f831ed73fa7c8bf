"""Models built from the mprec layers."""

from .dlrm import DLRM, PRESETS

__all__ = ["DLRM", "PRESETS"]

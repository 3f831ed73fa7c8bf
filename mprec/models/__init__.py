"""Models built from the mprec layers."""

from .dlrm import DLRM, DLRMTrain, PRESETS

__all__ = ["DLRM", "DLRMTrain", "PRESETS"]

"""Lowerings of the mprec layers for devices mprec's custom ops do not run on.

:mod:`mprec.lower.forms` holds DLRM in plain aten ops on padded bags with static shapes; :mod:`.xla`
compiles it with torch_xla (TPU, or XLA on a CPU), :mod:`.ipu` with PopTorch (Graphcore IPUs), with
32-bit integer hashing. Neither torch_xla nor poptorch is needed to import this package.
"""

from .forms import DEFAULT_BUCKETS, LoweredDLRM, PaddedBags, bucket, pad_bags

__all__ = ["DEFAULT_BUCKETS", "LoweredDLRM", "PaddedBags", "bucket", "pad_bags"]

"""Scale-out on TorchRec: mprec's collection sharded by ``DistributedModelParallel`` over processes and hosts.

Needs TorchRec (``pip install mprec[torchrec]`` then ``pip install --no-deps torchrec==1.8.0``: TorchRec's
declared dependency is FBGEMM's CUDA build, and on a CPU machine FBGEMM's CPU build takes its place).
"""

from __future__ import annotations

try:
    import torchrec  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised where TorchRec is absent
    raise ImportError("mprec.distributed needs TorchRec: pip install 'mprec[torchrec]' && "
                      "pip install --no-deps torchrec==1.8.0") from error

from ._torchrec import TORCHREC_VERSION, ShardedEmbeddingBagCollection, TableBatchedEmbeddingBags
from .sharder import SHARDING_TYPES, EmbeddingBagCollectionSharder

__all__ = ["EmbeddingBagCollectionSharder", "ShardedEmbeddingBagCollection", "TableBatchedEmbeddingBags",
           "SHARDING_TYPES", "TORCHREC_VERSION"]

if torchrec.__version__.split("+")[0] != TORCHREC_VERSION:
    import warnings

    warnings.warn(f"mprec.distributed is written against torchrec {TORCHREC_VERSION}; this is torchrec "
                  f"{torchrec.__version__}: tests/test_distributed.py checks the internals it relies on", stacklevel=2)

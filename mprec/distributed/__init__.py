"""Scale-out on TorchRec: mprec's collection sharded by ``DistributedModelParallel`` over processes and hosts.

- :class:`EmbeddingBagCollectionSharder` (``sharder.py``): TorchRec's ``ModuleSharder`` for
  :class:`mprec.nn.EmbeddingBagCollection`; the sharded module and mprec's kernels are in ``_torchrec.py``, the
  one module written against TorchRec's internals.
- ``training.py``: ``mprec train --sharding ...`` under ``torchrun``, on one host or several.
- ``checkpoint.py``: sharded checkpoints (torch.distributed.checkpoint), loadable at any world size; it needs
  only torch.

The sharding parts need TorchRec (``pip install 'mprec[torchrec]'`` then ``pip install --no-deps
torchrec==1.8.0``: TorchRec's declared dependency is FBGEMM's CUDA build, whose place FBGEMM's CPU build takes on
a CPU machine); they are imported when first used.
"""

from __future__ import annotations

import importlib

__all__ = ["EmbeddingBagCollectionSharder", "ShardedEmbeddingBagCollection", "TableBatchedEmbeddingBags",
           "SHARDING_TYPES", "TORCHREC_VERSION"]

_NEEDS_TORCHREC = {"EmbeddingBagCollectionSharder": ".sharder", "SHARDING_TYPES": ".sharder",
                   "ShardedEmbeddingBagCollection": "._torchrec", "TableBatchedEmbeddingBags": "._torchrec",
                   "TORCHREC_VERSION": "._torchrec"}


def require_torchrec() -> None:
    """Raises ImportError, saying how to install TorchRec, where it is missing."""
    try:
        import torchrec  # noqa: F401
    except ImportError as error:
        raise ImportError("mprec.distributed needs TorchRec: pip install 'mprec[torchrec]' && "
                          "pip install --no-deps torchrec==1.8.0") from error


def __getattr__(name: str):
    if name in _NEEDS_TORCHREC:
        require_torchrec()
        return getattr(importlib.import_module(_NEEDS_TORCHREC[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Scale-out on TorchRec: mprec's collection sharded by ``DistributedModelParallel`` over processes and hosts.

- :class:`EmbeddingBagCollectionSharder` (``sharder.py``): TorchRec's ``ModuleSharder`` for
  :class:`mprec.nn.EmbeddingBagCollection`; the sharded module and mprec's kernels are in ``_torchrec.py``, the
  one module written against TorchRec's internals.
- ``training.py``: ``mprec train --sharding ...`` under ``torchrun``, on one host or several.
- ``checkpoint.py``: sharded checkpoints (torch.distributed.checkpoint), loadable at any world size; it needs
  only torch.
- :func:`shutdown` (here, torch only): how a process that ran collectives leaves its process group.

The sharding parts need TorchRec (``pip install 'mprec[torchrec]'`` then ``pip install --no-deps
torchrec==1.8.0``: TorchRec's declared dependency is FBGEMM's CUDA build, whose place FBGEMM's CPU build takes on
a CPU machine); they are imported when first used.
"""

from __future__ import annotations

import gc
import importlib
import os
import warnings

__all__ = ["EmbeddingBagCollectionSharder", "ShardedEmbeddingBagCollection", "TableBatchedEmbeddingBags",
           "SHARDING_TYPES", "TORCHREC_VERSION", "shutdown"]

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


def _gloo_threads() -> int:
    """How many of gloo's collective worker threads this process runs (0 where the OS does not say)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 0
    count = 0
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm") as f:
                count += f.read().startswith("pt_gloo_runloop")
        except OSError:  # the thread ended meanwhile
            pass
    return count


def shutdown() -> None:
    """Leaves the default process group and ends its threads: call it where a process is done with its
    collectives, with its sharded models dropped, before it exits.

    gloo runs each collective on a worker thread of its own, which lets go of the collective's tensors a
    moment after the caller has seen it complete. A worker that does so once the interpreter has begun to
    finalize aborts the process ("terminate called without an active exception"), although every rank has
    finished its work. ``destroy_process_group`` forgets the group but does not stop its workers; they are
    joined when the group's last reference goes, and a sharded model (DistributedModelParallel, DDP) holds the
    group in reference cycles that only a garbage collection frees. Hence the collection here, while the
    interpreter is whole. Warns where the workers outlive it: something still holds the group. Besides a live
    model, that is ``torch._dynamo`` (which TorchRec imports) imported after the group was made, which keeps
    it to the end (torch 2.13): import TorchRec and mprec's distributed modules before ``init_process_group``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
    left = _gloo_threads()
    if left:
        warnings.warn(f"mprec.distributed.shutdown: {left} gloo worker threads still run after the process group "
                      "was destroyed, so something still holds the group (a sharded model?): drop it first, or "
                      "the process may abort as it exits", RuntimeWarning, stacklevel=2)


def __getattr__(name: str):
    if name in _NEEDS_TORCHREC:
        require_torchrec()
        return getattr(importlib.import_module(_NEEDS_TORCHREC[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

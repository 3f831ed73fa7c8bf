"""Sharded checkpoints: ``torch.distributed.checkpoint`` (DCP) folders, written atomically, loadable at any world
size (a model trained over N processes evaluates and serves in one).

Layout of a checkpoint folder::

    <folder>/step-000000120/   DCP's files (one per rank, and .metadata), meta.json, extra.pt
    <folder>/latest            the name of the newest complete step folder

Every rank writes its shards into a hidden folder; rank 0 then adds ``meta.json`` (JSON: config, position) and
``extra.pt`` (anything else, e.g. the data's vocabulary), renames the folder into place and replaces
``latest`` (written to a temporary file, flushed and renamed). A run killed at any moment leaves ``latest``
naming a complete checkpoint. The folder must be one that every rank sees (a shared file system on several
hosts). Needs only torch: evaluating a checkpoint does not need TorchRec.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

__all__ = ["save", "load", "latest", "is_checkpoint", "read_meta"]

LATEST = "latest"
META = "meta.json"
EXTRA = "extra.pt"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def _alone():
    """Quiets DCP's notice that a process outside a process group works alone: here that is intended (one
    process evaluating a checkpoint of many)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _write_atomically(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(folder: str, step: int, state: dict, meta: dict, extra: Optional[dict] = None, keep: int = 2) -> str:
    """Writes ``state`` (tensors, ShardedTensors, nested dicts) as step ``step`` of ``folder``, on every rank
    (a collective); keeps the ``keep`` newest steps. Returns the step folder."""
    name = f"step-{step:09d}"
    final, tmp = os.path.join(folder, name), os.path.join(folder, f".{name}.tmp")
    if _rank() == 0:
        os.makedirs(folder, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    _barrier()
    with _alone():
        dcp.save(state, checkpoint_id=tmp, no_dist=not dist.is_initialized())
    _barrier()
    if _rank() == 0:
        _write_atomically(os.path.join(tmp, META), json.dumps(dict(meta, step=step), indent=1).encode())
        if extra is not None:
            with open(os.path.join(tmp, EXTRA), "wb") as f:
                torch.save(extra, f)
                f.flush()
                os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)  # the same step written again
        os.replace(tmp, final)
        _write_atomically(os.path.join(folder, LATEST), name.encode())
        _fsync_dir(folder)
        steps = sorted(d for d in os.listdir(folder) if d.startswith("step-"))
        for old in steps[:-keep]:
            shutil.rmtree(os.path.join(folder, old), ignore_errors=True)
    _barrier()
    return final


def latest(folder: str) -> Optional[str]:
    """The newest complete step folder of ``folder``, or None."""
    try:
        with open(os.path.join(folder, LATEST)) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    path = os.path.join(folder, name)
    return path if os.path.isfile(os.path.join(path, META)) else None


def is_checkpoint(path: str) -> bool:
    """Whether ``path`` is a checkpoint folder (or one step of one)."""
    return os.path.isdir(path) and (latest(path) is not None or os.path.isfile(os.path.join(path, META)))


def _step_folder(path: str) -> str:
    if os.path.isfile(os.path.join(path, META)):
        return path
    step = latest(path)
    if step is None:
        raise FileNotFoundError(f"{path} holds no complete checkpoint (no '{LATEST}' naming a step folder)")
    return step


def read_meta(path: str) -> tuple[dict, Any]:
    """(meta, extra) of the checkpoint at ``path`` (a checkpoint folder or one of its steps)."""
    step = _step_folder(path)
    with open(os.path.join(step, META)) as f:
        meta = json.load(f)
    extra_path = os.path.join(step, EXTRA)
    extra = torch.load(extra_path, weights_only=False) if os.path.isfile(extra_path) else None
    return meta, extra


def _previous_step(step: str) -> Optional[str]:
    folder, name = os.path.split(os.path.normpath(step))
    older = sorted(d for d in os.listdir(folder) if d.startswith("step-") and d < name
                   and os.path.isfile(os.path.join(folder, d, META)))
    return os.path.join(folder, older[-1]) if older else None


@contextlib.contextmanager
def _damage_reported(step: str):
    """Turns the many errors a damaged step folder raises into one that names it and the step before it."""
    from ..training import CheckpointError

    try:
        yield
    except (Exception, CheckpointException) as error:  # DCP's own derives from BaseException
        previous = _previous_step(step)
        hint = (f"; the previous step {previous} is intact: write '{os.path.basename(previous)}' into "
                f"{os.path.join(os.path.dirname(step), LATEST)} to resume from it" if previous else "")
        first = str(error).splitlines()[0] if str(error) else ""
        raise CheckpointError(f"checkpoint {step} cannot be read: it is truncated or corrupt "
                              f"({type(error).__name__}: {first}){hint}") from error


def load(path: str, state: dict) -> tuple[dict, Any]:
    """Loads the checkpoint at ``path`` into ``state`` in place (its tensors, sharded or not, at this run's
    world size and sharding: DCP reshards) and returns (meta, extra). Keys of ``state`` that the checkpoint
    lacks, or whose shapes differ, raise an error naming them; damaged files raise
    :class:`mprec.training.CheckpointError` naming the step and the previous one."""
    step = _step_folder(path)
    with _damage_reported(step):
        meta, extra = read_meta(step)
        saved = dcp.FileSystemReader(step).read_metadata().state_dict_metadata
    from ..training import CheckpointError

    wanted = {k: shape for k, shape in _flatten_keys(state).items() if shape is not None}
    missing = sorted(k for k in wanted if k not in saved)
    if missing:
        raise CheckpointError(f"checkpoint {step} does not hold {missing[:5]}{' ...' if len(missing) > 5 else ''}: it was "
                         "written by another model")
    mismatched = [f"{k}: saved {list(saved[k].size)}, model {list(s)}" for k, s in wanted.items()
                  if hasattr(saved[k], "size") and list(saved[k].size) != list(s)]
    if mismatched:
        raise CheckpointError(f"checkpoint {step} was written by another model: {'; '.join(mismatched[:5])}")
    with _alone(), _damage_reported(step):
        dcp.load(state, checkpoint_id=step, no_dist=not dist.is_initialized())
    return meta, extra


def _flatten_keys(state: dict, prefix: str = "") -> dict:
    """DCP's flat key of every leaf of ``state``, with its shape (None for non-tensors)."""
    out = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten_keys(value, f"{name}."))
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
            for i, item in enumerate(value):
                out.update(_flatten_keys(item, f"{name}.{i}."))
        else:
            out[name] = tuple(value.size()) if isinstance(value, torch.Tensor) else None
    return out

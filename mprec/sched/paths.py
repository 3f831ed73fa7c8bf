"""Paths: a trained representation model on a device.

A :class:`Path` runs the request it is given (:class:`~mprec.sched.types.Request`: dense features and raw ids
in the TBE layout): it maps the ids into its model's id space (:class:`mprec.data.IdMap`: the model's
vocabulary, or none for its DHE features), moves them to its device and returns click probabilities.
Profiling and the real server time the same :meth:`Path.run`, so a profile predicts what the server sees.
A :class:`RowPool` holds evaluation rows as the data has them: the load generators (profiles, replayed
streams, the soak) build their requests from it; the paths never see it.

Backends add paths by registration (:func:`register_path_provider`), not by changing the scheduler: a
provider receives the loaded models and returns the paths it can run on this machine (none when its
device is absent). The CPU provider gives a path per model plus, for models with DHE features, the
same model with MP-Cache in front of its DHE layers; CUDA and XLA providers move the models to their
device when one is present.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..data.criteo import Batch, IdMap
from ..precision import autocast as precision_autocast
from .types import Request

__all__ = ["Path", "RowPool", "LoadedModel", "register_path_provider", "path_providers", "discover_paths"]


class RowPool:
    """Evaluation rows as the data has them: ``dense [P, 13]``, ``sparse [P, T]`` raw ids, ``labels [P]``. A
    request of ``n`` samples starting at row ``start`` takes rows ``start, start + 1, ...`` (cyclically)."""

    def __init__(self, dense: Tensor, sparse: Tensor, labels: Tensor) -> None:
        if dense.shape[0] == 0 or dense.shape[0] != sparse.shape[0] or labels.shape[0] != dense.shape[0]:
            raise ValueError(f"RowPool: dense, sparse and labels need the same number (> 0) of rows, got "
                             f"{dense.shape[0]}, {sparse.shape[0]}, {labels.shape[0]}")
        self.dense, self.sparse, self.labels = dense.contiguous(), sparse.contiguous(), labels.contiguous()

    @classmethod
    def from_batches(cls, batches) -> "RowPool":
        batches = list(batches)
        if not batches:
            raise ValueError("RowPool.from_batches: no batches")
        return cls(torch.cat([b.dense for b in batches]), torch.cat([b.sparse() for b in batches]),
                   torch.cat([b.labels for b in batches]))

    def __len__(self) -> int:
        return self.dense.shape[0]

    def rows(self, start: int, n: int) -> Tensor:
        return torch.arange(start, start + n) % len(self)

    def batch(self, start: int, n: int) -> Batch:
        rows = self.rows(start, n)
        return Batch.from_rows(self.labels[rows], self.dense[rows], self.sparse[rows])

    def request(self, start: int, n: int) -> Request:
        b = self.batch(start, n)
        return Request(b.dense, b.indices, b.offsets)

    def requests(self, sizes) -> list:
        """Requests of ``sizes`` rows on consecutive rows (the next one's after the last), from row 0: a load
        generator's, built before its clock starts."""
        starts = itertools.accumulate((int(n) for n in sizes), initial=0)
        return [self.request(start, int(n)) for start, n in zip(starts, sizes)]


@dataclass
class LoadedModel:
    """A trained model of one representation, how it maps raw ids (``ids``), its measured accuracy, and
    evaluation rows (``pool``, raw) to generate load from."""

    representation: str
    model: nn.Module
    pool: RowPool
    accuracy: float
    precision: str = "auto"
    evaluation: dict = field(default_factory=dict)
    ids: IdMap = field(default_factory=IdMap)


class Path:
    """``representation`` on ``device``: ``run(request)`` -> probabilities ``[n]`` on the CPU. ``ids`` maps the
    requests' raw ids into the model's id space (default: they are the model's ids already)."""

    def __init__(self, name: str, representation: str, device: str, model: nn.Module, accuracy: float,
                 precision: str = "auto", synchronize: Optional[Callable[[], None]] = None,
                 ids: Optional[IdMap] = None) -> None:
        self.name, self.representation, self.device = name, representation, device
        self.model, self.accuracy, self.precision = model.eval(), accuracy, precision
        self.ids = ids or IdMap()
        self._synchronize = synchronize
        self._warm_to = 0  # warmup() has run every row bucket up to this size

    def model_ids(self, request: Request) -> Tensor:
        """The request's ids in the model's id space."""
        return self.ids.tbe(request.indices, request.offsets, request.num_features)

    def inputs(self, request: Request) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(t.to(self.device, non_blocking=True)
                     for t in (request.dense, self.model_ids(request), request.offsets))

    @torch.no_grad()
    def predict(self, dense: Tensor, indices: Tensor, offsets: Tensor) -> Tensor:
        device_type = torch.device(self.device).type
        with precision_autocast(self.precision, device_type, what=f"Path {self.name}"):
            logits = self.model(dense, indices, offsets)
        return torch.sigmoid(logits.float()).cpu()  # .cpu() waits for an asynchronous device

    def run(self, request: Request) -> Tensor:
        out = self.predict(*self.inputs(request))
        if self._synchronize is not None:
            self._synchronize()
        return out

    def warmup(self, pool: RowPool, max_size: int = 16384) -> None:
        """Runs one request of every GEMM row bucket up to ``max_size`` (:func:`mprec.nn.mlp.bucket_rows`, rows
        of ``pool``), so that the kernels of every shape a stream can bring are built before anything is
        timed. Sizes already warmed are not run again."""
        from ..nn.mlp import bucket_rows

        if max_size <= self._warm_to:
            return
        for n in sorted({bucket_rows(n) for n in range(self._warm_to + 1, max_size + 1)}):
            self.run(pool.request(0, n))
        self._warm_to = max_size

    def __repr__(self) -> str:
        return f"Path({self.name!r}, accuracy={self.accuracy:.4f})"


PathProvider = Callable[[list], list]
_PROVIDERS: dict[str, PathProvider] = {}


def register_path_provider(backend: str, provider: PathProvider) -> None:
    """``provider(models: list[LoadedModel]) -> list[Path]`` for ``backend`` (replaces one of that name)."""
    _PROVIDERS[backend] = provider


def path_providers() -> dict[str, PathProvider]:
    return dict(_PROVIDERS)


def discover_paths(models: list, backends: Optional[list] = None) -> list:
    """Every path the registered providers (or the named ``backends``) can run here."""
    unknown = sorted(set(backends or []) - set(_PROVIDERS))
    if unknown:
        raise ValueError(f"discover_paths: unknown backend(s) {unknown}; registered: {sorted(_PROVIDERS)}")
    paths = []
    for backend, provider in _PROVIDERS.items():
        if backends is None or backend in backends:
            paths += provider(models)
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"discover_paths: duplicate path names {names}")
    return paths


# --- providers ------------------------------------------------------------------------------------------------
CACHE_BYTES = 64 << 20  # per DHE layer: MP-Cache's budget on the cached CPU path


def _dhe_layers(model: nn.Module) -> list:
    from ..nn.dhe import DHEEmbeddingBag

    return [m for m in model.modules() if isinstance(m, DHEEmbeddingBag)]


def _cpu_paths(models: list) -> list:
    paths = []
    for m in models:
        paths.append(Path(f"cpu/{m.representation}", m.representation, "cpu", m.model, m.accuracy, m.precision,
                          ids=m.ids))
        if _dhe_layers(m.model):
            # MP-Cache: the same weights, with an online (LFU) cache of final DHE vectors per DHE layer.
            cached = copy.deepcopy(m.model).eval()
            for layer in _dhe_layers(cached):
                layer.enable_cache("decoder", max_bytes=CACHE_BYTES, policy="lfu")
            paths.append(Path(f"cpu/{m.representation}+cache", m.representation, "cpu", cached, m.accuracy,
                              m.precision, ids=m.ids))
    return paths


def _cuda_paths(models: list) -> list:
    if not torch.cuda.is_available():
        return []
    return [Path(f"cuda/{m.representation}", m.representation, "cuda", copy.deepcopy(m.model).to("cuda"),
                 m.accuracy, m.precision, synchronize=torch.cuda.synchronize, ids=m.ids) for m in models]


class LoweredPath(Path):
    """A path whose model is a :class:`mprec.lower.LoweredDLRM`: queries are padded on the host (to the
    model's bag size and batch buckets) and computed on the device."""

    def inputs(self, request: Request) -> tuple[Tensor, Tensor, Tensor]:
        return request.dense, self.model_ids(request), request.offsets

    @torch.no_grad()
    def predict(self, dense: Tensor, indices: Tensor, offsets: Tensor) -> Tensor:
        return torch.sigmoid(self.model.serve(dense, indices, offsets).float())


def _xla_paths(models: list) -> list:
    from ..lower import xla

    if not xla.available():
        return []
    import torch_xla.core.xla_model as xm  # noqa: PLC0415 (optional dependency)

    device = xla.device()
    # XLA on a CPU is not a TPU: the path says which XLA device it ran on ("xla/cpu/table", "xla/tpu/...").
    kind = xm.xla_device_hw(device).lower()
    # Criteo's features hold one id per example: one slot per bag.
    return [LoweredPath(f"xla/{kind}/{m.representation}", m.representation, str(device),
                        xla.lower(copy.deepcopy(m.model).eval(), bag_size=1).to(device), m.accuracy,
                        m.precision, synchronize=xm.wait_device_ops, ids=m.ids) for m in models]


register_path_provider("cpu", _cpu_paths)
register_path_provider("cuda", _cuda_paths)
register_path_provider("xla", _xla_paths)

"""Training and evaluation of DLRM models: ``mprec train`` and ``mprec eval``.

A run is described by a :class:`RunConfig` (data, preset, representation per feature, optimizer,
precision, ...). Tables are trained by the fused optimizer inside the backward pass
(:class:`mprec.nn.FusedOptimizer`); the MLPs and DHE decoders by ``torch.optim`` (SGD, or Adagrad with
row-wise Adagrad tables). Checkpoints hold the config, the model (with the data's vocabulary and the
tables' optimizer state), the dense optimizer, the step and the position in the data, and are written
atomically (a temporary file, then a rename): a run killed at any moment resumes from the last
checkpoint and ends with exactly the weights of an uninterrupted run (same seed, same thread count).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from .data import KAGGLE_TABLE_SIZES, NUM_SPARSE, Batch, CriteoReader, IdMap, SyntheticCriteo, Vocabulary
from .models.dlrm import DLRM, PRESETS
from .nn import HYBRID_FORMS, REPRESENTATIONS, FusedOptimizer
from .ops.mlp import gemm_choices, restore_gemm_choices
from .precision import PRECISIONS, autocast as precision_autocast

__all__ = ["RunConfig", "build_model", "make_batches", "train", "evaluate", "roc_auc", "load_checkpoint",
           "save_checkpoint", "CheckpointError"]

SYNTHETIC = "synthetic"
OPTIMIZERS = ("sgd", "adagrad")


@dataclass
class RunConfig:
    data: str = SYNTHETIC                 # a Criteo TSV path, or "synthetic"
    preset: str = "kaggle"
    representations: list = field(default_factory=lambda: ["table"] * NUM_SPARSE)
    epochs: int = 1
    batch_size: int = 2048
    lr: float = 0.1
    optimizer: str = "sgd"                # sgd: fused SGD tables + SGD; adagrad: row-wise Adagrad + Adagrad
    precision: str = "auto"               # bf16: MLPs under bf16 autocast (tables and DHE stay fp32); auto:
                                          # bf16 where the CPU computes it natively (mprec.precision)
    threads: Optional[int] = None
    seed: int = 0
    limit: Optional[int] = None           # examples per epoch (None: the whole file)
    max_ind_range: Optional[int] = None   # table rows by id modulo; None: a vocabulary from the data
    min_count: int = 1                    # vocabulary: ids seen fewer times map to row 0
    synthetic_batches: int = 100          # synthetic data: batches per epoch
    table_sizes: Optional[list] = None    # synthetic data: rows per table (default the Kaggle sizes)
    dhe: dict = field(default_factory=lambda: dict(k=1024, m=1_000_000, decoder=[128]))
    hybrid: str = "two"                   # a hybrid feature's vectors (mprec.nn.HYBRID_FORMS): "two" or "split"
    checkpoint: Optional[str] = None
    checkpoint_every: int = 0             # steps (0: only at the end)

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; one of {sorted(PRESETS)}")
        if len(self.representations) != NUM_SPARSE:
            raise ValueError(f"give one representation per sparse feature ({NUM_SPARSE}), got "
                             f"{len(self.representations)}")
        bad = [r for r in self.representations if r not in REPRESENTATIONS]
        if bad:
            raise ValueError(f"representations must be among {REPRESENTATIONS}, got {bad[0]!r}")
        if self.hybrid not in HYBRID_FORMS:
            raise ValueError(f"hybrid must be one of {HYBRID_FORMS}, got {self.hybrid!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {self.epochs}, {self.batch_size}, "
                             f"{self.lr}")
        if self.data != SYNTHETIC and not os.path.isfile(self.data):
            raise FileNotFoundError(f"no such data file: {self.data}")


# --- data ---------------------------------------------------------------------------------------------------
def table_sizes_for(config: RunConfig, vocabulary: Optional[Vocabulary]) -> list:
    if config.data == SYNTHETIC:
        return list(config.table_sizes or KAGGLE_TABLE_SIZES)
    if config.max_ind_range is not None:
        return [config.max_ind_range] * NUM_SPARSE
    return vocabulary.sizes


def make_batches(config: RunConfig, path: Optional[str] = None, vocabulary: Optional[Vocabulary] = None,
                 seed_offset: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True) -> Iterable[Batch]:
    """The batches of one pass over ``path`` (default ``config.data``); with ``world_size`` processes, rank
    ``rank``'s share: ``batch_size / world_size`` examples a batch from its stripe of each file, or from its own
    stream of the synthetic generator (a stream per rank and pass)."""
    path = path or config.data
    batch_size = config.batch_size // world_size
    if path == SYNTHETIC:
        batches = config.synthetic_batches if config.limit is None else max(1, config.limit // config.batch_size)
        return SyntheticCriteo(batches, batch_size, config.table_sizes or KAGGLE_TABLE_SIZES,
                               seed=(config.seed + seed_offset) * world_size + rank)
    raw = _raw_features(config)
    # Across processes every step needs a whole batch on every rank (TorchRec's collectives exchange equal
    # shares), so a stripe's last, short batch is dropped (evaluation pads it instead: see mprec.distributed).
    return CriteoReader(path, batch_size, max_ind_range=config.max_ind_range, vocabulary=vocabulary,
                        limit=None if config.limit is None else config.limit // world_size, raw_features=raw,
                        stripe=(rank, world_size) if world_size > 1 else None, drop_last=world_size > 1 and drop_last)


def _raw_features(config: RunConfig) -> list:
    return [t for t, r in enumerate(config.representations) if r == "dhe"]  # DHE hashes raw ids


def id_map(config: RunConfig, vocabulary: Optional[Vocabulary], path: Optional[str] = None) -> IdMap:
    """How the run's model takes the raw ids of ``path`` (default ``config.data``), as :func:`make_batches` maps
    them: by its vocabulary or modulo, its DHE features raw; synthetic data's ids are the model's already."""
    if (path or config.data) == SYNTHETIC:
        return IdMap()
    return IdMap(config.max_ind_range, vocabulary, _raw_features(config))


def raw_batches(config: RunConfig, path: Optional[str] = None, seed_offset: int = 0) -> Iterable[Batch]:
    """The batches :func:`make_batches` gives, with the ids as the data has them (:func:`id_map` maps them)."""
    path = path or config.data
    if path == SYNTHETIC:
        return make_batches(config, path, seed_offset=seed_offset)
    return CriteoReader(path, config.batch_size, limit=config.limit)


# --- model --------------------------------------------------------------------------------------------------
def build_model(config: RunConfig, table_sizes: list, embedding_device=None) -> DLRM:
    torch.manual_seed(config.seed)
    fused = FusedOptimizer("sgd" if config.optimizer == "sgd" else "rowwise_adagrad", lr=config.lr)
    dhe = dict(config.dhe)
    if "decoder" in dhe:
        dhe["decoder"] = tuple(dhe["decoder"])
    return DLRM.preset(config.preset, table_sizes, representations=config.representations, dhe=dhe,
                       hybrid_form=config.hybrid, optimizer=fused, embedding_device=embedding_device)


def dense_optimizer(config: RunConfig, model: DLRM) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.dense_parameters(), lr=config.lr)
    return torch.optim.Adagrad(model.dense_parameters(), lr=config.lr, eps=1e-8)


def _autocast(config: RunConfig):
    return precision_autocast(config.precision, what="mprec train")


# --- metrics ------------------------------------------------------------------------------------------------
def roc_auc(labels: Tensor, scores: Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); nan without both classes."""
    labels = labels.double().reshape(-1)
    scores = scores.double().reshape(-1)
    positives = labels.sum().item()
    negatives = labels.numel() - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    # Average ranks over ties.
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2
    ranks[order] = average[inverse]
    u = ranks[labels > 0.5].sum().item() - positives * (positives + 1) / 2
    return u / (positives * negatives)


@torch.no_grad()
def evaluate(model: DLRM, batches: Iterable[Batch], precision: str = "auto") -> dict:
    """``{examples, accuracy, auc, log_loss, click_rate}`` of the model on the batches."""
    was_training = model.training
    model.eval()
    labels, probs = [], []
    with precision_autocast(precision, what="mprec evaluate"):
        for b in batches:
            probs.append(torch.sigmoid(model(b.dense, b.indices, b.offsets).float()))
            labels.append(b.labels)
    model.train(was_training)
    if not labels:
        raise ValueError("evaluate: no examples")
    return metrics(torch.cat(labels), torch.cat(probs))


def metrics(labels: Tensor, probs: Tensor) -> dict:
    """``{examples, accuracy, auc, log_loss, click_rate}`` of predicted click probabilities."""
    if not labels.numel():
        raise ValueError("evaluate: no examples")
    y, p = labels.double(), probs.double()
    eps = 1e-7
    pc = p.clamp(eps, 1 - eps)
    return dict(examples=int(y.numel()), accuracy=float(((p > 0.5).double() == y).double().mean()),
                auc=roc_auc(y, p), log_loss=float(-(y * pc.log() + (1 - y) * (1 - pc).log()).mean()),
                click_rate=float(y.mean()))


def model_size(model: DLRM) -> dict:
    params = sum(p.numel() for p in model.parameters())
    return dict(parameters=int(params), bytes=int(sum(p.numel() * p.element_size() for p in model.parameters())))


# --- checkpoints ----------------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint that cannot be used (truncated, corrupt, or another model's); names the file and says
    whether the previous checkpoint is there to fall back on."""


_REQUIRED = ("config", "table_sizes", "model")  # "model": a sharded checkpoint's weights are in its folder


def previous_checkpoint(path: str) -> str:
    """Where :func:`save_checkpoint` keeps the checkpoint that ``path`` replaced."""
    return f"{path}.prev"


def save_checkpoint(path: str, state: dict) -> None:
    """Writes atomically: a temporary file in the same directory, flushed, then renamed over ``path``. The
    checkpoint it replaces stays as :func:`previous_checkpoint`, so a checkpoint damaged later (a disk error,
    a truncated copy) still leaves one to resume from. A failed write leaves both as they were."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.isfile(path):
            # A second name for the current checkpoint, swapped in atomically: path always names a whole one.
            link = f"{tmp}.prev"
            os.link(path, link)
            os.replace(link, previous_checkpoint(path))
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, f"{tmp}.prev"):
            if os.path.exists(leftover):
                os.remove(leftover)


def _fallback_hint(path: str) -> str:
    prev = previous_checkpoint(path)
    if os.path.isfile(prev):
        return f"; the previous checkpoint {prev} is intact: resume from it with --checkpoint {prev}"
    return ""


def load_checkpoint(path: str) -> dict:
    """A checkpoint file, or a sharded checkpoint folder (``mprec train --sharding``; its tensors are read by
    :func:`model_from_checkpoint`, at this process's world size). A file that cannot be read raises
    :class:`CheckpointError`."""
    from .distributed import checkpoint as sharded

    if sharded.is_checkpoint(path):
        meta, extra = sharded.read_meta(path)
        return dict(meta, vocabulary=(extra or {}).get("vocabulary"), sharded=path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch.load raises many kinds for a damaged file
        size = os.path.getsize(path)
        raise CheckpointError(f"{path} ({size} bytes) cannot be read as a checkpoint: it is truncated or corrupt "
                              f"({type(error).__name__}: {_first_lines(error, 1)})"
                              f"{_fallback_hint(path)}") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not an mprec checkpoint{_fallback_hint(path)}")
    return state


def vocabulary_of(state: dict) -> Optional[Vocabulary]:
    """The data's vocabulary a checkpoint holds (None where ids are reduced by modulo, or raw)."""
    return Vocabulary.from_state_dict(state["vocabulary"]) if state.get("vocabulary") else None


def model_from_checkpoint(state: dict, source: str = "the checkpoint") -> tuple[DLRM, RunConfig, Optional[Vocabulary]]:
    """The model, run configuration and vocabulary of a checkpoint (:func:`load_checkpoint`; ``source`` names it
    in errors); one that is not a training checkpoint, or whose weights do not fit the model its
    configuration describes, raises :class:`CheckpointError`."""
    missing = [key for key in _REQUIRED if key not in state and not (key == "model" and "sharded" in state)]
    if missing:
        raise CheckpointError(f"{source} is not an mprec training checkpoint: it lacks {missing}"
                              f"{_fallback_hint(source)}")
    try:
        config = saved_config(state["config"])
    except TypeError as error:
        raise CheckpointError(f"{source} has a run configuration this version does not know: {error}") from error
    vocabulary = vocabulary_of(state)
    model = build_model(config, state["table_sizes"])
    if "sharded" in state:
        from .distributed import checkpoint as sharded

        weights = {"model": model.state_dict()}
        sharded.load(state["sharded"], weights)
        model.load_state_dict(weights["model"])
    else:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as error:  # missing, unexpected or differently shaped weights
            raise CheckpointError(f"{source} holds the weights of another model than its configuration "
                                  f"describes: {_first_lines(error)}{_fallback_hint(source)}") from error
        model.embeddings.load_optimizer_state_dict(state.get("table_optimizer", {}))
    return model, config, vocabulary


def _first_lines(error: Exception, lines: int = 4) -> str:
    return " ".join(line.strip() for line in str(error).splitlines()[:lines])


def check_resumable(state: dict, config: "RunConfig", source: str) -> None:
    """Raises :class:`CheckpointError` when the checkpoint was written by a run with other fixed settings
    (another model, other data), naming them."""
    saved = fixed_settings(saved_config(state["config"]))
    wanted = fixed_settings(config)
    differ = [f"{k}: checkpoint {saved.get(k)!r}, now {wanted.get(k)!r}" for k in sorted(set(saved) | set(wanted))
              if saved.get(k) != wanted.get(k)]
    if differ:
        shown = "; ".join(differ[:5]) + (" ..." if len(differ) > 5 else "")
        raise CheckpointError(f"{source} was written by a different run ({shown}); "
                              "it is left as it is: use the same settings, or another --checkpoint")


# --- training ---------------------------------------------------------------------------------------------------
class Progress:
    """One status line on stderr: step, examples/s, running loss (updated at most every 0.5 s)."""

    def __init__(self, stream=sys.stderr, enabled: bool = True) -> None:
        self.stream, self.enabled = stream, enabled
        self.start = self.last = time.perf_counter()
        self.examples = 0
        self.loss = None

    def update(self, epoch: int, step: int, examples: int, loss: float) -> None:
        self.examples += examples
        self.loss = loss if self.loss is None else 0.98 * self.loss + 0.02 * loss
        now = time.perf_counter()
        if self.enabled and now - self.last >= 0.5:
            self.last = now
            rate = self.examples / max(now - self.start, 1e-9)
            self.stream.write(f"\repoch {epoch} step {step}  {rate:,.0f} examples/s  loss {self.loss:.4f}   ")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.examples:
            rate = self.examples / max(time.perf_counter() - self.start, 1e-9)
            self.stream.write(f"\r{self.examples:,} examples at {rate:,.0f} examples/s, loss {self.loss:.4f}      \n")
            self.stream.flush()


def train(config: RunConfig, resume: bool = True, progress: bool = True, log=sys.stderr) -> dict:
    """Trains (resuming from ``config.checkpoint`` when it exists and ``resume``); returns a summary."""
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    state = load_checkpoint(config.checkpoint) if (resume and config.checkpoint and
                                                   os.path.exists(config.checkpoint)) else None
    if state is not None:
        model, saved, vocabulary = model_from_checkpoint(state, config.checkpoint)
        check_resumable(state, config, config.checkpoint)
        table_sizes = state["table_sizes"]
        restore_gemm_choices(state.get("gemm_choices", []))  # computes as the run it continues did
        print(f"resuming from {config.checkpoint} at epoch {state['epoch']} step {state['step']}", file=log)
    else:
        vocabulary = None
        if config.data != SYNTHETIC and config.max_ind_range is None:
            vocabulary = Vocabulary.build(config.data, min_count=config.min_count)
        table_sizes = table_sizes_for(config, vocabulary)
        model = build_model(config, table_sizes)
    optimizer = dense_optimizer(config, model)
    epoch, step, batch_in_epoch = 0, 0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        epoch, step, batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        torch.set_rng_state(state["rng"])

    def checkpoint(epoch, step, batch_in_epoch):
        if config.checkpoint:
            save_checkpoint(config.checkpoint, dict(
                config=dataclasses.asdict(config), table_sizes=table_sizes, model=model.state_dict(),
                table_optimizer=model.embeddings.optimizer_state_dict(), optimizer=optimizer.state_dict(),
                epoch=epoch, step=step, batch_in_epoch=batch_in_epoch, rng=torch.get_rng_state(),
                vocabulary=vocabulary.state_dict() if vocabulary else None, gemm_choices=gemm_choices()))

    def train_step(b):
        with _autocast(config):
            logits = model(b.dense, b.indices, b.offsets)
        loss = F.binary_cross_entropy_with_logits(logits.float(), b.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # also steps the tables (fused optimizer)
        optimizer.step()
        return loss.item(), len(b)

    model.train()
    started = time.perf_counter()
    step, examples = run_epochs(config, lambda epoch: make_batches(config, vocabulary=vocabulary, seed_offset=epoch),
                                lambda batches: map(train_step, batches), checkpoint, (epoch, step, batch_in_epoch),
                                Progress(log, enabled=progress))
    seconds = time.perf_counter() - started
    return dict(steps=step, examples_trained=examples, seconds=seconds,
                examples_per_second=examples / seconds if seconds > 0 else math.nan, **model_size(model))


def run_epochs(config: RunConfig, batches_of: Callable[[int], Iterable[Batch]],
               train_batches: Callable[[Iterator[Batch]], Iterator[tuple]], save: Callable[[int, int, int], None],
               position: tuple = (0, 0, 0), progress: Optional[Progress] = None,
               go_on: Callable[[bool], bool] = bool) -> tuple[int, int]:
    """The loop of a training run, in one process or across several: ``config.epochs`` passes over
    ``batches_of(epoch)``, from ``position`` (epoch, step, batches of that epoch already trained: a resumed run
    skips those), ``save(epoch, step, batches of the epoch trained)`` every ``config.checkpoint_every`` steps
    and at the end. ``train_batches(batches)`` trains on each batch of the iterator in turn and yields
    ``(loss, examples)`` per step; it may read a batch ahead of the one it trains (a pipeline). ``go_on(has_batch)``
    decides whether a batch is trained (across processes: only while every rank has one). Returns (steps,
    examples trained)."""
    epoch, steps, done = position
    examples = 0
    progress = progress or Progress(enabled=False)
    while epoch < config.epochs:
        for loss, n in train_batches(_untrained(batches_of(epoch), done, go_on)):
            steps, done, examples = steps + 1, done + 1, examples + n
            progress.update(epoch, steps, n, loss)
            if config.checkpoint_every and steps % config.checkpoint_every == 0:
                save(epoch, steps, done)
        epoch, done = epoch + 1, 0
    progress.close()
    save(epoch, steps, 0)
    return steps, examples


def _untrained(batches: Iterable[Batch], done: int, go_on: Callable[[bool], bool]) -> Iterator[Batch]:
    """The batches of an epoch after its first ``done`` (trained before a checkpoint), while ``go_on``."""
    batches = iter(batches)
    i = 0
    while True:
        batch = next(batches, None)
        if not go_on(batch is not None):
            return
        i += 1
        if i > done:
            yield batch


def saved_config(fields: dict) -> RunConfig:
    """The :class:`RunConfig` a checkpoint saved. Checkpoints written before hybrid features had two forms hold
    split hybrids."""
    return RunConfig(**{"hybrid": "split", **fields})


def fixed_settings(config: RunConfig) -> dict:
    """What a resumed run must share with the run that wrote the checkpoint (it may train more epochs)."""
    changeable = ("epochs", "checkpoint", "checkpoint_every", "threads")
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in changeable}


def evaluate_checkpoint(path: str, data: Optional[str] = None, batch_size: Optional[int] = None,
                        limit: Optional[int] = None, threads: Optional[int] = None) -> dict:
    """``mprec eval``: the checkpoint's model on ``data`` (default: its training data)."""
    if threads:
        torch.set_num_threads(threads)
    model, config, vocabulary = model_from_checkpoint(load_checkpoint(path), path)
    if batch_size:
        config.batch_size = batch_size
    config.limit = limit
    source = data or config.data
    if source != SYNTHETIC and not os.path.isfile(source):
        raise FileNotFoundError(f"no such data file: {source}")
    # Synthetic evaluation data comes from a seed the training epochs never use.
    batches = make_batches(config, source, vocabulary, seed_offset=10_000)
    result = evaluate(model, batches, config.precision)
    return dict(checkpoint=path, data=source, representations=_summary(config.representations), **result,
                **model_size(model))


def _summary(representations: list) -> str:
    kinds = sorted(set(representations))
    return kinds[0] if len(kinds) == 1 else ",".join(representations)


def parse_representations(text: str) -> list:
    """``"table"`` (every feature), 26 comma-separated names, or runs such as ``"table:20,dhe:6"``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) == 1 and ":" not in parts[0]:
        return parts * NUM_SPARSE
    names = []
    for part in parts:
        name, _, count = part.partition(":")
        try:
            n = int(count) if count else 1
        except ValueError:
            n = -1
        if n < 1:
            raise ValueError(f"representation {part!r}: the count after ':' must be a positive integer")
        names += [name.strip()] * n
    return names


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2, sort_keys=False)

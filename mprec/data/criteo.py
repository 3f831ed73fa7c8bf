"""The Criteo Kaggle / Terabyte TSV format: a streaming reader, vocabularies, and batches in TBE layout.

A line: label (0/1), 13 integer and 26 categorical (8-hex-digit) fields, tab separated; any field but
the label may be empty. Dense features become ``log(1 + max(x, 0))`` (empty: 0); categorical ids are the
hex value as int64 (empty: ``missing_id``, 0 as in the DLRM reference). Tables need bounded ids: either
``max_ind_range`` (ids modulo it, as the DLRM reference's ``--max-ind-range``) or a :class:`Vocabulary`
built in a first pass (id -> 1 + its rank among the feature's known ids; 0 for unknown). DHE features
take raw ids.

Parsing is one C++ op over a chunk of whole lines (``mprec::parse_criteo``); a worker thread reads and
parses chunks ahead of the training loop into a bounded queue, so memory stays flat whatever the file
size: a chunk or two of bytes and ``prefetch`` parsed chunks.

gzip files (the Terabyte set comes as ``day_0.gz`` ...) are recognised by their first bytes, whatever their
name, and decompressed as they are read, a chunk at a time; a truncated or corrupt one raises
:class:`CorruptFileError` naming the file, the byte where decompression stopped and the last whole line.
"""

from __future__ import annotations

import gzip
import itertools
import os
import queue
import threading
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor

from ..ops.arguments import register_fake
from ..ops.spelling import dtype_name

__all__ = [
    "NUM_DENSE",
    "NUM_SPARSE",
    "KAGGLE_TABLE_SIZES",
    "Batch",
    "MalformedLineError",
    "CorruptFileError",
    "parse_criteo",
    "CriteoReader",
    "IdMap",
    "Vocabulary",
]

NUM_DENSE = 13
NUM_SPARSE = 26
#: Rows per categorical feature of the Kaggle set as the DLRM reference counts them (33.76M in all).
KAGGLE_TABLE_SIZES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
                      5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)

_REASONS = {1: "expected {fields} tab-separated fields, got {field}", 2: "the label must be 0 or 1",
            3: "field {field} is not an integer", 4: "field {field} is not a hex id of at most 15 digits"}

PathLike = Union[str, os.PathLike]
# csrc/cpu/criteo.cpp kMaxFields: the most dense and categorical fields a line may declare.
_MAX_FIELDS = 4096


@dataclass
class Batch:
    """One batch: ``dense [B, 13]`` float32, ``indices [26 * B]`` int64 feature by feature with
    ``offsets [26 * B + 1]`` (TBE layout, one id per bag), ``labels [B]`` float32."""

    dense: Tensor
    indices: Tensor
    offsets: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.labels.numel()

    @classmethod
    def from_rows(cls, labels: Tensor, dense: Tensor, sparse: Tensor) -> "Batch":
        """From per-example rows: ``sparse [B, T]`` becomes indices feature by feature."""
        return cls(dense=dense, indices=sparse.t().reshape(-1), offsets=torch.arange(sparse.numel() + 1),
                   labels=labels)

    def sparse(self) -> Tensor:
        """``[B, T]`` ids per example (this batch has one id per bag)."""
        return self.indices.view(-1, len(self)).t()


class MalformedLineError(ValueError):
    """A malformed line under ``strict=True``: names the file and the 1-based line."""


class CorruptFileError(ValueError):
    """A compressed file that ends early or does not decompress: names the file and where it stopped."""


_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: PathLike) -> bool:
    """Whether the file starts as a gzip stream does (its name does not matter)."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


class _GzipFile:
    """Reads a gzip file's decompressed bytes; errors name the file and the compressed and decompressed
    bytes where decompression stopped."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.raw = open(path, "rb")
        self.stream = gzip.GzipFile(fileobj=self.raw, mode="rb")
        self.out = 0

    def read(self, n: int) -> bytes:
        try:
            block = self.stream.read(n)
        except EOFError:
            raise CorruptFileError(f"{self.path}: truncated gzip file: its {self.raw.tell()} bytes end before the "
                                   f"stream's end marker, after {self.out} decompressed bytes") from None
        except (gzip.BadGzipFile, zlib.error, OSError) as error:
            raise CorruptFileError(f"{self.path}: corrupt gzip data near compressed byte {self.raw.tell()}, after "
                                   f"{self.out} decompressed bytes: {error}") from None
        self.out += len(block)
        return block

    def close(self) -> None:
        self.stream.close()
        self.raw.close()


def parse_criteo(data: Union[bytes, Tensor], num_dense: int = NUM_DENSE, num_sparse: int = NUM_SPARSE,
                 missing_id: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(labels [N], dense [N, num_dense], sparse [N, num_sparse], bad [M, 3])`` for the lines of ``data``;
    ``bad`` rows are ``(line index in data, reason, field)`` of the malformed lines, which are left out."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = torch.frombuffer(bytearray(data), dtype=torch.uint8) if len(data) else torch.empty(0, dtype=torch.uint8)
    return torch.ops.mprec.parse_criteo(data, num_dense, num_sparse, missing_id)


@register_fake("mprec::parse_criteo")
def _parse_criteo_fake(data, num_dense=NUM_DENSE, num_sparse=NUM_SPARSE, missing_id=0):
    op = "mprec::parse_criteo"
    if data.dtype != torch.uint8 or data.dim() != 1:
        raise RuntimeError(f"{op}: data must be a 1-D uint8 CPU tensor, got {dtype_name(data.dtype)} {list(data.shape)}")
    if num_dense < 0 or num_sparse < 0:
        raise RuntimeError(f"{op}: num_dense and num_sparse must be >= 0, got {num_dense} and {num_sparse}")
    if num_dense + num_sparse > _MAX_FIELDS:
        raise RuntimeError(f"{op}: num_dense + num_sparse must be at most {_MAX_FIELDS}, got {num_dense} + {num_sparse}")
    ctx = torch.library.get_ctx()
    n, m = ctx.new_dynamic_size(), ctx.new_dynamic_size()
    return (data.new_empty((n,), dtype=torch.float32), data.new_empty((n, num_dense), dtype=torch.float32),
            data.new_empty((n, num_sparse), dtype=torch.int64), data.new_empty((m, 3), dtype=torch.int64))


def describe_bad_line(reason: int, field: int, num_dense: int = NUM_DENSE, num_sparse: int = NUM_SPARSE) -> str:
    return _REASONS.get(reason, "malformed").format(fields=1 + num_dense + num_sparse, field=field)


def _file_blocks(path: PathLike, block_bytes: int, start: int = 0, end: Optional[int] = None) -> Iterator[bytes]:
    """The bytes of the lines that begin in bytes ``[start, end)`` of a plain file, in blocks (a line belongs to
    the range its first byte is in, so ranges that tile the file split its lines between them exactly)."""
    with open(path, "rb") as f:
        pos = 0
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the end of a line that began before the range
            pos = f.tell()
        last = b"\n"
        while end is None or pos < end:
            block = f.read(block_bytes if end is None else min(block_bytes, end - pos))
            if not block:
                return
            pos += len(block)
            last = block[-1:]
            yield block
        if last != b"\n":
            yield f.readline()  # a line that began in the range runs past its end


def _gzip_blocks(path: PathLike, block_bytes: int) -> Iterator[bytes]:
    """A gzip file's decompressed bytes, in blocks."""
    f = _GzipFile(path)
    try:
        while block := f.read(block_bytes):
            yield block
    finally:
        f.close()


def _whole_lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The blocks' bytes regrouped into runs of whole lines (the last may lack its newline)."""
    rest = b""
    for block in blocks:
        block = rest + block
        cut = block.rfind(b"\n")
        if cut < 0:
            rest = block
            continue
        rest = block[cut + 1:]
        yield block[: cut + 1]
    if rest:
        yield rest


def _chunks(path: PathLike, chunk_bytes: int, start: int = 0, end: Optional[int] = None,
            compressed: bool = False) -> Iterator[bytes]:
    """Whole lines of the file, about ``chunk_bytes`` at a time; of a plain file, the lines that begin in bytes
    ``[start, end)``; of a gzip file (``compressed``, :func:`is_gzip`), all of them (it cannot be entered in
    the middle)."""
    if compressed:
        if start != 0 or end is not None:
            raise ValueError(f"{path}: a gzip file is read from its start to its end, not by byte range")
        return _whole_lines(_gzip_blocks(path, chunk_bytes))
    return _whole_lines(_file_blocks(path, chunk_bytes, start, end))


class Vocabulary:
    """Per-feature id -> index maps: index ``1 + rank`` among the feature's ids seen at least ``min_count``
    times in the building pass, 0 for any other id. ``sizes`` are the tables' row counts."""

    def __init__(self, ids: Sequence[Tensor]) -> None:
        self.ids = [torch.as_tensor(v, dtype=torch.int64).sort().values for v in ids]
        self._keys: Optional[Tensor] = None  # map_features' packed keys, made on first use

    @property
    def sizes(self) -> list[int]:
        return [v.numel() + 1 for v in self.ids]

    def map(self, sparse: Tensor) -> Tensor:
        """``[N, T]`` raw ids -> ``[N, T]`` indices."""
        out = torch.empty_like(sparse)
        for t in range(len(self.ids)):
            out[:, t] = self.map_feature(t, sparse[:, t].contiguous())
        return out

    def map_features(self, features: Tensor, ids: Tensor) -> Tensor:
        """Raw ids of mixed features (``features[i]`` is the feature of ``ids[i]``) -> indices, in one lookup:
        every feature's known ids sorted once into one array of ``(feature, id)`` keys packed in an int64."""
        keys, starts, shift = self._packed()
        inside = (ids >= 0) & (ids < (1 << shift))  # known ids all are: an id outside is unknown
        key = (features << shift) | ids.clamp(0, (1 << shift) - 1)
        pos = torch.searchsorted(keys, key)
        found = inside & (keys[pos.clamp(max=max(keys.numel() - 1, 0))] == key) if keys.numel() else inside & False
        return torch.where(found, pos - starts[features] + 1, 0)

    def _packed(self) -> tuple[Tensor, Tensor, int]:
        if self._keys is None:
            bits = max(1, (len(self.ids) - 1).bit_length())
            shift = 63 - bits
            if any(v.numel() and (int(v[0]) < 0 or int(v[-1]) >= (1 << shift)) for v in self.ids):
                raise ValueError(f"Vocabulary: ids must be in [0, 2^{shift}) to be looked up together")
            self._keys = torch.cat([(torch.full_like(v, t) << shift) | v for t, v in enumerate(self.ids)])
            sizes = torch.tensor([v.numel() for v in self.ids])
            self._starts = torch.cumsum(sizes, 0) - sizes
            self._shift = shift
        return self._keys, self._starts, self._shift

    def map_feature(self, t: int, ids: Tensor) -> Tensor:
        """Feature ``t``'s raw ids (any shape) -> indices."""
        known = self.ids[t]
        if known.numel() == 0:
            return torch.zeros_like(ids)
        pos = torch.searchsorted(known, ids)
        found = known[pos.clamp(max=known.numel() - 1)] == ids
        return torch.where(found, pos + 1, 0)

    @classmethod
    def build(cls, paths: Union[PathLike, Sequence[PathLike]], min_count: int = 1, **reader_kwargs) -> "Vocabulary":
        """One streaming pass over ``paths`` counting each feature's ids."""
        ids: list[Optional[Tensor]] = [None] * NUM_SPARSE
        counts: list[Optional[Tensor]] = [None] * NUM_SPARSE
        reader = CriteoReader(paths, batch_size=1 << 16, **reader_kwargs)
        for labels, dense, sparse in reader.chunks():
            for t in range(sparse.shape[1]):
                u, c = torch.unique(sparse[:, t], return_counts=True)
                if ids[t] is not None:
                    u, inverse = torch.unique(torch.cat([ids[t], u]), return_inverse=True)
                    c = torch.zeros(u.shape, dtype=torch.int64).index_add_(0, inverse, torch.cat([counts[t], c]))
                ids[t], counts[t] = u, c
        return cls([torch.zeros(0, dtype=torch.int64) if u is None else u[c >= min_count] for u, c in zip(ids, counts)])

    def state_dict(self) -> dict:
        return {f"ids.{t}": v for t, v in enumerate(self.ids)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Vocabulary":
        return cls([state[f"ids.{t}"] for t in range(len(state))])


# Below this many ids a request's vocabulary lookup is one search over every feature's ids at once (a served
# query of a few rows then pays a few operations instead of a few per feature); above it, one search per feature,
# over a smaller array, is faster (measured crossing near 1,024 rows of 26 features, 2 cores).
_ONE_LOOKUP_IDS = 1 << 15


class IdMap:
    """How a model's features turn raw ids into the ids the model takes: modulo ``max_ind_range`` (the DLRM
    reference's ``--max-ind-range``), or through a :class:`Vocabulary`, or not at all; ``raw_features`` (a mixed
    model's DHE features, whose hash spreads any id) keep their raw ids either way. The reader applies it to the
    data as it parses it; a served model applies it to each request's raw ids."""

    def __init__(self, max_ind_range: Optional[int] = None, vocabulary: Optional[Vocabulary] = None,
                 raw_features: Sequence[int] = ()) -> None:
        if max_ind_range is not None and vocabulary is not None:
            raise ValueError("IdMap: give max_ind_range or vocabulary, not both")
        if max_ind_range is not None and max_ind_range < 1:
            raise ValueError(f"IdMap: max_ind_range must be >= 1, got {max_ind_range}")
        self.max_ind_range, self.vocabulary = max_ind_range, vocabulary
        self.raw_features = frozenset(raw_features)

    @property
    def identity(self) -> bool:
        return self.max_ind_range is None and self.vocabulary is None

    def rows(self, sparse: Tensor) -> Tensor:
        """``[N, T]`` raw ids, one column per feature -> the model's ids (in place where it can)."""
        if self.identity:
            return sparse
        raw = sparse[:, sorted(self.raw_features)].clone() if self.raw_features else None
        sparse = sparse.remainder_(self.max_ind_range) if self.max_ind_range is not None else self.vocabulary.map(sparse)
        if raw is not None:
            sparse[:, sorted(self.raw_features)] = raw
        return sparse

    def tbe(self, indices: Tensor, offsets: Tensor, num_features: int) -> Tensor:
        """Raw ids in FBGEMM's TBE layout (``offsets`` of ``num_features * B + 1`` entries) -> the model's: a few
        operations over all the ids at once, whatever the number of features (a served request pays them)."""
        if self.identity:
            return indices
        batch = (offsets.numel() - 1) // num_features
        ends = offsets[::batch] if batch else offsets.new_zeros(num_features + 1)
        ids = indices[:int(ends[-1])].to(torch.int64)
        features = torch.repeat_interleave(torch.arange(num_features), (ends[1:] - ends[:-1]).to(torch.int64))
        if self.max_ind_range is not None:
            mapped = ids.remainder(self.max_ind_range)
        elif ids.numel() < _ONE_LOOKUP_IDS:
            mapped = self.vocabulary.map_features(features, ids)
        else:
            mapped = torch.cat([self.vocabulary.map_feature(t, ids[int(ends[t]):int(ends[t + 1])])
                                for t in range(num_features)])
        if self.raw_features:
            raw = torch.zeros(num_features, dtype=torch.bool)
            raw[sorted(t for t in self.raw_features if t < num_features)] = True
            mapped = torch.where(raw[features], ids, mapped)
        return torch.cat([mapped.to(indices.dtype), indices[int(ends[-1]):]])


class CriteoReader:
    """Streams :class:`Batch` es from Criteo TSV files (Kaggle's ``train.txt``, Terabyte's ``day_*``).

    Args:
        paths: one file or several, read in order; plain text or gzip (``day_0.gz``), streamed either way.
        batch_size: examples per batch; the last batch may be short unless ``drop_last``.
        max_ind_range: ids modulo this (as the DLRM reference), or
        vocabulary: a :class:`Vocabulary` mapping ids to table rows (neither: raw ids, for DHE).
        raw_features: features whose ids stay raw either way (the DHE features of a mixed model).
        strict: raise :class:`MalformedLineError` at the first malformed line; otherwise skip and count it
            (``skipped``; the first few in ``bad_lines`` as ``(path, line, reason)``).
        limit: stop after this many examples.
        stripe: ``(rank, world_size)``: read only this rank's stripe of each file, its ``1 / world_size`` of
            the bytes (whole lines), so that the ranks of a distributed run read the data once between them.
            A gzip file cannot be entered in the middle: each rank decompresses all of it and keeps every
            ``world_size``-th chunk of lines.
        chunk_bytes, prefetch: bytes parsed at a time, and parsed chunks queued ahead by the worker thread.

    Counters after (or during) iteration: ``examples``, ``lines``, ``skipped``.
    """

    def __init__(self, paths: Union[PathLike, Sequence[PathLike]], batch_size: int = 2048, *,
                 max_ind_range: Optional[int] = None, vocabulary: Optional[Vocabulary] = None, strict: bool = False,
                 drop_last: bool = False, limit: Optional[int] = None, chunk_bytes: int = 4 << 20, prefetch: int = 2,
                 num_dense: int = NUM_DENSE, num_sparse: int = NUM_SPARSE, missing_id: int = 0,
                 raw_features: Sequence[int] = (), stripe: Optional[tuple[int, int]] = None) -> None:
        self.paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        for path in self.paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"CriteoReader: no such file: {path}")
        if batch_size < 1:
            raise ValueError(f"CriteoReader: batch_size must be >= 1, got {batch_size}")
        if max_ind_range is not None and vocabulary is not None:
            raise ValueError("CriteoReader: give max_ind_range or vocabulary, not both")
        if max_ind_range is not None and max_ind_range < 1:
            raise ValueError(f"CriteoReader: max_ind_range must be >= 1, got {max_ind_range}")
        self.batch_size = batch_size
        self.max_ind_range = max_ind_range
        self.vocabulary = vocabulary
        self.ids = IdMap(max_ind_range, vocabulary, raw_features)
        self.strict = strict
        self.drop_last = drop_last
        self.limit = limit
        self.chunk_bytes = chunk_bytes
        self.prefetch = max(1, prefetch)
        self.num_dense, self.num_sparse, self.missing_id = num_dense, num_sparse, missing_id
        if stripe is not None and not (len(stripe) == 2 and 0 <= stripe[0] < stripe[1]):
            raise ValueError(f"CriteoReader: stripe must be (rank, world_size) with 0 <= rank < world_size, got "
                             f"{stripe}")
        self.stripe = None if stripe is None else (int(stripe[0]), int(stripe[1]))
        self.raw_features = sorted(set(raw_features))
        if any(not 0 <= t < num_sparse for t in self.raw_features):
            raise ValueError(f"CriteoReader: raw_features must be in [0, {num_sparse}), got {self.raw_features}")
        self.examples = self.lines = self.skipped = 0
        self.bad_lines: list[tuple[str, int, str]] = []

    # --- parsing ----------------------------------------------------------------------------------
    def _parsed(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(labels, dense, ids) per chunk, ids mapped; malformed lines skipped, counted or raised."""
        for path in self.paths:
            line, start, end, where = 0, 0, None, str(path)
            compressed = is_gzip(path)
            rank, world = self.stripe or (0, 1)
            if world > 1 and not compressed:
                size = os.path.getsize(path)
                start, end = size * rank // world, size * (rank + 1) // world
                where = f"{path} (stripe {rank} of {world}, lines from byte {start})"
            chunks = _chunks(path, self.chunk_bytes, start, end, compressed)
            for k in itertools.count():
                try:
                    data = next(chunks)
                except StopIteration:
                    break
                except CorruptFileError as error:
                    raise CorruptFileError(f"{error} (after line {line})") from None
                if compressed and k % world != rank:
                    # A gzip file cannot be entered in the middle: every rank decompresses it and keeps
                    # every world-th chunk (the chunks are the same on every rank: same chunk_bytes).
                    line += data.count(b"\n") + (not data.endswith(b"\n"))
                    continue
                labels, dense, sparse, bad = parse_criteo(data, self.num_dense, self.num_sparse, self.missing_id)
                n_lines = labels.numel() + bad.shape[0]
                if bad.numel():
                    first = bad[0].tolist()
                    if self.strict:
                        raise MalformedLineError(
                            f"{where}:{line + first[0] + 1}: "
                            f"{describe_bad_line(first[1], first[2], self.num_dense, self.num_sparse)}")
                    self.skipped += bad.shape[0]
                    for row in bad[: max(0, 10 - len(self.bad_lines))].tolist():
                        self.bad_lines.append((where, line + row[0] + 1,
                                               describe_bad_line(row[1], row[2], self.num_dense, self.num_sparse)))
                line += n_lines
                self.lines += n_lines
                yield labels, dense, self.ids.rows(sparse)

    def chunks(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Parsed chunks, read ahead by a worker thread into a bounded queue. Closing the iterator early
        stops the thread; an error in it (``strict``) is raised here."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def work():
            try:
                for item in self._parsed():
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                item = done
            except BaseException as error:  # handed to the consumer, which raises it
                item = error
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        worker = threading.Thread(target=work, name="mprec-criteo-reader", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()

    # --- batching ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        self.examples = self.lines = self.skipped = 0
        self.bad_lines = []
        pending: list[tuple[Tensor, Tensor, Tensor]] = []
        held = 0
        remaining = self.limit
        for labels, dense, sparse in self.chunks():
            if remaining is not None:
                labels, dense, sparse = labels[:remaining], dense[:remaining], sparse[:remaining]
                remaining -= labels.numel()
            pending.append((labels, dense, sparse))
            held += labels.numel()
            while held >= self.batch_size:
                batch, pending, held = self._take(pending, self.batch_size)
                yield batch
            if remaining is not None and remaining <= 0:
                break
        if held and not self.drop_last:
            batch, pending, held = self._take(pending, held)
            yield batch

    def _take(self, pending, n):
        """The first n rows of the pending chunks as a batch, and what is left."""
        taken, rest, need = [], [], n
        for labels, dense, sparse in pending:
            if need == 0:
                rest.append((labels, dense, sparse))
            elif labels.numel() <= need:
                taken.append((labels, dense, sparse))
                need -= labels.numel()
            else:
                taken.append((labels[:need], dense[:need], sparse[:need]))
                rest.append((labels[need:], dense[need:], sparse[need:]))
                need = 0
        parts = [torch.cat(x) if len(taken) > 1 else x[0] for x in zip(*taken)]
        self.examples += n
        return Batch.from_rows(*parts), rest, sum(x[0].numel() for x in rest)

    def table_sizes(self) -> Optional[list[int]]:
        """Rows each feature's table needs: ``max_ind_range`` or the vocabulary's sizes (None for raw ids)."""
        if self.max_ind_range is not None:
            return [self.max_ind_range] * self.num_sparse
        return None if self.vocabulary is None else self.vocabulary.sizes


def read_all(reader: Iterable[Batch]) -> Batch:
    """Every batch of a reader concatenated (for small files: the bundled sample)."""
    batches = list(reader)
    if not batches:
        raise ValueError("read_all: the reader yielded no examples")
    dense = torch.cat([b.dense for b in batches])
    sparse = torch.cat([b.sparse() for b in batches])
    labels = torch.cat([b.labels for b in batches])
    return Batch.from_rows(labels, dense, sparse)

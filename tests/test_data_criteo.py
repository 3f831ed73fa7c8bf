"""mprec.data: the Criteo parser against a pure-Python reading of the format, malformed lines (skipped and
counted, or raised with file and line), the streaming reader's batching across chunk and file
boundaries, vocabularies, flat memory on a large file, the bundled sample, and the synthetic generator."""

import gzip
import math
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from mprec.data import (
    KAGGLE_TABLE_SIZES,
    Batch,
    CorruptFileError,
    CriteoReader,
    IdMap,
    MalformedLineError,
    SyntheticCriteo,
    Vocabulary,
    parse_criteo,
    read_all,
    zipf_ids,
)

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "criteo_kaggle_sample"


def random_line(rng, empty=0.2, hex_digits=8):
    label = rng.choice("01")
    ints = ["" if rng.random() < empty else str(rng.choice([rng.randint(-3, 20), rng.randint(0, 10**6)]))
            for _ in range(13)]
    cats = ["" if rng.random() < empty else "".join(rng.choice("0123456789abcdef") for _ in range(hex_digits))
            for _ in range(26)]
    return "\t".join([label] + ints + cats)


def reference_parse(line, missing_id=0):
    """The format, read field by field in Python."""
    fields = line.rstrip("\r").split("\t")
    label = float(int(fields[0]))
    dense = [math.log1p(max(int(x), 0)) if x else 0.0 for x in fields[1:14]]
    sparse = [int(x, 16) if x else missing_id for x in fields[14:]]
    return label, dense, sparse


def write_lines(path, lines, newline="\n", final_newline=True):
    text = newline.join(lines) + (newline if final_newline else "")
    path.write_bytes(text.encode())
    return path


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("final_newline", [True, False])
@pytest.mark.parametrize("missing_id", [0, 7])
def test_parse_matches_python_reading(newline, final_newline, missing_id):
    rng = random.Random(1)
    lines = [random_line(rng) for _ in range(300)]
    data = (newline.join(lines) + (newline if final_newline else "")).encode()
    labels, dense, sparse, bad = parse_criteo(data, missing_id=missing_id)
    assert bad.shape == (0, 3)
    want = [reference_parse(line, missing_id) for line in lines]
    assert torch.equal(labels, torch.tensor([w[0] for w in want]))
    torch.testing.assert_close(dense, torch.tensor([w[1] for w in want], dtype=torch.float64).float(), rtol=0, atol=0)
    assert torch.equal(sparse, torch.tensor([w[2] for w in want]))


def test_parse_extremes_and_empty_input():
    line = "\t".join(["1"] + ["-5", "999999999999999999", "+3"] + [""] * 10 + ["fffffffffffffff", "0", "A0"] + [""] * 23)
    labels, dense, sparse, bad = parse_criteo(line.encode())
    assert bad.numel() == 0 and labels.tolist() == [1.0]
    assert dense[0, 0] == 0 and dense[0, 1] == pytest.approx(math.log1p(999999999999999999)) and \
        dense[0, 2] == pytest.approx(math.log(4))
    assert sparse[0, :3].tolist() == [2**60 - 1, 0, 160]
    for data in (b"", b"\n"):
        labels, dense, sparse, bad = parse_criteo(data)
        assert labels.numel() == 0 and dense.shape == (0, 13) and sparse.shape == (0, 26)
    assert parse_criteo(b"\n")[3].tolist() == [[0, 1, 1]]  # an empty line is a malformed line


@pytest.mark.parametrize("num_dense,num_sparse", [(0, 2), (2, 0), (0, 0)])
def test_good_lines_after_a_bad_one_without_dense_or_sparse_fields(num_dense, num_sparse):
    """The good lines move forward over a bad one even where a kind of field is absent (its tensor is empty);
    under the sanitizers this once reported a null pointer given to memmove."""
    good = "\t".join(["1"] + ["4"] * num_dense + ["a"] * num_sparse)
    labels, dense, sparse, bad = parse_criteo(f"x\n{good}\n{good}".encode(), num_dense=num_dense,
                                              num_sparse=num_sparse)
    assert labels.tolist() == [1.0, 1.0] and bad[:, 0].tolist() == [0]
    assert dense.shape == (2, num_dense) and sparse.shape == (2, num_sparse)
    assert sparse.tolist() == [[10] * num_sparse] * 2
    torch.testing.assert_close(dense, torch.full((2, num_dense), math.log(5)))


def malformed_lines(rng):
    good = random_line(rng, empty=0)
    f = good.split("\t")
    return {
        "39 fields": ("\t".join(f[:-1]), "expected 40 tab-separated fields, got 39"),
        "41 fields": (good + "\tab", "expected 40 tab-separated fields, got 41"),
        "label": ("\t".join(["2"] + f[1:]), "the label must be 0 or 1"),
        "integer": ("\t".join(f[:3] + ["1x"] + f[4:]), "field 3 is not an integer"),
        "hex": ("\t".join(f[:20] + ["zz"] + f[21:]), "field 20 is not a hex id"),
        "long hex": ("\t".join(f[:15] + ["1" * 16] + f[16:]), "field 15 is not a hex id"),
    }


@pytest.mark.parametrize("kind", ["39 fields", "41 fields", "label", "integer", "hex", "long hex"])
def test_malformed_lines_are_skipped_and_counted_or_raised(tmp_path, kind):
    rng = random.Random(2)
    bad_line, message = malformed_lines(rng)[kind]
    lines = [random_line(rng) for _ in range(50)]
    lines.insert(17, bad_line)
    path = write_lines(tmp_path / "day.tsv", lines)
    reader = CriteoReader(path, batch_size=8)
    batches = list(reader)
    assert sum(len(b) for b in batches) == 50 and reader.skipped == 1 and reader.lines == 51
    assert reader.bad_lines[0][1] == 18 and message in reader.bad_lines[0][2]
    with pytest.raises(MalformedLineError, match=rf"day.tsv:18: {message}"):
        list(CriteoReader(path, batch_size=8, strict=True))
    # The good lines are exactly the others.
    got = read_all(CriteoReader(path, batch_size=8))
    want = [reference_parse(line) for i, line in enumerate(lines) if i != 17]
    assert torch.equal(got.sparse(), torch.tensor([w[2] for w in want]))


@pytest.mark.parametrize("world", [1, 2, 3, 5, 200])
@pytest.mark.parametrize("chunk_bytes", [64, 1 << 20])
@pytest.mark.parametrize("final_newline", [True, False])
def test_stripes_split_every_file_exactly(tmp_path, world, chunk_bytes, final_newline):
    """The ranks' stripes of a file, taken in rank order, are its lines in order, each once; shares are about
    equal; with several files a rank reads its stripe of each."""
    rng = random.Random(4)
    a = [random_line(rng) for _ in range(101)]
    b = [random_line(rng) for _ in range(7)]
    paths = [write_lines(tmp_path / "a.tsv", a), write_lines(tmp_path / "b.tsv", b, final_newline=final_newline)]
    for path, lines in zip(paths, (a, b)):
        stripes = [list(CriteoReader(path, batch_size=16, chunk_bytes=chunk_bytes, stripe=(r, world)))
                   for r in range(world)]
        rows = torch.cat([x.sparse() for s in stripes for x in s])
        assert torch.equal(rows, torch.tensor([reference_parse(line)[2] for line in lines]))
        counts = [sum(len(x) for x in s) for s in stripes]
        if len(lines) >= 10 * world:
            assert max(counts) - min(counts) <= len(lines) // world // 3 + 1, counts
    both = [sum(len(x) for x in CriteoReader(paths, batch_size=16, stripe=(r, world))) for r in range(world)]
    assert sum(both) == 108
    with pytest.raises(ValueError, match=r"stripe must be \(rank, world_size\)"):
        CriteoReader(paths, stripe=(2, 2))


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
@pytest.mark.parametrize("chunk_bytes", [64, 997, 1 << 20])
def test_reader_batches_across_chunks_and_files(tmp_path, batch_size, chunk_bytes):
    rng = random.Random(3)
    a = [random_line(rng) for _ in range(123)]
    b = [random_line(rng) for _ in range(45)]
    paths = [write_lines(tmp_path / "a.tsv", a), write_lines(tmp_path / "b.tsv", b, final_newline=False)]
    reader = CriteoReader(paths, batch_size=batch_size, chunk_bytes=chunk_bytes)
    batches = list(reader)
    sizes = [len(x) for x in batches]
    assert sizes == [batch_size] * (168 // batch_size) + ([168 % batch_size] if 168 % batch_size else [])
    assert reader.examples == 168 and reader.lines == 168 and reader.skipped == 0
    for x in batches:  # TBE layout, one id per bag
        assert x.indices.shape == (26 * len(x),) and torch.equal(x.offsets, torch.arange(26 * len(x) + 1))
        assert x.dense.shape == (len(x), 13) and x.dense.dtype == torch.float32
    got = read_all(batches)
    want = [reference_parse(line) for line in a + b]
    assert torch.equal(got.labels, torch.tensor([w[0] for w in want]))
    assert torch.equal(got.sparse(), torch.tensor([w[2] for w in want]))
    dropped = list(CriteoReader(paths, batch_size=batch_size, chunk_bytes=chunk_bytes, drop_last=True))
    assert all(len(x) == batch_size for x in dropped) and len(dropped) == 168 // batch_size
    limited = list(CriteoReader(paths, batch_size=batch_size, chunk_bytes=chunk_bytes, limit=100))
    assert sum(len(x) for x in limited) == 100
    assert torch.equal(read_all(limited).sparse(), got.sparse()[:100])


@pytest.mark.parametrize("kind", ["vocabulary", "modulo", "none"])
def test_id_map_on_a_request_maps_as_the_reader_maps_rows(kind):
    """IdMap.tbe (a served request's ids, all features in one lookup) gives what IdMap.rows (the reader's mapping,
    one feature at a time) gives, for known, unknown, negative and huge ids, with raw (DHE) features kept."""
    g = torch.Generator().manual_seed(3)
    known = [torch.randint(0, 1 << 32, (int(n),), generator=g).unique() for n in torch.randint(0, 50, (26,), generator=g)]
    vocabulary = Vocabulary(known) if kind == "vocabulary" else None
    ids = IdMap(max_ind_range=97 if kind == "modulo" else None, vocabulary=vocabulary, raw_features=[3, 17])
    rows = torch.randint(0, 1 << 32, (40, 26), generator=g)
    for t, v in enumerate(known):  # most ids known
        if v.numel():
            rows[:30, t] = v[torch.randint(0, v.numel(), (30,), generator=g)]
    rows[30, :] = -5
    rows[31, :] = (1 << 62) + 11
    want = ids.rows(rows.clone())
    got = ids.tbe(rows.t().reshape(-1), torch.arange(rows.numel() + 1), 26)
    assert torch.equal(got, want.t().reshape(-1))
    many = rows.repeat(1400, 1)  # past the size where the lookup is made per feature
    got = ids.tbe(many.t().reshape(-1), torch.arange(many.numel() + 1), 26)
    assert torch.equal(got, want.repeat(1400, 1).t().reshape(-1))
    if kind == "vocabulary":
        assert (want[:30][:, [t for t in range(26) if known[t].numel() and t not in (3, 17)]] > 0).all()
        assert torch.equal(want[:, 3], rows[:, 3])  # raw features keep their ids


def test_max_ind_range_vocabulary_and_raw_features(tmp_path):
    rng = random.Random(4)
    lines = [random_line(rng, hex_digits=2) for _ in range(400)]  # few distinct ids: repeats
    path = write_lines(tmp_path / "t.tsv", lines)
    raw = read_all(CriteoReader(path, 64)).sparse()
    modded = read_all(CriteoReader(path, 64, max_ind_range=13)).sparse()
    assert torch.equal(modded, raw % 13)
    vocab = Vocabulary.build(path, min_count=2)
    for t in range(26):
        values, counts = torch.unique(raw[:, t], return_counts=True)
        kept = values[counts >= 2]
        assert torch.equal(vocab.ids[t], kept) and vocab.sizes[t] == kept.numel() + 1
    mapped = read_all(CriteoReader(path, 64, vocabulary=vocab)).sparse()
    for t in range(26):
        lookup = {int(v): i + 1 for i, v in enumerate(vocab.ids[t])}
        assert mapped[:, t].tolist() == [lookup.get(int(x), 0) for x in raw[:, t]]
    mixed = read_all(CriteoReader(path, 64, vocabulary=vocab, raw_features=[0, 5])).sparse()
    assert torch.equal(mixed[:, [0, 5]], raw[:, [0, 5]]) and torch.equal(mixed[:, 1:5], mapped[:, 1:5])
    again = Vocabulary.from_state_dict(vocab.state_dict())
    assert torch.equal(again.map(raw), vocab.map(raw))


def test_reader_argument_errors(tmp_path):
    path = write_lines(tmp_path / "t.tsv", [random_line(random.Random(5))])
    with pytest.raises(FileNotFoundError, match="CriteoReader: no such file"):
        CriteoReader(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        CriteoReader(path, 0)
    with pytest.raises(ValueError, match="max_ind_range or vocabulary, not both"):
        CriteoReader(path, max_ind_range=5, vocabulary=Vocabulary([torch.tensor([1])] * 26))
    with pytest.raises(ValueError, match=r"raw_features must be in \[0, 26\)"):
        CriteoReader(path, raw_features=[26])
    with pytest.raises(RuntimeError, match="mprec::parse_criteo: data must be a 1-D uint8 CPU tensor"):
        parse_criteo(torch.zeros(3, dtype=torch.int32))


def test_closing_early_stops_the_worker(tmp_path):
    rng = random.Random(6)
    path = write_lines(tmp_path / "t.tsv", [random_line(rng) for _ in range(2000)])
    before = threading.active_count()
    reader = CriteoReader(path, batch_size=10, chunk_bytes=4096, prefetch=1)
    it = iter(reader)
    next(it)
    it.close()
    assert threading.active_count() == before


MEMORY_SCRIPT = """
import resource, sys, torch, mprec
from mprec.data import CriteoReader
n = 0
for b in CriteoReader(sys.argv[1], batch_size=2048, max_ind_range=1000003):
    n += len(b)
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_memory_stays_flat_on_a_large_file(tmp_path, compressed):
    rng = random.Random(7)
    block = ("\n".join(random_line(rng) for _ in range(20_000)) + "\n").encode()  # ~4 MB
    suffix = ".tsv.gz" if compressed else ".tsv"
    big, small = tmp_path / f"big{suffix}", tmp_path / f"small{suffix}"
    copies = 50  # ~200 MB of text
    opener = (lambda path: gzip.open(path, "wb", compresslevel=1)) if compressed else (lambda path: open(path, "wb"))
    with opener(big) as f:
        for _ in range(copies):
            f.write(block)
    with opener(small) as f:
        f.write(block)
    runs = {}
    for name, path in (("small", small), ("big", big)):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path)], capture_output=True, text=True, check=True)
        examples, peak_mb = map(int, out.stdout.split())
        runs[name] = (examples, peak_mb)
    assert runs["big"][0] == 20_000 * copies and runs["small"][0] == 20_000
    size_mb = len(block) * copies / 2**20
    growth = runs["big"][1] - runs["small"][1]
    print(f"{size_mb:.0f} MB of text ({os.path.getsize(big) / 2**20:.0f} MB on disk): peak RSS {runs['big'][1]} MB, "
          f"vs {runs['small'][1]} MB for 4 MB")
    assert growth < 64, f"peak RSS grew by {growth} MB reading {size_mb:.0f} MB of text"


def gzip_bytes(text: bytes, members: int = 1) -> bytes:
    """``text`` gzip-compressed, as one stream or as several concatenated (what ``cat a.gz b.gz`` makes)."""
    cuts = [len(text) * i // members for i in range(members + 1)]
    return b"".join(gzip.compress(text[a:b], compresslevel=6, mtime=0) for a, b in zip(cuts, cuts[1:]))


@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("chunk_bytes", [64, 997, 1 << 20])
def test_gzip_files_read_as_their_text(tmp_path, chunk_bytes, members):
    rng = random.Random(8)
    lines = [random_line(rng) for _ in range(300)]
    text = ("\n".join(lines)).encode()  # no final newline
    plain = tmp_path / "day_0"
    plain.write_bytes(text)
    packed = tmp_path / "day_0.gz"
    packed.write_bytes(gzip_bytes(text, members))
    renamed = tmp_path / "day_0.txt"  # recognised by its first bytes, not its name
    renamed.write_bytes(packed.read_bytes())
    want = read_all(CriteoReader(plain, batch_size=64, chunk_bytes=chunk_bytes))
    for path in (packed, renamed):
        reader = CriteoReader(path, batch_size=64, chunk_bytes=chunk_bytes)
        got = read_all(reader)
        assert reader.lines == 300 and reader.examples == 300
        for field in ("labels", "dense", "indices", "offsets"):
            assert torch.equal(getattr(got, field), getattr(want, field))


@pytest.mark.parametrize("world", [2, 3])
def test_gzip_stripes_take_every_line_once(tmp_path, world):
    rng = random.Random(9)
    lines = [random_line(rng) for _ in range(400)]
    path = tmp_path / "day.gz"
    path.write_bytes(gzip_bytes(("\n".join(lines) + "\n").encode()))
    stripes = [read_all(CriteoReader(path, batch_size=32, chunk_bytes=2048, stripe=(r, world))) for r in range(world)]
    assert all(len(s) > 0 for s in stripes)
    got = sorted(tuple(row) for s in stripes for row in s.sparse().tolist())
    assert got == sorted(tuple(reference_parse(line)[2]) for line in lines)


def test_gzip_malformed_line_names_the_line(tmp_path):
    rng = random.Random(10)
    lines = [random_line(rng) for _ in range(100)]
    lines[60] = "2" + lines[60][1:]
    path = tmp_path / "day_1.gz"
    path.write_bytes(gzip_bytes(("\n".join(lines) + "\n").encode()))
    with pytest.raises(MalformedLineError, match=r"day_1.gz:61: the label must be 0 or 1"):
        list(CriteoReader(path, strict=True, chunk_bytes=512))


def test_truncated_or_corrupt_gzip_is_an_error_naming_file_and_position(tmp_path):
    rng = random.Random(11)
    text = ("\n".join(random_line(rng) for _ in range(2000)) + "\n").encode()
    whole = gzip_bytes(text)
    cases = {
        "truncated-half": (whole[: len(whole) // 2], r"truncated gzip file: its \d+ bytes end before the stream's "
                                                      r"end marker, after \d+ decompressed bytes \(after line \d+\)"),
        "no-trailer": (whole[:-8], r"truncated gzip file"),
        "header-only": (whole[:12], r"truncated gzip file"),
        "flipped": (whole[:3000] + bytes([whole[3000] ^ 0xFF]) + whole[3001:],
                    r"corrupt gzip data near compressed byte \d+, after \d+ decompressed bytes: .+ \(after line \d+\)"),
        "bad-crc": (whole[:-8] + bytes([whole[-8] ^ 1]) + whole[-7:], r"corrupt gzip data .*CRC check failed"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.gz"
        path.write_bytes(data)
        reader = CriteoReader(path, batch_size=100, chunk_bytes=4096)
        with pytest.raises(CorruptFileError, match=rf"{name}.gz: {message}"):
            for _ in reader:
                pass
        assert reader.examples <= 2000


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="the bundled Criteo sample (../shared/data) is not present")
def test_bundled_sample():
    reader = CriteoReader(SAMPLE / "train.txt", batch_size=2048, strict=True)
    batch = read_all(reader)
    assert len(batch) == 7200 and reader.skipped == 0
    assert batch.labels.mean().item() == pytest.approx(0.215, abs=0.005)  # the README's 21.5% clicks
    assert len(read_all(CriteoReader(SAMPLE / "valid.txt", strict=True))) == 409


def test_synthetic_data():
    sizes = [3, 1000, 10**6]
    data = SyntheticCriteo(4, 4096, sizes, seed=5)
    batches = list(data)
    assert len(batches) == 4
    again = SyntheticCriteo(4, 4096, sizes, seed=5).batch(2)
    assert torch.equal(again.indices, batches[2].indices) and torch.equal(again.labels, batches[2].labels)
    other = SyntheticCriteo(4, 4096, sizes, seed=6).batch(2)
    assert not torch.equal(other.indices, batches[2].indices)
    for b in batches:
        s = b.sparse()
        assert s.shape == (4096, 3) and (s >= 0).all() and (s < torch.tensor(sizes)).all()
        assert b.dense.shape == (4096, 13) and (b.dense >= 0).all()
        assert set(b.labels.unique().tolist()) <= {0.0, 1.0}
    labels = torch.cat([b.labels for b in batches])
    assert 0.1 < labels.mean().item() < 0.4
    assert len(KAGGLE_TABLE_SIZES) == 26 and sum(KAGGLE_TABLE_SIZES) == 33_762_577


@pytest.mark.parametrize("s", [0.8, 1.0, 1.05, 1.2])
def test_zipf_ids_follow_the_law(s):
    g = torch.Generator().manual_seed(0)
    rows = 10_000
    ids = zipf_ids(400_000, rows, s, g)
    assert (ids >= 0).all() and (ids < rows).all()
    counts = torch.bincount(ids, minlength=rows).sort(descending=True).values.double()
    # Frequency of rank r ~ r^-s: the log-log slope over ranks 2..200 is close to -s.
    r = torch.arange(2, 201, dtype=torch.float64)
    y = counts[1:200].log()
    x = r.log()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert slope.item() == pytest.approx(-s, abs=0.12)
    # Hot ids are scattered, not 0, 1, 2, ...
    top = torch.bincount(ids, minlength=rows).argsort(descending=True)[:10]
    assert top.max() > 100


def test_batch_layout():
    sparse = torch.arange(12).view(4, 3)
    b = Batch.from_rows(torch.zeros(4), torch.zeros(4, 13), sparse)
    assert b.indices.tolist() == [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11]  # feature by feature
    assert torch.equal(b.sparse(), sparse) and len(b) == 4

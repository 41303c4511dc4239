"""LSUN's LMDB databases read without the ``lmdb`` package (``depthlib.archives.lmdb``).

The files are written by the ``lmdb`` package (the C library LSUN's files come
from); the reader must find every value, in key order, at the byte range that
holds exactly the value the package reads back: values inside leaf pages and in
overflow pages, trees of one to three levels, a database rewritten by later
transactions (the newer meta page wins), binary keys. Damaged or unsupported
files give recorded skips, never an exception.
"""

from __future__ import annotations

import random

import lmdb
import pyarrow as pa
import pytest

from depthlib.archives import lmdb as lmdb_mod
from depthlib.archives.tar import Damage
from test_archive_input import lmdb_files


class Bytes:
    """A random-access file over bytes that counts its reads (``read_at`` and ``size`` as pyarrow's)."""

    def __init__(self, data: bytes):
        self.data = data
        self.reads: list[tuple[int, int]] = []

    def size(self) -> int:
        return len(self.data)

    def read_at(self, n: int, offset: int) -> bytes:
        self.reads.append((offset, n))
        return self.data[offset:offset + n]


def _values(rng: random.Random, n: int) -> dict[bytes, bytes]:
    sizes = (0, 7, 600, 1900, 2100, 5000, 40_000)  # around LMDB's inline limit (~2 KB with 4 KB pages)
    return {f"{rng.getrandbits(160):040x}".encode(): rng.randbytes(rng.choice(sizes)) for _ in range(n)}


def _walk(data: bytes) -> tuple[dict[bytes, bytes], list[Damage], list[lmdb_mod.Value]]:
    found, damage, order = {}, [], []
    for item in lmdb_mod.walk(Bytes(data)):
        if isinstance(item, Damage):
            damage.append(item)
        else:
            order.append(item)
            found[item.key] = data[item.offset:item.offset + item.size]
    return found, damage, order


@pytest.mark.parametrize("n", [1, 40, 2500])
def test_every_value_at_its_byte_range_in_key_order(n):
    items = _values(random.Random(n), n)
    data, _ = lmdb_files(items)
    found, damage, order = _walk(data)
    assert not damage and found == items
    assert [v.key for v in order] == sorted(items)  # LMDB's own order
    meta = lmdb_mod.read_meta(Bytes(data))
    assert meta.entries == n and meta.page_size == 4096
    assert meta.depth == {1: 1, 40: 2, 2500: 3}[n]  # a leaf alone, one branch level, two
    big = [v for v in order if v.size > 2100]
    assert all(v.offset % meta.page_size == lmdb_mod.PAGE_HEADER for v in big)  # overflow pages


def test_a_rewritten_database_is_read_at_its_latest_transaction(tmp_path):
    rng = random.Random(7)
    env = lmdb.open(str(tmp_path), map_size=1 << 26)
    items = _values(rng, 300)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
    for _ in range(3):  # later transactions: deletes, replacements, new keys; freed pages are reused
        with env.begin(write=True) as txn:
            for k in rng.sample(sorted(items), 60):
                txn.delete(k)
                del items[k]
            for k in rng.sample(sorted(items), 40):
                items[k] = rng.randbytes(rng.choice((10, 3000, 9000)))
                txn.put(k, items[k])
            for k, v in _values(rng, 50).items():
                items[k] = v
                txn.put(k, v)
    env.close()
    data = (tmp_path / "data.mdb").read_bytes()
    assert lmdb_mod.read_meta(Bytes(data)).txnid == 4
    found, damage, _ = _walk(data)
    assert not damage and found == items


def test_binary_keys_are_named_in_hex_and_an_empty_database_has_no_values():
    items = {b"\x00\x01key": b"a", b"plain-key.jpg": b"b", "é".encode(): b"c"}
    data, _ = lmdb_files(items)
    found, damage, _ = _walk(data)
    assert not damage and found == items
    assert sorted(lmdb_mod.key_name(k) for k in items) == ["0x00016b6579", "0xc3a9", "plain-key.jpg"]
    empty, _ = lmdb_files({})
    assert _walk(empty) == ({}, [], [])


def test_page_reads_are_few_and_ranged():
    """Indexing reads the tree's pages (neighbours together), never the values."""
    items = {f"{i:040x}".encode(): bytes([i % 256]) * 30_000 for i in range(400)}  # 12 MB of values
    data, _ = lmdb_files(items)
    f = Bytes(data)
    assert len([item for item in lmdb_mod.walk(f) if not isinstance(item, Damage)]) == 400
    read = sum(n for _, n in f.reads)
    assert read < 0.02 * len(data) and len(f.reads) < 20, (read, len(f.reads))


def test_damaged_and_unsupported_files_are_recorded():
    items = _values(random.Random(3), 1200)
    data, lock = lmdb_files(items)
    # not LMDB at all: the lock file, random bytes, nothing
    for blob in (lock, random.Random(0).randbytes(9000), b""):
        assert [(d.where, d.reason) for d in _walk(blob)[1]] == [("", "corrupt_archive")]
    # cut short: what lies before the cut is read; tree pages and values past it are recorded
    cut = data[:len(data) // 2]
    found, damage, _ = _walk(cut)
    assert found and all(items[k] == v for k, v in found.items())
    assert {d.reason for d in damage} <= {"truncated_archive"} and damage
    names = {lmdb_mod.key_name(k) for k in items}
    assert all(d.where in names or d.where.startswith("@page-") or d.where == "" for d in damage)  # past the cut
    # a tree page overwritten with junk: the rest of the tree is still read
    meta = lmdb_mod.read_meta(Bytes(data))
    root = meta.root * meta.page_size
    junk = data[:root + 10] + b"\xff" * 6 + data[root + 16:]  # the root's flags and free-space bounds
    found, damage, _ = _walk(junk)
    assert not found and [d.reason for d in damage] == ["corrupt_archive"]
    # named sub-databases: not LSUN's layout, refused
    found, damage, _ = _walk(_named_subdb())
    assert not found and [d.reason for d in damage] == ["corrupt_archive"] and "sub-databases" in damage[0].detail


def _named_subdb() -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        env = lmdb.open(d, map_size=1 << 24, max_dbs=2)
        sub = env.open_db(b"images")
        with env.begin(write=True, db=sub) as txn:
            txn.put(b"k", b"v")
        env.close()
        return (Path(d) / "data.mdb").read_bytes()


def test_dupsort_database_is_refused():
    data, _ = lmdb_files({b"a": b"1"})
    # set MDB_DUPSORT in the main database's flags of both meta pages (lmdb cannot re-flag the main DB)
    psize = lmdb_mod.read_meta(Bytes(data)).page_size
    raw = bytearray(data)
    for base in (0, psize):
        at = base + lmdb_mod.PAGE_HEADER + 72 + 4
        raw[at:at + 2] = (int.from_bytes(raw[at:at + 2], "little") | lmdb_mod.MDB_DUPSORT).to_bytes(2, "little")
    found, damage, _ = _walk(bytes(raw))
    assert not found and [d.reason for d in damage] == ["corrupt_archive"] and "DUPSORT" in damage[0].detail


def test_reads_through_pyarrow_files(tmp_path):
    items = _values(random.Random(11), 200)
    data, _ = lmdb_files(items)
    (tmp_path / "data.mdb").write_bytes(data)
    with pa.OSFile(str(tmp_path / "data.mdb")) as f:
        values = [v for v in lmdb_mod.walk(f) if not isinstance(v, Damage)]
    assert {v.key: data[v.offset:v.offset + v.size] for v in values} == items


def test_a_large_database_is_indexed_in_parts_with_every_value_once(tmp_path, monkeypatch):
    """The labelling plan: the driver reads the branch pages, tasks index runs of leaf pages;
    together they give the whole walk's entries in its order, and a cut file's damage is
    recorded under distinct keys (the plan holds each key once)."""
    import json

    from depthlib.archives import sources

    items = _values(random.Random(5), 3000)
    data, lock = lmdb_files(items)
    (tmp_path / "lsun" / "cat_lmdb").mkdir(parents=True)
    (tmp_path / "lsun" / "cat_lmdb" / "data.mdb").write_bytes(data)
    (tmp_path / "lsun" / "cat_lmdb" / "lock.mdb").write_bytes(lock)
    whole = sources.plan_entries(str(tmp_path))
    whole = list(whole)
    monkeypatch.setattr(sources, "LMDB_LEAVES_PER_TASK", 4)  # read on the driver, which cuts the parts
    damage, parts = sources.lmdb_parts(str(tmp_path / "lsun" / "cat_lmdb" / "data.mdb"), "x")
    assert not damage and len(parts) > 10 and all(len(leaves) <= 4 for _, leaves in parts)
    # indexed by threads here, or by Ray tasks when an earlier test started Ray in this process; the
    # parts are submitted as the plan's window takes them, never all at once
    in_flight = []
    submit = sources._Indexer.submit

    def counted(self, *a):
        job = submit(self, *a)
        in_flight.append((len(self.pending), self.width))
        return job

    monkeypatch.setattr(sources._Indexer, "submit", counted)
    split = list(sources.plan_entries(str(tmp_path), threads=2))
    assert split == whole and len(split) == len(items)
    assert len(in_flight) == len(parts) and all(n <= 2 * width + 1 for n, width in in_flight)
    assert len(parts) > 2 * max(width for _, width in in_flight) + 1  # enough parts to overrun an unbounded window
    name = "lsun/cat_lmdb/data.mdb"
    assert [k for k, _ in split] == [f"{name}/{k.decode()}" for k in sorted(items)]
    offset, size = json.loads(split[0][1])[2:]
    assert data[offset:offset + size] == items[min(items)]

    (tmp_path / "lsun" / "cat_lmdb" / "data.mdb").write_bytes(data[:len(data) // 2])
    cut = list(sources.plan_entries(str(tmp_path)))
    keys = [k for k, _ in cut]
    assert len(keys) == len(set(keys))
    reasons = {json.loads(loc)[1] for _, loc in cut if json.loads(loc)[0] == "x"}
    assert reasons == {"truncated_archive"}

"""The values of an LMDB database file (LSUN's ``data.mdb``), found by ranged reads.

Pure Python, no ``lmdb`` package and no local copy: the B+tree is walked from its
root by page reads of a random-access file (anything with ``read_at(n, offset)``
and ``size()``, e.g. a pyarrow ``NativeFile`` of an S3 or GCS object), and each
value is reported as the byte range it occupies in the file, so a labelling task
later reads it with one ranged read, like a plain tar's member.

The format (LMDB 0.9, ``mdb.c``; files are written in the writer's byte order,
little-endian here as on every x86 and ARM server; 64-bit builds):

* page ``p`` starts at ``p * page_size``; a page starts with a 16-byte header:
  ``pgno`` u64, ``pad`` u16, ``flags`` u16, ``lower`` u16, ``upper`` u16 (an overflow
  page keeps its page count in the last two as one u32);
* pages 0 and 1 are meta pages (flag 0x08): after the header, ``magic`` u32
  (0xBEEFC0DE), ``version`` u32 (1), address u64, map size u64, then two 48-byte
  database records (the free-page DB, whose first u32 is the page size, and the
  main DB: ``pad`` u32, ``flags`` u16, ``depth`` u16, branch, leaf and overflow page
  counts, ``entries`` and ``root`` u64), the last page u64 and the ``txnid`` u64.
  The meta with the larger txnid is the current one;
* a branch (0x01) or leaf (0x02) page holds ``(lower - 16) / 2`` u16 node offsets
  after its header; a node is ``lo`` u16, ``hi`` u16, ``flags`` u16, ``ksize`` u16,
  the key, then: on a branch page the child's page number is
  ``lo | hi << 16 | flags << 32``; on a leaf page the value's size is
  ``lo | hi << 16`` and the value follows the key, or, with flag ``F_BIGDATA``
  (0x01), a u64 page number of the overflow pages whose data starts 16 bytes into
  the first of them.

Not read (a recorded skip of the whole file): sorted duplicates (``MDB_DUPSORT``)
and named sub-databases, which LSUN does not use.
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

from depthlib.archives.tar import Damage

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
PAGE_HEADER = 16
META_SIZE = 136  # magic .. txnid
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2 = 0x01, 0x02, 0x04, 0x08, 0x20
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
MDB_DUPSORT = 0x04
P_INVALID = (1 << 64) - 1
READ_THREADS = 16  # page reads in flight (each a ranged GET on object storage)
PAGES_PER_ROUND = 2048  # pages of one tree level read before their entries are reported
MAX_RUN_PAGES = 256  # neighbouring pages fetched by one read, at most


@dataclass(frozen=True)
class Value:
    """One key's value: ``size`` bytes at ``offset`` of the file."""

    key: bytes
    offset: int
    size: int


@dataclass(frozen=True)
class Meta:
    page_size: int
    root: int  # P_INVALID for an empty database
    entries: int
    depth: int
    flags: int
    txnid: int


class LmdbError(ValueError):
    """Not an LMDB file that this reader can walk (reason: ``corrupt_archive`` or ``truncated_archive``)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def key_name(key: bytes) -> str:
    """A key as part of an entry name: its text when it is printable ASCII (LSUN's keys are
    40 hex digits), else ``0x`` and its hex digits."""
    if key and all(32 < b < 127 for b in key):
        return key.decode("ascii")
    return "0x" + key.hex()


def _parse_meta(raw: bytes) -> Meta | None:
    if len(raw) < PAGE_HEADER + META_SIZE:
        return None
    flags = struct.unpack_from("<H", raw, 10)[0]
    magic, version = struct.unpack_from("<II", raw, PAGE_HEADER)
    if not flags & P_META or magic != MAGIC or version != DATA_VERSION:
        return None
    page_size = struct.unpack_from("<I", raw, PAGE_HEADER + 24)[0]
    _, db_flags, depth, _, _, _, entries, root = struct.unpack_from("<IHHQQQQQ", raw, PAGE_HEADER + 72)
    txnid = struct.unpack_from("<Q", raw, PAGE_HEADER + 128)[0]
    return Meta(page_size, root, entries, depth, db_flags, txnid)


def read_meta(native: Any) -> Meta:
    """The current meta of the file (the valid meta page with the larger txnid)."""
    size = native.size()
    first = _parse_meta(bytes(native.read_at(min(size, PAGE_HEADER + META_SIZE), 0)))
    if first is None:
        raise LmdbError("corrupt_archive", "not an LMDB data file (no meta page with LMDB's magic at its start)")
    if first.page_size < 512 or first.page_size & (first.page_size - 1):
        raise LmdbError("corrupt_archive", f"implausible LMDB page size {first.page_size}")
    second = None
    if size >= first.page_size + PAGE_HEADER + META_SIZE:
        second = _parse_meta(bytes(native.read_at(PAGE_HEADER + META_SIZE, first.page_size)))
    meta = max((m for m in (first, second) if m is not None and m.page_size == first.page_size),
               key=lambda m: m.txnid)
    if meta.flags & MDB_DUPSORT:
        raise LmdbError("corrupt_archive", "an LMDB database of sorted duplicates (MDB_DUPSORT) is not read")
    return meta


def _runs(pgnos: list[int]) -> list[tuple[int, int]]:
    """(first page, page count) reads that cover ``pgnos`` (neighbours read together)."""
    out: list[tuple[int, int]] = []
    for p in sorted(set(pgnos)):
        if out and p == out[-1][0] + out[-1][1] and out[-1][1] < MAX_RUN_PAGES:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


def _pages(native: Any, psize: int, pgnos: list[int], threads: int) -> Iterator[tuple[int, bytes | None]]:
    """``(page number, its bytes or None when the file ends before it)`` for each of ``pgnos``,
    in that order: read :data:`PAGES_PER_ROUND` at a time, neighbours by one read, ``threads``
    reads in flight."""
    file_pages = native.size() // psize

    def fetch(run: tuple[int, int]) -> tuple[tuple[int, int], bytes]:
        first, count = run
        count = max(0, min(count, file_pages - first))
        return run, bytes(native.read_at(count * psize, first * psize)) if count else b""

    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(pgnos), PAGES_PER_ROUND):
            chunk = pgnos[start:start + PAGES_PER_ROUND]
            pages: dict[int, bytes] = {}
            for (first, count), data in pool.map(fetch, _runs(chunk)):
                for k in range(count):
                    page = data[k * psize:(k + 1) * psize]
                    if len(page) == psize:
                        pages[first + k] = page
            for pgno in chunk:
                yield pgno, pages.get(pgno)


def _nodes(page: bytes, pgno: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(node offset, lo, hi, flags, key size) of each node of a branch or leaf page."""
    lower, upper = struct.unpack_from("<HH", page, 12)
    if lower < PAGE_HEADER or lower > upper or upper > len(page) or (lower - PAGE_HEADER) % 2:
        raise LmdbError("corrupt_archive", f"page {pgno}: bad free-space bounds {lower}..{upper}")
    for i in range((lower - PAGE_HEADER) // 2):
        ptr = struct.unpack_from("<H", page, PAGE_HEADER + 2 * i)[0]
        if ptr < upper or ptr + 8 > len(page):
            raise LmdbError("corrupt_archive", f"page {pgno}: node {i} at {ptr} lies outside the page's nodes")
        lo, hi, flags, ksize = struct.unpack_from("<HHHH", page, ptr)
        if ptr + 8 + ksize > len(page):
            raise LmdbError("corrupt_archive", f"page {pgno}: node {i}'s key runs past the page")
        yield ptr, lo, hi, flags, ksize


def _leaf_values(page: bytes, pgno: int, psize: int, file_size: int) -> Iterator[Value | Damage]:
    for ptr, lo, hi, flags, ksize in _nodes(page, pgno):
        key = page[ptr + 8:ptr + 8 + ksize]
        size = lo | hi << 16
        if flags & (F_SUBDATA | F_DUPDATA):
            raise LmdbError("corrupt_archive", "named sub-databases or duplicates are not read")
        if flags & F_BIGDATA:
            if ptr + 8 + ksize + 8 > len(page):
                raise LmdbError("corrupt_archive", f"page {pgno}: a node's overflow page number runs past the page")
            first = struct.unpack_from("<Q", page, ptr + 8 + ksize)[0]
            offset = first * psize + PAGE_HEADER
        else:
            if ptr + 8 + ksize + size > len(page):
                raise LmdbError("corrupt_archive", f"page {pgno}: an inline value runs past the page")
            offset = pgno * psize + ptr + 8 + ksize
        if offset + size > file_size:
            yield Damage(key_name(key), "truncated_archive",
                         f"the file ends inside the value ({file_size} bytes, the value ends at {offset + size})")
        else:
            yield Value(key, offset, size)


def tree_leaves(native: Any, threads: int = READ_THREADS) -> tuple[Meta | None, list[int], list[Damage]]:
    """(the current meta, the leaf pages of the main database in key order, damage found on the
    way): the branch levels only are read, so a caller can spread the leaves over tasks
    (:func:`leaf_values`). Meta is None when the file cannot be read at all."""
    try:
        meta = read_meta(native)
    except LmdbError as e:
        return None, [], [Damage("", e.reason, e.detail)]
    if meta.root == P_INVALID:
        return meta, [], []
    psize, file_size = meta.page_size, native.size()
    damage: list[Damage] = []
    seen: set[int] = set()
    level = [meta.root]
    for _ in range(max(1, meta.depth) - 1):  # the levels above the leaves
        below: list[int] = []
        for pgno, page in _pages(native, psize, level, threads):
            if pgno in seen:
                damage.append(Damage("", "corrupt_archive", f"page {pgno} is reached twice (a cycle)"))
                continue
            seen.add(pgno)
            if page is None:
                damage.append(Damage("", "truncated_archive", f"page {pgno} of the tree lies past the end "
                                                              f"of the file ({file_size} bytes)"))
                continue
            try:
                if not struct.unpack_from("<H", page, 10)[0] & P_BRANCH:
                    raise LmdbError("corrupt_archive", f"page {pgno} should be a branch page "
                                                       f"(the tree's depth is {meta.depth})")
                below += [lo | hi << 16 | fl << 32 for _, lo, hi, fl, _ in _nodes(page, pgno)]
            except LmdbError as e:
                damage.append(Damage("", e.reason, e.detail))
        level = below
    leaves = [p for p in level if p not in seen]
    if len(leaves) != len(level) or len(set(leaves)) != len(leaves):
        damage.append(Damage("", "corrupt_archive", "a leaf page is reached twice (a cycle)"))
        leaves = list(dict.fromkeys(leaves))
    return meta, leaves, damage


def leaf_values(native: Any, page_size: int, leaves: list[int], threads: int = READ_THREADS
                ) -> Iterator[Value | Damage]:
    """The values on leaf pages ``leaves`` (from :func:`tree_leaves`), in that order; a
    :class:`Damage` for a leaf page that cannot be read (``where`` ``@page-N``) or a value
    past the end of a truncated file (``where`` its key's name)."""
    file_size = native.size()
    for pgno, page in _pages(native, page_size, leaves, threads):
        if page is None:
            yield Damage(f"@page-{pgno}", "truncated_archive",
                         f"leaf page {pgno} lies past the end of the file ({file_size} bytes)")
            continue
        flags = struct.unpack_from("<H", page, 10)[0]
        try:
            if flags & P_LEAF2:
                raise LmdbError("corrupt_archive", "fixed-size duplicate pages are not read")
            if not flags & P_LEAF:
                raise LmdbError("corrupt_archive", f"page {pgno} should be a leaf page (flags {flags:#x})")
            yield from _leaf_values(page, pgno, page_size, file_size)
        except LmdbError as e:
            yield Damage(f"@page-{pgno}", e.reason, e.detail)


def walk(native: Any, threads: int = READ_THREADS) -> Iterator[Value | Damage]:
    """Every value of the main database in key order, or a :class:`Damage` for what cannot
    be read: ``where`` "" (the whole file or a branch of its tree), ``@page-N`` (a leaf page)
    or a key's name (its value lies past the end of a truncated file); the rest is still
    reported."""
    meta, leaves, damage = tree_leaves(native, threads)
    yield from damage
    if meta is not None:
        yield from leaf_values(native, meta.page_size, leaves, threads)

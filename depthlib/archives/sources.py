"""Containers on object storage: which listed objects are containers, their entries
for the plan, and reading entries back on workers.

**Which objects are containers** (:func:`container_kind`, by the object's name,
case-insensitive): ``.tar``, ``.tar.gz`` and ``.tgz`` are tar archives, ``.parquet``
files are tables with an image column, ``.mdb`` and ``.lmdb`` files are LMDB
databases whose values are images (LSUN's ``data.mdb``); any other object is a
loose image, as before. One input prefix may mix them all. An LMDB's lock file
(``lock.mdb``, ``*.lmdb-lock``) holds no data and is left out of the plan. A
``--manifest`` names loose objects only.

**Plan entries** (:func:`plan_entries`, on the driver, while the plan is frozen):
a loose object is its key; every image member of a tar is ``ARCHIVE/MEMBER``
(``ARCHIVE/INNER.tar/MEMBER`` through a tar of tars), every row of a Parquet
file ``FILE/ROW`` and every value of an LMDB ``FILE/KEY`` (``ARCHIVE``, ``FILE``:
the object's path relative to the input prefix), each with a *locator*, a short
JSON list stored beside the key in the plan:

=================================  ==============================================
``["r", ARCHIVE, OFFSET, SIZE]``   plain tar or LMDB: the member's or value's
                                   bytes, one ranged read
``["s", ARCHIVE, MEMBER]``         compressed tar: stream the archive to MEMBER
``["p", FILE, ROW]``               a Parquet row
``["x", REASON, DETAIL]``          a container (or the part of one) that cannot be
                                   read: the key is the container; always a skip
=================================  ==============================================

Indexing reads only tar headers of a plain tar (ranged reads), the footer of a
Parquet file and the B+tree pages of an LMDB (:mod:`depthlib.archives.lmdb`,
ranged reads, no ``lmdb`` package); a compressed tar is decompressed once, streamed. Containers are
indexed in parallel (:func:`plan_entries`). A storage error while
indexing fails the job before the plan is frozen (a rerun indexes again); a
damaged container becomes an ``x`` entry, so it is recorded, never lost.

**Reading** (:func:`read_entries`, on workers) takes the keys and locators of one
decoding task and yields every entry's bytes or skip reason exactly once.
"""

from __future__ import annotations

import collections
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from depthlib import storage
from depthlib.archives import lmdb as lmdb_mod
from depthlib.archives import parquet as parquet_mod
from depthlib.archives import tar as tar_mod

PARQUET_SUFFIXES = (".parquet",)
LMDB_SUFFIXES = (".mdb", ".lmdb")
INDEX_THREADS = 8  # containers indexed at once by the driver (ranged header reads wait on the network)
COALESCE_GAP = 1 << 20  # neighbouring tar members closer than this are fetched by one ranged read ...
COALESCE_SPAN = 64 << 20  # ... of at most this many bytes
LMDB_LEAVES_PER_TASK = 256  # leaf pages of an LMDB indexed by one task (~18K of LSUN's values)
STREAM_BUFFER = 8 << 20  # a streamed (gzip) archive is fetched in reads of this size, not one GET per gzip chunk
_PARQUET_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)

# Skip reasons of containers, beside depthlib.images.SKIP_REASONS.
CONTAINER_SKIP_REASONS = ("corrupt_archive", "truncated_archive", "no_image_column", "corrupt_file")


def container_kind(key: str) -> str | None:
    """``"tar"``, ``"parquet"``, ``"lmdb"``, ``"lmdb_lock"`` (an LMDB's lock file: no data)
    or None (a loose image), from the object's name."""
    low = key.lower()
    if low.endswith(tar_mod.ARCHIVE_SUFFIXES):
        return "tar"
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    name = low.rsplit("/", 1)[-1]
    if name == "lock.mdb" or name.endswith(".lmdb-lock"):
        return "lmdb_lock"
    if low.endswith(LMDB_SUFFIXES):
        return "lmdb"
    return None


def dump_locator(loc: list) -> str:
    return json.dumps(loc, separators=(",", ":"))


def lmdb_parts(uri: str, key: str, s3: storage.S3Config | None = None
               ) -> tuple[list[tuple[str, str]], list[tuple[int, list[int]]]]:
    """(entries for damage above an LMDB's leaves, ``[(page size, leaf pages), ...]``): its
    branch pages are read here; each part's values are then indexed by one task
    (:func:`index_container` with ``part``), so a 3M-image LSUN file is indexed in parallel
    and no task returns millions of entries."""
    with storage.open_input(uri, s3) as f:
        meta, leaves, damage = lmdb_mod.tree_leaves(f)
    entries = [(key, dump_locator(["x", d.reason, d.detail])) for d in damage[:1]]
    if meta is None:
        return entries, []
    return entries, [(meta.page_size, leaves[i:i + LMDB_LEAVES_PER_TASK])
                     for i in range(0, len(leaves), LMDB_LEAVES_PER_TASK)]


def index_container(uri: str, key: str, kind: str, image_column: str = "image",
                    s3: storage.S3Config | None = None,
                    part: tuple[int, list[int]] | None = None) -> list[tuple[str, str]]:
    """``[(entry key, locator JSON), ...]`` of the container ``key`` at ``uri``, in its order
    (of an LMDB with ``part`` from :func:`lmdb_parts`: the values on those leaf pages)."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(entry: str, loc: list) -> None:
        if entry not in seen:
            seen.add(entry)
            out.append((entry, dump_locator(loc)))

    if kind == "parquet":
        try:
            with storage.open_input(uri, s3) as f:
                pf = pq.ParquetFile(f)
                error = parquet_mod.image_column_error(pf.schema_arrow, image_column)
                n_rows = pf.metadata.num_rows
        except _PARQUET_ERRORS as e:
            add(key, ["x", "corrupt_file", f"not a readable Parquet file: {type(e).__name__}: {e}"[:500]])
            return out
        if error:
            add(key, ["x", "no_image_column", error])
            return out
        for row in range(n_rows):
            add(f"{key}/{row}", ["p", key, row])
        return out
    if kind == "lmdb":
        with storage.open_input(uri, s3) as f:
            items = lmdb_mod.walk(f) if part is None else lmdb_mod.leaf_values(f, *part)
            for item in items:
                if isinstance(item, tar_mod.Damage):
                    add(f"{key}/{item.where}" if item.where else key, ["x", item.reason, item.detail])
                else:
                    add(f"{key}/{lmdb_mod.key_name(item.key)}", ["r", key, item.offset, item.size])
        return out
    with storage.open_input(uri, s3) as f:
        compressed = bytes(f.read_at(2, 0)) == tar_mod.GZIP_MAGIC
        if not compressed:
            items = list(tar_mod.index_seekable(tar_mod.Window(f)))
    if compressed:
        with open_stream(uri, s3) as f:
            items = list(tar_mod.walk_stream(f))
    for item in items:
        if isinstance(item, tar_mod.Damage):
            add(f"{key}/{item.where}" if item.where else key, ["x", item.reason, item.detail])
        elif item.offset >= 0:
            add(f"{key}/{item.name}", ["r", key, item.offset, item.size])
        else:
            add(f"{key}/{item.name}", ["s", key, item.name])
    return out


def plan_entries(input_uri: str, manifest: str | None = None, image_column: str = "image",
                 s3: storage.S3Config | None = None, threads: int = INDEX_THREADS) -> Iterator[str | tuple[str, str]]:
    """What the plan holds, in listing order: a loose object's key, or ``(key, locator)``
    for each entry of a container. With a manifest: its keys, as before.

    Containers are indexed ``threads`` at a time by the driver's threads, or, when
    Ray is initialised, by Ray tasks (as many at a time as the cluster has CPUs, at
    least ``threads``): indexing SA-1B's 1000 tars means ~11M ranged header reads,
    which one machine would spend hours waiting on."""
    if manifest is not None:
        for obj in storage.iter_input_keys(input_uri, manifest, s3=s3):
            yield obj.key
        return
    with _Indexer(threads, input_uri, s3) as indexer:
        window: collections.deque = collections.deque()
        for obj in storage.list_objects(input_uri, s3=s3):
            kind = container_kind(obj.key)
            if kind == "lmdb_lock":
                continue
            if kind == "lmdb":
                damage, parts = lmdb_parts(obj.uri, obj.key, indexer.s3)
                # submitted one by one as the window takes them, so the window bounds the jobs in flight
                jobs = itertools.chain([damage], (indexer.submit(obj.uri, obj.key, kind, image_column, part)
                                                  for part in parts))
            else:
                jobs = [None if kind is None else indexer.submit(obj.uri, obj.key, kind, image_column)]
            for job in jobs:
                window.append((obj.key, job))
                while len(window) > 2 * indexer.width or (window and isinstance(window[0][1], (list, type(None)))):
                    yield from _drain(window.popleft(), indexer)
        while window:
            yield from _drain(window.popleft(), indexer)


class _Indexer:
    """Runs :func:`index_container` calls in Ray tasks (when Ray is initialised) or threads."""

    def __init__(self, threads: int, input_uri: str, s3: storage.S3Config | None):
        self.ray = None
        try:
            import ray

            if ray.is_initialized():
                self.ray = ray
        except ImportError:
            pass
        if self.ray is not None:
            # Workers do not see the driver's environment: resolve S3 settings here and ship them.
            self.s3 = s3 or (storage.S3Config.from_env() if storage.is_s3(input_uri) else None)
            self.remote = self.ray.remote(num_cpus=0.5, max_retries=3)(index_container)
            self.width = max(threads, int(self.ray.cluster_resources().get("CPU", 1)))
            self.pool = None
        else:
            self.s3 = s3
            self.pool = ThreadPoolExecutor(threads)
            self.width = threads
        self.pending: dict = {}  # id -> job not yet drained (cancelled if the plan stops early)

    def submit(self, uri: str, key: str, kind: str, image_column: str, part=None):
        if self.pool is not None:
            job = self.pool.submit(index_container, uri, key, kind, image_column, self.s3, part)
        else:
            job = self.remote.remote(uri, key, kind, image_column, self.s3, part)
        self.pending[id(job)] = job
        return job

    def result(self, job) -> list[tuple[str, str]]:
        self.pending.pop(id(job), None)  # and with it the reference that keeps a Ray result stored
        return job.result() if self.pool is not None else self.ray.get(job)

    def __enter__(self) -> "_Indexer":
        return self

    def __exit__(self, *exc) -> None:
        # Not consumed to the end (--limit reached, or an error): drop the indexing still queued.
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        else:
            for job in self.pending.values():
                self.ray.cancel(job, force=False)


def _drain(entry, indexer: _Indexer) -> Iterator[str | tuple[str, str]]:
    key, job = entry  # job: None (a loose object), entries found already, or a running index job
    if job is None:
        yield key
    elif isinstance(job, list):
        yield from job
    else:
        yield from indexer.result(job)


def read_entries(input_uri: str, keys: list[str], locs: list[str | None], image_column: str = "image",
                 s3: storage.S3Config | None = None) -> Iterator[tuple[int, bytes | None, str, str]]:
    """``(index, data, "", "")`` or ``(index, None, reason, detail)`` for every entry of
    ``keys``/``locs`` exactly once; entries of one container are read together (a
    compressed tar in one streamed pass, neighbouring plain-tar members by one ranged
    read, a Parquet row group once)."""
    groups: dict[tuple, list[tuple[int, list]]] = {}
    for i, loc in enumerate(locs):
        parsed = json.loads(loc) if loc else ["f"]
        groups.setdefault((parsed[0], parsed[1] if parsed[0] in "rsp" else i), []).append((i, parsed))
    for (kind, source), entries in groups.items():
        if kind == "f":
            (i, _), = entries
            yield _read_loose(input_uri, keys[i], i, s3)
        elif kind == "x":
            for i, loc in entries:
                yield i, None, loc[1], loc[2]
        elif kind == "r":
            yield from _read_ranges(storage.join(input_uri, source), entries, s3)
        elif kind == "s":
            yield from _read_stream(storage.join(input_uri, source), entries, s3)
        elif kind == "p":
            yield from _read_parquet(storage.join(input_uri, source), entries, image_column, s3)
        else:
            for i, _ in entries:
                yield i, None, "read_error", f"unknown locator kind {kind!r}"


def _error_detail(e: BaseException) -> str:
    return storage.redact(f"{type(e).__name__}: {e}")[:500]


def _read_loose(input_uri: str, key: str, i: int, s3) -> tuple[int, bytes | None, str, str]:
    uri = key if "://" in key or key.startswith("/") else storage.join(input_uri, key)
    try:
        return i, storage.read_bytes(uri, s3), "", ""
    except Exception as e:  # noqa: BLE001 - a missing or unreadable object is a skip, not a crash
        return i, None, "read_error", _error_detail(e)


def _runs(entries: list[tuple[int, list]]) -> Iterator[list[tuple[int, list]]]:
    """Entries in offset order, cut where the next member is far or the read grows too long."""
    run: list[tuple[int, list]] = []
    for entry in sorted(entries, key=lambda e: e[1][2]):
        _, (_, _, offset, size) = entry
        if run:
            start = run[0][1][2]
            end = max(e[1][2] + e[1][3] for e in run)
            if offset - end > COALESCE_GAP or offset + size - start > COALESCE_SPAN:
                yield run
                run = []
        run.append(entry)
    if run:
        yield run


def _read_ranges(uri: str, entries: list[tuple[int, list]], s3) -> Iterator[tuple[int, bytes | None, str, str]]:
    try:
        f = storage.open_input(uri, s3)
    except Exception as e:  # noqa: BLE001
        for i, _ in entries:
            yield i, None, "read_error", _error_detail(e)
        return
    with f:
        for run in _runs(entries):
            start = run[0][1][2]
            end = max(e[1][2] + e[1][3] for e in run)
            try:
                buf = bytes(f.read_at(end - start, start))
            except Exception as e:  # noqa: BLE001
                for i, _ in run:
                    yield i, None, "read_error", _error_detail(e)
                continue
            for i, (_, _, offset, size) in run:
                data = buf[offset - start:offset - start + size]
                if len(data) != size:
                    yield i, None, "truncated", f"the archive ends inside the member ({len(data)} of {size} bytes)"
                else:
                    yield i, data, "", ""


def open_stream(uri: str, s3: storage.S3Config | None = None):
    """A forward-only stream of the object at ``uri`` read in :data:`STREAM_BUFFER` pieces
    (a random-access S3 file would issue one GET per small read of the decompressor); no
    decompression by pyarrow (it would guess it from the name): :mod:`tar` sniffs the bytes."""
    fs, path = storage.filesystem(uri, s3)
    return storage.retry(lambda: fs.open_input_stream(path, compression=None, buffer_size=STREAM_BUFFER))


def _read_stream(uri: str, entries: list[tuple[int, list]], s3) -> Iterator[tuple[int, bytes | None, str, str]]:
    wanted: dict[str, list[int]] = {}
    for i, loc in entries:
        wanted.setdefault(loc[2], []).append(i)
    pending = dict(wanted)
    damage = None
    try:
        with open_stream(uri, s3) as f:
            for item in tar_mod.walk_stream(f, want=set(wanted)):
                if isinstance(item, tar_mod.Damage):
                    damage = item
                    continue
                member, data, why = item
                for i in pending.pop(member.name, ()):
                    yield (i, data, "", "") if data is not None else (i, None, "truncated", why)
    except Exception as e:  # noqa: BLE001 - the network or the object failed mid-stream
        reason, detail = "read_error", _error_detail(e)
    else:
        if damage is not None:
            reason, detail = damage.reason, f"not reached: {damage.detail}"
        else:
            reason, detail = "read_error", "member not found in the archive (did it change since the plan?)"
    for indices in pending.values():
        for i in indices:
            yield i, None, reason, detail


def _read_parquet(uri: str, entries: list[tuple[int, list]], column: str, s3
                  ) -> Iterator[tuple[int, bytes | None, str, str]]:
    by_row: dict[int, list[int]] = {}
    for i, loc in entries:
        by_row.setdefault(int(loc[2]), []).append(i)
    pending = dict(by_row)
    try:
        with storage.open_input(uri, s3) as f:
            pf = pq.ParquetFile(f)
            for row, data, why in parquet_mod.read_rows(pf, column, sorted(by_row)):
                for i in pending.pop(row):
                    yield (i, data, "", "") if data is not None else (i, None, "empty", why)
    except Exception as e:  # noqa: BLE001 - unreadable file or row group: skip what is left
        for indices in pending.values():
            for i in indices:
                yield i, None, "read_error", _error_detail(e)

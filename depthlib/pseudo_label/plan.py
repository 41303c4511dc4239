"""Units of work and their commit records: how the job resumes exactly once.

Layout under ``<output>``::

    _plan/meta.json                 the fingerprint and counts, written last (commits the plan)
    _plan/plan-00000.parquet ...    (pid, key) for every input key; each chunk holds whole
                                    partitions and is one wave of the job; with container
                                    input also ``loc``, where in its container a key's bytes
                                    are (``depthlib.archives.sources``)
    labels/p000012-<digest>.parquet label shards; every file holds keys of ONE partition
    errors/p000012.parquet          skipped keys of partition 12 (key, reason, detail)
    _done/p000012.json              the commit record of partition 12: its files and counts
    samples/*.png                   image beside colourised label, for eyeballing
    _summary/chunk-00000.json       totals of a finished chunk (the summary reads these)
    summary.json

A partition is done iff its ``_done`` record exists; the record is written
only after every file it names is completely written (each write is atomic).
On start, label/error files of partitions without a record are leftovers of an
interrupted run and are deleted, and those partitions are redone from scratch,
so no key is ever labelled twice and a half-written file is never taken as done.
The plan is frozen on the first run so a bucket that changes later cannot
reshuffle keys between partitions.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from depthlib import storage

_PIECE_RE = re.compile(r"^p(\d{6,})(?:-[0-9a-f]+)?\.parquet$")


def labels_dir(output: str) -> str:
    return storage.join(output, "labels")


def errors_dir(output: str) -> str:
    return storage.join(output, "errors")


def done_uri(output: str, pid: int) -> str:
    return storage.join(output, "_done", f"p{pid:06d}.json")


def piece_name(pid: int, digest: str) -> str:
    return f"p{pid:06d}-{digest}.parquet"


def errors_name(pid: int) -> str:
    return f"p{pid:06d}.parquet"


def pid_of_file(name: str) -> int | None:
    m = _PIECE_RE.match(name.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def _table_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


@dataclass(frozen=True)
class PlanMeta:
    """The frozen plan: ``n_keys`` keys in ``n_partitions`` partitions, stored as
    ``n_chunks`` files of ``partitions_per_chunk`` whole partitions each. A chunk
    is also the job's wave: the driver holds one chunk's keys at a time."""

    fingerprint: dict
    n_keys: int
    n_partitions: int
    n_chunks: int
    partitions_per_chunk: int


def chunk_uri(output: str, chunk: int) -> str:
    """The file of plan chunk ``chunk`` under ``output``."""
    return storage.join(output, "_plan", f"plan-{chunk:05d}.parquet")


def frozen_plan(output: str, fingerprint: dict) -> PlanMeta | None:
    """The plan frozen under ``output`` (None if there is none); ``ValueError`` when it
    was made with other settings than ``fingerprint``."""
    meta_uri = storage.join(output, "_plan", "meta.json")
    if not storage.exists(meta_uri):
        return None
    meta = json.loads(storage.read_bytes(meta_uri))
    if meta["fingerprint"] != fingerprint:
        raise ValueError(
            f"{storage.redact(output)} holds a run with other settings {meta['fingerprint']}; this run has "
            f"{fingerprint}. Use another --output, or the same settings to resume.")
    return PlanMeta(**meta)


def create_or_load_plan(output: str, keys: Iterable[str | tuple[str, str]], fingerprint: dict, partition_size: int,
                        partitions_per_chunk: int, limit: int | None = None, dedupe: bool = False) -> PlanMeta:
    """Load the frozen plan of ``output`` if there is one (it must match
    ``fingerprint``), else stream ``keys`` into chunk files and freeze it.

    Keys keep their listing (or manifest) order. A listing has no duplicate
    keys; a manifest may, and ``dedupe`` drops repeats exactly (a set of the
    keys seen: memory grows with the manifest). Otherwise memory is bounded by
    one chunk. ``keys`` is not consumed when a plan exists. An item ``(key, locator)``
    stores the locator beside the key (column ``loc``, read by :func:`chunk_locators`).
    """
    frozen = frozen_plan(output, fingerprint)
    if frozen is not None:
        return frozen
    meta_uri = storage.join(output, "_plan", "meta.json")
    rows_per_chunk = partition_size * partitions_per_chunk
    seen: set[str] = set()
    chunk: list[str] = []
    locs: list[str | None] = []
    n_keys = n_chunks = 0

    def flush() -> None:
        nonlocal n_chunks, chunk, locs
        first = n_chunks * rows_per_chunk
        pids = [(first + i) // partition_size for i in range(len(chunk))]
        columns = {"pid": pa.array(pids, pa.int64()), "key": pa.array(chunk, pa.string())}
        if any(loc is not None for loc in locs):
            columns["loc"] = pa.array(locs, pa.string())
        storage.write_bytes(chunk_uri(output, n_chunks), _table_bytes(pa.table(columns)))
        n_chunks += 1
        chunk, locs = [], []

    for key in keys:
        loc = None
        if isinstance(key, tuple):
            key, loc = key
        if limit is not None and n_keys >= limit:
            break
        if dedupe:
            if key in seen:
                continue
            seen.add(key)
        chunk.append(key)
        locs.append(loc)
        n_keys += 1
        if len(chunk) == rows_per_chunk:
            flush()
    if chunk:
        flush()
    meta = PlanMeta(fingerprint, n_keys, -(-n_keys // partition_size), n_chunks, partitions_per_chunk)
    storage.write_bytes(meta_uri, json.dumps(meta.__dict__, indent=2).encode())
    return meta


def load_chunk(output: str, chunk: int) -> list[tuple[int, list[str]]]:
    """``[(pid, keys), ...]`` of one plan chunk, keys in plan order."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(chunk_uri(output, chunk))))
    parts: dict[int, list[str]] = {}
    for pid, key in zip(table.column("pid").to_pylist(), table.column("key").to_pylist()):
        parts.setdefault(pid, []).append(key)
    return sorted(parts.items())


def chunk_locators(output: str, chunk: int) -> dict[str, str | None] | None:
    """key -> locator of one plan chunk, or None when it has no container entries."""
    pf = pq.ParquetFile(io.BytesIO(storage.read_bytes(chunk_uri(output, chunk))))
    if "loc" not in pf.schema_arrow.names:
        return None
    table = pf.read(columns=["key", "loc"])
    return dict(zip(table.column("key").to_pylist(), table.column("loc").to_pylist()))


def list_done(output: str) -> set[int]:
    """Partition ids with a commit record (from the listing alone, no reads)."""
    done = set()
    for obj in storage.list_objects(storage.join(output, "_done"), suffixes=(".json",)):
        pid = pid_of_file(obj.key.replace(".json", ".parquet"))
        if pid is not None:
            done.add(pid)
    return done


def read_record(output: str, pid: int) -> dict:
    return json.loads(storage.read_bytes(done_uri(output, pid)))


def chunk_summary_uri(output: str, chunk: int) -> str:
    return storage.join(output, "_summary", f"chunk-{chunk:05d}.json")


def remove_uncommitted(output: str, done: set[int]) -> int:
    """Delete label and error files of partitions without a commit record; returns how many."""
    removed = 0
    for d in (labels_dir(output), errors_dir(output)):
        for obj in storage.list_objects(d, suffixes=(".parquet",)):
            pid = pid_of_file(obj.key)
            if pid is not None and pid not in done:
                storage.delete(obj.uri)
                removed += 1
    return removed


def commit_partition(output: str, pid: int, label_files: list[str], n_labels: int,
                     errors: list[dict], stats: dict) -> dict:
    """Write partition ``pid``'s error table (if any) and then its commit record."""
    err_file = None
    if errors:
        err_file = errors_name(pid)
        table = pa.table({
            "key": pa.array([e["key"] for e in errors], pa.string()),
            "reason": pa.array([e["reason"] for e in errors], pa.string()),
            "detail": pa.array([e["detail"] for e in errors], pa.string()),
            "pid": pa.array([pid] * len(errors), pa.int64()),
        })
        storage.write_bytes(storage.join(errors_dir(output), err_file), _table_bytes(table))
    reasons: dict[str, int] = {}
    for e in errors:
        reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    record = {"pid": pid, "labels": sorted(label_files), "errors": err_file, "n_labels": n_labels,
              "n_errors": len(errors), "skipped_by_reason": reasons, **stats}
    storage.write_bytes(done_uri(output, pid), json.dumps(record, sort_keys=True).encode())
    return record

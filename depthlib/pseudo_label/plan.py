"""Units of work and their commit records: how the job resumes exactly once.

Layout under ``<output>``::

    _plan/meta.json                 the fingerprint and counts, written last (commits the plan)
    _plan/plan-00000.parquet ...    (pid, key) for every input key, sorted by key
    labels/p000012-<digest>.parquet label shards; every file holds keys of ONE partition
    errors/p000012.parquet          skipped keys of partition 12 (key, reason, detail)
    _done/p000012.json              the commit record of partition 12: its files and counts
    samples/*.png                   image beside colourised label, for eyeballing
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
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from depthlib import storage

PLAN_CHUNK_ROWS = 1_000_000
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


@dataclass
class Plan:
    """Every input key with its partition id; ``partitions[pid]`` lists its keys in order."""

    partitions: list[list[str]]
    fingerprint: dict

    @property
    def n_keys(self) -> int:
        return sum(len(p) for p in self.partitions)


def _chunks(keys: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for k in keys:
        chunk.append(k)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def create_or_load_plan(output: str, keys: Iterable[str] | None, fingerprint: dict, partition_size: int,
                        limit: int | None = None) -> Plan:
    """Load the frozen plan of ``output`` if there is one (it must match
    ``fingerprint``), else build it from ``keys`` (sorted, de-duplicated,
    cut to ``limit``) and freeze it. ``keys`` may be ``None`` when a plan exists."""
    meta_uri = storage.join(output, "_plan", "meta.json")
    if storage.exists(meta_uri):
        meta = json.loads(storage.read_bytes(meta_uri))
        if meta["fingerprint"] != fingerprint:
            raise ValueError(
                f"{output} holds a run with other settings {meta['fingerprint']}; this run has {fingerprint}. "
                "Use another --output, or the same settings to resume.")
        rows = []
        for i in range(meta["n_chunks"]):
            t = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(output, "_plan", f"plan-{i:05d}.parquet"))))
            rows.append(t)
        table = pa.concat_tables(rows) if rows else pa.table({"pid": pa.array([], pa.int64()), "key": pa.array([], pa.string())})
        parts: list[list[str]] = [[] for _ in range(meta["n_partitions"])]
        for pid, key in zip(table.column("pid").to_pylist(), table.column("key").to_pylist()):
            parts[pid].append(key)
        return Plan(parts, fingerprint)
    if keys is None:
        raise ValueError(f"no plan under {output} and no keys given")
    ordered = sorted(set(keys))
    if limit is not None:
        ordered = ordered[:limit]
    parts = list(_chunks(ordered, partition_size))
    n_chunks = 0
    for n_chunks, start in enumerate(range(0, len(ordered), PLAN_CHUNK_ROWS), start=1):
        sl = ordered[start:start + PLAN_CHUNK_ROWS]
        pids = [(start + i) // partition_size for i in range(len(sl))]
        storage.write_bytes(storage.join(output, "_plan", f"plan-{n_chunks - 1:05d}.parquet"),
                            _table_bytes(pa.table({"pid": pa.array(pids, pa.int64()), "key": pa.array(sl, pa.string())})))
    meta = {"fingerprint": fingerprint, "n_keys": len(ordered), "n_partitions": len(parts), "n_chunks": n_chunks}
    storage.write_bytes(meta_uri, json.dumps(meta, indent=2).encode())
    return Plan(parts, fingerprint)


def load_done(output: str) -> dict[int, dict]:
    """Commit records of finished partitions, by pid."""
    done = {}
    for obj in storage.list_objects(storage.join(output, "_done"), suffixes=(".json",)):
        rec = json.loads(storage.read_bytes(obj.uri))
        done[int(rec["pid"])] = rec
    return done


def remove_uncommitted(output: str, done: dict[int, dict]) -> int:
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

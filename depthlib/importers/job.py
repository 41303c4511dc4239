"""The import job: list the input, pair frames, convert them in parallel Ray tasks, write shards.

Entry script: ``ray_jobs/import_dataset.py``. :func:`prepare` runs before Ray
starts (so a bad setting or an empty input is one error line): it checks the
settings, lists the input (folders and archives, :mod:`.sources`), pairs
images with labels (the dataset module's ``classify``), applies ``--split``
and ``--limit`` and freezes the result as the plan. :func:`run_import` then
converts the plan's partitions in Ray tasks (one CPU each). Output layout::

    _plan/frames.parquet        every frame to import: pid, key, its files' sources (frozen)
    _plan/meta.json             the settings and counts; written last (commits the plan)
    shards/p000012-00000.parquet   partition 12's rows (kind "synthetic")
    errors/p000012.parquet      partition 12's skipped frames: key, reason, detail
    _done/p000012.json          partition 12's record, written after its files
    summary.json                frames seen, written, skipped by reason

Why it resumes exactly once: a partition is done iff its ``_done`` record
exists, and the record is written after everything it names. A partition
without one is redone whole; its files have deterministic names (frames in
plan order, shards cut at the same sizes), so the redo overwrites what an
interrupted attempt left, and any higher-numbered leftover is deleted. The
plan is frozen on the first run, so a re-run neither re-lists the archives
nor moves a frame to another partition. Keys are the image's path relative
to the input as if every archive were extracted where it lies.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Literal, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from depthlib import __version__, shards, storage
from depthlib.images import ImageDecodeError, decode_image
from depthlib.importers import DATASETS
from depthlib.importers.base import FrameError, PlannedFrame, check_label, pair_files
from depthlib.importers.sources import ArchiveError, Source, _ArchiveFiles, list_tree, read_source


class ImportInputError(ValueError):
    """A setting or input the job cannot start with (the entry script exits 2 with it)."""


@dataclass(kw_only=True)
class ImportConfig:
    """Import one of the paper's datasets, as shipped (folders or archives), into shards."""

    dataset: Literal["hypersim", "vkitti2", "tartanair", "blendedmvs", "irs"] = field(metadata={
        "help": "which dataset the input holds"})
    input: str = field(metadata={"help": "URI of the dataset as downloaded: an extracted tree and/or its "
                                         "archives (.zip, .tar), local, s3:// or gs://"})
    output: str = field(metadata={"help": "URI where shards/, errors/ and summary.json are written"})
    split: Optional[str] = field(default=None, metadata={
        "help": "hypersim: the official metadata_images_split_scene_v1.csv (frames of --subset included in "
                "the release); any dataset: a text file with an image path per line (first token; a frame "
                "is kept when a line's path ends with its key, e.g. Depth-Anything-V2's split lists)"})
    subset: Literal["train", "val", "test"] = field(default="train", metadata={
        "help": "hypersim --split: which partition to import"})
    hypersim_camera_parameters: Optional[str] = field(default=None, metadata={
        "help": "hypersim: metadata_camera_parameters.csv; planar depth then uses each scene's M_cam_from_uv "
                "(else the nominal 886.81 px focal at 1024x768, recorded in the provenance)"})
    limit: Optional[int] = field(default=None, metadata={"help": "import only the first N frames (key order)"})
    frames_per_task: int = field(default=128, metadata={
        "help": "frames per Ray task: the unit of work, retry and resume"})
    shard_target_mb: float = field(default=256.0, metadata={"help": "approximate size of one shard file, MiB"})

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        if not self.input or not self.output:
            raise ValueError("--input and --output are required")
        if self.hypersim_camera_parameters and self.dataset != "hypersim":
            raise ValueError("--hypersim-camera-parameters is for --dataset hypersim only")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.frames_per_task < 1:
            raise ValueError(f"--frames-per-task must be >= 1, got {self.frames_per_task}")
        if not self.shard_target_mb > 0:
            raise ValueError(f"--shard-target-mb must be > 0, got {self.shard_target_mb}")
        if storage.join(self.input, "") == storage.join(self.output, ""):
            raise ValueError("--output must differ from --input")

    def fingerprint(self) -> dict:
        """The settings that decide which frames form which partition; a re-run must match them."""
        keys = ("dataset", "input", "split", "subset", "hypersim_camera_parameters", "limit", "frames_per_task")
        return {k: getattr(self, k) for k in keys}


def _s3_for(config: ImportConfig) -> storage.S3Config | None:
    uris = (config.input, config.output, config.split or "", config.hypersim_camera_parameters or "")
    return storage.S3Config.from_env() if any(storage.is_s3(u) for u in uris) else None


def _meta_uri(output: str) -> str:
    return storage.join(output, "_plan", "meta.json")


def _frames_uri(output: str) -> str:
    return storage.join(output, "_plan", "frames.parquet")


def _done_uri(output: str, pid: int) -> str:
    return storage.join(output, "_done", f"p{pid:06d}.json")


@dataclass
class Plan:
    """The frozen list of frames, in partitions of ``frames_per_task``."""

    meta: dict
    frames: list[PlannedFrame]
    options: dict
    """What tasks need besides the frames (Hypersim's cameras)."""

    @property
    def n_partitions(self) -> int:
        return -(-len(self.frames) // self.meta["settings"]["frames_per_task"])

    def partition(self, pid: int) -> list[PlannedFrame]:
        n = self.meta["settings"]["frames_per_task"]
        return self.frames[pid * n:(pid + 1) * n]


def _read_text(uri: str, what: str) -> str:
    try:
        return storage.read_bytes(uri).decode("utf-8-sig")
    except (storage.StorageError, OSError, UnicodeDecodeError) as e:
        raise ImportInputError(f"{what} {storage.redact(uri)} cannot be read: {storage.redact(e)}") from None


def list_split(text: str):
    """A text split list (first token per line is an image path) -> predicate(key, identity)
    keeping frames whose key is a trailing part of a listed path."""
    suffixes = set()
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        pieces = parts[0].replace("\\", "/").strip("/").split("/")
        suffixes.update("/".join(pieces[i:]) for i in range(len(pieces)))
    if not suffixes:
        raise ValueError("the split list names no file")
    return lambda key, identity: key in suffixes


def _options(config: ImportConfig) -> dict:
    if config.hypersim_camera_parameters is None:
        return {}
    from depthlib.importers.hypersim import load_camera_parameters

    text = _read_text(config.hypersim_camera_parameters, "--hypersim-camera-parameters")
    try:
        return {"hypersim_cameras": load_camera_parameters(text)}
    except ValueError as e:
        raise ImportInputError(f"--hypersim-camera-parameters: {e}") from None


def _write_plan(output: str, meta: dict, frames: list[PlannedFrame], frames_per_task: int) -> None:
    table = pa.table({
        "pid": pa.array([i // frames_per_task for i in range(len(frames))], pa.int64()),
        "key": pa.array([f.key for f in frames], pa.string()),
        "image": pa.array([json.dumps(f.image) for f in frames], pa.string()),
        "depth": pa.array([None if f.depth is None else json.dumps(f.depth) for f in frames], pa.string()),
    })
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(_frames_uri(output), buf.getvalue())
    storage.write_bytes(_meta_uri(output), json.dumps(meta, indent=2, sort_keys=True).encode())


def _load_plan(output: str, meta: dict, options: dict) -> Plan:
    table = pq.read_table(io.BytesIO(storage.read_bytes(_frames_uri(output))))
    frames = [PlannedFrame(k, json.loads(i), None if d is None else json.loads(d))
              for k, i, d in zip(table.column("key").to_pylist(), table.column("image").to_pylist(),
                                 table.column("depth").to_pylist())]
    return Plan(meta, frames, options)


def prepare(config: ImportConfig, log=print) -> Plan:
    """Check the settings and inputs and freeze (or load) the plan; no Ray needed.

    Raises :class:`ImportInputError` for an output holding another run, an
    unreadable split or camera file, an input that cannot be listed, or an
    input with no frame of ``config.dataset``.
    """
    s3 = _s3_for(config)
    if s3 is not None:
        storage.set_default_s3(s3)
    options = _options(config)
    want = config.fingerprint()
    meta_uri = _meta_uri(config.output)
    try:
        have = json.loads(storage.read_bytes(meta_uri)) if storage.exists(meta_uri) else None
    except (storage.StorageError, OSError, ValueError) as e:
        raise ImportInputError(f"--output {storage.redact(config.output)} cannot be read: "
                               f"{storage.redact(e)}") from None
    if have is not None:
        if have["settings"] != want:
            raise ImportInputError(f"{storage.redact(config.output)} holds an import with other settings "
                                   f"{have['settings']}; use another --output, or the same settings to resume")
        return _load_plan(config.output, have, options)

    module = DATASETS[config.dataset]
    keep = None
    if config.split:
        text = _read_text(config.split, "--split")
        try:
            own = hasattr(module, "load_split") and module.SPLIT_HEADER in text.split("\n", 1)[0]
            keep = module.load_split(text, config.subset) if own else list_split(text)
        except ValueError as e:
            raise ImportInputError(f"--split {storage.redact(config.split)}: {e}") from None
    t0 = time.time()
    try:
        listed = ((path, src.to_dict()) for path, src in
                  list_tree(config.input, lambda p: module.classify(p) is not None, s3=s3))
        frames, orphans = pair_files(listed, module.classify)
    except ArchiveError as e:
        raise ImportInputError(f"--input: {e}") from None
    except storage.StorageError as e:
        raise ImportInputError(f"--input {storage.redact(config.input)} cannot be listed: {e}") from None
    n_listed = len(frames)
    if keep is not None:
        frames = [f for f in frames if keep(f.key, f.identity)]
    dropped_by_split = n_listed - len(frames)
    if config.limit is not None:
        frames = frames[:config.limit]
    if not frames:
        where = f"--input {storage.redact(config.input)}"
        raise ImportInputError(
            f"{where} holds no {config.dataset} frame" + (f" in the split ({n_listed} without it)" if keep else "")
            + f" (expected {module.LAYOUT}, extracted or in archives)")
    meta = {"settings": want, "n_frames": len(frames), "frames_listed": n_listed,
            "dropped_by_split": dropped_by_split, "labels_without_image": orphans,
            "listing_s": round(time.time() - t0, 3)}
    _write_plan(config.output, meta, frames, config.frames_per_task)
    log(f"[import] {config.dataset}: {n_listed} frames listed, {len(frames)} to import "
        f"({-(-len(frames) // config.frames_per_task)} tasks); {orphans} labels without an image")
    return Plan(meta, frames, options)


# --------------------------------------------------------------------------- one task


def _read(src: dict, files: _ArchiveFiles, key: str, what: str) -> bytes:
    try:
        return read_source(Source.from_dict(src), files)
    except storage.ObjectNotFoundError as e:
        raise FrameError(f"missing_{what}", f"{key}: {e}"[:500]) from None
    except (storage.StorageError, OSError, EOFError, ValueError) as e:
        raise FrameError("read_error", storage.redact(f"{key} ({what}): {type(e).__name__}: {e}")[:500]) from None


def import_frame(dataset: str, frame: PlannedFrame, options: dict, files: _ArchiveFiles) -> dict:
    """One frame -> one shard row; raises :class:`FrameError` with the reason it cannot be imported."""
    module = DATASETS[dataset]
    key = frame.key
    if frame.depth is None:
        raise FrameError("missing_depth", f"{key}: no label file pairs with this image")
    image_bytes = _read(frame.image, files, key, "image")
    try:
        image = decode_image(image_bytes)
    except ImageDecodeError as e:
        raise FrameError(f"image_{e.reason}", f"{key}: {e.detail}"[:500]) from None
    depth_bytes = _read(frame.depth, files, key, "depth")
    label = check_label(module.convert(image.shape[:2], depth_bytes, key, options), image.shape[:2], key)
    provenance = {"dataset": dataset, "importer": f"depthlib.importers.{dataset}", "depthlib": __version__,
                  "source_docs": module.SOURCE, **label.provenance}
    return shards.make_row(key, image_bytes, None, label.depth, depth_type=label.depth_type, kind="synthetic",
                           valid=label.valid, image_size=image.shape[:2], provenance=provenance)


def _errors_uri(output: str, pid: int) -> str:
    return storage.join(output, "errors", f"p{pid:06d}.parquet")


def import_partition(config: ImportConfig, pid: int, frames: list[PlannedFrame], options: dict,
                     s3: storage.S3Config | None = None) -> dict:
    """Import one partition and commit it; a committed partition is only read back.

    A plain function (the job wraps it in a Ray task), testable without a cluster.
    """
    storage.set_default_s3(s3)
    marker = _done_uri(config.output, pid)
    if storage.exists(marker):
        return {**json.loads(storage.read_bytes(marker)), "resumed": True}
    t0 = time.perf_counter()
    shard_dir = storage.join(config.output, "shards")
    prefix = f"p{pid:06d}"
    errors: list[dict] = []
    written = 0
    files = _ArchiveFiles()
    try:
        with shards.ShardWriter(shard_dir, target_bytes=int(config.shard_target_mb * 2**20),
                                name_prefix=prefix) as writer:
            for frame in frames:
                try:
                    writer.add(import_frame(config.dataset, frame, options, files))
                    written += 1
                except FrameError as e:
                    errors.append({"key": frame.key, "reason": e.reason, "detail": storage.redact(e.detail)})
                except Exception as e:  # noqa: BLE001 - a frame no reader foresaw: recorded, never fatal
                    reason = "label_unencodable" if isinstance(e, ValueError) else "convert_error"
                    errors.append({"key": frame.key, "reason": reason,
                                   "detail": storage.redact(f"{frame.key}: {type(e).__name__}: {e}")[:500]})
    finally:
        files.close()
    outputs = writer.written
    _drop_stale(shard_dir, prefix, len(outputs))
    if errors:
        table = pa.table({"key": [e["key"] for e in errors], "reason": [e["reason"] for e in errors],
                          "detail": [e["detail"] for e in errors], "pid": [pid] * len(errors)})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        storage.write_bytes(_errors_uri(config.output, pid), buf.getvalue())
    else:
        storage.delete(_errors_uri(config.output, pid))  # an interrupted attempt's, if any
    record = {"pid": pid, "frames": len(frames), "written": written, "skipped": len(errors),
              "skipped_by_reason": dict(Counter(e["reason"] for e in errors)),
              "shards": [u.rsplit("/", 1)[-1] for u in outputs], "seconds": round(time.perf_counter() - t0, 3)}
    storage.write_bytes(marker, json.dumps(record, sort_keys=True).encode())  # last: commits the partition
    return {**record, "resumed": False}


def _drop_stale(shard_dir: str, prefix: str, first: int) -> None:
    """Delete ``{prefix}-{n:05d}.parquet`` for n >= ``first``: an interrupted attempt's extra files."""
    n = first
    while True:
        uri = storage.join(shard_dir, f"{prefix}-{n:05d}.parquet")
        if not storage.exists(uri):
            return
        storage.delete(uri)
        n += 1


# --------------------------------------------------------------------------- the job


def run_import(config: ImportConfig, plan: Plan | None = None, log=print) -> dict:
    """Import (or resume importing) ``config.input``; returns the summary (summary.json's content).

    Uses the Ray cluster this process is connected to. ``plan`` is
    :func:`prepare`'s (made here when not given).
    """
    import ray

    t0 = time.time()
    plan = plan or prepare(config, log)
    s3 = _s3_for(config)
    out = config.output
    done = set()
    for obj in storage.list_objects(storage.join(out, "_done"), suffixes=(".json",)):
        name = obj.key.rsplit("/", 1)[-1]
        if name.startswith("p") and name[1:-5].isdigit():
            done.add(int(name[1:-5]))
    done &= set(range(plan.n_partitions))
    with ThreadPoolExecutor(16) as pool:
        records = list(pool.map(lambda pid: json.loads(storage.read_bytes(_done_uri(out, pid))), sorted(done)))
    pending = [pid for pid in range(plan.n_partitions) if pid not in done]
    log(f"[import] {plan.meta['n_frames']} frames in {plan.n_partitions} tasks; {len(done)} done before, "
        f"{len(pending)} to run")
    remote = ray.remote(num_cpus=1, max_retries=3, retry_exceptions=True)(import_partition)
    options_ref = ray.put(plan.options)
    refs = [remote.remote(config, pid, plan.partition(pid), options_ref, s3) for pid in pending]
    fresh = []
    next_report, t_run = 0.1, time.time()
    while refs:
        ready, refs = ray.wait(refs, num_returns=min(len(refs), 16), timeout=30.0)
        fresh.extend(ray.get(ready))
        if pending and (len(fresh) / len(pending) >= next_report or not refs):
            log(f"[import] {len(fresh)}/{len(pending)} tasks, {time.time() - t_run:.0f}s")
            next_report = len(fresh) / len(pending) + 0.1
    records += fresh
    reasons: Counter = Counter()
    for r in records:
        reasons.update(r["skipped_by_reason"])
    written_now = sum(r["written"] for r in fresh if not r.get("resumed"))
    summary = {
        "dataset": config.dataset, "depth_type": DATASETS[config.dataset].DEPTH_TYPE, "kind": "synthetic",
        "input": storage.redact(config.input), "output": storage.redact(out),
        "frames_seen": plan.meta["n_frames"],
        "written": sum(r["written"] for r in records), "skipped": sum(r["skipped"] for r in records),
        "skipped_by_reason": dict(sorted(reasons.items())),
        "frames_listed": plan.meta["frames_listed"], "dropped_by_split": plan.meta["dropped_by_split"],
        "labels_without_image": plan.meta["labels_without_image"],
        "shards": sum(len(r["shards"]) for r in records), "tasks": plan.n_partitions,
        "this_run": {"tasks_run": len(pending), "tasks_resumed": len(done), "written": written_now,
                     "seconds": round(time.time() - t0, 3),
                     "frames_per_second": round(written_now / max(time.time() - t_run, 1e-9), 2)},
        "source_docs": DATASETS[config.dataset].SOURCE,
        "config": json.loads(storage.redact(json.dumps(asdict(config)))),
    }
    storage.write_bytes(storage.join(out, "summary.json"), json.dumps(summary, indent=2).encode())
    log(f"[import] done: {summary['written']} written, {summary['skipped']} skipped {summary['skipped_by_reason']}")
    return summary

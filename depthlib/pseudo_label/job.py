"""The pseudo-labelling job: plan, pipeline, commit, summary.

``run_pseudo_label(config)`` expects Ray to be initialised. It freezes the
plan (``plan.py``), deletes leftovers of an interrupted run, streams the
pending partitions through Ray Data (CPU decode tasks -> teacher actor pool
-> shard-writing tasks), commits each partition when records cover all its
keys, and writes ``summary.json``. The plan's chunks are processed one
after another (waves), so the driver holds one chunk's keys at a time however
large the bucket. Re-running with the same arguments resumes; a finished run
re-run does nothing but rewrite the summary.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import ray

from depthlib import __version__, storage
from depthlib.pseudo_label import plan as plan_mod
from depthlib.pseudo_label.config import PseudoLabelConfig
from depthlib.pseudo_label.stages import DecodePartition, LabelActor, WritePieces

DECODE_TASK_MEMORY = 1024 * 2**20
MAX_ROUNDS = 3  # a partition whose pieces conflict (a retried task regrouped rows) is redone, at most this often


@dataclass
class _PartitionProgress:
    expected: set[str]
    covered: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    n_labels: int = 0
    errors: list[dict] = field(default_factory=list)
    label_bytes: int = 0
    conflict: bool = False


def _actor_resources(config: PseudoLabelConfig) -> tuple[float, float, int]:
    """(gpus, cpus, torch threads) per labelling actor; threads 0 means all cores of the actor's node."""
    resources = ray.cluster_resources()
    gpus = config.gpus_per_actor
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    cpus = config.cpus_per_actor
    if cpus is None:
        # A CPU actor gets every core but one of its node (left for decoding); a GPU actor needs one.
        cpus = 1.0 if gpus > 0 else max(1.0, node_cpus - 1)
    # A CPU actor runs torch on every core of its node (decoding is a few percent
    # of the work); a GPU actor only stages batches, and Ray's 1 thread is enough.
    threads = 0 if gpus == 0 else 1
    return gpus, cpus, threads


def _build_dataset(config: PseudoLabelConfig, partitions: list[tuple[int, list[str]]], sample_every: int):
    gpus, cpus, threads = _actor_resources(config)
    # Workers do not see the driver's environment: resolve S3 settings here and ship them.
    s3 = storage.S3Config.from_env() if any(storage.is_s3(u) for u in (
        config.input, config.output, config.checkpoint, config.manifest or "")) else None
    items = [{"pid": pid, "keys": keys} for pid, keys in partitions]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # The memory hint reserves room for a partition's decoded float32 groups, and
    # (since fused operators need identical remote args) keeps Ray Data from
    # fusing decoding into the labelling actor, where it would run serially
    # with inference instead of on separate CPU tasks.
    ds = ds.map_batches(DecodePartition(config.input, config.input_size, config.max_pixels, config.batch_size, s3),
                        batch_size=1, batch_format="numpy", num_cpus=1, memory=DECODE_TASK_MEMORY)
    ds = ds.map_batches(
        LabelActor,
        fn_constructor_kwargs=dict(checkpoint=config.checkpoint, encoder=config.encoder, metric=config.metric,
                                   max_depth=config.max_depth, dtype=config.dtype, batch_size=config.batch_size,
                                   num_threads=threads, s3=s3),
        compute=ray.data.ActorPoolStrategy(min_size=config.min_actors, max_size=config.max_actors),
        batch_size=None, batch_format="numpy", zero_copy_batch=True, num_gpus=gpus, num_cpus=cpus)
    provenance = {"teacher": config.teacher_id, "checkpoint": storage.redact(config.checkpoint),
                  "encoder": config.encoder, "input_size": config.input_size, "dtype": config.dtype,
                  "depthlib": __version__}
    writer = WritePieces(config.output, provenance, "metric_depth" if config.metric else "disparity",
                         sample_every, s3)
    return ds.map_batches(writer, batch_size=None, batch_format="numpy", num_cpus=0.5)


def _records(ds):
    """Piece records as they are produced. Without prefetching, so a partition is
    committed as soon as its last piece is written, not one block later."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        for i in range(len(batch["pid"])):
            yield {k: v[i] for k, v in batch.items()}


def _absorb(progress: _PartitionProgress, rec: dict, output: str) -> None:
    """Add one piece record to its partition's progress, dropping exact duplicates from retried tasks."""
    keys = set(json.loads(rec["keys"]))
    overlap = keys & progress.covered
    if overlap:
        if rec["file"] and rec["file"] in progress.files:
            return  # the same piece written twice under the same name: one file, nothing to add
        if overlap == keys:
            if rec["file"]:  # a complete duplicate under another name: remove the extra file
                storage.delete(storage.join(plan_mod.labels_dir(output), rec["file"]))
            return
        progress.conflict = True
    progress.covered |= keys
    if rec["file"]:
        progress.files.add(rec["file"])
    progress.n_labels += int(rec["n_labels"])
    progress.errors.extend(json.loads(rec["errors"]))
    progress.label_bytes += int(rec["label_bytes"])


def _discard(output: str, progress: _PartitionProgress) -> None:
    for f in progress.files:
        storage.delete(storage.join(plan_mod.labels_dir(output), f))


def _run_wave(config: PseudoLabelConfig, pending: dict[int, list[str]], sample_every: int, log) -> dict[int, dict]:
    """Label and commit the ``pending`` partitions (pid -> keys); returns their commit records."""
    out = config.output
    records: dict[int, dict] = {}
    todo = dict(pending)
    for round_ in range(MAX_ROUNDS):
        if not todo:
            break
        progress = {pid: _PartitionProgress(set(keys)) for pid, keys in todo.items()}
        ds = _build_dataset(config, sorted(todo.items()), sample_every)
        log_every, t_wave = max(1, len(todo) // 10), time.time()
        for rec in _records(ds):
            pid = int(rec["pid"])
            p = progress[pid]
            _absorb(p, rec, out)
            if not p.conflict and p.covered == p.expected:
                records[pid] = plan_mod.commit_partition(
                    out, pid, sorted(p.files), p.n_labels, p.errors,
                    {"label_bytes": p.label_bytes, "committed_at": time.time()})
                del progress[pid]
                if len(records) % log_every == 0:
                    log(f"[pseudo-label]   {len(records)}/{len(pending)} partitions of this wave committed "
                        f"({time.time() - t_wave:.0f}s)")
        for p in progress.values():  # conflicting or incomplete: redo from scratch
            _discard(out, p)
        todo = {pid: todo[pid] for pid in progress}
        if todo:
            log(f"[pseudo-label] round {round_ + 1}: {len(todo)} partitions to redo")
    if todo:
        raise RuntimeError(f"partitions {sorted(todo)[:10]} could not be committed after {MAX_ROUNDS} rounds")
    return records


def _chunk_totals(output: str, pids: list[int], fresh: dict[int, dict]) -> dict:
    """Totals of a finished chunk, from this run's records and, for partitions
    committed by an earlier run, their stored records."""
    totals = {"labelled": 0, "skipped": 0, "label_bytes": 0, "skipped_by_reason": Counter()}
    for pid in pids:
        rec = fresh.get(pid) or plan_mod.read_record(output, pid)
        totals["labelled"] += rec["n_labels"]
        totals["skipped"] += rec["n_errors"]
        totals["label_bytes"] += rec.get("label_bytes", 0)
        totals["skipped_by_reason"].update(rec["skipped_by_reason"])
    totals["skipped_by_reason"] = dict(totals["skipped_by_reason"])
    return totals


def run_pseudo_label(config: PseudoLabelConfig, log=print) -> dict:
    t0 = time.time()
    out = config.output
    # Lazy: the input is only listed when no plan is frozen yet.
    keys = (o.key for o in storage.iter_input_keys(config.input, config.manifest))
    plan = plan_mod.create_or_load_plan(out, keys, config.plan_fingerprint(), config.partition_size,
                                        config.partitions_per_wave, config.limit,
                                        dedupe=config.manifest is not None)
    done = plan_mod.list_done(out)
    resumed = len(done)
    removed = plan_mod.remove_uncommitted(out, done)
    log(f"[pseudo-label] {plan.n_keys} keys in {plan.n_partitions} partitions ({plan.n_chunks} waves); "
        f"{resumed} already done, {plan.n_partitions - resumed} to label; {removed} uncommitted files removed")
    sample_every = max(1, plan.n_keys // max(1, config.samples)) if config.samples else 2**32

    labelled_now = 0
    t_pipeline = time.time()
    totals = {"labelled": 0, "skipped": 0, "label_bytes": 0, "skipped_by_reason": Counter()}
    for chunk in range(plan.n_chunks):
        summary_uri = plan_mod.chunk_summary_uri(out, chunk)
        if storage.exists(summary_uri):
            chunk_totals = json.loads(storage.read_bytes(summary_uri))
        else:
            parts = plan_mod.load_chunk(out, chunk)
            pending = {pid: keys for pid, keys in parts if pid not in done}
            fresh = _run_wave(config, pending, sample_every, log) if pending else {}
            done |= set(fresh)
            labelled_now += sum(r["n_labels"] for r in fresh.values())
            chunk_totals = _chunk_totals(out, [pid for pid, _ in parts], fresh)
            storage.write_bytes(summary_uri, json.dumps(chunk_totals).encode())
            if pending:
                log(f"[pseudo-label] wave {chunk + 1}/{plan.n_chunks}: committed {len(done)}/{plan.n_partitions} "
                    f"partitions ({time.time() - t_pipeline:.0f}s)")
        for k in ("labelled", "skipped", "label_bytes"):
            totals[k] += chunk_totals[k]
        totals["skipped_by_reason"].update(chunk_totals["skipped_by_reason"])

    wall = time.time() - t0
    summary = {
        "input": storage.redact(config.input), "output": storage.redact(out), "teacher": config.teacher_id,
        "encoder": config.encoder, "images_seen": plan.n_keys,
        "labelled": totals["labelled"], "skipped": totals["skipped"],
        "skipped_by_reason": dict(sorted(totals["skipped_by_reason"].items())),
        "label_bytes": totals["label_bytes"],
        "this_run": {"labelled": labelled_now, "wall_s": round(wall, 3),
                     "images_per_s": round(labelled_now / max(time.time() - t_pipeline, 1e-9), 3),
                     "partitions_resumed": resumed},
        "partitions": plan.n_partitions, "config": json.loads(_config_json(config)),
    }
    storage.write_bytes(storage.join(out, "summary.json"), json.dumps(summary, indent=2).encode())
    log(f"[pseudo-label] done: {summary['labelled']} labelled, {summary['skipped']} skipped "
        f"{summary['skipped_by_reason']}, {labelled_now} this run in {wall:.1f}s "
        f"({summary['this_run']['images_per_s']} img/s)")
    return summary


def _config_json(config: PseudoLabelConfig) -> str:
    from depthlib.cli import config_to_json

    return storage.redact(config_to_json(config))

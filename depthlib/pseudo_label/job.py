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
from depthlib.archives import plan_entries
from depthlib.pseudo_label import plan as plan_mod
from depthlib.pseudo_label.config import PseudoLabelConfig
from depthlib.pseudo_label.stages import PASSES_PER_CALL, DecodePartition, WritePieces, model_stage_args

MAX_ROUNDS = 3  # a partition whose pieces conflict (a retried task regrouped rows) is redone, at most this often

# Memory Ray reserves per task: Ray Data warns unless it is 1.25x the task's peak. Measured
# with benchmarks/pseudo_label.py, a decoding task of 32 keys of 1-2 MP JPEGs peaks at
# 630-670 MiB with uint8 inputs and 1.1-1.2 GiB with float32 ones: ~550 MiB of Python, torch,
# Pillow and pyarrow, then about 4x the block's model inputs (held as numpy, Arrow and
# serialised copies) and the source bytes. Decoding JPEGs through torchvision adds ~170 MiB
# (its libraries; 820-840 MiB peaks measured with uint8 inputs).
TASK_BASE_MEMORY = 768 * 2**20
DECODER_MEMORY = 160 * 2**20
BLOCK_COPIES = 5
SOURCE_IMAGE_BYTES = 2 * 2**20  # a 1-2 MP JPEG and its share of a decode in flight


def model_pixels(input_size: int) -> int:
    """Pixels of a typical model input: a 4:3 photo at ``input_size`` (518 -> 518 x 686),
    with room for wider ones."""
    return int(1.5 * input_size * input_size)


def stage_memory(config: PseudoLabelConfig) -> dict[str, int]:
    """Heap bytes to reserve per decoding task and per writing task: what the blocks they
    hold take (model inputs or labels, source bytes) on top of a worker's own."""
    px = model_pixels(config.input_size)
    input_bytes = px * (3 if config.preprocessing == "fast" else 12)
    rows_per_write = config.batch_size * PASSES_PER_CALL
    return {
        "decode": TASK_BASE_MEMORY + DECODER_MEMORY
        + config.keys_per_task * (BLOCK_COPIES * input_bytes + SOURCE_IMAGE_BYTES),
        # a block of float32 labels and their images, and the Parquet table built from them
        "write": TASK_BASE_MEMORY + rows_per_write * (2 * 4 * px + 2 * SOURCE_IMAGE_BYTES),
    }


@dataclass
class _PartitionProgress:
    expected: set[str]
    covered: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    n_labels: int = 0
    errors: list[dict] = field(default_factory=list)
    label_bytes: int = 0
    conflict: bool = False


def decode_items(partitions: list[tuple[int, list[str]]], keys_per_task: int) -> list[dict]:
    """One work item per decoding task: up to ``keys_per_task`` keys of one partition."""
    return [{"pid": pid, "keys": keys[i:i + keys_per_task]}
            for pid, keys in partitions for i in range(0, len(keys), keys_per_task)]


def _build_dataset(config: PseudoLabelConfig, partitions: list[tuple[int, list[str]]], sample_every: int,
                   actor_class=None, locators: dict | None = None):
    # Workers do not see the driver's environment: resolve S3 settings here and ship them.
    s3 = storage.S3Config.from_env() if any(storage.is_s3(u) for u in (
        config.input, config.output, config.checkpoint, config.manifest or "")) else None
    decode_args = (config.input, config.input_size, config.max_pixels, config.batch_size, s3,
                   config.preprocessing, config.reduced_decode)
    if locators is None:
        items, decode = decode_items(partitions, config.keys_per_task), DecodePartition(*decode_args)
    else:  # the plan holds entries of tar archives or Parquet files
        from depthlib.archives.stage import DecodeContainers, container_items  # it builds on this package

        items = container_items(partitions, locators, config.keys_per_task)
        decode = DecodeContainers(*decode_args, image_column=config.image_column)
    memory = stage_memory(config)
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    # The memory request also keeps Ray Data from fusing decoding into the labelling
    # actor (fused operators need identical remote args), where it would run serially
    # with inference instead of on separate CPU tasks.
    ds = ds.map_batches(decode, batch_size=1, batch_format="numpy", num_cpus=1, memory=memory["decode"])
    ds = ds.map_batches(**model_stage_args(config, dict(
        checkpoint=config.checkpoint, encoder=config.encoder, metric=config.metric, max_depth=config.max_depth,
        s3=s3, compile=config.compile), actor_class))
    provenance = {"teacher": config.teacher_id, "checkpoint": storage.redact(config.checkpoint),
                  "encoder": config.encoder, "input_size": config.input_size, "dtype": config.dtype,
                  "preprocessing": config.preprocessing, "reduced_decode": config.reduced_decode,
                  "depthlib": __version__}
    writer = WritePieces(config.output, provenance, "metric_depth" if config.metric else "disparity",
                         sample_every, s3)
    return ds.map_batches(writer, batch_size=None, batch_format="numpy", num_cpus=0.5, memory=memory["write"])


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


def _run_wave(config: PseudoLabelConfig, pending: dict[int, list[str]], sample_every: int, log,
              actor_class=None, locators: dict | None = None) -> dict[int, dict]:
    """Label and commit the ``pending`` partitions (pid -> keys); returns their commit records."""
    out = config.output
    records: dict[int, dict] = {}
    todo = dict(pending)
    for round_ in range(MAX_ROUNDS):
        if not todo:
            break
        progress = {pid: _PartitionProgress(set(keys)) for pid, keys in todo.items()}
        ds = _build_dataset(config, sorted(todo.items()), sample_every, actor_class, locators)
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


class LabellingInputError(ValueError):
    """A setting or input the job cannot start with (the entry script exits 2 with it)."""


def check_inputs(config: PseudoLabelConfig) -> None:
    """Before any worker starts: the checkpoint exists, loads and is a ``--encoder`` model;
    the output holds no run with other plan settings; the input (or manifest) holds at
    least one key unless the output already has this run's frozen plan."""
    from depthlib.models.checkpoints import check_checkpoint

    try:
        check_checkpoint(config.checkpoint, config.encoder, config.metric)
        if plan_mod.frozen_plan(config.output, config.plan_fingerprint()) is not None:
            return
    except (FileNotFoundError, ValueError) as e:
        raise LabellingInputError(str(e)) from None
    where = f"--manifest {storage.redact(config.manifest)}" if config.manifest else \
        f"--input {storage.redact(config.input)}"
    try:
        first = next(iter(storage.iter_input_keys(config.input, config.manifest)), None)
    except Exception as e:  # noqa: BLE001 - a missing prefix, bucket or manifest
        raise LabellingInputError(f"{where} cannot be listed: {storage.redact(f'{type(e).__name__}: {e}')}") from None
    if first is None:
        raise LabellingInputError(f"{where} holds no images to label")


def run_pseudo_label(config: PseudoLabelConfig, log=print, actor_class=None) -> dict:
    """Label (or resume labelling) ``config.input``; returns the summary (summary.json's content).

    ``actor_class``: a replacement of ``LabelActor`` taking the same constructor
    arguments (the benchmark's stand-in accelerator, :mod:`depthlib.pseudo_label.stand_in`).
    """
    t0 = time.time()
    out = config.output
    # Lazy: the input is only listed (and its tar archives and Parquet files indexed) when no plan is frozen yet.
    keys = plan_entries(config.input, config.manifest, config.image_column)
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
            locators = plan_mod.chunk_locators(out, chunk) if pending else None
            fresh = _run_wave(config, pending, sample_every, log, actor_class, locators) if pending else {}
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

"""The evaluation job: benchmarks and DA-2K through one Ray Data pipeline, then the report.

``run_evaluation(config)`` expects Ray to be initialised (``ray_jobs/evaluate.py``
does it). The driver plans every dataset (lists or indexes its root, reads
its split list; :mod:`depthlib.evaluation.datasets`), so a dataset that
cannot be read is reported with the file named and the others go on. All
samples of all datasets then stream through one pipeline:

    CPU tasks (ReadInputs: read + decode + released preprocessing)
      -> model actors (the labelling job's LabelActor; autoscaling pool, GPUs when present)
      -> CPU tasks (ScoreRows: ground truth, resize back, protocol, preview)

and the driver folds the small result rows into per-dataset results and
writes the report (:mod:`depthlib.evaluation.report`). With ``--predictions``
the model stage is left out and saved prediction maps are scored instead.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from depthlib import __version__, storage
from depthlib.evaluation.config import EvaluateConfig
from depthlib.evaluation.datasets import DatasetError, DatasetPlan, plan_dataset
from depthlib.evaluation.protocol import Protocol
from depthlib.evaluation.report import DatasetResults, write_report
from depthlib.evaluation.stages import ReadInputs, ScoreRows, sample_rank

READ_TASK_MEMORY = 1024 * 2**20  # reserves room for decoded images; also keeps reading out of the actor
# Scoring a full-resolution ETH3D map (4032 x 6048) peaks at about 2.5 GB (float64 metrics).
SCORE_TASK_MEMORY = 3 * 2**30
INFERENCE = ("released path: shorter side to the input size, sides rounded to multiples of 14, bicubic, "
             "ImageNet normalisation; output resized to the ground truth's size, bilinear, align_corners=True")


def dataset_protocol(config: EvaluateConfig, plan: DatasetPlan) -> tuple[Protocol | None, dict]:
    """The scoring protocol of one dataset and its record for the report."""
    spec = plan.spec
    if config.predictions:
        inference = {"inference": f"saved predictions from {storage.redact(config.predictions)}, resized to the "
                                  f"ground truth's size, bilinear, align_corners=True", "input_size": None}
    else:
        inference = {"inference": INFERENCE, "input_size": config.input_size, "dtype": config.dtype}
    record: dict = {"root": plan.root, "split": plan.split, "n_samples": len(plan.samples), **inference}
    if spec.layout == "da2k":
        record.update(rule="a pair is right when the point labelled closer is strictly closer in the prediction "
                           + ("(smaller depth)" if config.metric else "(larger disparity)") + "; ties are wrong",
                      prediction_size="the image's size")
        return None, record
    crop = spec.crop
    if spec.layout == "kitti":
        crop = {"eigen": "eigen_kitti", "garg": "garg_kitti"}[config.kitti_crop]
    min_depth, max_depth = config.depth_ranges().get(plan.name, (spec.min_depth, spec.max_depth))
    protocol = Protocol(min_depth, max_depth, config.alignment_used, crop)
    record.update(min_depth=min_depth, max_depth=max_depth, alignment=protocol.alignment,
                  crop=crop or "none", ground_truth=spec.notes, mean="over images")
    if spec.layout == "kitti":
        record["benchmark_crop"] = "image and ground truth cut to 352x1216 (top = H-352, left = (W-1216)//2) " \
                                   "before inference"
    if spec.layout == "sintel":
        record["frames"] = (f"{len(plan.samples)} frames of {plan.info.get('n_sequences', '?')} sequences "
                            f"({plan.split})")
    if spec.layout == "shards":
        record.update(plan.info)
    if plan.n_no_gt:
        record["n_no_gt"] = plan.n_no_gt
    return protocol, record


def _items(plan: DatasetPlan, per_task: int) -> list[dict]:
    """Work items of a few samples each (shard rows grouped by their row group)."""
    groups: dict = {}
    for s in plan.samples:
        ref = s.get("shard")
        groups.setdefault((ref["uri"], ref["row_group"]) if ref else None, []).append(s)
    items = []
    for samples in groups.values():
        for start in range(0, len(samples), per_task):
            items.append({"dataset": plan.name, "layout": plan.spec.layout,
                          "samples": json.dumps(samples[start:start + per_task])})
    return items


def _build_dataset(config: EvaluateConfig, items: list[dict], protocols: dict[str, dict], s3):
    import ray

    from depthlib.pseudo_label.stages import model_stage_args

    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(ReadInputs(config.input_size, config.max_pixels, config.batch_size,
                                   predictions=config.predictions, s3=s3),
                        batch_size=1, batch_format="numpy", num_cpus=1, memory=READ_TASK_MEMORY)
    if config.predictions is None:
        # the labelling job's model stage: same actor, pool and batching (released float32 inputs)
        ds = ds.map_batches(**model_stage_args(config, dict(
            checkpoint=config.checkpoint, encoder=config.encoder, metric=config.metric,
            max_depth=config.max_depth, s3=s3)))
    return ds.map_batches(ScoreRows(protocols, config.metric, s3), batch_size=None, batch_format="numpy",
                          num_cpus=0.5, memory=SCORE_TASK_MEMORY)


def run_evaluation(config: EvaluateConfig, log=print) -> dict:
    """Evaluate, write every output under ``config.output``, return the report (report.json's content)."""
    from depthlib.cli import config_to_json

    t0 = time.time()
    uris = [config.output, config.checkpoint or "", config.predictions or "",
            *config.datasets().values(), *config.splits().values()]
    s3 = storage.S3Config.from_env() if any(storage.is_s3(u) for u in uris) else None
    splits = config.splits()

    entries: dict[str, dict] = {}
    results: dict[str, DatasetResults] = {}
    protocols: dict[str, dict] = {}
    items: list[dict] = []
    for name, root in config.datasets().items():
        try:
            plan = plan_dataset(name, root, splits.get(name), config.limit, config.sintel_pass)
        except DatasetError as e:
            entries[name] = {"error": str(e)}
            log(f"[evaluate] {name}: NOT EVALUATED: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - one dataset's surprise must not stop the others
            entries[name] = {"error": storage.redact(f"{type(e).__name__}: {e}")}
            log(f"[evaluate] {name}: NOT EVALUATED: {entries[name]['error']}")
            continue
        protocol, record = dataset_protocol(config, plan)
        if protocol is not None:
            protocols[name] = protocol.to_dict()
        results[name] = DatasetResults(plan, record, config.pictures, config.worst)
        items += _items(plan, config.samples_per_task)
        n_missing = sum(1 for s in plan.samples if s.get("error"))
        log(f"[evaluate] {name}: {len(plan.samples)} samples ({plan.split})"
            + (f", {plan.n_no_gt} without ground truth skipped" if plan.n_no_gt else "")
            + (f", {n_missing} with missing files" if n_missing else ""))

    n_total = sum(len(r.plan.samples) for r in results.values())
    t_pipeline = time.time()
    if items:
        ds = _build_dataset(config, items, protocols, s3)
        done, every = 0, max(1, n_total // 10)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            for i in range(len(batch["key"])):
                key = str(batch["key"][i])
                results[str(batch["dataset"][i])].add(
                    key, str(batch["error"][i]), str(batch["detail"][i]), json.loads(batch["result"][i]),
                    batch["preview"][i], sample_rank(key), batch["layout"][i])
                done += 1
                if done % every == 0:
                    log(f"[evaluate]   {done}/{n_total} samples scored ({time.time() - t_pipeline:.0f}s)")
    pipeline_s = time.time() - t_pipeline

    for name in config.datasets():
        if name in results:
            entries[name] = results[name].summary()
    report = {
        "checkpoint": storage.redact(config.checkpoint) if config.checkpoint
        else f"predictions:{storage.redact(config.predictions)}",
        "encoder": config.encoder, "input_size": config.input_size, "metric": config.metric,
        "max_depth": config.max_depth if config.metric else None, "dtype": config.dtype,
        "alignment": config.alignment_used, "depthlib": __version__,
        "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(time.time() - t0, 3),
        "throughput": {"samples": n_total, "pipeline_s": round(pipeline_s, 3),
                       "samples_per_s": round(n_total / max(pipeline_s, 1e-9), 3)},
        "datasets": {name: entries[name] for name in config.datasets()},
    }
    write_report(config.output, report, results, storage.redact(config_to_json(config)))
    for name, entry in report["datasets"].items():
        if "error" in entry:
            continue
        if "accuracy" in entry:
            acc = "n/a" if entry["accuracy"] is None else f"{100 * entry['accuracy']:.2f}%"
            summary = f"accuracy {acc} on {entry['n_pairs']} pairs"
        else:
            summary = (f"AbsRel {entry['abs_rel']:.4f}, d1 {entry['d1']:.4f}" if entry["n_images"]
                       else "no image scored")
        log(f"[evaluate] {name}: {summary} ({entry.get('n_images', 0)} images, {entry['n_errors']} skipped)")
    log(f"[evaluate] report: {storage.redact(storage.join(config.output, 'report.md'))} "
        f"({report['wall_s']:.1f}s)")
    return report

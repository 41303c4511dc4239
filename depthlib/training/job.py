"""The training job's driver: config, data plan, Ray Train trainer, summary.

``run_training(config)`` expects Ray to be initialised (``ray_jobs/train.py``
does it). Outputs live under ``--output`` (local directory or ``s3://``):

==========================  =====================================================
``config.json``             the resolved config (a re-run must match it, except
                            the settings in ``config.RESUMABLE_CHANGES``)
``data_index.json``         the frozen list of shard files and row groups
``metrics.jsonl``           every report, across restarts
``ray_train/step-*/``       Ray Train checkpoints (``depthlib.training.state``)
``model.pth``               the final model, released format
``curves.png``, ``samples/`` pictures; ``data_errors/`` rows skipped, with reasons
``run_state.json``          written when the run finishes
==========================  =====================================================

Re-running the same command resumes from the latest checkpoint (Ray Train's
same-``RunConfig(storage_path, name)`` rule); a finished run re-run prints
its summary and exits.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from depthlib import __version__, storage
from depthlib.training import data as data_mod
from depthlib.training.config import TrainConfig, config_differences
from depthlib.training.examples import ExampleSpec
from depthlib.training.objectives import STAGES
from depthlib.training.plan import DataPosition, GroupPlan
from depthlib.training.state import read_run_state, write_run_state

RUN_NAME = "ray_train"  # fixed, so the same --output resumes
CONFIG_FILE = "config.json"


def _s3_config(cfg: TrainConfig) -> storage.S3Config | None:
    uris = [cfg.output, *cfg.data, cfg.val_data, cfg.init_from, cfg.pretrained_encoder, cfg.frozen_encoder]
    return storage.S3Config.from_env() if any(u and storage.is_s3(u) for u in uris) else None


def _absolute(uri: str | None) -> str | None:
    """Local paths made absolute (Ray workers run in other directories); URIs unchanged."""
    if uri is None or storage.is_s3(uri) or uri.lower() == "none":
        return uri
    return storage.local_path(uri)


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with every local path absolute."""
    for name in ("output", "val_data", "init_from", "pretrained_encoder", "frozen_encoder"):
        setattr(cfg, name, _absolute(getattr(cfg, name)))
    cfg.data = [_absolute(u) for u in cfg.data]
    return cfg


class TrainingInputError(ValueError):
    """Bad input found before any worker starts: data without shards or rows,
    missing weights, an output that holds a run with other settings. The
    message names the flag or the file; ``ray_jobs/train.py`` prints it as one
    line and exits 2."""


def check_inputs(cfg: TrainConfig) -> None:
    """Fail in the driver, with the file named, on inputs every worker would
    fail on (instead of retrying the worker group --max-failures times)."""
    from depthlib.training.weights import resolve_weights_uri

    if cfg.val_data:
        data_mod.load_validation_rows(cfg.val_data, 1)
    for name in ("init_from", "pretrained_encoder", "frozen_encoder"):
        uri = getattr(cfg, name)
        if uri and uri.lower() != "none":
            weights = resolve_weights_uri(uri)
            if not storage.exists(weights):
                raise FileNotFoundError(f"--{name.replace('_', '-')} {storage.redact(weights)} does not exist")


def check_and_write_config(cfg: TrainConfig, log=print) -> None:
    """Write ``config.json``; refuse to resume a run made with other settings."""
    uri = storage.join(cfg.output, CONFIG_FILE)
    if storage.exists(uri):
        saved = json.loads(storage.read_bytes(uri))
        diffs = config_differences(saved.get("config", {}), cfg)
        if diffs:
            raise ValueError(f"{storage.redact(cfg.output)} holds a run with other settings; use a new --output "
                             f"or the same settings. Differences:\n  " + "\n  ".join(diffs))
        changed = [k for k in saved.get("config", {}) if saved["config"][k] != cfg.to_dict().get(k)]
        if changed:
            log(f"[train] resuming with changed settings: {', '.join(sorted(changed))}")
    record = {"config": cfg.to_dict(), "global_batch": cfg.global_batch, "depthlib": __version__,
              "written": time.time()}
    storage.write_bytes(uri, storage.redact(json.dumps(record, indent=2, sort_keys=True)).encode())


def latest_position(output: str) -> tuple[DataPosition, int]:
    """``(data position, step)`` of the run's latest registered checkpoint, read
    from Ray Train's checkpoint-manager snapshot (the file Ray itself resumes
    from) and the checkpoint's ``train_state.json``; the start for a new run.

    If the snapshot cannot be read, the stream starts at the beginning and the
    workers drop what their checkpoint says was already trained on (slower,
    never wrong)."""
    snapshot = storage.join(output, RUN_NAME, "checkpoint_manager_snapshot.json")
    if not storage.exists(snapshot):
        return DataPosition(), 0
    try:
        latest = json.loads(storage.read_bytes(snapshot)).get("latest_checkpoint_result")
        if not latest:
            return DataPosition(), 0
        meta = json.loads(storage.read_bytes(storage.join(output, RUN_NAME, latest["checkpoint_dir_name"],
                                                          "train_state.json")))
        return DataPosition.from_dict(meta["data_position"]), int(meta["step"])
    except Exception as e:  # noqa: BLE001 - fall back to the safe, slower start
        print(f"[train] WARNING: could not read the resume position ({storage.redact(e)}); the data stream "
              f"restarts from its beginning and workers skip what the checkpoint already trained on", flush=True)
        return DataPosition(), 0


def _train_worker(loop_config: dict) -> None:
    """Ray Train's worker function, :func:`depthlib.training.loop.train_worker`,
    imported where it runs: the controller unpickles this reference without
    importing the model code (timm, torchvision: ~2 s of every run's start)."""
    from depthlib.training.loop import train_worker

    train_worker(loop_config)


@dataclass
class TrainDataset:
    """Ray Train calls this (on its controller) at every worker-group start, so
    a restart after a failure streams from the latest checkpoint's position."""

    output: str
    plan_ref: object
    plan: GroupPlan
    spec: ExampleSpec
    steps: int
    global_batch: int
    data_cpus: float
    s3: storage.S3Config | None

    def __call__(self):
        storage.set_default_s3(self.s3)
        position, step = latest_position(self.output)
        end = self.plan.end_group(position, max(0, self.steps - step) * self.global_batch)
        print(f"[train] data stream for step {step}: groups {position.next_group}..{end - 1} "
              f"({len(position.skip)} finished ones skipped), {self.plan.groups_per_epoch} groups per epoch",
              flush=True)
        return data_mod.train_dataset(self.plan_ref, self.plan, self.spec, position, end, self.data_cpus,
                                      storage.join(self.output, data_mod.ERRORS_DIR), self.s3)


def _resources(cfg: TrainConfig) -> tuple[float, float]:
    """(GPUs, CPUs) per worker. On a CPU cluster the workers take at most half
    the CPUs so Ray Data keeps cores to decode with (a 2-core machine: 0.5 each)."""
    import ray

    total = ray.cluster_resources()
    gpus = cfg.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if total.get("GPU", 0) >= 1 else 0.0
    cpus = cfg.cpus_per_worker
    if cpus is None:
        cpus = 1.0 if gpus > 0 else max(0.1, min(1.0, total.get("CPU", 1) / (2 * cfg.workers)))
    return gpus, cpus


def scaling_config(cfg: TrainConfig) -> ray.train.ScalingConfig:  # noqa: F821 - ray is imported lazily
    """Ray Train's ``ScalingConfig`` of the run: ``--workers`` workers, each
    with the GPUs and CPUs of :func:`_resources` (``use_gpu`` when it has a GPU)."""
    from ray.train import ScalingConfig

    gpus, cpus = _resources(cfg)
    return ScalingConfig(num_workers=cfg.workers, use_gpu=gpus > 0,
                         resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus else {})})


def _score_attribute(cfg: TrainConfig) -> str | None:
    """The validation metric (lower is better) that ranks checkpoints, or None without ``--val-data``."""
    if not cfg.val_data:
        return None
    return "val_abs_rel" if STAGES[cfg.stage].predicts_depth else "val_mim"


def run_training(cfg: TrainConfig, log=print, start_retries: int = -1) -> dict:
    """Train (or resume, or report a finished run). Returns the run summary.

    ``start_retries``: how often Ray Train retries starting the worker group
    when the resources do not come (-1: keep waiting, right for an
    autoscaling cluster; tests use 0 so a misconfiguration fails fast).
    """
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from depthlib.training.loop import FINAL_MODEL

    t0 = time.time()
    cfg = resolve_paths(cfg)
    s3 = _s3_config(cfg)
    storage.set_default_s3(s3)
    out = cfg.output
    try:
        check_inputs(cfg)
        index = data_mod.load_or_build_index(out, cfg.data, log, images=STAGES[cfg.stage].target == "none",
                                             image_column=cfg.image_column)
        if cfg.metric:
            for source, kinds in data_mod.depth_types_of_sources(index).items():
                if kinds - {"metric_depth"}:
                    raise ValueError(f"--data {storage.redact(cfg.data_uris()[source])} holds {sorted(kinds)} labels; "
                                     f"the metric stage trains on metric depth (metres) only")
        if cfg.metric and cfg.head_start_depth is None:
            cfg.head_start_depth = round(data_mod.median_depth(index, cfg.min_depth, cfg.max_depth), 4)
            log(f"[train] metric head starts at the training data's median depth, {cfg.head_start_depth} m")
        check_and_write_config(cfg, log)
    except (ValueError, FileNotFoundError) as e:
        raise TrainingInputError(str(e)) from e
    finished = read_run_state(out)
    if finished and finished.get("finished_step", 0) >= cfg.steps:
        log(f"[train] {storage.redact(out)} finished at step {finished['finished_step']}: "
            f"{json.dumps(finished.get('final', {}), sort_keys=True)}")
        return finished

    plan = GroupPlan(index, cfg.seed, cfg.rows_per_group, cfg.data_weights())
    if plan.weights is not None:
        log("[train] data mix: " + "; ".join(
            f"{storage.redact(cfg.data_uris()[s['source']])}: {s['row_share']:.0%} of the rows "
            f"({s['passes_per_epoch']:g} passes over its {s['items']} row groups per epoch)"
            for s in plan.source_shares()))
    stage = STAGES[cfg.stage]
    spec = ExampleSpec(target=stage.target, crop=cfg.crop, flip=cfg.flip, color_jitter=cfg.color_jitter,
                       blur=cfg.blur, cutmix=cfg.cutmix, min_depth=cfg.min_depth, max_depth=cfg.max_depth)
    plan_ref = ray.put(plan)
    gpus, cpus = _resources(cfg)
    log(f"[train] {cfg.stage} {cfg.encoder}: {cfg.steps} steps x {cfg.global_batch} images "
        f"({cfg.workers} workers x batch {cfg.batch_size} x accumulation {cfg.grad_accum}), {cfg.crop}px crops; "
        f"{index.n_rows} rows = {plan.groups_per_epoch} groups per epoch; worker: {gpus:g} GPU, {cpus:g} CPU")

    fs, path = storage.filesystem(out, s3)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": cfg.to_dict(), "plan": plan_ref, "run_name": f"{path.rstrip('/').rsplit('/', 1)[-1]}",
                           "s3": s3, "torch_threads": max(1, int(cpus))},
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=path, storage_filesystem=fs if storage.is_s3(out) else None,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute=_score_attribute(cfg),
                checkpoint_score_order="min"),
            failure_config=FailureConfig(max_failures=cfg.max_failures, controller_failure_limit=start_retries)),
        # --deterministic: each worker builds its own ordered stream (loop.Trainer._own_stream)
        datasets={} if cfg.deterministic else {
            "train": TrainDataset(out, plan_ref, plan, spec, cfg.steps, cfg.global_batch, cfg.data_cpus, s3)},
        dataset_config=DataConfig(datasets_to_split=[] if cfg.deterministic else ["train"]),
    )
    result = trainer.fit()
    summary = read_run_state(out) or {}
    summary.update({
        "output": storage.redact(out), "model": storage.redact(storage.join(out, FINAL_MODEL)),
        "data_rows_skipped": data_mod.count_data_errors(storage.join(out, data_mod.ERRORS_DIR)),
        "wall_s": round(time.time() - t0, 1)})
    if summary.get("finished_step"):
        score = _score_attribute(cfg)
        best = min(result.best_checkpoints, key=lambda c: c[1].get(score, float("inf")),
                   default=None) if score else None
        summary["best_checkpoint"] = storage.redact(best[0].path) if best else None
        write_run_state(out, summary)
    log(f"[train] done in {summary['wall_s']}s: {json.dumps(summary.get('final', {}), sort_keys=True)}")
    return summary

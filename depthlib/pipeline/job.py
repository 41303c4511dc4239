"""``run_pipeline(config)``: build the stage list, run it with the skip / resume / refuse rules, report.

Expects Ray to be initialised (``ray_jobs/pipeline.py`` and ``depthlib.demo``
do it); every stage job uses the cluster this process is connected to.
"""

from __future__ import annotations

import time

from depthlib import storage
from depthlib.pipeline import report as report_mod
from depthlib.pipeline.config import PipelineConfig
from depthlib.pipeline.runner import plan as decide, run_stages
from depthlib.pipeline.stages import Plan, build_plan


def check(config: PipelineConfig) -> tuple[Plan, dict[str, str]]:
    """Build every stage's config and decide each stage (skip / run / rerun) from the records
    under ``config.storage``, without Ray. Raises ``ValueError`` for a bad setting and
    :class:`depthlib.pipeline.runner.StageSettingsChanged` for a stage refused."""
    plan = build_plan(config)
    storage.set_default_s3(storage.S3Config.from_env() if storage.is_s3(plan.root) else None)
    decisions = decide(plan.root, plan.stages, config.rerun)
    check_inputs(config, {n for n, d in decisions.items() if d != "skip"})
    return plan, decisions


def _has_objects(uri: str) -> bool:
    try:
        return next(iter(storage.list_objects(uri)), None) is not None
    except Exception:  # noqa: BLE001 - a missing bucket or prefix: nothing there
        return False


def check_inputs(config: PipelineConfig, to_run: set[str]) -> None:
    """The inputs the stages still to run read exist and hold something (``ValueError``
    naming the flag): ``--unlabeled``, ``--synthetic-data``, ``--metric-data``,
    ``--pretrained``, ``--benchmark``. A finished stage's inputs are not looked at."""
    from depthlib import shards
    from depthlib.training.config import split_data_weight
    from depthlib.training.weights import resolve_weights_uri

    if config.unlabeled and "pseudo_labels" in to_run and not _has_objects(config.unlabeled):
        raise ValueError(f"--unlabeled {storage.redact(config.unlabeled)} holds no images to label")
    for flag, uris, stage in (("synthetic-data", config.synthetic_data, "teacher"),
                              ("metric-data", config.metric_data, "metric")):
        if stage not in to_run:
            continue
        for item in uris:
            uri = split_data_weight(item)[0]
            try:
                found = uri.endswith(".parquet") and storage.exists(uri) or bool(shards.list_shards(uri))
            except Exception:  # noqa: BLE001 - a missing bucket or prefix
                found = False
            if not found:
                raise ValueError(f"--{flag} {storage.redact(uri)} holds no .parquet shards")
    training = {n for n in to_run if n in ("teacher", "metric") or n.startswith(("student_", "pretrain_"))}
    for enc, uri in config.pretrained_by_encoder().items():
        if training and not storage.exists(resolve_weights_uri(uri)):
            raise ValueError(f"--pretrained {enc}={storage.redact(uri)} does not exist")
    evaluating = any(n.startswith("evaluate/") for n in to_run)
    for item in config.benchmark:
        name, _, uri = item.partition("=")
        if evaluating and uri and not (storage.exists(uri) or _has_objects(uri)):
            raise ValueError(f"--benchmark {name}={storage.redact(uri)} does not exist")


def run_pipeline(config: PipelineConfig, log=print) -> dict:
    """Run (or resume) every stage under ``config.storage``; returns the report (``<storage>/report.json``).

    Raises :class:`depthlib.pipeline.runner.StageSettingsChanged` before
    running anything when a stage that started or finished before would now
    get other settings (``config.rerun`` names the stages to redo).
    """
    t0 = time.time()
    plan, _ = check(config)
    outcomes = run_stages(plan.root, plan.stages, config.rerun, config.discard_replaced, log)
    models, benchmarks, protocol = report_mod.model_table(plan)
    baseline = report_mod.metric_baseline(plan)
    layout = report_mod.layout_priors(plan)
    report = {
        "models": models, "benchmarks": benchmarks, "metric_from": plan.base_student, "protocol": protocol,
        "metric_baseline": baseline, "layout_prior": layout,
        "stages": {n: {"status": o.status, "seconds": o.seconds,
                       **({"learning": o.summary["learning"]} if o.summary.get("learning") else {})}
                   for n, o in outcomes.items()},
        "seconds": round(time.time() - t0, 1), "storage": storage.redact(plan.root),
        "pictures": {k: storage.redact(v) for k, v in report_mod.pictures(plan).items()},
        "preset": config.preset,
    }
    report_mod.write(plan.root, report)
    log("[pipeline] results:\n" + report_mod.format_table(models, protocol, plan.base_student, baseline, layout))
    for name, verdict in report_mod.not_learning(report).items():
        log(f"[pipeline] WARNING: stage {name} did not learn: {report_mod.learning_note(verdict)}")
    log(f"[pipeline] report: {storage.redact(storage.join(plan.root, 'report.md'))} ({report['seconds']:.0f}s)")
    return report

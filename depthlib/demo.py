"""``make demo``: the paper in miniature on this machine, through the real pipeline.

    .venv/bin/python -m depthlib.demo [--output demo_output] [--rerun STAGE ...]

Runs ``ray_jobs/pipeline.py``'s library with the ``demo`` preset on a local
Ray cluster and a local directory (every stage is the real job: Ray tasks
render, Ray Train trains, Ray Data labels and evaluates):

1. renders procedural synthetic training scenes with exact depth, a bucket of
   photo-style JPEGs (the stand-in for real photos, never labelled by hand),
   street scenes from one driving rig for the metric fine-tune, and three
   held-out sets with exact depth (synthetic-style, photo-style and street),
   plus DA-2K-style point pairs sampled on their ground truth;
2. trains the tiny teacher on the synthetic scenes, pseudo-labels the bucket
   with it, trains a student only on those labels, and fine-tunes a metric
   model from the student (as the paper fine-tunes its students);
3. evaluates an untrained model, the teacher, the student and the metric
   model with the evaluation job, prints the table and where the pictures and
   reports are, and writes ``<output>/demo_report.json``::

       {"models": {"untrained" | "teacher" | "student" | "metric":
                       {"synthetic": {"abs_rel", "d1", "pair_accuracy"}, "photo": {...}, "street": {...}}},
        "seconds": ...}

Run it again in the same place and finished stages are skipped (an
interrupted one resumes); the table is printed again. Every number printed
is computed from this output directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

from depthlib import storage
from depthlib.cli import parse_config
from depthlib.pipeline.stages import HELDOUT_SETS

DEMO_MODELS = ("untrained", "teacher", "student", "metric")


@dataclass(kw_only=True)
class DemoConfig:
    """Run the Depth Anything V2 pipeline in miniature on this machine."""

    output: str = field(default="demo_output", metadata={"help": "where everything is written (local dir or URI)"})
    preset: str = field(default="demo", metadata={"help": "pipeline preset (ray_jobs/pipeline.py --preset)"})
    rerun: list[str] = field(default_factory=list, metadata={
        "help": "re-run these finished stages and the ones after them (see ray_jobs/pipeline.py --help)"})

    def __post_init__(self):
        from depthlib.pipeline.config import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}")


def _log(msg: str) -> None:
    print(msg if msg.startswith("[") else f"[demo] {msg}", flush=True)


def demo_report(pipeline_report: dict, seconds: float) -> dict:
    """The contract layout of ``demo_report.json`` from the pipeline's report: the student is
    the one the metric model was fine-tuned from."""
    models = pipeline_report["models"]
    names = {"untrained": "untrained", "teacher": "teacher", "student": pipeline_report["metric_from"],
             "metric": "metric"}
    keys = ("abs_rel", "d1", "pair_accuracy")
    return {"models": {demo: {s: {k: models[ours][s][k] for k in keys} for s in HELDOUT_SETS}
                       for demo, ours in names.items()},
            "seconds": round(seconds, 1)}


def verdict(report: dict) -> str:
    """One sentence on the paper's claim, from the figures: student vs teacher on the photo-style set."""
    t, s = report["models"]["teacher"]["photo"], report["models"]["student"]["photo"]
    u = report["models"]["untrained"]["photo"]
    rel = (s["abs_rel"] - t["abs_rel"]) / t["abs_rel"]
    how = "better than" if rel < -0.02 else ("close to" if rel <= 0.1 else "behind")
    return (f"On the photo-style held-out set (the 'real' domain) the student, trained only on the teacher's "
            f"pseudo labels of unlabeled photo-style images, is {how} its teacher: AbsRel {s['abs_rel']:.3f} vs "
            f"{t['abs_rel']:.3f} ({100 * rel:+.0f}%), delta1 {s['d1']:.3f} vs {t['d1']:.3f}, pairs "
            f"{100 * s['pair_accuracy']:.1f}% vs {100 * t['pair_accuracy']:.1f}% (untrained: AbsRel "
            f"{u['abs_rel']:.3f}, pairs {100 * u['pair_accuracy']:.1f}%).")


def metric_verdict(report: dict, baseline: dict) -> str:
    """One sentence on the metric model against its constant baseline, on the street held-out set
    (the one its training data's camera rig matches)."""
    m, c = report["models"]["metric"]["street"], baseline["sets"]["street"]
    return (f"On held-out street scenes (the metric training data's camera rig) the metric model's AbsRel in "
            f"metres, unaligned, is {m['abs_rel']:.3f}, {m['abs_rel'] / c['abs_rel']:.2f}x that of predicting the "
            f"training data's median depth ({baseline['median_depth']:.2f} m) everywhere ({c['abs_rel']:.3f}); "
            f"delta1 {m['d1']:.3f} vs {c['d1']:.3f}.")


def main(argv=None) -> dict:
    cfg = parse_config(DemoConfig, argv)
    t0 = time.time()
    # Ray Data's progress bars (in the training workers too, which inherit this) would bury the
    # pipeline's own lines; workers' logs stay in Ray's session logs.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    from depthlib.pipeline import PRESETS, PipelineConfig, StageSettingsChanged
    from depthlib.pipeline.job import check, run_pipeline
    from depthlib.pipeline.report import format_table

    config = PipelineConfig(**{**PRESETS[cfg.preset], "storage": cfg.output, "rerun": cfg.rerun,
                               "preset": cfg.preset})
    try:
        check(config)  # before Ray starts
    except StageSettingsChanged as e:  # e.g. the preset's recipe changed since this output was made
        print(f"[demo] refused: {e}\nOr start over: rm -rf {cfg.output}", file=sys.stderr)
        sys.exit(3)
    ray.init(include_dashboard=False, ignore_reinit_error=True, configure_logging=False, log_to_driver=False)
    pipeline_report = run_pipeline(config, log=_log)
    report = demo_report(pipeline_report, time.time() - t0)
    root = pipeline_report["storage"]  # the absolute output location
    out = storage.join(root, "demo_report.json")
    storage.write_bytes(storage.join(cfg.output, "demo_report.json"), json.dumps(report, indent=2).encode())

    print("\n" + "=" * 100)
    print(f"Depth Anything V2 in miniature ({cfg.preset} preset, {report['seconds']:.0f} s this run; "
          f"student = {pipeline_report['metric_from']})\n")
    baseline = pipeline_report["metric_baseline"]
    print(format_table(report["models"], pipeline_report["protocol"], "student", baseline,
                       pipeline_report.get("layout_prior")))
    print("\n" + verdict(report))
    print("\n" + metric_verdict(report, baseline))
    print("\nPictures and reports:")
    for name, uri in pipeline_report["pictures"].items():
        print(f"  {name:<34} {uri}")
    print(f"  {'pipeline report':<34} {storage.join(root, 'report.md')}")
    print(f"  {'this table (JSON)':<34} {out}")
    print("=" * 100)
    return report


if __name__ == "__main__":
    main()

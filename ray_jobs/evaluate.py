"""Evaluate a depth model on the standard benchmarks and DA-2K (Ray Data).

    python ray_jobs/evaluate.py --checkpoint s3://bucket/ckpt/depth_anything_v2_vitl.pth --encoder vitl \
        --dataset nyu=s3://bench/nyuv2/nyu_labeled_extracted.tar --split nyu=s3://bench/data_split/nyu/labeled/filename_list_test.txt \
        --dataset da2k=s3://bench/DA-2K.zip --output s3://bucket/eval/vitl

or through ``ray job submit --working-dir . -- python ray_jobs/evaluate.py ...``.
Outputs under ``--output``: ``report.json``, ``report.md``, ``<dataset>/per_image.csv``,
``<dataset>/errors.csv``, ``<dataset>/samples.png``, ``<dataset>/worst.png``,
``da2k/by_scene.png``, ``config.json``. The protocol is in docs/evaluation.md.
Exit status 1 when a dataset could not be evaluated at all (the report says why).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from depthlib.cli import exit_with_error, parse_layered_config  # noqa: E402
from depthlib.evaluation.config import EvaluateConfig  # noqa: E402


def main(argv=None) -> dict:
    from depthlib.models.checkpoints import check_checkpoint

    try:
        config = parse_layered_config(EvaluateConfig, argv)
        if config.checkpoint:  # exists, loads, fits --encoder: before Ray starts
            check_checkpoint(config.checkpoint, config.encoder, config.metric)
    except (ValueError, FileNotFoundError) as e:  # a bad setting or input: one line, exit 2, as argparse does
        exit_with_error("evaluate.py", e)
    import ray

    from depthlib.evaluation.job import run_evaluation

    ray.init()  # joins RAY_ADDRESS (set by `ray job submit`) or starts a local cluster
    return run_evaluation(config)


if __name__ == "__main__":
    report = main()
    failed = [name for name, entry in report["datasets"].items() if "error" in entry]
    if failed:
        print(f"[evaluate] not evaluated: {', '.join(failed)} (see report.md)", file=sys.stderr)
        sys.exit(1)

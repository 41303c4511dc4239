"""Pretrain an encoder, or train a Depth Anything V2 teacher, student or metric model, with Ray Train.

    python ray_jobs/train.py --stage teacher --data s3://bucket/synthetic/shards \
        --val-data s3://bucket/synthetic-val/shards --output s3://bucket/runs/teacher-vitl \
        --preset teacher_vitl --workers 8
    python ray_jobs/train.py --stage pretrain --preset tiny_cpu --data demo_output/synthetic/shards \
        --output runs/pretrain   # then --pretrained-encoder runs/pretrain/encoder.pth

or through ``ray job submit --working-dir . -- python ray_jobs/train.py ...``.
Settings: dataclass defaults < ``--preset NAME`` < ``--config FILE.yaml`` <
flags (``--help`` lists them all). Re-run the same command to resume from
the latest checkpoint. Outputs: see ``depthlib/training/job.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from depthlib.cli import exit_with_error, parse_layered_config  # noqa: E402
from depthlib.training.config import PRESETS, TrainConfig  # noqa: E402


def main(argv=None) -> dict:
    try:
        config = parse_layered_config(TrainConfig, argv, PRESETS)
    except ValueError as e:  # a bad setting: say which, as argparse does, without a traceback
        exit_with_error("train.py", e)
    import ray

    from depthlib.training.job import TrainingInputError, run_training

    ray.init()  # joins RAY_ADDRESS (set by `ray job submit`) or starts a local cluster
    try:
        return run_training(config)
    except TrainingInputError as e:  # missing data or weights, an output with another run
        exit_with_error("train.py", e)


if __name__ == "__main__":
    main()

"""The whole Depth Anything V2 recipe in one Ray job: synthetic scenes -> teacher -> pseudo labels
of an unlabeled bucket -> students -> metric fine-tune -> evaluation.

    python ray_jobs/pipeline.py --preset demo --storage demo_output          # this machine, ~10 min
    python ray_jobs/pipeline.py --preset gpu_vitl --storage s3://bucket/pipeline \
        --unlabeled s3://bucket/unlabeled --pretrained vits=s3://.../dinov2_vits14_pretrain.pth ...

or through ``RAY_AUTH_MODE=token ray job submit --working-dir . -- python ray_jobs/pipeline.py ...``.
Settings: dataclass defaults < ``--preset NAME`` < ``--config FILE.yaml`` < flags (``--help``).
Every stage writes under ``--storage``; re-running the same command skips
finished stages and resumes the interrupted one; a finished stage whose
settings changed is refused (name it in ``--rerun`` to redo it and what
follows). The work is in ``depthlib/pipeline/``; the stages are the jobs of
``ray_jobs/make_synthetic.py``, ``pseudo_label.py``, ``train.py`` and ``evaluate.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from depthlib.cli import exit_with_error, parse_layered_config  # noqa: E402
from depthlib.pipeline.config import PRESETS, PipelineConfig  # noqa: E402


def main(argv=None) -> dict:
    from depthlib.pipeline import StageSettingsChanged
    from depthlib.pipeline.job import check, run_pipeline

    try:
        config = parse_layered_config(PipelineConfig, argv, PRESETS)
        check(config)  # every stage's job config built, every stage's record read: before Ray starts
    except StageSettingsChanged as e:
        exit_with_error("pipeline.py", e, status=3, kind="refused")
    except ValueError as e:  # a bad setting: say which, as argparse does, without a traceback
        exit_with_error("pipeline.py", e)
    import ray

    ray.init()  # joins RAY_ADDRESS (set by `ray job submit`) or starts a local cluster
    return run_pipeline(config)


if __name__ == "__main__":
    main()

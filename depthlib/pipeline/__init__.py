"""The whole Depth Anything V2 recipe as resumable stages: data, teacher, pseudo labels, students,
metric fine-tune, evaluation (``ray_jobs/pipeline.py``, ``make demo``).

``config`` (``PipelineConfig``, ``PRESETS``), ``runner`` (skip / run / refuse
from each stage's ``_stage.json``), ``stages`` (the stage list, built on the
existing jobs), ``heldout`` (DA-2K-style pairs from exact depth), ``report``
(the table), ``job`` (``run_pipeline``).
"""

from depthlib.pipeline.config import PRESETS, PipelineConfig
from depthlib.pipeline.runner import Stage, StageSettingsChanged, run_stages

__all__ = ["PRESETS", "PipelineConfig", "Stage", "StageSettingsChanged", "run_pipeline", "run_stages"]


def run_pipeline(config: PipelineConfig, log=print) -> dict:
    """See :func:`depthlib.pipeline.job.run_pipeline` (imported lazily: it pulls in the stage jobs)."""
    from depthlib.pipeline.job import run_pipeline as run

    return run(config, log)

"""Training building blocks shared by the teacher, student and metric stages."""

from depthlib.training.optim import param_groups
from depthlib.training.relative import disparity_target, relative_step

__all__ = ["disparity_target", "param_groups", "relative_step"]

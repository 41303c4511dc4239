"""Training building blocks shared by the teacher, student and metric stages."""

from depthlib.training.optim import param_groups

__all__ = ["param_groups"]

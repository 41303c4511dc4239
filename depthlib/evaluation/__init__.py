"""Evaluation: the zero-shot and metric protocols, shared by the evaluation job and training's validation."""

from depthlib.evaluation.protocol import Protocol, score

__all__ = ["Protocol", "score"]

"""Evaluation: the zero-shot and metric protocols (shared by the evaluation job
and training's validation), the standard benchmark layouts, DA-2K, and the
Ray Data evaluation job with its report.

``protocol`` is pure tensor math and imports nothing heavy; the job
(``depthlib.evaluation.job.run_evaluation``) is imported on its own.
"""

from depthlib.evaluation.protocol import Protocol, mean_scores, predicted_depth, score, score_and_depth, valid_pixels

__all__ = ["Protocol", "mean_scores", "predicted_depth", "score", "score_and_depth", "valid_pixels"]

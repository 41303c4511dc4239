"""How a prediction is scored against ground truth: the one implementation.

The evaluation job and training's validation both call :func:`score`, so a
number printed during training means what the evaluation report means.

* Relative (disparity) models, ``alignment="disparity"``: the zero-shot
  protocol of ``shared/EVAL_DATA.md`` (``depthlib.metrics.evaluate_relative``):
  valid = mask and ``min_depth < gt < max_depth``; per-image least-squares
  scale and shift of the predicted disparity to ``1/gt``; aligned disparity
  clamped to ``[1/max_depth, 1/min_depth]``; metrics on ``1/aligned``.
* Metric models, ``alignment="none"``: the prediction is depth in metres,
  clamped to ``[min_depth, max_depth]``, scored directly.

Predictions must already be at the ground truth's size (the released
inference path resizes them back: ``depthlib.inference.predict_images``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor

from depthlib.metrics import depth_metrics, evaluate_relative

ALIGNMENTS = ("disparity", "none")


@dataclass(frozen=True)
class Protocol:
    """Valid depth range (metres, strict bounds) and how predictions are aligned."""

    min_depth: float
    max_depth: float
    alignment: Literal["disparity", "none"] = "disparity"

    def __post_init__(self):
        if not 0 <= self.min_depth < self.max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def valid_pixels(gt_depth: Tensor, mask: Tensor, protocol: Protocol) -> Tensor:
    """``mask`` and ``min_depth < gt < max_depth``: the pixels a score counts."""
    return mask.bool() & (gt_depth > protocol.min_depth) & (gt_depth < protocol.max_depth)


def score(pred: Tensor, gt_depth: Tensor, mask: Tensor, protocol: Protocol) -> dict[str, Tensor]:
    """Per-image metrics of ``depthlib.metrics.depth_metrics`` under ``protocol``.

    Args:
        pred: ``B x H x W`` (or ``H x W``) prediction at the ground truth's
            size: DISPARITY for ``alignment="disparity"``, DEPTH in metres for
            ``"none"``.
        gt_depth: same shape, ground-truth depth in metres (0 = no measurement).
        mask: same shape, bool, True = usable ground truth (dataset mask, crop).

    Returns:
        ``{abs_rel, sq_rel, rmse, rmse_log, log10, silog, d1, d2, d3}``, each of
        shape ``B`` (a benchmark's figure is the mean over images). Raises
        ``ValueError`` if an image has no valid pixel; callers skip such images
        (:func:`valid_pixels` tells which).
    """
    if protocol.alignment == "disparity":
        return evaluate_relative(pred, gt_depth, mask, protocol.min_depth, protocol.max_depth)
    valid = valid_pixels(gt_depth, mask, protocol)
    depth = pred.float().clamp(protocol.min_depth, protocol.max_depth)
    return depth_metrics(depth, gt_depth, valid)


def mean_scores(per_image: list[dict[str, Tensor]]) -> dict[str, float]:
    """Mean over images of per-image metric dicts (each value shape ``B``)."""
    if not per_image:
        return {}
    keys = per_image[0].keys()
    return {k: float(torch.cat([d[k].reshape(-1).double() for d in per_image]).mean()) for k in keys}

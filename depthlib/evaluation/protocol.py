"""How a prediction is scored against ground truth: the one implementation.

The evaluation job (``depthlib.evaluation.job``) and training's validation
both call :func:`score`, so a number printed during training means what the
evaluation report means. Pure functions of tensors; no I/O.

Per image (``shared/EVAL_DATA.md``, "The zero-shot protocol"):

1. Valid pixels (:func:`valid_pixels`): the dataset's mask (its mask file,
   ``gt > 0``, finite), ``min_depth < gt < max_depth`` (strict), and the
   evaluation crop (:func:`crop_mask`) if the protocol names one.
2. The prediction becomes depth (:func:`predicted_depth`), by ``alignment``:

   * ``"disparity"`` (relative models, the default and the Depth Anything
     authors' protocol): least-squares scale and shift of the predicted
     disparity to ``1/gt`` over the valid pixels; aligned disparity clamped to
     ``[1/max_depth, 1/min_depth]``; depth = ``1/aligned``. Invariant to
     ``a*pred + b`` for any ``a != 0``.
   * ``"depth"`` (relative models, Marigold's ``least_square`` space): the
     predicted disparity is inverted to depth (``1/pred`` where ``pred > 0``),
     then a least-squares scale and shift of that depth to ``gt`` over the
     valid pixels with ``pred > 0``; clamped to ``[min_depth, max_depth]``.
     Pixels with ``pred <= 0`` (infinitely far) get ``max_depth``. Invariant
     to a scale of the prediction, not to a shift.
   * ``"none"`` (metric models): the prediction is depth in metres, clamped
     to ``[min_depth, max_depth]``.

3. ``depthlib.metrics.depth_metrics`` over the valid pixels, per image; a
   benchmark's figure is the mean over images (:func:`mean_scores`).

Predictions must already be at the ground truth's size: the released
inference path resizes the model output back, bilinear with aligned corners
(``depthlib.inference.predict_images``, ``depthlib.transforms.resize_prediction``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from depthlib.metrics import align_scale_shift, depth_metrics, pair_accuracy

ALIGNMENTS = ("disparity", "depth", "none")
CROPS = ("eigen_nyu", "eigen_kitti", "garg_kitti")

# KITTI's benchmark crop (applied to the image and ground truth before inference).
KITTI_BENCHMARK_SIZE = (352, 1216)
# NYU's Eigen crop, in pixels of the 480 x 640 frame: rows 45:471, cols 41:601.
NYU_SIZE = (480, 640)
NYU_EIGEN_ROWS, NYU_EIGEN_COLS = (45, 471), (41, 601)
# KITTI's crops as fractions of the (benchmark-cropped) map: rows, then cols.
KITTI_EIGEN_ROWS = (0.3324324, 0.91351351)
KITTI_GARG_ROWS = (0.40810811, 0.99189189)
KITTI_COLS = (0.0359477, 0.96405229)


@dataclass(frozen=True)
class Protocol:
    """Valid depth range (metres, strict bounds), alignment and evaluation crop.

    ``alignment``: ``"disparity"`` | ``"depth"`` (relative models, the
    prediction is disparity) or ``"none"`` (metric models, the prediction is
    metres). ``crop``: ``None`` or one of :data:`CROPS`.
    """

    min_depth: float
    max_depth: float
    alignment: Literal["disparity", "depth", "none"] = "disparity"
    crop: Optional[str] = None

    def __post_init__(self):
        if not 0 <= self.min_depth < self.max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
        if self.crop is not None and self.crop not in CROPS:
            raise ValueError(f"crop must be None or one of {CROPS}, got {self.crop!r}")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- crops


def _span(lo: float, hi: float, n: int) -> tuple[int, int]:
    # int() truncates as in the reference (Eigen / Garg) implementations.
    return int(lo * n), int(hi * n)


def crop_box(crop: str, height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of an evaluation crop in a ``height x width`` map.

    * ``eigen_nyu``: rows 45:471, cols 41:601; only defined for 480 x 640
      (other sizes raise ``ValueError``: the crop is in NYU pixels).
    * ``eigen_kitti``: rows ``int(0.3324324 H):int(0.91351351 H)``, cols
      ``int(0.0359477 W):int(0.96405229 W)``.
    * ``garg_kitti``: rows ``int(0.40810811 H):int(0.99189189 H)``, same cols.
    """
    if crop == "eigen_nyu":
        if (height, width) != NYU_SIZE:
            raise ValueError(f"the NYU Eigen crop is defined on {NYU_SIZE[0]}x{NYU_SIZE[1]} maps, "
                             f"got {height}x{width}")
        return (*NYU_EIGEN_ROWS, *NYU_EIGEN_COLS)
    if crop in ("eigen_kitti", "garg_kitti"):
        rows = KITTI_EIGEN_ROWS if crop == "eigen_kitti" else KITTI_GARG_ROWS
        return (*_span(*rows, height), *_span(*KITTI_COLS, width))
    raise ValueError(f"unknown crop {crop!r}; choose one of {CROPS}")


def crop_mask(crop: Optional[str], height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """``height x width`` bool mask, True inside the evaluation crop (all True for ``None``)."""
    out = torch.zeros(height, width, dtype=torch.bool, device=device)
    if crop is None:
        out[:] = True
        return out
    top, bottom, left, right = crop_box(crop, height, width)
    out[top:bottom, left:right] = True
    return out


def kitti_benchmark_crop(height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, left, 352, 1216)``: KITTI's benchmark crop, applied to the image and
    its ground truth BEFORE inference (``top = H - 352``, ``left = (W - 1216) // 2``).
    Raises ``ValueError`` for an image smaller than 352 x 1216."""
    h, w = KITTI_BENCHMARK_SIZE
    if height < h or width < w:
        raise ValueError(f"KITTI benchmark crop needs at least {h}x{w}, got {height}x{width}")
    return height - h, (width - w) // 2, h, w


# --------------------------------------------------------------------------- scoring


def _batch(*xs: Tensor) -> tuple[bool, list[Tensor]]:
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"pred, gt_depth and mask must have the same shape, got {[tuple(x.shape) for x in xs]}")
    if xs[0].dim() not in (2, 3):
        raise ValueError(f"expected H x W or B x H x W tensors, got shape {tuple(xs[0].shape)}")
    unbatched = xs[0].dim() == 2
    return unbatched, [x[None] if unbatched else x for x in xs]


def valid_pixels(gt_depth: Tensor, mask: Tensor, protocol: Protocol) -> Tensor:
    """``mask`` and ``min_depth < gt < max_depth`` and the protocol's crop: the pixels a score counts.

    ``gt_depth``, ``mask``: ``B x H x W`` (or ``H x W``); returns a bool tensor of that shape.
    """
    valid = mask.bool() & (gt_depth > protocol.min_depth) & (gt_depth < protocol.max_depth)
    if protocol.crop is not None:
        valid = valid & crop_mask(protocol.crop, gt_depth.shape[-2], gt_depth.shape[-1], gt_depth.device)
    return valid


def predicted_depth(pred: Tensor, gt_depth: Tensor, mask: Tensor, protocol: Protocol) -> Tensor:
    """The prediction as the depth map (metres) that :func:`score` measures.

    Args:
        pred: ``B x H x W`` (or ``H x W``) at the ground truth's size: DISPARITY
            for ``alignment`` ``"disparity"`` / ``"depth"``, DEPTH in metres for ``"none"``.
        gt_depth: same shape, ground-truth depth in metres (0 / non-finite = none).
        mask: same shape, bool, True = usable ground truth.

    Returns:
        ``B x H x W`` (or ``H x W``) float depth in ``[min_depth, max_depth]``,
        defined at every pixel (the alignment is fitted on :func:`valid_pixels`
        and applied everywhere), so error maps can show it whole.
    """
    unbatched, (pred, gt_depth, mask) = _batch(pred, gt_depth, mask)
    gt_depth = torch.nan_to_num(gt_depth.float(), nan=0.0, posinf=0.0, neginf=0.0)
    valid = valid_pixels(gt_depth, mask, protocol)
    lo, hi = protocol.min_depth, protocol.max_depth
    if protocol.alignment == "disparity":
        gt_disp = torch.where(valid, 1.0 / torch.where(valid, gt_depth, 1.0), 0.0)
        scale, shift = align_scale_shift(pred, gt_disp, valid)
        aligned = scale[:, None, None] * pred.to(scale.dtype) + shift[:, None, None]
        aligned = aligned.clamp(min=1.0 / hi, max=math.inf if lo == 0 else 1.0 / lo)
        depth = 1.0 / aligned
    elif protocol.alignment == "depth":
        positive = pred > 0
        inv = torch.where(positive, 1.0 / torch.where(positive, pred.float(), 1.0), 0.0)
        scale, shift = align_scale_shift(inv, gt_depth, valid & positive)
        depth = scale[:, None, None] * inv.to(scale.dtype) + shift[:, None, None]
        depth = torch.where(positive, depth, torch.full_like(depth, hi)).clamp(lo, hi)
    else:
        depth = pred.float().clamp(lo, hi)
    return depth[0] if unbatched else depth


def score(pred: Tensor, gt_depth: Tensor, mask: Tensor, protocol: Protocol) -> dict[str, Tensor]:
    """Per-image metrics of ``depthlib.metrics.depth_metrics`` under ``protocol``.

    Args:
        pred: ``B x H x W`` (or ``H x W``) prediction at the ground truth's
            size: DISPARITY for ``alignment="disparity"`` or ``"depth"``, DEPTH
            in metres for ``"none"``.
        gt_depth: same shape, ground-truth depth in metres (0 = no measurement).
        mask: same shape, bool, True = usable ground truth (dataset mask). The
            protocol's range and crop are applied here.

    Returns:
        ``{abs_rel, sq_rel, rmse, rmse_log, log10, silog, d1, d2, d3}``, each of
        shape ``B`` (0-dim for ``H x W`` input); a benchmark's figure is the
        mean over images. Raises ``ValueError`` if an image has no valid pixel;
        callers skip such images (:func:`valid_pixels` tells which).
    """
    return score_and_depth(pred, gt_depth, mask, protocol)[0]


def score_and_depth(pred: Tensor, gt_depth: Tensor, mask: Tensor,
                    protocol: Protocol) -> tuple[dict[str, Tensor], Tensor]:
    """:func:`score` and the :func:`predicted_depth` map it measured (for error maps), computed once."""
    unbatched, (pred, gt_depth, mask) = _batch(pred, gt_depth, mask)
    gt_depth = torch.nan_to_num(gt_depth.float(), nan=0.0, posinf=0.0, neginf=0.0)
    valid = valid_pixels(gt_depth, mask, protocol)
    depth = predicted_depth(pred, gt_depth, mask, protocol)
    out = depth_metrics(depth, gt_depth, valid)
    if unbatched:
        return {k: v[0] for k, v in out.items()}, depth[0]
    return out, depth


def mean_scores(per_image: list[dict[str, Tensor]]) -> dict[str, float]:
    """Mean over images of per-image metric dicts (each value shape ``B`` or 0-dim)."""
    if not per_image:
        return {}
    keys = per_image[0].keys()
    return {k: float(torch.cat([d[k].reshape(-1).double() for d in per_image]).mean()) for k in keys}


# --------------------------------------------------------------------------- DA-2K


def pairs_correct(pred: Any, pairs: Sequence[dict], metric: bool = False, image: str = "") -> int:
    """Number of DA-2K pairs of one image that the prediction orders right.

    ``pred``: ``H x W`` prediction at the image's size (tensor or array):
    DISPARITY (larger = closer) for a relative model, DEPTH in metres
    (smaller = closer) for ``metric=True``. ``pairs``: that image's
    ``[{"point1": [row, col], "point2": [row, col], "closer_point": "point1"}, ...]``.
    A pair is right when the labelled closer point is strictly closer in the
    prediction; ties are wrong. Raises ``ValueError`` (naming ``image``) for a
    point outside the image or a malformed pair.
    """
    if isinstance(pred, Tensor):
        pred = pred.detach().float().cpu().numpy()
    disparity = -np.asarray(pred, dtype=np.float64) if metric else np.asarray(pred)
    if not pairs:
        return 0
    return pair_accuracy(disparity, {image: list(pairs)})["correct"]

"""Depth evaluation: least-squares alignment, standard depth metrics, DA-2K.

Pure functions of tensors and masks (the losses in ``depthlib.losses`` reuse
``align_scale_shift`` from here, so the alignment exists once). Conventions:

* ``pred`` / ``target`` are ``B x H x W`` float tensors (``H x W`` is taken as
  a batch of one); ``mask`` is ``B x H x W`` bool, True = valid pixel.
* "depth" is metric-like depth (metres, or any unit shared by pred and
  target); "disparity" is inverse depth, the quantity relative models predict
  up to an unknown per-image scale and shift.
* Values at masked-out pixels never reach a result: they are replaced before
  any arithmetic, so NaN/inf there is harmless.

Run the tests with ``python -m pytest tests/test_metrics.py -q``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["align_scale_shift", "depth_metrics", "evaluate_relative", "pair_accuracy"]

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "d1", "d2", "d3")

# Predicted depth is clamped to this before division and logs so a bad
# prediction gives a large error, not NaN.
_DEPTH_EPS = 1e-8


def _check_shapes(pred: Tensor, target: Tensor, mask: Tensor) -> None:
    if pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(
            f"pred, target and mask must have the same shape, got "
            f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}")
    if pred.dim() not in (2, 3):
        raise ValueError(f"expected H x W or B x H x W tensors, got shape {tuple(pred.shape)}")


def _as_batch(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    _check_shapes(pred, target, mask)
    if pred.dim() == 2:
        pred, target, mask = pred[None], target[None], mask[None]
    return pred, target, mask.bool()


def align_scale_shift(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image least-squares ``scale, shift`` minimising ``|scale*pred + shift - target|^2``.

    Args:
        pred: ``B x H x W`` (or ``H x W``) prediction, any affine-invariant
            quantity (in this project: disparity).
        target: same shape, the quantity to align to (e.g. ground-truth disparity).
        mask: same shape, bool, True = pixel takes part in the fit.

    Returns:
        ``(scale, shift)``, each of shape ``B`` (0-dim for ``H x W`` input), in
        the floating dtype of ``pred`` (at least float32). Differentiable
        with respect to ``pred`` and ``target``.

    The 2x2 normal equations are solved in closed form on centred values in
    float64 (``scale = cov(p, t) / var(p)``, ``shift = mean(t) - scale*mean(p)``),
    which avoids the cancellation of the raw ``sum(p^2)*n - sum(p)^2``
    determinant. Degenerate images never give NaN:

    * no valid pixel: ``scale = 1, shift = 0`` (nothing to fit, identity);
    * one valid pixel, or a prediction constant over the valid pixels (relative
      spread below a few float ulps): ``scale = 0, shift = mean(target)``, the
      best fit that does not divide by a zero variance.
    """
    unbatched = pred.dim() == 2
    pred, target, mask = _as_batch(pred, target, mask)
    out_dtype = torch.promote_types(pred.dtype, torch.float32)
    in_eps = torch.finfo(out_dtype).eps

    p = torch.where(mask, pred.double(), 0.0).flatten(1)
    t = torch.where(mask, target.double(), 0.0).flatten(1)
    m = mask.flatten(1)
    n = m.sum(dim=1).double()
    n_safe = n.clamp_min(1.0)

    mean_p = p.sum(dim=1) / n_safe
    mean_t = t.sum(dim=1) / n_safe
    dp = torch.where(m, p - mean_p[:, None], 0.0)
    dt = torch.where(m, t - mean_t[:, None], 0.0)
    var_p = (dp * dp).sum(dim=1) / n_safe
    cov = (dp * dt).sum(dim=1) / n_safe
    mean_sq_p = (p * p).sum(dim=1) / n_safe

    degenerate = var_p <= (4.0 * in_eps) ** 2 * mean_sq_p
    scale = torch.where(degenerate, 0.0, cov / torch.where(degenerate, 1.0, var_p))
    shift = mean_t - scale * mean_p
    empty = n == 0
    scale = torch.where(empty, 1.0, scale)
    shift = torch.where(empty, 0.0, shift)

    scale, shift = scale.to(out_dtype), shift.to(out_dtype)
    if unbatched:
        scale, shift = scale[0], shift[0]
    return scale, shift


def depth_metrics(pred: Tensor, target: Tensor, mask: Tensor,
                  reduction: str = "per_image") -> dict[str, Tensor]:
    """Standard depth metrics over valid pixels (definitions of the official
    Depth-Anything-V2 ``metric_depth/util/metric.py`` ``eval_depth``).

    Args:
        pred: ``B x H x W`` (or ``H x W``) predicted DEPTH, same unit as target.
            Clamped to ``1e-8`` so non-positive values give large errors, not NaN.
        target: same shape, ground-truth DEPTH; must be > 0 where valid.
        mask: same shape, bool, True = valid. Pixels with ``target <= 0`` are
            treated as invalid too (0 is the usual "no measurement" value).
        reduction: ``"per_image"`` (default; each metric computed per image,
            values of shape ``B``, to be averaged over the dataset by the caller
            as the official evaluation does) or ``"pooled"`` (all valid pixels
            of the batch as one set, 0-dim values).

    Returns:
        ``{abs_rel, sq_rel, rmse, rmse_log, log10, silog, d1, d2, d3}``, with
        ``d = log(pred) - log(target)`` (natural log):
        ``abs_rel = mean(|p-g|/g)``, ``sq_rel = mean((p-g)^2/g)``,
        ``rmse = sqrt(mean((p-g)^2))``, ``rmse_log = sqrt(mean(d^2))``,
        ``log10 = mean(|log10 p - log10 g|)``,
        ``silog = sqrt(mean(d^2) - 0.5*mean(d)^2)``, and
        ``dk = mean(max(p/g, g/p) < 1.25**k)``.

    Raises:
        ValueError: when there is no valid pixel (``"pooled"``) or some image
            has none (``"per_image"``; filter such images out first). This is
            the one host sync here; an undefined metric must not become a
            number that looks like a score.
    """
    if reduction not in ("per_image", "pooled"):
        raise ValueError(f"reduction must be 'per_image' or 'pooled', got {reduction!r}")
    pred, target, mask = _as_batch(pred, target, mask)
    out_dtype = torch.promote_types(pred.dtype, torch.float32)

    valid = mask & (target > 0)
    if reduction == "pooled":
        valid = valid.flatten()[None]
        pred, target = pred.flatten()[None], target.flatten()[None]
    else:
        valid = valid.flatten(1)
        pred, target = pred.flatten(1), target.flatten(1)
    n = valid.sum(dim=1)
    empty = (n == 0).nonzero().flatten().tolist()
    if empty:
        where = "the batch" if reduction == "pooled" else f"image(s) {empty} of the batch"
        raise ValueError(f"depth_metrics: no valid pixel in {where}")

    p = torch.where(valid, pred.double(), 1.0).clamp_min(_DEPTH_EPS)
    g = torch.where(valid, target.double(), 1.0)
    n = n.double()

    def mean(x: Tensor) -> Tensor:
        return torch.where(valid, x, 0.0).sum(dim=1) / n

    diff = p - g
    d = torch.log(p) - torch.log(g)
    ratio = torch.maximum(p / g, g / p)
    out = {
        "abs_rel": mean(diff.abs() / g),
        "sq_rel": mean(diff * diff / g),
        "rmse": mean(diff * diff).sqrt(),
        "rmse_log": mean(d * d).sqrt(),
        "log10": mean((torch.log10(p) - torch.log10(g)).abs()),
        # Rounding can leave a tiny negative when d is constant.
        "silog": (mean(d * d) - 0.5 * mean(d) ** 2).clamp_min(0.0).sqrt(),
        "d1": mean((ratio < 1.25).double()),
        "d2": mean((ratio < 1.25 ** 2).double()),
        "d3": mean((ratio < 1.25 ** 3).double()),
    }
    if reduction == "pooled":
        out = {k: v[0] for k, v in out.items()}
    return {k: v.to(out_dtype) for k, v in out.items()}


def evaluate_relative(pred_disparity: Tensor, gt_depth: Tensor, mask: Tensor,
                      min_depth: float, max_depth: float,
                      reduction: str = "per_image") -> dict[str, Tensor]:
    """Zero-shot relative-depth protocol: affine-align disparity, then depth metrics.

    Args:
        pred_disparity: ``B x H x W`` (or ``H x W``) predicted DISPARITY, known
            only up to per-image scale and shift.
        gt_depth: same shape, ground-truth DEPTH.
        mask: same shape, bool, True = usable ground truth.
        min_depth, max_depth: evaluation range of the benchmark (e.g. NYU
            1e-3..10, KITTI 1e-3..80); only pixels with
            ``min_depth < gt < max_depth`` count.
        reduction: passed to ``depth_metrics``.

    Steps: valid = mask & gt in (min_depth, max_depth); gt disparity = 1/gt;
    least-squares scale and shift of the prediction to the gt disparity per
    image over valid pixels; aligned disparity clamped to
    ``[1/max_depth, 1/min_depth]`` (keeps depth finite and positive); depth =
    1/aligned; ``depth_metrics`` over the valid pixels. The result is
    invariant to ``a*pred_disparity + b`` for any ``a != 0``.
    """
    if not 0 <= min_depth < max_depth:
        raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
    pred_disparity, gt_depth, mask = _as_batch(pred_disparity, gt_depth, mask)
    valid = mask & (gt_depth > min_depth) & (gt_depth < max_depth)
    gt_disp = torch.where(valid, 1.0 / torch.where(valid, gt_depth, 1.0), 0.0)

    scale, shift = align_scale_shift(pred_disparity, gt_disp, valid)
    aligned = scale[:, None, None] * pred_disparity.to(scale.dtype) + shift[:, None, None]
    hi = math.inf if min_depth == 0 else 1.0 / min_depth
    aligned = aligned.clamp(min=1.0 / max_depth, max=hi)
    depth = 1.0 / aligned
    return depth_metrics(depth, gt_depth, valid, reduction=reduction)


def _point(point: Any, shape: tuple[int, int], image: str, which: str) -> tuple[int, int]:
    try:
        h, w = point
        if int(h) != h or int(w) != w:
            raise TypeError
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise ValueError(f"{image}: {which} {point!r} is not an integer [h, w] pair") from None
    if not (0 <= h < shape[0] and 0 <= w < shape[1]):
        raise ValueError(f"{image}: {which} {[h, w]} lies outside the {shape[0]}x{shape[1]} image")
    return h, w


def _to_numpy_2d(disparity: Any, image: str) -> np.ndarray:
    if isinstance(disparity, Tensor):
        disparity = disparity.detach().float().cpu().numpy()
    arr = np.asarray(disparity)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{image}: disparity must be H x W, got shape {arr.shape}")
    return arr


def _image_pairs_correct(disp: np.ndarray, pairs: Sequence[Mapping[str, Any]],
                         image: str) -> int:
    correct = 0
    for pair in pairs:
        p1 = _point(pair["point1"], disp.shape, image, "point1")
        p2 = _point(pair["point2"], disp.shape, image, "point2")
        closer = pair["closer_point"]
        if closer == "point1":
            near, far = p1, p2
        elif closer == "point2":
            near, far = p2, p1
        else:
            raise ValueError(f"{image}: closer_point must be 'point1' or 'point2', got {closer!r}")
        # Strictly greater: a tie says nothing about order, so it counts as wrong.
        correct += bool(disp[near] > disp[far])
    return correct


def pair_accuracy(disparity: Any, pairs: Any) -> dict[str, Any]:
    """DA-2K relative-depth pair accuracy.

    Args:
        disparity: predicted DISPARITY (larger = closer), either one image
            (``H x W`` tensor or ndarray) or a dict ``{image_path: H x W}``.
        pairs: for a dict of images, the DA-2K annotation dict
            ``{image_path: [{"point1": [h, w], "point2": [h, w],
            "closer_point": "point1" | "point2"}, ...]}``; for one image,
            either that image's list of pair dicts or an annotation dict with
            exactly one image. Points are integer ``[row, column]`` pixels.

    A pair is right when the point labelled closer has the strictly LARGER
    predicted disparity; ties count as wrong. Images with an empty pair list
    are left out of ``per_image``; predictions without annotations are ignored.

    Returns:
        ``{"accuracy": correct/total, "correct": int, "total": int,
        "per_image": {path: fraction}}`` (python numbers). For one image with a
        bare list of pairs, its ``per_image`` key is ``""``.

    Raises:
        ValueError: a point outside its image or not an integer pair, an
            unknown ``closer_point``, an annotated image without prediction, or
            no pairs at all.
    """
    if isinstance(disparity, Mapping):
        if not isinstance(pairs, Mapping):
            raise ValueError("with a dict of disparities, pairs must be the annotation dict")
        images, annotations = disparity, pairs
    elif isinstance(pairs, Mapping):
        if len(pairs) != 1:
            raise ValueError(
                f"one disparity map given but annotations cover {len(pairs)} images")
        (name,) = pairs
        images, annotations = {name: disparity}, pairs
    else:
        images, annotations = {"": disparity}, {"": pairs}

    correct = total = 0
    per_image: dict[str, float] = {}
    for image, image_pairs in annotations.items():
        if not image_pairs:
            continue
        if image not in images:
            raise ValueError(f"no disparity given for annotated image {image!r}")
        disp = _to_numpy_2d(images[image], image)
        n_right = _image_pairs_correct(disp, image_pairs, image)
        per_image[image] = n_right / len(image_pairs)
        correct += n_right
        total += len(image_pairs)
    if total == 0:
        raise ValueError("pair_accuracy: no pairs to evaluate")
    return {"accuracy": correct / total, "correct": correct, "total": total,
            "per_image": per_image}

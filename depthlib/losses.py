"""Training losses for Depth Anything V2: relative (disparity) and metric depth.

Pure functions of tensors and masks: no ``.item()``, no ``torch.distributed``,
no hidden state, so they are identical under DDP, on resume and in tests.
Conventions:

* ``pred`` / ``target`` are ``B x H x W`` float tensors, ``mask`` is
  ``B x H x W`` bool with True = valid pixel.
* Relative-depth losses (``ssi_loss``, ``gradient_matching_loss``,
  ``relative_depth_loss``) work in DISPARITY (inverse depth) space: the model
  predicts disparity up to an unknown per-image scale and shift, and the
  target is disparity too (ground-truth 1/depth, or a teacher's pseudo label).
* ``silog_loss`` works on metric DEPTH in metres.
* ``masked_patch_loss`` (self-supervised pretraining of the encoder) works on
  images: ``B x 3 x H x W`` normalised, and per-patch predictions ``B x N x
  (14*14*3)`` with ``B x N`` bool patch masks (True = hidden).
* Values at masked-out pixels never reach a loss or a gradient (they are
  replaced before any arithmetic), so NaN/inf there is harmless.
* An image without valid pixels contributes a loss of 0 and is left out of
  batch means; a batch without any valid pixel gives a loss of exactly 0 that
  is still connected to the graph (``backward`` works, gradients are 0). No
  function here raises on empty masks, since that would need a host sync.

Computation is done in at least float32 (alignment in float64), whatever the
autocast dtype of the prediction.

Run the tests with ``python -m pytest tests/test_losses.py -q``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from depthlib.metrics import align_scale_shift

__all__ = [
    "align_scale_shift",
    "ssi_loss",
    "gradient_matching_loss",
    "relative_depth_loss",
    "feature_alignment_loss",
    "silog_loss",
    "median_and_mad",
    "patchify",
    "random_patch_masks",
    "masked_patch_loss",
    "feature_spread",
]

_METHODS = ("lstsq", "median")
_REDUCTIONS = ("mean", "none")


def _prepare(pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Check shapes, upcast to >= float32 and zero the masked-out pixels.

    Zeroing here (not later) matters for gradients: ``torch.where`` passes a
    zero gradient to the unselected branch, but ops between the input and
    that ``where`` would still multiply it by NaN/inf values.
    """
    if pred.shape != target.shape or pred.shape != mask.shape:
        raise ValueError(
            f"pred, target and mask must have the same shape, got "
            f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}")
    if pred.dim() != 3:
        raise ValueError(f"expected B x H x W tensors, got shape {tuple(pred.shape)}")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    mask = mask.bool()
    pred = torch.where(mask, pred.to(dtype), 0.0)
    target = torch.where(mask, target.to(dtype), 0.0)
    return pred, target, mask


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def median_and_mad(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per image (shape ``B``): median and mean absolute deviation from it, over
    valid pixels. The median is torch's: the lower of the two middle values
    for an even count. An image without valid pixels gives ``(0, 0)``."""
    flat = x.flatten(1)
    m = mask.flatten(1)
    med = torch.nanmedian(flat.masked_fill(~m, float("nan")), dim=1).values
    med = torch.nan_to_num(med, nan=0.0)
    centred = torch.where(m, flat - med[:, None], 0.0)
    mad = centred.abs().sum(dim=1) / m.sum(dim=1).clamp_min(1)
    return med, mad


def _median_normalise(x: Tensor, mask: Tensor) -> Tensor:
    """``(x - median) / mean|x - median|`` per image over valid pixels (V1 paper).
    A constant image (zero deviation) maps to 0 instead of NaN."""
    med, mad = median_and_mad(x, mask)
    centred = torch.where(mask.flatten(1), x.flatten(1) - med[:, None], 0.0)
    safe_mad = torch.where(mad > 0, mad, 1.0)
    return (centred / safe_mad[:, None]).view_as(x)


def _aligned_pair(pred: Tensor, target: Tensor, mask: Tensor, method: str) -> tuple[Tensor, Tensor]:
    """Map (pred, target) into the space where they are compared.

    ``"lstsq"``: (scale*pred + shift, target) with the per-image least-squares
    fit of ``align_scale_shift`` (MiDaS). Where that fit's scale is negative
    (the prediction is inverted), the image is aligned instead by matching
    median and mean absolute deviation (``scale = MAD(target) / MAD(pred) >
    0``): a disparity prediction must rise where the target rises. With a free
    sign, a model trained from scratch was measured to settle on inverted
    disparity (92% of held-out images fitted with a negative scale after 300
    steps), which the loss could not see; clamping the scale at 0 instead
    leaves inverted images without any gradient (measured: training stalls).
    ``"median"``: both normalised by ``_median_normalise`` (Depth Anything V1 /
    MiDaS paper). Inputs come from ``_prepare``; the outputs are 0 at
    masked-out pixels.
    """
    if method == "lstsq":
        scale, shift = align_scale_shift(pred, target, mask)
        med_p, mad_p = median_and_mad(pred, mask)
        med_t, mad_t = median_and_mad(target, mask)
        robust_scale = (mad_t / torch.where(mad_p > 0, mad_p, 1.0)).to(scale.dtype)
        inverted = scale < 0
        scale = torch.where(inverted, robust_scale, scale)
        shift = torch.where(inverted, (med_t - robust_scale * med_p).to(shift.dtype), shift)
        aligned = scale[:, None, None] * pred + shift[:, None, None]
        return torch.where(mask, aligned, 0.0), target
    return _median_normalise(pred, mask), _median_normalise(target, mask)


def _batch_mean(per_image: Tensor, has_valid: Tensor) -> Tensor:
    """Mean over images that have valid pixels; 0 (graph-connected) if none."""
    return (per_image * has_valid).sum() / has_valid.sum().clamp_min(1)


def _ssi_per_image(a: Tensor, b: Tensor, mask: Tensor, trim: float) -> Tensor:
    """Mean |a - b| over valid pixels of each image, dropping the largest ``trim`` share."""
    err = torch.where(mask, (a - b).abs(), 0.0).flatten(1)
    m = mask.flatten(1)
    n = m.sum(dim=1)
    if trim == 0.0:
        return err.sum(dim=1) / n.clamp_min(1)
    # Keep the n - floor(trim*n) smallest errors; the tiny epsilon stops
    # 0.29*100 = 28.999... from keeping one pixel too many.
    n_keep = n - torch.floor(n.double() * trim + 1e-9).long()
    ranked, _ = torch.sort(err.masked_fill(~m, float("inf")), dim=1)
    keep = torch.arange(err.shape[1], device=err.device)[None] < n_keep[:, None]
    return torch.where(keep, ranked, 0.0).sum(dim=1) / n_keep.clamp_min(1)


def _gradient_per_image(residual: Tensor, mask: Tensor, scales: int) -> tuple[Tensor, Tensor]:
    """MiDaS multi-scale gradient term per image and scale.

    Returns ``(loss, has_valid)`` of shape ``scales x B``: at scale k the
    residual and mask are subsampled with stride ``2**k``; the loss is
    ``(sum |dR/dx| + sum |dR/dy|) / M_k`` over neighbour pairs whose two
    pixels are valid, ``M_k`` the number of valid pixels at that scale.
    """
    losses, has = [], []
    for k in range(scales):
        step = 2 ** k
        r = residual[:, ::step, ::step]
        m = mask[:, ::step, ::step]
        mx = m[:, :, 1:] & m[:, :, :-1]
        my = m[:, 1:, :] & m[:, :-1, :]
        gx = torch.where(mx, (r[:, :, 1:] - r[:, :, :-1]).abs(), 0.0).sum(dim=(1, 2))
        gy = torch.where(my, (r[:, 1:, :] - r[:, :-1, :]).abs(), 0.0).sum(dim=(1, 2))
        n = m.sum(dim=(1, 2))
        losses.append((gx + gy) / n.clamp_min(1))
        has.append(n > 0)
    return torch.stack(losses), torch.stack(has)


def _reduce_gradient(losses: Tensor, has_valid: Tensor, reduction: str) -> Tensor:
    """Sum over scales of the per-scale means (or per image with ``"none"``)."""
    if reduction == "none":
        return losses.sum(dim=0)
    return sum(_batch_mean(l, h) for l, h in zip(losses, has_valid))


def ssi_loss(pred: Tensor, target: Tensor, mask: Tensor, method: str = "lstsq",
             reduction: str = "mean", trim: float = 0.0) -> Tensor:
    """Scale-and-shift-invariant loss on DISPARITY.

    Args:
        pred: ``B x H x W`` predicted disparity (any per-image scale and shift).
        target: ``B x H x W`` target disparity.
        mask: ``B x H x W`` bool, True = valid.
        method: ``"lstsq"`` (default, MiDaS: least-squares align pred to target
            per image, then mean absolute difference) or ``"median"`` (V1
            paper: subtract the per-image median, divide by the mean absolute
            deviation, for pred and target alike, then mean absolute difference).
        reduction: ``"mean"`` (0-dim mean over images with valid pixels) or
            ``"none"`` (per-image losses, shape ``B``; 0 for empty images).
        trim: in ``[0, 1)``; per image the ``floor(trim * n_valid)`` largest
            per-pixel errors are ignored and the rest averaged (Depth Anything
            uses 0.1 on pseudo labels). The alignment itself uses every valid
            pixel, as in MiDaS.

    Returns:
        Loss in disparity units of ``target`` (``"lstsq"``) or unitless
        (``"median"``).
    """
    _check_method(method)
    _check_reduction(reduction)
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"trim must be in [0, 1), got {trim}")
    pred, target, mask = _prepare(pred, target, mask)
    a, b = _aligned_pair(pred, target, mask, method)
    per_image = _ssi_per_image(a, b, mask, trim)
    if reduction == "none":
        return per_image
    return _batch_mean(per_image, mask.flatten(1).any(dim=1))


def gradient_matching_loss(pred: Tensor, target: Tensor, mask: Tensor, scales: int = 4,
                           method: str = "lstsq", reduction: str = "mean") -> Tensor:
    """MiDaS multi-scale gradient-matching loss on the aligned DISPARITY residual.

    The prediction is first aligned to the target per image (``method`` as in
    ``ssi_loss``), so the loss is invariant to ``a*pred + b`` for ``a > 0``. With residual ``R = aligned_pred - target``,
    at each scale ``k < scales`` (stride ``2**k`` subsampling, ``[:, ::s, ::s]``)
    the per-image term is ``(sum|grad_x R| + sum|grad_y R|) / M_k`` over
    neighbour pairs whose two pixels are valid, ``M_k`` = valid pixels at that
    scale. Reduction is MiDaS's "image-based" one: each scale is averaged over
    the images with valid pixels at that scale, and the scales are summed.

    Args:
        pred, target: ``B x H x W`` disparity; mask: ``B x H x W`` bool.
        scales: number of scales (4 in MiDaS / Depth Anything).
        reduction: ``"mean"`` (0-dim) or ``"none"`` (per image, shape ``B``:
            the per-image terms summed over scales).
    """
    _check_method(method)
    _check_reduction(reduction)
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    pred, target, mask = _prepare(pred, target, mask)
    a, b = _aligned_pair(pred, target, mask, method)
    return _reduce_gradient(*_gradient_per_image(a - b, mask, scales), reduction)


def relative_depth_loss(pred: Tensor, target: Tensor, mask: Tensor, ssi_weight: float = 1.0,
                        gm_weight: float = 2.0, trim: float = 0.0,
                        method: str = "lstsq", reduction: str = "mean") -> dict[str, Tensor]:
    """The Depth Anything relative-depth objective on DISPARITY.

    ``loss = ssi_weight * ssi + gm_weight * gm`` with the published 1:2
    weighting. ``trim`` applies to the ssi term only (0.1 for pseudo labels:
    the top 10% largest per-pixel errors of each image are ignored). The
    per-image alignment is computed once and shared by both terms.

    Args:
        pred, target: ``B x H x W`` disparity; mask: ``B x H x W`` bool.

        reduction: ``"mean"`` (0-dim, each term averaged over the images
            with valid pixels) or ``"none"`` (per image, shape ``B``; 0 for
            images without valid pixels).

    Returns:
        ``{"loss", "ssi", "gm"}``; ``ssi`` and ``gm`` unweighted.
    """
    _check_method(method)
    _check_reduction(reduction)
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"trim must be in [0, 1), got {trim}")
    pred, target, mask = _prepare(pred, target, mask)
    a, b = _aligned_pair(pred, target, mask, method)
    ssi = _ssi_per_image(a, b, mask, trim)
    gm = _gradient_per_image(a - b, mask, 4)
    if reduction == "mean":
        ssi = _batch_mean(ssi, mask.flatten(1).any(dim=1))
    gm = _reduce_gradient(*gm, reduction)
    return {"loss": ssi_weight * ssi + gm_weight * gm, "ssi": ssi, "gm": gm}


def _feature_alignment_one(student: Tensor, frozen: Tensor, margin: float) -> Tensor:
    if student.shape != frozen.shape or student.dim() != 3:
        raise ValueError(
            f"features must be matching B x N x C tensors, got "
            f"{tuple(student.shape)} and {tuple(frozen.shape)}")
    dtype = torch.promote_types(student.dtype, torch.float32)
    cos = F.cosine_similarity(student.to(dtype), frozen.detach().to(dtype), dim=-1, eps=1e-8)
    return torch.where(cos > margin, 0.0, 1.0 - cos).mean()


def feature_alignment_loss(student_feats: Tensor | Sequence[Tensor],
                           frozen_feats: Tensor | Sequence[Tensor],
                           margin: float = 0.85) -> Tensor:
    """Feature-alignment loss with a tolerance margin (Depth Anything V1).

    Args:
        student_feats: ``B x N x C`` encoder tokens of the student, or a list
            of such (e.g. several blocks); list entries are averaged.
        frozen_feats: the frozen pretrained encoder's tokens, same structure.
            Detached here, so no gradient ever reaches the frozen encoder.
        margin: tokens whose cosine similarity already exceeds it add no loss.

    Returns:
        0-dim ``mean over tokens of (1 - cos)``, with tokens above the margin
        counted as 0 (they stay in the denominator). Range ``[0, 2]``.
    """
    if isinstance(student_feats, Tensor) != isinstance(frozen_feats, Tensor):
        raise ValueError("student_feats and frozen_feats must both be tensors or both lists")
    if isinstance(student_feats, Tensor):
        return _feature_alignment_one(student_feats, frozen_feats, margin)
    if len(student_feats) != len(frozen_feats) or not student_feats:
        raise ValueError(
            f"need equally long non-empty feature lists, got "
            f"{len(student_feats)} and {len(frozen_feats)}")
    parts = [_feature_alignment_one(s, f, margin) for s, f in zip(student_feats, frozen_feats)]
    return torch.stack(parts).mean()


def silog_loss(pred: Tensor, target: Tensor, mask: Tensor, lambd: float = 0.5,
               eps: float = 1e-6) -> Tensor:
    """Scale-invariant log loss on metric DEPTH in metres (official V2 ``SiLogLoss``).

    ``d = log(target) - log(pred)`` over the valid pixels of the whole batch
    (pooled, as the official loss indexes ``target[valid_mask]``), and
    ``loss = sqrt(mean(d^2) - lambd * mean(d)^2)``.

    Args:
        pred: ``B x H x W`` predicted depth (m); clamped to ``eps`` before the log.
        target: ``B x H x W`` ground-truth depth (m), > 0 where valid (also
            clamped to ``eps``, so a stray 0 cannot make a NaN).
        mask: ``B x H x W`` bool, True = valid (typically
            ``min_depth <= target <= max_depth``).
        lambd: variance weight; 0.5 in Depth Anything V2.

    The argument of the sqrt is clamped below at ``1e-12``: rounding can make
    it a tiny negative, and sqrt's gradient is infinite at 0. So a perfect
    prediction gives 1e-6 rather than 0, with zero (finite) gradient.
    No valid pixel: 0.
    """
    pred, target, mask = _prepare(pred, target, mask)
    d = torch.log(target.clamp_min(eps)) - torch.log(pred.clamp_min(eps))
    d = torch.where(mask, d, 0.0)
    n = mask.sum()
    n_safe = n.clamp_min(1)
    var = (d * d).sum() / n_safe - lambd * (d.sum() / n_safe) ** 2
    return torch.where(n > 0, var.clamp_min(1e-12).sqrt(), 0.0)


# --------------------------------------------------------------------------- masked-image pretraining


def patchify(images: Tensor, patch: int) -> Tensor:
    """``B x 3 x H x W`` -> ``B x N x (patch * patch * 3)``, patches in row-major
    order (the ViT's token order), each flattened as ``(row, column, channel)``."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not a multiple of the patch size {patch}")
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, patch * patch * c)


def random_patch_masks(batch: int, patches: int, ratio: float, generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu") -> Tensor:
    """``batch x patches`` bool: exactly ``round(ratio * patches)`` (at least 1,
    at most ``patches - 1``) hidden patches per image, uniformly at random."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    k = min(max(1, round(ratio * patches)), patches - 1)
    noise = torch.rand(batch, patches, generator=generator, device=generator.device if generator else device)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    return (ranks < k).to(device)


def masked_patch_loss(pred: Tensor, images: Tensor, masks: Tensor, patch: int, eps: float = 1e-6) -> Tensor:
    """Mean squared error of the predicted pixels of the HIDDEN patches (MAE's
    objective with ``norm_pix_loss``; SimMIM's linear head).

    Each target patch is normalised by its own mean and standard deviation
    over its ``patch * patch * 3`` values, so the encoder must predict a
    patch's structure (edges, texture, shading), not its colour; a
    prediction of 0 everywhere scores about 1.

    Args:
        pred: ``B x N x (patch * patch * 3)`` predicted pixels (any float dtype).
        images: ``B x 3 x H x W`` the encoder's input (normalised), ``N = (H/patch) * (W/patch)``.
        masks: ``B x N`` bool, True where a patch was hidden from the encoder.
    Returns: 0-dim float32; 0 (connected to the graph) when nothing is hidden.
    """
    target = patchify(images.float(), patch)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    target = (target - mean) / (var + eps).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(-1)
    m = masks.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


def masked_feature_loss(pred: Tensor, target: Tensor, masks: Tensor) -> Tensor:
    """Mean squared error of the predicted features of the HIDDEN patches
    (iBOT's and data2vec's masked-token objective, with data2vec's regression
    target rather than iBOT's softmax over prototypes).

    Args:
        pred: ``B x N x C`` the masked pass's predicted tokens (any float dtype).
        target: ``B x N x C`` the target tokens of the unmasked image, no
            gradient (:meth:`MaskedImageModel.targets`: instance-normalised over
            the tokens of each image and channel, so a target shared by every
            patch is 0 and a prediction of 0 scores about 1).
        masks: ``B x N`` bool, True where a patch was hidden.
    Returns: 0-dim float32; 0 (connected to the graph) when nothing is hidden.
    """
    per_patch = (pred.float() - target.detach().float()).pow(2).mean(-1)
    m = masks.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


def feature_spread(tokens: Tensor) -> Tensor:
    """How much an encoder's features differ between images: the standard
    deviation over the batch of each image's mean patch token, averaged over
    channels (``tokens``: ``B x N x C``, after the encoder's LayerNorm).

    A collapsed encoder (the same features for every image) scores 0; the
    score is compared with the same encoder's at initialisation. Needs B >= 2."""
    pooled = tokens.float().mean(1)
    return pooled.std(0, unbiased=True).mean()

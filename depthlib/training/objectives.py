"""What differs between the pretraining, teacher, student and metric stages: model, target, loss, validation.

The training loop is the same for all four (``depthlib.training.loop``); a
:class:`Stage` picks the small pieces:

=========  ===================  ===============================================  ==============
stage      target (examples)    objective                                        validation
=========  ===================  ===============================================  ==============
pretrain   none (images only;   masked-image modelling: hide 60% of the patches, held-out masked
           any shard, labels    predict their normalised pixels (encoder +       loss, feature
           unread)              linear pixel head, ``MaskedImageModel``)          spread, PCA picture
teacher    1/depth (disparity)  ssi + 2 gm (gm ramped in over --gm-ramp-steps)  zero-shot, AbsRel
student    pseudo disparity     ssi (largest 10% ignored) + 2 gm, per CutMix      zero-shot, AbsRel
                                region; + feature alignment to a frozen encoder
metric     depth, metres        SiLog (lambda 0.5) on (min_depth, max_depth)     metres, AbsRel
=========  ===================  ===============================================  ==============
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from depthlib.losses import (feature_alignment_loss, feature_spread, masked_patch_loss, median_and_mad,
                             random_patch_masks, relative_depth_loss, silog_loss)
from depthlib.models.specs import PATCH_SIZE


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # an ``examples.TargetKind``
    metric: bool  # metric head (sigmoid x max_depth) and validation in metres
    predicts_depth: bool = True  # False: pretraining (an encoder and its pretext head, no depth)

    @property
    def encoder_only_init(self) -> bool:
        """``--init-from`` gives the encoder only (metric: a fresh metric head; pretrain: no depth head)."""
        return self.metric or not self.predicts_depth


STAGES = {
    "pretrain": Stage("pretrain", "none", metric=False, predicts_depth=False),
    "teacher": Stage("teacher", "inverse_depth", metric=False),
    "student": Stage("student", "disparity", metric=False),
    "metric": Stage("metric", "metric_depth", metric=True),
}


def build_stage_model(stage: Stage, encoder: str, max_depth: float, pretrain_target: str = "pixels") -> torch.nn.Module:
    """The stage's randomly initialised model: ``DepthAnythingV2`` (relative or
    metric head) or, for pretraining, ``MaskedImageModel`` (with
    ``pretrain_target``); both keep the encoder under ``.pretrained``."""
    if not stage.predicts_depth:
        from depthlib.models.masked_image import MaskedImageModel

        return MaskedImageModel(encoder, pretrain_target)
    from depthlib.models import build_model

    return build_model(encoder, metric=stage.metric, max_depth=max_depth)


def normalise_disparity(target: Tensor, mask: Tensor) -> Tensor:
    """``target`` divided per image by its mean absolute deviation from the
    median over valid pixels (``B x H x W``; images without spread unchanged).

    The relative loss is invariant to the prediction's scale but proportional
    to the target's: in raw 1/m a scene with a near object would outweigh a
    distant one by its disparity, and a teacher's output scale is arbitrary.
    Normalised, every image weighs the same (measured on the tiny teacher:
    held-out AbsRel 0.332/0.337 against 0.345-0.362 unnormalised, two seeds)."""
    _, mad = median_and_mad(target, mask)
    return target / torch.where(mad > 0, mad, 1.0).to(target.dtype)[:, None, None]


def region_relative_loss(pred: Tensor, target: Tensor, mask: Tensor, region: Tensor,
                         trim: float, gm_weight: float = 2.0) -> dict[str, Tensor]:
    """SSI + gradient matching (1:2) with each CutMix region aligned on its own.

    ``region``: ``B x H x W``, 1 inside a pasted box. Per image, the loss of
    the pixels outside and inside the box are weighted by their share of the
    valid pixels; images without a box get the plain loss. Mean over images
    with valid pixels. Without any box this equals ``relative_depth_loss``.
    """
    inside = region.bool()
    if not bool(inside.any()):
        return relative_depth_loss(pred, target, mask, trim=trim, gm_weight=gm_weight)
    outer = relative_depth_loss(pred, target, mask & ~inside, trim=trim, gm_weight=gm_weight, reduction="none")
    inner = relative_depth_loss(pred, target, mask & inside, trim=trim, gm_weight=gm_weight, reduction="none")
    n_in = (mask & inside).flatten(1).sum(1).float()
    n_all = mask.flatten(1).sum(1).float()
    w_in = n_in / n_all.clamp_min(1)
    has = n_all > 0
    denom = has.sum().clamp_min(1)
    return {k: (((1 - w_in) * outer[k] + w_in * inner[k]) * has).sum() / denom for k in ("loss", "ssi", "gm")}


def _diagnostics(pred: Tensor, target: Tensor, mask: Tensor, trim: float) -> dict[str, Tensor]:
    """``pred_zero``: share of predicted pixels at 0. The relative head ends in a
    ReLU, and a pixel at 0 passes no gradient: a share near 1 is a dead output
    that no later step can revive.
    ``ssi_blind``: the ssi of a constant prediction on the same batch (about 1
    for a normalised target, 0.9 with trim 0.1): a model whose ssi stays near it
    explains nothing of its targets (``depthlib.training.progress``)."""
    with torch.no_grad():
        blind = relative_depth_loss(torch.zeros_like(pred, dtype=torch.float32), target.float(), mask, trim=trim)["ssi"]
    return {"pred_zero": (pred.detach() <= 0).float().mean(), "ssi_blind": blind}


class RelativeObjective:
    """Teacher and student loss on DISPARITY, the target normalised per image
    (:func:`normalise_disparity`).

    ``frozen_encoder``: a frozen DINOv2 encoder (``DinoV2Encoder``) for the
    student's feature-alignment loss on the deepest layer the head reads, or
    None (off). ``trim``: share of largest per-pixel ssi errors ignored.

    ``gm_ramp_steps``: the gradient-matching weight rises linearly from 0 to
    2 over the first K optimiser steps (:meth:`at_step`, which the loop calls
    before each step). Why: with a fresh head, the prediction's gradients are
    noise, and gm's gradient through the per-image least-squares scale pushes
    that scale down, through 0, to inverted disparity; measured on a batch of
    16 scenes, 9 of 16 images inverted at step 0 became 14 in 10 steps with
    the full weight and 0 within 3 steps without gm. An inverted start is the
    plateau every tiny run went through (issue #22), and the one students
    from a pretrained encoder often never left (docs/training.md, "Pretraining").
    """

    def __init__(self, trim: float = 0.0, frozen_encoder: torch.nn.Module | None = None,
                 feature_weight: float = 1.0, feature_margin: float = 0.85, feature_layer: int | None = None,
                 gm_ramp_steps: int = 0):
        self.trim = trim
        self.gm_ramp_steps = gm_ramp_steps
        self.gm_weight = 2.0 if gm_ramp_steps <= 0 else 0.0
        self.frozen = frozen_encoder
        self.feature_weight = feature_weight
        self.feature_margin = feature_margin
        self.feature_layer = feature_layer
        if frozen_encoder is not None:
            frozen_encoder.eval().requires_grad_(False)

    def at_step(self, step: int) -> None:
        """Set the gm weight for optimiser step ``step`` (0-based): ``2 * min(1, step / gm_ramp_steps)``."""
        self.gm_weight = 2.0 * min(1.0, step / self.gm_ramp_steps) if self.gm_ramp_steps > 0 else 2.0

    def __call__(self, model, images: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``images``: ``B x 3 x C x C`` normalised; ``batch``: ``target``, ``mask``, ``region``.
        Returns ``{"loss", "ssi", "gm", "pred_zero", "ssi_blind"[, "feat"]}`` (0-dim)."""
        target = normalise_disparity(batch["target"], batch["mask"])
        if self.frozen is None:
            pred = model(images)
            return (region_relative_loss(pred, target, batch["mask"], batch["region"], self.trim, self.gm_weight)
                    | _diagnostics(pred, target, batch["mask"], self.trim))
        pred, feats = model(images, return_features=True)
        terms = (region_relative_loss(pred, target, batch["mask"], batch["region"], self.trim, self.gm_weight)
                 | _diagnostics(pred, target, batch["mask"], self.trim))
        with torch.no_grad():
            frozen = self.frozen.intermediate_layers(images, (self.feature_layer,))[0][0]
        feat = feature_alignment_loss(feats[-1][0], frozen, self.feature_margin)
        terms["feat"] = feat
        terms["loss"] = terms["loss"] + self.feature_weight * feat
        return terms


class MetricObjective:
    """Metric fine-tuning: SiLog on DEPTH in metres over the valid pixels (mask
    already restricted to ``(min_depth, max_depth)`` by the examples)."""

    def __init__(self, lambd: float = 0.5):
        self.lambd = lambd

    def __call__(self, model, images: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        pred = model(images)
        loss = silog_loss(pred, batch["target"], batch["mask"], lambd=self.lambd)
        return {"loss": loss, "silog": loss.detach()}


class MaskedImageObjective:
    """Pretraining: hide ``mask_ratio`` of each image's patches (uniformly at
    random, from torch's generator, which checkpoints restore) and predict
    what the model's target kind says (``MaskedImageModel.target``): their
    per-patch normalised pixels, or the EMA encoder's tokens of the unmasked
    image (:func:`depthlib.models.masked_image.masked_loss`).

    With the EMA target, the average is updated once per step, before the
    step's first forward pass, with the momentum of
    :func:`~depthlib.models.masked_image.ema_momentum` (``ema_momentum`` at
    step 0 rising to 1 at ``steps``); at step 0 it becomes a copy of the
    encoder (which may have been loaded from ``--pretrained-encoder``).

    Rows that did not decode (placeholders: ``batch["mask"]`` all False) hide
    nothing and add nothing. ``feature_spread``: across-image spread of the
    masked pass's features, the collapse gauge (:func:`depthlib.losses.feature_spread`)."""

    def __init__(self, mask_ratio: float = 0.6, steps: int = 1, ema_momentum: float = 0.996):
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask ratio must be in (0, 1), got {mask_ratio}")
        self.mask_ratio = mask_ratio
        self.steps = steps
        self.ema_momentum = ema_momentum
        self._ema_due: int | None = None

    def at_step(self, step: int) -> None:
        self._ema_due = step

    def __call__(self, model, images: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        from depthlib.models.masked_image import ema_momentum, masked_loss, update_ema

        bare = getattr(model, "module", model)  # DDP wraps the model; the EMA and targets live on it
        if bare.target == "ema_features" and self._ema_due is not None:
            step, self._ema_due = self._ema_due, None
            update_ema(bare, 0.0 if step == 0 else ema_momentum(step, self.steps, self.ema_momentum))
        b, _, h, w = images.shape
        masks = random_patch_masks(b, (h // PATCH_SIZE) * (w // PATCH_SIZE), self.mask_ratio, device=images.device)
        usable = batch["mask"].flatten(1).any(1)
        masks = masks & usable[:, None]
        prediction, tokens = model(images, masks)
        loss = masked_loss(bare, prediction, images, masks)
        return {"loss": loss, "mim": loss.detach(), "feature_spread": feature_spread(tokens.detach())}

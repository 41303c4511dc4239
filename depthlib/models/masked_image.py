"""The model of the self-supervised pretraining stage: a DINOv2 encoder with a
masked-image-modelling head: SimMIM's linear pixel head with MAE's normalised
pixel target (``depthlib.losses.masked_patch_loss``), or a linear feature
head regressing the tokens of an EMA copy of the encoder (iBOT's and
data2vec's masked-token objective, ``depthlib.losses.masked_feature_loss``).

The encoder is the same ``DinoV2Encoder``, under the same attribute name
(``pretrained``), as in ``DepthAnythingV2``, so the training loop's optimiser
groups (encoder / head learning rates), activation checkpointing, compilation
and FSDP wrapping apply unchanged, and the trained encoder is what the depth
stages load with ``--pretrained-encoder`` (:func:`encoder_release_state`).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from depthlib.losses import masked_feature_loss, masked_patch_loss

from depthlib.models.checkpoints import model_state_to_released
from depthlib.models.encoders import DinoV2Encoder
from depthlib.models.specs import PATCH_SIZE, get_spec


PRETRAIN_TARGETS = ("pixels", "ema_features")


class MaskedImageModel(nn.Module):
    """``forward(images, masks)`` -> ``(prediction B x N x D, patch tokens B x N x C)``.

    ``images``: ``B x 3 x H x W`` ImageNet-normalised, H and W multiples of 14;
    ``masks``: ``B x N`` bool, True where a patch is hidden (its embedding
    replaced by the learned ``mask_embedding`` before the position embedding,
    as DINOv2/iBOT do). The prediction for every patch comes from the last
    block's normalised tokens through one linear layer; the loss reads the
    hidden ones (:func:`masked_loss`). ``features(images)``: the unmasked
    tokens (``B x N x C``).

    ``target`` (what a hidden patch's prediction is scored against):

    * ``"pixels"``: its per-patch normalised pixels (``D = 588``; SimMIM's head,
      MAE's target);
    * ``"ema_features"``: the tokens that ``ema``, an exponential moving average
      of the encoder (no gradient; updated by :func:`update_ema`), gives the
      UNMASKED image at that patch (``D = C``; iBOT's and data2vec's
      masked-token objective with a self-distilled target, :meth:`targets`).
    """

    def __init__(self, encoder: str, target: str = "pixels"):
        super().__init__()
        if target not in PRETRAIN_TARGETS:
            raise ValueError(f"pretraining target must be one of {PRETRAIN_TARGETS}, got {target!r}")
        self.encoder = encoder
        self.target = target
        self.pretrained = DinoV2Encoder(get_spec(encoder))
        dim = self.pretrained.embed_dim
        self.mask_embedding = nn.Parameter(torch.zeros(1, dim))
        nn.init.trunc_normal_(self.mask_embedding, std=0.02)
        self.last_block = len(self.pretrained.blocks) - 1
        if target == "pixels":
            self.pixel_head = nn.Linear(dim, PATCH_SIZE * PATCH_SIZE * 3)
        else:
            self.feature_head = nn.Linear(dim, dim)
            self.ema = copy.deepcopy(self.pretrained).requires_grad_(False)
            # data2vec's target: the average of the top half of the blocks
            self.target_blocks = tuple(range(len(self.pretrained.blocks) // 2, len(self.pretrained.blocks)))

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, _ = self.pretrained.intermediate_layers(images, (self.last_block,), masks=masks,
                                                        mask_token=self.mask_embedding)[0]
        head = self.pixel_head if self.target == "pixels" else self.feature_head
        return head(tokens), tokens

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.pretrained.intermediate_layers(images, (self.last_block,))[0][0]

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """``"ema_features"``: ``B x N x C`` targets of the unmasked images: the
        EMA encoder's tokens of each block in ``target_blocks``, normalised over
        the image's tokens per channel (instance norm: what every patch shares
        is removed, so a collapsed teacher gives all-zero targets), averaged."""
        was_training = self.ema.training
        self.ema.eval()
        outs = self.ema.intermediate_layers(images, self.target_blocks)
        self.ema.train(was_training)
        normed = [F.instance_norm(t.float().transpose(1, 2)).transpose(1, 2) for t, _ in outs]
        return torch.stack(normed).mean(0)


def masked_loss(model: MaskedImageModel, prediction: torch.Tensor, images: torch.Tensor,
                masks: torch.Tensor) -> torch.Tensor:
    """The pretraining loss of ``model``'s target kind on the hidden patches
    (``model``: the bare module, not a DDP wrapper; ``prediction`` from its forward)."""
    if model.target == "pixels":
        return masked_patch_loss(prediction, images, masks, PATCH_SIZE)
    return masked_feature_loss(prediction, model.targets(images), masks)


def ema_momentum(step: int, steps: int, base: float) -> float:
    """BYOL's and DINO's schedule: ``base`` at step 0 rising to 1 at ``steps`` (cosine)."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(step, steps) / max(steps, 1)) + 1.0) / 2.0


@torch.no_grad()
def update_ema(model: MaskedImageModel, momentum: float) -> None:
    """``ema <- momentum * ema + (1 - momentum) * encoder``, parameter by
    parameter (0: a copy of the encoder). Every worker holds the same encoder
    after a step (DDP), so every worker's average stays the same too."""
    for e, p in zip(model.ema.parameters(), model.pretrained.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1.0 - momentum)


def encoder_release_state(model_state: dict[str, torch.Tensor], encoder: str) -> dict[str, torch.Tensor]:
    """A ``MaskedImageModel`` state dict -> the encoder alone in the layout of
    Meta's ``dinov2_vit*14_pretrain.pth`` (``cls_token, pos_embed, mask_token,
    patch_embed.*, blocks.*, norm.*``; ViT-G's MLP as ``w12``/``w3``): what
    ``--pretrained-encoder`` and ``--frozen-encoder`` read. The learned mask
    embedding becomes ``mask_token``, as in DINOv2's own checkpoints."""
    encoder_state = {k: v for k, v in model_state.items() if k.startswith("pretrained.")}
    encoder_state["pretrained.mask_token"] = model_state["mask_embedding"].detach().reshape(1, -1)
    released = model_state_to_released(encoder_state, encoder)
    return {k[len("pretrained."):]: v.detach().to("cpu", torch.float32).contiguous() for k, v in released.items()}

"""The model of the self-supervised pretraining stage: a DINOv2 encoder with a
masked-image-modelling head (SimMIM's linear pixel head, MAE's normalised
pixel target; ``depthlib.losses.masked_patch_loss``).

The encoder is the same ``DinoV2Encoder``, under the same attribute name
(``pretrained``), as in ``DepthAnythingV2``, so the training loop's optimiser
groups (encoder / head learning rates), activation checkpointing, compilation
and FSDP wrapping apply unchanged, and the trained encoder is what the depth
stages load with ``--pretrained-encoder`` (:func:`encoder_release_state`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from depthlib.models.checkpoints import model_state_to_released
from depthlib.models.encoders import DinoV2Encoder
from depthlib.models.specs import PATCH_SIZE, get_spec


class MaskedImageModel(nn.Module):
    """``forward(images, masks)`` -> ``(pixels B x N x 588, patch tokens B x N x C)``.

    ``images``: ``B x 3 x H x W`` ImageNet-normalised, H and W multiples of 14;
    ``masks``: ``B x N`` bool, True where a patch is hidden (its embedding
    replaced by the learned ``mask_embedding`` before the position embedding,
    as DINOv2/iBOT do). The pixels predicted for every patch come from the
    last block's normalised tokens through one linear layer; the loss reads
    the hidden ones. ``features(images)``: the unmasked tokens (``B x N x C``).
    """

    def __init__(self, encoder: str):
        super().__init__()
        self.encoder = encoder
        self.pretrained = DinoV2Encoder(get_spec(encoder))
        dim = self.pretrained.embed_dim
        self.mask_embedding = nn.Parameter(torch.zeros(1, dim))
        nn.init.trunc_normal_(self.mask_embedding, std=0.02)
        self.pixel_head = nn.Linear(dim, PATCH_SIZE * PATCH_SIZE * 3)
        self.last_block = len(self.pretrained.blocks) - 1

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, _ = self.pretrained.intermediate_layers(images, (self.last_block,), masks=masks,
                                                        mask_token=self.mask_embedding)[0]
        return self.pixel_head(tokens), tokens

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.pretrained.intermediate_layers(images, (self.last_block,))[0][0]


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

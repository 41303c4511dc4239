"""DINOv2 ViT encoders, built from timm with sizes from ``specs.MODEL_SPECS``.

``DinoV2Encoder`` keeps the released checkpoints' parameter layout
(``cls_token``, ``pos_embed``, ``mask_token``, ``patch_embed.proj``,
``blocks.N.*``, ``norm``) so a released state dict loads with at most a
rename for ViT-G's SwiGLU MLP, and it interpolates position embeddings exactly
as DINOv2 does (bicubic with a 0.1 offset on the scale factor, no
antialiasing), which timm's own resampling does not, so outputs at non-square
sizes match the official model.
"""

from __future__ import annotations

import math
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from depthlib.models.specs import PATCH_SIZE, PRETRAIN_GRID, ModelSpec


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int, offset: float = 0.1) -> torch.Tensor:
    """Resize DINOv2 position embeddings to a ``grid_h x grid_w`` patch grid.

    Args:
        pos_embed: ``1 x (1 + N) x C``, class token first, then an
            ``sqrt(N) x sqrt(N)`` grid in row-major order.
        grid_h, grid_w: patch rows and columns of the input.
        offset: DINOv2's work-around (facebookresearch/dino#8): the scale
            factor is ``(grid + offset) / sqrt(N)`` and ``F.interpolate`` is
            given that factor, not the output size. This changes the sampling
            positions, so it must be kept for parity with released weights.

    Returns:
        ``1 x (1 + grid_h * grid_w) x C`` in the dtype of ``pos_embed``.
    """
    n = pos_embed.shape[1] - 1
    if n == grid_h * grid_w and grid_h == grid_w:
        return pos_embed
    side = int(math.sqrt(n))
    dim = pos_embed.shape[-1]
    pe = pos_embed.float()
    patch = pe[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    patch = F.interpolate(
        patch,
        scale_factor=((grid_h + offset) / side, (grid_w + offset) / side),
        mode="bicubic",
        antialias=False,
    )
    if patch.shape[-2:] != (grid_h, grid_w):  # cannot happen for offset in (0, 1); guards edits
        raise RuntimeError(f"position embedding resized to {tuple(patch.shape[-2:])}, wanted {(grid_h, grid_w)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([pe[:, :1], patch], dim=1).to(pos_embed.dtype)


class DinoV2Encoder(nn.Module):
    """A DINOv2 ViT with patch size 14 that returns normalised intermediate tokens.

    Input: ``B x 3 x H x W`` ImageNet-normalised images, H and W multiples of 14.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        vit = timm.create_model(spec.timm_name, pretrained=False, dynamic_img_size=True,
                                img_size=PRETRAIN_GRID * PATCH_SIZE, **spec.timm_kwargs)
        self.embed_dim: int = vit.embed_dim
        self.patch_size = PATCH_SIZE
        self.cls_token = vit.cls_token
        self.pos_embed = vit.pos_embed
        self.patch_embed = vit.patch_embed
        self.blocks = vit.blocks
        self.norm = vit.norm
        # Unused by depth estimation; kept so released checkpoints round-trip
        # exactly and exports load strictly in the official code.
        self.register_buffer("mask_token", torch.zeros(1, self.embed_dim))
        # Recompute each block in backward instead of keeping its activations
        # (training memory for ViT-L/G); timm's ``set_grad_checkpointing``.
        self.grad_checkpointing = False

    def tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None,
               mask_token: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens with the class token prepended and position embeddings added: ``B x (1+N) x C``.

        ``masks``: ``B x N`` bool, True where a patch is hidden: its embedding is
        replaced by ``mask_token`` (``1 x C``; default the ``mask_token`` buffer)
        before the position embedding is added, as DINOv2's
        ``prepare_tokens_with_masks`` (masked-image pretraining)."""
        b, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        gh, gw = h // self.patch_size, w // self.patch_size
        t = self.patch_embed(x).reshape(b, gh * gw, self.embed_dim)  # timm returns NHWC here
        if masks is not None:
            token = self.mask_token if mask_token is None else mask_token
            t = torch.where(masks[..., None], token.to(t.dtype)[None], t)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1)
        return t + interpolate_pos_embed(self.pos_embed, gh, gw)

    def intermediate_layers(self, x: torch.Tensor, layers: tuple[int, ...], masks: torch.Tensor | None = None,
                            mask_token: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Outputs of the given blocks after the final LayerNorm.

        Returns one ``(patch_tokens B x N x C, class_token B x C)`` per layer,
        in the order of ``layers``; N = (H/14)*(W/14) in row-major order.
        ``masks``, ``mask_token``: hidden patches (see :meth:`tokens`).
        """
        t = self.tokens(x, masks, mask_token)
        wanted = set(layers)
        found: dict[int, torch.Tensor] = {}
        last = max(layers)
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, blk in enumerate(self.blocks):
            t = checkpoint(blk, t, use_reentrant=False) if recompute else blk(t)
            if i in wanted:
                found[i] = t
            if i == last:
                break
        outs = []
        for i in layers:
            normed = self.norm(found[i])
            outs.append((normed[:, 1:], normed[:, 0]))
        return outs

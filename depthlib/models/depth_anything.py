"""Depth Anything V2: a DINOv2 encoder with a DPT head.

One definition serves both tasks:

* relative (``metric=False``): output is affine-invariant DISPARITY (inverse
  depth, unknown per-image scale and shift), non-negative (ReLU);
* metric (``metric=True``): output is DEPTH in metres, ``sigmoid * max_depth``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from depthlib.models.dpt import DPTHead
from depthlib.models.encoders import DinoV2Encoder
from depthlib.models.specs import PATCH_SIZE, get_spec


class DepthAnythingV2(nn.Module):
    """``forward(x)``: ``B x 3 x H x W`` ImageNet-normalised images (H, W
    multiples of 14) -> ``B x H x W`` disparity (relative) or metres (metric)."""

    def __init__(self, encoder: str = "vitl", metric: bool = False, max_depth: float = 20.0):
        super().__init__()
        spec = get_spec(encoder)
        self.encoder = encoder
        self.metric = metric
        self.max_depth = float(max_depth)
        self.layers = spec.layers
        self.pretrained = DinoV2Encoder(spec)
        self.depth_head = DPTHead(self.pretrained.embed_dim, spec.features, spec.out_channels, metric)

    def encoder_features(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The four intermediate encoder outputs the head reads: ``[(B x N x C patch tokens, B x C cls), ...]``."""
        return self.pretrained.intermediate_layers(x, self.layers)

    def decode(self, features: list[tuple[torch.Tensor, torch.Tensor]], height: int, width: int) -> torch.Tensor:
        """Head output ``B x H x W`` from ``encoder_features`` of an ``H x W`` input."""
        out = self.depth_head([tokens for tokens, _ in features], height // PATCH_SIZE, width // PATCH_SIZE)
        out = out.squeeze(1)
        return out * self.max_depth if self.metric else out

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """Depth map ``B x H x W``; with ``return_features`` also the encoder
        features (for the feature-alignment loss) from the same pass."""
        feats = self.encoder_features(x)
        out = self.decode(feats, x.shape[-2], x.shape[-1])
        return (out, feats) if return_features else out


def build_model(encoder: str, metric: bool = False, max_depth: float = 20.0) -> DepthAnythingV2:
    """A randomly initialised Depth Anything V2 of size ``encoder``
    (``vits``, ``vitb``, ``vitl``, ``vitg`` or ``tiny``)."""
    return DepthAnythingV2(encoder, metric=metric, max_depth=max_depth)

"""The DPT decoder head of Depth Anything V2.

Parameter names match the released checkpoints' ``depth_head.*`` keys. The
final activation is the only difference between relative and metric depth:
ReLU (non-negative disparity) or sigmoid (later scaled by ``max_depth``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# CUDA's bilinear kernel for channels-last tensors indexes with 32 bits and
# refuses outputs of 2**31 elements or more: ViT-L at batch 64, 518 x 686, the
# head's last upsampling is 64 x 128 x 518 x 686 = 2.9e9 elements (no released
# PyTorch fix; cuDNN convolutions may hand it channels-last maps). Larger
# outputs are computed in slices along the batch. A module-level setting so
# tests can lower it and compare the two paths.
MAX_INTERPOLATE_ELEMENTS = 2**31 - 1


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, bilinear, align_corners=True)`` of a ``B x C x h x w``
    map, in batch slices whose outputs stay under ``MAX_INTERPOLATE_ELEMENTS``
    (each sample is interpolated on its own, so slicing gives the same result
    as one call)."""
    per_sample = x.shape[1] * size[0] * size[1]
    rows = max(1, MAX_INTERPOLATE_ELEMENTS // max(1, per_sample))
    if x.shape[0] <= rows:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return torch.cat([F.interpolate(part, size=size, mode="bilinear", align_corners=True)
                      for part in x.split(rows)])


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(x))
        out = self.conv2(F.relu(out))
        return out + x


class FusionBlock(nn.Module):
    """Adds a skip feature map (after a residual unit), refines, upsamples, projects."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = upsample_bilinear(x, tuple(size) if size is not None else (2 * x.shape[-2], 2 * x.shape[-1]))
        return self.out_conv(x)


class DPTHead(nn.Module):
    """Turns four ``B x N x C`` token maps into a ``B x 1 x (14 gh) x (14 gw)`` map in [0, inf) or (0, 1)."""

    def __init__(self, in_channels: int, features: int, out_channels: tuple[int, int, int, int], metric: bool):
        super().__init__()
        self.projects = nn.ModuleList([nn.Conv2d(in_channels, c, 1) for c in out_channels])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], 4, stride=4),  # 1/14 -> 4/14
            nn.ConvTranspose2d(out_channels[1], out_channels[1], 2, stride=2),  # 1/14 -> 2/14
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], 3, stride=2, padding=1),  # 1/14 -> 1/28
        ])
        self.scratch = nn.Module()
        for i, c in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, features, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(features))
        # The deepest fusion block has no skip input, so its first residual
        # unit never runs. It stays for checkpoint layout; frozen so DDP does
        # not see parameters without gradients.
        self.scratch.refinenet4.resConfUnit1.requires_grad_(False)
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(32, 1, 1),
            nn.Sigmoid() if metric else nn.ReLU(True),
        )
        if not metric:
            # With PyTorch's default init the final ReLU is all zero for some
            # seeds, so training from scratch never gets a gradient; start it
            # clearly positive. Loaded checkpoints overwrite this.
            nn.init.constant_(self.scratch.output_conv2[2].bias, 1.0)

    def forward(self, features: list[torch.Tensor], grid_h: int, grid_w: int) -> torch.Tensor:
        maps = []
        for i, tokens in enumerate(features):
            x = tokens.permute(0, 2, 1).reshape(tokens.shape[0], tokens.shape[-1], grid_h, grid_w)
            maps.append(self.resize_layers[i](self.projects[i](x)))
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(maps[0]), s.layer2_rn(maps[1]), s.layer3_rn(maps[2]), s.layer4_rn(maps[3])
        p4 = s.refinenet4(l4, size=l3.shape[2:])
        p3 = s.refinenet3(p4, l3, size=l2.shape[2:])
        p2 = s.refinenet2(p3, l2, size=l1.shape[2:])
        p1 = s.refinenet1(p2, l1)
        out = s.output_conv1(p1)
        out = upsample_bilinear(out, (grid_h * 14, grid_w * 14))
        return s.output_conv2(out)

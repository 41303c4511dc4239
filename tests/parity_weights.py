"""Deterministic released-layout weights for parity tests.

``fill_state_dict(shapes)`` derives every tensor from its key name and shape
alone (a CPU generator seeded with the key's CRC32), so our model and the
official implementation get bit-identical weights without any checkpoint
being stored or downloaded. Scales are chosen so activations stay in a normal
range through the network and the final ReLU is not all zero.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch


def fill_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    r = torch.randn(shape, generator=g, dtype=torch.float32)
    name = key.rsplit(".", 1)[-1]
    if key.endswith("output_conv2.2.bias"):
        return torch.full(shape, 0.5)
    if key.endswith("output_conv2.2.weight"):  # keep the final ReLU mostly unclipped
        return 0.02 * r
    if name == "gamma":  # LayerScale
        return 0.5 + 0.1 * r
    if key.endswith(("cls_token", "pos_embed", "mask_token")):
        return 0.5 * r
    if name == "bias":
        return 0.02 * r
    if ("norm" in key) and name == "weight":
        return 1.0 + 0.1 * r
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return r / math.sqrt(fan_in)


def fill_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: fill_tensor(k, tuple(s)) for k, s in shapes.items()}


def parity_input(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A ``1 x 3 x H x W`` smooth-plus-noise image, already ImageNet-normalised."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, height // 14 + 1, width // 14 + 1, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return smooth + 0.3 * torch.randn(1, 3, height, width, generator=g)


def parity_image_uint8(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic ``H x W x 3`` uint8 RGB image with smooth structure and texture."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(seed)
    img = np.stack([np.sin(x / (9 + 5 * c) + c) * np.cos(y / (13 - 3 * c)) for c in range(3)], -1)
    img = 127.5 + 90 * img + rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)

"""The released Depth Anything V2 preprocessing, as pure tensor functions.

Official ``image2tensor``: keep the aspect ratio, scale so the SHORTER side
reaches ``input_size`` (518), round each side to the nearest multiple of 14
(rounding up instead when that would fall below ``input_size``), bicubic
resize, ImageNet normalisation. Predictions are resized back to the source
size bilinearly (``align_corners=True``, as the official ``infer_image``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _constrain(x: float, multiple: int, min_val: int) -> int:
    # np.round rounds half to even, like the official code.
    y = int(np.round(x / multiple) * multiple)
    return y if y >= min_val else int(math.ceil(x / multiple) * multiple)


def target_size(height: int, width: int, input_size: int = 518, multiple: int = 14) -> tuple[int, int]:
    """``(new_height, new_width)`` the model sees for a ``height x width`` image."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = max(input_size / height, input_size / width)
    return _constrain(scale * height, multiple, input_size), _constrain(scale * width, multiple, input_size)


def to_float_chw(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 RGB -> ``3 x H x W`` float32 in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of ``... x 3 x H x W`` values in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def preprocess(image: np.ndarray, input_size: int = 518) -> torch.Tensor:
    """``H x W x 3`` uint8 RGB -> ``3 x h x w`` normalised model input, h and w multiples of 14."""
    x = to_float_chw(image)
    h, w = target_size(x.shape[1], x.shape[2], input_size)
    x = F.interpolate(x[None], size=(h, w), mode="bicubic", align_corners=False)[0]
    return normalize(x)


def resize_prediction(pred: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``B x h x w`` (or ``h x w``) map -> the same at ``size`` = (H, W), bilinear with aligned corners."""
    squeeze = pred.ndim == 2
    p = pred[None] if squeeze else pred
    out = F.interpolate(p[:, None].float(), size=size, mode="bilinear", align_corners=True)[:, 0]
    return out[0] if squeeze else out

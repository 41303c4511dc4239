"""Running a model on images: device, dtype and autocast in one place.

CUDA runs in ``bf16`` (or ``fp16``) autocast by default; the CPU stays
float32 (autocast on CPU is slower and less accurate than plain float32).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from depthlib.transforms import preprocess, resize_prediction

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device | str, dtype: str = "bf16"):
    """An autocast context for ``dtype`` on CUDA; a no-op on the CPU or for fp32."""
    device = torch.device(device)
    if device.type != "cuda" or dtype == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=DTYPES[dtype])


@torch.inference_mode()
def run_batch(model: torch.nn.Module, batch: torch.Tensor, dtype: str = "bf16") -> torch.Tensor:
    """``B x 3 x h x w`` normalised inputs (any device) -> ``B x h x w`` float32 outputs on the same device."""
    device = next(model.parameters()).device
    with autocast_for(device, dtype):
        out = model(batch.to(device, non_blocking=True))
    return out.float()


def predict(model: torch.nn.Module, image: np.ndarray, input_size: int = 518, dtype: str = "bf16") -> np.ndarray:
    """One ``H x W x 3`` uint8 RGB image -> ``H x W`` float32 prediction at the image's size
    (disparity for a relative model, metres for a metric one)."""
    x = preprocess(image, input_size)[None]
    out = run_batch(model, x, dtype)
    return resize_prediction(out, image.shape[:2])[0].cpu().numpy()


def predict_images(model: torch.nn.Module, images: list[np.ndarray], input_size: int = 518, dtype: str = "bf16",
                   sizes: list[tuple[int, int]] | None = None, batch_size: int = 16) -> list[np.ndarray]:
    """The released inference path for several images, same-shape inputs batched together.

    ``images``: ``H x W x 3`` uint8 RGB arrays; ``sizes``: the ``(H, W)`` each
    prediction is resized back to (default: its image's size, as ``predict``).
    Returns float32 maps (disparity or metres) in the order of ``images``.
    """
    sizes = sizes or [im.shape[:2] for im in images]
    inputs = [preprocess(im, input_size) for im in images]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(tuple(x.shape[1:]), []).append(i)
    out: list[np.ndarray | None] = [None] * len(images)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            preds = run_batch(model, torch.stack([inputs[i] for i in part]), dtype)
            for i, p in zip(part, preds):
                out[i] = resize_prediction(p, tuple(sizes[i])).cpu().numpy()
    return out

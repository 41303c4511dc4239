"""Shard rows -> training examples: target, resize, crop, flip, colour, CutMix.

Pure functions of arrays and a ``numpy.random.Generator`` (the data tasks
seed it per group, so augmentation is reproducible). An example is

* ``image``: ``3 x C x C`` uint8 RGB (normalised on the device, 4x less traffic);
* ``target``: ``C x C`` float32: DISPARITY for relative stages (``1/depth`` of
  synthetic ground truth, or the teacher's pseudo label as stored), DEPTH in
  metres for the metric stage; 0 where invalid. Which conversion a row gets
  depends on its shard ``depth_type`` (:func:`target_and_mask`): depth
  (``metric_depth``, or ``depth_up_to_scale`` such as BlendedMVS) becomes
  ``1/depth`` for the relative stages; a ``disparity`` label (a pseudo label,
  or IRS's stereo disparity ``f * B / depth``) is used as it is, since the
  relative loss is affine-invariant; only ``metric_depth`` rows can feed the
  metric stage (anything else is refused, never taken for metres);
* ``mask``: ``C x C`` bool, True where the target counts (target ``"none"``,
  the pretraining stage's: the label is not read, the target is 0 and the
  mask True everywhere, so a decoded image is told from a placeholder);
* ``region``: ``C x C`` uint8, 1 inside a CutMix box (the loss aligns each
  region to its own label, since two pseudo labels have different scales).

Geometry: the shorter side is resized to the crop (image bicubic as the
released preprocessing; target and mask nearest, so no value is invented
across a depth edge), then a random ``C x C`` crop and a horizontal flip are
applied to image, target and mask alike. A pseudo label is stored at the
resolution the teacher saw, which differs from the image's; the image is first
resized to the label's size with the released interpolation, so both line up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

TargetKind = Literal["inverse_depth", "disparity", "metric_depth", "none"]


@dataclass(frozen=True)
class ExampleSpec:
    """How rows become examples for one stage."""

    target: TargetKind
    crop: int
    flip: bool = True
    color_jitter: bool = False
    blur: bool = False
    cutmix: bool = False
    min_depth: float = 1e-3  # metric_depth: valid range (strict)
    max_depth: float = 20.0


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``H x W x 3`` uint8 -> ``size`` with the released bicubic (no antialias), rounded back to uint8."""
    if image.shape[:2] == tuple(size):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    return x[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _resize_nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``H x W`` map (values never blended)."""
    h, w = a.shape
    if (h, w) == tuple(size):
        return a
    rows = np.minimum((np.arange(size[0]) + 0.5) * h / size[0], h - 1).astype(np.int64)
    cols = np.minimum((np.arange(size[1]) + 0.5) * w / size[1], w - 1).astype(np.int64)
    return a[rows[:, None], cols[None, :]]


def shorter_side_size(height: int, width: int, side: int) -> tuple[int, int]:
    """``(h, w)`` with the shorter side equal to ``side`` and the aspect kept (the longer side rounded)."""
    scale = side / min(height, width)
    return (side, max(side, round(width * scale))) if height <= width else (max(side, round(height * scale)), side)


# What each stage target accepts, by shard depth_type: "depth" = 1/label, "as_is" = the label.
_CONVERSION = {
    "inverse_depth": {"metric_depth": "depth", "depth_up_to_scale": "depth", "disparity": "as_is"},
    "disparity": {"disparity": "as_is", "metric_depth": "depth", "depth_up_to_scale": "depth"},
    "metric_depth": {"metric_depth": "as_is"},
}


def check_depth_type(depth_type: str, target: str) -> str:
    """How a ``depth_type`` label becomes the ``target`` (``"depth"``: invert it,
    ``"as_is"``); ``ValueError`` when the stage cannot use it (the metric stage
    refuses disparity and depth up to scale: their values are not metres)."""
    how = _CONVERSION.get(target, {}).get(depth_type)
    if how is None:
        raise ValueError(f"a {depth_type!r} label cannot be a {target!r} target"
                         + (" (its values are not metres)" if target == "metric_depth" else ""))
    return how


def target_and_mask(label: np.ndarray, valid: np.ndarray, spec: ExampleSpec,
                    depth_type: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The stage's target (see the module docstring) and where it is valid.

    ``depth_type``: the row's shard ``depth_type``; with it, the label is
    converted as :func:`check_depth_type` says (``ValueError`` if the stage
    cannot use it). ``None`` keeps the stage's own assumption (depth for the
    teacher and metric stages, disparity for the student)."""
    if spec.target == "none":  # pretraining: images only, any label kind, never read
        return np.zeros(label.shape, np.float32), np.ones(label.shape, bool)
    finite = np.isfinite(label)
    if depth_type is not None:
        how = check_depth_type(depth_type, spec.target)
        if spec.target != "metric_depth":
            if how == "as_is":
                mask = valid & finite
                return np.where(mask, label, 0.0).astype(np.float32), mask
            mask = valid & finite & (label > 0)
            return np.where(mask, 1.0 / np.where(mask, label, 1.0), 0.0).astype(np.float32), mask
    if spec.target == "inverse_depth":
        mask = valid & finite & (label > 0)
        return np.where(mask, 1.0 / np.where(mask, label, 1.0), 0.0).astype(np.float32), mask
    if spec.target == "disparity":
        mask = valid & finite
        return np.where(mask, label, 0.0).astype(np.float32), mask
    mask = valid & finite & (label > spec.min_depth) & (label < spec.max_depth)
    return np.where(mask, label, 0.0).astype(np.float32), mask


def _color_jitter(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation (x [0.6, 1.4]) and hue (+-0.1) in a random order, as V1's strong perturbation."""
    from torchvision.transforms.v2 import functional as TF

    ops = [lambda x, f=rng.uniform(0.6, 1.4): TF.adjust_brightness(x, f),
           lambda x, f=rng.uniform(0.6, 1.4): TF.adjust_contrast(x, f),
           lambda x, f=rng.uniform(0.6, 1.4): TF.adjust_saturation(x, f),
           lambda x, f=rng.uniform(-0.1, 0.1): TF.adjust_hue(x, f)]
    for i in rng.permutation(len(ops)):
        image = ops[i](image)
    return image


def _blur(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    from torchvision.transforms.v2 import functional as TF

    sigma = float(rng.uniform(0.1, 2.0))
    kernel = 2 * int(np.ceil(2 * sigma)) + 1
    return TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def make_example(image: np.ndarray, label: np.ndarray, valid: np.ndarray, spec: ExampleSpec,
                 rng: np.random.Generator, depth_type: str | None = None) -> dict[str, np.ndarray]:
    """One training example from a decoded row.

    Args:
        image: ``H x W x 3`` uint8 RGB as decoded (EXIF applied).
        label: ``h x w`` float32 label map (metres or disparity, per ``spec.target``).
        valid: ``h x w`` bool.
        depth_type: the row's shard ``depth_type`` (see :func:`target_and_mask`);
            pass it whenever shards of several kinds may be mixed.
    """
    label_hw = label.shape
    image = _resize_image(image, label_hw)
    target, mask = target_and_mask(label, valid, spec, depth_type)
    size = shorter_side_size(*label_hw, spec.crop)
    image = _resize_image(image, size)
    target, mask = _resize_nearest(target, size), _resize_nearest(mask, size)
    top = int(rng.integers(0, size[0] - spec.crop + 1))
    left = int(rng.integers(0, size[1] - spec.crop + 1))
    window = (slice(top, top + spec.crop), slice(left, left + spec.crop))
    image, target, mask = image[window], target[window], mask[window]
    if spec.flip and rng.random() < 0.5:
        image, target, mask = image[:, ::-1], target[:, ::-1], mask[:, ::-1]
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if spec.color_jitter and rng.random() < 0.8:
        chw = _color_jitter(chw, rng)
    if spec.blur and rng.random() < 0.5:
        chw = _blur(chw, rng)
    return {"image": chw.contiguous().numpy(), "target": np.ascontiguousarray(target, np.float32),
            "mask": np.ascontiguousarray(mask, bool), "region": np.zeros((spec.crop, spec.crop), np.uint8)}


def placeholder_example(crop: int) -> dict[str, np.ndarray]:
    """What an undecodable row becomes: no valid pixel, so it adds nothing to any loss."""
    return {"image": np.zeros((3, crop, crop), np.uint8), "target": np.zeros((crop, crop), np.float32),
            "mask": np.zeros((crop, crop), bool), "region": np.zeros((crop, crop), np.uint8)}


def cutmix_box(crop: int, rng: np.random.Generator, min_area: float = 0.02, max_area: float = 0.4,
               ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> tuple[int, int, int, int]:
    """A random box ``(top, left, height, width)`` covering 2-40% of the crop (UniMatch / Depth Anything V1)."""
    area = rng.uniform(min_area, max_area) * crop * crop
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    h = int(np.clip(round(np.sqrt(area * aspect)), 1, crop))
    w = int(np.clip(round(np.sqrt(area / aspect)), 1, crop))
    return int(rng.integers(0, crop - h + 1)), int(rng.integers(0, crop - w + 1)), h, w


def apply_cutmix(examples: list[dict[str, np.ndarray]], ok: list[bool], rng: np.random.Generator,
                 probability: float = 0.5) -> None:
    """In place: each usable example, with ``probability``, gets a box pasted from
    the next usable example of the list (image, target and mask), marked in ``region``."""
    usable = [i for i, good in enumerate(ok) if good]
    if len(usable) < 2:
        return
    originals = {i: {k: v.copy() for k, v in examples[i].items()} for i in usable}
    for n, i in enumerate(usable):
        if rng.random() >= probability:
            continue
        j = usable[(n + 1) % len(usable)]
        crop = examples[i]["target"].shape[0]
        top, left, h, w = cutmix_box(crop, rng)
        box = (slice(top, top + h), slice(left, left + w))
        ex, src = examples[i], originals[j]
        ex["image"][:, box[0], box[1]] = src["image"][:, box[0], box[1]]
        ex["target"][box] = src["target"][box]
        ex["mask"][box] = src["mask"][box]
        ex["region"][box] = 1

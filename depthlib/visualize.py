"""Pictures a person can look at: colourised depth beside its image.

Pure numpy (no matplotlib): a perceptually ordered palette from dark (far)
to bright (near) for DISPARITY maps; pass ``invert=True`` for metric depth so
near stays bright.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Anchor colours of the palette, dark violet -> red -> yellow -> pale yellow.
_ANCHORS = np.array([
    [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
    [245, 125, 21], [250, 193, 39], [252, 255, 164],
], dtype=np.float32)
_LUT = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c])
                 for c in range(3)], axis=1).round().astype(np.uint8)


def colorize(values: np.ndarray, valid: np.ndarray | None = None, invert: bool = False,
             percentiles: tuple[float, float] = (2.0, 98.0)) -> np.ndarray:
    """``H x W`` map -> ``H x W x 3`` uint8 RGB, robustly normalised between two
    percentiles of the valid values; invalid pixels are black."""
    v = np.asarray(values, dtype=np.float32)
    mask = np.isfinite(v) if valid is None else (valid & np.isfinite(v))
    out = np.zeros(v.shape + (3,), np.uint8)
    if not mask.any():
        return out
    lo, hi = np.percentile(v[mask], percentiles)
    t = np.clip((v - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    if invert:
        t = 1.0 - t
    out[mask] = _LUT[(t[mask] * 255).astype(np.uint8)]
    return out


def side_by_side(image: np.ndarray, depth: np.ndarray, valid: np.ndarray | None = None,
                 invert: bool = False) -> np.ndarray:
    """The RGB image and its colourised map next to each other (map resized to the image if needed)."""
    colour = colorize(depth, valid, invert)
    if colour.shape[:2] != image.shape[:2]:
        colour = np.asarray(Image.fromarray(colour).resize((image.shape[1], image.shape[0]), Image.NEAREST))
    return np.concatenate([image, colour], axis=1)


def to_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def feature_pca_rgb(features: list[np.ndarray], percentiles: tuple[float, float] = (1.0, 99.0)) -> list[np.ndarray]:
    """Encoder patch features as colours (DINOv2's PCA figure).

    ``features``: one ``h x w x C`` array per image (its patch grid). The first
    three principal components of all images' patch features together become
    red, green and blue, each scaled between two percentiles over all images,
    so the same colour means a similar feature in every picture. Returns one
    ``h x w x 3`` uint8 per image. The components' signs are arbitrary."""
    flat = np.concatenate([f.reshape(-1, f.shape[-1]) for f in features]).astype(np.float64)
    centred = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    comps = centred @ vt[:3].T
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = np.percentile(comps, percentiles[0], axis=0), np.percentile(comps, percentiles[1], axis=0)
    rgb = (np.clip((comps - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1) * 255).round().astype(np.uint8)
    out, start = [], 0
    for f in features:
        n = f.shape[0] * f.shape[1]
        out.append(rgb[start:start + n].reshape(f.shape[0], f.shape[1], 3))
        start += n
    return out


def features_grid(images: list[np.ndarray], feature_maps: list[np.ndarray]) -> np.ndarray:
    """Rows of image | PCA colours of its patch features (:func:`feature_pca_rgb`,
    enlarged to the image's size, nearest); ``H x W x 3`` uint8."""
    rows = []
    for image, colours in zip(images, feature_pca_rgb(feature_maps)):
        big = np.asarray(Image.fromarray(colours).resize((image.shape[1], image.shape[0]), Image.NEAREST))
        rows.append(np.concatenate([image, big], axis=1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)

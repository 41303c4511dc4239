"""Pictures of an evaluation: per-image panels (workers) and report figures (driver).

Per image, a strip ``image | prediction | ground truth | error`` small enough
to travel back to the driver for every image (so the worst ones can be shown
too). Prediction and ground truth share one colour scale, in inverse depth
(near = bright), set by the ground truth's 2nd-98th percentiles; the error map
is the per-pixel absolute relative error ``|pred - gt| / gt`` on valid pixels,
from 0 (black) to :data:`ERROR_MAX` (bright); invalid pixels are grey. Maps are
shrunk by block averages of valid pixels, so sparse LiDAR points stay visible.

Figures (matplotlib, Agg backend): a grid of strips with captions per dataset,
and DA-2K accuracy by scene as a bar chart.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

ERROR_MAX = 0.3  # AbsRel at which the error map saturates
INVALID = np.array([60, 60, 60], np.uint8)


def _cmap(name: str):
    import matplotlib

    matplotlib.use("Agg", force=False)
    return matplotlib.colormaps[name]


def colour(t: np.ndarray, valid: np.ndarray, cmap: str = "magma") -> np.ndarray:
    """Values in [0, 1] (``H x W``) -> ``H x W x 3`` uint8 through a colormap; invalid pixels grey."""
    rgb = (_cmap(cmap)(np.clip(np.nan_to_num(t), 0, 1))[..., :3] * 255).round().astype(np.uint8)
    rgb[~valid] = INVALID
    return rgb


def pool(values: np.ndarray, valid: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Block means of the valid values over ``factor x factor`` blocks (``ceil`` size);
    a block is valid if any of its pixels is."""
    if factor <= 1:
        return values.astype(np.float32), valid.copy()
    h, w = values.shape
    H, W = math.ceil(h / factor), math.ceil(w / factor)
    v = np.zeros((H * factor, W * factor), np.float64)
    m = np.zeros((H * factor, W * factor), np.float64)
    v[:h, :w] = np.where(valid, values, 0.0)
    m[:h, :w] = valid
    s = v.reshape(H, factor, W, factor).sum(axis=(1, 3))
    n = m.reshape(H, factor, W, factor).sum(axis=(1, 3))
    return (s / np.maximum(n, 1)).astype(np.float32), n > 0


def _fit(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if rgb.shape[:2] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.NEAREST))


def thumbnail(image: np.ndarray, max_side: int) -> np.ndarray:
    """``H x W x 3`` uint8 shrunk so its longer side is at most ``max_side``."""
    h, w = image.shape[:2]
    s = min(1.0, max_side / max(h, w))
    if s >= 1.0:
        return image
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def depth_strip(thumb: np.ndarray, pred_depth: np.ndarray, gt_depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``image | prediction | ground truth | error`` as one uint8 RGB strip at the thumbnail's size.

    ``pred_depth`` (scored prediction, metres), ``gt_depth``, ``valid``: ``H x W`` at the ground truth's size.
    """
    factor = max(1, math.ceil(max(gt_depth.shape) / max(thumb.shape[:2])))
    all_valid = np.ones_like(valid)
    p, _ = pool(pred_depth, all_valid, factor)
    g, gv = pool(gt_depth, valid, factor)
    err = np.abs(pred_depth - gt_depth) / np.where(valid, gt_depth, 1.0)
    e, ev = pool(err, valid, factor)
    if valid.any():
        inv = 1.0 / gt_depth[valid]
        lo, hi = np.percentile(inv, [2, 98])
    else:
        lo, hi = 0.0, 1.0
    span = hi - lo if hi > lo else 1.0

    def inv_t(d: np.ndarray) -> np.ndarray:
        return (1.0 / np.maximum(d, 1e-6) - lo) / span

    size = thumb.shape[:2]
    panels = [thumb,
              _fit(colour(inv_t(p), np.ones_like(gv)), size),
              _fit(colour(inv_t(g), gv), size),
              _fit(colour(e / ERROR_MAX, ev, "inferno"), size)]
    return np.concatenate(panels, axis=1)


def pairs_strip(thumb: np.ndarray, pred: np.ndarray, pairs: Sequence[dict], right: Sequence[bool],
                metric: bool = False) -> np.ndarray:
    """DA-2K: ``image | prediction`` with each pair drawn as a line (green right, red wrong;
    the dot marks the point labelled closer). ``pred`` is at the image's size."""
    h, w = pred.shape
    size = thumb.shape[:2]
    factor = max(1, math.ceil(max(h, w) / max(size)))
    p, _ = pool(-pred if metric else pred, np.ones(pred.shape, bool), factor)
    lo, hi = np.percentile(p, [2, 98])
    panel = _fit(colour((p - lo) / (hi - lo if hi > lo else 1.0), np.ones(p.shape, bool)), size)
    out = Image.fromarray(np.concatenate([thumb, panel], axis=1))
    draw = ImageDraw.Draw(out)
    sy, sx = size[0] / h, size[1] / w
    for pair, ok in zip(pairs, right):
        (r1, c1), (r2, c2) = pair["point1"], pair["point2"]
        near = (r1, c1) if pair["closer_point"] == "point1" else (r2, c2)
        col = (40, 220, 60) if ok else (235, 30, 30)
        for off in (0, size[1]):
            draw.line([(c1 * sx + off, r1 * sy), (c2 * sx + off, r2 * sy)], fill=col, width=2)
            draw.ellipse([near[1] * sx + off - 3, near[0] * sy - 3, near[1] * sx + off + 3, near[0] * sy + 3],
                         fill=col)
    return np.asarray(out)


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


def from_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def grid_figure(strips: Sequence[tuple[str, np.ndarray]], title: str, columns: Sequence[str]) -> bytes:
    """A PNG: one strip per row with its caption; ``columns`` label the panels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(strips)
    width = max(s.shape[1] for _, s in strips)
    height = sum(s.shape[0] for _, s in strips)
    fig_w = 12.0
    fig_h = min(60.0, 0.9 + fig_w * height / width * 1.08 + 0.25 * n)
    fig, axes = plt.subplots(n, 1, figsize=(fig_w, fig_h), squeeze=False,
                             gridspec_kw={"height_ratios": [s.shape[0] for _, s in strips]})
    for ax, (caption, strip) in zip(axes[:, 0], strips):
        ax.imshow(strip)
        ax.set_title(caption, fontsize=8, loc="left")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title + "\n" + "  |  ".join(columns), fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def scene_bar_chart(by_scene: dict[str, float], counts: dict[str, int], overall: float, title: str,
                    paper: float | None = None) -> bytes:
    """A PNG bar chart of DA-2K accuracy (%) by scene, with the overall figure (and the paper's) as lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    scenes = sorted(by_scene)
    values = [100 * by_scene[s] for s in scenes]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(scenes) + 2), 4.2))
    bars = ax.bar(range(len(scenes)), values, color="#4c72b0")
    for b, s, v in zip(bars, scenes, values):
        ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.1f}\n({counts.get(s, 0)} pairs)",
                ha="center", va="bottom", fontsize=7)
    ax.axhline(100 * overall, color="black", linestyle="--", linewidth=1, label=f"overall {100 * overall:.1f}%")
    if paper is not None:
        ax.axhline(paper, color="#dd8452", linestyle=":", linewidth=1.5, label=f"paper {paper:.1f}%")
    ax.set_xticks(range(len(scenes)))
    ax.set_xticklabels(scenes, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 115)
    ax.set_ylabel("pair accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()

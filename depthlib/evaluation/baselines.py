"""Image-blind baselines: what a predictor that never looks at the image scores.

The *layout prior* of a held-out set is one fixed map for every image: the
per-pixel median, over the set's own images, of the quantity the protocol
scores a prediction in (DISPARITY ``1/depth`` for the relative protocols,
DEPTH in metres for ``alignment="none"``). Images of other sizes are resized
(nearest) to the set's most common size for the median, and the prior is
resized back to each image. A pixel no image covers takes the median of all
valid values. Since it is computed on the held-out set itself, no image-blind
map can do much better: a model that does not beat it has learned the
scenes' layout at most.

The evaluation job streams its samples, so it keeps each ground truth only as
a small *grid sample* (:func:`prior_grid`: every ``f``-th pixel, nearest, so
the long side is at most ``PRIOR_GRID_SIDE``; exact for smaller maps) and
computes and scores the prior on those (:func:`grid_prior_scores`).
"""

from __future__ import annotations

import io
import math
from collections import Counter
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from depthlib.evaluation.protocol import Protocol, score, valid_pixels


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x[None, None].float(), size=size, mode="nearest")[0, 0]


def layout_prior(depths: Sequence[np.ndarray], valids: Sequence[np.ndarray], protocol: Protocol) -> torch.Tensor:
    """The layout prior (``H x W`` at the set's most common size), in disparity
    (relative protocols) or metres (``alignment="none"``).

    ``depths``: ``H x W`` ground-truth depth maps in metres; ``valids``: their masks.
    """
    if not len(depths):
        raise ValueError("the layout prior needs at least one image")
    size = Counter(tuple(d.shape) for d in depths).most_common(1)[0][0]
    maps = []
    for depth, valid in zip(depths, valids):
        gt = torch.nan_to_num(torch.from_numpy(np.asarray(depth, np.float32)), nan=0.0, posinf=0.0, neginf=0.0)
        ok = valid_pixels(gt, torch.from_numpy(np.asarray(valid, bool)), protocol)
        value = gt if protocol.alignment == "none" else 1.0 / torch.where(ok, gt, 1.0)
        maps.append(_resize(torch.where(ok, value, torch.nan), size))
    stack = torch.stack(maps)
    prior = torch.nanmedian(stack, dim=0).values
    fill = torch.nanmedian(stack.flatten())
    return torch.where(torch.isnan(prior), fill, prior)


def layout_prior_scores(depths: Sequence[np.ndarray], valids: Sequence[np.ndarray],
                        protocol: Protocol) -> dict[str, float]:
    """Mean ``abs_rel`` and ``d1`` of the layout prior over the images with a
    valid pixel, scored under ``protocol`` like a model (``images``: how many)."""
    prior = layout_prior(depths, valids, protocol)
    totals, n = {"abs_rel": 0.0, "d1": 0.0}, 0
    for depth, valid in zip(depths, valids):
        gt = torch.from_numpy(np.asarray(depth, np.float32))
        mask = torch.from_numpy(np.asarray(valid, bool))
        if not bool(valid_pixels(torch.nan_to_num(gt, nan=0.0), mask, protocol).any()):
            continue
        m = score(_resize(prior, tuple(gt.shape))[None], gt[None], mask[None], protocol)
        for k in totals:
            totals[k] += float(m[k][0])
        n += 1
    return {k: v / max(n, 1) for k, v in totals.items()} | {"images": n}


PRIOR_GRID_SIDE = 192  # long side of a ground truth's grid sample; held in float16 (~100 KB a map)


def prior_grid(depth: np.ndarray, valid: np.ndarray) -> bytes:
    """A ground truth's grid sample for the layout prior, as ``.npy`` bytes: ``depth`` (metres,
    ``H x W``) at every ``f``-th pixel, ``f = ceil(max(H, W) / PRIOR_GRID_SIDE)``, 0 where
    ``valid`` (the protocol's valid pixels, crop included) is False; float16 (depth clipped
    at 65000 m; 0.05% relative steps, far below what a median baseline resolves)."""
    f = max(1, math.ceil(max(depth.shape) / PRIOR_GRID_SIDE))
    grid = np.where(valid, np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0), 0.0)[::f, ::f]
    buf = io.BytesIO()
    np.save(buf, np.clip(grid, 0, 65000).astype(np.float16), allow_pickle=False)
    return buf.getvalue()


def grid_prior_scores(grids: Sequence[bytes], protocol: Protocol) -> dict[str, float]:
    """:func:`layout_prior_scores` on grid samples (:func:`prior_grid`): valid pixels are the
    positive ones, which already passed the protocol's range and crop (so ``crop`` is not
    applied again)."""
    depths = [np.load(io.BytesIO(g), allow_pickle=False).astype(np.float32) for g in grids]
    plain = Protocol(protocol.min_depth, protocol.max_depth, protocol.alignment)
    return layout_prior_scores(depths, [d > 0 for d in depths], plain)

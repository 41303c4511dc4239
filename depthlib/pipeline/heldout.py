"""DA-2K-style point pairs from held-out ground truth.

DA-2K (the paper's Table 3) asks, for pairs of points on an image, which one
is closer; its annotation file maps an image path to pairs::

    {"images/photo/00000003.jpg": [{"point1": [h, w], "point2": [h, w], "closer_point": "point1"}, ...]}

Here the pairs come from exact rendered depth instead of people: points are
drawn among valid pixels away from depth edges (so resizing a prediction
cannot move a point across an occlusion boundary), and a pair is kept only
when one point is clearly closer (depth ratio above ``min_ratio``). Which
point is listed first is random, so "always point1" scores 50%. The folder
written (``images/<scene>/<file>`` + ``annotations.json``) is read by the
evaluation job's ``da2k`` layout, whose per-scene accuracy then gives the
pair accuracy of each held-out set.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from depthlib import shards, storage

EDGE_RATIO = 1.05  # a point's 3x3 neighbourhood varies by less than this depth ratio


def smooth_valid(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Valid pixels whose 3x3 neighbours are valid and within ``EDGE_RATIO`` of each other in depth."""
    h, w = depth.shape
    out = np.zeros_like(valid)
    if h < 3 or w < 3:
        return out
    d = np.where(valid, depth, np.nan).astype(np.float64)
    win = np.lib.stride_tricks.sliding_window_view(d, (3, 3))
    with np.errstate(invalid="ignore"):
        lo, hi = win.min(axis=(-2, -1)), win.max(axis=(-2, -1))
        ok = np.isfinite(lo) & np.isfinite(hi) & (lo > 0) & (hi < lo * EDGE_RATIO)
    out[1:-1, 1:-1] = ok
    return out


def sample_pairs(depth: np.ndarray, valid: np.ndarray, n_pairs: int, min_ratio: float,
                 rng: np.random.Generator, max_tries: int = 50) -> list[dict]:
    """Up to ``n_pairs`` pairs ``{"point1", "point2", "closer_point"}`` (points as ``[h, w]``)
    whose depths differ by more than ``min_ratio``; fewer when the image has no such pairs."""
    ys, xs = np.nonzero(smooth_valid(depth, valid))
    if len(ys) < 2:
        return []
    pairs: list[dict] = []
    for _ in range(max_tries):
        need = n_pairs - len(pairs)
        if need <= 0:
            break
        a = rng.integers(0, len(ys), 4 * need)
        b = rng.integers(0, len(ys), 4 * need)
        da, db = depth[ys[a], xs[a]], depth[ys[b], xs[b]]
        keep = np.nonzero(np.maximum(da, db) > min_ratio * np.minimum(da, db))[0][:need]
        for k in keep:
            p, q = [int(ys[a[k]]), int(xs[a[k]])], [int(ys[b[k]]), int(xs[b[k]])]
            closer_first = bool(da[k] < db[k])
            if rng.random() < 0.5:
                pairs.append({"point1": p, "point2": q, "closer_point": "point1" if closer_first else "point2"})
            else:
                pairs.append({"point1": q, "point2": p, "closer_point": "point2" if closer_first else "point1"})
    return pairs


def _extension(image_format: str) -> str:
    return {"jpeg": "jpg"}.get(image_format, image_format)


def write_pairs(sets: dict[str, str], output: str, n_pairs: int, min_ratio: float, seed: int) -> dict:
    """Sample pairs on every row of each held-out set (``scene -> shards URI``) and write the
    DA-2K layout under ``output``; returns counts per scene."""
    annotations: dict[str, list[dict]] = {}
    counts: dict[str, dict[str, int]] = {}
    for scene, uri in sets.items():
        n_images = n_kept = 0
        for file in shards.list_shards(uri):
            for row in shards.read_shard(file).to_pylist():
                sample = shards.decode_sample(row)
                if sample.depth_type != "metric_depth":
                    raise ValueError(f"{storage.redact(file)}: row {sample.key!r} has {sample.depth_type} labels; "
                                     f"pairs need exact depth")
                if sample.image.shape[:2] != sample.depth.shape:
                    raise ValueError(f"{storage.redact(file)}: row {sample.key!r}: image {sample.image.shape[:2]} "
                                     f"and depth {sample.depth.shape} differ in size")
                key_seed = int.from_bytes(hashlib.sha256(f"{seed}/{scene}/{sample.key}".encode()).digest()[:8], "big")
                pairs = sample_pairs(sample.depth, sample.valid, n_pairs, min_ratio, np.random.default_rng(key_seed))
                n_images += 1
                if not pairs:
                    continue
                path = f"images/{scene}/{sample.key}.{_extension(str(row['image_format']))}"
                storage.write_bytes(storage.join(output, path), bytes(row["image"]))
                annotations[path] = pairs
                n_kept += len(pairs)
        if not n_kept:
            raise ValueError(f"no point pairs with a depth ratio above {min_ratio} in {storage.redact(uri)}")
        counts[scene] = {"images": n_images, "pairs": n_kept}
    # Last: the evaluation job reads the folder through this file.
    storage.write_bytes(storage.join(output, "annotations.json"), json.dumps(annotations, indent=1).encode())
    return counts

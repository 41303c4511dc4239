"""What every dataset importer provides, and the shared pairing of images with labels.

A dataset module (``hypersim.py``, ``vkitti2.py``, ...) holds only what
differs between datasets:

- ``classify(path) -> (role, identity) | None``: whether a file of the input
  tree is a frame's ``"image"`` or its ``"depth"`` label, and the identity
  that pairs the two (scene, camera, frame number, ...). Pairing by identity
  rather than by path keeps working when the image and the label come from
  different archives whose top folders differ (TartanAir's per-modality
  ZIPs, VKITTI2's rgb and depth tars).
- ``convert(image_shape, depth_bytes, key, options) -> Label``: decode the
  label file and turn it into what the shard stores (metres, disparity, or
  depth up to scale), with its valid mask and provenance.
- ``DEPTH_TYPE`` and ``SOURCE`` (where each fact comes from).
- optionally ``load_split(text, subset) -> predicate(key, identity)`` for an
  official split file.

The shared job (:mod:`depthlib.importers.job`) lists, pairs, reads, checks
the image, calls ``convert``, writes shards and records errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np


class FrameError(Exception):
    """A frame that cannot be imported: recorded with ``reason`` and ``detail``, never fatal."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Label:
    """A converted label: what one shard row stores besides the image."""

    depth: np.ndarray
    """H x W float array, the image's size."""
    valid: np.ndarray
    """H x W bool."""
    depth_type: str
    """A :data:`depthlib.shards.DEPTH_TYPES` value."""
    provenance: dict = field(default_factory=dict)


@dataclass
class PlannedFrame:
    """One frame to import: its key (the image's path relative to the input) and its files' sources."""

    key: str
    image: dict
    """The image's :class:`~depthlib.importers.sources.Source` as a dict."""
    depth: dict | None
    """The label's source, or None: the frame is recorded as ``missing_depth``."""
    identity: tuple = ()


def decode_failure(reason: str, what: str, exc: BaseException) -> FrameError:
    """A decoding exception as a :class:`FrameError` (message bounded)."""
    return FrameError(reason, f"{what}: {type(exc).__name__}: {exc}"[:500])


def pair_files(files: Iterable[tuple[str, dict]], classify: Callable[[str], tuple[str, tuple] | None]
               ) -> tuple[list[PlannedFrame], int]:
    """Group listed files into frames by ``classify``'s identity.

    Returns ``(frames sorted by key, labels without an image)``. A frame
    whose label is missing keeps ``depth=None`` (the job records it). If two
    files claim the same role and identity (the same frame stored twice, e.g.
    extracted next to its archive), the first path in sorted order wins.
    """
    images: dict[tuple, tuple[str, dict]] = {}
    depths: dict[tuple, tuple[str, dict]] = {}
    for path, src in files:
        found = classify(path)
        if found is None:
            continue
        role, identity = found
        table = images if role == "image" else depths
        if identity not in table or path < table[identity][0]:
            table[identity] = (path, src)
    frames = [PlannedFrame(path, src, depths.get(identity, (None, None))[1], identity)
              for identity, (path, src) in images.items()]
    frames.sort(key=lambda f: f.key)
    orphans = sum(1 for identity in depths if identity not in images)
    return frames, orphans


def check_label(label: Label, image_shape: tuple[int, int], key: str) -> Label:
    """Refuse a label that does not fit its image or has no valid pixel."""
    if label.depth.ndim != 2:
        raise FrameError("depth_unreadable", f"{key}: label map has shape {label.depth.shape}, not H x W")
    if tuple(label.depth.shape) != tuple(image_shape):
        raise FrameError("size_mismatch", f"{key}: image is {image_shape[0]}x{image_shape[1]}, label is "
                                          f"{label.depth.shape[0]}x{label.depth.shape[1]}")
    valid = label.valid & np.isfinite(label.depth)
    if not valid.any():
        raise FrameError("no_valid_depth", f"{key}: no pixel of the label is valid")
    label.valid = valid
    return label

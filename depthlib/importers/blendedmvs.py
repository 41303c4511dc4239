"""BlendedMVS (Yao et al., YoYo000/BlendedMVS): multi-view reconstructions, depth up to scale.

Facts, from YoYo000/BlendedMVS (README, "Dataset Structure": the MVSNet
input format) and YoYo000/MVSNet (``load_pfm`` in its preprocessing code):

- Layout: ``PID/blended_images/NNNNNNNN.jpg`` and ``NNNNNNNN_masked.jpg``
  (the masked copies are not samples), ``PID/rendered_depth_maps/NNNNNNNN.pfm``,
  ``PID/cams/NNNNNNNN_cam.txt`` (extrinsic, intrinsic, depth_min and
  interval; not needed here). 768 x 576 in the low-resolution set.
- Depth: a single-channel PFM (``Pf``), float32, its rows stored bottom-up
  (``load_pfm`` flips them); a negative scale in the header means
  little-endian. 0 = no depth (the textured mesh is not complete).
- The reconstruction has no metric scale: depths are in the mesh's own
  units. They are stored as ``depth_up_to_scale``, a label kind that every
  metric reader refuses and the teacher stage turns into inverse depth.
"""

from __future__ import annotations

import re

import numpy as np

from depthlib.importers.base import FrameError, Label

NAME = "blendedmvs"
DEPTH_TYPE = "depth_up_to_scale"
SOURCE = "YoYo000/BlendedMVS README (MVSNet format); YoYo000/MVSNet load_pfm"
LAYOUT = "PID/{blended_images/NNNNNNNN.jpg,rendered_depth_maps/NNNNNNNN.pfm}"

_IMAGE = re.compile(r"(?:^|/)([^/]+)/blended_images/(\d+)\.jpg$")  # *_masked.jpg never matches
_DEPTH = re.compile(r"(?:^|/)([^/]+)/rendered_depth_maps/(\d+)\.pfm$")


def classify(path: str):
    for role, pattern in (("image", _IMAGE), ("depth", _DEPTH)):
        m = pattern.search(path)
        if m:
            return role, (m.group(1), int(m.group(2)))
    return None


def read_pfm(data: bytes, what: str) -> np.ndarray:
    """A PFM file -> H x W (or H x W x 3) float32, top row first."""
    lines, pos = [], 0
    for _ in range(3):  # "Pf"/"PF", "W H", scale: each ends in one whitespace character
        end = data.find(b"\n", pos)
        if end < 0:
            raise FrameError("depth_unreadable", f"{what}: PFM header is cut short")
        lines.append(data[pos:end].strip())
        pos = end + 1
    magic = lines[0]
    if magic not in (b"Pf", b"PF"):
        raise FrameError("depth_unreadable", f"{what}: not a PFM file (starts with {data[:8]!r})")
    try:
        width, height = (int(x) for x in lines[1].split())
        scale = float(lines[2])
    except ValueError:
        raise FrameError("depth_unreadable", f"{what}: bad PFM header {lines[1:]!r}") from None
    channels = 3 if magic == b"PF" else 1
    dtype = np.dtype("<f4" if scale < 0 else ">f4")
    n = width * height * channels
    if len(data) - pos < n * 4:
        raise FrameError("depth_unreadable", f"{what}: PFM data is truncated ({len(data) - pos} of {n * 4} bytes)")
    a = np.frombuffer(data, dtype, count=n, offset=pos).astype(np.float32)
    a = a.reshape((height, width, channels) if channels == 3 else (height, width))
    return np.ascontiguousarray(a[::-1])  # stored bottom row first


def convert(image_shape, depth_bytes: bytes, key: str, options: dict) -> Label:
    depth = read_pfm(depth_bytes, key)
    if depth.ndim != 2:
        raise FrameError("depth_unreadable", f"{key}: a 3-channel PFM is not a depth map")
    valid = np.isfinite(depth) & (depth > 0)
    return Label(np.where(valid, depth, 0.0), valid, DEPTH_TYPE,
                 {"source": "blendedmvs rendered depth PFM (rows flipped); 0 invalid",
                  "units": "reconstruction units (not metres)"})

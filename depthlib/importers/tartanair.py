"""TartanAir (Wang et al., castacks/tartanair_tools): simulated environments, metric depth.

Facts, from castacks/tartanair_tools:

- Layout (README, "Data directory structure"): ``ENV/{Easy,Hard}/Pxxx/``
  with ``image_left/NNNNNN_left.png``, ``depth_left/NNNNNN_left_depth.npy``,
  and the right camera's ``image_right/NNNNNN_right.png``,
  ``depth_right/NNNNNN_right_depth.npy``. Downloads
  (``download_training_zipfiles.txt``) are one ZIP per environment, level
  and modality (``abandonedfactory/Easy/depth_left.zip``), and copies differ
  in how many folders sit above ``ENV``: frames are found by their ``P*``
  folder and pair by (environment, level, trajectory, camera, frame).
- Depth (``data_type.md``): ``np.load`` gives metres, 640 x 480; "the sky
  has a large depth value (e.g. 10000) instead of an infinite number". The
  same page calls the array "16-bit"; the files hold float32 in practice, so
  any float dtype is read. Depth above :data:`SKY_CAP_M` is stored invalid.
- Intrinsics fx = fy = 320, cx = 320, cy = 240; stereo baseline 0.25 m.
"""

from __future__ import annotations

import io
import re

import numpy as np

from depthlib.importers.base import FrameError, Label, decode_failure

NAME = "tartanair"
DEPTH_TYPE = "metric_depth"
SOURCE = "castacks/tartanair_tools README.md and data_type.md"
LAYOUT = "ENV/{Easy,Hard}/Pxxx/{image_left/NNNNNN_left.png,depth_left/NNNNNN_left_depth.npy}"
SKY_CAP_M = 1000.0
"""Depths above this are the sky sphere (~10000 m), not surfaces: invalid."""

_IMAGE = re.compile(r"(?:^|/)([^/]+)/(Easy|Hard)/(P\d+)/image_(left|right)/(\d+)_(left|right)\.png$")
_DEPTH = re.compile(r"(?:^|/)([^/]+)/(Easy|Hard)/(P\d+)/depth_(left|right)/(\d+)_(left|right)_depth\.npy$")


def classify(path: str):
    for role, pattern in (("image", _IMAGE), ("depth", _DEPTH)):
        m = pattern.search(path)
        if m and m.group(4) == m.group(6):
            return role, (m.group(1), m.group(2), m.group(3), m.group(4), int(m.group(5)))
    return None


def convert(image_shape, depth_bytes: bytes, key: str, options: dict) -> Label:
    try:
        depth = np.load(io.BytesIO(depth_bytes), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError/EOFError/OSError for damage
        raise decode_failure("depth_unreadable", key, e) from None
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise FrameError("depth_unreadable", f"{key}: depth array {depth.dtype} {depth.shape}, "
                                             f"expected H x W floats")
    depth = depth.astype(np.float32)
    valid = np.isfinite(depth) & (depth > 0) & (depth <= SKY_CAP_M)
    return Label(np.where(valid, depth, 0.0), valid, DEPTH_TYPE,
                 {"source": f"tartanair depth npy, metres; above {SKY_CAP_M:g} m (sky) invalid", "units": "metres"})

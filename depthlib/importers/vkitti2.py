"""Virtual KITTI 2 (Cabon et al., NAVER LABS Europe): driving scenes, metric depth.

Facts (the dataset page's format description, and Depth-Anything-V2's
``metric_depth/dataset/vkitti2.py``, which reads the depth PNG with
``cv2.IMREAD_ANYDEPTH`` and divides by 100, "cm to m"):

- Shipped as ``vkitti_2.0.3_rgb.tar`` and ``vkitti_2.0.3_depth.tar``, files
  ``SceneNN/<variant>/frames/rgb/Camera_{0,1}/rgb_%05d.jpg`` and
  ``SceneNN/<variant>/frames/depth/Camera_{0,1}/depth_%05d.png``; scenes 01,
  02, 06, 18, 20; variants clone, fog, morning, overcast, rain, sunset,
  15/30-deg-left/right. Every camera and variant is imported (Depth-Anything-V2
  keeps Camera_0 only: pass its split list with ``--split``).
- Depth: a single-channel 16-bit PNG in centimetres; 65535 (655.35 m) is the
  sky, stored invalid here. 1242 x 375 px, focal 725.0087 px.
- Image and label pair by (scene, variant, camera, frame), so the two tars
  may sit anywhere under the input.
"""

from __future__ import annotations

import io
import re

import numpy as np

from depthlib.importers.base import FrameError, Label, decode_failure

NAME = "vkitti2"
DEPTH_TYPE = "metric_depth"
SOURCE = "Virtual KITTI 2 format description; Depth-Anything-V2 metric_depth/dataset/vkitti2.py"
LAYOUT = "SceneNN/<variant>/frames/{rgb,depth}/Camera_K/{rgb_NNNNN.jpg,depth_NNNNN.png}"
SKY = 65535
CM_PER_M = 100.0

_IMAGE = re.compile(r"(?:^|/)(Scene\d+)/([^/]+)/frames/rgb/(Camera_\d+)/rgb_(\d+)\.jpg$")
_DEPTH = re.compile(r"(?:^|/)(Scene\d+)/([^/]+)/frames/depth/(Camera_\d+)/depth_(\d+)\.png$")


def classify(path: str):
    for role, pattern in (("image", _IMAGE), ("depth", _DEPTH)):
        m = pattern.search(path)
        if m:
            return role, (m.group(1), m.group(2), m.group(3), int(m.group(4)))
    return None


def read_depth_png(data: bytes, what: str) -> np.ndarray:
    """A 16-bit single-channel PNG -> uint16 array (anything else is refused)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise FrameError("depth_unreadable", f"{what}: not a PNG ({im.format})")
            if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise FrameError("depth_unreadable", f"{what}: PNG mode {im.mode}, expected 16-bit grey")
            im.load()
            a = np.asarray(im)
    except FrameError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError/SyntaxError/ValueError for damage
        raise decode_failure("depth_unreadable", what, e) from None
    if a.min() < 0 or a.max() > 65535:
        raise FrameError("depth_unreadable", f"{what}: values outside uint16")
    return a.astype(np.uint16)


def convert(image_shape, depth_bytes: bytes, key: str, options: dict) -> Label:
    cm = read_depth_png(depth_bytes, key)
    valid = (cm != SKY) & (cm > 0)
    return Label(cm.astype(np.float32) / np.float32(CM_PER_M), valid, DEPTH_TYPE,
                 {"source": "vkitti2 depth PNG, uint16 centimetres / 100; 65535 (sky) invalid", "units": "metres"})

"""IRS (Wang et al., HKBU-HPML/IRS): indoor stereo renderings, disparity.

Facts, from HKBU-HPML/IRS:

- Layout (``lists/*.list`` and ``dataloader/IRSLoader.py``):
  ``{Home,Office,Restaurant,Store}/<scene>/l_N.png`` (left image),
  ``r_N.png``, ``d_N.exr`` (disparity of the left image), ``n_N.exr``
  (normals); 960 x 540.
- ``d_N.exr`` holds DISPARITY in pixels, not depth: ``IRSLoader.load_disp``
  reads it as the ground-truth disparity through ``EXRloader.load_exr``,
  which takes a one-channel file's channel ``'G'`` as float32.
- Camera: focal length 480 px (``IRSLoader.py``), baseline 0.1 m
  (``dataloader/scripts/disp2pcd.py``, not the README), so depth =
  480 * 0.1 / disparity. Stored as ``disparity`` (what the teacher learns,
  affine-invariant), with the focal length and baseline in the provenance.
- Orientation: as ``IRSLoader.load_disp`` reads it, not flipped.
  ``disp2pcd.py`` flips the EXR vertically (``disp_inverse_y``) before
  making a point cloud; the training loader does not, and neither does this
  importer. Not checked on a real IRS file here (none can be downloaded).
"""

from __future__ import annotations

import io
import re

import numpy as np

from depthlib.importers.base import FrameError, Label, decode_failure

NAME = "irs"
DEPTH_TYPE = "disparity"
SOURCE = "HKBU-HPML/IRS dataloader/IRSLoader.py (focal, layout), EXRloader.py, scripts/disp2pcd.py (baseline)"
LAYOUT = "{Home,Office,Restaurant,Store}/<scene>/{l_N.png,d_N.exr}"
FOCAL_PX = 480.0
BASELINE_M = 0.1

_IMAGE = re.compile(r"(?:(.*)/)?l_(\d+)\.png")  # identity: (the scene folder, N)
_DEPTH = re.compile(r"(?:(.*)/)?d_(\d+)\.exr")


def classify(path: str):
    for role, pattern in (("image", _IMAGE), ("depth", _DEPTH)):
        m = pattern.fullmatch(path)
        if m:
            return role, (m.group(1) or "", int(m.group(2)))
    return None


def read_exr_disparity(data: bytes, what: str) -> np.ndarray:
    """A one-channel EXR -> H x W float32 (channel 'G' as IRS's loader reads, else the only channel)."""
    import OpenEXR

    try:
        channels = OpenEXR.File(io.BytesIO(data), separate_channels=True).channels()
    except Exception as e:  # noqa: BLE001 - OpenEXR raises RuntimeError for damaged files
        raise decode_failure("depth_unreadable", what, e) from None
    if "G" in channels:
        pixels = channels["G"].pixels
    elif len(channels) == 1:
        pixels = next(iter(channels.values())).pixels
    else:
        raise FrameError("depth_unreadable", f"{what}: EXR channels {sorted(channels)}; expected one (or 'G')")
    return np.asarray(pixels, np.float32)


def convert(image_shape, depth_bytes: bytes, key: str, options: dict) -> Label:
    disp = read_exr_disparity(depth_bytes, key)
    if disp.ndim != 2:
        raise FrameError("depth_unreadable", f"{key}: disparity has shape {disp.shape}")
    valid = np.isfinite(disp) & (disp > 0)
    return Label(np.where(valid, disp, 0.0), valid, DEPTH_TYPE,
                 {"source": "irs d_N.exr disparity (pixels)", "focal_px": FOCAL_PX, "baseline_m": BASELINE_M,
                  "depth_from_disparity": "depth_m = focal_px * baseline_m / disparity"})

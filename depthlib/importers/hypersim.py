"""Hypersim (Roberts et al., apple/ml-hypersim): indoor scenes, metric depth.

Facts, from apple/ml-hypersim:

- Layout (README, "Working with the Hypersim Dataset"; one ZIP per scene):
  ``ai_VVV_NNN/images/scene_cam_XX_final_preview/frame.IIII.tonemap.jpg`` (the
  tone-mapped image, what Depth-Anything-V2's ``metric_depth/dataset/hypersim.py``
  reads) and ``ai_VVV_NNN/images/scene_cam_XX_geometry_hdf5/frame.IIII.depth_meters.hdf5``.
- ``depth_meters`` holds "Euclidean distances (in meters) to the optical
  center of the camera ... not planar depth values, i.e., negative
  z-coordinates in camera-space" (README), in the HDF5 dataset ``"dataset"``
  (every reader in the repository: ``f["dataset"][:]``), float16; NaN where
  no surface was hit.
- Camera rays (contrib/mikeroberts3000, notebook
  ``01_casting_rays_that_match_hypersim_images``): ``ray = M_cam_from_uv @
  [u, v, 1]`` with ``u, v`` in [-1, 1] at pixel centres, ``u`` left to right,
  ``v`` from +1 at the top row to -1 at the bottom (``linspace(...)[::-1]``);
  the camera looks along -z. The point is ``distance * ray / |ray|``, so
  planar depth = ``distance * (-ray_z) / |ray|``. ``M_cam_from_uv_00 ..
  M_cam_from_uv_22`` are columns of ``metadata_camera_parameters.csv`` (one
  row per ``scene_name``); 288 of its 482 scenes are not the plain pinhole
  (tilt-shift lens parameters: e.g. ai_037_002's matrix has off-diagonal
  terms of 0.07-0.09).
- Without that file the nominal pinhole is used: focal 886.81 px at 1024 x
  768 (Depth-Anything-V2 ``hypersim_distance_to_depth``), i.e. ``M = diag(512
  / 886.81, 384 / 886.81, -1)``, the same matrix scaled to any image size;
  the provenance says which camera was used (``planar_depth``).
- Split: ``evermotion_dataset/analysis/metadata_images_split_scene_v1.csv``
  with columns ``scene_name, camera_name, frame_id,
  included_in_public_release, exclude_reason, split_partition_name``; frames
  not included in the public release have no partition. ``--split FILE``
  keeps the frames of ``--subset`` (train, val, test) that are included; a
  split file without that header is read as a list of image paths (e.g.
  Depth-Anything-V2's ``metric_depth/dataset/splits/hypersim/val.txt``, the
  one Hypersim list that repository ships).
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np

from depthlib.importers.base import FrameError, Label, decode_failure

NAME = "hypersim"
DEPTH_TYPE = "metric_depth"
SOURCE = "apple/ml-hypersim README and contrib/mikeroberts3000 (metadata_camera_parameters.csv)"
LAYOUT = ("ai_VVV_NNN/images/scene_cam_XX_{final_preview/frame.IIII.tonemap.jpg,"
          "geometry_hdf5/frame.IIII.depth_meters.hdf5}")
NOMINAL_FOCAL_PX = 886.81
NOMINAL_SIZE = (768, 1024)  # height, width
NOMINAL_M_CAM_FROM_UV = np.array([[NOMINAL_SIZE[1] / 2 / NOMINAL_FOCAL_PX, 0.0, 0.0],
                                  [0.0, NOMINAL_SIZE[0] / 2 / NOMINAL_FOCAL_PX, 0.0],
                                  [0.0, 0.0, -1.0]])
HDF5_DATASET = "dataset"
SPLIT_HEADER = "scene_name"
"""The official split CSV's header starts so; any other --split file is a list of image paths."""

_IMAGE = re.compile(r"(?:^|/)(ai_\d{3}_\d{3})/images/scene_(cam_\d+)_final_preview/frame\.(\d+)\.tonemap\.jpg$")
_DEPTH = re.compile(r"(?:^|/)(ai_\d{3}_\d{3})/images/scene_(cam_\d+)_geometry_hdf5/frame\.(\d+)\.depth_meters\.hdf5$")


def classify(path: str):
    for role, pattern in (("image", _IMAGE), ("depth", _DEPTH)):
        m = pattern.search(path)
        if m:
            return role, (m.group(1), m.group(2), int(m.group(3)))
    return None


def load_split(text: str, subset: str):
    """The official split CSV -> a predicate keeping ``subset``'s frames included in the release."""
    reader = csv.DictReader(io.StringIO(text))
    need = {"scene_name", "camera_name", "frame_id", "included_in_public_release", "split_partition_name"}
    if not need <= set(reader.fieldnames or ()):
        raise ValueError(f"not Hypersim's split CSV: columns {reader.fieldnames}, need {sorted(need)}")
    keep = set()
    for row in reader:
        if row["included_in_public_release"].strip().lower() == "true" and \
                row["split_partition_name"].strip() == subset:
            keep.add((row["scene_name"], row["camera_name"], int(row["frame_id"])))
    if not keep:
        raise ValueError(f"the split CSV has no included frame in partition {subset!r}")
    return lambda key, identity: identity in keep


def load_camera_parameters(text: str) -> dict[str, list[float]]:
    """``metadata_camera_parameters.csv`` -> ``{scene_name: M_cam_from_uv as 9 floats, row-major}``."""
    reader = csv.DictReader(io.StringIO(text))
    cols = [f"M_cam_from_uv_{i}{j}" for i in range(3) for j in range(3)]
    if not {"scene_name", *cols} <= set(reader.fieldnames or ()):
        raise ValueError("not Hypersim's metadata_camera_parameters.csv: it lacks scene_name or "
                         "M_cam_from_uv_00..22")
    out = {}
    for row in reader:
        try:
            out[row["scene_name"]] = [float(row[c]) for c in cols]
        except (TypeError, ValueError):
            raise ValueError(f"metadata_camera_parameters.csv: scene {row['scene_name']!r} has a "
                             f"non-numeric M_cam_from_uv") from None
    return out


def planar_depth(distance: np.ndarray, m_cam_from_uv: np.ndarray) -> np.ndarray:
    """Distance to the camera centre -> planar depth (-z in camera space), for an H x W map."""
    h, w = distance.shape
    u = np.linspace(-1.0 + 1.0 / w, 1.0 - 1.0 / w, w)
    v = np.linspace(1.0 - 1.0 / h, -1.0 + 1.0 / h, h)  # row 0 is the top: v ~ +1
    uu, vv = np.meshgrid(u, v)
    uv1 = np.stack([uu, vv, np.ones_like(uu)], axis=-1)  # H x W x 3
    rays = uv1 @ np.asarray(m_cam_from_uv, np.float64).T
    return distance.astype(np.float64) * (-rays[..., 2]) / np.linalg.norm(rays, axis=-1)


def read_distance(data: bytes, what: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            if HDF5_DATASET not in f:
                raise FrameError("depth_unreadable", f"{what}: no HDF5 dataset {HDF5_DATASET!r} "
                                                     f"(has {sorted(f.keys())})")
            return np.asarray(f[HDF5_DATASET][()], dtype=np.float32)
    except FrameError:
        raise
    except Exception as e:  # noqa: BLE001 - h5py raises OSError, KeyError, ValueError for damaged files
        raise decode_failure("depth_unreadable", what, e) from None


def convert(image_shape, depth_bytes: bytes, key: str, options: dict) -> Label:
    distance = read_distance(depth_bytes, key)
    if distance.ndim != 2:
        raise FrameError("depth_unreadable", f"{key}: depth_meters has shape {distance.shape}")
    cameras = options.get("hypersim_cameras")
    scene = classify(key)[1][0]
    if cameras is not None:
        if scene not in cameras:
            raise FrameError("no_camera_parameters", f"{key}: scene {scene} is not in the camera parameters file")
        m = np.asarray(cameras[scene], np.float64).reshape(3, 3)
        how = "scene_M_cam_from_uv"
    else:
        m = NOMINAL_M_CAM_FROM_UV
        how = f"nominal_focal_{NOMINAL_FOCAL_PX}px_at_1024x768"
    valid = np.isfinite(distance) & (distance > 0)
    depth = np.where(valid, planar_depth(np.where(valid, distance, 0.0), m), 0.0)
    valid &= depth > 0
    return Label(depth, valid, DEPTH_TYPE, {
        "source": "hypersim depth_meters (distance to the camera centre) -> planar depth",
        "planar_depth": how, "M_cam_from_uv": [round(float(x), 9) for x in m.ravel()], "units": "metres"})

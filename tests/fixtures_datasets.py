"""Tiny copies of the paper's datasets in their exact shipped layout and encoding.

Each ``*_files`` function returns ``{path: bytes}`` for a few frames of one
dataset, written exactly as the dataset ships them (file names, dtypes, PNG
bit depth, PFM orientation and scale sign, the HDF5 dataset name, a
one-channel EXR, sky values), plus the raw arrays the tests compute the
expected labels from. :func:`write_tree`, :func:`write_zip` and
:func:`write_tar` store such a dict as an extracted tree or as an archive.
Images are :data:`H` x :data:`W` (above the decoder's 14 px minimum side).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

H, W = 14, 20

# Hypersim ai_037_002's M_cam_from_uv (a tilt-shift camera), as in
# apple/ml-hypersim contrib/mikeroberts3000/metadata_camera_parameters.csv.
TILT_SHIFT_M = np.array([[0.579607251426182, 0.0, -0.06955286861651404],
                         [0.0, 0.4346865334657201, 0.09273312506660672],
                         [-0.0, 0.004054126980668954, -1.003909173803896]])


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def encode(arr: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def png16(a: np.ndarray) -> bytes:
    """A single-channel 16-bit PNG (bit depth 16 in IHDR), as VKITTI2's depth."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(a, np.uint16)).save(buf, format="PNG")
    data = buf.getvalue()
    assert data[24] == 16 and data[25] == 0, "not a 16-bit greyscale PNG"  # IHDR bit depth, colour type
    return data


def hdf5(a: np.ndarray) -> bytes:
    """An HDF5 file with the array under dataset name "dataset", as Hypersim's."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("dataset", data=a)
    return buf.getvalue()


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def pfm(a: np.ndarray, little_endian: bool = True) -> bytes:
    """A one-channel PFM: rows stored bottom-up, negative scale = little-endian (MVSNet's write_pfm)."""
    a = np.asarray(a, np.float32)
    header = f"Pf\n{a.shape[1]} {a.shape[0]}\n{-1.0 if little_endian else 1.0}\n".encode()
    return header + np.ascontiguousarray(a[::-1]).astype("<f4" if little_endian else ">f4").tobytes()


def exr_one_channel(a: np.ndarray, channel: str = "G") -> bytes:
    """A one-channel float32 EXR (IRS's loader reads channel 'G' of such a file)."""
    import os
    import tempfile

    import OpenEXR

    f = OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
                     {channel: np.asarray(a, np.float32)})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "d.exr")
        f.write(path)
        return Path(path).read_bytes()


# --------------------------------------------------------------------------- datasets


def hypersim_files(scene: str = "ai_001_001", cam: str = "cam_00", frames=(0, 1), seed: int = 0):
    """``{path: bytes}`` and ``{image key: float16 distance}`` for a Hypersim scene."""
    rng = np.random.default_rng(seed)
    files, distances = {}, {}
    for i in frames:
        key = f"{scene}/images/scene_{cam}_final_preview/frame.{i:04d}.tonemap.jpg"
        d = rng.uniform(1.0, 8.0, (H, W)).astype(np.float16)
        d[0, 0] = np.nan  # nothing hit
        files[key] = encode(rgb(seed * 100 + i), "JPEG")
        files[f"{scene}/images/scene_{cam}_geometry_hdf5/frame.{i:04d}.depth_meters.hdf5"] = hdf5(d)
        files[f"{scene}/images/scene_{cam}_final_hdf5/frame.{i:04d}.color.hdf5"] = hdf5(np.zeros((H, W, 3), np.float16))
        distances[key] = d
    return files, distances


def camera_parameters_csv(cameras: dict[str, np.ndarray]) -> bytes:
    cols = [f"M_cam_from_uv_{i}{j}" for i in range(3) for j in range(3)]
    lines = [",".join(["scene_name", "settings_output_img_height", "settings_output_img_width", *cols])]
    for scene, m in cameras.items():
        lines.append(",".join([scene, "768.0", "1024.0", *(repr(float(x)) for x in np.ravel(m))]))
    return ("\n".join(lines) + "\n").encode()


def vkitti2_files(scene: str = "Scene01", variants=("clone", "fog"), cameras=(0, 1), frames=(0,)):
    """``{path: bytes}`` and ``{image key: uint16 centimetres}``; row 0 is sky (65535)."""
    files, depths = {}, {}
    n = 0
    for variant in variants:
        for cam in cameras:
            for i in frames:
                key = f"{scene}/{variant}/frames/rgb/Camera_{cam}/rgb_{i:05d}.jpg"
                cm = np.random.default_rng(n).integers(100, 20000, (H, W)).astype(np.uint16)
                cm[0] = 65535
                files[key] = encode(rgb(n), "JPEG")
                files[f"{scene}/{variant}/frames/depth/Camera_{cam}/depth_{i:05d}.png"] = png16(cm)
                depths[key] = cm
                n += 1
    return files, depths


def tartanair_files(env: str = "abandonedfactory", level: str = "Easy", traj: str = "P000", frames=(0, 1),
                    sides=("left",)):
    """``{path: bytes}`` and ``{image key: float32 metres}``; row 0 is sky (10000)."""
    files, depths = {}, {}
    for side in sides:
        for i in frames:
            key = f"{env}/{level}/{traj}/image_{side}/{i:06d}_{side}.png"
            d = np.random.default_rng(i).uniform(0.5, 60.0, (H, W)).astype(np.float32)
            d[0] = 10000.0
            files[key] = encode(rgb(i + (50 if side == "right" else 0)), "PNG")
            files[f"{env}/{level}/{traj}/depth_{side}/{i:06d}_{side}_depth.npy"] = npy(d)
            depths[key] = d
    return files, depths


def blendedmvs_files(pid: str = "5a3ca9cb270f0e3f14d0eddb", frames=(0, 1)):
    """``{path: bytes}`` and ``{image key: float32 depth, top row first}``; 0 = no depth."""
    files, depths = {}, {}
    for i in frames:
        key = f"{pid}/blended_images/{i:08d}.jpg"
        d = np.random.default_rng(i).uniform(200.0, 900.0, (H, W)).astype(np.float32)
        d[:, 0] = 0.0
        d[0, 1] = 123.5  # a distinct top row: a reader that forgets the flip fails here
        files[key] = encode(rgb(i), "JPEG")
        files[f"{pid}/blended_images/{i:08d}_masked.jpg"] = encode(rgb(i + 7), "JPEG")
        files[f"{pid}/rendered_depth_maps/{i:08d}.pfm"] = pfm(d)
        files[f"{pid}/cams/{i:08d}_cam.txt"] = b"extrinsic\n1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n\n" \
                                                b"intrinsic\n10 0 10\n0 10 7\n0 0 1\n\n425.0 2.5\n"
        depths[key] = d
    files[f"{pid}/cams/pair.txt"] = b"2\n"
    return files, depths


def irs_files(area: str = "Home", scene: str = "ArchVizInterior03Data", frames=(1, 2)):
    """``{path: bytes}`` and ``{image key: float32 disparity}``. Names as shipped, zero-padded to five
    digits (``Home/<scene>/l_00001.png``, ``d_00001.exr``; IRS's ``lists/irs_small_test.list``)."""
    files, disps = {}, {}
    for i in frames:
        key = f"{area}/{scene}/l_{i:05d}.png"
        d = np.random.default_rng(i).uniform(2.0, 90.0, (H, W)).astype(np.float32)
        files[key] = encode(rgb(i), "PNG")
        files[f"{area}/{scene}/r_{i:05d}.png"] = encode(rgb(i + 1), "PNG")
        files[f"{area}/{scene}/d_{i:05d}.exr"] = exr_one_channel(d)
        disps[key] = d
    return files, disps


# --------------------------------------------------------------------------- storing


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        p = Path(root) / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return Path(root)


def write_zip(path: Path, files: dict[str, bytes], strip: str = "", prefix: str = "",
              compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A ZIP of ``files`` (member = ``prefix + path minus strip``), deflated by default."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in sorted(files.items()):
            z.writestr(prefix + name[len(strip):], data)
    return path


def write_zip64_beyond_4gib(path: Path, files: dict[str, bytes], first: dict[str, bytes] | None = None,
                            gap: int = (4 << 30) + 12345) -> Path:
    """A ZIP64 archive whose ``files`` lie past the 4 GiB mark, as in Hypersim's larger scene ZIPs.

    ``first`` (if any) is written at offset 0; then the archive skips ``gap`` bytes
    (a hole: the file is sparse, a few KiB on disk) and writes ``files`` deflated,
    each with a ZIP64 extra field in its local header and offsets > 2**32 in the
    central directory (``zipfile`` writes a ZIP64 end record). The skip sets
    ``ZipFile.start_dir``, where the writer puts its next member (an attribute of
    CPython's ``zipfile`` writer; this is test data only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted((first or {}).items()):
            z.writestr(name, data)
        z.start_dir = max(z.start_dir, gap)
        for name, data in sorted(files.items()):
            with z.open(name, "w", force_zip64=True) as member:
                member.write(data)
    return path


def write_tar(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as t:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def dataset_files():
    """The ``*_files`` builders by dataset name."""
    return {"hypersim": hypersim_files, "vkitti2": vkitti2_files, "tartanair": tartanair_files,
            "blendedmvs": blendedmvs_files, "irs": irs_files}

"""Fixture benchmarks in the standard layouts, from rendered scenes with exact depth.

``write_benchmarks(root)`` writes one small copy of every supported layout
(NYU, KITTI, ETH3D, DIODE, ScanNet, Sintel, DA-2K, our shards) under
``root/<name>/``, with split lists under ``root/splits/``, and returns a
:class:`Fixture` that knows, for every sample, the ground truth as the file
format stores it (decoded here with the formats' own definitions, not with
the code under test) and an *oracle* prediction: ``a / gt + b`` (exact
disparity up to scale and shift) on the pixels the protocol must count, and
garbage on pixels it must not (outside the Eigen crops, outside DIODE's mask
file, outside the valid range), so a reader or crop that is wrong shows up
as a non-zero AbsRel. DA-2K gets pairs whose right answers are known, with
some labels deliberately flipped so each scene's accuracy is a known fraction.

``pack_tar`` / ``pack_zip`` turn a layout folder into the archives users
download (tar members as ``./<path>``; zip names stored as cp437 bytes that
are really UTF-8, as in DA-2K.zip).
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from depthlib.synthetic import encode_image, render_scene

NYU_HW = (480, 640)
KITTI_HW = (375, 1242)
SMALL_HW = (70, 98)
GARBAGE = 1e4  # a prediction value far off any aligned answer


@dataclass
class Fixture:
    root: Path
    splits: dict[str, Path] = field(default_factory=dict)
    # dataset -> key -> prediction map (oracle), as the job reads it from --predictions
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # dataset -> expected number of scored images
    n_images: dict[str, int] = field(default_factory=dict)
    # dataset -> {key: expected skip reason}
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    n_no_gt: dict[str, int] = field(default_factory=dict)
    da2k_by_scene: dict[str, float] = field(default_factory=dict)
    da2k_pairs: int = 0
    da2k_correct: int = 0

    def write_predictions(self, out: Path, scale: float = 1.0) -> Path:
        for name, maps in self.predictions.items():
            for key, pred in maps.items():
                p = out / name / (key + ".npy")
                p.parent.mkdir(parents=True, exist_ok=True)
                np.save(p, (pred * scale).astype(np.float32))
        return out


def indoor(depth: np.ndarray, valid: np.ndarray, median: float = 3.0) -> np.ndarray:
    """The scene scaled to a room's size (median valid depth ``median`` m): still exact depth."""
    return depth * np.float32(median / np.median(depth[valid]))


def _png16(codes: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(codes.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def oracle(gt: np.ndarray, counted: np.ndarray, rng: np.random.Generator, a: float = 2.5, b: float = 0.3) -> np.ndarray:
    """``a / gt + b`` where ``counted``, garbage elsewhere (float32)."""
    pred = rng.uniform(0, GARBAGE, gt.shape)
    pred[counted] = a / gt[counted] + b
    return pred.astype(np.float32)


def _rows_cols(lo_hi_rows, lo_hi_cols, h, w):
    m = np.zeros((h, w), bool)
    m[int(lo_hi_rows[0] * h):int(lo_hi_rows[1] * h), int(lo_hi_cols[0] * w):int(lo_hi_cols[1] * w)] = True
    return m


def write_nyu(fx: Fixture, rng) -> None:
    base, keys, lines = fx.root / "nyu", [], []
    for i, seed in enumerate((11, 12)):
        s = render_scene(seed, *NYU_HW, style="photo")
        rel = f"test/kitchen_{i:04d}/"
        codes = np.where(s.valid, np.round(indoor(s.depth, s.valid) * 1000), 0).clip(0, 65535)
        _write(base / (rel + f"rgb_{i:04d}.png"), encode_image(s.image, "png"))
        _write(base / (rel + f"depth_{i:04d}.png"), _png16(codes))
        # The filled map is the one NOT to use: give it other values.
        _write(base / (rel + f"filled_{i:04d}.png"), _png16(np.full(NYU_HW, 5000)))
        gt = codes / 1000.0
        crop = np.zeros(NYU_HW, bool)
        crop[45:471, 41:601] = True
        counted = crop & (gt > 1e-3) & (gt < 10)
        key = rel + f"rgb_{i:04d}.png"
        fx.predictions.setdefault("nyu", {})[key] = oracle(gt, counted, rng)
        keys.append(key)
        lines.append(f"{key} {rel}depth_{i:04d}.png {rel}filled_{i:04d}.png")
    fx.splits["nyu"] = _split(fx, "nyu", lines)
    fx.n_images["nyu"] = len(keys)


def write_kitti(fx: Fixture, rng) -> None:
    base, lines = fx.root / "kitti", []
    drive, date = "2011_09_26_drive_0002_sync", "2011_09_26"
    h, w = KITTI_HW
    top, left = h - 352, (w - 1216) // 2
    for i, seed in enumerate((21, 22)):
        s = render_scene(seed, h, w, style="photo")
        f = f"{i:010d}.png"
        img = f"{date}/{drive}/image_02/data/{f}"
        dep = f"{drive}/proj_depth/groundtruth/image_02/{f}"
        sparse = rng.random((h, w)) < 0.3  # LiDAR-like: most pixels have no depth
        codes = np.where(s.valid & sparse, np.round(s.depth * 256), 0).clip(0, 65535)
        _write(base / img, encode_image(s.image, "png"))
        _write(base / dep, _png16(codes))
        gt = (codes / 256.0)[top:top + 352, left:left + 1216]
        crop = _rows_cols((0.3324324, 0.91351351), (0.0359477, 0.96405229), 352, 1216)
        counted = crop & (gt > 1e-3) & (gt < 80)
        fx.predictions.setdefault("kitti", {})[img] = oracle(gt, counted, rng)
        lines.append(f"{img} {dep} 721.5377")
    # A line without ground truth (skipped, not counted) and one whose image is missing (an error).
    lines.append(f"{date}/{drive}/image_02/data/0000000099.png None 721.5377")
    missing = f"{date}/{drive}/image_02/data/0000000098.png"
    lines.append(f"{missing} {drive}/proj_depth/groundtruth/image_02/0000000000.png 721.5377")
    fx.splits["kitti"] = _split(fx, "kitti", lines)
    fx.n_images["kitti"] = 2
    fx.n_no_gt["kitti"] = 1
    fx.skipped["kitti"] = {missing: "missing_file"}


def write_eth3d(fx: Fixture, rng) -> None:
    base = fx.root / "eth3d"
    for i, seed in enumerate((31, 32)):
        s = render_scene(seed, *SMALL_HW, style="photo")
        f = f"DSC_{i:04d}.JPG"
        img = f"rgb/office/images/dslr_images/{f}"
        depth = np.where(s.valid, s.depth, np.inf).astype("<f4")  # inf = no depth
        _write(base / img, encode_image(s.image, "jpeg"))
        _write(base / f"depth/office_dslr_depth/office/ground_truth_depth/dslr_images/{f}", depth.tobytes())
        counted = np.isfinite(depth) & (depth > 1e-3) & (depth < 72)
        fx.predictions.setdefault("eth3d", {})[img] = oracle(np.where(counted, depth, 1.0), counted, rng)
    fx.n_images["eth3d"] = 2


def write_diode(fx: Fixture, rng) -> None:
    base, lines = fx.root / "diode", []
    for part, seeds in (("indoors", (41, 42)), ("outdoor", (43,))):
        for j, seed in enumerate(seeds):
            s = render_scene(seed, *SMALL_HW, style="photo")
            stem = f"{part}/scene_0002{j}/scan_00189/0002{j}_00189_{part}_200_010"
            d = indoor(s.depth, s.valid, 3.0 if part == "indoors" else 20.0)
            depth = np.where(s.valid, d, 0).astype(np.float32)[..., None]  # DIODE's H x W x 1
            mask = s.valid.copy()
            mask[:, : SMALL_HW[1] // 3] = False  # the mask file removes pixels whose depth looks fine
            _write(base / f"{stem}.png", encode_image(s.image, "png"))
            buf = io.BytesIO()
            np.save(buf, depth)
            _write(base / f"{stem}_depth.npy", buf.getvalue())
            buf = io.BytesIO()
            np.save(buf, mask.astype(np.float32))
            _write(base / f"{stem}_depth_mask.npy", buf.getvalue())
            d = depth[..., 0]
            pred_full = oracle(np.where(mask & (d > 0), d, 1.0), mask & (d > 1e-3) & (d < 350), rng)
            pred_in = oracle(np.where(mask & (d > 0), d, 1.0), mask & (d > 1e-3) & (d < 10), rng)
            fx.predictions.setdefault("diode", {})[f"{stem}.png"] = pred_full
            if part == "indoors":
                fx.predictions.setdefault("diode_indoor", {})[f"{stem}.png"] = pred_in
            lines.append(f"{stem}.png {stem}_depth.npy {stem}_depth_mask.npy")
    fx.splits["diode"] = _split(fx, "diode", lines)
    fx.n_images["diode"] = 3
    fx.n_images["diode_indoor"] = 2


def write_scannet(fx: Fixture, rng) -> None:
    base = fx.root / "scannet"
    for i, seed in enumerate((51, 52)):
        s = render_scene(seed, *SMALL_HW, style="photo")
        codes = np.where(s.valid, np.round(indoor(s.depth, s.valid) * 1000), 0).clip(0, 65535)
        key = f"scene0406_02/color/{i:06d}.jpg"
        _write(base / key, encode_image(s.image, "jpeg"))
        _write(base / f"scene0406_02/depth/{i:06d}.png", _png16(codes))
        gt = codes / 1000.0
        fx.predictions.setdefault("scannet", {})[key] = oracle(gt, (gt > 1e-3) & (gt < 10), rng)
    # A damaged ground-truth file: reported by name, the others still scored.
    bad = "scene0406_02/color/000009.jpg"
    _write(base / bad, encode_image(render_scene(59, *SMALL_HW).image, "jpeg"))
    _write(base / "scene0406_02/depth/000009.png", b"\x89PNG\r\n\x1a\nthis is not a png")
    fx.predictions["scannet"][bad] = np.ones(SMALL_HW, np.float32)
    fx.n_images["scannet"] = 2
    fx.skipped["scannet"] = {bad: "bad_ground_truth"}


def dpt_bytes(depth: np.ndarray) -> bytes:
    """The .dpt layout as documented (float32 tag, int32 width, int32 height, data)."""
    h, w = depth.shape
    return struct.pack("<fii", 202021.25, w, h) + np.asarray(depth, "<f4").tobytes()


def write_sintel(fx: Fixture, rng) -> None:
    base = fx.root / "sintel"
    for seq, seed in (("alley_1", 61), ("cave_2", 62)):
        s = render_scene(seed, *SMALL_HW, style="synthetic")
        depth = np.where(s.valid, s.depth, 1e10).astype(np.float32)  # sky: absurdly far, out of range
        key = f"training/final/{seq}/frame_0001.png"
        _write(base / key, encode_image(s.image, "png"))
        _write(base / f"training/clean/{seq}/frame_0001.png", encode_image(s.image, "png"))  # other pass
        _write(base / f"training/depth/{seq}/frame_0001.dpt", dpt_bytes(depth))
        counted = (depth > 1e-3) & (depth < 72)
        fx.predictions.setdefault("sintel", {})[key] = oracle(np.where(counted, depth, 1.0), counted, rng)
    fx.n_images["sintel"] = 2


DA2K_SCENES = {"indoor": ("room.png", 71, 4, 3), "outdoor": ("café.jpg", 72, 5, 5), "aerial": ("top.png", 73, 4, 1)}


def write_da2k(fx: Fixture, rng) -> None:
    """Three scenes; in each, ``n`` pairs of which ``right`` are labelled truthfully."""
    base = fx.root / "da2k" / "DA-2K"  # the zip's top-level folder
    annotations = {}
    for scene, (fname, seed, n, right) in DA2K_SCENES.items():
        s = render_scene(seed, 84, 112, style="photo")
        key = f"images/{scene}/{fname}"
        _write(base / key, encode_image(s.image, "jpeg" if fname.endswith(".jpg") else "png"))
        depth = np.where(s.valid, s.depth, np.inf)
        pairs = []
        cand = np.argwhere(np.isfinite(depth))
        while len(pairs) < n:
            p1, p2 = cand[rng.integers(len(cand), size=2)]
            d1, d2 = depth[tuple(p1)], depth[tuple(p2)]
            if abs(d1 - d2) < 0.05 * min(d1, d2):
                continue  # keep clear-cut pairs only
            closer = "point1" if d1 < d2 else "point2"
            if len(pairs) >= right:  # deliberately wrong labels: the oracle gets these "wrong"
                closer = "point2" if closer == "point1" else "point1"
            pairs.append({"point1": [int(p1[0]), int(p1[1])], "point2": [int(p2[0]), int(p2[1])],
                          "closer_point": closer})
        annotations[key] = pairs
        fx.predictions.setdefault("da2k", {})[key] = np.where(np.isfinite(depth), 1.0 / depth, 0).astype(np.float32)
        fx.da2k_by_scene[scene] = right / n
        fx.da2k_pairs += n
        fx.da2k_correct += right
    _write(base / "annotations.json", json.dumps(annotations).encode())
    fx.n_images["da2k"] = len(DA2K_SCENES)


def write_shards(fx: Fixture, rng) -> None:
    from depthlib import shards

    rows, disparity_rows = [], []
    for i, seed in enumerate((81, 82, 83)):
        s = render_scene(seed, *SMALL_HW, style="synthetic")
        rows.append(shards.make_row(f"syn/{i:03d}", encode_image(s.image, "png"), "png", s.depth,
                                    depth_type="metric_depth", kind="synthetic", valid=s.valid))
    s = render_scene(84, *SMALL_HW, style="photo")
    disparity_rows.append(shards.make_row("pseudo/000", encode_image(s.image, "png"), "png",
                                          np.where(s.valid, 1 / np.maximum(s.depth, 1e-3), 0), depth_type="disparity",
                                          kind="pseudo"))
    shards.write_shard(rows + disparity_rows, str(fx.root / "shards" / "shard-00000.parquet"))
    shards.write_shard(disparity_rows, str(fx.root / "pseudo_shards" / "shard-00000.parquet"))
    for row in rows:
        sample = shards.decode_sample(row)
        counted = sample.valid & (sample.depth > 1e-3) & (sample.depth < 80)
        fx.predictions.setdefault("shards", {})[sample.key] = oracle(
            np.where(counted, sample.depth, 1.0), counted, rng)
    fx.n_images["shards"] = 3


def _split(fx: Fixture, name: str, lines: list[str]) -> Path:
    path = fx.root / "splits" / f"{name}_test.txt"
    _write(path, ("\n".join(["# test split", *lines]) + "\n").encode())
    return path


def write_benchmarks(root: Path, seed: int = 0) -> Fixture:
    fx = Fixture(root)
    rng = np.random.default_rng(seed)
    for writer in (write_nyu, write_kitti, write_eth3d, write_diode, write_scannet, write_sintel, write_da2k,
                   write_shards):
        writer(fx, rng)
    return fx


def pack_tar(folder: Path, out: Path) -> Path:
    """A plain tar whose members are ``./<relative path>`` (as the standard copies)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as tf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tf.add(p, arcname="./" + p.relative_to(folder).as_posix())
    return out


class _Cp437ZipInfo(zipfile.ZipInfo):
    """Stores the name's bytes as they are, without the UTF-8 flag (as DA-2K.zip does)."""

    def _encodeFilenameFlags(self):
        return self.filename.encode("cp437"), self.flag_bits


def pack_zip(folder: Path, out: Path) -> Path:
    """A deflated zip with the folder's own name as the top-level folder; UTF-8 names
    written as raw bytes without the UTF-8 flag (readers see them as cp437)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                name = (folder.name + "/" + p.relative_to(folder).as_posix()).encode("utf-8").decode("cp437")
                info = _Cp437ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, p.read_bytes())
    return out

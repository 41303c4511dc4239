"""The benchmarks' standard copies: layouts, split lists, ground-truth decoding.

One table (:data:`DATASETS`) says, per dataset name, how its files are laid
out, what a split line holds, its evaluation range and crop
(``shared/EVAL_DATA.md``). The driver turns a root (folder / tar / zip, local
or S3, see :mod:`depthlib.evaluation.sources`) plus an optional split list
into sample records (:func:`plan_dataset`); workers decode each sample's
ground truth with :func:`decode_ground_truth`.

Ground truth is depth in METRES with a bool validity mask, ``H x W``:

==========  ===========================================  =======================
name        ground-truth file                            validity
==========  ===========================================  =======================
nyu         PNG uint16 / 1000 (the raw ``depth_``, not   ``> 0``
            ``filled_``)
kitti       PNG uint16 / 256 (sparse LiDAR)              ``> 0``
eth3d       headerless little-endian float32, the        finite and ``> 0``
            image's H x W (name ends in ``.JPG``)
diode*      ``_depth.npy`` (squeezed)                    ``_depth_mask.npy > 0``
scannet     PNG uint16 / 1000                            ``> 0``
sintel      ``.dpt``: float32 tag 202021.25, int32 W,    finite and ``> 0``
            int32 H, W*H float32
shards      our Parquet shards, ``depth_type ==          the row's valid mask
            "metric_depth"`` rows (``decode_sample``)
==========  ===========================================  =======================

Split lists: one sample per line, whitespace-separated paths relative to the
root; blank lines and lines starting with ``#`` are ignored. A KITTI line
whose ground truth is ``None`` is skipped and counted (``n_no_gt``), never
scored. Without a split list, every sample of the layout found under the
root is used (sorted by image path); images without a ground-truth file are
counted in ``n_no_gt``.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from depthlib import storage
from depthlib.evaluation.sources import FileReadError, Source, SourceError

DPT_TAG = 202021.25


class DatasetError(ValueError):
    """A dataset that cannot be evaluated at all; the message names the file."""


class GroundTruthError(ValueError):
    """One sample's ground truth is unusable; ``reason`` is a short code, the message names the file."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class DatasetSpec:
    """How one benchmark is read and scored."""

    name: str
    layout: str  # nyu | kitti | eth3d | diode | scannet | sintel | da2k | shards
    min_depth: float
    max_depth: float
    crop: Optional[str]
    split_fields: tuple[str, ...]  # meaning of a split line's fields (optional ones in [])
    n_required: int  # fields a split line must have
    subset: Optional[str] = None  # DIODE: "indoors" | "outdoor"
    notes: str = ""


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("nyu", "nyu", 1e-3, 10.0, "eigen_nyu", ("image", "depth", "[filled]"), 2,
                notes="16-bit PNG / 1000 (m), the raw depth_ file, not filled_"),
    DatasetSpec("kitti", "kitti", 1e-3, 80.0, "eigen_kitti", ("image", "depth|None", "[focal]"), 2,
                notes="16-bit PNG / 256 (m), sparse LiDAR, 0 = none"),
    DatasetSpec("eth3d", "eth3d", 1e-3, 72.0, None, ("image", "depth"), 2,
                notes="headerless float32 of the image's size (m); inf = none"),
    DatasetSpec("diode", "diode", 1e-3, 350.0, None, ("image", "depth", "mask"), 3,
                notes="_depth.npy (m), validity from _depth_mask.npy; indoors/ and outdoor/"),
    DatasetSpec("diode_indoor", "diode", 1e-3, 10.0, None, ("image", "depth", "mask"), 3, subset="indoors",
                notes="_depth.npy (m), validity from _depth_mask.npy; indoors/ only"),
    DatasetSpec("diode_outdoor", "diode", 1e-3, 80.0, None, ("image", "depth", "mask"), 3, subset="outdoor",
                notes="_depth.npy (m), validity from _depth_mask.npy; outdoor/ only"),
    DatasetSpec("scannet", "scannet", 1e-3, 10.0, None, ("image", "depth"), 2, notes="16-bit PNG / 1000 (m)"),
    DatasetSpec("sintel", "sintel", 1e-3, 72.0, None, ("image", "depth"), 2,
                notes=".dpt (m)"),
    DatasetSpec("da2k", "da2k", 0.0, 1.0, None, ("image",), 1, notes="annotations.json pairs"),
    DatasetSpec("shards", "shards", 1e-3, 80.0, None, ("key",), 1,
                notes="the row's metric depth (decode_sample) and valid mask; metric_depth rows only"),
]}

KITTI_CROPS = {"eigen": "eigen_kitti", "garg": "garg_kitti"}
_LABEL = re.compile(r"[A-Za-z0-9_-]+")


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a dataset name: a name of :data:`DATASETS`, or ``NAME.LABEL``
    for one of several datasets of the same layout in one run (``shards.photo``,
    ``shards.synthetic``); the label only names the entry in the report.

    Raises :class:`DatasetError` naming the known names."""
    base, dot, label = name.partition(".")
    if base not in DATASETS or (dot and not _LABEL.fullmatch(label)):
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, optionally with a "
                           f"label: NAME.LABEL (label of letters, digits, _ and -; e.g. shards.photo)")
    return DATASETS[base]


@dataclass
class DatasetPlan:
    """What the driver hands to the pipeline for one dataset."""

    name: str
    spec: DatasetSpec
    samples: list[dict]  # {"key", "files": {role: locator dict}, ...} or {"key", "error", "detail"}
    n_no_gt: int = 0
    split: str = ""  # the split URI, or how samples were found
    root: str = ""
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- split lists


def parse_split(text: str, spec: DatasetSpec, where: str) -> tuple[list[list[str]], int]:
    """``(rows, n_no_gt)``: the split's lines as field lists, ground-truth-less lines dropped.

    Raises :class:`DatasetError` naming ``where`` and the line for a line with
    too few or too many fields (a split list of another dataset, most often).
    """
    rows, n_no_gt = [], 0
    n_max = len(spec.split_fields) if spec.layout not in ("da2k", "shards") else 1
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if spec.layout in ("da2k", "shards"):
            fields = fields[:1]
        if not spec.n_required <= len(fields) <= n_max:
            raise DatasetError(
                f"split list {where} line {lineno}: a {spec.name} line has {spec.n_required}"
                f"{'' if n_max == spec.n_required else f'-{n_max}'} fields "
                f"({' '.join(spec.split_fields)}), got {len(fields)}: {line[:200]!r}")
        if len(fields) > 1 and fields[1] == "None":
            n_no_gt += 1
            continue
        rows.append(fields)
    return rows, n_no_gt


def _in_subset(spec: DatasetSpec, image: str) -> bool:
    return spec.subset is None or f"/{spec.subset}/" in "/" + image


# --------------------------------------------------------------------------- layouts without a split


_SCAN = {
    "nyu": (re.compile(r"^(?P<p>(?:.*/)?)rgb_(?P<id>[^/]+)\.png$"), ["{p}depth_{id}.png"]),
    "kitti": (re.compile(r"^(?P<p>(?:.*/)?)(?P<date>\d{4}_\d{2}_\d{2})/(?P<drive>[^/]+)/(?P<cam>image_0[23])/data/"
                         r"(?P<f>[^/]+\.png)$"),
              ["{p}{drive}/proj_depth/groundtruth/{cam}/{f}"]),
    "eth3d": (re.compile(r"^(?P<p>(?:.*/)?)rgb/(?P<scene>[^/]+)/images/dslr_images/(?P<f>[^/]+)$"),
              ["{p}depth/{scene}_dslr_depth/{scene}/ground_truth_depth/dslr_images/{f}"]),
    "diode": (re.compile(r"^(?P<p>(?:.*/)?)(?P<part>indoors|outdoor)/(?P<rest>.+)\.png$"),
              ["{p}{part}/{rest}_depth.npy", "{p}{part}/{rest}_depth_mask.npy"]),
    "scannet": (re.compile(r"^(?P<p>(?:.*/)?)(?P<scene>scene[^/]+)/color/(?P<id>[^/]+)\.jpg$"),
                ["{p}{scene}/depth/{id}.png"]),
    "sintel": (re.compile(r"^(?P<p>(?:.*/)?)training/(?P<pass>clean|final)/(?P<seq>[^/]+)/(?P<f>frame_\d+)\.png$"),
               ["{p}training/depth/{seq}/{f}.dpt"]),
}


def scan_layout(names: list[str], spec: DatasetSpec, sintel_pass: str = "final") -> tuple[list[list[str]], int]:
    """``(rows, n_no_gt)`` for a root without a split list: every image of the
    layout, paired with its ground-truth file(s) by the standard naming;
    images whose ground truth is absent are counted, not returned."""
    pattern, templates = _SCAN[spec.layout]
    present = set(names)
    rows, n_no_gt = [], 0
    for name in sorted(names):
        m = pattern.match(name)
        if m is None or not _in_subset(spec, name):
            continue
        if spec.layout == "sintel" and m["pass"] != sintel_pass:
            continue
        others = [t.format(**m.groupdict()) for t in templates]
        if others[0] not in present:
            n_no_gt += 1
            continue
        rows.append([name] + others)
    return rows, n_no_gt


# --------------------------------------------------------------------------- plans


def _sample(source: Source, key: str, roles: dict[str, str], **extra) -> dict:
    """A sample record; files that are not there become a recorded error naming them."""
    files, missing = {}, []
    for role, name in roles.items():
        loc = source.locate(name)
        if loc is None:
            missing.append(source.describe(name))
        else:
            files[role] = loc.to_dict()
    if missing:
        return {"key": key, "error": "missing_file", "detail": "missing file " + ", ".join(missing), **extra}
    return {"key": key, "files": files, **extra}


def _read_text(uri: str, what: str) -> str:
    try:
        return storage.read_bytes(uri).decode("utf-8-sig")
    except storage.ObjectNotFoundError:
        raise DatasetError(f"{what} {storage.redact(uri)} does not exist") from None
    except (storage.StorageError, OSError) as e:
        raise DatasetError(f"cannot read {what} {storage.redact(uri)}: {e}") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{what} {storage.redact(uri)} is not UTF-8 text") from None


def plan_dataset(name: str, root: str, split: Optional[str] = None, limit: Optional[int] = None,
                 sintel_pass: str = "final") -> DatasetPlan:
    """The samples of one dataset (driver-side; lists or indexes the root once).

    Raises :class:`DatasetError` (naming the file) when the dataset cannot be
    evaluated at all: root missing or unreadable, a malformed split list, a
    missing or malformed ``annotations.json``, no samples found.
    """
    spec = dataset_spec(name)
    if spec.layout == "shards":
        return _plan_shards(name, spec, root, split, limit)
    try:
        source = Source.open(root)
    except SourceError as e:
        raise DatasetError(str(e)) from None
    if spec.layout == "da2k":
        return _plan_da2k(name, spec, source, root, split, limit)

    if split is not None:
        rows, n_no_gt = parse_split(_read_text(split, "split list"), spec, storage.redact(split))
        rows = [r for r in rows if _in_subset(spec, r[0])]
        for r in rows[:100]:  # the first image that is there tells where the root is (a wrapping folder)
            rooted = source.rooted(r[0])
            if r[0] in rooted:
                source = rooted
                break
        how = storage.redact(split)
    else:
        rows, n_no_gt = scan_layout(source.names(), spec, sintel_pass)
        how = "every sample under the root" + (f" ({sintel_pass} pass)" if spec.layout == "sintel" else "")
    if not rows:
        where = f"split list {storage.redact(split)}" if split else storage.redact(root)
        raise DatasetError(f"no {name} samples in {where} (expected the layout "
                           f"'{' '.join(spec.split_fields)}' of shared/EVAL_DATA.md"
                           f"{'' if split else '; without --split the files are found by their standard names'})")
    if limit is not None:
        rows = rows[:limit]
    samples = []
    for fields in rows:
        roles = {"image": fields[0], "depth": fields[1]}
        if spec.layout == "diode":
            roles["mask"] = fields[2]
        extra = {}
        if spec.layout == "kitti" and len(fields) > 2:
            extra["focal"] = fields[2]
        samples.append(_sample(source, fields[0], roles, **extra))
    info = {"n_sequences": len({s["key"].split("/")[-2] for s in samples})} if spec.layout == "sintel" else {}
    return DatasetPlan(name, spec, samples, n_no_gt, how, storage.redact(root), info)


def da2k_scene(key: str) -> str:
    """The DA-2K scene of an image path: the folder under ``images/``."""
    parts = key.split("/")
    if "images" in parts[:-1]:
        i = parts.index("images")
        if i + 1 < len(parts) - 1:
            return parts[i + 1]
    return parts[-2] if len(parts) > 1 else "(none)"


def _plan_da2k(name: str, spec: DatasetSpec, source: Source, root: str, split: Optional[str],
               limit: Optional[int]) -> DatasetPlan:
    source = source.rooted("annotations.json")
    where = source.describe("annotations.json")
    if "annotations.json" not in source:
        raise DatasetError(f"DA-2K: no annotations.json in {storage.redact(root)} (expected annotations.json "
                           f"and images/<scene>/<file> at the root of the folder or zip)")
    try:
        annotations = json.loads(source.read("annotations.json").decode("utf-8-sig"))
    except FileReadError as e:
        raise DatasetError(f"DA-2K: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"DA-2K: {where} is not valid JSON: {e}") from None
    if not isinstance(annotations, dict) or not all(isinstance(v, list) for v in annotations.values()):
        raise DatasetError(f"DA-2K: {where} must map image paths to lists of pairs")
    annotations = {k.removeprefix("./"): v for k, v in annotations.items()}
    keys = sorted(k for k, v in annotations.items() if v)
    how = "every annotated image"
    if split is not None:
        rows, _ = parse_split(_read_text(split, "split list"), spec, storage.redact(split))
        wanted = [r[0].removeprefix("./") for r in rows]
        unknown = [k for k in wanted if k not in annotations]
        if unknown:
            raise DatasetError(f"DA-2K: split list {storage.redact(split)} names images without annotations "
                               f"in {where}: {unknown[:5]}")
        keys, how = wanted, storage.redact(split)
    if not keys:
        raise DatasetError(f"DA-2K: {where} has no pairs")
    if limit is not None:
        keys = keys[:limit]
    samples = [_sample(source, k, {"image": k}, pairs=annotations[k], scene=da2k_scene(k)) for k in keys]
    return DatasetPlan(name, spec, samples, 0, how, storage.redact(root))


def _plan_shards(name: str, spec: DatasetSpec, root: str, split: Optional[str],
                 limit: Optional[int]) -> DatasetPlan:
    import pyarrow.parquet as pq

    from depthlib import shards

    where = storage.redact(root)
    try:
        uris = shards.list_shards(root)
    except (storage.StorageError, ValueError, OSError) as e:
        raise DatasetError(f"shards: cannot list {where}: {e}") from None
    if not uris:
        raise DatasetError(f"shards: no .parquet files under {where}")
    wanted = None
    if split is not None:
        rows, _ = parse_split(_read_text(split, "split list"), spec, storage.redact(split))
        wanted = {r[0] for r in rows}
    samples, not_metric = [], Counter()  # depth_type -> rows skipped
    for uri in uris:
        try:
            with storage.open_input(uri) as f:
                pf = pq.ParquetFile(f)
                shards.check_shard_metadata(pf.metadata.metadata, uri)
                names = pf.schema_arrow.names
                for col in ("key", "depth_type"):
                    if col not in names:
                        raise DatasetError(f"shards: {storage.redact(uri)} has no {col!r} column")
                for g in range(pf.num_row_groups):
                    t = pf.read_row_group(g, columns=["key", "depth_type"])
                    for i, (key, depth_type) in enumerate(zip(t.column("key").to_pylist(),
                                                              t.column("depth_type").to_pylist())):
                        if wanted is not None and key not in wanted:
                            continue
                        if depth_type != "metric_depth":
                            not_metric[depth_type] += 1
                            continue
                        samples.append({"key": key, "shard": {"uri": uri, "row_group": g, "row": i}})
        except DatasetError:
            raise
        except (ValueError, OSError, storage.StorageError) as e:  # includes ShardVersionError
            raise DatasetError(f"shards: cannot read {storage.redact(uri)}: {e}") from None
    if not samples:
        if not_metric:
            found = ", ".join(f"{n} rows of depth_type {t!r}" for t, n in sorted(not_metric.items()))
            raise DatasetError(
                f"shards under {where} hold only relative labels ({found}; 'disparity' are e.g. pseudo labels, "
                f"'depth_up_to_scale' e.g. BlendedMVS, whose units are not metres): "
                f"depth metrics need metric ground truth; evaluate shards with depth_type 'metric_depth' "
                f"(synthetic or metric shards)")
        raise DatasetError(f"shards: no rows under {where}" + (" match the split list" if wanted else ""))
    if limit is not None:
        samples = samples[:limit]
    plan = DatasetPlan(name, spec, samples, 0, storage.redact(split) if split else "every metric_depth row",
                       where)
    plan.info = {"n_shards": len(uris), "disparity_rows_skipped": sum(not_metric.values()),
                 "rows_skipped_by_depth_type": dict(not_metric)}
    return plan


# --------------------------------------------------------------------------- ground truth


def decode_png_depth(data: bytes, scale: float, where: str) -> np.ndarray:
    """A 16-bit PNG of depth codes -> float32 metres (``code / scale``; 0 stays 0)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise GroundTruthError("bad_ground_truth", f"{where}: expected a 16-bit depth PNG, got mode {im.mode}")
            arr = np.asarray(im)
    except GroundTruthError:
        raise
    except Image.UnidentifiedImageError:
        raise GroundTruthError("bad_ground_truth", f"{where}: not a PNG image") from None
    except Exception as e:  # PIL raises many types for damaged files
        raise GroundTruthError("bad_ground_truth", f"{where}: cannot decode the depth PNG: {e}") from None
    return arr.astype(np.float32) / np.float32(scale)


def decode_raw_float32(data: bytes, shape: tuple[int, int], where: str) -> np.ndarray:
    """ETH3D: headerless little-endian float32 of the image's ``(H, W)``."""
    h, w = shape
    if len(data) != 4 * h * w:
        raise GroundTruthError("bad_ground_truth", f"{where}: {len(data)} bytes, expected {4 * h * w} "
                                                   f"(float32 {h}x{w}, the image's size)")
    return np.frombuffer(data, "<f4").reshape(h, w).astype(np.float32)


def decode_npy(data: bytes, where: str) -> np.ndarray:
    """A ``.npy`` map, squeezed to ``H x W`` (no pickles)."""
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        raise GroundTruthError("bad_ground_truth", f"{where}: not a readable .npy: {e}") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise GroundTruthError("bad_ground_truth", f"{where}: expected an H x W map, got shape {arr.shape}")
    return arr


def decode_dpt(data: bytes, where: str) -> np.ndarray:
    """MPI-Sintel ``.dpt``: float32 tag 202021.25, int32 width, int32 height, then W*H float32."""
    if len(data) < 12:
        raise GroundTruthError("bad_ground_truth", f"{where}: {len(data)} bytes, too short for a .dpt header")
    tag, width, height = struct.unpack("<fii", data[:12])
    if tag != np.float32(DPT_TAG):
        raise GroundTruthError("bad_ground_truth", f"{where}: .dpt tag {tag} != {DPT_TAG} (wrong file or byte order)")
    if width <= 0 or height <= 0 or len(data) != 12 + 4 * width * height:
        raise GroundTruthError("bad_ground_truth", f"{where}: .dpt header says {width}x{height}, "
                                                   f"file has {len(data) - 12} data bytes")
    return np.frombuffer(data, "<f4", offset=12).reshape(height, width).astype(np.float32)


def encode_dpt(depth: np.ndarray) -> bytes:
    """Write an ``H x W`` float map as a ``.dpt`` file (inverse of :func:`decode_dpt`)."""
    depth = np.asarray(depth, dtype="<f4")
    h, w = depth.shape
    return struct.pack("<fii", DPT_TAG, w, h) + depth.tobytes()


def decode_ground_truth(layout: str, files: dict[str, bytes], where: dict[str, str],
                        image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(depth, valid)``: float32 metres and bool, ``H x W``, for one sample.

    ``files``: role -> bytes (``depth``, and ``mask`` for DIODE); ``where``:
    role -> name for messages; ``image_shape``: the image's ``(H, W)``
    (ETH3D's raw depth has no header). Non-finite depth is invalid and set to 0.
    Raises :class:`GroundTruthError`.
    """
    d = files["depth"]
    if layout in ("nyu", "scannet"):
        depth = decode_png_depth(d, 1000.0, where["depth"])
    elif layout == "kitti":
        depth = decode_png_depth(d, 256.0, where["depth"])
    elif layout == "eth3d":
        depth = decode_raw_float32(d, image_shape, where["depth"])
    elif layout == "diode":
        depth = decode_npy(d, where["depth"]).astype(np.float32)
        mask = decode_npy(files["mask"], where["mask"])
        if mask.shape != depth.shape:
            raise GroundTruthError("bad_ground_truth", f"{where['mask']}: mask {mask.shape} != depth {depth.shape}")
        valid_file = mask > 0
    elif layout == "sintel":
        depth = decode_dpt(d, where["depth"])
    else:
        raise ValueError(f"no ground-truth decoder for layout {layout!r}")
    finite = np.isfinite(depth)
    valid = finite & (depth > 0)
    if layout == "diode":
        valid &= valid_file
    return np.where(finite, depth, 0).astype(np.float32), valid

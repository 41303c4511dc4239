"""The shard format: Parquet files of (image bytes, encoded depth label) rows.

Every stage reads and writes training data as shards (DESIGN.md section 4):
image bytes travel with their label so training streams a few large files
instead of millions of small GETs. One row per sample, columns (a contract):

==============  =========  ===================================================
column          type       meaning
==============  =========  ===================================================
key             string     the sample's id (source key relative to its input)
image           binary     the image file's bytes exactly as at the source
image_format    string     ``"png"``, ``"jpeg"``, ... (lower case, PIL's name)
depth           binary     the label map: version 2, a
                           :mod:`depthlib.label_codec` blob; version 1,
                           :func:`encode_depth` (raw log-uint16 codes)
depth_type      string     ``"disparity"`` (relative, affine-invariant),
                           ``"metric_depth"`` (metres) or
                           ``"depth_up_to_scale"`` (depth in unknown units,
                           e.g. BlendedMVS: relative stages only; every
                           metric reader refuses it)
depth_lo/hi     float32    v2: smallest and largest decoded value (metric:
                           smallest positive), for filtering without
                           decoding; v1: the encoding range of ``depth``
valid           binary?    ``np.packbits`` of the HxW valid mask; null = all
height, width   int32      size of the LABEL map
image_height,   int32      size of the image
image_width
kind            string     ``"synthetic"`` | ``"pseudo"`` | ``"metric"``
provenance      string     JSON: generator seed, teacher id/checkpoint, time
==============  =========  ===================================================

The file's key-value metadata holds ``depthlib.shard_version``: writers write
``"2"``; :func:`read_shard` and :func:`check_shard_metadata` accept ``"1"``
and ``"2"`` and refuse anything else.

Labels, version 2 (:func:`encode_label` / :func:`decode_label`, details in
:mod:`depthlib.label_codec`): quantised to the precision contract -- a
disparity label within ``1e-4 * max|label|`` (linear grid), metric depth
within ``1e-3`` relative (log grid) -- then predicted along the image,
split into byte planes and zstd-compressed inside the cell, well under 1
byte per pixel. Labels, version 1 (:func:`encode_depth`): ``2 * H * W`` bytes
of log-spaced uint16 codes, relative error <= 9.92e-5 above
``hi * exp(-13)``. A v1 cell is exactly ``2 * H * W`` bytes long and a v2
blob never is, so :func:`decode_sample` (and :func:`decode_row_depth`)
decode either kind of cell without knowing the file's version.

Writes go through :func:`depthlib.storage.write_bytes`, which is atomic, so a
reader never sees half a shard.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from depthlib import storage
from depthlib.label_codec import decode_label, encode_label, label_info
from depthlib.storage import S3Config

SHARD_VERSION = 2
"""The version writers write."""
READABLE_VERSIONS = (1, 2)
"""The versions readers accept."""
VERSION_KEY = b"depthlib.shard_version"

DEPTH_TYPES = ("disparity", "metric_depth", "depth_up_to_scale")
KINDS = ("synthetic", "pseudo", "metric")

# Version 1 encoding: ln(hi / lo) is capped at this, which bounds the
# relative quantisation error.
LOG_RANGE = 13.0
_MAX_CODE = 65535
_STEPS = _MAX_CODE - 1  # codes 1..65535 cover LOG_RANGE in 65534 steps

SHARD_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("image_format", pa.string(), nullable=False),
        pa.field("depth", pa.binary(), nullable=False),
        pa.field("depth_type", pa.string(), nullable=False),
        pa.field("depth_lo", pa.float32(), nullable=False),
        pa.field("depth_hi", pa.float32(), nullable=False),
        pa.field("valid", pa.binary(), nullable=True),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("image_height", pa.int32(), nullable=False),
        pa.field("image_width", pa.int32(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("provenance", pa.string(), nullable=False),
    ],
    metadata={VERSION_KEY: str(SHARD_VERSION).encode()},
)

# Rows per Parquet row group: a reader holds about one row group per file in
# memory (~64 rows of a 518px image + label, i.e. tens of MB).
ROW_GROUP_ROWS = 64


class ShardVersionError(ValueError):
    """A file is not a shard this code can read (missing or unknown version)."""


# --------------------------------------------------------------------------- version 1 encoding
# Kept so version 1 shards stay readable (and can be written for tests);
# version 2 labels come from depthlib.label_codec (encode_label, decode_label).


def _float32_at_least(x: float) -> np.float32:
    y = np.float32(x)
    return np.nextafter(y, np.float32(np.inf)) if float(y) < x else y


def _float32_at_most(x: float) -> np.float32:
    y = np.float32(x)
    return np.nextafter(y, np.float32(0)) if float(y) > x else y


def encode_depth(arr: np.ndarray) -> tuple[bytes, float, float]:
    """Encode an HxW depth or disparity map as log-spaced uint16 codes (shard version 1).

    Returns ``(data, lo, hi)``: ``data`` is ``2 * H * W`` bytes (little-endian
    uint16, row-major), ``lo``/``hi`` the float32 range to pass to
    :func:`decode_depth`. Values <= 0 become code 0 and decode to 0.0; values
    in (0, lo) decode to lo. An all-zero map gives ``lo = hi = 0``.
    Raises ``ValueError`` for NaN/inf or a non-2-D array.
    """
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"depth map must be 2-D (HxW), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise ValueError(f"depth map must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise ValueError("depth map contains NaN or inf; mask those pixels (set them to 0 "
                         "and mark them invalid) before encoding")
    positive = a > 0
    codes = np.zeros(a.shape, dtype="<u2")
    if not positive.any():
        return codes.tobytes(), 0.0, 0.0
    hi_true = float(a[positive].max())
    lo_true = max(float(a[positive].min()), hi_true * math.exp(-LOG_RANGE))
    # Round the range outwards to float32 (the column type) so that decoding
    # with the stored values reproduces the encoder's grid.
    hi = _float32_at_least(hi_true)
    lo = _float32_at_most(lo_true)
    if not (np.isfinite(hi) and lo > 0):
        raise ValueError(f"depth values outside the float32 range: min {lo_true:g}, max {hi_true:g}")
    log_lo, log_hi = math.log(float(lo)), math.log(float(hi))
    values = a[positive]
    if log_hi > log_lo:
        scaled = (np.log(np.clip(values, float(lo), float(hi))) - log_lo) * (_STEPS / (log_hi - log_lo))
        codes[positive] = 1 + np.rint(scaled).astype(np.int64).clip(0, _STEPS)
    else:
        codes[positive] = _MAX_CODE
    return codes.tobytes(), float(lo), float(hi)


def depth_lookup_table(lo: float, hi: float) -> np.ndarray:
    """The float32 value of each of the 65536 codes for range ``(lo, hi)``."""
    table = np.zeros(_MAX_CODE + 1, dtype=np.float32)
    if hi <= 0:
        return table
    lo32, hi32 = float(np.float32(lo)), float(np.float32(hi))
    if hi32 > lo32 > 0:
        steps = np.arange(_STEPS + 1, dtype=np.float64) / _STEPS
        table[1:] = np.exp(math.log(lo32) + steps * (math.log(hi32) - math.log(lo32)))
    else:
        table[1:] = hi32
    return table


def decode_depth(data: bytes, lo: float, hi: float, height: int, width: int) -> np.ndarray:
    """Decode :func:`encode_depth` output (version 1) to a float32 ``height x width`` map."""
    height, width = int(height), int(width)
    expected = 2 * height * width
    if len(data) != expected:
        raise ValueError(f"depth data has {len(data)} bytes, expected {expected} for {height}x{width}")
    codes = np.frombuffer(data, dtype="<u2").reshape(height, width)
    return depth_lookup_table(float(lo), float(hi))[codes]


def encode_mask(mask: np.ndarray) -> bytes:
    """Pack an HxW boolean mask to ``ceil(H*W/8)`` bytes (``np.packbits``, row-major)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW), got shape {m.shape}")
    return np.packbits(m.astype(bool).ravel()).tobytes()


def decode_mask(data: bytes, height: int, width: int) -> np.ndarray:
    """Unpack :func:`encode_mask` output to a bool ``height x width`` array."""
    height, width = int(height), int(width)
    n = height * width
    if len(data) != (n + 7) // 8:
        raise ValueError(f"mask data has {len(data)} bytes, expected {(n + 7) // 8} for {height}x{width}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n)
    return bits.reshape(height, width).astype(bool)


# --------------------------------------------------------------------------- rows


def _image_info(image_bytes: bytes) -> tuple[str, tuple[int, int]]:
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes)) as im:  # reads the header only
        return (im.format or "").lower(), (im.height, im.width)


def make_row(key: str, image_bytes: bytes, image_format: str | None, depth: np.ndarray, *,
             depth_type: str, kind: str, valid: np.ndarray | None = None,
             image_size: tuple[int, int] | None = None,
             provenance: Mapping[str, Any] | None = None,
             tolerance: float | None = None) -> dict[str, Any]:
    """Build one shard row (a dict in :data:`SHARD_SCHEMA`'s column order).

    ``depth`` is the HxW label map (metres, disparity or depth up to scale, see
    ``depth_type``), encoded with :func:`encode_label` (version 2): a
    disparity label within ``tolerance * max|depth|`` (default 1e-4), metric
    depth and depth up to scale within relative ``tolerance`` (default 1e-3). ``valid`` an optional HxW bool mask.
    Pixels outside ``valid`` are stored as 0 (so they may hold NaN; they do
    not count towards ``max|depth|``); a mask that is all True is stored as
    null.
    ``image_format`` and ``image_size`` (height, width) are read from the image
    header when not given. ``provenance`` is stored as sorted JSON with any
    configured storage secret scrubbed.
    """
    if depth_type not in DEPTH_TYPES:
        raise ValueError(f"depth_type must be one of {DEPTH_TYPES}, got {depth_type!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth map must be 2-D (HxW), got shape {depth.shape}")
    valid_bytes = None
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != depth.shape:
            raise ValueError(f"valid mask shape {valid.shape} != depth shape {depth.shape}")
        if not valid.all():
            depth = np.where(valid, depth, 0.0)
            valid_bytes = encode_mask(valid)
    data = encode_label(depth, depth_type, tolerance)
    info = label_info(data)
    image_bytes = bytes(image_bytes)
    if image_format is None or image_size is None:
        fmt, size = _image_info(image_bytes)
        image_format = image_format or fmt
        image_size = image_size or size
    provenance_json = storage.redact(json.dumps(dict(provenance or {}), sort_keys=True, default=str))
    return {
        "key": str(key),
        "image": image_bytes,
        "image_format": str(image_format).lower(),
        "depth": data,
        "depth_type": depth_type,
        "depth_lo": info.lo,
        "depth_hi": info.hi,
        "valid": valid_bytes,
        "height": int(depth.shape[0]),
        "width": int(depth.shape[1]),
        "image_height": int(image_size[0]),
        "image_width": int(image_size[1]),
        "kind": kind,
        "provenance": provenance_json,
    }


def row_nbytes(row: Mapping[str, Any]) -> int:
    """Approximate encoded size of a row in bytes (its binary and string payload)."""
    return (len(row["image"]) + len(row["depth"]) + len(row["valid"] or b"")
            + len(row["key"]) + len(row["provenance"]) + 64)


def rows_to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows from :func:`make_row` as a table with :data:`SHARD_SCHEMA` (and its version)."""
    rows = list(rows)
    columns = {f.name: [r[f.name] for r in rows] for f in SHARD_SCHEMA}
    return pa.Table.from_pydict(columns, schema=SHARD_SCHEMA)


# Columns worth Parquet dictionary encoding (few distinct short values);
# hashing the image and label bytes for a dictionary only costs time.
_DICTIONARY_COLUMNS = ["image_format", "depth_type", "kind"]


def _has_v1_labels(table: pa.Table) -> bool:
    """Whether any ``depth`` cell is a version 1 label (exactly 2 * H * W bytes);
    True when the table lacks the columns to tell."""
    if not {"depth", "height", "width"} <= set(table.column_names):
        return True
    if table.num_rows == 0:
        return False
    n = pc.multiply(pc.cast(table.column("height"), pa.int64()), pc.cast(table.column("width"), pa.int64()))
    same = pc.equal(pc.cast(pc.binary_length(table.column("depth")), pa.int64()), pc.multiply(n, 2))
    return bool(pc.any(same).as_py())


def table_to_parquet_bytes(table: pa.Table) -> pa.Buffer:
    """Serialise a shard table: zstd, :data:`ROW_GROUP_ROWS` rows per row group.

    The file is marked with the table's ``depthlib.shard_version`` if it has
    one (a table read from a version 1 file stays version 1), else
    :data:`SHARD_VERSION`. Version 2 label cells are compressed already, so
    the ``depth`` column skips Parquet's zstd unless it holds version 1 cells;
    the ``image`` column (encoded JPEG, PNG, ...) always does.
    """
    if table.schema.metadata is None or VERSION_KEY not in table.schema.metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               VERSION_KEY: str(SHARD_VERSION).encode()})
    compression = {name: "zstd" for name in table.column_names}
    if "depth" in compression and not _has_v1_labels(table):
        compression["depth"] = "none"
    if "image" in compression:  # JPEG and PNG bytes are compressed already: zstd costs ~1.5 ms a photo for ~0
        compression["image"] = "none"
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression, row_group_size=ROW_GROUP_ROWS,
                   use_dictionary=[c for c in _DICTIONARY_COLUMNS if c in table.column_names],
                   write_statistics=["key", "height", "width", "image_height", "image_width"])
    return sink.getvalue()


# --------------------------------------------------------------------------- I/O


def write_shard(rows: Iterable[Mapping[str, Any]], uri: str, s3: S3Config | None = None) -> str:
    """Write ``rows`` as one shard file at ``uri`` (atomically). Returns ``uri``."""
    storage.write_bytes(uri, table_to_parquet_bytes(rows_to_table(rows)), s3=s3)
    return uri


def check_shard_metadata(metadata: Mapping[bytes, bytes] | None, where: str) -> int:
    """Return the shard version (1 or 2) ``metadata`` states, or raise :class:`ShardVersionError`.

    ``metadata`` is a Parquet file's key-value metadata
    (``pq.ParquetFile(...).metadata.metadata``); ``where`` names the file.
    Rows of either version decode with :func:`decode_sample`.
    """
    supported = " and ".join(str(v) for v in READABLE_VERSIONS)
    found = (metadata or {}).get(VERSION_KEY)
    if found is None:
        raise ShardVersionError(f"{storage.redact(where)} is not a depthlib shard: its Parquet "
                                f"metadata has no {VERSION_KEY.decode()!r} (this reader "
                                f"supports versions {supported})")
    text = found.decode(errors="replace")
    if text not in {str(v) for v in READABLE_VERSIONS}:
        raise ShardVersionError(f"{storage.redact(where)} has shard version {text!r}; this reader "
                                f"supports versions {supported} only")
    return int(text)


def read_shard(uri: str, s3: S3Config | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read a whole shard (or some ``columns``) of version 1 or 2, refusing other versions."""
    with storage.open_input(uri, s3) as f:
        pf = pq.ParquetFile(f)
        check_shard_metadata(pf.metadata.metadata, uri)
        missing = [c for c in SHARD_SCHEMA.names if c not in pf.schema_arrow.names]
        if missing:
            raise ShardVersionError(f"{storage.redact(uri)} lacks shard columns {missing}")
        return pf.read(columns=columns)


def list_shards(prefix_uri: str, s3: S3Config | None = None) -> list[str]:
    """Sorted URIs of the ``.parquet`` files under ``prefix_uri``."""
    return sorted(o.uri for o in storage.list_objects(prefix_uri, suffixes=(".parquet",), s3=s3))


class ShardWriter:
    """Write rows into numbered shard files of about ``target_bytes`` each.

    Files are ``{prefix_uri}/{name_prefix}-{index:05d}.parquet`` from
    ``start_index``; a file is written (atomically) once its buffered rows
    reach ``target_bytes`` of encoded payload (:func:`row_nbytes`), and the
    rest on :meth:`close`. Memory: up to one shard of rows plus its serialised
    copy. Use as a context manager; on an exception nothing more is written.
    """

    def __init__(self, prefix_uri: str, *, target_bytes: int = 256 * 2**20,
                 name_prefix: str = "shard", s3: S3Config | None = None,
                 start_index: int = 0) -> None:
        if target_bytes < 1:
            raise ValueError("target_bytes must be >= 1")
        self.prefix_uri = prefix_uri
        self.target_bytes = target_bytes
        self.name_prefix = name_prefix
        self.s3 = s3
        self.index = start_index
        self.written: list[str] = []
        self._rows: list[Mapping[str, Any]] = []
        self._nbytes = 0
        self._closed = False

    def add(self, row: Mapping[str, Any]) -> None:
        """Buffer one row (from :func:`make_row`); flushes a file when full."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        self._rows.append(row)
        self._nbytes += row_nbytes(row)
        if self._nbytes >= self.target_bytes:
            self.flush()

    def flush(self) -> str | None:
        """Write the buffered rows as the next file now; returns its URI (None if empty)."""
        if not self._rows:
            return None
        uri = storage.join(self.prefix_uri, f"{self.name_prefix}-{self.index:05d}.parquet")
        write_shard(self._rows, uri, s3=self.s3)
        self.written.append(uri)
        self.index += 1
        self._rows, self._nbytes = [], 0
        return uri

    def close(self) -> list[str]:
        """Write what is buffered; returns every URI this writer wrote."""
        if not self._closed:
            self.flush()
            self._closed = True
        return list(self.written)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # a failed batch must not be half-committed as a short shard
            self._rows, self._nbytes, self._closed = [], 0, True


# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """A decoded shard row."""

    key: str
    image: np.ndarray
    """HxWx3 uint8 RGB."""
    depth: np.ndarray
    """float32 label map (label size, may differ from the image's)."""
    valid: np.ndarray
    """bool, same shape as ``depth``."""
    depth_type: str
    kind: str
    provenance: dict


def decode_row_depth(row: Mapping[str, Any]) -> np.ndarray:
    """The float32 ``height x width`` label of a row of either shard version.

    Needs the row's ``depth``, ``height`` and ``width`` (and ``depth_lo``,
    ``depth_hi`` for a version 1 cell; ``depth_type``, when present, is
    checked against a version 2 blob). Raises ``ValueError`` for a damaged cell.
    """
    height, width = int(row["height"]), int(row["width"])
    data = row["depth"]
    data = data if isinstance(data, bytes) else bytes(data)
    if len(data) == 2 * height * width:  # version 1: raw uint16 codes
        return decode_depth(data, float(row["depth_lo"]), float(row["depth_hi"]), height, width)
    kind, depth_type = label_info(data).kind, row.get("depth_type")
    if depth_type is not None and kind != depth_type:
        raise ValueError(f"row {row.get('key')!r}: depth_type is {depth_type!r} but its label "
                         f"blob holds {kind!r}")
    return decode_label(data, height, width)


def decode_sample(row: Mapping[str, Any]) -> Sample:
    """Decode one row of a version 1 or 2 shard (a dict, e.g. from
    ``table.to_pylist()`` or Ray Data).

    The image is decoded as the labeller saw it (``depthlib.images``: EXIF
    orientation applied, any mode to RGB), so it lines up with the label.
    """
    from depthlib.images import decode_image

    height, width = int(row["height"]), int(row["width"])
    image = decode_image(bytes(row["image"]))
    depth = decode_row_depth(row)
    valid_data = row.get("valid")
    if valid_data is None or (isinstance(valid_data, float) and math.isnan(valid_data)):
        valid = np.ones((height, width), dtype=bool)
    else:
        valid = decode_mask(bytes(valid_data), height, width)
    provenance = json.loads(row["provenance"]) if row.get("provenance") else {}
    return Sample(key=str(row["key"]), image=image, depth=depth, valid=valid,
                  depth_type=str(row["depth_type"]), kind=str(row["kind"]), provenance=provenance)

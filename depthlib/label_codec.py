"""Label codec of shard version 2: depth labels in well under 1 byte per pixel.

Pure functions, no I/O. :func:`encode_label` turns an ``H x W`` label map into
one self-describing ``bytes`` blob (the shard's ``depth`` cell);
:func:`decode_label` gives the ``float32`` map back; :func:`label_info` reads
the header alone.

What is stored (and why) -- measured in ``benchmarks/label_codec.py``:

1. **Quantisation to the precision contract, nothing finer.**

   * ``"disparity"`` (relative labels: affine-invariant inverse depth, the
     teacher's output): a linear grid ``value = k * step`` anchored at 0 (so 0
     stays exactly 0), with ``step = 2 * (tol - 2**-21) * max|label|``. Every
     decoded value is within ``tol * max|label|`` of the input (default
     ``tol = 1e-4``): the SSI loss aligns each label by an affine map, so
     error relative to the image's range is what counts. About ``1 / (2 tol)``
     = 5000 levels span ``0 .. max``.
   * ``"metric_depth"`` (metres): a log grid ``value = exp(k * step)`` with
     ``step = 2 * (log1p(tol) - 2**-21)`` nepers, so every positive value is
     decoded within relative error ``tol`` (default ``1e-3``) over any range
     (float32's whole normal range fits). Values ``<= 0`` (invalid, no data)
     decode to exactly 0.
   * ``"depth_up_to_scale"`` (depth in unknown units, e.g. BlendedMVS's
     reconstruction units): the same log grid as metric depth, under its own
     quantiser id, so the header itself says the values are NOT metres and
     no metric reader can take them for metres.

   The ``2**-21`` margins absorb float32 rounding in encoding and decoding,
   so the bounds hold for the returned ``float32`` values as they are. Values
   in float32's subnormal range (below 1.2e-38) keep only float32's own
   absolute precision there.
2. **Prediction along the image, like PNG's filters.** The integer codes
   ``c`` are replaced by residuals of one of three predictors, chosen per map
   by an estimated code length on every 8th row: ``left``
   (``c[i,j] - c[i,j-1]``), ``up`` (``c[i,j] - c[i-1,j]``) or ``grad``
   (``c - left - up + upleft``, zero on any plane, as disparity of a planar
   surface is affine in pixel coordinates). Decoding is one or two cumulative
   sums, exact: the arithmetic wraps modulo 2**16 when every code fits in 16
   bits (the usual case: about 5000 levels), else modulo 2**32.
3. **Byte planes.** Residuals are zig-zag mapped (0, -1, 1, -2, ... -> 0, 1,
   2, 3, ...) and split into 1-4 byte planes (low bytes of all pixels, then
   the next byte, ...), as many as the largest residual needs: the low plane
   holds the noise, the high planes are almost all zero (edges only).
4. **zstd** (level 1 by default, via pyarrow) over the planes, and a CRC-32
   of the compressed payload so a damaged cell fails loudly.

Blob layout (little-endian)::

    magic b"DLBL", header (see _HEADER), zstd payload, [one zero byte]

The zero byte is appended only when the blob would otherwise be exactly
``2 * H * W`` bytes long: a version 1 label (raw uint16 codes) always has
that length, so the length alone tells the two encodings apart
(:func:`is_label_blob`).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa

__all__ = ["encode_label", "decode_label", "label_info", "is_label_blob", "LabelInfo",
           "DEFAULT_TOLERANCE", "LABEL_KINDS", "PREDICTORS"]

MAGIC = b"DLBL"
BLOB_VERSION = 1
LABEL_KINDS = ("disparity", "metric_depth", "depth_up_to_scale")
DEFAULT_TOLERANCE = {"disparity": 1e-4, "metric_depth": 1e-3, "depth_up_to_scale": 1e-3}
MIN_TOLERANCE, MAX_TOLERANCE = 1e-6, 0.1
PREDICTORS = ("left", "up", "grad")
# Labels must stay below this in magnitude: a decoded value may exceed the
# input by up to the tolerance, and must still be a finite float32.
MAX_VALUE = 1e38

_LINEAR, _LOG, _LOG_UNSCALED = 1, 2, 3  # _LOG_UNSCALED: the log grid, for depth without units
_QUANTISER = {"disparity": _LINEAR, "metric_depth": _LOG, "depth_up_to_scale": _LOG_UNSCALED}
_KIND_OF = {v: k for k, v in _QUANTISER.items()}
_PRED_ID = {p: i + 1 for i, p in enumerate(PREDICTORS)}
_PRED_OF = {v: k for k, v in _PRED_ID.items()}
# Headroom on the quantiser's half step for float32 rounding (see module doc).
_MARGIN = 2.0 ** -21
# Below this max|label|, 1/step may not be a finite float32: use float64.
_F32_SAFE_SCALE = 1e-30
# Below this step (near float32's subnormals), decode in float64.
_F32_SAFE_STEP = 1e-36
# Codes below this are predicted in 16-bit arithmetic (modulo 2**16).
_WIDE = 1 << 16

# magic, blob version, quantiser, predictor, planes, height, width, tolerance,
# step, k0, max_code, payload bytes, crc32 of the payload
_HEADER = struct.Struct("<4sBBBBIIddqIQI")
HEADER_BYTES = _HEADER.size


@dataclass(frozen=True)
class LabelInfo:
    """What a blob's header says (no decompression)."""

    kind: str
    """``"disparity"`` (linear grid), ``"metric_depth"`` or ``"depth_up_to_scale"`` (log grid)."""
    height: int
    width: int
    tolerance: float
    """disparity: max abs error / max|label|; metric: max relative error."""
    step: float
    """grid step: in label units (disparity) or nepers (metric)."""
    k0: int
    """grid index of code 0 (disparity) or of code 1 (metric; code 0 = exact 0)."""
    max_code: int
    predictor: str
    planes: int
    payload_bytes: int

    def _decoded(self, code: int) -> float:
        codes = np.array([[code]], np.int32)
        return float(_dequantise(codes, _QUANTISER[self.kind], self.step, self.k0, self.max_code)[0, 0])

    @property
    def lo(self) -> float:
        """Smallest decoded value (metric: smallest positive; 0.0 if none), as decoded."""
        if self.kind != "disparity":  # log grids: code 0 is exact zero
            return self._decoded(1) if self.max_code > 0 else 0.0
        return self._decoded(0)

    @property
    def hi(self) -> float:
        """Largest decoded value, as decoded."""
        return self._decoded(self.max_code)


@lru_cache(maxsize=None)
def _zstd(level: int) -> pa.Codec:
    return pa.Codec("zstd", compression_level=level)


# --------------------------------------------------------------------------- checks


def _check_kind(kind: str) -> None:
    if kind not in LABEL_KINDS:
        raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {kind!r}")


def _check_map(label: np.ndarray) -> np.ndarray:
    a = np.asarray(label)
    if a.ndim != 2:
        raise ValueError(f"label map must be 2-D (HxW), got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"label map must have at least one pixel, got shape {a.shape}")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"label map must hold real numbers, got dtype {a.dtype}")
    if not np.issubdtype(a.dtype, np.floating) or a.dtype.itemsize > 8:
        a = a.astype(np.float64)
    return np.ascontiguousarray(a)


def _scale(a: np.ndarray) -> float:
    """max|a|; raises for NaN or inf (either makes max or min non-finite) and for huge values."""
    top, bottom = float(a.max()), float(a.min())
    if not (math.isfinite(top) and math.isfinite(bottom)):
        raise ValueError("label map contains NaN or inf; mask those pixels (set them to 0 and mark "
                         "them invalid) before encoding")
    scale = max(top, -bottom)
    if scale >= MAX_VALUE:
        raise ValueError(f"label values must have magnitude below {MAX_VALUE:g}, got {scale:g}")
    return scale


# --------------------------------------------------------------------------- quantisers


def _quantise_linear(a: np.ndarray, tol: float) -> tuple[np.ndarray, float, int]:
    """int32 codes >= 0, step, k0: ``value ~ (code + k0) * step``."""
    scale = _scale(a)
    if scale == 0.0:
        return np.zeros(a.shape, np.int32), 1.0, 0
    step = 2.0 * (tol - _MARGIN) * scale
    if a.dtype == np.float32 and scale >= _F32_SAFE_SCALE:
        k = a * np.float32(1.0 / step)  # error <= |a| * 2**-23 in value units: inside the margin
    else:
        k = np.multiply(a, 1.0 / step, dtype=np.float64)
    np.rint(k, out=k)
    codes = k.astype(np.int32)
    k0 = int(codes.min())
    codes -= np.int32(k0)
    return codes, step, k0


def _quantise_log(a: np.ndarray, tol: float) -> tuple[np.ndarray, float, int]:
    """int32 codes: 0 = exact zero (value <= 0), else ``value ~ exp((code - 1 + k0) * step)``."""
    _scale(a)
    step = 2.0 * (math.log1p(tol) - _MARGIN)
    positive = a > 0
    n_positive = int(np.count_nonzero(positive))
    if n_positive == 0:
        return np.zeros(a.shape, np.int32), step, 0
    everywhere = n_positive == a.size
    k = np.log(a if everywhere else a[positive], dtype=np.float64)
    k *= 1.0 / step
    np.rint(k, out=k)
    k = k.astype(np.int32)
    k0 = int(k.min())
    k -= np.int32(k0 - 1)
    if everywhere:
        return k, step, k0
    codes = np.zeros(a.shape, np.int32)
    codes[positive] = k
    return codes, step, k0


def _dequantise(codes: np.ndarray, quantiser: int, step: float, k0: int, max_code: int) -> np.ndarray:
    if quantiser == _LINEAR:
        codes += np.int32(k0)
        if step < _F32_SAFE_STEP:  # a subnormal float32 step would lose precision
            return (codes * step).astype(np.float32)
        out = codes.astype(np.float32)
        out *= np.float32(step)  # |k| < 2**24: exact in float32; two roundings of 2**-24
        return out
    if max_code < codes.size:  # a table no larger than the map; same values as below
        table = np.zeros(max_code + 1, np.float32)
        table[1:] = np.exp((np.arange(max_code, dtype=np.float64) + k0) * step)
        return table[codes]
    out = np.zeros(codes.shape, np.float32)
    nz = codes > 0
    out[nz] = np.exp((codes[nz].astype(np.float64) + (k0 - 1)) * step)
    return out


# --------------------------------------------------------------------------- prediction


def _sample_costs(c: np.ndarray) -> dict[str, int]:
    """Estimated code length of each predictor's residuals on every 8th row.

    The sum over sampled pixels of ``log2(1 + |r|)``, read off float32
    exponent and mantissa bits (a piecewise-linear log2, scaled by 2**23):
    only the order matters.
    """
    h, w = c.shape
    if h < 2:
        return {"left": 0}
    if w < 2:
        return {"up": 0}
    rows = np.arange(1, h, 8)
    cur, above = c[rows], c[rows - 1]
    left = cur[:, 1:] - cur[:, :-1]
    up = cur[:, 1:] - above[:, 1:]
    grad = left - (above[:, 1:] - above[:, :-1])
    costs = {}
    for name, r in (("left", left), ("up", up), ("grad", grad)):
        a = np.abs(r).view(np.uint32)
        a += np.uint32(1)
        costs[name] = int(a.astype(np.float32).view(np.int32).sum(dtype=np.int64))
    return costs


def choose_predictor(codes: np.ndarray) -> str:
    """The predictor with the smallest estimated code length for ``codes`` (int32 HxW)."""
    costs = _sample_costs(codes)
    return min(costs, key=costs.__getitem__)


def _residuals(c: np.ndarray, predictor: str) -> np.ndarray:
    """Residuals, H x W, of c's integer type (wrapping arithmetic), inverted by :func:`_integrate`.

    Pixels outside the map count as 0 for ``grad``; for ``left`` the first
    column, for ``up`` the first row is differenced along itself instead.
    """
    r = np.empty_like(c)
    if predictor == "up":
        np.subtract(c[1:], c[:-1], out=r[1:])
        r[0, 0] = c[0, 0]
        np.subtract(c[0, 1:], c[0, :-1], out=r[0, 1:])
        return r
    if predictor not in ("left", "grad"):
        raise ValueError(f"unknown predictor {predictor!r}")
    np.subtract(c[:, 1:], c[:, :-1], out=r[:, 1:])
    if predictor == "left":
        r[0, 0] = c[0, 0]
        np.subtract(c[1:, 0], c[:-1, 0], out=r[1:, 0])
        return r
    r[:, 0] = c[:, 0]  # horizontal differences, zero-padded on the left
    g = np.empty_like(r)
    g[0] = r[0]
    np.subtract(r[1:], r[:-1], out=g[1:])
    return g


def _cumsum_down(r: np.ndarray) -> np.ndarray:
    """Cumulative sum down the columns (int32), through a transposed copy:
    numpy sums along contiguous rows several times faster."""
    t = np.ascontiguousarray(r.T)
    np.cumsum(t, axis=1, dtype=np.int32, out=t)
    return np.ascontiguousarray(t.T)


def _integrate(r: np.ndarray, predictor: str) -> np.ndarray:
    """Inverse of :func:`_residuals` (``r`` is overwritten): int32 codes, H x W."""
    i32 = np.int32
    if predictor == "left":
        np.cumsum(r[:, 0], dtype=i32, out=r[:, 0])
        np.cumsum(r, axis=1, dtype=i32, out=r)
        return r
    if predictor == "up":
        np.cumsum(r[0], dtype=i32, out=r[0])
        return _cumsum_down(r)
    np.cumsum(r, axis=1, dtype=i32, out=r)  # grad: undo the horizontal difference...
    return _cumsum_down(r)                  # ...then the vertical one


def _to_planes(r: np.ndarray) -> tuple[int, np.ndarray]:
    """Zig-zag residuals (int16 or int32) split into byte planes: (planes, planes x N uint8)."""
    bits = 8 * r.dtype.itemsize
    z = (r << 1) ^ (r >> (bits - 1))
    z = z.view(np.uint16 if bits == 16 else np.uint32).ravel()
    planes = max(1, (int(z.max()).bit_length() + 7) // 8)
    if planes <= 2 and bits == 32:
        z = z.astype(np.uint16)
    out = np.empty((planes, z.size), np.uint8)
    out[0] = z  # the low byte
    for i in range(1, planes):
        out[i] = z >> (8 * i)
    return planes, out


def _from_planes(raw: np.ndarray, planes: int, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`_to_planes`: int32 residuals of ``shape``."""
    raw = raw.reshape(planes, -1)
    utype, stype = (np.uint16, np.int16) if planes <= 2 else (np.uint32, np.int32)
    u = raw[planes - 1].astype(utype)
    for i in range(planes - 2, -1, -1):
        u <<= 8
        u |= raw[i]
    sign = (u & 1).view(stype)
    np.negative(sign, out=sign)
    u >>= 1
    r = u.view(stype)
    r ^= sign
    return r.astype(np.int32, copy=False).reshape(shape)


# --------------------------------------------------------------------------- public API


def encode_label(label: np.ndarray, kind: str, tolerance: float | None = None, *,
                 predictor: str | None = None, level: int = 1) -> bytes:
    """Encode an ``H x W`` label map (any real dtype) as a version 2 label blob.

    ``kind``: ``"disparity"`` (linear grid; decoded values within
    ``tolerance * max|label|`` of the input, default ``1e-4``) or
    ``"metric_depth"`` (metres; log grid; every positive value within
    relative error ``tolerance``, default ``1e-3``; values <= 0 become 0) or
    ``"depth_up_to_scale"`` (depth in unknown units: metric's grid and bounds).
    ``tolerance`` must lie in [1e-6, 0.1]. ``predictor`` forces one of
    :data:`PREDICTORS` (default: chosen per map); ``level`` is zstd's.

    Raises ``ValueError`` for NaN/inf, magnitudes >= 1e38, a map that is not
    2-D or has no pixels, or a bad ``kind``/``tolerance``/``predictor``.
    """
    _check_kind(kind)
    tol = DEFAULT_TOLERANCE[kind] if tolerance is None else float(tolerance)
    if not (MIN_TOLERANCE <= tol <= MAX_TOLERANCE):
        raise ValueError(f"tolerance must be in [{MIN_TOLERANCE:g}, {MAX_TOLERANCE:g}], got {tolerance!r}")
    if predictor is not None and predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS} or None, got {predictor!r}")
    a = _check_map(label)
    height, width = a.shape
    quantiser = _QUANTISER[kind]
    if quantiser == _LINEAR:
        codes, step, k0 = _quantise_linear(a, tol)
    else:
        codes, step, k0 = _quantise_log(a, tol)
    max_code = int(codes.max())
    predictor = predictor or choose_predictor(codes)
    if max_code < _WIDE:  # the usual case: residuals modulo 2**16, half the memory traffic
        codes = codes.astype(np.int16)
    planes, raw = _to_planes(_residuals(codes, predictor))
    payload = _zstd(int(level)).compress(raw, asbytes=True)
    header = _HEADER.pack(MAGIC, BLOB_VERSION, quantiser, _PRED_ID[predictor], planes, height, width,
                          tol, step, k0, max_code, len(payload), zlib.crc32(payload))
    blob = header + payload
    if len(blob) == 2 * height * width:  # never the length of a version 1 label
        blob += b"\0"
    return blob


def is_label_blob(data: bytes, height: int, width: int) -> bool:
    """True for a version 2 blob, False for a version 1 label (exactly ``2*H*W`` bytes)."""
    return len(data) != 2 * int(height) * int(width) and bytes(data[:4]) == MAGIC


def label_info(data: bytes) -> LabelInfo:
    """Parse and check a blob's header. Raises ``ValueError`` if it is not a valid blob."""
    data = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
    if len(data) < HEADER_BYTES or bytes(data[:4]) != MAGIC:
        raise ValueError(f"not a depthlib label blob ({len(data)} bytes, starts with {bytes(data[:4])!r}; "
                         f"expected magic {MAGIC!r})")
    (_, version, quantiser, pred, planes, height, width, tol, step, k0, max_code, nbytes,
     _crc) = _HEADER.unpack_from(data)
    if version != BLOB_VERSION:
        raise ValueError(f"label blob version {version} is not supported (this reader: {BLOB_VERSION})")
    if quantiser not in _KIND_OF or pred not in _PRED_OF or not 1 <= planes <= 4:
        raise ValueError(f"corrupt label header (quantiser {quantiser}, predictor {pred}, planes {planes})")
    if height < 1 or width < 1 or not (step > 0 and math.isfinite(step)):
        raise ValueError(f"corrupt label header (size {height}x{width}, step {step!r})")
    extra = len(data) - HEADER_BYTES - nbytes
    if extra not in (0, 1):
        raise ValueError(f"label blob has {len(data)} bytes; its header says {HEADER_BYTES + nbytes} "
                         "(truncated or corrupt)")
    return LabelInfo(kind=_KIND_OF[quantiser], height=height, width=width, tolerance=tol, step=step,
                     k0=k0, max_code=max_code, predictor=_PRED_OF[pred], planes=planes,
                     payload_bytes=nbytes)


def decode_label(data: bytes, height: int | None = None, width: int | None = None) -> np.ndarray:
    """Decode :func:`encode_label` output to a ``float32`` ``H x W`` map (writable).

    ``height``/``width``, when given, must match the blob's (a check against
    the row's columns). Raises ``ValueError`` for a damaged or foreign blob.
    """
    info = label_info(data)
    if (height is not None and int(height) != info.height) or (width is not None and int(width) != info.width):
        raise ValueError(f"label blob is {info.height}x{info.width}, expected {height}x{width}")
    (*_, crc) = _HEADER.unpack_from(data)
    payload = memoryview(data)[HEADER_BYTES:HEADER_BYTES + info.payload_bytes]
    if zlib.crc32(payload) != crc:
        raise ValueError("label blob is corrupt (CRC-32 mismatch)")
    n = info.height * info.width
    try:
        raw = _zstd(1).decompress(payload, decompressed_size=info.planes * n)
    except (pa.ArrowException, OSError) as e:  # pragma: no cover - CRC catches damage first
        raise ValueError(f"label blob is corrupt: {e}") from e
    raw = np.frombuffer(raw, np.uint8)
    if raw.size != info.planes * n:  # pragma: no cover - zstd checks the frame size
        raise ValueError("label blob is corrupt (wrong decompressed size)")
    r = _from_planes(raw, info.planes, (info.height, info.width))
    codes = _integrate(r, info.predictor)
    if info.max_code < _WIDE:  # residuals were taken modulo 2**16
        codes &= np.int32(_WIDE - 1)
    quantiser = _QUANTISER[info.kind]
    return _dequantise(codes, quantiser, info.step, info.k0, info.max_code)

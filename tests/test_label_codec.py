"""depthlib.label_codec: the version 2 label encoding (pure functions).

Error bounds checked everywhere: disparity |decoded - x| <= tol * max|x|;
metric depth |decoded / x - 1| <= tol for x > 0, exact 0 for x <= 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from depthlib import label_codec as lc

DISP_TOL, METRIC_TOL = 1e-4, 1e-3


def disparity_error(decoded: np.ndarray, x: np.ndarray) -> float:
    """Max abs error relative to the map's max |x| (0 for an all-zero map)."""
    x = np.asarray(x, np.float64)
    scale = np.abs(x).max()
    err = np.abs(decoded.astype(np.float64) - x).max()
    return err / scale if scale > 0 else err


def metric_error(decoded: np.ndarray, x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    pos = x > 0
    assert (decoded[~pos] == 0).all()
    return float(np.abs(decoded[pos].astype(np.float64) / x[pos] - 1).max(initial=0.0))


def round_trip(x: np.ndarray, kind: str, tol: float | None = None, **kw) -> np.ndarray:
    blob = lc.encode_label(x, kind, tol, **kw)
    out = lc.decode_label(blob, *np.shape(x))
    assert out.dtype == np.float32 and out.shape == np.shape(x) and out.flags.c_contiguous
    assert len(blob) != 2 * np.size(x)  # never mistaken for a version 1 cell
    return out


# --------------------------------------------------------------------------- maps

def smooth_map(h: int, w: int, seed: int) -> np.ndarray:
    """Disparity of a slanted plane plus low-frequency relief (float32, > 0)."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    a, b, c = rng.uniform(-1e-3, 1e-3), rng.uniform(2e-4, 2e-3), rng.uniform(0.05, 0.2)
    relief = 0.01 * np.sin(u / rng.uniform(20, 60)) * np.cos(v / rng.uniform(20, 60))
    return np.maximum(a * u + b * v + c + relief, 1e-3).astype(np.float32)


def edged_map(h: int, w: int, seed: int) -> np.ndarray:
    """Planes with depth discontinuities (boxes in front of a floor and a wall), and sky = 0."""
    rng = np.random.default_rng(seed)
    d = smooth_map(h, w, seed).astype(np.float64)
    for _ in range(5):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        d[y0:y0 + rng.integers(2, h // 2 + 3), x0:x0 + rng.integers(2, w // 2 + 3)] = rng.uniform(0.3, 1.0)
    d[: max(1, h // 8)] = 0.0  # sky: zero disparity
    return d.astype(np.float32)


def noisy_map(h: int, w: int, seed: int) -> np.ndarray:
    """An edged map with per-pixel noise at bf16 rounding level (about 0.2 %)."""
    rng = np.random.default_rng(seed + 1000)
    d = edged_map(h, w, seed).astype(np.float64)
    return np.maximum(d * (1 + rng.normal(0, 2e-3, d.shape)), 0).astype(np.float32)


MAPS = {"smooth": smooth_map, "edged": edged_map, "noisy": noisy_map}


# --------------------------------------------------------------------------- hand-computed cases

def test_disparity_linear_grid_by_hand():
    """tol 0.1, max 5: step = 2 * (0.1 - 2**-21) * 5 = 1 - 10 * 2**-21; codes 0..5."""
    x = np.array([[0, 1, 2], [3, 4, 5]], np.float32)
    blob = lc.encode_label(x, "disparity", 0.1)
    info = lc.label_info(blob)
    step = 1 - 10 * 2.0 ** -21
    assert info.kind == "disparity" and (info.height, info.width) == (2, 3)
    assert info.step == pytest.approx(step, rel=1e-15) and info.k0 == 0 and info.max_code == 5
    assert info.planes == 1 and info.tolerance == 0.1
    assert (info.lo, info.hi) == (0.0, float(np.float32(5 * step)))
    expected = (np.arange(6).reshape(2, 3) * step).astype(np.float32)
    np.testing.assert_array_equal(lc.decode_label(blob), expected)


def test_disparity_rounds_to_the_nearest_level_by_hand():
    """max 4, tol 0.1: step = 0.8 (less 8 * 2**-21); 1 -> 0.8, 2 -> 2.4 (2.5 steps rounds up), 4 -> 4.0."""
    x = np.array([[0.0, 1.0], [2.0, 4.0]])
    step = 2 * (0.1 - 2.0 ** -21) * 4
    out = round_trip(x, "disparity", 0.1)
    np.testing.assert_allclose(out, [[0, step], [3 * step, 5 * step]], rtol=1e-7)
    assert disparity_error(out, x) <= 0.1  # 2 -> 2.4: the bound is nearly met


def test_metric_log_grid_by_hand():
    """tol 0.01: step = 2 * (log1p(0.01) - 2**-21) nepers; 1 -> exp(0) = 1 exactly, 0 stays 0."""
    x = np.array([[0.0, 1.0], [2.0, 4.0]])
    blob = lc.encode_label(x, "metric_depth", 0.01)
    info = lc.label_info(blob)
    step = 2 * (math.log1p(0.01) - 2.0 ** -21)
    assert info.kind == "metric_depth" and info.step == pytest.approx(step, rel=1e-15)
    k = [round(math.log(v) / step) for v in (1.0, 2.0, 4.0)]
    assert k == [0, 35, 70]
    assert info.k0 == 0 and info.max_code == 71  # code 0 = exact zero, code 1 = exp(k0 * step)
    out = lc.decode_label(blob)
    expected = np.array([[0, 1], [math.exp(35 * step), math.exp(70 * step)]], np.float32)
    np.testing.assert_array_equal(out, expected)
    assert (info.lo, info.hi) == (1.0, float(expected[1, 1]))
    assert metric_error(out, x) <= 0.01


# Blobs written by this version of the encoder: decoding them must never
# change, or stored shards would read differently.
GOLDEN_DISPARITY = bytes.fromhex(
    "444c424c0101030102000000030000009a9999999999b93f00000000f6ffef3f0000000000000000"
    "050000000f00000000000000a789391428b52ffd2006310000000202060000")
GOLDEN_METRIC = bytes.fromhex(
    "444c424c0102020102000000020000007b14ae47e17a843f7736cacc9660943f0000000000000000"
    "470000000d00000000000000cfecc94a28b52ffd20042100000002488c")


def test_golden_blobs_decode_unchanged():
    info = lc.label_info(GOLDEN_DISPARITY)
    assert (info.kind, info.predictor, info.height, info.width) == ("disparity", "grad", 2, 3)
    step = 1 - 10 * 2.0 ** -21
    np.testing.assert_array_equal(lc.decode_label(GOLDEN_DISPARITY),
                                  (np.arange(6).reshape(2, 3) * step).astype(np.float32))
    info = lc.label_info(GOLDEN_METRIC)
    assert (info.kind, info.predictor, info.height, info.width) == ("metric_depth", "up", 2, 2)
    step = 2 * (math.log1p(0.01) - 2.0 ** -21)
    np.testing.assert_array_equal(lc.decode_label(GOLDEN_METRIC),
                                  np.array([[0, 1], [math.exp(35 * step), math.exp(70 * step)]], np.float32))


def test_residuals_by_hand():
    c = np.array([[1, 3, 6], [2, 5, 9]], np.int32)
    np.testing.assert_array_equal(lc._residuals(c, "left"), [[1, 2, 3], [1, 3, 4]])
    np.testing.assert_array_equal(lc._residuals(c, "up"), [[1, 2, 3], [1, 2, 3]])
    np.testing.assert_array_equal(lc._residuals(c, "grad"), [[1, 2, 3], [1, 1, 1]])
    # a plane (affine in row and column) has zero grad residual away from the border
    plane = (7 + 3 * np.arange(5)[:, None] - 2 * np.arange(6)[None, :]).astype(np.int32)
    assert (lc._residuals(plane, "grad")[1:, 1:] == 0).all()


def test_zigzag_byte_planes_by_hand():
    r = np.array([[0, -1, 1, -2, 2, 127, -128]], np.int32)
    planes, raw = lc._to_planes(r)  # zig-zag: 0, 1, 2, 3, 4, 254, 255
    assert planes == 1 and raw.tolist() == [[0, 1, 2, 3, 4, 254, 255]]
    r2 = np.array([[128, -129, 0]], np.int32)  # zig-zag 256, 257, 0: low bytes, then high bytes
    planes, raw = lc._to_planes(r2)
    assert planes == 2 and raw.tolist() == [[0, 1, 0], [1, 1, 0]]
    r4 = np.array([[-2**31, 2**31 - 1, 5]], np.int32)  # zig-zag 2**32 - 1, 2**32 - 2, 10
    planes, raw = lc._to_planes(r4)
    assert planes == 4 and raw[:, 2].tolist() == [10, 0, 0, 0]
    for rr in (r, r2, r4):
        n, raw = lc._to_planes(rr)
        np.testing.assert_array_equal(lc._from_planes(raw.ravel(), n, rr.shape), rr)


# --------------------------------------------------------------------------- properties

@pytest.mark.parametrize("name", sorted(MAPS))
@pytest.mark.parametrize("shape", [(518, 686), (37, 61), (2, 2), (1, 50), (50, 1)])
def test_disparity_round_trip_within_1e4_of_max(name, shape):
    for seed in range(2):
        x = MAPS[name](*shape, seed) if min(shape) > 2 else np.random.default_rng(seed).random(shape)
        out = round_trip(x, "disparity")
        assert disparity_error(out, x) <= DISP_TOL
        assert (out[x == 0] == 0).all()  # zero disparity (sky, masked) stays exactly zero


@pytest.mark.parametrize("name", sorted(MAPS))
@pytest.mark.parametrize("tol", [1e-3, 1e-4, 1e-6])
def test_metric_round_trip_within_relative_tolerance(name, tol):
    x = MAPS[name](120, 160, 3).astype(np.float64)
    depth = np.where(x > 0, 1.0 / np.maximum(x, 1e-12), 0.0)  # metres; sky (0) stays invalid
    out = round_trip(depth, "metric_depth", tol)
    assert metric_error(out, depth) <= tol


@pytest.mark.parametrize("tol", [1e-6, 1e-5, 1e-3, 0.1])
def test_disparity_tolerance_is_honoured_at_every_setting(tol):
    x = noisy_map(64, 96, 5)
    assert disparity_error(round_trip(x, "disparity", tol), x) <= tol


@pytest.mark.parametrize("kind", lc.LABEL_KINDS)
def test_every_predictor_decodes_to_the_same_values(kind):
    """Prediction is lossless: only quantisation changes values, so all predictors agree bit for bit."""
    x = edged_map(45, 70, 9) + 0.01
    outs = [round_trip(x, kind, predictor=p) for p in lc.PREDICTORS]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    assert {lc.label_info(lc.encode_label(x, kind, predictor=p)).predictor for p in lc.PREDICTORS} == set(lc.PREDICTORS)


def test_predictor_choice_follows_the_map():
    """A plane favours grad; a pattern repeated down the columns (plus faint noise)
    favours up, one repeated along the rows favours left."""
    v, u = np.mgrid[0:64, 0:80].astype(np.float64)
    assert lc.label_info(lc.encode_label(1 + 0.01 * u + 0.02 * v, "disparity")).predictor == "grad"
    rng = np.random.default_rng(0)
    row, faint = rng.random(80), 1e-3 * rng.random((64, 80))
    assert lc.label_info(lc.encode_label(np.tile(row, (64, 1)) + faint, "disparity")).predictor == "up"
    assert lc.label_info(lc.encode_label(np.tile(row[:64, None], (1, 80)) + faint, "disparity")).predictor == "left"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.uint16])
def test_input_dtypes(dtype):
    x = (np.random.default_rng(2).random((30, 40)) * 1000).astype(dtype)
    assert disparity_error(round_trip(x, "disparity"), x) <= DISP_TOL
    assert metric_error(round_trip(x, "metric_depth"), x) <= METRIC_TOL


def test_negative_disparity_uses_the_max_magnitude():
    x = np.random.default_rng(4).uniform(-3.0, 1.0, (40, 40))
    assert disparity_error(round_trip(x, "disparity"), x) <= DISP_TOL


def test_metric_nonpositive_values_decode_to_exact_zero():
    x = np.random.default_rng(5).uniform(0.5, 80.0, (33, 47))
    x[::5, ::3] = 0.0
    x[2, 2] = -7.0
    out = round_trip(x, "metric_depth")
    assert (out[x <= 0] == 0).all() and (out[x > 0] > 0).all()
    assert metric_error(out, np.maximum(x, 0)) <= METRIC_TOL


# --------------------------------------------------------------------------- special maps

@pytest.mark.parametrize("kind", lc.LABEL_KINDS)
def test_all_zero_constant_and_single_pixel_maps(kind):
    zeros = np.zeros((7, 5))
    assert (round_trip(zeros, kind) == 0).all()
    info = lc.label_info(lc.encode_label(zeros, kind))
    assert (info.lo, info.hi, info.max_code) == (0.0, 0.0, 0)
    for value in (3.25, 1e-20, 7e30):
        const = np.full((6, 9), value)
        out = round_trip(const, kind)
        assert len(np.unique(out)) == 1
        assert (np.abs(out / value - 1) <= (DISP_TOL if kind == "disparity" else METRIC_TOL)).all()
    one = round_trip(np.array([[0.5]]), kind)
    assert one.shape == (1, 1) and abs(one[0, 0] / 0.5 - 1) <= 1e-3


def test_huge_range_maps():
    """1e-30 .. 1e30: disparity keeps 1e-4 of the max (the small values become 0);
    metric keeps 1e-3 relative everywhere (60 decades in one map)."""
    rng = np.random.default_rng(6)
    x = np.exp(rng.uniform(math.log(1e-30), math.log(1e30), (64, 64)))
    out = round_trip(x, "disparity")
    assert disparity_error(out, x) <= DISP_TOL
    assert (out[x < 1e25] == 0).all()
    out = round_trip(x, "metric_depth")
    assert metric_error(out, x) <= METRIC_TOL
    info = lc.label_info(lc.encode_label(x, "metric_depth"))
    assert info.planes >= 2 and info.max_code > 65535  # beyond 16-bit codes
    big = np.full((3, 3), 9.9e37)  # just below the limit: decodes to finite float32
    assert np.isfinite(round_trip(big, "disparity")).all() and np.isfinite(round_trip(big, "metric_depth")).all()


def test_tiny_disparity_scale_uses_float64():
    x = np.random.default_rng(7).random((20, 20)).astype(np.float32) * np.float32(1e-35)
    assert disparity_error(round_trip(x, "disparity"), x) <= DISP_TOL


def test_blob_is_never_2hw_bytes_long():
    """A v1 cell is exactly 2*H*W bytes; a v2 blob of that length gets one zero byte appended."""
    padded = 0
    for w in range(20, 200):
        for tol in (0.1, 0.01, 1e-3):
            x = np.random.default_rng(0).random((1, w))
            blob = lc.encode_label(x, "disparity", tol)
            assert len(blob) != 2 * w
            if lc.HEADER_BYTES + lc.label_info(blob).payload_bytes == 2 * w:
                padded += 1
                assert blob[-1] == 0 and len(blob) == 2 * w + 1
                assert disparity_error(lc.decode_label(blob, 1, w), x) <= tol
    assert padded >= 1, "no map hit the padding case; widen the search"


def test_is_label_blob():
    x = np.ones((4, 4))
    assert lc.is_label_blob(lc.encode_label(x, "disparity"), 4, 4)
    assert not lc.is_label_blob(b"DLBL" + bytes(28), 4, 4)  # 32 bytes = 2*4*4: a v1 cell
    assert not lc.is_label_blob(b"\0" * 40, 4, 4)


# --------------------------------------------------------------------------- bad input

def test_bad_input_is_refused_clearly():
    ok = np.ones((3, 3))
    for bad in (np.nan, np.inf, -np.inf):
        arr = ok.copy()
        arr[1, 1] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            lc.encode_label(arr, "disparity")
    with pytest.raises(ValueError, match="2-D"):
        lc.encode_label(np.ones((2, 3, 1)), "disparity")
    with pytest.raises(ValueError, match="at least one pixel"):
        lc.encode_label(np.ones((0, 3)), "disparity")
    with pytest.raises(ValueError, match="real numbers"):
        lc.encode_label(np.ones((2, 2), bool), "disparity")
    with pytest.raises(ValueError, match="real numbers"):
        lc.encode_label(np.ones((2, 2), complex), "disparity")
    with pytest.raises(ValueError, match="magnitude below"):
        lc.encode_label(np.full((2, 2), 2e38), "metric_depth")
    with pytest.raises(ValueError, match="label kind"):
        lc.encode_label(ok, "depth")
    for tol in (0.0, 1e-7, 0.5, float("nan")):
        with pytest.raises(ValueError, match="tolerance"):
            lc.encode_label(ok, "disparity", tol)
    with pytest.raises(ValueError, match="predictor"):
        lc.encode_label(ok, "disparity", predictor="paeth")


def test_damaged_blobs_are_refused_clearly():
    x = noisy_map(40, 50, 1)
    blob = lc.encode_label(x, "disparity")
    with pytest.raises(ValueError, match="expected 41x50"):
        lc.decode_label(blob, 41, 50)
    flipped = bytearray(blob)
    flipped[-10] ^= 0x40
    with pytest.raises(ValueError, match="CRC"):
        lc.decode_label(bytes(flipped))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        lc.decode_label(blob[:-5])
    with pytest.raises(ValueError, match="not a depthlib label blob"):
        lc.decode_label(b"PNG" + blob[3:])
    with pytest.raises(ValueError, match="not a depthlib label blob"):
        lc.decode_label(b"DLBL")
    future = bytearray(blob)
    future[4] = 9
    with pytest.raises(ValueError, match="version 9"):
        lc.decode_label(bytes(future))

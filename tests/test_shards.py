"""depthlib.shards: depth/mask encoding, rows, and shard files on local disk, S3 and GCS.

Version 2 labels (depthlib.label_codec) are written; version 1 shards and
cells still read. Run: ``python -m pytest tests/test_shards.py -q -s`` (``-s``
shows the measured bytes per pixel of stored depth).
"""

from __future__ import annotations

import io
import json
import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from depthlib import shards, storage
from depthlib.label_codec import label_info
from depthlib.shards import ShardVersionError, ShardWriter
from depthlib.storage import StorageError
from fixtures_s3 import all_backends

REL_TOL = 1e-4  # version 1 encoding: relative, above hi * e^-13
METRIC_TOL = 1e-3  # version 2, metric depth: relative
DISP_TOL = 1e-4  # version 2, disparity: of the map's max


def _rel_err(decoded: np.ndarray, original: np.ndarray) -> np.ndarray:
    return np.abs(decoded.astype(np.float64) - original) / original


# --------------------------------------------------------------------------- version 1 encoding (still read)


@pytest.mark.parametrize("low, high", [(1e-3, 1e3), (1e-2, 1e3), (0.5, 80.0)])
def test_depth_round_trip_log_uniform_within_1e4_relative(low, high):
    """Relative error <= 1e-4 for every value >= lo, absolute <= hi*e^-13 below.

    16-bit codes can hold a 1e-4 relative step over at most e^13.1 (4.9e5:1);
    1e-3..1e3 spans 1e6:1, so its lowest ~6% (below hi * e^-13) is clamped.
    """
    rng = np.random.default_rng(0)
    depth = np.exp(rng.uniform(math.log(low), math.log(high), size=(240, 320)))
    data, lo, hi = shards.encode_depth(depth)
    assert len(data) == 2 * depth.size  # 2 bytes per pixel before compression
    decoded = shards.decode_depth(data, lo, hi, 240, 320)
    assert decoded.dtype == np.float32 and decoded.shape == depth.shape
    assert np.isclose(hi, depth.max(), rtol=1e-6)
    assert np.isclose(lo, max(depth.min(), depth.max() * math.exp(-13)), rtol=1e-6)
    covered = depth >= lo
    assert _rel_err(decoded[covered], depth[covered]).max() <= REL_TOL
    assert np.abs(decoded[~covered] - depth[~covered]).max(initial=0) <= hi * math.exp(-13)
    if high / low <= math.exp(13):
        assert covered.all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depth_zeros_and_nonpositive_decode_to_zero(dtype):
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 80.0, size=(64, 48)).astype(dtype)
    depth[::7, ::5] = 0.0
    depth[3, 4] = -2.0
    data, lo, hi = shards.encode_depth(depth)
    decoded = shards.decode_depth(data, lo, hi, 64, 48)
    nonpos = depth <= 0
    assert (decoded[nonpos] == 0.0).all()
    assert (decoded[~nonpos] > 0).all()
    assert _rel_err(decoded[~nonpos], depth[~nonpos].astype(np.float64)).max() <= REL_TOL


def test_depth_range_wider_than_e13_clamps_small_values_to_lo():
    depth = np.array([[1e-9, 1e-7, 1e-3], [1.0, 50.0, 1000.0]])
    data, lo, hi = shards.encode_depth(depth)
    assert np.isclose(lo, 1000.0 * math.exp(-13), rtol=1e-6)
    decoded = shards.decode_depth(data, lo, hi, 2, 3)
    big = depth >= lo
    assert _rel_err(decoded[big], depth[big]).max() <= REL_TOL
    assert np.abs(decoded[~big] - depth[~big]).max() <= hi * math.exp(-13)
    assert (decoded[~big] == np.float32(lo)).all()


def test_depth_special_maps():
    zeros = np.zeros((5, 7))
    data, lo, hi = shards.encode_depth(zeros)
    assert (lo, hi) == (0.0, 0.0)
    assert (shards.decode_depth(data, lo, hi, 5, 7) == 0).all()
    const = np.full((4, 4), 3.25)
    data, lo, hi = shards.encode_depth(const)
    assert (shards.decode_depth(data, lo, hi, 4, 4) == np.float32(3.25)).all()
    for bad in (np.nan, np.inf, -np.inf):
        arr = np.ones((3, 3))
        arr[1, 1] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            shards.encode_depth(arr)
    with pytest.raises(ValueError, match="2-D"):
        shards.encode_depth(np.ones((2, 3, 1)))
    with pytest.raises(ValueError, match="10 bytes, expected 24 for 3x4"):
        shards.decode_depth(b"\0" * 10, 1.0, 2.0, 3, 4)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (8, 8), (37, 61)])
def test_mask_round_trip_exact(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) > 0.3
    data = shards.encode_mask(mask)
    assert len(data) == math.ceil(mask.size / 8)
    assert np.array_equal(shards.decode_mask(data, *shape), mask)


# --------------------------------------------------------------------------- rows


def _synthetic_scene(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """A rendered-looking depth map in metres: floor, back wall, boxes, a sphere."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    f, cy = 0.8 * w, h / 2
    cam_height, wall = 1.6, 12.0
    ray_y = (v - cy) / f
    with np.errstate(divide="ignore"):
        floor = np.where(ray_y > 0, cam_height / ray_y, np.inf)
    depth = np.minimum(floor, wall + 0.02 * (u - w / 2) / f * wall)  # slightly slanted wall
    for _ in range(6):  # boxes: fronto-parallel planes at random depths
        d = rng.uniform(1.5, 10.0)
        bw, bh = rng.integers(w // 16, w // 4), rng.integers(h // 12, h // 4)
        x0, y0 = rng.integers(0, w - bw), rng.integers(h // 3, h - bh)
        region = (slice(y0, y0 + bh), slice(x0, x0 + bw))
        depth[region] = np.minimum(depth[region], d)
    r2 = ((u - 0.7 * w) ** 2 + (v - 0.6 * h) ** 2) / (0.12 * w) ** 2  # a sphere
    depth = np.where(r2 < 1, np.minimum(depth, 4.0 - 0.5 * np.sqrt(np.clip(1 - r2, 0, 1))), depth)
    return depth


def _png_bytes(h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _row(i: int, h: int = 48, w: int = 64, *, masked: bool = False) -> tuple[dict, np.ndarray, np.ndarray | None]:
    depth = _synthetic_scene(h, w, seed=i)
    valid = None
    if masked:
        valid = np.ones((h, w), dtype=bool)
        valid[: h // 4] = False
        depth = depth.copy()
        depth[: h // 4] = np.nan  # invalid pixels may hold anything
    row = shards.make_row(f"scene/{i:04d}.png", _png_bytes(h, w, i), None, depth,
                          depth_type="metric_depth", kind="synthetic", valid=valid,
                          provenance={"generator": "boxes", "seed": i})
    return row, depth, valid


def test_make_row_fields():
    row, depth, _ = _row(0)
    assert list(row) == shards.SHARD_SCHEMA.names
    assert row["image_format"] == "png" and (row["image_height"], row["image_width"]) == (48, 64)
    assert (row["height"], row["width"]) == (48, 64) and row["valid"] is None
    assert json.loads(row["provenance"]) == {"generator": "boxes", "seed": 0}
    masked, _, valid = _row(1, masked=True)
    assert np.array_equal(shards.decode_mask(masked["valid"], 48, 64), valid)
    everything_valid = shards.make_row("k", b"\x89PNG", "png", np.ones((2, 2)), depth_type="disparity",
                                       kind="pseudo", valid=np.ones((2, 2), bool), image_size=(2, 2))
    assert everything_valid["valid"] is None  # null means all valid
    with pytest.raises(ValueError, match="depth_type"):
        shards.make_row("k", b"", "png", np.ones((2, 2)), depth_type="depth", kind="pseudo", image_size=(2, 2))
    with pytest.raises(ValueError, match="kind"):
        shards.make_row("k", b"", "png", np.ones((2, 2)), depth_type="disparity", kind="real", image_size=(2, 2))
    table = shards.rows_to_table([row, masked])
    assert table.schema.equals(shards.SHARD_SCHEMA, check_metadata=True)
    assert table.schema.metadata[b"depthlib.shard_version"] == b"2"
    # version 2 cells; depth_lo / depth_hi are the decoded range
    for r, d, v in ((row, depth, None), (masked, *_row(1, masked=True)[1:])):
        info = label_info(r["depth"])
        assert info.kind == "metric_depth" and info.tolerance == METRIC_TOL
        decoded = shards.decode_row_depth(r)
        inside = decoded[decoded > 0]
        assert (r["depth_lo"], r["depth_hi"]) == (float(inside.min()), float(inside.max()))
    disp = shards.make_row("k", b"\x89PNG", "png", np.array([[0.0, 2.0], [1.0, 4.0]]), depth_type="disparity",
                           kind="pseudo", image_size=(2, 2), tolerance=0.1)
    assert label_info(disp["depth"]).tolerance == 0.1
    step = 2 * (0.1 - 2.0 ** -21) * 4
    assert (disp["depth_lo"], disp["depth_hi"]) == (0.0, float(np.float32(5 * step)))
    # 2.0 is 2.5000119 steps: level 3; 1.0 is 1.25 steps: level 1
    np.testing.assert_allclose(shards.decode_row_depth(disp), [[0, 3 * step], [step, 5 * step]], rtol=1e-7)


def _stored_depth_bpp(rows: list[dict]) -> float:
    """Compressed bytes of the ``depth`` column in a written shard, per label pixel."""
    pf = pq.ParquetFile(pa.BufferReader(shards.table_to_parquet_bytes(shards.rows_to_table(rows))))
    col = pf.schema_arrow.names.index("depth")
    stored = sum(pf.metadata.row_group(g).column(col).total_compressed_size
                 for g in range(pf.metadata.num_row_groups))
    return stored / sum(r["height"] * r["width"] for r in rows)


def test_stored_depth_bytes_per_pixel():
    """Version 2 stays under 1 byte per label pixel even for noisy disparity; report v1 beside it.

    Maps: the synthetic-like scene (metric, and its disparity with 0.2 % per-pixel
    noise, about a bf16 teacher's rounding) at 518 x 686.
    """
    h, w, n = 518, 686, 4
    metric, noisy, v1 = [], [], []
    for i in range(n):
        depth = _synthetic_scene(h, w, seed=i)
        disp = 1.0 / depth
        disp *= 1 + np.random.default_rng(i).normal(0, 2e-3, disp.shape)
        metric.append(shards.make_row(f"m{i}", b"-", "png", depth, depth_type="metric_depth",
                                      kind="synthetic", image_size=(h, w), provenance={}))
        noisy.append(shards.make_row(f"d{i}", b"-", "jpeg", disp, depth_type="disparity",
                                     kind="pseudo", image_size=(h, w), provenance={}))
        row = dict(noisy[-1])
        row["depth"], row["depth_lo"], row["depth_hi"] = shards.encode_depth(disp)
        v1.append(row)
        assert np.abs(shards.decode_row_depth(noisy[-1]) - disp).max() <= DISP_TOL * disp.max()
    bpp = {name: _stored_depth_bpp(rows) for name, rows in
           (("metric scene", metric), ("noisy disparity", noisy), ("noisy disparity, v1", v1))}
    print("\nstored depth bytes/pixel: " + ", ".join(f"{k} {v:.3f}" for k, v in bpp.items()))
    assert bpp["metric scene"] <= 0.1
    assert bpp["noisy disparity"] <= 1.0 < bpp["noisy disparity, v1"]


# --------------------------------------------------------------------------- files


@all_backends
def test_shard_round_trip_through_writer(storage_root):
    prefix = storage.join(storage_root.uri, "shards")
    expected = {}
    # ~10 KB per row, 25 KB target: a new file every 3 rows.
    with ShardWriter(prefix, target_bytes=25_000, name_prefix="part", s3=storage_root.s3) as writer:
        for i in range(7):
            row, depth, valid = _row(i, masked=(i % 2 == 1))
            expected[row["key"]] = (row, depth, valid)
            writer.add(row)
    written = writer.close()
    assert written == [storage.join(prefix, f"part-{i:05d}.parquet") for i in range(3)]
    assert shards.list_shards(prefix, s3=storage_root.s3) == written

    seen = []
    for uri in written:
        table = shards.read_shard(uri, s3=storage_root.s3)
        assert table.schema.remove_metadata().equals(shards.SHARD_SCHEMA.remove_metadata())
        for rec in table.to_pylist():
            sample = shards.decode_sample(rec)
            row, depth, valid = expected[sample.key]
            seen.append(sample.key)
            assert sample.image.dtype == np.uint8 and sample.image.shape == (48, 64, 3)
            original = np.asarray(Image.open(io.BytesIO(row["image"])).convert("RGB"))
            assert np.array_equal(sample.image, original)
            assert rec["image"] == row["image"]  # bytes exactly as given
            mask = np.ones_like(sample.valid) if valid is None else valid
            assert np.array_equal(sample.valid, mask)
            assert _rel_err(sample.depth[mask], depth[mask]).max() <= METRIC_TOL
            assert (sample.depth[~mask] == 0).all()
            assert sample.depth_type == "metric_depth" and sample.kind == "synthetic"
            assert sample.provenance["seed"] == int(sample.key[6:10])
    assert sorted(seen) == sorted(expected)


@all_backends
def test_write_shard_and_ray_style_read(storage_root):
    rows = [_row(i)[0] for i in range(3)]
    uri = storage.join(storage_root.uri, "one.parquet")
    assert shards.write_shard(rows, uri, s3=storage_root.s3) == uri
    fs, path = storage.filesystem(uri, storage_root.s3)
    table = pq.read_table(path, filesystem=fs)  # what ray.data.read_parquet does
    assert table.column("key").to_pylist() == [r["key"] for r in rows]
    pf = pq.ParquetFile(path, filesystem=fs)
    assert shards.check_shard_metadata(pf.metadata.metadata, uri) == 2
    depth_col = pf.schema_arrow.names.index("depth")
    # v2 cells carry their own zstd and images are JPEG/PNG bytes: Parquet compresses neither again
    assert pf.metadata.row_group(0).column(depth_col).compression == "UNCOMPRESSED"
    assert pf.metadata.row_group(0).column(pf.schema_arrow.names.index("image")).compression == "UNCOMPRESSED"
    assert pf.metadata.row_group(0).column(pf.schema_arrow.names.index("provenance")).compression == "ZSTD"
    for rec, row in zip(table.to_pylist(), rows):
        assert rec["depth"] == row["depth"]


def _write_v1_shard(rows: list[dict], uri: str, s3=None) -> None:
    """A shard exactly as the version 1 writer made it: raw log-uint16 cells, zstd, version "1"."""
    table = shards.rows_to_table(rows).replace_schema_metadata({b"depthlib.shard_version": b"1"})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=64,
                   write_statistics=["key", "height", "width", "image_height", "image_width"])
    storage.write_bytes(uri, sink.getvalue(), s3=s3)


def _v1_row(i: int, *, masked: bool = False) -> tuple[dict, np.ndarray, np.ndarray | None]:
    row, depth, valid = _row(i, masked=masked)
    stored = depth if valid is None else np.where(valid, depth, 0.0)
    row = dict(row)
    row["depth"], row["depth_lo"], row["depth_hi"] = shards.encode_depth(stored)
    return row, depth, valid


def test_v1_cell_by_hand():
    """lo = hi = 2: code 0 is exactly 0, 65535 is hi; a v1 cell is exactly 2*H*W bytes."""
    row = {"key": "k", "depth": b"\x00\x00\xff\xff\xff\xff\xff\xff", "depth_lo": 2.0, "depth_hi": 2.0,
           "depth_type": "metric_depth", "height": 2, "width": 2}
    np.testing.assert_array_equal(shards.decode_row_depth(row), [[0.0, 2.0], [2.0, 2.0]])
    assert shards.encode_depth(np.array([[0.0, 2.0], [2.0, 2.0]])) == (row["depth"], 2.0, 2.0)


@all_backends
def test_v1_shard_still_decodes(storage_root):
    """A version 1 file (as written before version 2) reads, validates and decodes with v1 precision."""
    rows = [_v1_row(i, masked=(i == 1)) for i in range(3)]
    uri = storage.join(storage_root.uri, "v1", "shard-00000.parquet")
    _write_v1_shard([r for r, _, _ in rows], uri, s3=storage_root.s3)
    assert shards.list_shards(storage.join(storage_root.uri, "v1"), s3=storage_root.s3) == [uri]
    fs, path = storage.filesystem(uri, storage_root.s3)
    pf = pq.ParquetFile(path, filesystem=fs)  # what a training pipeline does per file
    assert shards.check_shard_metadata(pf.metadata.metadata, uri) == 1
    records = [rec for g in range(pf.num_row_groups) for rec in pf.read_row_group(g).to_pylist()]
    assert records == shards.read_shard(uri, s3=storage_root.s3).to_pylist()
    for rec, (row, depth, valid) in zip(records, rows):
        assert len(rec["depth"]) == 2 * 48 * 64
        sample = shards.decode_sample(rec)
        mask = np.ones((48, 64), bool) if valid is None else valid
        assert np.array_equal(sample.valid, mask)
        assert _rel_err(sample.depth[mask], depth[mask]).max() <= REL_TOL
        assert sample.key == row["key"] and sample.depth_type == "metric_depth"


def test_mixed_cells_and_rewritten_v1_tables():
    """A v2 file may hold v1 cells (copied rows): they decode, and Parquet keeps compressing them."""
    v1_row, v1_depth, _ = _v1_row(0)
    v2_row, v2_depth, _ = _row(1)
    buf = shards.table_to_parquet_bytes(shards.rows_to_table([v1_row, v2_row]))
    pf = pq.ParquetFile(pa.BufferReader(buf))
    assert shards.check_shard_metadata(pf.metadata.metadata, "mixed") == 2
    assert pf.metadata.row_group(0).column(pf.schema_arrow.names.index("depth")).compression == "ZSTD"
    a, b = (shards.decode_sample(r) for r in pf.read().to_pylist())
    assert _rel_err(a.depth, v1_depth).max() <= REL_TOL and _rel_err(b.depth, v2_depth).max() <= METRIC_TOL
    # a table read from a v1 file and written again stays marked version 1
    v1_table = shards.rows_to_table([v1_row]).replace_schema_metadata({b"depthlib.shard_version": b"1"})
    again = pq.ParquetFile(pa.BufferReader(shards.table_to_parquet_bytes(v1_table)))
    assert shards.check_shard_metadata(again.metadata.metadata, "again") == 1


def test_damaged_or_mislabelled_cells_are_refused():
    row = dict(_row(0)[0])
    with pytest.raises(ValueError, match="depth_type is 'disparity' but its label blob holds 'metric_depth'"):
        shards.decode_row_depth({**row, "depth_type": "disparity"})
    with pytest.raises(ValueError, match="CRC"):
        shards.decode_sample({**row, "depth": row["depth"][:-1] + bytes([row["depth"][-1] ^ 1])})
    with pytest.raises(ValueError, match="not a depthlib label blob"):
        shards.decode_sample({**row, "depth": b"\0" * 17})
    with pytest.raises(ValueError, match="expected 48x65"):
        shards.decode_sample({**row, "width": 65})


@all_backends
def test_unknown_or_missing_shard_version_is_refused(storage_root):
    table = shards.rows_to_table([_row(0)[0]])
    future = storage.join(storage_root.uri, "future.parquet")
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata({b"depthlib.shard_version": b"3"}), sink)
    storage.write_bytes(future, sink.getvalue())
    with pytest.raises(ShardVersionError, match=r"future\.parquet has shard version '3'.*supports versions 1 and 2"):
        shards.read_shard(future)
    for version in (b"1", b"2"):
        assert shards.check_shard_metadata({b"depthlib.shard_version": version}, "f") == int(version)
    with pytest.raises(ShardVersionError, match="version '2.0'"):
        shards.check_shard_metadata({b"depthlib.shard_version": b"2.0"}, "f")

    plain = storage.join(storage_root.uri, "plain.parquet")
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(None), sink)
    storage.write_bytes(plain, sink.getvalue())
    with pytest.raises(ShardVersionError, match=r"plain\.parquet is not a depthlib shard"):
        shards.read_shard(plain)


def test_failed_local_shard_write_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(RuntimeError):
        with ShardWriter(str(tmp_path / "s"), target_bytes=1) as writer:
            writer.add(_row(0)[0])
    assert shards.list_shards(str(tmp_path / "s")) == []
    assert list((tmp_path / "s").iterdir()) == []

    # An exception inside the block does not commit the rows buffered so far.
    monkeypatch.undo()
    with pytest.raises(KeyError):
        with ShardWriter(str(tmp_path / "t")) as writer:
            writer.add(_row(0)[0])
            raise KeyError("producer failed")
    assert shards.list_shards(str(tmp_path / "t")) == []


@pytest.mark.s3
def test_server_killed_mid_write_never_leaves_a_readable_partial_shard(monkeypatch):
    """Kill a private S3 server during a single PUT and during a multipart upload."""
    from fixtures_s3 import WeedServer, weed_binary

    if weed_binary() is None:
        pytest.skip("weed is not installed")
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 3)
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 6 * 2**20)
    monkeypatch.setattr(storage, "PART_SIZE", 5 * 2**20)
    server = WeedServer().start()
    try:
        cfg = server.s3_config
        bucket = server.new_bucket("crash")
        client = storage.s3_client(cfg)
        prefix = f"s3://{bucket}/shards"
        big_rows = [shards.make_row(f"k{i}", np.random.default_rng(i).bytes(2**20), "png",
                                    _synthetic_scene(48, 64, i), depth_type="disparity", kind="pseudo",
                                    image_size=(48, 64), provenance={}) for i in range(12)]

        for event, rows in (("before-send.s3.PutObject", big_rows[:2]),
                            ("before-send.s3.UploadPart", big_rows)):
            parts_sent = []

            def kill_server(request, **kwargs):
                parts_sent.append(request.url)
                if len(parts_sent) == 2 or event.endswith("PutObject"):
                    server.kill()

            client.meta.events.register(event, kill_server)
            start = time.monotonic()
            try:
                with pytest.raises(StorageError):
                    with ShardWriter(prefix, s3=cfg) as writer:
                        for row in rows:
                            writer.add(row)
            finally:
                client.meta.events.unregister(event, kill_server)
            assert time.monotonic() - start < 30, "the failure took too long to surface"

            server.start()  # same data directory and ports
            final = f"{prefix}/shard-00000.parquet"
            if storage.exists(final, s3=cfg):  # allowed only if it is complete
                assert shards.read_shard(final, s3=cfg).num_rows == len(rows)
            else:
                assert shards.list_shards(prefix, s3=cfg) == []
            # After the restart the same write simply works.
            with ShardWriter(prefix, s3=cfg) as writer:
                for row in rows:
                    writer.add(row)
            assert shards.read_shard(final, s3=cfg).num_rows == len(rows)
            storage.delete(final, s3=cfg)
    finally:
        server.cleanup()


@pytest.mark.gcs
def test_gcs_server_killed_mid_upload_never_leaves_a_readable_partial_shard(monkeypatch):
    """Kill a private GCS API server in the middle of a 12 MiB shard's resumable upload."""
    from fixtures_gcs import FakeGcsServer, KillingProxy, fake_gcs_binary

    if fake_gcs_binary() is None:
        pytest.skip("fake-gcs-server is not installed")
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 2)
    monkeypatch.setattr(storage, "GCS_RETRY_TIME_LIMIT_S", 1.0)
    server = FakeGcsServer().start()
    proxy = KillingProxy(server.port, on_threshold=server.kill, kill_after=6 * 2**20)
    try:
        cfg = storage.S3Config(gcs=storage.GcsConfig(endpoint_url=proxy.endpoint_url, anonymous=True))
        bucket = server.new_bucket("crash")
        prefix = f"gs://{bucket}/shards"
        rows = [shards.make_row(f"k{i}", np.random.default_rng(i).bytes(2**20), "png",
                                _synthetic_scene(48, 64, i), depth_type="disparity", kind="pseudo",
                                image_size=(48, 64), provenance={}) for i in range(12)]
        start = time.monotonic()
        with pytest.raises(StorageError):
            with ShardWriter(prefix, s3=cfg) as writer:
                for row in rows:
                    writer.add(row)
        assert proxy.fired.is_set()  # killed during the upload, not before it
        assert time.monotonic() - start < 30, "the failure took too long to surface"

        server.start()  # same data directory and port
        cfg = server.s3_config  # straight to the server from here on
        final = f"{prefix}/shard-00000.parquet"
        if storage.exists(final, s3=cfg):  # allowed only if it is complete
            assert shards.read_shard(final, s3=cfg).num_rows == len(rows)
        else:
            assert shards.list_shards(prefix, s3=cfg) == []
        # After the restart the same write simply works.
        with ShardWriter(prefix, s3=cfg) as writer:
            for row in rows:
                writer.add(row)
        assert shards.read_shard(final, s3=cfg).num_rows == len(rows)
    finally:
        proxy.close()
        server.cleanup()

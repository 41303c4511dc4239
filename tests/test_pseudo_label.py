"""The pseudo-labelling job end to end, on a local directory and a real S3 server.

The input bucket holds good images of several sizes and modes and every kind
of bad input the job must survive; a tiny teacher keeps it fast. Checked:
exact counts in labels/ and errors/, labels equal to calling the model
directly, and a run killed part-way then resumed gives every key once.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
from PIL import Image

from depthlib import shards, storage
from depthlib.images import decode_image
from depthlib.inference import run_batch
from depthlib.label_codec import label_info
from depthlib.models import load_released
from depthlib.pseudo_label import DecodePartition, PseudoLabelConfig, run_pseudo_label
from depthlib.pseudo_label import plan as plan_mod
from depthlib.pseudo_label.stages import model_input, pixels_to_model
from fixtures_s3 import all_backends

ROOT = Path(__file__).resolve().parents[1]
INPUT_SIZE = 70  # 5 patches: keeps the tiny teacher fast


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (2 + c) + y * (3 - c) + rng.integers(0, 255)) % 256 for c in range(3)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8))


def _corrupt_png() -> bytes:
    """A PNG whose compressed pixel data is overwritten: the header reads, the pixels do not."""
    data = bytearray(_enc(_photo(64, 64, 11), "PNG"))
    start = data.index(b"IDAT") + 40
    data[start:start + 200] = bytes(200)
    return bytes(data)


def make_bucket() -> tuple[dict[str, bytes], dict[str, str]]:
    """(objects by key, expected skip reason by key for the bad ones)."""
    good = {
        "rgb/a.jpg": _enc(_photo(60, 80, 1), "JPEG"),
        "rgb/b.png": _enc(_photo(100, 50, 2), "PNG"),
        "rgb/c.jpg": _enc(_photo(60, 80, 3), "JPEG"),  # same shape as a.jpg: batched together
        "modes/gray.png": _enc(_photo(64, 64, 4).convert("L"), "PNG"),
        "modes/palette.png": _enc(_photo(50, 90, 5).convert("P"), "PNG"),
        "modes/rgba.png": _enc(_photo(48, 48, 6).convert("RGBA"), "PNG"),
        "modes/gray16.png": _enc(Image.fromarray((np.arange(56 * 70).reshape(56, 70) * 13).astype(np.uint16)), "PNG"),
        "modes/cmyk.jpg": _enc(_photo(40, 40, 7).convert("CMYK"), "JPEG"),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: a 40x90 (w x h) file is a 90x40 picture
    good["modes/exif_rotated.jpg"] = _enc(_photo(40, 90, 8), "JPEG", exif=exif)
    bomb = _enc(Image.new("L", (12000, 12000)), "PNG")
    bad = {
        "bad/zero.jpg": (b"", "empty"),
        "bad/text.jpg": (b"this is not an image\n" * 20, "not_an_image"),
        "bad/truncated.png": (_enc(_photo(80, 80, 9), "PNG")[:400], "truncated"),
        "bad/corrupt.png": (_corrupt_png(), "corrupt"),
        "bad/truncated.jpg": (_enc(_photo(80, 80, 12), "JPEG")[:-300], "truncated"),
        "bad/garbage_after_jpeg_marker.jpg": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2, "not_an_image"),
        "bad/tiny.png": (_enc(_photo(10, 10, 10), "PNG"), "too_small"),
        "bad/bomb.png": (bomb, "too_large"),
    }
    objects = dict(good)
    objects.update({k: v for k, (v, _) in bad.items()})
    return objects, {k: r for k, (_, r) in bad.items()}


@pytest.fixture(scope="module")
def teacher(tiny_checkpoint) -> str:
    """The tiny teacher every test here labels with (the session's ``tiny_checkpoint``)."""
    return tiny_checkpoint


def _upload(root: str, objects: dict[str, bytes]) -> str:
    input_uri = storage.join(root, "images")
    for k, v in objects.items():
        storage.write_bytes(storage.join(input_uri, k), v)
    return input_uri


def _config(input_uri, output, teacher, **kw) -> PseudoLabelConfig:
    base = dict(input=input_uri, output=output, checkpoint=teacher, encoder="tiny", input_size=INPUT_SIZE,
                batch_size=4, partition_size=3, partitions_per_wave=4, max_pixels=50_000_000, samples=4)
    base.update(kw)
    return PseudoLabelConfig(**base)


def _dataset(uri: str):
    """The output as a user opens it: ``pyarrow.dataset.dataset(URI)`` (for S3 the
    endpoint and keys come from the standard ``AWS_*`` variables the fixture sets).
    pyarrow does not read ``STORAGE_EMULATOR_HOST``: for gs:// the filesystem comes
    from depthlib.storage, as a user of an emulator would pass it."""
    if storage.is_gcs(uri):
        fs, path = storage.filesystem(uri)
        return pads.dataset(path, filesystem=fs, format="parquet")
    return pads.dataset(uri, format="parquet")


def test_decode_partition_reports_reasons_without_ray(tmp_path):
    objects, bad = make_bucket()
    input_uri = _upload(str(tmp_path), objects)
    keys = sorted(objects) + ["missing/never-written.jpg"]
    stage = DecodePartition(input_uri, INPUT_SIZE, max_pixels=50_000_000, group_rows=4)
    batches = list(stage({"pid": np.array([0]), "keys": np.array([np.array(keys, dtype=object)], dtype=object)}))
    rows = {k: (e, h, w) for b in batches for k, e, h, w in zip(b["key"], b["error"], b["in_h"], b["in_w"])}
    assert set(rows) == set(keys)
    for k, reason in bad.items():
        assert rows[k][0] == reason, (k, rows[k])
    assert rows["missing/never-written.jpg"][0] == "read_error"
    for k in objects:
        if k not in bad:
            assert rows[k][0] == "" and rows[k][1] % 14 == 0 and min(rows[k][1], rows[k][2]) == INPUT_SIZE
    # EXIF orientation applied: the rotated picture is taller than wide.
    assert rows["modes/exif_rotated.jpg"][1] > rows["modes/exif_rotated.jpg"][2]
    # every batch holds one input shape
    for b in batches:
        assert len({(h, w) for h, w in zip(b["in_h"], b["in_w"])}) == 1


def test_fast_preprocessing_and_reduced_decode_without_ray(tmp_path):
    """``fast`` ships uint8 pixels close to the released float path; ``reduced_decode`` decodes a
    large JPEG at a DCT scale >= 2x the model's size, yet records the image's own (EXIF) size
    and gives the model the same input shape."""
    from depthlib.images import decode_image_reduced
    from depthlib.pseudo_label.stages import decode_at_least, model_input, stack_pixels

    exif = Image.Exif()
    exif[0x0112] = 6  # stored 640 wide x 400 high, shown 400 x 640
    big = _enc(_photo(400, 640, 3), "JPEG", exif=exif, quality=95)
    full, hw = decode_image_reduced(big)
    reduced, hw_reduced = decode_image_reduced(big, at_least=decode_at_least(INPUT_SIZE))
    assert hw == hw_reduced == (640, 400) == full.shape[:2]
    assert reduced.shape[:2] == (320, 200)  # 1/2 scale: 1/4 would fall below 2 x the model's 112 x 70
    assert decode_image_reduced(_enc(_photo(400, 640, 3), "PNG"), at_least=decode_at_least(INPUT_SIZE))[0].shape[:2] \
        == (400, 640)  # not a JPEG: always full size

    released = model_input(full, INPUT_SIZE)
    fast = model_input(full, INPUT_SIZE, "fast")
    drafted = model_input(reduced, INPUT_SIZE, "fast", hw)
    assert released.dtype == np.float32 and fast.dtype == drafted.dtype == np.uint8
    assert released.shape == fast.shape == drafted.shape == (3, 112, 70)
    restored = pixels_to_model(fast[None])[0].numpy()
    # in normalised units (1/255 of a level is 0.017): mean 0.006 measured; the largest, 0.27, where the
    # float path's bicubic overshoot leaves 0..255 and uint8 clips it
    assert np.abs(restored - released).mean() < 0.01 and np.abs(restored - released).max() < 0.35
    with pytest.raises(ValueError, match="full size"):
        model_input(reduced, INPUT_SIZE, "released", hw)
    both = stack_pixels([fast.tobytes(), fast.tobytes()], 112, 70)
    assert both.dtype == np.uint8 and both.shape == (2, 3, 112, 70)
    assert stack_pixels([released.tobytes()], 112, 70).dtype == np.float32
    with pytest.raises(ValueError, match="not a 3 x 112 x 70"):
        stack_pixels([b"x" * 5], 112, 70)
    with pytest.raises(ValueError, match="not a 3 x 112 x 70 uint8"):  # one batch, one format
        stack_pixels([fast.tobytes(), released.tobytes()], 112, 70)
    with pytest.raises(ValueError, match="float32 .* not a 3 x 112 x 70 uint8"):
        stack_pixels([fast, released], 112, 70)
    assert np.array_equal(stack_pixels([fast, fast], 112, 70), both)
    stage = DecodePartition(str(tmp_path), INPUT_SIZE, 50_000_000, preprocessing="fast", reduced_decode=True)
    (tmp_path / "big.jpg").write_bytes(big)
    batch = next(stage({"pid": np.array([0]), "keys": np.array([np.array(["big.jpg"], dtype=object)], dtype=object)}))
    assert (batch["image_h"][0], batch["image_w"][0], batch["in_h"][0], batch["in_w"][0]) == (640, 400, 112, 70)
    assert batch["pixels"].shape == (1, 3, 112, 70) and batch["pixels"].dtype == np.uint8  # a tensor column
    with pytest.raises(ValueError, match="fast preprocessing"):
        DecodePartition(str(tmp_path), INPUT_SIZE, 50_000_000, reduced_decode=True)


def test_model_inputs_reach_the_model_without_copies_and_give_the_same_labels(teacher):
    """A fixed-shape tensor column reaches the model as slices of itself (no per-row copy); rows
    around a skipped one, or rows of two shapes, take the per-row path; both give the same labels."""
    from depthlib.pseudo_label.stages import LabelActor, NO_LABEL, stack_pixels, tensor_column

    rng = np.random.default_rng(0)
    same = rng.integers(0, 256, (6, 3, 70, 84), dtype=np.uint8)
    assert tensor_column(same) is same
    assert np.shares_memory(stack_pixels(same[1:4], 70, 84), same)
    with pytest.raises(ValueError, match="not a 3 x 70 x 98 uint8 or float32"):
        stack_pixels(same, 70, 98)
    with pytest.raises(ValueError, match="int16"):
        stack_pixels(same.astype(np.int16), 70, 84)

    actor = LabelActor(teacher, "tiny", dtype="fp32", batch_size=4)
    seen = []
    forward = actor.forward
    actor.forward = lambda x: (seen.append(x), forward(x))[1]

    def batch(pixels, errors):
        n = len(pixels)
        return {"key": np.array([f"k{i}" for i in range(n)], dtype=object), "pixels": pixels,
                "in_h": np.array([p.shape[1] for p in pixels]), "in_w": np.array([p.shape[2] for p in pixels]),
                "error": np.array(errors, dtype=object), "detail": np.array([""] * n, dtype=object)}

    fast = actor(batch(same, [""] * 6))
    assert [x.shape[0] for x in seen] == [4, 2] and all(np.shares_memory(x, same) for x in seen)
    expected = actor.infer(same)
    assert fast["label"].shape == (6, 70, 84) and np.array_equal(fast["label"], expected)
    # a skipped row in the middle: the rows around it are not consecutive, so they are gathered
    seen.clear()
    mixed = list(same[:3]) + [np.zeros((3, 0, 0), np.uint8)] + list(same[3:])
    out = actor(batch(tensor_column(mixed), ["", "", "", "decode_error", "", "", ""]))
    assert not any(np.shares_memory(x, same) for x in seen)
    labels = list(out["label"])
    assert labels[3].shape == NO_LABEL.shape and out["error"][3] == "decode_error"
    # other pass sizes (4 + 2 rows here, 3 + 3 before): equal up to float32 summation order
    assert all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(labels[:3] + labels[4:], expected))


@all_backends
def test_pseudo_label_counts_and_values(ray_session, storage_root, teacher):
    root = storage_root.uri
    objects, bad = make_bucket()
    input_uri = _upload(root, objects)
    output = storage.join(root, "out")
    summary = run_pseudo_label(_config(input_uri, output, teacher))

    n_good = len(objects) - len(bad)
    assert summary["images_seen"] == len(objects)
    assert summary["labelled"] == n_good and summary["skipped"] == len(bad)
    assert summary["skipped_by_reason"] == {r: list(bad.values()).count(r) for r in set(bad.values())}

    labels_ds = _dataset(plan_mod.labels_dir(output))
    labels = labels_ds.to_table()
    errors = _dataset(plan_mod.errors_dir(output)).to_table()
    for fragment in labels_ds.get_fragments():  # every label file is shard version 2
        assert shards.check_shard_metadata(fragment.metadata.metadata, fragment.path) == 2
    assert sorted(labels.column("key").to_pylist()) == sorted(k for k in objects if k not in bad)
    assert dict(zip(errors.column("key").to_pylist(), errors.column("reason").to_pylist())) == bad
    assert json.loads(storage.read_bytes(storage.join(output, "summary.json")))["labelled"] == n_good
    assert any(True for _ in storage.list_objects(storage.join(output, "samples"), suffixes=(".png",)))

    # Labels equal the model called directly on the same image (the job's `fast` preprocessing:
    # uint8 resize, normalised by the model's side), within the shard precision: version 2
    # disparity cells, within 1e-4 of the image's maximum.
    model = load_released(teacher, "tiny")
    for row in labels.to_pylist():
        assert label_info(row["depth"]).kind == "disparity" and len(row["depth"]) != 2 * row["height"] * row["width"]
        sample = shards.decode_sample(row)
        assert row["image"] == objects[row["key"]]  # source bytes travel unchanged
        assert sample.image.shape[:2] == (row["image_height"], row["image_width"])  # EXIF-rotated size
        x = pixels_to_model(model_input(decode_image(objects[row["key"]]), INPUT_SIZE, "fast")[None])
        direct = run_batch(model, x, "fp32")[0].numpy()
        assert sample.depth.shape == direct.shape == (row["height"], row["width"])
        # (+1e-6: a batch of 4 and a batch of 1 differ by ~4e-7 of the max in float32)
        assert np.abs(sample.depth - direct).max() <= (1e-4 + 1e-6) * np.abs(direct).max()
        assert sample.depth_type == "disparity" and sample.kind == "pseudo"
        assert sample.provenance["teacher"] == "tiny.pth"

    # A second run finds everything done and labels nothing again.
    again = run_pseudo_label(_config(input_uri, output, teacher))
    assert again["this_run"]["labelled"] == 0 and again["labelled"] == n_good
    assert _dataset(plan_mod.labels_dir(output)).count_rows() == n_good


def test_changed_settings_refuse_to_mix_runs(ray_session, tmp_path, teacher):
    objects, _ = make_bucket()
    input_uri = _upload(str(tmp_path), dict(list(objects.items())[:3]))
    out = str(tmp_path / "out")
    run_pseudo_label(_config(input_uri, out, teacher))
    with pytest.raises(ValueError, match="other settings"):
        run_pseudo_label(_config(input_uri, out, teacher, partition_size=7))


def test_killed_run_resumes_without_duplicates(ray_session, tmp_path, teacher):
    """Kill the driver (SIGKILL) once some partitions are committed, then resume."""
    rng = np.random.default_rng(0)
    objects = {f"img/{i:03d}.png": _enc(_photo(int(rng.integers(40, 90)), int(rng.integers(40, 90)), i), "PNG")
               for i in range(40)}
    objects["img/zz_bad.jpg"] = b"garbage"
    input_uri = _upload(str(tmp_path), objects)
    out = str(tmp_path / "out")
    args = ["--input", input_uri, "--output", out, "--checkpoint", teacher, "--encoder", "tiny",
            "--input-size", str(INPUT_SIZE), "--batch-size", "2", "--partition-size", "2",
            "--partitions-per-wave", "8", "--samples", "0"]
    import ray

    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "ray_jobs/pseudo_label.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    done_dir = Path(out) / "_done"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if done_dir.is_dir() and len(list(done_dir.glob("*.json"))) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: json.loads(p.read_text()) for p in done_dir.glob("*.json")}
    assert 3 <= len(before) < 21

    summary = run_pseudo_label(PseudoLabelConfig(
        input=input_uri, output=out, checkpoint=teacher, encoder="tiny", input_size=INPUT_SIZE,
        batch_size=2, partition_size=2, partitions_per_wave=8, samples=0))
    after = {p.name: json.loads(p.read_text()) for p in done_dir.glob("*.json")}
    assert len(after) == 21
    for name, rec in before.items():  # finished work was kept, not redone
        assert after[name] == rec
    keys = pads.dataset(str(Path(out) / "labels"), format="parquet").to_table(columns=["key"]).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 40
    assert summary["labelled"] == 40 and summary["skipped_by_reason"] == {"not_an_image": 1}
    assert summary["this_run"]["labelled"] == 40 - sum(r["n_labels"] for r in before.values())


def test_uncommitted_files_are_removed_on_resume(ray_session, tmp_path, teacher):
    objects, _ = make_bucket()
    small = {k: objects[k] for k in ("rgb/a.jpg", "rgb/b.png", "bad/tiny.png", "bad/zero.jpg")}
    input_uri = _upload(str(tmp_path), small)
    out = str(tmp_path / "out")
    # A leftover piece of partition 0 from an interrupted run, never committed.
    stale = storage.join(plan_mod.labels_dir(out), plan_mod.piece_name(0, "deadbeef"))
    storage.write_bytes(stale, b"half a file")
    run_pseudo_label(_config(input_uri, out, teacher, partition_size=2))
    assert not storage.exists(stale)
    keys = pads.dataset(str(Path(out) / "labels"), format="parquet").to_table(columns=["key"]).column("key").to_pylist()
    errs = pads.dataset(str(Path(out) / "errors"), format="parquet").to_table(columns=["key"]).column("key").to_pylist()
    assert sorted(keys + errs) == sorted(small)


def test_retried_pieces_are_deduplicated_or_flagged(tmp_path):
    """Records from retried writer tasks: the same file twice is ignored, a full
    duplicate under another name is deleted, a partial overlap marks a conflict."""
    from depthlib.pseudo_label.job import _absorb, _PartitionProgress

    out = str(tmp_path)

    def rec(keys, file, errors=()):
        return {"pid": 0, "file": file, "n_labels": len(keys) - len(errors), "keys": json.dumps(sorted(keys)),
                "errors": json.dumps(list(errors)), "label_bytes": 10}

    for name in ("p000000-aaaa.parquet", "p000000-bbbb.parquet"):
        storage.write_bytes(storage.join(plan_mod.labels_dir(out), name), b"x")
    p = _PartitionProgress({"a", "b", "c"})
    _absorb(p, rec({"a", "b"}, "p000000-aaaa.parquet"), out)
    _absorb(p, rec({"a", "b"}, "p000000-aaaa.parquet"), out)  # same piece reported twice
    assert p.n_labels == 2 and p.files == {"p000000-aaaa.parquet"}
    _absorb(p, rec({"a", "b"}, "p000000-bbbb.parquet"), out)  # same keys, other grouping
    assert p.n_labels == 2 and not storage.exists(storage.join(plan_mod.labels_dir(out), "p000000-bbbb.parquet"))
    _absorb(p, rec({"c"}, "", errors=[{"key": "c", "reason": "empty", "detail": ""}]), out)
    assert p.covered == p.expected and not p.conflict and len(p.errors) == 1
    q = _PartitionProgress({"a", "b", "c"})
    _absorb(q, rec({"a", "b"}, "p000000-aaaa.parquet"), out)
    _absorb(q, rec({"b", "c"}, "p000000-cccc.parquet"), out)
    assert q.conflict


def test_killed_actor_is_replaced_and_nothing_is_lost(ray_session, tmp_path, teacher):
    """SIGKILL the labelling actor's process mid-run: Ray restarts it, the job finishes exactly once."""
    import threading

    import psutil

    rng = np.random.default_rng(1)
    objects = {f"img/{i:03d}.png": _enc(_photo(int(rng.integers(40, 90)), int(rng.integers(40, 90)), i), "PNG")
               for i in range(30)}
    input_uri = _upload(str(tmp_path), objects)
    out = str(tmp_path / "out")
    killed = []

    def kill_actor_once():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if len(list((Path(out) / "_done").glob("*.json"))) >= 2:
                for proc in psutil.process_iter(["cmdline"]):
                    if any("LabelActor" in part for part in (proc.info["cmdline"] or [])):
                        proc.kill()
                        killed.append(proc.pid)
                        return
            time.sleep(0.1)

    t = threading.Thread(target=kill_actor_once, daemon=True)
    t.start()
    summary = run_pseudo_label(_config(input_uri, out, teacher, partition_size=2, batch_size=2, samples=0))
    t.join()
    assert killed, "the labelling actor was never found"
    keys = pads.dataset(str(Path(out) / "labels"), format="parquet").to_table(columns=["key"]).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 30 and summary["labelled"] == 30


def test_manifest_selects_keys_once(ray_session, tmp_path, teacher):
    """A text manifest with a repeated key and a missing object: each listed key once, the missing one skipped."""
    objects, _ = make_bucket()
    input_uri = _upload(str(tmp_path), objects)
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("# wanted\nrgb/a.jpg\nmodes/gray.png\nrgb/a.jpg\n\nnot/there.png\n")
    out = str(tmp_path / "out")
    summary = run_pseudo_label(_config(input_uri, out, teacher, manifest=str(manifest)))
    assert summary["images_seen"] == 3 and summary["labelled"] == 2
    assert summary["skipped_by_reason"] == {"read_error": 1}
    keys = pads.dataset(str(Path(out) / "labels"), format="parquet").to_table(columns=["key"]).column("key").to_pylist()
    assert sorted(keys) == ["modes/gray.png", "rgb/a.jpg"]

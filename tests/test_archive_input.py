"""Tar archives and Parquet files as labelling input (``depthlib.archives``).

One input prefix holds every kind of container the job reads: a plain tar with
SA-1B's ``.json`` beside each image and a corrupt member, a ``.tar.gz``, a tar
of tars (ImageNet-21K), a tar cut off inside a member, a Parquet file with Hugging
Face's ``{bytes, path}`` image struct (one row without bytes), one with a plain
binary column, LSUN's LMDB (``data.mdb`` and its ``lock.mdb``), and a loose image. Checked: the entries and their bytes without
Ray, then the job on a local directory and on a real S3 server (ranged reads of
the plain tar, a streamed read of the gzip one): every image once with its
bytes unchanged, every bad entry a skip with its reason; and a driver killed
part-way resumes without duplicates or losses.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from depthlib import storage
from depthlib.archives import sources
from depthlib.archives.stage import DecodeContainers, container_items
from depthlib.pseudo_label import PseudoLabelConfig, run_pseudo_label
from depthlib.pseudo_label import plan as plan_mod

ROOT = Path(__file__).resolve().parents[1]
INPUT_SIZE = 28  # 2 patches: the tiny teacher on 32x24 photos


def _jpeg(seed: int, h: int = 24, w: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _tar(members: list[tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("a_folder")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
    return buf.getvalue()


def _parquet(column: pa.Array, row_group_size: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"image": column, "label": pa.array(range(len(column)))}), buf,
                   row_group_size=row_group_size)
    return buf.getvalue()


def lmdb_files(items: dict[bytes, bytes], **open_kw) -> tuple[bytes, bytes]:
    """(``data.mdb``, ``lock.mdb``) of an LMDB holding ``items``, written by the ``lmdb`` package."""
    import tempfile

    import lmdb

    with tempfile.TemporaryDirectory() as d:
        env = lmdb.open(d, map_size=1 << 26, **open_kw)
        with env.begin(write=True) as txn:
            for k, v in items.items():
                txn.put(k, v)
        env.close()
        return (Path(d) / "data.mdb").read_bytes(), (Path(d) / "lock.mdb").read_bytes()


def make_containers() -> tuple[dict[str, bytes], dict[str, bytes], dict[str, str]]:
    """(objects to upload, expected image bytes by key, expected skip reason by key)."""
    objects: dict[str, bytes] = {}
    good: dict[str, bytes] = {}
    bad: dict[str, str] = {}

    sa = []
    for i in range(1, 4):
        sa += [(f"sa_{i}.jpg", _jpeg(i)), (f"sa_{i}.json", b'{"annotations": []}')]
        good[f"sa1b/sa_000000.tar/sa_{i}.jpg"] = _jpeg(i)
    sa.append(("./sa_4.jpg", _jpeg(4)[:-200]))  # truncated image bytes ("./" is dropped from the key)
    bad["sa1b/sa_000000.tar/sa_4.jpg"] = "truncated"
    sa.append(("._sa_5.jpg", b"macOS resource fork"))  # not an image: ignored
    objects["sa1b/sa_000000.tar"] = _tar(sa)

    gl = [(f"0/1/{i:02d}.jpg", _jpeg(10 + i)) for i in range(4)] + [("LICENSE.txt", b"CC-BY")]
    objects["gldv2/images_000.tar.gz"] = _tar(gl, "w:gz")
    good.update({f"gldv2/images_000.tar.gz/{n}": d for n, d in gl if n.endswith(".jpg")})

    inner = {f"n0{c}.tar": [(f"n0{c}_{i}.JPEG", _jpeg(20 + 10 * c + i)) for i in range(2)] for c in (1, 2)}
    objects["in21k/winter21.tar"] = _tar([(name, _tar(m)) for name, m in inner.items()])
    good.update({f"in21k/winter21.tar/{t}/{n}": d for t, m in inner.items() for n, d in m})

    full = _tar([("ok.jpg", _jpeg(40)), ("cut.jpg", _jpeg(41))])
    cut_at = full.index(_jpeg(41)) + 100  # inside the second member's data
    objects["broken/cut.tar"] = full[:cut_at]
    good["broken/cut.tar/ok.jpg"] = _jpeg(40)
    bad["broken/cut.tar/cut.jpg"] = "truncated"
    bad["broken/cut.tar"] = "truncated_archive"

    struct = pa.StructArray.from_arrays(
        [pa.array([_jpeg(50), None, _jpeg(52)], pa.binary()), pa.array(["a.jpg", "b.jpg", "c.jpg"])],
        names=["bytes", "path"])
    objects["hf/train-00000-of-00001.parquet"] = _parquet(struct, row_group_size=2)
    good["hf/train-00000-of-00001.parquet/0"] = _jpeg(50)
    bad["hf/train-00000-of-00001.parquet/1"] = "empty"
    good["hf/train-00000-of-00001.parquet/2"] = _jpeg(52)
    objects["hf/plain.parquet"] = _parquet(pa.array([_jpeg(60), _jpeg(61)], pa.binary()), row_group_size=1)
    good.update({"hf/plain.parquet/0": _jpeg(60), "hf/plain.parquet/1": _jpeg(61)})

    # LSUN: an LMDB keyed by 40 hex digits, whose scene categories hold WebP images (its export tool
    # writes .webp files); small values sit in leaf pages, a large one in overflow pages
    lsun = {f"{i:040x}".encode(): _jpeg(90 + i, *((120, 160) if i == 1 else (24, 32))) for i in range(2)}
    webp = io.BytesIO()
    Image.fromarray(np.random.default_rng(92).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(webp, "WEBP")
    lsun[f"{2:040x}".encode()] = webp.getvalue()
    objects["lsun/bedroom_train_lmdb/data.mdb"], objects["lsun/bedroom_train_lmdb/lock.mdb"] = lmdb_files(lsun)
    good.update({f"lsun/bedroom_train_lmdb/data.mdb/{k.decode()}": v for k, v in lsun.items()})

    objects["loose/one.jpg"] = _jpeg(70)
    good["loose/one.jpg"] = _jpeg(70)
    return objects, good, bad


def _upload(root: str, objects: dict[str, bytes]) -> str:
    input_uri = storage.join(root, "images")
    for k, v in objects.items():
        storage.write_bytes(storage.join(input_uri, k), v)
    return input_uri


def _read_all(input_uri: str) -> tuple[dict[str, bytes], dict[str, str], list]:
    entries = list(sources.plan_entries(input_uri))
    keys = [e if isinstance(e, str) else e[0] for e in entries]
    locs = [None if isinstance(e, str) else e[1] for e in entries]
    data, reasons = {}, {}
    for i, blob, reason, _ in sources.read_entries(input_uri, keys, locs):
        assert keys[i] not in data and keys[i] not in reasons  # each entry exactly once
        if reason:
            reasons[keys[i]] = reason
        else:
            data[keys[i]] = blob
    return data, reasons, entries


def test_entries_and_bytes_without_ray(tmp_path):
    objects, good, bad = make_containers()
    input_uri = _upload(str(tmp_path), objects)
    data, reasons, entries = _read_all(input_uri)
    # listing order is kept, and every plain-tar member (nested ones too) has a byte range
    assert [e if isinstance(e, str) else e[0] for e in entries][:3] == [
        "broken/cut.tar/ok.jpg", "broken/cut.tar/cut.jpg", "broken/cut.tar"]
    kinds = {e[0]: json.loads(e[1])[0] for e in entries if not isinstance(e, str)}
    assert kinds["in21k/winter21.tar/n02.tar/n02_1.JPEG"] == "r" and kinds["sa1b/sa_000000.tar/sa_1.jpg"] == "r"
    assert kinds["gldv2/images_000.tar.gz/0/1/00.jpg"] == "s" and kinds["hf/plain.parquet/1"] == "p"
    assert kinds["broken/cut.tar"] == "x" and kinds[f"lsun/bedroom_train_lmdb/data.mdb/{1:040x}"] == "r"
    assert not any("lock.mdb" in k for k in kinds)  # an LMDB's lock file holds no images
    # what reading gives: the members' bytes, and skips for what a container cannot give
    assert {k: reasons[k] for k in reasons} == {"broken/cut.tar/cut.jpg": "truncated",
                                                "broken/cut.tar": "truncated_archive",
                                                "hf/train-00000-of-00001.parquet/1": "empty"}
    expected_bytes = dict(good, **{"sa1b/sa_000000.tar/sa_4.jpg": _jpeg(4)[:-200]})
    assert data == expected_bytes

    # damaged containers are entries with a reason, not errors
    (tmp_path / "other").mkdir()
    other = str(tmp_path / "other")
    for name, blob in {"zero.tar": b"", "text.tgz": b"not gzip at all" * 40,
                       "noimg.parquet": _parquet(pa.array([1, 2]), 2), "junk.parquet": b"PAR1 junk"}.items():
        (tmp_path / "other" / name).write_bytes(blob)
    _, reasons, _ = _read_all(other)
    assert reasons == {"junk.parquet": "corrupt_file", "noimg.parquet": "no_image_column",
                       "text.tgz": "corrupt_archive", "zero.tar": "corrupt_archive"}

    # a gzip tar cut short: the members before the cut are read, the rest recorded
    gz = _tar([(f"{i}.jpg", _jpeg(80 + i, 200, 300)) for i in range(6)], "w:gz")
    (tmp_path / "cutgz").mkdir()
    (tmp_path / "cutgz" / "a.tar.gz").write_bytes(gz[:len(gz) // 2])
    data, reasons, _ = _read_all(str(tmp_path / "cutgz"))
    assert data and all(data[k] == _jpeg(80 + int(k.split("/")[-1][0]), 200, 300) for k in data)
    assert reasons.pop("a.tar.gz") == "truncated_archive"
    assert set(reasons.values()) <= {"truncated"} and len(data) + len(reasons) <= 6


def test_decoding_tasks_without_ray(tmp_path):
    """A gzip archive is one streamed task across partitions; other entries are slices of one partition."""
    objects, good, bad = make_containers()
    input_uri = _upload(str(tmp_path), objects)
    entries = list(sources.plan_entries(input_uri))
    keys = [e if isinstance(e, str) else e[0] for e in entries]
    locators = {e[0]: e[1] for e in entries if not isinstance(e, str)}
    partitions = [(pid, keys[i:i + 3]) for pid, i in enumerate(range(0, len(keys), 3))]
    items = container_items(partitions, locators, keys_per_task=2)
    streamed = items[0]
    assert all(k.startswith("gldv2/") for k in streamed["keys"]) and len(streamed["keys"]) == 4
    assert len(set(streamed["pids"])) == 2  # its 4 members span two partitions of 3
    for item in items[1:]:
        assert len(item["keys"]) <= 2 and len(set(item["pids"])) == 1
    assert sorted(k for item in items for k in item["keys"]) == sorted(keys)

    stage = DecodeContainers(input_uri, INPUT_SIZE, 50_000_000, group_rows=2, preprocessing="fast")
    rows = {}
    for item in items:
        batch = {c: np.array([np.array(item[c], dtype=object)], dtype=object) for c in ("pids", "keys", "locs")}
        for out in stage(batch):
            assert len(set(out["pid"].tolist())) == 1 and len(out["key"]) <= 2  # one partition per group
            for i, key in enumerate(out["key"]):
                assert key not in rows
                rows[key] = (out["error"][i], out["image"][i], int(out["pid"][i]))
    assert {k: r[0] for k, r in rows.items() if r[0]} == bad
    assert {k: r[1] for k, r in rows.items() if not r[0]} == good
    pid_of = {k: pid for pid, ks in partitions for k in ks}
    assert all(r[2] == pid_of[k] for k, r in rows.items())


@pytest.fixture(scope="module")
def teacher(tiny_checkpoint) -> str:
    return tiny_checkpoint


def _config(input_uri, output, teacher, **kw) -> PseudoLabelConfig:
    base = dict(input=input_uri, output=output, checkpoint=teacher, encoder="tiny", input_size=INPUT_SIZE,
                batch_size=4, partition_size=4, partitions_per_wave=8, samples=2, keys_per_task=3)
    base.update(kw)
    return PseudoLabelConfig(**base)


def test_job_labels_container_entries_once(ray_session, storage_root, teacher):
    objects, good, bad = make_containers()
    input_uri = _upload(storage_root.uri, objects)
    output = storage.join(storage_root.uri, "out")
    summary = run_pseudo_label(_config(input_uri, output, teacher))
    assert summary["images_seen"] == len(good) + len(bad)
    assert summary["labelled"] == len(good) and summary["skipped"] == len(bad)
    assert summary["skipped_by_reason"] == {"empty": 1, "truncated": 2, "truncated_archive": 1}
    labels = pads.dataset(plan_mod.labels_dir(output), format="parquet").to_table(columns=["key", "image"])
    assert sorted(labels.column("key").to_pylist()) == sorted(good)
    assert dict(zip(labels.column("key").to_pylist(), labels.column("image").to_pylist())) == good
    errors = pads.dataset(plan_mod.errors_dir(output), format="parquet").to_table()
    assert dict(zip(errors.column("key").to_pylist(), errors.column("reason").to_pylist())) == bad
    again = run_pseudo_label(_config(input_uri, output, teacher))
    assert again["this_run"]["labelled"] == 0 and again["labelled"] == len(good)


def test_killed_run_resumes_without_duplicates(ray_session, tmp_path, teacher):
    """SIGKILL the driver once some partitions of a gzip and a plain tar are committed, then resume."""
    gz = [(f"g/{i:03d}.jpg", _jpeg(100 + i)) for i in range(24)]
    plain = [(f"p/{i:03d}.jpg", _jpeg(200 + i)) for i in range(16)] + [("p/zz_bad.jpg", b"garbage")]
    input_uri = _upload(str(tmp_path), {"a.tar.gz": _tar(gz, "w:gz"), "b.tar": _tar(plain)})
    out = str(tmp_path / "out")
    flags = dict(partition_size=2, partitions_per_wave=12, batch_size=2, keys_per_task=2, samples=0)
    args = ["--input", input_uri, "--output", out, "--checkpoint", teacher, "--encoder", "tiny",
            "--input-size", str(INPUT_SIZE)]
    args += [a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    import ray

    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "ray_jobs/pseudo_label.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    done_dir = Path(out) / "_done"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if done_dir.is_dir() and len(list(done_dir.glob("*.json"))) >= 3:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: json.loads(p.read_text()) for p in done_dir.glob("*.json")}
    assert 3 <= len(before) < 21

    summary = run_pseudo_label(_config(input_uri, out, teacher, **flags))
    after = {p.name: json.loads(p.read_text()) for p in done_dir.glob("*.json")}
    assert len(after) == 21
    for name, rec in before.items():  # finished work was kept, not redone
        assert after[name] == rec
    keys = pads.dataset(str(Path(out) / "labels"), format="parquet").to_table(columns=["key"]).column("key").to_pylist()
    expected = {f"a.tar.gz/{n}" for n, _ in gz} | {f"b.tar/{n}" for n, _ in plain[:-1]}
    assert len(keys) == len(set(keys)) and set(keys) == expected
    assert summary["labelled"] == 40 and summary["skipped_by_reason"] == {"not_an_image": 1}
    assert summary["this_run"]["labelled"] == 40 - sum(r["n_labels"] for r in before.values())


class _Counting:
    """A storage file that counts the bytes asked of it (what crossed the network on S3)."""

    def __init__(self, f, log: list):
        self.f, self.log = f, log

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def size(self):
        return self.f.size()

    def read_at(self, n, offset):
        data = self.f.read_at(n, offset)
        self.log.append(len(data))
        return data

    def read(self, n=-1):
        data = self.f.read(n)
        self.log.append(len(data))
        return data


def test_reads_are_ranged_or_streamed(storage_root, monkeypatch):
    """A plain tar is indexed from its headers and a member read by its range; a gzip
    tar is read in one forward pass that stops after the last wanted member."""
    rng = np.random.default_rng(0)
    members = [(f"{i}.jpg", rng.bytes(1 << 20)) for i in range(6)]  # incompressible: gzip keeps the size
    input_uri = _upload(storage_root.uri, {"a.tar": _tar(members), "b.tar.gz": _tar(members, "w:gz")})
    size = len(_tar(members))
    opened, ranged, streamed = [], [], []
    open_input, open_stream = storage.open_input, sources.open_stream
    monkeypatch.setattr(storage, "open_input", lambda uri, s3=None: opened.append(uri) or _Counting(
        open_input(uri, s3), ranged))
    monkeypatch.setattr(sources, "open_stream", lambda uri, s3=None: opened.append(uri) or _Counting(
        open_stream(uri, s3), streamed))
    monkeypatch.setattr(sources, "STREAM_BUFFER", 64 << 10)

    plain = sources.index_container(storage.join(input_uri, "a.tar"), "a.tar", "tar")
    assert [k for k, _ in plain] == [f"a.tar/{n}" for n, _ in members]
    assert sum(ranged) < 0.3 * size  # headers, and the blocks they sit in: not the members
    ranged.clear()
    got = list(sources.read_entries(input_uri, ["a.tar/3.jpg"], [plain[3][1]]))
    assert got == [(0, members[3][1], "", "")] and sum(ranged) == len(members[3][1])

    gz = sources.index_container(storage.join(input_uri, "b.tar.gz"), "b.tar.gz", "tar")
    assert [json.loads(loc)[0] for _, loc in gz] == ["s"] * 6
    streamed.clear()
    opened.clear()
    got = list(sources.read_entries(input_uri, ["b.tar.gz/0.jpg", "b.tar.gz/1.jpg"], [gz[0][1], gz[1][1]]))
    assert [(i, data) for i, data, _, _ in got] == [(0, members[0][1]), (1, members[1][1])]
    assert len(opened) == 1 and 2 << 20 <= sum(streamed) < 3 << 20  # one pass, stopped after 1.jpg

"""depthlib.storage against a local directory, a real S3 server (SeaweedFS) and a GCS API server.

Run: ``python -m pytest tests/test_storage.py -q``. Tests marked ``@all_backends``
run three times, once per backend; each server starts once per session.
"""

from __future__ import annotations

import errno
import inspect
import itertools
import os
import time
import traceback

import botocore.exceptions as bexc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from depthlib import storage
from depthlib.storage import (GcsConfig, ObjectInfo, ObjectNotFoundError, PermanentStorageError, S3Config,
                              StorageError, TransientStorageError)
from fixtures_s3 import all_backends

# --------------------------------------------------------------------------- pure helpers


def test_uri_helpers(tmp_path):
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/x") and not storage.is_s3("file:///x")
    assert storage.join("s3://b/root/", "/a/", "b.parquet") == "s3://b/root/a/b.parquet"
    assert storage.join("s3://b", "x") == "s3://b/x"
    assert storage.join("/data", "", "x") == "/data/x"
    assert storage.join("file:///data", "x") == "file:///data/x"
    assert storage.split_s3("s3://bucket/a/b") == ("bucket", "a/b")
    assert storage.local_path(f"file://{tmp_path}/x") == f"{tmp_path}/x"
    with pytest.raises(ValueError):
        storage.local_path("gs://bucket/x")
    with pytest.raises(ValueError):
        storage.split_s3("s3:///nobucket")
    fs, path = storage.filesystem(f"file://{tmp_path}")
    assert isinstance(fs, pa.fs.LocalFileSystem) and path == str(tmp_path)


def test_s3config_from_env_and_repr_hide_secrets():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID0001",
           "AWS_SECRET_ACCESS_KEY": "very-secret-value-123", "AWS_DEFAULT_REGION": "eu-west-1",
           "AWS_SESSION_TOKEN": ""}
    cfg = S3Config.from_env(env)
    assert cfg == S3Config(endpoint_url="http://127.0.0.1:9000", region="eu-west-1",
                           access_key_id="AKIAEXAMPLEKEYID0001", secret_access_key="very-secret-value-123")
    for text in (repr(cfg), str(cfg), str(cfg.public_dict()), f"{cfg}"):
        assert "very-secret-value-123" not in text and "AKIAEXAMPLEKEYID0001" not in text
    assert "very-secret-value-123" not in storage.redact("boom very-secret-value-123 boom")
    assert storage.redact("secret_key=abcdefgh other") == "secret_key=*** other"
    assert S3Config.from_env({}) == S3Config()
    with pytest.raises(ValueError):
        S3Config(access_key_id="AKIAONLYKEY")
    with pytest.raises(ValueError):
        S3Config(endpoint_url="localhost:9000")


def test_unpickled_config_teaches_redact_its_secrets(monkeypatch):
    import pickle

    cfg = S3Config(endpoint_url="http://h:1", access_key_id="AKIAPICKLED000001",
                   secret_access_key="pickled-secret-value-5")
    data = pickle.dumps(cfg)
    monkeypatch.setattr(storage, "_known_secrets", set())  # as in a fresh worker process
    assert "pickled-secret-value-5" in storage.redact("x pickled-secret-value-5")
    assert pickle.loads(data) == cfg
    assert storage.redact("x pickled-secret-value-5") == "x ***"


def test_split_into_partitions_is_deterministic_and_lazy():
    parts = list(storage.split_into_partitions(range(10), 4))
    assert parts == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    endless = storage.split_into_partitions(itertools.count(), 3)
    assert next(endless) == [0, 1, 2] and next(endless) == [3, 4, 5]
    with pytest.raises(ValueError):
        next(storage.split_into_partitions([1], 0))


def _client_error(code: str, status: int) -> bexc.ClientError:
    return bexc.ClientError({"Error": {"Code": code, "Message": "m"},
                             "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("exc, expected", [
    (_client_error("SlowDown", 503), TransientStorageError),
    (_client_error("TooManyRequests", 429), TransientStorageError),
    (_client_error("InternalError", 500), TransientStorageError),
    (bexc.EndpointConnectionError(endpoint_url="http://x"), TransientStorageError),
    (bexc.ReadTimeoutError(endpoint_url="http://x"), TransientStorageError),
    (OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7"), TransientStorageError),
    (OSError("AWS Error SLOW_DOWN during PutObject operation"), TransientStorageError),
    (OSError(errno.EIO, "I/O error"), TransientStorageError),
    (_client_error("AccessDenied", 403), PermanentStorageError),
    (_client_error("InvalidAccessKeyId", 403), PermanentStorageError),
    (_client_error("NoSuchBucket", 404), PermanentStorageError),
    (_client_error("NoSuchKey", 404), ObjectNotFoundError),
    (_client_error("403", 403), PermanentStorageError),
    (OSError("AWS Error ACCESS_DENIED during HeadObject operation: No response body."), PermanentStorageError),
    (OSError("AWS Error UNKNOWN (HTTP status 404) during HeadObject operation"), ObjectNotFoundError),
    (FileNotFoundError(2, "No such file"), ObjectNotFoundError),
    (PermissionError(13, "Permission denied"), PermanentStorageError),
    (OSError(errno.ENOSPC, "No space left on device"), PermanentStorageError),
    (bexc.NoCredentialsError(), PermanentStorageError),
])
def test_error_classification(exc, expected):
    err = storage.as_storage_error(exc, "s3://bucket/key")
    assert type(err) is expected
    assert "s3://bucket/key" in str(err)
    assert storage.as_storage_error(ValueError("a bug"), "s3://b/k") is None


def test_retry_retries_transient_and_fails_fast_on_permanent():
    sleeps: list[float] = []
    calls = iter([_client_error("SlowDown", 503), bexc.EndpointConnectionError(endpoint_url="http://x"), "ok"])

    def flaky():
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert storage.retry(flaky, sleep=sleeps.append, base_delay=0.2, max_delay=5) == "ok"
    assert len(sleeps) == 2 and 0.1 <= sleeps[0] <= 0.2 and 0.2 <= sleeps[1] <= 0.4

    n = {"calls": 0}

    def denied():
        n["calls"] += 1
        raise _client_error("AccessDenied", 403)

    with pytest.raises(PermanentStorageError, match="access denied for s3://b/x: AccessDenied"):
        storage.retry(denied, uri="s3://b/x", sleep=sleeps.append)
    assert n["calls"] == 1

    def always_busy():
        n["calls"] += 1
        raise _client_error("SlowDown", 503)

    n["calls"] = 0
    sleeps.clear()
    with pytest.raises(TransientStorageError, match="gave up after 4 attempts"):
        storage.retry(always_busy, attempts=4, base_delay=1, max_delay=2, sleep=sleeps.append)
    assert n["calls"] == 4 and len(sleeps) == 3 and max(sleeps) <= 2

    with pytest.raises(ZeroDivisionError):  # not a storage failure: propagates unchanged
        storage.retry(lambda: 1 / 0, sleep=sleeps.append)


def test_error_messages_are_redacted():
    secret = "my-super-secret-key-42"
    S3Config(endpoint_url="http://h:1", access_key_id="AKIAREDACTME0001", secret_access_key=secret)
    err = storage.as_storage_error(OSError(f"AWS Error ACCESS_DENIED: signing with {secret}"), "s3://b/k")
    assert secret not in str(err) and "***" in str(err)
    assert secret not in str(StorageError(f"x {secret}"))


# --------------------------------------------------------------------------- both backends


@all_backends
def test_bytes_round_trip(storage_root):
    uri = storage.join(storage_root.uri, "dir", "obj.bin")
    assert not storage.exists(uri)
    with pytest.raises(ObjectNotFoundError, match="not found"):
        storage.read_bytes(uri)
    storage.write_bytes(uri, b"first")
    storage.write_bytes(uri, memoryview(b"second version"))  # overwrite
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"second version"
    with storage.open_input(uri) as f:
        assert f.size() == 14 and f.read() == b"second version"
    storage.delete(uri)
    storage.delete(uri)  # idempotent
    assert not storage.exists(uri)
    assert list(storage.list_objects(storage_root.uri)) == []


@all_backends
def test_large_object_round_trip_multipart(storage_root, monkeypatch):
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 6 * 2**20)
    monkeypatch.setattr(storage, "PART_SIZE", 5 * 2**20)
    data = os.urandom(11 * 2**20 + 123)
    uri = storage.join(storage_root.uri, "big.bin")
    storage.write_bytes(uri, data)
    assert storage.read_bytes(uri) == data
    [info] = list(storage.list_objects(storage_root.uri))
    assert info.size == len(data) and info.key == "big.bin"


@all_backends
def test_filesystem_works_for_pyarrow_readers(storage_root):
    fs, path = storage.filesystem(storage_root.uri, storage_root.s3)
    assert storage.filesystem(storage_root.uri, storage_root.s3)[0] is fs  # cached
    table = pa.table({"x": [1, 2, 3]})
    fs.create_dir(path)
    pq.write_table(table, f"{path}/t.parquet", filesystem=fs)
    assert pq.read_table(f"{path}/t.parquet", filesystem=fs).equals(table)


@all_backends
def test_list_objects_order_suffixes_and_keys(storage_root):
    keys = ["b.png", "a/b.JPG", "a-c.jpg", "a0.txt", "a/z/deep.png", "c/d/e/f.png"]
    for k in keys:
        storage.write_bytes(storage.join(storage_root.uri, k), k.encode())
    listing = storage.list_objects(storage_root.uri, s3=storage_root.s3)
    assert inspect.isgenerator(listing)
    infos = list(listing)
    # A local walk gives AWS S3's byte-wise key order. S3-compatible services
    # may differ (SeaweedFS lists directory by directory) but are repeatable.
    if storage_root.kind == "local":
        assert [o.key for o in infos] == sorted(keys)
    else:
        assert sorted(o.key for o in infos) == sorted(keys)
        assert list(storage.list_objects(storage_root.uri)) == infos
    assert all(o.size == len(o.key) for o in infos)
    assert all(o.uri == storage.join(storage_root.uri, o.key) for o in infos)
    images = [o.key for o in storage.list_objects(storage_root.uri + "/", suffixes=(".png", ".jpg"))]
    assert sorted(images) == ["a-c.jpg", "a/b.JPG", "a/z/deep.png", "b.png", "c/d/e/f.png"]
    assert [o.key for o in storage.list_objects(storage.join(storage_root.uri, "a"))] == ["b.JPG", "z/deep.png"]
    assert list(storage.list_objects(storage.join(storage_root.uri, "nothing-here"))) == []


@all_backends
def test_iter_input_keys_from_listing_and_manifests(storage_root):
    root = storage_root.uri
    for k in ["img/1.jpg", "img/2.png", "img/notes.txt"]:
        storage.write_bytes(storage.join(root, k), b"x")
    img = storage.join(root, "img")
    listed = [o.key for o in storage.iter_input_keys(img, suffixes=(".jpg", ".png"))]
    assert listed == ["1.jpg", "2.png"]

    text_manifest = storage.join(root, "manifest.txt")
    other = "s3://elsewhere/x.jpg"
    storage.write_bytes(text_manifest, f"# comment\n1.jpg\n\n{storage.join(img, '2.png')}\n{other}\nnotes.txt\n".encode())
    got = list(storage.iter_input_keys(img, text_manifest, suffixes=(".jpg", ".png")))
    assert [(o.key, o.uri) for o in got] == [
        ("1.jpg", storage.join(img, "1.jpg")), ("2.png", storage.join(img, "2.png")), (other, other)]

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"key": ["2.png", "1.jpg"], "size": [5, 7]}), sink)
    parquet_manifest = storage.join(root, "manifest.parquet")
    storage.write_bytes(parquet_manifest, sink.getvalue())
    got = list(storage.iter_input_keys(img, parquet_manifest))
    assert got == [ObjectInfo(storage.join(img, "2.png"), "2.png", 5), ObjectInfo(storage.join(img, "1.jpg"), "1.jpg", 7)]


def test_local_write_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "shard.parquet"
    storage.write_bytes(str(target), b"old complete content")

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash before the rename")

    with monkeypatch.context() as m:
        m.setattr(storage.os, "replace", crash)
        with pytest.raises(RuntimeError):
            storage.write_bytes(str(target), b"new content that never lands")
    assert target.read_bytes() == b"old complete content"
    assert os.listdir(target.parent) == ["shard.parquet"]  # temp file removed

    real_open = open

    class HalfWriter:
        """A file object that dies after writing a few bytes, like a full disk."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(data)[:5])
            raise OSError(errno.ENOSPC, "No space left on device")

    def failing_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return HalfWriter(f) if "w" in mode else f

    new_target = tmp_path / "out" / "new.parquet"
    with monkeypatch.context() as m:
        m.setattr("builtins.open", failing_open)
        with pytest.raises(PermanentStorageError, match="ENOSPC"):
            storage.write_bytes(str(new_target), b"0123456789" * 100)
    assert not new_target.exists()
    assert sorted(os.listdir(target.parent)) == ["shard.parquet"]


# --------------------------------------------------------------------------- S3 only


@pytest.mark.s3
def test_listing_5000_objects_streams_page_by_page(s3_server):
    bucket = s3_server.new_bucket("list")
    n = 5000
    keys = [f"many/{i // 1000}/obj-{i:05d}.bin" for i in range(n)]
    start = time.monotonic()
    s3_server.put_many(bucket, keys)
    upload_s = time.monotonic() - start

    cfg = s3_server.s3_config
    pages: list[dict] = []

    def count_pages(params, **kwargs):
        pages.append(params)

    lib_client = storage.s3_client(cfg)
    lib_client.meta.events.register("before-parameter-build.s3.ListObjectsV2", count_pages)
    try:
        listing = storage.list_objects(f"s3://{bucket}/many", s3=cfg)
        assert inspect.isgenerator(listing)
        assert not pages  # nothing fetched before the first item is asked for
        first = list(itertools.islice(listing, 10))
        assert [o.key for o in first] == sorted(k[len("many/"):] for k in keys)[:10]
        assert len(pages) == 1 and pages[0]["MaxKeys"] == 1000
        listing.close()

        pages.clear()
        seen = set()
        count = 0
        for info in storage.list_objects(f"s3://{bucket}/many", s3=cfg):
            seen.add(info.key)
            count += 1
        assert count == n and len(seen) == n
        assert len(pages) == 5  # 5 pages of 1000, fetched as consumed
    finally:
        lib_client.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", count_pages)
    print(f"\nuploaded {n} objects in {upload_s:.1f}s")


@pytest.mark.s3
def test_wrong_secret_is_a_clear_permanent_error_without_the_secret(s3_server):
    bucket = s3_server.new_bucket()
    good = s3_server.s3_config
    storage.write_bytes(f"s3://{bucket}/k", b"data", s3=good)
    wrong_secret = "wrong-secret-do-not-print-7781"
    bad = S3Config(endpoint_url=good.endpoint_url, region=good.region,
                   access_key_id=good.access_key_id, secret_access_key=wrong_secret)
    unknown_key = S3Config(endpoint_url=good.endpoint_url, region=good.region,
                           access_key_id="AKIAUNKNOWNKEY000001", secret_access_key=wrong_secret)
    operations = {
        "read_bytes": lambda cfg: storage.read_bytes(f"s3://{bucket}/k", s3=cfg),
        "write_bytes": lambda cfg: storage.write_bytes(f"s3://{bucket}/new", b"x", s3=cfg),
        "list_objects": lambda cfg: list(storage.list_objects(f"s3://{bucket}/", s3=cfg)),
        "open_input (pyarrow)": lambda cfg: storage.open_input(f"s3://{bucket}/k", s3=cfg),
    }
    for cfg in (bad, unknown_key):
        for name, op in operations.items():
            start = time.monotonic()
            with pytest.raises(PermanentStorageError) as info:
                op(cfg)
            elapsed = time.monotonic() - start
            err = info.value
            text = str(err) + repr(err) + "".join(traceback.format_exception(err))
            assert err.reason == "access_denied", name
            assert "access denied" in str(err) and f"s3://{bucket}/" in str(err), name
            assert wrong_secret not in text, name
            assert good.secret_access_key not in text, name
            assert elapsed < 3, f"{name} was retried ({elapsed:.1f}s) instead of failing at once"
    assert storage.read_bytes(f"s3://{bucket}/k", s3=good) == b"data"


@pytest.mark.s3
def test_missing_bucket_is_a_clear_error_naming_the_bucket(s3_server):
    cfg = s3_server.s3_config
    for op in (lambda: storage.read_bytes("s3://no-such-bucket-dl/x", s3=cfg),
               lambda: list(storage.list_objects("s3://no-such-bucket-dl/prefix", s3=cfg)),
               lambda: storage.write_bytes("s3://no-such-bucket-dl/x", b"1", s3=cfg)):
        with pytest.raises(PermanentStorageError, match="no such bucket 'no-such-bucket-dl'") as info:
            op()
        assert info.value.reason == "no_such_bucket"


@pytest.mark.s3
def test_config_from_environment(s3_server, monkeypatch):
    bucket = s3_server.new_bucket()
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_access_key)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    assert S3Config.from_env() == s3_server.s3_config
    storage.write_bytes(f"s3://{bucket}/env", b"from env")
    assert storage.read_bytes(f"s3://{bucket}/env", s3=s3_server.s3_config) == b"from env"

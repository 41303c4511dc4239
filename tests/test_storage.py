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
def test_copy_is_server_side_and_complete(storage_root):
    src, dst = storage.join(storage_root.uri, "a", "src.bin"), storage.join(storage_root.uri, "b", "dst.bin")
    data = os.urandom(300_000)
    storage.write_bytes(src, data)
    storage.copy(src, dst)
    assert storage.read_bytes(dst) == data and storage.read_bytes(src) == data
    with pytest.raises(ObjectNotFoundError):
        storage.copy(storage.join(storage_root.uri, "missing.bin"), dst)
    assert storage.read_bytes(dst) == data  # a failed copy leaves the destination alone
    with pytest.raises(ValueError, match="between backends"):
        storage.copy(src, "/tmp/x" if storage_root.kind != "local" else "gs://b/x")


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


# --------------------------------------------------------------------------- GCS only


def test_gcs_config_from_env_and_shipping(monkeypatch):
    import pickle

    cfg = GcsConfig.from_env({"STORAGE_EMULATOR_HOST": "127.0.0.1:4443", "GOOGLE_CLOUD_PROJECT": "p",
                              "GOOGLE_APPLICATION_CREDENTIALS": "/keys/sa.json"})
    # an emulator means anonymous credentials (as Google's client libraries do)
    assert cfg == GcsConfig(endpoint_url="http://127.0.0.1:4443", project_id="p", anonymous=True)
    real = GcsConfig.from_env({"GOOGLE_APPLICATION_CREDENTIALS": "/keys/sa.json", "CLOUDSDK_CORE_PROJECT": "q"})
    assert real == GcsConfig(project_id="q", credentials_file="/keys/sa.json")
    assert GcsConfig.from_env({}) == GcsConfig() and S3Config.from_env({}).gcs is None
    # S3Config.from_env, what jobs resolve in the driver and ship, carries the GCS settings
    shipped = S3Config.from_env({"STORAGE_EMULATOR_HOST": "http://h:1", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE00001",
                                 "AWS_SECRET_ACCESS_KEY": "s3-secret-value-1"})
    assert shipped.gcs == GcsConfig(endpoint_url="http://h:1", anonymous=True)
    assert pickle.loads(pickle.dumps(shipped)) == shipped
    assert "s3-secret-value-1" not in repr(shipped) and "http://h:1" in repr(shipped)
    # a worker: set_default_s3(shipped) wins over its own environment
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://elsewhere:2")
    monkeypatch.setattr(storage, "_PROCESS_DEFAULT", None)
    assert storage._gcs_config(None).endpoint_url == "http://elsewhere:2"
    storage.set_default_s3(shipped)
    assert storage._gcs_config(None) == shipped.gcs
    storage.set_default_s3(None)
    with pytest.raises(ValueError):
        GcsConfig(endpoint_url="h:1")
    with pytest.raises(ValueError):
        GcsConfig(anonymous=True, credentials_file="/k.json")


def test_gcs_uri_helpers():
    assert storage.is_gcs("gs://b/k") and not storage.is_gcs("s3://b/k")
    assert storage.is_remote("gs://b/k") and storage.is_remote("s3://b/k") and not storage.is_remote("/x")
    # jobs ask is_s3 for "object storage: resolve settings in the driver and ship them"
    assert storage.is_s3("gs://b/k")
    assert storage.split_bucket("gs://bucket/a/b") == ("bucket", "a/b")
    with pytest.raises(ValueError, match="not an s3:// URI"):  # boto3 code paths refuse gs://
        storage.split_s3("gs://bucket/a")
    with pytest.raises(ValueError, match="without a bucket"):
        storage.split_bucket("gs:///a")
    assert storage.join("gs://b/root/", "x") == "gs://b/root/x"
    with pytest.raises(ValueError):
        storage.local_path("gs://b/x")


_GCS_STATUS = "google::cloud::Status({}: Permanent error, with a last message of {} error_info={{}})"


@pytest.mark.parametrize("exc, expected, reason", [
    (OSError(_GCS_STATUS.format("UNAVAILABLE", "Retry policy exhausted")), TransientStorageError, "transient"),
    (OSError(_GCS_STATUS.format("DEADLINE_EXCEEDED", "timeout")), TransientStorageError, "transient"),
    (OSError(_GCS_STATUS.format("RESOURCE_EXHAUSTED", "rate limit (429)")), TransientStorageError, "transient"),
    (OSError(_GCS_STATUS.format("INTERNAL", "503")), TransientStorageError, "transient"),
    (FileNotFoundError(2, _GCS_STATUS.format("NOT_FOUND", "Not Found")), ObjectNotFoundError, "not_found"),
    (PermissionError(13, _GCS_STATUS.format("PERMISSION_DENIED", "Forbidden")), PermanentStorageError,
     "access_denied"),
    (OSError(_GCS_STATUS.format("UNAUTHENTICATED", "Invalid Credentials")), PermanentStorageError,
     "access_denied"),
    (OSError(_GCS_STATUS.format("INVALID_ARGUMENT", "Could not create a OAuth2 access token")),
     PermanentStorageError, "access_denied"),
    (pa.lib.ArrowInvalid(_GCS_STATUS.format("INVALID_ARGUMENT", "missing project id")), PermanentStorageError,
     "invalid_request"),
])
def test_gcs_error_classification(exc, expected, reason):
    err = storage.as_storage_error(exc, "gs://bucket/key")
    assert type(err) is expected and err.reason == reason
    assert "gs://bucket/key" in str(err)


def test_redact_scrubs_google_secrets():
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
    text = storage.redact(f'key file {{"private_key": "{pem}", "client_secret": "GOCSPX-abcdef"}} '
                          f"Authorization: Bearer ya29.a0AfB_byC-token_value and ya29.other-token")
    for secret in ("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "GOCSPX-abcdef", "a0AfB_byC-token_value", "other-token"):
        assert secret not in text
    assert storage.redact("refresh_token=1//0abcdefgh x") == "refresh_token=*** x"


@pytest.mark.gcs
def test_gcs_missing_bucket_is_a_clear_error_naming_the_bucket(gcs_server):
    cfg = gcs_server.s3_config
    for op in (lambda: storage.read_bytes("gs://no-such-bucket-dl/x", s3=cfg),
               lambda: list(storage.list_objects("gs://no-such-bucket-dl/prefix", s3=cfg)),
               lambda: storage.write_bytes("gs://no-such-bucket-dl/x", b"1", s3=cfg),
               lambda: storage.open_input("gs://no-such-bucket-dl/x", s3=cfg)):
        with pytest.raises(PermanentStorageError, match="no such bucket 'no-such-bucket-dl'") as info:
            op()
        assert info.value.reason == "no_such_bucket"


@pytest.mark.gcs
def test_gcs_temporaries_of_interrupted_writes_are_not_listed(gcs_server):
    """A write interrupted before its copy leaves only a hidden temporary, which listings skip."""
    bucket = gcs_server.new_bucket()
    cfg = gcs_server.s3_config
    fs = storage.gcs_filesystem(cfg.gcs)
    with fs.open_output_stream(f"{bucket}/p/.shard.parquet.tmp-0123abcd") as f:
        f.write(b"half")
    storage.write_bytes(f"gs://{bucket}/p/shard.parquet", b"whole", s3=cfg)
    assert [o.key for o in storage.list_objects(f"gs://{bucket}/p", s3=cfg)] == ["shard.parquet"]
    # write_bytes cleans up its own temporary
    names = [i.path for i in fs.get_file_info(pa.fs.FileSelector(bucket, recursive=True))]
    assert names == [f"{bucket}/p/.shard.parquet.tmp-0123abcd", f"{bucket}/p/shard.parquet"]


@pytest.mark.gcs
def test_gcs_wrong_credentials_are_a_clear_permanent_error_without_the_secret(gcs_server, tmp_path, monkeypatch):
    """A key file Google's token endpoint refuses: access denied at once, no secret in any message.

    The emulator accepts any request, so the refusal comes from where GCS's does:
    the OAuth token exchange (``token_uri`` of an ``authorized_user`` key file,
    served here by a local endpoint that answers ``invalid_grant`` as Google does).
    """
    import http.server
    import json
    import threading

    class TokenEndpoint(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"error": "invalid_grant", "error_description": "Token has been revoked."}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    token_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenEndpoint)
    threading.Thread(target=token_server.serve_forever, daemon=True).start()
    client_secret, refresh_token = "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", "1//0wrong-refresh-token-do-not-print"
    key_file = tmp_path / "adc.json"
    key_file.write_text(json.dumps({
        "type": "authorized_user", "client_id": "123.apps.googleusercontent.com", "client_secret": client_secret,
        "refresh_token": refresh_token, "token_uri": f"http://127.0.0.1:{token_server.server_address[1]}/token"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))  # restored after the test
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    bucket = gcs_server.new_bucket()
    storage.write_bytes(f"gs://{bucket}/k", b"data", s3=gcs_server.s3_config)
    # the emulator's endpoint, Google's credential chain (not anonymous)
    cfg = S3Config(gcs=GcsConfig(endpoint_url=gcs_server.endpoint_url, credentials_file=str(key_file)))
    operations = {
        "read_bytes": lambda: storage.read_bytes(f"gs://{bucket}/k", s3=cfg),
        "write_bytes": lambda: storage.write_bytes(f"gs://{bucket}/new", b"x", s3=cfg),
        "list_objects": lambda: list(storage.list_objects(f"gs://{bucket}/", s3=cfg)),
        "open_input (pyarrow)": lambda: storage.open_input(f"gs://{bucket}/k", s3=cfg),
        "exists": lambda: storage.exists(f"gs://{bucket}/k", s3=cfg),
    }
    try:
        for name, op in operations.items():
            start = time.monotonic()
            with pytest.raises(PermanentStorageError) as info:
                op()
            elapsed = time.monotonic() - start
            err = info.value
            text = str(err) + repr(err) + "".join(traceback.format_exception(err))
            assert err.reason == "access_denied", (name, str(err))
            assert "access denied (invalid credentials)" in str(err) and f"gs://{bucket}/" in str(err), name
            assert client_secret not in text and refresh_token not in text, name
            assert elapsed < 3, f"{name} was retried ({elapsed:.1f}s) instead of failing at once"
    finally:
        token_server.shutdown()
    assert storage.read_bytes(f"gs://{bucket}/k", s3=gcs_server.s3_config) == b"data"

    missing = S3Config(gcs=GcsConfig(endpoint_url=gcs_server.endpoint_url, credentials_file=str(tmp_path / "no.json")))
    with pytest.raises(PermanentStorageError, match="not a file on this node") as info:
        storage.read_bytes(f"gs://{bucket}/k", s3=missing)
    assert info.value.reason == "config"


@pytest.mark.gcs
def test_gcs_dropped_connection_mid_upload_resumes_or_retries_never_truncates(gcs_server, monkeypatch):
    """Cut the connection once in the middle of a 12 MiB resumable upload (server alive):
    the object ends complete, never truncated (a resumed upload once reported success
    for a 0-byte object: write_bytes checks the stored size before the copy)."""
    from fixtures_gcs import KillingProxy

    monkeypatch.setattr(storage, "GCS_RETRY_TIME_LIMIT_S", 2.0)
    bucket = gcs_server.new_bucket()
    proxy = KillingProxy(gcs_server.port, on_threshold=lambda: None, kill_after=6 * 2**20)
    try:
        cfg = S3Config(gcs=GcsConfig(endpoint_url=proxy.endpoint_url, anonymous=True))
        data = os.urandom(12 * 2**20 + 5)
        storage.write_bytes(f"gs://{bucket}/big.bin", data, s3=cfg)
        assert proxy.fired.is_set()  # the connection was really cut mid-upload
        assert storage.read_bytes(f"gs://{bucket}/big.bin", s3=cfg) == data
        assert [(o.key, o.size) for o in storage.list_objects(f"gs://{bucket}", s3=cfg)] == [("big.bin", len(data))]
    finally:
        proxy.close()

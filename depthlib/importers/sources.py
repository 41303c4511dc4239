"""The input as a tree of files, whether extracted or still in the archives as downloaded.

Datasets ship as folder trees or as archives (Hypersim: one ZIP per scene;
TartanAir: one ZIP per environment, level and modality; Virtual KITTI 2: one
tar per modality). :func:`list_tree` turns either into the same thing: every
file of the input at the path it would have if each archive were extracted
where it lies (``DIR/x.zip`` holding ``a/b.jpg`` -> ``DIR/a/b.jpg``), so a
frame has the same key however the dataset was stored, and each file's
:class:`Source`, which says how to read its bytes.

Archives are read in place with ranged reads, never unpacked to disk:

- ZIP (:mod:`depthlib.archives.zip`): the central directory is read once at
  listing time (a few reads at the end of the archive); a member is then read
  by its local header's offset and compressed size, one ranged read (two when
  its name and extra field are long), and checked against its CRC-32. Names
  stored as UTF-8 without the UTF-8 flag are re-decoded as UTF-8.
- tar (uncompressed, as VKITTI2 ships): listing walks the 512-byte headers,
  seeking over the data (one small ranged read per member); a member is one
  ranged read at its data offset. A compressed tar cannot be read at an
  offset, so ``.tar.gz``/``.tgz`` are refused (unpack or recompress them).
"""

from __future__ import annotations

import posixpath
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

from depthlib import storage
from depthlib.archives.tar import Window
from depthlib.archives.zip import ZipDirectoryError, ZipMemberError, read_zip_member, zip_members

ARCHIVE_SUFFIXES = (".zip", ".tar")
REFUSED_ARCHIVES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class ArchiveError(ValueError):
    """An archive cannot be listed (not a ZIP/tar, damaged directory)."""


@dataclass(frozen=True)
class Source:
    """Where one file's bytes are: a whole object, or a member of an archive object."""

    uri: str
    """The object (a plain file, or the archive holding the member)."""
    member: str = ""
    """The member's name inside the archive ('' for a plain file)."""
    kind: str = "file"
    """``file``, ``zip`` or ``tar``."""
    offset: int = 0
    """ZIP: the member's local header offset; tar: its data offset."""
    size: int = -1
    """Bytes stored (compressed size for a ZIP member)."""
    method: int = 0
    """ZIP compression method (0 stored, 8 deflated)."""
    crc: int = 0
    """ZIP CRC-32 of the uncompressed bytes."""
    file_size: int = -1
    """Uncompressed size."""

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v != _DEFAULTS[k]}

    @classmethod
    def from_dict(cls, d: dict) -> "Source":
        return cls(**d)


_DEFAULTS = {"member": "", "kind": "file", "offset": 0, "size": -1, "method": 0, "crc": 0, "file_size": -1,
             "uri": None}


def _normalise_member(name: str) -> str:
    name = posixpath.normpath(name.replace("\\", "/")).lstrip("/")
    return "" if name in (".", "") or name.startswith("../") else name


def _archive_kind(key: str) -> str | None:
    low = key.lower()
    if low.endswith(".zip"):
        return "zip"
    if low.endswith(".tar"):
        return "tar"
    return None


def _list_zip(uri: str, keep: Callable[[str], bool]) -> list[tuple[str, Source]]:
    """The kept members of a ZIP, from its central directory. ``zipfile`` reads it
    through the archive readers' window (``depthlib.archives.tar.Window``), which
    answers a read at the end of the object itself: ``zipfile`` makes one, and
    pyarrow's GCS file sends it to GCS, whose HTTP 416 it raises as an error
    (a read that starts inside the object and runs past its end returns short)."""
    with storage.open_input(uri) as native:
        try:
            members = zip_members(Window(native))
        except (ZipDirectoryError, OSError) as e:
            raise ArchiveError(f"{storage.redact(uri)}: not a readable ZIP ({e})") from None
    out = []
    for m in members:
        name = _normalise_member(m.name)
        if m.is_dir or not name or not keep(name):
            continue
        out.append((name, Source(uri, m.name, "zip", m.offset, m.size, m.method, m.crc, m.file_size)))
    return out


def _list_tar(uri: str, keep: Callable[[str], bool]) -> list[tuple[str, Source]]:
    """The kept members of a plain tar. Headers are read through the archive
    readers' aligned 256 KiB window (``depthlib.archives.tar.Window``): the
    headers of neighbouring small members come in one ranged read instead of
    one read each."""
    out = []
    with storage.open_input(uri) as native:
        f = Window(native)
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                for info in tar:  # each header read seeks over the member's data
                    name = _normalise_member(info.name)
                    if info.isfile() and name and keep(name):
                        out.append((name, Source(uri, info.name, "tar", info.offset_data, info.size,
                                                 file_size=info.size)))
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            raise ArchiveError(f"{storage.redact(uri)}: not a readable tar ({e})") from None
    return out


def list_tree(input_uri: str, keep: Callable[[str], bool], threads: int = 16,
              s3: storage.S3Config | None = None) -> Iterator[tuple[str, Source]]:
    """Every kept file under ``input_uri`` as ``(path relative to the input, Source)``.

    ``keep(path)`` chooses the files worth listing (a dataset's image and
    label names): archive members that fail it are not even remembered.
    Plain files come first in listing order, then each archive's members
    (archives listed in parallel threads: the work is waiting on storage).
    Raises :class:`ArchiveError` for a compressed tar or a damaged archive.
    """
    if s3 is not None:
        storage.set_default_s3(s3)
    archives = []
    for obj in storage.list_objects(input_uri, s3=s3):
        low = obj.key.lower()
        if low.endswith(REFUSED_ARCHIVES):
            raise ArchiveError(f"{storage.redact(obj.uri)}: a compressed tar cannot be read in place "
                               f"(no ranged reads into a compressed stream); unpack it or repack it as .tar")
        kind = _archive_kind(obj.key)
        if kind is not None:
            archives.append((obj, kind))
        elif keep(obj.key):
            yield obj.key, Source(obj.uri, size=obj.size, file_size=obj.size)

    def members(item) -> list[tuple[str, Source]]:
        obj, kind = item
        where = posixpath.dirname(obj.key)
        lister = _list_zip if kind == "zip" else _list_tar
        return [(posixpath.join(where, name) if where else name, src)
                for name, src in lister(obj.uri, lambda n: keep(posixpath.join(where, n) if where else n))]

    if not archives:
        return
    with ThreadPoolExecutor(max(1, min(threads, len(archives)))) as pool:
        for listed in pool.map(members, archives):
            yield from listed


class _ArchiveFiles:
    """Open archive objects, kept open across the members of one task (one open each)."""

    def __init__(self) -> None:
        self._open: dict[str, object] = {}

    def get(self, uri: str):
        f = self._open.get(uri)
        if f is None:
            f = self._open[uri] = storage.open_input(uri)
        return f

    def close(self) -> None:
        for f in self._open.values():
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a read handle cannot lose data
                pass
        self._open.clear()


def _read_exact(f, offset: int, n: int, what: str) -> bytes:
    f.seek(offset)
    data = f.read(n)
    if len(data) != n:
        raise EOFError(f"{what}: wanted {n} bytes at offset {offset}, the archive ends after {len(data)}")
    return bytes(data)


def read_source(src: Source, files: _ArchiveFiles | None = None) -> bytes:
    """The bytes of one file (a plain object, or an archive member by ranged reads).

    Raises :class:`depthlib.storage.StorageError` for storage failures,
    ``EOFError``/``ValueError`` for a damaged archive member.
    """
    if src.kind == "file":
        return storage.read_bytes(src.uri)
    own = files is None
    files = files or _ArchiveFiles()
    try:
        f = files.get(src.uri)
        what = f"{storage.redact(src.uri)}:{src.member}"
        if src.kind == "tar":
            return _read_exact(f, src.offset, src.size, what)
        if src.kind != "zip":
            raise ValueError(f"unknown source kind {src.kind!r}")
        try:
            return read_zip_member(f, src.offset, src.size, src.method, src.crc, src.file_size, what)
        except ZipMemberError as e:  # the errors this function has always raised for a damaged member
            raise (EOFError if e.reason == "truncated" else ValueError)(str(e)) from None
    finally:
        if own:
            files.close()

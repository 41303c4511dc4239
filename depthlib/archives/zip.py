"""ZIP archives read in place: list the central directory, then read one member by ranged reads.

Pure functions over file objects (no storage URIs); the evaluation sources
(``depthlib.evaluation.sources``) and the importers (``depthlib.importers.sources``)
connect them to object storage and turn the errors into their own.

- :func:`zip_members` lists the central directory with ``zipfile`` over a seekable
  file (a :class:`depthlib.archives.tar.Window` on the archive: a few ranged reads
  at its end), without reading member data. Names stored without the UTF-8 flag
  (bit 11) are decoded by ``zipfile`` as cp437; archives such as DA-2K store UTF-8
  names that way, so they are re-decoded as UTF-8 (kept as cp437 when they are
  not valid UTF-8). An encrypted member (flag bit 0) gets method -1.
- :func:`read_zip_member` reads one member through ``read_at(n, offset)`` (a pyarrow
  ``NativeFile``): one ranged read of the local header, :data:`SLACK` bytes for its
  name and extra field, and the compressed data, so most members cost one read;
  a second read fetches the data when the name and extra field are longer. The
  data is inflated (raw deflate) and checked against the directory's size and CRC-32.

The local header layout (30 bytes: signature ``PK\\x03\\x04``, version, flags,
method, time, date, CRC-32, sizes, then the name and extra field lengths) is
section 4.3.7 of PKWARE's ZIP File Format Specification (APPNOTE.TXT). Sizes and
CRC are taken from the central directory, which is also right for members
written with a data descriptor or ZIP64 extras.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # signature ... name length, extra field length
LOCAL_MAGIC = b"PK\x03\x04"
SLACK = 1024  # name + extra field bytes read with the header and the data in the first read
ENCRYPTED = -1  # the method given to an encrypted member
_FLAG_ENCRYPTED = 0x1
_FLAG_UTF8 = 0x800


class ZipDirectoryError(ValueError):
    """The archive's central directory cannot be read (not a ZIP, or damaged)."""


class ZipMemberError(ValueError):
    """One member cannot be read; the message names it. ``reason``: ``truncated``
    (the archive ends inside it), ``corrupt`` (no local header, bad deflate data,
    size or CRC-32 mismatch) or ``unsupported`` (encrypted, or a method other than
    stored and deflate)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ZipMember:
    """One central directory entry. ``offset``: its local header's offset;
    ``size``: compressed bytes; ``method``: 0 stored, 8 deflate, other
    ``zipfile`` methods, or :data:`ENCRYPTED`; ``crc``: CRC-32 and
    ``file_size``: size of the uncompressed bytes."""

    name: str
    offset: int
    size: int
    method: int
    crc: int
    file_size: int
    is_dir: bool


def member_name(info: zipfile.ZipInfo) -> str:
    """The member's name, a name stored as UTF-8 without the UTF-8 flag re-decoded."""
    if info.flag_bits & _FLAG_UTF8:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def zip_members(reader: Any) -> list[ZipMember]:
    """Every entry of the central directory of the ZIP in the seekable file ``reader``,
    in directory order. Raises :class:`ZipDirectoryError`; read errors of ``reader``
    itself (``OSError``) propagate."""
    try:
        infos = zipfile.ZipFile(reader).infolist()
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error) as e:
        raise ZipDirectoryError(f"not a readable ZIP ({e})") from None
    return [ZipMember(member_name(info), info.header_offset, info.compress_size,
                      ENCRYPTED if info.flag_bits & _FLAG_ENCRYPTED else info.compress_type,
                      info.CRC, info.file_size, info.is_dir())
            for info in infos]


def read_zip_member(native: Any, offset: int, size: int, method: int, crc: int, file_size: int,
                    what: str) -> bytes:
    """The uncompressed bytes of the member whose local header is at ``offset``
    (``size`` compressed bytes, ``method``, ``crc`` and ``file_size`` from the central
    directory), read from ``native`` (anything with ``read_at(n, offset)``).
    ``what`` names the member in messages. Raises :class:`ZipMemberError`."""
    if method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        kind = "encrypted" if method == ENCRYPTED else f"compressed with method {method}"
        raise ZipMemberError("unsupported", f"{what} is {kind}; only stored and deflated members are read")
    raw = bytes(native.read_at(LOCAL_HEADER.size + SLACK + size, offset))
    if len(raw) < LOCAL_HEADER.size:
        raise ZipMemberError("truncated", f"{what}: the archive ends inside the local header at offset {offset}")
    fields = LOCAL_HEADER.unpack_from(raw)
    if fields[0] != LOCAL_MAGIC:
        raise ZipMemberError("corrupt", f"{what}: no ZIP local header at offset {offset}")
    start = LOCAL_HEADER.size + fields[9] + fields[10]
    data = raw[start:start + size]
    if len(data) < size:  # a long name or extra field (or the archive ends early)
        data = bytes(native.read_at(size, offset + start))
    if len(data) != size:
        raise ZipMemberError("truncated", f"{what}: the archive ends inside the member "
                                          f"({len(data)} of {size} bytes)")
    if method == zipfile.ZIP_DEFLATED:
        try:
            data = zlib.decompress(data, -15)
        except zlib.error as e:
            raise ZipMemberError("corrupt", f"{what}: corrupt deflate data ({e})") from None
    if len(data) != file_size or zlib.crc32(data) != crc:
        raise ZipMemberError("corrupt", f"{what}: CRC-32 or size mismatch (damaged member)")
    return data

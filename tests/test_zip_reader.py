"""depthlib.archives.zip: the central directory listing and the ranged member reader
shared by the evaluation sources and the importers, on a ZIP written by ``zipfile``."""

from __future__ import annotations

import struct
import zipfile

import pytest

from depthlib import storage
from depthlib.archives.tar import Window
from depthlib.archives.zip import (ENCRYPTED, SLACK, ZipDirectoryError, ZipMemberError, read_zip_member,
                                   zip_members)

CAFE = "images/café.jpg"
LONG_EXTRA = struct.pack("<HH", 0xCAFE, 2000) + bytes(2000)  # one well-formed extra record, > SLACK


class _RawNameInfo(zipfile.ZipInfo):
    """Writes the name's UTF-8 bytes as they are, without the UTF-8 flag (as DA-2K.zip does)."""

    def _encodeFilenameFlags(self):
        return self.filename.encode("cp437"), self.flag_bits


class _Counted:
    """A native file (set by :func:`_read`) that counts its ranged reads."""

    def __init__(self):
        self.native = None
        self.reads = 0

    def read_at(self, n, offset):
        self.reads += 1
        return self.native.read_at(n, offset)


def _write(path) -> dict[str, bytes]:
    files = {"stored.bin": bytes(range(256)) * 12, "deflated.txt": b"depth " * 2000,
             CAFE: b"jpeg bytes" * 50, "long_extra.bin": b"extra " * 300}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("dir/", b"")
        zf.writestr("stored.bin", files["stored.bin"], compress_type=zipfile.ZIP_STORED)
        zf.writestr("deflated.txt", files["deflated.txt"], compress_type=zipfile.ZIP_DEFLATED)
        raw_name = _RawNameInfo(CAFE.encode("utf-8").decode("cp437"))
        raw_name.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(raw_name, files[CAFE])
        long_extra = zipfile.ZipInfo("long_extra.bin")
        long_extra.compress_type = zipfile.ZIP_DEFLATED
        long_extra.extra = LONG_EXTRA
        zf.writestr(long_extra, files["long_extra.bin"])
    return files


def _members(path) -> dict:
    with storage.open_input(str(path)) as native:
        return {m.name: m for m in zip_members(Window(native))}


def _read(path, m, counted: _Counted | None = None) -> bytes:
    with storage.open_input(str(path)) as native:
        f = counted or _Counted()
        f.native = native
        return read_zip_member(f, m.offset, m.size, m.method, m.crc, m.file_size, f"{path.name}!{m.name}")


def test_members_are_listed_and_read_exactly(tmp_path):
    path = tmp_path / "a.zip"
    files = _write(path)
    with zipfile.ZipFile(path) as zf:  # the name really is stored without the flag
        assert CAFE not in zf.namelist() and not zf.getinfo(CAFE.encode().decode("cp437")).flag_bits & 0x800
    members = _members(path)
    assert set(members) == set(files) | {"dir/"}
    assert members["dir/"].is_dir and not members[CAFE].is_dir
    assert members["stored.bin"].method == zipfile.ZIP_STORED and members["deflated.txt"].method == zipfile.ZIP_DEFLATED
    assert members["deflated.txt"].size < members["deflated.txt"].file_size
    for name, data in files.items():
        counted = _Counted()
        assert _read(path, members[name], counted) == data
        # One ranged read, unless the name and extra field outgrow the slack read with the header.
        assert counted.reads == (2 if name == "long_extra.bin" else 1), name
    assert len(LONG_EXTRA) > SLACK


def _flip_middle_byte(path, m) -> None:
    """Flip one byte in the middle of member ``m``'s stored data."""
    data = bytearray(path.read_bytes())
    header = 30 + int.from_bytes(data[m.offset + 26:m.offset + 28], "little") \
        + int.from_bytes(data[m.offset + 28:m.offset + 30], "little")
    data[m.offset + header + m.size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_member_names_itself(tmp_path):
    path = tmp_path / "a.zip"
    _write(path)
    stored = _members(path)["stored.bin"]
    _flip_middle_byte(path, stored)  # a stored member: only its CRC-32 can tell
    with pytest.raises(ZipMemberError, match=r"a\.zip!stored\.bin: CRC-32 or size mismatch") as e:
        _read(path, stored)
    assert e.value.reason == "corrupt"
    m = _members(path)["deflated.txt"]
    _flip_middle_byte(path, m)
    with pytest.raises(ZipMemberError, match=r"a\.zip!deflated\.txt: (corrupt deflate data|CRC-32 or size)") as e:
        _read(path, m)
    assert e.value.reason == "corrupt"
    # A wrong local header offset is no local header.
    with pytest.raises(ZipMemberError, match="a.zip!deflated.txt: no ZIP local header at offset 1"):
        _read(path, type(m)(m.name, 1, m.size, m.method, m.crc, m.file_size, False))


def test_a_truncated_archive_errors_clearly(tmp_path):
    path = tmp_path / "a.zip"
    _write(path)
    m = _members(path)["deflated.txt"]
    data = path.read_bytes()
    path.write_bytes(data[:m.offset + 30 + len("deflated.txt") + m.size // 2])  # cut inside the member
    with pytest.raises(ZipMemberError, match="a.zip!deflated.txt: the archive ends inside the member") as e:
        _read(path, m)
    assert e.value.reason == "truncated"
    with pytest.raises(ZipDirectoryError, match="not a readable ZIP"):  # its central directory is gone too
        _members(path)


def test_encrypted_and_other_methods_are_refused_without_reading(tmp_path):
    path = tmp_path / "a.zip"
    _write(path)
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")  # the central directory's entries, each name at +46
    while data[entry + 46:entry + 46 + len("stored.bin")] != b"stored.bin":
        entry = data.find(b"PK\x01\x02", entry + 4)
    data[entry + 8] |= 0x1  # general purpose flag bit 0: encrypted
    path.write_bytes(bytes(data))
    members = _members(path)
    assert members["stored.bin"].method == ENCRYPTED and members["deflated.txt"].method == zipfile.ZIP_DEFLATED
    counted = _Counted()
    with pytest.raises(ZipMemberError, match="x.zip!a is encrypted") as e:
        read_zip_member(counted, 0, 10, ENCRYPTED, 0, 10, "x.zip!a")
    assert e.value.reason == "unsupported"
    with pytest.raises(ZipMemberError, match="compressed with method 12"):
        read_zip_member(counted, 0, 10, zipfile.ZIP_BZIP2, 0, 10, "x.zip!a")
    assert counted.reads == 0

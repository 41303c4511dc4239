"""Tar archives as labelling input: index members once, then read them by range or by stream.

Pure functions over file objects (no Ray, no storage URIs); ``depthlib.archives.sources``
connects them to object storage.

Two ways in, chosen by the archive's first bytes (not its name):

- **Plain tar** (``.tar``): :func:`index_seekable` walks the 512-byte headers with
  seeks, never reading member data (:class:`Window` reads the file in aligned
  blocks, so many headers of small members cost one ranged read). Each image
  member gets its absolute byte range in the file, and a worker later reads it
  with one ranged read. A plain tar inside a plain tar (ImageNet-21K's per-class
  tars) is indexed the same way through a window on the outer file, so its
  members also get absolute ranges.
- **Compressed tar** (gzip: ``.tar.gz``/``.tgz``, or a ``.tar`` that is gzip inside):
  gzip cannot be entered in the middle (a deflate stream has no resumable points
  without the decoder's state), so :func:`walk_stream` decompresses from the start,
  once to index and once per reading task, which reads all of the archive's
  wanted members in one pass (``depthlib.archives.stage``). Members of a
  compressed tar nested in a plain one are streamed the same way.

Member names: a leading ``./`` is dropped; an image member is one whose name
ends in one of :data:`IMAGE_SUFFIXES` (case-insensitive), other members (SA-1B's
``.json``) are ignored, and so are macOS ``._*`` resource forks. A member name
repeated in one tar keeps its first copy. Damage (a header that is not a tar
header, a gzip stream that ends early, data cut off by the end of the file) is
reported as :class:`Damage` instead of raised, so a job can record it and go on.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
GZIP_MAGIC = b"\x1f\x8b"
BLOCK = 256 * 1024  # read-ahead of the header walk: one ranged read covers many small members' headers
STREAM_BLOCK = 8 << 20  # read-ahead when a compressed tar nested in a plain one is streamed
_FORGET_EVERY = 4096  # tarfile keeps every TarInfo it returns; drop them so 10M members cost no memory

# Errors a damaged archive raises while it is walked (a storage error is not one of them: it propagates).
FORMAT_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeError)


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.lower().endswith(IMAGE_SUFFIXES) and not base.startswith("._")


def normalise(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


@dataclass(frozen=True)
class Member:
    """One image member. ``name``: its path inside the archive, through nested
    archives (``n01440764.tar/n01440764_10026.JPEG``); ``nested``: those nested
    archives, outermost first; ``offset``: the absolute byte offset of its data in
    the archive file, or -1 when it can only be streamed; ``size``: its bytes."""

    name: str
    nested: tuple[str, ...]
    offset: int
    size: int


@dataclass(frozen=True)
class Damage:
    """Part of an archive that cannot be read: ``where`` is the archive itself ("")
    or a nested archive's name; ``reason`` ``corrupt_archive`` or ``truncated_archive``."""

    where: str
    reason: str
    detail: str


class Window(io.RawIOBase):
    """A seekable read-only view of ``size`` bytes at ``base`` of a random-access
    file (anything with ``read_at(n, offset)``, e.g. a pyarrow ``NativeFile``),
    read in aligned blocks of which the last is kept."""

    def __init__(self, native: Any, base: int = 0, size: int | None = None, block: int = BLOCK):
        self.native = native
        self.base = base
        self.size = native.size() - base if size is None else size
        self._pos = 0
        self._block = block
        self._cache_start = -1
        self._cache = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = max(0, {0: 0, 1: self._pos, 2: self.size}[whence] + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = max(0, min(n, self.size - self._pos))
        if n == 0:
            return b""
        start = self._pos
        if n > self._block:
            out = bytes(self.native.read_at(n, self.base + start))
        else:
            out = b""
            while len(out) < n:
                pos = self.base + start + len(out)
                block_start = pos - pos % self._block
                if block_start != self._cache_start:
                    end = self.base + self.size
                    self._cache = bytes(self.native.read_at(min(self._block, end - block_start), block_start))
                    self._cache_start = block_start
                chunk = self._cache[pos - block_start:pos - block_start + n - len(out)]
                if not chunk:
                    break
                out += chunk
        self._pos = start + len(out)
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


class _Tail(io.RawIOBase):
    """A forward-only reader over a stream that keeps its position and the last
    :data:`_TAIL` bytes read, so a walk that tarfile ends quietly can be told apart:
    end-of-archive zero blocks, or a damaged header (:meth:`block_at`)."""

    _TAIL = 64 * 1024

    def __init__(self, raw: Any):
        self.raw = raw
        self.pos = 0
        self.tail = b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.pos += len(data)
        self.tail = (self.tail + data)[-self._TAIL:]
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def block_at(self, offset: int) -> bytes | None:
        """The 512 bytes at ``offset`` of the stream if still held (fewer at its end), else None."""
        start = self.pos - len(self.tail)
        if offset < start:
            return None
        return self.tail[offset - start:offset - start + tarfile.BLOCKSIZE]


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def _reason(e: BaseException) -> str:
    """``truncated_archive`` when the data ends early (a cut download), else ``corrupt_archive``."""
    text = str(e)
    cut = isinstance(e, EOFError) or "end of data" in text or "ended before" in text
    return "truncated_archive" if cut else "corrupt_archive"


def index_seekable(reader: Window, nested: tuple[str, ...] = ()) -> Iterator[Member | Damage]:
    """The image members of the plain tar ``reader`` views (and of tars inside it), in
    archive order, each with its absolute byte range; damage as :class:`Damage`."""
    where = "/".join(nested)
    prefix = where + "/" if where else ""
    seen: set[str] = set()
    try:
        tf = tarfile.open(fileobj=reader, mode="r:")
    except FORMAT_ERRORS as e:
        yield Damage(where, _reason(e), f"cannot open as a tar archive: {_describe(e)}")
        return
    n = 0
    try:
        for info in tf:
            n += 1
            if n % _FORGET_EVERY == 0:
                tf.members = []
            if not info.isfile():
                continue
            name = normalise(info.name)
            if name in seen:
                continue
            seen.add(name)
            if is_archive_name(name):
                inner = Window(reader.native, reader.base + info.offset_data,
                               min(info.size, max(0, reader.size - info.offset_data)))
                yield from index_archive(inner, nested + (name,))
            elif is_image_name(name):
                yield Member(prefix + name, nested, reader.base + info.offset_data, info.size)
    except FORMAT_ERRORS as e:
        yield Damage(where, _reason(e), f"at byte {tf.offset}: {_describe(e)}; later members are not listed")
        return
    reader.seek(tf.offset)
    damage = _end_damage(where, reader.read(tarfile.BLOCKSIZE), tf.offset)
    if damage:
        yield damage


def _end_damage(where: str, block: bytes | None, offset: int) -> Damage | None:
    """Why a walk that tarfile ended quietly at ``offset`` did not reach the archive's
    end (``block``: the bytes there), or None when it did: zeros, or the end of the file."""
    if block is None or not block.strip(b"\0"):
        return None
    if len(block) < tarfile.BLOCKSIZE:
        return Damage(where, "truncated_archive", f"the archive ends inside a tar header at byte {offset}")
    return Damage(where, "corrupt_archive", f"unreadable tar header at byte {offset}; later members are not listed")


def index_archive(reader: Window, nested: tuple[str, ...] = ()) -> Iterator[Member | Damage]:
    """:func:`index_seekable` for a plain tar; for a gzip-compressed one, a streamed
    walk whose members have ``offset == -1``."""
    reader.seek(0)
    head = reader.read(2)
    reader.seek(0)
    if head == GZIP_MAGIC:  # larger reads: the whole member is streamed
        yield from walk_stream(Window(reader.native, reader.base, reader.size, block=STREAM_BLOCK), nested)
    else:
        yield from index_seekable(reader, nested)


def walk_stream(raw: Any, nested: tuple[str, ...] = (), want: set[str] | None = None
                ) -> Iterator[Member | Damage | tuple[Member, bytes | None, str]]:
    """Walk the (plain or gzip-compressed) tar in the file object ``raw`` from its
    start, in one forward pass.

    ``want`` None: index; yields each image :class:`Member` (``offset`` -1) and any
    :class:`Damage`. ``want`` a set of member names (as :attr:`Member.name`):
    yields ``(member, data, "")`` for each wanted member read whole, or
    ``(member, None, reason_detail)`` when its data is cut off, then any
    :class:`Damage`; nested archives are entered only when a wanted name lies
    inside them, and the walk stops once every wanted member was seen.
    """
    where = "/".join(nested)
    prefix = where + "/" if where else ""
    peek = getattr(raw, "peek", None)
    if peek is not None:
        head = peek(2)[:2]
        source = raw
    else:
        first = raw.read(2)
        head = first
        source = _Prepend(first, raw)
    if head == GZIP_MAGIC:
        source = gzip.GzipFile(fileobj=source, mode="rb")
    tail = _Tail(source)
    try:
        tf = tarfile.open(fileobj=tail, mode="r|")
    except FORMAT_ERRORS as e:
        yield Damage(where, _reason(e), f"cannot open as a tar archive: {_describe(e)}")
        return
    seen: set[str] = set()
    n = 0
    remaining = None if want is None else len(want)
    try:
        for info in tf:
            n += 1
            if n % _FORGET_EVERY == 0:
                tf.members = []
            if not info.isfile():
                continue
            name = normalise(info.name)
            if name in seen:
                continue
            seen.add(name)
            full = prefix + name
            if is_archive_name(name):
                if want is not None and not any(w.startswith(full + "/") for w in want):
                    continue
                inner = tf.extractfile(info)
                for item in walk_stream(inner, nested + (name,), want):
                    if remaining is not None and isinstance(item, tuple):
                        remaining -= 1
                    yield item
            elif is_image_name(name):
                member = Member(full, nested, -1, info.size)
                if want is None:
                    yield member
                    continue
                if full not in want:
                    continue
                remaining -= 1
                try:
                    data = tf.extractfile(info).read()
                except FORMAT_ERRORS as e:
                    yield member, None, f"the archive ends inside the member ({_describe(e)})"
                    raise
                if len(data) != info.size:
                    yield member, None, f"the archive ends inside the member ({len(data)} of {info.size} bytes)"
                    return
                yield member, data, ""
            if remaining is not None and remaining <= 0:
                return
    except FORMAT_ERRORS as e:
        yield Damage(where, _reason(e),
                     f"at byte {tail.pos} of the tar stream: {_describe(e)}; later members are not listed")
        return
    damage = _end_damage(where, tail.block_at(tf.offset), tf.offset)
    if damage:
        yield damage


class _Prepend(io.RawIOBase):
    """``head`` then the rest of ``raw``: a stream whose first bytes were read to sniff it."""

    def __init__(self, head: bytes, raw: Any):
        self.head = head
        self.raw = raw

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                out, self.head = self.head + self.raw.read(), b""
                return out
            out, self.head = self.head[:n], self.head[n:]
            if len(out) < n:
                out += self.raw.read(n - len(out))
            return out
        return self.raw.read(n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

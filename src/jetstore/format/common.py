"""The prefix shared by every jetstore header block, and the small types all headers use.

Every header block jetstore writes (database header, log file header, checkpoint file)
starts with the same 20-byte prefix, so any tool can tell what a file is and whether
its header is intact without knowing anything else about it (ESE puts `le_filetype` at the same
offset 667 in all its headers for the same reason). Little-endian:

| offset | size | field |
| --- | --- | --- |
| 0 | 4 | CRC32C over bytes [4, block_size) of this block |
| 4 | 8 | magic `b"JETSTORE"` |
| 12 | 2 | file type (`FileType`, below) |
| 14 | 2 | format version (`FORMAT_VERSION` = 2) |
| 16 | 4 | block size: the number of bytes the CRC covers (the whole header block) |
| 20 | ... | type-specific fields, then zero padding to the block size |

File types: 1 database header, 2 log file header, 3 checkpoint file, 4 reserved for a backup
manifest (the manifest is JSON with a checksum of its own, `jetstore.backup.backupset`).

Invariants:
- The prefix layout and the CRC rule never change between format versions. A reader can
  therefore verify the checksum first and only then trust the version number, so a damaged
  version field reads as damage, never as "written by a newer engine".
- The CRC covers everything after itself, including the padding: any single-bit change of a
  block is detected (CRC32C detects every burst of up to 32 bits).
- An all-zero block is never valid (the CRC32C of zeros is not zero) and is reported as "not
  initialized", so a preallocated but never written header is told apart from a damaged one.

Shared value types: `Signature` (24 bytes: 16 random bytes + u64 creation time) identifies a
database or a log stream; times are integers, microseconds since the Unix epoch UTC (`now_us`).
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import ClassVar

import google_crc32c

from jetstore._version import __version__
from jetstore.errors import BadLogVersion, FileInvalidType, InvalidParameter, JetError

MAGIC = b"JETSTORE"
FORMAT_VERSION = 2

# crc u32, magic 8s, file type u16, format version u16, block size u32.
_PREFIX = struct.Struct("<I8sHHI")
PREFIX_SIZE = _PREFIX.size
assert PREFIX_SIZE == 20
# Offsets inside the prefix, for readers that look at one field only.
_CRC_END = 4
_TYPE_OFFSET = 12
_BLOCK_SIZE_OFFSET = 16

#: Page sizes an instance may use; the database header and the log header both record one.
PAGE_SIZES = frozenset({4096, 8192, 16384, 32768})

#: What the engine writes into the `engine_version` fields (16 ASCII bytes, NUL padded).
ENGINE_VERSION = f"jetstore {__version__}"
ENGINE_VERSION_SIZE = 16

_U64_LIMIT = 1 << 64


class FileType(IntEnum):
    """The file type at offset 12 of every jetstore header block."""

    DATABASE = 1
    LOG = 2
    CHECKPOINT = 3
    BACKUP_MANIFEST = 4

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    FileType.DATABASE: "database header",
    FileType.LOG: "log file header",
    FileType.CHECKPOINT: "checkpoint file",
    FileType.BACKUP_MANIFEST: "backup manifest",
}


def now_us() -> int:
    """The current time as jetstore stores it: integer microseconds since the Unix epoch, UTC."""
    return time.time_ns() // 1000


def format_time_us(time_us: int) -> str:
    """`2026-11-21T23:59:01Z` for a stored time; never raises, whatever the stored value."""
    try:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_us)
    except OverflowError:
        # A damaged or fuzzed field can be far outside datetime's range; show it raw.
        return f"{time_us}us"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Signature:
    """The identity of a database or a log stream: 16 random bytes and the creation time.

    A database is bound to its log stream by storing the stream's signature in the database
    header (ESE's `signLog`); a mismatch means the database and the logs do not belong together.
    All zero (`Signature.NONE`) means "no signature".
    """

    random: bytes
    time_us: int

    NONE: ClassVar[Signature]
    SIZE: ClassVar[int] = 24
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<16sQ")

    def __post_init__(self) -> None:
        if not isinstance(self.random, bytes) or len(self.random) != 16:
            raise InvalidParameter(f"signature random part must be 16 bytes, got {self.random!r}")
        if not 0 <= self.time_us < _U64_LIMIT:
            raise InvalidParameter(f"signature time out of range: {self.time_us}")

    @classmethod
    def new(cls) -> Signature:
        return cls(os.urandom(16), now_us())

    @property
    def is_none(self) -> bool:
        return self == Signature.NONE

    def pack(self) -> bytes:
        return self._STRUCT.pack(self.random, self.time_us)

    @classmethod
    def unpack_from(cls, data: bytes | memoryview, offset: int = 0) -> Signature:
        random, time_us = cls._STRUCT.unpack_from(data, offset)
        return cls(bytes(random), time_us)

    def __str__(self) -> str:
        if self.is_none:
            return "none"
        digits = self.random.hex()
        return f"{digits[:4]}…{digits[-2:]}@{format_time_us(self.time_us)}"


Signature.NONE = Signature(bytes(16), 0)
assert Signature._STRUCT.size == Signature.SIZE


def describe_subject(what: str, path: str) -> str:
    """`database header copy 0 of 'x.edb'`: how error details name the block they are about."""
    return f"{what} of '{path}'" if path else what


def encode_block(file_type: FileType, body: bytes, block_size: int) -> bytes:
    """A complete header block: prefix, `body`, zero padding to `block_size`, then the CRC.

    Raises InvalidParameter if the body does not fit.
    """
    if not PREFIX_SIZE <= block_size < (1 << 32):
        raise InvalidParameter(f"header block size out of range: {block_size}")
    if len(body) > block_size - PREFIX_SIZE:
        raise InvalidParameter(
            f"{FileType(file_type).description} body is {len(body)} bytes; "
            f"at most {block_size - PREFIX_SIZE} fit in a {block_size}-byte block"
        )
    block = bytearray(block_size)
    _PREFIX.pack_into(block, 0, 0, MAGIC, int(file_type), FORMAT_VERSION, block_size)
    block[PREFIX_SIZE : PREFIX_SIZE + len(body)] = body
    crc = google_crc32c.value(bytes(block[_CRC_END:]))
    struct.pack_into("<I", block, 0, crc)
    return bytes(block)


def identify_file(data: bytes) -> FileType | None:
    """The file type named by a block's prefix, or None if `data` is not a jetstore header.

    Reads the prefix only: nothing is verified, so a known type here does not mean the block
    is intact (use the type's decoder for that).
    """
    if len(data) < _TYPE_OFFSET + 2 or data[4:12] != MAGIC:
        return None
    (raw_type,) = struct.unpack_from("<H", data, _TYPE_OFFSET)
    try:
        return FileType(raw_type)
    except ValueError:
        return None


def decode_block(
    data: bytes | bytearray | memoryview,
    expected_type: FileType,
    *,
    path: str,
    what: str,
    error: type[JetError],
    version_error: type[JetError] | None = None,
    block_size: int | None = None,
) -> memoryview:
    """Verify a header block and return its body (the bytes after the prefix, to block size).

    `what` names the block in error details ("checkpoint copy 1"); `error` is the caller's
    corruption class (ReadVerifyFailure, CheckpointCorrupt, LogFileCorrupt), used for an empty,
    all-zero, truncated or damaged block; `version_error` (default: BadLogVersion for logs,
    else `error`) for a block written by an unknown format version; `block_size`, if given,
    is the size the block must have.
    A block of another file type, or no jetstore block at all, raises FileInvalidType.
    """
    raw = bytes(data)
    subject = describe_subject(what, path)
    size = len(raw)
    if size == 0:
        raise error(f"{subject} is empty (0 bytes)", path=path or None)
    # Checked before anything else: a preallocated, never-written header is the likely cause,
    # and "damaged" would send an operator looking for hardware trouble that is not there.
    if raw.count(0) == size:
        raise error(f"{subject} is not initialized (all {size} bytes are zero)", path=path or None)
    if size < PREFIX_SIZE:
        raise error(
            f"{subject} is truncated ({size} bytes; the header prefix alone is {PREFIX_SIZE})",
            path=path or None,
        )
    stored_crc, magic, raw_type, version, stored_size = _PREFIX.unpack_from(raw, 0)
    if magic != MAGIC:
        # A few flipped bits are far likelier to be damage to our own header than a foreign
        # file; say so, so the operator does not go looking for a mixed-up file.
        distance = sum((x ^ y).bit_count() for x, y in zip(magic, MAGIC, strict=True))
        damage = (
            f"; it differs from the jetstore magic in only {distance} bit(s), so it is more "
            "likely a damaged jetstore header"
            if distance <= 8
            else ""
        )
        raise FileInvalidType(
            f"{subject} is not a jetstore {expected_type.description} "
            f"(magic {magic!r}, expected {MAGIC!r}){damage}",
            path=path or None,
        )
    crc_ok = PREFIX_SIZE <= stored_size <= size and stored_crc == google_crc32c.value(
        raw[_CRC_END:stored_size]
    )
    if raw_type != expected_type:
        try:
            actual = f"a {FileType(raw_type).description} (file type {raw_type})"
        except ValueError:
            actual = f"of unknown file type {raw_type}"
        # Say so when the checksum fails too: then the type field may simply be damaged.
        damage = "" if crc_ok else "; its checksum does not verify either, so it may be damaged"
        raise FileInvalidType(
            f"{subject} is {actual}, not a {expected_type.description}{damage}",
            path=path or None,
        )
    if block_size is not None and stored_size != block_size:
        raise error(
            f"{subject} is damaged: its block size field says {stored_size} bytes, "
            f"expected {block_size}",
            path=path or None,
        )
    if not PREFIX_SIZE <= stored_size <= size:
        raise error(
            f"{subject} is truncated or damaged: its block size field says {stored_size} bytes, "
            f"{size} bytes are available",
            path=path or None,
        )
    if not crc_ok:
        computed = google_crc32c.value(raw[_CRC_END:stored_size])
        raise error(
            f"{subject} is damaged (checksum mismatch: stored 0x{stored_crc:08X}, "
            f"computed 0x{computed:08X})",
            path=path or None,
        )
    # Only now is the version number trustworthy (see the module docstring).
    if version != FORMAT_VERSION:
        # Logs have their own error for this (ESE's JET_errBadLogVersion), so a log written by
        # a newer engine is reported as such rather than as a damaged file.
        default = BadLogVersion if expected_type is FileType.LOG else error
        cls = version_error or default
        raise cls(
            f"{subject} has format version {version}; this engine reads version {FORMAT_VERSION}",
            path=path or None,
        )
    return memoryview(raw)[PREFIX_SIZE:stored_size]


def newer_block_version(data: bytes | bytearray | memoryview) -> int | None:
    """The format version of a jetstore block whose checksum verifies when it is newer than
    `FORMAT_VERSION` (a newer engine's intact block), else None; the version field is
    trusted only once the checksum verifies, as in `decode_block`."""
    raw = bytes(data)
    if len(raw) < PREFIX_SIZE:
        return None
    stored_crc, magic, _type, version, stored_size = _PREFIX.unpack_from(raw, 0)
    if magic != MAGIC or not PREFIX_SIZE <= stored_size <= len(raw):
        return None
    if stored_crc != google_crc32c.value(raw[_CRC_END:stored_size]):
        return None
    return int(version) if version > FORMAT_VERSION else None


def block_size_of(data: bytes | bytearray | memoryview) -> int | None:
    """The block size recorded in a jetstore prefix, unverified; None if `data` has no prefix."""
    if len(data) < PREFIX_SIZE or bytes(data[4:12]) != MAGIC:
        return None
    (size,) = struct.unpack_from("<I", data, _BLOCK_SIZE_OFFSET)
    return int(size)


# --- field helpers shared by the header modules -------------------------------------------------


def pack_ascii(text: str, size: int, *, field: str) -> bytes:
    """`text` as ASCII, NUL padded to `size` bytes; InvalidParameter if it does not fit."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidParameter(f"{field} must be ASCII: {text!r}") from None
    if len(raw) > size or b"\0" in raw:
        raise InvalidParameter(f"{field} must be at most {size} ASCII bytes without NUL: {text!r}")
    return raw.ljust(size, b"\0")


def unpack_ascii(
    raw: bytes, *, field: str, subject: str, error: type[JetError], path: str = ""
) -> str:
    """The inverse of `pack_ascii`, raising `error` (not UnicodeDecodeError) on bad bytes."""
    text = raw.rstrip(b"\0")
    if b"\0" in text or not text.isascii():
        raise error(
            f"{subject} is damaged: {field} is not NUL-padded ASCII ({raw!r})", path=path or None
        )
    return text.decode("ascii")


def encode_name(name: str, max_bytes: int, *, field: str) -> bytes:
    """`name` as UTF-8 (no length prefix), InvalidParameter if longer than `max_bytes`."""
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise InvalidParameter(f"{field} is not encodable as UTF-8: {name!r}") from None
    if len(raw) > max_bytes:
        raise InvalidParameter(f"{field} is {len(raw)} bytes of UTF-8; at most {max_bytes} fit")
    return raw


def decode_name(
    raw: bytes, *, field: str, subject: str, error: type[JetError], path: str = ""
) -> str:
    """UTF-8 `raw` as text, raising `error` (not UnicodeDecodeError) on bad bytes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(
            f"{subject} is damaged: {field} is not valid UTF-8 ({raw!r})", path=path or None
        ) from None


def pack_fields(layout: struct.Struct, *values: object, what: str) -> bytes:
    """`layout.pack(*values)`, turning struct's range errors into InvalidParameter."""
    try:
        return layout.pack(*values)
    except struct.error as exc:
        raise InvalidParameter(f"{what}: a field is out of range ({exc})") from None


__all__ = [
    "ENGINE_VERSION",
    "ENGINE_VERSION_SIZE",
    "FORMAT_VERSION",
    "MAGIC",
    "PAGE_SIZES",
    "PREFIX_SIZE",
    "FileType",
    "Signature",
    "block_size_of",
    "decode_block",
    "decode_name",
    "describe_subject",
    "encode_block",
    "encode_name",
    "format_time_us",
    "identify_file",
    "now_us",
    "pack_ascii",
    "pack_fields",
    "unpack_ascii",
]

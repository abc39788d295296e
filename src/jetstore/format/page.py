"""Page framing: the fixed-size envelope around every database page except the header pages.

Pages are `page_size` bytes, page_size in {4096, 8192, 16384, 32768}. All integers are
little-endian.

```
offset size field
0      4    crc32c over: pgno as 8 bytes LE, then page bytes [4, page_size)
4      1    page type (1 = branch, 2 = leaf, 3 = free-list, 4 = long-value/overflow reserved)
5      1    flags (0)
6      2    entry count
8      8    pgno (the page's own number, also folded into the checksum)
16     8    checkpoint sequence number that wrote the page (for lost-write diagnostics)
24     4    payload length
28     4    reserved (0)
32     ...  payload, then zero padding to page_size
```

This module owns only the envelope: what the payload means belongs to the page's owner (the
B+tree in `jetstore.pages.btree` for branch and leaf pages). It is pure: no I/O, no state.

Invariants and why:
- The checksum covers the page number the page is *expected* at (not only the stored field),
  so a page written to or read from the wrong offset never verifies as good data for the page
  that was asked for. `decode_page` tells the two failure kinds apart: if the checksum is valid
  for the pgno stored in the page but not for the expected one, the page is intact but
  misplaced (`ReadPgnoVerifyFailure`); otherwise its bytes are damaged (`ReadVerifyFailure`).
- A page of all zeros was never written (a hole or a zeroed block): `PageNotInitialized`.
- Decoding a page never raises anything but a `jetstore.errors.JetError` subclass, whatever
  bytes it is given; every such error names the page number and the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import google_crc32c

from jetstore.errors import (
    DatabaseCorrupted,
    InvalidParameter,
    PageNotInitialized,
    ReadPgnoVerifyFailure,
    ReadVerifyFailure,
    page_damage_hint,
)

__all__ = [
    "PAGE_HEADER_SIZE",
    "PAGE_SIZES",
    "DecodedPage",
    "PageType",
    "decode_page",
    "encode_page",
    "payload_capacity",
    "verify_page",
]

PAGE_HEADER_SIZE: Final = 32
PAGE_SIZES: Final = frozenset({4096, 8192, 16384, 32768})

# crc, type, flags, count, pgno, checkpoint_seq, payload length, reserved
_HEADER: Final = struct.Struct("<IBBHQQII")
# the header without its leading crc field
_HEADER_REST: Final = struct.Struct("<BBHQQII")
_PGNO: Final = struct.Struct("<Q")
_U64_MAX: Final = (1 << 64) - 1
_U16_MAX: Final = (1 << 16) - 1


class PageType(IntEnum):
    """The kind of payload a page carries (byte 4 of the page)."""

    BRANCH = 1
    LEAF = 2
    FREE_LIST = 3
    LONG_VALUE = 4


_VALID_TYPES: Final = frozenset(int(t) for t in PageType)


@dataclass(frozen=True, slots=True)
class DecodedPage:
    """A verified page: its header fields and a zero-copy view of its payload."""

    page_type: PageType
    count: int
    checkpoint_seq: int
    payload: memoryview


def payload_capacity(page_size: int) -> int:
    """The largest payload a page of `page_size` bytes holds."""
    if page_size not in PAGE_SIZES:
        raise InvalidParameter(
            f"page size {page_size} is not one of {sorted(PAGE_SIZES)}",
            hint="Use a page size of 4096, 8192, 16384 or 32768 bytes.",
        )
    return page_size - PAGE_HEADER_SIZE


def _crc(pgno: int, body: bytes) -> int:
    # google_crc32c only takes bytes (no memoryview), hence the slice copy by callers.
    return int(google_crc32c.extend(google_crc32c.value(_PGNO.pack(pgno)), body))


def encode_page(
    pgno: int,
    page_type: PageType,
    count: int,
    payload: bytes | bytearray | memoryview,
    page_size: int,
    checkpoint_seq: int,
) -> bytes:
    """A complete page of `page_size` bytes: header, payload, zero padding, checksum."""
    capacity = payload_capacity(page_size)
    if len(payload) > capacity:
        raise InvalidParameter(
            f"payload of {len(payload)} bytes does not fit page {pgno} "
            f"(capacity {capacity} bytes for {page_size}-byte pages)"
        )
    if int(page_type) not in _VALID_TYPES:
        raise InvalidParameter(f"unknown page type {page_type!r} for page {pgno}")
    if not 0 <= pgno <= _U64_MAX:
        raise InvalidParameter(f"page number {pgno} is out of range")
    if not 0 <= count <= _U16_MAX:
        raise InvalidParameter(f"entry count {count} of page {pgno} does not fit 16 bits")
    if not 0 <= checkpoint_seq <= _U64_MAX:
        raise InvalidParameter(f"checkpoint sequence {checkpoint_seq} is out of range")
    rest = b"".join(
        (
            _HEADER_REST.pack(int(page_type), 0, count, pgno, checkpoint_seq, len(payload), 0),
            payload,
            bytes(capacity - len(payload)),
        )
    )
    return _crc(pgno, rest).to_bytes(4, "little") + rest


def _where(pgno: int, path: str) -> str:
    return f"page {pgno} of {path!r}" if path else f"page {pgno}"


def decode_page(
    pgno: int,
    data: bytes | bytearray | memoryview,
    *,
    path: str = "",
    page_size: int | None = None,
) -> DecodedPage:
    """Verify a page read from position `pgno` and return its header fields and payload.

    `page_size`, when given, is the size the page must have; otherwise the length of `data`
    must itself be a valid page size. `path` names the file in error details.
    """
    page, ptype, count, seq, plen = verify_page(pgno, data, path=path, page_size=page_size)
    payload = memoryview(page)[PAGE_HEADER_SIZE : PAGE_HEADER_SIZE + plen]
    return DecodedPage(ptype, count, seq, payload)


def verify_page(
    pgno: int,
    data: bytes | bytearray | memoryview,
    *,
    path: str = "",
    page_size: int | None = None,
) -> tuple[bytes, PageType, int, int, int]:
    """`decode_page` for decoders that slice the page themselves.

    Returns (page as bytes, page type, entry count, checkpoint sequence, payload length); the
    payload is `page[PAGE_HEADER_SIZE : PAGE_HEADER_SIZE + payload length]`.
    """
    if not 0 <= pgno <= _U64_MAX:
        raise InvalidParameter(f"page number {pgno} is out of range")
    if type(data) is not bytes:
        data = bytes(data)
    size = len(data)
    if (page_size is not None and size != page_size) or size not in PAGE_SIZES:
        expected = page_size if page_size is not None else sorted(PAGE_SIZES)
        raise DatabaseCorrupted(
            f"{_where(pgno, path)} is {size} bytes long, expected {expected}", path=path or None
        )
    crc, ptype, flags, count, stored_pgno, seq, plen, reserved = _HEADER.unpack_from(data, 0)
    body = data[4:]
    computed = _crc(pgno, body)
    if computed != crc:
        _raise_bad_checksum(pgno, data, body, crc, computed, stored_pgno, path)
    if stored_pgno != pgno:
        # Only an encoder bug can produce this: the checksum was computed for `pgno`.
        raise ReadPgnoVerifyFailure(
            f"{_where(pgno, path)} has a valid checksum but its header names page {stored_pgno}",
            path=path or None,
        )
    if ptype not in _VALID_TYPES:
        raise DatabaseCorrupted(
            f"{_where(pgno, path)} has unknown page type {ptype}", path=path or None
        )
    if flags != 0 or reserved != 0:
        raise DatabaseCorrupted(
            f"{_where(pgno, path)} has unknown flags 0x{flags:02x} / reserved 0x{reserved:08x}",
            path=path or None,
        )
    if plen > size - PAGE_HEADER_SIZE:
        raise DatabaseCorrupted(
            f"{_where(pgno, path)} claims a payload of {plen} bytes, more than the page holds",
            path=path or None,
        )
    return data, PageType(ptype), count, seq, plen


def _raise_bad_checksum(
    pgno: int, data: bytes, body: bytes, crc: int, computed: int, stored_pgno: int, path: str
) -> None:
    where = _where(pgno, path)
    if crc == 0 and data.count(0) == len(data):
        raise PageNotInitialized(
            f"{where} is blank (all zeros)",
            hint=page_damage_hint(path or None, "The page was never written or was zeroed. "),
            path=path or None,
        )
    if stored_pgno != pgno and _crc(stored_pgno, body) == crc:
        raise ReadPgnoVerifyFailure(
            f"{where} holds page {stored_pgno}: the page is intact but was written to or read "
            "from the wrong place",
            hint=page_damage_hint(path or None, "The storage returned the wrong block. "),
            path=path or None,
        )
    raise ReadVerifyFailure(
        f"checksum mismatch on {where} (stored 0x{crc:08x}, computed 0x{computed:08x})",
        hint=page_damage_hint(path or None, "The page is damaged. "),
        path=path or None,
    )

"""Log frames: how log records are laid out in the data area of a log file.

The data area of a log file (after the 4096-byte header) is a sequence of frames, each starting
at an 8-byte aligned offset:

```
offset size field
0      4    crc32c over: the frame's own LogPosition (generation u32, offset u32, not stored),
            then bytes [4, 16 + length) of the frame
4      4    generation of the file the frame was written into
8      4    durable_before: an offset in this file below which every byte was durable (synced)
            when the frame was appended
12     4    length (low 30 bits) and kind (top 2 bits: 0 FULL, 1 FIRST, 2 MIDDLE, 3 LAST)
16     n    payload (a fragment of one log record)
16+n   ...  zero padding to the next multiple of 8
```

Invariants and why:
- A log record (one committed transaction) is one FULL frame, or a FIRST frame, any MIDDLE
  frames and a LAST frame, possibly spread over several generations; a record without its LAST
  frame was never acknowledged and is not replayed.
- The generation and the position are inside the checksum, so a stale frame left in a recycled
  or preallocated file, or a frame copied to another place, is never taken for a valid one. The
  end of the log is therefore found by checksum and generation, never by file size.
- `durable_before` distinguishes a torn tail from corruption: if a bad frame at offset X is
  followed by a valid frame whose `durable_before` is above X, the bytes at X had been synced
  before, so they were damaged afterwards (corruption, `LogFileCorrupt`); otherwise X lies in
  the last, unacknowledged flush and is simply the end of the log.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

import google_crc32c

FRAME_HEADER: Final = struct.Struct("<IIII")
FRAME_HEADER_SIZE: Final = FRAME_HEADER.size
FRAME_ALIGN: Final = 8
MAX_FRAME_PAYLOAD: Final = (1 << 30) - 1
_POSITION = struct.Struct("<II")
# What the crc covers before the payload: the position (generation, offset), then bytes 4-16
# of the header (generation, durable_before, length and kind).
_CRC_PREFIX = struct.Struct("<IIIII")
_crc_value = google_crc32c.value
_crc_extend = google_crc32c.extend

KIND_FULL: Final = 0
KIND_FIRST: Final = 1
KIND_MIDDLE: Final = 2
KIND_LAST: Final = 3
KIND_NAMES: Final = ("FULL", "FIRST", "MIDDLE", "LAST")

_ZERO_PAD = bytes(FRAME_ALIGN)
# Bytes of a view copied at a time to feed the crc (`_crc_of`).
_CRC_CHUNK: Final = 256 * 1024


def padded_size(payload_length: int) -> int:
    """Bytes a frame with this payload occupies, padding included."""
    size = FRAME_HEADER_SIZE + payload_length
    return (size + FRAME_ALIGN - 1) & ~(FRAME_ALIGN - 1)


def max_payload_for(space: int) -> int:
    """The largest payload whose padded frame fits in `space` bytes (may be <= 0)."""
    return (space & ~(FRAME_ALIGN - 1)) - FRAME_HEADER_SIZE


def encode_frame_header(
    generation: int,
    offset: int,
    durable_before: int,
    kind: int,
    payload: bytes,
) -> tuple[bytes, int]:
    """The 16-byte header of the frame holding `payload`, and its crc (every commit pays
    this: the crc's covered prefix, position then header tail, is one `struct` call)."""
    length_kind = len(payload) | (kind << 30)
    crc: int = _crc_extend(
        _crc_value(_CRC_PREFIX.pack(generation, offset, generation, durable_before, length_kind)),
        payload,
    )
    return FRAME_HEADER.pack(crc, generation, durable_before, length_kind), crc


def frame_padding(payload_length: int) -> bytes:
    """The zero bytes that follow a payload of this length up to the next frame."""
    return _ZERO_PAD[: (-(FRAME_HEADER_SIZE + payload_length)) % FRAME_ALIGN]


def encode_frame_parts(
    generation: int,
    offset: int,
    durable_before: int,
    kind: int,
    payload: bytes | memoryview,
) -> tuple[bytes, bytes, int]:
    """The frame as (header, padding) around `payload`, not joined, and its crc.

    Keeping the payload apart lets the writer hand a large record to the disk without copying
    it again; the crc feeds the generation's running checksum. `payload` may be a view of a
    larger record (a piece of it for one generation): no copy of the piece is kept.
    """
    length_kind = len(payload) | (kind << 30)
    crc = _crc_of(
        _crc_value(_CRC_PREFIX.pack(generation, offset, generation, durable_before, length_kind)),
        payload,
    )
    header = FRAME_HEADER.pack(crc, generation, durable_before, length_kind)
    return header, frame_padding(len(payload)), crc


def _crc_of(crc: int, data: bytes | memoryview) -> int:
    """`crc` extended by `data`. The crc32c extension takes only `bytes`: a view (or a
    bytearray behind it) goes through in chunks copied one at a time, so a piece of a large
    record is never copied whole."""
    if type(data) is bytes:
        return int(_crc_extend(crc, data))
    view = memoryview(data)
    for start in range(0, len(view), _CRC_CHUNK):
        crc = _crc_extend(crc, view[start : start + _CRC_CHUNK].tobytes())
    return crc


def encode_frame(
    generation: int,
    offset: int,
    durable_before: int,
    kind: int,
    payload: bytes,
) -> tuple[bytes, int]:
    """The padded frame bytes and its crc."""
    header, padding, crc = encode_frame_parts(generation, offset, durable_before, kind, payload)
    return header + payload + padding, crc


class Frame(NamedTuple):
    offset: int
    kind: int
    durable_before: int
    payload: bytes
    crc: int
    next_offset: int


def decode_frame(data: bytes, offset: int, generation: int, base: int = 0) -> Frame | None:
    """The valid frame at file offset `offset`, or None.

    `data` holds file bytes starting at file offset `base`. None means "no valid frame of
    this generation starts here" (end of log, torn write or damage: the caller decides).
    """
    start = offset - base
    if start < 0 or start + FRAME_HEADER_SIZE > len(data):
        return None
    crc, frame_generation, durable_before, length_kind = FRAME_HEADER.unpack_from(data, start)
    if frame_generation != generation:
        return None
    length = length_kind & MAX_FRAME_PAYLOAD
    end = start + FRAME_HEADER_SIZE + length
    if end > len(data):
        return None
    payload = data[start + FRAME_HEADER_SIZE : end]
    computed = google_crc32c.extend(
        google_crc32c.value(
            _POSITION.pack(generation, offset) + data[start + 4 : start + FRAME_HEADER_SIZE]
        ),
        payload,
    )
    if computed != crc:
        return None
    return Frame(
        offset, length_kind >> 30, durable_before, payload, crc, offset + padded_size(length)
    )


def accumulate(checksum: int, frame_crc: int) -> int:
    """Fold one frame's crc into a generation's running checksum (chain across files)."""
    result: int = google_crc32c.extend(checksum, frame_crc.to_bytes(4, "little"))
    return result


def find_next_valid_frame(data: bytes, offset: int, generation: int, base: int = 0) -> Frame | None:
    """The first valid frame of `generation` at an aligned offset > `offset`, if any.

    Used only after a bad frame, to tell a torn tail from corruption. It searches for the
    generation number at the place a frame header holds it, so long runs of zeros or of an
    older generation's frames are skipped at C speed.
    """
    needle = generation.to_bytes(4, "little")
    position = offset + FRAME_ALIGN - base
    while True:
        hit = data.find(needle, position + 4)
        if hit < 0:
            return None
        candidate = hit - 4
        if candidate % FRAME_ALIGN == (-base) % FRAME_ALIGN and candidate >= position:
            frame = decode_frame(data, candidate + base, generation, base)
            if frame is not None:
                return frame
        position = candidate + 1

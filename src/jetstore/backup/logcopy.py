"""Copying closed log generations: every frame checked, the chain to the next file checked.

A closed generation G is copied as its header, its frames up to its recorded end, and zeros
to the file size. The recorded end, the generation's running checksum and its creation time
are what the header of generation G+1 says of G (`previous_generation_*`), so the copy of G
is proven complete and unaltered against the file that follows it, the same check recovery
makes (`jetstore.log.reader`). Bytes after the recorded end are not data (a preallocated
file's zeros, or a torn write the roll cut off) and are copied as zeros.

Invariants:
- Only closed generations are copied (the caller rolled the log past them), so the bytes
  read never change while they are read.
- Any failure (bad header, a frame that fails its CRC32C, a frame of another generation, a
  chain link that does not match) raises `LogFileCorrupt`, `BadLogSignature` or
  `InvalidLogSequence` naming the file and offset; the copy is never completed over it.
"""

from __future__ import annotations

from collections.abc import Iterator

from jetstore.errors import BadLogSignature, InvalidLogSequence, LogFileCorrupt
from jetstore.format.common import Signature
from jetstore.format.logframe import (
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    accumulate,
    decode_frame,
    padded_size,
)
from jetstore.format.logheader import LOG_HEADER_SIZE, LogFileHeader, decode_log_header
from jetstore.format.positions import LogPosition
from jetstore.io.files import File

#: Bytes read per call while copying a generation.
READ_SIZE = 1024 * 1024
_MAX_PAYLOAD_MASK = (1 << 30) - 1


def read_log_header(file: File, path: str) -> LogFileHeader:
    return decode_log_header(file.pread(LOG_HEADER_SIZE, 0), path=path)


def stream_generation(
    file: File,
    path: str,
    *,
    generation: int,
    signature: Signature,
    successor: LogFileHeader,
) -> Iterator[bytes]:
    """Yield the copy of closed generation `generation` read from `file`, verified.

    `successor` is the header of generation + 1, which records where this one ends.
    """
    header = read_log_header(file, path)
    if header.generation != generation:
        raise InvalidLogSequence(
            f"log file '{path}' holds generation {header.generation}, expected {generation}",
            hint="restore the original log file names",
            path=path,
        )
    if header.log_signature != signature:
        raise BadLogSignature(
            f"log file '{path}' belongs to log stream {header.log_signature}, not {signature}",
            hint="a log file of another instance was put here; move it away",
            path=path,
        )
    if successor.previous_generation_created_time != header.created_time:
        raise InvalidLogSequence(
            f"log generation {generation + 1} does not follow '{path}': it names a predecessor "
            "created at another time",
            hint="a log file was replaced; restore the original files",
            path=path,
        )
    end = successor.previous_generation_end
    size = header.log_file_size
    if not header.data_start <= end <= size:
        raise LogFileCorrupt(
            f"log generation {generation + 1} says generation {generation} ends at offset "
            f"{end}, outside '{path}' ({size} bytes)",
            path=path,
        )
    head = file.pread(header.data_start, 0)
    yield head
    checksum = 0
    offset = header.data_start  # where the next frame starts
    base = offset  # `buffer` holds the file's bytes from `base` on
    buffer = b""
    read_to = offset
    while offset < end:
        if read_to < end:
            data = file.pread(min(READ_SIZE, end - read_to), read_to)
            if not data:
                raise LogFileCorrupt(
                    f"log file '{path}' ends at offset {read_to}, before its recorded end {end}",
                    hint="the log file was truncated: restore the original",
                    path=path,
                )
            buffer = buffer[offset - base :] + data
            base = offset
            read_to += len(data)
        piece_start = offset
        while offset < end:
            start = offset - base
            if start + FRAME_HEADER_SIZE > len(buffer):
                break
            length = FRAME_HEADER.unpack_from(buffer, start)[3] & _MAX_PAYLOAD_MASK
            if start + padded_size(length) > len(buffer) and read_to < end:
                break  # the rest of the frame comes with the next read
            frame = decode_frame(buffer, offset, generation, base)
            if frame is None or frame.next_offset > end:
                raise LogFileCorrupt(
                    f"log record at {LogPosition(generation, offset)} in '{path}' fails its "
                    "checksum or runs past the generation's recorded end",
                    hint="the log file is damaged: a backup cannot be taken from it; run "
                    "`jetstore logs verify` on the instance directory",
                    path=path,
                )
            checksum = accumulate(checksum, frame.crc)
            offset = frame.next_offset
        if offset > piece_start:
            yield buffer[piece_start - base : offset - base]
        elif read_to >= end:
            raise LogFileCorrupt(
                f"log record at {LogPosition(generation, offset)} in '{path}' is cut off by "
                f"the recorded end {end}",
                path=path,
            )
    if checksum != successor.previous_generation_checksum:
        raise LogFileCorrupt(
            f"the frames of '{path}' do not add up to the checksum generation {generation + 1} "
            "recorded for them",
            hint="the log file is damaged or was altered; restore the original",
            path=path,
        )
    zero = bytes(READ_SIZE)
    remaining = size - end
    while remaining > 0:
        take = min(READ_SIZE, remaining)
        yield zero if take == READ_SIZE else bytes(take)
        remaining -= take

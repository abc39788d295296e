"""The log file header: the first 4096 bytes of every log file.

One common block of type `FileType.LOG` (see `jetstore.format.common` for the 20-byte prefix:
CRC32C, magic, type, version, block size), `LOG_HEADER_SIZE` = 4096 bytes. Offsets from the
start of the file, little-endian:

| offset | size | field |
| --- | --- | --- |
| 0 | 20 | common prefix (block size 4096) |
| 20 | 4 | generation (u32): must match the file name (`edbXXXXXXXX.log`) |
| 24 | 24 | log_signature (`Signature`): the log stream's identity, made with generation 1 |
| 48 | 8 | created_time (u64): when this generation was created |
| 56 | 8 | previous_generation_created_time (u64): created_time of generation - 1 (*) |
| 64 | 4 | previous_generation_end (u32): offset just past its last frame (*) |
| 68 | 4 | previous_generation_checksum (u32): accumulated checksum of its frames (*) |
| 72 | 4 | log_file_size (u32): this file's size (the option at its creation) (**) |
| 76 | 4 | data_start (u32): first byte of the frame area (`LOG_HEADER_SIZE`) |
| 80 | 4 | page_size (u32): the instance's database page size |
| 84 | 4 | flags (u32, `LogFileFlags`): bit 0 circular logging on at creation, bit 1 reserve log |
| 88 | 16 | engine_version (ASCII, NUL padded) |
| 104 | ... | zero to 4096 (covered by the CRC) |

(*) about the previous generation; all three are 0 in the first generation of a stream.
(**) a log file is written in full (zero-filled, synced) before its header is written, so a
file whose header decodes is exactly this long: any other length is damage done after (a cut
or a broken copy), never a crash (`log_file_length_problem`, one rule for recovery, the
verifier and the diagnosis). Generations of one stream may differ when the option changed
between opens.

Times are u64 microseconds since the Unix epoch, UTC.

The three previous_generation_* fields chain the generations together (ESE's `tmPrevGen` and
`checksumPrevLogAllSegments`): recovery checks that generation N's link equals what generation
N-1 actually holds, so a log file from another stream, an older copy of N-1 or a truncated N-1
is detected even when every file verifies on its own.

Invariants (InvalidParameter when encoding, LogFileCorrupt when decoding): generation >= 1;
log_file_size is a multiple of `LOG_FILE_ALIGNMENT`; `LOG_HEADER_SIZE` <= data_start <
log_file_size, data_start a multiple of `LOG_FILE_ALIGNMENT`; previous_generation_end is 0 or
at least `LOG_HEADER_SIZE` (not bounded by this file's log_file_size: the previous file's may
be larger); page_size is one of `PAGE_SIZES`. An unknown format version is
BadLogVersion, not LogFileCorrupt (the checksum is verified first, see `common`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag

from jetstore.errors import InvalidParameter, LogFileCorrupt
from jetstore.format.common import (
    ENGINE_VERSION,
    ENGINE_VERSION_SIZE,
    PAGE_SIZES,
    PREFIX_SIZE,
    FileType,
    Signature,
    decode_block,
    describe_subject,
    encode_block,
    pack_ascii,
    pack_fields,
    unpack_ascii,
)

LOG_HEADER_SIZE = 4096
#: Log files, and their frame area, are whole multiples of this many bytes.
LOG_FILE_ALIGNMENT = 4096
MAX_GENERATION = 0xFFFFFFFF


class LogFileFlags(IntFlag):
    """Bits of the log header's flags field."""

    NONE = 0
    #: Circular logging was on when this file was created.
    CIRCULAR_LOGGING = 1
    #: A reserve log (`edbresNNNNN.jrs`), kept to finish work cleanly when the disk is full.
    RESERVE_LOG = 2


@dataclass(frozen=True, kw_only=True)
class LogFileHeader:
    """The decoded header of one log file. Change it with `dataclasses.replace`."""

    generation: int
    log_signature: Signature
    created_time: int
    log_file_size: int
    previous_generation_created_time: int = 0
    previous_generation_end: int = 0
    previous_generation_checksum: int = 0
    data_start: int = LOG_HEADER_SIZE
    page_size: int = 8192
    flags: LogFileFlags = LogFileFlags.NONE
    engine_version: str = ENGINE_VERSION

    @property
    def circular_logging(self) -> bool:
        return bool(self.flags & LogFileFlags.CIRCULAR_LOGGING)

    @property
    def reserve_log(self) -> bool:
        return bool(self.flags & LogFileFlags.RESERVE_LOG)


_FIELDS = struct.Struct(
    "<"
    "I"  # 20 generation
    "24s"  # 24 log_signature
    "QQ"  # 48 created_time, 56 previous_generation_created_time
    "II"  # 64 previous_generation_end, 68 previous_generation_checksum
    "IIII"  # 72 log_file_size, 76 data_start, 80 page_size, 84 flags
    "16s"  # 88 engine_version
)
assert PREFIX_SIZE + _FIELDS.size == 104


def log_file_size_problem(log_file_size: int) -> str | None:
    """Why `log_file_size` cannot be a log file size, or None. Shared with the checkpoint."""
    if log_file_size % LOG_FILE_ALIGNMENT or log_file_size <= LOG_HEADER_SIZE:
        return (
            f"log file size {log_file_size} is not a multiple of {LOG_FILE_ALIGNMENT} "
            f"larger than the {LOG_HEADER_SIZE}-byte header"
        )
    return None


def log_file_length_problem(name: str, header: LogFileHeader, length: int) -> str | None:
    """Why a log file `name` of `length` bytes with this `header` is damaged, or None.

    The one size rule for recovery (`jetstore.log.reader`) and the verifier
    (`jetstore.log.verify`): the file's own header, not the current option, says how long it
    is, because the option may have changed since the file was made. The writer fills and
    syncs the whole file before it writes the header, so no crash leaves a short file with a
    valid header (a preallocation cut short has no header yet: it is not part of the log).
    """
    expected = header.log_file_size
    if length == expected:
        return None
    what = "is truncated" if length < expected else "is longer than it should be"
    return (
        f"{name} (generation {header.generation}) {what}: it holds {length} bytes, its header "
        f"says it was created with {expected} bytes"
    )


def _invariant_problems(h: LogFileHeader) -> list[str]:
    problems = []
    if not 1 <= h.generation <= MAX_GENERATION:
        problems.append(f"generation {h.generation} is outside [1, {MAX_GENERATION}]")
    size_problem = log_file_size_problem(h.log_file_size)
    if size_problem:
        problems.append(size_problem)
    if h.data_start % LOG_FILE_ALIGNMENT or not LOG_HEADER_SIZE <= h.data_start < h.log_file_size:
        problems.append(
            f"data start {h.data_start} is not a multiple of {LOG_FILE_ALIGNMENT} "
            f"in [{LOG_HEADER_SIZE}, {h.log_file_size})"
        )
    # Bounded by the previous file's frame area, not this file's: the option may change
    # between opens, so a smaller generation can follow one that ends past its own size.
    if h.previous_generation_end != 0 and h.previous_generation_end < LOG_HEADER_SIZE:
        problems.append(
            f"previous generation end {h.previous_generation_end} is inside the "
            f"{LOG_HEADER_SIZE}-byte header"
        )
    if h.page_size not in PAGE_SIZES:
        problems.append(f"page size {h.page_size} is not one of {sorted(PAGE_SIZES)}")
    return problems


def encode_log_header(h: LogFileHeader) -> bytes:
    """The first `LOG_HEADER_SIZE` bytes of a log file. InvalidParameter on an invalid header."""
    problems = _invariant_problems(h)
    if problems:
        raise InvalidParameter(f"log file header cannot be written: {'; '.join(problems)}")
    body = pack_fields(
        _FIELDS,
        h.generation,
        h.log_signature.pack(),
        h.created_time,
        h.previous_generation_created_time,
        h.previous_generation_end,
        h.previous_generation_checksum,
        h.log_file_size,
        h.data_start,
        h.page_size,
        int(h.flags),
        pack_ascii(h.engine_version, ENGINE_VERSION_SIZE, field="engine version"),
        what="log file header",
    )
    return encode_block(FileType.LOG, body, LOG_HEADER_SIZE)


def decode_log_header(data: bytes, *, path: str) -> LogFileHeader:
    """Decode a log file header from the first `LOG_HEADER_SIZE` bytes of `data`.

    LogFileCorrupt if the header is blank, truncated, fails its checksum or holds impossible
    values; BadLogVersion if it was written by an unknown format version; FileInvalidType if
    the file is not a log file.
    """
    what = "log file header"
    subject = describe_subject(what, path)
    body = decode_block(
        data[:LOG_HEADER_SIZE],
        FileType.LOG,
        path=path,
        what=what,
        error=LogFileCorrupt,
        block_size=LOG_HEADER_SIZE,
    )
    (
        generation,
        log_signature,
        created_time,
        previous_created_time,
        previous_end,
        previous_checksum,
        log_file_size,
        data_start,
        page_size,
        flags,
        engine_version,
    ) = _FIELDS.unpack_from(body)
    header = LogFileHeader(
        generation=generation,
        log_signature=Signature.unpack_from(log_signature),
        created_time=created_time,
        previous_generation_created_time=previous_created_time,
        previous_generation_end=previous_end,
        previous_generation_checksum=previous_checksum,
        log_file_size=log_file_size,
        data_start=data_start,
        page_size=page_size,
        # Unknown bits are kept (IntFlag's default), not rejected: the checksum verified, so
        # they were written on purpose, and a dump tool should show them rather than fail.
        flags=LogFileFlags(flags),
        engine_version=unpack_ascii(
            engine_version, field="engine version", subject=subject, error=LogFileCorrupt, path=path
        ),
    )
    problems = _invariant_problems(header)
    if problems:
        raise LogFileCorrupt(f"{subject} is damaged: {'; '.join(problems)}", path=path or None)
    return header

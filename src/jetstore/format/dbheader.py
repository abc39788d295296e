"""The database header: what a database file is, where its tree is and which logs it needs.

The header is kept twice, as page 0 and page 1 of the database file. Each copy is one whole
page (`page_size` bytes) encoded as a common block of type `FileType.DATABASE` (see
`jetstore.format.common` for the 20-byte prefix: CRC32C, magic, type, version, block size).
Offsets are from the start of the page, little-endian:

| offset | size | field |
| --- | --- | --- |
| 0 | 20 | common prefix (block size = page size) |
| 20 | 4 | page_size (u32): 4096, 8192, 16384 or 32768; equals the prefix's block size |
| 24 | 8 | header_seq (u64): incremented on every header update; both copies carry the same value |
| 32 | 1 | state (u8, `DatabaseState`) |
| 33 | 3 | reserved, zero |
| 36 | 4 | db_id (u32): the database's id inside its instance's log stream |
| 40 | 24 | db_signature (`Signature`: 16 random bytes + u64 creation time) |
| 64 | 24 | log_signature: the log stream this database belongs to |
| 88 | 8 | checkpoint_position (`LogPosition`): replay for this database starts here |
| 96 | 4 | generation_min_required (u32) |
| 100 | 4 | generation_max_required (u32) |
| 104 | 4 | generation_max_committed (u32) |
| 108 | 4 | repair_count (u32) |
| 112 | 8 | last_consistent_position (`LogPosition`) |
| 120 | 8 | last_consistent_time (u64) |
| 128 | 8 | last_attach_position (`LogPosition`) |
| 136 | 8 | last_attach_time (u64) |
| 144 | 8 | created_time (u64) |
| 152 | 8 | root_pgno (u64): root page of the B+tree, 0 = empty tree |
| 160 | 8 | freelist_pgno (u64): head page of the persisted free-page list, 0 = none |
| 168 | 8 | free_page_count (u64) |
| 176 | 8 | page_count (u64): pages in use by the file, including the 2 header pages |
| 184 | 8 | checkpoint_seq (u64) |
| 192 | 8 | last_repair_time (u64) |
| 200 | 4 | flags (u32) |
| 204 | 16 | engine_version (ASCII, NUL padded) |
| 220 | 2 | name length in bytes (u16, at most 64) |
| 222 | 64 | name (UTF-8, zero padded) |
| 286 | 2 | reserved, zero |
| 288 | 24 | last full backup (`BackupInfo`) |
| 312 | 24 | last incremental backup |
| 336 | 24 | last differential backup |
| 360 | 24 | last copy backup |
| 384 | 4 | root_crc (u32): CRC32C of the root page's image (0 with no root) |
| 388 | 4 | freelist_crc (u32): CRC32C of the head free-list page's image (0 with no free list) |
| 392 | ... | zero to the end of the page (covered by the CRC) |

`BackupInfo` (24 bytes): generation_low u32, generation_high u32, position `LogPosition` (8),
time_us u64; all zero means "never".

All times are u64 microseconds since the Unix epoch, UTC.

Invariants (checked by the encoder as InvalidParameter and by the decoder as DatabaseCorrupted):
- page_size is one of `PAGE_SIZES` and equals the block size, so a copy is exactly one page.
- page_count >= 2; root_pgno and freelist_pgno are 0 or a page in [2, page_count) (pages 0 and
  1 are the header copies); free_page_count <= page_count - 2; page_count <= 2**32 (page
  numbers are 32 bits, D12).
- root_crc and freelist_crc name the exact page images the header was written with: a read of
  the root or the head free-list page compares them (lost-write detection, D12).
- Both copies of one header update carry the same header_seq. Copy 0 is written (and synced)
  before copy 1, so an interrupted update leaves at most one copy torn or older; the reader
  (`choose_db_header`) takes the valid copy with the highest header_seq and reports the other,
  except beside an intact copy of a newer format version: that refuses (InvalidDatabaseVersion),
  since rewriting it from the other copy would undo a newer engine's write.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

from jetstore.errors import (
    DatabaseCorrupted,
    FileInvalidType,
    InvalidDatabaseVersion,
    InvalidParameter,
    JetError,
    ReadVerifyFailure,
)
from jetstore.format.common import (
    ENGINE_VERSION,
    ENGINE_VERSION_SIZE,
    MAGIC,
    PAGE_SIZES,
    PREFIX_SIZE,
    FileType,
    Signature,
    decode_block,
    decode_name,
    describe_subject,
    encode_block,
    encode_name,
    format_time_us,
    newer_block_version,
    pack_ascii,
    pack_fields,
    unpack_ascii,
)
from jetstore.format.positions import LogPosition

HEADER_COPIES = 2
#: The first page a tree node may use: pages 0 and 1 hold the header copies.
FIRST_DATA_PGNO = HEADER_COPIES
NAME_MAX_BYTES = 64
#: How many bytes `peek_page_size` needs: the smallest page, so a read of that much always works.
PEEK_SIZE = 4096


class DatabaseState(IntEnum):
    """The database's state, ESE's `dbstate` numbering."""

    JUST_CREATED = 1
    DIRTY = 2
    CLEAN = 3
    BEING_RESTORED = 4


@dataclass(frozen=True)
class BackupInfo:
    """One entry of the backup history: which log generations a backup covered, and when."""

    generation_low: int
    generation_high: int
    position: LogPosition
    time_us: int

    NONE: ClassVar[BackupInfo]
    SIZE: ClassVar[int] = 24
    _STRUCT: ClassVar[struct.Struct] = struct.Struct("<II8sQ")

    @property
    def is_none(self) -> bool:
        """True for the all-zero entry: no such backup was ever taken."""
        return self == BackupInfo.NONE

    def pack(self) -> bytes:
        return pack_fields(
            self._STRUCT,
            self.generation_low,
            self.generation_high,
            LogPosition(*self.position).pack(),
            self.time_us,
            what="backup info",
        )

    @classmethod
    def unpack_from(cls, data: bytes | memoryview, offset: int = 0) -> BackupInfo:
        low, high, position, time_us = cls._STRUCT.unpack_from(data, offset)
        return cls(low, high, LogPosition.unpack_from(position), time_us)

    def __str__(self) -> str:
        if self.is_none:
            return "none"
        return (
            f"generations {self.generation_low:08X}-{self.generation_high:08X} "
            f"at {self.position} ({format_time_us(self.time_us)})"
        )


BackupInfo.NONE = BackupInfo(0, 0, LogPosition.MIN, 0)

#: Header changes that clear the backup history (`write_header(**NO_BACKUP_HISTORY)`): for a
#: database leaving its log stream, whose history names that stream's generations.
NO_BACKUP_HISTORY: dict[str, Any] = {
    "last_full_backup": BackupInfo.NONE,
    "last_incremental_backup": BackupInfo.NONE,
    "last_differential_backup": BackupInfo.NONE,
    "last_copy_backup": BackupInfo.NONE,
}
assert BackupInfo._STRUCT.size == BackupInfo.SIZE


@dataclass(frozen=True, kw_only=True)
class DatabaseHeader:
    """The decoded database header (one copy). Change it with `dataclasses.replace`."""

    header_seq: int = 0
    page_size: int = 8192
    state: DatabaseState = DatabaseState.JUST_CREATED
    db_id: int = 0
    db_signature: Signature = Signature.NONE
    log_signature: Signature = Signature.NONE
    checkpoint_position: LogPosition = LogPosition.MIN
    generation_min_required: int = 0
    generation_max_required: int = 0
    generation_max_committed: int = 0
    last_consistent_position: LogPosition = LogPosition.MIN
    last_consistent_time: int = 0
    last_attach_position: LogPosition = LogPosition.MIN
    last_attach_time: int = 0
    created_time: int = 0
    root_pgno: int = 0
    freelist_pgno: int = 0
    root_crc: int = 0
    freelist_crc: int = 0
    free_page_count: int = 0
    page_count: int = HEADER_COPIES
    checkpoint_seq: int = 0
    repair_count: int = 0
    last_repair_time: int = 0
    flags: int = 0
    engine_version: str = ENGINE_VERSION
    name: str = ""
    last_full_backup: BackupInfo = field(default=BackupInfo.NONE)
    last_incremental_backup: BackupInfo = field(default=BackupInfo.NONE)
    last_differential_backup: BackupInfo = field(default=BackupInfo.NONE)
    last_copy_backup: BackupInfo = field(default=BackupInfo.NONE)


# The fields after the prefix, in the order of the table above ("x" bytes are the reserved ones).
_FIELDS = struct.Struct(
    "<"
    "I"  # 20 page_size
    "Q"  # 24 header_seq
    "B3x"  # 32 state, reserved
    "I"  # 36 db_id
    "24s24s"  # 40 db_signature, 64 log_signature
    "8s"  # 88 checkpoint_position
    "IIII"  # 96 gen min/max required, max committed, repair_count
    "8sQ"  # 112 last consistent position and time
    "8sQ"  # 128 last attach position and time
    "Q"  # 144 created_time
    "QQQQ"  # 152 root, freelist, free_page_count, page_count
    "QQ"  # 184 checkpoint_seq, last_repair_time
    "I"  # 200 flags
    "16s"  # 204 engine_version
    "H64s2x"  # 220 name length, 222 name, 286 reserved
    "24s24s24s24s"  # 288 backups: full, incremental, differential, copy
    "II"  # 384 root_crc, freelist_crc
)
assert PREFIX_SIZE + _FIELDS.size == 392
#: Page numbers are 32 bits (the low half of a child reference, D12).
MAX_PAGE_COUNT = 1 << 32
assert min(PAGE_SIZES) >= PREFIX_SIZE + _FIELDS.size
_PAGE_SIZE_OFFSET = PREFIX_SIZE


def _invariant_problems(h: DatabaseHeader) -> list[str]:
    """What is wrong with a header's values (empty when it may be written)."""
    problems = []
    if h.page_size not in PAGE_SIZES:
        problems.append(f"page size {h.page_size} is not one of {sorted(PAGE_SIZES)}")
    if h.page_count < HEADER_COPIES:
        problems.append(f"page count {h.page_count} is below {HEADER_COPIES} (the header pages)")
    if h.page_count > MAX_PAGE_COUNT:
        problems.append(f"page count {h.page_count} exceeds the maximum {MAX_PAGE_COUNT}")
    if (h.root_pgno == 0 and h.root_crc) or (h.freelist_pgno == 0 and h.freelist_crc):
        problems.append("a page checksum is recorded for an empty tree or free list")
    for label, pgno in (("root page", h.root_pgno), ("free list page", h.freelist_pgno)):
        if pgno != 0 and not FIRST_DATA_PGNO <= pgno < h.page_count:
            problems.append(f"{label} {pgno} is outside [{FIRST_DATA_PGNO}, {h.page_count})")
    if h.free_page_count > max(h.page_count - HEADER_COPIES, 0):
        problems.append(
            f"free page count {h.free_page_count} exceeds the {h.page_count} pages in use"
        )
    return problems


def encode_db_header(h: DatabaseHeader) -> bytes:
    """One header copy: exactly `h.page_size` bytes. InvalidParameter on an invalid header."""
    problems = _invariant_problems(h)
    if problems:
        raise InvalidParameter(f"database header cannot be written: {'; '.join(problems)}")
    try:
        state = DatabaseState(h.state)
    except ValueError:
        raise InvalidParameter(f"unknown database state {h.state!r}") from None
    name = encode_name(h.name, NAME_MAX_BYTES, field="database name")
    body = pack_fields(
        _FIELDS,
        h.page_size,
        h.header_seq,
        int(state),
        h.db_id,
        h.db_signature.pack(),
        h.log_signature.pack(),
        LogPosition(*h.checkpoint_position).pack(),
        h.generation_min_required,
        h.generation_max_required,
        h.generation_max_committed,
        h.repair_count,
        LogPosition(*h.last_consistent_position).pack(),
        h.last_consistent_time,
        LogPosition(*h.last_attach_position).pack(),
        h.last_attach_time,
        h.created_time,
        h.root_pgno,
        h.freelist_pgno,
        h.free_page_count,
        h.page_count,
        h.checkpoint_seq,
        h.last_repair_time,
        h.flags,
        pack_ascii(h.engine_version, ENGINE_VERSION_SIZE, field="engine version"),
        len(name),
        name,
        h.last_full_backup.pack(),
        h.last_incremental_backup.pack(),
        h.last_differential_backup.pack(),
        h.last_copy_backup.pack(),
        h.root_crc,
        h.freelist_crc,
        what="database header",
    )
    return encode_block(FileType.DATABASE, body, h.page_size)


def decode_db_header(data: bytes, *, path: str = "", copy: int = 0) -> DatabaseHeader:
    """Decode one header copy (a whole page).

    ReadVerifyFailure if the copy is blank, truncated or fails its checksum; FileInvalidType if
    it is not a database header; InvalidDatabaseVersion if it verifies but was written in
    another format version; DatabaseCorrupted if it verifies but its values are impossible.
    """
    what = f"database header copy {copy}"
    subject = describe_subject(what, path)
    body = decode_block(
        data,
        FileType.DATABASE,
        path=path,
        what=what,
        error=ReadVerifyFailure,
        version_error=InvalidDatabaseVersion,
        block_size=len(data),
    )

    def corrupted(reason: str) -> DatabaseCorrupted:
        return DatabaseCorrupted(f"{subject} is damaged: {reason}", path=path or None)

    if len(body) < _FIELDS.size:
        # The block verifies but cannot hold the fields: never let struct.error escape.
        raise corrupted(
            f"the copy is {len(data)} bytes, too short to hold the header fields "
            f"({PREFIX_SIZE + _FIELDS.size} bytes)"
        )
    (
        page_size,
        header_seq,
        raw_state,
        db_id,
        db_signature,
        log_signature,
        checkpoint_position,
        gen_min,
        gen_max,
        gen_max_committed,
        repair_count,
        consistent_position,
        consistent_time,
        attach_position,
        attach_time,
        created_time,
        root_pgno,
        freelist_pgno,
        free_page_count,
        page_count,
        checkpoint_seq,
        last_repair_time,
        flags,
        engine_version,
        name_length,
        name,
        full,
        incremental,
        differential,
        copy_backup,
        root_crc,
        freelist_crc,
    ) = _FIELDS.unpack_from(body)

    if page_size != len(data):
        raise corrupted(f"its page size field says {page_size} but the copy is {len(data)} bytes")
    try:
        state = DatabaseState(raw_state)
    except ValueError:
        raise corrupted(f"unknown state {raw_state}") from None
    if name_length > NAME_MAX_BYTES:
        raise corrupted(f"name length {name_length} exceeds {NAME_MAX_BYTES}")
    header = DatabaseHeader(
        header_seq=header_seq,
        page_size=page_size,
        state=state,
        db_id=db_id,
        db_signature=Signature.unpack_from(db_signature),
        log_signature=Signature.unpack_from(log_signature),
        checkpoint_position=LogPosition.unpack_from(checkpoint_position),
        generation_min_required=gen_min,
        generation_max_required=gen_max,
        generation_max_committed=gen_max_committed,
        last_consistent_position=LogPosition.unpack_from(consistent_position),
        last_consistent_time=consistent_time,
        last_attach_position=LogPosition.unpack_from(attach_position),
        last_attach_time=attach_time,
        created_time=created_time,
        root_pgno=root_pgno,
        freelist_pgno=freelist_pgno,
        root_crc=root_crc,
        freelist_crc=freelist_crc,
        free_page_count=free_page_count,
        page_count=page_count,
        checkpoint_seq=checkpoint_seq,
        repair_count=repair_count,
        last_repair_time=last_repair_time,
        flags=flags,
        engine_version=unpack_ascii(
            engine_version,
            field="engine version",
            subject=subject,
            error=DatabaseCorrupted,
            path=path,
        ),
        name=decode_name(
            name[:name_length], field="name", subject=subject, error=DatabaseCorrupted, path=path
        ),
        last_full_backup=BackupInfo.unpack_from(full),
        last_incremental_backup=BackupInfo.unpack_from(incremental),
        last_differential_backup=BackupInfo.unpack_from(differential),
        last_copy_backup=BackupInfo.unpack_from(copy_backup),
    )
    problems = _invariant_problems(header)
    if problems:
        raise corrupted("; ".join(problems))
    return header


def choose_db_header(copy0: bytes, copy1: bytes, *, path: str) -> tuple[DatabaseHeader, list[str]]:
    """The header to use from the two copies, and the problems found (empty if all is well).

    Takes the valid copy with the higher header_seq. Each problem is a sentence for the
    operator naming the copy and what the caller should do (rewrite the other copy from the
    chosen one). Neither copy valid: FileInvalidType if copy 0 is not a database header at
    all (the file is something else), InvalidDatabaseVersion if a copy is intact but of
    another format version (the file is another engine's, not damaged), else
    ReadVerifyFailure naming both problems. A copy of a newer format version is
    InvalidDatabaseVersion even when the other copy is valid.
    """
    headers: list[DatabaseHeader | None] = []
    errors: list[JetError | None] = []
    for number, data in enumerate((copy0, copy1)):
        try:
            headers.append(decode_db_header(data, path=path, copy=number))
            errors.append(None)
        except JetError as exc:
            headers.append(None)
            errors.append(exc)
    # A newer engine writes copy 0 first: a crash there leaves copy 1 of this format, and
    # taking it would write this engine's header over the newer engine's (as the checkpoint
    # file's reader refuses, `checkpoint.newer_copy_error`).
    for data, error in zip((copy0, copy1), errors, strict=True):
        if isinstance(error, InvalidDatabaseVersion) and newer_block_version(data) is not None:
            raise InvalidDatabaseVersion(error.detail, path=path or None)
    h0, h1 = headers
    subject = describe_subject("database header", path)
    if h0 is None and h1 is None:
        assert errors[0] is not None and errors[1] is not None
        detail = f"{errors[0].detail}; {errors[1].detail}"
        if isinstance(errors[0], FileInvalidType):
            raise FileInvalidType(detail, path=path or None)
        # Checked before damage: "restore or repair" would be the wrong way out for an intact
        # file that only needs the engine that wrote it.
        version = next((e for e in errors if isinstance(e, InvalidDatabaseVersion)), None)
        if version is not None:
            raise InvalidDatabaseVersion(version.detail, path=path or None)
        raise ReadVerifyFailure(
            f"both copies of the {subject} are unusable: {detail}",
            path=path or None,
            hint="The database header cannot be recovered from this file. Restore the "
            "database from a backup (or run repair, which rebuilds the header).",
        )
    if h0 is None or h1 is None:
        good = 1 if h0 is None else 0
        bad_error = errors[1 - good]
        assert bad_error is not None
        chosen = h1 if h0 is None else h0
        assert chosen is not None
        return chosen, [f"{bad_error.detail}; copy {good} is valid and will be rewritten"]
    if h0.header_seq != h1.header_seq:
        new, old = (0, 1) if h0.header_seq > h1.header_seq else (1, 0)
        chosen = (h0, h1)[new]
        other = (h0, h1)[old]
        return chosen, [
            f"copy {old} of the {subject} is older (header_seq {other.header_seq}) than copy "
            f"{new} (header_seq {chosen.header_seq}): the last header update was interrupted "
            f"between the two copies; copy {new} is used and copy {old} will be rewritten"
        ]
    if h0 != h1:
        # Same seq, different contents: never written that way; prefer copy 0 because it is
        # written first, so it holds the newer of the two if an update was lost in between.
        return h0, [
            f"the two copies of the {subject} both have header_seq {h0.header_seq} but "
            "different contents; copy 0 is used and copy 1 will be rewritten"
        ]
    return h0, []


def peek_page_size(data: bytes) -> int | None:
    """The page size of a database file from (at least) its first `PEEK_SIZE` bytes.

    Needs no page size to start with, so a file can be opened without knowing it. Only the
    prefix and the page size field are looked at (the CRC covers the whole page), so the
    caller must still read and verify the whole header page with `choose_db_header`. None
    if `data` does not start like a database header.
    """
    if len(data) < _PAGE_SIZE_OFFSET + 4 or bytes(data[4:12]) != MAGIC:
        return None
    (file_type,) = struct.unpack_from("<H", data, 12)
    (block_size,) = struct.unpack_from("<I", data, 16)
    (page_size,) = struct.unpack_from("<I", data, _PAGE_SIZE_OFFSET)
    # Two independent copies of the size (prefix block size and field) must agree before the
    # caller trusts it enough to read that many bytes.
    if file_type != FileType.DATABASE or block_size != page_size or page_size not in PAGE_SIZES:
        return None
    return int(page_size)

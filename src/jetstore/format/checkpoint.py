"""The checkpoint file `edb.chk`: where soft recovery starts, and what was attached.

The file is `CHECKPOINT_FILE_SIZE` = 8192 bytes: two copies of a 4096-byte common block of type
`FileType.CHECKPOINT` (prefix: see `jetstore.format.common`), copy 0 at offset 0 and copy 1 at
offset 4096. Offsets inside one copy, little-endian:

| offset | size | field |
| --- | --- | --- |
| 0 | 20 | common prefix (block size 4096) |
| 20 | 8 | seq (u64): +1 per checkpoint write; both copies of one write carry the same seq |
| 28 | 24 | log_signature (`Signature`): the log stream this checkpoint belongs to |
| 52 | 8 | checkpoint_position (`LogPosition`): where soft recovery starts replaying |
| 60 | 8 | written_time (u64) |
| 68 | 1 | circular_logging (u8: 0 or 1) |
| 69 | 3 | reserved, zero |
| 72 | 4 | log_file_size (u32) |
| 76 | 4 | page_size (u32) |
| 80 | 24 | last_full_backup (`BackupInfo`, see `dbheader`) |
| 104 | 24 | last_incremental_backup (`BackupInfo`) |
| 128 | 2 | attached database count (u16) |
| 130 | ... | per attached database: db_id u32, db_signature (24), name length u16, name (UTF-8) |
| ... | ... | zero to 4096 (covered by the CRC) |

Each attached-database entry takes 30 bytes plus its name; the entries must fit in the
`ATTACH_AREA_SIZE` = 3966 bytes from offset 130 to the end of the block (InvalidParameter when
encoding otherwise).

How it is written and read (ESE's shadowed header, `ErrUtilWriteShadowedHeader`): the writer
writes the same state to copy 0, syncs, then writes copy 1 and syncs, so a torn write damages at
most one copy and the other still holds either the new or the previous checkpoint. The reader
(`read_checkpoint_file`) verifies both and takes the valid copy with the highest seq, reporting
the other as a problem for the caller to rewrite.

Invariants (InvalidParameter when encoding, CheckpointCorrupt when decoding): page_size is one
of `PAGE_SIZES`; log_file_size is a valid log file size; circular_logging is 0 or 1; the
attached db_ids are unique; names are UTF-8.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from jetstore.errors import (
    BadLogVersion,
    CheckpointCorrupt,
    FileInvalidType,
    InvalidParameter,
    JetError,
)
from jetstore.format.common import (
    FORMAT_VERSION,
    PAGE_SIZES,
    PREFIX_SIZE,
    FileType,
    Signature,
    decode_block,
    decode_name,
    describe_subject,
    encode_block,
    encode_name,
    newer_block_version,
    pack_fields,
)
from jetstore.format.dbheader import BackupInfo
from jetstore.format.filenames import CHECKPOINT_FILE
from jetstore.format.logheader import log_file_size_problem
from jetstore.format.positions import LogPosition

CHECKPOINT_COPY_SIZE = 4096
CHECKPOINT_COPIES = 2
CHECKPOINT_FILE_SIZE = CHECKPOINT_COPY_SIZE * CHECKPOINT_COPIES

_FIELDS = struct.Struct(
    "<"
    "Q"  # 20 seq
    "24s"  # 28 log_signature
    "8s"  # 52 checkpoint_position
    "Q"  # 60 written_time
    "B3x"  # 68 circular_logging, reserved
    "II"  # 72 log_file_size, 76 page_size
    "24s24s"  # 80 last_full_backup, 104 last_incremental_backup
    "H"  # 128 attached count
)
assert PREFIX_SIZE + _FIELDS.size == 130
_ENTRY = struct.Struct("<I24sH")  # db_id, db_signature, name length; the name follows
assert _ENTRY.size == 30
_ATTACH_OFFSET = PREFIX_SIZE + _FIELDS.size
ATTACH_AREA_SIZE = CHECKPOINT_COPY_SIZE - _ATTACH_OFFSET


@dataclass(frozen=True)
class AttachedDatabase:
    """A database attached to the instance when the checkpoint was written."""

    db_id: int
    name: str
    signature: Signature


@dataclass(frozen=True, kw_only=True)
class CheckpointState:
    """The decoded contents of one checkpoint copy. Change it with `dataclasses.replace`."""

    seq: int = 0
    log_signature: Signature = Signature.NONE
    checkpoint_position: LogPosition = LogPosition.MIN
    written_time: int = 0
    circular_logging: bool = False
    log_file_size: int = 0
    page_size: int = 8192
    attached: tuple[AttachedDatabase, ...] = ()
    last_full_backup: BackupInfo = BackupInfo.NONE
    last_incremental_backup: BackupInfo = BackupInfo.NONE

    def __post_init__(self) -> None:
        # Accept any sequence (a list is natural at the call site) but keep the state immutable.
        if not isinstance(self.attached, tuple):
            object.__setattr__(self, "attached", tuple(self.attached))


def attached_size(attached: Sequence[AttachedDatabase]) -> int:
    """Bytes the attached-database entries take; they must not exceed `ATTACH_AREA_SIZE`."""
    return sum(
        _ENTRY.size + len(encode_name(a.name, ATTACH_AREA_SIZE, field="attached database name"))
        for a in attached
    )


def _invariant_problems(state: CheckpointState) -> list[str]:
    problems = []
    if state.page_size not in PAGE_SIZES:
        problems.append(f"page size {state.page_size} is not one of {sorted(PAGE_SIZES)}")
    size_problem = log_file_size_problem(state.log_file_size)
    if size_problem:
        problems.append(size_problem)
    ids = [a.db_id for a in state.attached]
    if len(set(ids)) != len(ids):
        problems.append(f"attached database ids are not unique: {ids}")
    return problems


def encode_checkpoint_copy(state: CheckpointState) -> bytes:
    """One checkpoint copy (`CHECKPOINT_COPY_SIZE` bytes); write it at offset 0 and at 4096."""
    problems = _invariant_problems(state)
    if problems:
        raise InvalidParameter(f"checkpoint cannot be written: {'; '.join(problems)}")
    entries = bytearray()
    for db in state.attached:
        name = encode_name(db.name, ATTACH_AREA_SIZE, field=f"attached database {db.db_id} name")
        entries += pack_fields(
            _ENTRY, db.db_id, db.signature.pack(), len(name), what="attached database"
        )
        entries += name
    if len(entries) > ATTACH_AREA_SIZE:
        raise InvalidParameter(
            f"{len(state.attached)} attached databases need {len(entries)} bytes in the "
            f"checkpoint; at most {ATTACH_AREA_SIZE} fit (shorten names or attach fewer)"
        )
    fixed = pack_fields(
        _FIELDS,
        state.seq,
        state.log_signature.pack(),
        LogPosition(*state.checkpoint_position).pack(),
        state.written_time,
        int(bool(state.circular_logging)),
        state.log_file_size,
        state.page_size,
        state.last_full_backup.pack(),
        state.last_incremental_backup.pack(),
        len(state.attached),
        what="checkpoint",
    )
    return encode_block(FileType.CHECKPOINT, fixed + bytes(entries), CHECKPOINT_COPY_SIZE)


def newer_copy_error(data: bytes, *, path: str, copy: int) -> BadLogVersion | None:
    """BadLogVersion for checkpoint copy `copy` when it is an intact block of a newer format
    version, else None.

    Not CheckpointCorrupt: that error's way out (move the file aside, it is only a hint) is
    the one thing not to do here first, since recovery refuses such a file rather than write
    its own over it (D6). Every reader (recovery, diagnose, dump, status, checksum) reports
    it through this one error.
    """
    version = newer_block_version(data)
    if version is None:
        return None
    return BadLogVersion(
        f"checkpoint copy {copy} of {_file_subject(path)} has format version {version}, "
        f"newer than this engine's {FORMAT_VERSION}: a newer jetstore used this directory",
        hint=f"open the directory with the jetstore release that wrote {_file_subject(path)} "
        f"(format version {version}); this engine never writes over a newer engine's file. "
        "Only if that release is gone and every log and database file is of version "
        f"{FORMAT_VERSION}: move {CHECKPOINT_FILE} out of the directory (it is only a hint) "
        "and open again",
        path=path or None,
    )


def newer_checkpoint_error(data: bytes, *, path: str) -> BadLogVersion | None:
    """`newer_copy_error` of the first copy of the whole file that is newer, else None.
    Either copy counts: a newer engine writes copy 0 first, so a crash there leaves copy 1
    of this format."""
    for copy in range(CHECKPOINT_COPIES):
        start = copy * CHECKPOINT_COPY_SIZE
        error = newer_copy_error(data[start : start + CHECKPOINT_COPY_SIZE], path=path, copy=copy)
        if error is not None:
            return error
    return None


def decode_checkpoint_copy(data: bytes, *, path: str, copy: int) -> CheckpointState:
    """Decode one checkpoint copy (the 4096 bytes at offset `copy` * 4096).

    CheckpointCorrupt if it is blank, truncated, damaged, of an older format version or
    holds impossible values; BadLogVersion (`newer_copy_error`) if it is of a newer one;
    FileInvalidType if it is not a checkpoint block.
    """
    newer = newer_copy_error(data, path=path, copy=copy)
    if newer is not None:
        raise newer
    what = f"checkpoint copy {copy}"
    subject = describe_subject(what, path)
    body = decode_block(
        data,
        FileType.CHECKPOINT,
        path=path,
        what=what,
        error=CheckpointCorrupt,
        block_size=CHECKPOINT_COPY_SIZE,
    )

    def corrupt(reason: str) -> CheckpointCorrupt:
        return CheckpointCorrupt(f"{subject} is damaged: {reason}", path=path or None)

    (
        seq,
        log_signature,
        checkpoint_position,
        written_time,
        circular,
        log_file_size,
        page_size,
        full,
        incremental,
        count,
    ) = _FIELDS.unpack_from(body)
    if circular not in (0, 1):
        raise corrupt(f"circular logging flag is {circular}, expected 0 or 1")
    attached = []
    offset = _FIELDS.size
    for index in range(count):
        # Bounds are checked before every read: struct.error must never escape a decoder.
        if offset + _ENTRY.size > len(body):
            raise corrupt(f"attached database entry {index} of {count} runs past the block end")
        db_id, signature, name_length = _ENTRY.unpack_from(body, offset)
        offset += _ENTRY.size
        if offset + name_length > len(body):
            raise corrupt(f"attached database entry {index} name runs past the block end")
        name = decode_name(
            bytes(body[offset : offset + name_length]),
            field=f"attached database {db_id} name",
            subject=subject,
            error=CheckpointCorrupt,
            path=path,
        )
        offset += name_length
        attached.append(AttachedDatabase(db_id, name, Signature.unpack_from(signature)))
    state = CheckpointState(
        seq=seq,
        log_signature=Signature.unpack_from(log_signature),
        checkpoint_position=LogPosition.unpack_from(checkpoint_position),
        written_time=written_time,
        circular_logging=bool(circular),
        log_file_size=log_file_size,
        page_size=page_size,
        attached=tuple(attached),
        last_full_backup=BackupInfo.unpack_from(full),
        last_incremental_backup=BackupInfo.unpack_from(incremental),
    )
    problems = _invariant_problems(state)
    if problems:
        raise corrupt("; ".join(problems))
    return state


def encode_checkpoint_file(state: CheckpointState) -> bytes:
    """The whole file (both copies), for tools and tests; the engine writes the copies apart."""
    copy = encode_checkpoint_copy(state)
    return copy * CHECKPOINT_COPIES


def _file_subject(path: str) -> str:
    return f"the checkpoint file '{path}'" if path else "the checkpoint file"


def read_checkpoint_file(data: bytes, *, path: str) -> tuple[CheckpointState, list[str]]:
    """The checkpoint to use from the whole file, and the problems found (empty if all is well).

    Takes the valid copy with the higher seq. A file shorter than `CHECKPOINT_FILE_SIZE` is
    read as far as it goes: a copy that is not complete is reported as damaged. Either copy
    of a newer format version: BadLogVersion (`newer_checkpoint_error`), even when the other
    copy is valid (its state is not this engine's to rewrite the newer copy from). Neither
    copy valid: FileInvalidType if copy 0 is not a checkpoint block at all (the file is
    something else), else CheckpointCorrupt naming both problems.
    """
    newer = newer_checkpoint_error(data, path=path)
    if newer is not None:
        raise newer
    states: list[CheckpointState | None] = []
    errors: list[JetError | None] = []
    for number in range(CHECKPOINT_COPIES):
        start = number * CHECKPOINT_COPY_SIZE
        chunk = data[start : start + CHECKPOINT_COPY_SIZE]
        try:
            if len(chunk) < CHECKPOINT_COPY_SIZE:
                missing = "missing" if not chunk else "incomplete"
                raise CheckpointCorrupt(
                    f"{describe_subject(f'checkpoint copy {number}', path)} is {missing}: the "
                    f"file is {len(data)} bytes, {CHECKPOINT_FILE_SIZE} expected",
                    path=path or None,
                )
            states.append(decode_checkpoint_copy(chunk, path=path, copy=number))
            errors.append(None)
        except JetError as exc:
            states.append(None)
            errors.append(exc)

    problems = []
    if len(data) > CHECKPOINT_FILE_SIZE:
        problems.append(
            f"{_file_subject(path)} is {len(data)} bytes, longer than "
            f"{CHECKPOINT_FILE_SIZE}; the extra bytes are ignored"
        )
    s0, s1 = states
    if s0 is None and s1 is None:
        assert errors[0] is not None and errors[1] is not None
        detail = f"{errors[0].detail}; {errors[1].detail}"
        if isinstance(errors[0], FileInvalidType):
            raise FileInvalidType(detail, path=path or None)
        raise CheckpointCorrupt(
            f"both copies of {_file_subject(path)} are unusable: {detail}",
            path=path or None,
        )
    if s0 is None or s1 is None:
        good = 1 if s0 is None else 0
        bad_error = errors[1 - good]
        assert bad_error is not None
        chosen = s1 if s0 is None else s0
        assert chosen is not None
        problems.append(f"{bad_error.detail}; copy {good} is valid and will be rewritten")
        return chosen, problems
    if s0.seq != s1.seq:
        new, old = (0, 1) if s0.seq > s1.seq else (1, 0)
        chosen, other = (s0, s1)[new], (s0, s1)[old]
        problems.append(
            f"copy {old} of {_file_subject(path)} is older (seq "
            f"{other.seq}) than copy {new} (seq {chosen.seq}): the last checkpoint write was "
            f"interrupted between the two copies; copy {new} is used and copy {old} will be "
            "rewritten"
        )
        return chosen, problems
    if s0 != s1:
        # Never written that way; copy 0 is written first, so it holds the newer state.
        problems.append(
            f"the two copies of {_file_subject(path)} both have seq "
            f"{s0.seq} but different contents; copy 0 is used and copy 1 will be rewritten"
        )
    return s0, problems

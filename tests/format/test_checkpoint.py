"""Checkpoint file: layout, round trips, damage detection and the choice between the copies."""

from __future__ import annotations

import dataclasses
import struct

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstore.errors import (
    BadLogVersion,
    CheckpointCorrupt,
    FileInvalidType,
    InvalidParameter,
    JetError,
)
from jetstore.format.checkpoint import (
    ATTACH_AREA_SIZE,
    CHECKPOINT_COPY_SIZE,
    CHECKPOINT_FILE_SIZE,
    AttachedDatabase,
    CheckpointState,
    attached_size,
    decode_checkpoint_copy,
    encode_checkpoint_copy,
    encode_checkpoint_file,
    read_checkpoint_file,
)
from jetstore.format.common import (
    FORMAT_VERSION,
    MAGIC,
    PAGE_SIZES,
    FileType,
    Signature,
    encode_block,
)
from jetstore.format.dbheader import BackupInfo, DatabaseHeader, encode_db_header
from jetstore.format.logheader import LogFileHeader, encode_log_header
from jetstore.format.positions import LogPosition

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
signatures = st.builds(Signature, st.binary(min_size=16, max_size=16), U64)
positions = st.builds(LogPosition, U32, U32)
backups = st.builds(BackupInfo, U32, U32, positions, U64)
log_file_sizes = st.integers(2, 2**20 - 1).map(lambda n: n * 4096)


@st.composite
def attached_lists(draw: st.DrawFn) -> tuple[AttachedDatabase, ...]:
    ids = draw(st.lists(U32, unique=True, max_size=12))
    return tuple(
        AttachedDatabase(db_id, draw(st.text(max_size=40)), draw(signatures)) for db_id in ids
    )


states = st.builds(
    CheckpointState,
    seq=U64,
    log_signature=signatures,
    checkpoint_position=positions,
    written_time=U64,
    circular_logging=st.booleans(),
    log_file_size=log_file_sizes,
    page_size=st.sampled_from(sorted(PAGE_SIZES)),
    attached=attached_lists(),
    last_full_backup=backups,
    last_incremental_backup=backups,
).filter(lambda s: attached_size(s.attached) <= ATTACH_AREA_SIZE)


def sample_state(**changes: object) -> CheckpointState:
    base = CheckpointState(
        seq=41,
        log_signature=Signature(bytes(range(16)), 1_700_000_000_000_000),
        checkpoint_position=LogPosition(9, 0x3000),
        written_time=1_700_000_000_123_456,
        circular_logging=True,
        log_file_size=1 << 20,
        page_size=8192,
        attached=(
            AttachedDatabase(1, "orders", Signature(bytes(range(1, 17)), 5)),
            AttachedDatabase(2, "stock", Signature(bytes(range(2, 18)), 6)),
        ),
        last_full_backup=BackupInfo(1, 4, LogPosition(4, 0x100), 77),
        last_incremental_backup=BackupInfo(5, 6, LogPosition(6, 0x200), 88),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def reseal(block: bytes | bytearray) -> bytes:
    raw = bytearray(block)
    struct.pack_into("<I", raw, 0, google_crc32c.value(bytes(raw[4:])))
    return bytes(raw)


# --- layout and round trips -------------------------------------------------------------------


def test_documented_offsets() -> None:
    s = sample_state()
    block = encode_checkpoint_copy(s)
    assert len(block) == CHECKPOINT_COPY_SIZE == 4096
    assert CHECKPOINT_FILE_SIZE == 8192

    def at(fmt: str, offset: int) -> object:
        (value,) = struct.unpack_from("<" + fmt, block, offset)
        return value

    assert block[4:12] == MAGIC
    assert at("H", 12) == FileType.CHECKPOINT
    assert at("H", 14) == FORMAT_VERSION
    assert at("I", 16) == 4096
    assert at("Q", 20) == 41
    assert block[28:52] == s.log_signature.pack()
    assert block[52:60] == LogPosition(9, 0x3000).pack()
    assert at("Q", 60) == 1_700_000_000_123_456
    assert at("B", 68) == 1
    assert block[69:72] == bytes(3)
    assert at("I", 72) == 1 << 20
    assert at("I", 76) == 8192
    assert block[80:104] == s.last_full_backup.pack()
    assert block[104:128] == s.last_incremental_backup.pack()
    assert at("H", 128) == 2
    first = struct.pack("<I24sH", 1, s.attached[0].signature.pack(), 6) + b"orders"
    second = struct.pack("<I24sH", 2, s.attached[1].signature.pack(), 5) + b"stock"
    assert block[130 : 130 + len(first) + len(second)] == first + second
    assert block[130 + len(first) + len(second) :] == bytes(4096 - 130 - 71)
    assert at("I", 0) == google_crc32c.value(block[4:])
    assert ATTACH_AREA_SIZE == 4096 - 130


@given(states)
@settings(max_examples=200)
def test_round_trip(state: CheckpointState) -> None:
    block = encode_checkpoint_copy(state)
    assert len(block) == CHECKPOINT_COPY_SIZE
    assert decode_checkpoint_copy(block, path="edb.chk", copy=0) == state
    chosen, problems = read_checkpoint_file(block + block, path="edb.chk")
    assert chosen == state and problems == []


def test_whole_file_helper_and_list_attached() -> None:
    state = sample_state(attached=[AttachedDatabase(3, "x", Signature.NONE)])
    assert isinstance(state.attached, tuple)
    data = encode_checkpoint_file(state)
    assert len(data) == CHECKPOINT_FILE_SIZE
    assert read_checkpoint_file(data, path="edb.chk") == (state, [])


def test_attach_area_capacity() -> None:
    # Entries of 30 + name bytes; fill the area exactly, then go one byte over.
    count = ATTACH_AREA_SIZE // 100
    names = ["n" * 70] * count
    rest = ATTACH_AREA_SIZE - count * 100 - 30
    names.append("r" * rest)
    attached = tuple(AttachedDatabase(i, n, Signature.NONE) for i, n in enumerate(names))
    assert attached_size(attached) == ATTACH_AREA_SIZE
    state = sample_state(attached=attached)
    assert decode_checkpoint_copy(encode_checkpoint_copy(state), path="", copy=0) == state
    too_big = (*attached[:-1], AttachedDatabase(999, "r" * (rest + 1), Signature.NONE))
    with pytest.raises(InvalidParameter, match="at most 3966 fit"):
        encode_checkpoint_copy(sample_state(attached=too_big))


@pytest.mark.parametrize(
    "changes",
    [
        {"page_size": 2048},
        {"log_file_size": 4096},
        {"log_file_size": 5000},
        {"seq": -1},
        {"written_time": 2**64},
        {"attached": (AttachedDatabase(1, "a", Signature.NONE),) * 2},
        {"attached": (AttachedDatabase(2**32, "a", Signature.NONE),)},
        {"attached": (AttachedDatabase(1, "\udc80", Signature.NONE),)},
    ],
)
def test_encode_rejects_invalid(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidParameter):
        encode_checkpoint_copy(sample_state(**changes))


# --- damage detection -------------------------------------------------------------------------


def test_every_bit_flip_is_detected() -> None:
    block = bytearray(encode_checkpoint_copy(sample_state()))
    for bit in range(len(block) * 8):
        block[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((CheckpointCorrupt, FileInvalidType)):
            decode_checkpoint_copy(bytes(block), path="edb.chk", copy=0)
        block[bit // 8] ^= 1 << (bit % 8)
    decode_checkpoint_copy(bytes(block), path="edb.chk", copy=0)


def test_an_older_format_version_is_checkpoint_corrupt_naming_it() -> None:
    """An intact copy of an older format version is not read: CheckpointCorrupt naming the
    version, which recovery treats like any unusable checkpoint file (D6)."""
    block = bytearray(encode_checkpoint_copy(sample_state()))
    struct.pack_into("<H", block, 14, FORMAT_VERSION - 1)
    with pytest.raises(CheckpointCorrupt, match=f"format version {FORMAT_VERSION - 1}"):
        decode_checkpoint_copy(reseal(block), path="edb.chk", copy=0)


def test_a_newer_format_version_is_bad_log_version_in_either_copy() -> None:
    """A newer engine's copy is BadLogVersion (recovery refuses it rather than write over
    it, D6), from the copy decoder and from the file reader even when the other copy is
    valid: that copy is not this engine's to rewrite."""
    block = bytearray(encode_checkpoint_copy(sample_state()))
    struct.pack_into("<H", block, 14, FORMAT_VERSION + 1)
    newer = reseal(block)
    with pytest.raises(BadLogVersion, match=f"format version {FORMAT_VERSION + 1}") as info:
        decode_checkpoint_copy(newer, path="edb.chk", copy=0)
    assert "release that wrote" in info.value.hint
    valid = encode_checkpoint_copy(sample_state())
    for data in (newer + valid, valid + newer, newer + newer):
        with pytest.raises(BadLogVersion, match=r"edb\.chk"):
            read_checkpoint_file(data, path="edb.chk")


def test_corruption_detail() -> None:
    block = bytearray(encode_checkpoint_copy(sample_state()))
    block[3000] ^= 0x80
    with pytest.raises(CheckpointCorrupt) as info:
        decode_checkpoint_copy(bytes(block), path="/i/edb.chk", copy=1)
    assert "checkpoint copy 1 of '/i/edb.chk'" in info.value.detail
    assert "checksum mismatch" in info.value.detail and info.value.path == "/i/edb.chk"


def test_valid_crc_impossible_values() -> None:
    block = bytearray(encode_checkpoint_copy(sample_state()))
    block[68] = 2
    with pytest.raises(CheckpointCorrupt, match="circular logging flag"):
        decode_checkpoint_copy(reseal(block), path="", copy=0)
    block = bytearray(encode_checkpoint_copy(sample_state()))
    struct.pack_into("<H", block, 128, 200)  # more entries than there are bytes for
    with pytest.raises(CheckpointCorrupt, match="past the block end"):
        decode_checkpoint_copy(reseal(block), path="", copy=0)
    block = bytearray(encode_checkpoint_copy(sample_state()))
    struct.pack_into("<H", block, 130 + 28, 5000)  # first name length
    with pytest.raises(CheckpointCorrupt, match="name runs past"):
        decode_checkpoint_copy(reseal(block), path="", copy=0)
    block = bytearray(encode_checkpoint_copy(sample_state()))
    block[130 + 30] = 0xC0  # bad UTF-8 in the first name
    with pytest.raises(CheckpointCorrupt, match="UTF-8"):
        decode_checkpoint_copy(reseal(block), path="", copy=0)
    block = bytearray(encode_checkpoint_copy(sample_state()))
    struct.pack_into("<I", block, 130 + 36, 1)  # second entry's db_id = the first's
    with pytest.raises(CheckpointCorrupt, match="not unique"):
        decode_checkpoint_copy(reseal(block), path="", copy=0)
    block = bytearray(encode_checkpoint_copy(sample_state()))
    struct.pack_into("<H", block, 14, 9)  # a newer engine's copy: not damage
    with pytest.raises(BadLogVersion, match="format version 9"):
        decode_checkpoint_copy(reseal(block), path="", copy=0)


def test_other_file_types_are_file_invalid_type() -> None:
    log = encode_log_header(
        LogFileHeader(
            generation=3, log_signature=Signature.NONE, created_time=1, log_file_size=1 << 20
        )
    )
    with pytest.raises(FileInvalidType, match="log file header"):
        decode_checkpoint_copy(log, path="edb.log", copy=0)
    with pytest.raises(FileInvalidType, match="log file header"):
        read_checkpoint_file(log + b"\x55" * 4096, path="edb.log")
    db = encode_db_header(DatabaseHeader(page_size=8192))
    with pytest.raises(FileInvalidType, match="database header"):
        read_checkpoint_file(db, path="x.edb")


# --- choosing between the copies --------------------------------------------------------------


@pytest.mark.parametrize("newer", [0, 1])
def test_newer_valid_copy_wins(newer: int) -> None:
    old = encode_checkpoint_copy(sample_state(seq=10, checkpoint_position=LogPosition(8, 0)))
    new = encode_checkpoint_copy(sample_state(seq=11, checkpoint_position=LogPosition(9, 0)))
    data = new + old if newer == 0 else old + new
    state, problems = read_checkpoint_file(data, path="edb.chk")
    assert state.seq == 11 and state.checkpoint_position == LogPosition(9, 0)
    assert len(problems) == 1 and f"copy {1 - newer}" in problems[0]
    assert "older" in problems[0]


@pytest.mark.parametrize("damaged", [0, 1])
def test_one_corrupt_copy_other_chosen(damaged: int) -> None:
    good = encode_checkpoint_copy(sample_state(seq=10))
    bad = bytearray(encode_checkpoint_copy(sample_state(seq=11)))
    bad[55] ^= 0x01
    data = bytes(bad) + good if damaged == 0 else good + bytes(bad)
    state, problems = read_checkpoint_file(data, path="edb.chk")
    assert state.seq == 10
    assert len(problems) == 1
    assert f"checkpoint copy {damaged} of 'edb.chk' is damaged" in problems[0]
    assert f"copy {1 - damaged} is valid and will be rewritten" in problems[0]


def test_both_copies_bad_names_both() -> None:
    bad = bytearray(encode_checkpoint_copy(sample_state()))
    bad[70] ^= 0x40
    with pytest.raises(CheckpointCorrupt) as info:
        read_checkpoint_file(bytes(bad) + bytes(4096), path="edb.chk")
    detail = info.value.detail
    assert "checkpoint copy 0" in detail and "checksum mismatch" in detail
    assert "checkpoint copy 1" in detail and "not initialized" in detail


def test_torn_write_of_copy_0() -> None:
    """Copy 0 half new, half old: the old copy 1 is used until copy 0 is rewritten."""
    old_state = sample_state(seq=10, checkpoint_position=LogPosition(8, 0))
    new_state = sample_state(
        seq=11,
        checkpoint_position=LogPosition(9, 0),
        attached=(AttachedDatabase(7, "a much longer name " * 10, Signature.NONE),),
    )
    old, new = encode_checkpoint_copy(old_state), encode_checkpoint_copy(new_state)
    for tear in (8, 64, 130, 160, 200):
        state, problems = read_checkpoint_file(new[:tear] + old[tear:] + old, path="edb.chk")
        assert state == old_state
        assert "copy 0" in problems[0] and "checksum mismatch" in problems[0]
    # The tear after copy 0 was synced, during copy 1: the new state wins.
    state, problems = read_checkpoint_file(new + new[:100] + old[100:], path="edb.chk")
    assert state == new_state and "copy 1" in problems[0]


def test_same_seq_different_contents_prefers_copy_0() -> None:
    a = encode_checkpoint_copy(sample_state(written_time=1))
    b = encode_checkpoint_copy(sample_state(written_time=2))
    state, problems = read_checkpoint_file(a + b, path="edb.chk")
    assert state.written_time == 1 and "different contents" in problems[0]


def test_short_files() -> None:
    block = encode_checkpoint_copy(sample_state())
    state, problems = read_checkpoint_file(block + block[:1000], path="edb.chk")
    assert state == sample_state()
    assert "copy 1" in problems[0] and "incomplete" in problems[0] and "5096 bytes" in problems[0]
    state, problems = read_checkpoint_file(block, path="edb.chk")
    assert state == sample_state() and "copy 1" in problems[0] and "missing" in problems[0]
    with pytest.raises(CheckpointCorrupt) as info:
        read_checkpoint_file(block[:4000], path="edb.chk")
    assert "copy 0" in info.value.detail and "incomplete" in info.value.detail
    assert "copy 1" in info.value.detail and "missing" in info.value.detail
    with pytest.raises(CheckpointCorrupt, match="missing"):
        read_checkpoint_file(b"", path="edb.chk")


def test_long_file_reports_extra_bytes() -> None:
    block = encode_checkpoint_copy(sample_state())
    state, problems = read_checkpoint_file(block + block + b"xyz", path="edb.chk")
    assert state == sample_state()
    assert problems == [
        "the checkpoint file 'edb.chk' is 8195 bytes, longer than 8192; the extra bytes are ignored"
    ]


# --- fuzzing ----------------------------------------------------------------------------------


@given(st.binary(max_size=9000))
@settings(max_examples=300)
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        decode_checkpoint_copy(data, path="edb.chk", copy=0)
    except JetError:
        pass
    try:
        read_checkpoint_file(data, path="edb.chk")
    except JetError:
        pass


@given(states, st.data())
@settings(max_examples=100)
def test_fuzz_truncations(state: CheckpointState, data: st.DataObject) -> None:
    block = encode_checkpoint_copy(state)
    cut = data.draw(st.integers(0, len(block) - 1))
    with pytest.raises(JetError):
        decode_checkpoint_copy(block[:cut], path="edb.chk", copy=0)
    whole = block + block
    cut = data.draw(st.integers(0, len(whole)))
    try:
        read_checkpoint_file(whole[:cut], path="edb.chk")
    except JetError:
        pass


@given(st.binary(min_size=110, max_size=4076), st.data())
@settings(max_examples=300)
def test_fuzz_valid_checksum_random_fields(fields: bytes, data: st.DataObject) -> None:
    """Arbitrary field values in a block that verifies decode or raise a JetError. The fixed
    fields are often made plausible so the attached-database parsing is reached."""
    raw = bytearray(fields)
    if data.draw(st.booleans()):
        raw[48] = 0  # circular logging
        struct.pack_into("<II", raw, 52, 1 << 20, 8192)  # log file size, page size
        struct.pack_into("<H", raw, 108, data.draw(st.integers(0, 20)))  # count
    block = encode_block(FileType.CHECKPOINT, bytes(raw), CHECKPOINT_COPY_SIZE)
    try:
        decode_checkpoint_copy(block, path="edb.chk", copy=0)
    except JetError:
        pass

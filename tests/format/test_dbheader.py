"""Database header: layout, round trips, damage detection and the choice between the two copies.

Also covers the shared prefix in `jetstore.format.common` (the database header is its most
general user: variable block size).
"""

from __future__ import annotations

import dataclasses
import random
import struct

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    FORMAT_VERSION,
    MAGIC,
    PAGE_SIZES,
    PREFIX_SIZE,
    FileType,
    Signature,
    decode_block,
    encode_block,
    format_time_us,
    identify_file,
    now_us,
)
from jetstore.format.dbheader import (
    BackupInfo,
    DatabaseHeader,
    DatabaseState,
    choose_db_header,
    decode_db_header,
    encode_db_header,
    peek_page_size,
)
from jetstore.format.logheader import LogFileHeader, encode_log_header
from jetstore.format.positions import LogPosition

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)

signatures = st.builds(Signature, st.binary(min_size=16, max_size=16), U64)
positions = st.builds(LogPosition, U32, U32)
backups = st.builds(BackupInfo, U32, U32, positions, U64)


@st.composite
def headers(draw: st.DrawFn) -> DatabaseHeader:
    page_count = draw(st.integers(2, 2**32))
    pgnos = st.just(0) | st.integers(2, page_count - 1) if page_count > 2 else st.just(0)
    root_pgno = draw(pgnos)
    freelist_pgno = draw(pgnos)
    return DatabaseHeader(
        header_seq=draw(U64),
        page_size=draw(st.sampled_from(sorted(PAGE_SIZES))),
        state=draw(st.sampled_from(DatabaseState)),
        db_id=draw(U32),
        db_signature=draw(signatures),
        log_signature=draw(signatures),
        checkpoint_position=draw(positions),
        generation_min_required=draw(U32),
        generation_max_required=draw(U32),
        generation_max_committed=draw(U32),
        last_consistent_position=draw(positions),
        last_consistent_time=draw(U64),
        last_attach_position=draw(positions),
        last_attach_time=draw(U64),
        created_time=draw(U64),
        root_pgno=root_pgno,
        freelist_pgno=freelist_pgno,
        root_crc=draw(U32) if root_pgno else 0,
        freelist_crc=draw(U32) if freelist_pgno else 0,
        free_page_count=draw(st.integers(0, page_count - 2)),
        page_count=page_count,
        checkpoint_seq=draw(U64),
        repair_count=draw(U32),
        last_repair_time=draw(U64),
        flags=draw(U32),
        engine_version=draw(
            st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=16)
        ),
        name=draw(st.text(max_size=16).filter(lambda s: len(s.encode("utf-8")) <= 64)),
        last_full_backup=draw(backups),
        last_incremental_backup=draw(backups),
        last_differential_backup=draw(backups),
        last_copy_backup=draw(backups),
    )


def sample_header(**changes: object) -> DatabaseHeader:
    base = DatabaseHeader(
        header_seq=7,
        page_size=8192,
        state=DatabaseState.DIRTY,
        db_id=3,
        db_signature=Signature(bytes(range(16)), 1_700_000_000_000_000),
        log_signature=Signature(bytes(range(16, 32)), 1_600_000_000_000_000),
        checkpoint_position=LogPosition(5, 0x2000),
        generation_min_required=5,
        generation_max_required=9,
        generation_max_committed=8,
        created_time=1_600_000_000_000_001,
        root_pgno=12,
        freelist_pgno=13,
        root_crc=0xCAFEF00D,
        freelist_crc=0x1234ABCD,
        free_page_count=4,
        page_count=40,
        checkpoint_seq=11,
        name="orders",
        last_full_backup=BackupInfo(1, 4, LogPosition(4, 0x1000), 1_650_000_000_000_000),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def reseal(block: bytes | bytearray) -> bytes:
    """The block with its CRC recomputed, for building valid blocks with chosen contents."""
    raw = bytearray(block)
    struct.pack_into("<I", raw, 0, google_crc32c.value(bytes(raw[4:])))
    return bytes(raw)


# --- layout -----------------------------------------------------------------------------------


def test_documented_offsets() -> None:
    """The offsets in the module docstring's table are where the fields really are."""
    h = sample_header(
        last_consistent_position=LogPosition(21, 22),
        last_consistent_time=23,
        last_attach_position=LogPosition(24, 25),
        last_attach_time=26,
        repair_count=27,
        last_repair_time=28,
        flags=29,
        last_incremental_backup=BackupInfo(31, 32, LogPosition(33, 34), 35),
        last_differential_backup=BackupInfo(41, 42, LogPosition(43, 44), 45),
        last_copy_backup=BackupInfo(51, 52, LogPosition(53, 54), 55),
    )
    page = encode_db_header(h)
    assert len(page) == 8192

    def at(fmt: str, offset: int) -> object:
        (value,) = struct.unpack_from("<" + fmt, page, offset)
        return value

    assert page[4:12] == MAGIC
    assert at("H", 12) == FileType.DATABASE
    assert at("H", 14) == FORMAT_VERSION
    assert at("I", 16) == 8192
    assert at("I", 20) == 8192
    assert at("Q", 24) == 7
    assert at("B", 32) == DatabaseState.DIRTY
    assert page[33:36] == bytes(3)
    assert at("I", 36) == 3
    assert page[40:64] == h.db_signature.pack()
    assert page[64:88] == h.log_signature.pack()
    assert page[88:96] == LogPosition(5, 0x2000).pack()
    assert [at("I", o) for o in (96, 100, 104, 108)] == [5, 9, 8, 27]
    assert page[112:120] == LogPosition(21, 22).pack()
    assert at("Q", 120) == 23
    assert page[128:136] == LogPosition(24, 25).pack()
    assert at("Q", 136) == 26
    assert at("Q", 144) == 1_600_000_000_000_001
    assert [at("Q", o) for o in (152, 160, 168, 176, 184, 192)] == [12, 13, 4, 40, 11, 28]
    assert at("I", 200) == 29
    assert page[204:220] == ENGINE_VERSION.encode().ljust(16, b"\0")
    assert at("H", 220) == len("orders")
    assert page[222:286] == b"orders".ljust(64, b"\0")
    assert page[288:312] == h.last_full_backup.pack()
    assert page[312:336] == h.last_incremental_backup.pack()
    assert page[336:360] == h.last_differential_backup.pack()
    assert page[360:384] == h.last_copy_backup.pack()
    assert [at("I", o) for o in (384, 388)] == [0xCAFEF00D, 0x1234ABCD]
    assert page[392:] == bytes(8192 - 392)
    assert at("I", 0) == google_crc32c.value(page[4:])


def test_backup_info_layout() -> None:
    info = BackupInfo(1, 2, LogPosition(3, 4), 5)
    assert info.pack() == struct.pack("<IIIIQ", 1, 2, 3, 4, 5)
    assert BackupInfo.unpack_from(info.pack()) == info
    assert BackupInfo.NONE.pack() == bytes(24) and BackupInfo.NONE.is_none
    assert str(BackupInfo.NONE) == "none"
    assert "00000001-00000002" in str(info)


# --- round trips ------------------------------------------------------------------------------


@given(headers())
@settings(max_examples=200)
def test_round_trip(h: DatabaseHeader) -> None:
    page = encode_db_header(h)
    assert len(page) == h.page_size
    assert decode_db_header(page, path="x.edb") == h
    assert peek_page_size(page[:4096]) == h.page_size
    assert identify_file(page) is FileType.DATABASE


def test_defaults_round_trip_and_replace() -> None:
    h = DatabaseHeader()
    assert decode_db_header(encode_db_header(h)) == h
    h2 = dataclasses.replace(h, header_seq=2, state=DatabaseState.CLEAN)
    assert decode_db_header(encode_db_header(h2)).state is DatabaseState.CLEAN


def test_decoded_state_is_enum() -> None:
    assert type(decode_db_header(encode_db_header(sample_header())).state) is DatabaseState


# --- encoder rejects what cannot be written ----------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"page_size": 1000},
        {"page_size": 65536},
        {"page_count": 1},
        {"root_pgno": 1},
        {"root_pgno": 40},
        {"freelist_pgno": 99},
        {"free_page_count": 39},
        {"page_count": 2**32 + 1},
        {"root_pgno": 0},  # a root checksum without a root
        {"freelist_pgno": 0},  # a free-list checksum without a free list
        {"root_crc": 2**32},
        {"header_seq": -1},
        {"db_id": 2**32},
        {"name": "x" * 65},
        {"name": "é" * 33},
        {"name": "\ud800"},
        {"engine_version": "v" * 17},
        {"engine_version": "vé"},
        {"state": 9},
    ],
)
def test_encode_rejects_invalid(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidParameter):
        encode_db_header(sample_header(**changes))


def test_signature_validation_and_str() -> None:
    with pytest.raises(InvalidParameter):
        Signature(b"short", 0)
    with pytest.raises(InvalidParameter):
        Signature(bytes(16), -1)
    sig = Signature(bytes.fromhex("3f2a" + "00" * 13 + "9c"), 1_795_305_541_000_000)
    assert str(sig) == "3f2a…9c@2026-11-21T23:59:01Z"
    assert str(Signature.NONE) == "none"
    assert Signature.unpack_from(sig.pack()) == sig
    fresh = Signature.new()
    assert fresh != Signature.new() and abs(fresh.time_us - now_us()) < 60_000_000
    assert format_time_us(2**64 - 1).endswith("us")  # out of datetime's range: shown raw


# --- damage detection -------------------------------------------------------------------------


def test_every_sampled_bit_flip_is_detected() -> None:
    page = bytearray(encode_db_header(sample_header()))
    rng = random.Random(1018)
    # Every bit of the fields, plus a random sample over the whole page (mostly padding).
    bits = set(range(384 * 8)) | set(rng.sample(range(len(page) * 8), 3000))
    for bit in sorted(bits):
        page[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((ReadVerifyFailure, FileInvalidType)):
            decode_db_header(bytes(page), path="x.edb", copy=1)
        page[bit // 8] ^= 1 << (bit % 8)
    decode_db_header(bytes(page))  # restored exactly


def test_checksum_mismatch_detail_names_copy_path_and_crcs() -> None:
    page = bytearray(encode_db_header(sample_header()))
    page[5000] ^= 0x10
    with pytest.raises(ReadVerifyFailure) as info:
        decode_db_header(bytes(page), path="/data/orders.edb", copy=1)
    detail = info.value.detail
    assert "database header copy 1 of '/data/orders.edb'" in detail
    stored = struct.unpack_from("<I", page, 0)[0]
    assert f"stored 0x{stored:08X}" in detail
    assert f"computed 0x{google_crc32c.value(bytes(page[4:])):08X}" in detail
    assert info.value.path == "/data/orders.edb"


def test_all_zero_page_is_not_initialized() -> None:
    with pytest.raises(ReadVerifyFailure, match="not initialized"):
        decode_db_header(bytes(8192), path="x.edb")
    with pytest.raises(ReadVerifyFailure, match="empty"):
        decode_db_header(b"", path="x.edb")


def test_truncated_copy_is_corruption() -> None:
    page = encode_db_header(sample_header())
    with pytest.raises(ReadVerifyFailure):
        decode_db_header(page[:4096], path="x.edb")
    with pytest.raises(ReadVerifyFailure):
        decode_db_header(page[:10], path="x.edb")


def test_other_file_type_is_file_invalid_type() -> None:
    log = encode_log_header(
        LogFileHeader(
            generation=1,
            log_signature=Signature.new(),
            created_time=now_us(),
            log_file_size=1 << 20,
        )
    )
    with pytest.raises(FileInvalidType, match="log file header") as info:
        decode_db_header(log, path="edb.log")
    assert "edb.log" in info.value.detail
    with pytest.raises(FileInvalidType, match="not a jetstore"):
        decode_db_header(b"SQLite format 3\0" + bytes(8176), path="x.db")


def test_valid_crc_but_impossible_values_is_database_corrupted() -> None:
    page = bytearray(encode_db_header(sample_header()))
    page[32] = 77  # state
    with pytest.raises(DatabaseCorrupted, match="unknown state 77"):
        decode_db_header(reseal(page))
    page = bytearray(encode_db_header(sample_header()))
    struct.pack_into("<Q", page, 152, 1)  # root page = header copy 1
    with pytest.raises(DatabaseCorrupted, match="root page 1"):
        decode_db_header(reseal(page))
    page = bytearray(encode_db_header(sample_header()))
    struct.pack_into("<H", page, 220, 65)
    with pytest.raises(DatabaseCorrupted, match="name length"):
        decode_db_header(reseal(page))
    page = bytearray(encode_db_header(sample_header()))
    page[222] = 0xFF  # invalid UTF-8 lead byte
    with pytest.raises(DatabaseCorrupted, match="UTF-8"):
        decode_db_header(reseal(page))
    page = bytearray(encode_db_header(sample_header()))
    struct.pack_into("<I", page, 20, 4096)  # page size field disagrees with the block size
    with pytest.raises(DatabaseCorrupted, match="page size"):
        decode_db_header(reseal(page))


@pytest.mark.parametrize("version", [FORMAT_VERSION - 1, FORMAT_VERSION + 1])
def test_another_format_version_is_refused_as_such_not_as_damage(version: int) -> None:
    """An intact header of another format version (version 1, before D12, or a newer engine)
    is InvalidDatabaseVersion (-1209): calling it damaged sent the operator to restore or
    repair a file that is fine, only not readable by this engine."""
    page = bytearray(encode_db_header(sample_header()))
    struct.pack_into("<H", page, 14, version)
    sealed = reseal(page)
    with pytest.raises(InvalidDatabaseVersion, match=f"format version {version}"):
        decode_db_header(sealed)
    with pytest.raises(InvalidDatabaseVersion) as info:
        choose_db_header(sealed, sealed, path="x.edb")
    error = info.value
    assert error.code == -1209
    assert f"format version {version}" in error.detail and "x.edb" in error.detail
    assert "repair" not in error.detail
    assert "jetstore export" in str(error)
    good = encode_db_header(sample_header())
    if version < FORMAT_VERSION:
        # An older copy beside one of this version is replaced: it is reported for rewriting.
        header, problems = choose_db_header(sealed, good, path="x.edb")
        assert header == sample_header() and "copy 0" in problems[0]
    else:
        # A newer engine's copy is never rewritten from the other (a newer engine wrote it).
        for pair in ((sealed, good), (good, sealed)):
            with pytest.raises(InvalidDatabaseVersion, match=f"format version {version}"):
                choose_db_header(*pair, path="x.edb")


# --- the shared prefix ------------------------------------------------------------------------


def test_encode_block_limits() -> None:
    assert len(encode_block(FileType.DATABASE, bytes(4076), 4096)) == 4096
    with pytest.raises(InvalidParameter):
        encode_block(FileType.DATABASE, bytes(4077), 4096)
    with pytest.raises(InvalidParameter):
        encode_block(FileType.DATABASE, b"", 10)


def test_decode_block_returns_body_and_identify_file() -> None:
    block = encode_block(FileType.BACKUP_MANIFEST, b"hello", 512)
    body = decode_block(
        block, FileType.BACKUP_MANIFEST, path="m", what="manifest", error=ReadVerifyFailure
    )
    assert bytes(body[:5]) == b"hello" and len(body) == 512 - PREFIX_SIZE
    assert identify_file(block) is FileType.BACKUP_MANIFEST
    assert identify_file(block[:14]) is FileType.BACKUP_MANIFEST  # prefix only
    assert identify_file(block[:13]) is None
    assert identify_file(b"") is None
    assert identify_file(bytes(4096)) is None
    unknown_type = bytearray(block)
    struct.pack_into("<H", unknown_type, 12, 99)
    assert identify_file(bytes(unknown_type)) is None
    with pytest.raises(FileInvalidType, match="unknown file type 99"):
        decode_block(
            reseal(unknown_type),
            FileType.BACKUP_MANIFEST,
            path="m",
            what="manifest",
            error=ReadVerifyFailure,
        )


def test_flipped_type_field_mentions_possible_damage() -> None:
    page = bytearray(encode_db_header(sample_header()))
    page[12] ^= 0x02  # type 1 -> 3 (checkpoint); the CRC no longer verifies
    with pytest.raises(FileInvalidType, match="may be damaged"):
        decode_db_header(bytes(page))
    page = bytearray(encode_db_header(sample_header()))
    page[6] ^= 0x01  # one bit of the magic
    with pytest.raises(FileInvalidType, match="in only 1 bit"):
        decode_db_header(bytes(page))


# --- choosing between the copies --------------------------------------------------------------


def test_identical_copies_no_problems() -> None:
    page = encode_db_header(sample_header())
    h, problems = choose_db_header(page, page, path="x.edb")
    assert h == sample_header() and problems == []


@pytest.mark.parametrize("newer", [0, 1])
def test_newer_valid_copy_wins(newer: int) -> None:
    old = encode_db_header(sample_header(header_seq=5, root_pgno=12))
    new = encode_db_header(sample_header(header_seq=6, root_pgno=20))
    copies = (new, old) if newer == 0 else (old, new)
    h, problems = choose_db_header(*copies, path="x.edb")
    assert h.header_seq == 6 and h.root_pgno == 20
    assert len(problems) == 1
    assert f"copy {1 - newer}" in problems[0] and "older" in problems[0]


@pytest.mark.parametrize("damaged", [0, 1])
def test_one_corrupt_copy_other_chosen(damaged: int) -> None:
    good = encode_db_header(sample_header(header_seq=5))
    bad = bytearray(encode_db_header(sample_header(header_seq=6)))
    bad[100] ^= 1
    copies = (bytes(bad), good) if damaged == 0 else (good, bytes(bad))
    h, problems = choose_db_header(*copies, path="x.edb")
    assert h.header_seq == 5
    assert len(problems) == 1
    assert (
        f"database header copy {damaged} of 'x.edb' is damaged (checksum mismatch" in (problems[0])
    )
    assert f"copy {1 - damaged} is valid and will be rewritten" in problems[0]


def test_zeroed_copy_reported_as_not_initialized() -> None:
    good = encode_db_header(sample_header())
    h, problems = choose_db_header(good, bytes(8192), path="x.edb")
    assert h == sample_header()
    assert "copy 1" in problems[0] and "not initialized" in problems[0]


def test_both_copies_bad_raises_naming_both() -> None:
    bad0 = bytearray(encode_db_header(sample_header()))
    bad0[200] ^= 4
    with pytest.raises(ReadVerifyFailure) as info:
        choose_db_header(bytes(bad0), bytes(8192), path="x.edb")
    detail = info.value.detail
    assert "copy 0" in detail and "checksum mismatch" in detail
    assert "copy 1" in detail and "not initialized" in detail


def test_both_copies_other_file_type() -> None:
    log = encode_log_header(
        LogFileHeader(
            generation=1, log_signature=Signature.new(), created_time=1, log_file_size=8192
        )
    )
    with pytest.raises(FileInvalidType):
        choose_db_header(log, bytes(4096), path="edb.log")


@pytest.mark.parametrize("page_size", sorted(PAGE_SIZES))
def test_torn_write_of_copy_0(page_size: int) -> None:
    """Copy 0 part new, part old (the write tore); copy 1 still holds the old header.

    The fields end at byte 392 and the padding is the same in both versions, so a tear is only
    visible when it falls before the last differing byte; a later tear leaves a complete new
    header, which is then rightly chosen.
    """
    old_h = sample_header(page_size=page_size, header_seq=5, root_pgno=12, name="old")
    new_h = sample_header(
        page_size=page_size,
        header_seq=6,
        root_pgno=20,
        name="new",
        last_copy_backup=BackupInfo(7, 8, LogPosition(8, 64), 99),
    )
    old, new = encode_db_header(old_h), encode_db_header(new_h)
    last_difference = max(i for i in range(page_size) if old[i] != new[i])
    assert last_difference >= 360
    visible = 0
    for tear in [*range(4, 384, 4), 512, page_size // 2]:
        torn = new[:tear] + old[tear:]
        h, problems = choose_db_header(torn, old, path="x.edb")
        if tear <= last_difference:
            visible += 1
            assert h == old_h
            assert "copy 0" in problems[0] and "checksum mismatch" in problems[0]
        else:
            assert h == new_h and torn == new
    assert visible >= 80


def test_torn_write_of_copy_1_keeps_new_copy_0() -> None:
    old = encode_db_header(sample_header(header_seq=5))
    new = encode_db_header(sample_header(header_seq=6))
    torn = new[:20] + old[20:]  # the new CRC over the old fields
    h, problems = choose_db_header(new, torn, path="x.edb")
    assert h.header_seq == 6 and "copy 1" in problems[0] and "checksum" in problems[0]


def test_same_seq_different_contents_prefers_copy_0() -> None:
    a = encode_db_header(sample_header(root_pgno=12))
    b = encode_db_header(sample_header(root_pgno=13))
    h, problems = choose_db_header(a, b, path="x.edb")
    assert h.root_pgno == 12 and "different contents" in problems[0]


# --- peek_page_size ---------------------------------------------------------------------------


def test_peek_page_size() -> None:
    for size in sorted(PAGE_SIZES):
        page = encode_db_header(sample_header(page_size=size))
        assert peek_page_size(page[:4096]) == size
        assert peek_page_size(page) == size
    assert peek_page_size(b"") is None
    assert peek_page_size(bytes(4096)) is None
    patched = bytearray(encode_db_header(sample_header()))
    struct.pack_into("<I", patched, 20, 4096)  # disagrees with the prefix's block size
    assert peek_page_size(bytes(patched)) is None
    log = encode_log_header(
        LogFileHeader(
            generation=1, log_signature=Signature.NONE, created_time=1, log_file_size=8192
        )
    )
    assert peek_page_size(log) is None


# --- fuzzing: decoders raise JetError subclasses only -----------------------------------------


@given(st.binary(max_size=9000))
@settings(max_examples=300)
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        decode_db_header(data, path="f.edb")
    except JetError:
        pass
    try:
        choose_db_header(data, data[::-1], path="f.edb")
    except JetError:
        pass
    size = peek_page_size(data)
    assert size is None or size in PAGE_SIZES


@given(headers(), st.data())
@settings(max_examples=100)
def test_fuzz_truncations(h: DatabaseHeader, data: st.DataObject) -> None:
    page = encode_db_header(h)
    cut = data.draw(st.integers(0, len(page) - 1))
    with pytest.raises(JetError):
        decode_db_header(page[:cut], path="f.edb")


@given(st.sampled_from(sorted(PAGE_SIZES)), st.binary(min_size=364, max_size=364), st.data())
@settings(max_examples=300)
def test_fuzz_valid_checksum_random_fields(
    page_size: int, fields: bytes, data: st.DataObject
) -> None:
    """A block that verifies but holds arbitrary field values (a buggy writer) decodes or raises
    a JetError; the page size field is often forced right so that deeper checks are reached."""
    raw = bytearray(fields)
    if data.draw(st.booleans()):
        struct.pack_into("<I", raw, 0, page_size)
    block = encode_block(FileType.DATABASE, bytes(raw), page_size)
    try:
        decode_db_header(block, path="f.edb")
    except JetError:
        pass

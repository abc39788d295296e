"""Log file header: layout, round trips, damage and version detection, fuzzing."""

from __future__ import annotations

import dataclasses
import struct

import google_crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstore.errors import (
    BadLogVersion,
    FileInvalidType,
    InvalidParameter,
    JetError,
    LogFileCorrupt,
)
from jetstore.format.checkpoint import CheckpointState, encode_checkpoint_copy
from jetstore.format.common import (
    ENGINE_VERSION,
    FORMAT_VERSION,
    MAGIC,
    PAGE_SIZES,
    FileType,
    Signature,
    encode_block,
    identify_file,
)
from jetstore.format.dbheader import DatabaseHeader, encode_db_header
from jetstore.format.logheader import (
    LOG_HEADER_SIZE,
    LogFileFlags,
    LogFileHeader,
    decode_log_header,
    encode_log_header,
)

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
signatures = st.builds(Signature, st.binary(min_size=16, max_size=16), U64)


@st.composite
def headers(draw: st.DrawFn) -> LogFileHeader:
    log_file_size = draw(st.integers(2, 2**20 - 1)) * 4096
    data_start = draw(st.sampled_from([LOG_HEADER_SIZE, LOG_HEADER_SIZE * 2]))
    if data_start >= log_file_size:
        data_start = LOG_HEADER_SIZE
    # Any end past the header: the previous file may be larger than this one.
    previous_end = draw(st.just(0) | st.integers(LOG_HEADER_SIZE, 2**32 - 1))
    return LogFileHeader(
        generation=draw(st.integers(1, 2**32 - 1)),
        log_signature=draw(signatures),
        created_time=draw(U64),
        previous_generation_created_time=draw(U64),
        previous_generation_end=previous_end,
        previous_generation_checksum=draw(U32),
        log_file_size=log_file_size,
        data_start=data_start,
        page_size=draw(st.sampled_from(sorted(PAGE_SIZES))),
        flags=LogFileFlags(draw(st.integers(0, 3))),
        engine_version=draw(
            st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=16)
        ),
    )


def sample_header(**changes: object) -> LogFileHeader:
    base = LogFileHeader(
        generation=0x2A,
        log_signature=Signature(bytes(range(16)), 1_700_000_000_000_000),
        created_time=1_700_000_100_000_000,
        previous_generation_created_time=1_700_000_050_000_000,
        previous_generation_end=0x7F000,
        previous_generation_checksum=0xDEADBEEF,
        log_file_size=1 << 20,
        page_size=16384,
        flags=LogFileFlags.CIRCULAR_LOGGING,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def reseal(block: bytes | bytearray) -> bytes:
    raw = bytearray(block)
    struct.pack_into("<I", raw, 0, google_crc32c.value(bytes(raw[4:])))
    return bytes(raw)


def test_documented_offsets() -> None:
    h = sample_header()
    block = encode_log_header(h)
    assert len(block) == LOG_HEADER_SIZE == 4096

    def at(fmt: str, offset: int) -> object:
        (value,) = struct.unpack_from("<" + fmt, block, offset)
        return value

    assert block[4:12] == MAGIC
    assert at("H", 12) == FileType.LOG
    assert at("H", 14) == FORMAT_VERSION
    assert at("I", 16) == 4096
    assert at("I", 20) == 0x2A
    assert block[24:48] == h.log_signature.pack()
    assert at("Q", 48) == 1_700_000_100_000_000
    assert at("Q", 56) == 1_700_000_050_000_000
    assert at("I", 64) == 0x7F000
    assert at("I", 68) == 0xDEADBEEF
    assert [at("I", o) for o in (72, 76, 80, 84)] == [1 << 20, 4096, 16384, 1]
    assert block[88:104] == ENGINE_VERSION.encode().ljust(16, b"\0")
    assert block[104:] == bytes(4096 - 104)
    assert at("I", 0) == google_crc32c.value(block[4:])
    assert identify_file(block) is FileType.LOG


@given(headers())
@settings(max_examples=300)
def test_round_trip(h: LogFileHeader) -> None:
    block = encode_log_header(h)
    assert len(block) == LOG_HEADER_SIZE
    decoded = decode_log_header(block, path="edb.log")
    assert decoded == h
    assert isinstance(decoded.flags, LogFileFlags)
    assert decoded.circular_logging == bool(h.flags & 1)
    assert decoded.reserve_log == bool(h.flags & 2)


def test_decode_from_whole_log_file() -> None:
    """Given a whole log file, only the first 4096 bytes are the header."""
    h = sample_header()
    decoded = decode_log_header(encode_log_header(h) + b"\xa5" * 8192, path="edb.log")
    assert decoded == h


def test_first_generation_defaults() -> None:
    h = LogFileHeader(
        generation=1, log_signature=Signature.new(), created_time=5, log_file_size=1 << 20
    )
    assert h.previous_generation_end == 0 and h.data_start == LOG_HEADER_SIZE
    assert decode_log_header(encode_log_header(h), path="") == h
    assert not h.circular_logging and not h.reserve_log


@pytest.mark.parametrize(
    "changes",
    [
        {"generation": 0},
        {"generation": 2**32},
        {"log_file_size": 4096},
        {"log_file_size": 10_000},
        {"data_start": 100},
        {"data_start": 6000},
        {"data_start": 1 << 20},
        {"previous_generation_end": 10},
        {"previous_generation_end": LOG_HEADER_SIZE - 8},
        {"page_size": 512},
        {"created_time": -1},
        {"previous_generation_checksum": 2**32},
        {"engine_version": "x" * 17},
        {"flags": 1 << 32},
    ],
)
def test_encode_rejects_invalid(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidParameter):
        encode_log_header(sample_header(**changes))


def test_every_bit_flip_is_detected() -> None:
    block = bytearray(encode_log_header(sample_header()))
    for bit in range(LOG_HEADER_SIZE * 8):
        block[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((LogFileCorrupt, FileInvalidType)):
            decode_log_header(bytes(block), path="edb.log")
        block[bit // 8] ^= 1 << (bit % 8)
    assert decode_log_header(bytes(block), path="edb.log") == sample_header()


def test_damage_detail() -> None:
    block = bytearray(encode_log_header(sample_header()))
    block[2048] = 1
    with pytest.raises(LogFileCorrupt) as info:
        decode_log_header(bytes(block), path="/logs/edb0000002A.log")
    assert "log file header of '/logs/edb0000002A.log'" in info.value.detail
    assert "checksum mismatch" in info.value.detail
    assert info.value.path == "/logs/edb0000002A.log"


def test_blank_and_short() -> None:
    with pytest.raises(LogFileCorrupt, match="not initialized"):
        decode_log_header(bytes(1 << 20), path="edbtmp.log")
    with pytest.raises(LogFileCorrupt, match="empty"):
        decode_log_header(b"", path="edb.log")
    with pytest.raises(LogFileCorrupt):
        decode_log_header(encode_log_header(sample_header())[:4095], path="edb.log")


def test_unknown_version_is_bad_log_version() -> None:
    block = bytearray(encode_log_header(sample_header()))
    struct.pack_into("<H", block, 14, FORMAT_VERSION + 1)
    with pytest.raises(BadLogVersion, match=f"format version {FORMAT_VERSION + 1}"):
        decode_log_header(reseal(block), path="edb.log")
    # Without a valid checksum the version field is not trusted: that is damage.
    with pytest.raises(LogFileCorrupt):
        decode_log_header(bytes(block), path="edb.log")


def test_valid_crc_impossible_values_is_corrupt() -> None:
    for offset, value in ((20, 0), (72, 5000), (76, 0), (80, 3), (64, 5)):
        block = bytearray(encode_log_header(sample_header()))
        struct.pack_into("<I", block, offset, value)
        with pytest.raises(LogFileCorrupt, match="is damaged"):
            decode_log_header(reseal(block), path="edb.log")
    block = bytearray(encode_log_header(sample_header()))
    block[88] = 0xE9  # engine version not ASCII
    with pytest.raises(LogFileCorrupt, match="engine version"):
        decode_log_header(reseal(block), path="edb.log")


def test_unknown_flag_bits_are_kept() -> None:
    block = bytearray(encode_log_header(sample_header()))
    struct.pack_into("<I", block, 84, 0x81)
    assert decode_log_header(reseal(block), path="edb.log").flags == 0x81


def test_other_file_types_are_file_invalid_type() -> None:
    db = encode_db_header(DatabaseHeader(page_size=4096))
    with pytest.raises(FileInvalidType, match="database header") as info:
        decode_log_header(db, path="x.edb")
    assert "x.edb" in info.value.detail and "not a log file header" in info.value.detail
    chk = encode_checkpoint_copy(CheckpointState(log_file_size=1 << 20))
    with pytest.raises(FileInvalidType, match="checkpoint file"):
        decode_log_header(chk, path="edb.chk")
    with pytest.raises(FileInvalidType, match="not a jetstore"):
        decode_log_header(b"\x7fELF" + bytes(4092), path="a.out")


@given(st.binary(max_size=5000))
@settings(max_examples=500)
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        decode_log_header(data, path="edb.log")
    except JetError:
        pass


@given(headers(), st.data())
@settings(max_examples=100)
def test_fuzz_truncations(h: LogFileHeader, data: st.DataObject) -> None:
    block = encode_log_header(h)
    cut = data.draw(st.integers(0, len(block) - 1))
    with pytest.raises(JetError):
        decode_log_header(block[:cut], path="edb.log")


@given(st.binary(min_size=84, max_size=4076))
@settings(max_examples=300)
def test_fuzz_valid_checksum_random_fields(fields: bytes) -> None:
    block = encode_block(FileType.LOG, fields, LOG_HEADER_SIZE)
    try:
        decode_log_header(block, path="edb.log")
    except JetError:
        pass

"""Page framing: round trips, and every kind of damage is detected and reported by kind."""

from __future__ import annotations

import random

import google_crc32c
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstore.errors import (
    DatabaseCorrupted,
    InvalidParameter,
    JetError,
    PageNotInitialized,
    ReadPgnoVerifyFailure,
    ReadVerifyFailure,
)
from jetstore.format.page import (
    PAGE_HEADER_SIZE,
    PAGE_SIZES,
    DecodedPage,
    PageType,
    decode_page,
    encode_page,
    payload_capacity,
    verify_page,
)


def test_header_layout_matches_the_documented_offsets() -> None:
    page = encode_page(0x0102030405060708, PageType.LEAF, 0x1234, b"abc", 4096, 0x1122334455667788)
    assert len(page) == 4096
    assert page[4] == PageType.LEAF
    assert page[5] == 0
    assert page[6:8] == (0x1234).to_bytes(2, "little")
    assert page[8:16] == (0x0102030405060708).to_bytes(8, "little")
    assert page[16:24] == (0x1122334455667788).to_bytes(8, "little")
    assert page[24:28] == (3).to_bytes(4, "little")
    assert page[28:32] == bytes(4)
    assert page[PAGE_HEADER_SIZE : PAGE_HEADER_SIZE + 3] == b"abc"
    assert page[PAGE_HEADER_SIZE + 3 :] == bytes(4096 - PAGE_HEADER_SIZE - 3)
    # The CRC covers the page number the page is expected at (8 bytes), then bytes [4, size).
    expected_at = (0x0102030405060708).to_bytes(8, "little")
    assert page[0:4] == google_crc32c.value(expected_at + page[4:]).to_bytes(4, "little")


@given(
    pgno=st.integers(0, 2**64 - 1),
    page_type=st.sampled_from(list(PageType)),
    count=st.integers(0, 0xFFFF),
    seq=st.integers(0, 2**64 - 1),
    page_size=st.sampled_from(sorted(PAGE_SIZES)),
    payload=st.binary(max_size=5000),
)
def test_round_trip(
    pgno: int, page_type: PageType, count: int, seq: int, page_size: int, payload: bytes
) -> None:
    payload = payload[: payload_capacity(page_size)]
    page = encode_page(pgno, page_type, count, payload, page_size, seq)
    decoded = decode_page(pgno, page, path="t.edb")
    assert isinstance(decoded, DecodedPage)
    assert decoded.page_type is page_type
    assert decoded.count == count
    assert decoded.checkpoint_seq == seq
    assert bytes(decoded.payload) == payload
    # bytearray and memoryview input decode the same
    assert bytes(decode_page(pgno, bytearray(page)).payload) == payload
    assert bytes(decode_page(pgno, memoryview(page), page_size=page_size).payload) == payload


def test_payload_capacity() -> None:
    for size in PAGE_SIZES:
        assert payload_capacity(size) == size - PAGE_HEADER_SIZE
        encode_page(3, PageType.LEAF, 1, bytes(payload_capacity(size)), size, 0)
    with pytest.raises(InvalidParameter):
        payload_capacity(1000)


def test_payload_too_large() -> None:
    with pytest.raises(InvalidParameter, match="does not fit page 3"):
        encode_page(3, PageType.LEAF, 1, bytes(4096 - PAGE_HEADER_SIZE + 1), 4096, 0)


@pytest.mark.parametrize(
    ("pgno", "count", "seq", "page_size"),
    [(-1, 0, 0, 4096), (2**64, 0, 0, 4096), (1, 0x10000, 0, 4096), (1, 0, -1, 4096), (1, 0, 0, 5)],
)
def test_encode_rejects_out_of_range_fields(
    pgno: int, count: int, seq: int, page_size: int
) -> None:
    with pytest.raises(InvalidParameter):
        encode_page(pgno, PageType.LEAF, count, b"", page_size, seq)


def _flip(page: bytes, bit: int) -> bytes:
    damaged = bytearray(page)
    damaged[bit // 8] ^= 1 << (bit % 8)
    return bytes(damaged)


def test_every_single_bit_flip_is_detected() -> None:
    page = encode_page(17, PageType.LEAF, 3, random.Random(5).randbytes(900), 4096, 42)
    rnd = random.Random(1)
    bits = set(range(PAGE_HEADER_SIZE * 8)) | set(rnd.sample(range(4096 * 8), 2000))
    for bit in sorted(bits):
        with pytest.raises(ReadVerifyFailure) as info:
            decode_page(17, _flip(page, bit), path="x.edb")
        assert "page 17 of 'x.edb'" in info.value.detail, bit
        assert info.value.path == "x.edb"


def test_checksum_error_names_page_file_and_both_checksums() -> None:
    page = _flip(encode_page(17, PageType.BRANCH, 1, b"xyz", 4096, 1), 4096 * 8 - 1)
    with pytest.raises(ReadVerifyFailure, match=r"checksum mismatch on page 17 of 'x.edb'") as info:
        decode_page(17, page, path="x.edb")
    stored = int.from_bytes(page[:4], "little")
    assert f"stored 0x{stored:08x}" in info.value.detail
    assert info.value.code == -1018


def test_page_at_the_wrong_place_is_a_pgno_failure() -> None:
    page = encode_page(23, PageType.LEAF, 1, b"data", 8192, 5)
    with pytest.raises(ReadPgnoVerifyFailure) as info:
        decode_page(17, page, path="x.edb")
    assert "page 17 of 'x.edb'" in info.value.detail
    assert "23" in info.value.detail
    assert info.value.code == -1118


def test_pgno_field_disagreeing_with_the_checksum_is_a_pgno_failure() -> None:
    # An encoder bug, not damage: the checksum is valid for the expected pgno.
    from jetstore.format import page as page_module

    body = bytearray(encode_page(9, PageType.LEAF, 0, b"", 4096, 0))
    body[8:16] = (10).to_bytes(8, "little")
    body[0:4] = page_module._crc(9, bytes(body[4:])).to_bytes(4, "little")
    with pytest.raises(ReadPgnoVerifyFailure, match="header names page 10"):
        decode_page(9, bytes(body))


@pytest.mark.parametrize("size", sorted(PAGE_SIZES))
def test_all_zero_page_is_not_initialized(size: int) -> None:
    with pytest.raises(PageNotInitialized, match=r"page 5 of 'db\.edb'") as info:
        decode_page(5, bytes(size), path="db.edb")
    assert info.value.code == -1019


def test_damaged_page_hints_name_the_page_tools_for_that_file() -> None:
    """Defect: a damaged page's error told the operator to run `jetstore logs verify DIR`,
    which reads only the logs and finds nothing. The way out names the tools that read a
    database's pages, with the damaged file's own path."""
    damaged = [
        _flip(encode_page(7, PageType.LEAF, 1, b"data", 8192, 5), 900),  # checksum
        encode_page(6, PageType.LEAF, 1, b"data", 8192, 5),  # another page's image
        bytes(8192),  # blank
    ]
    for data in damaged:
        with pytest.raises(JetError) as info:
            decode_page(7, data, path="/data/inst/main.edb")
        hint = info.value.hint
        assert "logs verify" not in hint
        assert "`jetstore integrity '/data/inst/main.edb'`" in hint
        assert "`jetstore repair '/data/inst/main.edb'`" in hint
        assert "backup" in hint


def test_wrong_length_is_corruption() -> None:
    page = encode_page(5, PageType.LEAF, 0, b"", 4096, 0)
    with pytest.raises(DatabaseCorrupted, match="page 5"):
        decode_page(5, page[:-1])
    with pytest.raises(DatabaseCorrupted, match="expected 8192"):
        decode_page(5, page, page_size=8192)


def _forge(page_size: int, pgno: int, header_tail: bytes) -> bytes:
    """A page with a valid checksum over an arbitrary header (bytes 4..32)."""
    from jetstore.format import page as page_module

    rest = header_tail + bytes(page_size - PAGE_HEADER_SIZE)
    return page_module._crc(pgno, rest).to_bytes(4, "little") + rest


def test_invalid_fields_under_a_valid_checksum_are_corruption() -> None:
    def tail(ptype: int, flags: int, plen: int, reserved: int) -> bytes:
        return (
            bytes([ptype, flags])
            + (0).to_bytes(2, "little")
            + (7).to_bytes(8, "little")
            + (0).to_bytes(8, "little")
            + plen.to_bytes(4, "little")
            + reserved.to_bytes(4, "little")
        )

    decode_page(7, _forge(4096, 7, tail(2, 0, 10, 0)))  # the forge itself is valid
    for bad, message in [
        (tail(0, 0, 0, 0), "unknown page type 0"),
        (tail(9, 0, 0, 0), "unknown page type 9"),
        (tail(2, 1, 0, 0), "unknown flags"),
        (tail(2, 0, 0, 5), "reserved"),
        (tail(2, 0, 4096 - PAGE_HEADER_SIZE + 1, 0), "payload of 4065 bytes"),
    ]:
        with pytest.raises(DatabaseCorrupted, match=message):
            decode_page(7, _forge(4096, 7, bad))


@given(st.binary(min_size=0, max_size=4200), st.integers(0, 2**64 - 1))
def test_decoding_garbage_raises_only_engine_errors(data: bytes, pgno: int) -> None:
    try:
        decode_page(pgno, data)
    except JetError:
        pass


def test_verify_page_returns_the_page_and_fields() -> None:
    page = encode_page(4, PageType.FREE_LIST, 2, b"hello", 4096, 9)
    data, ptype, count, seq, plen = verify_page(4, bytearray(page))
    assert data == page and type(data) is bytes
    assert (ptype, count, seq, plen) == (PageType.FREE_LIST, 2, 9, 5)

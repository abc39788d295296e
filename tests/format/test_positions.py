"""LogPosition: total order (generation first), packing, text form, MIN."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstore.format.positions import LogPosition

U32 = st.integers(0, 2**32 - 1)
POSITIONS = st.builds(LogPosition, U32, U32)


def test_fields_and_size() -> None:
    p = LogPosition(3, 4096)
    assert p.generation == 3
    assert p.offset == 4096
    assert LogPosition.SIZE == 8
    assert len(p.pack()) == LogPosition.SIZE


def test_generation_orders_first() -> None:
    assert LogPosition(1, 0xFFFFFFFF) < LogPosition(2, 0)
    assert LogPosition(2, 5) < LogPosition(2, 6)
    assert LogPosition(2, 6) > LogPosition(2, 5)
    assert LogPosition(2, 5) <= LogPosition(2, 5)
    assert LogPosition(2, 5) == LogPosition(2, 5)
    assert LogPosition(2, 5) != LogPosition(5, 2)
    assert max(LogPosition(1, 100), LogPosition(2, 1), LogPosition(1, 200)) == LogPosition(2, 1)
    assert sorted([LogPosition(2, 1), LogPosition(1, 9), LogPosition(1, 2)]) == [
        LogPosition(1, 2),
        LogPosition(1, 9),
        LogPosition(2, 1),
    ]


@given(a=POSITIONS, b=POSITIONS)
def test_order_is_lexicographic(a: LogPosition, b: LogPosition) -> None:
    assert (a < b) == ((a.generation, a.offset) < (b.generation, b.offset))
    assert (a == b) == (a.generation == b.generation and a.offset == b.offset)
    assert (a < b) + (a == b) + (a > b) == 1
    # the packed form is not meant to sort; the tuple is
    if a.generation < b.generation:
        assert a < b


@given(p=POSITIONS)
def test_pack_round_trip(p: LogPosition) -> None:
    packed = p.pack()
    assert packed == struct.pack("<II", p.generation, p.offset)
    back = LogPosition.unpack_from(packed)
    assert back == p
    assert type(back) is LogPosition
    assert LogPosition.unpack_from(b"\xaa" * 5 + packed + b"\xbb", 5) == p
    assert LogPosition.unpack_from(memoryview(b"xyz" + packed), 3) == p


def test_unpack_too_short_raises() -> None:
    with pytest.raises(struct.error):
        LogPosition.unpack_from(b"\x00" * 7)


def test_pack_out_of_range_raises() -> None:
    with pytest.raises(struct.error):
        LogPosition(2**32, 0).pack()
    with pytest.raises(struct.error):
        LogPosition(0, -1).pack()


@pytest.mark.parametrize(
    ("position", "text"),
    [
        (LogPosition(0, 0), "00000000:00000000"),
        (LogPosition(0x2A, 0x1000), "0000002A:00001000"),
        (LogPosition(0xFFFFFFFF, 0xABCDEF12), "FFFFFFFF:ABCDEF12"),
    ],
)
def test_str(position: LogPosition, text: str) -> None:
    assert str(position) == text
    assert f"{position}" == text


@given(p=POSITIONS)
def test_min_is_below_everything(p: LogPosition) -> None:
    assert p >= LogPosition.MIN
    if p != (0, 0):
        assert p > LogPosition.MIN
        assert not p <= LogPosition.MIN


def test_min() -> None:
    assert LogPosition(0, 0) == LogPosition.MIN
    assert isinstance(LogPosition.MIN, LogPosition)
    assert LogPosition.MIN < LogPosition(0, 1) < LogPosition(1, 0)
    assert LogPosition.MIN.pack() == bytes(8)


def test_hashable_and_immutable() -> None:
    a = LogPosition(1, 2)
    assert {a: 1}[LogPosition(1, 2)] == 1
    with pytest.raises(AttributeError):
        a.generation = 5  # type: ignore[misc]

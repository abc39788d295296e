"""Order preservation, round trip and prefix properties of the key codec."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstore.errors import DatabaseCorrupted, InvalidParameter
from jetstore.tables.keys import (
    KeyValue,
    datetime_to_micros,
    decode_key,
    encode_key,
    encode_key_prefix,
    prefix_successor,
    single_key_encoder,
    tuple_prefix_stop,
)

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

_offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)
# Aware values stay a day away from datetime.min/max so their UTC instant is representable.
_aware = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets
)
_naive = st.datetimes()
_special_chars = st.sampled_from(["\x00", "\x01", "\xff", "\ud800", "\udfff", "\U0010ffff"])

STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "bool": st.booleans(),
    "int": st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.sampled_from([INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX]),
    "float": st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([-math.inf, math.inf, -0.0, 0.0, math.nan, -math.nan, 5e-324]),
    "str": st.text(st.characters() | _special_chars, max_size=8),
    "bytes": st.binary(max_size=8)
    | st.lists(st.sampled_from([b"\x00", b"\xff", b"\x01", b"\xfe"]), max_size=6).map(b"".join),
    "datetime": _naive | _aware,
}


def model(value: KeyValue) -> tuple[Any, ...]:
    """The order the encoding must reproduce, as a Python-comparable tuple."""
    if value is None:
        return (0,)
    if isinstance(value, float):
        if math.isnan(value):
            return (1, 1, 0.0, 0.0)
        # -0.0 sorts just before 0.0 (they encode differently).
        return (1, 0, value, math.copysign(1.0, value))
    if isinstance(value, datetime):
        aware = value.tzinfo is not None
        return (1, datetime_to_micros(value), aware)
    return (1, value)


def same(a: KeyValue, b: KeyValue) -> bool:
    """Round-trip equality: same type and value; aware datetimes as the same instant in UTC."""
    if a is None or b is None:
        return a is b
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, datetime) and isinstance(b, datetime):
        if a.tzinfo is None:
            return b.tzinfo is None and a == b
        return b.tzinfo is UTC and a == b
    return a == b


def sign(x: Any, y: Any) -> int:
    return int(x > y) - int(x < y)


@st.composite
def same_typed_pair(draw: st.DrawFn) -> tuple[tuple[KeyValue, ...], tuple[KeyValue, ...]]:
    types = draw(st.lists(st.sampled_from(sorted(STRATEGIES)), max_size=4))
    len_a = draw(st.integers(0, len(types)))
    len_b = draw(st.integers(0, len(types)))
    a: list[KeyValue] = []
    b: list[KeyValue] = []
    for i, t in enumerate(types):
        value_or_none = st.none() | STRATEGIES[t]
        va = draw(value_or_none)
        # Sharing elements often makes the later positions decide the order.
        vb = va if draw(st.booleans()) else draw(value_or_none)
        if i < len_a:
            a.append(va)
        if i < len_b:
            b.append(vb)
    return tuple(a), tuple(b)


@settings(max_examples=1500)
@given(same_typed_pair())
def test_encoding_order_equals_value_order(pair: tuple[tuple[KeyValue, ...], ...]) -> None:
    a, b = pair
    expected = sign(tuple(map(model, a)), tuple(map(model, b)))
    assert sign(encode_key(a), encode_key(b)) == expected


@settings(max_examples=500)
@given(same_typed_pair())
def test_round_trip(pair: tuple[tuple[KeyValue, ...], ...]) -> None:
    for t in pair:
        decoded = decode_key(encode_key(t))
        assert len(decoded) == len(t)
        assert all(same(x, y) for x, y in zip(t, decoded, strict=True)), (t, decoded)


@given(same_typed_pair())
def test_partial_key_is_a_byte_prefix(pair: tuple[tuple[KeyValue, ...], ...]) -> None:
    full = pair[0]
    encoded = encode_key(full)
    for k in range(len(full) + 1):
        partial = encode_key_prefix(full[:k])
        assert encoded.startswith(partial)
        successor = prefix_successor(partial)
        assert successor is None or encoded < successor


@given(same_typed_pair())
def test_tuple_prefix_stop_bounds_exactly_the_extensions(
    pair: tuple[tuple[KeyValue, ...], ...],
) -> None:
    a, b = pair
    encoded_b = encode_key(b)
    for k in range(len(a) + 1):
        partial = encode_key_prefix(a[:k])
        inside = partial <= encoded_b < tuple_prefix_stop(partial)
        expected = len(b) >= k and all(model(x) == model(y) for x, y in zip(a[:k], b, strict=False))
        assert inside == expected, (a, b, k)


def test_tuple_prefix_stop_excludes_values_extended_by_nul_bytes() -> None:
    for short, longer in (("a", "a\x00"), (b"a", b"a\x00\x00"), ("", "\x00"), (b"", b"\x00")):
        partial = encode_key((short,))
        extended = encode_key((longer, 1))
        assert extended.startswith(partial)  # a byte prefix, yet another value
        assert not partial <= extended < tuple_prefix_stop(partial)
        assert partial <= encode_key((short, 1)) < tuple_prefix_stop(partial)


@pytest.mark.parametrize("kind", sorted(STRATEGIES))
@given(data=st.data())
def test_none_sorts_before_every_value(kind: str, data: st.DataObject) -> None:
    value = data.draw(STRATEGIES[kind])
    assert encode_key((None,)) < encode_key((value,))
    assert encode_key((None, value)) < encode_key((value,))


def test_naive_datetime_comes_back_naive_and_aware_as_utc() -> None:
    naive = datetime(2024, 5, 6, 7, 8, 9, 123456)
    aware = datetime(2024, 5, 6, 9, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    (n,) = decode_key(encode_key((naive,)))
    (a,) = decode_key(encode_key((aware,)))
    assert n == naive and isinstance(n, datetime) and n.tzinfo is None
    assert a == aware and isinstance(a, datetime) and a.tzinfo is UTC
    assert a == datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    # The same instant, naive and aware: two keys, naive first.
    assert encode_key((naive,)) < encode_key((naive.replace(tzinfo=UTC),))


def test_golden_bytes() -> None:
    """Pin the documented format so an accidental change shows up here."""
    assert encode_key(()) == b""
    assert encode_key((None,)) == b"\x00"
    assert encode_key((False, True)) == b"\x10\x00\x10\x01"
    assert encode_key((1,)) == bytes.fromhex("208000000000000001")
    assert encode_key((-1,)) == bytes.fromhex("207fffffffffffffff")
    assert encode_key((1.0,)) == bytes.fromhex("30bff0000000000000")
    assert encode_key((-1.0,)) == bytes.fromhex("30400fffffffffffff")
    assert (
        encode_key((math.nan,)) == encode_key((-math.nan,)) == bytes.fromhex("30fff8000000000000")
    )
    assert encode_key(("a\x00b",)) == b"\x40a\x00\xffb\x00"
    assert encode_key((b"\x00\xff",)) == b"\x50\x00\xff\xff\x00"
    assert encode_key((datetime(1970, 1, 1, 0, 0, 0, 1),)) == bytes.fromhex("60800000000000000100")
    assert encode_key((datetime(1970, 1, 1, tzinfo=UTC),)) == bytes.fromhex("60800000000000000001")


def test_nan_sorts_after_infinity() -> None:
    assert encode_key((math.inf,)) < encode_key((math.nan,))
    assert encode_key((-math.inf,)) < encode_key((-1e308,)) < encode_key((-0.0,))
    assert encode_key((-0.0,)) < encode_key((0.0,)) < encode_key((5e-324,))


def test_bytes_like_values_are_accepted_and_come_back_as_bytes() -> None:
    assert decode_key(encode_key((bytearray(b"a\x00"), memoryview(b"z")))) == (b"a\x00", b"z")


@pytest.mark.parametrize("bad", [INT64_MAX + 1, INT64_MIN - 1, 1 << 100])
def test_int_out_of_range_is_invalid_parameter(bad: int) -> None:
    with pytest.raises(InvalidParameter):
        encode_key((bad,))


@pytest.mark.parametrize("bad", [object(), [1], {"a": 1}, 1j, datetime.now().date()])
def test_unsupported_type_is_invalid_parameter(bad: Any) -> None:
    with pytest.raises(InvalidParameter):
        encode_key((bad,))


def test_unrepresentable_aware_datetime_is_invalid_parameter() -> None:
    east = timezone(timedelta(hours=5))
    with pytest.raises(InvalidParameter):
        encode_key((datetime(1, 1, 1, tzinfo=east),))


class _BrokenZone(tzinfo):
    """A tzinfo whose offset Python's datetime refuses (or that fails outright)."""

    def __init__(self, offset: object) -> None:
        self.offset = offset

    def utcoffset(self, dt: datetime | None) -> timedelta:
        if isinstance(self.offset, Exception):
            raise self.offset
        return self.offset  # type: ignore[return-value]


@pytest.mark.parametrize(
    "offset", [timedelta(hours=30), 5, ArithmeticError("no offset"), LookupError("zone")]
)
def test_a_datetime_whose_zone_gives_no_valid_offset_is_invalid_parameter(offset: object) -> None:
    value = datetime(2020, 1, 1, tzinfo=_BrokenZone(offset))
    with pytest.raises(InvalidParameter, match="UTC offset"):
        datetime_to_micros(value)
    with pytest.raises(InvalidParameter, match="UTC offset"):
        encode_key((value,))


@pytest.mark.parametrize(
    "data",
    [
        b"\x20\x80",  # truncated int
        b"\x30",  # truncated float
        b"\x40abc",  # unterminated string
        b"\x40a\x00\xff",  # escape at the end, no terminator
        b"\x50",  # unterminated bytes
        b"\x40\xff\x00",  # invalid UTF-8
        b"\x10\x02",  # bool byte out of range
        b"\x10",  # truncated bool
        b"\x60" + b"\x80" * 8 + b"\x02",  # bad datetime flag
        b"\x60\xff\xff\xff\xff\xff\xff\xff\xff\x00",  # datetime beyond year 9999
        b"\x60\x80\x00",  # truncated datetime
        b"\x99",  # unknown tag
        b"\x00\xff",  # unknown tag after a valid element
    ],
)
def test_malformed_keys_raise_database_corrupted(data: bytes) -> None:
    with pytest.raises(DatabaseCorrupted):
        decode_key(data)


@settings(max_examples=500)
@given(st.binary(max_size=40))
def test_garbage_decodes_or_raises_database_corrupted(data: bytes) -> None:
    try:
        decode_key(data)
    except DatabaseCorrupted:
        pass


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b"", None),
        (b"\xff", None),
        (b"\xff\xff\xff", None),
        (b"\x00", b"\x01"),
        (b"ab", b"ac"),
        (b"a\xff", b"b"),
        (b"a\xfe\xff\xff", b"a\xff"),
        (b"\x00\x00\x00\x07", b"\x00\x00\x00\x08"),
    ],
)
def test_prefix_successor_examples(prefix: bytes, expected: bytes | None) -> None:
    assert prefix_successor(prefix) == expected


_edge_bytes = st.lists(st.sampled_from([0x00, 0x01, 0xFE, 0xFF]), max_size=6).map(bytes)


@settings(max_examples=1000)
@given(prefix=_edge_bytes | st.binary(max_size=6), other=_edge_bytes | st.binary(max_size=8))
def test_prefix_successor_bounds_exactly_the_strings_with_the_prefix(
    prefix: bytes, other: bytes
) -> None:
    successor = prefix_successor(prefix)
    candidates = [other, prefix + other, prefix[: len(other)] + other]
    for x in candidates:
        starts = x.startswith(prefix)
        if successor is None:
            # Only an all-0xff (or empty) prefix has no successor.
            assert prefix.strip(b"\xff") == b""
            if prefix == b"":
                assert starts
        else:
            assert prefix < successor
            # [prefix, successor) holds exactly the strings starting with prefix.
            assert (prefix <= x < successor) == starts, (prefix, x, successor)


@settings(max_examples=300)
@given(
    st.binary(max_size=6),
    st.one_of(
        st.binary(max_size=40),
        st.text(st.characters() | st.sampled_from(["\x00", "\ud800"]), max_size=20),
        st.integers(-(1 << 64), 1 << 64),
        st.booleans(),
        st.floats(allow_nan=False),
        st.none(),
    ),
    st.integers(0, 50),
)
def test_single_key_encoder_is_encode_key_or_declines(
    head: bytes, value: object, max_size: int
) -> None:
    for kind in (bytes, str, int):
        encode = single_key_encoder(head, kind, max_size)
        got = encode(value)
        if type(value) is not kind:
            assert got is None
            continue
        try:
            expected: bytes | None = encode_key((value,))  # type: ignore[arg-type]
        except InvalidParameter:
            expected = None
        if expected is not None and len(expected) > max_size:
            expected = None
        assert got == (None if expected is None else head + expected)


def test_single_key_encoder_refuses_other_kinds() -> None:
    with pytest.raises(InvalidParameter):
        single_key_encoder(b"", float, 100)

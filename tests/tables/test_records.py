"""Record codec: round trip, long-value references, schema growth, corruption handling."""

from __future__ import annotations

import math
import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstore.errors import DatabaseCorrupted, InvalidParameter
from jetstore.tables.records import INLINE_VALUE_MAX, OVERSIZED, LongValueRef, RecordCodec
from jetstore.tables.schema import Column, ColumnType, TableDef, make_table_def

_offsets = st.builds(
    timezone,
    st.timedeltas(
        min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)
    ),
)
_lv_refs = st.builds(
    LongValueRef, st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1), st.just(False)
)

VALUES: dict[ColumnType, st.SearchStrategy[Any]] = {
    ColumnType.INT: st.integers(-(1 << 63), (1 << 63) - 1),
    ColumnType.FLOAT: st.floats(allow_nan=True, allow_infinity=True),
    ColumnType.TEXT: st.text(st.characters() | st.sampled_from(["\x00", "\ud800"]), max_size=30)
    | _lv_refs.map(lambda r: replace(r, is_text=True)),
    ColumnType.BYTES: st.binary(max_size=60) | _lv_refs,
    ColumnType.BOOL: st.booleans(),
    ColumnType.DATETIME: st.datetimes()
    | st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets
    ),
}


@st.composite
def tables_and_records(draw: st.DrawFn) -> tuple[TableDef, dict[str, object]]:
    n = draw(st.integers(1, 8))
    types = draw(st.lists(st.sampled_from(list(ColumnType)), min_size=n, max_size=n))
    nullables = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    columns = [
        Column(f"c{i}", t, nl) for i, (t, nl) in enumerate(zip(types, nullables, strict=True))
    ]
    t = make_table_def("t", columns, "c0", table_id=1, lv_id=2)
    record: dict[str, object] = {}
    for col in t.columns:
        strategy = VALUES[col.type]
        if col.nullable:
            strategy = st.none() | strategy
        record[col.name] = draw(strategy)
    return t, record


def same(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, datetime) and isinstance(b, datetime):
        # Aware values come back as the same instant in UTC, naive ones naive.
        return a == b and (b.tzinfo is None if a.tzinfo is None else b.tzinfo is UTC)
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def check_types(t: TableDef, record: dict[str, object]) -> None:
    """A decoded record has exactly the table's columns, each value of its column's type."""
    assert list(record) == list(t.column_names)
    python_type: dict[ColumnType, type] = {
        ColumnType.INT: int,
        ColumnType.FLOAT: float,
        ColumnType.TEXT: str,
        ColumnType.BYTES: bytes,
        ColumnType.BOOL: bool,
        ColumnType.DATETIME: datetime,
    }
    for col in t.columns:
        v = record[col.name]
        if v is None:
            continue
        if isinstance(v, LongValueRef):
            assert col.type in (ColumnType.TEXT, ColumnType.BYTES)
            assert v.is_text == (col.type is ColumnType.TEXT)
        else:
            assert type(v) is python_type[col.type]


@settings(max_examples=500)
@given(tables_and_records())
def test_round_trip(case: tuple[TableDef, dict[str, object]]) -> None:
    t, record = case
    codec = RecordCodec(t)
    data = codec.encode(record)
    decoded = codec.decode(data)
    assert list(decoded) == list(t.column_names)
    for name in t.column_names:
        assert same(record[name], decoded[name]), (name, record[name], decoded[name])
    # Decoding is exact, so re-encoding gives the same bytes.
    assert codec.encode(decoded) == data
    check_types(t, decoded)


@settings(max_examples=100)
@given(tables_and_records())
def test_every_truncation_is_database_corrupted(case: tuple[TableDef, dict[str, object]]) -> None:
    t, record = case
    codec = RecordCodec(t)
    data = codec.encode(record)
    for cut in range(len(data)):
        with pytest.raises(DatabaseCorrupted):
            codec.decode(data[:cut])
    with pytest.raises(DatabaseCorrupted):
        codec.decode(data + b"\x00")


@settings(max_examples=300)
@given(tables_and_records(), st.data())
def test_corrupted_bytes_decode_or_raise_database_corrupted(
    case: tuple[TableDef, dict[str, object]], data: st.DataObject
) -> None:
    t, record = case
    codec = RecordCodec(t)
    encoded = bytearray(codec.encode(record))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(encoded) - 1))
        encoded[pos] = data.draw(st.integers(0, 255))
    try:
        decoded = codec.decode(bytes(encoded))
    except DatabaseCorrupted:
        return
    check_types(t, decoded)


@settings(max_examples=300)
@given(tables_and_records(), st.binary(max_size=80))
def test_garbage_decodes_or_raises_database_corrupted(
    case: tuple[TableDef, dict[str, object]], garbage: bytes
) -> None:
    t, _ = case
    codec = RecordCodec(t)
    for data in (garbage, b"\x01" + garbage):
        try:
            decoded = codec.decode(data)
        except DatabaseCorrupted:
            continue
        check_types(t, decoded)


def three_columns() -> TableDef:
    return make_table_def(
        "t", [("id", "int"), ("name", "text"), ("blob", "bytes")], "id", table_id=1, lv_id=2
    )


def test_golden_bytes() -> None:
    """Pin the documented format so an accidental change shows up here."""
    t = make_table_def(
        "g",
        [
            ("i", "int"),
            ("f", "float"),
            ("b", "bool"),
            ("d", "datetime"),
            ("s", "text"),
            ("y", "bytes"),
            ("n", "int"),
        ],
        "i",
        table_id=1,
        lv_id=2,
    )
    record = {
        "i": -2,
        "f": 1.0,
        "b": True,
        "d": datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
        "s": "é",
        "y": LongValueRef(5, 300, False),
        "n": None,
    }
    expected = (
        b"\x01\x07\x00"
        + b"\x01"
        + struct.pack("<q", -2)
        + b"\x02"
        + struct.pack("<d", 1.0)
        + b"\x03\x01"
        + b"\x04"
        + struct.pack("<q", 1_000_000)
        + b"\x01"
        + b"\x05\x02\x00\x00\x00\xc3\xa9"
        + b"\x07"
        + struct.pack("<QQ", 5, 300)
        + b"\x00"
        + b"\x00"
    )
    assert RecordCodec(t).encode(record) == expected


def test_long_value_refs_round_trip() -> None:
    t = three_columns()
    codec = RecordCodec(t)
    record: dict[str, object] = {
        "id": 1,
        "name": LongValueRef(lv_id=(1 << 64) - 1, length=10_000_000, is_text=True),
        "blob": LongValueRef(lv_id=0, length=1 << 40, is_text=False),
    }
    assert codec.decode(codec.encode(record)) == record


def test_long_value_ref_of_the_wrong_kind_or_column_is_refused() -> None:
    codec = RecordCodec(three_columns())
    with pytest.raises(InvalidParameter):
        codec.encode({"id": 1, "name": LongValueRef(1, 1, False), "blob": None})
    with pytest.raises(InvalidParameter):
        codec.encode({"id": LongValueRef(1, 1, False), "name": None, "blob": None})
    with pytest.raises(InvalidParameter):
        codec.encode({"id": 1, "name": None, "blob": LongValueRef(-1, 1, False)})


def test_encode_refuses_unvalidated_records() -> None:
    codec = RecordCodec(three_columns())
    with pytest.raises(InvalidParameter):
        codec.encode({"id": 1, "name": "x"})  # blob missing
    with pytest.raises(InvalidParameter):
        codec.encode({"id": 1 << 63, "name": None, "blob": None})
    with pytest.raises(InvalidParameter):
        codec.encode({"id": "1", "name": None, "blob": None})
    with pytest.raises(InvalidParameter):
        codec.encode({"id": 1, "name": 5, "blob": None})


def test_bytes_like_values_are_encoded_as_bytes() -> None:
    codec = RecordCodec(three_columns())
    data = codec.encode({"id": 1, "name": None, "blob": bytearray(b"ab")})
    assert codec.decode(data)["blob"] == b"ab"


def test_old_record_with_fewer_columns_decodes_with_defaults() -> None:
    old = three_columns()
    new = replace(
        old,
        columns=(
            *old.columns,
            Column("rank", "int", nullable=False, default=5),
            Column("note", "text"),
            Column("when", "datetime", default=datetime(2000, 1, 1)),
        ),
    )
    data = RecordCodec(old).encode({"id": 9, "name": "x", "blob": b"y"})
    assert RecordCodec(new).decode(data) == {
        "id": 9,
        "name": "x",
        "blob": b"y",
        "rank": 5,
        "note": None,
        "when": datetime(2000, 1, 1),
    }
    # The reverse (more columns than the definition knows) is corruption, not silent loss.
    newer = RecordCodec(new).encode(new.validate_record({"id": 1, "name": "x"}))
    with pytest.raises(DatabaseCorrupted):
        RecordCodec(old).decode(newer)


def test_naive_and_aware_datetimes_keep_their_kind() -> None:
    t = make_table_def("t", [("id", "int"), ("d", "datetime")], "id", table_id=1, lv_id=2)
    codec = RecordCodec(t)
    naive = datetime(1900, 2, 3, 4, 5, 6, 7)
    aware = datetime(1900, 2, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=-3)))
    got_naive = codec.decode(codec.encode({"id": 1, "d": naive}))["d"]
    got_aware = codec.decode(codec.encode({"id": 1, "d": aware}))["d"]
    assert isinstance(got_naive, datetime) and got_naive == naive and got_naive.tzinfo is None
    assert isinstance(got_aware, datetime) and got_aware == aware and got_aware.tzinfo is UTC


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x03",  # short header
        b"\x02\x03\x00",  # unknown version
        b"\x01\x04\x00" + b"\x00" * 4,  # more columns than the table has
        b"\x01\x03\x00\x05\x00\x00\x00\x00\x00\x00",  # text tag in the int column
        b"\x01\x01\x00\x01" + b"\x00" * 8 + b"\x00",  # trailing byte
        b"\x01\x02\x00\x00\x05\x02\x00\x00\x00\xff\xfe",  # invalid UTF-8
        b"\x01\x02\x00\x00\x05\xff\xff\xff\xff",  # length overruns the record
        b"\x01\x02\x00\x00\x07" + b"\x00" * 16 + b"\x00",  # bytes ref in a text column
        b"\x01\x01\x00\x07" + b"\x00" * 17,  # long value in the int column
        b"\x01\x01\x00\x63",  # unknown tag
    ],
)
def test_malformed_records_raise_database_corrupted(data: bytes) -> None:
    with pytest.raises(DatabaseCorrupted):
        RecordCodec(three_columns()).decode(data)


@pytest.mark.parametrize(
    "value",
    [
        b"\x03\x02",  # bool byte out of range
        b"\x04" + struct.pack("<q", 0) + b"\x02",  # datetime flag out of range
        b"\x04" + struct.pack("<q", 1 << 62) + b"\x00",  # datetime beyond year 9999
    ],
)
def test_malformed_values_raise_database_corrupted(value: bytes) -> None:
    t = make_table_def(
        "t", [("id", "int"), ("b", "bool"), ("d", "datetime")], "id", table_id=1, lv_id=2
    )
    column = 1 if value[0] == 0x03 else 2
    data = b"\x01\x03\x00\x01" + b"\x00" * 8 + (b"\x00" if column == 2 else b"") + value
    if column == 1:
        data += b"\x00"
    with pytest.raises(DatabaseCorrupted):
        RecordCodec(t).decode(data)


def test_memoryview_input_is_accepted() -> None:
    codec = RecordCodec(three_columns())
    data = codec.encode({"id": 3, "name": "n", "blob": b"b"})
    assert codec.decode(memoryview(data)) == {"id": 3, "name": "n", "blob": b"b"}


# --------------------------------------------------------------------------- layouts


def _decode_or_error(codec: RecordCodec, data: bytes) -> object:
    try:
        return codec.decode(data)
    except DatabaseCorrupted:
        return DatabaseCorrupted


def _agree(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a is b


@settings(max_examples=300)
@given(tables_and_records(), st.data())
def test_remembered_layouts_decode_like_the_sequential_decoder(
    case: tuple[TableDef, dict[str, object]], data: st.DataObject
) -> None:
    """A codec that learned a record's layout (struct split by length) decodes every record,
    valid or damaged, of that length exactly as a codec that never saw it."""
    t, record = case
    valid = RecordCodec(t).encode(record)
    learned = RecordCodec(t)
    learned.decode(valid)
    learned.decode(valid)  # the second decode takes the remembered layout, if any
    damaged = bytearray(valid)
    for _ in range(data.draw(st.integers(0, 3))):
        pos = data.draw(st.integers(0, len(damaged) - 1))
        damaged[pos] = data.draw(st.integers(0, 255))
    for candidate in (valid, bytes(damaged)):
        assert _agree(
            _decode_or_error(learned, candidate), _decode_or_error(RecordCodec(t), candidate)
        )
        batch = [valid, candidate, valid]
        try:
            many: object = learned.decode_many(batch)
        except (IndexError, struct.error, UnicodeDecodeError):
            many = None
        if many is not None:
            assert isinstance(many, list) and len(many) == 3
            for raw, got in zip(batch, many, strict=True):
                expected = RecordCodec(t).fast_decode(raw)
                assert _agree(got, expected)


def test_layouts_tell_apart_records_of_one_length() -> None:
    """Two records of the same length but different splits of their text and bytes values,
    more lengths than the codec remembers, and a batch that mixes them."""
    t = three_columns()
    codec = RecordCodec(t)
    records = [{"id": i, "name": "n" * i, "blob": b"b" * (20 - i)} for i in range(20)]
    records += [{"id": i, "name": "x" * i, "blob": b"y" * i} for i in range(100)]
    encoded = [codec.encode(r) for r in records]
    for _ in range(2):
        assert [codec.decode(e) for e in encoded] == records
        assert codec.decode_many(encoded) == records
        assert codec.decode_many(encoded[:20]) == records[:20]
        assert codec.decode_many(encoded[5:6] * 7) == records[5:6] * 7
    # Records a decoder refuses (NULL, long value) come back as None.
    with_null = codec.encode({"id": 1, "name": None, "blob": b""})
    with_lv = codec.encode({"id": 1, "name": "a", "blob": LongValueRef(5, 9, False)})
    assert codec.decode_many([encoded[0], with_null, with_lv]) == [records[0], None, None]


def test_fast_encode_refuses_to_copy_a_value_too_long_for_any_entry() -> None:
    """A record of exactly-typed values whose text and bytes values take more than
    `INLINE_VALUE_MAX` together (a text counted in characters) is `OVERSIZED` for the fast
    encoder (as long as no entry can be, holding nothing); `encode_inline` gives None for
    it, and for any record with one such value; `encode` still encodes it whole. A text is
    measured before it is encoded: one of fewer characters but more UTF-8 bytes is encoded
    (once, and kept). A value out of range elsewhere in the record is still refused as
    before."""
    codec = RecordCodec(three_columns())
    half = INLINE_VALUE_MAX // 2
    long_bytes = {"id": 7, "name": "", "blob": b"\x01" * (INLINE_VALUE_MAX + 1)}
    long_text = {"id": 7, "name": "\u00e9" * (INLINE_VALUE_MAX + 1), "blob": b""}
    together = {"id": 7, "name": "\u00e9" * half, "blob": b"\x01" * (half + 1)}
    for record in (long_bytes, long_text, together):
        assert codec.fast_encode(record) is OVERSIZED
        assert len(OVERSIZED) > INLINE_VALUE_MAX << 20
        assert codec.encode_inline(record) is None
        assert codec.decode(codec.encode(record)) == record
    for record in (long_bytes, long_text):
        with_null = {**record, "id": None}  # the general loop refuses it too
        assert codec.encode_inline(with_null) is None
        assert codec.decode(codec.encode(with_null)) == with_null
    # 2 bytes a character: more than INLINE_VALUE_MAX bytes, encoded to be kept, not refused.
    at_bound = {"id": 7, "name": "\u00e9" * half, "blob": b"\x01" * half}
    encoded = codec.fast_encode(at_bound)
    assert encoded is not OVERSIZED
    assert encoded == codec.encode_inline(at_bound) == codec.encode(at_bound)
    assert codec.decode(encoded) == at_bound
    with pytest.raises(struct.error):
        codec.fast_encode({**long_bytes, "id": 1 << 63})


def test_fast_encode_matches_encode_or_declines() -> None:
    t = three_columns()
    codec = RecordCodec(t)
    record = {"id": 7, "name": "é", "blob": b"\x00"}
    assert codec.fast_encode(record) == codec.encode(record)
    assert codec.fast_encode({"id": True, "name": "a", "blob": b""}) is None
    assert codec.fast_encode({"id": 1, "name": None, "blob": b""}) is None
    assert codec.fast_encode({"id": 1, "name": "a", "blob": bytearray()}) is None
    with pytest.raises(KeyError):
        codec.fast_encode({"id": 1, "name": "a"})

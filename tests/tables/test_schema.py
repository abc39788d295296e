"""Column/index/table definitions: input forms, validation errors, catalog round trip."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstore.errors import (
    ColumnDuplicate,
    ColumnIndexed,
    ColumnNotFound,
    DatabaseCorrupted,
    IndexDuplicate,
    IndexNotFound,
    InvalidColumnType,
    InvalidParameter,
    NullInvalid,
)
from jetstore.tables.schema import (
    Column,
    ColumnType,
    IndexDef,
    TableDef,
    decode_table_def,
    encode_table_def,
    make_table_def,
)


def people() -> TableDef:
    return make_table_def(
        "people",
        [
            ("id", "int"),
            ("name", ColumnType.TEXT, False),
            {"name": "score", "type": "FLOAT", "default": 1},
            Column("photo", "bytes"),
            ("active", "bool", False, True),
            ("born", "datetime"),
        ],
        "id",
        [("by_name", "name"), {"name": "by_score", "columns": ["score", "name"], "unique": True}],
        table_id=10,
        lv_id=11,
        index_ids=[12, 13],
    )


# --- construction -------------------------------------------------------------------------------


def test_make_table_def_normalises_every_input_form() -> None:
    t = people()
    assert [c.name for c in t.columns] == ["id", "name", "score", "photo", "active", "born"]
    assert [c.type.value for c in t.columns] == [
        "int",
        "text",
        "float",
        "bytes",
        "bool",
        "datetime",
    ]
    assert t.column("score").default == 1.0 and type(t.column("score").default) is float
    assert t.column("active") == Column("active", ColumnType.BOOL, False, True)
    assert t.primary_key == ("id",)
    assert t.indexes == (
        IndexDef("by_name", ("name",)),
        IndexDef("by_score", ("score", "name"), unique=True),
    )
    assert t.index_ids == (12, 13)
    assert t.index_id("by_score") == 13
    assert t.column_index("photo") == 3
    assert t.column_names == ("id", "name", "score", "photo", "active", "born")


def test_primary_key_columns_are_forced_not_null() -> None:
    t = make_table_def(
        "t", [("a", "int", True), ("b", "text"), ("c", "int")], ["a", "b"], table_id=1, lv_id=2
    )
    assert not t.column("a").nullable and not t.column("b").nullable
    assert t.column("c").nullable
    with pytest.raises(NullInvalid):
        t.validate_record({"a": 1, "b": None})


def test_column_type_aliases_and_case() -> None:
    assert Column("a", " Integer ").type is ColumnType.INT
    assert Column("a", "STRING").type is ColumnType.TEXT
    assert Column("a", "blob").type is ColumnType.BYTES
    with pytest.raises(InvalidParameter):
        Column("a", "decimal")
    with pytest.raises(InvalidParameter):
        Column("a", int)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["", "1abc", "a-b", "a b", "é", "x" * 65, None, 3, "naïve", "a\x00"]
)
def test_bad_names_are_invalid_parameter(name: Any) -> None:
    with pytest.raises(InvalidParameter):
        Column(name, "int")
    with pytest.raises(InvalidParameter):
        IndexDef(name, ("a",))
    with pytest.raises(InvalidParameter):
        make_table_def(name, [("a", "int")], "a", table_id=1, lv_id=2)


@pytest.mark.parametrize("name", ["a", "_", "A_1", "x" * 64, "_9"])
def test_good_names(name: str) -> None:
    make_table_def(name, [(name, "int")], name, table_id=1, lv_id=2)


def test_column_default_must_fit_its_type() -> None:
    with pytest.raises(InvalidParameter):
        Column("a", "int", default="1")
    with pytest.raises(InvalidParameter):
        Column("a", "int", default=True)
    with pytest.raises(InvalidParameter):
        Column("a", "int", default=1 << 64)
    assert Column("a", "bytes", default=bytearray(b"x")).default == b"x"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"columns": []}, InvalidParameter),
        ({"columns": [("a", "int"), ("a", "text")]}, ColumnDuplicate),
        ({"primary_key": []}, InvalidParameter),
        ({"primary_key": "zz"}, ColumnNotFound),
        ({"primary_key": ["a", "a"]}, InvalidParameter),
        ({"primary_key": [1]}, InvalidParameter),
        ({"primary_key": None}, InvalidParameter),
        ({"primary_key": 5}, InvalidParameter),
        ({"primary_key": b"a"}, InvalidParameter),
        ({"primary_key": {"a", "b"}}, InvalidParameter),  # a set has no key order
        ({"primary_key": {"a": 1}}, InvalidParameter),
        ({"indexes": [("i", None)], "index_ids": [3]}, InvalidParameter),
        ({"indexes": [("i", 5)], "index_ids": [3]}, InvalidParameter),
        ({"indexes": [("i", {"a", "b"})], "index_ids": [3]}, InvalidParameter),
        ({"indexes": [("i", [b"a"])], "index_ids": [3]}, InvalidParameter),
        ({"indexes": None}, InvalidParameter),
        ({"indexes": 5}, InvalidParameter),
        ({"columns": None}, InvalidParameter),
        ({"columns": 5}, InvalidParameter),
        ({"columns": {("a", "int"), ("b", "text")}}, InvalidParameter),
        ({"indexes": [("i", "b"), ("i", "a")], "index_ids": [3, 4]}, IndexDuplicate),
        ({"indexes": [("i", "nope")], "index_ids": [3]}, ColumnNotFound),
        ({"indexes": [("i", [])], "index_ids": [3]}, InvalidParameter),
        ({"indexes": [("i", ["a", "a"])], "index_ids": [3]}, InvalidParameter),
        ({"indexes": [("i", "a")], "index_ids": []}, InvalidParameter),
        ({"indexes": [{"name": "i", "cols": "a"}], "index_ids": [3]}, InvalidParameter),
        ({"indexes": [("i",)], "index_ids": [3]}, InvalidParameter),
        ({"indexes": "i"}, InvalidParameter),
        ({"columns": [("a",)]}, InvalidParameter),
        ({"columns": [{"name": "a"}]}, InvalidParameter),
        ({"columns": [{"name": "a", "type": "int", "size": 4}]}, InvalidParameter),
        ({"columns": [("a", "int", "yes")]}, InvalidParameter),
        ({"columns": "a"}, InvalidParameter),
        ({"table_id": 0}, InvalidParameter),
        ({"table_id": 1 << 32}, InvalidParameter),
        ({"table_id": True}, InvalidParameter),
        ({"lv_id": 1}, InvalidParameter),
        ({"indexes": [("i", "a")], "index_ids": [2]}, InvalidParameter),
    ],
)
def test_invalid_definitions(kwargs: dict[str, Any], error: type[Exception]) -> None:
    args: dict[str, Any] = {
        "name": "t",
        "columns": [("a", "int"), ("b", "text")],
        "primary_key": "a",
        "indexes": [],
        "table_id": 1,
        "lv_id": 2,
        "index_ids": [],
    }
    args.update(kwargs)
    with pytest.raises(error):
        make_table_def(**args)


class _TooFarEast(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=30)  # datetime itself refuses this offset (ValueError)


def test_lookups_raise_not_found() -> None:
    t = people()
    with pytest.raises(ColumnNotFound):
        t.column("nope")
    with pytest.raises(ColumnNotFound):
        t.column_index("nope")
    with pytest.raises(IndexNotFound):
        t.index("nope")
    # Names that are no strings are not found either, even those whose hash fails.
    for odd in (["by_name"], {"a": 1}, 1, None, datetime(2020, 1, 1, tzinfo=_TooFarEast())):
        with pytest.raises(ColumnNotFound):
            t.column(odd)  # type: ignore[arg-type]
        with pytest.raises(ColumnNotFound):
            t.column_index(odd)  # type: ignore[arg-type]
        with pytest.raises(IndexNotFound):
            t.index(odd)  # type: ignore[arg-type]


# --- record validation --------------------------------------------------------------------------


def test_validate_record_fills_defaults_in_column_order() -> None:
    t = people()
    out = t.validate_record({"name": "Ann", "id": 7})
    assert list(out) == list(t.column_names)
    assert out == {
        "id": 7,
        "name": "Ann",
        "score": 1.0,
        "photo": None,
        "active": True,
        "born": None,
    }


def test_validate_record_normalises_values() -> None:
    t = people()
    born = datetime(2000, 1, 1, tzinfo=UTC)
    out = t.validate_record(
        {"id": 7, "name": "A", "score": 3, "photo": memoryview(b"\x00\x01"), "born": born}
    )
    assert type(out["score"]) is float and out["score"] == 3.0
    assert type(out["photo"]) is bytes and out["photo"] == b"\x00\x01"
    assert out["born"] is born
    assert type(t.validate_record({"id": 1, "name": "x", "photo": bytearray(b"z")})["photo"]) is (
        bytes
    )


def test_validate_record_partial_returns_only_given_columns() -> None:
    t = people()
    assert t.validate_record({"score": 2}, partial=True) == {"score": 2.0}
    assert t.validate_record({}, partial=True) == {}
    with pytest.raises(NullInvalid):
        t.validate_record({"name": None}, partial=True)


@pytest.mark.parametrize(
    ("record", "error"),
    [
        ({"id": 1, "name": "a", "nope": 1}, ColumnNotFound),
        ({"id": 1, "name": "a", 5: 1}, ColumnNotFound),
        ({"id": None, "name": "a"}, NullInvalid),
        ({"id": 1, "name": None}, NullInvalid),
        ({"id": 1}, NullInvalid),  # NOT NULL without default, missing
        ({"id": 1, "name": "a", "active": None}, NullInvalid),
        ({"id": True, "name": "a"}, InvalidColumnType),
        ({"id": 1.0, "name": "a"}, InvalidColumnType),
        ({"id": "1", "name": "a"}, InvalidColumnType),
        ({"id": 1, "name": b"a"}, InvalidColumnType),
        ({"id": 1, "name": "a", "score": "1"}, InvalidColumnType),
        ({"id": 1, "name": "a", "score": False}, InvalidColumnType),
        ({"id": 1, "name": "a", "photo": "x"}, InvalidColumnType),
        ({"id": 1, "name": "a", "active": 1}, InvalidColumnType),
        ({"id": 1, "name": "a", "born": "2020-01-01"}, InvalidColumnType),
        ({"id": 1, "name": "a", "born": datetime(2020, 1, 1).date()}, InvalidColumnType),
        ({"id": 1 << 63, "name": "a"}, InvalidParameter),
        ({"id": -(1 << 63) - 1, "name": "a"}, InvalidParameter),
        ({"id": 1, "name": "a", "score": 1 << 1100}, InvalidParameter),
        (
            {"id": 1, "name": "a", "born": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))},
            InvalidParameter,
        ),
    ],
)
def test_validate_record_errors(record: dict[Any, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        people().validate_record(record)


@pytest.mark.parametrize("record", [None, [("id", 1), ("name", "a")], "id", 5, ("id", "name")])
@pytest.mark.parametrize("partial", [False, True])
def test_validate_record_refuses_what_is_not_a_mapping(record: Any, partial: bool) -> None:
    with pytest.raises(InvalidParameter, match="must be a mapping"):
        people().validate_record(record, partial=partial)


def test_out_of_range_datetime_error_is_one_message() -> None:
    late = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
    with pytest.raises(InvalidParameter) as info:
        people().validate_record({"id": 1, "name": "a", "born": late})
    text = str(info.value)
    assert "'born'" in text and "'people'" in text and "UTC range" in text
    # Not the inner error's whole text (its code and hint) inside the outer one's.
    assert text.count("JET_err") == 1 and text.count("What to do") == 1


def test_a_datetime_in_a_broken_zone_is_invalid_parameter_naming_the_column() -> None:
    broken = datetime(2020, 1, 1, tzinfo=_TooFarEast())
    with pytest.raises(InvalidParameter, match=r"'born'.*'people'.*UTC offset"):
        people().validate_record({"id": 1, "name": "a", "born": broken})
    with pytest.raises(InvalidParameter, match=r"'born'.*UTC offset"):
        Column("born", "datetime", default=broken)


def test_invalid_catalog_definition_error_is_one_message() -> None:
    doc = json.loads(encode_table_def(people()))
    doc["primary_key"] = ["nope"]
    with pytest.raises(DatabaseCorrupted) as info:
        decode_table_def(json.dumps(doc).encode("ascii"))
    text = str(info.value)
    assert "'nope'" in text and text.count("JET_err") == 1


def test_type_error_names_column_and_table() -> None:
    with pytest.raises(InvalidColumnType, match=r"'id'.*'people'"):
        people().validate_record({"id": "x", "name": "a"})


def test_key_extraction() -> None:
    t = make_table_def(
        "t",
        [("a", "int"), ("b", "text"), ("c", "float")],
        ["b", "a"],
        [("by_c", ["c", "a"])],
        table_id=5,
        lv_id=6,
        index_ids=[7],
    )
    r = t.validate_record({"a": 1, "b": "x", "c": 2})
    assert t.primary_key_of(r) == ("x", 1)
    assert t.index_key_of(t.index("by_c"), r) == (2.0, 1)
    with pytest.raises(InvalidParameter):
        t.primary_key_of({"a": 1})


# --- catalog encoding ---------------------------------------------------------------------------


def test_encode_decode_round_trip_with_every_default_type() -> None:
    t = make_table_def(
        "defaults",
        [
            Column("i", "int", default=-(1 << 63)),
            Column("f", "float", default=math.inf),
            Column("f2", "float", default=-0.0),
            Column("s", "text", default="é\x00\ud800"),
            Column("b", "bytes", default=b"\x00\xff"),
            Column("o", "bool", default=False),
            Column("dn", "datetime", default=datetime(1, 1, 1)),
            Column("da", "datetime", default=datetime(2020, 1, 1, 5, tzinfo=UTC)),
            Column("n", "int", nullable=False),
        ],
        ["n"],
        [("ix", ["s", "b"], True), ("iy", "o")],
        table_id=100,
        lv_id=101,
        index_ids=[102, 0xFFFFFFFF],
    )
    encoded = encode_table_def(t)
    back = decode_table_def(encoded)
    assert back == t
    assert encode_table_def(back) == encoded
    assert math.copysign(1.0, back.column("f2").default) == -1.0  # type: ignore[arg-type]
    dn, da = back.column("dn").default, back.column("da").default
    assert isinstance(dn, datetime) and dn.tzinfo is None
    assert isinstance(da, datetime) and da.tzinfo is not None
    assert type(back.column("o").default) is bool


def test_nan_default_round_trips() -> None:
    t = make_table_def(
        "t", [("a", "int"), ("f", "float", True, math.nan)], "a", table_id=1, lv_id=2
    )
    default = decode_table_def(encode_table_def(t)).column("f").default
    assert isinstance(default, float) and math.isnan(default)


def test_columns_are_equal_exactly_when_stored_alike() -> None:
    """Invariant 3: a float default compares by its stored bits (-0.0 is not 0.0, NaN is NaN,
    so a definition with a NaN default equals its decoded copy); an aware datetime default
    is kept in UTC, as stored and as every read returns it."""
    assert Column("f", "float", default=-0.0) != Column("f", "float", default=0.0)
    assert Column("f", "float", default=math.nan) == Column("f", "float", default=math.nan)
    assert len({Column("f", "float", default=x) for x in (0.0, -0.0, math.nan, math.nan)}) == 3
    t = make_table_def(
        "t", [("a", "int"), ("f", "float", True, math.nan)], "a", table_id=1, lv_id=2
    )
    assert decode_table_def(encode_table_def(t)) == t
    plus_one = datetime(2020, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    column = Column("d", "datetime", default=plus_one)
    assert column.default == plus_one and column.default.utcoffset() == timedelta(0)  # type: ignore[attr-defined]
    assert column == Column("d", "datetime", default=datetime(2020, 1, 1, tzinfo=UTC))
    assert column != Column("d", "datetime", default=datetime(2020, 1, 1))  # naive: another


def test_encoding_is_compact_sorted_json() -> None:
    t = make_table_def("t", [("a", "int")], "a", table_id=1, lv_id=2)
    assert encode_table_def(t) == (
        b'{"columns":[{"default":null,"name":"a","nullable":false,"type":"int"}],'
        b'"indexes":[],"lv_id":2,"name":"t","primary_key":["a"],"table_id":1,"version":1}'
    )


_types = st.sampled_from(list(ColumnType))


@st.composite
def table_defs(draw: st.DrawFn) -> TableDef:
    n = draw(st.integers(1, 6))
    names = draw(
        st.lists(
            st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    columns = [Column(nm, draw(_types), draw(st.booleans())) for nm in names]
    pk = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
    nidx = draw(st.integers(0, 3))
    indexes = [
        IndexDef(f"ix{i}", draw(st.lists(st.sampled_from(names), min_size=1, unique=True)))
        for i in range(nidx)
    ]
    return make_table_def(
        draw(st.sampled_from(["t", "Orders", "_x"])),
        columns,
        pk,
        indexes,
        table_id=1,
        lv_id=2,
        index_ids=list(range(3, 3 + nidx)),
    )


@given(table_defs())
def test_round_trip_property(t: TableDef) -> None:
    assert decode_table_def(encode_table_def(t)) == t


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b"\xff",
        b'{"version":2}',
        b'{"version":1}',
        b'{"columns":[],"indexes":[],"lv_id":2,"name":"t","primary_key":[],'
        b'"table_id":1,"version":1}',
        b'{"columns":[{"default":"zz","name":"a","nullable":false,"type":"bytes"}],'
        b'"indexes":[],"lv_id":2,"name":"t","primary_key":["a"],"table_id":1,"version":1}',
        b'{"columns":[{"default":null,"name":"a","nullable":false,"type":"money"}],'
        b'"indexes":[],"lv_id":2,"name":"t","primary_key":["a"],"table_id":1,"version":1}',
        b"[" * 100000,
    ],
)
def test_malformed_catalog_entries_raise_database_corrupted(data: bytes) -> None:
    with pytest.raises(DatabaseCorrupted):
        decode_table_def(data)


@given(st.binary(max_size=64))
def test_garbage_catalog_entry_raises_only_database_corrupted(data: bytes) -> None:
    with pytest.raises(DatabaseCorrupted):
        decode_table_def(data)


def test_schema_change_helpers_keep_everything_else_and_round_trip() -> None:
    t = make_table_def(
        "t", [("id", "int"), ("a", "text"), ("b", "int")], "id", [("by_a", "a")],
        table_id=1, lv_id=2, index_ids=[3],
    )  # fmt: skip
    added = t.with_index(IndexDef("by_b", ["b", "a"], unique=True), 9)
    assert [i.name for i in added.indexes] == ["by_a", "by_b"] and added.index_ids == (3, 9)
    assert added.index_id("by_b") == 9 and (added.table_id, added.lv_id) == (1, 2)
    assert added.without_index("by_a").index_ids == (9,)
    widened = t.with_column(Column("c", "float", False, 0.5))
    assert widened.column_names == ("id", "a", "b", "c") and widened.indexes == t.indexes
    narrowed = widened.without_column("b")
    assert narrowed.column_names == ("id", "a", "c") and narrowed.column_index("c") == 2
    for changed in (added, widened, narrowed):
        assert decode_table_def(encode_table_def(changed)) == changed
    assert t.column_names == ("id", "a", "b")  # the original is unchanged


def test_schema_change_helpers_refuse() -> None:
    t = make_table_def(
        "t", [("id", "int"), ("a", "text"), ("b", "int")], "id", [("by_a", "a")],
        table_id=1, lv_id=2, index_ids=[3],
    )  # fmt: skip
    with pytest.raises(IndexDuplicate):
        t.with_index(IndexDef("by_a", "b"), 9)
    with pytest.raises(ColumnNotFound):
        t.with_index(IndexDef("by_x", "x"), 9)
    with pytest.raises(InvalidParameter):  # object ids stay distinct
        t.with_index(IndexDef("by_b", "b"), 3)
    with pytest.raises(IndexNotFound):
        t.without_index("nope")
    with pytest.raises(ColumnDuplicate):
        t.with_column(Column("a", "int"))
    with pytest.raises(ColumnIndexed, match="primary key"):
        t.without_column("id")
    with pytest.raises(ColumnIndexed, match="'by_a'"):
        t.without_column("a")
    with pytest.raises(ColumnNotFound):
        t.without_column("nope")

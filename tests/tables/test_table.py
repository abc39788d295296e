"""The table layer through the public API: records of every column type, compound keys,
secondary indexes, long values, size limits and errors.

Every test checks its results, closes the instance cleanly, opens it again and checks them
again: what a transaction committed is what the page file and log hold. Leftovers are checked
on the raw tree (`Transaction.iterate(None, None)` lists every entry of the database's single
B+tree): each table object (records, long values, each index) holds exactly the entries its
records call for, and no entry lives under an object id no table owns.
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import jetstore
import jetstore.tables.records as records_module
from instance_store import Store
from jetstore.errors import (
    ColumnNotFound,
    DatabaseCorrupted,
    IndexNotFound,
    InvalidColumnType,
    InvalidParameter,
    KeyDuplicate,
    KeyTooBig,
    NotInTransaction,
    NullInvalid,
    ObjectNotFound,
    RecordNotFound,
    RecordTooBig,
)
from jetstore.pages.btree import (
    LEAF_ENTRY_OVERHEAD,
    iter_nodes,
    max_entry_size,
    paired_entry_size,
)
from jetstore.tables.catalog import CATALOG_ID, object_prefix
from jetstore.tables.keys import encode_key, prefix_successor
from jetstore.tables.records import LongValueRef, RecordCodec
from jetstore.tables.table import MAX_PRIMARY_KEY_SIZE, Table

PAGE = 8192
MAX_ENTRY = max_entry_size(PAGE)
#: A long-value chunk entry: two of them fill a leaf built in bulk.
CHUNK_ENTRY = paired_entry_size(PAGE)


def layout(db: jetstore.Database, name: str) -> dict[str, int]:
    """Entry counts of table `name`'s objects in the raw tree: records, lv, one per index.

    Also asserts that every entry of the tree belongs to the catalog or to some table.
    """
    with db.transaction() as txn:
        per_object = Counter(int.from_bytes(key[:4], "big") for key, _ in txn.iterate(None, None))
        owned = {CATALOG_ID}
        for table_name in txn.table_names():
            d = txn.table(table_name).definition
            owned.update((d.table_id, d.lv_id, *d.index_ids))
        assert set(per_object) <= owned, "entries under an object id that no table owns"
        d = txn.table(name).definition
        out = {"records": per_object[d.table_id], "lv": per_object[d.lv_id]}
        for index, index_id in zip(d.indexes, d.index_ids, strict=True):
            out[index.name] = per_object[index_id]
        return out


def same(a: object, b: object) -> bool:
    """Equality of stored values: aware datetimes come back as the same instant in UTC."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, datetime) and isinstance(b, datetime):
        if a.tzinfo is None:
            return b.tzinfo is None and a == b
        return b.tzinfo is not None and b.utcoffset() == timedelta(0) and a == b
    return type(a) is type(b) and a == b


def same_record(expected: dict[str, object], got: dict[str, object] | None) -> bool:
    return (
        got is not None
        and list(got) == list(expected)
        and all(same(expected[k], got[k]) for k in expected)
    )


# --------------------------------------------------------------------------- column types

ALL_TYPES = [
    ("id", "int"),
    ("i", "int"),
    ("f", "float"),
    ("s", "text"),
    ("b", "bytes"),
    ("flag", "bool"),
    ("naive", "datetime"),
    ("aware", "datetime"),
]

IST = timezone(timedelta(hours=5, minutes=30))
WEST = timezone(-timedelta(hours=8))

TYPED_RECORDS: list[dict[str, object]] = [
    {
        "id": 1,
        "i": -(2**63),
        "f": -0.5,
        "s": "",
        "b": b"",
        "flag": False,
        "naive": datetime(1, 1, 1),
        "aware": datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=IST),
    },
    {
        "id": 2,
        "i": 2**63 - 1,
        "f": math.inf,
        "s": "nul\x00inside, ünïcödé, 𝄞 and a lone surrogate \ud800",
        "b": bytes(range(256)),
        "flag": True,
        "naive": datetime(9999, 12, 31, 23, 59, 59, 999999),
        "aware": datetime(1969, 12, 31, 16, 0, tzinfo=WEST),
    },
    {
        "id": 3,
        "i": 0,
        "f": 1e-300,
        "s": "x" * 500,
        "b": b"\x00" * 500,
        "flag": True,
        "naive": datetime(2000, 1, 1, 12, 0, 0, 1),
        "aware": datetime(2000, 1, 1, 12, 0, tzinfo=UTC),
    },
    # Every nullable column NULL.
    {
        "id": 4,
        "i": None,
        "f": None,
        "s": None,
        "b": None,
        "flag": None,
        "naive": None,
        "aware": None,
    },
]


def test_every_column_type_round_trips_and_survives_reopen(store: Store) -> None:
    store.db.create_table("t", ALL_TYPES, "id")
    with store.db.transaction() as txn:
        t = txn.table("t")
        for record in TYPED_RECORDS:
            t.insert(record)
        # Read-your-own-writes before commit.
        assert same_record(TYPED_RECORDS[1], t.get(2))

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            for record in TYPED_RECORDS:
                got = t.get(record["id"])
                assert same_record(record, got), (record, got)
            aware = t.get(1)
            assert aware is not None and isinstance(aware["aware"], datetime)
            assert aware["aware"].tzinfo is not None
            assert aware["aware"] == datetime(2024, 2, 29, 18, 29, 59, 999999, tzinfo=UTC)
            naive = t.get(3)
            assert naive is not None and isinstance(naive["naive"], datetime)
            assert naive["naive"].tzinfo is None
            rows = list(t.scan())
            assert [r["id"] for r in rows] == [1, 2, 3, 4]
            assert all(same_record(e, g) for e, g in zip(TYPED_RECORDS, rows, strict=True))
            assert t.get(99) is None
            assert 1 in t and 99 not in t
        assert layout(store.db, "t") == {"records": 4, "lv": 0}

    store.checked_twice(check)


def test_values_are_normalized_to_their_column_type(store: Store) -> None:
    store.db.create_table("t", ALL_TYPES, "id")
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "f": 3, "b": bytearray(b"ab"), "s": "x"})
        txn.table("t").insert({"id": 2, "f": 2.5, "b": memoryview(b"cd")})

    def check() -> None:
        with store.db.transaction() as txn:
            one, two = txn.table("t").get(1), txn.table("t").get(2)
            assert one is not None and two is not None
            assert type(one["f"]) is float and one["f"] == 3.0
            assert one["b"] == b"ab" and type(one["b"]) is bytes
            assert two["b"] == b"cd" and type(two["b"]) is bytes
            # Columns not given are NULL.
            assert one["i"] is None and one["naive"] is None and two["s"] is None

    store.checked_twice(check)


def test_defaults_and_not_null_columns(store: Store) -> None:
    store.db.create_table(
        "t",
        [
            jetstore.Column("id", "int"),
            jetstore.Column("name", "text", nullable=False),
            jetstore.Column("level", "int", nullable=False, default=7),
            jetstore.Column("when", "datetime", default=datetime(2020, 1, 1)),
            jetstore.Column("raw", "bytes", default=b"\x01\x02"),
        ],
        "id",
    )
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"id": 1, "name": "a"})
        with pytest.raises(NullInvalid):
            t.insert({"id": 2})  # name is NOT NULL without a default
        with pytest.raises(NullInvalid):
            t.insert({"id": 2, "name": None})
        with pytest.raises(NullInvalid):
            t.insert({"id": 2, "name": "b", "level": None})
        with pytest.raises(NullInvalid):
            t.update(1, {"level": None})
        t.insert({"id": 3, "name": "c", "level": 1, "when": None, "raw": None})

    def check() -> None:
        rows = store.read("t")
        assert rows == [
            {"id": 1, "name": "a", "level": 7, "when": datetime(2020, 1, 1), "raw": b"\x01\x02"},
            {"id": 3, "name": "c", "level": 1, "when": None, "raw": None},
        ]
        assert layout(store.db, "t") == {"records": 2, "lv": 0}

    store.checked_twice(check)


def test_update_delete_upsert_of_every_type(store: Store) -> None:
    store.db.create_table("t", ALL_TYPES, "id")
    with store.db.transaction() as txn:
        t = txn.table("t")
        for record in TYPED_RECORDS:
            t.insert(record)
    expected = {r["id"]: dict(r) for r in TYPED_RECORDS}
    changes: dict[str, object] = {
        "i": 42,
        "f": -1e300,
        "s": "changed",
        "b": b"\xff\x00",
        "flag": True,
        "naive": datetime(1999, 12, 31),
        "aware": datetime(2030, 6, 1, 8, tzinfo=IST),
    }
    with store.db.transaction() as txn:
        t = txn.table("t")
        # Values to NULL and NULL to values, one column at a time and all at once.
        for column, value in changes.items():
            returned = t.update(4, {column: value})
            expected[4][column] = value
            assert same_record(expected[4], returned)
        returned = t.update(1, {c: None for c in changes})
        expected[1].update({c: None for c in changes})
        assert same_record(expected[1], returned)
        t.delete(2)
        del expected[2]
        # upsert replaces every column: the ones not given take their default (NULL here).
        t.upsert({"id": 3, "s": "upserted"})
        expected[3] = {c: None for c, _ in ALL_TYPES} | {"id": 3, "s": "upserted"}
        t.upsert({"id": 5, "i": 5, "aware": datetime(2001, 1, 1, tzinfo=WEST)})
        expected[5] = {c: None for c, _ in ALL_TYPES} | {
            "id": 5,
            "i": 5,
            "aware": datetime(2001, 1, 1, tzinfo=WEST),
        }
        with pytest.raises(RecordNotFound):
            t.update(2, {"i": 1})
        with pytest.raises(RecordNotFound):
            t.delete(2)
        with pytest.raises(KeyError):  # RecordNotFound is also a KeyError
            t.delete(99)

    def check() -> None:
        rows = store.read("t")
        assert [r["id"] for r in rows] == sorted(expected)
        for row in rows:
            assert same_record(expected[row["id"]], row), row
        assert layout(store.db, "t") == {"records": 4, "lv": 0}

    store.checked_twice(check)


# --------------------------------------------------------------------------- compound keys


def test_compound_primary_key(store: Store) -> None:
    store.db.create_table(
        "t",
        [("region", "text"), ("day", "datetime"), ("seq", "int"), ("v", "float")],
        ("region", "day", "seq"),
    )
    days = [datetime(2024, 1, d) for d in (1, 2, 3)]
    keys = [(r, d, s) for r in ("eu", "us") for d in days for s in (2, 1, 3)]
    with store.db.transaction() as txn:
        t = txn.table("t")
        for n, (r, d, s) in enumerate(keys):
            t.insert({"region": r, "day": d, "seq": s, "v": float(n)})
        with pytest.raises(KeyDuplicate):
            t.insert({"region": "eu", "day": days[0], "seq": 1, "v": 0.0})
        with pytest.raises(InvalidParameter):
            t.get(("eu", days[0]))  # not the whole key
        with pytest.raises(InvalidParameter):
            t.get("eu")

    ordered = sorted(keys)

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            assert t.get(("eu", days[1], 3)) == {
                "region": "eu",
                "day": days[1],
                "seq": 3,
                "v": float(keys.index(("eu", days[1], 3))),
            }
            assert t.get(["us", days[2], 1]) is not None  # a list works as a key too
            assert t.get(("us", days[2], 4)) is None
            key_of = lambda r: (r["region"], r["day"], r["seq"])  # noqa: E731
            assert [key_of(r) for r in t.scan()] == ordered
            assert [key_of(r) for r in t.scan(reverse=True)] == ordered[::-1]
            # Partial keys: start inclusive, stop exclusive, both as tuple prefixes.
            assert [key_of(r) for r in t.scan(start=("us",))] == [
                k for k in ordered if k[0] >= "us"
            ]
            assert [key_of(r) for r in t.scan(stop="us")] == [k for k in ordered if k[0] < "us"]
            assert [key_of(r) for r in t.scan(start=("eu", days[1]), stop=("eu", days[2]))] == [
                k for k in ordered if k[0] == "eu" and k[1] == days[1]
            ]
            assert [key_of(r) for r in t.scan(start=("eu", days[1], 2), stop=("us",))] == [
                k for k in ordered if ("eu", days[1], 2) <= k < ("us",)
            ]
            assert [
                key_of(r) for r in t.scan(start=("eu", days[1], 2), stop=("us",), reverse=True)
            ] == [k for k in ordered if ("eu", days[1], 2) <= k < ("us",)][::-1]
            assert list(t.scan(start="zz")) == []
            assert list(t.scan(start="us", stop="eu")) == []

    store.checked_twice(check)
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.update(("eu", days[0], 1), {"v": -1.0})
        t.delete(("us", days[0], 2))
    with store.db.transaction() as txn:
        t = txn.table("t")
        assert t.get(("eu", days[0], 1))["v"] == -1.0  # type: ignore[index]
        assert t.get(("us", days[0], 2)) is None
    assert layout(store.db, "t") == {"records": len(keys) - 1, "lv": 0}


# --------------------------------------------------------------------------- indexes


def people_table(db: jetstore.Database) -> None:
    db.create_table(
        "people",
        [
            ("id", "int"),
            ("name", "text"),
            ("email", "text"),
            ("city", "text"),
            ("age", "int"),
            ("score", "float"),
        ],
        "id",
        indexes=[
            ("by_name", "name"),
            ("by_email", "email", True),
            ("by_city_age", ["city", "age"]),
            jetstore.IndexDef("by_city_name", ["city", "name"], unique=True),
            ("by_score", "score"),
        ],
    )


PEOPLE = [
    {"id": 1, "name": "ada", "email": "ada@x", "city": "london", "age": 36, "score": 9.5},
    {"id": 2, "name": "bob", "email": "bob@x", "city": "paris", "age": 40, "score": 5.0},
    {"id": 3, "name": "cy", "email": None, "city": "london", "age": 20, "score": 7.25},
    {"id": 4, "name": "ada", "email": "ada2@x", "city": "rome", "age": 36, "score": 1.0},
    {"id": 5, "name": "dee", "email": None, "city": "paris", "age": 20, "score": 5.0},
    {"id": 6, "name": None, "email": "n@x", "city": "london", "age": None, "score": None},
    {"id": 7, "name": "eve", "email": "eve@x", "city": "london", "age": 36, "score": -2.0},
]


def index_order(rows: list[dict[str, Any]], columns: list[str]) -> list[int]:
    """Record ids in index order: NULL first, ties broken by primary key."""

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (*((r[c] is not None, r[c] if r[c] is not None else 0) for c in columns), r["id"])

    return [r["id"] for r in sorted(rows, key=key)]


def ids(rows: Iterator[dict[str, object]]) -> list[object]:
    return [r["id"] for r in rows]


def test_secondary_indexes_scan_forwards_backwards_and_by_range(store: Store) -> None:
    people_table(store.db)
    with store.db.transaction() as txn:
        for p in PEOPLE:
            txn.table("people").insert(p)

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("people")
            for index, columns in [
                ("by_name", ["name"]),
                ("by_email", ["email"]),
                ("by_city_age", ["city", "age"]),
                ("by_city_name", ["city", "name"]),
                ("by_score", ["score"]),
            ]:
                expected = index_order(PEOPLE, columns)
                assert ids(t.scan(index=index)) == expected, index
                assert ids(t.scan(index=index, reverse=True)) == expected[::-1], index
            # Equal index values come out in primary key order.
            assert ids(t.scan(index="by_name", start="ada", stop="ada\x00")) == [1, 4]
            # start inclusive, stop exclusive.
            assert ids(t.scan(index="by_name", start="bob")) == [2, 3, 5, 7]
            assert ids(t.scan(index="by_name", stop="bob")) == [6, 1, 4]
            assert ids(t.scan(index="by_name", start="ada", stop="cy")) == [1, 4, 2]
            assert ids(t.scan(index="by_name", start="ada", stop="cy", reverse=True)) == [2, 4, 1]
            # NULL is a key value that sorts first.
            assert ids(t.scan(index="by_name", start=None, stop="a")) == [6]
            assert ids(t.scan(index="by_name", start=(None,), stop=("a",))) == [6]
            # Partial keys on a two-column index.
            london = ids(t.scan(index="by_city_age", start=("london",), stop=("london\x00",)))
            assert london == [6, 3, 1, 7]
            assert ids(t.scan(index="by_city_age", start=("london", 21), stop=("london", 37))) == [
                1,
                7,
            ]
            assert ids(
                t.scan(index="by_city_age", start=("london", 21), stop=("paris",), reverse=True)
            ) == [7, 1]
            assert ids(t.scan(index="by_city_age", start=("paris",))) == [5, 2, 4]
            # The primary key may follow the index columns in a bound (resume a scan).
            assert ids(t.scan(index="by_city_age", start=("london", 36, 7))) == [7, 5, 2, 4]
            assert ids(t.scan(index="by_name", start=("ada", 2), stop=("ada", 5))) == [4]
            # A float key: int bounds mean the same number.
            assert ids(t.scan(index="by_score", start=5, stop=9)) == [2, 5, 3]
            assert ids(t.scan(index="by_score", start=5.0, stop=9.0)) == [2, 5, 3]
            assert ids(t.scan(index="by_score", start=-100, stop=0)) == [7]
            # Bounds are checked like column values.
            with pytest.raises(InvalidColumnType):
                list(t.scan(index="by_city_age", start=("london", "old")))
            with pytest.raises(InvalidParameter):
                list(t.scan(index="by_name", start=("ada", 1, 2)))
            with pytest.raises(IndexNotFound):
                t.scan(index="nope")
        assert layout(store.db, "people") == {
            "records": 7,
            "lv": 0,
            "by_name": 7,
            "by_email": 7,
            "by_city_age": 7,
            "by_city_name": 7,
            "by_score": 7,
        }

    store.checked_twice(check)


def test_index_entries_move_on_update_and_vanish_on_delete(store: Store) -> None:
    people_table(store.db)
    with store.db.transaction() as txn:
        for p in PEOPLE:
            txn.table("people").insert(p)
    rows = {p["id"]: dict(p) for p in PEOPLE}
    with store.db.transaction() as txn:
        t = txn.table("people")
        t.update(1, {"name": "zed", "city": "oslo", "score": 100.0})
        rows[1].update(name="zed", city="oslo", score=100.0)
        t.update(6, {"name": "fay", "age": 50})
        rows[6].update(name="fay", age=50)
        t.update(2, {"email": None})
        rows[2]["email"] = None
        t.update(3, {"email": "cy@x"})
        rows[3]["email"] = "cy@x"
        t.upsert({"id": 4, "name": "ada", "city": "rome", "age": 37, "email": "ada2@x"})
        rows[4] = {"id": 4, "name": "ada", "email": "ada2@x", "city": "rome", "age": 37}
        rows[4]["score"] = None
        t.delete(5)
        del rows[5]
        # Read-your-own-writes through the indexes.
        assert ids(t.scan(index="by_name", start="zed")) == [1]

    def check() -> None:
        current = list(rows.values())
        with store.db.transaction() as txn:
            t = txn.table("people")
            for index, columns in [
                ("by_name", ["name"]),
                ("by_email", ["email"]),
                ("by_city_age", ["city", "age"]),
                ("by_city_name", ["city", "name"]),
                ("by_score", ["score"]),
            ]:
                assert ids(t.scan(index=index)) == index_order(current, columns), index
            # The old positions are empty.
            assert ids(t.scan(index="by_name", start="ada", stop="ada\x00")) == [4]
            assert ids(t.scan(index="by_city_age", start=("london", 36), stop=("london", 37))) == [
                7
            ]
            assert ids(t.scan(index="by_email", start="bob@x", stop="bob@x\x00")) == []
            assert ids(t.scan(index="by_score", start=9.5, stop=9.6)) == []
            assert ids(t.scan(index="by_name", start="dee", stop="dee\x00")) == []
            assert all(same_record(rows[r["id"]], r) for r in t.scan())  # type: ignore[index]
        counts = layout(store.db, "people")
        assert counts == {"records": 6, "lv": 0} | {
            i: 6 for i in ("by_name", "by_email", "by_city_age", "by_city_name", "by_score")
        }

    store.checked_twice(check)


def test_unique_violations_on_insert_and_update_leave_nothing_behind(store: Store) -> None:
    people_table(store.db)
    with store.db.transaction() as txn:
        for p in PEOPLE:
            txn.table("people").insert(p)
    before = layout(store.db, "people")
    with store.db.transaction() as txn:
        t = txn.table("people")
        # The error names the unique index, the key and the record holding it (its primary
        # key): it gave the other entry's key as opaque hex.
        with pytest.raises(KeyDuplicate, match=r"'by_email'.*\('bob@x',\).*primary key \(2,\)"):
            t.insert({"id": 10, "name": "new", "email": "bob@x", "city": "x", "age": 1})
        with pytest.raises(KeyDuplicate):  # by_city_name ("london", "ada")
            t.insert({"id": 10, "name": "ada", "email": "q@x", "city": "london"})
        with pytest.raises(KeyDuplicate, match=r"primary key \(7,\)"):
            t.update(3, {"email": "eve@x"})
        with pytest.raises(KeyDuplicate, match=r"'by_city_name'.*primary key \(1,\)"):
            t.update(4, {"city": "london"})  # ("london", "ada") is taken by record 1
        with pytest.raises(KeyDuplicate):
            t.upsert({"id": 2, "email": "ada@x"})
        with pytest.raises(KeyDuplicate):  # duplicate primary key
            t.insert({"id": 1, "name": "zz", "email": "zz@x"})
        with pytest.raises(KeyDuplicate):  # moving the record onto an existing key
            t.update(3, {"id": 2})
        # The failed writes changed nothing: every record is still as it was.
        assert [r for r in t.scan()] == PEOPLE
        # NULLs never collide, neither alone nor inside a multi-column unique key.
        t.insert({"id": 11, "name": "n1", "email": None, "city": "london"})
        t.insert({"id": 12, "name": "n2", "email": None, "city": None})
        t.insert({"id": 13, "name": "n2", "email": None, "city": None})
        t.insert({"id": 14, "name": None, "email": None, "city": "london"})
        # Re-setting a record's own unique value is not a collision.
        t.update(1, {"email": "ada@x", "age": 37})
        # A value freed earlier in the same transaction can be taken.
        t.update(2, {"email": "bobby@x"})
        t.insert({"id": 15, "name": "b2", "email": "bob@x", "city": "nice"})

    def check() -> None:
        counts = layout(store.db, "people")
        assert counts == {k: v + 5 for k, v in before.items() if k != "lv"} | {"lv": 0}
        with store.db.transaction() as txn:
            t = txn.table("people")
            assert ids(t.scan(index="by_email", start="bob@x", stop="bob@x\x00")) == [15]
            assert ids(t.scan(index="by_email", stop="a")) == [3, 5, 11, 12, 13, 14]
            assert t.get(1)["age"] == 37  # type: ignore[index]

    store.checked_twice(check)


def test_unique_index_values_that_extend_another_by_nul_bytes_do_not_collide(
    store: Store,
) -> None:
    # "a" encodes as a byte prefix of "a\x00" (40 61 00 | 40 61 00 FF 00): the uniqueness check
    # must compare whole index keys, not byte prefixes.
    store.db.create_table(
        "t",
        [("id", "int"), ("code", "text"), ("blob", "bytes")],
        "id",
        indexes=[("by_code", "code", True), ("by_blob", "blob", True)],
    )
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"id": 1, "code": "a\x00", "blob": b"a\x00\x00"})
        t.insert({"id": 2, "code": "a", "blob": b"a"})
        t.insert({"id": 3, "code": "", "blob": b""})
        t.insert({"id": 4, "code": "\x00", "blob": b"\x00"})
        with pytest.raises(KeyDuplicate):
            t.insert({"id": 5, "code": "a\x00"})
        with pytest.raises(KeyDuplicate):
            t.update(4, {"blob": b"a"})
        t.update(4, {"code": "a\x00\x00", "blob": b"a\x00"})

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            assert ids(t.scan(index="by_code")) == [3, 2, 1, 4]
            assert ids(t.scan(index="by_blob")) == [3, 2, 4, 1]

    store.checked_twice(check)


def test_primary_key_change_moves_the_record_its_index_entries_and_long_values(
    store: Store,
) -> None:
    store.db.create_table(
        "t",
        [("id", "int"), ("code", "text"), ("blob", "bytes")],
        "id",
        indexes=[("by_code", "code", True)],
    )
    blob = bytes(range(256)) * 100  # a long value (25.6 KB)
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"id": 1, "code": "a", "blob": blob})
        t.insert({"id": 2, "code": "b", "blob": b"small"})
    lv_entries = layout(store.db, "t")["lv"]
    assert lv_entries > 1
    with store.db.transaction() as txn:
        t = txn.table("t")
        # Moving onto an existing key, or with a unique value another record holds, fails
        # and leaves the record where it was (nothing half done).
        with pytest.raises(KeyDuplicate):
            t.update(1, {"id": 2})
        with pytest.raises(KeyDuplicate):
            t.update(1, {"id": 3, "code": "b"})
        assert t.get(1) == {"id": 1, "code": "a", "blob": blob}
        assert t.get(3) is None
        moved = t.update(1, {"id": 3})  # same unique value, new key: not a collision
        assert moved == {"id": 3, "code": "a", "blob": blob}
        t.update(2, {"id": 0, "code": "c"})

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            assert t.get(1) is None and t.get(2) is None
            assert t.get(3) == {"id": 3, "code": "a", "blob": blob}
            assert t.get(0) == {"id": 0, "code": "c", "blob": b"small"}
            assert ids(t.scan(index="by_code")) == [3, 0]
            assert ids(t.scan()) == [0, 3]
        assert layout(store.db, "t") == {"records": 2, "lv": lv_entries, "by_code": 2}

    store.checked_twice(check)
    with store.db.transaction() as txn:
        txn.table("t").delete(3)
    assert layout(store.db, "t") == {"records": 1, "lv": 0, "by_code": 1}


def test_datetime_index_orders_instants_and_keeps_naive_and_aware_apart(store: Store) -> None:
    store.db.create_table(
        "t", [("id", "int"), ("at", "datetime")], "id", indexes=[("by_at", "at", True)]
    )
    naive = datetime(2024, 1, 1, 12)
    values = {
        1: naive,
        2: naive.replace(tzinfo=UTC),  # same instant, aware: another key
        3: datetime(2024, 1, 1, 17, 30, tzinfo=IST),  # 12:00 UTC as well
        4: datetime(2024, 1, 1, 11, 59),
        5: datetime(2024, 1, 1, 4, 1, tzinfo=WEST),  # 12:01 UTC
    }
    with store.db.transaction() as txn:
        t = txn.table("t")
        for i in (1, 2, 4, 5):
            t.insert({"id": i, "at": values[i]})
        with pytest.raises(KeyDuplicate):  # the same aware instant in another zone
            t.insert({"id": 3, "at": values[3]})

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            assert ids(t.scan(index="by_at")) == [4, 1, 2, 5]
            got = t.get(5)
            assert got is not None and same(values[5], got["at"])
            start = datetime(2024, 1, 1, 12, tzinfo=UTC)
            assert ids(t.scan(index="by_at", start=start)) == [2, 5]
            assert ids(t.scan(index="by_at", start=values[3])) == [2, 5]

    store.checked_twice(check)


# --------------------------------------------------------------------------- long values


def inline_limit(pk: bytes, fixed: int) -> int:
    """Largest text/bytes value kept in a record whose other fields encode to `fixed` bytes."""
    key_size = 4 + len(pk)
    return MAX_ENTRY - LEAF_ENTRY_OVERHEAD - key_size - fixed - 5  # tag + u32 length


def test_float_keys_are_equal_by_their_bytes_not_by_python_equality(store: Store) -> None:
    # The documented choice (docs/design.md, key layout): -0.0 and 0.0 are two keys, every NaN
    # is one key after +inf; both in the primary key and in a unique index.
    store.db.create_table("f", [("k", "float"), ("v", "float")], "k", [("by_v", "v", True)])
    with store.db.transaction() as txn:
        t = txn.table("f")
        t.insert({"k": 0.0, "v": 0.0})
        t.insert({"k": -0.0, "v": -0.0})  # neither key collides
        t.insert({"k": math.nan, "v": math.nan})
        t.insert({"k": math.inf, "v": -math.inf})
        with pytest.raises(KeyDuplicate):
            t.insert({"k": -math.nan, "v": 1.0})  # another NaN: the same primary key
        with pytest.raises(KeyDuplicate):
            t.insert({"k": 5.0, "v": float("nan")})  # the same unique index key

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("f")
            keys = [r["k"] for r in t.scan()]
            assert [math.copysign(1, k) for k in keys[:2]] == [-1, 1] and keys[:2] == [0, 0]
            assert keys[2] == math.inf and math.isnan(keys[3])
            values = [r["v"] for r in t.scan(index="by_v", reverse=True)]
            assert math.isnan(values[0]) and values[1:] == [0.0, -0.0, -math.inf]
            assert math.copysign(1, values[2]) == -1
            zero, minus_zero = t.get(0.0), t.get(-0.0)
            assert zero is not None and math.copysign(1, zero["v"]) == 1
            assert minus_zero is not None and math.copysign(1, minus_zero["v"]) == -1
            nan = t.get(float("-nan"))
            assert nan is not None and math.isnan(nan["v"])

    store.checked_twice(check)


def test_scan_bounds_empty_ranges_and_nulls_in_both_directions(store: Store) -> None:
    store.db.create_table("n", [("id", "int"), ("x", "int")], "id", [("by_x", "x")])
    with store.db.transaction() as txn:
        t = txn.table("n")
        for i in range(6):
            t.insert({"id": i, "x": None if i % 2 else 10 - i})
    with store.db.transaction() as txn:
        t = txn.table("n")

        def ids(rows: Iterator[dict[str, Any]]) -> list[Any]:
            return [r["id"] for r in rows]

        for reverse in (False, True):
            assert ids(t.scan(start=3, stop=1, reverse=reverse)) == []
            assert ids(t.scan(start=2, stop=2, reverse=reverse)) == []
        # The range is start <= key < stop in either direction.
        assert ids(t.scan(start=1, stop=3, reverse=True)) == [2, 1]
        # NULLs first forwards, last backwards; (None,) bounds at NULL, None is no bound.
        assert ids(t.scan(index="by_x")) == [1, 3, 5, 4, 2, 0]
        assert ids(t.scan(index="by_x", reverse=True)) == [0, 2, 4, 5, 3, 1]
        assert ids(t.scan(index="by_x", stop=(None,))) == []
        assert ids(t.scan(index="by_x", start=(None,), stop=(-(2**63),))) == [1, 3, 5]
        assert ids(t.scan(index="by_x", start=(None,), stop=(8,), reverse=True)) == [4, 5, 3, 1]
        assert ids(t.scan(index="by_x", start=6)) == [4, 2, 0]
        # A bound of the wrong type or with too many values is refused, like a column value.
        with pytest.raises(InvalidColumnType):
            t.scan(start="1")
        with pytest.raises(InvalidParameter):
            t.scan(index="by_x", start=(1, 2, 3))


def test_long_values_around_the_inline_limit(store: Store) -> None:
    store.db.create_table("t", [("id", "int"), ("s", "text"), ("b", "bytes")], "id")
    # Record: header 3, int 9, then one value of each; the other one NULL (1 byte).
    limit = inline_limit(encode_key([0]), 3 + 9 + 1)
    sizes = [0, 1, 100, limit - 1, limit, limit + 1, limit + 2, 2 * MAX_ENTRY, 10 * MAX_ENTRY + 7]
    expected: dict[int, dict[str, object]] = {}
    with store.db.transaction() as txn:
        t = txn.table("t")
        for n, size in enumerate(sizes):
            data = bytes((n + i) % 251 for i in range(size))
            expected[2 * n] = {"id": 2 * n, "s": None, "b": data}
            t.insert(expected[2 * n])
            # Text counts UTF-8 bytes: "é" is 2 bytes, so this is `size` bytes as well.
            text = "é" * (size // 2) + "x" * (size % 2)
            expected[2 * n + 1] = {"id": 2 * n + 1, "s": text, "b": None}
            t.insert(expected[2 * n + 1])
    # Values up to the limit stay inline; above it they become chunks.
    long_sizes = [s for s in sizes if s > limit]
    chunk_payload = CHUNK_ENTRY - LEAF_ENTRY_OVERHEAD - (len(encode_key([0])) + 10)
    chunks = 2 * sum(math.ceil(s / chunk_payload) for s in long_sizes)

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            for key, record in expected.items():
                assert t.get(key) == record, key
            assert [r["id"] for r in t.scan()] == sorted(expected)
            assert list(t.scan()) == [expected[k] for k in sorted(expected)]
        assert layout(store.db, "t") == {"records": len(expected), "lv": chunks}

    store.checked_twice(check)
    # Updates across the limit both ways, then deletes: chunks follow exactly.
    with store.db.transaction() as txn:
        t = txn.table("t")
        for n, size in enumerate(sizes):
            if size > limit:
                expected[2 * n] = t.update(2 * n, {"b": b"short"})
                expected[2 * n + 1] = t.update(2 * n + 1, {"s": "y" * (size + MAX_ENTRY)})
            else:
                expected[2 * n] = t.update(2 * n, {"b": b"\x07" * (limit + 1 + size)})
    stored = [
        value.encode() if isinstance(value, str) else value
        for r in expected.values()
        for value in (r["s"], r["b"])
        if isinstance(value, str | bytes)
    ]
    chunks = sum(math.ceil(len(v) / chunk_payload) for v in stored if len(v) > limit)
    assert chunks > 0

    store.checked_twice(check)
    with store.db.transaction() as txn:
        t = txn.table("t")
        for key in list(expected):
            t.delete(key)
    assert layout(store.db, "t") == {"records": 0, "lv": 0}
    store.reopen()
    assert layout(store.db, "t") == {"records": 0, "lv": 0}


def test_several_long_values_in_one_record(store: Store) -> None:
    store.db.create_table(
        "t",
        [("id", "text"), ("a", "text"), ("b", "bytes"), ("c", "text"), ("n", "int")],
        "id",
    )
    record: dict[str, object] = {
        "id": "k\x00ey",
        "a": "a" * 3000,
        "b": b"b" * 3500,
        "c": "c" * 1500,
        "n": 1,
    }
    big = {
        "id": "big",
        "a": "\u03b1" * 50_000,
        "b": b"\x00" * 70_000,
        "c": "\u03b3" * 20_000,
        "n": 2,
    }
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert(record)
        t.insert(big)
        assert t.get("k\x00ey") == record

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            assert t.get("k\x00ey") == record
            assert t.get("big") == big
            assert list(t.scan()) == [big, record]
        assert layout(store.db, "t")["lv"] > 0

    store.checked_twice(check)
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.update("big", {"n": 3})  # an unrelated column: long values stay intact
        big["n"] = 3
        assert t.get("big") == big
        t.update("k\x00ey", {"a": None, "b": None})
        record.update(a=None, b=None)
    store.checked_twice(check)
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.delete("big")
        t.delete("k\x00ey")
    assert layout(store.db, "t") == {"records": 0, "lv": 0}


def test_unchanged_long_values_are_not_rewritten(store: Store) -> None:
    store.db.create_table("t", [("id", "int"), ("n", "int"), ("s", "text"), ("b", "bytes")], "id")
    text, data = "\u00e9" * 30_000, bytes(range(256)) * 200
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "n": 0, "s": text, "b": data})
    chunks = layout(store.db, "t")["lv"]
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.update(1, {"n": 1})
        t.upsert({"id": 1, "n": 2, "s": text, "b": data})  # same values: nothing to rewrite
        assert len(txn.operations) == 1  # the record entry only
        # The same length with other content, and another length: rewritten.
        t.update(1, {"b": bytes(reversed(data))})
        t.update(1, {"s": text + "x"})
        assert len(txn.operations) > 1
    store.reopen()
    with store.db.transaction() as txn:
        assert txn.table("t").get(1) == {
            "id": 1,
            "n": 2,
            "s": text + "x",
            "b": bytes(reversed(data)),
        }
    assert layout(store.db, "t")["lv"] == chunks  # 60,000 and 60,001 bytes: as many chunks


def lv_leaf_pages(db: jetstore.Database, name: str) -> int:
    """Leaves of the tree holding chunks of table `name`'s long values."""
    with db.transaction() as txn:
        prefix = txn.table(name).definition.lv_id.to_bytes(4, "big")
    return sum(
        1
        for node in iter_nodes(db.file, db.root)
        if node.leaf and any(key.startswith(prefix) for key in node.keys)
    )


def test_long_values_take_little_more_than_their_size(store: Store) -> None:
    """Chunks are sized two a leaf (`paired_entry_size`) and evenly (a value's chunks within
    a byte of each other), and a run of chunks fills leaves whether it is applied by path
    copies (a value written alone) or by the bulk merge (a large transaction): values of a
    few pages and more take ~1.1-1.2x their size in leaves. Chunks of a full entry used to
    sit one a leaf: twice the value's size."""
    store.db.create_table("t", [("id", "int"), ("b", "bytes")], "id")
    rng = random.Random(5)
    sizes = {0: 1 << 20, 1: 5 << 20}  # alone, by path copies; in bulk, by the merge
    values = {key: rng.randbytes(size) for key, size in sizes.items()}
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 0, "b": values[0]})
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "b": values[1]})
    with store.db.transaction() as txn:  # 40 values of 64 KiB at random keys, one by one
        for n in rng.sample(range(2, 10_000), 40):
            values[n] = rng.randbytes(64 << 10)
            txn.table("t").insert({"id": n, "b": values[n]})

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            assert all(t.get(key) == {"id": key, "b": value} for key, value in values.items())
            definition = t.definition
            prefix = definition.lv_id.to_bytes(4, "big")
            per_value: dict[bytes, list[int]] = {}
            for key, chunk in txn.iterate(prefix, prefix_successor(prefix)):
                per_value.setdefault(key[:-4], []).append(len(chunk))
        assert len(per_value) == len(values)
        for value_prefix, lengths in per_value.items():
            payload = CHUNK_ENTRY - LEAF_ENTRY_OVERHEAD - (len(value_prefix) + 4)
            assert max(lengths) <= payload and max(lengths) - min(lengths) <= 1
            assert len(lengths) == math.ceil(sum(lengths) / payload)
        data = sum(map(len, values.values()))
        assert lv_leaf_pages(store.db, "t") * PAGE <= 1.2 * data

    store.checked_twice(check)


def test_huge_long_values_round_trip_and_free_their_chunks(store: Store) -> None:
    """A 64 MiB bytes value and a multi-MiB text value, through a reopen, then gone."""
    store.db.create_table("t", [("id", "int"), ("b", "bytes"), ("s", "text")], "id")
    pattern = bytes(range(256)) * 4096  # 1 MiB, every byte value
    huge = b"".join(pattern[i:] + pattern[:i] for i in range(64))  # 64 MiB, not periodic
    text = "".join(f"line {i} ünïcödé 𝄞\n" for i in range(150_000))  # ~4 MiB of UTF-8
    assert len(huge) == 64 * 1024 * 1024 and len(text.encode()) > 3 * 1024 * 1024
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"id": 1, "b": huge, "s": text})
        t.insert({"id": 2, "b": b"tiny", "s": "tiny"})

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            got = t.get(1)
            assert got is not None
            assert got["b"] == huge
            assert got["s"] == text
            assert t.get(2) == {"id": 2, "b": b"tiny", "s": "tiny"}
        assert layout(store.db, "t")["lv"] > (64 * 1024 * 1024) // CHUNK_ENTRY

    store.checked_twice(check)
    with store.db.transaction() as txn:
        txn.table("t").update(1, {"s": text})  # unchanged: the chunks are kept, not rewritten
        assert len(txn.operations) == 1
        txn.table("t").update(1, {"b": b"small now"})
    with store.db.transaction() as txn:
        assert txn.table("t").get(1) == {"id": 1, "b": b"small now", "s": text}
    text_chunks = layout(store.db, "t")["lv"]
    assert 0 < text_chunks < 2 * len(text.encode()) // CHUNK_ENTRY
    with store.db.transaction() as txn:
        txn.table("t").delete(1)
    assert layout(store.db, "t") == {"records": 1, "lv": 0}
    store.reopen()
    assert layout(store.db, "t") == {"records": 1, "lv": 0}


def _watch_long_value_reads_and_record_sizes(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[int], list[int]]:
    """From now on, the columns whose long value is read (`Table._read_long_bytes`) and the
    size of every record encoded (`RecordCodec.encode` / `encode_inline`, 0 for none)."""
    reads: list[int] = []
    encoded: list[int] = []
    real_read, real_encode = Table._read_long_bytes, RecordCodec.encode
    real_encode_inline = RecordCodec.encode_inline

    def counting_read(self: Table, view: Any, pk: bytes, column: int, ref: Any) -> bytes:
        reads.append(column)
        return real_read(self, view, pk, column, ref)

    def measuring_encode(self: RecordCodec, record: Any) -> bytes:
        out = real_encode(self, record)
        encoded.append(len(out))
        return out

    def measuring_encode_inline(self: RecordCodec, record: Any) -> bytes | None:
        out = real_encode_inline(self, record)
        encoded.append(0 if out is None else len(out))
        return out

    monkeypatch.setattr(Table, "_read_long_bytes", counting_read)
    monkeypatch.setattr(RecordCodec, "encode", measuring_encode)
    monkeypatch.setattr(RecordCodec, "encode_inline", measuring_encode_inline)
    return reads, encoded


def test_an_update_of_other_columns_neither_reads_nor_encodes_a_long_value(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long value the update does not change stays as it is stored: its reference is kept,
    its chunks are not read (unless the updated record is asked for), nor encoded into the
    record, nor rewritten. An update of a 64 MiB row's counter used to read and encode it."""
    store.db.create_table(
        "t",
        [("id", "int"), ("n", "int"), ("s", "text"), ("b", "bytes")],
        "id",
        indexes=[("by_n", "n")],
    )
    text, data = "\u00e9" * 40_000, bytes(range(256)) * 2_000
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "n": 0, "s": text, "b": data})
        lv = object_prefix(txn.table("t").definition.lv_id)
        text_chunks = sum(key[-6:-4] == b"\x00\x02" for key, _ in txn.iterate(lv, None))
    reads, encoded = _watch_long_value_reads_and_record_sizes(monkeypatch)
    with store.db.transaction() as txn:
        t = txn.table("t")
        assert t.update(1, {"n": 1}, returning=False) is None
        assert reads == [] and max(encoded) < PAGE
        # The record entry and the index entry moved: no chunk deleted or written.
        assert {key[:4] for key in txn.operations} == {
            object_prefix(t.definition.table_id),
            object_prefix(t.definition.index_ids[0]),
        }
        # Asked for, the updated record is read back whole: each long value once.
        assert t.update(1, {"n": 2}) == {"id": 1, "n": 2, "s": text, "b": data}
        assert sorted(reads) == [2, 3] and max(encoded) < PAGE
        assert t.get(1) == {"id": 1, "n": 2, "s": text, "b": data}
    reads.clear()
    with store.db.transaction() as txn:
        t = txn.table("t")
        # A new primary key moves the chunks (their keys hold it): read and written again.
        t.update(1, {"id": 5}, returning=False)
        assert sorted(reads) == [2, 3]
        t.update(5, {"b": b"small"}, returning=False)

    def check() -> None:
        with store.db.transaction() as txn:
            assert list(txn.table("t").scan()) == [{"id": 5, "n": 2, "s": text, "b": b"small"}]
            assert list(txn.table("t").scan(index="by_n")) == [
                {"id": 5, "n": 2, "s": text, "b": b"small"}
            ]

    store.checked_twice(check)
    assert layout(store.db, "t") == {"records": 1, "lv": text_chunks, "by_n": 1}


def test_replacing_a_long_value_neither_reads_it_nor_encodes_the_new_one_inline(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An update giving a long-value column a value of another length does not read the old
    value (its chunks are deleted by key), and a value too large for the record is never
    encoded into it first: replacing a 64 MiB value read the old one and copied the new one
    into a record thrown away. The same length is compared chunk by chunk with the stored
    value, and unchanged chunks stay."""
    store.db.create_table(
        "t", [("id", "int"), ("n", "int"), ("b", "bytes")], "id", indexes=[("by_n", "n")]
    )
    data = bytes(range(256)) * 2_000
    with store.db.transaction() as txn:
        for key in (1, 2, 3):
            txn.table("t").insert({"id": key, "n": key, "b": data})
    reads, encoded = _watch_long_value_reads_and_record_sizes(monkeypatch)
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.update(1, {"b": data + b"!"}, returning=False)
        t.update(3, {"n": 6, "b": b"short"}, returning=False)
        assert reads == [] and max(encoded) < PAGE
    with store.db.transaction() as txn:
        t = txn.table("t")
        # The same length: compared in place (`test_a_long_value_given_again_is_compared_in_place`).
        t.update(2, {"b": data}, returning=False)  # the same value: kept
        assert object_prefix(t.definition.lv_id) not in {key[:4] for key in txn.operations}
        t.update(1, {"b": data + b"?"}, returning=False)  # another: rewritten
        assert reads == []

    def check() -> None:
        with store.db.transaction() as txn:
            assert list(txn.table("t").scan()) == [
                {"id": 1, "n": 1, "b": data + b"?"},
                {"id": 2, "n": 2, "b": data},
                {"id": 3, "n": 6, "b": b"short"},
            ]

    store.checked_twice(check)


def test_a_long_value_given_again_is_compared_in_place(store: Store) -> None:
    """A long value given again (an update or upsert that names it with the value it has) is
    compared with its chunks where they lie, not joined into a copy first: giving a 64 MiB
    value again took another 64 MiB. A stored value that turns out shorter than its record
    says is still DatabaseCorrupted."""
    store.db.create_table("t", [("id", "int"), ("b", "bytes")], "id")
    data = bytes(range(256)) * 16_384  # 4 MiB
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "b": data})
    with store.db.transaction() as txn:
        t = txn.table("t")
        assert t.get(2) is None  # the table opened, its caches built, before measuring
        other = data[:-1] + b"!"
        tracemalloc.start()
        try:
            t.update(1, {"b": data}, returning=False)  # the same: nothing rewritten
            same = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            t.update(1, {"b": other}, returning=False)  # differs at the end: rewritten
            rewritten = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert same < len(data) / 4
        assert rewritten < 1.5 * len(data)  # the new chunks, and no copy of either value
    with store.db.transaction() as txn:
        assert txn.table("t").get(1) == {"id": 1, "b": other}
        lv = object_prefix(txn.table("t").definition.lv_id)
        last = txn.items(lv, None)[-1][0]
        txn.delete(last)  # damage: the value's last chunk gone
        with pytest.raises(DatabaseCorrupted):
            txn.table("t").update(1, {"b": other})


@pytest.mark.parametrize("pending", [False, True], ids=["alone", "after-writes"])
@pytest.mark.parametrize("operation", ["delete", "update", "upsert"])
def test_a_write_over_a_damaged_long_value_refuses_and_changes_nothing(
    store: Store, operation: str, pending: bool
) -> None:
    """A delete (or an update or upsert replacing the value) of a record whose long value
    lost a chunk (a damaged file) refuses before changing anything, with DatabaseCorrupted
    naming the table, the record's key, the column and the missing chunk: a transaction
    holding pending writes read the chunks by key up to the first absent one, so it removed
    the record, its index entry and chunk 0 and left the chunks past the gap behind, and a
    write was half done whatever the transaction held. Repair drops such a record."""
    store.db.create_table("t", [("id", "int"), ("n", "int"), ("b", "bytes")], "id")
    store.db.create_index("t", "by_n", ["n"])
    value = bytes(range(256)) * 80  # 20 KiB: six chunks on 8 KiB pages
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "n": 7, "b": value})
        lv = object_prefix(txn.table("t").definition.lv_id)
        chunk_keys = [key for key, _ in txn.iterate(lv, prefix_successor(lv))]
    assert len(chunk_keys) >= 4
    with store.db.transaction() as txn:
        txn.delete(chunk_keys[1])  # the damage: chunk 1 gone
    before = layout(store.db, "t")
    with store.db.transaction() as txn:
        t = txn.table("t")
        if pending:
            t.insert({"id": 2, "n": 8, "b": b"x"})
        with pytest.raises(DatabaseCorrupted) as caught:
            if operation == "delete":
                t.delete(1)
            elif operation == "update":
                t.update(1, {"b": b"new"})
            else:
                t.upsert({"id": 1, "n": 9, "b": b"new"})
        message = str(caught.value)
        for part in ("'t'", "(1,)", "'b'", "chunk 1 is missing", "nothing", "jetstore repair"):
            assert part in message, (part, message)
        # Nothing of record 1 changed: its entry, its index entry and its chunks are there.
        assert [key for key, _ in txn.iterate(lv, prefix_successor(lv))] == [
            key for key in chunk_keys if key != chunk_keys[1]
        ]
        d = t.definition
        for object_id in (d.table_id, *d.index_ids):
            entries = txn.items(object_prefix(object_id), object_prefix(object_id + 1))
            assert len(entries) == (2 if pending else 1)
        if pending:
            t.delete(2)
    assert layout(store.db, "t") == before


def test_long_values_are_read_without_building_the_private_tree(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading, replacing or deleting a long value inside a transaction that has written
    takes its chunks by point reads (the write map, then the snapshot), as a record's own
    read does: a range read made the transaction apply its gathered writes to its private
    tree first, so a load that read such a record after every insert applied each insert by
    a path copy of its own instead of one bulk merge at commit."""

    store.db.create_table("t", [("id", "int"), ("n", "int"), ("b", "bytes")], "id")
    old = bytes(range(256)) * 40
    with store.db.transaction() as txn:
        for key in (-1, -2, -3):
            txn.table("t").insert({"id": key, "n": key, "b": old})
    applied = _count_applications(monkeypatch)
    new = b"\x07" * 20_000
    payload = CHUNK_ENTRY - LEAF_ENTRY_OVERHEAD - (len(encode_key([0])) + 10)

    def chunks(size: int) -> int:
        return math.ceil(size / payload)

    expected: dict[int, dict[str, object]] = {}
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"id": 0, "n": 0, "b": new})  # its own long value, written in this transaction
        expected[0] = {"id": 0, "n": 0, "b": new}
        assert t.update(-1, {"n": 5}) == {"id": -1, "n": 5, "b": old}
        expected[-1] = {"id": -1, "n": 5, "b": old}
        t.update(-2, {"b": old + b"!"}, returning=False)  # replaced twice: old chunks go
        t.update(-2, {"b": new}, returning=False)
        expected[-2] = {"id": -2, "n": -2, "b": new}
        t.delete(-3)
        for key in range(1, 5_001):
            t.insert({"id": key, "n": key, "b": b"x"})
            expected[key] = {"id": key, "n": key, "b": b"x"}
            assert t.get(0) == expected[0]
            assert t.get(-1) == expected[-1]
            assert t.get(-2) == expected[-2]
            assert t.get(-3) is None
        assert applied == []
    assert len(applied) == 1  # the commit: one bulk merge of every write

    def check() -> None:
        with store.db.transaction() as txn:
            assert {r["id"]: r for r in txn.table("t").scan()} == expected
        # -1's chunks, and 0's and -2's (none left of -2's former values, nor of -3's).
        assert layout(store.db, "t")["lv"] == chunks(len(old)) + 2 * chunks(len(new))

    store.checked_twice(check)


def test_an_insert_copies_no_value_too_long_for_any_entry_into_a_record(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text or bytes value longer than any page's leaf entry is not encoded into a record
    first, by the fast insert or by the general one: a 64 MiB insert copied the value into
    a record thrown away as soon as its length was seen (the fast path kept it while the
    chunks were written: twice the value in memory)."""
    produced: list[int] = []
    real_compile = records_module._compile_fast_paths
    real_encode = RecordCodec.encode

    def compile_counting(table_def: Any) -> Any:
        decode, encode, decode_many = real_compile(table_def)

        def encode_counting(record: Any) -> Any:
            out = encode(record)
            if type(out) is bytes:  # a record, not a refusal
                produced.append(len(out))
            return out

        return decode, encode_counting, decode_many

    def encode_counting(self: RecordCodec, record: Any) -> bytes:
        out = real_encode(self, record)
        produced.append(len(out))
        return out

    monkeypatch.setattr(records_module, "_compile_fast_paths", compile_counting)
    monkeypatch.setattr(RecordCodec, "encode", encode_counting)
    columns = [("id", "int"), ("n", "int"), ("b", "bytes"), ("s", "text")]
    store.db.create_table("plain", columns, "id")  # the fast insert
    store.db.create_table("indexed", columns, "id", indexes=[("by_n", "n")])  # the general one
    data, text = bytes(range(256)) * 1024, "\u00e9" * 200_000
    expected = [
        {"id": 1, "n": 1, "b": data, "s": ""},
        {"id": 2, "n": 2, "b": b"", "s": text},
        {"id": 3, "n": None, "b": data, "s": "x"},  # a NULL: the general path in both
        {"id": 4, "n": 4, "b": data, "s": text},
    ]
    with store.db.transaction() as txn:
        for name in ("plain", "indexed"):
            for record in expected:
                txn.table(name).insert(record)
    assert produced and max(produced) < PAGE

    def check() -> None:
        with store.db.transaction() as txn:
            for name in ("plain", "indexed"):
                assert list(txn.table(name).scan()) == expected
                assert [txn.table(name).get(r["id"]) for r in expected] == expected

    store.checked_twice(check)


def test_the_largest_value_in_bytes_is_moved_out_first(store: Store) -> None:
    """Values are moved out of a record too large for its entry largest first, measured in
    the bytes they take (UTF-8 for text): a text was measured in characters, so 1,900 "é"
    (3,800 bytes) stayed inline while a 2,000-byte value beside it was moved out."""
    store.db.create_table("t", [("id", "int"), ("s", "text"), ("b", "bytes")], "id")
    record = {"id": 1, "s": "\u00e9" * 1900, "b": b"x" * 2000}
    with store.db.transaction() as txn:
        txn.table("t").insert(record)
        txn.table("t").insert({**record, "id": 2, "s": None})  # the general path
        txn.table("t").upsert({**record, "id": 3})

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            assert t.get(1) == record
            prefix = object_prefix(t.definition.lv_id)
            moved = {(key[4:13], key[-6:-4]) for key, _ in txn.iterate(prefix, None)}
        assert moved == {(encode_key([1]), b"\x00\x01"), (encode_key([3]), b"\x00\x01")}

    store.checked_twice(check)


@pytest.mark.parametrize(
    "operation", ["get", "scan", "scan_index", "update", "delete", "upsert", "create_index"]
)
def test_a_damaged_record_is_named_by_its_primary_key(store: Store, operation: str) -> None:
    """A record that does not decode (a damaged file) raises DatabaseCorrupted naming the
    table, the record's primary key and what is wrong, and saying how to find and drop such
    records: it named only the table and a byte offset, and its way out was the generic one
    for damaged log files (`jetstore logs verify`), which finds nothing."""
    store.db.create_table(
        "t", [("id", "int"), ("k", "text"), ("x", "int"), ("s", "text")], ["id", "k"]
    )
    store.db.create_index("t", "by_x", ["x"])
    with store.db.transaction() as txn:
        for i in range(3):
            txn.table("t").insert({"id": i, "k": "key", "x": i, "s": "abc"})
        key = object_prefix(txn.table("t").definition.table_id) + encode_key([1, "key"])
        raw = txn.get(key)
        assert raw is not None
        txn.put(key, raw[:-2])  # the damage: the record's last bytes gone
    with store.db.transaction() as txn:
        t = txn.table("t")
        with pytest.raises(DatabaseCorrupted) as caught:
            if operation == "get":
                t.get((1, "key"))
            elif operation == "scan":
                list(t.scan(reverse=True))
            elif operation == "scan_index":
                list(t.scan(index="by_x"))
            elif operation == "update":
                t.update((1, "key"), {"x": 5})
            elif operation == "delete":
                t.delete((1, "key"))
            elif operation == "upsert":
                t.upsert({"id": 1, "k": "key", "x": 5, "s": "new"})
            else:
                txn.create_index("t", "by_s", ["s"])
    message = str(caught.value)
    for part in ("'t'", "primary key (1, 'key')", "at byte", "jetstore integrity", "repair"):
        assert part in message, (part, message)
    assert "logs verify" not in message


def test_an_index_entry_without_its_record_is_named(store: Store) -> None:
    """An index scan that meets an entry whose record is gone (a damaged file) raises
    DatabaseCorrupted naming the index, the entry's index key and the primary key: it said
    only "an index of table 't' points to a missing record"."""
    store.db.create_table("t", [("id", "int"), ("x", "text")], "id")
    store.db.create_index("t", "by_x", ["x"])
    with store.db.transaction() as txn:
        for i in range(3):
            txn.table("t").insert({"id": i, "x": f"v{i}"})
        txn.delete(object_prefix(txn.table("t").definition.table_id) + encode_key([1]))
    with store.db.transaction() as txn, pytest.raises(DatabaseCorrupted) as caught:
        list(txn.table("t").scan(index="by_x", reverse=True))
    message = str(caught.value)
    for part in ("'by_x'", "'t'", "('v1',)", "primary key (1,)", "missing", "jetstore integrity"):
        assert part in message, (part, message)


def test_a_damaged_long_value_under_a_key_that_does_not_decode_is_still_named(
    store: Store,
) -> None:
    """The error for a long value missing chunks names the record's key by its bytes when the
    key does not decode (a damaged tree): composing the message raised the key's own
    "malformed key" error instead, which named neither the long value nor the way out."""
    store.db.create_table("t", [("id", "int"), ("b", "bytes")], "id")
    with store.db.transaction() as txn:
        t = txn.table("t")
        bad_pk = b"\x99\x01"  # no key tag is 0x99
        record = RecordCodec(t.definition).encode({"id": 1, "b": LongValueRef(1, 10_000, False)})
        txn.put(object_prefix(t.definition.table_id) + bad_pk, record)
        with pytest.raises(DatabaseCorrupted) as caught:
            list(t.scan())
    message = str(caught.value)
    for part in ("long value of column 'b'", "9901", "chunk 0 is missing", "jetstore repair"):
        assert part in message, (part, message)


def test_text_moved_to_long_value_chunks_is_encoded_once(store: Store) -> None:
    """A text value stored apart is encoded to UTF-8 once: it was encoded to measure the
    record (by the generated encoder or the general one) and again for its chunks. Counted
    by profiling the calls of `str.encode` on the value itself, for the fast insert, the
    general one (a table with an index), an update and an upsert, for a text longer than an
    entry in characters and for one only its UTF-8 form makes too long."""
    import sys

    store.db.create_table("plain", [("id", "int"), ("s", "text")], "id")
    store.db.create_table("indexed", [("id", "int"), ("n", "int"), ("s", "text")], "id")
    store.db.create_index("indexed", "by_n", ["n"])
    texts = [
        "\u00e9\u20ac\U0001d11e" * 40_000,  # 280,000 bytes: beyond INLINE_VALUE_MAX
        "x" * 10_000,  # longer than an entry, shorter than INLINE_VALUE_MAX
        "\u20ac" * 1_500,  # 1,500 characters but 4,500 bytes
    ]
    calls: list[str] = []
    watched: list[str] = []

    def profile(frame: object, event: str, arg: object) -> None:
        if event == "c_call" and getattr(arg, "__self__", None) is watched[0]:
            calls.append(getattr(arg, "__name__", "?"))

    for number, text in enumerate(texts):
        watched[:] = [text]

        with store.db.transaction() as txn:
            plain, indexed = txn.table("plain"), txn.table("indexed")
            plain.insert({"id": number + 100, "s": "short"})
            writes: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
                (plain.insert, ({"id": number, "s": text},), {}),
                (indexed.insert, ({"id": number, "n": 1, "s": text},), {}),
                (plain.update, (number + 100, {"s": text}), {"returning": False}),
                (indexed.upsert, ({"id": number + 100, "n": 2, "s": text},), {}),
            ]
            for write, args, kwargs in writes:
                calls.clear()
                sys.setprofile(profile)
                try:
                    write(*args, **kwargs)
                finally:
                    sys.setprofile(None)
                assert calls.count("encode") == 1, (number, write, calls)
        with store.db.transaction() as txn:
            for name in ("plain", "indexed"):
                t = txn.table(name)
                assert t.get(number)["s"] == text  # type: ignore[index]
                assert t.get(number + 100)["s"] == text  # type: ignore[index]
                lv = object_prefix(t.definition.lv_id)
                assert txn.items(lv, prefix_successor(lv))  # stored apart


def test_an_update_keeps_a_primary_key_stored_as_a_long_value_where_it_is(
    tmp_path: Path,
) -> None:
    """On 4 KiB pages a primary key of ~1,000 bytes can be stored apart like any long
    value, and be longer than a record under its key can hold inline. An update of another
    column read it back as the empty value it stood for, and moved the record under the
    empty key."""
    s = Store(tmp_path, page_size=4096)
    try:
        s.db.create_table("t", [("k", "text"), ("n", "int"), ("a", "text")], "k")
        k = "z" * 1012
        with s.db.transaction() as txn:
            t = txn.table("t")
            t.insert({"k": k, "n": 1, "a": "q" * 900})
            assert t.update(k, {"n": 2}) == {"k": k, "n": 2, "a": "q" * 900}
            t.update(k, {"n": 3, "a": "r" * 900}, returning=False)

        def check() -> None:
            with s.db.transaction() as txn:
                assert txn.table("t").get(k) == {"k": k, "n": 3, "a": "r" * 900}
                assert [r["k"] for r in txn.table("t").scan()] == [k]

        check()
        s.reopen()
        check()
    finally:
        s.close()


# --------------------------------------------------------------------------- size limits


def test_record_too_big_with_many_non_text_columns(store: Store) -> None:
    # 600 int columns need 3 + 600 * 9 bytes: more than a leaf entry of an 8 KiB page holds,
    # and no text or bytes value can be moved out. (The definition itself is large too: the
    # catalog stores it in chunks.)
    columns = [("id", "int"), ("name", "text")] + [(f"c{i}", "int") for i in range(600)]
    store.db.create_table("wide", columns, "id", indexes=[("by_name", "name", True)])
    full = {"id": 1, "name": "w"} | {f"c{i}": i for i in range(600)}
    half = {"id": 2, "name": "h"} | {f"c{i}": i for i in range(300)}  # 3 + 300 * 9 + 300: fits
    with store.db.transaction() as txn:
        t = txn.table("wide")
        with pytest.raises(RecordTooBig):
            t.insert(full)
        t.insert(half)
        with pytest.raises(RecordTooBig):
            t.update(2, {f"c{i}": -i for i in range(300, 600)})
        with pytest.raises(RecordTooBig):
            t.upsert(full | {"id": 2})
        with pytest.raises(RecordTooBig):
            t.update(2, {f"c{i}": -i for i in range(300, 600)} | {"name": "moved", "id": 9})
        # Nothing of the failed writes is left, not even an index entry.
        assert t.get(1) is None and t.get(9) is None
        assert ids(t.scan(index="by_name")) == [2]

    expected = {c: None for c, _ in columns} | half

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("wide")
            assert t.definition.column_names == tuple(c for c, _ in columns)
            assert list(t.scan()) == [expected]
            assert ids(t.scan(index="by_name")) == [2]
        assert layout(store.db, "wide") == {"records": 1, "lv": 0, "by_name": 1}
        assert store.db.table_names() == ["wide"]

    store.checked_twice(check)


def test_key_too_big(store: Store) -> None:
    store.db.create_table(
        "t",
        [("k", "bytes"), ("label", "text"), ("v", "bytes")],
        "k",
        indexes=[("by_label", "label")],
    )
    longest = b"k" * (MAX_PRIMARY_KEY_SIZE - 2)  # tag + bytes + terminator
    assert len(encode_key([longest])) == MAX_PRIMARY_KEY_SIZE
    value = bytes(range(256)) * 40  # a long value: its chunk keys carry the primary key
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"k": longest, "label": "x", "v": value})
        with pytest.raises(KeyTooBig):
            t.insert({"k": longest + b"k", "label": "y", "v": value})
        with pytest.raises(KeyTooBig):
            t.get(b"k" * 5000)
        # An index entry holds the index key and the primary key.
        with pytest.raises(KeyTooBig):
            t.insert({"k": b"short", "label": "l" * 1100, "v": b""})
        with pytest.raises(KeyTooBig):
            t.insert({"k": b"k" * 600, "label": "l" * 500, "v": b""})
        t.insert({"k": b"short", "label": "ok", "v": b""})
        with pytest.raises(KeyTooBig):
            t.update(b"short", {"label": "l" * 1100})
        with pytest.raises(KeyTooBig):
            t.update(b"short", {"k": b"k" * 2000})
        assert ids_k(t.scan(index="by_label")) == [b"short", longest]

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            assert t.get(longest) == {"k": longest, "label": "x", "v": value}
            assert t.get(b"short") == {"k": b"short", "label": "ok", "v": b""}
        chunk_payload = CHUNK_ENTRY - LEAF_ENTRY_OVERHEAD - (MAX_PRIMARY_KEY_SIZE + 10)
        chunks = math.ceil(len(value) / chunk_payload)
        assert layout(store.db, "t") == {"records": 2, "lv": chunks, "by_label": 2}

    store.checked_twice(check)


def test_key_too_big_for_an_index_entry_says_the_primary_key_counts(store: Store) -> None:
    """With 8 KiB pages the index key and the primary key of an index entry together may
    take 1020 bytes (its key also holds the 4-byte index id, within MAX_KEY_SIZE, 1024): a
    primary key of 1012 encoded bytes leaves 8, too few for an int (9). The KeyTooBig says
    so, with the sizes, and that a shorter primary key is the way out, where it used to
    name only the index and the limit."""
    assert MAX_PRIMARY_KEY_SIZE == 1014
    store.db.create_table("t", [("k", "bytes"), ("n", "int")], "k", indexes=[("by_n", "n")])
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"k": b"k" * 1009, "n": 1})  # 1011 + 9 = 1020: fits exactly
        t.insert({"k": b"k" * 1012, "n": None})  # the longest primary key: a NULL fits
        with pytest.raises(KeyTooBig) as caught:
            t.insert({"k": b"k" * 1010, "n": 2})
        error = caught.value
        assert error.detail == (
            "index 'by_n' of table 't': the entry's key would be 1025 bytes, the limit is "
            "1024. An index entry's key holds the index id (4 bytes), the encoded index key "
            "(9 bytes) and the record's encoded primary key (1012 bytes), so the primary "
            "key's length counts: with this primary key the index key may be at most 8 bytes"
        )
        assert "give the table a shorter primary key" in error.hint
        assert "(1014 bytes encoded) leaves no room for index entries" in error.hint
        assert "the index key and the primary key together may take 1020 bytes" in error.hint
        # The record was not written: a failed write leaves the transaction as it was.
        assert [r["n"] for r in t.scan()] == [1, None]


def test_key_too_big_for_an_index_entry_on_small_pages_names_the_entry_limit(
    tmp_path: Path,
) -> None:
    """On 4 KiB pages the entry, which holds the primary key again as its value, is the
    tighter bound: a primary key of 1014 bytes leaves no room for any index key."""
    s = Store(tmp_path, page_size=4096)
    try:
        s.db.create_table("t", [("k", "bytes"), ("n", "int")], "k", indexes=[("by_n", "n")])
        with s.db.transaction() as txn, pytest.raises(KeyTooBig) as caught:
            txn.table("t").insert({"k": b"k" * 1012, "n": None})
        detail = caught.value.detail
        assert "the limit is 1012" in detail
        assert "with this primary key no index key fits (a NULL takes 1 byte)" in detail
        assert "must fit 2032 bytes on this page size" in detail
    finally:
        s.close()


def ids_k(rows: Iterator[dict[str, object]]) -> list[object]:
    return [r["k"] for r in rows]


def test_key_too_big_on_small_pages(tmp_path: Path) -> None:
    """On 4 KiB pages an index entry (key + primary key as value) has a tighter limit."""
    s = Store(tmp_path, page_size=4096)
    try:
        s.db.create_table(
            "t", [("k", "text"), ("label", "text")], "k", indexes=[("by_label", "label")]
        )
        with s.db.transaction() as txn:
            t = txn.table("t")
            # Index key 4 + 7 + 1012 = 1023 bytes (within MAX_KEY_SIZE), but with the 1012-byte
            # primary key as its value the entry needs 2041 bytes; a 4 KiB page allows 2032.
            with pytest.raises(KeyTooBig):
                t.insert({"k": "k" * 1010, "label": "l" * 5})
            with pytest.raises(KeyTooBig):
                t.insert({"k": "k" * 1000, "label": "l" * 1000})
            t.insert({"k": "k" * 1000, "label": "l" * 10})
            t.insert({"k": "k", "label": "l" * 1000})
            with pytest.raises(KeyTooBig):
                t.update("k" * 1000, {"k": "k" * 1010, "label": "l"})
        for _ in range(2):
            assert s.read("t") == [
                {"k": "k", "label": "l" * 1000},
                {"k": "k" * 1000, "label": "l" * 10},
            ]
            # The 1002-byte primary key column of the "k" * 1000 record does not fit inline
            # next to its 1006-byte key (the record entry may hold 1010 bytes): it is the
            # long value, two chunks (a chunk entry, ~1,828 bytes on 4 KiB pages, holds
            # 806 bytes next to its 1,016-byte key).
            assert layout(s.db, "t") == {"records": 2, "lv": 2, "by_label": 2}
            s.reopen()
    finally:
        s.close()


# --------------------------------------------------------------------------- errors


def test_errors_for_bad_columns_types_nulls_and_names(store: Store) -> None:
    store.db.create_table(
        "t", [("id", "int"), ("name", "text", False), ("n", "float"), ("at", "datetime")], "id"
    )
    with pytest.raises(InvalidParameter):
        store.db.create_table("u", [("id", "decimal")], "id")
    with pytest.raises(ColumnNotFound):
        store.db.create_table("u", [("id", "int")], "nope")
    with pytest.raises(ColumnNotFound):
        store.db.create_table("u", [("id", "int")], "id", indexes=[("i", "nope")])
    with pytest.raises(InvalidParameter):
        store.db.create_table(123, [("id", "int")], "id")  # type: ignore[arg-type]
    # Definitions of the wrong shape: clear errors, never a bare TypeError.
    for columns, key, indexes in (
        (None, "id", ()),
        (5, "id", ()),
        ([("id", "int")], None, ()),
        ([("id", "int")], 5, ()),
        ([("id", "int"), ("x", "int")], {"id", "x"}, ()),
        ([("id", "int")], "id", [("i", None)]),
        ([("id", "int")], "id", [("i", 5)]),
    ):
        with pytest.raises(InvalidParameter):
            store.db.create_table("u", columns, key, indexes)
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"id": 1, "name": "a"})
        with pytest.raises(ColumnNotFound):
            t.insert({"id": 2, "name": "b", "color": "red"})
        with pytest.raises(ColumnNotFound):
            t.update(1, {"color": "red"})
        with pytest.raises(ColumnNotFound):
            t.upsert({"id": 1, "name": "a", "color": "red"})
        with pytest.raises(InvalidColumnType):
            t.insert({"id": "two", "name": "b"})
        with pytest.raises(InvalidColumnType):
            t.insert({"id": 2, "name": b"bytes"})
        with pytest.raises(InvalidColumnType):
            t.insert({"id": 2, "name": "b", "n": "1.5"})
        with pytest.raises(InvalidColumnType):
            t.insert({"id": True, "name": "b"})  # bool is not an int here
        with pytest.raises(InvalidColumnType):
            t.update(1, {"at": "2020-01-01"})
        with pytest.raises(InvalidColumnType):
            t.get("1")
        with pytest.raises(InvalidParameter):
            t.insert({"id": 2**63, "name": "b"})  # outside the signed 64-bit range
        with pytest.raises(NullInvalid):
            t.insert({"id": None, "name": "b"})
        with pytest.raises(NullInvalid):
            t.get(None)
        with pytest.raises(NullInvalid):
            t.update(1, {"name": None})
        with pytest.raises(ObjectNotFound):
            txn.table("nope")
        with pytest.raises(ObjectNotFound):
            txn.table(5)  # type: ignore[arg-type]
        # Not a mapping of column names to values: a clear error, never a bare TypeError
        # (nor a misleading NullInvalid for a list of pairs).
        for not_a_record in (None, [("id", 2), ("name", "b")], "id", 2):
            with pytest.raises(InvalidParameter, match="must be a mapping"):
                t.insert(not_a_record)  # type: ignore[arg-type]
            with pytest.raises(InvalidParameter, match="must be a mapping"):
                t.upsert(not_a_record)  # type: ignore[arg-type]
            with pytest.raises(InvalidParameter, match="must be a mapping"):
                t.update(1, not_a_record)  # type: ignore[arg-type]
        assert t.get(1) == {"id": 1, "name": "a", "n": None, "at": None}
        t.insert({"id": 2, "name": "b"})
    store.reopen()
    assert store.read("t") == [
        {"id": 1, "name": "a", "n": None, "at": None},
        {"id": 2, "name": "b", "n": None, "at": None},
    ]
    assert layout(store.db, "t") == {"records": 2, "lv": 0}


def test_a_table_object_dies_with_its_transaction(store: Store) -> None:
    store.db.create_table("t", [("id", "int")], "id")
    txn = store.db.transaction()
    t = txn.table("t")
    t.insert({"id": 1})
    txn.commit()
    for use in (
        lambda: t.get(1),
        lambda: t.insert({"id": 2}),
        lambda: t.delete(1),
        lambda: list(t.scan()),
        lambda: 1 in t,
    ):
        with pytest.raises(NotInTransaction):
            use()
    assert store.read("t") == [{"id": 1}]


@pytest.mark.parametrize("index", [None, "by_v"])
@pytest.mark.parametrize("change", ["drop_column", "add_column"])
def test_a_scan_open_across_a_schema_change_reads_its_view_as_it_was(
    store: Store, index: str | None, change: str
) -> None:
    # A scan reads the transaction's view as of `scan()`: the records in the layout of the
    # definition they were written under. A schema change of the table later in the same
    # transaction re-initialises the `Table` for the new definition, and the scan used to
    # decode the rest with the new codec: after drop_column each record that is not the
    # common one (a NULL, a long value) was DatabaseCorrupted ("3 columns but the table has
    # only 2"), after add_column some records of one scan had the new column and some not.
    store.db.create_table(
        "t",
        [("id", "int"), ("x", "text"), ("v", "text"), ("w", "bytes")],
        "id",
        indexes=[("by_v", "v")],
    )
    records = [
        {"id": i, "x": f"x{i}", "v": None if i % 2 else f"v{i}", "w": b"w" * (9000 if i else 1)}
        for i in range(6)
    ]
    with store.db.transaction() as txn:
        for record in records:
            txn.table("t").insert(record)
    expected = list(records) if index is None else [records[i] for i in (1, 3, 5, 0, 2, 4)]
    for started in (False, True):  # the change before the scan's first step, or after it
        with store.db.transaction() as txn:
            t = txn.table("t")
            scan = t.scan(index)
            seen = [next(scan)] if started else []
            if change == "drop_column":
                txn.drop_column("t", "x")
            else:
                txn.add_column("t", "n", "int", True, 7)
            assert seen + list(scan) == expected
            # A scan begun after the change reads the new layout.
            changed = [
                {k: v for k, v in r.items() if k != "x"}
                if change == "drop_column"
                else {**r, "n": 7}
                for r in expected
            ]
            assert list(t.scan(index)) == changed
            txn.rollback()


# --------------------------------------------------------------------------- model-based


NAMES = ["ann", "bo", "cy", None]
EMAILS = ["a@x", "b@x", "c@x", None]
BLOB_SIZES = [0, 10, 4000, 4100, 20_000]  # around the inline limit, and chunked


def blob_of(size: int | None, salt: int) -> bytes | None:
    return None if size is None else bytes((salt + i) % 251 for i in range(size))


class TableMachine(RuleBasedStateMachine):
    """Random inserts, updates (including key changes), upserts and deletes on a table with a
    non-unique index, a unique index and a long-value column, against a dict model; with
    commits, rollbacks, checkpoints and reopens. After every step every index scans in the
    model's order, and the raw tree holds exactly one entry per record and index."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="jetstore-table-machine-"))
        self.store = Store(self.dir, cache_size=16 * PAGE)
        self.store.db.create_table(
            "t",
            [("id", "int"), ("name", "text"), ("email", "text"), ("blob", "bytes")],
            "id",
            indexes=[("by_name", "name"), ("by_email", "email", True)],
        )
        self.committed: dict[int, dict[str, object]] = {}
        self.view: dict[int, dict[str, object]] = {}
        self.txn: jetstore.Transaction | None = None

    def table(self) -> jetstore.Table:
        if self.txn is None:
            self.txn = self.store.db.transaction()
            self.view = {k: dict(v) for k, v in self.committed.items()}
        return self.txn.table("t")

    def email_taken(self, email: object, by_other_than: int | None) -> bool:
        return email is not None and any(
            r["email"] == email and k != by_other_than for k, r in self.view.items()
        )

    @rule(
        k=st.integers(0, 5),
        name=st.sampled_from(NAMES),
        email=st.sampled_from(EMAILS),
        size=st.sampled_from([None, *BLOB_SIZES]),
        salt=st.integers(0, 250),
        upsert=st.booleans(),
    )
    def write(
        self, k: int, name: str | None, email: str | None, size: int | None, salt: int, upsert: bool
    ) -> None:
        t = self.table()
        record = {"id": k, "name": name, "email": email, "blob": blob_of(size, salt)}
        duplicate = (k in self.view and not upsert) or self.email_taken(
            email, k if upsert else None
        )
        if duplicate:
            with pytest.raises(KeyDuplicate):
                t.upsert(record) if upsert else t.insert(record)
        else:
            t.upsert(record) if upsert else t.insert(record)
            self.view[k] = record

    @rule(
        k=st.integers(0, 5),
        new_k=st.none() | st.integers(0, 5),
        name=st.none() | st.sampled_from(NAMES),
        email=st.none() | st.sampled_from(EMAILS),
        size=st.none() | st.sampled_from(BLOB_SIZES),
        salt=st.integers(0, 250),
    )
    def update(
        self,
        k: int,
        new_k: int | None,
        name: str | None,
        email: str | None,
        size: int | None,
        salt: int,
    ) -> None:
        t = self.table()
        changes: dict[str, object] = {}
        if new_k is not None:
            changes["id"] = new_k
        if name is not None:
            changes["name"] = name
        if email is not None:
            changes["email"] = email
        if size is not None:
            changes["blob"] = blob_of(size, salt)
        if k not in self.view:
            with pytest.raises(RecordNotFound):
                t.update(k, changes)
            return
        merged = {**self.view[k], **changes}
        target = merged["id"]
        assert isinstance(target, int)
        if (target != k and target in self.view) or self.email_taken(merged["email"], k):
            with pytest.raises(KeyDuplicate):
                t.update(k, changes)
            return
        assert t.update(k, changes) == merged
        del self.view[k]
        self.view[target] = merged

    @rule(k=st.integers(0, 5))
    def delete(self, k: int) -> None:
        t = self.table()
        if k in self.view:
            t.delete(k)
            del self.view[k]
        else:
            with pytest.raises(RecordNotFound):
                t.delete(k)

    @rule()
    def commit(self) -> None:
        if self.txn is not None:
            self.txn.commit()
            self.txn = None
            self.committed = self.view

    @rule()
    def rollback(self) -> None:
        if self.txn is not None:
            self.txn.rollback()
            self.txn = None
            self.view = {k: dict(v) for k, v in self.committed.items()}

    @rule()
    def checkpoint(self) -> None:
        self.store.inst.checkpoint()

    @rule()
    def reopen(self) -> None:
        self.commit()
        self.store.reopen()

    @invariant()
    def matches_the_model(self) -> None:
        records = self.view if self.txn is not None else self.committed
        t = self.table() if self.txn is not None else None
        if t is None:
            txn = self.store.db.transaction()
            t = txn.table("t")
        expected = [records[k] for k in sorted(records)]
        assert list(t.scan()) == expected
        assert list(t.scan(reverse=True)) == expected[::-1]
        for index, column in (("by_name", "name"), ("by_email", "email")):
            order = index_order(list(records.values()), [column])
            assert [r["id"] for r in t.scan(index=index)] == order
        for k in range(6):
            assert t.get(k) == records.get(k)
        if self.txn is None:
            txn.rollback()
            counts = layout(self.store.db, "t")
            n = len(records)
            assert counts["records"] == counts["by_name"] == counts["by_email"] == n
            long_blobs = sum(
                1
                for r in records.values()
                if isinstance(r["blob"], bytes) and len(r["blob"]) > 4050
            )
            assert (counts["lv"] == 0) == (long_blobs == 0)

    def teardown(self) -> None:
        try:
            if self.txn is not None:
                self.txn.rollback()
            self.store.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


TableMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)
test_table_against_a_model = TableMachine.TestCase


# --------------------------------------------------------------------------- fast paths


def raw_entries(db: jetstore.Database) -> list[tuple[bytes, bytes]]:
    with db.transaction() as txn:
        return list(txn.iterate(None, None))


@pytest.mark.parametrize("key_type", ["int", "text", "bytes"])
def test_fast_insert_writes_what_the_general_path_writes(tmp_path: Path, key_type: str) -> None:
    """Exactly-typed dict records take the fast insert path; any other mapping the general
    one. Both leave the same entries, and the same errors, in two identical databases."""
    keys: dict[str, list[object]] = {
        "int": [0, -(2**63), 2**63 - 1, 5],
        "text": ["", "a\x00b", "é" * 300, "\ud800"],
        "bytes": [b"", b"\x00", b"\x00\xff" * 100, b"k"],
    }
    stores = [Store(tmp_path / "fast"), Store(tmp_path / "general")]
    try:
        for store in stores:
            store.db.create_table("t", [("id", key_type), *ALL_TYPES[1:]], "id")
        for i, key in enumerate(keys[key_type]):
            record = dict(TYPED_RECORDS[i % len(TYPED_RECORDS)], id=key)
            if i == 2:
                record["b"] = b"x" * (MAX_ENTRY + 10)  # a long value: not inline
            for store, as_given in zip(stores, (dict, MappingProxy), strict=True):
                with store.db.transaction() as txn:
                    txn.table("t").insert(as_given(record))
                    with pytest.raises(KeyDuplicate):  # in the same transaction
                        txn.table("t").insert(as_given(record))
                with pytest.raises(KeyDuplicate), store.db.transaction() as txn:
                    txn.table("t").insert(as_given(record))  # committed before
        assert raw_entries(stores[0].db) == raw_entries(stores[1].db)
        for i, key in enumerate(keys[key_type]):
            expected = dict(TYPED_RECORDS[i % len(TYPED_RECORDS)], id=key)
            if i == 2:
                expected["b"] = b"x" * (MAX_ENTRY + 10)
            with stores[0].db.transaction() as txn:
                assert same_record(expected, txn.table("t").get(key))
    finally:
        for store in stores:
            store.close()


class MappingProxy(dict[str, object]):
    """A dict subclass: `Table.insert` sends it down the general path."""


def test_fast_insert_of_long_values_writes_what_the_general_path_writes(tmp_path: Path) -> None:
    """Records too large to keep inline take the fast path too (no validation, entry and
    long-value chunks written directly): the same entries, duplicates and RecordTooBig as
    the general path, in two identical databases."""
    columns = [("id", "bytes"), ("n", "int"), ("t", "text"), ("b", "bytes"), ("c", "bytes")]
    sizes = [0, 10, MAX_ENTRY // 3, MAX_ENTRY // 2, MAX_ENTRY, 3 * MAX_ENTRY + 7, 70_000]
    stores = [Store(tmp_path / "fast"), Store(tmp_path / "general")]
    try:
        for store in stores:
            store.db.create_table("t", columns, "id")
        records = []
        for i, (t_size, b_size) in enumerate(zip(sizes, reversed(sizes), strict=True)):
            record = {
                "id": i.to_bytes(4, "big"),
                "n": i,
                "t": "é" * (t_size // 2),
                "b": bytes([i]) * b_size,
                "c": b"\x00" * (i * 97),
            }
            records.append(record)
            for store, as_given in zip(stores, (dict, MappingProxy), strict=True):
                with store.db.transaction() as txn:
                    txn.table("t").insert(as_given(record))
                    with pytest.raises(KeyDuplicate):  # in the same transaction
                        txn.table("t").insert(as_given(record))
                with pytest.raises(KeyDuplicate), store.db.transaction() as txn:
                    txn.table("t").insert(as_given(record))  # committed before
        # A long key leaves less room for the record entry.
        long_key = {
            "id": b"k" * (MAX_PRIMARY_KEY_SIZE - 3),
            "n": 1,
            "t": "x" * 5000,
            "b": b"",
            "c": b"",
        }
        columns_too_big = [("id", "bytes"), *[(f"n{i}", "int") for i in range(900)], ("t", "text")]
        for store, as_given in zip(stores, (dict, MappingProxy), strict=True):
            store.db.create_table("wide", columns_too_big, "id")
            wide = {"id": b"w", **{f"n{i}": i for i in range(900)}, "t": "x" * 9000}
            with store.db.transaction() as txn:
                with pytest.raises(RecordTooBig):
                    txn.table("wide").insert(as_given(wide))
                txn.table("t").insert(as_given(long_key))
        assert raw_entries(stores[0].db) == raw_entries(stores[1].db)
        with stores[0].db.transaction() as txn:
            for record in [*records, long_key]:
                assert txn.table("t").get(record["id"]) == record
    finally:
        for store in stores:
            store.close()


def test_fast_insert_falls_back_for_anything_unusual(store: Store) -> None:
    store.db.create_table("t", [("id", "int"), ("n", "int"), ("s", "text")], "id")
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"id": 1, "n": 1, "s": "a"})
        with pytest.raises(ColumnNotFound):
            t.insert({"id": 2, "n": 1, "s": "a", "extra": 1})
        with pytest.raises(InvalidColumnType):
            t.insert({"id": 2, "n": True, "s": "a"})
        with pytest.raises(InvalidParameter):
            t.insert({"id": 2, "n": 2**63, "s": "a"})
        with pytest.raises(InvalidParameter):
            t.insert({"id": 2**63, "n": 1, "s": "a"})
        t.insert({"id": 2, "n": 1})  # a nullable column left out: NULL
        t.insert({"id": 3, "n": 1, "s": None})
        assert t.get(2) == {"id": 2, "n": 1, "s": None} == dict(t.get(3) or {}, id=2)
        assert 2 in t and 4 not in t
    txn = store.db.transaction()
    t = txn.table("t")
    txn.drop_table("t")
    with pytest.raises(ObjectNotFound):
        t.insert({"id": 9, "n": 1, "s": "a"})
    with pytest.raises(ObjectNotFound):
        t.get(1)
    txn.rollback()
    assert [r["id"] for r in store.read("t")] == [1, 2, 3]


# --------------------------------------------------------------------------- fast point reads

_FAST_KEYS = (
    st.binary(max_size=12)
    | st.lists(st.sampled_from([b"\x00", b"\xff", b"\x00\xff", b"k"]), max_size=6).map(b"".join)
    | st.integers(MAX_PRIMARY_KEY_SIZE - 4, MAX_PRIMARY_KEY_SIZE + 2).map(lambda n: b"\x00" * n)
    | st.integers(MAX_PRIMARY_KEY_SIZE - 4, MAX_PRIMARY_KEY_SIZE + 2).map(lambda n: b"q" * n)
)
_FAST_RECORDS = st.dictionaries(
    _FAST_KEYS,
    st.tuples(
        st.none() | st.binary(max_size=40) | st.sampled_from([b"L" * (MAX_ENTRY + 5)]),
        st.none() | st.integers(-(2**63), 2**63 - 1),
    ),
    max_size=12,
)


def _read_all(
    txn: jetstore.Transaction, probes: list[bytes]
) -> list[dict[str, object] | type[BaseException] | None]:
    """`get` of each probe (or the error class it raised), then `in` agreeing with it."""
    t = txn.table("t")
    out: list[dict[str, object] | type[BaseException] | None] = []
    for key in probes:
        try:
            got = t.get(key)
        except KeyTooBig:
            out.append(KeyTooBig)
            continue
        assert (key in t) == (got is not None)
        out.append(got)
    return out


@settings(max_examples=40, deadline=None)
@given(records=_FAST_RECORDS, absent=st.lists(_FAST_KEYS, max_size=4))
def test_fast_point_reads_agree_with_the_general_path(
    records: dict[bytes, tuple[bytes | None, int | None]], absent: list[bytes]
) -> None:
    """`Table.get` of a lone bytes key in a transaction without writes (key encoded inline,
    the snapshot read directly) returns what the general path returns (a transaction with
    a write of its own reads through `Transaction.get`), and what was stored: NUL bytes in
    keys, keys at and over the size limit (KeyTooBig), NULLs, long values, absent keys."""
    directory = Path(tempfile.mkdtemp())
    store = Store(directory)
    try:
        store.db.create_table("t", [("k", "bytes"), ("v", "bytes"), ("n", "int")], "k")
        store.db.create_table("other", [("id", "int")], "id")
        expected: list[dict[str, object] | type[BaseException] | None] = []
        with store.db.transaction() as txn:
            for key, (v, n) in records.items():
                try:
                    txn.table("t").insert({"k": key, "v": v, "n": n})
                except KeyTooBig:
                    assert len(encode_key((key,))) > MAX_PRIMARY_KEY_SIZE
                    expected.append(KeyTooBig)
                else:
                    expected.append({"k": key, "v": v, "n": n})
        probes = [*records, *(key for key in absent if key not in records)]
        for key in probes[len(records) :]:
            too_big = len(encode_key((key,))) > MAX_PRIMARY_KEY_SIZE
            expected.append(KeyTooBig if too_big else None)
        for _ in range(2):  # the committed tree in memory, then as read back from its pages
            with store.db.transaction() as txn:
                assert _read_all(txn, probes) == expected
            with store.db.transaction() as txn:
                txn.table("other").insert({"id": 1})  # a write: the general path
                assert _read_all(txn, probes) == expected
                txn.rollback()
            store.reopen()
    finally:
        store.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_fast_point_reads_keep_snapshot_isolation_and_own_writes(store: Store) -> None:
    """A reading transaction sees its snapshot, not later commits; once it writes, its own
    writes (puts and deletes) too; a finished transaction and a dropped table raise."""
    store.db.create_table("t", [("k", "bytes"), ("v", "bytes")], "k")
    with store.db.transaction() as txn:
        for key in (b"a", b"b\x00", b"c"):
            txn.table("t").insert({"k": key, "v": key * 2})
    reader = store.db.transaction()
    t = reader.table("t")
    assert t.get(b"b\x00") == {"k": b"b\x00", "v": b"b\x00b\x00"}
    with store.db.transaction() as other:
        other.table("t").update(b"a", {"v": b"new"})
        other.table("t").delete(b"b\x00")
        other.table("t").insert({"k": b"d", "v": b"d"})
    assert [t.get(k) for k in (b"a", b"b\x00", b"d")] == [
        {"k": b"a", "v": b"aa"},
        {"k": b"b\x00", "v": b"b\x00b\x00"},
        None,
    ]
    t.delete(b"c")
    t.insert({"k": b"e", "v": b"e"})
    t.update(b"a", {"v": b"mine"})
    assert [t.get(k) for k in (b"a", b"c", b"d", b"e")] == [
        {"k": b"a", "v": b"mine"},
        None,
        None,
        {"k": b"e", "v": b"e"},
    ]
    reader.rollback()
    with pytest.raises(NotInTransaction):
        t.get(b"a")
    with store.db.transaction() as txn:
        t = txn.table("t")
        assert t.get(b"a") == {"k": b"a", "v": b"new"}
        txn.commit()
        with pytest.raises(NotInTransaction):
            t.get(b"a")
    txn = store.db.transaction()
    t = txn.table("t")
    txn.drop_table("t")
    with pytest.raises(ObjectNotFound):
        t.get(b"a")
    txn.rollback()


def _count_applications(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every write applied to a private tree: 1 per path-copy put or delete, the number of
    entries of a bulk merge."""
    import jetstore.transactions.transaction as transaction_module

    applied: list[int] = []
    real_put, real_delete = transaction_module.Mutation.put, transaction_module.Mutation.delete
    real_merge = transaction_module.merge_sorted_columns

    def counting_put(self: Any, key: bytes, value: bytes) -> None:
        applied.append(1)
        real_put(self, key, value)

    def counting_delete(self: Any, key: bytes) -> None:
        applied.append(1)
        real_delete(self, key)

    def counting_merge(*args: Any, **kwargs: Any) -> Any:
        applied.append(len(args[2]))
        return real_merge(*args, **kwargs)

    monkeypatch.setattr(transaction_module.Mutation, "put", counting_put)
    monkeypatch.setattr(transaction_module.Mutation, "delete", counting_delete)
    monkeypatch.setattr(transaction_module, "merge_sorted_columns", counting_merge)
    return applied


def test_unique_checks_do_not_build_the_private_tree(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unique index's check of a write takes the snapshot's entries under the index key
    and the transaction's own (registered) index entries under it, not a range read of the
    transaction's view: that read made it apply its gathered writes to its private tree
    first, so a load into a table with a unique index applied each insert by path copies of
    its own (~2 per row) instead of one bulk merge at commit."""
    store.db.create_table(
        "t", [("id", "int"), ("v", "text")], "id", [jetstore.IndexDef("by_v", ["v"], unique=True)]
    )
    with store.db.transaction() as txn:
        for key in (-1, -2, -3, -4):
            txn.table("t").insert({"id": key, "v": f"c{key}"})
    applied = _count_applications(monkeypatch)
    expected: dict[int, str | None] = {key: f"c{key}" for key in (-1, -2, -3, -4)}
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"id": 0, "v": "own"})
        expected[0] = "own"
        with pytest.raises(KeyDuplicate):  # one of its own
            t.insert({"id": 1, "v": "own"})
        with pytest.raises(KeyDuplicate):  # a committed one
            t.insert({"id": 1, "v": "c-1"})
        with pytest.raises(KeyDuplicate):
            t.update(0, {"v": "c-2"})
        t.delete(-1)  # its value is free again
        del expected[-1]
        t.insert({"id": 1, "v": "c-1"})
        expected[1] = "c-1"
        t.update(-3, {"v": "moved"})  # frees c-3
        t.update(-2, {"v": "c-3"})  # frees c-2, takes c-3
        t.update(0, {"v": "c-2"})  # frees own, takes c-2
        t.insert({"id": 2, "v": "own"})
        expected.update({-3: "moved", -2: "c-3", 0: "c-2", 2: "own"})
        with pytest.raises(KeyDuplicate):
            t.insert({"id": 3, "v": "moved"})
        t.update(-4, {"v": "c-4"})  # its own value: no collision
        t.insert({"id": 3, "v": None})  # NULLs never collide
        t.insert({"id": 4, "v": None})
        expected.update({3: None, 4: None})
        for key in range(10, 5_010):
            t.insert({"id": key, "v": f"v{key}"})
            expected[key] = f"v{key}"
        with pytest.raises(KeyDuplicate):
            t.insert({"id": 1, "v": "v4321"})
        assert applied == []
        writes = len(txn.operations)
    assert applied == [writes]  # the commit: one bulk merge of every write

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            assert {r["id"]: r["v"] for r in t.scan()} == expected
            assert [r["id"] for r in t.scan(index="by_v")] == [
                key
                for key, v in sorted(
                    expected.items(), key=lambda kv: (kv[1] is not None, kv[1] or "", kv[0])
                )
            ]

    store.checked_twice(check)


def test_unique_checks_see_index_entries_they_did_not_register(store: Store) -> None:
    """Index entries a transaction wrote outside the table's writes (an index created in it,
    the raw API) are not in its register of unique entries: their checks read its view."""
    store.db.create_table("t", [("id", "int"), ("v", "text")], "id")
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "v": "a"})
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 2, "v": "b"})
        txn.create_index("t", "by_v", "v", unique=True)
        with pytest.raises(KeyDuplicate):
            txn.table("t").insert({"id": 3, "v": "b"})
        index_prefix = object_prefix(txn.table("t").definition.index_ids[0])
        txn.put(index_prefix + encode_key(["c"]) + encode_key([9]), encode_key([9]))
        with pytest.raises(KeyDuplicate):
            txn.table("t").insert({"id": 3, "v": "c"})
        txn.rollback()


def test_a_unique_index_key_is_encoded_once_per_write(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unique index's key prefix (what its check reads under and registers) is the index
    entry without its primary key: it is cut from the entry, not encoded again, once to check
    and once more to register, so a write encodes as many keys as with a non-unique index."""
    import jetstore.tables.table as table_module

    for name, unique in (("u", True), ("n", False)):
        store.db.create_table(
            name,
            [("id", "int"), ("v", "text")],
            "id",
            [jetstore.IndexDef(f"{name}_v", ["v"], unique=unique)],
        )
    encoded: Counter[str] = Counter()
    real_encode_key = table_module.encode_key
    table = ""

    def counting_encode_key(values: Any) -> bytes:
        encoded[table] += 1
        return real_encode_key(values)

    monkeypatch.setattr(table_module, "encode_key", counting_encode_key)
    with store.db.transaction() as txn:
        for table in ("u", "n"):
            t = txn.table(table)
            for key in range(20):
                t.insert({"id": key, "v": f"v{key}"})
            t.update(3, {"v": "w3"})
            t.insert({"id": 99, "v": "v3"})  # freed by the update
        assert encoded["u"] == encoded["n"] > 0
        with pytest.raises(KeyDuplicate):
            txn.table("u").insert({"id": 100, "v": "v4"})
    assert store.read("u") == store.read("n")

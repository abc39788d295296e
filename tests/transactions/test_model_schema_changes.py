"""Model-based test of schema changes of populated tables: the engine against a Python model.

A table ``t`` (int primary key ``k``; a nullable int ``a`` under a non-unique index, a nullable
text ``s`` under a UNIQUE index, a text ``t`` that is sometimes a long value) and a small
table ``o`` beside it. Two interleaved transactions (and the `Database` conveniences, each a
transaction of its own) insert, upsert, update and delete rows, and change ``t``'s definition:
`create_index` (unique or not, one to three columns, nullable ones and the primary key
included), `drop_index`, `add_column` (every type, nullable or not, with or without a default,
a long text default included; a dropped column's name reused with another type) and
`drop_column` (long values of later columns renumbered). Between them: commits in either
order, lazy and durable, rollbacks, checkpoints, crashes and clean reopens. Values come from
small alphabets with the key-order edge cases (NULL, -0.0 and 0.0, NaN, a naive and an aware
datetime of one instant, strings extended by NUL bytes) so unique collisions are frequent.

What the model encodes (docs/design.md, "Schema changes of an existing table" and "Key
layout"):
- a transaction reads its snapshot's definition and rows plus its own changes; a schema change
  applies at once to the transaction that makes it;
- an added column reads its default (NULL when it has none) in every existing row; a dropped
  column disappears from every row; a NOT NULL column without a default is `NullInvalid`, a
  name the table has `ColumnDuplicate`, dropping a primary key or indexed column
  `ColumnIndexed`, an unknown column `ColumnNotFound`;
- `create_index` holds exactly one entry per row (NULLs included); a unique one over rows
  that share a key without NULL is `KeyDuplicate`; an existing name `IndexDuplicate`;
  `drop_index` of an unknown name `IndexNotFound`. Every failed call leaves the transaction as
  it was, and usable;
- every index scans (forwards and backwards, with tuple-prefix bounds) in key order: its
  columns then the primary key's, NULL first, -0.0 before 0.0, NaN after +inf, a naive
  datetime before the aware one of the same instant;
- commit: a key another transaction committed after the snapshot is `WriteConflict` (the later
  committer fails); a transaction that wrote to ``t`` (rows or definition) conflicts with a
  change of ``t``'s definition committed after its snapshot, and a change of ``t``'s definition
  conflicts with any write to ``t`` committed after its snapshot; writes to ``o`` conflict with
  neither. Otherwise a unique key a concurrent commit took first is `KeyDuplicate`. A failed
  commit rolls back;
- durability: durable commits survive a crash, and of the lazy commits since, some prefix;
  the offline integrity check finds no problem after every reopen.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import jetstore
from jetstore.errors import (
    ColumnDuplicate,
    ColumnIndexed,
    ColumnNotFound,
    IndexDuplicate,
    IndexNotFound,
    JetError,
    KeyDuplicate,
    NullInvalid,
    RecordNotFound,
    WriteConflict,
)
from jetstore.format.filenames import parse_database_file_name
from jetstore.tools.integrity import check_integrity

Record = dict[str, Any]

_PLUS_ONE = timezone(timedelta(hours=1))
#: Value alphabets by column kind: (engine type, values). "long" is a text column whose
#: values may be long values (never indexed: their keys would be too big).
KINDS: dict[str, tuple[str, list[Any]]] = {
    "int": ("int", [-1, 0, 1, 2**63 - 1]),
    "float": ("float", [-0.0, 0.0, 1.0, math.nan, math.inf]),
    "text": ("text", ["", "\x00", "a", "a\x00", "b"]),
    "bytes": ("bytes", [b"", b"\x00", b"a", b"\xff"]),
    "datetime": (
        "datetime",
        [
            datetime(2020, 1, 1),
            datetime(2020, 1, 1, tzinfo=UTC),
            datetime(2020, 1, 1, 1, tzinfo=_PLUS_ONE),  # the same instant as the one above
            datetime.min,
        ],
    ),
    "long": ("text", ["", "x", "y" * 2100, "z" * 5000]),  # over half a page: long values
}
PKS = st.integers(0, 5)
SLOTS = st.sampled_from([0, 1, 2])  # 2: a `Database` convenience (a transaction of its own)
COLUMN_NAMES = ["a", "s", "t", "c1", "c2", "c3"]
ALL_COLUMNS = ["k", *COLUMN_NAMES]
INDEX_NAMES = ["by_a", "by_s", "i1", "i2"]
OTHER_VALUES = st.sampled_from(["", "v", "w" * 3000])


@dataclass(frozen=True)
class Col:
    name: str
    kind: str
    nullable: bool = True
    default: Any = None


@dataclass
class View:
    """What one transaction (or the committed state) holds: ``t``'s definition and rows
    (as a read returns them), and ``o``'s rows."""

    columns: list[Col]
    indexes: list[tuple[str, tuple[str, ...], bool]]
    rows: dict[int, Record]
    other: dict[int, str]

    def copy(self) -> View:
        return View(
            list(self.columns),
            list(self.indexes),
            {pk: dict(r) for pk, r in self.rows.items()},
            dict(self.other),
        )

    def column(self, name: str) -> Col | None:
        return next((c for c in self.columns if c.name == name), None)

    def index(self, name: str) -> tuple[str, tuple[str, ...], bool] | None:
        return next((i for i in self.indexes if i[0] == name), None)


def pick(data: st.DataObject, likely: list[str], anything: list[str]) -> str:
    """Mostly a member of `likely` (a name the change accepts), else any of `anything`."""
    if likely and data.draw(st.integers(0, 3)) > 0:
        return data.draw(st.sampled_from(likely))
    return data.draw(st.sampled_from(anything))


def initial_view() -> View:
    return View(
        [Col("k", "int", False), Col("a", "int"), Col("s", "text"), Col("t", "long")],
        [("by_a", ("a",), False), ("by_s", ("s",), True)],
        {},
        {},
    )


# ------------------------------------------------------------------ the model's order


def _micros(value: datetime) -> int:
    if value.tzinfo is None or value.utcoffset() is None:
        return (value - datetime(1970, 1, 1)) // timedelta(microseconds=1)
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def sort_key(value: Any) -> tuple[Any, ...]:
    """The documented key order of one value (independent of the engine's encoder)."""
    if value is None:
        return (0,)
    if isinstance(value, float):
        if math.isnan(value):
            return (1, 2)
        return (1, 1, value, math.copysign(1.0, value) > 0)
    if isinstance(value, datetime):
        aware = value.tzinfo is not None and value.utcoffset() is not None
        return (1, _micros(value), aware)
    return (1, value)


def key_of(record: Record, columns: tuple[str, ...]) -> tuple[tuple[Any, ...], ...]:
    return tuple(sort_key(record[c]) for c in columns)


def canonical(value: Any) -> tuple[Any, ...]:
    """A value as compared between engine and model: exact floats (-0.0 is not 0.0, NaN is
    NaN), datetimes by instant, awareness and offset."""
    if isinstance(value, float):
        return ("nan",) if math.isnan(value) else ("float", struct.pack(">d", value))
    if isinstance(value, datetime):
        return ("datetime", _micros(value), value.tzinfo is not None, value.utcoffset())
    return (type(value).__name__, value)


def canonical_record(record: Record | None) -> Any:
    if record is None:
        return None
    return sorted((name, canonical(value)) for name, value in record.items())


def as_read(value: Any) -> Any:
    """A value as a read returns it: aware datetimes in UTC."""
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return value.astimezone(UTC)
    return value


def unique_clash(view: View, record: Record, exclude: set[int]) -> str | None:
    """The unique index under which `record` collides with a row of `view` (not one of
    `exclude`), or None. A key holding a NULL never collides."""
    for name, columns, unique in view.indexes:
        if not unique or any(record[c] is None for c in columns):
            continue
        key = key_of(record, columns)
        for pk, other in view.rows.items():
            if pk not in exclude and key_of(other, columns) == key:
                return name
    return None


def validate(view: View, record: Record, partial: bool) -> tuple[type[JetError] | None, Record]:
    """`TableDef.validate_record` as the model sees it: the error it raises, or the record
    with defaults for the missing columns (as read)."""
    out: Record = {}
    for col in view.columns:
        if col.name in record:
            if record[col.name] is None and not col.nullable:
                return NullInvalid, {}
            out[col.name] = as_read(record[col.name])
        elif not partial:
            if col.default is None and not col.nullable:
                return NullInvalid, {}
            out[col.name] = as_read(col.default)
    if any(view.column(name) is None for name in record):
        return ColumnNotFound, {}
    return None, out


def expected_scan(
    view: View,
    index: str | None,
    start: tuple[Any, ...] | None = None,
    stop: tuple[Any, ...] | None = None,
    reverse: bool = False,
) -> list[Record]:
    """The rows in key order of `index` (its columns, then the primary key's) from `start`
    (inclusive) to `stop` (exclusive), tuple prefixes compared in key order."""
    found = view.index(index) if index else None
    columns = (*found[1], "k") if found else ("k",)
    low = None if start is None else tuple(sort_key(v) for v in start)
    high = None if stop is None else tuple(sort_key(v) for v in stop)
    rows = sorted(view.rows.values(), key=lambda r: key_of(r, columns))
    rows = [
        r
        for r in rows
        if (low is None or key_of(r, columns) >= low)
        and (high is None or key_of(r, columns) < high)
    ]
    return rows[::-1] if reverse else rows


def model_definition(view: View) -> Any:
    return (
        [
            (c.name, KINDS[c.kind][0], c.nullable, canonical(as_read(c.default)))
            for c in view.columns
        ],
        list(view.indexes),
    )


def engine_definition(table: jetstore.Table) -> Any:
    d = table.definition
    return (
        [(c.name, c.type.value, c.nullable, canonical(as_read(c.default))) for c in d.columns],
        [(i.name, tuple(i.columns), i.unique) for i in d.indexes],
    )


# ------------------------------------------------------------------ the machine


@dataclass
class Open:
    """One open transaction and what the model says it sees and wrote."""

    txn: jetstore.Transaction
    view: View
    snapshot: int  # commits counted when it began
    rows_written: set[int] = field(default_factory=set)
    other_written: set[int] = field(default_factory=set)
    redefined: bool = False


@dataclass(frozen=True)
class Commit:
    """What one commit wrote, as the conflict rule sees it: rows of ``t`` (by primary key),
    rows of ``o``, and whether it changed ``t``'s definition."""

    rows: frozenset[int]
    other: frozenset[int]
    redefined: bool


class SchemaModel(RuleBasedStateMachine):
    #: No background flush or checkpoint: what a crash keeps does not depend on timing and a
    #: failure replays. The soak variant runs the background work too.
    timers: ClassVar[dict[str, Any]] = {
        "lazy_flush_interval": 3600.0,
        "checkpoint_interval": 3600.0,
        "checkpoint_depth": 1024 * 1024 * 1024,
    }

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="jetstore-schema-model-")
        self.instance = self._open()
        db = self.instance.database("main", create=True)
        start = initial_view()
        db.create_table(
            "t",
            [(c.name, KINDS[c.kind][0], c.nullable) for c in start.columns],
            primary_key=["k"],
            indexes=[(name, list(cols), unique) for name, cols, unique in start.indexes],
        )
        db.create_table("o", [("k", "int", False), ("v", "text")], primary_key=["k"])
        self.durable = start
        self.lazy: list[View] = []  # states after each lazy commit since the durable one
        self.commits: list[Commit] = []
        self.slots: list[Open | None] = [None, None]

    def _open(self) -> jetstore.Instance:
        return jetstore.open(
            self.directory,
            log_file_size=64 * 1024,
            page_size=4096,
            cache_size=64 * 4096,
            control_socket=False,
            **self.timers,
        )

    @property
    def committed(self) -> View:
        return self.lazy[-1] if self.lazy else self.durable

    def teardown(self) -> None:
        for slot in self.slots:
            if slot is not None:
                slot.txn.rollback()
        self.instance.close()
        assert self.instance.registry.total() == 0
        shutil.rmtree(self.directory, ignore_errors=True)

    def _slot(self, number: int) -> Open:
        """The open transaction in slot `number` (begun now if there is none); slot 2 is a
        transaction of its own, committed (durably) by `_done` as the conveniences do."""
        if number == 2:
            txn = self.instance.database("main").transaction()
            return Open(txn, self.committed.copy(), len(self.commits))
        slot = self.slots[number]
        if slot is None:
            txn = self.instance.database("main").transaction()
            slot = self.slots[number] = Open(txn, self.committed.copy(), len(self.commits))
        return slot

    def _done(self, number: int, slot: Open) -> None:
        if number == 2:
            self._commit(slot, lazy=False)

    @initialize(rows=st.integers(0, 8), data=st.data())
    def populate(self, rows: int, data: st.DataObject) -> None:
        """Start from a populated table (mostly): the schema changes have rows to build
        indexes over, rewrite, and give defaults to."""
        for _ in range(rows):
            self.insert(0, data)
        self.commit(0, lazy=False)

    # -------------------------------------------------------------- row writes

    def _draw_record(self, data: st.DataObject, view: View, partial: bool) -> Record:
        """A record (or, `partial`, changes) for `view`'s columns: each column given a value
        of its kind, NULL, or (mostly when not `partial`) left to its default; now and then a
        column the table does not have."""
        record: Record = {}
        for col in view.columns:
            if col.name == "k":
                if not partial or data.draw(st.integers(0, 5)) == 0:
                    record["k"] = data.draw(PKS)
                continue
            choice = data.draw(st.integers(0, 5))
            if choice == 0 or (partial and choice == 1):
                continue
            if choice == 1 or (choice == 2 and col.nullable):
                record[col.name] = None
            else:
                record[col.name] = data.draw(st.sampled_from(KINDS[col.kind][1]))
        if data.draw(st.integers(0, 15)) == 0:
            missing = [n for n in COLUMN_NAMES if view.column(n) is None] or ["zz"]
            record[data.draw(st.sampled_from(missing))] = None
        return record

    @rule(number=SLOTS, data=st.data())
    def insert(self, number: int, data: st.DataObject) -> None:
        slot = self._slot(number)
        record = self._draw_record(data, slot.view, partial=False)
        table = slot.txn.table("t")
        error, stored = validate(slot.view, record, partial=False)
        if error is None and (
            stored["k"] in slot.view.rows or unique_clash(slot.view, stored, set())
        ):
            error = KeyDuplicate
        if error is not None:
            with pytest.raises(error):
                table.insert(record)
        else:
            table.insert(record)
            slot.view.rows[stored["k"]] = stored
            slot.rows_written.add(stored["k"])
        self._done(number, slot)

    @rule(number=SLOTS, data=st.data())
    def upsert(self, number: int, data: st.DataObject) -> None:
        slot = self._slot(number)
        record = self._draw_record(data, slot.view, partial=False)
        table = slot.txn.table("t")
        error, stored = validate(slot.view, record, partial=False)
        if error is None and unique_clash(slot.view, stored, {stored["k"]}):
            error = KeyDuplicate
        if error is not None:
            with pytest.raises(error):
                table.upsert(record)
        else:
            table.upsert(record)
            slot.view.rows[stored["k"]] = stored
            slot.rows_written.add(stored["k"])
        self._done(number, slot)

    @rule(number=SLOTS, pk=PKS, data=st.data())
    def update(self, number: int, pk: int, data: st.DataObject) -> None:
        slot = self._slot(number)
        view = slot.view
        if view.rows and data.draw(st.booleans()):  # mostly an existing row
            pk = data.draw(st.sampled_from(sorted(view.rows)))
        changes = self._draw_record(data, view, partial=True)
        table = slot.txn.table("t")
        error: type[JetError] | None = None
        new: Record = {}
        if pk not in view.rows:
            error = RecordNotFound
        else:
            error, valid = validate(view, changes, partial=True)
            new = {**view.rows[pk], **valid}
            if error is None and (
                (new["k"] != pk and new["k"] in view.rows)
                or unique_clash(view, new, {pk, new["k"]})
            ):
                error = KeyDuplicate
        if error is not None:
            with pytest.raises(error):
                table.update(pk, changes)
        else:
            returned = table.update(pk, changes)
            assert canonical_record(returned) == canonical_record(new)
            del view.rows[pk]
            view.rows[new["k"]] = new
            slot.rows_written |= {pk, new["k"]}
        self._done(number, slot)

    @rule(number=SLOTS, pk=PKS)
    def delete(self, number: int, pk: int) -> None:
        slot = self._slot(number)
        table = slot.txn.table("t")
        if pk not in slot.view.rows:
            with pytest.raises(RecordNotFound):
                table.delete(pk)
        else:
            table.delete(pk)
            del slot.view.rows[pk]
            slot.rows_written.add(pk)
        self._done(number, slot)

    @rule(number=SLOTS, pk=st.integers(0, 3), value=st.none() | OTHER_VALUES)
    def write_other(self, number: int, pk: int, value: str | None) -> None:
        """A write to the other table: it conflicts with no schema change of ``t``."""
        slot = self._slot(number)
        table = slot.txn.table("o")
        if value is None:
            if pk in slot.view.other:
                table.delete(pk)
                del slot.view.other[pk]
                slot.other_written.add(pk)
        else:
            table.upsert({"k": pk, "v": value})
            slot.view.other[pk] = value
            slot.other_written.add(pk)
        self._done(number, slot)

    # -------------------------------------------------------------- schema changes

    @rule(number=SLOTS, unique=st.booleans(), data=st.data())
    def create_index(self, number: int, unique: bool, data: st.DataObject) -> None:
        slot = self._slot(number)
        view = slot.view
        name = pick(data, [n for n in INDEX_NAMES if view.index(n) is None], INDEX_NAMES)
        candidates = [c.name for c in view.columns if c.kind != "long"]
        missing = [n for n in COLUMN_NAMES if view.column(n) is None]
        if missing and data.draw(st.integers(0, 9)) == 0:
            candidates.append(data.draw(st.sampled_from(missing)))  # ColumnNotFound
        columns = tuple(
            data.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
        )
        error: type[JetError] | None = None
        if view.index(name) is not None:
            error = IndexDuplicate
        elif any(view.column(c) is None for c in columns):
            error = ColumnNotFound
        elif unique:
            keys = [
                key_of(r, columns)
                for r in view.rows.values()
                if all(r[c] is not None for c in columns)
            ]
            if len(set(keys)) != len(keys):
                error = KeyDuplicate
        self._schema_change(
            number,
            slot,
            error,
            lambda txn: txn.create_index("t", name, list(columns), unique),
            lambda db: db.create_index("t", name, list(columns), unique),
        )
        if error is None:
            view.indexes.append((name, columns, unique))

    @rule(number=SLOTS, data=st.data())
    def drop_index(self, number: int, data: st.DataObject) -> None:
        slot = self._slot(number)
        view = slot.view
        name = pick(data, [i[0] for i in view.indexes], INDEX_NAMES)
        error = IndexNotFound if view.index(name) is None else None
        self._schema_change(
            number,
            slot,
            error,
            lambda txn: txn.drop_index("t", name),
            lambda db: db.drop_index("t", name),
        )
        if error is None:
            view.indexes = [i for i in view.indexes if i[0] != name]

    @rule(
        number=SLOTS,
        kind=st.sampled_from(list(KINDS)),
        nullable=st.booleans(),
        data=st.data(),
    )
    def add_column(self, number: int, kind: str, nullable: bool, data: st.DataObject) -> None:
        slot = self._slot(number)
        view = slot.view
        name = pick(data, [n for n in COLUMN_NAMES if view.column(n) is None], ALL_COLUMNS)
        default = data.draw(st.none() | st.sampled_from(KINDS[kind][1]))
        error: type[JetError] | None = None
        if not nullable and default is None:
            error = NullInvalid
        elif view.column(name) is not None:
            error = ColumnDuplicate
        ctype = KINDS[kind][0]
        self._schema_change(
            number,
            slot,
            error,
            lambda txn: txn.add_column("t", name, ctype, nullable, default),
            lambda db: db.add_column("t", name, ctype, nullable, default),
        )
        if error is None:
            view.columns.append(Col(name, kind, nullable, default))
            for row in view.rows.values():
                row[name] = as_read(default)

    @rule(number=SLOTS, data=st.data())
    def drop_column(self, number: int, data: st.DataObject) -> None:
        slot = self._slot(number)
        view = slot.view
        indexed = {c for _, cols, _ in view.indexes for c in cols}
        name = pick(
            data, [c.name for c in view.columns if c.name not in indexed | {"k"}], ALL_COLUMNS
        )
        error: type[JetError] | None = None
        if view.column(name) is None:
            error = ColumnNotFound
        elif name == "k" or any(name in cols for _, cols, _ in view.indexes):
            error = ColumnIndexed
        self._schema_change(
            number,
            slot,
            error,
            lambda txn: txn.drop_column("t", name),
            lambda db: db.drop_column("t", name),
        )
        if error is None:
            view.columns = [c for c in view.columns if c.name != name]
            for row in view.rows.values():
                del row[name]

    def _schema_change(
        self,
        number: int,
        slot: Open,
        error: type[JetError] | None,
        change: Any,
        convenience: Any,
    ) -> None:
        """Make a change in `slot`'s transaction, or (slot 2) by the `Database` convenience
        (its own transaction, nothing else in between: it never conflicts)."""
        if number == 2:
            slot.txn.rollback()
            db = self.instance.database("main")
            if error is not None:
                with pytest.raises(error):
                    convenience(db)
                return
            convenience(db)
            # Stands for the convenience's own transaction, committed durably.
            slot.redefined = True
            self._record_commit(slot, slot.view, lazy=False)
            return
        if error is not None:
            with pytest.raises(error):
                change(slot.txn)
            return
        change(slot.txn)
        slot.redefined = True

    # -------------------------------------------------------------- reads

    @rule(number=SLOTS, data=st.data())
    def scan(self, number: int, data: st.DataObject) -> None:
        """A bounded scan of an index (or the primary key), either direction."""
        slot = self._slot(number)
        view = slot.view
        index = data.draw(st.sampled_from([None, *(i[0] for i in view.indexes)]))
        found = view.index(index) if index else None
        columns = (*found[1], "k") if found else ("k",)
        kinds = [view.column(c).kind for c in columns]  # type: ignore[union-attr]

        def bound() -> tuple[Any, ...] | None:
            size = data.draw(st.integers(-1, len(columns)))
            if size < 0:
                return None
            return tuple(
                data.draw(st.none() | st.sampled_from(KINDS[k][1] if c != "k" else [0, 2, 4]))
                for c, k in zip(columns[:size], kinds, strict=False)
            )

        start, stop, reverse = bound(), bound(), data.draw(st.booleans())
        rows = slot.txn.table("t").scan(index=index, start=start, stop=stop, reverse=reverse)
        assert [canonical_record(r) for r in rows] == [
            canonical_record(r) for r in expected_scan(view, index, start, stop, reverse)
        ]
        if number == 2:
            slot.txn.rollback()

    # -------------------------------------------------------------- ends

    @rule(number=st.sampled_from([0, 1]), lazy=st.booleans())
    def commit(self, number: int, lazy: bool) -> None:
        slot = self._slot(number)
        self.slots[number] = None
        self._commit(slot, lazy)

    def _commit(self, slot: Open, lazy: bool) -> None:
        wrote_t = bool(slot.rows_written) or slot.redefined
        if not wrote_t and not slot.other_written:
            slot.txn.commit(lazy=lazy)
            if not lazy:  # a durable commit waits for the lazy ones it could have seen
                self.durable, self.lazy = self.committed, []
            return
        later = self.commits[slot.snapshot :]
        conflict = (
            any(slot.rows_written & c.rows for c in later)
            or any(slot.other_written & c.other for c in later)
            or (wrote_t and any(c.redefined for c in later))
            or (slot.redefined and any(c.rows or c.redefined for c in later))
        )
        if conflict:
            with pytest.raises(WriteConflict):
                slot.txn.commit(lazy=lazy)
            assert not slot.txn.is_active
            return
        if slot.redefined:
            # Nobody else wrote to t since the snapshot: t is as this transaction sees it.
            merged = self.committed.copy()
            merged.columns, merged.indexes = list(slot.view.columns), list(slot.view.indexes)
            merged.rows = {pk: dict(r) for pk, r in slot.view.rows.items()}
        else:
            merged = self.committed.copy()
            for pk in slot.rows_written:
                if pk in slot.view.rows:
                    merged.rows[pk] = dict(slot.view.rows[pk])
                else:
                    merged.rows.pop(pk, None)
        for pk in slot.other_written:
            if pk in slot.view.other:
                merged.other[pk] = slot.view.other[pk]
            else:
                merged.other.pop(pk, None)
        if any(
            unique_clash(merged, merged.rows[pk], {pk})
            for pk in slot.rows_written
            if pk in merged.rows
        ):
            with pytest.raises(KeyDuplicate):
                slot.txn.commit(lazy=lazy)
            assert not slot.txn.is_active
            return
        slot.txn.commit(lazy=lazy)
        self._record_commit(slot, merged, lazy)

    def _record_commit(self, slot: Open, merged: View, lazy: bool) -> None:
        self.commits.append(
            Commit(frozenset(slot.rows_written), frozenset(slot.other_written), slot.redefined)
        )
        if lazy:
            self.lazy.append(merged)
        else:
            self.durable, self.lazy = merged, []

    @rule(number=st.sampled_from([0, 1]))
    def rollback(self, number: int) -> None:
        slot = self.slots[number]
        if slot is not None:
            slot.txn.rollback()
            self.slots[number] = None

    @rule()
    def checkpoint(self) -> None:
        """A checkpoint makes the log durable up to its position first: every commit before
        it survives a crash."""
        self.instance.checkpoint()
        self.durable, self.lazy = self.committed, []

    @precondition(lambda self: self.slots == [None, None])
    @rule()
    def close_and_reopen(self) -> None:
        self.instance.close()
        self.durable, self.lazy = self.committed, []
        self._check_integrity_and_reopen()
        assert self.read_committed() == canonical_state(self.durable)

    @rule()
    def crash_and_reopen(self) -> None:
        self.instance.simulate_crash()
        self.slots = [None, None]  # open transactions die with the process
        self.instance = self._open()
        found = self.read_committed()
        candidates = [self.durable, *self.lazy]
        assert any(found == canonical_state(c) for c in candidates), (
            "after a crash the state must be a committed prefix"
        )
        self.durable = next(c for c in reversed(candidates) if found == canonical_state(c))
        self.lazy = []
        self.instance.close()
        self._check_integrity_and_reopen()

    def _check_integrity_and_reopen(self) -> None:
        """`check_integrity` on the cleanly closed database file, then open again."""
        names = [n for n in os.listdir(self.directory) if parse_database_file_name(n)]
        assert names
        for name in names:
            report = check_integrity(os.path.join(self.directory, name))
            assert report.ok, [str(p) for p in report.problems]
        self.instance = self._open()

    def read_committed(self) -> Any:
        with self.instance.database("main").transaction() as txn:
            return read_state(txn)

    @invariant()
    def views_match(self) -> None:
        """Each open transaction and the committed state: the definition, and every index
        scanned forwards and backwards, as the model says."""
        for slot in self.slots:
            if slot is not None:
                assert read_state(slot.txn) == canonical_state(slot.view)
        assert self.read_committed() == canonical_state(self.committed)


def read_state(txn: jetstore.Transaction) -> Any:
    table = txn.table("t")
    scans = {}
    for index in [None, *(i.name for i in table.definition.indexes)]:
        forwards = [canonical_record(r) for r in table.scan(index=index)]
        backwards = [canonical_record(r) for r in table.scan(index=index, reverse=True)]
        scans[index] = (forwards, backwards[::-1])
    other = {r["k"]: r["v"] for r in txn.table("o").scan()}
    return engine_definition(table), scans, other


def canonical_state(view: View) -> Any:
    scans = {}
    for index in [None, *(i[0] for i in view.indexes)]:
        rows = [canonical_record(r) for r in expected_scan(view, index)]
        scans[index] = (rows, rows)
    return model_definition(view), scans, dict(view.other)


SchemaModel.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSchemaModel = SchemaModel.TestCase


class SoakSchemaModel(SchemaModel):
    timers: ClassVar[dict[str, Any]] = {
        "lazy_flush_interval": 0.05,
        "checkpoint_interval": 0.5,
        "checkpoint_depth": 64 * 1024,
    }


SoakSchemaModel.TestCase.settings = settings(
    max_examples=2000,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSoakSchemaModel = pytest.mark.soak(SoakSchemaModel.TestCase)

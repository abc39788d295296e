"""Model-based test of index maintenance: the engine against a pure-Python model.

One table with a composite primary key (int, text), a nullable text column under a UNIQUE
index, a non-unique composite index over (bytes, int), a UNIQUE composite index over
(float, datetime) and a text column that is sometimes a long value. Values come from small
alphabets with tricky members (empty values, values extended by NUL bytes, 0xFF bytes, -0.0
and 0.0, NaN, infinities, naive and aware datetimes of one instant, the ends of the int and
datetime ranges, NULL), so collisions and ordering edge cases are frequent.

What the model encodes (from `jetstore.tables.keys`, `jetstore.tables.table`,
`jetstore.instance.database` and docs/design.md):
- key order: NULL first; ints and floats numerically, -0.0 just before 0.0 (two keys), NaN
  after +inf (all NaNs one key); str by code point, bytes bytewise, a value before itself
  extended by NUL bytes; datetimes by instant, a naive one (taken as UTC) just before the aware
  one of the same instant (two keys); a tuple before its extensions;
- a unique index refuses a second record with an equal key; a key holding a NULL never
  collides (as in SQL);
- scan bounds are tuple prefixes of the key columns (for an index: its columns, then the
  primary key's), `start` inclusive, `stop` exclusive, compared in key order;
- a failed insert / update / delete (`KeyDuplicate`, `RecordNotFound`) leaves the
  transaction as it was, and usable;
- two transactions open at once: each reads its snapshot plus its own writes; at commit, the
  later committer of a write to a record another transaction committed after its snapshot
  gets `WriteConflict`; otherwise a unique key that a concurrent commit took first is
  `KeyDuplicate`; a failed commit rolls the transaction back;
- durability: durable commits survive a crash, and of the lazy commits since the last durable
  point some prefix survives; a clean close keeps everything. After every reopen the offline
  integrity check (`check_integrity`) finds no problem.
"""

from __future__ import annotations

import itertools
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
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import jetstore
from jetstore.errors import KeyDuplicate, RecordNotFound, WriteConflict
from jetstore.format.filenames import parse_database_file_name
from jetstore.tools.integrity import check_integrity

Record = dict[str, Any]
PK = tuple[int, str]

COLUMNS = [
    ("k1", "int"),
    ("k2", "text"),
    ("u", "text"),
    ("b", "bytes"),
    ("n", "int"),
    ("f", "float"),
    ("d", "datetime"),
    ("t", "text"),
]
NAMES = [name for name, _ in COLUMNS]
PRIMARY_KEY = ("k1", "k2")
INDEXES: dict[str | None, tuple[tuple[str, ...], bool]] = {
    None: (PRIMARY_KEY, True),
    "by_u": (("u",), True),
    "by_bn": (("b", "n"), False),
    "by_fd": (("f", "d"), True),
}

_PLUS_ONE = timezone(timedelta(hours=1))
K1 = [-(2**63), -(2**62), -1, 0, 1, 255, 256, 2**63 - 1]
K2 = ["", "\x00", "a", "a\x00", "é"]
TEXTS = ["", "\x00", "a", "a\x00", "a\x00\x00", "a\x01", "A", "\uffff", "\U0001f600"]
BYTES = [b"", b"\x00", b"\x00\xff", b"\xff", b"\xff\x00", b"a", b"a\x00"]
INTS = [-(2**63), -1, 0, 1, 2**63 - 1]
FLOATS = [-0.0, 0.0, 1.0, -1.5, math.inf, -math.inf, math.nan, 5e-324, -5e-324]
DATETIMES = [
    datetime(2020, 1, 1),
    datetime(2020, 1, 1, tzinfo=UTC),
    datetime(2020, 1, 1, 1, tzinfo=_PLUS_ONE),  # the same instant as the one above
    datetime(1969, 12, 31, 23, 59, 59, 999999),
    datetime.min,
    datetime.max,
]
LONG_TEXTS = ["", "x", "y" * 2100, "z" * 5000]  # over half a page: long values


def nullable(values: list[Any], weight: int = 4) -> st.SearchStrategy[Any]:
    """A member of `values`, or None about once in `weight` draws."""
    return st.one_of(st.just(None), *([st.sampled_from(values)] * (weight - 1)))


VALUES: dict[str, st.SearchStrategy[Any]] = {
    "k1": st.sampled_from(K1),
    "k2": st.sampled_from(K2),
    "u": nullable(TEXTS),
    "b": nullable(BYTES) | st.sampled_from(BYTES).map(bytearray),  # bytes-like: stored as bytes
    "n": nullable(INTS),
    "f": nullable(FLOATS, 6) | st.sampled_from([0, 1, -2]),  # an int: stored as a float
    "d": nullable(DATETIMES, 6),
    "t": nullable(LONG_TEXTS),
}
RECORDS = st.fixed_dictionaries({name: VALUES[name] for name in NAMES})
CHANGES = st.fixed_dictionaries({}, optional={name: VALUES[name] for name in NAMES})
PKS = st.tuples(VALUES["k1"], VALUES["k2"])
SLOTS = st.sampled_from([0, 1])


def bound_values(index: str | None) -> st.SearchStrategy[tuple[Any, ...]]:
    """A scan bound for `index`: a tuple prefix of its columns then the primary key's
    (a NULL element is a legal bound for any column: it sorts first)."""
    columns = (*INDEXES[index][0], *PRIMARY_KEY) if index else PRIMARY_KEY
    parts = [st.one_of(st.just(None), VALUES[c].filter(lambda v: v is not None)) for c in columns]
    return st.integers(0, len(columns)).flatmap(lambda n: st.tuples(*parts[:n]))


SCANS = st.sampled_from(list(INDEXES)).flatmap(
    lambda index: st.tuples(
        st.just(index),
        st.one_of(st.none(), bound_values(index)),
        st.one_of(st.none(), bound_values(index)),
        st.booleans(),
        st.booleans(),
    )
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


def bound_key(bound: tuple[Any, ...], columns: tuple[str, ...]) -> tuple[tuple[Any, ...], ...]:
    """A scan bound in key order: its values converted as column values are (an int bound on
    a float column is that float, a bytearray bytes)."""
    out = []
    for column, value in zip(columns, bound, strict=False):
        if value is not None and column == "f":
            value = float(value)
        elif value is not None and column == "b":
            value = bytes(value)
        out.append(sort_key(value))
    return tuple(out)


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
    return {name: canonical(value) for name, value in record.items()}


def as_read(record: Record) -> Record:
    """A record as a read returns it: bytes-like values as bytes, ints in a float column as
    floats, aware datetimes in UTC."""
    out = dict(record)
    if isinstance(out["b"], bytearray):
        out["b"] = bytes(out["b"])
    if isinstance(out["f"], int):
        out["f"] = float(out["f"])
    d = out["d"]
    if isinstance(d, datetime) and d.utcoffset() is not None:
        out["d"] = d.astimezone(UTC)
    return out


def pk_of(record: Record) -> PK:
    return (record["k1"], record["k2"])


def unique_clash(view: dict[PK, Record], record: Record, exclude: set[PK]) -> str | None:
    """The unique index under which `record` collides with a record of `view` (not one of
    `exclude`), or None. A key holding a NULL never collides."""
    for index, (columns, unique) in INDEXES.items():
        if index is None or not unique or any(record[c] is None for c in columns):
            continue
        key = key_of(record, columns)
        for pk, other in view.items():
            if pk not in exclude and key_of(other, columns) == key:
                return index
    return None


# ------------------------------------------------------------------ the machine


@dataclass
class Open:
    """One open transaction and what the model says it sees."""

    txn: jetstore.Transaction
    view: dict[PK, Record]
    snapshot: int  # commits counted when it began
    written: set[PK] = field(default_factory=set)


class IndexModel(RuleBasedStateMachine):
    #: No background flush or checkpoint: lazy commits reach the disk only through durable
    #: commits, checkpoint steps and full log buffers, so what a crash keeps does not depend
    #: on timing and a failure replays. The soak variant runs the background work too.
    timers: ClassVar[dict[str, Any]] = {
        "lazy_flush_interval": 3600.0,
        "checkpoint_interval": 3600.0,
        "checkpoint_depth": 1024 * 1024 * 1024,
    }

    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="jetstore-index-model-")
        self.instance = self._open()
        self.instance.database("main", create=True).create_table(
            "t",
            COLUMNS,
            primary_key=list(PRIMARY_KEY),
            indexes=[
                (name, list(cols), unique) for name, (cols, unique) in INDEXES.items() if name
            ],
        )
        self.durable: dict[PK, Record] = {}
        self.lazy: list[dict[PK, Record]] = []  # states after each lazy commit since durable
        self.commits: list[set[PK]] = []  # the records each commit wrote, in commit order
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
    def committed(self) -> dict[PK, Record]:
        return self.lazy[-1] if self.lazy else self.durable

    def teardown(self) -> None:
        for slot in self.slots:
            if slot is not None:
                slot.txn.rollback()
        self.instance.close()
        assert self.instance.registry.total() == 0
        shutil.rmtree(self.directory, ignore_errors=True)

    def _slot(self, number: int) -> Open:
        """The open transaction in slot `number` (begun now if there is none)."""
        slot = self.slots[number]
        if slot is None:
            txn = self.instance.database("main").transaction()
            slot = self.slots[number] = Open(txn, dict(self.committed), len(self.commits))
        return slot

    # -------------------------------------------------------------- writes

    @rule(number=SLOTS)
    def begin(self, number: int) -> None:
        self._slot(number)

    @rule(number=SLOTS, record=RECORDS)
    def insert(self, number: int, record: Record) -> None:
        slot = self._slot(number)
        table = slot.txn.table("t")
        pk, stored = pk_of(record), as_read(record)
        if pk in slot.view or unique_clash(slot.view, stored, set()):
            with pytest.raises(KeyDuplicate):
                table.insert(record)
            return
        table.insert(record)
        slot.view[pk] = stored
        slot.written.add(pk)

    @rule(number=SLOTS, record=RECORDS)
    def upsert(self, number: int, record: Record) -> None:
        slot = self._slot(number)
        table = slot.txn.table("t")
        pk, stored = pk_of(record), as_read(record)
        if unique_clash(slot.view, stored, {pk}):
            with pytest.raises(KeyDuplicate):
                table.upsert(record)
            return
        table.upsert(record)
        slot.view[pk] = stored
        slot.written.add(pk)

    @rule(number=SLOTS, pk=PKS, changes=CHANGES, pick=st.none() | st.integers(0, 63))
    def update(self, number: int, pk: PK, changes: Record, pick: int | None) -> None:
        slot = self._slot(number)
        if pick is not None and slot.view:  # mostly an existing record
            pk = sorted(slot.view, key=lambda p: (sort_key(p[0]), sort_key(p[1])))[
                pick % len(slot.view)
            ]
        table = slot.txn.table("t")
        if pk not in slot.view:
            with pytest.raises(RecordNotFound):
                table.update(pk, changes)
            return
        new = as_read({**slot.view[pk], **changes})
        new_pk = pk_of(new)
        if (new_pk != pk and new_pk in slot.view) or unique_clash(slot.view, new, {pk, new_pk}):
            with pytest.raises(KeyDuplicate):
                table.update(pk, changes)
            return
        returned = table.update(pk, changes)
        assert canonical_record(returned) == canonical_record(new)
        del slot.view[pk]
        slot.view[new_pk] = new
        slot.written |= {pk, new_pk}

    @rule(number=SLOTS, pk=PKS)
    def delete(self, number: int, pk: PK) -> None:
        slot = self._slot(number)
        table = slot.txn.table("t")
        if pk not in slot.view:
            with pytest.raises(RecordNotFound):
                table.delete(pk)
            return
        table.delete(pk)
        del slot.view[pk]
        slot.written.add(pk)

    # -------------------------------------------------------------- reads

    @rule(number=SLOTS, pk=PKS)
    def get(self, number: int, pk: PK) -> None:
        slot = self._slot(number)
        table = slot.txn.table("t")
        assert canonical_record(table.get(pk)) == canonical_record(slot.view.get(pk))
        assert canonical_record(table.get(list(pk))) == canonical_record(slot.view.get(pk))
        assert (pk in table) == (pk in slot.view)

    @rule(number=SLOTS, scan=SCANS)
    def scan(self, number: int, scan: tuple[Any, ...]) -> None:
        index, start, stop, reverse, bare = scan
        slot = self._slot(number)
        found = list(
            slot.txn.table("t").scan(
                index=index,
                start=_as_bound(start, bare),
                stop=_as_bound(stop, bare),
                reverse=reverse,
            )
        )
        assert [canonical_record(r) for r in found] == [
            canonical_record(r) for r in expected_scan(slot.view, index, start, stop, reverse)
        ]

    @rule(number=SLOTS, scan=SCANS, taken=st.integers(0, 4), record=RECORDS, pk=PKS)
    def scan_while_writing(
        self, number: int, scan: tuple[Any, ...], taken: int, record: Record, pk: PK
    ) -> None:
        """A scan yields the view as of its call: writes made while iterating (an upsert and
        a delete here) neither break it nor show up in it."""
        index, start, stop, reverse, bare = scan
        slot = self._slot(number)
        expected = expected_scan(slot.view, index, start, stop, reverse)
        rows = slot.txn.table("t").scan(
            index=index, start=_as_bound(start, bare), stop=_as_bound(stop, bare), reverse=reverse
        )
        found = list(itertools.islice(rows, taken))
        self.upsert(number, record)
        self.delete(number, pk)
        found.extend(rows)
        assert [canonical_record(r) for r in found] == [canonical_record(r) for r in expected]

    # -------------------------------------------------------------- ends

    @rule(number=SLOTS, lazy=st.booleans())
    def commit(self, number: int, lazy: bool) -> None:
        slot = self._slot(number)
        self.slots[number] = None
        if not slot.written:
            slot.txn.commit(lazy=lazy)
            if not lazy:  # a durable commit waits for the lazy ones it could have seen
                self.durable, self.lazy = self.committed, []
            return
        others = set().union(*self.commits[slot.snapshot :])
        if slot.written & others:
            with pytest.raises(WriteConflict):
                slot.txn.commit(lazy=lazy)
            assert not slot.txn.is_active
            return
        merged = dict(self.committed)
        for pk in slot.written:
            if pk in slot.view:
                merged[pk] = slot.view[pk]
            else:
                merged.pop(pk, None)
        if any(unique_clash(merged, merged[pk], {pk}) for pk in slot.written if pk in merged):
            with pytest.raises(KeyDuplicate):
                slot.txn.commit(lazy=lazy)
            assert not slot.txn.is_active
            return
        slot.txn.commit(lazy=lazy)
        self.commits.append(set(slot.written))
        if lazy:
            self.lazy.append(merged)
        else:
            self.durable, self.lazy = merged, []

    @rule(number=SLOTS)
    def rollback(self, number: int) -> None:
        slot = self.slots[number]
        if slot is not None:
            slot.txn.rollback()
            self.slots[number] = None

    @rule()
    def checkpoint(self) -> None:
        """A checkpoint makes the log durable up to its position first (WAL rule, D3): every
        commit before it survives a crash."""
        self.instance.checkpoint()
        self.durable, self.lazy = self.committed, []

    @precondition(lambda self: self.slots == [None, None])
    @rule()
    def close_and_reopen(self) -> None:
        self.instance.close()
        self.durable, self.lazy = self.committed, []
        self._check_integrity_and_reopen()
        assert self.read_committed() == _canonical_state(self.durable)

    @rule()
    def crash_and_reopen(self) -> None:
        self.instance.simulate_crash()
        self.slots = [None, None]  # open transactions die with the process
        self.instance = self._open()
        found = self.read_committed()
        candidates = [self.durable, *self.lazy]
        assert any(found == _canonical_state(c) for c in candidates), (
            "after a crash the state must be a committed prefix"
        )
        self.durable = next(c for c in reversed(candidates) if found == _canonical_state(c))
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

    def read_committed(self) -> dict[PK, Any]:
        with self.instance.database("main").transaction() as txn:
            return {pk_of(r): canonical_record(r) for r in txn.table("t").scan()}

    @invariant()
    def views_match(self) -> None:
        for slot in self.slots:
            if slot is not None:
                found = [canonical_record(r) for r in slot.txn.table("t").scan()]
                assert found == [canonical_record(r) for r in expected_scan(slot.view)]
        assert self.read_committed() == _canonical_state(self.committed)


def _canonical_state(state: dict[PK, Record]) -> dict[PK, Any]:
    return {pk: canonical_record(r) for pk, r in state.items()}


def _as_bound(bound: tuple[Any, ...] | None, bare: bool) -> Any:
    """A bound as a caller gives it: None (unbounded), a tuple, or a lone non-NULL value."""
    if bare and bound is not None and len(bound) == 1 and bound[0] is not None:
        return bound[0]
    return bound


def expected_scan(
    view: dict[PK, Record],
    index: str | None = None,
    start: tuple[Any, ...] | None = None,
    stop: tuple[Any, ...] | None = None,
    reverse: bool = False,
) -> list[Record]:
    """What a scan returns according to the model: the records in key order (index columns,
    then the primary key's), from `start` (inclusive) to `stop` (exclusive)."""
    columns = (*INDEXES[index][0], *PRIMARY_KEY) if index else PRIMARY_KEY
    low = None if start is None else bound_key(start, columns)
    high = None if stop is None else bound_key(stop, columns)
    rows = sorted(view.values(), key=lambda r: key_of(r, columns))
    rows = [
        r
        for r in rows
        if (low is None or key_of(r, columns) >= low)
        and (high is None or key_of(r, columns) < high)
    ]
    return rows[::-1] if reverse else rows


IndexModel.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestIndexModel = IndexModel.TestCase


class SoakIndexModel(IndexModel):
    timers: ClassVar[dict[str, Any]] = {
        "lazy_flush_interval": 0.05,
        "checkpoint_interval": 0.5,
        "checkpoint_depth": 64 * 1024,
    }


SoakIndexModel.TestCase.settings = settings(
    max_examples=2000,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestSoakIndexModel = pytest.mark.soak(SoakIndexModel.TestCase)

"""Schema changes of existing tables (`Transaction.create_index`, `drop_index`, `add_column`,
`drop_column` and their `Database` conveniences): what each writes, what it refuses, how it
conflicts with concurrent writers, and that recovery and the offline integrity check agree.

The reference for an index built later is the same index defined at `create_table`: the two
must hold the same entries (byte for byte, after the object id) for the same rows.
"""

from __future__ import annotations

import math
import os
import threading
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import pytest

import jetstore
from instance_store import Store
from jetstore.errors import (
    ColumnDuplicate,
    ColumnIndexed,
    ColumnNotFound,
    IndexDuplicate,
    IndexNotFound,
    KeyDuplicate,
    NullInvalid,
    ObjectNotFound,
    VersionStoreOutOfMemory,
    WriteConflict,
)
from jetstore.format.filenames import parse_database_file_name
from jetstore.instance.database import SCHEMA_CHANGE_ATTEMPTS
from jetstore.tables.catalog import object_prefix
from jetstore.tables.keys import prefix_successor
from jetstore.tables.schema import TableDef, decode_table_def, encode_table_def
from jetstore.tools.integrity import check_integrity
from jetstore.transactions.transaction import Transaction, TransactionState

COLUMNS = [("id", "int"), ("a", "text"), ("b", "int"), ("f", "float"), ("d", "bytes")]
INDEXES = [
    ("by_a", "a"),
    ("u_a", "a", True),
    ("by_ab", ["a", "b"]),
    ("u_bf", ["b", "f"], True),
    ("by_d", "d"),
]
# On 4 KiB pages, the largest column of its record: kept as a long value, yet indexable.
LONG = "L" * 995


def tricky_rows() -> list[dict[str, Any]]:
    """Rows whose index keys hit the edge cases: NULLs (repeated, also under the unique
    indexes), values extended by NUL bytes, -0.0 and 0.0, NaN, an indexed long value."""
    rows: list[dict[str, Any]] = [
        {"id": 1, "a": None, "b": 1, "f": 0.0, "d": b""},
        {"id": 2, "a": None, "b": 1, "f": -0.0, "d": b"\x00"},
        {"id": 3, "a": "x", "b": None, "f": math.nan, "d": None},
        {"id": 4, "a": "x\x00", "b": None, "f": math.nan, "d": b"\xff"},
        {"id": 5, "a": "", "b": 2, "f": None, "d": b"\x00\x00"},
        {"id": 6, "a": "y", "b": 2, "f": math.inf, "d": None},
        {"id": 7, "a": LONG, "b": 3, "f": 1.5, "d": b"z" * 994},
    ]
    return rows


def index_entries(txn: Transaction, table: str, index: str) -> list[tuple[bytes, bytes]]:
    """Entries of `index` without their object id (which differs between tables)."""
    definition = txn.table(table).definition
    prefix = object_prefix(definition.index_id(index))
    return [(k[4:], v) for k, v in txn.items(prefix, prefix_successor(prefix))]


def integrity_ok(store: Store) -> None:
    """Close the instance, check every database file offline, open it again."""
    store.inst.close()
    for name in os.listdir(store.path):
        if parse_database_file_name(name):
            report = check_integrity(str(store.path / name))
            assert report.ok, [str(p) for p in report.problems]
    store.inst = jetstore.open(store.path, **store.options)
    store.db = store.inst.database("main")


def crash_and_reopen(store: Store) -> None:
    store.inst.simulate_crash()
    store.inst = jetstore.open(store.path, **store.options)
    store.db = store.inst.database("main")


def definition(store: Store, table: str = "t") -> TableDef:
    with store.db.transaction() as txn:
        return txn.table(table).definition


def same_scans(txn: Transaction, early: str, late: str, index: str) -> None:
    def canon(rows: list[dict[str, Any]]) -> list[str]:
        return [repr(sorted(r.items())) for r in rows]

    assert index_entries(txn, early, index) == index_entries(txn, late, index)
    assert canon(list(txn.table(early).scan(index=index))) == canon(
        list(txn.table(late).scan(index=index))
    )
    assert canon(list(txn.table(early).scan(index=index, reverse=True))) == canon(
        list(txn.table(late).scan(index=index, reverse=True))
    )


# --------------------------------------------------------------------------- create_index


@pytest.fixture
def small_pages(tmp_path: Path) -> Any:
    store = Store(tmp_path, page_size=4096)
    yield store
    store.close()


def test_index_built_later_equals_index_defined_at_create(small_pages: Store) -> None:
    store = small_pages
    store.db.create_table("early", COLUMNS, "id", indexes=INDEXES)
    store.db.create_table("late", COLUMNS, "id")
    with store.db.transaction() as txn:
        for row in tricky_rows():
            txn.table("early").insert(row)
            txn.table("late").insert(row)
        lv = object_prefix(txn.table("late").definition.lv_id)
        assert txn.items(lv, prefix_successor(lv))  # row 7's indexed value is a long value
    for spec in INDEXES:
        store.db.create_index("late", *spec)  # type: ignore[arg-type]
    with store.db.transaction() as txn:
        assert txn.table("late").definition.indexes == txn.table("early").definition.indexes
        for spec in INDEXES:
            same_scans(txn, "early", "late", spec[0])
    # Maintained like a create-time index from then on.
    with store.db.transaction() as txn:
        for table in ("early", "late"):
            t = txn.table(table)
            t.update(1, {"a": "moved", "b": 9})
            t.delete(3)
            t.insert({"id": 8, "a": None, "b": 1, "f": 0.0, "d": b"\x00"})
            with pytest.raises(KeyDuplicate):
                t.insert({"id": 9, "a": "y"})  # u_a
    integrity_ok(store)
    with store.db.transaction() as txn:
        for spec in INDEXES:
            same_scans(txn, "early", "late", spec[0])


def test_create_index_sees_the_transactions_own_rows_and_later_writes_maintain_it(
    store: Store,
) -> None:
    store.db.create_table("t", COLUMNS, "id")
    with store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"id": 1, "a": "p"})
        new = txn.create_index("t", "by_a", "a")
        assert t.definition is new  # the Table already held follows the new definition
        t.insert({"id": 2, "a": "o"})
        assert [r["id"] for r in t.scan(index="by_a")] == [2, 1]
    with store.db.transaction() as txn:
        assert [r["id"] for r in txn.table("t").scan(index="by_a")] == [2, 1]
    integrity_ok(store)


def test_unique_index_over_duplicates_fails_and_leaves_nothing(store: Store) -> None:
    store.db.create_table("t", COLUMNS, "id")
    with store.db.transaction() as txn:
        for i, a in enumerate(["p", None, "q", None, "p"]):
            txn.table("t").insert({"id": i, "a": a, "b": i})
    before = definition(store)
    with store.db.transaction() as txn:
        size = txn.size
        with pytest.raises(KeyDuplicate) as caught:
            txn.create_index("t", "u_a", "a", unique=True)
        message = str(caught.value)
        assert "'u_a'" in message and "'t'" in message and "('p',)" in message
        assert "(0,)" in message and "(4,)" in message
        assert txn.size == size and txn.is_active  # nothing written, still usable
        assert txn.table("t").definition == before
        # NULLs repeat in a unique index, as at create_table.
        txn.create_index("t", "u_b", "b", unique=True)
    with pytest.raises(KeyDuplicate):
        store.db.create_index("t", "u_a", "a", unique=True)
    after = definition(store)
    assert [i.name for i in after.indexes] == ["u_b"]
    integrity_ok(store)


def test_create_index_refusals(store: Store) -> None:
    store.db.create_table("t", COLUMNS, "id", indexes=[("by_a", "a")])
    with pytest.raises(IndexDuplicate, match="'by_a'"):
        store.db.create_index("t", "by_a", "b")
    with pytest.raises(ColumnNotFound, match="'nope'"):
        store.db.create_index("t", "by_x", ["a", "nope"])
    with pytest.raises(ObjectNotFound, match="'missing'"):
        store.db.create_index("missing", "by_a", "a")
    assert definition(store).indexes == (definition(store).index("by_a"),)


def test_create_index_over_the_transaction_bound_says_what_to_do(tmp_path: Path) -> None:
    store = Store(tmp_path, max_transaction_bytes=64 * 1024)
    try:
        store.db.create_table("t", COLUMNS, "id")
        for start in range(0, 4000, 500):
            with store.db.transaction() as txn:
                for i in range(start, start + 500):
                    txn.table("t").insert({"id": i, "a": f"value {i}"})
        with store.db.transaction() as txn:
            with pytest.raises(VersionStoreOutOfMemory) as caught:
                txn.create_index("t", "by_a", "a")
            assert "'by_a'" in str(caught.value) and "max_transaction_bytes" in str(caught.value)
            assert txn.is_active and not txn.operations
        assert definition(store).indexes == ()
    finally:
        store.close()


def test_create_index_rolled_back_or_crashed_before_commit_leaves_nothing(store: Store) -> None:
    store.db.create_table("t", COLUMNS, "id")
    with store.db.transaction() as txn:
        for i in range(50):
            txn.table("t").insert({"id": i, "a": str(i % 7)})
    txn = store.db.transaction()
    txn.create_index("t", "by_a", "a")
    txn.rollback()
    assert definition(store).indexes == ()
    txn = store.db.transaction()
    txn.create_index("t", "by_a", "a")
    crash_and_reopen(store)
    assert definition(store).indexes == ()
    integrity_ok(store)


def test_create_index_survives_a_crash(store: Store) -> None:
    store.db.create_table("t", COLUMNS, "id")
    with store.db.transaction() as txn:
        for i in range(300):
            txn.table("t").insert({"id": i, "a": str(i % 7), "d": b"x" * (i % 5)})
    store.db.create_index("t", "by_a", ["a", "d"])
    with store.db.transaction() as txn:
        expected = index_entries(txn, "t", "by_a")
        assert len(expected) == 300
    crash_and_reopen(store)
    with store.db.transaction() as txn:
        assert index_entries(txn, "t", "by_a") == expected
    integrity_ok(store)


# --------------------------------------------------------------------------- concurrency

SCHEMA_CHANGES = {
    "create_index": lambda txn: txn.create_index("t", "by_a", "a"),
    "drop_index": lambda txn: txn.drop_index("t", "by_b"),
    "add_column": lambda txn: txn.add_column("t", "extra", "int", default=1),
    "drop_column": lambda txn: txn.drop_column("t", "f"),
}


def populated(store: Store) -> None:
    store.db.create_table("t", COLUMNS, "id", indexes=[("by_b", "b")])
    store.db.create_table("other", [("id", "int")], "id")
    with store.db.transaction() as txn:
        for i in range(20):
            txn.table("t").insert({"id": i, "a": f"a{i % 3}", "b": i, "f": 0.5, "d": b"x"})


@pytest.mark.parametrize("change", sorted(SCHEMA_CHANGES))
@pytest.mark.parametrize("opened_before", [True, False])
def test_older_writer_committing_after_a_schema_change_conflicts(
    store: Store, change: str, opened_before: bool
) -> None:
    populated(store)
    writer = store.db.transaction()
    reader = store.db.transaction()
    if opened_before:
        writer.table("t")
    with store.db.transaction() as ddl:
        SCHEMA_CHANGES[change](ddl)
    # The writer's definition is its snapshot's: it did not maintain the new index, or
    # writes the old record layout.
    writer.table("t").insert({"id": 100, "a": "new", "b": 100})
    with pytest.raises(WriteConflict, match=r"'t'.*definition another transaction changed"):
        writer.commit()
    assert writer.state is TransactionState.ROLLED_BACK
    # A transaction that only read the table commits its other writes.
    assert len(list(reader.table("t").scan())) == 20
    reader.table("other").insert({"id": 1})
    reader.commit()
    integrity_ok(store)


@pytest.mark.parametrize("change", sorted(SCHEMA_CHANGES))
@pytest.mark.parametrize("written", ["before_change", "after_change"])
def test_schema_change_conflicts_with_a_write_committed_after_its_snapshot(
    store: Store, change: str, written: str
) -> None:
    populated(store)
    ddl = store.db.transaction()
    if written == "after_change":
        SCHEMA_CHANGES[change](ddl)
    with store.db.transaction() as writer:
        writer.table("t").update(3, {"a": "changed"})
    if written == "before_change":
        SCHEMA_CHANGES[change](ddl)  # reads the snapshot: the update is not there
    # drop_column rewrote the record itself: the key-based check names that record first.
    expected = "record with primary key" if change == "drop_column" else "committed a write"
    with pytest.raises(WriteConflict, match=f"table 't'.*{expected}|{expected}.*table 't'"):
        ddl.commit()
    assert ddl.state is TransactionState.ROLLED_BACK
    # Retried on a new snapshot, it sees the write.
    with store.db.transaction() as ddl:
        SCHEMA_CHANGES[change](ddl)
        if change == "create_index":
            assert [r["id"] for r in ddl.table("t").scan(index="by_a", start="c")] == [3]
    integrity_ok(store)


def test_schema_change_commits_beside_writes_to_other_tables(store: Store) -> None:
    populated(store)
    ddl = store.db.transaction()
    ddl.create_index("t", "by_a", "a")
    with store.db.transaction() as writer:
        writer.table("other").insert({"id": 5})
    with store.db.transaction() as old_reader_of_t:
        old_reader_of_t.table("t").get(1)
    ddl.commit()
    assert [i.name for i in definition(store).indexes] == ["by_b", "by_a"]


def test_two_schema_changes_of_one_table_conflict(store: Store) -> None:
    populated(store)
    first, second = store.db.transaction(), store.db.transaction()
    first.add_column("t", "x", "int")
    second.add_column("t", "y", "int")
    first.commit()
    with pytest.raises(WriteConflict, match="definition of table 't'"):
        second.commit()
    assert [c.name for c in definition(store).columns][-1] == "x"


def test_database_schema_change_is_retried_after_a_conflict(store: Store) -> None:
    """The convenience retries on a new snapshot, as create_table does."""
    populated(store)
    writes = iter(range(200, 202))
    original = store.db.transaction

    def interfering() -> Transaction:
        txn = original()
        value = next(writes, None)
        if value is not None:  # a write lands after each of the first two snapshots
            with original() as writer:
                writer.table("t").insert({"id": value, "a": "late"})
        return txn

    store.db.transaction = interfering  # type: ignore[method-assign]
    try:
        store.db.create_index("t", "by_a", "a")
    finally:
        del store.db.transaction
    with store.db.transaction() as txn:
        assert [r["id"] for r in txn.table("t").scan(index="by_a", start="late")] == [200, 201]


def test_database_create_index_rebuilds_after_a_concurrent_writer_and_matches_a_fresh_build(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer thread commits inserts, an update and a delete to the table while the first
    attempt's index is built (after the build, before its commit): that commit conflicts,
    the second attempt rebuilds on a snapshot holding the writes, and the index equals one
    built from scratch over the same rows."""
    store.db.create_table("t", COLUMNS, "id")
    with store.db.transaction() as txn:
        for i, row in enumerate([*tricky_rows(), *({"id": 100 + i} for i in range(200))]):
            txn.table("t").insert({**row, "a": row.get("a", f"a{i % 13}"), "b": i})
    built, written = threading.Event(), threading.Event()

    def writer() -> None:
        built.wait(30)
        with store.db.transaction() as txn:
            t = txn.table("t")
            t.insert({"id": 1000, "a": "from the writer", "b": -1})
            t.update(100, {"a": "changed", "b": 7})
            t.delete(101)
        written.set()

    attempts = 0
    original = Transaction.create_index

    def build_then_let_the_writer_commit(self: Transaction, *args: Any, **kw: Any) -> TableDef:
        nonlocal attempts
        attempts += 1
        new = original(self, *args, **kw)
        if attempts == 1:
            built.set()
            assert written.wait(30)
        return new

    monkeypatch.setattr(Transaction, "create_index", build_then_let_the_writer_commit)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        store.db.create_index("t", "u_ab", ["a", "b"], unique=True)
    finally:
        built.set()
        thread.join()
    monkeypatch.undo()
    assert attempts == 2
    store.db.create_table("fresh", COLUMNS, "id", indexes=[("u_ab", ["a", "b"], True)])
    with store.db.transaction() as txn:
        for row in txn.table("t").scan():
            txn.table("fresh").insert(row)
    with store.db.transaction() as txn:
        assert len(index_entries(txn, "t", "u_ab")) == 7 + 200
        same_scans(txn, "fresh", "t", "u_ab")
        found = txn.table("t").scan(index="u_ab", start=("from the writer",))
        assert [r["id"] for r in found][:1] == [1000]
    integrity_ok(store)


def test_database_create_index_gives_up_after_its_attempts_and_says_so(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that commits during every attempt: the convenience stops after
    SCHEMA_CHANGE_ATTEMPTS, and its error says how many attempts it made and what to do."""
    populated(store)
    attempts = 0
    original = Transaction.create_index

    def build_then_a_write_commits(self: Transaction, *args: Any, **kw: Any) -> TableDef:
        nonlocal attempts
        attempts += 1
        new = original(self, *args, **kw)
        with store.db.transaction() as writer:
            writer.table("t").insert({"id": 1000 + attempts, "a": "busy"})
        return new

    monkeypatch.setattr(Transaction, "create_index", build_then_a_write_commits)
    with pytest.raises(WriteConflict) as caught:
        store.db.create_index("t", "by_a", "a")
    monkeypatch.undo()
    assert attempts == SCHEMA_CHANGE_ATTEMPTS == 5
    message = str(caught.value)
    assert caught.value.code == -1102
    assert "index 'by_a' of table 't' gave up after 5 attempts" in message
    assert "record with primary key" in message or "committed a write" in message
    assert "pause the application's writes to the table" in caught.value.hint
    assert isinstance(caught.value.__cause__, WriteConflict)
    assert [i.name for i in definition(store).indexes] == ["by_b"]
    assert len(store.read("t")) == 20 + 5  # every writer's commit stands
    store.db.create_index("t", "by_a", "a")  # once the writes pause, it goes through
    integrity_ok(store)


# --------------------------------------------------------------------------- drop_index


def test_drop_index_removes_definition_and_entries(store: Store) -> None:
    populated(store)
    with store.db.transaction() as txn:
        index_id = txn.table("t").definition.index_id("by_b")
    new = store.db.drop_index("t", "by_b")
    assert new.indexes == ()
    with store.db.transaction() as txn:
        prefix = object_prefix(index_id)
        assert txn.items(prefix, prefix_successor(prefix)) == []
        with pytest.raises(IndexNotFound, match="'by_b'"):
            list(txn.table("t").scan(index="by_b"))
        txn.table("t").insert({"id": 50, "b": 50})  # no entry under the old id
    with store.db.transaction() as txn:
        assert txn.items(prefix, prefix_successor(prefix)) == []
    with pytest.raises(IndexNotFound, match=r"'by_b'.*'t'"):
        store.db.drop_index("t", "by_b")
    integrity_ok(store)
    # The name can be used again, for another index under a new object id.
    store.db.create_index("t", "by_b", ["a", "b"], unique=True)
    with store.db.transaction() as txn:
        assert txn.table("t").definition.index_id("by_b") != index_id
        assert len(index_entries(txn, "t", "by_b")) == 21
    integrity_ok(store)


def filled_under_the_bound(store: Store, indexes: list[tuple[str, str]]) -> None:
    """Table t with 4000 rows, written in transactions under a 64 KiB bound: deleting all the
    entries of its index (or rewriting its records) in one transaction is over it."""
    store.db.create_table("t", COLUMNS, "id", indexes=indexes)
    for start in range(0, 4000, 500):
        with store.db.transaction() as txn:
            for i in range(start, start + 500):
                txn.table("t").insert({"id": i, "a": f"value {i}"})


def test_drop_index_over_the_transaction_bound_leaves_the_transaction_usable(
    tmp_path: Path,
) -> None:
    """Regression: drop_index deleted entries until the bound was crossed, which rolled the
    whole transaction back (its earlier writes with it), where create_index and drop_column
    refuse before writing and leave the transaction usable."""
    store = Store(tmp_path, max_transaction_bytes=64 * 1024)
    try:
        filled_under_the_bound(store, [("by_a", "a")])
        with store.db.transaction() as txn:
            txn.table("t").insert({"id": 5000, "a": "mine"})  # an earlier write of its own
            size, operations = txn.size, dict(txn.operations)
            with pytest.raises(VersionStoreOutOfMemory) as caught:
                txn.drop_index("t", "by_a")
            assert caught.value.code == -1069
            message = str(caught.value)
            assert "index 'by_a' of table 't'" in message and "nothing was written" in message
            assert "max_transaction_bytes" in caught.value.hint
            # Its own writes took part of the bound: the way out names them.
            assert "in a transaction of its own" in caught.value.hint
            assert txn.is_active and txn.size == size and txn.operations == operations
            assert [i.name for i in txn.table("t").definition.indexes] == ["by_a"]
            txn.table("t").insert({"id": 5001, "a": "still usable"})  # maintains by_a
        with store.db.transaction() as txn:
            found = txn.table("t").scan(index="by_a", start="m", stop="t")
            assert [r["id"] for r in found] == [5000, 5001]
            assert len(index_entries(txn, "t", "by_a")) == 4002
        # Alone in its transaction, the same drop is refused the same way (no hint about
        # other changes), and the table keeps its index.
        with store.db.transaction() as txn:
            with pytest.raises(VersionStoreOutOfMemory) as caught:
                txn.drop_index("t", "by_a")
            assert "in a transaction of its own" not in caught.value.hint
            assert txn.is_active and not txn.operations
        with pytest.raises(VersionStoreOutOfMemory, match="'by_a'"):
            store.db.drop_index("t", "by_a")
        assert [i.name for i in definition(store).indexes] == ["by_a"]
        integrity_ok(store)
    finally:
        store.close()
    # What the message says works: a larger bound.
    store = Store(tmp_path, max_transaction_bytes=1024 * 1024)
    try:
        assert store.db.drop_index("t", "by_a").indexes == ()
        integrity_ok(store)
    finally:
        store.close()


def test_add_column_near_the_transaction_bound_leaves_the_transaction_usable(
    tmp_path: Path,
) -> None:
    """add_column writes only the definition, but a transaction with less room left than that
    is refused before the write, as the other schema changes are, not rolled back."""
    store = Store(tmp_path, max_transaction_bytes=64 * 1024)
    try:
        populated(store)
        with store.db.transaction() as txn:
            i = 0
            while store.db.max_transaction_bytes - txn.size > 150:
                txn.table("other").insert({"id": i})
                i += 1
            size = txn.size
            with pytest.raises(VersionStoreOutOfMemory) as caught:
                txn.add_column("t", "extra", "int", default=1)
            assert "column 'extra' to table 't'" in str(caught.value)
            assert "in a transaction of its own" in caught.value.hint
            assert txn.is_active and txn.size == size
            assert "extra" not in txn.table("t").definition.column_names
        assert len(store.read("other")) == i
        assert "extra" not in definition(store).column_names
    finally:
        store.close()


def test_a_schema_change_over_the_bound_names_the_transactions_own_changes_only_if_any(
    tmp_path: Path,
) -> None:
    """Regression: create_index and drop_column over the bound never said that the
    transaction's own earlier changes took part of it (drop_index and drop_table did), and
    add_column told a transaction without any to commit its other changes first."""
    store = Store(tmp_path, max_transaction_bytes=64 * 1024)
    try:
        filled_under_the_bound(store, [])
        changes = {
            "create_index": lambda txn: txn.create_index("t", "by_a", "a"),
            "drop_column": lambda txn: txn.drop_column("t", "a"),
            # A definition larger than the whole bound (its default).
            "add_column": lambda txn: txn.add_column("t", "c", "text", default="z" * 70_000),
        }
        for name, change in changes.items():
            for own in (True, False):
                with store.db.transaction() as txn:
                    if own:
                        txn.table("t").insert({"id": 5000, "a": "mine"})
                    size = txn.size
                    with pytest.raises(VersionStoreOutOfMemory) as caught:
                        change(txn)
                    hint = caught.value.hint
                    assert "max_transaction_bytes" in hint, name
                    assert ("in a transaction of its own" in hint) is own, (name, hint)
                    assert ("other changes" in hint) is own, (name, hint)
                    assert txn.is_active and txn.size == size
                    txn.rollback()
        assert definition(store).column_names == ("id", "a", "b", "f", "d")
    finally:
        store.close()


# --------------------------------------------------------------------------- columns


def test_added_column_reads_its_default_in_old_rows_without_rewriting_them(store: Store) -> None:
    populated(store)
    with store.db.transaction() as txn:
        t = txn.table("t")
        before = dict(txn.items(object_prefix(t.definition.table_id), None))
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    store.db.add_column("t", "n", "int", nullable=False, default=42)
    store.db.add_column("t", "note", "text")
    store.db.add_column("t", "at", "datetime", default=when)
    with store.db.transaction() as txn:
        t = txn.table("t")
        # Old records are the bytes they were; they read the defaults.
        prefix = object_prefix(t.definition.table_id)
        assert {k: v for k, v in txn.items(prefix, prefix_successor(prefix))} == {
            k: v for k, v in before.items() if k.startswith(prefix)
        }
        assert t.get(1) == {
            "id": 1, "a": "a1", "b": 1, "f": 0.5, "d": b"x", "n": 42, "note": None, "at": when
        }  # fmt: skip
        assert all(r["n"] == 42 and r["note"] is None for r in t.scan())
        t.insert({"id": 30, "a": "new"})  # new rows take the defaults too
        t.insert({"id": 31, "n": 7, "note": "hi"})
        assert t.get(30)["n"] == 42 and t.get(31)["n"] == 7  # type: ignore[index]
        t.update(2, {"note": "updated"})
        assert t.get(2)["n"] == 42  # type: ignore[index]
    # An index created on the new column afterwards holds the defaults, exactly as an index
    # defined with the column at create_table would.
    store.db.create_index("t", "by_n", ["n", "note"])
    store.db.create_table(
        "early",
        [*COLUMNS, ("n", "int", False, 42), ("note", "text"), ("at", "datetime", True, when)],
        "id",
        indexes=[("by_n", ["n", "note"])],
    )
    with store.db.transaction() as txn:
        for row in txn.table("t").scan():
            txn.table("early").insert(row)
    with store.db.transaction() as txn:
        same_scans(txn, "early", "t", "by_n")
    integrity_ok(store)
    crash_and_reopen(store)
    with store.db.transaction() as txn:
        assert txn.table("t").get(5)["n"] == 42  # type: ignore[index]
        same_scans(txn, "early", "t", "by_n")


def test_add_column_refusals(store: Store) -> None:
    populated(store)
    with pytest.raises(NullInvalid, match=r"'n'.*'t'.*default"):
        store.db.add_column("t", "n", "int", nullable=False)
    with pytest.raises(ColumnDuplicate, match="'a'"):
        store.db.add_column("t", "a", "int")
    with pytest.raises(jetstore.errors.InvalidParameter):
        store.db.add_column("t", "n", "int", default="text")
    assert len(definition(store).columns) == len(COLUMNS)


def test_added_float_columns_keep_their_own_signed_zero_default(store: Store) -> None:
    """Regression (model test): two transactions adding a float column whose defaults differ
    only in the sign of zero. Python's -0.0 == 0.0 made the two definitions equal, so the
    second was served the first one's record codec (`Database.codec_for`) and its old rows
    read 0.0, before the commit and after, until the instance closed."""
    store.db.create_table("z", [("k", "int")], "k")
    with store.db.transaction() as txn:
        txn.table("z").insert({"k": 1})
    first, second = store.db.transaction(), store.db.transaction()
    first.add_column("z", "f", "float", default=0.0)
    assert math.copysign(1.0, first.table("z").get(1)["f"]) == 1.0  # type: ignore[index, arg-type]
    second.add_column("z", "f", "float", default=-0.0)
    assert math.copysign(1.0, second.table("z").get(1)["f"]) == -1.0  # type: ignore[index, arg-type]
    first.rollback()
    second.commit()

    def check() -> None:
        with store.db.transaction() as txn:
            value = txn.table("z").get(1)["f"]  # type: ignore[index]
            assert math.copysign(1.0, value) == -1.0  # type: ignore[arg-type]

    store.checked_twice(check)


def test_added_column_with_an_aware_datetime_default_reads_it_in_utc(store: Store) -> None:
    """Regression (model test): an aware default given in another zone was kept as given, so
    old rows read it in that zone (in the adding transaction, and after its commit while the
    cached codec lived), where every other read of an aware datetime is in UTC, as the row's
    own value and the reopened catalog are."""
    store.db.create_table("z", [("k", "int")], "k")
    with store.db.transaction() as txn:
        txn.table("z").insert({"k": 1})
    given = datetime(2020, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    in_utc = datetime(2020, 1, 1, tzinfo=UTC)

    def reads_utc(txn: Transaction) -> None:
        for row in txn.table("z").scan():
            assert row["d"] == in_utc and row["d"].utcoffset() == timedelta(0)  # type: ignore[union-attr]

    with store.db.transaction() as txn:
        assert txn.add_column("z", "d", "datetime", default=given).columns[-1].default == in_utc
        txn.table("z").insert({"k": 2})
        reads_utc(txn)

    def check() -> None:
        with store.db.transaction() as txn:
            reads_utc(txn)

    store.checked_twice(check)


class _FallBack(tzinfo):
    """A zone whose clocks go back an hour: a wall time of the repeated hour is UTC-4 with
    fold=0 and UTC-5 with fold=1 (as America/New_York at the end of summer time), without
    depending on the system's time zone data."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=-5 if dt is not None and dt.fold else -4)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "FALLBACK"


def test_a_datetime_default_with_fold_1_reads_as_a_stored_value_does(store: Store) -> None:
    """Regression (model test): a datetime default given with fold=1 was kept as given, so
    rows written before the column was added read fold=1 (in the adding transaction, and
    after its commit while the cached codec lived) and fold=0 once the catalog was read
    again. A stored datetime reads fold=0 always (neither the record nor the key format
    keeps fold; an aware value's fold only chooses its instant), so a default is now made
    at `Column` what a stored value reads: every row reads the same value, fold included."""
    store.db.create_table("z", [("k", "int")], "k")
    with store.db.transaction() as txn:
        txn.table("z").insert({"k": 1})
    given = {
        "naive": datetime(2021, 11, 7, 1, 30, fold=1),
        "utc": datetime(2021, 11, 7, 5, 30, tzinfo=UTC, fold=1),
        "zone": datetime(2021, 11, 7, 1, 30, tzinfo=_FallBack(), fold=1),
    }
    expected = {
        "naive": datetime(2021, 11, 7, 1, 30),
        "utc": datetime(2021, 11, 7, 5, 30, tzinfo=UTC),
        "zone": datetime(2021, 11, 7, 6, 30, tzinfo=UTC),  # fold=1 chose UTC-5
    }

    def exactly(value: object) -> tuple[object, ...]:
        assert isinstance(value, datetime)
        return (value, value.fold, value.tzinfo, type(value))

    def reads_as_stored(txn: Transaction) -> None:
        rows = {row["k"]: row for row in txn.table("z").scan()}
        assert sorted(rows) == [1, 2, 3]
        for name, value in expected.items():
            for k in (1, 2, 3):  # old row, row given the default, row given the value
                assert exactly(rows[k][name]) == exactly(value), (k, name)
        for column in txn.table("z").definition.columns[1:]:
            assert exactly(column.default) == exactly(expected[column.name])

    with store.db.transaction() as txn:
        for name, value in given.items():
            txn.add_column("z", name, "datetime", default=value)
        txn.table("z").insert({"k": 2})
        txn.table("z").insert({"k": 3, **given})
        reads_as_stored(txn)
        # The record `update` returns is as a read returns it, too.
        returned = txn.table("z").update(3, given)
        assert [exactly(returned[name]) for name in given] == list(map(exactly, expected.values()))
        new = txn.table("z").definition
        assert decode_table_def(encode_table_def(new)) == new
        # The catalog bytes are what they always were: no field for fold.
        assert b"fold" not in encode_table_def(new)

    def check() -> None:
        with store.db.transaction() as txn:
            reads_as_stored(txn)

    store.checked_twice(check)


def test_drop_column_rewrites_records_and_moves_later_long_values(
    small_pages: Store,
) -> None:
    store = small_pages
    columns = [("id", "int"), ("x", "text"), ("gone", "bytes"), ("y", "text"), ("z", "int")]
    store.db.create_table("t", columns, "id", indexes=[("by_z", "z")])
    big = "Y" * 1500
    rows = [
        {"id": 1, "x": "a", "gone": b"g" * 1800, "y": big, "z": 1},  # both kept apart
        {"id": 2, "x": None, "gone": None, "y": "short", "z": None},
        {"id": 3, "x": "b" * 1700, "gone": b"h", "y": big, "z": 3},
    ]
    with store.db.transaction() as txn:
        for row in rows:
            txn.table("t").insert(row)
    new = store.db.drop_column("t", "gone")
    assert [c.name for c in new.columns] == ["id", "x", "y", "z"]
    expected = [{k: v for k, v in row.items() if k != "gone"} for row in rows]

    def check() -> None:
        with store.db.transaction() as txn:
            t = txn.table("t")
            assert list(t.scan()) == expected
            assert [r["id"] for r in t.scan(index="by_z")] == [2, 1, 3]
            t.update(1, {"y": "now short"})
            t.update(1, {"y": big})
            txn.rollback()

    check()
    integrity_ok(store)
    check()
    crash_and_reopen(store)
    check()
    # A column of the same name again is a new, empty column.
    store.db.add_column("t", "gone", "bytes")
    with store.db.transaction() as txn:
        assert all(r["gone"] is None for r in txn.table("t").scan())
    integrity_ok(store)


def test_drop_column_moves_a_long_default_of_an_old_record_out_of_it(
    small_pages: Store,
) -> None:
    """Regression (model test): a record stored before a text column with a long default
    was added decodes with that default; dropping another column rewrote it with the default
    inline, an entry over the page's limit, and the drop failed with the B+tree's
    InvalidParameter. The rewrite now keeps such values apart, as an insert does."""
    store = small_pages
    store.db.create_table("t", [("id", "int"), ("gone", "int"), ("s", "text")], "id")
    with store.db.transaction() as txn:
        for i in range(3):
            txn.table("t").insert({"id": i, "gone": i, "s": "L" * 3000 if i == 2 else "s"})
    long_default = "D" * 3000
    store.db.add_column("t", "d", "text", default=long_default)
    store.db.add_column("t", "e", "bytes", default=b"E" * 2500)
    store.db.drop_column("t", "gone")
    expected = [
        {"id": i, "s": "L" * 3000 if i == 2 else "s", "d": long_default, "e": b"E" * 2500}
        for i in range(3)
    ]

    def check() -> None:
        with store.db.transaction() as txn:
            assert list(txn.table("t").scan()) == expected

    check()
    integrity_ok(store)
    check()
    store.db.drop_column("t", "s")  # the chunks written by the first rewrite move down too
    expected = [{k: v for k, v in row.items() if k != "s"} for row in expected]
    crash_and_reopen(store)
    check()
    integrity_ok(store)
    check()


def test_drop_column_refusals(store: Store) -> None:
    store.db.create_table(
        "t", [("k1", "int"), ("k2", "text"), ("a", "int"), ("b", "int")], ["k1", "k2"],
        indexes=[("by_ab", ["a", "b"])],
    )  # fmt: skip
    for column in ("k1", "k2"):
        with pytest.raises(ColumnIndexed, match=f"'{column}'.*primary key"):
            store.db.drop_column("t", column)
    with pytest.raises(ColumnIndexed, match=r"'b'.*'by_ab'") as caught:
        store.db.drop_column("t", "b")
    assert "drop_index" in caught.value.hint
    with pytest.raises(ColumnNotFound, match="'c'"):
        store.db.drop_column("t", "c")
    assert len(definition(store).columns) == 4


# --------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("change", sorted(SCHEMA_CHANGES))
def test_each_schema_change_is_replayed_after_a_crash(store: Store, change: str) -> None:
    populated(store)
    with store.db.transaction() as txn:
        SCHEMA_CHANGES[change](txn)
        expected_def = txn.table("t").definition
        expected = txn.items(None, None)
    crash_and_reopen(store)
    assert definition(store) == expected_def
    with store.db.transaction() as txn:
        assert txn.items(None, None) == expected
    integrity_ok(store)
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 99, "a": "after", "b": 99})
    integrity_ok(store)


@pytest.mark.parametrize("change", sorted(SCHEMA_CHANGES))
def test_each_schema_change_rolled_back_leaves_nothing(store: Store, change: str) -> None:
    populated(store)
    with store.db.transaction() as txn:
        before = txn.items(None, None)
    txn = store.db.transaction()
    SCHEMA_CHANGES[change](txn)
    txn.rollback()
    with store.db.transaction() as txn:
        assert txn.items(None, None) == before

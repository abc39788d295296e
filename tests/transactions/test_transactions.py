"""Transactions through the public API: commit and rollback, finished transactions, schema
changes, snapshot isolation, reading one's own writes, the memory bound, lazy commits.

"Leaves nothing behind" is checked on the raw tree: `Transaction.iterate(None, None)` lists
every entry of the database's B+tree, so a rollback must give back exactly the entries that
were there before, byte for byte.
"""

from __future__ import annotations

import gc
import sys
from datetime import datetime, timedelta, tzinfo
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import jetstore
import jetstore.instance.database as database_module
from instance_store import LOG, Store
from jetstore.errors import (
    InvalidParameter,
    KeyDuplicate,
    NotInTransaction,
    ObjectNotFound,
    TableDuplicate,
    VersionStoreOutOfMemory,
    WriteConflict,
)
from jetstore.pages.pagefile import DatabaseFile
from jetstore.pages.pointindex import PointReadIndex
from jetstore.tables.catalog import (
    CATALOG_PREFIX,
    NEXT_OBJECT_ID_KEY,
    TABLE_DEF_CHUNK_PREFIX,
    object_prefix,
    table_entry_key,
)
from jetstore.tables.table import OPERATION_OVERHEAD
from jetstore.transactions.transaction import TransactionState


def raw(db: jetstore.Database) -> list[tuple[bytes, bytes]]:
    with db.transaction() as txn:
        return list(txn.iterate(None, None))


def rows(db: jetstore.Database, table: str = "t") -> list[dict[str, object]]:
    with db.transaction() as txn:
        return list(txn.table(table).scan())


def make_table(db: jetstore.Database, name: str = "t") -> None:
    db.create_table(
        name,
        [("id", "int"), ("v", "text"), ("blob", "bytes")],
        "id",
        indexes=[("by_v", "v", True)],
    )


# --------------------------------------------------------------------------- commit/rollback


def test_context_manager_commits_on_exit_and_rolls_back_on_exception(store: Store) -> None:
    make_table(store.db)
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "v": "one"})
    assert txn.state is TransactionState.COMMITTED
    assert rows(store.db) == [{"id": 1, "v": "one", "blob": None}]
    before = raw(store.db)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.db.transaction() as txn:
        t = txn.table("t")
        t.insert({"id": 2, "v": "two"})
        t.update(1, {"v": "uno"})
        raise Boom
    assert txn.state is TransactionState.ROLLED_BACK
    assert raw(store.db) == before
    # A failing write inside the block rolls the whole transaction back too.
    with pytest.raises(KeyDuplicate), store.db.transaction() as txn:
        txn.table("t").insert({"id": 3, "v": "three"})
        txn.table("t").insert({"id": 4, "v": "one"})
    assert raw(store.db) == before
    store.reopen()
    assert rows(store.db) == [{"id": 1, "v": "one", "blob": None}]
    assert raw(store.db) == before


def test_explicit_commit_and_rollback(store: Store) -> None:
    make_table(store.db)
    txn = store.db.transaction()
    assert txn.is_active and txn.commit() is None  # nothing changed: no commit record
    txn = store.db.transaction()
    txn.table("t").insert({"id": 1, "v": "a"})
    position = txn.commit()
    assert isinstance(position, jetstore.LogPosition) and position > jetstore.LogPosition.MIN
    assert txn.commit_position == position and store.db.position >= position
    txn = store.db.transaction()
    txn.table("t").insert({"id": 2, "v": "b"})
    txn.rollback()
    assert not txn.is_active and txn.state is TransactionState.ROLLED_BACK
    txn.rollback()  # rolling back a finished transaction again is harmless
    assert rows(store.db) == [{"id": 1, "v": "a", "blob": None}]
    assert store.db.active_transactions() == 0


def test_rollback_leaves_nothing_after_many_writes_and_a_table_creation(store: Store) -> None:
    make_table(store.db)
    with store.db.transaction() as txn:
        t = txn.table("t")
        for i in range(300):
            t.insert({"id": i, "v": f"v{i}", "blob": bytes([i % 256]) * (i * 37)})
    before = raw(store.db)
    position = store.db.position
    txn = store.db.transaction()
    t = txn.table("t")
    for i in range(300, 2300):  # enough to split and copy many nodes
        t.insert({"id": i, "v": f"v{i}", "blob": b"\x01" * (i % 9000)})
    for i in range(0, 300, 3):
        t.update(i, {"v": f"changed {i}", "blob": b"\x02" * 20_000})
    for i in range(1, 300, 3):
        t.delete(i)
    txn.create_table("fresh", [("k", "text"), ("n", "int")], "k", indexes=[("by_n", "n")])
    txn.table("fresh").insert({"k": "x", "n": 1})
    txn.drop_table("t")
    assert txn.table_names() == ["fresh"]
    assert len(txn.operations) > 2000
    txn.rollback()
    assert raw(store.db) == before
    assert store.db.position == position  # nothing was logged
    assert store.db.table_names() == ["t"]
    store.reopen()
    assert raw(store.db) == before
    with store.db.transaction() as txn, pytest.raises(ObjectNotFound):
        txn.table("fresh")
    # The object ids the rolled-back creation used are free again.
    store.db.create_table("fresh", [("k", "text")], "k")
    with store.db.transaction() as txn:
        assert txn.table("fresh").definition.table_id == txn.table("t").definition.index_ids[-1] + 1


def test_a_finished_transaction_raises_not_in_transaction(store: Store) -> None:
    make_table(store.db)
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "v": "a"})
    committed = txn
    rolled_back = store.db.transaction()
    rolled_back.table("t").insert({"id": 2, "v": "b"})
    rolled_back.rollback()
    with pytest.raises(RuntimeError), store.db.transaction() as failed:
        raise RuntimeError
    for done in (committed, rolled_back, failed):
        for use in (
            lambda d=done: d.table("t"),
            lambda d=done: d.table_names(),
            lambda d=done: d.commit(),
            lambda d=done: d.get(b"\x00"),
            lambda d=done: d.put(b"k", b"v"),
            lambda d=done: d.delete(b"k"),
            lambda d=done: d.iterate(None, None),
            lambda d=done: d.create_table("x", [("id", "int")], "id"),
            lambda d=done: d.drop_table("t"),
        ):
            with pytest.raises(NotInTransaction) as info:
                use()
            assert info.value.code == -1054
    assert rows(store.db) == [{"id": 1, "v": "a", "blob": None}]


def test_an_iterator_stops_when_its_transaction_ends(store: Store) -> None:
    make_table(store.db)
    with store.db.transaction() as txn:
        for i in range(500):
            txn.table("t").insert({"id": i, "v": str(i)})
    txn = store.db.transaction()
    records = txn.table("t").scan()
    entries = txn.iterate(None, None)
    assert next(records)["id"] == 0
    next(entries)
    txn.rollback()
    # Its snapshot's pages may be reused from now on: nothing more is read.
    with pytest.raises(NotInTransaction):
        next(records)
    with pytest.raises(NotInTransaction):
        next(entries)


def reachable(starts: list[object]) -> list[object]:
    """Every object reachable from `starts`, except through the engine's shared state (the
    database and its file, caches and instance: what holds the published tree)."""
    shared = (jetstore.Database, jetstore.Instance, DatabaseFile, PointReadIndex, type, ModuleType)
    seen: dict[int, object] = {}
    todo = list(starts)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, shared):
            continue
        seen[id(obj)] = obj
        todo.extend(gc.get_referents(obj))
    return list(seen.values())


@pytest.mark.parametrize("end", ["commit", "rollback", "close"])
def test_a_finished_transaction_holds_no_tree(store: Store, end: str) -> None:
    """A finished transaction the application still references (with its tables, a frozen
    view, a scan and an iterator begun) holds no node of its snapshot: an old tree version
    stays alive only while someone can read it. Every later use still raises."""
    make_table(store.db)
    with store.db.transaction() as txn:
        for i in range(500):
            txn.table("t").insert({"id": i, "v": str(i)})
    txn = store.db.transaction()
    table = txn.table("t")
    assert table.get(1) is not None
    view = txn.frozen()
    records = table.scan()
    entries = txn.iterate(None, None)
    chunks = view.chunks(None, None)
    assert next(records)["id"] == 0
    next(entries)
    next(chunks)
    root = txn.snapshot_root
    assert root is not None
    if end == "commit":
        table.update(1, {"v": "changed"})
        assert txn.items(None, None)  # the private tree is built
        txn.commit()
    elif end == "rollback":
        table.update(1, {"v": "changed"})
        txn.rollback()
    else:
        store.close()
    if end != "close":
        with store.db.transaction() as other:  # the snapshot is no longer the latest tree
            other.table("t").update(2, {"v": "again"})
    gc.collect()
    held = reachable([txn, table, view, records, entries, chunks])
    assert not any(obj is root for obj in held)
    if end != "close":  # the closed database still publishes it (not the transaction's doing)
        # This frame's `root`, and getrefcount's argument: nothing else holds the old root.
        assert sys.getrefcount(root) == 2
    for use in (
        lambda: next(records),
        lambda: next(entries),
        lambda: next(chunks),
        lambda: table.get(1),
        lambda: view.get(b"\x00"),
        lambda: view.chunks(None, None),
        lambda: txn.get(b"\x00"),
        lambda: txn.frozen(),
    ):
        with pytest.raises(NotInTransaction):
            use()


def test_a_transaction_open_when_the_instance_closes_is_rolled_back_and_says_so(
    tmp_path: Path,
) -> None:
    """A transaction (its tables, its iterators) used after its instance closed used to go on
    reading: pages in the cache answered, a page read from the closed file was
    `InvalidParameter` "this is a bug in the caller", and a commit said "shutting down: look
    at the first error reported". It is rolled back by the close and says so."""
    store = Store(tmp_path, cache_size=128 * 1024)  # 16 pages: scans read the closed file
    make_table(store.db)
    with store.db.transaction() as txn:
        for i in range(2000):
            txn.table("t").insert({"id": i, "v": f"value {i}" * 4})
    store.inst.checkpoint()
    reader = store.db.transaction()
    table = reader.table("t")
    records = table.scan()
    assert next(records)["id"] == 0
    writer = store.db.transaction()
    writer.table("t").insert({"id": 5000, "v": "never committed"})
    store.close()
    for done in (reader, writer):
        assert done.state is TransactionState.ROLLED_BACK
    for use in (
        lambda: next(records),
        lambda: table.get(1500),
        lambda: reader.table("t"),
        lambda: reader.commit(),
        lambda: writer.commit(),
        lambda: writer.table("t").insert({"id": 5001, "v": "x"}),
    ):
        with pytest.raises(NotInTransaction) as info:
            use()
        assert "closed" in str(info.value)
    writer.rollback()  # ending it again is harmless
    store.inst = jetstore.open(tmp_path, **store.options)
    store.db = store.inst.database("main")
    assert len(rows(store.db)) == 2000
    store.close()


def test_an_abandoned_transaction_does_not_stay_registered(store: Store) -> None:
    make_table(store.db)
    txn = store.db.transaction()
    txn.table("t").insert({"id": 1, "v": "a"})
    assert store.db.active_transactions() == 1
    del txn
    gc.collect()
    assert store.db.active_transactions() == 0
    assert rows(store.db) == []


# --------------------------------------------------------------------------- schema changes


def test_schema_changes_are_transactional(store: Store) -> None:
    creator = store.db.transaction()
    creator.create_table("t", [("id", "int"), ("v", "text")], "id", indexes=[("by_v", "v")])
    creator.table("t").insert({"id": 1, "v": "a"})
    assert creator.table_names() == ["t"]
    other = store.db.transaction()
    assert other.table_names() == []
    with pytest.raises(ObjectNotFound):
        other.table("t")
    with pytest.raises(TableDuplicate):
        creator.create_table("t", [("id", "int")], "id")
    creator.rollback()
    for txn in (other, store.db.transaction()):
        assert txn.table_names() == []
        with pytest.raises(ObjectNotFound):
            txn.table("t")
    other.rollback()
    assert raw(store.db) == []

    creator = store.db.transaction()
    creator.create_table("t", [("id", "int"), ("v", "text")], "id", indexes=[("by_v", "v")])
    creator.table("t").insert({"id": 1, "v": "a"})
    before_commit = store.db.transaction()
    creator.commit()
    # A transaction that began before the creation committed still does not see the table.
    with pytest.raises(ObjectNotFound):
        before_commit.table("t")
    before_commit.rollback()
    with pytest.raises(TableDuplicate):
        store.db.create_table("t", [("id", "int")], "id")
    store.reopen()
    assert store.db.table_names() == ["t"]
    assert rows(store.db) == [{"id": 1, "v": "a"}]


def test_drop_table_removes_everything(store: Store) -> None:
    make_table(store.db, "keep")
    # Many columns: the definition is stored in several catalog chunks.
    columns = [("id", "int"), ("v", "text"), ("blob", "bytes")]
    columns += [(f"c{i}", "int") for i in range(300)]
    store.db.create_table("t", columns, "id", indexes=[("by_v", "v", True), ("by_c", ["c1", "c2"])])
    with store.db.transaction() as txn:
        for i in range(200):
            txn.table("keep").insert({"id": i, "v": f"k{i}", "blob": b"k" * (i * 100)})
            txn.table("t").insert(
                {"id": i, "v": f"t{i}", "blob": b"t" * (i * 100), "c1": i % 5, "c2": i}
            )
    keep_before = [(k, v) for k, v in raw(store.db)]
    with store.db.transaction() as txn:
        d = txn.table("t").definition
        t_objects = [object_prefix(o) for o in (d.table_id, d.lv_id, *d.index_ids)]
    assert {k[:4] for k, _ in keep_before} >= set(t_objects)
    assert any(k.startswith(TABLE_DEF_CHUNK_PREFIX) for k, _ in keep_before)

    # A drop that is rolled back changes nothing.
    txn = store.db.transaction()
    txn.drop_table("t")
    assert txn.table_names() == ["keep"]
    with pytest.raises(ObjectNotFound):
        txn.table("t")
    txn.rollback()
    assert raw(store.db) == keep_before

    store.db.drop_table("t")
    after = raw(store.db)
    assert not [k for k, _ in after if k[:4] in t_objects]
    # The catalog keeps only the other table and the object id counter (no definition
    # chunks of the dropped table either).
    assert [k for k, _ in after if k.startswith(CATALOG_PREFIX)] == [
        NEXT_OBJECT_ID_KEY,
        table_entry_key("keep"),
    ]
    # Every other entry is untouched.
    assert [
        (k, v) for k, v in keep_before if k[:4] not in t_objects and k[:4] != CATALOG_PREFIX
    ] == [(k, v) for k, v in after if not k.startswith(CATALOG_PREFIX)]
    with pytest.raises(ObjectNotFound):
        store.db.drop_table("t")
    with store.db.transaction() as txn, pytest.raises(ObjectNotFound):
        txn.table("t")
    # The name can be used again; the new table starts empty with new object ids.
    store.db.create_table("t", [("id", "int"), ("w", "float")], "id")
    with store.db.transaction() as txn:
        assert list(txn.table("t").scan()) == []
        assert object_prefix(txn.table("t").definition.table_id) not in t_objects
        txn.table("t").insert({"id": 1, "w": 1.5})
    store.reopen()
    assert store.db.table_names() == ["keep", "t"]
    assert rows(store.db) == [{"id": 1, "w": 1.5}]
    assert len(rows(store.db, "keep")) == 200


def test_a_table_object_of_a_dropped_table_refuses_every_use(store: Store) -> None:
    make_table(store.db)
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "v": "a"})
    before = raw(store.db)
    txn = store.db.transaction()
    t = txn.table("t")
    txn.drop_table("t")
    for use in (
        lambda: t.insert({"id": 2, "v": "b"}),
        lambda: t.upsert({"id": 1, "v": "b"}),
        lambda: t.update(1, {"v": "b"}),
        lambda: t.delete(1),
        lambda: t.get(1),
        lambda: t.scan(),
    ):
        with pytest.raises(ObjectNotFound):
            use()
    # Re-created in the same transaction: a new table with new object ids, empty.
    txn.create_table("t", [("id", "int")], "id")
    assert list(txn.table("t").scan()) == []
    txn.table("t").insert({"id": 5})
    txn.rollback()
    assert raw(store.db) == before


def test_a_write_racing_a_drop_table_leaves_no_orphans(store: Store) -> None:
    make_table(store.db)
    writer = store.db.transaction()
    t = writer.table("t")
    store.db.drop_table("t")
    t.insert({"id": 1, "v": "late", "blob": b"x" * 10_000})
    try:
        writer.commit()
    except (WriteConflict, ObjectNotFound):
        pass
    assert raw(store.db) == [(NEXT_OBJECT_ID_KEY, raw(store.db)[0][1])]


def test_a_drop_table_racing_a_committed_write_conflicts_and_leaves_no_orphans(
    store: Store,
) -> None:
    # The other order of the race above: the write commits first, after the drop's snapshot.
    # The drop deletes the entries its snapshot holds, so it must conflict with that write
    # (design.md: `Database.drop_table`'s conflict is a write to the table committed
    # meanwhile). It used to commit, leaving the new record, its index entry and its long
    # value under the object ids of a table that no longer exists.
    make_table(store.db)
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "v": "kept"})
    before = raw(store.db)
    dropper = store.db.transaction()
    dropper.drop_table("t")
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 2, "v": "late", "blob": b"x" * 10_000})
    with pytest.raises(WriteConflict, match="table 't'"):
        dropper.commit()
    assert dropper.state is TransactionState.ROLLED_BACK
    assert rows(store.db) == [
        {"id": 1, "v": "kept", "blob": None},
        {"id": 2, "v": "late", "blob": b"x" * 10_000},
    ]
    assert len(raw(store.db)) > len(before)
    # Dropped again, on a snapshot holding the write, the table goes whole.
    store.db.drop_table("t")
    assert raw(store.db) == [(NEXT_OBJECT_ID_KEY, raw(store.db)[0][1])]


def test_a_transaction_that_only_read_a_dropped_table_commits_its_other_writes(
    store: Store,
) -> None:
    # Snapshot isolation conflicts on writes only: a transaction that read table t and wrote
    # to table w must commit although t was dropped (and re-created) after its snapshot.
    make_table(store.db)
    make_table(store.db, "w")
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "v": "a"})
    reader = store.db.transaction()
    seen = [r["v"] for r in reader.table("t").scan()]
    store.db.drop_table("t")
    make_table(store.db)
    reader.table("w").insert({"id": 1, "v": ",".join(seen)})
    reader.commit()
    assert rows(store.db, "w") == [{"id": 1, "v": "a", "blob": None}]
    assert rows(store.db) == []
    # A writer of the dropped table still conflicts, and the error names the table.
    writer = store.db.transaction()
    writer.table("t").insert({"id": 2, "v": "late"})
    store.db.drop_table("t")
    with pytest.raises(WriteConflict, match="table 't'"):
        writer.commit()
    assert store.db.table_names() == ["w"]
    store.reopen()
    assert rows(store.db, "w") == [{"id": 1, "v": "a", "blob": None}]


def test_a_write_conflict_names_the_table_and_key(store: Store) -> None:
    make_table(store.db)
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 7, "v": "a"})
    first, second = store.db.transaction(), store.db.transaction()
    first.table("t").update(7, {"v": "b"})
    second.table("t").update(7, {"v": "c"})
    first.commit()
    with pytest.raises(WriteConflict, match=r"primary key \(7,\).* of table 't'"):
        second.commit()
    # Two creations of one table name in explicit transactions: the later one conflicts,
    # never both win.
    first, second = store.db.transaction(), store.db.transaction()
    first.create_table("u", [("id", "int")], "id")
    second.create_table("u", [("id", "float")], "id")
    first.commit()
    with pytest.raises(WriteConflict, match="the definition of table 'u'"):
        second.commit()
    # A unique key committed concurrently names the index and its table.
    first, second = store.db.transaction(), store.db.transaction()
    first.table("t").insert({"id": 8, "v": "same"})
    second.table("t").insert({"id": 9, "v": "same"})
    first.commit()
    with pytest.raises(KeyDuplicate, match=r"index 'by_v' of table 't'.*'same'"):
        second.commit()
    with store.db.transaction() as txn:
        assert txn.table("u").definition.column("id").type == "int"


def test_a_definition_stored_in_chunks_survives_reopen(store: Store) -> None:
    # Defaults on a few columns only: a record of 2000 NULLs fits, 2000 ints would not.
    columns = [
        jetstore.Column(f"column_number_{i:05d}", "int", default=i if i % 500 == 0 else None)
        for i in range(2000)
    ]
    store.db.create_table("wide", columns, "column_number_00000")
    with store.db.transaction() as txn:
        txn.table("wide").insert({"column_number_00000": 7, "column_number_01999": -1})
    store.reopen()
    with store.db.transaction() as txn:
        t = txn.table("wide")
        assert t.definition.columns == tuple(
            jetstore.Column(c.name, c.type, c.name != "column_number_00000", c.default)
            for c in columns
        )
        record = t.get(7)
        assert record is not None and record["column_number_01999"] == -1
        assert record["column_number_01000"] == 1000 and record["column_number_01001"] is None


def test_create_table_in_a_transaction_rejects_bad_input(store: Store) -> None:
    with store.db.transaction() as txn:
        with pytest.raises(InvalidParameter):
            txn.create_table("t", [("id", "int")], "id", indexes="by_id")
        with pytest.raises(InvalidParameter):
            txn.create_table("1bad", [("id", "int")], "id")
        with pytest.raises(InvalidParameter):
            txn.create_table(None, [("id", "int")], "id")  # type: ignore[arg-type]
        for not_a_list in (b"by_id", {"by_v": ["v"]}, 7):
            with pytest.raises(InvalidParameter, match="indexes must be a list"):
                txn.create_table("t", [("id", "int"), ("v", "int")], "id", indexes=not_a_list)
    assert raw(store.db) == []


def test_create_table_in_a_transaction_takes_indexes_from_any_iterable(store: Store) -> None:
    # As Database.create_table does: a generator of index specs is read once.
    with store.db.transaction() as txn:
        specs = (spec for spec in [("by_v", ["v"]), ("by_w", ["w"])])
        txn.create_table("t", [("id", "int"), ("v", "int"), ("w", "int")], "id", indexes=specs)
        txn.table("t").insert({"id": 1, "v": 5, "w": 9})
    with store.db.transaction() as txn:
        table = txn.table("t")
        assert [index.name for index in table.definition.indexes] == ["by_v", "by_w"]
        assert [row["id"] for row in table.scan(index="by_w")] == [1]


class _TooFarEast(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=30)  # hashing a datetime in this zone raises ValueError


def test_table_names_that_cannot_exist_are_not_found(store: Store) -> None:
    # A name that is unhashable or not encodable (a lone surrogate) is simply no table:
    # ObjectNotFound, or InvalidParameter from create_table, never a TypeError or a
    # UnicodeEncodeError from inside the engine.
    make_table(store.db)
    before = raw(store.db)
    for name in (["t"], {"t": 1}, "\ud800", "t\udfff", datetime(2020, 1, 1, tzinfo=_TooFarEast())):
        with store.db.transaction() as txn:
            with pytest.raises(ObjectNotFound):
                txn.table(name)  # type: ignore[arg-type]
            with pytest.raises(ObjectNotFound):
                txn.drop_table(name)  # type: ignore[arg-type]
            with pytest.raises(InvalidParameter):
                txn.create_table(name, [("id", "int")], "id")  # type: ignore[arg-type]
        with pytest.raises(ObjectNotFound):
            store.db.drop_table(name)  # type: ignore[arg-type]
        with pytest.raises(InvalidParameter):
            store.db.create_table(name, [("id", "int")], "id")  # type: ignore[arg-type]
    assert raw(store.db) == before


# --------------------------------------------------------------------------- isolation


def test_snapshot_isolation_across_commits_and_checkpoints(tmp_path: Path) -> None:
    # A small cache, so old snapshots are read back from disk pages.
    store = Store(tmp_path, cache_size=16 * 8192)
    try:
        make_table(store.db)
        with store.db.transaction() as txn:
            for i in range(400):
                txn.table("t").insert({"id": i, "v": f"v{i}", "blob": bytes([i % 256]) * 5000})
        original = rows(store.db)
        original_raw = raw(store.db)
        reader = store.db.transaction()
        seen: list[list[dict[str, object]]] = []
        for round_ in range(5):
            with store.db.transaction() as txn:
                t = txn.table("t")
                for i in range(round_, 390, 5):
                    t.update(i, {"v": f"r{round_}-{i}", "blob": b"\xee" * (100 * round_)})
                t.delete(399 - round_)
                t.insert({"id": 1000 + round_, "v": f"new{round_}"})
                txn.create_table(f"extra{round_}", [("id", "int")], "id")
            store.inst.checkpoint()
            # The reader still sees exactly what was there when it began.
            assert list(reader.table("t").scan()) == original
            assert reader.table_names() == ["t"]
            assert list(reader.iterate(None, None)) == original_raw
            seen.append(rows(store.db))
        assert reader.table("t").get(399) == original[399]
        assert reader.table("t").get(1000) is None
        reader.rollback()
        assert len(seen[-1]) == 400 and seen[-1][0]["v"] == "r0-0"
        assert seen[-1][4]["v"] == "r4-4" and seen[-1][5]["blob"] == b""
        assert seen[-1] != original
    finally:
        store.close()


def test_read_your_own_writes_and_nobody_elses(store: Store) -> None:
    make_table(store.db)
    with store.db.transaction() as txn:
        for i in range(10):
            txn.table("t").insert({"id": i, "v": f"v{i}"})
    writer = store.db.transaction()
    observer = store.db.transaction()
    t = writer.table("t")
    t.insert({"id": 100, "v": "new", "blob": b"x" * 50_000})
    t.update(3, {"v": "three"})
    t.delete(5)
    t.upsert({"id": 6, "v": "six"})
    assert t.get(100) == {"id": 100, "v": "new", "blob": b"x" * 50_000}
    assert t.get(3) == {"id": 3, "v": "three", "blob": None}
    assert t.get(5) is None
    assert [r["id"] for r in t.scan()] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 100]
    assert [r["v"] for r in t.scan(index="by_v", start="s", stop="u")] == ["six", "three"]
    # The observer sees none of it, before or after the writer commits.
    o = observer.table("t")
    assert o.get(100) is None and o.get(5) is not None and o.get(3)["v"] == "v3"  # type: ignore[index]
    writer.commit()
    assert o.get(100) is None and [r["id"] for r in o.scan()] == list(range(10))
    observer.rollback()
    assert [r["id"] for r in rows(store.db)] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 100]


def test_scans_interleaved_with_writes_in_the_same_transaction(store: Store) -> None:
    """A scan shows the transaction's state when it began, whatever is written meanwhile."""
    make_table(store.db)
    n = 3000
    with store.db.transaction() as txn:
        for i in range(0, 2 * n, 2):
            txn.table("t").insert({"id": i, "v": f"v{i:05d}", "blob": b"b" * (i % 7000)})
    with store.db.transaction() as txn:
        t = txn.table("t")
        start = list(t.scan())
        # Forward scan, inserting right after each record (into the leaf being read), deleting
        # records not reached yet, and rewriting long values of records ahead.
        seen = []
        for record in t.scan():
            i = record["id"]
            assert isinstance(i, int)
            seen.append(record)
            t.insert({"id": i + 1, "v": f"odd{i:05d}"})
            if i + 10 < 2 * n and (i + 10) % 100 != 20:  # not one deleted below
                t.update(i + 10, {"blob": b"u" * 9000})
            if i % 100 == 0 and i + 20 < 2 * n:
                t.delete(i + 20)
        assert seen == start
        # Backward scan over an index while moving entries of that index.
        by_v = list(t.scan(index="by_v", reverse=True))
        seen = []
        for record in t.scan(index="by_v", reverse=True):
            seen.append(record)
            t.update(record["id"], {"v": f"moved {record['id']}"})
        assert seen == by_v
        assert [r["v"] for r in t.scan(index="by_v", stop="moved!")] == sorted(
            f"moved {r['id']}" for r in by_v
        )
        # Raw entries, while removing and re-adding the entry just read (the leaf being read
        # changes under the iterator) and writing past the end.
        entries = list(txn.iterate(None, None))
        got = []
        for key, value in txn.iterate(None, None):
            got.append((key, value))
            if len(got) % 50 == 0:
                txn.delete(key)
                txn.put(key, value)
                txn.put(b"\xff\xff\xff\xff" + key, b"after the end")
        assert got == entries
        for key, _ in txn.items(b"\xff\xff\xff\xff", None):
            txn.delete(key)
        assert list(txn.iterate(None, None)) == entries
        expected_ids = sorted(
            {r["id"] for r in start}
            - {i + 20 for i in range(0, 2 * n, 2) if i % 100 == 0 and i + 20 < 2 * n}
            | {r["id"] + 1 for r in start}  # type: ignore[operator]
        )
        final = list(t.scan())
        assert [r["id"] for r in final] == expected_ids
    assert [r["id"] for r in rows(store.db)] == expected_ids
    store.reopen()
    assert [r["id"] for r in rows(store.db)] == expected_ids


# --------------------------------------------------------------------------- memory bound


def test_version_store_out_of_memory_rolls_back_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter):
        jetstore.open(tmp_path / "x", log_file_size=LOG, max_transaction_bytes=1000)
    store = Store(tmp_path, max_transaction_bytes=64 * 1024)
    try:
        make_table(store.db)
        with store.db.transaction() as txn:
            for i in range(20):
                txn.table("t").insert({"id": i, "v": f"v{i}"})
        before = raw(store.db)
        position = store.db.position
        # Many small writes, and a table creation, in one transaction.
        txn = store.db.transaction()
        txn.create_table("doomed", [("id", "int")], "id")
        with pytest.raises(VersionStoreOutOfMemory) as info:
            for i in range(100, 100_000):
                txn.table("t").insert({"id": i, "v": f"value {i}"})
        assert info.value.code == -1069
        assert txn.state is TransactionState.ROLLED_BACK
        with pytest.raises(NotInTransaction):
            txn.table("t")
        assert raw(store.db) == before and store.db.position == position
        assert store.db.active_transactions() == 0
        # One long value over the bound, inside a `with` block: nothing is committed.
        with pytest.raises(VersionStoreOutOfMemory), store.db.transaction() as txn:
            txn.table("t").update(1, {"v": "changed"})
            txn.table("t").insert({"id": 500, "blob": b"z" * 100_000})
        assert raw(store.db) == before
        # The instance keeps working, for transactions under the bound.
        with store.db.transaction() as txn:
            txn.table("t").insert({"id": 500, "blob": b"z" * 30_000})
            txn.table("t").update(1, {"v": "changed"})
        store.reopen()
        assert store.db.table_names() == ["t"]
        got = rows(store.db)
        assert len(got) == 21 and got[1]["v"] == "changed"
        assert got[-1] == {"id": 500, "v": None, "blob": b"z" * 30_000}
    finally:
        store.close()


def test_the_bound_counts_what_the_transaction_holds_not_every_write(tmp_path: Path) -> None:
    """A write replacing one of the transaction's own writes of the same key replaces it in
    memory too: the bound counts the latest write of each key, not every write. 10,000
    updates of one row in one transaction used to fail at a 64 KiB bound. (A delete of a key
    the transaction wrote stays a write, of the key alone: a column of an index updated over
    and over leaves one for each index key it passed through.)"""
    store = Store(tmp_path, max_transaction_bytes=64 * 1024)
    try:
        make_table(store.db)
        with store.db.transaction() as txn:
            txn.table("t").insert({"id": 1, "v": "start"})
        with store.db.transaction() as txn:
            t = txn.table("t")
            for i in range(10_000):
                t.update(1, {"blob": f"value {i}".encode()})
                txn.put(b"\xff raw", bytes(100))
                txn.delete(b"\xff raw")
            assert txn.size == sum(
                len(key) + len(value or b"") + OPERATION_OVERHEAD
                for key, value in txn.operations.items()
            )
            assert txn.size < 200
            # A schema change's budget is what is left under what the transaction holds.
            txn.create_index("t", "by_blob", "blob")
        assert rows(store.db) == [{"id": 1, "v": "start", "blob": b"value 9999"}]
        # What a transaction holds over the bound still rolls it back.
        txn = store.db.transaction()
        with pytest.raises(VersionStoreOutOfMemory) as info:
            for i in range(100, 100_000):
                txn.put(b"\xff" + i.to_bytes(4, "big"), bytes(100))
        assert txn.state is TransactionState.ROLLED_BACK
        assert 64 * 1024 < int(str(info.value).split(" holds ")[1].split()[0]) < 65 * 1024
    finally:
        store.close()


def test_a_table_too_large_to_drop_at_once_says_how_to_drop_it(tmp_path: Path) -> None:
    store = Store(tmp_path, max_transaction_bytes=64 * 1024)
    try:
        store.db.create_table("big", [("id", "int")], "id")
        for start in range(0, 5000, 500):  # filled in transactions under the bound
            with store.db.transaction() as txn:
                for i in range(start, start + 500):
                    txn.table("big").insert({"id": i})
        before = raw(store.db)
        with pytest.raises(VersionStoreOutOfMemory, match=r"table 'big'.*smaller transactions"):
            store.db.drop_table("big")
        assert raw(store.db) == before
        # What the message says works.
        for start in range(0, 5000, 500):
            with store.db.transaction() as txn:
                for i in range(start, start + 500):
                    txn.table("big").delete(i)
        store.db.drop_table("big")
        store.reopen()
        assert store.db.table_names() == []
    finally:
        store.close()


def test_a_table_too_large_to_drop_leaves_the_transaction_usable(tmp_path: Path) -> None:
    """Regression: the drop deleted entries until the bound was crossed, which rolled back the
    whole transaction with its earlier writes; it now refuses before its first delete, as the
    schema changes of a table do (`Transaction.drop_index` and the rest)."""
    store = Store(tmp_path, max_transaction_bytes=64 * 1024)
    try:
        store.db.create_table("big", [("id", "int")], "id")
        make_table(store.db)
        for start in range(0, 5000, 500):
            with store.db.transaction() as txn:
                for i in range(start, start + 500):
                    txn.table("big").insert({"id": i})
        with store.db.transaction() as txn:
            txn.table("t").insert({"id": 1, "v": "kept"})
            size, operations = txn.size, dict(txn.operations)
            with pytest.raises(VersionStoreOutOfMemory) as info:
                txn.drop_table("big")
            assert info.value.code == -1069
            assert "table 'big'" in str(info.value) and "nothing was written" in str(info.value)
            assert "in a transaction of its own" in info.value.hint
            assert txn.state is TransactionState.ACTIVE
            assert txn.size == size and txn.operations == operations
            assert txn.table("big").get(4999) == {"id": 4999}
        assert rows(store.db)[0]["v"] == "kept"
        assert sorted(store.db.table_names()) == ["big", "t"]
    finally:
        store.close()


# --------------------------------------------------------------------------- lazy commit


def test_lazy_commits_are_present_after_a_clean_close(store: Store) -> None:
    make_table(store.db)
    positions = []
    for i in range(50):
        txn = store.db.transaction()
        txn.table("t").insert({"id": i, "v": f"v{i}", "blob": b"l" * (i * 300)})
        position = txn.commit(lazy=True)
        assert position is not None
        positions.append(position)
    assert positions == sorted(positions)
    with store.db.transaction() as txn:
        txn.table("t").delete(0)
        txn.commit(lazy=True)
    store.reopen()
    got = rows(store.db)
    assert [r["id"] for r in got] == list(range(1, 50))
    assert got[-1] == {"id": 49, "v": "v49", "blob": b"l" * (49 * 300)}


def test_a_commit_that_leaves_the_tree_unchanged_still_conflicts(store: Store) -> None:
    # Found by the interleaving property: insert then delete is a write of the key even though
    # the tree ends as it was; a concurrent writer of the same key must get WriteConflict.
    store.db.create_table("t", [("id", "int")], "id")
    first = store.db.transaction()
    second = store.db.transaction()
    first.table("t").insert({"id": 2})
    first.table("t").delete(2)
    first.commit()
    second.table("t").insert({"id": 2})
    with pytest.raises(WriteConflict):
        second.commit()


def test_put_new_writes_only_absent_keys(store: Store) -> None:
    with store.db.transaction() as txn:
        txn.put(b"\x00\x00\x00\x09a", b"1")
    txn = store.db.transaction()
    assert not txn.put_new(b"\x00\x00\x00\x09a", b"2")  # in the snapshot
    assert txn.put_new(bytearray(b"\x00\x00\x00\x09b"), memoryview(b"3"))  # type: ignore[arg-type]
    assert not txn.put_new(b"\x00\x00\x00\x09b", b"4")  # written by this transaction
    txn.delete(b"\x00\x00\x00\x09a")
    assert txn.put_new(b"\x00\x00\x00\x09a", b"5")  # deleted by this transaction
    with pytest.raises(InvalidParameter):
        txn.put_new(b"\x00\x00\x00\x09c", b"v" * 10_000)
    assert txn.size == (5 + 1 + 16) + (5 + 1 + 16)  # b, and a (its put replaced its delete)
    txn.commit()
    with store.db.transaction() as txn:
        assert txn.items(b"\x00\x00\x00\x09", b"\x00\x00\x00\x0a") == [
            (b"\x00\x00\x00\x09a", b"5"),
            (b"\x00\x00\x00\x09b", b"3"),
        ]
        # A write after a range read is applied next time the tree is needed.
        assert txn.put_new(b"\x00\x00\x00\x09c", b"6")
        assert txn.items(b"\x00\x00\x00\x09c", None) == [(b"\x00\x00\x00\x09c", b"6")]
    with pytest.raises(NotInTransaction):
        txn.put_new(b"\x00\x00\x00\x09d", b"7")


def test_raw_reads_and_deletes_refuse_keys_that_are_not_bytes(store: Store) -> None:
    key = b"\x00\x00\x00\x09a"
    with store.db.transaction() as txn:
        txn.put(key, b"1")
    txn = store.db.transaction()
    for written in (False, True):  # reads of the snapshot alone, then with writes gathered
        for bad in ("a", None, 5, [b"a"]):
            with pytest.raises(InvalidParameter, match="must be bytes"):
                txn.get(bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidParameter, match="must be bytes"):
                txn.delete(bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidParameter, match="must be bytes"):
                txn.frozen().get(bad)  # type: ignore[arg-type]
            if bad is None:
                continue  # an unbounded end of a range
            with pytest.raises(InvalidParameter, match="must be bytes"):
                txn.iterate(bad, None)  # type: ignore[arg-type]
            with pytest.raises(InvalidParameter, match="must be bytes"):
                txn.chunks(None, bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidParameter, match="must be bytes"):
                txn.items(bad, None)  # type: ignore[arg-type]
            view = txn.frozen()
            with pytest.raises(InvalidParameter, match="must be bytes"):
                view.items(None, bad)  # type: ignore[arg-type]
            with pytest.raises(InvalidParameter, match="must be bytes"):
                view.iterate(bad, None)  # type: ignore[arg-type]
        # Bytes-like keys are taken as bytes, as `put` takes them.
        assert txn.get(bytearray(key)) == b"1"
        assert txn.frozen().get(memoryview(key)) == b"1"
        assert list(txn.iterate(bytearray(key), memoryview(key + b"\x00"))) == [(key, b"1")]
        if not written:
            txn.put(b"\x00\x00\x00\x09b", b"2")
    txn.delete(bytearray(key))
    assert txn.get(key) is None
    txn.commit()
    with store.db.transaction() as txn:
        assert txn.items(b"\x00\x00\x00\x09", b"\x00\x00\x00\x0a") == [(b"\x00\x00\x00\x09b", b"2")]


def test_a_unique_value_written_again_and_again_is_checked_once_at_commit(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each unique index entry a transaction writes is checked again at commit against what
    others committed since its snapshot: once per entry, however often it was written. A
    value toggled between two values left a check per write, held until the commit and run
    each under the commit lock (a range read apiece)."""
    make_table(store.db)
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 1, "v": "a"})
    txn = store.db.transaction()
    for i in range(1_000):
        txn.table("t").update(1, {"v": "b" if i % 2 == 0 else "a"})
    assert len(txn.unique_checks) == 2
    with store.db.transaction() as other:  # a commit since the snapshot: the checks run
        other.table("t").insert({"id": 2, "v": "c"})
    reads = 0
    real_iterate = database_module.iterate

    def counting_iterate(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return real_iterate(*args, **kwargs)

    monkeypatch.setattr(database_module, "iterate", counting_iterate)
    txn.commit()
    assert reads <= 2
    assert rows(store.db) == [
        {"id": 1, "v": "a", "blob": None},
        {"id": 2, "v": "c", "blob": None},
    ]
    # A unique value committed meanwhile by another transaction is still found.
    first, second = store.db.transaction(), store.db.transaction()
    for i in range(10):
        first.table("t").update(2, {"v": "d" if i % 2 == 0 else "c"})
    first.table("t").update(2, {"v": "d"})
    second.table("t").insert({"id": 3, "v": "d"})
    second.commit()
    with pytest.raises(KeyDuplicate):
        first.commit()

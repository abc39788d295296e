"""Concurrent transactions: disjoint writers, write-write conflicts (first committer wins),
unique keys across transactions, readers that never block, a model of snapshot isolation,
and old snapshots read back while their pages could be reused.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import jetstore
from instance_store import LOG, Store
from jetstore.errors import (
    InstanceUnavailable,
    JetError,
    KeyDuplicate,
    NotInTransaction,
    RecordNotFound,
    WriteConflict,
)
from jetstore.instance.database import SCHEMA_CHANGE_ATTEMPTS
from jetstore.transactions.transaction import Transaction, TransactionState


def rows(db: jetstore.Database, table: str = "t") -> list[dict[str, object]]:
    with db.transaction() as txn:
        return list(txn.table(table).scan())


def run_threads(targets: list[Callable[[], None]], timeout: float = 60.0) -> None:
    """Run every target in its own thread; re-raise the first exception any of them raised."""
    errors: list[BaseException] = []

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), "a thread did not finish (blocked?)"
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------- writers


def test_many_threads_commit_disjoint_records(store: Store) -> None:
    store.db.create_table(
        "t",
        [("id", "int"), ("owner", "int"), ("n", "int"), ("tag", "text")],
        "id",
        indexes=[("by_tag", "tag", True), ("by_owner", "owner")],
    )
    threads, txns, per_txn = 8, 25, 4
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def writer(owner: int) -> Callable[[], None]:
        def run() -> None:
            start.wait()
            for j in range(txns):
                with store.db.transaction() as txn:
                    t = txn.table("t")
                    for k in range(per_txn):
                        i = (owner * txns + j) * per_txn + k
                        t.insert({"id": i, "owner": owner, "n": 0, "tag": f"tag{i}"})
                    if j:  # and touch a record committed earlier by this thread
                        t.update((owner * txns + j - 1) * per_txn, {"n": j})

        return run

    def checkpointer() -> None:
        start.wait()
        while not stop.is_set():
            store.inst.checkpoint()
            time.sleep(0.005)

    checkpoint_thread = threading.Thread(target=checkpointer, daemon=True)
    checkpoint_thread.start()
    try:
        run_threads([writer(owner) for owner in range(threads)])
    finally:
        stop.set()
        checkpoint_thread.join(30)
    total = threads * txns * per_txn
    expected = []
    for i in range(total):
        owner, rest = divmod(i, txns * per_txn)
        j, k = divmod(rest, per_txn)
        n = j + 1 if k == 0 and j + 1 < txns else 0
        expected.append({"id": i, "owner": owner, "n": n, "tag": f"tag{i}"})
    for _ in range(2):
        assert rows(store.db) == expected
        with store.db.transaction() as txn:
            by_owner = list(txn.table("t").scan(index="by_owner", start=3, stop=4))
            assert [r["id"] for r in by_owner] == list(range(300, 400))
        assert store.db.conflicts == 0
        store.reopen()


def test_the_later_committer_of_two_writers_gets_write_conflict(store: Store) -> None:
    store.db.create_table("t", [("id", "int"), ("v", "text")], "id")
    with store.db.transaction() as txn:
        for i in range(5):
            txn.table("t").insert({"id": i, "v": "start"})

    def value(i: int) -> object:
        with store.db.transaction() as txn:
            record = txn.table("t").get(i)
            return None if record is None else record["v"]

    # Update against update, in both commit orders.
    for first, second in ((0, 1), (1, 0)):
        a, b = store.db.transaction(), store.db.transaction()
        a.table("t").update(0, {"v": "a"})
        b.table("t").update(0, {"v": "b"})
        pair = (a, b)
        pair[first].commit()
        with pytest.raises(WriteConflict) as info:
            pair[second].commit()
        assert info.value.code == -1102
        assert pair[second].state is TransactionState.ROLLED_BACK
        with pytest.raises(NotInTransaction):
            pair[second].table("t")
        assert value(0) == "ab"[first]
    # Delete against update; insert of the same new key; the loser leaves nothing behind.
    a, b = store.db.transaction(), store.db.transaction()
    a.table("t").delete(1)
    b.table("t").update(1, {"v": "b"})
    b.table("t").update(2, {"v": "b"})  # not written by a, but b fails as a whole
    a.commit()
    with pytest.raises(WriteConflict):
        b.commit()
    assert value(1) is None and value(2) == "start"
    a, b = store.db.transaction(), store.db.transaction()
    a.table("t").insert({"id": 10, "v": "a"})
    b.table("t").insert({"id": 10, "v": "b"})
    b.commit()
    with pytest.raises(WriteConflict):
        a.commit()
    assert value(10) == "b"
    # No conflict: different records, or a transaction that began after the other committed.
    a, b = store.db.transaction(), store.db.transaction()
    a.table("t").update(3, {"v": "a"})
    b.table("t").update(4, {"v": "b"})
    a.commit()
    b.commit()
    c = store.db.transaction()
    c.table("t").update(3, {"v": "c"})
    c.commit()
    assert (value(3), value(4)) == ("c", "b")
    # A reader that only read the record commits fine (snapshot isolation, not serializable).
    reader, writer = store.db.transaction(), store.db.transaction()
    assert reader.table("t").get(4) == {"id": 4, "v": "b"}
    writer.table("t").update(4, {"v": "w"})
    writer.commit()
    assert reader.commit() is None
    store.reopen()
    assert rows(store.db) == [
        {"id": 0, "v": "b"},
        {"id": 2, "v": "start"},
        {"id": 3, "v": "c"},
        {"id": 4, "v": "w"},
        {"id": 10, "v": "b"},
    ]
    assert store.db.conflicts == 0  # counters restart with the instance


def test_no_lost_updates_between_threads(store: Store) -> None:
    """Increments of one counter from many threads, retried on WriteConflict: none is lost."""
    store.db.create_table("t", [("id", "int"), ("n", "int")], "id")
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 0, "n": 0})
    threads, increments = 6, 25
    conflicts = itertools.count()
    # The first attempts all read before any of them writes: they collide for sure.
    first_read = threading.Barrier(threads)

    def increment() -> None:
        first = True
        for _ in range(increments):
            while True:
                try:
                    with store.db.transaction() as txn:
                        t = txn.table("t")
                        current = t.get(0)
                        assert current is not None and isinstance(current["n"], int)
                        if first:
                            first = False
                            first_read.wait()
                        time.sleep(0.0005)  # widen the window between read and write
                        t.update(0, {"n": current["n"] + 1})
                    break
                except WriteConflict:
                    next(conflicts)

    run_threads([increment] * threads)
    assert rows(store.db) == [{"id": 0, "n": threads * increments}]
    assert next(conflicts) >= threads - 1  # the threads did collide
    store.reopen()
    assert rows(store.db) == [{"id": 0, "n": threads * increments}]


def test_create_table_retried_after_a_concurrent_creation_keeps_its_columns(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another table is created and committed between this creation's snapshot and its commit:
    # the retry must see the same columns and indexes even when they came as generators.
    create = Transaction.create_table
    raced: list[bool] = []

    def racing(self: Transaction, *args: Any, **kwargs: Any) -> Any:
        created = create(self, *args, **kwargs)
        if not raced:
            raced.append(True)
            with store.db.transaction() as other:
                other.create_table("other", [("id", "int")], "id")
        return created

    monkeypatch.setattr(Transaction, "create_table", racing)
    columns = (c for c in [("id", "int"), ("v", "text")])
    store.db.create_table("t", columns, "id", (i for i in [("by_v", "v")]))
    assert raced
    assert sorted(store.db.table_names()) == ["other", "t"]
    with store.db.transaction() as txn:
        t = txn.table("t")
        assert t.definition.column_names == ("id", "v")
        assert [i.name for i in t.definition.indexes] == ["by_v"]


def test_create_table_gives_up_after_its_attempts_and_says_so(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another table is created during every attempt: `Database.create_table` stops after
    SCHEMA_CHANGE_ATTEMPTS, as the schema change conveniences do, and says so: how many
    attempts, what they conflicted with, the last conflict (also its cause) and what to do."""
    create = Transaction.create_table
    attempts = 0

    def always_racing(self: Transaction, *args: Any, **kwargs: Any) -> Any:
        nonlocal attempts
        attempts += 1
        created = create(self, *args, **kwargs)
        with store.db.transaction() as other:
            create(other, f"other{attempts}", [("id", "int")], "id")  # not patched
        return created

    monkeypatch.setattr(Transaction, "create_table", always_racing)
    with pytest.raises(WriteConflict) as caught:
        store.db.create_table("t", [("id", "int"), ("v", "text")], "id")
    monkeypatch.undo()
    assert attempts == SCHEMA_CHANGE_ATTEMPTS == 5
    error = caught.value
    assert error.code == -1102
    message = str(error)
    assert "creating table 't' gave up after 5 attempts" in message
    assert "each creation takes the catalog's next object id" in message
    assert "the last conflict: " in message
    assert isinstance(error.__cause__, WriteConflict)
    assert error.__cause__.detail is not None and error.__cause__.detail in message
    assert error.hint is not None and "one at a time" in error.hint
    assert "nothing of the change was committed" in error.hint
    # Every racing creation stands; "t" was not created, and is once the races stop.
    assert sorted(store.db.table_names()) == [f"other{i}" for i in range(1, 6)]
    store.db.create_table("t", [("id", "int"), ("v", "text")], "id")
    assert "t" in store.db.table_names()


def test_concurrent_inserts_of_one_unique_key(store: Store) -> None:
    store.db.create_table(
        "t", [("id", "int"), ("email", "text")], "id", indexes=[("by_email", "email", True)]
    )
    # Two transactions, deterministic order: the later committer gets KeyDuplicate.
    a, b = store.db.transaction(), store.db.transaction()
    a.table("t").insert({"id": 1, "email": "x@y"})
    b.table("t").insert({"id": 2, "email": "x@y"})
    b.table("t").insert({"id": 3, "email": "other@y"})
    a.commit()
    with pytest.raises(KeyDuplicate) as info:
        b.commit()
    assert info.value.code == -1605
    assert b.state is TransactionState.ROLLED_BACK
    assert rows(store.db) == [{"id": 1, "email": "x@y"}]
    # A key moved away by an update committed meanwhile collides the same way.
    a, b = store.db.transaction(), store.db.transaction()
    a.table("t").update(1, {"email": "z@y"})
    b.table("t").insert({"id": 5, "email": "z@y"})
    a.commit()
    with pytest.raises(KeyDuplicate):
        b.commit()
    # The key freed by that update can be taken by a transaction that saw it free.
    with store.db.transaction() as txn:
        txn.table("t").insert({"id": 6, "email": "x@y"})
    # A committed value that merely extends this one by NUL bytes is another key: no collision.
    a, b = store.db.transaction(), store.db.transaction()
    a.table("t").insert({"id": 7, "email": "n@y\x00"})
    b.table("t").insert({"id": 8, "email": "n@y"})
    a.commit()
    b.commit()
    # Many threads, each inserting its own record with the same unique key: exactly one wins.
    threads = 8
    start = threading.Barrier(threads)
    outcomes: list[str] = []

    def contender(i: int) -> Callable[[], None]:
        def run() -> None:
            txn = store.db.transaction()
            start.wait()
            try:
                txn.table("t").insert({"id": 100 + i, "email": "race@y"})
                txn.commit()
                outcomes.append("won")
            except KeyDuplicate:
                outcomes.append("duplicate")

        return run

    run_threads([contender(i) for i in range(threads)])
    assert sorted(outcomes) == ["duplicate"] * (threads - 1) + ["won"]
    store.reopen()
    with store.db.transaction() as txn:
        t = txn.table("t")
        assert len(list(t.scan(index="by_email", start="race@y", stop="race@y\x00"))) == 1
        assert [r["id"] for r in t.scan(index="by_email", start="s")] == [6, 1]
        assert [r["email"] for r in t.scan()][:2] == ["z@y", "x@y"]


# --------------------------------------------------------------------------- readers


def test_readers_never_block_and_see_exactly_their_snapshot(store: Store) -> None:
    store.db.create_table(
        "t", [("id", "int"), ("v", "text"), ("blob", "bytes")], "id", indexes=[("by_v", "v")]
    )
    n = 2000
    with store.db.transaction() as txn:
        for i in range(n):
            txn.table("t").insert({"id": i, "v": f"v{i:05d}", "blob": b"o" * (i % 5000)})
    snapshot = rows(store.db)
    halfway = threading.Event()
    writers_done = threading.Event()
    scanned: list[dict[str, object]] = []

    def reader() -> None:
        with store.db.transaction() as txn:
            for record in txn.table("t").scan(index="by_v"):
                scanned.append(record)
                if len(scanned) == n // 2:
                    halfway.set()
                    # The writers run to the end while this scan is open.
                    assert writers_done.wait(30), "writers were blocked by an open scan"

    def writer(part: int) -> Callable[[], None]:
        def run() -> None:
            assert halfway.wait(30)
            for start in range(part, n, 200):
                with store.db.transaction() as txn:
                    t = txn.table("t")
                    for i in range(start, min(start + 50, n)):
                        t.update(i, {"v": f"w{i:05d}", "blob": b"n" * (i % 3000)})
                    t.insert({"id": n + start, "v": f"x{start:05d}"})
            store.inst.checkpoint()

        return run

    def writers() -> None:
        run_threads([writer(p) for p in (0, 50, 100, 150)])
        writers_done.set()

    run_threads([reader, writers])
    assert scanned == snapshot  # by_v order equals id order for these values
    after = rows(store.db)
    assert [r["id"] for r in after] == list(range(n)) + list(range(n, 2 * n, 50))
    assert after[:n] == [{"id": i, "v": f"w{i:05d}", "blob": b"n" * (i % 3000)} for i in range(n)]


def test_an_open_writer_does_not_block_other_transactions(store: Store) -> None:
    store.db.create_table("t", [("id", "int"), ("v", "text")], "id")
    big = store.db.transaction()
    for i in range(2000):
        big.table("t").insert({"id": i, "v": "uncommitted"})

    def other() -> None:
        for i in range(20):
            with store.db.transaction() as txn:
                assert txn.table("t").get(0) is None
                txn.table("t").insert({"id": 10_000 + i, "v": "other"})
        store.inst.checkpoint()

    run_threads([other], timeout=30)
    big.commit()
    assert len(rows(store.db)) == 2020


# --------------------------------------------------------------------------- SI model


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[jetstore.Database]:
    inst = jetstore.open(tmp_path_factory.mktemp("si"), log_file_size=LOG)
    yield inst.database("main", create=True)
    inst.close()


_tables = itertools.count()
KEYS = 4
# Writes weigh more than commits so that transactions overlap and collide often.
OPS = ["get", "scan", "insert", "upsert", "upsert", "update", "update", "delete", "commit"]
OPS += ["commit", "rollback"]
STEPS = st.lists(
    st.tuples(
        st.integers(0, 2),  # which transaction
        st.sampled_from(OPS),
        st.integers(0, KEYS - 1),
        st.integers(0, 999),
    ),
    max_size=40,
)


class ModelTxn:
    def __init__(self, real: jetstore.Transaction, snapshot: dict[int, int], begin: int):
        self.real = real
        self.snapshot = snapshot
        self.begin = begin
        self.writes: dict[int, int | None] = {}

    def visible(self, k: int) -> int | None:
        return self.writes[k] if k in self.writes else self.snapshot.get(k)

    def view(self) -> list[dict[str, object]]:
        keys = sorted(set(self.snapshot) | set(self.writes))
        return [{"k": k, "v": v} for k in keys if (v := self.visible(k)) is not None]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(initial=st.dictionaries(st.integers(0, KEYS - 1), st.integers(0, 999)), steps=STEPS)
def test_interleavings_follow_snapshot_isolation(
    shared: jetstore.Database, initial: dict[int, int], steps: list[tuple[int, str, int, int]]
) -> None:
    """Random interleavings of up to three transactions on a few keys, against a model of
    snapshot isolation: each transaction reads the state committed when it began plus its own
    writes; a commit fails with WriteConflict when another transaction committed a write to
    one of its keys after it began (first committer wins), and then changes nothing."""
    db = shared
    name = f"t{next(_tables)}"
    db.create_table(name, [("k", "int"), ("v", "int")], "k")
    with db.transaction() as txn:
        for k, v in initial.items():
            txn.table(name).insert({"k": k, "v": v})
    committed = dict(initial)
    last_write: dict[int, int] = {}
    seq = 0
    slots: list[ModelTxn | None] = [None, None, None]

    def finish(slot: int, commit: bool) -> None:
        nonlocal seq
        m = slots[slot]
        assert m is not None
        slots[slot] = None
        if not commit:
            m.real.rollback()
            return
        if any(last_write.get(k, -1) > m.begin for k in m.writes):
            event("write conflict")
            with pytest.raises(WriteConflict):
                m.real.commit()
            assert m.real.state is TransactionState.ROLLED_BACK
            return
        position = m.real.commit()
        assert (position is None) == (not m.writes)
        if m.writes:
            seq += 1
            for k, v in m.writes.items():
                last_write[k] = seq
                if v is None:
                    committed.pop(k, None)
                else:
                    committed[k] = v

    for slot, op, k, v in steps:
        m = slots[slot]
        if m is None:
            m = slots[slot] = ModelTxn(db.transaction(), dict(committed), seq)
        t = m.real.table(name)
        current = m.visible(k)
        if op == "get":
            assert t.get(k) == (None if current is None else {"k": k, "v": current})
        elif op == "scan":
            assert list(t.scan()) == m.view()
        elif op == "insert":
            if current is None:
                t.insert({"k": k, "v": v})
                m.writes[k] = v
            else:
                with pytest.raises(KeyDuplicate):
                    t.insert({"k": k, "v": v})
        elif op == "upsert":
            t.upsert({"k": k, "v": v})
            m.writes[k] = v
        elif op in ("update", "delete"):
            if current is None:
                with pytest.raises(RecordNotFound):
                    if op == "update":
                        t.update(k, {"v": v})
                    else:
                        t.delete(k)
            elif op == "update":
                assert t.update(k, {"v": v}) == {"k": k, "v": v}
                m.writes[k] = v
            else:
                t.delete(k)
                m.writes[k] = None
        else:
            finish(slot, op == "commit")
    for slot in range(3):
        if slots[slot] is not None:
            finish(slot, True)
    assert rows(db, name) == [{"k": k, "v": committed[k]} for k in sorted(committed)]
    assert db.active_transactions() == 0


# --------------------------------------------------------------------------- page reuse


def test_page_reuse_does_not_corrupt_old_snapshots(tmp_path: Path) -> None:
    """An old snapshot stays readable, from disk, while many commits and checkpoints free and
    reuse pages around it, and while other threads read it concurrently."""
    # The smallest cache (16 pages): old snapshots are read back from their pages on disk.
    store = Store(tmp_path, cache_size=16 * 8192)
    try:
        store.db.create_table(
            "t", [("id", "int"), ("v", "text"), ("blob", "bytes")], "id", indexes=[("by_v", "v")]
        )
        n = 1500
        with store.db.transaction() as txn:
            for i in range(n):
                txn.table("t").insert({"id": i, "v": f"v{i:05d}", "blob": bytes([i % 251]) * 700})
        store.inst.checkpoint()  # the original tree is now on disk pages
        original = rows(store.db)
        old = store.db.transaction()
        original_raw = list(old.iterate(None, None))
        stop = threading.Event()
        reads = itertools.count()

        def concurrent_reader() -> None:
            while not stop.is_set():
                assert list(old.table("t").scan(index="by_v", reverse=True)) == original[::-1]
                next(reads)

        errors: list[BaseException] = []

        def guarded() -> None:
            try:
                concurrent_reader()
            except BaseException as exc:
                errors.append(exc)

        reader = threading.Thread(target=guarded, daemon=True)
        reader.start()
        pages_before = store.db.file.page_count
        try:
            for round_ in range(12):
                with store.db.transaction() as txn:
                    t = txn.table("t")
                    for i in range(round_ % 3, n, 3):
                        if i in t:
                            t.update(
                                i, {"v": f"r{round_}-{i:05d}", "blob": b"\xaa" * (round_ * 60)}
                            )
                    for i in range(round_, n, 97):
                        if i in t:
                            t.delete(i)
                if round_ % 2:
                    store.inst.checkpoint()
        finally:
            stop.set()
            reader.join(60)
        assert not errors, errors[0]
        assert next(reads) > 0
        # Pages were freed meanwhile (the file would otherwise not have grown this much),
        # yet the old snapshot reads exactly what it read before.
        assert store.db.file.page_count > pages_before
        assert list(old.table("t").scan()) == original
        assert list(old.iterate(None, None)) == original_raw
        assert all(old.table("t").get(r["id"]) == r for r in original[::50])
        old.rollback()
        # Once the old snapshot is gone, its pages become reusable: more rounds of the same
        # work grow the file much less than before.
        store.inst.checkpoint()
        store.inst.checkpoint()
        grown_with_reader = store.db.file.page_count - pages_before
        settled = store.db.file.page_count
        for round_ in range(12, 24):
            with store.db.transaction() as txn:
                t = txn.table("t")
                for i in range(round_ % 3, n, 3):
                    if i in t:
                        t.update(i, {"v": f"r{round_}-{i:05d}", "blob": b"\xbb" * 300})
            if round_ % 2:
                store.inst.checkpoint()
        assert store.db.file.page_count - settled <= grown_with_reader // 4
        final = rows(store.db)
        store.reopen()
        assert rows(store.db) == final
    finally:
        store.close()


def _interrupt_at(code: object, line: int) -> Callable[..., object]:
    """A trace function raising KeyboardInterrupt before `line` of `code` first runs, as a
    signal handler's exception can arrive between two lines."""
    fired = False

    def local(frame: object, event: str, arg: object) -> object:
        nonlocal fired
        if event == "line" and frame.f_lineno == line and not fired:  # type: ignore[attr-defined]
            fired = True
            raise KeyboardInterrupt(f"line {line}")
        return local

    return lambda frame, event, arg: local if frame.f_code is code else None


def test_a_commit_interrupted_after_its_log_record_loses_no_update(tmp_path: Path) -> None:
    """KeyboardInterrupt from a signal handler between the commit record's append and the end
    of its publication used to leave the log holding a commit that the tree did not show (a
    clean close then dropped it; a crash replayed it) or that the conflict check did not know
    (an older snapshot overwrote it: a lost update). Such a commit now fails the instance
    (InstanceUnavailable), and reopening replays it. A `try:` line is skipped: a signal
    cannot land there (no evaluation-breaker check), and a trace function raising at it
    escapes the enclosing `with` in CPython 3.11."""
    import inspect
    import sys

    from jetstore.instance.database import Database

    source, first = inspect.getsourcelines(Database.commit_transaction)
    start = next(i for i, text in enumerate(source) if "log.append(payload)" in text)
    stop = next(i for i, text in enumerate(source) if "self.commits += 1" in text)
    lines = [
        first + i
        for i in range(start, stop)
        if source[i].strip() not in ("try:", "") and not source[i].strip().startswith("#")
    ]
    assert len(lines) >= 6
    for line in lines:
        path = tmp_path / f"line{line}"
        store = Store(path)
        store.db.create_table("t", [("id", "int"), ("v", "int")], primary_key="id")
        with store.db.transaction() as txn:
            for i in range(3):
                txn.table("t").insert({"id": i, "v": 0})
        older = store.db.transaction()  # a snapshot from before the interrupted commit
        txn = store.db.transaction()
        txn.table("t").update(1, {"v": 111})
        sys.settrace(_interrupt_at(Database.commit_transaction.__code__, line))
        try:
            txn.commit()
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        if store.inst.state.value == "failed":
            # Not "rolled back": the record is in the log, so the outcome waits for a reopen.
            assert txn.state is TransactionState.IN_DOUBT, line
            with pytest.raises(NotInTransaction, match="in doubt"):
                txn.table("t")
            with pytest.raises(InstanceUnavailable) as info, store.db.transaction() as other:
                other.table("t").update(2, {"v": 2})
            assert "interrupted" in str(info.value), line
            store.close()
            store.inst = jetstore.open(path, **store.options)
            store.db = store.inst.database("main")
            assert rows(store.db)[1]["v"] == 111, line  # replayed from the log
        else:
            seen = {row["id"]: row["v"] for row in rows(store.db)}
            older.table("t").update(1, {"v": 999})
            if seen[1] == 111:
                with pytest.raises(WriteConflict):
                    older.commit()
            else:
                older.commit()
            shown = {row["id"]: row["v"] for row in rows(store.db)}
            store.reopen()
            assert {row["id"]: row["v"] for row in rows(store.db)} == shown, line
        store.close()


def test_ctrl_c_during_a_durable_commits_sync_leaves_the_instance_serving(
    tmp_path: Path,
) -> None:
    """Most of a durable commit's time is its log sync, so that is where Ctrl-C lands. The
    flush completes first: the commit is durable (and committed), KeyboardInterrupt reaches
    the caller, and the instance goes on taking commits (it used to stop for good)."""
    from jetstore.io import FileSystem, IOEvent

    armed = [False]

    def hook(event: IOEvent) -> None:
        if armed[0] and event.op == "fdatasync" and event.path.endswith("edb.log"):
            armed[0] = False
            raise KeyboardInterrupt("Ctrl-C")

    with jetstore.open(tmp_path, filesystem=FileSystem(hook=hook)) as inst:
        db = inst.database("main", create=True)
        db.create_table("t", [("id", "int")], primary_key="id")
        txn = db.transaction()
        txn.table("t").insert({"id": 1})
        armed[0] = True
        with pytest.raises(KeyboardInterrupt):
            txn.commit()
        assert not armed[0]
        assert txn.state is TransactionState.COMMITTED
        assert inst.log.durable_position >= txn.commit_position
        with db.transaction() as after:
            after.table("t").insert({"id": 2})
        inst.simulate_crash()
    with jetstore.open(tmp_path) as inst, inst.database("main").transaction() as txn:
        assert [row["id"] for row in txn.table("t").scan()] == [1, 2]


def test_a_durable_commit_whose_log_flush_fails_is_in_doubt(tmp_path: Path) -> None:
    """A flush that fails under a durable commit fails the instance after the commit's record
    was handed to the log (and possibly written): the transaction is neither committed nor
    rolled back as far as anyone can know before a reopen. It says IN_DOUBT, with its record's
    position, and the reopen decides (here the write reached the file, so it is replayed)."""
    from jetstore.io import FileSystem, IOEvent

    armed = [False]

    def hook(event: IOEvent) -> None:
        if armed[0] and event.op == "fdatasync" and event.path.endswith("edb.log"):
            armed[0] = False
            raise OSError(5, "Input/output error")

    inst = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook))
    db = inst.database("main", create=True)
    db.create_table("t", [("id", "int")], primary_key="id")
    txn = db.transaction()
    txn.table("t").insert({"id": 1})
    armed[0] = True
    with pytest.raises(JetError):
        txn.commit()
    assert not armed[0]
    assert inst.state.value == "failed"
    assert txn.state is TransactionState.IN_DOUBT
    position = txn.commit_position
    assert position is not None
    expected = f"in doubt: its commit record \\(ending at log position {position}\\)"
    with pytest.raises(NotInTransaction, match=expected):
        txn.table("t")
    inst.close()
    with jetstore.open(tmp_path) as inst, inst.database("main").transaction() as reader:
        assert [row["id"] for row in reader.table("t").scan()] == [1]


def test_a_commit_a_close_overtakes_after_its_publication_stays_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: a committed transaction stayed registered as open until its committer
    unregistered it, after the commit lock was free. A close of another thread landing
    there (its final checkpoint wrote the commit) rolled back "every transaction still
    open": it, too. Its commit returned a position, durable, but the transaction said
    ROLLED_BACK, and its next use said it was rolled back by the close. Here the close runs
    exactly there, right after the commit marked the transaction committed."""
    store = Store(tmp_path)
    store.db.create_table("t", [("id", "int")], primary_key="id")
    txn = store.db.transaction()
    txn.table("t").insert({"id": 1})
    finish = Transaction._finish_committed

    def finish_then_close(self: Transaction, position: Any) -> None:
        finish(self, position)
        if self is txn:
            closer = threading.Thread(target=store.inst.close)
            closer.start()
            closer.join(5)
            assert not closer.is_alive()

    monkeypatch.setattr(Transaction, "_finish_committed", finish_then_close)
    position = txn.commit()
    assert position is not None
    assert txn.state is TransactionState.COMMITTED
    with pytest.raises(NotInTransaction, match="committed"):
        txn.table("t")
    store.inst = jetstore.open(tmp_path, **store.options)
    store.db = store.inst.database("main")
    assert rows(store.db) == [{"id": 1}]
    store.close()

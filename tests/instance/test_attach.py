"""Detach a database from one instance and attach it to another (it joins the new log
stream); a database that was not shut down cleanly is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import DatabaseDirtyShutdown, DatabaseInUse, JetError
from jetstore.format.dbheader import DatabaseState
from jetstore.io import FileSystem, IOEvent

SMALL = {"log_file_size": 64 * 1024, "checkpoint_depth": 64 * 1024}


def fill(db: jetstore.Database, start: int, count: int) -> None:
    if "t" not in db.table_names():
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    with db.transaction() as txn:
        for i in range(start, start + count):
            txn.table("t").insert({"id": i, "v": f"row {i}"})


def rows(db: jetstore.Database) -> list[int]:
    with db.transaction() as txn:
        return [row["id"] for row in txn.table("t").scan()]


def test_detach_then_attach_to_another_instance(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    with jetstore.open(a, **SMALL) as first:
        fill(first.database("main", create=True), 0, 300)
        fill(first.database("moving", create=True), 0, 200)
        path = first.detach("moving")
        assert first.databases() == ["main"]
        header = first.database("main").file.header
        assert header.state is DatabaseState.DIRTY
    with jetstore.open(b, **SMALL) as second:
        fill(second.database("other", create=True), 0, 50)  # takes database id 1 here
        moved = second.attach(path)
        assert not os.path.exists(path)
        assert moved.db_id != second.database("other").db_id
        assert rows(moved) == list(range(200))
        fill(moved, 200, 100)
        second.simulate_crash()
    # Recovery in the new instance replays into the attached database, and only into it.
    with jetstore.open(b, **SMALL) as second:
        assert rows(second.database("moving")) == list(range(300))
        assert rows(second.database("other")) == list(range(50))
    with jetstore.open(a, **SMALL) as first:
        assert first.databases() == ["main"]
        assert rows(first.database("main")) == list(range(300))


def test_detach_refuses_a_database_with_open_transactions(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, **SMALL) as instance:
        db = instance.database("main", create=True)
        fill(db, 0, 10)
        txn = db.transaction()
        with pytest.raises(DatabaseInUse):
            instance.detach("main")
        txn.rollback()
        instance.detach("main")


def test_attach_refuses_a_dirty_database(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    instance = jetstore.open(a, **SMALL)
    fill(instance.database("main", create=True), 0, 100)
    instance.simulate_crash()
    with jetstore.open(b, **SMALL) as other:
        with pytest.raises(DatabaseDirtyShutdown):
            other.attach(a / "main.edb")
        assert other.databases() == []
    assert (a / "main.edb").exists()


@pytest.mark.parametrize("dies_at", ["edb.log", "edb.chk", "other.edb"])
def test_attach_after_a_lazy_commit_closed_the_generation(tmp_path: Path, dies_at: str) -> None:
    """A lazy commit too big for the rest of the generation closes it in memory only. An
    attach right after must not write a header requiring the next generation before that
    generation is on disk: a crash before the log rolls would leave an instance that refuses
    to start (MissingLogFile for the attached database) with nothing acknowledged lost.
    The process "dies" at the first write, after the attach began, of the log, the checkpoint
    file or the other database's pages (the checkpoint that ends the attach)."""
    a, b = tmp_path / "a", tmp_path / "b"
    with jetstore.open(a, **SMALL) as first:
        fill(first.database("moving", create=True), 0, 20)
        path = first.detach("moving")
    armed = {"on": False}

    def hook(event: IOEvent) -> None:
        if armed["on"] and event.op == "write" and event.path.endswith(dies_at):
            raise OSError(5, "injected: the process dies here")

    second = jetstore.open(b, filesystem=FileSystem(hook=hook), **SMALL)
    db = second.database("other", create=True)
    db.create_table("big", [("id", "int"), ("blob", "bytes")], primary_key="id")
    fill(db, 0, 5)
    generation = second.log.current_generation
    blob_id = 0
    while second.log.current_generation == generation:
        blob_id += 1
        txn = db.transaction()
        txn.table("big").insert({"id": blob_id, "blob": b"x" * 9_000})
        txn.commit(lazy=True)
    assert second.log.durable_position.generation == generation  # closed in memory only
    armed["on"] = True
    try:
        second.attach(path)
    except JetError:
        assert dies_at != "edb.chk"  # a checkpoint file that cannot be written is not fatal
    second.simulate_crash()
    with jetstore.open(b, **SMALL) as reopened:
        assert rows(reopened.database("other")) == list(range(5))
        if "moving" in reopened.databases():
            assert rows(reopened.database("moving")) == list(range(20))
        else:
            # The attach failed before the file took this instance's header: it is back.
            assert os.path.exists(path)

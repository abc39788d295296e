"""Detach a database from one instance and attach it to another (it joins the new log
stream); a database that was not shut down cleanly is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import DatabaseDirtyShutdown, DatabaseInUse
from jetstore.format.dbheader import DatabaseState

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

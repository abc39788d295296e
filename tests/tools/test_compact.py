"""`compact_database`: the same database, denser; refusals before anything is written."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.errors import DatabaseDirtyShutdown, DatabaseDuplicate, DiskFull, InstanceNameInUse
from jetstore.io.files import FileSystem
from jetstore.tools.compact import COMPACTING_SUFFIX, compact_database
from jetstore.tools.dbfile import OfflineDatabase
from jetstore.tools.integrity import check_integrity

from .conftest import OPTIONS, read_all


def header_of(path: Path) -> Any:
    with OfflineDatabase(FileSystem(), str(path)) as db:
        return db.header


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compaction_keeps_data_and_identity_and_shrinks(
    closed: Path, expected: dict[str, Any]
) -> None:
    path = closed / "main.edb"
    before = header_of(path)
    old_digest = digest(path)
    result = compact_database(path, keep_original=True)
    after = header_of(path)
    assert result.pages_before == before.page_count
    assert result.pages_after == after.page_count < before.page_count
    assert after.free_page_count == 0 and after.freelist_pgno == 0
    same = (
        "db_signature",
        "db_id",
        "log_signature",
        "checkpoint_position",
        "repair_count",
        "last_full_backup",
        "name",
        "state",
        "created_time",
    )
    for name in same:
        assert getattr(after, name) == getattr(before, name), name
    assert digest(closed / "main.edb.precompact") == old_digest
    assert not (closed / ("main.edb" + COMPACTING_SUFFIX)).exists()
    assert check_integrity(path).ok
    assert read_all(closed) == expected
    # the instance goes on using it: write, reopen, check again
    with (
        jetstore.open(closed, **OPTIONS) as instance,
        instance.database("main").transaction() as txn,
    ):
        txn.table("kv").insert({"k": "after-compact", "v": b"1"})
    assert check_integrity(path).ok
    assert read_all(closed)["kv"]["after-compact"]["v"] == b"1"


def test_compaction_without_keep_leaves_no_copy(closed: Path) -> None:
    result = compact_database(closed / "main.edb")
    assert result.kept_original is None
    names = sorted(p.name for p in closed.iterdir() if p.name.startswith("main.edb"))
    assert names == ["main.edb"]


def test_too_little_disk_space_is_refused_before_writing(closed: Path) -> None:
    path = closed / "main.edb"
    old = digest(path)
    with pytest.raises(DiskFull, match="needs about"):
        compact_database(path, free_bytes=lambda _directory: 4096)
    assert digest(path) == old
    assert not (closed / ("main.edb" + COMPACTING_SUFFIX)).exists()


def test_dirty_and_open_and_existing_copy_are_refused(closed: Path, tmp_path: Path) -> None:
    with jetstore.open(closed, **OPTIONS), pytest.raises(InstanceNameInUse):
        compact_database(closed / "main.edb")
    (closed / "main.edb.precompact").write_bytes(b"x")
    with pytest.raises(DatabaseDuplicate):
        compact_database(closed / "main.edb", keep_original=True)
    dirty = tmp_path / "dirty"
    instance = jetstore.open(dirty, **OPTIONS)
    instance.database("main", create=True)
    instance.simulate_crash()
    with pytest.raises(DatabaseDirtyShutdown):
        compact_database(dirty / "main.edb")


def test_an_empty_database_compacts(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, **OPTIONS) as instance:
        instance.database("main", create=True)
    result = compact_database(tmp_path / "main.edb")
    assert result.entries == 0 and result.pages_after == 2
    header = header_of(tmp_path / "main.edb")
    assert dataclasses.replace(header).root_pgno == 0
    assert check_integrity(tmp_path / "main.edb").ok

"""Database files for the offline tools' tests, built once per session and copied per test.

`closed`: an instance directory (4 KiB pages, so the tree has three levels) whose database
"main" went through several checkpoints, updates and deletes (free pages, old page copies),
shut down cleanly. `EXPECTED` is what its tables hold (records as the engine returns them).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import jetstore

OPTIONS: dict[str, Any] = {"page_size": 4096, "log_file_size": 1 << 20}
KV_ROWS = 12000
USER_ROWS = 1500


def user(i: int, generation: int = 0) -> dict[str, object]:
    return {
        "id": i,
        "name": f"name{(i + generation) % 41}",
        "photo": bytes([i % 251]) * (3000 if i % 40 == 0 else 12),
        "when": datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=i),
        "score": i / 7,
        "flag": i % 3 == 0,
        "note": None if i % 5 else f"note {i}",
    }


def build(directory: Path) -> dict[str, dict[object, dict[str, object]]]:
    instance = jetstore.open(directory, **OPTIONS)
    db = instance.database("main", create=True)
    db.create_table(
        "users",
        [
            ("id", "int"),
            ("name", "text"),
            ("photo", "bytes"),
            ("when", "datetime"),
            ("score", "float"),
            ("flag", "bool"),
            {"name": "note", "type": "text", "nullable": True},
        ],
        primary_key="id",
        indexes=[("by_name", ["name"]), {"name": "by_when", "columns": ["when"], "unique": True}],
    )
    db.create_table("kv", [("k", "text"), ("v", "bytes")], primary_key="k")
    for batch in range(6):
        with db.transaction() as txn:
            users = txn.table("users")
            kv = txn.table("kv")
            for i in range(batch * USER_ROWS // 6, (batch + 1) * USER_ROWS // 6):
                users.insert(user(i))
            for i in range(batch * KV_ROWS // 6, (batch + 1) * KV_ROWS // 6):
                kv.insert({"k": f"key{i:06d}", "v": bytes([i % 256]) * 40})
        instance.checkpoint()
    with db.transaction() as txn:
        users = txn.table("users")
        for i in range(0, USER_ROWS, 7):
            users.delete(i)
        for i in range(1, USER_ROWS, 5):
            if i % 7:
                users.update(i, {"name": user(i, 1)["name"]})
    instance.checkpoint()
    with db.transaction() as txn:
        kv = txn.table("kv")
        for i in range(0, KV_ROWS, 11):
            kv.delete(f"key{i:06d}")
    expected: dict[str, dict[object, dict[str, object]]] = {}
    with db.transaction() as txn:
        expected["users"] = {r["id"]: r for r in txn.table("users").scan()}
        expected["kv"] = {r["k"]: r for r in txn.table("kv").scan()}
    instance.close()
    return expected


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    directory = tmp_path_factory.mktemp("tools-template") / "inst"
    expected = build(directory)
    return directory, expected


@pytest.fixture
def closed(template: tuple[Path, dict[str, Any]], tmp_path: Path) -> Path:
    """A copy of the template instance directory (clean, not open)."""
    target = tmp_path / "inst"
    shutil.copytree(template[0], target)
    return target


@pytest.fixture
def expected(template: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    return template[1]


def read_all(directory: Path) -> dict[str, dict[object, dict[str, object]]]:
    """Every record of both tables, read through the engine (also by index)."""
    with jetstore.open(directory, **OPTIONS) as instance:
        db = instance.database("main")
        with db.transaction() as txn:
            users = {r["id"]: r for r in txn.table("users").scan()}
            by_name = {r["id"]: r for r in txn.table("users").scan(index="by_name")}
            assert by_name == users
            kv = {r["k"]: r for r in txn.table("kv").scan()}
    return {"users": users, "kv": kv}


def flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ mask]))

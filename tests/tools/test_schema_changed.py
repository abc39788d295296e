"""The offline tools on a table whose schema changed after it was filled: an index created
and another dropped, a column added (old records do not hold it) and one dropped (records
rewritten). Integrity check, export and import, compaction and repair all read the catalog
and the records by the table's current definition, and agree with the engine."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import jetstore
from jetstore.tools.compact import compact_database
from jetstore.tools.export import export_table
from jetstore.tools.importer import import_rows
from jetstore.tools.integrity import check_integrity
from jetstore.tools.repair import repair_database

from .conftest import OPTIONS

ROWS = 400


def build(directory: Path) -> list[dict[str, Any]]:
    """The changed table's records as the engine returns them."""
    with jetstore.open(directory, **OPTIONS) as instance:
        db = instance.database("main", create=True)
        db.create_table(
            "t",
            [("id", "int"), ("name", "text"), ("old", "bytes"), ("n", "int")],
            "id",
            indexes=[("by_n", "n")],
        )
        with db.transaction() as txn:
            for i in range(ROWS):
                txn.table("t").insert(
                    {
                        "id": i,
                        "name": f"name {i}",
                        "old": b"o" * (2500 if i % 50 == 0 else 3),
                        "n": i % 7 if i % 11 else None,
                    }
                )
        db.create_index("t", "u_name", "name", unique=True)
        db.drop_index("t", "by_n")
        db.drop_column("t", "old")
        db.add_column("t", "extra", "text", nullable=False, default="dflt")
        db.create_index("t", "by_extra_n", ["extra", "n"])
        with db.transaction() as txn:
            txn.table("t").insert({"id": ROWS, "name": "new", "extra": "given"})
            txn.table("t").update(1, {"extra": "changed"})
            return list(txn.table("t").scan())


def read(directory: Path) -> list[dict[str, Any]]:
    with (
        jetstore.open(directory, **OPTIONS) as instance,
        instance.database("main").transaction() as txn,
    ):
        return list(txn.table("t").scan(index="by_extra_n"))


def test_integrity_export_import_compact_and_repair(tmp_path: Path) -> None:
    expected = build(tmp_path / "a")
    assert expected[0]["extra"] == "dflt" and "old" not in expected[0]
    path = tmp_path / "a" / "main.edb"
    report = check_integrity(path)
    assert report.ok, [str(p) for p in report.problems]

    out = io.StringIO()
    assert export_table(path, "t", out, fmt="jsonl").rows == ROWS + 1
    with jetstore.open(tmp_path / "b", **OPTIONS) as instance:
        db = instance.database("main", create=True)
        with (
            jetstore.open(tmp_path / "a", **OPTIONS) as source,
            source.database("main").transaction() as txn,
        ):
            definition = txn.table("t").definition
        db.create_table(
            "t", list(definition.columns), list(definition.primary_key), list(definition.indexes)
        )
        imported = import_rows(db, "t", io.StringIO(out.getvalue()), fmt="jsonl")
        assert imported.inserted == ROWS + 1 and imported.failed == 0
    assert read(tmp_path / "b") == read(tmp_path / "a")

    compact_database(path)
    assert check_integrity(path).ok
    assert read(tmp_path / "a") == read(tmp_path / "b")

    repaired = repair_database(path)
    assert not repaired.data_lost and repaired.tables["t"].records_kept == ROWS + 1
    assert read(tmp_path / "a") == read(tmp_path / "b")

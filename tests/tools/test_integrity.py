"""`check_integrity`: a consistent file passes; every kind of damage is found and located."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.errors import DatabaseDirtyShutdown, InstanceNameInUse
from jetstore.format.dbheader import encode_db_header
from jetstore.io.files import FileSystem
from jetstore.pages.btree import iter_nodes, iterate
from jetstore.tables.catalog import object_prefix
from jetstore.tables.keys import encode_key
from jetstore.tools.dbfile import OfflineDatabase, decode_catalog
from jetstore.tools.integrity import check_integrity
from jetstore.tools.rebuild import write_database_file

from .conftest import OPTIONS, flip


def entries_and_header(path: Path) -> tuple[list[tuple[bytes, bytes]], Any, dict[str, Any]]:
    with OfflineDatabase(FileSystem(), str(path)) as db:
        items = list(iterate(db, db.root()))
        catalog = decode_catalog([(k, v) for k, v in items if k[:4] == b"\0\0\0\0"])
        return items, db.header, catalog.tables


def rewrite(path: Path, items: list[tuple[bytes, bytes]], header: Any) -> None:
    os.unlink(path)
    write_database_file(FileSystem(), str(path), header, sorted(items))


def test_a_consistent_database_passes_with_its_counts(
    closed: Path, expected: dict[str, Any]
) -> None:
    report = check_integrity(closed / "main.edb")
    assert report.ok, [str(p) for p in report.problems]
    assert report.depth == 3
    assert report.free_pages > 0  # old copies exist: the space accounting was exercised
    users = report.tables["users"]
    assert users.records == len(expected["users"])
    assert users.index_entries == {
        "by_name": len(expected["users"]),
        "by_when": len(expected["users"]),
    }
    assert users.long_values == sum(len(r["photo"]) > 1000 for r in expected["users"].values())
    assert report.tables["kv"].records == len(expected["kv"])
    assert report.as_dict()["ok"] is True


def test_dirty_database_is_refused(tmp_path: Path) -> None:
    instance = jetstore.open(tmp_path, **OPTIONS)
    instance.database("main", create=True).create_table("t", [("id", "int")], primary_key="id")
    instance.simulate_crash()
    with pytest.raises(DatabaseDirtyShutdown, match="jetstore recover"):
        check_integrity(tmp_path / "main.edb")


def test_open_instance_is_refused(closed: Path) -> None:
    with jetstore.open(closed, **OPTIONS), pytest.raises(InstanceNameInUse):
        check_integrity(closed / "main.edb")


def test_damaged_pages_are_named(closed: Path) -> None:
    path = closed / "main.edb"
    with OfflineDatabase(FileSystem(), str(path)) as db:
        nodes = list(iter_nodes(db, db.root()))
        leaf = [n.pgno for n in nodes if n.leaf][10]
        page_size = db.page_size
    assert leaf is not None
    flip(path, leaf * page_size + 200)
    report = check_integrity(path)
    assert not report.ok
    tree = [p for p in report.problems if p.area == "tree"]
    assert tree and tree[0].pgno == leaf and "ReadVerifyFailure" in tree[0].message
    assert len(tree) == 1  # one damaged page, reported once


def test_logical_damage_is_found_with_table_and_key(closed: Path) -> None:
    path = closed / "main.edb"
    items, header, tables = entries_and_header(path)
    users = tables["users"]
    index_prefix = object_prefix(users.index_ids[0])
    lv_prefix = object_prefix(users.lv_id)
    record_prefix = object_prefix(users.table_id)
    data = dict(items)
    first_index = next(k for k in data if k.startswith(index_prefix))
    del data[first_index]  # a record without its index entry (and that's all)
    data[lv_prefix + encode_key((999_999,)) + b"\0\2\0\0\0\0"] = b"orphan"  # no record
    second_chunk_key = sorted(k for k in data if k.startswith(lv_prefix) and k[-4:] == b"\0\0\0\1")[
        -1
    ]
    del data[second_chunk_key]  # a long value missing its second chunk
    bad_record = sorted(k for k in data if k.startswith(record_prefix))[5]
    data[bad_record] = b"\x01\x02\x00garbage"
    data[object_prefix(999) + b"stray"] = b"x"  # an object no table owns
    rewrite(path, list(data.items()), header)
    report = check_integrity(path)
    areas = {(p.area, p.table) for p in report.problems}
    assert ("index", "users") in areas
    assert ("long_value", "users") in areas
    assert ("record", "users") in areas
    assert ("catalog", None) in areas
    messages = " | ".join(str(p) for p in report.problems)
    assert "has no entry for the record" in messages
    assert "orphan long-value chunk" in messages
    assert "the long value of column 'photo' has 1500 bytes in 1 chunk(s)" in messages
    assert "object id 999" in messages
    assert "does not decode" in messages
    assert all(p.key for p in report.problems if p.table == "users")


def test_space_accounting_mismatch_is_found(closed: Path) -> None:
    path = closed / "main.edb"
    with OfflineDatabase(FileSystem(), str(path)) as db:
        header = db.header
    wrong = dataclasses.replace(header, free_page_count=header.free_page_count + 1)
    with path.open("r+b") as file:
        encoded = encode_db_header(wrong)
        file.write(encoded + encoded)
    report = check_integrity(path)
    assert [p.area for p in report.problems if p.severity == "error"] == ["space"]

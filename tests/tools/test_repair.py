"""`repair_database`: salvage around damaged pages; report only without the flag."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.errors import DatabaseDirtyShutdown, FileInvalidType, InvalidPath
from jetstore.format.dbheader import DatabaseState
from jetstore.io.files import FileSystem
from jetstore.pages.btree import Node, iterate
from jetstore.tables.catalog import object_prefix
from jetstore.tables.keys import encode_key
from jetstore.tools.dbfile import OfflineDatabase, decode_catalog
from jetstore.tools.integrity import check_integrity
from jetstore.tools.repair import repair_database

from .conftest import OPTIONS, flip, read_all


def tree_pages(path: Path) -> tuple[dict[bytes, int], list[Node], int, Any]:
    """key -> leaf page, the branch nodes below the root, page size, the catalog."""
    leaf_of: dict[bytes, int] = {}
    branches: list[Node] = []
    with OfflineDatabase(FileSystem(), str(path)) as db:
        root = db.root()
        assert root is not None and not root.leaf
        stack = [root]
        while stack:
            node = stack.pop()
            if node.leaf:
                assert node.pgno is not None
                leaf_of.update(dict.fromkeys(node.keys, node.pgno))
                continue
            if node is not root:
                branches.append(node)
            stack.extend(db.load(c) if isinstance(c, int) else c for c in node.children)
        items = list(iterate(db, root, bytes(4), object_prefix(1)))
        return leaf_of, branches, db.page_size, decode_catalog(items)


def test_report_only_changes_nothing(closed: Path) -> None:
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in closed.iterdir()}
    report = repair_database(closed / "main.edb")
    assert not report.applied and not report.data_lost
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in closed.iterdir()}
    assert after == before


def test_damaged_leaves_and_branch_lose_only_their_records(
    closed: Path, expected: dict[str, Any]
) -> None:
    path = closed / "main.edb"
    leaf_of, branches, page_size, catalog = tree_pages(path)
    users = catalog.tables["users"]
    kv = catalog.tables["kv"]
    user_prefix = object_prefix(users.table_id)
    lv_prefix = object_prefix(users.lv_id)
    kv_prefix = object_prefix(kv.table_id)
    user_leaves = sorted({p for k, p in leaf_of.items() if k.startswith(user_prefix)})
    lv_leaves = sorted({p for k, p in leaf_of.items() if k.startswith(lv_prefix)})
    kv_leaves = sorted({p for k, p in leaf_of.items() if k.startswith(kv_prefix)})
    damaged_leaves = {user_leaves[len(user_leaves) // 2], lv_leaves[1], kv_leaves[3]}
    branch = branches[len(branches) // 2]
    assert branch.pgno is not None
    for pgno in [*damaged_leaves, branch.pgno]:
        flip(path, pgno * page_size + 64)
    integrity = check_integrity(path)
    assert not integrity.ok
    assert {p.pgno for p in integrity.problems if p.area == "tree"} >= {branch.pgno}

    dry = repair_database(path)
    assert dry.data_lost and not dry.applied
    assert {d["page"] for d in dry.damaged_pages} == {*damaged_leaves, branch.pgno}

    report = repair_database(path, accept_data_loss=True)
    assert report.applied and report.integrity_ok
    assert report.entries_from_old_pages > 0  # the leaves below the damaged branch
    assert check_integrity(path).ok
    # the old logs can no longer be replayed into it; the damaged file is kept
    assert report.moved_logs_to is not None and os.listdir(report.moved_logs_to)
    assert not (closed / "edb.chk").exists() and not (closed / "edb.log").exists()
    assert report.kept_damaged is not None and Path(report.kept_damaged).exists()
    with OfflineDatabase(FileSystem(), str(path)) as db:
        header = db.header
    assert header.state is DatabaseState.CLEAN
    assert header.log_signature.is_none and header.repair_count == 1

    recovered = read_all(closed)  # the instance opens it (new log stream), indexes agree

    # Every record whose entries all lie on undamaged leaves is back, exactly.
    def lost_user(uid: int) -> bool:
        pk = encode_key((uid,))
        keys = [user_prefix + pk] + [k for k in leaf_of if k.startswith(lv_prefix + pk)]
        return any(leaf_of.get(k) in damaged_leaves for k in keys)

    must_users = {uid for uid in expected["users"] if not lost_user(uid)}
    assert len(must_users) < len(expected["users"])  # the test did damage users
    for uid in must_users:
        assert recovered["users"][uid] == expected["users"][uid], uid
    must_kv = {
        k for k in expected["kv"] if leaf_of[kv_prefix + encode_key((k,))] not in damaged_leaves
    }
    for k in must_kv:
        assert recovered["kv"][k] == expected["kv"][k]
    # what is gone is named: dropped records or records known lost from their index entries
    gone = set(expected["users"]) - set(recovered["users"])
    table = report.tables["users"]
    named = {d["key"] for d in table.dropped} | set(table.lost_known)
    assert {repr((uid,)) for uid in gone} <= named
    assert table.records_lost_known + table.records_dropped >= len(gone)


def test_clean_database_repairs_to_the_same_data(closed: Path, expected: dict[str, Any]) -> None:
    report = repair_database(closed / "main.edb", accept_data_loss=True)
    assert report.applied and not report.data_lost
    assert read_all(closed) == expected


def test_a_dirty_neighbour_database_is_refused(closed: Path) -> None:
    instance = jetstore.open(closed, **OPTIONS)
    instance.database("other", create=True)
    instance.simulate_crash()
    with pytest.raises(DatabaseDirtyShutdown, match=r"other\.edb"):
        repair_database(closed / "main.edb", accept_data_loss=True)


def test_the_report_says_a_dirty_neighbour_would_refuse_the_repair(closed: Path) -> None:
    # The report promised a repair that the run with accept_data_loss then refused.
    instance = jetstore.open(closed, **OPTIONS)
    instance.database("other", create=True)
    instance.simulate_crash()
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in closed.iterdir()}
    report = repair_database(closed / "main.edb")
    assert not report.applied
    refusal = report.as_dict()["would_refuse"]
    assert refusal is not None
    assert refusal["name"] == "DatabaseDirtyShutdown" and refusal["code"] == -550
    assert refusal["path"] == str(closed / "other.edb")
    assert "jetstore recover" in refusal["hint"]
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in closed.iterdir()}
    assert after == before
    jetstore.open(closed, **OPTIONS).close()  # recovered: nothing to refuse any more
    assert repair_database(closed / "main.edb").would_refuse is None


def test_the_report_says_a_backup_set_would_refuse_the_repair(closed: Path, tmp_path: Path) -> None:
    # The report of a set's image promised a repair (would_refuse null, exit 0 when nothing
    # is lost) that the run then refused: the set would no longer match its manifest.
    backup = tmp_path / "set"
    with jetstore.open(closed, **OPTIONS) as instance:
        instance.backup(backup)
    image = backup / "main.edb"
    report = repair_database(image)
    assert not report.applied
    refusal = report.as_dict()["would_refuse"]
    assert refusal is not None
    assert refusal["name"] == "InvalidPath" and refusal["path"] == str(backup)
    assert "backup set" in refusal["detail"] and "jetstore restore" in refusal["hint"]
    with pytest.raises(InvalidPath, match="backup set"):
        repair_database(image, accept_data_loss=True)


@pytest.mark.parametrize("name", ["edb.log", "edb.chk"])
@pytest.mark.parametrize("accept", [False, True])
def test_a_log_or_checkpoint_file_is_no_database_to_repair(
    closed: Path, name: str, accept: bool
) -> None:
    # Its intact header block says what it is; it was taken for a database whose header
    # copies were both lost, and the run moved the instance's logs aside (the named file
    # with them) before failing on the file it had just moved.
    def files() -> dict[str, str]:  # the lock file names its last holder: not compared
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in closed.iterdir()
            if p.name != "jetstore.lock"
        }

    before = files()
    with pytest.raises(FileInvalidType, match=r"not a database") as caught:
        repair_database(closed / name, accept_data_loss=accept)
    assert caught.value.path == str(closed / name)
    assert "nothing was changed" in caught.value.detail
    assert files() == before

"""What bounds the memory of an open instance (docs/design.md, "Memory"): the node cache by
`cache_size`, and the dirty nodes (committed, not yet written by a checkpoint) by `cache_size`
too, whatever the log volume between checkpoints (`checkpoint_depth`).

The bounds are checked by counting nodes, not by the process's memory: the dirty nodes of the
published tree (`Database.dirty_nodes`, checked against a walk of the tree) after every
commit, and the pages the node cache holds.
"""

from __future__ import annotations

import gc
import os
import random
import tracemalloc
from pathlib import Path

import pytest

import jetstore
from jetstore.instance.database import Database
from jetstore.instance.instance import Instance
from jetstore.pages.btree import count_dirty_nodes
from jetstore.transactions.transaction import TransactionState

CACHE = 256 * 1024  # 32 pages of 8 KiB: far below the tables these tests build
NEVER = 1 << 40  # no checkpoint by log volume or by time: only the dirty pages start one


def open_instance(path: Path) -> Instance:
    return jetstore.open(
        path, cache_size=CACHE, checkpoint_depth=NEVER, checkpoint_interval=float(NEVER)
    )


def people(db: Database) -> None:
    """Rows of several columns, with a non-unique index in random order and a unique one."""
    db.create_table(
        "people",
        [
            ("id", "int"),
            ("name", "text"),
            ("score", "float"),
            ("email", "text"),
            ("note", "text", True),
        ],
        "id",
        indexes=[("by_name", "name"), ("by_email", "email", True)],
    )


def person(rng: random.Random, key: int) -> dict[str, object]:
    return {
        "id": key,
        "name": "".join(rng.choice("abcdefghij ") for _ in range(rng.randint(50, 120))),
        "score": rng.random(),
        "email": f"user{key}@example.com",
        "note": None if key % 3 else "n" * 60,
    }


def dirty_after_commit(inst: Instance, db: Database) -> int:
    """The dirty nodes of the published tree, as counted by the commits and as walked (under
    the commit lock: a background checkpoint plans under it)."""
    with inst.commit_lock:
        counted = db.dirty_nodes
        assert counted == count_dirty_nodes(db.root), "dirty node accounting is off"
        assert inst.counters()["dirty_bytes"] == counted * db.page_size
    return counted


def test_dirty_pages_stay_within_cache_size_whatever_the_log_volume(tmp_path: Path) -> None:
    """Small updates spread over a table larger than the cache dirty a page each: before,
    only `checkpoint_depth` bytes of log started a checkpoint, so the dirty nodes grew to the
    whole table (here: never written at all). Now every commit returns with the dirty pages
    within `cache_size`, and the dirty pages start the checkpoints."""
    rng = random.Random(5)
    with open_instance(tmp_path) as inst:
        db = inst.database("main", create=True)
        people(db)
        keys = rng.sample(range(10**9), 6000)
        with db.transaction() as txn:  # one bulk transaction: a tree built in one merge
            table = txn.table("people")
            for key in keys:
                table.insert(person(rng, key))
        assert dirty_after_commit(inst, db) * db.page_size <= CACHE
        pages = db.file.page_count
        assert pages * db.page_size > 4 * CACHE, "the table must outgrow the cache"
        peak = 0
        for _ in range(150):
            with db.transaction() as txn:
                table = txn.table("people")
                for key in rng.sample(keys, 8):
                    table.update(key, {"name": f"renamed {rng.random()}", "score": 0.5})
            dirty = dirty_after_commit(inst, db)
            peak = max(peak, dirty)
            assert dirty * db.page_size <= CACHE
            assert len(db.file.cache) * db.page_size <= CACHE
        counters = inst.counters()
        # Each commit dirties up to ~24 leaves and their branches: the 150 commits dirtied
        # far more than the cache holds, so checkpoints wrote them as they went.
        assert counters["checkpoints"] >= 5
        assert counters["bytes_since_checkpoint"] < NEVER
        assert peak > 0
    with jetstore.open(tmp_path) as inst:
        db = inst.database("main")
        with db.transaction() as txn:
            assert sum(1 for _ in txn.table("people").scan()) == 6000


def test_a_bulk_load_in_transactions_keeps_no_dirty_pages_between_them(tmp_path: Path) -> None:
    """The shape of the report: a bulk load in transactions of many rows with a small
    `cache_size`. A commit that dirtied more than `cache_size` returns only once a checkpoint
    wrote it (`write_backs`): the next transaction never starts beside the previous one's
    dirty nodes, and the cache holds no more than its budget."""
    rng = random.Random(11)
    with open_instance(tmp_path) as inst:
        db = inst.database("main", create=True)
        people(db)
        key = 0
        for _ in range(6):
            with db.transaction() as txn:
                table = txn.table("people")
                for _ in range(1500):
                    table.insert(person(rng, rng.getrandbits(40) * 8 + key % 8))
                    key += 1
            assert dirty_after_commit(inst, db) * db.page_size <= CACHE
            assert len(db.file.cache) * db.page_size <= CACHE
        counters = inst.counters()
        # Each commit's dirty nodes were written before it returned, by its own write-back
        # or by the background thread's checkpoint (started at half the budget) when that
        # one won the race (it does under load): every commit saw one of the two.
        assert counters["checkpoints"] >= 6
        assert counters["write_backs"] >= 1
        assert counters["cache_bytes"] <= CACHE


def test_a_transaction_older_than_a_checkpoint_commits_without_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint's plan (not a commit) since a transaction's snapshot: the transaction
    builds its tree again on the written snapshot before the commit lock and commits by the
    fast path. Before, it replayed every write under the commit lock beside the tree it had
    built (twice the memory of a bulk load, and every committer held up meanwhile)."""
    with jetstore.open(tmp_path) as inst:
        db = inst.database("main", create=True)
        db.create_table("t", [("id", "int"), ("v", "text")], "id", indexes=[("by_v", "v")])
        with db.transaction() as txn:
            for i in range(0, 2000, 2):
                txn.table("t").insert({"id": i, "v": f"v{i % 97}"})
        replays: list[int] = []
        real = Database._check_conflicts

        def spy(self: Database, txn: jetstore.Transaction) -> None:
            replays.append(txn.id)
            real(self, txn)

        monkeypatch.setattr(Database, "_check_conflicts", spy)
        for range_read in (False, True):
            txn = db.transaction()
            table = txn.table("t")
            for i in range(1, 2000, 2):
                table.insert({"id": i, "v": f"w{i % 89}"})
            if range_read:  # builds the private tree now, on the snapshot's dirty nodes
                assert len(list(table.scan())) == 2000
            inst.checkpoint()  # plans the pages of the snapshot's dirty nodes
            txn.commit()
            assert replays == []
            assert db.dirty_nodes == count_dirty_nodes(db.root) > 0
            with db.transaction() as check:
                rows = list(check.table("t").scan())
            assert len(rows) == 2000
            with db.transaction() as clear:
                for i in range(1, 2000, 2):
                    clear.table("t").delete(i)
        # A commit since the snapshot still replays (and checks conflicts).
        txn = db.transaction()
        txn.table("t").insert({"id": 1, "v": "x"})
        with db.transaction() as other:
            other.table("t").insert({"id": 3, "v": "y"})
        txn.commit()
        assert replays == [txn.id]


def test_a_committed_transaction_holds_none_of_its_writes(tmp_path: Path) -> None:
    """Regression: a commit kept the transaction's write map (`operations`), so a committed
    transaction still referenced (the `txn` of a `with` block, until the name is rebound)
    held every value it wrote, up to `max_transaction_bytes`, beside what `cache_size`
    bounds; a rollback dropped it. A 16 MiB long value now leaves only the cache behind."""
    value = os.urandom(16 << 20)
    with open_instance(tmp_path) as inst:
        db = inst.database("main", create=True)
        db.create_table("t", [("id", "int"), ("b", "bytes")], "id")
        gc.collect()
        tracemalloc.start()
        try:
            with db.transaction() as txn:
                txn.table("t").insert({"id": 1, "b": value})
            gc.collect()
            held, _peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert txn.state is TransactionState.COMMITTED
        # The cache (256 KiB), the point-read index and the engine's bookkeeping, not the
        # value's ~2,200 chunks.
        assert held < 4 << 20, f"{held >> 20} MiB held after the commit"
        with db.transaction() as reader:
            assert reader.table("t").get(1) == {"id": 1, "b": value}


def test_dropped_tables_leave_no_codec_behind(tmp_path: Path) -> None:
    """Regression: the database kept the record codec and derived layout of every table id
    it had built them for (`Database.shape_for`), dropped tables included, and table ids are
    never reused: an application creating and dropping a scratch table leaked ~15 KB a
    cycle (15 MB a thousand), without bound."""
    with jetstore.open(tmp_path, cache_size=CACHE) as inst:
        db = inst.database("main", create=True)
        db.create_table("kept", [("id", "int"), ("v", "text")], "id")
        for cycle in range(30):
            db.create_table("scratch", [("id", "int"), ("a", "text")], "id", [("by_a", "a")])
            with db.transaction() as txn:
                txn.table("scratch").insert({"id": cycle, "a": "x" * cycle})
                txn.table("kept").insert({"id": cycle, "v": "y"})
            with db.transaction() as txn:
                assert [r["id"] for r in txn.table("scratch").scan()] == [cycle]
            if cycle % 2:
                db.drop_table("scratch")
            else:
                with db.transaction() as txn:  # a drop among other writes
                    txn.table("kept").update(cycle, {"v": "z"})
                    txn.drop_table("scratch")
        with db.transaction() as txn:
            live = {txn.table(name).definition.table_id for name in txn.table_names()}
            assert sum(1 for r in txn.table("kept").scan()) == 30
        assert set(db._shapes) <= live and set(db._codecs) <= live

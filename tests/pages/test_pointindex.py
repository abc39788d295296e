"""The point-read index (`jetstore.pages.pointindex`, design D18): exact for the tree it
describes, kept exact by commits, bounded by the node cache, and never used for another tree.

Unit tests drive `PointReadIndex` with hand-made nodes; the engine tests read through
`Table.get` and check the index against a plain descent of the tree it describes; a state
machine mixes commits, checkpoints, evictions and reads of old and new snapshots against a
dict model; a thread test reads the latest snapshot while commits change the keys read.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import jetstore
from jetstore.format.positions import LogPosition
from jetstore.pages.btree import Node, lookup
from jetstore.pages.cache import NodeCache
from jetstore.pages.pagefile import DatabaseFile
from jetstore.pages.pointindex import PointReadIndex

# ----------------------------------------------------------------- the index alone


def leaf(pgno: int, *pairs: tuple[bytes, bytes]) -> Node:
    return Node.new_leaf([k for k, _ in pairs], [v for _, v in pairs], pgno=pgno)


def test_a_fill_adds_a_cached_leaf_of_the_described_tree_only() -> None:
    index = PointReadIndex()
    root, other = leaf(5, (b"a", b"1")), leaf(6, (b"b", b"2"))
    index.reset(root)
    assert not index.fill(other, other, {6: other})  # not the tree described
    assert not index.fill(root, root, {})  # the cache does not hold it
    assert not index.fill(root, root, {5: leaf(5, (b"a", b"1"))})  # another node of page 5
    root.index = {b"a": b"1"}
    assert index.fill(root, root, {5: root})
    assert index.entries == {b"a": b"1"}
    assert root.indexed_in == index.generation
    assert root.index is None, "one dict of a leaf's entries is enough"
    unwritten = Node.new_leaf([b"c"], [b"3"], pgno=None)
    index.reset(unwritten)
    assert not index.fill(unwritten, unwritten, {})


def test_advance_updates_and_removes_present_keys_and_ignores_absent_ones() -> None:
    index = PointReadIndex()
    old = leaf(5, (b"a", b"1"), (b"b", b"2"), (b"c", b"3"))
    index.reset(old)
    assert index.fill(old, old, {5: old})
    version = index.version
    new = Node.new_leaf([b"a", b"c", b"d"], [b"9", b"3", b"4"], pgno=None)
    index.advance(old, new, {b"a": b"9", b"b": None, b"d": b"4"})
    assert index.version != version, "a reader that probed meanwhile must see it moved"
    assert index.root is new
    assert index.entries == {b"a": b"9", b"c": b"3"}


def test_advance_of_many_keys_intersects_them_with_the_index() -> None:
    index = PointReadIndex()
    keys = [b"k%04d" % i for i in range(300)]
    old = leaf(7, *[(k, b"old") for k in keys])
    index.reset(old)
    assert index.fill(old, old, {7: old})
    changes: dict[bytes, bytes | None] = {b"z%04d" % i: b"new" for i in range(500)}
    changes.update({k: (None if i % 2 else b"new") for i, k in enumerate(keys[:200])})
    index.advance(old, None, changes)
    expected = {k: b"new" for k in keys[:200:2]}
    expected.update({k: b"old" for k in keys[200:]})
    assert index.entries == expected


def test_advance_from_a_tree_not_described_empties_the_index() -> None:
    index = PointReadIndex()
    old = leaf(5, (b"a", b"1"))
    index.reset(old)
    assert index.fill(old, old, {5: old})
    generation = index.generation
    stranger, new = leaf(6, (b"a", b"2")), leaf(7, (b"a", b"3"))
    index.advance(stranger, new, {b"a": b"3"})
    assert index.entries == {}
    assert index.root is new
    assert index.generation > generation
    assert old.indexed_in != index.generation, "the leaf may be filled again"


def test_an_advance_interrupted_halfway_describes_no_tree_until_the_next_one() -> None:
    index = PointReadIndex()
    old = leaf(5, (b"a", b"1"), (b"b", b"2"))
    index.reset(old)
    assert index.fill(old, old, {5: old})

    class Interrupted(Mapping[bytes, bytes | None]):
        """Changes whose reading stops halfway, as a KeyboardInterrupt would."""

        def __getitem__(self, key: bytes) -> bytes | None:
            raise KeyError(key)

        def __len__(self) -> int:
            return 2

        def __iter__(self) -> Iterator[bytes]:
            yield b"a"
            raise KeyboardInterrupt

        def items(self) -> Iterator[tuple[bytes, bytes | None]]:  # type: ignore[override]
            yield b"a", b"9"
            raise KeyboardInterrupt

    new = leaf(6, (b"a", b"9"), (b"b", b"8"))
    with pytest.raises(KeyboardInterrupt):
        index.advance(old, new, Interrupted())
    assert index.root is None, "half-applied entries describe no tree"
    assert not index.lock.locked()
    newer = leaf(7, (b"a", b"9"))
    index.advance(new, newer, {b"b": None})
    assert index.entries == {} and index.root is newer


def test_an_advance_interrupted_halfway_is_not_taken_for_the_empty_tree() -> None:
    """`root` None is also the empty tree: an advance from it must not keep the entries an
    interrupted advance left behind (half of a commit's changes, for a tree not described)."""
    index = PointReadIndex()
    old = leaf(5, (b"a", b"1"), (b"b", b"2"))
    index.reset(old)
    assert index.fill(old, old, {5: old})

    class Interrupted(dict[bytes, bytes | None]):
        def items(self) -> Iterator[tuple[bytes, bytes | None]]:  # type: ignore[override]
            yield b"a", b"9"
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index.advance(old, leaf(6, (b"a", b"9"), (b"b", b"2")), Interrupted(a=None))
    assert index.root is None and index.entries
    new = leaf(7, (b"c", b"3"))
    index.advance(None, new, {b"c": b"3"})  # a commit into an empty tree
    assert index.root is new
    assert index.entries == {}, "entries of another tree"


def test_forget_removes_the_entries_of_a_leaf_filled_in_this_generation() -> None:
    index = PointReadIndex()
    first = leaf(5, (b"a", b"1"), (b"b", b"2"))
    second = leaf(6, (b"c", b"3"))
    root = leaf(9)
    index.reset(root)
    assert index.fill(root, first, {5: first})
    assert index.fill(root, second, {6: second})
    index.forget(second)
    assert index.entries == {b"a": b"1", b"b": b"2"}
    assert second.indexed_in == -1
    index.forget(second)  # twice: nothing more
    index.clear()
    assert index.entries == {}
    index.forget(first)  # filled in an older generation: its keys are not counted on
    assert index.forgotten == 1


def test_a_leaf_the_cache_drops_while_it_is_being_filled_leaves_no_entries() -> None:
    """Invariant 4 under a race: a reader's `fill` saw the cache holding the leaf, then (on
    another thread, before the fill marked the leaf) the cache dropped it. The drop's
    `forget` must still take the leaf's keys out once the fill is done; else they stay in
    the index, belonging to no cached leaf, until it is next emptied (a leak that grows with
    every such race)."""
    index = PointReadIndex()
    cache = NodeCache(16)
    cache.on_drop = index.forget
    cache.on_clear = index.clear
    root = leaf(5, (b"a", b"1"), (b"b", b"2"))
    cache.put(5, root)
    index.reset(root)
    dropper: list[threading.Thread] = []

    class DroppedRightAfter(Mapping[int, Node]):
        """The cache's nodes, as a fill reads them; the leaf is dropped once it was seen."""

        def __getitem__(self, pgno: int) -> Node:
            return cache.nodes[pgno]

        def __iter__(self) -> Iterator[int]:
            return iter(cache.nodes)

        def __len__(self) -> int:
            return len(cache.nodes)

        def get(self, pgno: int, default: object = None) -> Node | None:  # type: ignore[override]
            seen = cache.nodes.get(pgno)
            thread = threading.Thread(target=cache.discard, args=(pgno,))
            dropper.append(thread)
            thread.start()
            deadline = time.monotonic() + 10
            while pgno in cache.nodes and time.monotonic() < deadline:
                time.sleep(0.0005)  # until the other thread took it out of the cache
            return seen

    index.fill(root, root, DroppedRightAfter())
    dropper[0].join(10)
    assert not dropper[0].is_alive()
    assert 5 not in cache.nodes
    assert index.entries == {}, "the keys of a leaf the cache no longer holds"


def test_evictions_make_the_next_point_reads_descend_and_probe_only_names_root() -> None:
    """Invariant 6: each eviction owes descents (reads through the node cache, which mark
    what they reach); meanwhile no read probes, and `probe` names `root` again once they
    are made, across a commit too. It never names another tree."""
    index = PointReadIndex()
    root = leaf(5, (b"a", b"1"))
    index.reset(root)
    index.evicted()
    assert index.probe is root and index.owed == 0, "nothing is answered here yet"
    assert index.fill(root, root, {5: root})
    index.evicted()
    owed = index.owed
    assert owed > 0 and index.probe is None
    new = leaf(6, (b"a", b"2"))
    index.advance(root, new, {b"a": b"2"})
    assert index.root is new and index.probe is None
    for _ in range(owed - 1):
        index.descended()
        assert index.probe is None
    index.descended()
    assert index.owed == 0 and index.probe is new
    index.descended()  # a descent owed nothing
    assert index.probe is new
    for _ in range(1000):
        index.evicted()
    assert index.owed <= 256, "a burst of evictions owes a bounded number of descents"


def test_a_disabled_index_describes_no_tree() -> None:
    index = PointReadIndex(enabled=False)
    root = leaf(5, (b"a", b"1"))
    index.reset(root)
    index.advance(root, root, {})
    assert index.root is None
    assert not index.fill(root, root, {5: root})


# ----------------------------------------------------------------- through the engine

OPTIONS: dict[str, object] = dict(log_file_size=256 * 1024, control_socket=False)


def key(i: int) -> bytes:
    return b"key-%06d" % i


def load(db: jetstore.Database, count: int, version: int = 0) -> None:
    with db.transaction() as txn:
        table = txn.table("t")
        for i in range(count):
            table.insert({"k": key(i), "v": b"v%d-%d" % (version, i)})


def file_of(db: jetstore.Database) -> DatabaseFile:
    return db.file


def assert_exact(file: DatabaseFile) -> None:
    """Invariants 1 and 4: every entry is what the described tree holds, and belongs to a
    filled leaf the node cache holds."""
    points = file.point_index
    root = points.root
    if root is None:
        assert not points.entries
        return
    cached_keys: set[bytes] = set()
    for node in list(file.cache.nodes.values()):
        if node.leaf and node.indexed_in == points.generation:
            cached_keys.update(node.keys)
    for k, v in list(points.entries.items()):
        # A plain descent of the tree, no index involved.
        assert lookup(file, root, k) == v, k
        assert k in cached_keys, k


@pytest.fixture
def db(tmp_path: Path) -> Iterator[jetstore.Database]:
    with jetstore.open(tmp_path / "inst", **OPTIONS) as instance:  # type: ignore[arg-type]
        database = instance.database("main", create=True)
        database.create_table("t", [("k", "bytes"), ("v", "bytes")], primary_key="k")
        yield database


def test_point_reads_fill_the_index_and_are_answered_by_it(db: jetstore.Database) -> None:
    load(db, 2000)
    instance = db._instance
    instance.checkpoint()  # written leaves: only those are filled
    with db.transaction() as txn:
        get = txn.table("t").get
        for i in range(0, 2000, 7):
            assert get(key(i)) == {"k": key(i), "v": b"v0-%d" % i}
        before = instance.counters()
        for i in range(2000):
            assert get(key(i)) == {"k": key(i), "v": b"v0-%d" % i}
        assert get(b"absent") is None
        after = instance.counters()
    assert after["point_index_entries"] >= 2000
    assert after["point_index_hits"] - before["point_index_hits"] >= 2000 - 1
    assert after["point_index_fills"] > 0
    assert_exact(file_of(db))


def test_commits_keep_the_index_exact_and_old_snapshots_read_their_own_tree(
    db: jetstore.Database,
) -> None:
    load(db, 1000)
    db._instance.checkpoint()
    with db.transaction() as txn:
        for i in range(1000):
            txn.table("t").get(key(i))
    assert len(file_of(db).point_index) >= 1000
    old = db.transaction()
    with db.transaction() as txn:
        table = txn.table("t")
        table.update(key(1), {"v": b"changed"})
        table.delete(key(2))
        table.insert({"k": key(5000), "v": b"new"})
    assert_exact(file_of(db))
    with db.transaction() as txn:
        table = txn.table("t")
        assert table.get(key(1)) == {"k": key(1), "v": b"changed"}
        assert table.get(key(2)) is None
        assert table.get(key(5000)) == {"k": key(5000), "v": b"new"}
        assert table.get(key(3)) == {"k": key(3), "v": b"v0-3"}
    old_table = old.table("t")
    assert old_table.get(key(1)) == {"k": key(1), "v": b"v0-1"}
    assert old_table.get(key(2)) == {"k": key(2), "v": b"v0-2"}
    assert old_table.get(key(5000)) is None
    old.rollback()
    # A large commit (intersected with the index) keeps it exact as well.
    with db.transaction() as txn:
        table = txn.table("t")
        for i in range(0, 1000, 3):
            table.update(key(i), {"v": b"third"})
    assert_exact(file_of(db))
    with db.transaction() as txn:
        assert txn.table("t").get(key(3)) == {"k": key(3), "v": b"third"}


def test_schema_changes_long_values_and_a_table_dropped_and_created_again_keep_it_exact(
    db: jetstore.Database,
) -> None:
    """Every change reaches the tree as commit operations, long-value chunks, index entries
    and catalog entries included: after each kind of change, reads through the index give
    the new state, an older snapshot its own, and every entry is what the tree holds."""
    instance = db._instance
    db.add_column("t", "n", "int")
    long_value = bytes(range(256)) * 80  # kept in chunks beside the record

    def value(i: int, version: int) -> bytes:
        return long_value if i % 10 == 0 else b"v%d-%d" % (version, i)

    with db.transaction() as txn:
        table = txn.table("t")
        for i in range(400):
            table.insert({"k": key(i), "v": value(i, 0), "n": i})

    def read_all(expected: dict[bytes, dict[str, object]]) -> None:
        instance.checkpoint()  # written leaves, so that reads fill the index
        for _ in range(2):
            with db.transaction() as txn:
                get = txn.table("t").get
                for i in range(0, 420, 3):
                    assert get(key(i)) == expected.get(key(i)), i
        assert_exact(file_of(db))

    rows = {key(i): {"k": key(i), "v": value(i, 0), "n": i} for i in range(400)}
    read_all(rows)
    older = db.transaction()
    older_table = older.table("t")
    db.create_index("t", "by_n", "n", unique=True)
    read_all(rows)
    db.drop_index("t", "by_n")
    read_all(rows)
    db.drop_column("t", "n")  # every record written again, in one commit
    rows = {k: {"k": k, "v": row["v"]} for k, row in rows.items()}
    read_all(rows)
    with db.transaction() as txn:
        table = txn.table("t")
        for i in range(0, 400, 5):
            table.update(key(i), {"v": value(i + 1, 1)})  # long values in and out
    rows.update({key(i): {"k": key(i), "v": value(i + 1, 1)} for i in range(0, 400, 5)})
    read_all(rows)
    db.drop_table("t")
    db.create_table("t", [("k", "bytes"), ("v", "bytes")], primary_key="k")
    read_all({})
    with db.transaction() as txn:
        txn.table("t").insert({"k": key(3), "v": b"again"})
    read_all({key(3): {"k": key(3), "v": b"again"}})
    assert older_table.get(key(10)) == {"k": key(10), "v": long_value, "n": 10}
    assert older_table.get(key(3)) == {"k": key(3), "v": b"v0-3", "n": 3}
    older.rollback()
    assert instance.counters()["point_index_hits"] > 0


def index_filled_and_a_reader(db: jetstore.Database) -> tuple[PointReadIndex, jetstore.Transaction]:
    """300 rows written, key 9's leaf in the index, and a transaction reading that snapshot."""
    load(db, 300)
    db._instance.checkpoint()
    with db.transaction() as txn:
        assert txn.table("t").get(key(9)) is not None  # fills the index
    return file_of(db).point_index, db.transaction()


def test_a_read_that_a_commit_overtakes_reads_its_snapshot(db: jetstore.Database) -> None:
    """The interleaving the sequence lock exists for: a reader checked that the index
    describes its snapshot, then a commit changed the index before the reader's probe. The
    probe finds the commit's value; the reader must see `version` moved and read its tree."""
    points, reader = index_filled_and_a_reader(db)

    class Overtaken(dict[bytes, bytes]):
        commits = 0

        def get(self, k: bytes, default: object = None) -> object:  # type: ignore[override]
            if not Overtaken.commits:
                Overtaken.commits += 1
                with db.transaction() as writer:
                    writer.table("t").update(key(9), {"v": b"newer"})
            return super().get(k, default)

    points.entries = Overtaken(points.entries)
    try:
        assert reader.table("t").get(key(9)) == {"k": key(9), "v": b"v0-9"}
        assert Overtaken.commits == 1
        with db.transaction() as txn:
            assert txn.table("t").get(key(9)) == {"k": key(9), "v": b"newer"}
    finally:
        reader.rollback()


def test_a_read_between_the_version_moving_and_the_root_hidden_reads_its_snapshot(
    db: jetstore.Database,
) -> None:
    """The sequence lock's other edge: a reader that reads `version` after a commit's
    `advance` moved it must not still find `root` naming its (older) snapshot, or it probes
    entries the commit then changes and sees `version` unmoved. The commit is paused at the
    first line of `advance` after `version` moved; a reader of the older snapshot reads
    there, and its probe lets the commit finish first."""
    points, reader = index_filled_and_a_reader(db)
    table = reader.table("t")
    before = points.version
    paused, resume, done = threading.Event(), threading.Event(), threading.Event()

    def pause_once_version_moved(frame: FrameType, event: str, arg: object) -> object:
        if frame.f_code is not PointReadIndex.advance.__code__:
            return None

        def line(frame: FrameType, event: str, arg: object) -> object:
            if event == "line" and points.version != before and not paused.is_set():
                paused.set()
                resume.wait(10)
            return line

        return line

    def writer() -> None:
        sys.settrace(pause_once_version_moved)
        try:
            with db.transaction() as txn:
                txn.table("t").update(key(9), {"v": b"newer"})
        finally:
            sys.settrace(None)
            done.set()

    class Overtaken(dict[bytes, bytes]):
        armed = False

        def get(self, k: bytes, default: object = None) -> object:  # type: ignore[override]
            if Overtaken.armed:  # the reader's probe, not the writer's own read
                Overtaken.armed = False
                resume.set()  # the commit changes the entries before this probe reads them
                done.wait(10)
            return super().get(k, default)

    points.entries = Overtaken(points.entries)
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert paused.wait(10), "the commit never moved the version"
        Overtaken.armed = True
        assert table.get(key(9)) == {"k": key(9), "v": b"v0-9"}
    finally:
        resume.set()
        thread.join(10)
        reader.rollback()
    assert done.is_set()
    with db.transaction() as txn:
        assert txn.table("t").get(key(9)) == {"k": key(9), "v": b"newer"}


def test_reads_in_a_transaction_with_writes_of_its_own_see_them(db: jetstore.Database) -> None:
    load(db, 300)
    db._instance.checkpoint()
    with db.transaction() as txn:
        table = txn.table("t")
        assert table.get(key(7)) is not None  # fills
        table.update(key(7), {"v": b"mine"})
        assert table.get(key(7)) == {"k": key(7), "v": b"mine"}
        txn.rollback()
    with db.transaction() as txn:
        assert txn.table("t").get(key(7)) == {"k": key(7), "v": b"v0-7"}


@pytest.mark.parametrize("path", ["inline", "long value", "general", "moving update"])
def test_a_writes_duplicate_check_does_not_fill_the_index(db: jetstore.Database, path: str) -> None:
    """Writes probe their key (usually absent) once: filling a leaf for that, or giving it a
    dict of its own, would only cost the write path. The long-value and general insert
    paths filled a leaf per insert before `Transaction.contains`; an update moving a record
    to a new primary key probes that key the same way."""
    load(db, 2000)
    db._instance.checkpoint()

    def write(table: jetstore.Table, old: bytes, new: bytes) -> None:
        if path == "inline":
            table.insert({"k": new, "v": b"x"})
        elif path == "long value":
            table.insert({"k": new, "v": b"L" * 10_000})  # too large to keep inline
        elif path == "general":
            table.insert(OrderedDict(k=new, v=b"x"))  # not a plain dict: validated first
        else:
            table.update(old, {"k": new})

    for i in range(200):
        old = key(i * 7 % 2000)
        with db.transaction() as txn:
            write(txn.table("t"), old, old + b"+")
    if path != "moving update":  # an update reads the record it changes, as `get` does
        assert db._instance.counters()["point_index_fills"] == 0
        assert not any(node.index for node in db.file.cache.nodes.values())
    with db.transaction() as txn, pytest.raises(jetstore.errors.KeyDuplicate):
        write(txn.table("t"), key(5), key(6))
    with db.transaction() as txn:  # and what was written reads back
        expected = b"L" * 10_000 if path == "long value" else b"x"
        if path == "moving update":
            expected = b"v0-" + str(7 * 7 % 2000).encode()
        assert txn.table("t").get(key(7 * 7 % 2000) + b"+") == {
            "k": key(7 * 7 % 2000) + b"+",
            "v": expected,
        }


def test_the_index_holds_only_leaves_the_node_cache_holds(tmp_path: Path) -> None:
    # A cache of 32 pages (256 KiB) and ~100 leaves: reads evict, evictions forget.
    options = dict(OPTIONS, cache_size=256 * 1024)
    with jetstore.open(tmp_path / "inst", **options) as instance:  # type: ignore[arg-type]
        db = instance.database("main", create=True)
        db.create_table("t", [("k", "bytes"), ("v", "bytes")], primary_key="k")
        with db.transaction() as txn:
            table = txn.table("t")
            for i in range(4000):
                table.insert({"k": key(i), "v": bytes(150)})
        instance.checkpoint()
        points = file_of(db).point_index
        with db.transaction() as txn:
            get = txn.table("t").get
            for round_ in range(2):
                for i in range(0, 4000, 3):
                    assert get(key(i)) == {"k": key(i), "v": bytes(150)}, (round_, i)
        assert points.forgotten > 0, "the cache evicted filled leaves"
        assert len(points) < 4000
        assert_exact(file_of(db))


def test_a_leaf_whose_keys_a_dropped_leaf_took_along_is_filled_again(
    db: jetstore.Database,
) -> None:
    """A commit copies a filled leaf; an older snapshot keeps the old page from being freed
    at the next checkpoint, which writes the copy, and a read fills the copy. When the old
    page is freed at last, the cache discards the old leaf and `forget` takes its keys out:
    the copy's keys too (they are the same keys). The copy stays marked filled, so without a
    refill the index would never answer its keys again until it is next emptied."""
    load(db, 300)
    instance = db._instance
    instance.checkpoint()
    points = file_of(db).point_index
    with db.transaction() as txn:
        assert txn.table("t").get(key(5)) is not None  # fills the leaf of keys 0..~130
    older = db.transaction()  # keeps that leaf's page from being reused
    with db.transaction() as txn:
        txn.table("t").insert({"k": key(5) + b"+", "v": b"new"})  # copies the leaf
    instance.checkpoint()  # writes the copy and caches it; the old page stays pending
    with db.transaction() as txn:
        # Not in the index: the read reaches the copy and fills it.
        assert txn.table("t").get(key(5) + b"+") == {"k": key(5) + b"+", "v": b"new"}
    older.rollback()
    instance.checkpoint()  # frees the old page: the old leaf leaves the cache and the index
    with db.transaction() as txn:
        get = txn.table("t").get
        for i in range(50):
            assert get(key(i)) == {"k": key(i), "v": b"v0-%d" % i}
        hits = points.hits
        for i in range(50):
            assert get(key(i)) == {"k": key(i), "v": b"v0-%d" % i}
    assert points.hits - hits == 50, "the copy's keys are answered by the index again"
    assert_exact(file_of(db))


def test_leaves_hot_through_the_index_stay_in_the_node_cache(tmp_path: Path) -> None:
    """Reads the index answers touch no node, so they cannot set a leaf's CLOCK bit: unless
    some reads still go through the cache, the leaves read most look unread and are evicted
    first, then read from disk again. A few hot leaves read between cold reads all over a
    table larger than the cache must cost about as many page reads with the index as
    without it."""

    def pages_read(enabled: bool) -> int:
        options = dict(OPTIONS, cache_size=256 * 1024, point_read_index=enabled)
        with jetstore.open(tmp_path / f"inst-{enabled}", **options) as instance:  # type: ignore[arg-type]
            db = instance.database("main", create=True)
            db.create_table("t", [("k", "bytes"), ("v", "bytes")], primary_key="k")
            with db.transaction() as txn:
                table = txn.table("t")
                for i in range(4000):  # ~100 leaves; the cache holds 32 pages
                    table.insert({"k": key(i), "v": bytes(150)})
            instance.checkpoint()
            file_of(db).cache.clear()
            before = file_of(db).pages_read
            with db.transaction() as txn:
                get = txn.table("t").get
                draw = random.Random(7).randrange
                for n in range(10000):
                    if n % 16:
                        assert get(key(draw(400))) is not None  # the first ~8 leaves
                    else:
                        assert get(key(400 + draw(3600))) is not None  # anywhere else
            if enabled:
                assert instance.counters()["point_index_hits"] > 0
                assert_exact(file_of(db))
            return file_of(db).pages_read - before

    without = pages_read(False)
    # Without the index ~540 pages; with it, and nothing to let hot leaves show: ~870.
    assert pages_read(True) <= without * 6 // 5, without


def test_recovery_in_several_replay_batches_leaves_it_describing_the_recovered_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery publishes each replay batch without `advance` (`finish_replay`): the index
    must describe the tree published last, and answer reads of it exactly."""
    from jetstore.instance import database

    with jetstore.open(tmp_path / "inst", **OPTIONS) as instance:  # type: ignore[arg-type]
        db = instance.database("main", create=True)
        db.create_table("t", [("k", "bytes"), ("v", "bytes")], primary_key="k")
        load(db, 500)
        instance.checkpoint()
        for n in range(1, 40):
            with db.transaction() as txn:
                table = txn.table("t")
                for i in range(n, 500, 37):
                    table.update(key(i), {"v": b"r%d-%d" % (n, i)})
                table.delete(key(n))
        expected: dict[bytes, dict[str, object] | None] = {}
        with db.transaction() as txn:
            for i in range(500):
                expected[key(i)] = txn.table("t").get(key(i))
        instance.simulate_crash()
    batches: list[int] = []
    finish_replay = database.Database.finish_replay

    def counted(self: database.Database) -> None:
        if self._replay:
            batches.append(len(self._replay))
        finish_replay(self)

    monkeypatch.setattr(database, "_REPLAY_BATCH_BYTES", 2048)
    monkeypatch.setattr(database.Database, "finish_replay", counted)
    with jetstore.open(tmp_path / "inst", **OPTIONS) as instance:  # type: ignore[arg-type]
        db = instance.database("main")
        assert len(batches) > 2, batches
        points = file_of(db).point_index
        assert points.root is db.root and points.probe is db.root
        instance.checkpoint()
        for _ in range(2):
            with db.transaction() as txn:
                for i in range(500):
                    assert txn.table("t").get(key(i)) == expected[key(i)], i
        assert points.hits > 0
        assert_exact(file_of(db))


def test_the_index_can_be_turned_off(tmp_path: Path) -> None:
    options = dict(OPTIONS, point_read_index=False)
    with jetstore.open(tmp_path / "inst", **options) as instance:  # type: ignore[arg-type]
        db = instance.database("main", create=True)
        db.create_table("t", [("k", "bytes"), ("v", "bytes")], primary_key="k")
        load(db, 500)
        instance.checkpoint()
        with db.transaction() as txn:
            for i in range(500):
                assert txn.table("t").get(key(i)) == {"k": key(i), "v": b"v0-%d" % i}
        counters = instance.counters()
        assert counters["point_index_entries"] == counters["point_index_fills"] == 0


def test_closing_and_detaching_empty_the_index(tmp_path: Path) -> None:
    with jetstore.open(tmp_path / "inst", **OPTIONS) as instance:  # type: ignore[arg-type]
        db = instance.database("main", create=True)
        db.create_table("t", [("k", "bytes"), ("v", "bytes")], primary_key="k")
        load(db, 500)
        instance.checkpoint()
        with db.transaction() as txn:
            txn.table("t").get(key(1))
        points = file_of(db).point_index
        assert len(points) > 0
        instance.detach("main")
        assert len(points) == 0
        db = instance.attach(str(tmp_path / "inst" / "main.edb"))
        with db.transaction() as txn:
            assert txn.table("t").get(key(1)) == {"k": key(1), "v": b"v0-1"}


# ----------------------------------------------------------------- model-based


class PointReadMachine(RuleBasedStateMachine):
    """Commits, checkpoints, evictions and reads of old and new snapshots, against a dict
    model of every committed state; the index is checked exact after every step."""

    KEYS = st.integers(min_value=0, max_value=300)

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self._dir = tempfile.TemporaryDirectory()
        options = dict(OPTIONS, cache_size=256 * 1024)
        self.instance = jetstore.open(Path(self._dir.name) / "inst", **options)  # type: ignore[arg-type]
        self.db = self.instance.database("main", create=True)
        self.db.create_table("t", [("k", "bytes"), ("v", "bytes")], primary_key="k")
        self.model: dict[bytes, bytes] = {}
        self.snapshots: list[tuple[jetstore.Transaction, dict[bytes, bytes]]] = []
        self.version = 0

    @rule(
        puts=st.lists(KEYS, max_size=40),
        deletes=st.lists(KEYS, max_size=10),
        bulk=st.booleans(),
    )
    def commit(self, puts: list[int], deletes: list[int], bulk: bool) -> None:
        self.version += 1
        changes: dict[bytes, bytes | None] = {}
        for i in puts * (8 if bulk else 1):
            changes[key(i if not bulk else i + 301 * (len(changes) % 8))] = b"v%d" % self.version
        for i in deletes:
            changes[key(i)] = None
        with self.db.transaction() as txn:
            table = txn.table("t")
            for k, v in changes.items():
                if v is None:
                    if k in self.model:
                        table.delete(k)
                elif k in self.model:
                    table.update(k, {"v": v})
                else:
                    table.insert({"k": k, "v": v})
        for k, v in changes.items():
            if v is None:
                self.model.pop(k, None)
            else:
                self.model[k] = v

    @rule()
    def checkpoint(self) -> None:
        self.instance.checkpoint()

    @rule(keys=st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=60))
    def read_latest(self, keys: list[int]) -> None:
        with self.db.transaction() as txn:
            get = txn.table("t").get
            for i in keys:
                k = key(i)
                got = get(k)
                expected = self.model.get(k)
                assert (got and got["v"]) == expected, (k, got, expected)

    @precondition(lambda self: len(self.snapshots) < 4)
    @rule()
    def open_snapshot(self) -> None:
        self.snapshots.append((self.db.transaction(), dict(self.model)))

    @precondition(lambda self: bool(self.snapshots))
    @rule(which=st.integers(min_value=0, max_value=3), keys=st.lists(KEYS, max_size=20))
    def read_snapshot(self, which: int, keys: list[int]) -> None:
        txn, model = self.snapshots[which % len(self.snapshots)]
        get = txn.table("t").get
        for i in keys:
            got = get(key(i))
            assert (got and got["v"]) == model.get(key(i))

    @precondition(lambda self: bool(self.snapshots))
    @rule()
    def end_snapshot(self) -> None:
        txn, _ = self.snapshots.pop(0)
        txn.rollback()

    @rule()
    def evict_everything(self) -> None:
        self.db.file.cache.clear()

    @invariant()
    def index_is_exact(self) -> None:
        assert_exact(self.db.file)

    def teardown(self) -> None:
        for txn, _ in self.snapshots:
            txn.rollback()
        self.instance.close()
        self._dir.cleanup()


TestPointReadMachine = PointReadMachine.TestCase
TestPointReadMachine.settings = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ----------------------------------------------------------------- threads


def test_readers_of_the_latest_snapshot_see_exactly_its_commits(tmp_path: Path) -> None:
    race_readers_with_a_writer(tmp_path, commits=600)


@pytest.mark.soak
def test_soak_readers_of_the_latest_snapshot_see_exactly_its_commits(tmp_path: Path) -> None:
    for round_ in range(20):
        race_readers_with_a_writer(tmp_path / str(round_), commits=5000)


class SoakPointReadMachine(PointReadMachine):
    pass


SoakPointReadMachine.TestCase.settings = settings(
    max_examples=1500,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSoakPointReadMachine = pytest.mark.soak(SoakPointReadMachine.TestCase)


def race_readers_with_a_writer(tmp_path: Path, commits: int) -> None:
    """A writer changes keys (value = the commit's number) while readers read the latest
    snapshot through the index and a checkpointer writes leaves (making them fillable);
    every value read must be the last write at or before the reader's snapshot."""
    keys = [key(i) for i in range(64)]
    with jetstore.open(tmp_path / "inst", **OPTIONS) as instance:  # type: ignore[arg-type]
        db = instance.database("main", create=True)
        db.create_table("t", [("k", "bytes"), ("v", "bytes")], primary_key="k")
        with db.transaction() as txn:
            for k in keys:
                txn.table("t").insert({"k": k, "v": b"0"})
        instance.checkpoint()
        history: dict[bytes, list[tuple[LogPosition, bytes | None]]] = {
            k: [(LogPosition.MIN, b"0")] for k in keys
        }
        reads: list[tuple[LogPosition, bytes, bytes | None]] = []
        stop = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for n in range(1, commits):
                    k = keys[(n * 7) % len(keys)]
                    value: bytes | None = None if n % 5 == 0 else b"%d" % n
                    with db.transaction() as txn:
                        table = txn.table("t")
                        present = table.get(k) is not None
                        if value is None:
                            if present:
                                table.delete(k)
                        elif present:
                            table.update(k, {"v": value})
                        else:
                            table.insert({"k": k, "v": value})
                    position = db.position
                    history[k].append((position, value))
            except BaseException as exc:
                errors.append(exc)
            finally:
                stop.set()

        def reader() -> None:
            try:
                while not stop.is_set():
                    with db.transaction() as txn:
                        get = txn.table("t").get
                        for k in keys:
                            got = get(k)
                            reads.append((txn.snapshot_position, k, got and got["v"]))  # type: ignore[arg-type]
            except BaseException as exc:
                errors.append(exc)

        def checkpointer() -> None:
            try:
                while not stop.is_set():
                    instance.checkpoint()
            except BaseException as exc:
                errors.append(exc)

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        try:
            threads = [threading.Thread(target=t) for t in (writer, reader, reader, checkpointer)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
        finally:
            sys.setswitchinterval(interval)
        assert not errors, errors
        assert instance.counters()["point_index_hits"] > 0
    assert reads
    for snapshot, k, got in reads:
        expected = [v for position, v in history[k] if position <= snapshot][-1]
        assert got == expected, (snapshot, k, got, expected)


def test_a_fill_interrupted_halfway_leaves_no_keys_unaccounted_for() -> None:
    """An interrupt inside `fill`'s update (entries added, more to come) must not leave keys
    in the index that no marked leaf accounts for: `forget` of the leaf takes them out."""
    index = PointReadIndex()
    root = leaf(9)
    index.reset(root)
    filled = leaf(5, (b"a", b"1"), (b"b", b"2"), (b"c", b"3"))

    class Interrupting(list[bytes]):
        def __iter__(self) -> Iterator[bytes]:
            yield b"a"
            yield b"b"
            raise KeyboardInterrupt

    filled.keys = Interrupting(filled.keys)
    with pytest.raises(KeyboardInterrupt):
        index.fill(root, filled, {5: filled})
    assert not index.lock.locked()
    assert filled.indexed_in == index.generation
    assert index.entries, "the update was under way"
    filled.keys = list(filled.keys[:])  # a plain list again, for `forget`
    index.forget(filled)
    assert index.entries == {}


def test_a_leaf_the_cache_does_not_hold_is_refused_without_the_lock() -> None:
    """A small tree's root leaf, evicted from the cache (the tree holds it, and no read
    reaches it through the cache), is refused on every read: without taking the lock."""
    index = PointReadIndex()
    root = leaf(5, (b"a", b"1"))
    index.reset(root)
    results: list[bool] = []
    with index.lock:  # held by a commit, say
        reader = threading.Thread(target=lambda: results.append(index.fill(root, root, {})))
        reader.start()
        reader.join(5)
        assert not reader.is_alive(), "the refusal waited for the lock"
    assert results == [False]

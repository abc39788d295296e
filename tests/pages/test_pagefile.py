"""The database page file: header pair, checkpoints, copy-on-write, page reuse, damage.

Every test drives the real `DatabaseFile` on a temporary directory with a model: a dict of the
committed contents, the log position of every commit, and the roots the engine would publish.
A checkpoint is run exactly as the instance runs it (plan, write pages, header, finish), so
the tests check the contract the checkpointer relies on: a reopened file equals the model at
the checkpoint position; pages a durable header or an open snapshot reaches are never written;
freed pages come back only when D4 allows it; the persisted free list accounts for every page.
"""

from __future__ import annotations

import dataclasses
import os
import random
import struct
import tracemalloc

import pytest

from jetstore.errors import (
    DatabaseCorrupted,
    DatabaseDuplicate,
    FileAccessDenied,
    FileNotFound,
    JetError,
    PageNotInitialized,
    ReadLostFlushVerifyFailure,
    ReadPgnoVerifyFailure,
    ReadVerifyFailure,
)
from jetstore.format.dbheader import DatabaseHeader, decode_db_header, encode_db_header
from jetstore.format.page import PageType, decode_page, encode_page, verify_page
from jetstore.format.positions import LogPosition
from jetstore.io import FileSystem, HandleRegistry
from jetstore.io.files import File
from jetstore.io.locking import lock_file
from jetstore.pages.btree import (
    Mutation,
    Node,
    decode_node,
    dirty_nodes_postorder,
    iter_nodes,
    iterate,
    lookup,
    merge_sorted_columns,
    node_ref,
    page_crc_of,
    ref_pgno,
    verify_tree,
)
from jetstore.pages.pagefile import _WRITE_BATCH, CheckpointPlan, DatabaseFile
from jetstore.pages.references import PageReferences

PAGE = 4096
OWNER = "t"
CACHE = 64


@pytest.fixture
def registry() -> HandleRegistry:
    return HandleRegistry("t")


@pytest.fixture
def fs(registry: HandleRegistry) -> FileSystem:
    return FileSystem(registry)


@pytest.fixture
def path(tmp_path: object) -> str:
    return os.path.join(str(tmp_path), "t.edb")


def new_header(page_size: int = PAGE) -> DatabaseHeader:
    return DatabaseHeader(page_size=page_size, name="t", db_id=1, created_time=123)


def reopen(fs: FileSystem, path: str, *, writable: bool = False) -> DatabaseFile:
    return DatabaseFile.open(fs, path, owner=OWNER, cache_pages=CACHE, writable=writable)


class Harness:
    """A database file, its published root and a dict model of the committed contents."""

    def __init__(self, fs: FileSystem, path: str, page_size: int = PAGE) -> None:
        self.fs = fs
        self.path = path
        self.db = DatabaseFile.create(
            fs, path, new_header(page_size), owner=OWNER, cache_pages=CACHE
        )
        self.root: Node | None = None
        self.model: dict[bytes, bytes] = {}
        self.epoch = 0
        self.offset = 0
        self.position = LogPosition(1, 0)
        # The model and root as of the last durable header.
        self.durable_model: dict[bytes, bytes] = {}
        self.all_freed: list[tuple[LogPosition, list[int]]] = []

    def next_position(self) -> LogPosition:
        self.offset += 64
        self.position = LogPosition(1 + self.offset // 100_000, self.offset % 100_000)
        return self.position

    def commit(self, ops: list[tuple[bytes, bytes | None]]) -> tuple[LogPosition, list[int]]:
        self.epoch += 1
        freed: list[int] = []
        mutation = Mutation(self.db, self.root, self.epoch, freed)
        for key, value in ops:
            if value is None:
                mutation.delete(key)
                self.model.pop(key, None)
            else:
                mutation.put(key, value)
                self.model[key] = value
        self.root = mutation.root
        position = self.next_position()
        self.db.note_freed(position, freed)
        self.all_freed.append((position, list(freed)))
        return position, freed

    def random_commit(
        self, rng: random.Random, keys: int, ops: int
    ) -> tuple[LogPosition, list[int]]:
        batch: list[tuple[bytes, bytes | None]] = []
        for _ in range(ops):
            key = b"key%06d" % rng.randrange(keys)
            if rng.random() < 0.25:
                batch.append((key, None))
            else:
                batch.append((key, rng.randbytes(rng.randrange(10, 300))))
        return self.commit(batch)

    def plan(self) -> CheckpointPlan:
        return self.db.plan_checkpoint(self.root, self.position)

    def checkpoint(self, oldest_snapshot: LogPosition | None = None) -> CheckpointPlan:
        plan = self.plan()
        self.db.write_checkpoint_pages(plan)
        self.db.header_for_plan(plan)
        self.db.finish_checkpoint(plan, oldest_snapshot)
        self.durable_model = dict(self.model)
        return plan

    def reopen_and_continue(self) -> None:
        """Close the file and carry on with a freshly opened one (persisted free list)."""
        self.db.close()
        self.db = reopen(self.fs, self.path, writable=True)
        self.root = self.db.root()


def allocated(plan: CheckpointPlan) -> set[int]:
    """Every page the plan writes."""
    pages = {node.pgno for node, _parent, _index in plan.dirty}
    assert None not in pages
    return {p for p in pages if p is not None} | set(plan.chain)


def read_free_list(db: DatabaseFile) -> tuple[list[int], list[int]]:
    """(free-list chain pages, free pages) of the durable header, read from the file."""
    chain: list[int] = []
    free: list[int] = []
    pgno = db.header.freelist_pgno
    while pgno:
        assert pgno not in chain, f"free-list chain loops at page {pgno}"
        chain.append(pgno)
        page = decode_page(pgno, db.read_raw_page(pgno), page_size=db.page_size)
        assert page.page_type == PageType.FREE_LIST
        payload = bytes(page.payload)
        (next_ref,) = struct.unpack_from("<Q", payload, 0)
        free.extend(struct.unpack_from(f"<{page.count}Q", payload, 8))
        pgno = ref_pgno(next_ref)
    return chain, free


def tree_pages(db: DatabaseFile, root: Node | None) -> list[int]:
    pages = []
    for node in iter_nodes(db, root):
        assert node.pgno is not None, "a durable tree holds a dirty node"
        pages.append(node.pgno)
    return pages


def tree_pages_written(db: DatabaseFile, root: Node | None) -> list[int]:
    """The written pages of a tree that may still hold dirty nodes (a reader's root)."""
    pages: list[int] = []
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if node.pgno is not None:
            pages.append(node.pgno)
        for child in node.children:
            stack.append(child if isinstance(child, Node) else db.load(child))
    return pages


def durable_pages(db: DatabaseFile) -> set[int]:
    """Every page the durable header reaches: tree pages and free-list chain pages."""
    chain, _free = read_free_list(db)
    return set(tree_pages(db, db.root())) | set(chain)


def check_accounting(db: DatabaseFile) -> None:
    """Tree + free + chain + 2 header pages == all pages, each page in exactly one place."""
    tree = tree_pages(db, db.root())
    chain, free = read_free_list(db)
    everything = [0, 1, *tree, *chain, *free]
    assert len(set(tree)) == len(tree), "a tree page is used twice"
    assert len(set(free)) == len(free), "a page is listed free twice"
    duplicates = sorted({p for p in everything if everything.count(p) > 1})
    assert not duplicates, f"pages in two places: {duplicates}"
    assert sorted(everything) == list(range(db.header.page_count)), (
        f"page accounting: {db.header.page_count} pages, tree {len(tree)}, chain {len(chain)}, "
        f"free {len(free)}; missing {sorted(set(range(db.header.page_count)) - set(everything))}"
    )
    assert db.header.free_page_count == len(free)


def snapshot_bytes(db: DatabaseFile, pages: set[int]) -> dict[int, bytes]:
    return {p: db.read_raw_page(p) for p in pages}


def assert_unchanged(db: DatabaseFile, before: dict[int, bytes], when: str) -> None:
    changed = sorted(p for p, data in before.items() if db.read_raw_page(p) != data)
    assert not changed, f"pages of the durable header overwritten {when}: {changed}"


def contents(db: DatabaseFile, root: Node | None) -> list[tuple[bytes, bytes]]:
    return list(iterate(db, root))


def _shape(node: Node) -> tuple[list[bytes], list[bytes], list[int | None]]:
    children = [c if isinstance(c, int) else node_ref(c) for c in node.children]
    return node.keys, node.values, children


def assert_cache_matches_disk(db: DatabaseFile) -> None:
    """Every cached node is what its page holds: a reused page never serves a stale node."""
    for pgno in range(2, db.page_count):
        cached = db.cache.get(pgno)
        if cached is not None:
            on_disk = decode_node(pgno, db.read_raw_page(pgno), page_size=db.page_size)
            assert _shape(cached) == _shape(on_disk), f"cache holds a stale node for page {pgno}"


# --------------------------------------------------------------------- create / open


def test_create_then_open_gives_the_same_header(fs: FileSystem, path: str) -> None:
    db = DatabaseFile.create(fs, path, new_header(), owner=OWNER, cache_pages=CACHE)
    created = db.header
    assert created.header_seq == 1 and created.page_count == 2 and created.root_pgno == 0
    assert created.name == "t" and created.db_id == 1 and created.created_time == 123
    assert db.root() is None and db.free_pages == 0 and db.page_count == 2
    db.close()
    assert os.path.getsize(path) == 2 * PAGE
    again = reopen(fs, path)
    assert again.header == created
    assert again.problems == []
    assert again.root() is None and again.free_pages == 0
    again.close()


@pytest.mark.parametrize("page_size", [8192, 32768])
def test_create_then_open_other_page_sizes(fs: FileSystem, path: str, page_size: int) -> None:
    h = Harness(fs, path, page_size)
    for i in range(5):
        h.commit([(b"k%04d" % j, b"v%d" % i * 50) for j in range(i * 40, i * 40 + 40)])
        h.checkpoint()
    h.db.close()
    db = reopen(fs, path)
    assert db.page_size == page_size and db.problems == []
    assert contents(db, db.root()) == sorted(h.model.items())
    check_accounting(db)
    db.close()


def test_create_over_an_existing_file_is_refused(
    fs: FileSystem, path: str, registry: HandleRegistry
) -> None:
    with open(path, "wb") as f:
        f.write(b"not a database")
    with pytest.raises(DatabaseDuplicate):
        DatabaseFile.create(fs, path, new_header(), owner=OWNER, cache_pages=CACHE)
    with open(path, "rb") as f:
        assert f.read() == b"not a database"
    # An existing database is refused too, and left as it was.
    other = path + "2"
    DatabaseFile.create(fs, other, new_header(), owner=OWNER, cache_pages=CACHE).close()
    before = _read(other, 0, 3 * PAGE)
    with pytest.raises(DatabaseDuplicate):
        DatabaseFile.create(fs, other, new_header(), owner=OWNER, cache_pages=CACHE)
    assert _read(other, 0, 3 * PAGE) == before
    assert registry.total() == 0


def test_writers_lock_the_file_and_readers_do_not(
    fs: FileSystem, path: str, registry: HandleRegistry
) -> None:
    db = DatabaseFile.create(fs, path, new_header(), owner=OWNER, cache_pages=CACHE, holder="A")
    assert db.locked
    assert registry.counts(OWNER)["lock"] == 1
    link = path + ".link.edb"
    os.link(path, link)
    # A second writer (another instance's directory holding a hard link, or a symlink) is
    # refused before it reads anything; a read-only opener is not.
    for other in (path, link):
        with pytest.raises(FileAccessDenied) as info:
            DatabaseFile.open(fs, other, owner="B", cache_pages=CACHE, holder="B")
        assert info.value.path == other
        assert "A in this process" in str(info.value)
        with pytest.raises(FileAccessDenied):
            DatabaseFile.open(fs, other, owner="B", cache_pages=CACHE, writable=False, lock=True)
        reader = reopen(fs, other)
        assert not reader.locked
        assert reader.header == db.header
        reader.close()
    assert registry.total("B") == 0
    db.close()
    assert not db.locked and registry.total() == 0
    writer = reopen(fs, link, writable=True)
    assert writer.locked
    writer.close()
    assert registry.total() == 0


def test_check_path_names_a_deleted_or_replaced_file(fs: FileSystem, path: str) -> None:
    db = DatabaseFile.create(fs, path, new_header(), owner=OWNER, cache_pages=CACHE)
    db.check_path()
    os.rename(path, path + ".aside")
    with open(path, "wb") as f:
        f.write(b"someone else's file")
    with pytest.raises(FileNotFound) as info:
        db.check_path()
    assert info.value.path == path
    assert "was replaced by another file" in str(info.value)
    os.unlink(path)
    os.unlink(path + ".aside")
    with pytest.raises(FileNotFound) as info:
        db.check_path()
    assert "was deleted" in str(info.value)
    assert f"/proc/{os.getpid()}/fd/" in str(info.value)
    assert "Do not create a new database" in str(info.value)
    db.close()


# --------------------------------------------------------------------- checkpoint cycles


def test_random_checkpoint_cycles_reopen_to_the_model(fs: FileSystem, path: str) -> None:
    """Many cycles of random puts/deletes; after each checkpoint a fresh open reads the model.

    Also checked at every cycle: copy-on-write (every page the durable header reaches is
    byte-identical after the next checkpoint's pages and header are written), the page
    accounting of the persisted free list, and that the reopened free list equals the live one.
    Every few cycles the test carries on with the reopened file, so allocation from a
    persisted free list is exercised too.
    """
    rng = random.Random(1234)
    h = Harness(fs, path)
    for cycle in range(60):
        for _ in range(rng.randrange(1, 6)):
            h.random_commit(rng, keys=600, ops=rng.randrange(1, 40))
        before = snapshot_bytes(h.db, durable_pages(h.db))
        plan = h.plan()
        assert not allocated(plan) & set(before), "a plan allocated a page the header reaches"
        h.db.write_checkpoint_pages(plan)
        assert_unchanged(h.db, before, "by the checkpoint's page writes")
        h.db.header_for_plan(plan)
        assert_unchanged(h.db, before, "by the time the next header is written")
        h.db.finish_checkpoint(plan, None)
        h.durable_model = dict(h.model)
        assert h.db.pending_free_pages == 0

        other = reopen(fs, path)
        try:
            assert other.problems == []
            assert other.header == h.db.header
            assert contents(other, other.root()) == sorted(h.model.items()), f"cycle {cycle}"
            verify_tree(other, other.root())
            check_accounting(other)
            assert other.free_pages == h.db.free_pages
        finally:
            other.close()
        # The live tree (swizzled, partly cached) reads the same, and the cache is coherent.
        assert contents(h.db, h.root) == sorted(h.model.items())
        assert_cache_matches_disk(h.db)
        if cycle % 7 == 6:
            h.reopen_and_continue()
    h.db.close()


def test_replayed_leaf_images_are_written_then_dropped(fs: FileSystem, path: str) -> None:
    """A replay merge (`images`) into a written tree: the checkpoint writes the new leaves
    from their images, drops every image, and a fresh open reads the model."""
    rng = random.Random(77)
    h = Harness(fs, path)
    h.random_commit(rng, keys=600, ops=200)
    h.checkpoint()
    changes: dict[bytes, bytes | None] = {}
    for _ in range(3000):
        key = b"key%06d" % rng.randrange(2000)
        changes[key] = None if rng.random() < 0.1 else rng.randbytes(rng.randrange(0, 300))
    keys = sorted(changes)
    freed: list[int] = []
    h.epoch += 1
    h.root = merge_sorted_columns(
        h.db, h.root, keys, [changes[k] for k in keys], h.epoch, freed, images=True
    )
    for key, value in changes.items():
        if value is None:
            h.model.pop(key, None)
        else:
            h.model[key] = value
    h.db.note_freed(h.next_position(), freed)
    dirty = [node for node, _parent, _index in dirty_nodes_postorder(h.root)]
    assert any(node.leaf and node.image is not None for node in dirty)
    h.checkpoint()
    assert all(node.image is None for node in dirty)
    assert contents(h.db, h.root) == sorted(h.model.items())
    other = reopen(fs, path)
    try:
        assert contents(other, other.root()) == sorted(h.model.items())
        verify_tree(other, other.root())
        check_accounting(other)
    finally:
        other.close()


def test_a_large_checkpoint_writes_its_pages_as_it_encodes_them(
    fs: FileSystem, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint holds at most a batch of page images at a time, not one per dirty node:
    it used to encode them all before writing any, doubling the memory of a large checkpoint
    (the dirty nodes, then their images). Writes stay in page order, in runs of consecutive
    pages, and the file reopens to the model with every page accounted for."""
    h = Harness(fs, path)
    h.commit([(b"k%06d" % i, b"v" * 200) for i in range(200)])
    h.checkpoint()  # some written pages, so that the next plan also reuses freed ones
    h.commit([(b"k%06d" % i, bytes([i % 251]) * 600) for i in range(0, 40_000, 2)])
    plan = h.plan()
    image_bytes = len(plan.dirty) * PAGE
    bound = 3 * _WRITE_BATCH * PAGE  # a batch of images and its joined copy, and some slack
    assert image_bytes > 4 * bound, "the tree must be large for the bound to say anything"
    writes: list[tuple[int, int]] = []
    real_pwrite = File.pwrite

    def pwrite(self: File, data: bytes, offset: int) -> None:
        writes.append((offset // PAGE, len(data) // PAGE))
        real_pwrite(self, data, offset)

    monkeypatch.setattr(File, "pwrite", pwrite)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        h.db.write_checkpoint_pages(plan)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        monkeypatch.undo()
    assert peak < bound, f"{peak} bytes held while writing {image_bytes} bytes of pages"
    assert all(n <= _WRITE_BATCH for _start, n in writes)
    assert [start for start, _n in writes] == sorted(start for start, _n in writes)
    assert sum(n for _start, n in writes) == plan.pages_written
    h.db.header_for_plan(plan)
    h.db.finish_checkpoint(plan, None)
    h.durable_model = dict(h.model)
    other = reopen(fs, path)
    try:
        assert contents(other, other.root()) == sorted(h.model.items())
        check_accounting(other)
    finally:
        other.close()
    h.db.close()


def test_lookup_agrees_with_btree_lookup_and_counts_cache_hits(fs: FileSystem, path: str) -> None:
    """`DatabaseFile.lookup` (cache hits taken inline) answers as `btree.lookup` does, on live
    trees (dirty nodes, swizzled children, a cache smaller than the tree: hits, misses and
    evictions) and on a reopened file, and counts each cache hit and miss as `load` does."""
    rng = random.Random(99)
    h = Harness(fs, path)
    probes = [b"key%06d" % i for i in range(0, 2000, 3)] + [b"", b"key", b"zzz"]
    for cycle in range(12):
        for _ in range(3):
            h.random_commit(rng, keys=2000, ops=150)
        for root in (h.root, None):
            assert [h.db.lookup(root, k) for k in probes] == [lookup(h.db, root, k) for k in probes]
        assert [h.db.lookup(h.root, k) for k in probes] == [h.model.get(k) for k in probes]
        if cycle % 2:
            h.checkpoint()
        assert [h.db.lookup(h.root, k) for k in probes] == [h.model.get(k) for k in probes]
    h.checkpoint()
    counts = []
    for read in (lookup, DatabaseFile.lookup):
        other = reopen(fs, path)
        try:
            root = other.root()
            got = [read(other, root, k) for k in probes]  # type: ignore[operator]
            assert got == [h.model.get(k) for k in probes]
            counts.append((other.cache.hits, other.cache.misses, other.cache.evictions))
        finally:
            other.close()
    assert counts[0] == counts[1] and counts[0][0] > 0 and counts[0][1] > 0
    h.db.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_cycles_with_readers(fs: FileSystem, path: str, seed: int) -> None:
    """Random commits, checkpoints and readers that start and end at random moments.

    Every open reader's pages stay byte-identical and its tree reads its model from disk (the
    cache is dropped first); no checkpoint allocates a page a reader or the durable header
    reaches; pending pages are exactly those freed after the oldest reader; each reopen reads
    the model and accounts for every page.
    """
    rng = random.Random(seed)
    h = Harness(fs, path)
    readers: list[tuple[LogPosition, Node | None, list[tuple[bytes, bytes]], dict[int, bytes]]] = []
    for cycle in range(40):
        for _ in range(rng.randrange(1, 5)):
            h.random_commit(rng, keys=800, ops=rng.randrange(1, 60))
            if rng.random() < 0.2:
                pages = set(tree_pages_written(h.db, h.root))
                readers.append(
                    (h.position, h.root, sorted(h.model.items()), snapshot_bytes(h.db, pages))
                )
        if readers and rng.random() < 0.3:
            readers.pop(rng.randrange(len(readers)))
        oldest = min((r[0] for r in readers), default=None)
        protected = durable_pages(h.db).union(*(r[3].keys() for r in readers))
        before = snapshot_bytes(h.db, durable_pages(h.db))
        plan = h.plan()
        assert not allocated(plan) & protected, f"cycle {cycle}: a reachable page reallocated"
        h.db.write_checkpoint_pages(plan)
        h.db.header_for_plan(plan)
        assert_unchanged(h.db, before, f"before the header moved (cycle {cycle})")
        h.db.finish_checkpoint(plan, oldest)
        waiting = sum(len(p) for s, p in h.all_freed if oldest is not None and s > oldest)
        assert h.db.pending_free_pages == waiting
        h.db.cache.clear()
        for _pos, root, model, pages in readers:
            assert_unchanged(h.db, pages, f"while a reader is open (cycle {cycle})")
            assert contents(h.db, root) == model
        other = reopen(fs, path)
        assert contents(other, other.root()) == sorted(h.model.items())
        check_accounting(other)
        other.close()
    h.db.close()


def test_checkpoint_of_an_emptied_tree(fs: FileSystem, path: str) -> None:
    h = Harness(fs, path)
    h.commit([(b"k%04d" % i, b"v" * 100) for i in range(300)])
    h.checkpoint()
    assert h.db.header.root_pgno != 0
    h.commit([(b"k%04d" % i, None) for i in range(300)])
    assert h.root is None
    h.checkpoint()
    assert h.db.header.root_pgno == 0
    h.checkpoint()  # the freed pages become reusable; the free list moves
    h.db.close()
    db = reopen(fs, path)
    assert db.root() is None
    check_accounting(db)
    assert db.free_pages == db.header.page_count - 2 - len(read_free_list(db)[0])
    db.close()


# --------------------------------------------------------------------- page reuse (D4)


def test_freed_pages_are_reused_only_after_the_next_header(fs: FileSystem, path: str) -> None:
    h = Harness(fs, path)
    h.commit([(b"k%04d" % i, b"v" * 100) for i in range(400)])
    h.checkpoint()
    h.checkpoint()  # settle the free-list chain
    header_pages = durable_pages(h.db)
    free_before = h.db.free_pages

    _position, freed = h.commit([(b"k%04d" % i, b"w" * 100) for i in range(0, 400, 3)])
    assert freed, "updating written leaves frees their pages"
    assert set(freed) <= header_pages
    assert h.db.pending_free_pages == len(freed)
    assert h.db.free_pages == free_before  # not reusable before a header stops using them

    plan = h.plan()
    assert not allocated(plan) & set(freed), "freed pages reused before the header moved"
    # The header of this checkpoint already lists them as free (its tree does not use them).
    assert set(freed) <= set(plan.free_list)
    h.db.write_checkpoint_pages(plan)
    h.db.header_for_plan(plan)
    assert h.db.pending_free_pages == len(freed)  # released only by finish_checkpoint
    h.db.finish_checkpoint(plan, None)
    assert h.db.pending_free_pages == 0
    assert h.db.free_pages >= len(freed)

    # The next checkpoint may (and, with pages to allocate, does) take them.
    h.commit([(b"k%04d" % i, b"x" * 100) for i in range(1, 400, 3)])
    plan = h.checkpoint()
    assert allocated(plan) & set(freed), "freed pages never reused"
    h.db.close()


def test_freed_after_the_checkpoint_position_stay_pending(fs: FileSystem, path: str) -> None:
    """A page freed by a commit after the checkpoint position is still in that header's tree."""
    h = Harness(fs, path)
    h.commit([(b"k%04d" % i, b"v" * 100) for i in range(300)])
    h.checkpoint()
    h.commit([(b"k0001", b"a")])
    plan = h.plan()  # at the position of this commit
    h.db.write_checkpoint_pages(plan)
    _later, freed = h.commit([(b"k0200", b"b")])  # after the plan's position
    assert freed
    h.db.header_for_plan(plan)
    h.db.finish_checkpoint(plan, None)
    assert h.db.pending_free_pages == len(freed)
    assert not set(freed) & set(plan.free_list)
    h.checkpoint()
    assert h.db.pending_free_pages == 0
    h.db.close()


def test_old_snapshot_blocks_reuse_and_stays_readable(fs: FileSystem, path: str) -> None:
    rng = random.Random(99)
    h = Harness(fs, path)
    for _ in range(3):
        h.random_commit(rng, keys=500, ops=200)
    h.checkpoint()
    # A reader starts here, and one more in the middle of uncheckpointed commits.
    snap_pos, snap_root, snap_model = h.position, h.root, sorted(h.model.items())
    snap_pages = set(tree_pages(h.db, snap_root))
    snap_bytes = snapshot_bytes(h.db, snap_pages)

    held: set[int] = set()
    for cycle in range(12):
        for _ in range(3):
            _pos, freed = h.random_commit(rng, keys=500, ops=40)
            held |= set(freed) & snap_pages
        plan = h.plan()
        assert not allocated(plan) & snap_pages, f"cycle {cycle}: snapshot page reused"
        h.db.write_checkpoint_pages(plan)
        h.db.header_for_plan(plan)
        h.db.finish_checkpoint(plan, oldest_snapshot=snap_pos)
        assert_unchanged(h.db, snap_bytes, f"while the snapshot is open (cycle {cycle})")
        # Everything freed after the snapshot waits; nothing freed waits past it.
        waiting = sum(len(p) for s, p in h.all_freed if s > snap_pos)
        assert h.db.pending_free_pages == waiting
        # The snapshot reads its own tree from disk, not from the cache.
        h.db.cache.clear()
        assert contents(h.db, snap_root) == snap_model
        # The newest header's tree is correct too.
        other = reopen(fs, path)
        assert contents(other, other.root()) == sorted(h.model.items())
        check_accounting(other)
        other.close()
    assert held, "the workload never freed a page of the snapshot"
    # The reader ends: the next checkpoint releases everything.
    free_before = h.db.free_pages
    h.checkpoint(oldest_snapshot=None)
    assert h.db.pending_free_pages == 0
    assert h.db.free_pages >= free_before + len(held)
    h.db.close()


def test_snapshot_with_uncheckpointed_nodes_stays_readable(fs: FileSystem, path: str) -> None:
    """A reader whose root holds dirty nodes (taken between checkpoints) outlives several."""
    rng = random.Random(17)
    h = Harness(fs, path)
    h.random_commit(rng, keys=400, ops=300)
    h.checkpoint()
    h.random_commit(rng, keys=400, ops=30)
    snap_pos, snap_root, snap_model = h.position, h.root, sorted(h.model.items())
    assert snap_root is not None and snap_root.pgno is None
    for _ in range(10):
        for _ in range(3):
            h.random_commit(rng, keys=400, ops=30)
        h.checkpoint(oldest_snapshot=snap_pos)
        h.db.cache.clear()
        assert contents(h.db, snap_root) == snap_model
        verify_tree(h.db, snap_root)
    h.checkpoint(oldest_snapshot=None)
    assert h.db.pending_free_pages == 0
    h.db.close()


def test_snapshot_newer_than_the_freeing_commit_does_not_block(fs: FileSystem, path: str) -> None:
    h = Harness(fs, path)
    h.commit([(b"k%04d" % i, b"v" * 100) for i in range(300)])
    h.checkpoint()
    _first, freed1 = h.commit([(b"k0000", b"a")])
    reader = h.position  # a snapshot taken after the first commit
    _second, freed2 = h.commit([(b"k0299", b"b")])
    assert freed1 and freed2
    h.checkpoint(oldest_snapshot=reader)
    # freed1 (at or before the reader) is reusable, freed2 (after it) waits.
    assert h.db.pending_free_pages == len(freed2)
    plan = h.checkpoint(oldest_snapshot=reader)
    assert not allocated(plan) & set(freed2)
    h.checkpoint(oldest_snapshot=None)
    assert h.db.pending_free_pages == 0
    h.db.close()


def test_file_size_stabilizes_under_steady_updates(fs: FileSystem, path: str) -> None:
    """Updates of a fixed key set with a checkpoint every few commits: the file stops growing.

    The page count may still creep up when one checkpoint rewrites more pages than any before
    (a new high-water mark), so the checks are a plateau over the second half of the run and a
    bound by the live tree plus two checkpoints' worth of rewritten pages.
    """
    rng = random.Random(7)
    h = Harness(fs, path)
    h.commit([(b"key%06d" % i, rng.randbytes(80)) for i in range(1500)])
    h.checkpoint()
    sizes: list[int] = []
    max_dirty = max_live = 0
    for _ in range(200):
        for _ in range(4):
            h.commit([(b"key%06d" % rng.randrange(1500), rng.randbytes(80)) for _ in range(20)])
        plan = h.checkpoint()
        sizes.append(h.db.header.page_count)
        max_dirty = max(max_dirty, len(plan.dirty))
        max_live = max(max_live, len(tree_pages(h.db, h.db.root())))
    assert max(sizes[100:]) - sizes[99] <= 2, f"file keeps growing: {sizes[::10]}"
    chain = len(read_free_list(h.db)[0])
    assert max(sizes) <= 2 + max_live + 2 * max_dirty + chain + 2, (sizes[-1], max_live, max_dirty)
    h.db.close()
    assert os.path.getsize(path) <= sizes[-1] * PAGE


def test_free_list_survives_reopen(fs: FileSystem, path: str) -> None:
    rng = random.Random(5)
    h = Harness(fs, path)
    h.commit([(b"key%06d" % i, rng.randbytes(200)) for i in range(2000)])
    h.checkpoint()
    # Delete most of it: many free pages, a free-list chain of several pages.
    h.commit([(b"key%06d" % i, None) for i in range(2000) if i % 10])
    h.checkpoint()
    h.checkpoint()
    chain, free = read_free_list(h.db)
    assert len(chain) >= 1 and len(free) > 100
    live_free = h.db.free_pages
    h.db.close()
    db = reopen(fs, path, writable=True)
    assert db.free_pages == live_free == len(free)
    check_accounting(db)
    assert contents(db, db.root()) == sorted(h.model.items())
    # Allocation after reopen takes from the persisted list rather than growing the file.
    h.db, h.root = db, db.root()
    page_count = db.header.page_count
    h.commit([(b"key%06d" % i, rng.randbytes(200)) for i in range(1, 2000, 10)])
    h.checkpoint()
    assert h.db.header.page_count == page_count
    check_accounting(h.db)
    h.db.close()


def test_free_list_needs_several_chain_pages(fs: FileSystem, path: str) -> None:
    """More free pages than one free-list page holds (507 at 4 KiB)."""
    h = Harness(fs, path)
    h.commit([(b"key%06d" % i, b"v" * 500) for i in range(6000)])
    h.checkpoint()
    h.commit([(b"key%06d" % i, None) for i in range(6000) if i % 50])
    h.checkpoint()
    h.checkpoint()
    chain, free = read_free_list(h.db)
    assert len(chain) >= 2 and len(free) > 507
    check_accounting(h.db)
    live_free = h.db.free_pages
    h.db.close()
    db = reopen(fs, path)
    assert db.free_pages == live_free
    assert contents(db, db.root()) == sorted(h.model.items())
    db.close()


# --------------------------------------------------------------------- header pair


def _checkpointed(fs: FileSystem, path: str, cycles: int = 2) -> Harness:
    h = Harness(fs, path)
    for i in range(cycles):
        h.commit([(b"k%04d" % j, b"%d" % i * 60) for j in range(i * 100, i * 100 + 100)])
        h.checkpoint()
    return h


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _read(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


@pytest.mark.parametrize("page_size", [PAGE, 16384])
def test_garbage_header_copy_0_uses_copy_1_and_is_repaired(
    fs: FileSystem, path: str, registry: HandleRegistry, page_size: int
) -> None:
    h = Harness(fs, path, page_size)
    h.commit([(b"k%04d" % j, b"v" * 50) for j in range(200)])
    h.checkpoint()
    header = h.db.header
    h.db.close()
    _patch(path, 0, random.Random(3).randbytes(page_size))

    db = reopen(fs, path, writable=False)
    assert db.header == header
    assert db.problems and "copy 1 is valid" in db.problems[0]
    assert contents(db, db.root()) == sorted(h.model.items())
    db.close()
    assert _read(path, 0, 16)[4:12] != b"JETSTORE"  # a read-only open does not repair

    db = reopen(fs, path, writable=True)
    assert db.problems
    assert db.header.header_seq == header.header_seq + 1
    copy0 = decode_db_header(_read(path, 0, page_size), copy=0)
    copy1 = decode_db_header(_read(path, page_size, page_size), copy=1)
    assert copy0 == copy1 == db.header
    db.close()
    db = reopen(fs, path)
    assert db.problems == []
    assert contents(db, db.root()) == sorted(h.model.items())
    db.close()
    assert registry.total() == 0


def test_torn_header_update_falls_back_to_the_previous_header(fs: FileSystem, path: str) -> None:
    """A crash while copy 0 of header N+1 was written: part new, part old; copy 1 still N.

    The fields end at byte 384 and the rest of a header page is zeros in every version, so the
    tear is inside the fields (the new checksum and checkpoint fields, the old root and counts).
    """
    h = _checkpointed(fs, path)
    old_header, old_model = h.db.header, sorted(h.model.items())
    old_page = _read(path, 0, PAGE)
    h.commit([(b"k%04d" % j, b"new" * 30) for j in range(0, 200, 2)])
    h.checkpoint()
    new_page = _read(path, 0, PAGE)
    assert new_page != old_page
    h.db.close()
    torn = new_page[:150] + old_page[150:]
    assert torn not in (new_page, old_page)
    _patch(path, 0, torn)
    _patch(path, PAGE, old_page)

    db = reopen(fs, path, writable=False)
    assert db.header == old_header
    assert db.problems and "copy 0" in db.problems[0] and "copy 1 is valid" in db.problems[0]
    assert contents(db, db.root()) == old_model
    check_accounting(db)
    db.close()
    db = reopen(fs, path, writable=True)
    assert db.header.root_pgno == old_header.root_pgno
    assert decode_db_header(_read(path, 0, PAGE)) == db.header
    db.close()


def test_interrupted_between_the_copies_uses_the_newer_copy_0(fs: FileSystem, path: str) -> None:
    h = _checkpointed(fs, path)
    old_page = _read(path, PAGE, PAGE)
    h.commit([(b"k%04d" % j, b"new" * 30) for j in range(0, 200, 2)])
    h.checkpoint()
    new_header = h.db.header
    h.db.close()
    _patch(path, PAGE, old_page)  # copy 1 never got the update
    db = reopen(fs, path, writable=True)
    assert db.header.root_pgno == new_header.root_pgno
    assert db.problems and "copy 1" in db.problems[0] and "older" in db.problems[0]
    assert contents(db, db.root()) == sorted(h.model.items())
    db.close()
    assert _read(path, 0, PAGE) == _read(path, PAGE, PAGE)


def test_both_header_copies_damaged(fs: FileSystem, path: str, registry: HandleRegistry) -> None:
    _checkpointed(fs, path).db.close()
    for copy in (0, 1):
        offset = copy * PAGE + 200
        byte = _read(path, offset, 1)[0]
        _patch(path, offset, bytes([byte ^ 0x10]))
    with pytest.raises(ReadVerifyFailure) as info:
        reopen(fs, path)
    assert "both copies" in info.value.detail
    with pytest.raises(ReadVerifyFailure):
        reopen(fs, path, writable=True)
    assert registry.total() == 0


# --------------------------------------------------------------------- damaged pages


def test_flipped_bit_in_a_tree_page(fs: FileSystem, path: str) -> None:
    h = _checkpointed(fs, path)
    h.db.close()
    db = reopen(fs, path)
    leaves = [n.pgno for n in iter_nodes(db, db.root()) if n.leaf]
    db.close()
    victim = leaves[len(leaves) // 2]
    assert victim is not None
    offset = victim * PAGE + 1000
    _patch(path, offset, bytes([_read(path, offset, 1)[0] ^ 0x01]))
    db = reopen(fs, path)
    with pytest.raises(ReadVerifyFailure) as info:
        db.load(victim)
    assert f"page {victim}" in info.value.detail
    with pytest.raises(ReadVerifyFailure):
        contents(db, db.root())
    db.close()


def test_page_copied_to_another_place(fs: FileSystem, path: str) -> None:
    h = _checkpointed(fs, path)
    h.db.close()
    db = reopen(fs, path)
    refs = [node_ref(n) for n in iter_nodes(db, db.root()) if n.leaf]
    db.close()
    source, target = ref_pgno(refs[0]), ref_pgno(refs[-1])
    assert source != target
    _patch(path, target * PAGE, _read(path, source * PAGE, PAGE))
    db = reopen(fs, path)
    assert db.load(refs[0]).pgno == source
    with pytest.raises(ReadPgnoVerifyFailure) as info:
        db.load(refs[-1])
    assert f"page {target}" in info.value.detail and f"page {source}" in info.value.detail
    db.close()


def test_load_outside_the_database(fs: FileSystem, path: str) -> None:
    h = _checkpointed(fs, path)
    count = h.db.page_count
    for pgno in (0, 1, count, count + 100):
        with pytest.raises(PageNotInitialized) as info:
            h.db.load(pgno)
        assert f"page {pgno}" in info.value.detail
    h.db.close()


# --------------------------------------------------------------------- header fields, handles


def test_raise_max_required_never_lowers(fs: FileSystem, path: str) -> None:
    h = Harness(fs, path)
    assert h.db.write_header(raise_max_required=5).generation_max_required == 5
    assert h.db.write_header(raise_max_required=3).generation_max_required == 5
    assert h.db.write_header(raise_max_required=5).generation_max_required == 5
    assert h.db.write_header(raise_max_required=9).generation_max_required == 9
    # Other changes go through with it; without the argument the field is left alone.
    header = h.db.write_header(raise_max_required=2, generation_min_required=2)
    assert header.generation_max_required == 9 and header.generation_min_required == 2
    assert h.db.write_header(repair_count=1).generation_max_required == 9
    h.commit([(b"a", b"b")])
    plan = h.plan()
    h.db.write_checkpoint_pages(plan)
    assert h.db.header_for_plan(plan, raise_max_required=4).generation_max_required == 9
    h.db.finish_checkpoint(plan, None)
    seq = h.db.header.header_seq
    h.db.close()
    db = reopen(fs, path)
    assert db.header.generation_max_required == 9 and db.header.header_seq == seq
    db.close()


def test_every_handle_closed(fs: FileSystem, path: str, registry: HandleRegistry) -> None:
    h = _checkpointed(fs, path)
    counts = registry.counts()
    assert (counts["file"], counts["lock"], registry.total()) == (1, 1, 2)  # a writer's lock
    h.db.close()
    assert registry.total() == 0
    h.db.close()  # idempotent
    assert h.db.closed and registry.total() == 0
    readers = [reopen(fs, path) for _ in range(3)]
    writer = reopen(fs, path, writable=True)
    assert registry.total() == 5
    for db in [*readers, writer]:
        db.close()
    assert registry.total() == 0
    # Failed opens leave nothing behind: a damaged header, a file locked by another writer.
    _patch(path, 0, b"\0" * 2 * PAGE)
    with pytest.raises(ReadVerifyFailure):
        reopen(fs, path)
    with pytest.raises(ReadVerifyFailure):
        reopen(fs, path, writable=True)
    assert registry.total() == 0
    holder = fs.open(path, owner="holder")
    lock_file(fs, holder, owner="holder", holder="another instance", what="database file")
    with pytest.raises(FileAccessDenied):
        reopen(fs, path, writable=True)
    assert registry.total(OWNER) == 0
    registry.close_owner("holder")
    assert registry.total() == 0


# --- lost writes (D12) ----------------------------------------------------------------------


def _verified_pages(data: bytes, page_size: int) -> PageReferences:
    """`PageReferences` over a whole file image, as the offline checkers build it."""
    count = len(data) // page_size
    references = PageReferences(count)
    for pgno in range(2, count):
        page = data[pgno * page_size : (pgno + 1) * page_size]
        try:
            _data, page_type, entries, _seq, _length = verify_page(pgno, page, page_size=page_size)
        except PageNotInitialized:
            references.blank(pgno)
        except JetError:
            continue
        else:
            references.add(pgno, page, page_type, entries)
    return references


def test_lost_write_of_every_rewritten_page_is_detected(fs: FileSystem, path: str) -> None:
    """Every page the durable header reaches, replaced by an older valid copy of itself, is
    `ReadLostFlushVerifyFailure` naming it: on the read through its parent (or at open, for
    the free-list chain) and in `PageReferences`; the intact file has no finding."""
    rng = random.Random(12)
    h = Harness(fs, path)
    h.commit([(b"key%06d" % i, rng.randbytes(120)) for i in range(400)])
    h.checkpoint()
    for _ in range(2):
        h.random_commit(rng, 400, 150)
        h.checkpoint()
    old = _read(path, 0, os.path.getsize(path))  # the pages are synced by the checkpoint

    def rewritten(pages: set[int]) -> set[int]:
        new = _read(path, 0, os.path.getsize(path))
        return {
            p
            for p in pages
            if (p + 1) * PAGE <= len(old)
            and old[p * PAGE : (p + 1) * PAGE] not in (new[p * PAGE : (p + 1) * PAGE], bytes(PAGE))
        }

    # Pages are reused every other checkpoint: commit until both a page of the tree and one
    # of the free-list chain hold a newer image than `old` has.
    for _ in range(20):
        h.random_commit(rng, 400, 150)
        h.checkpoint()
        tree = {ref_pgno(node_ref(n)) for n in iter_nodes(h.db, h.root)}
        chain, _free = read_free_list(h.db)
        if rewritten(tree) and rewritten(set(chain)):
            break
    header = h.db.header
    assert chain, "the workload must leave a free-list chain"
    h.db.close()
    new = _read(path, 0, os.path.getsize(path))
    assert _verified_pages(new, PAGE).problems(header) == []
    stale = [
        p
        for p in sorted(tree | set(chain))
        if (p + 1) * PAGE <= len(old)
        and old[p * PAGE : (p + 1) * PAGE] not in (new[p * PAGE : (p + 1) * PAGE], bytes(PAGE))
    ]
    assert set(stale) & tree and set(stale) & set(chain)
    for pgno in stale:
        image = bytearray(new)
        image[pgno * PAGE : (pgno + 1) * PAGE] = old[pgno * PAGE : (pgno + 1) * PAGE]
        with open(path, "wb") as f:
            f.write(image)
        with pytest.raises(ReadLostFlushVerifyFailure, match=rf"\bpage {pgno}\b"):
            db = reopen(fs, path)
            try:
                contents(db, db.root())
            finally:
                db.close()
        found = _verified_pages(bytes(image), PAGE).problems(header)
        assert [(p.pgno, p.error) for p in found] == [(pgno, ReadLostFlushVerifyFailure)]
        referrer = "free-list page" if pgno in chain else "branch page"
        assert found[0].referrer == "the database header" or referrer in found[0].referrer
        # The same page lost altogether (all zeros) looks unused on its own: the reference
        # names it.
        image[pgno * PAGE : (pgno + 1) * PAGE] = bytes(PAGE)
        found = _verified_pages(bytes(image), PAGE).problems(header)
        assert [(p.pgno, p.error) for p in found] == [(pgno, PageNotInitialized)]
        assert "all zeros" in found[0].describe()
    with open(path, "wb") as f:
        f.write(new)
    db = reopen(fs, path)
    assert dict(contents(db, db.root())) == h.model
    db.close()


# --------------------------------------------------------------------------- truncated files


def _instance_with_rows(directory: str, rows: int) -> str:
    import jetstore

    options = {"log_file_size": 64 * 1024, "checkpoint_depth": 64 * 1024}
    with jetstore.open(directory, **options) as instance:
        db = instance.database("main", create=True)
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
        with db.transaction() as txn:
            for n in range(rows):
                txn.table("t").insert({"id": n, "v": "x" * 100})
    return os.path.join(directory, "main.edb")


@pytest.mark.parametrize("size", [0, 100, 5000])
def test_file_shorter_than_one_page_is_truncated(tmp_path, size: int) -> None:
    path = _instance_with_rows(str(tmp_path / "i"), 10)
    os.truncate(path, size)
    with pytest.raises(DatabaseCorrupted) as info:
        DatabaseFile.open(FileSystem(HandleRegistry("t")), path, owner="t", cache_pages=16)
    err = info.value
    assert f"'{path}' is {size} bytes, shorter than one page" in err.detail
    assert "it is truncated" in err.detail
    assert "restore the database from a backup" in err.hint and "repair" in err.hint


def test_page_beyond_the_end_of_the_file_is_truncated(tmp_path) -> None:
    path = _instance_with_rows(str(tmp_path / "i"), 3000)
    size = 8192 * 3
    os.truncate(path, size)
    registry = HandleRegistry("t")
    db = DatabaseFile.open(FileSystem(registry), path, owner="t", cache_pages=16)
    try:
        with pytest.raises(DatabaseCorrupted) as info:
            db.root()
    finally:
        db.close()
    err = info.value
    assert "is beyond the end of the file" in err.detail
    assert f"({size} bytes;" in err.detail and "the file is truncated" in err.detail
    assert "bytes long, expected" not in err.detail


def test_page_cut_short_by_the_end_of_the_file(tmp_path) -> None:
    path = _instance_with_rows(str(tmp_path / "i"), 3000)
    db = DatabaseFile.open(FileSystem(HandleRegistry("t")), path, owner="t", cache_pages=16)
    root = db.header.root_pgno
    db.close()
    os.truncate(path, root * 8192 + 100)
    db = DatabaseFile.open(FileSystem(HandleRegistry("t")), path, owner="t", cache_pages=16)
    try:
        with pytest.raises(DatabaseCorrupted, match=r"cut short by the end of the file \(100 of"):
            db.root()
    finally:
        db.close()


def test_a_checkpoint_never_writes_past_the_end_of_a_truncated_file(
    fs: FileSystem, path: str
) -> None:
    """A file cut short in pages the work after its open does not read (a leaf of other keys,
    free pages) used to be written past its end by the next checkpoint: the missing pages
    became a hole of zeros, the new header counted them as written, and the leaf read later
    was "page 114 is blank (all zeros)" (PageNotInitialized) instead of the file being
    truncated. The checkpoint now refuses before writing, with the truncation and its size."""
    h = Harness(fs, path)
    h.commit([(b"a%05d" % i, b"v" * 100) for i in range(1000)])
    h.checkpoint()
    h.commit([(b"b%05d" % i, b"v" * 100) for i in range(1000)])
    h.checkpoint()
    h.commit([(b"a%05d" % i, None) for i in range(0, 1000, 2)])
    h.checkpoint()
    h.checkpoint()
    h.commit([(b"a%05d" % 1, b"w")])
    h.checkpoint()
    h.checkpoint()
    counted = h.db.header.page_count
    last_leaf = max(n.pgno or 0 for n in iter_nodes(h.db, h.db.root()) if n.leaf)
    assert 0 < last_leaf < counted - 1  # what the truncation below cuts off
    h.db.close()
    size = last_leaf * PAGE  # the last leaf and every page after it are gone
    os.truncate(path, size)
    h.db = reopen(fs, path, writable=True)
    h.root = h.db.root()
    h.commit([(b"a-%05d" % i, b"x" * 100) for i in range(3000)])  # reads the left side only
    with pytest.raises(DatabaseCorrupted) as info:
        h.checkpoint()
    assert f"'{path}' is {size} bytes, shorter than the {counted} pages" in info.value.detail
    assert "the file is truncated" in info.value.detail
    assert "restore the database from a backup" in info.value.hint
    assert os.path.getsize(path) == size  # nothing written past the end
    h.db.close()


@pytest.mark.parametrize("damage", ["count", "header_copy", "past_the_end"])
def test_a_free_list_page_that_verifies_but_lists_nonsense_is_refused(
    fs: FileSystem, path: str, damage: str
) -> None:
    """A free-list page with a valid checksum but a payload no checkpoint writes (a bug, or
    another program) was trusted at open: an entry count larger than its payload failed
    with a bare struct.error, and an entry naming header copy 1 or a page past the end was
    handed out by the allocator (a node written over the header). Now DatabaseCorrupted
    naming the page."""
    h = Harness(fs, path)
    h.commit([(b"key%06d" % i, b"v" * 200) for i in range(2000)])
    h.checkpoint()
    h.commit([(b"key%06d" % i, None) for i in range(2000) if i % 10])
    h.checkpoint()
    h.checkpoint()
    header = h.db.header
    head = header.freelist_pgno
    assert head
    h.db.close()
    page = decode_page(head, _read(path, head * PAGE, PAGE))
    payload = bytes(page.payload)
    count = page.count
    if damage == "count":
        count += 1
    else:
        bad = 1 if damage == "header_copy" else header.page_count + 5
        payload = payload[:8] + struct.pack("<Q", bad) + payload[16:]
    data = encode_page(head, PageType.FREE_LIST, count, payload, PAGE, page.checkpoint_seq)
    _patch(path, head * PAGE, data)
    patched = dataclasses.replace(header, freelist_crc=page_crc_of(data))
    _patch(path, 0, encode_db_header(patched) * 2)
    with pytest.raises(DatabaseCorrupted) as info:
        reopen(fs, path, writable=True)
    assert f"free-list page {head} of '{path}'" in info.value.detail

"""The copy-on-write B+tree: model-based stateful test, codec, checkpointer helpers, freeing.

The stateful test is the main evidence: it runs random puts, deletes, scans, commits,
checkpoints (write + swizzle) and snapshots against a dict model on 4 KiB pages with keys that
share long prefixes (long separators, so branches split and merge too), and checks after every
step the structural invariants, and that every kept snapshot still reads exactly its model and
that none of its in-memory nodes changed (immutability of published nodes).
"""

from __future__ import annotations

import random
import struct
import threading
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from jetstore.errors import DatabaseCorrupted, InvalidParameter, JetError, PageNotInitialized
from jetstore.format.page import PageType, encode_page, payload_capacity
from jetstore.pages.btree import (
    LEAF_ENTRY_OVERHEAD,
    MAX_KEY_SIZE,
    MAX_PGNO,
    MemoryNodeStore,
    Mutation,
    Node,
    child_ref,
    count_dirty_nodes,
    count_entries,
    decode_node,
    dirty_nodes_postorder,
    encode_node,
    iter_nodes,
    iterate,
    iterate_chunks,
    lookup,
    max_entry_size,
    min_fill,
    node_ref,
    oversized_entry,
    page_crc_of,
    paired_entry_size,
    ref_crc,
    ref_pgno,
    swizzle,
    verify_tree,
)

PAGE = 4096
MAX_ENTRY = max_entry_size(PAGE)
CHUNK_ENTRY = paired_entry_size(PAGE)
CAPACITY = payload_capacity(PAGE)
# Key families: short keys, and keys behind long shared prefixes (separators then stay long,
# so a 4 KiB branch holds only a few and the tree gets deep with few entries).
PREFIXES = (b"", b"k", b"p" * 300, b"q" * 1000)


def make_key(prefix_index: int, suffix: bytes) -> bytes:
    return PREFIXES[prefix_index] + suffix


def make_value(key: bytes, size: int) -> bytes:
    size = max(0, min(size, MAX_ENTRY - LEAF_ENTRY_OVERHEAD - len(key)))
    seed = (len(key) * 131 + sum(key[-4:]) + size) % 251
    return bytes([seed]) * size


keys_st = st.builds(make_key, st.integers(0, len(PREFIXES) - 1), st.binary(max_size=6))
sizes_st = st.one_of(st.integers(0, 40), st.integers(0, MAX_ENTRY))


def written_pgnos(store: MemoryNodeStore, root: Node | None) -> list[int]:
    """Page numbers of every written node reachable from root (with repeats, if any)."""
    out: list[int] = []
    if root is None:
        return out
    stack: list[Node | int] = [root]
    while stack:
        item = stack.pop()
        if type(item) is int:
            out.append(ref_pgno(item))
            node = store.load(item)
        else:
            assert isinstance(item, Node)
            node = item
            if node.pgno is not None:
                out.append(node.pgno)
        stack.extend(node.children)
    return out


Prints = list[tuple[Node, tuple[bytes, ...], tuple[bytes, ...], list[Node | int]]]


def fingerprint(root: Node | None) -> Prints:
    """Content of every in-memory node reachable from root through Node references."""
    out: Prints = []
    stack = [] if root is None else [root]
    while stack:
        node = stack.pop()
        out.append((node, tuple(node.keys), tuple(node.values), list(node.children)))
        stack.extend(c for c in node.children if type(c) is Node)
    return out


def assert_unchanged(prints: Prints) -> None:
    for node, keys, values, children in prints:
        assert tuple(node.keys) == keys
        assert tuple(node.values) == values
        assert len(node.children) == len(children)
        for now, then in zip(node.children, children, strict=True):
            if now is then:
                continue
            # The only allowed change: a written child swizzled to its page number.
            assert type(now) is int and type(then) is Node and node_ref(then) == now


def check_tree(store: MemoryNodeStore, root: Node | None, model: dict[bytes, bytes]) -> None:
    stats = verify_tree(store, root)
    assert stats.entries == len(model)
    if stats.min_leaf_nbytes is not None:
        assert stats.min_leaf_nbytes >= min_fill(store.page_size)
    for node in iter_nodes(store, root):
        assert node.nbytes <= payload_capacity(store.page_size)
    assert list(iterate(store, root)) == sorted(model.items())


class BTreeMachine(RuleBasedStateMachine):
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryNodeStore(PAGE)
        self.epoch = 1
        self.freed: list[int] = []
        self.mutation = Mutation(self.store, None, self.epoch, self.freed)
        self.model: dict[bytes, bytes] = {}
        self.base_written: set[int] = set()
        # Dirty nodes of the tree the current mutation started from (`dirty_counted`).
        self.dirty_base = 0
        self.snapshots: list[tuple[Node | None, dict[bytes, bytes], Prints]] = []

    @initialize(seed=st.integers(0, 2**32), count=st.sampled_from([0, 10, 300]))
    def start(self, seed: int, count: int) -> None:
        self.put_many(seed, count)

    # -- changes --

    @rule(target=keys, key=keys_st, size=sizes_st)
    def put(self, key: bytes, size: int) -> bytes:
        value = make_value(key, size)
        self.mutation.put(key, value)
        self.model[key] = value
        return key

    @rule(seed=st.integers(0, 2**32), count=st.integers(1, 150))
    def put_many(self, seed: int, count: int) -> None:
        rnd = random.Random(seed)
        for _ in range(count):
            key = make_key(rnd.randrange(len(PREFIXES)), rnd.randbytes(rnd.randint(0, 5)))
            value = make_value(key, rnd.choice((rnd.randint(0, 60), rnd.randint(0, MAX_ENTRY))))
            self.mutation.put(key, value)
            self.model[key] = value

    @rule(
        seed=st.integers(0, 2**32),
        count=st.integers(2, 60),
        entry=st.sampled_from([0, 60, 400, CHUNK_ENTRY, MAX_ENTRY]),
    )
    def put_run(self, seed: int, count: int, entry: int) -> None:
        """Ascending puts under one prefix (a long value's chunks, a load in key order),
        perhaps into the middle of keys already there: leaves split at the run's end."""
        rnd = random.Random(seed)
        prefix = make_key(rnd.randrange(len(PREFIXES)), rnd.randbytes(rnd.randint(0, 3)))
        for n in range(count):
            key = prefix + n.to_bytes(2, "big")
            size = entry - LEAF_ENTRY_OVERHEAD - len(key) if entry else rnd.randint(0, 60)
            value = make_value(key, size)
            self.mutation.put(key, value)
            self.model[key] = value

    @rule(
        seed=st.integers(0, 2**32),
        count=st.integers(2, 40),
        where=st.sampled_from(["first", "last", "existing", "anywhere"]),
    )
    def put_run_mixed(self, seed: int, count: int, where: str) -> None:
        """A run that hits every edge of `_run_split_point`: from the first or the last key
        of the tree, or over keys already there (each put replaces one: a long value
        rewritten), entries of the largest size among tiny ones, and deletes in between of
        the key right after the run (a shorter value's leftover chunks) or of one elsewhere."""
        rnd = random.Random(seed)
        existing = sorted(self.model)
        if where == "existing" and existing:
            start = rnd.randrange(len(existing))
            run_keys = existing[start : start + count]
        else:
            if where == "first":
                base = b""  # keys 0000, 0001, ...: before every key but b"" and b"\x00"
            elif where == "last":
                base = existing[-1] + b"\xff" if existing else b"z"
            else:
                base = make_key(rnd.randrange(len(PREFIXES)), rnd.randbytes(rnd.randint(0, 3)))
            base = base[: MAX_KEY_SIZE - 2]
            run_keys = [base + n.to_bytes(2, "big") for n in range(count)]
        for key in run_keys:
            size = rnd.choice((0, 5, CHUNK_ENTRY, MAX_ENTRY, rnd.randint(0, MAX_ENTRY)))
            value = make_value(key, size - LEAF_ENTRY_OVERHEAD - len(key))
            self.mutation.put(key, value)
            self.model[key] = value
            if rnd.random() < 0.2 and self.model:
                later = [k for k in sorted(self.model) if k > key]
                victim = later[0] if later and rnd.random() < 0.7 else rnd.choice(list(self.model))
                assert self.mutation.delete(victim)
                del self.model[victim]

    @rule(key=st.one_of(keys, keys_st))
    def delete(self, key: bytes) -> None:
        assert self.mutation.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(seed=st.integers(0, 2**32), fraction=st.sampled_from([0.1, 0.5, 0.9, 1.0]))
    def delete_many(self, seed: int, fraction: float) -> None:
        rnd = random.Random(seed)
        victims = [k for k in sorted(self.model) if rnd.random() < fraction]
        for key in victims:
            assert self.mutation.delete(key)
            del self.model[key]

    # -- reads --

    @rule(key=st.one_of(keys, keys_st))
    def get(self, key: bytes) -> None:
        assert self.mutation.get(key) == self.model.get(key)

    @rule(
        start=st.one_of(st.none(), keys, keys_st),
        stop=st.one_of(st.none(), keys, keys_st),
        reverse=st.booleans(),
    )
    def scan(self, start: bytes | None, stop: bytes | None, reverse: bool) -> None:
        expected = sorted(
            (k, v)
            for k, v in self.model.items()
            if (start is None or k >= start) and (stop is None or k < stop)
        )
        if reverse:
            expected.reverse()
        got = list(iterate(self.store, self.mutation.root, start, stop, reverse))
        assert got == expected

    # -- publishing --

    def _commit(self) -> Node | None:
        root = self.mutation.root
        now_written = written_pgnos(self.store, root)
        assert len(now_written) == len(set(now_written))
        assert len(self.freed) == len(set(self.freed)), "a page was freed twice"
        assert set(self.freed) == self.base_written - set(now_written)
        self.freed.clear()
        self.base_written = set(now_written)
        self.dirty_base += self.mutation.dirtied
        self.epoch += 1
        self.mutation = Mutation(self.store, root, self.epoch, self.freed)
        return root

    @rule()
    def commit(self) -> None:
        self._commit()

    @rule()
    def checkpoint(self) -> None:
        root = self._commit()
        self.store.checkpoint(root, checkpoint_seq=self.epoch)
        self.base_written = set(written_pgnos(self.store, root))
        assert dirty_nodes_postorder(root) == []
        self.dirty_base = 0

    @rule()
    def checkpoint_mid_mutation(self) -> None:
        # Not what the engine does, but the mutation must then treat its own (now written)
        # nodes as published: copy them and free their pages.
        root = self.mutation.root
        self.store.checkpoint(root, checkpoint_seq=self.epoch)
        self.base_written |= set(written_pgnos(self.store, root))
        self.dirty_base = -self.mutation.dirtied  # nothing is dirty now
        self.snapshots.append((root, dict(self.model), fingerprint(root)))
        del self.snapshots[:-4]

    @rule()
    def snapshot(self) -> None:
        root = self._commit()
        self.snapshots.append((root, dict(self.model), fingerprint(root)))
        del self.snapshots[:-4]

    # -- invariants --

    @invariant()
    def structure(self) -> None:
        check_tree(self.store, self.mutation.root, self.model)

    @invariant()
    def dirty_counted(self) -> None:
        # What the engine adds up to bound the dirty bytes a checkpoint has to write.
        root = self.mutation.root
        dirty = self.dirty_base + self.mutation.dirtied
        assert dirty == len(dirty_nodes_postorder(root)) == count_dirty_nodes(root)

    @invariant()
    def snapshots_are_immutable(self) -> None:
        for root, model, prints in self.snapshots:
            assert_unchanged(prints)
            assert list(iterate(self.store, root)) == sorted(model.items())


BTreeMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestBTreeStateful = BTreeMachine.TestCase


# --- deterministic tests -----------------------------------------------------------------


def build(
    store: MemoryNodeStore, items: Iterable[tuple[bytes, bytes]], epoch: int = 1
) -> Node | None:
    m = Mutation(store, None, epoch, [])
    for k, v in items:
        m.put(k, v)
    return m.root


def test_large_random_puts_then_delete_half() -> None:
    rnd = random.Random(2024)
    store = MemoryNodeStore(PAGE)
    model: dict[bytes, bytes] = {}
    freed: list[int] = []
    m = Mutation(store, None, 1, freed)
    for _ in range(200_000):
        key = rnd.randbytes(rnd.randint(4, 20))
        value = rnd.randbytes(rnd.randint(0, 40))
        m.put(key, value)
        model[key] = value
    root = m.root
    check_tree(store, root, model)
    assert store.checkpoint(root) > 0
    m = Mutation(store, root, 2, freed)
    keys = sorted(model)
    rnd.shuffle(keys)
    for key in keys[: len(keys) // 2]:
        assert m.delete(key)
        del model[key]
    check_tree(store, m.root, model)
    for key in keys[: len(keys) // 2 : 97]:
        assert m.get(key) is None
    for key in keys[len(keys) // 2 :: 97]:
        assert m.get(key) == model[key]
    assert len(freed) == len(set(freed))
    # The old root still reads everything (copy-on-write).
    assert count_entries(store, root) == len(keys)


def test_freed_gets_exactly_the_replaced_written_pages() -> None:
    store = MemoryNodeStore(PAGE)
    # Long shared prefixes make long separators: a deep tree from few entries.
    prefix = b"x" * 200
    items = [(prefix + b"%06d" % i, b"v" * 50) for i in range(3000)]
    root = build(store, items)
    store.checkpoint(root)
    assert root is not None and root.pgno is not None
    stats = verify_tree(store, root)
    assert stats.depth >= 3
    freed: list[int] = []
    m = Mutation(store, root, 2, freed)
    # Absent-key deletes and lookups copy nothing.
    assert not m.delete(b"nope")
    assert m.get(prefix + b"000001") == b"v" * 50
    assert freed == [] and m.root is root
    # Many changes to one leaf: the nodes on its path are replaced, once each.
    for _ in range(3):
        m.put(prefix + b"000001", b"w" * 40)
    leaf_pgnos = set(written_pgnos(store, root)) - set(written_pgnos(store, m.root))
    assert len(freed) == stats.depth
    assert set(freed) == leaf_pgnos
    assert freed[0] == root.pgno
    # A later mutation built on this one frees nothing already freed (those nodes are dirty).
    freed2: list[int] = []
    m2 = Mutation(store, m.root, 3, freed2)
    m2.put(prefix + b"000002", b"x")
    assert freed2 == []


def test_merge_frees_the_absorbed_sibling() -> None:
    store = MemoryNodeStore(PAGE)
    root = build(store, [(b"%04d" % i, b"v" * 300) for i in range(60)])
    store.checkpoint(root)
    before = set(written_pgnos(store, root))
    freed: list[int] = []
    m = Mutation(store, root, 2, freed)
    for i in range(0, 60):
        if i % 12:
            assert m.delete(b"%04d" % i)
    after = set(written_pgnos(store, m.root))
    assert set(freed) == before - after and len(freed) == len(set(freed))
    assert len(after) < len(before) - 1  # leaves were merged away, not only copied
    check_tree(store, m.root, {b"%04d" % i: b"v" * 300 for i in range(0, 60, 12)})


def test_deleting_everything_gives_an_empty_tree() -> None:
    store = MemoryNodeStore(PAGE)
    keys = [b"%05d" % i for i in range(2000)]
    root = build(store, [(k, b"x" * 30) for k in keys])
    store.checkpoint(root)
    freed: list[int] = []
    m = Mutation(store, root, 2, freed)
    random.Random(3).shuffle(keys)
    for k in keys:
        assert m.delete(k)
    assert m.root is None
    assert sorted(freed) == sorted(written_pgnos(store, root))
    assert list(iterate(store, None)) == []
    assert lookup(store, None, b"a") is None
    assert count_entries(store, None) == 0


def test_root_collapses_to_its_only_child() -> None:
    store = MemoryNodeStore(PAGE)
    m = Mutation(store, None, 1, [])
    for i in range(40):
        m.put(b"%03d" % i, b"z" * 400)
    assert m.root is not None and not m.root.leaf
    for i in range(1, 40):
        m.delete(b"%03d" % i)
    assert m.root is not None and m.root.leaf
    assert m.root.keys == [b"000"]


def test_sequential_and_reverse_inserts_keep_invariants() -> None:
    for order in (1, -1):
        store = MemoryNodeStore(PAGE)
        items = [(b"%08d" % i, b"v" * (i % 90)) for i in range(20_000)][::order]
        root = build(store, items)
        check_tree(store, root, dict(items))


def _put_all(mutation: Mutation, items: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    model = {}
    for key, value in items:
        mutation.put(key, value)
        model[key] = value
    return model


def _entry(key: bytes, entry_size: int) -> tuple[bytes, bytes]:
    return key, bytes(entry_size - LEAF_ENTRY_OVERHEAD - len(key))


@pytest.mark.parametrize("entry_size", [24, 300, 1000, CHUNK_ENTRY])
def test_ascending_puts_leave_full_leaves_behind(entry_size: int) -> None:
    """A run of ascending puts splits each full leaf at the run's end, not at its midpoint:
    every leaf it leaves behind holds what it held (at least 3/4 of a page, less one
    entry), and entries sized two a leaf (long-value chunks) sit two a leaf. A midpoint
    split left every leaf behind half full, and chunks one a leaf."""
    store = MemoryNodeStore(PAGE)
    mutation = Mutation(store, None, 1, [])
    model = _put_all(mutation, (_entry(b"k%06d" % i, entry_size) for i in range(3000)))
    check_tree(store, mutation.root, model)
    leaves = [node for node in iter_nodes(store, mutation.root) if node.leaf]
    assert len(leaves) > 10
    for leaf in leaves[:-1]:
        assert leaf.nbytes >= 3 * CAPACITY // 4 - entry_size
    if entry_size == CHUNK_ENTRY:
        assert [len(leaf.keys) for leaf in leaves[:-1]] == [2] * (len(leaves) - 1)
    # The same entries in random order still split at midpoints (both halves >= 1/4).
    shuffled = sorted(model.items())
    random.Random(entry_size).shuffle(shuffled)
    store = MemoryNodeStore(PAGE)
    mutation = Mutation(store, None, 1, [])
    assert _put_all(mutation, shuffled) == model
    check_tree(store, mutation.root, model)


def test_ascending_puts_one_per_mutation_leave_full_leaves_behind() -> None:
    """A counter committed row by row (one put per mutation, checkpoints in between) is a
    run too: the leaf remembers its last put (`Node.last_put`, kept by its copies), so the
    next key after it splits the leaf at its end. The keys after the run (another object's,
    as an index behind a table) move right ahead of it."""
    store = MemoryNodeStore(PAGE)
    epoch = 1
    mutation = Mutation(store, None, epoch, [])
    model = _put_all(mutation, [(b"z%04d" % i, b"tail") for i in range(5)])
    root = mutation.root
    for i in range(3000):
        epoch += 1
        mutation = Mutation(store, root, epoch, [])
        model.update(_put_all(mutation, [_entry(b"k%06d" % i, 60)]))
        root = mutation.root
        if i % 500 == 499:
            store.checkpoint(root, checkpoint_seq=epoch)
    check_tree(store, root, model)
    leaves = [node for node in iter_nodes(store, root) if node.leaf]
    assert len(leaves) > 20
    for leaf in leaves[:-1]:
        assert leaf.nbytes >= 3 * CAPACITY // 4 - 60


def test_a_run_into_the_middle_of_the_tree_fills_its_leaves() -> None:
    """A run of chunk-sized entries between keys already there (a long value of a record in
    the middle of the table) fills its leaves two entries each; the keys after the run move
    right ahead of it, and every other leaf keeps the invariants."""
    store = MemoryNodeStore(PAGE)
    mutation = Mutation(store, None, 1, [])
    model = _put_all(
        mutation,
        [(b"a%04d" % i, b"x" * 100) for i in range(300)]
        + [(b"z%04d" % i, b"y" * 100) for i in range(300)],
    )
    store.checkpoint(mutation.root, checkpoint_seq=1)
    mutation = Mutation(store, mutation.root, 2, [])
    model.update(_put_all(mutation, (_entry(b"m%04d" % i, CHUNK_ENTRY) for i in range(200))))
    check_tree(store, mutation.root, model)
    run_leaves = [
        node
        for node in iter_nodes(store, mutation.root)
        if node.leaf and all(key.startswith(b"m") for key in node.keys)
    ]
    # Each run of two chunks fills a leaf; at most the run's last leaf holds one.
    assert sum(len(leaf.keys) for leaf in run_leaves) >= 198
    assert sum(len(leaf.keys) == 2 for leaf in run_leaves) >= len(run_leaves) - 1


def test_entry_and_key_limits() -> None:
    store = MemoryNodeStore(PAGE)
    m = Mutation(store, None, 1, [])
    key = b"k" * MAX_KEY_SIZE
    m.put(key, b"v" * (MAX_ENTRY - LEAF_ENTRY_OVERHEAD - len(key)))
    with pytest.raises(InvalidParameter, match="longer than the maximum"):
        m.put(key + b"k", b"")
    with pytest.raises(InvalidParameter, match="per entry"):
        m.put(b"a", b"v" * (MAX_ENTRY - LEAF_ENTRY_OVERHEAD))
    m.put(b"a", b"v" * (MAX_ENTRY - LEAF_ENTRY_OVERHEAD - 1))
    m.put(bytearray(b"b"), memoryview(b"c"))  # type: ignore[arg-type]
    assert m.get(b"b") == b"c" and type(m.get(b"b")) is bytes
    with pytest.raises(InvalidParameter, match="must be bytes"):
        m.put("text", b"")  # type: ignore[arg-type]
    check_tree(
        store,
        m.root,
        {
            key: b"v" * (MAX_ENTRY - LEAF_ENTRY_OVERHEAD - len(key)),
            b"a": b"v" * (MAX_ENTRY - LEAF_ENTRY_OVERHEAD - 1),
            b"b": b"c",
        },
    )


def test_epoch_must_be_positive() -> None:
    with pytest.raises(InvalidParameter):
        Mutation(MemoryNodeStore(PAGE), None, 0, [])


def test_published_nodes_are_never_changed_in_place() -> None:
    store = MemoryNodeStore(PAGE)
    items = {b"%05d" % i: b"a" * 20 for i in range(3000)}
    root = build(store, items.items())
    prints = fingerprint(root)
    rnd = random.Random(9)
    m = Mutation(store, root, 2, [])
    for _ in range(3000):
        key = b"%05d" % rnd.randrange(4000)
        if rnd.random() < 0.5:
            m.put(key, b"b" * rnd.randint(0, 200))
        else:
            m.delete(key)
    assert_unchanged(prints)
    assert list(iterate(store, root)) == sorted(items.items())


# --- iteration ---------------------------------------------------------------------------


def test_iterate_bounds_and_directions() -> None:
    store = MemoryNodeStore(PAGE)
    items = {b"%04d" % i: b"v%d" % i for i in range(0, 5000, 2)}
    root = build(store, items.items())
    store.checkpoint(root)
    ordered = sorted(items.items())
    cases = [(None, None), (b"0100", b"0200"), (b"0101", b"0201"), (b"", b"0"), (b"4998", None)]
    cases += [(None, b"0000"), (b"9", None), (b"0300", b"0300"), (b"0400", b"0300")]
    for start, stop in cases:
        want = [
            (k, v)
            for k, v in ordered
            if (start is None or k >= start) and (stop is None or k < stop)
        ]
        assert list(iterate(store, root, start, stop)) == want
        assert list(iterate(store, root, start, stop, reverse=True)) == want[::-1]


def test_iteration_is_lazy_and_survives_later_commits_and_checkpoints() -> None:
    store = MemoryNodeStore(PAGE)
    items = {b"%05d" % i: b"v" * 30 for i in range(5000)}
    root = build(store, items.items())
    forward = iterate(store, root)
    backward = iterate(store, root, reverse=True)
    first = [next(forward) for _ in range(100)]
    last = [next(backward) for _ in range(100)]
    m = Mutation(store, root, 2, [])
    for i in range(0, 5000, 3):
        m.delete(b"%05d" % i)
    store.checkpoint(m.root)
    store.checkpoint(root)  # swizzles nodes the running iterators are walking
    assert first + list(forward) == sorted(items.items())
    assert last + list(backward) == sorted(items.items(), reverse=True)


def test_readers_in_threads_see_their_snapshot_while_a_writer_publishes() -> None:
    store = MemoryNodeStore(PAGE)
    items = {b"%05d" % i: b"v" * 30 for i in range(4000)}
    root = build(store, items.items())
    store.checkpoint(root)
    expected = sorted(items.items())
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                assert list(iterate(store, root)) == expected
                assert lookup(store, root, b"00042") == b"v" * 30
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    current = root
    rnd = random.Random(4)
    for epoch in range(2, 40):
        m = Mutation(store, current, epoch, [])
        for _ in range(50):
            key = b"%05d" % rnd.randrange(6000)
            if rnd.random() < 0.5:
                m.put(key, b"w")
            else:
                m.delete(key)
        current = m.root
        if epoch % 5 == 0:
            store.checkpoint(current)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


# --- node codec --------------------------------------------------------------------------


def test_leaf_and_branch_round_trip() -> None:
    leaf = Node.new_leaf([b"", b"a", b"b" * MAX_KEY_SIZE], [b"1", b"", b"x" * 900])
    page = encode_node(leaf, PAGE, 7, 3)
    assert len(page) == PAGE
    back = decode_node(7, page, path="t.edb")
    assert back.leaf and back.keys == leaf.keys and back.values == leaf.values
    assert back.pgno == 7 and back.owner == 0 and back.nbytes == leaf.nbytes
    assert back.children == []

    child = Node.new_leaf([b"z"], [b"y"], pgno=12)
    child.page_crc = 0xDEADBEEF
    far = child_ref(MAX_PGNO, 0xFFFFFFFF)
    branch = Node.new_branch([b"m", b"t" * 50], [10, child, far])
    back = decode_node(8, encode_node(branch, PAGE, 8, 3))
    assert not back.leaf and back.keys == branch.keys
    assert back.children == [10, child_ref(12, 0xDEADBEEF), far]
    assert [ref_pgno(c) for c in back.children if isinstance(c, int)] == [10, 12, MAX_PGNO]
    assert back.nbytes == branch.nbytes and back.values == []
    assert back.page_crc == page_crc_of(encode_node(branch, PAGE, 8, 3))

    empty = decode_node(9, encode_node(Node.new_leaf([], []), PAGE, 9, 0))
    assert empty.leaf and empty.keys == [] and empty.nbytes == 0


@given(
    st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=60)), max_size=40),
    st.sampled_from([4096, 8192]),
)
def test_leaf_codec_property(entries: list[tuple[bytes, bytes]], page_size: int) -> None:
    entries = sorted(dict(entries).items())
    leaf = Node.new_leaf([k for k, _ in entries], [v for _, v in entries])
    back = decode_node(3, encode_node(leaf, page_size, 3, 0))
    assert list(zip(back.keys, back.values, strict=True)) == entries
    assert back.nbytes == leaf.nbytes


def test_node_payloads_are_laid_out_as_the_design_documents() -> None:
    """docs/design.md, "Database file": leaf n x (key length u16, value length u32) then key0
    value0 key1 value1; branch (n+1) x child reference u64 (pgno | page CRC32C << 32), n x key
    length u16, then the keys; the envelope's entry count is the number of keys."""
    leaf = Node.new_leaf([b"ab", b"c"], [b"xyz", b""])
    page = encode_node(leaf, PAGE, 7, 0)
    assert page[4] == PageType.LEAF and struct.unpack_from("<H", page, 6)[0] == 2
    payload = struct.pack("<HIHI", 2, 3, 1, 0) + b"ab" + b"xyz" + b"c"
    assert struct.unpack_from("<I", page, 24)[0] == len(payload)
    assert page[32 : 32 + len(payload)] == payload
    refs = [child_ref(5, 0xDEADBEEF), child_ref(MAX_PGNO, 0x01020304)]
    assert refs == [5 | 0xDEADBEEF << 32, 0x01020304FFFFFFFF]
    branch = Node.new_branch([b"m"], list(refs))
    page = encode_node(branch, PAGE, 8, 0)
    assert page[4] == PageType.BRANCH and struct.unpack_from("<H", page, 6)[0] == 1
    payload = struct.pack("<QQH", *refs, 1) + b"m"
    assert page[32 : 32 + len(payload)] == payload
    assert page[32 + len(payload) :] == bytes(PAGE - 32 - len(payload))


def test_branch_with_a_dirty_child_cannot_be_encoded() -> None:
    branch = Node.new_branch([b"m"], [5, Node.new_leaf([b"x"], [b"y"])])
    with pytest.raises(InvalidParameter, match="no page image yet"):
        encode_node(branch, PAGE, 3, 0)
    # A page number alone is not enough: the parent records the child's exact image.
    branch = Node.new_branch([b"m"], [5, Node.new_leaf([b"x"], [b"y"], pgno=6)])
    with pytest.raises(InvalidParameter, match="no page image yet"):
        encode_node(branch, PAGE, 3, 0)
    with pytest.raises(InvalidParameter):
        encode_node(Node.new_branch([], [5]), PAGE, 3, 0)
    too_big = Node.new_leaf([b"k" * 100] * 50, [b"v" * 100] * 50)
    with pytest.raises(InvalidParameter):
        encode_node(too_big, PAGE, 3, 0)


def test_decoding_other_page_types_is_corruption() -> None:
    page = encode_page(4, PageType.FREE_LIST, 0, b"", PAGE, 0)
    with pytest.raises(DatabaseCorrupted, match=r"page 4 of 'f\.edb'.*FREE_LIST"):
        decode_node(4, page, path="f.edb")


@given(
    page_type=st.sampled_from([PageType.LEAF, PageType.BRANCH]),
    count=st.integers(0, 300),
    payload=st.binary(max_size=600),
)
@settings(max_examples=300)
def test_decoding_a_malformed_payload_raises_corruption_only(
    page_type: PageType, count: int, payload: bytes
) -> None:
    page = encode_page(6, page_type, count, payload, PAGE, 0)
    try:
        node = decode_node(6, page, path="g.edb")
    except DatabaseCorrupted as exc:
        assert "page 6 of 'g.edb'" in exc.detail
    else:
        assert node.nbytes == len(payload)


def test_branch_naming_itself_is_corruption() -> None:
    page = encode_node(Node.new_branch([b"m"], [5, 6]), PAGE, 6, 0)
    with pytest.raises(DatabaseCorrupted, match="names itself"):
        decode_node(6, page)


def test_damaged_node_pages_raise_page_errors() -> None:
    store = MemoryNodeStore(PAGE)
    with pytest.raises(PageNotInitialized):
        store.load(99)
    page = bytearray(encode_node(Node.new_leaf([b"a"], [b"b"]), PAGE, 5, 0))
    page[40] ^= 0xFF
    with pytest.raises(JetError):
        decode_node(5, bytes(page))


# --- checkpointer helpers ----------------------------------------------------------------


def test_dirty_nodes_postorder_and_swizzle() -> None:
    store = MemoryNodeStore(PAGE)
    root = build(store, [(b"%05d" % i, b"v" * 60) for i in range(3000)])
    assert root is not None
    dirty = dirty_nodes_postorder(root)
    assert dirty[-1] == (root, None, -1)
    seen: set[int] = set()
    for node, parent, index in dirty:
        assert node.pgno is None
        for child in node.children:
            assert id(child) in seen  # children first
        if parent is not None:
            assert parent.children[index] is node
        seen.add(id(node))
    assert len(dirty) == sum(1 for _ in iter_nodes(store, root))
    # Written left to right: leaves get ascending page numbers in key order.
    for node, parent, index in dirty:
        ref = store.write(node)
        assert ref_pgno(ref) == node.pgno and ref_crc(ref) == node.page_crc
        if parent is not None:
            swizzle(parent, index, ref)
    leaves = [n.pgno or 0 for n in iter_nodes(store, root) if n.leaf]
    assert leaves == sorted(leaves)
    assert dirty_nodes_postorder(root) == []
    assert dirty_nodes_postorder(None) == []
    assert root.pgno is not None and all(type(c) is int for c in root.children)

    leaf = Node.new_leaf([b"a"], [b"b"], pgno=4)
    leaf.page_crc = 77
    branch = Node.new_branch([b"m"], [leaf, 5])
    with pytest.raises(InvalidParameter):
        swizzle(branch, 0, 9)
    with pytest.raises(InvalidParameter):
        swizzle(branch, 0, 4)  # the right page, but not the image the child was written as
    with pytest.raises(InvalidParameter):
        swizzle(branch, 1, 9)
    swizzle(branch, 0, child_ref(4, 77))
    swizzle(branch, 1, 5)
    assert branch.children == [child_ref(4, 77), 5]
    with pytest.raises(InvalidParameter, match="already written"):
        store.write(root)


def test_verify_tree_detects_broken_trees() -> None:
    store = MemoryNodeStore(PAGE)
    root = build(store, [(b"%05d" % i, b"v" * 60) for i in range(500)])
    assert root is not None
    verify_tree(store, root)
    child = root.children[1]
    assert isinstance(child, Node)
    child.keys[0], child.keys[1] = child.keys[1], child.keys[0]
    with pytest.raises(DatabaseCorrupted, match="ascending"):
        verify_tree(store, root)
    child.keys[0], child.keys[1] = child.keys[1], child.keys[0]
    first = root.children[0]
    assert isinstance(first, Node)
    root.keys[0] = first.keys[-1]
    with pytest.raises(DatabaseCorrupted, match="range"):
        verify_tree(store, root)


def test_iterate_chunks_is_iterate_a_leaf_at_a_time() -> None:
    rng = random.Random(5)
    store = MemoryNodeStore(4096)
    mutation = Mutation(store, None, 1, [])
    model = {
        rng.randbytes(rng.randint(1, 8)): rng.randbytes(rng.randint(0, 90)) for _ in range(3000)
    }
    for key, value in model.items():
        mutation.put(key, value)
    root = mutation.root
    store.checkpoint(root)
    ordered = sorted(model)
    bounds = [None, b"", ordered[0], ordered[100], ordered[100] + b"\x00", ordered[-1], b"\xff" * 9]
    for start in bounds:
        for stop in bounds:
            for reverse in (False, True):
                chunks = list(iterate_chunks(store, root, start, stop, reverse))
                assert all(keys and len(keys) == len(values) for keys, values in chunks)
                flat = [e for keys, values in chunks for e in zip(keys, values, strict=True)]
                assert flat == list(iterate(store, root, start, stop, reverse))
                # Fresh lists: changing them changes no node.
                for keys, values in chunks:
                    keys.clear()
                    values.clear()
                assert flat == list(iterate(store, root, start, stop, reverse))
    assert len(list(iterate_chunks(store, root))) > 10
    assert list(iterate_chunks(store, None)) == []


class CachingStore(MemoryNodeStore):
    """Keeps each decoded node, as the engine's node cache does."""

    def __init__(self, page_size: int) -> None:
        super().__init__(page_size)
        self.cached: dict[int, Node] = {}

    def load(self, pgno: int) -> Node:
        node = self.cached.get(pgno)
        if node is None:
            node = self.cached[pgno] = super().load(pgno)
        return node


def test_lookup_indexes_written_leaves_only() -> None:
    rng = random.Random(11)
    store = CachingStore(4096)
    mutation = Mutation(store, None, 1, [])
    model = {rng.randbytes(6): rng.randbytes(rng.randint(0, 60)) for _ in range(2000)}
    for key, value in model.items():
        mutation.put(key, value)
    root = mutation.root
    assert root is not None and not root.leaf
    probes = [*model, *(rng.randbytes(6) for _ in range(200)), b"", b"\xff" * 7]
    # Unwritten leaves (a mutation may still change them in place) are bisected.
    assert [lookup(store, root, k) for k in probes] == [model.get(k) for k in probes]
    assert all(n.index is None for n in iter_nodes(store, root))
    store.checkpoint(root)
    assert [lookup(store, root, k) for k in probes] == [model.get(k) for k in probes]
    leaves = [n for n in store.cached.values() if n.leaf]
    assert leaves and all(n.index is not None for n in leaves)
    for leaf in leaves:
        assert leaf.index == dict(zip(leaf.keys, leaf.values, strict=True))
    # A mutation copies an indexed leaf before changing it: the old one keeps its entries.
    key = next(iter(model))
    change = Mutation(store, root, 2, [])
    change.put(key, b"changed")
    assert lookup(store, change.root, key) == b"changed"
    assert lookup(store, root, key) == model[key]
    assert [lookup(store, change.root, k) for k in probes] == [
        b"changed" if k == key else model.get(k) for k in probes
    ]


def test_copied_branches_share_keys_until_a_separator_changes() -> None:
    # A path copy shares the branch's key list with the published node; splits, merges and
    # redistributions in later epochs must take a private copy first. Many short epochs over
    # one deep tree (long keys: a branch holds a few separators, so branches split and merge
    # too), every published root kept and checked.
    store = MemoryNodeStore(PAGE)
    prefix = b"p" * 150

    def key_of(i: int) -> bytes:
        return prefix + b"%06d" % i

    items = {key_of(i): b"a" * 30 for i in range(0, 6000, 2)}
    root = build(store, items.items())
    store.checkpoint(root)
    model = dict(items)
    kept: list[tuple[Node | None, dict[bytes, bytes], Prints]] = [
        (root, dict(model), fingerprint(root))
    ]
    rnd = random.Random(11)
    shared_seen = 0
    for epoch in range(2, 400):
        m = Mutation(store, root, epoch, [])
        for _ in range(rnd.randint(1, 30)):
            key = key_of(rnd.randrange(6000))
            if rnd.random() < 0.55:
                value = b"b" * rnd.randint(0, 300)
                m.put(key, value)
                model[key] = value
            else:
                m.delete(key)
                model.pop(key, None)
        root = m.root
        shared_seen += sum(1 for n in iter_nodes(store, root) if n.shared_keys)
        verify_tree(store, root)
        kept.append((root, dict(model), fingerprint(root)))
        if epoch % 50 == 0:
            store.checkpoint(root)
    assert shared_seen > 0
    assert verify_tree(store, root).depth >= 3
    for snapshot_root, snapshot_model, prints in kept:
        assert_unchanged(prints)
        assert list(iterate(store, snapshot_root)) == sorted(snapshot_model.items())


def test_oversized_entry_finds_what_a_put_refuses_and_nothing_else() -> None:
    page_size = 8192
    fits = max_entry_size(page_size) - LEAF_ENTRY_OVERHEAD
    cases: list[tuple[dict[bytes, bytes | None], bool]] = [
        ({}, False),
        ({b"k": b"v", b"d": None}, False),
        ({b"k" * MAX_KEY_SIZE: b"v" * (fits - MAX_KEY_SIZE)}, False),
        # The longest key and the longest value are of different entries: each fits.
        ({b"k" * MAX_KEY_SIZE: b"", b"x": b"v" * (fits - 1)}, False),
        ({b"d" * (MAX_KEY_SIZE + 1): None}, False),  # a delete adds no entry
        ({b"a": b"", b"k" * (MAX_KEY_SIZE + 1): b"v"}, True),
        ({b"a": None, b"k": b"v" * fits}, True),
    ]
    for changes, refused in cases:
        puts = [(k, v) for k, v in changes.items() if v is not None]
        longest_key = max((len(k) for k, _ in puts), default=0)
        longest_put = max((len(k) + len(v) for k, v in puts), default=0)
        problem = oversized_entry(changes, page_size, longest_key, longest_put)
        assert (problem is not None) is refused, changes.keys()
        for key, value in changes.items():
            if value is None:
                continue
            try:
                Mutation(MemoryNodeStore(page_size), None, 1, []).put(key, value)
            except InvalidParameter as exc:
                assert problem is not None and problem.detail == exc.detail

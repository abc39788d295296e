"""Bulk building of the B+tree: `build_tree` and `merge_sorted` against a dict model.

Besides the contents, the checks cover what makes a bulk-built tree a normal tree: the
structural invariants (`verify_tree`), the fill rules (no non-root leaf under `min_fill`),
short separators, ownership (every node dirty and owned by the build's epoch, so a later
`Mutation` of that epoch changes it in place and the checkpointer writes all of it), and, for
`merge_sorted`, that the old tree is left untouched and its written pages are freed once.
Batch boundaries are exercised by shrinking the builder's batch size.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from jetstore.errors import InvalidParameter
from jetstore.format.page import PAGE_SIZES, payload_capacity
from jetstore.pages import btree
from jetstore.pages.btree import (
    LEAF_ENTRY_OVERHEAD,
    MAX_KEY_SIZE,
    MemoryNodeStore,
    Mutation,
    Node,
    build_tree,
    dirty_nodes_postorder,
    iter_nodes,
    iterate,
    lookup,
    max_entry_size,
    merge_sorted,
    min_fill,
    node_ref,
    verify_tree,
)

# Key families: short keys, and keys behind long shared prefixes (long separators, so a
# 4 KiB branch holds only a few and several branch levels appear with few entries).
PREFIXES = (b"", b"k", b"p" * 300, b"q" * 1000)
DEFAULT_BATCH = btree._BULK_BATCH
BATCHES = (1, 2, 5, 64, DEFAULT_BATCH)

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextmanager
def batch_size(size: int) -> Iterator[None]:
    """Make the builders cut leaves (and merge) every `size` entries."""
    with mock.patch.object(btree, "_BULK_BATCH", size):
        yield


def value_for(key: bytes, size: int, page_size: int) -> bytes:
    """A value of about `size` bytes, clipped so that the entry is within the limit."""
    size = max(0, min(size, max_entry_size(page_size) - LEAF_ENTRY_OVERHEAD - len(key)))
    return bytes([(len(key) * 7 + size) % 251]) * size


@st.composite
def models(draw: st.DrawFn, page_size: int, max_entries: int = 300) -> dict[bytes, bytes]:
    """Key/value dicts: either drawn key by key (shrinkable), or many keys from a seed (so
    that trees of several levels are common); values small or close to the entry limit."""
    family = draw(st.sampled_from(PREFIXES))
    big = max_entry_size(page_size)
    if draw(st.booleans()):
        keys = draw(st.lists(st.binary(max_size=6).map(lambda s: family + s), max_size=max_entries))
        sizes = st.one_of(st.integers(0, 40), st.integers(big - 200, big))
        return {key: value_for(key, draw(sizes), page_size) for key in keys}
    rng = random.Random(draw(st.integers(0, 2**32)))
    count = draw(st.integers(0, max_entries * 10))
    large = draw(st.floats(0, 1))  # the share of entries near the limit
    model = {}
    for _ in range(count):
        key = family + rng.randbytes(rng.randint(0, 6))
        size = rng.randint(big - 200, big) if rng.random() < large else rng.randint(0, 100)
        model[key] = value_for(key, size, page_size)
    return model


def uniform_model(count: int, entry_size: int, key_size: int = 8) -> dict[bytes, bytes]:
    """`count` entries of exactly `entry_size` encoded bytes, keys ascending."""
    value = b"v" * (entry_size - LEAF_ENTRY_OVERHEAD - key_size)
    return {i.to_bytes(key_size, "big"): value for i in range(count)}


def max_key(store: MemoryNodeStore, node: Node) -> bytes:
    while not node.leaf:
        child = node.children[-1]
        node = child if type(child) is Node else store.load(child)
    return node.keys[-1]


def min_key(store: MemoryNodeStore, node: Node) -> bytes:
    while not node.leaf:
        child = node.children[0]
        node = child if type(child) is Node else store.load(child)
    return node.keys[0]


def check_tree(store: MemoryNodeStore, root: Node | None, model: dict[bytes, bytes]) -> None:
    """The tree at root holds exactly `model` and keeps every structural invariant."""
    stats = verify_tree(store, root)
    assert stats.entries == len(model)
    if stats.min_leaf_nbytes is not None:
        assert stats.min_leaf_nbytes >= min_fill(store.page_size)
    expected = sorted(model.items())
    assert list(iterate(store, root)) == expected
    assert list(iterate(store, root, reverse=True)) == expected[::-1]
    if expected:
        mid = expected[len(expected) // 2][0]
        assert list(iterate(store, root, start=mid)) == expected[len(expected) // 2 :]
        assert (
            list(iterate(store, root, stop=mid, reverse=True))
            == (expected[: len(expected) // 2][::-1])
        )
    # Every key of a small tree; an even sample of a large one (lookups decode pages).
    for key, value in expected[:: max(1, len(expected) // 500)]:
        assert lookup(store, root, key) == value
        assert lookup(store, root, key + b"\x00") == model.get(key + b"\x00")
    assert lookup(store, root, b"") == model.get(b"")


def check_built(
    store: MemoryNodeStore, root: Node | None, model: dict[bytes, bytes], epoch: int
) -> None:
    """`check_tree`, plus what the bulk builders promise beyond a mutation's tree."""
    check_tree(store, root, model)
    if root is None:
        assert not model
        return
    capacity = payload_capacity(store.page_size)
    total = sum(LEAF_ENTRY_OVERHEAD + len(k) + len(v) for k, v in model.items())
    if total <= capacity:
        assert root.leaf, "everything fits one page: one leaf"
    for node in iter_nodes(store, root):
        assert node.owner == epoch and node.pgno is None
        if node.leaf:
            continue
        for i, separator in enumerate(node.keys):
            left = node.children[i]
            right = node.children[i + 1]
            assert type(left) is Node and type(right) is Node
            lo, hi = max_key(store, left), min_key(store, right)
            # The shortest prefix of the right subtree's smallest key above the left's largest.
            assert hi.startswith(separator) and lo < separator
            assert separator[:-1] <= lo


# --- build_tree ---------------------------------------------------------------------------


@SETTINGS
@given(
    data=st.data(),
    page_size=st.sampled_from(sorted(PAGE_SIZES)),
    batch=st.sampled_from(BATCHES),
)
def test_build_matches_model(data: st.DataObject, page_size: int, batch: int) -> None:
    model = data.draw(models(page_size))
    store = MemoryNodeStore(page_size)
    with batch_size(batch):
        root = build_tree(sorted(model.items()), page_size, 3)
    check_built(store, root, model, 3)
    event(f"depth {verify_tree(store, root).depth}")


@pytest.mark.parametrize("page_size", sorted(PAGE_SIZES))
def test_build_around_one_leaf(page_size: int) -> None:
    capacity = payload_capacity(page_size)
    # An entry size dividing the capacity, so that some count fills a leaf to the byte.
    entry = max(size for size in range(20, 201) if capacity % size == 0)
    per_leaf = capacity // entry
    store = MemoryNodeStore(page_size)
    for count in (0, 1, 2, per_leaf - 1, per_leaf, per_leaf + 1, 2 * per_leaf, 3 * per_leaf + 1):
        model = uniform_model(count, entry)
        root = build_tree(model.items(), page_size, 1)
        check_built(store, root, model, 1)
        if count == 0:
            assert root is None
        elif count <= per_leaf:
            assert root is not None and root.leaf and root.nbytes == count * entry
        else:
            assert root is not None and not root.leaf


@pytest.mark.parametrize("page_size", sorted(PAGE_SIZES))
def test_build_fills_leaves_to_target(page_size: int) -> None:
    capacity = payload_capacity(page_size)
    entry = 122  # 16-byte key, 100-byte value
    model = uniform_model(40_000 if page_size <= 8192 else 80_000, entry, key_size=16)
    store = MemoryNodeStore(page_size)
    root = build_tree(model.items(), page_size, 1)
    check_built(store, root, model, 1)
    leaves = [node for node in iter_nodes(store, root) if node.leaf]
    per_leaf = capacity * 9 // 10 // entry
    # Every leaf but the last two (which may have been evened out) is filled to ~90%.
    assert {len(leaf.keys) for leaf in leaves[:-2]} == {per_leaf}
    assert all(leaf.nbytes <= capacity for leaf in leaves[-2:])


@pytest.mark.parametrize("count", range(1, 60))
def test_build_deep_trees_with_long_separators(count: int) -> None:
    """Keys of ~1 KiB whose separators stay long: a 4 KiB branch holds 3 or 4, so every
    remainder of leaves per branch (including a lone last child) shows up across counts."""
    page_size = 4096
    store = MemoryNodeStore(page_size)
    model: dict[bytes, bytes] = {}
    for i in range(count):
        key = b"q" * 1000 + i.to_bytes(2, "big") + b"z" * 20
        model[key] = b"v" * (max_entry_size(page_size) - LEAF_ENTRY_OVERHEAD - len(key))
    root = build_tree(model.items(), page_size, 1)
    check_built(store, root, model, 1)


def test_build_short_leaf_tail_is_evened_out() -> None:
    # The greedy pass leaves a last leaf of one small entry after a leaf of large ones: it
    # must be joined with its neighbour and, as the two exceed a page, split at the middle.
    page_size = 4096
    big = max_entry_size(page_size)
    model = {bytes([i]): value_for(bytes([i]), big, page_size) for i in range(3)}
    model[b"\x10"] = b"small"
    store = MemoryNodeStore(page_size)
    root = build_tree(model.items(), page_size, 1)
    check_built(store, root, model, 1)


def test_build_rejects_unsorted_and_duplicate_keys() -> None:
    for items in ([(b"b", b"1"), (b"a", b"2")], [(b"a", b"1"), (b"a", b"2")]):
        with pytest.raises(InvalidParameter, match="sorted by key with unique keys"):
            build_tree(items, 4096, 1)
    # Across a batch boundary too.
    with batch_size(2), pytest.raises(InvalidParameter, match="duplicate"):
        build_tree([(b"a", b""), (b"b", b""), (b"b", b""), (b"c", b"")], 4096, 1)
    with batch_size(2), pytest.raises(InvalidParameter, match="out of order"):
        build_tree([(b"a", b""), (b"c", b""), (b"b", b""), (b"d", b"")], 4096, 1)


def test_build_rejects_what_put_rejects() -> None:
    page_size = 4096
    big = max_entry_size(page_size)
    good = (b"k", b"v" * (big - LEAF_ENTRY_OVERHEAD - 1))
    assert build_tree([good], page_size, 1) is not None
    for key, value in (
        (b"k", b"v" * (big - LEAF_ENTRY_OVERHEAD)),
        (b"k" * (MAX_KEY_SIZE + 1), b""),
    ):
        with pytest.raises(InvalidParameter) as put_error:
            Mutation(MemoryNodeStore(page_size), None, 1, []).put(key, value)
        with pytest.raises(InvalidParameter) as build_error:
            build_tree([(b"a", b""), (key, value)], page_size, 1)
        assert str(build_error.value) == str(put_error.value)
    with pytest.raises(InvalidParameter, match="must be bytes"):
        build_tree([(b"a", "text")], page_size, 1)  # type: ignore[list-item]
    with pytest.raises(InvalidParameter, match="epoch"):
        build_tree([], page_size, 0)
    with pytest.raises(InvalidParameter, match="page size"):
        build_tree([], 1000, 1)


def test_build_converts_bytes_like_input() -> None:
    store = MemoryNodeStore(4096)
    items = [(bytearray(b"a"), memoryview(b"1")), (b"b", bytearray(b"2"))]
    root = build_tree(items, 4096, 1)  # type: ignore[arg-type]
    check_built(store, root, {b"a": b"1", b"b": b"2"}, 1)
    assert root is not None and all(type(k) is bytes for k in root.keys + root.values)


def test_mutation_continues_a_built_tree_in_place() -> None:
    rng = random.Random(7)
    page_size = 4096
    store = MemoryNodeStore(page_size)
    model = {
        rng.randbytes(rng.randint(1, 12)): rng.randbytes(rng.randint(0, 300)) for _ in range(3000)
    }
    root = build_tree(sorted(model.items()), page_size, 5)
    freed: list[int] = []
    mutation = Mutation(store, root, 5, freed)
    keys = list(model)
    for _ in range(3000):
        if rng.random() < 0.5:
            key = rng.choice(keys)
            assert mutation.delete(key) == (key in model)
            model.pop(key, None)
        else:
            key = rng.randbytes(rng.randint(1, 12))
            value = rng.randbytes(rng.randint(0, 1500))
            mutation.put(key, value)
            model[key] = value
            keys.append(key)
    check_tree(store, mutation.root, model)
    assert freed == []  # the same epoch owns every node: nothing was copied
    # The next epoch copies as usual, and the checkpointer writes everything.
    written = store.checkpoint(mutation.root)
    assert written == sum(1 for _ in iter_nodes(store, mutation.root))
    later = Mutation(store, mutation.root, 6, freed)
    later.put(b"zz", b"after")
    model[b"zz"] = b"after"
    check_tree(store, later.root, model)
    assert freed


def test_dirty_nodes_postorder_lists_every_built_node() -> None:
    model = uniform_model(20_000, 60)
    store = MemoryNodeStore(4096)
    root = build_tree(model.items(), 4096, 1)
    assert root is not None
    nodes = list(iter_nodes(store, root))
    dirty = dirty_nodes_postorder(root)
    assert {id(node) for node, _, _ in dirty} == {id(node) for node in nodes}
    assert len(dirty) == len(nodes)
    assert dirty[-1] == (root, None, -1)
    assert store.checkpoint(root) == len(nodes)
    check_tree(store, root, model)
    # Read back from the pages alone.
    assert root.pgno is not None
    check_tree(store, store.load(node_ref(root)), model)


# --- merge_sorted -------------------------------------------------------------------------


def snapshot(root: Node | None) -> list[tuple[Node, list[bytes], list[bytes], list[Node | int]]]:
    """Every in-memory node of a tree with copies of its lists, to prove it is untouched."""
    out: list[tuple[Node, list[bytes], list[bytes], list[Node | int]]] = []
    stack = [] if root is None else [root]
    while stack:
        node = stack.pop()
        out.append((node, node.keys.copy(), node.values.copy(), node.children.copy()))
        stack.extend(c for c in node.children if type(c) is Node)
    return out


def old_tree(
    store: MemoryNodeStore, model: dict[bytes, bytes], dirty: dict[bytes, bytes], how: str
) -> Node | None:
    """A tree holding `model` then `dirty`: written to `store`, then changed by a mutation so
    that it mixes written nodes with unwritten ones (of epoch 2)."""
    if how == "build":
        root = build_tree(sorted(model.items()), store.page_size, 1)
    else:
        mutation = Mutation(store, None, 1, [])
        for key, value in model.items():
            mutation.put(key, value)
        root = mutation.root
    store.checkpoint(root)
    mutation = Mutation(store, root, 2, [])
    for key, value in dirty.items():
        mutation.put(key, value)
    return mutation.root


@SETTINGS
@given(
    data=st.data(),
    page_size=st.sampled_from([4096, 4096, 8192, 32768]),
    batch=st.sampled_from(BATCHES),
    how=st.sampled_from(["build", "mutation"]),
)
def test_merge_matches_model(data: st.DataObject, page_size: int, batch: int, how: str) -> None:
    model = data.draw(models(page_size), label="old")
    dirty = data.draw(models(page_size, max_entries=5), label="dirty")
    store = MemoryNodeStore(page_size)
    root = old_tree(store, model, dirty, how)
    model.update(dirty)
    old_model = dict(model)
    written = sorted(n.pgno for n in iter_nodes(store, root) if n.pgno is not None)
    before = snapshot(root)

    # Changes: overwrite or delete some old keys, add or delete-absent some new ones.
    old_keys = sorted(model)
    touched = data.draw(
        st.lists(st.sampled_from(old_keys), unique=True) if old_keys else st.just([])
    )
    fresh = data.draw(models(page_size, max_entries=100), label="fresh")
    changes: dict[bytes, bytes | None] = {}
    for key in touched:
        changes[key] = data.draw(st.sampled_from([None, b"", b"new" + key[-3:]]))
    for key, fresh_value in fresh.items():
        changes.setdefault(key, data.draw(st.sampled_from([None, fresh_value])))
    if data.draw(st.integers(0, 7), label="delete everything") == 0:
        changes = dict.fromkeys(model, None)

    freed = [-1]
    with batch_size(batch):
        new_root = merge_sorted(store, root, sorted(changes.items()), 9, freed)
    for key, value in changes.items():
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value
    check_built(store, new_root, model, 9)
    event(f"old depth {verify_tree(store, root).depth}, new {verify_tree(store, new_root).depth}")
    if not model:
        assert new_root is None
    assert freed[0] == -1 and sorted(freed[1:]) == written
    # The old tree is untouched: same nodes, same lists, same contents.
    assert snapshot(root) == before
    check_tree(store, root, old_model)
    new_lists = {id(lst) for n in iter_nodes(store, new_root) for lst in (n.keys, n.values)}
    old_lists = {id(lst) for n, *_ in before for lst in (n.keys, n.values)}
    assert not new_lists & old_lists


@pytest.mark.parametrize("density", [0.001, 0.1, 0.5, 2.0])
def test_merge_sparse_and_dense_changes(density: float) -> None:
    """Both merge strategies (splicing few changes, dict-merging many) over many batches."""
    rng = random.Random(int(density * 1000))
    page_size = 4096
    model = {rng.randbytes(8): rng.randbytes(rng.randint(0, 200)) for _ in range(20_000)}
    store = MemoryNodeStore(page_size)
    root = build_tree(sorted(model.items()), page_size, 1)
    store.checkpoint(root)
    written = sorted(n.pgno for n in iter_nodes(store, root) if n.pgno is not None)
    keys = list(model)
    changes: dict[bytes, bytes | None] = {}
    for _ in range(int(len(model) * density)):
        roll = rng.random()
        if roll < 0.3:
            changes[rng.choice(keys)] = None
        elif roll < 0.5:
            changes[rng.choice(keys)] = rng.randbytes(rng.randint(0, 200))
        elif roll < 0.6:
            changes[rng.randbytes(8)] = None
        else:
            changes[rng.randbytes(8)] = rng.randbytes(rng.randint(0, 200))
    old_model = dict(model)
    freed: list[int] = []
    with batch_size(1000):
        new_root = merge_sorted(store, root, sorted(changes.items()), 2, freed)
    for key, value in changes.items():
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value
    check_built(store, new_root, model, 2)
    assert sorted(freed) == written
    check_tree(store, root, old_model)


def test_merge_edge_cases() -> None:
    store = MemoryNodeStore(4096)
    freed: list[int] = []
    assert merge_sorted(store, None, [], 1, freed) is None
    assert merge_sorted(store, None, [(b"a", None)], 1, freed) is None
    root = merge_sorted(store, None, [(b"a", b"1"), (b"b", None), (b"c", b"3")], 1, freed)
    check_built(store, root, {b"a": b"1", b"c": b"3"}, 1)
    assert freed == []
    # No changes: a fresh copy of the same contents, the old pages freed.
    store.checkpoint(root)
    assert root is not None and root.pgno is not None
    copy = merge_sorted(store, root, [], 2, freed)
    check_built(store, copy, {b"a": b"1", b"c": b"3"}, 2)
    assert freed == [root.pgno]


def test_merge_rejects_bad_changes_before_freeing_anything() -> None:
    page_size = 4096
    store = MemoryNodeStore(page_size)
    root = build_tree([(b"a", b"1"), (b"b", b"2")], page_size, 1)
    store.checkpoint(root)
    big = b"v" * max_entry_size(page_size)
    for changes in (
        [(b"b", b"x"), (b"a", None)],
        [(b"a", None), (b"a", b"x")],
        [(b"a", None), (b"c", big)],
        [(b"k" * (MAX_KEY_SIZE + 1), b"")],
        [(b"a", 5)],
    ):
        freed: list[int] = []
        with pytest.raises(InvalidParameter):
            merge_sorted(store, root, changes, 2, freed)  # type: ignore[arg-type]
        assert freed == []
    # An over-long key is no reason to refuse a delete: it is simply absent.
    freed = []
    new_root = merge_sorted(store, root, [(b"k" * (MAX_KEY_SIZE + 1), None)], 2, freed)
    check_built(store, new_root, {b"a": b"1", b"b": b"2"}, 2)


@pytest.mark.parametrize("gap_min", [1, 3, btree._GAP_MIN])
@pytest.mark.parametrize("batch", [1, 7, DEFAULT_BATCH])
def test_merge_feeds_runs_between_old_leaves_as_they_are(gap_min: int, batch: int) -> None:
    """Changes before, between and after the old tree's leaves (runs of every length, puts
    and deletes of absent keys) next to changes that interleave with old entries."""
    rng = random.Random(gap_min * 1000 + batch)
    page_size = 4096
    # Old keys are even numbers in a few clusters; changes fill clusters of odd ones.
    model = {
        (2 * i).to_bytes(4, "big"): rng.randbytes(rng.randint(0, 120))
        for base in (1000, 5000, 9000)
        for i in range(base, base + 400)
    }
    store = MemoryNodeStore(page_size)
    root = build_tree(sorted(model.items()), page_size, 1)
    store.checkpoint(root)
    written = sorted(n.pgno for n in iter_nodes(store, root) if n.pgno is not None)
    changes: dict[bytes, bytes | None] = {}
    for lo, hi in ((0, 1500), (2790, 3000), (4000, 8000), (18000, 20000), (19000, 30000)):
        for k in range(lo, hi, rng.choice([1, 3, 17])):
            changes[k.to_bytes(4, "big")] = None if rng.random() < 0.1 else rng.randbytes(9)
    old_model = dict(model)
    freed: list[int] = []
    keys = sorted(changes)
    values = [changes[k] for k in keys]
    with batch_size(batch), mock.patch.object(btree, "_GAP_MIN", gap_min):
        new_root = btree.merge_sorted_columns(store, root, keys, values, 2, freed)
    assert keys == sorted(changes) and values == [changes[k] for k in keys]  # untouched
    for key, value in changes.items():
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value
    check_built(store, new_root, model, 2)
    assert sorted(freed) == written
    check_tree(store, root, old_model)


def test_merge_into_an_empty_tree_needs_no_old_entries() -> None:
    store = MemoryNodeStore(4096)
    keys = [i.to_bytes(4, "big") for i in range(5000)]
    values: list[bytes | None] = [None if i % 7 == 0 else b"v" * (i % 50) for i in range(5000)]
    freed: list[int] = []
    root = btree.merge_sorted_columns(store, None, keys, values, 3, freed)
    model = {k: v for k, v in zip(keys, values, strict=True) if v is not None}
    check_built(store, root, model, 3)
    assert freed == []
    big = b"v" * max_entry_size(4096)
    with pytest.raises(InvalidParameter):
        btree.merge_sorted_columns(store, root, [b"a"], [big], 4, freed)
    assert freed == []


@pytest.mark.parametrize("batch", [1, 7, DEFAULT_BATCH])
@pytest.mark.parametrize("old", [False, True])
def test_merge_with_images_gives_every_new_leaf_its_exact_payload(batch: int, old: bool) -> None:
    """`images` (log replay): every new leaf carries the payload `encode_node` would make, so
    the pages written from the images are byte for byte the pages encoded from the entries;
    branches carry none; the tree is the same as without images."""
    rng = random.Random(batch * 2 + old)
    page_size = 4096
    model = {
        rng.randbytes(rng.randint(1, 40)): rng.randbytes(rng.randint(0, 300)) for _ in range(300)
    }
    store = MemoryNodeStore(page_size)
    root = build_tree(sorted(model.items()), page_size, 1) if old else None
    if root is not None:
        store.checkpoint(root)
    deleted = rng.sample(sorted(model), 50)
    if not old:
        model = {}
    changes: dict[bytes, bytes | None] = {
        rng.randbytes(rng.randint(1, 40)): rng.randbytes(rng.randint(0, 300)) for _ in range(3000)
    }
    for key in deleted:
        changes[key] = None
    keys = sorted(changes)
    values = [changes[k] for k in keys]
    with batch_size(batch):
        plain = btree.merge_sorted_columns(store, root, keys, values, 2, [])
        imaged = btree.merge_sorted_columns(store, root, keys, values, 3, [], images=True)
    for key, value in changes.items():
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value
    check_built(store, imaged, model, 3)
    pairs = list(zip(dirty_nodes_postorder(plain), dirty_nodes_postorder(imaged), strict=True))
    assert pairs
    for pgno, ((a, _, _), (b, _, _)) in enumerate(pairs, start=2):
        assert a.image is None and b.keys == a.keys and b.values == a.values
        if not b.leaf:
            assert b.image is None
            continue
        assert b.image is not None and len(b.image) == b.nbytes
        page = btree.encode_node(b, page_size, pgno, 5)
        b.image = None
        assert page == btree.encode_node(b, page_size, pgno, 5)
        assert page == btree.encode_node(a, page_size, pgno, 5)

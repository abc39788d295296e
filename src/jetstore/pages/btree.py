"""The persistent (copy-on-write) B+tree over bytes keys and values (design decision D2).

This module owns the tree algorithms and the node page format; it does no I/O. Pages are read
through a `NodeStore` (the page file's node cache in the engine, `MemoryNodeStore` in tests) and
written by the checkpointer, which uses `dirty_nodes_postorder`, `encode_node` and `swizzle`.

Nodes
-----
A `Node` is a plain Python object. A leaf holds sorted `keys` and their `values`; a branch holds
`keys` and `children` with ``len(children) == len(keys) + 1``; every key of ``children[i]`` is
``< keys[i]`` and every key of ``children[i + 1]`` is ``>= keys[i]`` (lookups choose
``children[bisect_right(keys, key)]``). Separators are the shortest prefix of the right
subtree's smallest key that is still greater than the left subtree's largest key, so branches
stay dense whatever the key length. A child is either a `Node` or the int *child reference* of
a node that lives on disk and is loaded through the store: ``pgno | page_crc << 32``, the page
number and the CRC32C the page was written with (`child_ref`, `ref_pgno`, `ref_crc`).

Invariants and why
------------------
- Published nodes are immutable: readers (`lookup`, `iterate`) walk a root without locks and see
  exactly the tree that root was published with, forever. A `Mutation` with epoch E changes in
  place only the nodes it created (``owner == E`` and not yet written); every other node on the
  way is copied first (path copying), and when the copy replaces a written node that node's page
  number goes to `freed` (once), for the engine to reuse when no durable header and no reader
  can reach it any more (D4). A copied branch shares its key list with the node it copies
  (`shared_keys`) until the mutation changes a separator: it then takes a private copy first,
  so a published node's lists are never changed in place either.
- The only writes allowed on a published node are semantically neutral ones: by the
  checkpointer, setting `pgno` of a dirty node, and `swizzle` (a child `Node` replaced by the
  page number it was written to: a single list-item store, atomic under the GIL); by
  `lookup`, setting `index` of a written leaf (``pgno`` set, so it never changes again) to a
  dict of its entries, for point reads by one hash probe (two racing readers build equal
  dicts; the attribute store is atomic); by the node cache, its CLOCK bit `referenced` (set
  on a hit, cleared by eviction: a lost update only changes which page is evicted). A leaf's
  `index` costs about as much memory as its
  key and value lists; it lives and goes with the node (the cache evicts both). The
  checkpointer also drops a leaf's `image` once it wrote it.
- A leaf's `image`, when set, is exactly its page payload (what `encode_node` would encode):
  only a bulk build with `images` sets it (log replay), for an epoch no mutation uses, so
  the node is never changed in place while it has one.
- A written node never points to a dirty one (the checkpointer writes children first), so the
  dirty nodes of a tree form a subtree at its root.
- Every node fits one page when encoded: ``nbytes <= payload_capacity(page_size)``, where
  `nbytes` is the node's encoded payload size, maintained incrementally. Each leaf entry
  (``LEAF_ENTRY_OVERHEAD`` + key + value) is at most `max_entry_size(page_size)`, so any two
  entries share a page and a split at the byte midpoint always yields two fitting halves (a
  leaf in an ascending sequence splits at the sequence's end instead, `_run_split_point`, only
  when both sides fit and keep `min_fill`); keys are at most `MAX_KEY_SIZE` bytes, so a
  branch always holds at least three separators.
- A parent names the exact image of each child it was written with (design D12, lost writes):
  every child reference carries the child page's CRC32C, and every load through a reference
  compares it with the page read (`ReadLostFlushVerifyFailure` when a valid but different,
  i.e. older, image of the page is found). A node written by a checkpoint keeps its page's
  CRC in `page_crc` (set by the checkpointer after encoding it, before its parent is encoded:
  semantically neutral, like `pgno`); a node decoded from a page carries that page's CRC.
  Page numbers therefore fit 32 bits (`MAX_PGNO`).
- All leaves are at the same depth. A non-root node is never empty; a node that shrinks below
  `min_fill(page_size)` merges with a sibling, or takes entries from it when both do not fit
  one page; a branch root left with one child is replaced by that child; an empty tree is the
  root None.

Bulk building
-------------
`build_tree` packs sorted entries bottom-up into nearly full leaves and then branch levels;
`merge_sorted` (and `merge_sorted_columns`, the same with the changes as a key list and a value
list) streams an old tree's entries merged with sorted changes into it (a new tree: the old
one stays readable, its written pages go to `freed`). Runs of changes that fall between old
leaves (all of them for an empty tree, or for keys past the old ones) go to the new leaves as
they are; only changes among old entries are merged entry by entry. Both do their per-entry
work in C-level passes over lists (sizes, cumulative sizes, bisection for the leaf
boundaries), a batch of entries at a time so that the batch stays in the CPU caches from
one pass to the next, which is what log replay and large transactions need; their trees
keep all the invariants above. Log replay also has each new leaf's page payload made in the
same batch (`images`), for the checkpoint that follows.

Readers get entries one at a time (`iterate`) or a leaf at a time (`iterate_chunks`: fresh
lists, so a caller can process a leaf with C-level passes).

Node page payloads (inside the page envelope of `jetstore.format.page`; the header's entry
count is the number of keys; all integers little-endian). The lengths come first so a decoder
reads all of them with one `struct` call:

```
leaf (page type 2), n entries:
  n x (key length u16, value length u32)
  key 0, value 0, key 1, value 1, ... (bytes, in key order)
branch (page type 1), n keys, n + 1 children:
  (n + 1) x child reference u64: child pgno (low 32 bits) | child page CRC32C << 32
  n x key length u16
  key 0, key 1, ... (bytes)
```
"""

from __future__ import annotations

import functools
import struct
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import accumulate, compress, islice, pairwise, repeat
from operator import add, is_, is_not, itemgetter, lt
from typing import Final, NoReturn, Protocol, final

from jetstore.errors import (
    DatabaseCorrupted,
    InvalidParameter,
    JetError,
    PageNotInitialized,
    ReadLostFlushVerifyFailure,
    page_damage_hint,
)
from jetstore.format.page import PAGE_HEADER_SIZE, PageType, encode_page, payload_capacity
from jetstore.format.page import verify_page as _verify_page

__all__ = [
    "BRANCH_ENTRY_OVERHEAD",
    "LEAF_ENTRY_OVERHEAD",
    "MAX_KEY_SIZE",
    "MAX_PGNO",
    "MemoryNodeStore",
    "Mutation",
    "Node",
    "NodeStore",
    "TreeStats",
    "build_tree",
    "check_page_crc",
    "child_ref",
    "count_dirty_nodes",
    "count_entries",
    "decode_node",
    "dirty_nodes_postorder",
    "encode_node",
    "iter_nodes",
    "iterate",
    "iterate_chunks",
    "leaf_get",
    "lookup",
    "max_entry_size",
    "merge_sorted",
    "merge_sorted_columns",
    "min_fill",
    "node_ref",
    "oversized_entry",
    "page_crc_of",
    "paired_entry_size",
    "ref_crc",
    "ref_pgno",
    "swizzle",
    "verify_tree",
]

MAX_KEY_SIZE: Final = 1024
#: Encoded bytes per leaf entry besides the key and value: key length u16, value length u32.
LEAF_ENTRY_OVERHEAD: Final = 6
#: Encoded bytes per branch separator besides the key: key length u16 and one more child u64.
BRANCH_ENTRY_OVERHEAD: Final = 10
#: Encoded bytes of a branch without separators (its first child).
_BRANCH_BASE: Final = 8
#: Page numbers are the low 32 bits of a child reference; the page's CRC32C the high 32.
MAX_PGNO: Final = (1 << 32) - 1
_CRC_SHIFT: Final = 32
_PAGE_CRC: Final = struct.Struct("<I")


def child_ref(pgno: int, page_crc: int) -> int:
    """The reference a parent keeps to the page `pgno` written with checksum `page_crc`."""
    return pgno | (page_crc << _CRC_SHIFT)


def ref_pgno(ref: int) -> int:
    """The page number a child reference names."""
    return ref & MAX_PGNO


def ref_crc(ref: int) -> int:
    """The page CRC32C a child reference expects."""
    return ref >> _CRC_SHIFT


def page_crc_of(data: bytes | bytearray | memoryview) -> int:
    """The CRC32C stored in a page image (its first 4 bytes)."""
    return int(_PAGE_CRC.unpack_from(data)[0])


def check_page_crc(
    pgno: int,
    data: bytes | bytearray | memoryview,
    expected_crc: int,
    *,
    path: str = "",
    referrer: str = "its parent",
) -> None:
    """ReadLostFlushVerifyFailure unless the page image `data` is the one `expected_crc` names.

    Call it on a page that already verified (its own checksum and page number): a valid page
    with another checksum than its referrer recorded is an older (or newer) image of the page
    than the one the tree was written with, i.e. a write the disk acknowledged but lost.
    """
    found = page_crc_of(data)
    if found != expected_crc:
        where = f"page {pgno} of {path!r}" if path else f"page {pgno}"
        raise ReadLostFlushVerifyFailure(
            f"{where} is a valid page but not the image {referrer} was written with "
            f"(checksum {found:#010x}, expected {expected_crc:#010x}): a write of this page "
            "was lost or the page was overwritten with an older copy",
            hint=page_damage_hint(path or None, "The storage lost a write. "),
            path=path or None,
        )


def max_entry_size(page_size: int) -> int:
    """Largest encoded leaf entry (``LEAF_ENTRY_OVERHEAD + len(key) + len(value)``)."""
    return payload_capacity(page_size) // 2


def paired_entry_size(page_size: int) -> int:
    """Largest leaf entry two of which fill a leaf built in bulk to its target and no more.

    For entries that come in long runs of one size (long-value chunks): with entries of up to
    `max_entry_size` (half a page), a bulk-built leaf (filled to 90 %) holds only one of them.
    """
    return _bulk_target(payload_capacity(page_size)) // 2


def min_fill(page_size: int) -> int:
    """A non-root node whose payload falls below this many bytes is rebalanced."""
    return payload_capacity(page_size) // 4


@final
class Node:
    """One B+tree node; see the module docstring for the invariants.

    For a leaf `children` is empty; for a branch `values` is empty.
    """

    __slots__ = (
        "children",
        "image",
        "index",
        "indexed_in",
        "keys",
        "last_put",
        "leaf",
        "nbytes",
        "owner",
        "page_crc",
        "pgno",
        "referenced",
        "shared_keys",
        "values",
    )

    leaf: bool
    keys: list[bytes]
    values: list[bytes]
    children: list[Node | int]
    pgno: int | None
    owner: int
    nbytes: int
    #: A written leaf's entries as a dict, built by the first `lookup` that reaches it.
    index: dict[bytes, bytes] | None
    #: The generation of its database's point-read index that holds this leaf's entries
    #: (`jetstore.pages.pointindex`), or -1: such a leaf gets no `index` of its own.
    indexed_in: int
    #: The CRC32C of the page the node was written to (None until a checkpoint encodes it).
    page_crc: int | None
    #: A branch copied by a mutation shares its `keys` list with the node it copies until it
    #: changes them (`Mutation._private_keys`).
    shared_keys: bool
    #: The node cache's CLOCK bit: set by a cache hit, cleared by the eviction sweep.
    referenced: bool
    #: A bulk-built leaf's page payload, made while its entries were in the CPU caches, for
    #: the checkpoint that writes it (`encode_node` uses it, the checkpointer drops it).
    image: bytes | None
    #: The key a mutation put into this leaf last (kept by its copies and by the side of a
    #: split that holds it; None for a leaf read or built in bulk): a put landing right after
    #: it continues an ascending sequence, and the leaf then splits at the sequence's end
    #: (`_run_split_point`). Only a hint: a stale one costs fill, never correctness.
    last_put: bytes | None

    def __init__(
        self,
        leaf: bool,
        keys: list[bytes],
        values: list[bytes],
        children: list[Node | int],
        pgno: int | None,
        owner: int,
        nbytes: int,
    ) -> None:
        self.leaf = leaf
        self.keys = keys
        self.values = values
        self.children = children
        self.pgno = pgno
        self.owner = owner
        self.nbytes = nbytes
        self.index = None
        self.indexed_in = -1
        self.page_crc = None
        self.shared_keys = False
        self.referenced = False
        self.image = None
        self.last_put = None

    @classmethod
    def new_leaf(
        cls, keys: list[bytes], values: list[bytes], *, owner: int = 0, pgno: int | None = None
    ) -> Node:
        """A leaf with `nbytes` computed from its entries."""
        nbytes = LEAF_ENTRY_OVERHEAD * len(keys) + sum(map(len, keys)) + sum(map(len, values))
        return cls(True, keys, values, [], pgno, owner, nbytes)

    @classmethod
    def new_branch(
        cls,
        keys: list[bytes],
        children: list[Node | int],
        *,
        owner: int = 0,
        pgno: int | None = None,
    ) -> Node:
        """A branch with `nbytes` computed from its separators."""
        return cls(False, keys, [], children, pgno, owner, _branch_size(keys))

    def __repr__(self) -> str:
        kind = "leaf" if self.leaf else "branch"
        return (
            f"<Node {kind} keys={len(self.keys)} nbytes={self.nbytes} pgno={self.pgno} "
            f"owner={self.owner}>"
        )


def _branch_size(keys: list[bytes]) -> int:
    return _BRANCH_BASE + BRANCH_ENTRY_OVERHEAD * len(keys) + sum(map(len, keys))


class NodeStore(Protocol):
    """Where a tree's on-disk nodes come from (the engine's node cache, or a test store)."""

    page_size: int

    def load(self, ref: int) -> Node:
        """The node a child reference (`child_ref`) names, with `pgno` set and `owner` 0.

        The page read must be the exact image the reference names (`check_page_crc`). The
        same object may be returned to many callers: it must never be changed.
        """
        ...


def node_ref(node: Node) -> int:
    """The child reference to a written node (InvalidParameter if it was never written)."""
    pgno, crc = node.pgno, node.page_crc
    if pgno is None or crc is None:
        raise InvalidParameter(
            f"{node!r} has no page image yet: write children before their parent"
        )
    return pgno | (crc << _CRC_SHIFT)


# --- node page codec ---------------------------------------------------------------------

_LEAF_DIRS: dict[int, struct.Struct] = {}
_BRANCH_DIRS: dict[int, struct.Struct] = {}
_NO_CHILDREN_MSG: Final = "a branch page with no separator"


def _leaf_dir(n: int) -> struct.Struct:
    s = _LEAF_DIRS.get(n)
    if s is None:
        s = _LEAF_DIRS[n] = struct.Struct("<" + "HI" * n)
    return s


def _branch_dir(n: int) -> struct.Struct:
    s = _BRANCH_DIRS.get(n)
    if s is None:
        s = _BRANCH_DIRS[n] = struct.Struct(f"<{n + 1}Q{n}H")
    return s


def _leaf_payload(keys: list[bytes], values: list[bytes]) -> bytes:
    """A leaf's page payload (struct.error if an entry's lengths do not fit the directory)."""
    n = len(keys)
    # body[0] becomes the directory: the payload is then joined in one copy.
    body: list[bytes] = [b""] * (2 * n + 1)
    body[1::2] = keys
    body[2::2] = values
    body[0] = _leaf_dir(n).pack(*map(len, islice(body, 1, None)))
    return b"".join(body)


def encode_node(node: Node, page_size: int, pgno: int, checkpoint_seq: int) -> bytes:
    """The page image of `node` written at `pgno` (the node itself is not changed).

    Every child of a branch must be a page number or a node with `pgno` set.
    """
    keys = node.keys
    n = len(keys)
    if node.leaf:
        values = node.values
        if len(values) != n:
            raise InvalidParameter(f"leaf for page {pgno} has {n} keys but {len(values)} values")
        payload = node.image
        # The image's length is the node's exact `nbytes`: a cheap guard against a stale one.
        if payload is None or len(payload) != node.nbytes:
            try:
                payload = _leaf_payload(keys, values)
            except struct.error:
                raise InvalidParameter(
                    f"an entry of the leaf for page {pgno} is too long"
                ) from None
        page_type = PageType.LEAF
    else:
        children = node.children
        if len(children) != n + 1:
            raise InvalidParameter(
                f"branch for page {pgno} has {n} keys but {len(children)} children"
            )
        if n == 0:
            raise InvalidParameter(f"{_NO_CHILDREN_MSG} cannot be written (page {pgno})")
        refs = [node_ref(c) if type(c) is Node else c for c in children]
        try:
            directory = _branch_dir(n).pack(*refs, *map(len, keys))
        except struct.error:
            raise InvalidParameter(f"a key of the branch for page {pgno} is too long") from None
        payload = directory + b"".join(keys)
        page_type = PageType.BRANCH
    return encode_page(pgno, page_type, n, payload, page_size, checkpoint_seq)


def decode_node(
    pgno: int,
    data: bytes | bytearray | memoryview,
    *,
    path: str = "",
    page_size: int | None = None,
    expected_crc: int | None = None,
) -> Node:
    """The node stored in page `pgno` (verified), with `pgno` and `page_crc` set, `owner` 0.

    Any malformed page raises a `JetError` naming the page (`DatabaseCorrupted` for a bad
    payload, the page-envelope errors of `jetstore.format.page` for a bad page). With
    `expected_crc` (the reference's, `ref_crc`), a valid page holding another image than the
    one its parent was written with is `ReadLostFlushVerifyFailure`.
    """
    page, page_type, n, _seq, plen = _verify_page(pgno, data, path=path, page_size=page_size)
    if expected_crc is not None:
        check_page_crc(pgno, page, expected_crc, path=path)
    try:
        if page_type == PageType.LEAF:
            node = _decode_leaf(pgno, page, n, plen, path)
        elif page_type == PageType.BRANCH:
            node = _decode_branch(pgno, page, n, plen, path)
        else:
            raise _corrupt(pgno, path, f"is a {page_type.name} page, not a B+tree node")
    except JetError:
        raise
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise _corrupt(pgno, path, f"malformed node payload ({exc})") from None
    node.page_crc = page_crc_of(page)
    return node


def _corrupt(pgno: int, path: str, what: str) -> DatabaseCorrupted:
    where = f"page {pgno} of {path!r}" if path else f"page {pgno}"
    return DatabaseCorrupted(f"{where}: {what}", path=path or None)


def _decode_leaf(pgno: int, page: bytes, n: int, plen: int, path: str) -> Node:
    start = PAGE_HEADER_SIZE + 6 * n
    end = PAGE_HEADER_SIZE + plen
    if start > end:
        raise _corrupt(pgno, path, f"leaf directory of {n} entries exceeds the payload")
    if n == 0:
        if plen:
            raise _corrupt(pgno, path, "empty leaf with a non-empty payload")
        return Node(True, [], [], [], pgno, 0, 0)
    lens = _leaf_dir(n).unpack_from(page, PAGE_HEADER_SIZE)
    if sum(lens) != end - start:
        raise _corrupt(pgno, path, "leaf entry lengths do not add up to the payload length")
    if max(lens[0::2]) > MAX_KEY_SIZE:
        raise _corrupt(pgno, path, f"leaf key longer than {MAX_KEY_SIZE} bytes")
    # One struct call slices every key and value in C: decoding speed bounds cold reads. A
    # one-off Struct (not struct.unpack_from's format cache) keeps other modules' cached
    # formats from being evicted by these never-repeating ones.
    if lens[0::2].count(lens[0]) == n and lens[1::2].count(lens[1]) == n:
        # Fixed-size entries (common for index and catalog keys): no per-field formatting.
        layout = "<" + f"{lens[0]}s{lens[1]}s" * n
    else:
        layout = "<" + "%ds" * (2 * n) % lens
    fields = struct.Struct(layout).unpack_from(page, start)
    keys = list(fields[0::2])
    values = list(fields[1::2])
    return Node(True, keys, values, [], pgno, 0, plen)


def _decode_branch(pgno: int, page: bytes, n: int, plen: int, path: str) -> Node:
    if n == 0:
        raise _corrupt(pgno, path, _NO_CHILDREN_MSG)
    start = PAGE_HEADER_SIZE + 10 * n + 8
    end = PAGE_HEADER_SIZE + plen
    if start > end:
        raise _corrupt(pgno, path, f"branch directory of {n} keys exceeds the payload")
    fields = _branch_dir(n).unpack_from(page, PAGE_HEADER_SIZE)
    children: list[Node | int] = list(fields[: n + 1])
    klens = fields[n + 1 :]
    if sum(klens) != end - start:
        raise _corrupt(pgno, path, "branch key lengths do not add up to the payload length")
    if max(klens) > MAX_KEY_SIZE:
        raise _corrupt(pgno, path, f"branch key longer than {MAX_KEY_SIZE} bytes")
    if pgno in [ref & MAX_PGNO for ref in fields[: n + 1]]:
        raise _corrupt(pgno, path, "branch page names itself as a child")
    keys = list(struct.Struct("<" + "%ds" * n % klens).unpack_from(page, start))
    return Node(False, keys, [], children, pgno, 0, plen)


# --- readers (any published root, no locks) ----------------------------------------------


def lookup(store: NodeStore, root: Node | None, key: bytes) -> bytes | None:
    """The value stored under `key` in the tree at `root`, or None."""
    node = root
    if node is None:
        return None
    while not node.leaf:
        child = node.children[bisect_right(node.keys, key)]
        node = child if type(child) is Node else store.load(child)
    return leaf_get(node, key)


def leaf_get(leaf: Node, key: bytes) -> bytes | None:
    """The value under `key` in `leaf`, or None (the last step of every point read)."""
    index = leaf.index
    if index is not None:
        return index.get(key)
    if leaf.pgno is not None:
        # A written leaf never changes: one hash probe finds a key where a bisection would
        # compare it with several keys scattered in memory.
        index = leaf.index = dict(zip(leaf.keys, leaf.values, strict=True))
        return index.get(key)
    return leaf_search(leaf, key)


def leaf_search(leaf: Node, key: bytes) -> bytes | None:
    """The value under `key` in `leaf`, or None, by bisection (no `index` built)."""
    keys = leaf.keys
    i = bisect_left(keys, key)
    if i != len(keys) and keys[i] == key:
        return leaf.values[i]
    return None


def iterate(
    store: NodeStore,
    root: Node | None,
    start: bytes | None = None,
    stop: bytes | None = None,
    reverse: bool = False,
) -> Iterator[tuple[bytes, bytes]]:
    """Lazily yield (key, value) for ``start <= key < stop`` in key order (or reversed).

    None bounds are unbounded. The generator only reads immutable nodes, so it keeps yielding
    the tree of `root` while other threads publish new roots or checkpoint.
    """
    for keys, values in iterate_chunks(store, root, start, stop, reverse):
        yield from zip(keys, values, strict=True)


def iterate_chunks(
    store: NodeStore,
    root: Node | None,
    start: bytes | None = None,
    stop: bytes | None = None,
    reverse: bool = False,
) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """What `iterate` yields, a leaf at a time: (keys, values), two new non-empty lists.

    Lets a caller process a leaf's entries with C-level passes (a scan decodes a leaf of
    records at once) instead of one generator step per entry.
    """
    if root is None or (start is not None and stop is not None and start >= stop):
        return
    if reverse:
        yield from _iterate_reverse(store, root, start, stop)
    else:
        yield from _iterate_forward(store, root, start, stop)


def _iterate_forward(
    store: NodeStore, root: Node, start: bytes | None, stop: bytes | None
) -> Iterator[tuple[list[bytes], list[bytes]]]:
    stack: list[tuple[Node, int]] = []
    node = root
    while not node.leaf:
        i = 0 if start is None else bisect_right(node.keys, start)
        stack.append((node, i))
        child = node.children[i]
        node = child if type(child) is Node else store.load(child)
    lo = 0 if start is None else bisect_left(node.keys, start)
    while True:
        keys = node.keys
        if stop is None or not keys or keys[-1] < stop:
            hi = len(keys)
            done = False
        else:
            hi = bisect_left(keys, stop)
            done = True
        if lo < hi:
            yield keys[lo:hi], node.values[lo:hi]
        if done:
            return
        lo = 0
        # Climb to the nearest ancestor with a child to the right, then take its leftmost leaf.
        while stack:
            parent, i = stack.pop()
            if i + 1 < len(parent.children):
                i += 1
                break
        else:
            return
        while True:
            stack.append((parent, i))
            child = parent.children[i]
            node = child if type(child) is Node else store.load(child)
            if node.leaf:
                break
            parent, i = node, 0


def _iterate_reverse(
    store: NodeStore, root: Node, start: bytes | None, stop: bytes | None
) -> Iterator[tuple[list[bytes], list[bytes]]]:
    stack: list[tuple[Node, int]] = []
    node = root
    while not node.leaf:
        # keys[i] <= every key of children[i + 1], so children past bisect_left(keys, stop)
        # hold only keys >= stop.
        i = len(node.keys) if stop is None else bisect_left(node.keys, stop)
        stack.append((node, i))
        child = node.children[i]
        node = child if type(child) is Node else store.load(child)
    hi = len(node.keys) if stop is None else bisect_left(node.keys, stop)
    while True:
        keys = node.keys
        if start is None or not keys or keys[0] >= start:
            lo = 0
            done = False
        else:
            lo = bisect_left(keys, start)
            done = True
        if lo < hi:
            chunk_keys, chunk_values = keys[lo:hi], node.values[lo:hi]
            chunk_keys.reverse()
            chunk_values.reverse()
            yield chunk_keys, chunk_values
        if done:
            return
        while stack:
            parent, i = stack.pop()
            if i > 0:
                i -= 1
                break
        else:
            return
        while True:
            stack.append((parent, i))
            child = parent.children[i]
            node = child if type(child) is Node else store.load(child)
            if node.leaf:
                break
            parent, i = node, len(node.children) - 1
        hi = len(node.keys)


def iter_nodes(store: NodeStore, root: Node | None) -> Iterator[Node]:
    """Every node of the tree at `root`, parents before children (on-disk ones are loaded)."""
    if root is None:
        return
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        yield node
        if not node.leaf:
            for child in reversed(node.children):
                stack.append(child if type(child) is Node else store.load(child))


def count_entries(store: NodeStore, root: Node | None) -> int:
    """The number of keys in the tree at `root` (walks every leaf)."""
    return sum(len(node.keys) for node in iter_nodes(store, root) if node.leaf)


# --- checkpointer helpers ----------------------------------------------------------------


def count_dirty_nodes(root: Node | None) -> int:
    """How many never-written nodes the tree at `root` has (what its checkpoint writes).

    Walks the dirty nodes only (written ones cannot reach a dirty node): use it where the
    tree was just built (a bulk merge), and `Mutation.dirtied` to follow changes.
    """
    count = 0
    stack = [] if root is None or root.pgno is not None else [root]
    pop, extend = stack.pop, stack.extend
    while stack:
        node = pop()
        count += 1
        if not node.leaf:
            extend([c for c in node.children if type(c) is Node and c.pgno is None])
    return count


def dirty_nodes_postorder(root: Node | None) -> list[tuple[Node, Node | None, int]]:
    """Every never-written node of the tree at `root`, children before parents.

    Each item is (node, parent, index of node in parent.children); the root comes last, with
    parent None and index -1. Written nodes are not descended into: they cannot reach a dirty
    node.
    """
    out: list[tuple[Node, Node | None, int]] = []
    if root is None or root.pgno is not None:
        return out
    # (node, parent, index, children already pushed). A branch is pushed back, marked, above
    # its dirty children (pushed right to left), so it is emitted after all of them, and
    # sibling leaves leave the stack left to right: ascending page numbers. One comprehension
    # per branch finds its dirty children (a freshly built tree has thousands of nodes).
    stack: list[tuple[Node, Node | None, int, bool]] = [(root, None, -1, False)]
    pop, push, extend, emit = stack.pop, stack.append, stack.extend, out.append
    while stack:
        node, parent, index, expanded = pop()
        if expanded or node.leaf:
            emit((node, parent, index))
            continue
        push((node, parent, index, True))
        children = node.children
        dirty = [
            (child, node, i, False)
            for i, child in enumerate(children)
            if type(child) is Node and child.pgno is None
        ]
        dirty.reverse()
        extend(dirty)
    return out


def swizzle(parent: Node, index: int, ref: int) -> None:
    """Replace the written child node ``parent.children[index]`` by its reference `ref`.

    Semantically neutral, so it is allowed on published nodes: readers then load the child
    through the store. The child must already be written to exactly that page image.
    """
    child = parent.children[index]
    current = node_ref(child) if type(child) is Node else child
    if current != ref:
        raise InvalidParameter(
            f"cannot swizzle child {index} to page {ref_pgno(ref)} (checksum "
            f"{ref_crc(ref):#010x}): it is stored at page {ref_pgno(current)} (checksum "
            f"{ref_crc(current):#010x})"
        )
    parent.children[index] = ref


# --- mutation ----------------------------------------------------------------------------


def _separator(lo: bytes, hi: bytes) -> bytes:
    """The shortest prefix of `hi` that is greater than `lo` (requires lo < hi)."""
    n = min(len(lo), len(hi))
    if lo[:n] == hi[:n]:
        common = n
    else:
        # Binary search on slice equality: log(n) C-level compares instead of a byte loop.
        a, b = 0, n - 1
        while a < b:
            mid = (a + b + 1) // 2
            if lo[:mid] == hi[:mid]:
                a = mid
            else:
                b = mid - 1
        common = a
    return hi[: common + 1]


def _leaf_split_point(keys: list[bytes], values: list[bytes], total: int) -> tuple[int, int]:
    """(m, size of keys[:m]): the boundary nearest the byte midpoint, both sides non-empty."""
    n = len(keys)
    prefix = list(accumulate(_entry_sizes(keys, values), initial=0))
    # prefix[m] is the size of the first m entries.
    j = bisect_left(prefix, (total + 1) // 2)
    best_m = -1
    best_cost = best_left = 0
    for m in (j - 1, j):
        if 1 <= m <= n - 1:
            left = prefix[m]
            cost = max(left, total - left)
            if best_m < 0 or cost < best_cost:
                best_m, best_cost, best_left = m, cost, left
    return best_m, best_left


def _run_split_point(
    keys: list[bytes], values: list[bytes], total: int, run: int, capacity: int, low: int
) -> tuple[int, int]:
    """(m, size of keys[:m]) for an overfull leaf whose entry `run` continues a run of
    ascending puts: the split just after that entry, or the nearest one below it whose right
    side keeps `low` bytes. The byte midpoint (`_leaf_split_point`) if neither side would fit.

    Why: a run split at the midpoint leaves every leaf behind it half full, and entries of
    nearly half a page (long-value chunks) one a leaf. Split at the run's end, the left leaf
    keeps what it holds and the run goes on in the right one: ascending puts fill leaves to
    between 75 % and 100 % (chunks two a leaf), and the keys after the run (if any) move
    right with it.
    """
    n = len(keys)
    m = min(run + 1, n - 1)
    right = sum(_entry_sizes(keys[m:], values[m:]))
    while right < low and m > 1:
        m -= 1
        right += LEAF_ENTRY_OVERHEAD + len(keys[m]) + len(values[m])
    left = total - right
    if low <= left <= capacity and low <= right <= capacity:
        return m, left
    return _leaf_split_point(keys, values, total)


def _branch_split_point(keys: list[bytes], total: int) -> tuple[int, int, int]:
    """(m, left size, right size) for pushing keys[m] up; both sides keep a separator."""
    n = len(keys)
    best = (-1, 0, 0)
    best_cost = -1
    before = 0  # encoded size of the separators left of m
    for m in range(n - 1):
        entry = BRANCH_ENTRY_OVERHEAD + len(keys[m])
        if m >= 1:
            left = _BRANCH_BASE + before
            right = total - before - entry
            cost = max(left, right)
            if best_cost < 0 or cost < best_cost:
                best, best_cost = (m, left, right), cost
            elif left > right:
                break  # past the midpoint: the cost only grows from here
        before += entry
    if best[0] < 0:
        raise AssertionError(f"cannot split a branch of {n} separators")
    return best


@functools.cache
def _limits(page_size: int) -> tuple[int, int, int]:
    # Cached: a commit creates one Mutation per database, and this keeps that cheap.
    return payload_capacity(page_size), max_entry_size(page_size), min_fill(page_size)


class Mutation:
    """One write batch over a tree: changes a private copy of the path, then `root` is published.

    `epoch` identifies the nodes this mutation creates (must be > 0 and unique per mutation);
    they are changed in place, everything else is copied first. Page numbers of written nodes
    that the new tree no longer uses are appended to `freed`, each once.

    `dirtied` is how many more dirty (never written) nodes the tree at `root` has than the tree
    the mutation started from: a written node copied, a split or a new root adds one; a dirty
    node that leaves the tree (merged away, a collapsed root) takes one off; a dirty node of
    another epoch replaced by its copy changes nothing. The engine adds it up per commit to
    know how many page bytes the next checkpoint has to write (the dirty nodes are held in
    memory until then, outside the node cache and its budget).
    """

    __slots__ = (
        "_capacity",
        "_epoch",
        "_freed",
        "_max_entry",
        "_min_fill",
        "_root",
        "_store",
        "dirtied",
    )

    def __init__(self, store: NodeStore, root: Node | None, epoch: int, freed: list[int]) -> None:
        if epoch <= 0:
            # Nodes loaded from disk have owner 0: epoch 0 would change them in place.
            raise InvalidParameter(f"mutation epoch must be positive, got {epoch}")
        self._store = store
        self._root = root
        self._epoch = epoch
        self._freed = freed
        self._capacity, self._max_entry, self._min_fill = _limits(store.page_size)
        self.dirtied = 0

    @property
    def root(self) -> Node | None:
        """The root of the tree with this mutation's changes (None: empty tree)."""
        return self._root

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def freed(self) -> list[int]:
        return self._freed

    def get(self, key: bytes) -> bytes | None:
        """The value under `key`, including this mutation's own changes."""
        return lookup(self._store, self._root, key)

    def put(self, key: bytes, value: bytes) -> None:
        """Insert or replace `key`."""
        if type(key) is not bytes or type(value) is not bytes:
            key, value = _as_bytes(key, "key"), _as_bytes(value, "value")
        size = LEAF_ENTRY_OVERHEAD + len(key) + len(value)
        if size > self._max_entry or len(key) > MAX_KEY_SIZE:
            self._reject(key, value)
        epoch = self._epoch
        node = self._root
        if node is None:
            self._root = Node(True, [key], [value], [], None, epoch, size)
            self.dirtied += 1
            return
        if node.owner != epoch or node.pgno is not None:
            node = self._root = self._copy(node)
        path: list[Node] = []
        indexes: list[int] = []
        while not node.leaf:
            i = bisect_right(node.keys, key)
            child = node.children[i]
            if type(child) is not Node:
                child = self._copy(self._store.load(child))
                node.children[i] = child
            elif child.owner != epoch or child.pgno is not None:
                child = self._copy(child)
                node.children[i] = child
            path.append(node)
            indexes.append(i)
            node = child
        keys = node.keys
        i = bisect_left(keys, key)
        if i != len(keys) and keys[i] == key:
            values = node.values
            node.nbytes += len(value) - len(values[i])
            values[i] = value
        else:
            keys.insert(i, key)
            node.values.insert(i, value)
            node.nbytes += size
        previous, node.last_put = node.last_put, key
        nbytes = node.nbytes
        if nbytes > self._capacity:
            # A put right after the leaf's previous put continues an ascending sequence (a
            # long value's chunks, a load in key order, a counter committed row by row):
            # split at the sequence's end, not at the midpoint.
            run = i if i and keys[i - 1] == previous else -1
            self._fix(node, path, indexes, run)
        elif nbytes < self._min_fill and path:
            self._fix(node, path, indexes)

    def delete(self, key: bytes) -> bool:
        """Remove `key`; False (and nothing copied or freed) when it is absent."""
        if lookup(self._store, self._root, key) is None:
            return False
        node = self._root
        assert node is not None
        if node.owner != self._epoch or node.pgno is not None:
            node = self._root = self._copy(node)
        path: list[Node] = []
        indexes: list[int] = []
        while not node.leaf:
            i = bisect_right(node.keys, key)
            child = self._own_child(node, i)
            path.append(node)
            indexes.append(i)
            node = child
        i = bisect_left(node.keys, key)
        k = node.keys.pop(i)
        v = node.values.pop(i)
        node.nbytes -= LEAF_ENTRY_OVERHEAD + len(k) + len(v)
        if path:
            if node.nbytes < self._min_fill:
                self._fix(node, path, indexes)
        elif not node.keys:
            self._root = None
            self.dirtied -= 1  # the root leaf, owned (so dirty) since it was copied above
        return True

    # -- internals --

    def _reject(self, key: bytes, value: bytes) -> NoReturn:
        raise _entry_error(key, value, self._store.page_size)

    def _copy(self, node: Node) -> Node:
        if node.pgno is not None:
            self._freed.append(node.pgno)
            self.dirtied += 1  # else a dirty node is replaced by its dirty copy
        if node.leaf:
            leaf = Node(
                True, node.keys.copy(), node.values.copy(), [], None, self._epoch, node.nbytes
            )
            leaf.last_put = node.last_put
            return leaf
        # A path copy changes one child of a branch and, rarely, a separator: the copy shares
        # the original's key list until it changes it. That halves the copy (a branch holds
        # hundreds of separators) and leaves the cyclic collector one new list per copied
        # branch to scan instead of two, every commit.
        copy = Node(False, node.keys, [], node.children.copy(), None, self._epoch, node.nbytes)
        copy.shared_keys = True
        return copy

    @staticmethod
    def _private_keys(node: Node) -> list[bytes]:
        """The key list of `node` (owned by this mutation), ready to change in place."""
        if node.shared_keys:
            node.keys = node.keys.copy()
            node.shared_keys = False
        return node.keys

    def _owned(self, node: Node) -> bool:
        return node.owner == self._epoch and node.pgno is None

    def _child(self, parent: Node, index: int) -> Node:
        child = parent.children[index]
        return child if type(child) is Node else self._store.load(child)

    def _own_child(self, parent: Node, index: int) -> Node:
        """parent.children[index], copied into this mutation if needed (parent is owned)."""
        child = self._child(parent, index)
        if not self._owned(child):
            child = self._copy(child)
            parent.children[index] = child
        return child

    def _discard(self, node: Node) -> None:
        if node.pgno is not None:
            self._freed.append(node.pgno)
        else:
            self.dirtied -= 1

    def _fix(self, node: Node, path: list[Node], indexes: list[int], run: int = -1) -> None:
        """Restore the size invariants upward from `node`, the changed end of `path`.

        Each level changes its parent by at most one separator (added by a split, removed by a
        merge, replaced by a redistribution), so a split always yields two fitting halves.
        `run` >= 0: `node` is an overfull leaf whose entry `run` continues a run of ascending
        puts (see `_split`).
        """
        capacity = self._capacity
        low = self._min_fill
        while path:
            parent = path.pop()
            index = indexes.pop()
            if node.nbytes > capacity:
                separator, right = self._split(node, run)
                run = -1
                self._private_keys(parent).insert(index, separator)
                parent.children.insert(index + 1, right)
                parent.nbytes += BRANCH_ENTRY_OVERHEAD + len(separator)
            elif node.nbytes < low:
                self._rebalance(parent, index, node)
            else:
                return
            node = parent
        # `node` is the root (owned, so dirty).
        if node.nbytes > capacity:
            separator, right = self._split(node, run)
            self._root = Node(
                False,
                [separator],
                [],
                [node, right],
                None,
                self._epoch,
                _BRANCH_BASE + BRANCH_ENTRY_OVERHEAD + len(separator),
            )
            self.dirtied += 1
        elif node.leaf:
            if not node.keys:
                self._root = None
                self.dirtied -= 1
        else:
            while not node.leaf and not node.keys:
                if node.pgno is None:
                    self.dirtied -= 1
                node = self._child(node, 0)
            self._root = node

    def _split(self, node: Node, run: int = -1) -> tuple[bytes, Node]:
        """Move the upper half (by bytes) of `node` to a new right sibling.

        For a leaf whose entry `run` (>= 0) continues a run of ascending puts, the split is at
        the run's end instead (`_run_split_point`), when both sides can keep `min_fill`.
        """
        keys = node.keys
        if node.leaf:
            values = node.values
            if run < 0:
                m, left = _leaf_split_point(keys, values, node.nbytes)
            else:
                m, left = _run_split_point(
                    keys, values, node.nbytes, run, self._capacity, self._min_fill
                )
            right = Node(True, keys[m:], values[m:], [], None, self._epoch, node.nbytes - left)
            self.dirtied += 1
            hint = node.last_put
            if hint is not None and hint >= right.keys[0]:
                right.last_put, node.last_put = hint, None
            del keys[m:], values[m:]
            node.nbytes = left
            return _separator(keys[-1], right.keys[0]), right
        children = node.children
        m, left, right_size = _branch_split_point(keys, node.nbytes)
        separator = keys[m]
        right = Node(False, keys[m + 1 :], [], children[m + 1 :], None, self._epoch, right_size)
        self.dirtied += 1
        node.keys = keys[:m]  # a new list: `keys` may be shared with a published node
        node.shared_keys = False
        del children[m + 1 :]
        node.nbytes = left
        return separator, right

    def _rebalance(self, parent: Node, index: int, node: Node) -> None:
        """Merge the underfull `node` (parent.children[index]) with a sibling, or even out."""
        if index > 0:
            li = index - 1
            sibling = self._child(parent, li)
            left, right = sibling, node
        else:
            li = 0
            sibling = self._child(parent, 1)
            left, right = node, sibling
        separator = parent.keys[li]
        if node.leaf:
            merged = left.nbytes + right.nbytes
        else:
            merged = left.nbytes + right.nbytes + BRANCH_ENTRY_OVERHEAD + len(separator)
            merged -= _BRANCH_BASE  # the two first-children become one list
        if merged <= self._capacity:
            # Merge into `node`, which this mutation owns; the sibling leaves the tree.
            self._discard(sibling)
            if node.leaf:
                node.keys = left.keys + right.keys
                node.values = left.values + right.values
            else:
                node.keys = [*left.keys, separator, *right.keys]
                node.shared_keys = False
                node.children = left.children + right.children
            node.nbytes = merged
            del self._private_keys(parent)[li], parent.children[li + 1]
            parent.children[li] = node
            parent.nbytes -= BRANCH_ENTRY_OVERHEAD + len(separator)
            return
        if sibling is left:
            left = self._own_child(parent, li)
        else:
            right = self._own_child(parent, li + 1)
        if node.leaf:
            keys = left.keys + right.keys
            values = left.values + right.values
            m, left_size = _leaf_split_point(keys, values, merged)
            left.keys, right.keys = keys[:m], keys[m:]
            left.values, right.values = values[:m], values[m:]
            left.nbytes, right.nbytes = left_size, merged - left_size
            new_separator = _separator(keys[m - 1], keys[m])
        else:
            keys = [*left.keys, separator, *right.keys]
            children = left.children + right.children
            m, left_size, right_size = _branch_split_point(keys, merged)
            left.keys, right.keys = keys[:m], keys[m + 1 :]
            left.shared_keys = right.shared_keys = False
            left.children, right.children = children[: m + 1], children[m + 1 :]
            left.nbytes, right.nbytes = left_size, right_size
            new_separator = keys[m]
        self._private_keys(parent)[li] = new_separator
        parent.nbytes += len(new_separator) - len(separator)


def _as_bytes(data: object, what: str) -> bytes:
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    raise InvalidParameter(f"{what} must be bytes, not {type(data).__name__}")


def oversized_entry(
    changes: Mapping[bytes, bytes | None], page_size: int, longest_key: int, longest_put: int
) -> InvalidParameter | None:
    """The error `Mutation.put` would give for the first put of `changes` (key -> value, None
    for a delete) that no tree of `page_size` holds, given the longest key of a put and the
    most key + value bytes of one (`GatheredCommit`, taken while the record was decoded).

    For replay, which gathers logged changes without the checks a transaction made before
    they were logged: two comparisons, and a loop over the changes only when one fails."""
    max_entry = max_entry_size(page_size)
    if longest_key <= MAX_KEY_SIZE and LEAF_ENTRY_OVERHEAD + longest_put <= max_entry:
        return None
    for key, value in changes.items():
        if value is not None and (
            len(key) > MAX_KEY_SIZE or LEAF_ENTRY_OVERHEAD + len(key) + len(value) > max_entry
        ):
            return _entry_error(key, value, page_size)
    return None


def _entry_error(key: bytes, value: bytes, page_size: int) -> InvalidParameter:
    """The error for an entry that `Mutation.put` and the bulk builders both refuse."""
    if len(key) > MAX_KEY_SIZE:
        return InvalidParameter(
            f"key of {len(key)} bytes is longer than the maximum of {MAX_KEY_SIZE}"
        )
    return InvalidParameter(
        f"entry of {len(key)}-byte key and {len(value)}-byte value needs "
        f"{LEAF_ENTRY_OVERHEAD + len(key) + len(value)} bytes, more than the "
        f"{max_entry_size(page_size)} a {page_size}-byte page allows per entry",
        hint="Store long values outside the tree (the tables layer's long-value store).",
    )


# --- bulk building -----------------------------------------------------------------------

#: Entries gathered before leaves are cut from them (and old entries merged with changes):
#: enough that the per-batch Python work is amortised over the C-level passes, few enough
#: that the batch's objects stay in the CPU caches from one pass to the next, and that its
#: young lists stay cheap for the garbage collector to traverse at each generation-0
#: collection (measured: 1024 beats 512 and 4096; 32768 is up to 1.5x slower).
_BULK_BATCH: Final = 1024
#: A run of at least this many changes between two old leaves is fed to the new tree as it
#: is, cutting the batch of old entries there (see `merge_sorted_columns`).
_GAP_MIN: Final = 64
_FIRST: Final = itemgetter(0)
_SECOND: Final = itemgetter(1)
_BYTES_ONLY: Final = frozenset({bytes})
_BYTES_OR_NONE: Final = frozenset({bytes, type(None)})


def _bulk_target(capacity: int) -> int:
    """Bytes a bulk-built node is filled to: nearly full (fewer pages, a shallower tree), yet
    with room left so that the first few puts into a leaf do not split it at once."""
    return capacity * 9 // 10


def _as_bytes_list(items: list[bytes], what: str) -> list[bytes]:
    # One C-level pass over the types; the per-item conversion only runs for odd inputs.
    if set(map(type, items)) <= _BYTES_ONLY:
        return items
    return [_as_bytes(item, what) for item in items]


def _entry_sizes(keys: list[bytes], values: list[bytes]) -> list[int]:
    """The encoded size of each leaf entry, computed by C-level passes."""
    return list(map(add, map(add, map(len, keys), map(len, values)), repeat(LEAF_ENTRY_OVERHEAD)))


def _check_entry_sizes(
    keys: list[bytes], values: list[bytes], page_size: int, sizes: list[int] | None = None
) -> None:
    """InvalidParameter for the first entry that `Mutation.put` would refuse."""
    if sizes is None:
        sizes = _entry_sizes(keys, values)
    # A key over MAX_KEY_SIZE makes its entry over MAX_KEY_SIZE + overhead as well, so the
    # common batch of small entries is cleared by this one max().
    if not sizes or max(sizes) <= MAX_KEY_SIZE + LEAF_ENTRY_OVERHEAD:
        return
    max_entry = max_entry_size(page_size)
    for key, value, size in zip(keys, values, sizes, strict=True):
        if size > max_entry or len(key) > MAX_KEY_SIZE:
            raise _entry_error(key, value, page_size)


def _check_ascending(keys: list[bytes], last: bytes | None) -> None:
    """InvalidParameter unless `keys` (after `last`, if given) are strictly ascending."""
    if (last is None or last < keys[0]) and all(map(lt, keys, islice(keys, 1, None))):
        return
    previous = [last, *keys] if last is not None else keys
    for a, b in pairwise(previous):
        if not a < b:
            what = "a duplicate key" if a == b else "keys out of order"
            raise InvalidParameter(
                f"bulk input must be sorted by key with unique keys: {what} "
                f"({a[:40]!r} then {b[:40]!r})",
                hint="Sort the items by key and keep only the last value for each key.",
            )
    raise AssertionError("unreachable: an out-of-order pair was detected")


class _TreeBuilder:
    """Packs ascending entries into leaves as they stream in, then builds the branch levels.

    Every node made is owned by `epoch` (``owner == epoch``, ``pgno`` None) with exact
    `nbytes`, and every list it holds is fresh (never one of the caller's or an old tree's), so
    later mutations of that epoch may change the nodes in place. With `images`, every leaf
    gets its page payload (`Node.image`) as it is cut, while its entries are still in the CPU
    caches: then no mutation may change the nodes in place (see `merge_sorted_columns`).
    """

    __slots__ = (
        "_capacity",
        "_epoch",
        "_images",
        "_keys",
        "_leaves",
        "_low",
        "_page_size",
        "_sizes",
        "_target",
        "_values",
    )

    def __init__(self, page_size: int, epoch: int, *, images: bool = False) -> None:
        if epoch <= 0:
            # Nodes loaded from disk have owner 0: epoch 0 would let a mutation change them.
            raise InvalidParameter(f"bulk build epoch must be positive, got {epoch}")
        self._images = images
        self._capacity, _, self._low = _limits(page_size)
        self._target = _bulk_target(self._capacity)
        self._page_size = page_size
        self._epoch = epoch
        # Entries not yet cut into a leaf, with their encoded sizes.
        self._keys: list[bytes] = []
        self._values: list[bytes] = []
        self._sizes: list[int] = []
        self._leaves: list[Node] = []

    def extend(
        self,
        keys: list[bytes],
        values: list[bytes],
        *,
        checked: bool,
        sizes: list[int] | None = None,
    ) -> None:
        """Append entries that sort after every earlier one (the caller checks the order).

        Unless `checked`, entries over the `Mutation.put` size limits raise InvalidParameter.
        `sizes`, when given, are the entries' `_entry_sizes` (computed once by the caller).
        """
        if not keys:
            return
        if sizes is None:
            sizes = _entry_sizes(keys, values)
        if not checked:
            _check_entry_sizes(keys, values, self._page_size, sizes)
        self._keys += keys
        self._values += values
        self._sizes += sizes
        if len(self._sizes) >= _BULK_BATCH:
            self._cut_leaves(final=False)

    def check(self, keys: list[bytes], values: list[bytes]) -> None:
        """InvalidParameter for the first of these entries `Mutation.put` would refuse."""
        _check_entry_sizes(keys, values, self._page_size)

    def finish(self) -> Node | None:
        """The root of the tree of every entry added (None if there were none)."""
        self._cut_leaves(final=True)
        level, self._leaves = self._leaves, []
        if not level:
            return None
        separators = [_separator(a.keys[-1], b.keys[0]) for a, b in pairwise(level)]
        while len(level) > 1:
            level, separators = self._branch_level(level, separators)
        return level[0]

    def _cut_leaves(self, final: bool) -> None:
        """Cut the pending entries into leaves; unless `final`, keep back an unfinished one."""
        if not self._images:
            self._cut(final)
            return
        # The leaves made now (and perhaps the one before, which a final cut may replace).
        start = max(len(self._leaves) - 1, 0)
        self._cut(final)
        for leaf in islice(self._leaves, start, None):
            if leaf.image is None:
                leaf.image = _leaf_payload(leaf.keys, leaf.values)

    def _cut(self, final: bool) -> None:
        keys, values, sizes = self._keys, self._values, self._sizes
        n = len(keys)
        # cum[i] is the encoded size of the first i pending entries, so the leaf of entries
        # [s, e) takes cum[e] - cum[s] bytes and its end is found by bisection.
        cum = list(accumulate(sizes, initial=0))
        self._keys, self._values, self._sizes = [], [], []
        total = cum[n]
        leaves = self._leaves
        epoch = self._epoch
        if not leaves and total <= self._capacity:
            # Perhaps everything fits one page, and then a single leaf is the root.
            if final and n:
                leaves.append(Node(True, keys, values, [], None, epoch, total))
            elif not final:
                self._keys, self._values, self._sizes = keys, values, sizes
            return
        target = self._target
        s = 0
        # Greedy: a leaf takes the most entries within `target`, and is only cut once an
        # entry past it is known; as any entry is at most capacity / 2, the leaf is then over
        # target - capacity / 2 (40% of a page), above min_fill (25%).
        while total - cum[s] > target:
            e = bisect_right(cum, cum[s] + target, s + 1) - 1
            leaves.append(Node(True, keys[s:e], values[s:e], [], None, epoch, cum[e] - cum[s]))
            s = e
        if not final:
            self._keys, self._values, self._sizes = keys[s:], values[s:], sizes[s:]
            return
        rest = total - cum[s]
        if s == n:
            return
        if rest >= self._low or not leaves:
            leaves.append(Node(True, keys[s:], values[s:], [], None, epoch, rest))
            return
        # The last leaf is underfull: join it to its left neighbour, and if the two do not fit
        # one page, split them at the byte midpoint (each half is then over capacity / 4).
        left = leaves.pop()
        keys = left.keys + keys[s:]
        values = left.values + values[s:]
        total = left.nbytes + rest
        if total <= self._capacity:
            leaves.append(Node(True, keys, values, [], None, epoch, total))
            return
        m, size = _leaf_split_point(keys, values, total)
        leaves.append(Node(True, keys[:m], values[:m], [], None, epoch, size))
        leaves.append(Node(True, keys[m:], values[m:], [], None, epoch, total - size))

    def _branch_level(
        self, children: list[Node], separators: list[bytes]
    ) -> tuple[list[Node], list[bytes]]:
        """The branches over one level of `children` and the separators between branches.

        ``separators[i]`` lies between ``children[i]`` and ``children[i + 1]``; each either
        becomes a key of the branch holding both, or moves up between two branches.
        """
        epoch = self._epoch
        m = len(children)
        # cum[i] is the encoded size of separators[:i]; the branch over children [s, j] holds
        # separators [s, j) and takes _BRANCH_BASE + cum[j] - cum[s] bytes.
        cum = list(
            accumulate(map(add, map(len, separators), repeat(BRANCH_ENTRY_OVERHEAD)), initial=0)
        )
        if _BRANCH_BASE + cum[-1] <= self._capacity:
            kids: list[Node | int] = list(children)
            return [Node(False, separators, [], kids, None, epoch, _BRANCH_BASE + cum[-1])], []
        limit = self._target - _BRANCH_BASE
        nodes: list[Node] = []
        up: list[bytes] = []
        s = 0
        # As for leaves: a separator takes at most MAX_KEY_SIZE + 10 bytes, far below `limit`,
        # so each branch gets at least one, and the loop stops with children left over.
        while cum[m - 1] - cum[s] > limit:
            j = bisect_right(cum, cum[s] + limit, s + 1) - 1
            size = _BRANCH_BASE + cum[j] - cum[s]
            kids = list(children[s : j + 1])
            nodes.append(Node(False, separators[s:j], [], kids, None, epoch, size))
            up.append(separators[j])
            s = j + 1
        rest = _BRANCH_BASE + cum[m - 1] - cum[s]
        if m - s >= 2 and rest >= self._low:
            kids = list(children[s:])
            nodes.append(Node(False, separators[s:], [], kids, None, epoch, rest))
            return nodes, up
        # A lone last child, or an underfull last branch: join it to the branch on its left
        # (the separator between them comes back down), splitting again if that overflows.
        left = nodes.pop()
        keys = [*left.keys, up.pop(), *separators[s:]]
        kids = [*left.children, *children[s:]]
        total = _branch_size(keys)
        if total <= self._capacity:
            nodes.append(Node(False, keys, [], kids, None, epoch, total))
            return nodes, up
        k, left_size, right_size = _branch_split_point(keys, total)
        nodes.append(Node(False, keys[:k], [], kids[: k + 1], None, epoch, left_size))
        up.append(keys[k])
        nodes.append(Node(False, keys[k + 1 :], [], kids[k + 1 :], None, epoch, right_size))
        return nodes, up


def build_tree(items: Iterable[tuple[bytes, bytes]], page_size: int, epoch: int) -> Node | None:
    """A new tree holding `items`, built bottom-up; None when there are none.

    `items` must be sorted by key with unique keys (else InvalidParameter, raised as soon as
    the batch holding the offending pair is read); each entry obeys the `Mutation.put` limits
    (else InvalidParameter). The input is consumed in batches, never held in full.

    The result satisfies every invariant `verify_tree` checks, and more: leaves are filled to
    about 90% of a page (never past a page); every non-root leaf holds at least `min_fill`
    bytes (the last one is evened out with its left neighbour if needed); branches are
    packed the same way over separators as short as those `Mutation` makes (only near
    1 KiB separators can leave a branch under `min_fill`, as a `Mutation` split can). A
    single page's worth of entries makes a root leaf. Every node is dirty and owned by `epoch`
    (``owner == epoch``, ``pgno`` None), exactly like nodes a `Mutation` of that epoch made:
    that mutation may go on changing the tree in place, and the checkpointer writes all of it.
    """
    builder = _TreeBuilder(page_size, epoch)
    it = iter(items)
    last: bytes | None = None
    while batch := list(islice(it, _BULK_BATCH)):
        keys = _as_bytes_list(list(map(_FIRST, batch)), "key")
        values = _as_bytes_list(list(map(_SECOND, batch)), "value")
        _check_ascending(keys, last)
        builder.extend(keys, values, checked=False)
        last = keys[-1]
    return builder.finish()


def merge_sorted(
    store: NodeStore,
    root: Node | None,
    changes: Sequence[tuple[bytes, bytes | None]],
    epoch: int,
    freed: list[int],
) -> Node | None:
    """A new tree: the tree at `root` with `changes` applied, built by `build_tree` rules.

    `changes` are (key, value) sorted by key with unique keys; value None deletes the key
    (a no-op when it is absent). Invalid changes raise InvalidParameter before anything else.
    The old tree's entries stream, a batch of leaves at a time, into the new tree: every node
    of the result is new and owned by `epoch` (as for `build_tree`), and the old tree is only
    read, so snapshots of it stay valid. The page number of every written node of the old
    tree is appended to `freed` exactly once (unwritten ones are simply dropped), and only
    once the new tree is complete, so a failure leaves `freed` as it was.

    Cost is proportional to old tree + changes whatever the number of changes: for a few
    changes into a large tree, `Mutation` (path copying) is far cheaper. Changes that fall
    between old leaves (all of them, for an empty tree or keys past the old ones) go to the
    new leaves as they are, without being merged entry by entry.
    """
    ckeys = _as_bytes_list(list(map(_FIRST, changes)), "key")
    cvalues: list[bytes | None] = list(map(_SECOND, changes))
    if not set(map(type, cvalues)) <= _BYTES_OR_NONE:
        cvalues = [None if v is None else _as_bytes(v, "value") for v in cvalues]
    if ckeys:
        _check_ascending(ckeys, None)
    return merge_sorted_columns(store, root, ckeys, cvalues, epoch, freed)


def merge_sorted_columns(
    store: NodeStore,
    root: Node | None,
    keys: list[bytes],
    values: list[bytes | None],
    epoch: int,
    freed: list[int],
    *,
    images: bool = False,
) -> Node | None:
    """`merge_sorted` with the changes as two lists, for callers that hold them so.

    The caller guarantees what `merge_sorted` checks first: `keys` are bytes, strictly
    ascending, and `values` bytes or None. Entry sizes are checked here, a batch at a time as
    the changes stream in (InvalidParameter; `freed` is then as it was and the old tree only
    read). The lists are not changed.

    Every per-change pass runs on a batch of changes while its objects are in the CPU caches
    (delete filter, sizes, the leaf cut): the caller's key and value objects may lie in
    memory in another order than the keys (log replay: in log order), and then each pass
    over all of them in key order misses the caches on every object. With `images`, every
    new leaf also gets its page payload (`Node.image`) in that batch, for the checkpoint to
    write as it is; it costs about as much memory as the leaves' entries until that
    checkpoint. Only for an `epoch` that no mutation will use: a payload would go stale if a
    node were changed in place.
    """
    page_size = store.page_size
    builder = _TreeBuilder(page_size, epoch, images=images)
    n = len(keys)

    def feed(a: int, b: int) -> None:
        """Give the builder the puts among changes [a, b), which fall between old entries."""
        for s in range(a, b, _BULK_BATCH):
            e = min(b, s + _BULK_BATCH)
            batch_keys = keys[s:e]
            batch_values = values[s:e]
            if None in batch_values:
                is_put = list(map(is_not, batch_values, repeat(None)))
                batch_keys = list(compress(batch_keys, is_put))
                batch_values = list(compress(batch_values, is_put))
            # Sizes are computed and checked by the builder for this batch alone.
            builder.extend(batch_keys, batch_values, checked=False)  # type: ignore[arg-type]

    pgnos: list[int] = []
    pos = 0  # keys[:pos] are merged
    # Old entries are merged a batch of leaves at a time: per-leaf merging would cost more
    # Python work (and garbage-collector passes over the big young lists) than the entries.
    # A batch is cut early where a run of changes falls between two old leaves: those go
    # in as they are.
    old_keys: list[bytes] = []
    old_values: list[bytes] = []
    for node in iter_nodes(store, root):
        if node.pgno is not None:
            pgnos.append(node.pgno)
        if not node.leaf or not node.keys:
            continue
        first = node.keys[0]
        if pos < n and keys[pos] < first:
            # Changes before this leaf: those after the batch's last key are a gap.
            gap_end = bisect_left(keys, first, pos)
            gap_start = bisect_right(keys, old_keys[-1], pos, gap_end) if old_keys else pos
            if gap_end - gap_start >= _GAP_MIN or not old_keys:
                _merge_into(
                    builder, old_keys, old_values, keys[pos:gap_start], values[pos:gap_start]
                )
                old_keys, old_values = [], []
                feed(gap_start, gap_end)
                pos = gap_end
        old_keys += node.keys
        old_values += node.values
        if len(old_keys) >= _BULK_BATCH:
            # The changes up to the batch's last key go here; later ones sort after it.
            end = bisect_right(keys, old_keys[-1], pos)
            _merge_into(builder, old_keys, old_values, keys[pos:end], values[pos:end])
            pos = end
            old_keys, old_values = [], []
    end = bisect_right(keys, old_keys[-1], pos) if old_keys else pos
    _merge_into(builder, old_keys, old_values, keys[pos:end], values[pos:end])
    feed(end, n)
    new_root = builder.finish()
    freed.extend(pgnos)
    return new_root


def _merge_into(
    builder: _TreeBuilder,
    keys: list[bytes],
    values: list[bytes],
    ckeys: list[bytes],
    cvalues: list[bytes | None],
) -> None:
    """Feed `builder` the entries (keys, values) with the changes (ckeys, cvalues) applied.

    Both are ascending; the changes all sort before the next entries `builder` will get.
    """
    n = len(keys)
    k = len(ckeys)
    if not k:
        builder.extend(keys, values, checked=True)
        return
    is_put = list(map(is_not, cvalues, repeat(None)))
    put_keys = list(compress(ckeys, is_put))
    put_values: list[bytes] = list(compress(cvalues, is_put))  # type: ignore[arg-type]
    if not n:
        # Nothing old in this stretch (a tree built from scratch): the puts, as they are, fed
        # a batch at a time as the builder expects (one huge batch costs far more to cut).
        for start in range(0, len(put_keys), _BULK_BATCH):
            stop = start + _BULK_BATCH
            builder.extend(put_keys[start:stop], put_values[start:stop], checked=False)
        return
    # The changes' entries are checked here, the old ones are valid already.
    builder.check(put_keys, put_values)
    if 4 * k < n:
        # Few changes: copy the runs of old entries between them, so the cost is mostly the
        # C-level slice copies rather than per-entry work.
        out_keys: list[bytes] = []
        out_values: list[bytes] = []
        lo = 0
        for key, value in zip(ckeys, cvalues, strict=True):
            i = bisect_left(keys, key, lo)
            out_keys += keys[lo:i]
            out_values += values[lo:i]
            lo = i + 1 if i < n and keys[i] == key else i
            if value is not None:
                out_keys.append(key)
                out_values.append(value)
        out_keys += keys[lo:]
        out_values += values[lo:]
        builder.extend(out_keys, out_values, checked=True)
    else:
        # Many changes: let C do the per-entry work. The dict overrides old values (None for
        # a delete, dropped next); it holds the old keys in order, then the added ones in
        # order, so sorted() finds the two runs and merges them in linear time.
        merged: dict[bytes, bytes | None] = dict(zip(keys, values, strict=True))
        merged.update(zip(ckeys, cvalues, strict=True))
        for key in compress(ckeys, map(is_, cvalues, repeat(None))):
            del merged[key]
        mkeys = sorted(merged)
        mvalues: list[bytes] = list(map(merged.__getitem__, mkeys))  # type: ignore[arg-type]
        builder.extend(mkeys, mvalues, checked=True)


# --- checks ------------------------------------------------------------------------------


class TreeStats:
    """What `verify_tree` found: entry, node and depth counts and the emptiest non-root leaf."""

    __slots__ = ("branches", "depth", "entries", "leaves", "min_leaf_nbytes")

    def __init__(self) -> None:
        self.entries = 0
        self.leaves = 0
        self.branches = 0
        self.depth = 0
        self.min_leaf_nbytes: int | None = None

    def __repr__(self) -> str:
        return (
            f"TreeStats(entries={self.entries}, leaves={self.leaves}, "
            f"branches={self.branches}, depth={self.depth}, "
            f"min_leaf_nbytes={self.min_leaf_nbytes})"
        )


def verify_tree(store: NodeStore, root: Node | None) -> TreeStats:
    """Check every structural invariant of the tree at `root`; DatabaseCorrupted if broken.

    Checked: keys strictly ascending in every node, separators bounding their subtrees, all
    leaves at one depth, child counts, `nbytes` equal to the encoded size and within the page,
    entry and key size limits, no empty non-root node.
    """
    stats = TreeStats()
    if root is None:
        return stats
    page_size = store.page_size
    capacity = payload_capacity(page_size)
    max_entry = max_entry_size(page_size)
    leaf_depth: list[int] = []

    def fail(node: Node, what: str) -> DatabaseCorrupted:
        return DatabaseCorrupted(f"B+tree node {node!r}: {what}")

    # (node, depth, lower bound inclusive, upper bound exclusive)
    stack: list[tuple[Node, int, bytes | None, bytes | None]] = [(root, 1, None, None)]
    while stack:
        node, depth, lo, hi = stack.pop()
        keys = node.keys
        if any(a >= b for a, b in pairwise(keys)):
            raise fail(node, "keys are not strictly ascending")
        if keys and ((lo is not None and keys[0] < lo) or (hi is not None and keys[-1] >= hi)):
            raise fail(node, f"keys outside the separator range [{lo!r}, {hi!r})")
        if node.nbytes > capacity:
            raise fail(node, f"{node.nbytes} bytes exceed the page capacity {capacity}")
        if any(len(k) > MAX_KEY_SIZE for k in keys):
            raise fail(node, f"a key is longer than {MAX_KEY_SIZE} bytes")
        if node.leaf:
            if len(node.values) != len(keys) or node.children:
                raise fail(node, "leaf with mismatched values or with children")
            size = LEAF_ENTRY_OVERHEAD * len(keys) + sum(map(len, keys))
            size += sum(map(len, node.values))
            if size != node.nbytes:
                raise fail(node, f"nbytes {node.nbytes} but the entries take {size}")
            for k, v in zip(keys, node.values, strict=True):
                if LEAF_ENTRY_OVERHEAD + len(k) + len(v) > max_entry:
                    raise fail(node, f"an entry is larger than {max_entry} bytes")
            if node is not root:
                if not keys:
                    raise fail(node, "empty non-root leaf")
                if stats.min_leaf_nbytes is None or node.nbytes < stats.min_leaf_nbytes:
                    stats.min_leaf_nbytes = node.nbytes
            leaf_depth.append(depth)
            if leaf_depth[0] != depth:
                raise fail(node, f"leaf at depth {depth}, another at {leaf_depth[0]}")
            stats.leaves += 1
            stats.entries += len(keys)
        else:
            if not keys or len(node.children) != len(keys) + 1 or node.values:
                raise fail(node, "branch without separators, or with mismatched children")
            if node.nbytes != _branch_size(keys):
                raise fail(node, f"nbytes {node.nbytes} but encodes to {_branch_size(keys)}")
            stats.branches += 1
            bounds = [lo, *keys, hi]
            for i, child in enumerate(node.children):
                if type(child) is Node:
                    if node.pgno is not None and child.pgno is None:
                        raise fail(node, "a written branch points to a dirty node")
                    child_node = child
                else:
                    child_node = store.load(child)
                stack.append((child_node, depth + 1, bounds[i], bounds[i + 1]))
    stats.depth = leaf_depth[0] if leaf_depth else 0
    return stats


# --- a store for tests -------------------------------------------------------------------


class MemoryNodeStore:
    """A `NodeStore` over a dict of encoded pages, never reusing a page number.

    `load` decodes the page every time (no cache), so tests exercise the on-disk paths.
    """

    def __init__(self, page_size: int = 4096, *, path: str = "memory.edb", first_pgno: int = 2):
        payload_capacity(page_size)  # validates page_size
        self.page_size = page_size
        self.path = path
        self.pages: dict[int, bytes] = {}
        self.next_pgno = first_pgno
        self.loads = 0

    def load(self, ref: int) -> Node:
        pgno = ref & MAX_PGNO
        data = self.pages.get(pgno)
        if data is None:
            raise PageNotInitialized(f"page {pgno} of {self.path!r} was never written")
        self.loads += 1
        return decode_node(
            pgno, data, path=self.path, page_size=self.page_size, expected_crc=ref_crc(ref)
        )

    def write(self, node: Node, checkpoint_seq: int = 0) -> int:
        """Give the dirty `node` the next page number, encode and store it; returns the
        child reference to it (`child_ref`)."""
        if node.pgno is not None:
            raise InvalidParameter(f"node is already written at page {node.pgno}")
        pgno = self.next_pgno
        data = self.pages[pgno] = encode_node(node, self.page_size, pgno, checkpoint_seq)
        self.next_pgno += 1
        node.pgno = pgno
        node.page_crc = page_crc_of(data)
        return node_ref(node)

    def checkpoint(self, root: Node | None, checkpoint_seq: int = 0) -> int:
        """Write every dirty node of `root` children first, swizzling each into its parent.

        Returns the number of pages written. `root` itself stays a `Node` (with pgno set).
        """
        dirty = dirty_nodes_postorder(root)
        for node, parent, index in dirty:
            ref = self.write(node, checkpoint_seq)
            if parent is not None:
                swizzle(parent, index, ref)
        return len(dirty)

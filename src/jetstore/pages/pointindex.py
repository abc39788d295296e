"""The point-read index: the entries of a database's published tree by key, for point reads.

A point read of the B+tree is a descent: a bisection in each branch, then the leaf, each a
node somewhere in memory, so on a large tree every step is a cache miss or two. This index
is a dict from full key to value, filled from the leaves that point reads reach in the tree
the database published last; a later read of that tree finds its key with one hash probe.
It is built from what reads touch and kept exact by every commit, as InnoDB's adaptive hash
index is; unlike a cache it is never stale, never "mostly right" (design D18).

Invariants:
1. Exact: while `version` does not move, every entry (k, v) is what the tree `root` holds
   under k. The index describes one tree, `root`, and nothing else.
2. Readers take no lock (`DatabaseFile.lookup`): they read `version`, check that `probe`
   (`root`, or None: invariant 6) is their snapshot's root, probe `entries`, and use a
   value only if `version` is still what they read (a sequence lock; the GIL orders these
   reads and writes). `advance` and `reset` set `root` and `probe` to None, then move
   `version`, then change the entries, and name the new tree only once they are done. In
   that order: a reader that found `probe` naming its tree read `version` before it moved,
   so if the entries changed before its probe it sees `version` moved and reads the tree
   instead. (Moving `version` first let a reader read the moved `version`, then still find
   the old root, then probe entries changed for the new tree with `version` unmoved since:
   a value of a later commit.)
3. Entries change only under `lock`, in four ways:
   - `advance`: the database publishes a new tree (a commit): each key the commit changed
     that is present is updated or removed, then `root` becomes the new tree. If the index
     did not describe the commit's base tree, it is emptied instead. An exception halfway
     leaves `root` at None with entries: the next `advance` (from the empty tree too, which
     holds no key) or `reset` empties it.
   - `fill`: a reader of `root` adds a written leaf's entries, only while `root` is still
     the tree the leaf was reached from and the node cache holds that very leaf.
   - `forget`: the node cache dropped a filled leaf (evicted, its page freed): its keys go.
     It asks whether the leaf is filled under `lock`, so a `fill` racing the drop is seen.
   - `reset` and `clear`: emptied (a new tree not derived from `root`, the cache cleared).
   Removing an entry is always safe for a concurrent reader (it reads the tree instead);
   adding or changing one is what `version` and `root` guard.
4. Bounded by the node cache: every key is a key of a filled leaf the cache held when it was
   filled, and leaves the index when the cache drops that leaf. The index costs its dict
   (about 60-100 bytes an entry, key and value objects shared with the leaf), in place of
   the `index` dict point reads would otherwise build in the leaf (`btree.leaf_get`).
5. `generation` counts the times the index was emptied: a leaf records the generation that
   holds its entries (`Node.indexed_in`), so after emptying, leaves are filled again. A
   mark does not promise every key is still here: `forget` of one leaf takes out keys that
   another leaf shares (an old leaf whose page is freed after its copy was filled), so a
   point read that finds its key in a marked leaf of `root` but not here fills it again.
6. The node cache's CLOCK sees point reads answered here only by samples. Such a read
   touches no node, so it cannot set a leaf's `referenced` bit: the leaves read most would
   look unread and be evicted first (then read from disk again). So each eviction owes a
   few point reads (`evicted`): until they are made, `probe` is None and point reads of
   `root` descend the tree, through the cache, marking the leaves they reach (`descended`).
   The samples follow the reads, so a leaf read often through the index is marked often.
   `probe` is `root` or None, hidden with it (invariant 2); it never names another tree.
7. `lock` is the last lock the engine takes (the instance's lock order,
   `jetstore.instance.instance`): the node cache calls `forget`, `evicted` and `clear` holding
   its budget's lock, and nothing here takes another lock while holding it (`fill` reads the
   cache's dict, never its lock). A commit's `advance`, under the commit lock, and the cache
   puts of a checkpoint (a large commit's write-back among them), under the budget's lock,
   therefore never wait for each other in a cycle.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from jetstore.pages.btree import Node

#: A commit changing at most this many keys updates the index key by key; a larger one
#: intersects its keys with the index's first (one C-level pass over the smaller side).
_KEY_BY_KEY = 64
#: Point reads that descend the tree instead of probing, for each node the cache evicts,
#: and at most this many owed at once (a burst of evictions, such as a scan's).
_DESCENTS_PER_EVICTION = 2
_MAX_OWED = 256


class PointReadIndex:
    """Full key -> value for the leaves point reads reached in the tree `root`."""

    __slots__ = (
        "clears",
        "enabled",
        "entries",
        "fills",
        "forgotten",
        "generation",
        "hits",
        "lock",
        "owed",
        "probe",
        "root",
        "version",
    )

    def __init__(self, *, enabled: bool = True) -> None:
        #: False: the index stays empty and describes no tree (option `point_read_index`).
        self.enabled = enabled
        self.entries: dict[bytes, bytes] = {}
        self.root: Node | None = None
        #: The tree whose point reads probe `entries`: `root`, or None while the node cache
        #: is owed descents (`owed`, invariant 6) or a commit changes the entries.
        self.probe: Node | None = None
        #: Point reads of `root` that are to descend the tree rather than probe (invariant 6).
        self.owed = 0
        self.version = 0
        self.generation = 0
        self.lock = threading.Lock()
        self.hits = 0
        self.fills = 0
        self.forgotten = 0
        self.clears = 0

    def reset(self, root: Node | None) -> None:
        """Describe `root` from now on, empty (a tree not derived from the one described)."""
        with self.lock:
            self.root = self.probe = None  # before `version` moves (invariant 2)
            self.version += 1
            self._empty()
            if self.enabled:
                self.root = root
                if not self.owed:
                    self.probe = root

    def advance(
        self, old_root: Node | None, new_root: Node | None, changes: Mapping[bytes, bytes | None]
    ) -> None:
        """The database publishes `new_root`: `old_root` with `changes` (key -> new value,
        None for a removed key) applied. Called before the new tree is published."""
        if not self.enabled:
            return
        with self.lock:
            entries = self.entries
            # `root` None is the empty tree, which holds no key, or no tree at all (an
            # advance interrupted halfway): entries then mean the latter.
            described = self.root is old_root and (old_root is not None or not entries)
            self.root = self.probe = None  # before `version` moves (invariant 2)
            self.version += 1
            if entries:
                if not described:
                    self._empty()
                elif len(changes) <= _KEY_BY_KEY:
                    for key, value in changes.items():
                        if key in entries:
                            if value is None:
                                del entries[key]
                            else:
                                entries[key] = value
                else:
                    for key in changes.keys() & entries.keys():
                        value = changes[key]
                        if value is None:
                            del entries[key]
                        else:
                            entries[key] = value
            self.root = new_root  # only once every change is in (invariant 3)
            if not self.owed:
                self.probe = new_root

    def fill(self, root: Node | None, leaf: Node, cached: Mapping[int, Node]) -> bool:
        """Add the entries of `leaf`, a written leaf reached from `root`, if `root` is still
        the tree described and `cached` (the node cache) holds the leaf. True if added."""
        pgno = leaf.pgno
        if pgno is None or cached.get(pgno) is not leaf:
            # Asked first without the lock: a root leaf the cache evicted (its tree holds it,
            # no read reaches it through the cache) is refused on every read of a small tree.
            return False
        with self.lock:
            if self.root is not root or cached.get(pgno) is not leaf:
                return False
            # Marked first: an exception during the update (an interrupt) then leaves a marked
            # leaf missing keys, which `forget` cleans up and a later read fills again
            # (invariant 5), never keys that no marked leaf accounts for (invariant 4).
            leaf.indexed_in = self.generation
            self.entries.update(zip(leaf.keys, leaf.values, strict=True))
            leaf.index = None  # its entries are here now: one dict of them is enough
            self.fills += 1
            return True

    def forget(self, node: Node) -> None:
        """The node cache dropped `node`: if its entries are here, they go (invariant 4).

        Whether they are is asked under the lock, never before it: a `fill` that saw the
        cache holding the leaf may mark it (under the lock) only after the cache dropped it,
        and this call must then wait for that fill and take its keys out again. (A check
        before the lock saw the leaf unmarked and left them in the index, held by no cached
        leaf, until the index was next emptied.) Only branches, never filled, are let go
        without the lock; a dropped leaf costs one uncontended lock, next to the page read
        that made room for it.
        """
        if not node.leaf:
            return
        with self.lock:
            if node.indexed_in != self.generation:
                return
            pop = self.entries.pop
            for key in node.keys:
                pop(key, None)
            node.indexed_in = -1
            self.forgotten += 1

    def evicted(self) -> None:
        """The node cache evicted a node (CLOCK, under its lock): the next point reads of
        `root` descend the tree, so that the leaves they reach are marked referenced
        (invariant 6)."""
        if not self.entries:
            return  # no read is answered here: the cache sees every one
        with self.lock:
            self.owed = min(self.owed + _DESCENTS_PER_EVICTION, _MAX_OWED)
            self.probe = None

    def descended(self) -> None:
        """A point read of `root` descended the tree while descents were owed."""
        with self.lock:
            if self.owed:
                self.owed -= 1
                if not self.owed:
                    self.probe = self.root

    def clear(self) -> None:
        """Empty the index, keeping the tree it describes (the node cache was emptied)."""
        with self.lock:
            self._empty()

    def _empty(self) -> None:
        if self.entries:
            self.entries.clear()
            self.clears += 1
        self.generation += 1

    def __len__(self) -> int:
        return len(self.entries)

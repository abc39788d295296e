"""The node cache: decoded, clean B+tree nodes by page number, least recently used first out.

Invariants:
- Only clean nodes (written, `pgno` set, immutable) are cached, so evicting one never loses
  data: it is re-read and re-verified from its page on the next access.
- Dirty nodes are never here; they live only in the tree that references them until a
  checkpoint writes them (the instance bounds them by `cache_size` as well, by checkpointing
  early: `Instance.write_back`, design D17).
- A page number is dropped from the cache before its page may be reused for another node.
- A released cache (its file closed: the instance closed, the database detached) takes no
  page: a read that ends after the close puts nothing, so the budget counts only pages
  some cache of it holds.

Replacement is second-chance FIFO (CLOCK): a hit only sets the node's `referenced` bit,
without a lock or any reordering, so concurrent readers never contend (a bit on the node the
reader touches anyway, not a set of page numbers: no extra memory to miss on); eviction, under
the lock, gives a referenced page one more round (clearing its bit) instead of dropping it.
A read the point-read index answers touches no node: each eviction tells the index
(`on_evict`), which then has the next few point reads descend through the cache, marking
what they reach (`jetstore.pages.pointindex`, invariant 6).

An instance's databases share one `cache_size` (`CacheBudget`, in bytes of pages: databases
of different page sizes count what they hold): their caches share the budget's lock, are
listed in it from their first page until `release` (their file closed), and a
put that would take them past the limit first evicts (CLOCK) from the cache holding the most
bytes among those above `MIN_PAGES` pages (no cache shrinks below that for another, so only
those floors can overrun the budget). Without a budget (tools, tests) a cache is bounded by
its own capacity only.

The budget's lock comes after a database file's space lock (a checkpoint's plan and its
release of freed pages discard pages under it) and before the point-read indexes' locks (the
callbacks above run under it); a callback never reaches back into a cache (the instance's
lock order, `jetstore.instance.instance`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from jetstore.pages.btree import Node

#: A cache never shrinks below this many pages to make room for another cache of its budget.
MIN_PAGES = 16


class CacheBudget:
    """The instance's `cache_size` in bytes, shared by the node caches of its databases."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0  # bytes of pages held by the caches below
        self.lock = threading.Lock()
        self.caches: list[NodeCache] = []


class NodeCache:
    def __init__(
        self, capacity_pages: int, *, page_size: int = 0, budget: CacheBudget | None = None
    ) -> None:
        self.capacity = max(MIN_PAGES, capacity_pages)
        self._nodes: dict[int, Node] = {}
        # The hit path of `get` without its call, for the hottest reader (`DatabaseFile.lookup`
        # probes `nodes` itself, then sets the node's `referenced` bit and counts the hit,
        # exactly as `get` does; a miss goes through `get`). The dict lives as long as the
        # cache: `clear` empties it in place.
        self.nodes: Mapping[int, Node] = self._nodes
        self.page_size = page_size
        self._budget = budget
        self._lock = budget.lock if budget is not None else threading.Lock()
        # Listed in the budget from its first page on, not from here: a database file whose
        # open fails or is interrupted after this (a damaged free list, a Ctrl-C as the open
        # returns, before its opener holds it) is never closed, and its cache stayed listed
        # for the life of the instance. Holding no page, it had nothing to give way anyway.
        self._listed = False
        #: Set by `release` (its file closed): a page a reader loaded before that is not kept.
        self._released = False
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        # Set by `release` (its file closed): a page read that ends after it puts nothing.
        self._released = False
        #: Told of every node the cache drops, under its lock (the database file's point-read
        #: index forgets a dropped leaf's entries), and of every emptying (`on_clear`).
        self.on_drop: Callable[[Node], None] | None = None
        self.on_clear: Callable[[], None] | None = None
        #: Told of every eviction (CLOCK), under its lock: reads the point-read index answers
        #: touch no node, so it has the next few reads descend and mark what they reach.
        self.on_evict: Callable[[], None] | None = None

    def get(self, pgno: int) -> Node | None:
        node = self._nodes.get(pgno)
        if node is None:
            self.misses += 1
            return None
        node.referenced = True
        self.hits += 1
        return node

    def put(self, pgno: int, node: Node) -> None:
        with self._lock:
            if self._released:
                # A read that began before the file closed (a database detached under a
                # transaction's read): held here, or listed in the budget again, the page
                # would count against it for the rest of the instance's life, in a cache
                # nobody reads.
                return
            nodes = self._nodes
            replaced = nodes.pop(pgno, None)
            if replaced is not None:
                # Two readers loaded the page at once: the first's node is dropped.
                if replaced is not node and self.on_drop is not None:
                    self.on_drop(replaced)
            else:
                # The victim is chosen among the pages already cached, before the new one
                # joins the queue: a page just read is never its own victim.
                while len(nodes) >= self.capacity:
                    self._evict_one()
                budget = self._budget
                if budget is not None:
                    if not self._listed:
                        # Checked, not assumed: a Ctrl-C after the append, before the flag.
                        if self not in budget.caches:
                            budget.caches.append(self)
                        self._listed = True
                    while budget.used + self.page_size > budget.limit:
                        above = [c for c in budget.caches if len(c._nodes) > MIN_PAGES]
                        if not above:
                            break  # every cache at its floor: the floors overrun the budget
                        max(above, key=NodeCache._held)._evict_one()
                    budget.used += self.page_size
            nodes[pgno] = node

    def _held(self) -> int:
        return len(self._nodes) * self.page_size

    def _evict_one(self) -> None:
        """Drop the first page of the queue without its referenced bit (under the lock)."""
        nodes = self._nodes
        while True:
            oldest = next(iter(nodes))
            victim = nodes[oldest]
            if victim.referenced:
                victim.referenced = False
                nodes[oldest] = nodes.pop(oldest)  # second chance: back of the queue
            else:
                del nodes[oldest]
                self.evictions += 1
                if self.on_drop is not None:
                    self.on_drop(victim)
                if self.on_evict is not None:
                    self.on_evict()
                if self._budget is not None:
                    self._budget.used -= self.page_size
                return

    def discard(self, pgno: int) -> None:
        with self._lock:
            node = self._nodes.pop(pgno, None)
            if node is not None:
                if self._budget is not None:
                    self._budget.used -= self.page_size
                if self.on_drop is not None:
                    self.on_drop(node)

    def clear(self) -> None:
        with self._lock:
            if self._budget is not None:
                self._budget.used -= self._held()
            self._nodes.clear()
            if self.on_clear is not None:
                self.on_clear()

    def release(self) -> None:
        """Empty the cache and leave its budget (its database file closed)."""
        with self._lock:
            self._released = True
            budget = self._budget
            if budget is not None:
                budget.used -= self._held()
                if self in budget.caches:
                    budget.caches.remove(self)
            self._nodes.clear()
            if self.on_clear is not None:
                self.on_clear()

    def __len__(self) -> int:
        return len(self._nodes)

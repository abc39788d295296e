"""The node cache: decoded, clean B+tree nodes by page number, least recently used first out.

Invariants:
- Only clean nodes (written, `pgno` set, immutable) are cached, so evicting one never loses
  data: it is re-read and re-verified from its page on the next access.
- Dirty nodes are never here; they live only in the tree that references them until a
  checkpoint writes them.
- A page number is dropped from the cache before its page may be reused for another node.

Replacement is second-chance FIFO (CLOCK): a hit only sets the node's `referenced` bit,
without a lock or any reordering, so concurrent readers never contend (a bit on the node the
reader touches anyway, not a set of page numbers: no extra memory to miss on); eviction, under
the lock, gives a referenced page one more round (clearing its bit) instead of dropping it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from jetstore.pages.btree import Node


class NodeCache:
    def __init__(self, capacity_pages: int) -> None:
        self.capacity = max(16, capacity_pages)
        self._nodes: dict[int, Node] = {}
        # The hit path of `get` without its call, for the hottest reader (`DatabaseFile.lookup`
        # probes `nodes` itself, then sets the node's `referenced` bit and counts the hit,
        # exactly as `get` does; a miss goes through `get`). The dict lives as long as the
        # cache: `clear` empties it in place.
        self.nodes: Mapping[int, Node] = self._nodes
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

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
            nodes = self._nodes
            if nodes.pop(pgno, None) is None:
                # The victim is chosen among the pages already cached, before the new one
                # joins the queue: a page just read is never its own victim.
                while len(nodes) >= self.capacity:
                    oldest = next(iter(nodes))
                    victim = nodes[oldest]
                    if victim.referenced:
                        victim.referenced = False
                        nodes[oldest] = nodes.pop(oldest)  # second chance: back of the queue
                    else:
                        del nodes[oldest]
                        self.evictions += 1
            nodes[pgno] = node

    def discard(self, pgno: int) -> None:
        with self._lock:
            self._nodes.pop(pgno, None)

    def clear(self) -> None:
        with self._lock:
            self._nodes.clear()

    def __len__(self) -> int:
        return len(self._nodes)

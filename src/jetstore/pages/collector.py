"""The cyclic garbage collector's pause while a tree is built in bulk.

This module owns `building_in_bulk`, the one way the engine pauses Python's cyclic collector.
A replay or a bulk merge allocates hundreds of thousands of tree nodes and lists that hold no
reference cycles and mostly live as long as the node cache: reference counting alone frees
those that die, and a collection in the middle of the build would rescan every one of them
for each batch of new objects.

Invariants:
- The collector runs again afterwards exactly when it ran before (a pause inside a pause, or
  one the application made by `gc.disable()`, is left to whoever made it).
- What survives the build goes straight to the oldest generation: the first collections after
  the pause would otherwise traverse every new node's key and value lists twice (young, then
  middle generation), touching each of the million objects they hold (~0.1 s a pass for
  100 MB of replayed log). Objects already alive are promoted with them; they are still
  collected, by the next full collection.
- Objects the application froze (`gc.freeze`) stay frozen: when any are frozen, survivors
  are not promoted (promoting goes through the permanent generation and would thaw them).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["building_in_bulk"]


@contextmanager
def building_in_bulk() -> Iterator[None]:
    """Pause the cyclic collector for the block; on the way out, promote what the block
    left alive to the oldest generation and resume it (see the module's invariants)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            if gc.get_freeze_count() == 0:
                # Two list splices inside the collector, independent of how many objects.
                gc.freeze()
                gc.unfreeze()
            gc.enable()

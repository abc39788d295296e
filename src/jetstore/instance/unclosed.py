"""Instances the application did not close: dropped ones, and those still open at exit.

An `Instance` the application drops without `close()` is shut down as `close()` would shut it
down, as a Python file object or an sqlite3 connection is: a `ResourceWarning` and event 103
(`instance_not_closed`), then the log flushed (lazy commits become durable), a final
checkpoint (every header clean), threads stopped and joined, the directory lock released,
every descriptor closed. This module owns that policy and the process's table of open
instances.

How an unreferenced instance is noticed: its engine threads reach it only weakly
(`jetstore.io.threads.WeakOwner`), so once no application object references it (the
instance itself, or a `Database`, `Transaction`, `Table` or backup session, each of which
keeps it alive) it is garbage and `Instance.__del__` runs, at the moment its reference count
drops to zero or, as the instance sits in reference cycles (its databases point back at it),
at the next run of the cyclic collector.

Where it is shut down: not in the finalizer. The collector runs wherever an allocation
triggers it, also inside engine code that holds locks the shutdown needs (the handle
registry's, the process-wide table of locked files, a log writer's): a shutdown there would
deadlock. The finalizer only hands the instance over (`hand_off`: two operations that take no
lock and do no I/O, safe in any context) to the instance's own background thread, which
holds no engine lock between its rounds and shuts it down at once. Deferred, not delayed:
`jetstore.open` refused a lock this process holds collects garbage and waits for those
shutdowns (`reclaim`), so dropping an instance and opening its directory again works;
`collect` and `wait_for_shutdowns` do the same for an application or a test.

A background round (a lazy flush, a checkpoint) holds the instance strongly for its length,
so a collection during one does not find a dropped instance. `collect` therefore takes each
open instance's round lock (the background thread holds it for a round) before it
collects, and only concludes "nothing dropped" after a full collection that ran on its own
thread (while another thread collects, `gc.collect()` returns without collecting).

Invariants:
- A finalizer takes no lock, does no I/O and emits no warning: `hand_off` stores the instance
  in `_orphans` (which keeps it alive until it is closed) and puts it on its background
  thread's `queue.SimpleQueue`, whose `put` is reentrant.
- Every shutdown runs in a safe place: the instance's background thread between rounds, or
  application code (`wait_for_shutdowns`, `collect`, `reclaim`, the exit hook), never a
  finalizer. `collect` holds round locks only around its `gc.collect()`, whose finalizers
  take no lock, and waits for any one of them at most `ROUND_WAIT`.
- An instance leaves `_orphans` and the open table exactly when it becomes CLOSED
  (`forget`), whoever closed it.
- Interpreter exit: an exit hook (`atexit`, registered when this module is imported, so it
  runs after the hooks an application registers later) shuts down every instance of this
  process still open, the same way, on the main thread, and waits for those handed over: lazy
  commits acknowledged before exit are flushed and the headers are clean. No engine thread
  is left running into the interpreter's finalization. An instance collected during
  finalization itself (opened after the hook ran) is left to the OS and the next open's soft
  recovery, which is always safe.
- A forked child never acts on its parent's instances (`jetstore.io.forks`): the tables are
  emptied in the child, a finalizer there does nothing (its copies of the descriptors go
  with the child, or with an explicit `close()`), and the exit hook skips them.
"""

from __future__ import annotations

import atexit
import collections
import gc
import itertools
import operator
import os
import threading
import time
import warnings
import weakref
from queue import SimpleQueue
from typing import TYPE_CHECKING

from jetstore.io import forks

if TYPE_CHECKING:
    from jetstore.instance.instance import Instance
    from jetstore.io.threads import ManagedThread

#: Every instance of this process that is open, by id, weakly (the exit hook closes them). A
#: dead reference is an instance the collector found: its finalizer is handing it over (the
#: collector clears weak references first), or has (then it is in `_orphans` too).
_open: dict[int, tuple[weakref.ref[Instance], threading.Lock]] = {}
#: Instances whose finalizer ran while they were open, by id, with the background thread
#: that shuts them down. Written by finalizers: single dict operations only (atomic, no lock).
_orphans: dict[int, tuple[Instance, ManagedThread | None]] = {}
#: How long a collected instance may take to show up in `_orphans`: its finalizer runs a
#: few dict operations after the collector cleared the weak reference (on another thread,
#: the collector may run other finalizers in between). Past it, the finalizer did not hand
#: it over (it failed) and nobody will.
HAND_OVER_GRACE = 1.0
#: How long `collect` waits for one background round (a checkpoint) to end.
ROUND_WAIT = 10.0
#: `lock.release()` as a C callable (`collect` releases the round locks from C).
_RELEASE = operator.methodcaller("release")

WHY_DROPPED = "the application dropped it"
WHY_EXIT = "the interpreter is exiting"


def track(instance: Instance, round_lock: threading.Lock) -> None:
    """`instance` is open (end of `Instance._open`); its background thread holds it only
    under `round_lock`."""
    _open[id(instance)] = (weakref.ref(instance), round_lock)


def forget(instance: Instance) -> None:
    """`instance` is closed, by whoever closed it."""
    _open.pop(id(instance), None)
    _orphans.pop(id(instance), None)


def _collected() -> list[int]:
    """Ids of the instances collected and not closed yet (handed over, or being)."""
    return [key for key, (ref, _lock) in list(_open.items()) if ref() is None] + list(_orphans)


def hand_off(instance: Instance, thread: ManagedThread | None, inbox: SimpleQueue[object]) -> None:
    """From `Instance.__del__`, on any thread, with any lock held: keep `instance` alive and
    give it to its background thread (`thread`, which waits on `inbox`) to shut down."""
    _orphans[id(instance)] = (instance, thread)
    inbox.put(instance)


def message(instance: Instance) -> str:
    """The ResourceWarning's text."""
    return (
        f"jetstore instance at {instance.directory} was not closed; closing it now — use "
        "`with jetstore.open(...)` or call close()"
    )


def warn(text: str, source: object) -> None:
    """Emit a ResourceWarning from a place no caller could catch an exception in (a
    background thread, the exit hook). Under `-W error` it is shown instead of raised: the
    shutdown it announces must go on."""
    try:
        warnings.warn(text, ResourceWarning, stacklevel=2, source=source)
    except Warning as exc:
        warnings.showwarning(exc, type(exc), __file__, 0)


def wait_for_shutdowns(timeout: float | None = None) -> bool:
    """Wait until every instance the collector found is closed; True if none is left.

    An instance whose background thread is gone (it died of an error) is shut down here.
    Call it from application code (or a test), never from a finalizer.
    """
    deadline = None if timeout is None else time.monotonic() + timeout

    def left() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    grace = time.monotonic() + HAND_OVER_GRACE
    while True:
        orphans = list(_orphans.values())
        for instance, thread in orphans:
            if thread is not None and not thread.is_current:
                # The thread ends right after the shutdown: joining it waits for both, and
                # no thread of the instance is left when this returns.
                thread.join(left())
            if id(instance) in _orphans and (thread is None or not thread.alive):
                instance.close_unreferenced(WHY_DROPPED, wait=True)
            instance.wait_closed(left())
        if orphans:
            grace = time.monotonic() + HAND_OVER_GRACE  # from the last hand-over seen
        del orphans
        collected = _collected()
        if not collected:
            return True
        if left() == 0.0:
            return False
        if not _orphans and time.monotonic() > grace:
            for key in collected:  # never handed over (its finalizer failed): give up on it
                _open.pop(key, None)
            return True
        time.sleep(0.001)  # a finalizer on another thread is handing an instance over


def collect(timeout: float = 60.0) -> bool:
    """Collect garbage with every open instance's background thread between rounds, then
    wait for the shutdowns that starts; True if an instance was found and waited for.

    A plain `gc.collect()` misses an instance the application dropped while its background
    thread is in a round (a flush, a checkpoint), which holds it strongly: that one would
    wait for the next collection. Call it from application code, never from a finalizer.
    """
    deadline = time.monotonic() + timeout
    while True:
        held: list[threading.Lock] = []
        try:
            for _ref, lock in list(_open.values()):
                wait = min(ROUND_WAIT, max(0.0, deadline - time.monotonic()))
                # The lock is in `held` before any signal handler can run: `extend` calls
                # `acquire` (through `map` and `compress`) from C, and CPython runs handlers
                # only when a call returns to Python code. After `if lock.acquire(...)`, a
                # Ctrl-C there left the lock taken and unrecorded, and the background thread
                # (and the close() joining it) waited for it forever.
                held.extend(itertools.compress((lock,), map(lock.acquire, (True,), (wait,))))
            collected_here = _full_collection()
        finally:
            # All released from C too: an interrupt between two releases keeps none.
            collections.deque(map(_RELEASE, held), maxlen=0)
        if _collected():
            wait_for_shutdowns(max(0.0, deadline - time.monotonic()))
            return True
        if collected_here or time.monotonic() >= deadline:
            return False
        time.sleep(0.001)  # another thread's collection is under way: after it


def _full_collection() -> bool:
    """`gc.collect()`; True if it collected, here. While another thread collects it returns
    at once without collecting (the collector runs one collection at a time)."""
    me = threading.get_ident()
    ran: list[bool] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info.get("generation") == 2 and threading.get_ident() == me:
            ran.append(True)

    gc.callbacks.append(note)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(note)
    return bool(ran)


def reclaim(timeout: float = 60.0) -> bool:
    """An open was refused a lock this process holds: if this process has instances open,
    one of them may be an instance the application dropped that waits in reference cycles
    for the cyclic collector; `collect` finds it and waits for its shutdown. True if the
    open may succeed now."""
    if not _open:
        return False
    return collect(timeout)


def _close_at_exit() -> None:
    for ref, _lock in list(_open.values()):
        instance = ref()
        if instance is not None and instance.pid == forks.PID:
            instance.close_unreferenced(WHY_EXIT, wait=True)
        del instance
    wait_for_shutdowns()


def _forget_parents_instances() -> None:
    """In a forked child every instance in the tables is the parent's."""
    _open.clear()
    _orphans.clear()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_forget_parents_instances)

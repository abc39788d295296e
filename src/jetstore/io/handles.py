"""The handle registry: every OS handle the engine holds, counted by kind and owner.

Invariants:
- Every file descriptor, lock and thread the engine creates is registered here at creation and
  unregistered exactly once, by its deterministic `close()` (idempotent).
- A raw resource passes to the registry in one step an interrupt cannot split: its creator
  keeps it in a list (`taking`) that `register` empties as the handle enters the table, so
  on any way out the creator releases exactly what is still in the list.
- `counts()` is exact at every moment: a test can assert that an operation left the number of
  open handles where it found it (the seed failure Q249148 was a handle leak on every backup).
- Closing an owner (`close_owner`) closes every handle registered under it, newest first, and
  keeps going past errors, so one cleanup call releases everything on every exit path. An
  operation that cleans up that way owns a label of its own (`use_owner`), never a fixed one
  that a concurrent use of the same operation shares.
- An interrupt (KeyboardInterrupt from a signal handler, or any BaseException that is not an
  Exception) never loses a handle: a handle stays registered (and counted) until its closer
  returned or failed with an Exception; a closer interrupted, or never started because the
  interrupt came first, gives the handle back open, and the next `close()` runs the closer
  again (every closer may run again after an interrupt). `close_owner` goes on past an
  interrupt, closes in a second round what it left, and raises the interrupt last.
- A finalizer never takes the registry's lock (the collector runs it wherever an
  allocation triggers it, inside a registry operation of the same thread too): one that
  released a handle's resource itself hands the handle to `release_later`, a lock-free
  append, and the next operation that reads or changes the table removes it.
- In a child forked from the process that registered them (`jetstore.io.forks`), an owner's
  handles are let go instead (`forget_owner`): descriptors closed, locks and threads only
  unregistered (an unlock would release the parent's lock; the threads run in the parent).
"""

from __future__ import annotations

import enum
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class HandleKind(enum.StrEnum):
    FILE = "file"
    DIRECTORY = "directory"
    LOCK = "lock"
    THREAD = "thread"
    SOCKET = "socket"


@dataclass(eq=False)
class Handle:
    """One registered OS resource. `close()` releases it once; later calls do nothing."""

    registry: HandleRegistry
    ident: int
    kind: HandleKind
    owner: str
    description: str
    closer: Callable[[], None]
    #: True from the moment a `close()` claimed the handle (a concurrent close does nothing).
    closed: bool = field(default=False)
    #: The thread running the closer, until it returned (None: nobody is closing it).
    closing_thread: int | None = field(default=None)

    def close(self) -> None:
        me = threading.get_ident()
        registry = self.registry
        # The claim is inside the `try`, and whether it happened is read from the handle,
        # not from a local: CPython runs signal handlers after a call returns, before its
        # result is stored, so an interrupt right after the claim must still be seen.
        try:
            if registry._claim(self, me):
                self.closer()
        except Exception:
            registry._closed(self, me)
            raise
        except BaseException:
            registry._give_back(self, me)
            raise
        registry._closed(self, me)


class HandleRegistry:
    """Thread-safe table of open handles. One per instance; `DEFAULT_REGISTRY` for tools."""

    def __init__(self, name: str = "process") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._handles: dict[int, Handle] = {}
        self._ids = itertools.count(1)
        self.opened_total = 0
        self.closed_total = 0
        #: Handles whose resource a finalizer released (`release_later`), to be removed
        #: from the table by the next operation, under the lock.
        self._released_later: list[Handle] = []

    def register(
        self,
        kind: HandleKind,
        owner: str,
        description: str,
        closer: Callable[[], None],
        *,
        taking: list[Any] | None = None,
    ) -> Handle:
        """Register a handle; `taking`, the list in which its creator holds the raw resource
        (a descriptor), is emptied in the same step: whatever is still in it after an
        interrupt was not registered and is the creator's to release."""
        with self._lock:
            if self._released_later:
                self._remove_released()
            handle = Handle(self, next(self._ids), kind, owner, description, closer)
            # No call between the store and the `clear` (CPython runs a signal handler only
            # after a call returns): the resource is in the table or in the list, never both
            # and never neither.
            self._handles[handle.ident] = handle
            self.opened_total += 1
            if taking is not None:
                taking.clear()
            return handle

    def release_later(self, handle: Handle) -> None:
        """From a finalizer that released `handle`'s resource itself: no lock is taken here
        (`list.append` is one C call, atomic under the GIL); the handle leaves the table, as
        closed, at the next `register`, `counts` or `open_handles` (so `close_owner`)."""
        self._released_later.append(handle)

    def _remove_released(self) -> None:
        """Under the lock: remove the handles `release_later` was given."""
        released = self._released_later
        while released:
            handle = released.pop()
            # One a close() claimed meanwhile is that close's to remove (`_closed`).
            if not handle.closed and self._handles.pop(handle.ident, None) is not None:
                handle.closed = True
                self.closed_total += 1

    def _claim(self, handle: Handle, thread: int) -> bool:
        """Mark `handle` closed for `thread`; True if this call is the one that must run its
        closer. It stays in the table (and counted) until `_closed`."""
        with self._lock:
            if handle.closed:
                return False
            handle.closed = True
            handle.closing_thread = thread
            return True

    def _closed(self, handle: Handle, thread: int) -> None:
        """The closer `thread` ran for `handle` returned or failed: the handle is gone."""
        with self._lock:
            if handle.closing_thread != thread:
                return  # not this thread's claim (another close, or none at all)
            handle.closing_thread = None
            if self._handles.pop(handle.ident, None) is not None:
                self.closed_total += 1

    def _give_back(self, handle: Handle, thread: int) -> None:
        """`thread`'s closer of `handle` was interrupted (or never started): it is open again,
        for the next `close()` to run the closer once more."""
        with self._lock:
            if handle.closing_thread != thread:
                return
            handle.closing_thread = None
            if handle.ident in self._handles:
                handle.closed = False

    def _unregister(self, handle: Handle) -> bool:
        """Mark `handle` closed; True if this call is the one that must run its closer."""
        with self._lock:
            if handle.closed:
                return False
            handle.closed = True
            del self._handles[handle.ident]
            self.closed_total += 1
            return True

    def counts(self, owner: str | None = None) -> dict[str, int]:
        """Open handles by kind (every kind present, zero included)."""
        with self._lock:
            if self._released_later:
                self._remove_released()
            result = {kind.value: 0 for kind in HandleKind}
            for handle in self._handles.values():
                if owner is None or handle.owner == owner or handle.owner.startswith(owner + "/"):
                    result[handle.kind.value] += 1
            return result

    def total(self, owner: str | None = None) -> int:
        return sum(self.counts(owner).values())

    def open_handles(self, owner: str | None = None) -> list[Handle]:
        with self._lock:
            if self._released_later:
                self._remove_released()
            return [
                h
                for h in self._handles.values()
                if owner is None or h.owner == owner or h.owner.startswith(owner + "/")
            ]

    def close_owner(self, owner: str) -> list[BaseException]:
        """Close every handle of `owner` (and its sub-owners `owner/...`), newest first.

        Returns the errors raised by closers instead of stopping at the first one: a cleanup
        path must release everything it can. An interrupt (a BaseException that is not an
        Exception: Ctrl-C) does not stop it either: a second round closes what it left (an
        interrupted closer gives its handle back, see `Handle.close`), and the first
        interrupt is raised at the end. An interrupt in the second round leaves the rest
        registered, for the next cleanup.
        """
        errors: list[BaseException] = []
        interrupt: BaseException | None = None
        # A second round for what an interrupt kept from closing: the handle whose closer it
        # cut (given back open), the ones after it, or all of them when it came while the
        # list was being taken (a signal handler runs wherever a call returns).
        for _round in range(2):
            try:
                for handle in sorted(self.open_handles(owner), key=lambda h: -h.ident):
                    try:
                        handle.close()
                    except Exception as exc:  # keep closing the rest; report all
                        errors.append(exc)
            except Exception:
                raise  # not from a closer (those are caught above): a bug, say it
            except BaseException as exc:
                interrupt = interrupt or exc
                continue
            break
        if interrupt is not None:
            raise interrupt
        return errors

    def forget_owner(self, owner: str) -> None:
        """In a forked child: let go of every handle of `owner` (and its sub-owners).

        The child's copies of file, directory and socket descriptors are closed (that touches
        nothing of the parent's); locks and threads are unregistered without running their
        closers: an flock belongs to the open file description parent and child share, so an
        unlock here would release the parent's lock, and the threads exist in the parent only.
        An interrupt (Ctrl-C reaches the child too) does not stop it: a copy left open would
        keep the parent's flock held (it belongs to the open file description both share)
        for as long as the child lives; the interrupt is raised at the end.
        """
        interrupt: BaseException | None = None
        for handle in sorted(self.open_handles(owner), key=lambda h: -h.ident):
            if not self._unregister(handle):
                continue
            if handle.kind in (HandleKind.LOCK, HandleKind.THREAD):
                continue
            try:
                handle.closer()
            except Exception:
                pass  # a descriptor this process cannot close is not the parent's concern
            except BaseException as exc:
                interrupt = interrupt or exc
        if interrupt is not None:
            raise interrupt


#: Numbers the uses that close their handles by owner (`use_owner`).
_USES = itertools.count(1)


def use_owner(owner: str) -> str:
    """A sub-owner of `owner` for one use that ends with `close_owner` of it: an operation
    that closed `owner` itself closed every concurrent use's handles too (two threads
    diagnosing, checksumming or verifying a backup set with the same owner label: the first
    to end closed the files the other was reading). `close_owner(owner)` still reaches it."""
    return f"{owner}/{next(_USES)}"


def release_all(*steps: Callable[[], object] | None) -> None:
    """Run every step of a cleanup (None: nothing to do), each one even when an earlier one
    raised; then raise the first error, or the first interrupt if there was one (it must
    reach the application even after an engine error).

    A step interrupted (Ctrl-C: a BaseException that is not an Exception) is run once more,
    as `close_owner` does with a closer: one interrupt never skips a release, so every step
    must be safe to run again (idempotent).
    """
    first: BaseException | None = None
    for step in steps:
        if step is None:
            continue
        for _attempt in range(2):
            try:
                step()
                break
            except Exception as exc:
                first = first or exc
                break
            except BaseException as exc:
                if first is None or isinstance(first, Exception):
                    first = exc
    if first is not None:
        raise first


DEFAULT_REGISTRY = HandleRegistry("default")

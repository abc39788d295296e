"""Engine threads, registered in the handle registry and stopped deterministically.

A `ManagedThread` runs `target(stop_event)`; `close()` sets the event, calls `wake` (so a
thread sleeping on some other event notices at once) and joins the thread, so an instance that
closes leaves no thread behind. A thread that dies of an exception records it
in `error` (the owner decides what it means) instead of printing a traceback.

Invariants:
- A running thread is a root for the garbage collector: whatever its target references stays
  alive. So an engine thread reaches the object that owns it (the `Instance` the application
  holds) only through a `WeakOwner`, never strongly: when the application drops its last
  reference, the owner is collected and its finalizer runs, although its threads still run
  (`jetstore.instance.unclosed`).
- A thread never joins itself: `close()` from the thread's own code (an owner shut down by its
  own background thread) stops and unregisters it, and the thread ends when its target returns.
- `run_out_of_reach` runs a call that an interrupt would leave half done in a thread of its
  own: Python raises a signal handler's exception (KeyboardInterrupt) in the main thread only.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Concatenate, Generic, ParamSpec, TypeVar

from jetstore.errors import OutOfThreads
from jetstore.io.handles import HandleKind, HandleRegistry, use_owner

T = TypeVar("T")
P = ParamSpec("P")


class WeakOwner(Generic[T]):
    """How an engine thread (or a callback an engine thread calls) reaches its owner without
    keeping it alive.

    One object shared by every thread-side user of an owner, so that an owner resurrected by
    its finalizer (whose weak references the collector cleared first) makes all of them see
    it again with one `rebind`.
    """

    __slots__ = ("_ref",)

    def __init__(self, owner: T) -> None:
        self._ref: weakref.ref[T] = weakref.ref(owner)

    def get(self) -> T | None:
        """The owner, or None once it was collected."""
        return self._ref()

    def rebind(self, owner: T) -> None:
        """Point at `owner` again (from its finalizer, which keeps it alive to shut it down)."""
        self._ref = weakref.ref(owner)

    def bind(self, function: Callable[Concatenate[T, P], None]) -> Callable[P, None]:
        """`function(owner, ...)` as a callback that holds the owner weakly; once the owner is
        gone the call does nothing (nothing is left to tell)."""

        def call(*args: P.args, **kwargs: P.kwargs) -> None:
            owner = self._ref()
            if owner is not None:
                function(owner, *args, **kwargs)

        return call


class ManagedThread:
    def __init__(
        self,
        registry: HandleRegistry,
        owner: str,
        name: str,
        target: Callable[[threading.Event], None],
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._wake = wake
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self._target = target
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._handle = registry.register(HandleKind.THREAD, owner, name, self._join)
        try:
            self._thread.start()
        except RuntimeError as exc:  # "can't start new thread"
            # No thread exists: the handle must not count one, and its closer would raise
            # (a thread cannot be joined before it is started). Unregistered without it. (An
            # interrupt in `start` is left alone: the thread may be running by then.)
            registry._unregister(self._handle)
            raise OutOfThreads(f"cannot start thread {name!r} of {owner!r}: {exc}") from exc

    def _run(self) -> None:
        try:
            self._target(self.stop_event)
        except BaseException as exc:
            self.error = exc

    def _join(self) -> None:
        self.stop_event.set()
        if self._wake is not None:
            self._wake()  # a thread sleeping on its own event must see the stop at once
        if threading.current_thread() is not self._thread:
            self._thread.join()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def is_current(self) -> bool:
        """True when called from this thread's own code."""
        return threading.current_thread() is self._thread

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end by itself, without stopping it; True once it ended."""
        if not self.is_current:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        self._handle.close()


def run_out_of_reach(
    registry: HandleRegistry, owner: str, name: str, call: Callable[[], T]
) -> tuple[T, BaseException | None]:
    """`call()` run by a thread of its own, out of a Ctrl-C's reach; returns its result and
    the interrupt that arrived while it ran (None if none did), for the caller to raise once
    it is done with the result. The call's own exception is raised.

    For work that an interrupt leaves in a state nothing can finish or undo, which fails the
    instance: a flush that renames (a log roll), a checkpoint once its plan gave pages.
    Python raises a signal handler's exception (KeyboardInterrupt) in the main thread only:
    it lands in the wait here, which goes on until the call ended. The wait is on an event,
    not `Thread.join`: an interrupted join (3.11) marks the thread ended while it runs
    (bpo-45274's clean-up), and the next join returns at once.

    The thread begins the call only once it is told to (`go`), after its start returned
    here: an interrupt during the start (`Thread.start` waits for the thread, in Python)
    cancels a call that has not begun, instead of leaving it running unwaited for. The
    thread is registered under a sub-owner of `owner`, closed (joined) on every way out.
    Without a thread to spare (`OutOfThreads`) the call runs in the caller's, as it did.
    """
    use = use_owner(owner)
    outcome: list[T] = []
    done = threading.Event()
    go = threading.Event()
    cancelled: list[bool] = []
    failure: list[BaseException] = []

    def run(_stop: threading.Event) -> None:
        go.wait()
        if cancelled:
            return
        try:
            outcome.append(call())
        except BaseException as exc:
            failure.append(exc)
        finally:
            done.set()

    interrupted: BaseException | None = None
    try:
        ManagedThread(registry, use, name, run)
        go.set()
    except OutOfThreads:
        return call(), None
    except Exception:
        raise
    except BaseException as exc:
        if not go.is_set():
            cancelled.append(True)
            go.set()
            registry.close_owner(use)
            raise
        interrupted = exc
    while not done.is_set():
        try:
            done.wait()
        except Exception:
            raise
        except BaseException as exc:
            interrupted = interrupted or exc
    registry.close_owner(use)  # joins the thread, which ended its call
    if failure:
        raise failure[0]
    return outcome[0], interrupted

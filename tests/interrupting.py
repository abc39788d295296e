"""Interrupts forced at chosen points, for the tests that check nothing is left open: a
KeyboardInterrupt where a signal handler could raise it (as a call returns, at a call of a
patched function), and the end of an interval timer's storm of them."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest

from jetstore.io.files import FileSystem


@contextmanager
def interrupt_as_call_returns(
    function: Callable[..., Any], when: Callable[[dict[str, Any]], bool]
) -> Iterator[None]:
    """KeyboardInterrupt as the first call of `function` whose arguments (its frame's
    locals) satisfy `when` returns (a signal handler runs where a call returns)."""
    code = function.__code__
    fired = False

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal fired
        if event == "return" and not fired and when(frame.f_locals):
            fired = True
            raise KeyboardInterrupt
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        return local if frame.f_code is code else None

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(None)
    assert fired


@contextmanager
def interrupt_at_return(
    within: Callable[..., Any], point: int, *, own_returns: bool = True
) -> Iterator[list[bool]]:
    """KeyboardInterrupt as the `point`-th (from 1) function return inside the calls of
    `within` (their own returns too, unless `own_returns` is False: those land in the
    caller), counting every Python function they run: a sweep of point = 1, 2, ... until it
    no longer fires interrupts them wherever a signal handler could run after a call. The
    list yielded holds True once it fired."""
    code = within.__code__
    seen = 0
    inside = 0  # frames of `within` running
    fired: list[bool] = []

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal seen, inside
        if event == "return":
            if frame.f_code is code:
                inside -= 1
                if not own_returns:
                    return local
            seen += 1
            if seen == point and not fired:
                fired.append(True)
                raise KeyboardInterrupt("Ctrl-C")
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
        nonlocal inside
        if frame.f_code is code:
            inside += 1
        return local if inside else None

    sys.settrace(tracer)
    try:
        yield fired
    finally:
        sys.settrace(None)


def interrupt_as_open_returns(suffix: str) -> Any:
    """KeyboardInterrupt as the first `FileSystem.open` of a path ending in `suffix` returns
    its file."""
    return interrupt_as_call_returns(
        FileSystem.open, lambda args: str(args["path"]).endswith(suffix)
    )


def interrupt_once(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    when: Callable[..., bool] | None = None,
    *,
    after: bool = False,
) -> list[bool]:
    """Make `owner.name` raise KeyboardInterrupt at its first call (for which `when(*args)`
    holds), as a Ctrl-C delivered there would; later calls run the original. With `after`,
    the original runs first and its result is lost, as when the Ctrl-C lands as the call
    returns, before the caller stored the result. The list returned holds True once it
    fired."""
    original = getattr(owner, name)
    fired: list[bool] = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        if not fired and (when is None or when(*args)):
            fired.append(True)
            if after:
                original(*args, **kwargs)
            raise KeyboardInterrupt("Ctrl-C")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    return fired


@contextmanager
def ctrl_c_to_the_main_thread(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    when: Callable[..., bool] | None = None,
) -> Iterator[list[bool]]:
    """A real SIGINT sent to the main thread at the first call of `owner.name` (for which
    `when(*args)` holds), as a Ctrl-C pressed then. Called in the main thread, the handler's
    KeyboardInterrupt lands there, before the original runs; called in another thread (the
    engine runs the work out of the interrupt's reach), the call waits until the main thread
    took it, then runs the original. The list yielded holds True once it was sent."""
    received = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        received.set()
        raise KeyboardInterrupt("Ctrl-C")

    original = getattr(owner, name)
    sent: list[bool] = []

    def sending(*args: Any, **kwargs: Any) -> Any:
        if not sent and (when is None or when(*args)):
            sent.append(True)
            main = threading.main_thread().ident or 0
            signal.pthread_kill(main, signal.SIGINT)
            if threading.current_thread() is not threading.main_thread():
                # A signal that lands as the main thread is about to block (its lock wait
                # released the GIL, not yet in sem_wait) runs no handler until something
                # wakes it, as for a real Ctrl-C (one presses it again): so is this one.
                for _attempt in range(40):
                    if received.wait(0.25):
                        break
                    signal.pthread_kill(main, signal.SIGINT)
                assert received.is_set(), "the main thread did not take the SIGINT"
        return original(*args, **kwargs)

    previous = signal.signal(signal.SIGINT, handler)
    monkeypatch.setattr(owner, name, sending)
    try:
        yield sent
    finally:
        monkeypatch.setattr(owner, name, original)
        signal.signal(signal.SIGINT, previous)


def stop_interval_timer(previous: Any) -> None:
    """Stop an ITIMER_REAL storm of SIGALRM and give the signal back to `previous` (pytest-
    timeout's handler, say). A signal the timer raised just before it stopped may still be on
    its way to another thread of the process (an xdist worker has one); reaching `previous`
    after the handler was restored, it read as that handler's own alarm (a false "Timeout").
    So the signal is ignored for a moment first: the kernel drops what is still pending."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(0.01)
    signal.signal(signal.SIGALRM, previous)

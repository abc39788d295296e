"""ManagedThread: runs target(stop_event), registered until closed, stopped promptly."""

from __future__ import annotations

import threading
import time

import pytest

import jetstore.errors
from jetstore.io.handles import HandleKind, HandleRegistry
from jetstore.io.threads import ManagedThread

THREAD = HandleKind.THREAD.value


@pytest.fixture
def registry() -> HandleRegistry:
    return HandleRegistry("threads-test")


def test_target_runs_with_the_stop_event(registry: HandleRegistry) -> None:
    received: list[threading.Event] = []
    names: list[str] = []
    done = threading.Event()

    def target(stop: threading.Event) -> None:
        received.append(stop)
        names.append(threading.current_thread().name)
        done.set()

    t = ManagedThread(registry, "inst/bg", "worker-1", target)
    assert done.wait(5)
    assert received == [t.stop_event]
    assert names == ["worker-1"]
    assert t.name == "worker-1"
    # finished on its own, but still counted until closed
    deadline = time.monotonic() + 5
    while t.alive and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not t.alive
    assert registry.counts("inst")[THREAD] == 1
    t.close()
    assert registry.counts("inst")[THREAD] == 0
    assert t.error is None


def test_close_stops_a_loop_on_the_stop_event(registry: HandleRegistry) -> None:
    started = threading.Event()
    iterations = []

    def target(stop: threading.Event) -> None:
        started.set()
        while not stop.wait(0.001):
            iterations.append(1)

    t = ManagedThread(registry, "inst", "loop", target)
    assert started.wait(5)
    assert t.alive
    assert registry.counts("inst")[THREAD] == 1
    assert registry.open_handles("inst")[0].description == "loop"
    t.close()
    assert not t.alive  # close joins
    assert t.stop_event.is_set()
    assert registry.total() == 0
    assert t.error is None


def test_wake_interrupts_a_thread_sleeping_on_another_event(registry: HandleRegistry) -> None:
    own_event = threading.Event()
    started = threading.Event()
    woken_by: list[bool] = []

    def target(stop: threading.Event) -> None:
        started.set()
        while not stop.is_set():
            own_event.wait(10)  # a long sleep on its own event
            own_event.clear()
        woken_by.append(stop.is_set())

    t = ManagedThread(registry, "inst", "sleeper", target, wake=own_event.set)
    assert started.wait(5)
    time.sleep(0.02)  # let it go to sleep
    begin = time.monotonic()
    t.close()
    elapsed = time.monotonic() - begin
    assert elapsed < 5
    assert not t.alive
    assert woken_by == [True]
    assert registry.total() == 0


def test_close_is_idempotent(registry: HandleRegistry) -> None:
    wakes: list[int] = []

    def target(stop: threading.Event) -> None:
        stop.wait(30)

    t = ManagedThread(registry, "inst", "idem", target, wake=lambda: wakes.append(1))
    t.close()
    t.close()
    t.close()
    assert wakes == [1]
    assert not t.alive
    assert registry.opened_total == 1
    assert registry.closed_total == 1


def test_exception_in_target_is_stored(registry: HandleRegistry) -> None:
    boom = ValueError("boom")

    def target(stop: threading.Event) -> None:
        raise boom

    t = ManagedThread(registry, "inst", "crasher", target)
    deadline = time.monotonic() + 5
    while t.alive and time.monotonic() < deadline:
        time.sleep(0.001)
    assert t.error is boom
    assert registry.counts("inst")[THREAD] == 1  # a dead thread stays counted until closed
    t.close()
    assert t.error is boom
    assert registry.total() == 0


def test_base_exception_in_target_is_stored(registry: HandleRegistry) -> None:
    def target(stop: threading.Event) -> None:
        raise SystemExit(3)

    t = ManagedThread(registry, "inst", "exiter", target)
    t.close()
    assert isinstance(t.error, SystemExit)


def test_close_from_inside_the_thread_does_not_deadlock(registry: HandleRegistry) -> None:
    holder: list[ManagedThread] = []
    ready = threading.Event()
    closed_inside = threading.Event()

    def target(stop: threading.Event) -> None:
        ready.wait(5)
        holder[0].close()
        closed_inside.set()

    t = ManagedThread(registry, "inst", "self-closer", target)
    holder.append(t)
    ready.set()
    assert closed_inside.wait(5)
    assert t.error is None
    assert registry.total() == 0
    t.close()


def test_close_owner_stops_every_thread(registry: HandleRegistry) -> None:
    threads = [
        ManagedThread(registry, f"inst/{i}", f"w{i}", lambda stop: stop.wait(30)) for i in range(5)
    ]
    assert registry.counts("inst")[THREAD] == 5
    assert registry.close_owner("inst") == []
    assert not any(t.alive for t in threads)
    assert registry.total() == 0


def test_a_thread_that_cannot_start_leaves_no_handle(
    registry: HandleRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect: the handle was registered before `Thread.start()`, and a start that failed
    # ("can't start new thread": a thread limit, no memory) left it registered: a thread
    # counted as open that never existed, whose close then raised RuntimeError (a thread
    # cannot be joined before it is started) from the owner's cleanup. Now the failed start
    # unregisters it and raises the JetError of a resource that ran out.
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(jetstore.errors.JetError) as caught:
        ManagedThread(registry, "inst/bg", "never", lambda stop: None)
    assert caught.value.category == "resource" and "never" in caught.value.detail
    assert registry.counts()[THREAD] == 0
    assert registry.close_owner("inst") == []

"""The handle registry: exact counts by kind and owner, idempotent close, close_owner."""

from __future__ import annotations

import threading

import pytest

from jetstore.io.handles import DEFAULT_REGISTRY, Handle, HandleKind, HandleRegistry, release_all

ALL_KINDS = {kind.value for kind in HandleKind}


def zero_counts() -> dict[str, int]:
    return dict.fromkeys(ALL_KINDS, 0)


def counting_closer(log: list[str], name: str):
    def closer() -> None:
        log.append(name)

    return closer


def test_default_registry_is_a_registry() -> None:
    assert isinstance(DEFAULT_REGISTRY, HandleRegistry)


def test_empty_registry_reports_every_kind_as_zero() -> None:
    registry = HandleRegistry("t")
    assert registry.counts() == zero_counts()
    assert registry.counts("nobody") == zero_counts()
    assert registry.total() == 0
    assert registry.opened_total == 0
    assert registry.closed_total == 0
    assert registry.open_handles() == []


def test_register_counts_by_kind_and_owner() -> None:
    registry = HandleRegistry("t")
    log: list[str] = []
    registry.register(HandleKind.FILE, "a", "f1", counting_closer(log, "f1"))
    registry.register(HandleKind.FILE, "a", "f2", counting_closer(log, "f2"))
    registry.register(HandleKind.LOCK, "a", "l1", counting_closer(log, "l1"))
    registry.register(HandleKind.THREAD, "b", "t1", counting_closer(log, "t1"))
    registry.register(HandleKind.DIRECTORY, "c", "d1", counting_closer(log, "d1"))

    expected_all = zero_counts() | {"file": 2, "lock": 1, "thread": 1, "directory": 1}
    assert registry.counts() == expected_all
    assert registry.counts("a") == zero_counts() | {"file": 2, "lock": 1}
    assert registry.counts("b") == zero_counts() | {"thread": 1}
    assert registry.counts("c") == zero_counts() | {"directory": 1}
    assert registry.total() == 5
    assert registry.total("a") == 3
    assert registry.total("zzz") == 0
    assert registry.opened_total == 5
    assert registry.closed_total == 0
    assert log == []  # registering never runs a closer


def test_sub_owners_are_counted_under_their_parent_only() -> None:
    registry = HandleRegistry("t")
    registry.register(HandleKind.FILE, "inst", "root", lambda: None)
    registry.register(HandleKind.FILE, "inst/log", "log", lambda: None)
    registry.register(HandleKind.THREAD, "inst/log/flusher", "thr", lambda: None)
    # Same prefix but not a sub-owner: "instance" is not "inst/...".
    registry.register(HandleKind.FILE, "instance", "other", lambda: None)
    registry.register(HandleKind.FILE, "inst2/x", "other2", lambda: None)

    assert registry.counts("inst") == zero_counts() | {"file": 2, "thread": 1}
    assert registry.counts("inst/log") == zero_counts() | {"file": 1, "thread": 1}
    assert registry.counts("inst/log/flusher") == zero_counts() | {"thread": 1}
    assert registry.counts("instance") == zero_counts() | {"file": 1}
    assert registry.counts("inst/lo") == zero_counts()
    assert {h.description for h in registry.open_handles("inst")} == {"root", "log", "thr"}
    assert {h.description for h in registry.open_handles()} == {
        "root",
        "log",
        "thr",
        "other",
        "other2",
    }


def test_close_unregisters_and_runs_closer_once() -> None:
    registry = HandleRegistry("t")
    log: list[str] = []
    handle = registry.register(HandleKind.FILE, "a", "f", counting_closer(log, "f"))
    other = registry.register(HandleKind.FILE, "a", "g", counting_closer(log, "g"))
    assert isinstance(handle, Handle)
    assert not handle.closed
    assert handle.kind is HandleKind.FILE and handle.owner == "a" and handle.description == "f"

    handle.close()
    assert handle.closed
    assert log == ["f"]
    assert registry.counts("a") == zero_counts() | {"file": 1}
    assert registry.open_handles() == [other]
    assert registry.opened_total == 2
    assert registry.closed_total == 1

    handle.close()
    handle.close()
    assert log == ["f"]
    assert registry.closed_total == 1
    assert registry.total() == 1


def test_handle_ids_are_unique() -> None:
    registry = HandleRegistry("t")
    handles = [registry.register(HandleKind.FILE, "a", str(i), lambda: None) for i in range(50)]
    assert len({h.ident for h in handles}) == 50


def test_closer_that_raises_still_leaves_handle_closed() -> None:
    registry = HandleRegistry("t")

    def bad() -> None:
        raise RuntimeError("boom")

    handle = registry.register(HandleKind.FILE, "a", "f", bad)
    with pytest.raises(RuntimeError, match="boom"):
        handle.close()
    assert handle.closed
    assert registry.total() == 0
    handle.close()  # second close: nothing runs, nothing raises
    assert registry.closed_total == 1


def race_to_close(threads: int) -> tuple[int, HandleRegistry]:
    registry = HandleRegistry("t")
    calls: list[int] = []
    calls_lock = threading.Lock()

    def closer() -> None:
        with calls_lock:
            calls.append(1)

    handle = registry.register(HandleKind.FILE, "a", "f", closer)
    barrier = threading.Barrier(threads)

    def race() -> None:
        barrier.wait()
        handle.close()

    workers = [threading.Thread(target=race) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(5)
    return len(calls), registry


def test_concurrent_close_runs_closer_exactly_once() -> None:
    for _round in range(100):
        calls, registry = race_to_close(4)
        assert calls == 1
        assert registry.closed_total == 1
        assert registry.total() == 0


def test_concurrent_register_and_close_keep_counts_exact() -> None:
    registry = HandleRegistry("t")

    def worker(n: int) -> None:
        for i in range(200):
            h = registry.register(HandleKind.FILE, f"w{n}", str(i), lambda: None)
            if i % 2 == 0:
                h.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert registry.opened_total == 800
    assert registry.closed_total == 400
    assert registry.total() == 400
    for n in range(4):
        assert registry.counts(f"w{n}")["file"] == 100


def test_close_owner_closes_newest_first_including_sub_owners() -> None:
    registry = HandleRegistry("t")
    log: list[str] = []
    for name, owner in [
        ("1", "inst"),
        ("2", "inst/log"),
        ("x", "other"),
        ("3", "inst"),
        ("4", "inst/log/flusher"),
        ("y", "instance"),
    ]:
        registry.register(HandleKind.FILE, owner, name, counting_closer(log, name))

    assert registry.close_owner("inst") == []
    assert log == ["4", "3", "2", "1"]
    assert registry.total("inst") == 0
    assert {h.description for h in registry.open_handles()} == {"x", "y"}
    assert registry.closed_total == 4
    # Nothing left: a second call does nothing.
    assert registry.close_owner("inst") == []
    assert log == ["4", "3", "2", "1"]


def test_close_owner_keeps_going_past_errors() -> None:
    registry = HandleRegistry("t")
    log: list[str] = []
    first = RuntimeError("first")
    second = OSError(5, "second")

    def raiser(exc: BaseException, name: str):
        def closer() -> None:
            log.append(name)
            raise exc

        return closer

    registry.register(HandleKind.FILE, "o", "a", counting_closer(log, "a"))
    registry.register(HandleKind.LOCK, "o", "b", raiser(first, "b"))
    registry.register(HandleKind.FILE, "o/sub", "c", counting_closer(log, "c"))
    registry.register(HandleKind.THREAD, "o", "d", raiser(second, "d"))
    registry.register(HandleKind.FILE, "o", "e", counting_closer(log, "e"))

    errors = registry.close_owner("o")
    assert log == ["e", "d", "c", "b", "a"]
    assert errors == [second, first]  # in closing order
    assert registry.total() == 0
    assert registry.counts("o") == zero_counts()
    assert registry.opened_total == 5
    assert registry.closed_total == 5


def test_close_owner_skips_already_closed_handles() -> None:
    registry = HandleRegistry("t")
    log: list[str] = []
    a = registry.register(HandleKind.FILE, "o", "a", counting_closer(log, "a"))
    registry.register(HandleKind.FILE, "o", "b", counting_closer(log, "b"))
    a.close()
    assert registry.close_owner("o") == []
    assert log == ["a", "b"]
    assert registry.closed_total == 2


def test_close_owner_goes_on_past_an_interrupt_and_raises_it_last() -> None:
    """Ctrl-C in one closer (a thread join, a file's close) stopped `close_owner` there: the
    handles after it stayed open and the interrupted one was unregistered unclosed. Now every
    handle is closed, the interrupted one on a second try, and the interrupt comes last."""
    registry = HandleRegistry("t")
    log: list[str] = []
    interrupts = [KeyboardInterrupt("Ctrl-C")]

    def interrupted_once() -> None:
        log.append("b")
        if interrupts:
            raise interrupts.pop()

    registry.register(HandleKind.FILE, "o", "a", counting_closer(log, "a"))
    registry.register(HandleKind.THREAD, "o", "b", interrupted_once)
    registry.register(HandleKind.FILE, "o", "c", counting_closer(log, "c"))

    with pytest.raises(KeyboardInterrupt):
        registry.close_owner("o")
    assert log == ["c", "b", "b", "a"]  # a second round, from the interrupted one on
    assert registry.total() == 0
    assert registry.closed_total == 3


def test_a_closer_interrupted_twice_leaves_its_handle_open_for_the_next_close() -> None:
    registry = HandleRegistry("t")
    interrupts = [KeyboardInterrupt("again"), KeyboardInterrupt("Ctrl-C")]
    joined: list[bool] = []

    def join() -> None:
        if interrupts:
            raise interrupts.pop()
        joined.append(True)

    handle = registry.register(HandleKind.THREAD, "o", "t", join)
    registry.register(HandleKind.FILE, "o", "f", lambda: None)
    with pytest.raises(KeyboardInterrupt, match="Ctrl-C"):
        registry.close_owner("o")
    # Still counted: the thread it stands for was never joined.
    assert registry.counts("o") == zero_counts() | {"thread": 1}
    assert not handle.closed
    assert registry.close_owner("o") == []
    assert joined == [True]
    assert registry.total() == 0 and handle.closed


def test_an_interrupt_between_the_claim_and_the_closer_loses_no_handle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A signal handler runs after a call returns, before its result is used: an interrupt
    right after the handle was marked closed must not leave it closed with its closer never
    run (a descriptor nobody would ever close)."""
    registry = HandleRegistry("t")
    log: list[str] = []
    handle = registry.register(HandleKind.FILE, "o", "f", counting_closer(log, "f"))
    claim = HandleRegistry._claim

    def claim_then_interrupt(self: HandleRegistry, h: Handle, thread: int) -> bool:
        claim(self, h, thread)
        raise KeyboardInterrupt("Ctrl-C")

    monkeypatch.setattr(HandleRegistry, "_claim", claim_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        handle.close()
    monkeypatch.undo()
    assert log == [] and not handle.closed and registry.total() == 1
    handle.close()
    assert log == ["f"] and registry.total() == 0


def test_release_all_runs_every_step_retries_an_interrupted_one_and_raises_the_interrupt() -> None:
    log: list[str] = []
    interrupts = [KeyboardInterrupt("Ctrl-C")]
    error = RuntimeError("boom")

    def failing() -> None:
        log.append("a")
        raise error

    def interrupted_once() -> None:
        log.append("b")
        if interrupts:
            raise interrupts.pop()

    with pytest.raises(KeyboardInterrupt):
        release_all(failing, None, interrupted_once, lambda: log.append("c"))
    assert log == ["a", "b", "b", "c"]
    with pytest.raises(RuntimeError, match="boom"):
        release_all(failing, lambda: log.append("d"))
    assert log[-1] == "d"


def test_forget_owner_goes_on_past_an_interrupt() -> None:
    """In a forked child, Ctrl-C in one descriptor's close stopped `forget_owner`: the
    child kept its copies of the rest, the directory lock file's among them, and so held
    the parent's flock (shared open file description) for as long as it lived."""
    registry = HandleRegistry("t")
    log: list[str] = []
    interrupts = [KeyboardInterrupt("Ctrl-C")]

    def interrupted() -> None:
        log.append("b")
        raise interrupts.pop()

    registry.register(HandleKind.FILE, "o", "lock file", counting_closer(log, "a"))
    registry.register(HandleKind.FILE, "o", "b", interrupted)
    registry.register(HandleKind.LOCK, "o", "lock", counting_closer(log, "unlock"))
    with pytest.raises(KeyboardInterrupt):
        registry.forget_owner("o")
    assert log == ["b", "a"]  # the lock's closer never runs in a child
    assert registry.total() == 0


def test_close_owner_interrupted_while_it_takes_its_list_still_closes_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C while `close_owner` took the list of handles to close (a signal handler runs
    wherever a call returns) stopped it before it closed anything: a short use's file
    (`FileSystem.opened`) stayed open for good."""
    registry = HandleRegistry("t")
    log: list[str] = []
    registry.register(HandleKind.FILE, "o", "a", counting_closer(log, "a"))
    registry.register(HandleKind.FILE, "o", "b", counting_closer(log, "b"))
    open_handles = HandleRegistry.open_handles
    fired: list[bool] = []

    def interrupted(self: HandleRegistry, owner: str | None = None) -> list[Handle]:
        if not fired:
            fired.append(True)
            raise KeyboardInterrupt("Ctrl-C")
        return open_handles(self, owner)

    monkeypatch.setattr(HandleRegistry, "open_handles", interrupted)
    with pytest.raises(KeyboardInterrupt):
        registry.close_owner("o")
    assert fired == [True]
    assert log == ["b", "a"]
    assert registry.total() == 0


def test_release_later_removes_the_handle_at_the_next_operation_without_its_closer() -> None:
    # For a finalizer, which must not take the lock: the resource is released already.
    registry = HandleRegistry("t")
    closed: list[str] = []
    handle = registry.register(HandleKind.SOCKET, "o", "s", lambda: closed.append("s"))
    registry.release_later(handle)
    assert registry._handles  # nothing done under the caller's feet
    assert registry.total("o") == 0 and registry.closed_total == 1
    handle.close()  # a later close does nothing: the finalizer released it
    assert closed == [] and registry.closed_total == 1
    other = registry.register(HandleKind.SOCKET, "o", "t", lambda: closed.append("t"))
    other.close()
    registry.release_later(other)  # closed already: not counted twice
    assert registry.open_handles() == [] and registry.closed_total == 2

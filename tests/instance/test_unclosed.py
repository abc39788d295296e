"""Instances the application does not close (`jetstore.instance.unclosed`).

An instance dropped without `close()` used to stay open until the process exited: its
background threads kept it alive, so its directory lock (a reopen in the same process was
refused naming our own pid), descriptors and threads leaked, and lazy commits were lost at
exit. Now it is shut down as `close()` does, after a ResourceWarning; so is an instance still
open at interpreter exit.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import FileAccessDenied, LogWriteFail
from jetstore.format.dbheader import DatabaseState, choose_db_header
from jetstore.instance import unclosed
from jetstore.instance.events import EVENTS
from jetstore.io import FileSystem, IOEvent, locking

# The background thread would flush lazy commits within 50 ms; with an hour, only the
# shutdown can have made them durable.
OPTIONS = {"log_file_size": 64 * 1024, "lazy_flush_interval": 3600.0}


def header_state(path: Path) -> DatabaseState:
    data = path.read_bytes()
    header, _problems = choose_db_header(data[:8192], data[8192:16384], path=str(path))
    return header.state


def open_with_rows(path: Path, durable: int, lazy: int) -> jetstore.Instance:
    """An instance with `durable` rows committed durably, then `lazy` more committed lazily
    (acknowledged, not yet flushed)."""
    instance = jetstore.open(path, **OPTIONS)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    with db.transaction() as txn:
        for i in range(durable):
            txn.table("t").insert({"id": i, "v": "durable"})
    for i in range(durable, durable + lazy):
        txn = db.transaction()
        txn.table("t").insert({"id": i, "v": "lazy"})
        txn.commit(lazy=True)
    if lazy:
        assert instance.log.needs_flush()  # the lazy commits are only in memory so far
    return instance


def rows(instance: jetstore.Instance) -> list[int]:
    with instance.database("main").transaction() as txn:
        return [row["id"] for row in txn.table("t").scan()]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def events_named(path: Path, name: str) -> int:
    text = (path / "events.jsonl").read_text()
    return text.count(f'"name": "{name}"')


@pytest.fixture
def resource_warnings() -> Iterator[list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def not_closed_warnings(caught: list[warnings.WarningMessage], path: Path) -> list[str]:
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, ResourceWarning) and f"instance at {path} " in str(w.message)
    ]


def test_a_dropped_instance_warns_then_shuts_down_cleanly_and_releases_everything(
    tmp_path: Path, resource_warnings: list[warnings.WarningMessage]
) -> None:
    threads, fds = threading.active_count(), open_fds()
    instance = open_with_rows(tmp_path, durable=10, lazy=25)
    registry = instance.registry
    assert registry.counts()["thread"] >= 3  # background, log preparer, control socket
    assert header_state(tmp_path / "main.edb") is DatabaseState.DIRTY
    del instance
    gc.collect()
    assert unclosed.wait_for_shutdowns(30)
    assert not_closed_warnings(resource_warnings, tmp_path) == [
        f"jetstore instance at {tmp_path} was not closed; closing it now — use "
        "`with jetstore.open(...)` or call close()"
    ]
    # What close() leaves: every handle released, no thread, no descriptor, no lock, a clean
    # header, the socket removed, the shutdown in the event log.
    assert registry.counts() == {kind: 0 for kind in registry.counts()}
    assert threading.active_count() == threads
    assert open_fds() == fds
    assert not locking.is_locked(FileSystem(), str(tmp_path))
    assert header_state(tmp_path / "main.edb") is DatabaseState.CLEAN
    assert not (tmp_path / "jetstore.sock").exists()
    assert events_named(tmp_path, "instance_not_closed") == 1
    assert events_named(tmp_path, "instance_stopped") == 1
    with jetstore.open(tmp_path, **OPTIONS) as again:
        assert again.recovery is not None and not again.recovery.needed
        assert rows(again) == list(range(35))  # the lazy commits were flushed


def test_the_directory_of_a_dropped_instance_reopens_at_once_in_the_same_process(
    tmp_path: Path, resource_warnings: list[warnings.WarningMessage]
) -> None:
    """The instance sits in reference cycles, so only the cyclic collector frees it, and in a
    long-running process that may be much later: the reopen does not wait for that (here the
    automatic collector is off), it collects and lets the dropped instance shut down."""
    instance = open_with_rows(tmp_path, durable=3, lazy=4)
    collecting = gc.isenabled()
    gc.disable()
    try:
        del instance
        with jetstore.open(tmp_path, **OPTIONS) as again:
            assert again.recovery is not None and not again.recovery.needed
            assert rows(again) == list(range(7))
    finally:
        if collecting:
            gc.enable()
    assert len(not_closed_warnings(resource_warnings, tmp_path)) == 1


def use_after_the_drop(obj: object) -> list[int]:
    """Write through `obj` (a Database, Transaction or Table); the ids the table then holds
    once `obj` is gone."""
    if isinstance(obj, jetstore.Database):
        with obj.transaction() as writer:
            writer.table("t").insert({"id": 100, "v": "after the drop"})
        return [0, 1, 100]
    if isinstance(obj, jetstore.Transaction):
        obj.table("t").insert({"id": 100, "v": "after the drop"})
        obj.commit()
        return [0, 1, 100]
    assert isinstance(obj, jetstore.Table)
    obj.insert({"id": 100, "v": "uncommitted"})
    assert obj.get(100) == {"id": 100, "v": "uncommitted"}
    return [0, 1]  # its transaction is rolled back when the table goes


def test_an_instance_dropped_while_its_background_thread_is_in_a_round_is_found(
    tmp_path: Path, resource_warnings: list[warnings.WarningMessage]
) -> None:
    """A background round (a lazy flush, a checkpoint) holds the instance strongly: a
    collection during the round does not find it, and the open that collects to reclaim a
    dropped instance used to fail then (FileAccessDenied naming our pid). It waits for the
    round to end first."""
    in_round, resume = threading.Event(), threading.Event()

    def hook(event: IOEvent) -> None:
        if (
            event.op == "fdatasync"
            and event.path.endswith("edb.log")
            and threading.current_thread().name == "jetstore-background"
            and not resume.is_set()
        ):
            in_round.set()  # the lazy flush of the commit below, in the background thread
            resume.wait(30)

    instance = jetstore.open(
        tmp_path,
        filesystem=FileSystem(hook=hook),
        log_file_size=64 * 1024,
        lazy_flush_interval=0.01,
    )
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    txn = db.transaction()
    txn.table("t").insert({"id": 1, "v": "lazy"})
    txn.commit(lazy=True)
    assert in_round.wait(30)
    del instance, db, txn
    gc.collect()  # the background thread holds it: nothing is found
    assert not_closed_warnings(resource_warnings, tmp_path) == []
    threading.Timer(0.3, resume.set).start()
    with jetstore.open(tmp_path, **OPTIONS) as again:  # waits for the round, then finds it
        assert again.recovery is not None and not again.recovery.needed
        assert rows(again) == [1]
    assert len(not_closed_warnings(resource_warnings, tmp_path)) == 1


@pytest.mark.parametrize("kept", ["database", "transaction", "table"])
def test_an_object_the_application_still_holds_keeps_the_instance_open(
    tmp_path: Path, kept: str, resource_warnings: list[warnings.WarningMessage]
) -> None:
    instance = open_with_rows(tmp_path, durable=2, lazy=0)
    db = instance.database("main")
    txn = db.transaction()
    table = txn.table("t")
    held: list[object] = [{"database": db, "transaction": txn, "table": table}[kept]]
    del instance, db, txn, table
    gc.collect()
    assert unclosed.wait_for_shutdowns(30)
    assert not_closed_warnings(resource_warnings, tmp_path) == []
    with pytest.raises(FileAccessDenied) as refused:
        jetstore.open(tmp_path, **OPTIONS)  # the reopen collects, and finds it in use
    assert str(os.getpid()) in str(refused.value)
    # Still fully usable through what the application kept; once that goes too, the
    # instance is shut down.
    expected = use_after_the_drop(held.pop())
    with jetstore.open(tmp_path, **OPTIONS) as again:
        assert rows(again) == expected
    assert len(not_closed_warnings(resource_warnings, tmp_path)) == 1


def test_a_closed_instance_that_is_dropped_is_left_alone(
    tmp_path: Path, resource_warnings: list[warnings.WarningMessage]
) -> None:
    instance = open_with_rows(tmp_path, durable=1, lazy=0)
    instance.close()
    del instance
    gc.collect()
    assert unclosed.wait_for_shutdowns(30)
    assert not_closed_warnings(resource_warnings, tmp_path) == []
    assert events_named(tmp_path, "instance_not_closed") == 0


def test_a_failed_instance_that_is_dropped_releases_everything_and_the_next_open_recovers(
    tmp_path: Path, resource_warnings: list[warnings.WarningMessage]
) -> None:
    instance = open_with_rows(tmp_path, durable=5, lazy=0)
    registry = instance.registry
    instance.fail(LogWriteFail("injected for the test"))  # no clean shutdown is possible
    del instance
    gc.collect()
    assert unclosed.wait_for_shutdowns(30)
    assert len(not_closed_warnings(resource_warnings, tmp_path)) == 1
    assert registry.total() == 0
    assert header_state(tmp_path / "main.edb") is DatabaseState.DIRTY  # nothing pretended
    with jetstore.open(tmp_path, **OPTIONS) as again:
        assert again.recovery is not None and again.recovery.needed
        assert rows(again) == list(range(5))


def test_a_dropped_instance_whose_background_thread_is_gone_is_shut_down_by_the_waiter(
    tmp_path: Path, resource_warnings: list[warnings.WarningMessage]
) -> None:
    """Its background thread is where a dropped instance is shut down; if that thread died
    (an unexpected error ends it), whoever waits for the shutdowns does it."""
    instance = open_with_rows(tmp_path, durable=2, lazy=3)
    background = instance._background
    assert background is not None
    background.close()  # stopped, as a thread that died of an error would be
    assert not background.alive
    del instance
    gc.collect()
    assert unclosed.wait_for_shutdowns(30)
    assert len(not_closed_warnings(resource_warnings, tmp_path)) == 1
    assert header_state(tmp_path / "main.edb") is DatabaseState.CLEAN
    with jetstore.open(tmp_path, **OPTIONS) as again:
        assert rows(again) == list(range(5))


def test_a_collection_inside_engine_code_holding_its_locks_does_not_deadlock(
    tmp_path: Path, resource_warnings: list[warnings.WarningMessage]
) -> None:
    """The collector runs wherever an allocation triggers it, also on an engine thread in
    code that holds the locks a shutdown takes: the handle registry's, the log writer's, the
    event log's, the process-wide table of locked files. A shutdown in the finalizer would
    wait for them on the thread that holds them. The finalizer only hands the instance over;
    its shutdown goes on once they are released."""
    instance = open_with_rows(tmp_path, durable=3, lazy=3)
    locks = [instance.registry._lock, instance.log._lock, instance.events._lock]
    del instance
    collected = threading.Event()
    release = threading.Event()

    def engine_thread() -> None:
        with locks[0], locks[1], locks[2], locking._HELD_LOCK:
            gc.collect()
            collected.set()
            release.wait(30)

    thread = threading.Thread(target=engine_thread)
    thread.start()
    try:
        assert collected.wait(30), "the collection deadlocked in the finalizer"
        assert not unclosed.wait_for_shutdowns(0.5)  # the shutdown waits for the locks
    finally:
        release.set()
        thread.join(30)
    assert unclosed.wait_for_shutdowns(30)
    assert len(not_closed_warnings(resource_warnings, tmp_path)) == 1
    assert header_state(tmp_path / "main.edb") is DatabaseState.CLEAN
    with jetstore.open(tmp_path, **OPTIONS) as again:
        assert rows(again) == list(range(6))


EXIT_SCRIPT = """
import sys, jetstore
instance = jetstore.open(sys.argv[1], log_file_size=65536, lazy_flush_interval=3600.0)
db = instance.database("main", create=True)
db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
for i in range(50):
    txn = db.transaction()
    txn.table("t").insert({"id": i, "v": "lazy"})
    txn.commit(lazy=True)
if sys.argv[2] == "dropped":
    del txn, db, instance
print("acknowledged 50")
"""


@pytest.mark.parametrize("how", ["still referenced", "dropped"])
def test_interpreter_exit_without_close_shuts_the_instance_down_cleanly(
    tmp_path: Path, how: str
) -> None:
    """At normal interpreter exit every instance still open is shut down as close() does:
    lazy commits acknowledged before exit are durable, the headers clean, and no engine
    thread runs into the interpreter's finalization (no traceback)."""
    result = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-c", EXIT_SCRIPT, str(tmp_path), how],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "acknowledged 50\n"
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr
    assert result.stderr.count(f"ResourceWarning: jetstore instance at {tmp_path} was not") == 1
    assert header_state(tmp_path / "main.edb") is DatabaseState.CLEAN
    with jetstore.open(tmp_path, **OPTIONS) as again:
        assert again.recovery is not None and not again.recovery.needed
        assert rows(again) == list(range(50))


def test_a_forked_child_dropping_its_copy_leaves_the_parents_instance_alone(
    tmp_path: Path,
) -> None:
    instance = open_with_rows(tmp_path, durable=3, lazy=0)
    chk = (tmp_path / "edb.chk").read_bytes()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop its copy, collect, run the exit hook, report
        code = 1
        try:
            os.close(read_end)
            del instance
            gc.collect()
            unclosed._close_at_exit()
            os.write(write_end, b"done")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read() == b"done"
    assert os.waitpid(pid, 0)[1] == 0
    # The parent's lock, socket and checkpoint are untouched, and it goes on.
    with pytest.raises(FileAccessDenied):
        jetstore.open(tmp_path, **OPTIONS)
    assert (tmp_path / "jetstore.sock").exists()
    assert (tmp_path / "edb.chk").read_bytes() == chk
    assert events_named(tmp_path, "instance_not_closed") == 0
    with instance.database("main").transaction() as txn:
        txn.table("t").insert({"id": 3, "v": "after the fork"})
    instance.close()
    with jetstore.open(tmp_path, **OPTIONS) as again:
        assert rows(again) == [0, 1, 2, 3]


def test_the_event_is_in_the_table() -> None:
    assert EVENTS[103] == ("instance_not_closed", "warning")


def test_an_interrupt_right_after_collect_took_a_round_lock_leaves_it_free(
    tmp_path: Path,
) -> None:
    """`collect` recorded a round lock it took in a list after `acquire` returned: a Ctrl-C
    landing there (CPython runs handlers after a call returns, before its result is used)
    left the lock held for good, and the instance's background thread waited for it
    forever: close() never returned. A profile function raising KeyboardInterrupt when a C
    call of `collect` returns with the lock held reproduces that moment exactly."""
    instance = jetstore.open(tmp_path, lazy_flush_interval=3600.0)  # no round meanwhile
    lock = instance._round_lock
    fired: list[str] = []

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if (
            event == "c_return"
            and not fired
            and frame.f_code is unclosed.collect.__code__
            and lock.locked()
        ):
            fired.append(arg.__name__)
            raise KeyboardInterrupt("Ctrl-C")

    sys.setprofile(profile)
    try:
        with pytest.raises(KeyboardInterrupt):
            unclosed.collect(timeout=1.0)
    finally:
        sys.setprofile(None)
    assert fired
    assert lock.acquire(timeout=5)
    lock.release()
    closer = threading.Thread(target=instance.close, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive()
    assert instance.state.value == "closed"
    assert fired == ["extend"]  # the lock was taken and recorded in one step


def test_an_interrupt_right_after_a_shutdown_took_the_close_lock_leaves_it_free(
    tmp_path: Path,
) -> None:
    """`close_unreferenced` (the exit hook's and `wait_for_shutdowns`' shutdown) took the
    instance's close lock before its `try`: a Ctrl-C landing right after `acquire` returned
    left it held by that thread for good, and a close() from any other thread (the
    background thread's hand-over, the application's) waited forever."""
    instance = jetstore.open(tmp_path, lazy_flush_interval=3600.0)
    lock = instance._close_lock
    fired: list[str] = []
    shutdown = type(instance).close_unreferenced.__code__

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "c_return" and not fired and frame.f_code is shutdown and lock._is_owned():
            fired.append(arg.__name__)
            raise KeyboardInterrupt("Ctrl-C")

    sys.setprofile(profile)
    try:
        with pytest.raises(KeyboardInterrupt):
            instance.close_unreferenced("a test", wait=True)
    finally:
        sys.setprofile(None)
    assert fired
    closer = threading.Thread(target=instance.close, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive()
    assert instance.state.value == "closed"


def test_an_open_interrupted_while_the_instance_is_built_leaves_nothing_to_shut_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C inside `Instance.__init__` left a half-built instance already in state
    RECOVERING: its finalizer handed it over to be shut down, which failed on attributes
    never set (AttributeError reported as unraisable, and again by the exit hook)."""
    from jetstore.io.threads import WeakOwner

    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    def interrupted(self: WeakOwner[object], owner: object) -> None:
        raise KeyboardInterrupt("Ctrl-C")

    with monkeypatch.context() as patch:
        patch.setattr(WeakOwner, "__init__", interrupted)
        with pytest.raises(KeyboardInterrupt):
            jetstore.open(tmp_path)
    gc.collect()
    assert unclosed.wait_for_shutdowns(5)
    assert unraisable == []
    assert not unclosed._orphans
    with jetstore.open(tmp_path) as again:
        assert again.state.value == "open"

"""The event log (`jetstore.instance.events`): bounded on disk, and a damaged tail left by a
power loss does not swallow the next event."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import InvalidParameter, JetError
from jetstore.instance.events import EventLog, read_event_log, read_events
from jetstore.io import FileSystem, HandleRegistry, IOEvent

SMALL = {"log_file_size": 64 * 1024, "checkpoint_depth": 64 * 1024}


def _event_log(tmp_path: Path, max_bytes: int) -> tuple[EventLog, HandleRegistry]:
    registry = HandleRegistry("events-test")
    return EventLog(FileSystem(registry), str(tmp_path), owner="t", max_bytes=max_bytes), registry


def test_the_event_log_rotates_at_its_size_and_keeps_the_newest_events(tmp_path: Path) -> None:
    log, registry = _event_log(tmp_path, 4096)
    for number in range(200):
        log.emit("checkpoint_written", f"checkpoint {number}", number=number)
    log.close()
    assert registry.total() == 0
    current = tmp_path / "events.jsonl"
    previous = tmp_path / "events.1.jsonl"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.1.jsonl", "events.jsonl"]
    # Each file stays within the bound (a line is never split), so the disk holds at most
    # about twice it however many events were written.
    assert 0 < current.stat().st_size <= 4096
    assert 0 < previous.stat().st_size <= 4096
    numbers = [e["fields"]["number"] for e in read_event_log(FileSystem(), str(tmp_path))]
    # The newest events are all there, oldest first, none twice, the last one included.
    assert numbers == list(range(200 - len(numbers), 200))
    in_current = read_events(FileSystem(), str(current))
    in_previous = read_events(FileSystem(), str(previous))
    assert len(numbers) == len(in_previous) + len(in_current) and in_previous
    # The previous file was full when it was renamed: another event did not fit.
    assert previous.stat().st_size + len(json.dumps(in_current[0])) > 4096


def test_an_event_larger_than_the_bound_is_written_whole(tmp_path: Path) -> None:
    log, _registry = _event_log(tmp_path, 4096)
    log.emit("checkpoint_written", "small")
    log.emit("checkpoint_written", "x" * 10_000)
    log.emit("checkpoint_written", "after")
    log.close()
    messages = [e["message"] for e in read_event_log(FileSystem(), str(tmp_path))]
    assert messages[-2:] == ["x" * 10_000, "after"]


@pytest.mark.parametrize("tail", [b'{"time": "2026-11-', b"\0" * 700])
def test_an_event_after_a_damaged_tail_is_kept(tmp_path: Path, tail: bytes) -> None:
    """A power loss can leave the unsynced event log ending in part of a line, or in NUL
    bytes (the size grew before the data reached the disk). The next open's first event used
    to be appended right after it, on the same line, and no reader could parse it: the event
    saying what recovery did was the one lost."""
    log, _registry = _event_log(tmp_path, 1 << 20)
    log.emit("instance_started", "before")
    log.close()
    with open(tmp_path / "events.jsonl", "ab") as damaged:
        damaged.write(tail)
    log, _registry = _event_log(tmp_path, 1 << 20)
    log.emit("recovery_started", "after the power loss")
    log.emit("recovery_finished", "and the next one")
    log.close()
    names = [e["name"] for e in read_events(FileSystem(), str(tmp_path / "events.jsonl"))]
    assert names == ["instance_started", "recovery_started", "recovery_finished"]


def test_a_failed_rotation_keeps_writing_and_tries_again(tmp_path: Path) -> None:
    fs = FileSystem()
    failures = [True]

    def refuse_first_rename(event: IOEvent) -> None:
        if event.op == "rename" and failures:
            failures.pop()
            raise OSError(16, "Device or resource busy")

    fs.hook = refuse_first_rename
    log = EventLog(fs, str(tmp_path), owner="t", max_bytes=4096)
    for number in range(60):
        log.emit("checkpoint_written", f"checkpoint {number}", number=number)
    log.close()
    assert not failures  # the rename was refused once
    numbers = [e["fields"]["number"] for e in read_event_log(FileSystem(), str(tmp_path))]
    assert numbers == list(range(60 - len(numbers), 60))
    assert (tmp_path / "events.jsonl").stat().st_size <= 4096 + 400


def test_an_instance_bounds_its_event_log(tmp_path: Path) -> None:
    for _ in range(12):
        with jetstore.open(tmp_path, **SMALL, event_log_size=4096) as instance:
            instance.checkpoint()
    assert (tmp_path / "events.jsonl").stat().st_size <= 4096
    assert (tmp_path / "events.1.jsonl").stat().st_size <= 4096
    names = [e["name"] for e in read_event_log(FileSystem(), str(tmp_path))]
    assert names[-1] == "instance_stopped"
    assert names.count("instance_started") >= 2


def test_event_log_size_below_a_page_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="event_log_size 100"):
        jetstore.open(tmp_path, event_log_size=100)
    assert not os.path.exists(tmp_path / "events.jsonl")


def test_events_command_reads_the_rotated_file_first(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from jetstore.cli.main import cli

    log, _registry = _event_log(tmp_path, 4096)
    for number in range(40):
        log.emit("checkpoint_written", f"checkpoint {number}", number=number)
    log.close()
    result = CliRunner().invoke(cli, ["events", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)["result"]
    assert document["files"] == [str(tmp_path / "events.1.jsonl"), str(tmp_path / "events.jsonl")]
    numbers = [e["fields"]["number"] for e in document["events"]]
    assert numbers == list(range(40 - len(numbers), 40)) and len(numbers) > 14
    assert document["total"] == len(numbers)


class _Recording(logging.Handler):
    """Records the events it is given, and runs `act` on each (what an application's
    handler may do)."""

    def __init__(self, act: Callable[[logging.LogRecord], None] | None = None) -> None:
        super().__init__()
        self.names: list[str] = []
        self.threads: set[str] = set()
        self.act = act

    def emit(self, record: logging.LogRecord) -> None:
        self.names.append(getattr(record, "event_name", ""))
        self.threads.add(threading.current_thread().name)
        if self.act is not None:
            self.act(record)


@contextlib.contextmanager
def _handler(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger("jetstore.events")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _interrupted_flush_hook(armed: list[int]) -> Callable[[IOEvent], None]:
    """Two interrupts on the syncs of edb.log once armed: the flush, then its retry (the log
    writer fails for good, `test_a_second_interrupt_while_the_flush_is_redone_fails_the_log`)."""

    def hook(event: IOEvent) -> None:
        if event.op == "fdatasync" and event.path.endswith("edb.log") and armed[0]:
            armed[0] -= 1
            raise KeyboardInterrupt("injected")

    return hook


def test_a_logging_handler_that_closes_the_instance_on_instance_failed_does_not_hang(
    tmp_path: Path,
) -> None:
    """Events reached the `logging` handlers from the thread that emitted them, with the
    engine's locks held: instance_failed is emitted under the commit lock by the commit that
    finds the log failed, and a handler closing the instance there waited for the commit lock
    its own thread held, for ever. The handlers now run on the event log's own thread, which
    holds no engine lock; events reach them in the order of events.jsonl."""
    armed = [0]
    opened: list[jetstore.Instance] = []
    closed = threading.Event()

    def close_on_failure(record: logging.LogRecord) -> None:
        if getattr(record, "event_name", "") == "instance_failed":
            opened[0].close()
            closed.set()

    handler = _Recording(close_on_failure)
    with _handler(handler):
        instance = jetstore.open(
            tmp_path, filesystem=FileSystem(hook=_interrupted_flush_hook(armed)), **SMALL
        )
        opened.append(instance)
        db = instance.database("main", create=True)
        db.create_table("t", [("id", "int")], primary_key="id")
        armed[0] = 2
        with pytest.raises(KeyboardInterrupt), db.transaction() as txn:
            txn.table("t").insert({"id": 1})
        outcome: list[BaseException] = []

        def commit_again() -> None:
            try:
                with db.transaction() as txn:
                    txn.table("t").insert({"id": 2})
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=commit_again, daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), "the commit that found the log failed hung"
        assert outcome and isinstance(outcome[0], JetError), outcome
        assert closed.wait(20), "the handler's close did not return"
        assert instance.wait_closed(20)
        instance.close()  # closed already: returns at once
    assert instance.registry.total() == 0
    assert handler.threads == {"jetstore-events"}
    written = [e["name"] for e in read_event_log(FileSystem(), str(tmp_path))]
    assert "instance_failed" in handler.names
    assert handler.names == written


def test_a_logging_handler_that_raises_does_not_reach_the_engine(tmp_path: Path) -> None:
    """A handler's exception went up through `emit` into the engine (a commit, a checkpoint,
    the open itself). It is dropped now: every record after it is delivered all the same."""

    def refuse(record: logging.LogRecord) -> None:
        raise RuntimeError("a broken handler")

    handler = _Recording(refuse)
    with _handler(handler):
        with jetstore.open(tmp_path, **SMALL) as instance:
            db = instance.database("main", create=True)
            db.create_table("t", [("id", "int")], primary_key="id")
            with db.transaction() as txn:
                txn.table("t").insert({"id": 1})
            instance.checkpoint()
        assert instance.registry.total() == 0
    written = [e["name"] for e in read_event_log(FileSystem(), str(tmp_path))]
    assert handler.names == written and written[-1] == "instance_stopped"


def test_a_handler_of_the_event_logs_own_warning_may_use_the_event_log(tmp_path: Path) -> None:
    """When `events.jsonl` cannot be written (a full disk), the event log says so in a
    `logging` warning. That warning went to the handlers at once, from inside `emit`, with
    the event log's lock held (and the engine's: a checkpoint's, a commit's): a handler that
    read the recent events, or closed the instance, waited for that lock for ever. It is
    queued with the events and delivered the same way now."""
    full = {"on": False}

    def hook(event: IOEvent) -> None:
        if full["on"] and event.op == "write" and event.path.endswith("events.jsonl"):
            raise OSError(28, "No space left on device")

    opened: list[jetstore.Instance] = []
    seen: list[int] = []

    def read_recent(record: logging.LogRecord) -> None:
        if record.getMessage().startswith("cannot write the event log"):
            seen.append(len(opened[0].events.recent()))

    handler = _Recording(read_recent)
    with _handler(handler):
        instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
        opened.append(instance)
        worker: threading.Thread | None = None
        try:
            db = instance.database("main", create=True)
            db.create_table("t", [("id", "int")], primary_key="id")
            full["on"] = True
            worker = threading.Thread(target=instance.checkpoint, daemon=True)
            worker.start()
            worker.join(10)
            assert not worker.is_alive(), "the checkpoint hung in the event log's warning"
        finally:
            full["on"] = False
            if worker is None or not worker.is_alive():
                instance.close()  # else it hangs: the checkpoint holds its lock for ever
    assert seen, "the warning was not delivered"


def test_a_handler_closing_the_instance_while_another_thread_closes_it_does_not_hang(
    tmp_path: Path,
) -> None:
    """`close()` waits, before it returns, for the handlers of the events it emitted (the
    final checkpoint's, instance_stopped). A handler that closes the instance on one of them
    runs while that close holds the close lock: it returns at once, the first close ends it."""
    opened: list[jetstore.Instance] = []
    returned = threading.Event()

    def close_too(record: logging.LogRecord) -> None:
        if getattr(record, "event_name", "") == "instance_stopped":
            opened[0].close()
            returned.set()

    handler = _Recording(close_too)
    with _handler(handler):
        instance = jetstore.open(tmp_path, **SMALL)
        opened.append(instance)
        instance.database("main", create=True)
        closer = threading.Thread(target=instance.close, daemon=True)
        closer.start()
        closer.join(10)
        assert not closer.is_alive(), "close() waited for a handler waiting for it"
    assert returned.is_set()
    assert instance.registry.total() == 0
    assert handler.names[-1] == "instance_stopped"


def test_a_slow_logging_handler_does_not_hold_up_commits(tmp_path: Path) -> None:
    """A handler that takes its time (a network log shipper) ran in the flush that rolled
    the log (event 140, from the roll's bookkeeping), so every durable commit waiting for
    that flush waited for the handler. It runs on the event log's thread now."""
    release = threading.Event()

    def stall(record: logging.LogRecord) -> None:
        if getattr(record, "event_name", "") == "log_generation_started":
            release.wait(30)

    handler = _Recording(stall)
    with _handler(handler):
        instance = jetstore.open(tmp_path, control_socket=False, **SMALL)
        try:
            db = instance.database("main", create=True)
            db.create_table("t", [("id", "int"), ("v", "bytes")], primary_key="id")
            done = threading.Event()

            def commit_past_rolls() -> None:
                for i in range(12):  # 12 x 20 KB: several 64 KB generations
                    with db.transaction() as txn:
                        txn.table("t").insert({"id": i, "v": b"x" * 20_000})
                done.set()

            worker = threading.Thread(target=commit_past_rolls, daemon=True)
            worker.start()
            assert done.wait(10), "the commits waited for a slow logging handler"
            assert instance.counters()["log_rolls"] >= 2
        finally:
            release.set()
            instance.close()
    assert handler.names.count("log_generation_started") >= 2

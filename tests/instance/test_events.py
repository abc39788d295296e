"""The event log (`jetstore.instance.events`): bounded on disk, and a damaged tail left by a
power loss does not swallow the next event."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import InvalidParameter
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

"""A closed output (`jetstore export DB T | head`): every command ends quietly with exit 141.

The pipelines are real: the CLI runs in a child process whose stdout is a pipe, and the test
closes the reading end, either after reading a little (the export is larger than the pipe
buffer, so the child is blocked writing when the reader goes away) or before the child even
starts (every write fails at once, whatever the size of the output). Whatever the command had
open is closed on the way out: the instance directory is left as it was, cleanly shut down.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jetstore
from jetstore.cli import demo
from jetstore.cli.main import run
from jetstore.cli.output import ExitCode
from jetstore.io.files import FileSystem
from jetstore.io.handles import DEFAULT_REGISTRY
from jetstore.io.locking import is_locked

from .conftest import SMALL, entry_point, snapshot

#: Linux's default pipe capacity; the export must be larger for the child to block in a write.
PIPE_BUFFER = 64 * 1024


def event_names(directory: Path) -> list[str]:
    lines = (directory / "events.jsonl").read_text().splitlines()
    return [json.loads(line)["name"] for line in lines]


def assert_quiet_exit(process: subprocess.Popen[bytes], stderr: bytes) -> None:
    """Exit 141, and nothing on stderr: no message, no traceback, no "Exception ignored"."""
    assert process.returncode == ExitCode.OUTPUT_CLOSED == 141, stderr.decode()
    assert stderr == b""


def assert_shut_down_cleanly(directory: Path) -> None:
    """Nobody holds the instance; opening it needs no recovery."""
    assert not is_locked(FileSystem(), str(directory))
    assert event_names(directory)[-1] == "instance_stopped"
    with jetstore.open(directory, **SMALL) as instance:
        assert instance.recovery is not None and not instance.recovery.needed


def run_with_reader_gone(*args: str | os.PathLike[str]) -> tuple[subprocess.Popen[bytes], bytes]:
    """Run `jetstore ARGS` with stdout a pipe whose reading end is closed before it starts."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.Popen(
            [str(entry_point()), *map(str, args)], stdout=write_end, stderr=subprocess.PIPE
        )
    finally:
        os.close(write_end)
    _, stderr = process.communicate(timeout=60)
    return process, stderr


def test_export_into_a_pipe_closed_after_a_few_lines_ends_quietly_and_cleanly(
    closed: Path,
) -> None:
    database = closed / "main.edb"
    complete = subprocess.run(
        [str(entry_point()), "export", database, "t"], capture_output=True, timeout=60
    )
    assert complete.returncode == 0, complete.stderr.decode()
    assert len(complete.stdout) > 2 * PIPE_BUFFER  # the child cannot finish before the close
    before = snapshot(closed)
    with subprocess.Popen(
        [str(entry_point()), "export", database, "t"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        head = process.stdout.read(4096)  # `| head -c 4096`
        process.stdout.close()
        stderr = process.stderr.read()
        process.wait(timeout=60)
    assert head == complete.stdout[:4096]
    assert_quiet_exit(process, stderr)
    # Export reads the file offline: nothing changed, the offline handle is gone with the
    # process, and the instance is as cleanly shut down as before.
    assert snapshot(closed) == before
    assert_shut_down_cleanly(closed)


@pytest.mark.parametrize(
    "args",
    [
        ("dump", "logs", "{dir}"),
        ("dump", "logs", "{dir}", "--json"),
        ("logs", "verify", "{dir}"),
        ("export", "{dir}/main.edb", "t", "--format", "csv"),
        ("--help",),
        ("dump", "--help"),
        ("--version",),
    ],
    ids=" ".join,
)
def test_read_only_commands_writing_to_a_closed_pipe_end_quietly(
    closed: Path, args: tuple[str, ...]
) -> None:
    before = snapshot(closed)
    process, stderr = run_with_reader_gone(*(arg.format(dir=closed) for arg in args))
    assert_quiet_exit(process, stderr)
    assert snapshot(closed) == before


def test_a_command_that_opens_the_instance_closes_it_before_ending_quietly(
    closed: Path,
) -> None:
    stopped = event_names(closed).count("instance_stopped")
    process, stderr = run_with_reader_gone("counters", closed)
    assert_quiet_exit(process, stderr)
    # It opened the instance and shut it down again: one more clean stop, no "not closed".
    names = event_names(closed)
    assert names.count("instance_stopped") == stopped + 1
    assert "instance_not_closed" not in names
    assert_shut_down_cleanly(closed)


def test_stderr_closed_too_ends_quietly(closed: Path) -> None:
    """`jetstore ... 2>&1 | head`: the error report itself finds no reader."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = subprocess.Popen(
            [str(entry_point()), "export", closed / "missing.edb", "t"],
            stdout=write_end,
            stderr=write_end,
        )
    finally:
        os.close(write_end)
    # Without a reader, the error (file not found, exit 4) cannot be reported.
    assert process.wait(timeout=60) == ExitCode.OUTPUT_CLOSED


class _ReaderGoesAway(io.RawIOBase):
    """A pipe whose reader leaves after `limit` bytes: later writes fail with EPIPE."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        size = len(data)
        if self.written + size > self.limit:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        self.written += size
        return size


def test_export_in_process_releases_its_handles(
    closed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The offline database export holds is closed as the exception unwinds the command."""
    raw = _ReaderGoesAway(PIPE_BUFFER)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(raw), "utf-8"))
    handles = DEFAULT_REGISTRY.total()
    assert run(["export", str(closed / "main.edb"), "t"]) == ExitCode.OUTPUT_CLOSED
    assert raw.written > 0
    raw.limit = sys.maxsize  # what the stream holds may go when it is collected
    assert DEFAULT_REGISTRY.total() == handles
    assert DEFAULT_REGISTRY.total(owner="jetstore-tools") == 0


def test_rich_tables_in_process_raise_no_system_exit(
    closed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rich's own answer to a broken pipe is SystemExit(1); the CLI's consoles report it."""
    raw = _ReaderGoesAway(0)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(raw), "utf-8"))
    assert run(["dump", "logs", str(closed)]) == ExitCode.OUTPUT_CLOSED
    assert run(["logs", "verify", str(closed)]) == ExitCode.OUTPUT_CLOSED
    raw.limit = sys.maxsize


def test_demo_child_whose_parent_went_away_closes_the_instance(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    demo._setup(str(directory), seed=7)
    with subprocess.Popen(
        demo._child_argv(str(directory), 7),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().startswith(b"READY ")
        assert process.stdout.readline().startswith(b"ACK 1 ")
        process.stdout.close()  # the parent is gone: the next acknowledgement fails
        stderr = process.stderr.read()
        process.wait(timeout=60)
    assert_quiet_exit(process, stderr)
    assert "instance_not_closed" not in event_names(directory)
    assert not is_locked(FileSystem(), str(directory))
    with jetstore.open(directory, **demo.INSTANCE_OPTIONS) as instance:
        assert instance.recovery is not None and not instance.recovery.needed


@pytest.mark.parametrize(
    "args",
    [("integrity", "{db}"), ("integrity", "{db}", "--json"), ("status", "{dir}", "--json")],
    ids=" ".join,
)
def test_stdout_on_a_full_disk_is_an_io_error_naming_it(
    closed: Path, args: tuple[str, ...]
) -> None:
    # A failed write that is no EPIPE (`> FILE` on a full disk, EIO) was an "internal
    # error ... this is a bug" (exit 5), and with --json a traceback: reporting the error as
    # JSON failed on the same stdout.
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full to write to")
    command = [arg.format(db=closed / "main.edb", dir=closed) for arg in args]
    with open("/dev/full", "wb") as full:
        process = subprocess.run(
            [str(entry_point()), *command], stdout=full, stderr=subprocess.PIPE, timeout=60
        )
    stderr = process.stderr.decode()
    assert process.returncode == ExitCode.IO, stderr
    assert "Traceback" not in stderr and "internal error" not in stderr
    assert "No space left on device" in stderr and "stdout" in stderr

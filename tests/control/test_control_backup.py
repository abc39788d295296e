"""Online backups through the control socket: from another process, completed, aborted by the
client, the client SIGKILLed or stalled mid-stream, the destination failing, a source file
failing its check, the instance closing mid-stream. After each, the instance holds exactly
the fds, threads and handles it had before, and no backup session is left running."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_support import Agent, Baseline, Raw, load, open_instance, rows, wait_for, wait_idle

import jetstore
from jetstore.backup.backupset import read_backup_file, read_manifest
from jetstore.backup.restore import restore
from jetstore.control import server
from jetstore.control.client import connect
from jetstore.errors import JetError
from jetstore.format.filenames import generation_log_name
from jetstore.io.files import FileSystem
from jetstore.io.handles import DEFAULT_REGISTRY, HandleKind


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[jetstore.Instance]:
    instance = open_instance(tmp_path / "i")
    load(instance, 0, 300)
    yield instance
    instance.close()


def check_set(path: Path) -> None:
    """The set's manifest reads back and every file matches its size and CRC32C
    (`verify_backup` as well when that module exists)."""
    if importlib.util.find_spec("jetstore.backup.verify") is not None:
        from jetstore.backup.verify import verify_backup  # type: ignore[import-not-found]

        verify_backup(path)
    manifest = read_manifest(path)
    for entry in manifest.files:
        size = sum(
            len(chunk)
            for chunk in read_backup_file(str(path), entry, fs=FileSystem(), owner="check")
        )
        assert size == entry.size


def restored_rows(sets: list[Path], target: Path) -> dict[int, str]:
    restore([str(s) for s in sets], str(target))
    with open_instance(target, control_socket=False) as copy:
        return rows(copy)


def events_named(inst: jetstore.Instance, name: str) -> list[dict[str, Any]]:
    return [e for e in inst.events.recent(200) if e["name"] == name]


def test_full_and_incremental_from_a_child_process_restore(
    inst: jetstore.Instance, tmp_path: Path
) -> None:
    agent = Agent()  # its pipes are fds of this process: the baseline counts them
    baseline = Baseline.take(inst)
    try:
        before_full = rows(inst)
        reply = agent.run(
            {
                "dir": inst.directory,
                "dest": str(tmp_path / "full"),
                "kind": "full",
                "mode": "complete",
            }
        )
        assert reply["ok"] and reply["completed"], reply
        assert "main.edb" in reply["files"]
        wait_idle(inst)
        baseline.wait(inst)
        load(inst, 300, 200)
        before_incremental = rows(inst)
        reply = agent.run(
            {
                "dir": inst.directory,
                "dest": str(tmp_path / "inc"),
                "kind": "incremental",
                "mode": "complete",
                "compress": True,
            }
        )
        assert reply["ok"] and reply["completed"], reply
        assert all(name.endswith(".log") for name in reply["files"])
        wait_idle(inst)
        baseline.wait(inst)
    finally:
        agent.close()
    counters = inst.counters()
    assert counters["backups_completed"] == 2 and counters["backups_aborted"] == 0
    check_set(tmp_path / "full")
    check_set(tmp_path / "inc")
    assert read_manifest(tmp_path / "inc").compression == "zstd"
    assert restored_rows([tmp_path / "full"], tmp_path / "r1") == before_full
    assert restored_rows([tmp_path / "full", tmp_path / "inc"], tmp_path / "r2") == (
        before_incremental
    )


def test_in_process_client_backup_leaves_nothing_on_either_side(
    inst: jetstore.Instance, tmp_path: Path
) -> None:
    baseline = Baseline.take(inst)
    seen: list[tuple[int, int, str]] = []
    client = connect(inst.directory)
    manifest = client.backup(
        tmp_path / "set", "copy", progress=lambda d, t, n: seen.append((d, t, n))
    )
    assert client.closed
    assert manifest.kind.value == "copy" and manifest.path == str(tmp_path / "set")
    assert seen[-1][0] == seen[-1][1] == manifest.total_size
    assert client.completion is not None and client.completion["op"] == "complete"
    wait_idle(inst)
    baseline.wait(inst)
    check_set(tmp_path / "set")


def _raw_backup_to_first_frame(inst: jetstore.Instance, kind: str = "full") -> Raw:
    raw = Raw(Path(inst.directory))
    started = raw.request({"op": "backup", "kind": kind})
    assert started["ok"] and started["stage"] == "started", started
    listing = raw.line()
    assert listing["stage"] == "files"
    file = raw.line()
    assert file["stage"] == "file"
    assert raw.frame()
    return raw


def test_client_abort_mid_stream(inst: jetstore.Instance) -> None:
    baseline = Baseline.take(inst)
    raw = _raw_backup_to_first_frame(inst)
    raw.send(b'{"op": "abort"}\n')
    tail = bytearray()
    while True:
        data = raw.sock.recv(1 << 20)
        if not data:
            break
        tail += data
    raw.close()
    assert b'{"ok":true,"op":"abort"' in tail
    wait_idle(inst)
    baseline.wait(inst)
    aborted = events_named(inst, "backup_aborted")[-1]
    assert "aborted by the control client" in aborted["message"]
    assert inst.counters()["backups_aborted"] == 1
    load(inst, 300, 5)  # the instance goes on


@pytest.mark.parametrize("op", ["abort", "complete"])
def test_a_request_pipelined_with_backup_is_seen_before_the_files_stream(
    inst: jetstore.Instance, op: str
) -> None:
    """Bytes sent with the backup request reach the worker in its buffer, not through the
    socket: an abort there must stop the stream at the first frame boundary, and a complete
    (before a single file was read) is a protocol error, not a completion."""
    baseline = Baseline.take(inst)
    raw = Raw(Path(inst.directory))
    raw.send(b'{"op": "backup"}\n{"op": "' + op.encode() + b'"}\n')
    lines: list[dict[str, Any]] = []
    while True:
        data = raw.sock.recv(1 << 20)
        if not data:
            break
        raw.buffer += data
    raw.close()
    for line in raw.buffer.split(b"\n"):
        try:
            lines.append(json.loads(line))
        except ValueError:
            pass  # frame bytes (the old behaviour streamed files)
    assert lines[0]["stage"] == "started"
    assert not any(line.get("stage") in ("streamed", "file") for line in lines), lines
    wait_idle(inst)
    baseline.wait(inst)
    assert inst.counters()["backups_completed"] == 0
    if op == "abort":
        assert lines[-1] == {"ok": True, "op": "abort", "session": lines[0]["session"]}
        assert "while the files streamed" in events_named(inst, "backup_aborted")[-1]["message"]
    else:
        assert lines[-1]["error"]["name"] == "InvalidBackupSequence"


def test_blank_lines_during_a_backup_are_not_requests(inst: jetstore.Instance) -> None:
    """As outside a backup (the selector loop skips them), an empty line is no request: a
    client ending its lines with an extra newline must not lose its backup."""
    baseline = Baseline.take(inst)
    raw = Raw(Path(inst.directory))
    raw.send(b'{"op": "backup"}\n\n')
    assert raw.line()["stage"] == "started"
    while (line := raw.line())["stage"] != "streamed":
        assert line["ok"] is True, line
        if line["stage"] == "file":
            while raw.frame() is not None:
                pass
    raw.send(b'\r\n{"op": "complete"}\n\n')
    assert raw.line()["op"] == "complete"
    assert raw.closed_by_server()
    raw.close()
    wait_idle(inst)
    baseline.wait(inst)
    assert inst.counters()["backups_completed"] == 1


def test_a_refused_client_with_default_sigpipe_is_not_killed(
    inst: jetstore.Instance, tmp_path: Path
) -> None:
    """The refusal closes the connection and the client then sends its abort: with SIGPIPE's
    default action (an application's choice, common in pipeline tools) a plain send there
    killed the client process silently instead of raising BackupInProgress."""
    session = inst.begin_backup("full")
    script = f"""
import signal
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
from jetstore.control.client import connect
from jetstore.errors import BackupInProgress
refused = 0
for i in range(10):
    try:
        connect({inst.directory!r}).backup({str(tmp_path)!r} + "/set%d" % i)
    except BackupInProgress:
        refused += 1
print("refused", refused)
"""
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
    finally:
        session.abort("the test is over")
    assert (done.returncode, done.stdout.strip()) == (0, "refused 10"), done.stderr[-2000:]
    assert not list(tmp_path.glob("set*"))


def test_counters_are_served_while_a_backup_streams(inst: jetstore.Instance) -> None:
    baseline = Baseline.take(inst)
    raw = _raw_backup_to_first_frame(inst)  # then stops reading
    with connect(inst.directory) as client:
        counters = client.counters()
        assert counters["backup_sessions_active"] == 1
        assert counters["backup"]["state"] == "running"
        assert counters["backup"]["handles"] >= 1
        assert client.ping()["ok"]
    second = Raw(Path(inst.directory))
    refused = second.request({"op": "backup", "kind": "copy"})
    assert refused["error"]["name"] == "BackupInProgress", refused
    second.close()
    raw.close()  # hang up mid-stream
    wait_idle(inst)
    baseline.wait(inst)
    assert "disconnected" in events_named(inst, "backup_aborted")[-1]["message"]


def test_client_sigkilled_mid_stream_leaves_nothing_behind(
    inst: jetstore.Instance, tmp_path: Path
) -> None:
    load(inst, 300, 3000)  # more than the socket buffers hold
    baseline = Baseline.take(inst)
    agent = Agent()
    agent.send(
        {"dir": inst.directory, "dest": str(tmp_path / "killed"), "kind": "full", "mode": "kill"}
    )
    assert agent.read()["midstream"]
    assert inst.counters()["backup_sessions_active"] == 1
    agent.kill()
    wait_idle(inst)
    baseline.wait(inst)
    assert inst.counters()["backups_aborted"] == 1
    assert inst.counters()["backups_completed"] == 0
    # The next backup to the same destination is refused, naming the partial set (a
    # running backup's looks the same), and writes nothing; once it is deleted, as the
    # refusal says, the backup completes.
    partial = Path(str(tmp_path / "killed") + ".partial")
    assert partial.is_dir()
    request = {
        "dir": inst.directory,
        "dest": str(tmp_path / "killed"),
        "kind": "full",
        "mode": "complete",
    }
    agent = Agent()
    try:
        reply = agent.run(request)
    finally:
        agent.close()
    assert not reply["ok"] and reply["error"] == "InvalidPath", reply
    assert str(partial) in reply["message"]
    assert inst.counters()["backups_aborted"] == 1
    shutil.rmtree(partial)
    agent = Agent()
    try:
        reply = agent.run(request)
        assert reply["ok"], reply
        wait_idle(inst)
    finally:
        agent.close()
    baseline.wait(inst)
    check_set(tmp_path / "killed")


def test_destination_write_failure_on_the_client(inst: jetstore.Instance, tmp_path: Path) -> None:
    agent = Agent()
    baseline = Baseline.take(inst)
    try:
        reply = agent.run(
            {"dir": inst.directory, "dest": str(tmp_path / "full"), "kind": "full", "mode": "fail"}
        )
        wait_idle(inst)
        baseline.wait(inst)
    finally:
        agent.close()
    assert reply["ok"] and reply["error"] == "DiskFull", reply
    assert "injected" in reply["message"]
    assert not reply["dest_exists"] and not reply["partial_exists"]
    counters = inst.counters()
    assert counters["backups_aborted"] == 1 and counters["backups_completed"] == 0


def test_a_destination_refused_by_the_client_sends_the_instance_nothing(
    inst: jetstore.Instance, tmp_path: Path
) -> None:
    # Defect: when the client refused DEST (not empty) before it asked for a backup, its
    # clean-up still sent {"op": "abort"}: the instance answered a request it never got a
    # backup for and logged event 161 ("control request rejected: "abort" outside a
    # backup"), a protocol error it never had, for an operator's mistake on the client side.
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "other").write_text("not a backup")
    baseline = Baseline.take(inst)
    with pytest.raises(jetstore.errors.InvalidPath, match="not empty"):
        connect(inst.directory).backup(dest)
    baseline.wait(inst)  # the server dropped the connection: every line on it was read
    assert events_named(inst, "control_request_rejected") == []
    assert inst.counters()["backup_sessions_active"] == 0


def test_a_backup_worker_that_cannot_start_answers_and_holds_nothing(
    inst: jetstore.Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect: the selector thread took the connection away from its loop (and counted the
    # worker) before the worker's thread started. When it could not start (a thread limit),
    # the error reply went into a buffer nobody sent: the client waited for its timeout, the
    # connection stayed open until the instance closed, and the dead worker kept counting,
    # so after a few such failures every backup was refused as "already streaming". Now
    # the client gets the error (OutOfThreads) on a connection that goes on, and nothing is
    # held.
    start = threading.Thread.start

    def refuse_workers(thread: threading.Thread) -> None:
        if thread.name.startswith("jetstore-control-backup"):
            raise RuntimeError("can't start new thread")
        start(thread)

    baseline = Baseline.take(inst)
    monkeypatch.setattr(threading.Thread, "start", refuse_workers)
    raw = Raw(Path(inst.directory), timeout=5.0)
    try:
        for _ in range(server.MAX_BACKUP_WORKERS + 1):
            reply = raw.request({"op": "backup", "kind": "full"})
            assert not reply["ok"] and reply["error"]["name"] == "OutOfThreads", reply
        assert raw.request({"op": "ping"})["ok"]
    finally:
        raw.close()
    monkeypatch.undo()
    baseline.wait(inst)
    assert inst.counters()["backup_sessions_active"] == 0
    with connect(inst.directory) as client:
        client.backup(tmp_path / "full")
    check_set(tmp_path / "full")


def test_client_that_stops_reading_is_cut_off(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    load(inst, 300, 3000)
    monkeypatch.setattr(server, "STALL_TIMEOUT", 0.5)
    monkeypatch.setattr(server, "CONFIRM_TIMEOUT", 0.5)
    baseline = Baseline.take(inst)
    raw = _raw_backup_to_first_frame(inst)  # then reads nothing more
    wait_idle(inst)
    message = events_named(inst, "backup_aborted")[-1]["message"]
    assert "stalled" in message or "neither complete nor abort" in message
    raw.close()
    baseline.wait(inst)


def test_a_client_trickling_bytes_after_the_stream_is_cut_off_at_confirm_timeout(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONFIRM_TIMEOUT bounds the whole wait for complete or abort: a client that sends a
    byte now and then (never a whole line) must not hold the session and its pins longer."""
    monkeypatch.setattr(server, "CONFIRM_TIMEOUT", 0.5)
    baseline = Baseline.take(inst)
    raw = Raw(Path(inst.directory))
    assert raw.request({"op": "backup"})["stage"] == "started"
    while (line := raw.line())["stage"] != "streamed":
        if line["stage"] == "file":
            while raw.frame() is not None:
                pass
    streamed = time.monotonic()
    try:
        while inst.counters()["backup_sessions_active"] and time.monotonic() - streamed < 3:
            raw.send(b" ")
            time.sleep(0.1)
    except OSError:
        pass  # the server hung up: what this test waits for
    assert inst.counters()["backup_sessions_active"] == 0, "the trickling client holds it"
    assert time.monotonic() - streamed < 2
    assert "neither complete nor abort" in events_named(inst, "backup_aborted")[-1]["message"]
    raw.close()
    baseline.wait(inst)


def test_a_source_file_failing_its_check_fails_the_backup_cleanly(
    inst: jetstore.Instance, tmp_path: Path
) -> None:
    with connect(inst.directory) as client:
        client.backup(tmp_path / "full", "full")
    load(inst, 300, 800)  # several generations after the full backup
    generation = inst.log.current_generation - 1
    path = Path(inst.directory) / generation_log_name(generation)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    baseline = Baseline.take(inst)
    with pytest.raises(JetError) as caught:
        connect(inst.directory).backup(tmp_path / "inc", "incremental")
    wait_idle(inst)
    baseline.wait(inst)
    failed = events_named(inst, "backup_failed")[-1]
    assert failed["fields"]["error"] == caught.value.name
    assert not (tmp_path / "inc").exists() and not (tmp_path / "inc.partial").exists()
    assert inst.counters()["backups_failed"] == 1


def test_instance_close_mid_stream_stops_everything(tmp_path: Path) -> None:
    threads = threading.active_count()
    inst = open_instance(tmp_path / "i")
    load(inst, 0, 3000)
    raw = _raw_backup_to_first_frame(inst)
    began = time.monotonic()
    inst.close()
    assert time.monotonic() - began < 10
    assert not (tmp_path / "i" / "jetstore.sock").exists()
    assert inst.registry.total() == 0
    wait_for(lambda: threading.active_count() == threads, "threads to end")
    assert raw.closed_by_server()
    raw.close()
    assert (
        "closing"
        in [e for e in inst.events.recent() if e["name"] == "backup_aborted"][-1]["message"]
    )
    os.listdir(tmp_path / "i")


def test_a_backup_client_idle_between_files_and_before_complete_is_not_closed_as_idle(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle timeout is for connections waiting in the selector loop: a backup client
    sends nothing while files stream and while it makes its set durable, and must keep its
    session (STALL_TIMEOUT and CONFIRM_TIMEOUT bound those waits)."""
    monkeypatch.setattr(server, "IDLE_TIMEOUT", 0.2)
    baseline = Baseline.take(inst)
    raw = _raw_backup_to_first_frame(inst)
    time.sleep(0.6)  # copying the first frame somewhere slow
    while raw.frame() is not None:
        pass
    while (line := raw.line())["stage"] != "streamed":
        if line["stage"] == "file":
            while raw.frame() is not None:
                pass
    time.sleep(0.6)  # fsyncing the set
    raw.send(b'{"op": "complete"}\n')
    assert raw.line()["op"] == "complete"
    raw.close()
    wait_idle(inst)
    baseline.wait(inst)
    assert inst.counters()["backups_completed"] == 1


def test_a_client_reading_slowly_but_steadily_is_not_cut_off_as_stalled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """STALL_TIMEOUT is for a client that stops reading: it bounded the whole `sendall` of
    a frame instead (Python's socket timeout is the total for sendall), so a client that
    read a 1 MiB frame steadily at under 17 KiB/s (a slow destination) lost its backup."""
    monkeypatch.setattr(server, "STALL_TIMEOUT", 0.5)
    ours, theirs = socket.socketpair()
    handle = DEFAULT_REGISTRY.register(HandleKind.SOCKET, "test-worker", "pair", ours.close)
    worker = server._BackupWorker(None, server._Conn(ours, handle), "full")  # type: ignore[arg-type]
    ours.settimeout(server.STALL_TIMEOUT)  # as `begin` does
    size = 2 * 1024 * 1024
    received = 0

    def read_steadily() -> None:
        nonlocal received
        while received < size:
            time.sleep(0.02)  # never a pause near STALL_TIMEOUT
            data = theirs.recv(32 * 1024)
            if not data:
                return
            received += len(data)

    reader = threading.Thread(target=read_steadily)
    reader.start()
    started = time.monotonic()
    try:
        worker._send(b"x" * size)
    finally:
        reader.join(10)
        handle.close()
        theirs.close()
    assert received == size
    assert time.monotonic() - started > server.STALL_TIMEOUT  # longer than the timeout in all


def test_complete_that_cannot_be_sent_says_the_set_is_whole_but_not_recorded(
    inst: jetstore.Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection failing once the set was published at DEST (before `complete` reached
    the instance) left a durable set the instance never recorded, and the error said only
    that the instance "closed the control connection". The set is whole (the instance
    aborted the session: no history written, no log deleted, so nothing it needs is gone)
    and the error now says so, naming DEST and what the instance's history lacks."""
    from jetstore.backup.backupset import SetWriter
    from jetstore.errors import InstanceUnavailable

    publish = SetWriter.publish
    client = connect(inst.directory)

    def publish_then_lose_the_connection(self: SetWriter, manifest: Any) -> Any:
        published = publish(self, manifest)
        client._sock.shutdown(socket.SHUT_WR)  # the next send fails (EPIPE)
        return published

    monkeypatch.setattr(SetWriter, "publish", publish_then_lose_the_connection)
    logs_before = {p.name for p in Path(inst.directory).glob("*.log")}
    with pytest.raises(InstanceUnavailable) as failed:
        client.backup(tmp_path / "set", "full")
    message = str(failed.value)
    assert failed.value.path == str(tmp_path / "set")
    assert f"backup set '{tmp_path / 'set'}' is complete" in message
    assert "did not record" in message and "restore" in message
    assert client.closed
    wait_idle(inst)
    assert inst.counters()["backups_completed"] == 0
    assert events_named(inst, "backup_aborted")
    assert set(logs_before) <= {p.name for p in Path(inst.directory).glob("*.log")}
    check_set(tmp_path / "set")
    expected = rows(inst)
    inst.close()
    assert restored_rows([tmp_path / "set"], tmp_path / "restored") == expected


def test_complete_whose_answer_is_lost_says_the_record_is_unknown(
    inst: jetstore.Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`complete` sent, its answer lost: the instance may have recorded the backup (here it
    did); the error says the set is whole and where to read whether it was recorded."""
    from jetstore.control.client import ControlClient
    from jetstore.errors import InstanceUnavailable

    send, fill = ControlClient._send, ControlClient._fill
    sent: list[dict[str, Any]] = []

    def recording_send(self: ControlClient, message: dict[str, Any]) -> None:
        send(self, message)
        sent.append(message)

    def fill_until_complete(self: ControlClient) -> None:
        if {"op": "complete"} in sent:  # the answer never comes: the connection ends
            wait_for(lambda: inst.counters()["backups_completed"] == 1, "the record", 5)
            raise self._gone(None)
        fill(self)

    monkeypatch.setattr(ControlClient, "_send", recording_send)
    monkeypatch.setattr(ControlClient, "_fill", fill_until_complete)
    client = connect(inst.directory)
    with pytest.raises(InstanceUnavailable, match="recorded it is unknown") as failed:
        client.backup(tmp_path / "set", "full")
    assert failed.value.path == str(tmp_path / "set")
    assert "backup_completed" in str(failed.value)
    # Which session to look for, and every ending: a failed history write is event 153.
    assert f"backup session {client.backup_session}" in str(failed.value)
    assert "153 backup_failed" in str(failed.value)
    check_set(tmp_path / "set")


def test_a_complete_the_instance_fails_says_the_set_is_kept_and_what_the_instance_is(
    inst: jetstore.Instance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`complete` reached the instance, whose backup-history write failed: the client raised
    the server's bare header-write error, which said nothing of the set at DEST (whole and
    durable: restorable) nor of the instance (stopped accepting updates, no log deleted)."""
    from jetstore.errors import DiskIO
    from jetstore.pages.pagefile import DatabaseFile

    write_header = DatabaseFile.write_header

    def failing_history(self: DatabaseFile, **changes: Any) -> Any:
        if "last_full_backup" in changes:
            raise DiskIO(f"write failed on '{self.path}': [Errno 5] Input/output error")
        return write_header(self, **changes)

    monkeypatch.setattr(DatabaseFile, "write_header", failing_history)
    logs_before = {p.name for p in Path(inst.directory).glob("*.log")}
    baseline = Baseline.take(inst)
    dest = tmp_path / "set"
    with pytest.raises(DiskIO) as failed:
        connect(inst.directory).backup(dest, "full")
    error = failed.value
    assert error.path == str(dest)
    assert f"backup set '{dest}' is complete and durable" in error.detail
    assert "main.edb" in error.detail  # the header whose write failed
    assert "stopped accepting updates" in error.detail
    assert "no log was deleted" in error.detail
    assert f"keep '{dest}'" in error.hint and "reopen the instance" in error.hint
    assert "take a new full backup" in error.hint
    wait_idle(inst)
    baseline.wait(inst)
    assert inst.state.value == "failed"
    assert inst.counters()["backups_failed"] == 1
    assert set(logs_before) <= {p.name for p in Path(inst.directory).glob("*.log")}
    check_set(dest)


def test_an_instance_closing_while_it_completes_a_backup_still_answers_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`close()` landing while the instance ran `complete` shut the backup connection down
    at once: the backup was recorded (and logs truncated), but its answer never left, and
    the client could only say "whether the instance recorded it is unknown". The close now
    lets the worker answer the `complete` it is running before the connection ends."""
    from jetstore.instance.instance import Instance

    inst = open_instance(tmp_path / "i")
    load(inst, 0, 100)
    truncate = Instance.truncate_logs_after_backup
    completing = threading.Event()

    def slow_truncation(self: Instance, first_copied: int) -> list[int]:
        completing.set()
        time.sleep(0.3)  # the close lands meanwhile
        return truncate(self, first_copied)

    monkeypatch.setattr(Instance, "truncate_logs_after_backup", slow_truncation)
    closer = threading.Thread(target=lambda: (completing.wait(10), inst.close()))
    closer.start()
    try:
        client = connect(inst.directory)
        manifest = client.backup(tmp_path / "set", "full")
    finally:
        closer.join(10)
    assert not closer.is_alive()
    assert manifest.kind.value == "full"
    assert client.completion is not None and client.completion["ok"] is True
    assert inst.backups_completed == 1
    check_set(tmp_path / "set")

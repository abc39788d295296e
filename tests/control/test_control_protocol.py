"""The control socket's request/reply protocol, its socket file and its lifecycle: bad
requests get error replies (event 161) without hurting other clients, and the instance ends
every test holding exactly the fds, threads and handles it started with."""

from __future__ import annotations

import errno
import gc
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from control_support import Baseline, Raw, load, open_instance, wait_for

import jetstore
from jetstore.control import server as server_module
from jetstore.control.client import ControlClient, connect
from jetstore.control.protocol import (
    MAX_FRAME,
    MAX_REQUEST,
    decode_reply,
    encode_line,
    frame_header,
)
from jetstore.control.server import MAX_PENDING_OUTPUT, ControlServer
from jetstore.errors import (
    FileAccessDenied,
    InstanceUnavailable,
    InvalidBackupSequence,
    InvalidParameter,
    OutOfSessions,
)
from jetstore.io.handles import DEFAULT_REGISTRY, HandleKind
from jetstore.io.sockets import peer_uid


@pytest.fixture
def inst(tmp_path: Path) -> Iterator[jetstore.Instance]:
    instance = open_instance(tmp_path / "i")
    load(instance, 0, 20)
    yield instance
    instance.close()


def _rejections(inst: jetstore.Instance) -> list[dict[str, object]]:
    return [e for e in inst.events.recent(200) if e["id"] == 161]


def test_ping_counters_events(inst: jetstore.Instance) -> None:
    baseline = Baseline.take(inst)
    with connect(inst.directory) as client:
        pong = client.ping()
        assert pong["protocol"] == 1 and pong["pid"] == os.getpid() and pong["state"] == "open"
        counters = client.counters()
        assert counters["commits"] == inst.counters()["commits"] >= 20
        assert counters["state"] == "open" and counters["control_clients"] == 1
        events = client.events(3)
        assert len(events) == 3
        assert [e["id"] for e in events] == [e["id"] for e in inst.events.recent(3)]
        assert any(e["name"] == "control_socket_started" for e in client.events(500))
    baseline.wait(inst)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"{not json\n", "not valid JSON"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"kind": "full"}\n', 'no "op"'),
        (b"\xff\xfe\n", "not UTF-8"),
        (b'{"op": "events", "limit": -1}\n', "positive integer"),
        # json's parser recurses per level: this is RecursionError, not ValueError.
        (b"[" * 60_000 + b"\n", "not valid JSON"),
        (b'{"op": "ping", "x": ' + b'{"a":' * 10_000 + b"\n", "not valid JSON"),
    ],
)
def test_malformed_requests_get_an_error_reply_and_the_connection_goes_on(
    inst: jetstore.Instance, payload: bytes, why: str
) -> None:
    baseline = Baseline.take(inst)
    before = len(_rejections(inst))
    raw = Raw(Path(inst.directory))
    raw.send(payload)
    reply = raw.line()
    assert reply["ok"] is False
    error = reply["error"]
    assert error["name"] == "InvalidParameter" and error["code"] == -1003
    assert why in error["message"]
    assert raw.request({"op": "ping"})["ok"] is True  # the connection still works
    raw.close()
    assert len(_rejections(inst)) == before + 1
    baseline.wait(inst)


def test_a_reply_nested_too_deeply_is_an_invalid_parameter_not_a_recursion_error() -> None:
    with pytest.raises(InvalidParameter, match="nested too deeply"):
        decode_reply(b"[" * 60_000, source="/x/jetstore.sock")


def test_unknown_op_and_backup_ops_outside_a_backup(inst: jetstore.Instance) -> None:
    baseline = Baseline.take(inst)
    raw = Raw(Path(inst.directory))
    reply = raw.request({"op": "format_c"})
    assert (
        reply
        == {
            "ok": False,
            "op": "format_c",
            "error": reply["error"],
        }
        and "unknown op 'format_c'" in reply["error"]["message"]
    )
    for op in ("complete", "abort"):
        reply = raw.request({"op": op})
        assert reply["error"]["name"] == "InvalidBackupSequence"
    raw.close()
    rejected = _rejections(inst)
    assert [e["fields"]["op"] for e in rejected[-3:]] == ["format_c", "complete", "abort"]
    with connect(inst.directory) as client:
        with pytest.raises(InvalidParameter, match="unknown op"):
            client.request({"op": "nope"})
        with pytest.raises(InvalidBackupSequence):
            client.request({"op": "complete"})
        assert client.ping()["ok"]
    baseline.wait(inst)


@pytest.mark.parametrize("newline", [False, True])
def test_a_request_over_64_kib_is_refused_and_the_connection_closed(
    inst: jetstore.Instance, newline: bool
) -> None:
    baseline = Baseline.take(inst)
    raw = Raw(Path(inst.directory))
    body = b'{"op": "ping", "pad": "' + b"x" * MAX_REQUEST + b'"}' + (b"\n" if newline else b"")
    try:
        raw.send(body)
    except OSError:
        pass  # the server may close before it read everything
    reply = raw.line()
    assert reply["ok"] is False and "over the 65536-byte limit" in reply["error"]["message"]
    assert raw.closed_by_server()
    raw.close()
    # Exactly at the limit is fine.
    raw = Raw(Path(inst.directory))
    pad = MAX_REQUEST - len(b'{"op":"ping","pad":""}\n')
    raw.send(b'{"op":"ping","pad":"' + b"y" * pad + b'"}\n')
    assert raw.line()["ok"] is True
    raw.close()
    baseline.wait(inst)


def test_client_disconnect_mid_request_is_cleaned_up(inst: jetstore.Instance) -> None:
    baseline = Baseline.take(inst)
    for _ in range(10):
        raw = Raw(Path(inst.directory))
        raw.send(b'{"op": "coun')
        raw.close()
        raw = Raw(Path(inst.directory))
        raw.send(b'{"op": "counters"}\n')  # the reply will find nobody to read it
        raw.close()
    wait_for(lambda: inst.registry.counts()["socket"] == baseline.handles["socket"], "cleanup")
    baseline.wait(inst)
    with connect(inst.directory) as client:
        assert client.ping()["ok"]
    baseline.wait(inst)


def test_many_clients_and_a_silent_one_do_not_block_each_other(inst: jetstore.Instance) -> None:
    baseline = Baseline.take(inst)
    silent = Raw(Path(inst.directory))
    silent.send(b'{"op": "ping"')  # never finishes its request
    hog = Raw(Path(inst.directory))
    hog.send(b'{"op": "counters"}\n' * 2000)  # never reads its replies
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                with connect(inst.directory, timeout=10) as client:
                    assert client.counters()["state"] == "open"
                    assert client.ping()["ok"]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    silent.close()
    hog.close()
    baseline.wait(inst)


def test_accept_out_of_descriptors_does_not_spin_the_selector_thread(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE leaves the pending client in the backlog, so the listener stays readable: the
    server must back off instead of calling accept() in a tight loop, and serve the client
    once descriptors are free again."""
    baseline = Baseline.take(inst)
    real_accept = server_module.accept_socket
    failing = threading.Event()
    failing.set()
    failed = 0

    def accept(into: list[socket.SocketType], listener: socket.SocketType) -> socket.SocketType:
        nonlocal failed
        if failing.is_set():
            failed += 1
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_accept(into, listener)

    monkeypatch.setattr(server_module, "accept_socket", accept)
    raw = Raw(Path(inst.directory))  # connected: it waits in the listen backlog
    wait_for(lambda: failed > 0, "a failed accept")
    time.sleep(0.5)
    assert failed < 50, f"accept() called {failed} times in 0.5 s while it failed"
    failing.clear()
    assert raw.request({"op": "ping"})["ok"] is True
    raw.close()
    baseline.wait(inst)


def test_pipelined_requests_stop_being_answered_at_the_reply_backlog_limit(
    inst: jetstore.Instance,
) -> None:
    """One 64 KiB read can hold 2,000 ``events`` requests of up to ~100 KiB replies each: the
    server must stop answering at the backlog limit (not build 200 MiB of replies for a
    client that does not read), and answer the rest as the client reads."""
    baseline = Baseline.take(inst)
    with connect(inst.directory) as client:
        for _ in range(200):  # fill the kept events (each rejection is one)
            with pytest.raises(InvalidParameter):
                client.request({"op": "x" * 300})
    control = inst._control
    assert control is not None
    raw = Raw(Path(inst.directory))
    request = b'{"op":"events","limit":200}\n'
    count = 60  # 13 MiB of replies
    raw.send(request * count)
    time.sleep(0.5)
    backlog = sum(len(conn.outbuf) for conn in control._conns.values())
    assert backlog < 2 * MAX_PENDING_OUTPUT, f"{backlog} bytes of replies queued"
    for _ in range(count):
        assert raw.line()["op"] == "events"
    assert raw.request({"op": "ping"})["ok"] is True
    raw.close()
    baseline.wait(inst)


def test_a_dead_selector_thread_stops_listening(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance goes on without its socket (event 162): a client must be told so at
    once, not be accepted into a backlog nobody serves and wait for its timeout."""
    baseline = Baseline.take(inst)

    def broken(*args: object) -> None:
        raise RuntimeError("a bug in the selector loop")

    monkeypatch.setattr(ControlServer, "_service", broken)
    raw = Raw(Path(inst.directory))
    raw.send(b'{"op": "ping"}\n')
    assert raw.closed_by_server()
    raw.close()
    wait_for(lambda: any(e["id"] == 162 for e in inst.events.recent()), "event 162")
    wait_for(lambda: not (Path(inst.directory) / "jetstore.sock").exists(), "the file removed")
    started = time.monotonic()
    with pytest.raises(InstanceUnavailable, match="no instance serves"):
        connect(inst.directory, timeout=3).ping()
    assert time.monotonic() - started < 1
    socket_handles = baseline.handles["socket"]
    wait_for(lambda: inst.registry.counts()["socket"] < socket_handles, "the listener closed")
    load(inst, 20, 3)  # the instance goes on


def test_a_flood_of_bad_requests_does_not_flood_the_event_log(inst: jetstore.Instance) -> None:
    """Every bad request gets its reply, but a 3-byte request must not cost ~450 bytes of
    events.jsonl each (a client looping on them would fill the disk the logs are on): event
    161 is rate-limited, and the next one says how many were left out."""
    event_log = Path(inst.directory) / "events.jsonl"

    def logged_161() -> list[dict[str, Any]]:
        with open(event_log, "rb") as lines:
            return [e for e in map(json.loads, lines) if e["id"] == 161]

    before = len(logged_161())
    raw = Raw(Path(inst.directory))
    raw.send(b"{}\n" * 2000)
    for _ in range(2000):
        assert raw.line()["ok"] is False
    emitted = len(logged_161()) - before
    assert 1 <= emitted <= 40, emitted
    time.sleep(1.1)
    assert raw.request({"op": "nope"})["ok"] is False
    last = logged_161()[-1]
    assert last["fields"]["suppressed"] == 2000 - emitted
    assert f"{2000 - emitted} more" in last["message"]
    with connect(inst.directory) as client:
        assert client.counters()["control_rejected"] == 2001
    raw.close()


def test_socket_is_owner_only_and_removed_on_close(tmp_path: Path) -> None:
    inst = open_instance(tmp_path / "i")
    path = tmp_path / "i" / "jetstore.sock"
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    started = [e for e in inst.events.recent() if e["name"] == "control_socket_started"]
    assert started and started[-1]["fields"]["path"] == str(path)
    threads = threading.active_count()
    inst.close()
    assert not path.exists()
    assert threading.active_count() < threads
    with pytest.raises(InstanceUnavailable, match="no instance serves") as caught:
        connect(tmp_path / "i")
    assert caught.value.path == str(path)


def test_stale_socket_left_by_a_crashed_process_is_replaced(tmp_path: Path) -> None:
    directory = tmp_path / "i"
    directory.mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(directory / "jetstore.sock"))  # bound, never removed: as after SIGKILL
    stale.close()
    with pytest.raises(InstanceUnavailable, match="stale socket"):
        connect(directory)
    with open_instance(directory) as inst:
        started = [e for e in inst.events.recent() if e["name"] == "control_socket_started"]
        assert started[-1]["fields"]["replaced_stale"] is True
        with connect(directory) as client:
            assert client.ping()["ok"]
    assert not (directory / "jetstore.sock").exists()


def test_a_non_socket_file_in_the_way_is_left_alone_and_the_instance_goes_on(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "i"
    directory.mkdir()
    (directory / "jetstore.sock").write_text("not mine")
    with open_instance(directory) as inst:
        failed = [e for e in inst.events.recent() if e["name"] == "control_socket_failed"]
        assert failed and "is not a socket" in failed[-1]["message"]
        load(inst, 0, 3)
        assert inst.registry.counts()["socket"] == 0
    assert (directory / "jetstore.sock").read_text() == "not mine"


def test_a_path_too_long_for_af_unix_is_an_event_not_a_failure(tmp_path: Path) -> None:
    directory = tmp_path / ("d" * 100)
    with open_instance(directory) as inst:
        failed = [e for e in inst.events.recent() if e["name"] == "control_socket_failed"]
        assert failed and "more than the 107" in failed[-1]["message"]
        assert failed[-1]["level"] == "error"
        load(inst, 0, 3)
    with pytest.raises(InstanceUnavailable, match="longer than"):
        connect(directory)


def test_an_interrupt_while_connecting_leaves_no_client_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect: `connect` released its socket only for the OSErrors it translates; a
    # KeyboardInterrupt while it waited for room in a full listen backlog (or during the
    # connect itself) left the socket open and registered in DEFAULT_REGISTRY for good.
    directory = tmp_path / "i"
    directory.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / "jetstore.sock"))
    listener.listen(0)  # never accepts: one pending connection fills the backlog
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    filler.connect(str(directory / "jetstore.sock"))
    owner = f"control-client:{directory}"
    fds = len(os.listdir("/proc/self/fd"))

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    import jetstore.control.client as client_module

    monkeypatch.setattr(client_module.time, "sleep", interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            connect(directory, timeout=5)
        assert DEFAULT_REGISTRY.total(owner) == 0
        assert len(os.listdir("/proc/self/fd")) == fds
    finally:
        filler.close()
        listener.close()


def test_control_socket_option_off(tmp_path: Path) -> None:
    with open_instance(tmp_path / "i", control_socket=False) as inst:
        assert not (tmp_path / "i" / "jetstore.sock").exists()
        assert inst.registry.counts()["socket"] == 0
        with pytest.raises(InstanceUnavailable):
            connect(tmp_path / "i")


def test_counters_json_is_the_instance_counters(inst: jetstore.Instance) -> None:
    raw = Raw(Path(inst.directory))
    reply = raw.request({"op": "counters"})
    raw.close()
    local = json.loads(json.dumps(inst.counters()))
    assert set(local) <= set(reply["counters"])
    assert reply["counters"]["databases"] == ["main"]


def _client_of_a_fake_backup(
    tmp_path: Path, file: dict[str, object], frames: bytes
) -> tuple[ControlClient, socket.socket]:
    """A client over a socket pair whose other end (returned, for the test to close) has sent
    a backup's start, its one database `file` (name, size) and then `frames`."""
    ours, theirs = socket.socketpair()
    handle = DEFAULT_REGISTRY.register(HandleKind.SOCKET, "test-client", "pair", ours.close)
    ours.settimeout(5)
    listed = {**file, "kind": "database", "database": "main"}
    theirs.sendall(
        b"".join(
            encode_line(m)
            for m in (
                {"ok": True, "op": "backup", "stage": "started", "session": 1, "kind": "full"},
                {"ok": True, "op": "backup", "stage": "files", "files": [listed]},
                {"ok": True, "op": "backup", "stage": "file", "file": listed},
            )
        )
        + frames
    )
    client = ControlClient(ours, handle, str(tmp_path), str(tmp_path / "jetstore.sock"))
    return client, theirs


def test_the_client_refuses_a_frame_longer_than_the_file_left(tmp_path: Path) -> None:
    """A frame header is trusted for nothing: a length past the file's announced size (a
    desynchronised or foreign stream) is a protocol error at once, not up to 4 GiB read
    into memory or a wait for bytes that never come."""
    client, theirs = _client_of_a_fake_backup(
        tmp_path, {"name": "main.edb", "size": 8192}, frame_header(0xFFFFFFF0)
    )
    started = time.monotonic()
    with pytest.raises(InvalidParameter, match="frame of 4294967280 bytes"):
        client.backup(tmp_path / "set")
    assert time.monotonic() - started < 2
    assert client.closed and not (tmp_path / "set.partial").exists()
    theirs.close()


@pytest.mark.parametrize("name", ["../escape", "ABSOLUTE", ".", ""])
def test_the_client_refuses_a_file_name_with_a_path_part(tmp_path: Path, name: str) -> None:
    """The set is written under DEST.partial by the names the socket sends: a name that is
    not a plain file name would put the file elsewhere (and discard would not remove it)."""
    name = str(tmp_path / "escape") if name == "ABSOLUTE" else name
    client, theirs = _client_of_a_fake_backup(
        tmp_path, {"name": name, "size": 4}, frame_header(4) + b"evil" + frame_header(0)
    )
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(InvalidParameter, match="not a plain file name"):
        client.backup(tmp_path / "set")
    assert client.closed
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    theirs.close()


def test_idle_connections_are_closed_so_they_cannot_lock_out_every_client(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local process opening 64 connections and sending nothing (or half a request, or
    one request and then nothing) held every client slot for good: the admin tools got
    OutOfSessions until it exited. A connection without a complete request for
    IDLE_TIMEOUT is now closed with an error line, and event 161 (rate-limited) says so."""
    control = inst._control
    assert control is not None
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 60.0)  # none expires while they connect
    baseline = Baseline.take(inst)
    squatters = [Raw(Path(inst.directory)) for _ in range(server_module.MAX_CLIENTS)]
    squatters[0].send(b'{"op": "ping"')  # half a request
    assert squatters[1].request({"op": "ping"})["ok"] is True  # one, then silence
    with pytest.raises(OutOfSessions), connect(inst.directory) as refused:
        refused.ping()
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 0.2)
    time.sleep(0.3)
    control._wake()  # the selector sleeps until the deadline of the old timeout: look now
    wait_for(lambda: not control._conns, "the idle connections to be closed", 10)
    with connect(inst.directory) as client:
        assert client.ping()["ok"] is True
    for raw in squatters:
        closing = raw.line()
        assert closing["error"]["name"] == "OutOfSessions"
        assert "idle" in closing["error"]["message"]
        assert raw.closed_by_server()
        raw.close()
    idle = [e for e in _rejections(inst) if "idle" in e["message"]]
    # At most 10 a second: 20 if the closes straddle two of the rate limit's windows.
    assert 1 <= len(idle) <= 2 * server_module.MAX_REJECTION_EVENTS
    baseline.wait(inst)


def test_a_client_sending_requests_is_not_closed_as_idle(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 1.0)
    raw = Raw(Path(inst.directory))
    for _ in range(7):  # longer than the timeout in all, never idle for half of it
        time.sleep(0.2)
        assert raw.request({"op": "ping"})["ok"] is True
    raw.close()


def test_peer_uid_is_the_kernels_word() -> None:
    ours, theirs = socket.socketpair()
    try:
        assert peer_uid(ours) == os.geteuid()
    finally:
        ours.close()
        theirs.close()


def test_the_client_refuses_a_server_run_by_another_user(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing checked who served the socket: a socket another user planted at the path
    (in a shared directory) got the client's requests and, for a backup, wrote the set."""
    import jetstore.control.client as client_module

    monkeypatch.setattr(client_module, "peer_uid", lambda sock: 4242)
    with pytest.raises(FileAccessDenied, match="uid 4242") as refused:
        connect(inst.directory)
    assert refused.value.path == str(Path(inst.directory) / "jetstore.sock")
    assert DEFAULT_REGISTRY.total(f"control-client:{inst.directory}") == 0


def test_the_server_refuses_a_client_run_by_another_user(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    baseline = Baseline.take(inst)
    monkeypatch.setattr(server_module, "peer_uid", lambda sock: 4242)
    raw = Raw(Path(inst.directory))
    reply = raw.line()
    assert reply["error"]["name"] == "FileAccessDenied" and "uid 4242" in reply["error"]["message"]
    assert raw.closed_by_server()
    raw.close()
    assert any("uid 4242" in e["message"] for e in _rejections(inst))
    baseline.wait(inst)


def test_a_connect_that_times_out_is_instance_unavailable_not_a_disk_error(
    tmp_path: Path,
) -> None:
    """A listen backlog that stays full until the timeout raised a TimeoutError that went
    through `from_os_error` as JET_errDiskIO, sending the operator to the disk."""
    directory = tmp_path / "i"
    directory.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / "jetstore.sock"))
    listener.listen(0)  # never accepts: one pending connection fills the backlog
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    filler.connect(str(directory / "jetstore.sock"))
    try:
        started = time.monotonic()
        with pytest.raises(InstanceUnavailable, match="did not accept") as refused:
            connect(directory, timeout=0.3)
        assert time.monotonic() - started < 2
        assert refused.value.path == str(directory / "jetstore.sock")
        assert DEFAULT_REGISTRY.total(f"control-client:{directory}") == 0
    finally:
        filler.close()
        listener.close()


def test_a_client_that_half_closes_after_its_requests_gets_every_reply(
    inst: jetstore.Instance,
) -> None:
    """A client that sends its requests and then shuts down its sending side (as `nc -N` or
    `socat` do) waits for the replies: the server dropped the connection at the EOF, with
    the replies not yet sent (past the socket buffer) and the requests not yet answered
    (past the backlog limit) lost."""
    baseline = Baseline.take(inst)
    raw = Raw(Path(inst.directory))
    count = 2000  # ~4 MiB of replies: past the socket buffer and the backlog limit
    raw.send(b'{"op": "counters"}\n' * count + b'{"op": "pi')  # and half a request
    raw.sock.shutdown(socket.SHUT_WR)
    for _ in range(count):
        assert raw.line()["op"] == "counters"
    assert raw.closed_by_server() and not raw.buffer
    raw.close()
    baseline.wait(inst)


def test_the_client_refuses_a_frame_over_the_protocols_limit(tmp_path: Path) -> None:
    """Frames are at most 1 MiB: checking the length only against the file's size let a
    desynchronised stream of a large database make the client buffer gigabytes (or wait
    for them until its timeout)."""
    client, theirs = _client_of_a_fake_backup(
        tmp_path, {"name": "main.edb", "size": 8 << 30}, frame_header(MAX_FRAME + 1)
    )
    started = time.monotonic()
    with pytest.raises(InvalidParameter, match=f"frame of {MAX_FRAME + 1} bytes"):
        client.backup(tmp_path / "set")
    assert time.monotonic() - started < 2
    assert client.closed and not (tmp_path / "set.partial").exists()
    theirs.close()


def test_a_client_closed_as_idle_is_told_why_at_its_next_request(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server says why it closes a connection before it does; the client's next send
    failed (EPIPE) and it reported only "closed the control connection (Broken pipe)". (A
    request with side effects is the one that reports it: ping and the like reconnect.)"""
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 0.2)
    control = inst._control
    assert control is not None
    with connect(inst.directory) as client:
        assert client.ping()["ok"] is True
        wait_for(lambda: not control._conns, "the idle connection to be closed", 5)
        with pytest.raises(OutOfSessions, match=r"idle for 0\.2 s"):
            client.request({"op": "complete"})


def test_the_client_says_a_file_in_the_way_is_not_a_stale_socket(tmp_path: Path) -> None:
    """A regular file at the socket's path (which the instance leaves alone, serving no
    socket: event 162) was reported as "a stale socket left by a process that ended"."""
    directory = tmp_path / "i"
    directory.mkdir()
    (directory / "jetstore.sock").write_text("not a socket")
    with pytest.raises(InstanceUnavailable, match="not a socket") as refused:
        connect(directory)
    assert "stale" not in str(refused.value)
    assert DEFAULT_REGISTRY.total(f"control-client:{directory}") == 0


def test_a_send_that_times_out_is_reported_after_the_timeout_not_twice_it(
    tmp_path: Path,
) -> None:
    """After a failed send the client looks for an error the server left unread; after a
    send that timed out, that look waited for the socket's whole timeout again (a socket
    with a timeout polls before it reads, whatever MSG_DONTWAIT says), and the error then
    said the instance "closed the control connection (timed out)"."""
    ours, theirs = socket.socketpair()
    handle = DEFAULT_REGISTRY.register(HandleKind.SOCKET, "test-client", "pair", ours.close)
    ours.setblocking(False)
    try:
        while True:
            ours.send(b"x" * 65536)  # the server reads nothing: fill the buffers
    except BlockingIOError:
        pass
    ours.settimeout(1.0)
    client = ControlClient(ours, handle, str(tmp_path), str(tmp_path / "jetstore.sock"))
    started = time.monotonic()
    with pytest.raises(InstanceUnavailable, match="did not answer"):
        client.ping()
    assert time.monotonic() - started < 1.6
    client.close()
    theirs.close()


def test_a_long_lived_client_reconnects_once_after_the_idle_close(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An application polling counters() less often than IDLE_TIMEOUT got OutOfSessions
    ("idle for 30 s") on every poll after the first: the server had closed the connection.
    A request without side effects now reconnects once (the same checks as connect());
    a backup, which has side effects, is never repeated and reports the idle close."""
    control = inst._control
    assert control is not None
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 0.2)
    baseline = Baseline.take(inst)
    owner = f"control-client:{inst.directory}"
    with connect(inst.directory) as client:
        for ask in (client.counters, client.ping, lambda: client.events(5)):
            assert ask()
            wait_for(lambda: not control._conns, "the idle connection to be closed", 5)
            assert ask()  # the server had closed it: answered all the same
            assert DEFAULT_REGISTRY.total(owner) == 1  # the old socket is closed
        wait_for(lambda: not control._conns, "the idle connection to be closed", 5)
        with pytest.raises(OutOfSessions, match="idle"):
            client.backup(tmp_path / "set")
        assert client.closed
    assert not (tmp_path / "set").exists() and not (tmp_path / "set.partial").exists()
    assert inst.counters()["backup_sessions_active"] == 0
    assert DEFAULT_REGISTRY.total(owner) == 0
    baseline.wait(inst)


def test_a_reconnect_after_the_idle_close_checks_who_serves_the_socket(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new connection is made as connect() makes one: a socket served by another user
    by then (the instance closed, someone else's socket at the path) is refused."""
    import jetstore.control.client as client_module

    control = inst._control
    assert control is not None
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 0.2)
    owner = f"control-client:{inst.directory}"
    with connect(inst.directory) as client:
        assert client.ping()["ok"] is True
        wait_for(lambda: not control._conns, "the idle connection to be closed", 5)
        monkeypatch.setattr(client_module, "peer_uid", lambda sock: 4242)
        with pytest.raises(FileAccessDenied, match="uid 4242"):
            client.counters()
        assert DEFAULT_REGISTRY.total(owner) == 0


def test_a_client_dropped_without_close_closes_its_socket(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: a ControlClient dropped without close() stayed registered, its socket open
    (the registry's closer held it), for the life of the process. Collected, it now closes
    the socket it uses (also one a reconnect made) with a ResourceWarning, without taking
    the registry's lock: the collector may run its finalizer on a thread holding it."""
    control = inst._control
    assert control is not None
    monkeypatch.setattr(server_module, "IDLE_TIMEOUT", 0.2)
    baseline = Baseline.take(inst)
    owner = f"control-client:{inst.directory}"
    clients = [connect(inst.directory)]
    assert clients[0].ping()["ok"] is True
    wait_for(lambda: not control._conns, "the idle connection to be closed", 5)
    assert clients[0].ping()["ok"] is True  # on a new connection
    sock = clients[0]._sock
    assert DEFAULT_REGISTRY.total(owner) == 1
    dropper = threading.Thread(target=clients.clear)
    with pytest.warns(ResourceWarning, match="control client of .* was not closed"):
        with DEFAULT_REGISTRY._lock:
            dropper.start()
            dropper.join(5)
            assert not dropper.is_alive(), "the finalizer waited for the registry's lock"
        gc.collect()
    assert sock.fileno() == -1, "the dropped client's socket is still open"
    assert DEFAULT_REGISTRY.total(owner) == 0
    baseline.wait(inst)


def test_a_reply_that_comes_after_its_timeout_is_not_taken_for_the_next_ones(
    inst: jetstore.Instance, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Defect: after a request timed out, its late reply stayed in the connection and was
    read as the reply to the next request: ping() returned the counters, and events() then
    failed with a KeyError. The client now gives up a connection whose reply did not come
    whole; the next request without side effects reconnects, and any other request says why
    it cannot go on."""
    slow = threading.Event()
    counters = inst.counters

    def late_counters() -> dict[str, Any]:
        if slow.is_set():
            slow.clear()
            time.sleep(1.5)
        return counters()

    monkeypatch.setattr(inst, "counters", late_counters)
    baseline = Baseline.take(inst)
    owner = f"control-client:{inst.directory}"
    with connect(inst.directory, timeout=0.8) as client:
        slow.set()
        with pytest.raises(InstanceUnavailable, match="did not answer"):
            client.counters()
        time.sleep(1.5)  # the late reply has come by now
        assert client.ping()["op"] == "ping"
        assert [e["name"] for e in client.events(1)]
        assert "log_generation" in client.counters()
        assert DEFAULT_REGISTRY.total(owner) == 1
        slow.set()
        with pytest.raises(InstanceUnavailable, match="did not answer"):
            client.counters()
        with pytest.raises(InstanceUnavailable, match=r"did not answer.*in time.*given up"):
            client.backup(tmp_path / "set")
        assert not (tmp_path / "set").exists() and not (tmp_path / "set.partial").exists()
        client.close()
        with pytest.raises(InstanceUnavailable, match=r"control client .* is closed"):
            client.ping()  # closed by its owner: no reconnect
    assert DEFAULT_REGISTRY.total(owner) == 0
    baseline.wait(inst)


_HUGE = "\U0001f600" * 16_000  # 64,000 bytes as UTF-8, 192,000 once JSON-escaped


@pytest.mark.parametrize(
    "request_",
    [{"op": _HUGE}, {"op": "events", "limit": _HUGE}, {"op": "backup", "kind": [_HUGE]}],
    ids=["op", "limit", "kind"],
)
def test_a_bad_request_quotes_what_it_sent_briefly(
    inst: jetstore.Instance, request_: dict[str, Any]
) -> None:
    """Defect: a rejected value was quoted whole, in the reply and twice in event 161 (the
    message and the op field), each character JSON-escaped: one 64 KiB request was a
    384 KiB line of events.jsonl (rotating the history away every 21 requests), and the 200
    events kept in memory made an `events` reply over the 64 MiB every client refuses."""
    baseline = Baseline.take(inst)
    event_log = Path(inst.directory) / "events.jsonl"
    raw = Raw(Path(inst.directory))
    raw.send(json.dumps(request_, ensure_ascii=False).encode() + b"\n")
    reply = raw.line()
    assert reply["ok"] is False and reply["error"]["name"] == "InvalidParameter"
    message = reply["error"]["message"]
    assert len(message) < 1000 and "characters)" in message, message[:300]
    assert raw.request({"op": "ping"})["ok"] is True
    raw.close()
    with open(event_log, "rb") as lines:
        rejected = [line for line in lines if json.loads(line)["id"] == 161]
    assert len(rejected[-1]) < 4096, rejected[-1][:300]
    baseline.wait(inst)


@pytest.mark.parametrize("kind", ["fulll", "FULL", ""])
def test_an_unknown_backup_kind_is_a_bad_argument_and_the_connection_goes_on(
    inst: jetstore.Instance, kind: str, tmp_path: Path
) -> None:
    """Defect: a kind that is not a string was a bad argument (error reply, event 161, the
    connection goes on), but an unknown string started a backup worker thread, which
    refused it, logged nothing and closed the connection: the client's next request was
    ECONNRESET."""
    baseline = Baseline.take(inst)
    before = len(_rejections(inst))
    raw = Raw(Path(inst.directory))
    reply = raw.request({"op": "backup", "kind": kind})
    assert reply["ok"] is False and reply["error"]["name"] == "InvalidParameter"
    assert "full, incremental, differential, copy" in reply["error"]["message"]
    assert raw.request({"op": "ping"})["ok"] is True  # the connection still works
    raw.close()
    assert len(_rejections(inst)) == before + 1
    assert _rejections(inst)[-1]["fields"]["op"] == "backup"
    with connect(inst.directory) as client:
        with pytest.raises(InvalidParameter, match="must be one of"):
            client.backup(tmp_path / "set", kind)
        assert client.closed
    assert not (tmp_path / "set").exists() and not (tmp_path / "set.partial").exists()
    assert inst.counters()["backup_sessions_active"] == 0
    baseline.wait(inst)  # the server has read all the client sent (and dropped it)
    # The refusal only: the client sends no abort for a backup that never started.
    assert len(_rejections(inst)) == before + 2


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), None, "5"])
def test_a_client_timeout_that_is_no_wait_is_refused_clearly(
    inst: jetstore.Instance, timeout: object
) -> None:
    """Defect: timeout=0 made a non-blocking socket, whose first read failed at once as
    "the instance closed the control connection (Resource temporarily unavailable)"; -1
    and NaN were a ValueError, infinity an OverflowError, None a TypeError, none of them a
    JetError. A timeout must be a positive number of seconds."""
    baseline = Baseline.take(inst)
    with pytest.raises(InvalidParameter, match="timeout") as refused:
        connect(inst.directory, timeout=timeout)  # type: ignore[arg-type]
    assert "jetstore.sock" in str(refused.value)
    assert DEFAULT_REGISTRY.total(f"control-client:{inst.directory}") == 0
    baseline.wait(inst)


def test_a_backup_asked_for_as_a_plain_request_is_refused_before_it_starts(
    inst: jetstore.Instance,
) -> None:
    """Defect: request({"op": "backup"}) returned the "started" line and left a backup
    session streaming into a connection nobody read (its logs pinned until the stall
    timeout); the next ping() returned the stream's "files" line as its reply. A backup
    streams files and needs a set to write them to: `backup(dest)` takes it."""
    baseline = Baseline.take(inst)
    with connect(inst.directory) as client:
        with pytest.raises(InvalidParameter, match=r"backup\(dest"):
            client.request({"op": "backup", "kind": "full"})
        assert client.ping()["op"] == "ping"
    assert inst.counters()["backup_sessions_active"] == 0
    assert inst.counters()["backups_aborted"] == 0
    baseline.wait(inst)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() of a threaded process
def test_a_client_learns_at_once_that_the_instance_closed_while_a_forked_child_lives(
    tmp_path: Path,
) -> None:
    """Defect: the server closed its connections with close() alone; a child forked while
    a client was connected holds a copy of the server's end, so the close ended nothing: the
    client's next request waited for its whole timeout, and was told the instance "did not
    answer in time" rather than that it had closed. A shutdown() ends the connection for
    every copy."""
    inst = open_instance(tmp_path / "i")
    load(inst, 0, 3)
    with connect(inst.directory, timeout=10) as client:
        assert client.ping()["ok"] is True
        pid = os.fork()
        if pid == 0:  # the child holds its copies of every descriptor, then leaves
            time.sleep(8)
            os._exit(0)
        try:
            inst.close()
            started = time.monotonic()
            with pytest.raises(InstanceUnavailable, match="no control socket") as refused:
                client.events(1)
            assert "in time" not in str(refused.value)
            assert time.monotonic() - started < 3
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)


def test_a_closed_client_says_so_and_stays_closed(inst: jetstore.Instance, tmp_path: Path) -> None:
    """Defect: a request on a client after close() (or after a backup, which uses its
    connection up) quietly made a new connection, registered and left open, when the client
    had answered a request before; otherwise it said that the instance "closed the control
    connection (Bad file descriptor)". It now says the client is closed, and stays so."""
    baseline = Baseline.take(inst)
    owner = f"control-client:{inst.directory}"
    with connect(inst.directory) as client:
        assert client.ping()["ok"] is True
    for ask in (client.ping, client.counters, lambda: client.backup(tmp_path / "set")):
        with pytest.raises(InstanceUnavailable, match=r"control client .* is closed"):
            ask()
        assert client.closed and DEFAULT_REGISTRY.total(owner) == 0
    assert not (tmp_path / "set").exists() and not (tmp_path / "set.partial").exists()
    with (
        connect(inst.directory) as client,
        pytest.raises(InstanceUnavailable, match=r"control client .* is closed"),
    ):
        client.close()
        client.events(1)
    baseline.wait(inst)

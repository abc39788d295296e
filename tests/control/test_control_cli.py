"""The CLI on an open instance: `jetstore counters` reads live counters through the control
socket, `jetstore backup` takes an online backup through it (any kind)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from control_support import Baseline, load, open_instance, wait_idle

from jetstore.backup.backupset import SetWriter, read_manifest
from jetstore.cli.main import run
from jetstore.errors import DiskFull


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    capsys.readouterr()
    code = run([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_live_counters_and_online_backups_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_instance(tmp_path / "i") as inst:
        load(inst, 0, 100)
        baseline = Baseline.take(inst)
        code, document = _json(capsys, "counters", str(tmp_path / "i"))
        assert code == 0, document
        result = document["result"]
        assert isinstance(result, dict)
        assert result["live"] is True and result["opened_for_this"] is False
        assert result["counters"]["commits"] == inst.counters()["commits"]
        code, document = _json(capsys, "backup", str(tmp_path / "i"), "--to", str(tmp_path / "f"))
        assert code == 0, document
        load(inst, 100, 100)
        code, document = _json(
            capsys,
            "backup",
            str(tmp_path / "i"),
            "--to",
            str(tmp_path / "d"),
            "--kind",
            "differential",
            "--compress",
        )
        assert code == 0, document
        wait_idle(inst)
        baseline.wait(inst)
        assert inst.counters()["backups_completed"] == 2
    assert read_manifest(tmp_path / "f").kind.value == "full"
    differential = read_manifest(tmp_path / "d")
    assert differential.kind.value == "differential" and differential.compression == "zstd"


def test_online_backup_of_an_instance_without_a_socket_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open_instance(tmp_path / "i", control_socket=False) as inst:
        load(inst, 0, 10)
        code, document = _json(capsys, "backup", str(tmp_path / "i"), "--to", str(tmp_path / "f"))
        assert code == 3
        error = document["error"]
        assert isinstance(error, dict)
        assert "serves no control socket" in str(error["detail"])
        assert not (tmp_path / "f").exists()


def test_an_open_instance_whose_path_is_too_long_for_a_socket_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # docs/cli.md: an instance open elsewhere that serves no socket, "opened with
    # control_socket=False, or a directory path too long for a socket", is exit 3.
    directory = tmp_path / ("d" * 100)
    with open_instance(directory) as inst:
        load(inst, 0, 3)
        code, document = _json(capsys, "counters", str(directory))
        assert code == 3, document
        code, document = _json(capsys, "backup", str(directory), "--to", str(tmp_path / "f"))
        assert code == 3, document
        error = document["error"]
        assert isinstance(error, dict) and "longer than the 107 bytes" in str(error["detail"])
        assert not (tmp_path / "f").exists()


def test_online_backup_errors_keep_their_own_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/cli.md: 2 for DEST not empty, 5 for a full destination disk, 3 only when the
    # instance cannot be backed up (here: an incremental with no full backup to follow).
    with open_instance(tmp_path / "i") as inst:
        load(inst, 0, 10)
        baseline = Baseline.take(inst)
        instance = str(tmp_path / "i")
        (tmp_path / "taken").mkdir()
        (tmp_path / "taken" / "other").write_text("x")
        code, document = _json(capsys, "backup", instance, "--to", str(tmp_path / "taken"))
        assert code == 2, document
        assert document["error"]["name"] == "InvalidPath"  # type: ignore[index]
        code, document = _json(
            capsys, "backup", instance, "--to", str(tmp_path / "inc"), "--kind", "incremental"
        )
        assert code == 3, document
        assert document["error"]["name"] == "MissingFullBackup"  # type: ignore[index]

        def disk_full(self: SetWriter, file: object, chunks: object) -> None:
            raise DiskFull(
                f"write failed on '{self.partial}': [Errno 28] No space left on device",
                path=self.partial,
            )

        monkeypatch.setattr(SetWriter, "add", disk_full)
        code, document = _json(capsys, "backup", instance, "--to", str(tmp_path / "full"))
        assert code == 5, document
        assert document["error"]["name"] == "DiskFull"  # type: ignore[index]
        assert document["error"]["exit_code"] == 5  # type: ignore[index]
        monkeypatch.undo()
        assert not (tmp_path / "full").exists()
        wait_idle(inst)
        baseline.wait(inst)
        code, document = _json(capsys, "backup", instance, "--to", str(tmp_path / "full"))
        assert code == 0, document


def test_recover_into_a_copy_skips_a_stale_control_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with open_instance(tmp_path / "i") as inst:
        load(inst, 0, 10)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "i" / "jetstore.sock"))  # as a SIGKILLed process leaves it
    stale.close()
    code, document = _json(capsys, "recover", str(tmp_path / "i"), "--into", str(tmp_path / "c"))
    assert code == 0, document
    assert not (tmp_path / "c" / "jetstore.sock").exists()


@pytest.mark.parametrize("command", ["counters", "backup"])
def test_a_socket_served_by_another_user_is_refused_by_the_cli(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    import jetstore.control.client as client_module

    with open_instance(tmp_path / "i") as inst:
        monkeypatch.setattr(client_module, "peer_uid", lambda sock: 4242)
        extra = ["--to", str(tmp_path / "set")] if command == "backup" else []
        code, document = _json(capsys, command, str(tmp_path / "i"), *extra)
        assert code == 4, document
        error = document["error"]
        assert isinstance(error, dict) and error["name"] == "FileAccessDenied", error
        assert "uid 4242" in str(error["message"])
        assert inst.counters()["backups_completed"] == 0
    assert not (tmp_path / "set").exists()


@pytest.mark.parametrize("failure", [KeyboardInterrupt, DiskFull])
def test_the_cli_closes_its_control_connection_when_the_backup_never_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    failure: type[BaseException],
) -> None:
    """A failure or Ctrl-C between connecting and client.backup() (the progress bar's
    start) left the connection open until the process exited."""
    from jetstore.cli import backup_cmd
    from jetstore.io.handles import DEFAULT_REGISTRY

    def broken_progress(*args: object, **kwargs: object) -> None:
        if failure is KeyboardInterrupt:
            raise KeyboardInterrupt
        raise DiskFull("no room for the progress bar", hint="free space")

    with open_instance(tmp_path / "i") as inst:
        load(inst, 0, 10)
        monkeypatch.setattr(backup_cmd, "progress", broken_progress)
        with pytest.raises(failure):
            backup_cmd._online_backup(inst.directory, str(tmp_path / "f"), "full", False, True)
        assert DEFAULT_REGISTRY.total(f"control-client:{inst.directory}") == 0
        assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    "when", ["complete sent", "before complete", "complete not gone out", "asking again"]
)
def test_a_ctrl_c_once_the_set_is_written_says_whether_the_instance_recorded_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    when: str,
) -> None:
    """A Ctrl-C after the set at DEST was published (before or while `complete` went to the
    instance) ended with the plain "aborted": nothing said that DEST was whole and kept, nor
    whether the instance recorded the backup, which decides what later incrementals continue
    from. The CLI now says it (asking the instance once `complete` was sent; a second Ctrl-C
    there leaves it unknown, with the commands that tell), exit 130, in --json too."""
    from jetstore.control import client as client_module
    from jetstore.control.client import ControlClient
    from jetstore.io.handles import DEFAULT_REGISTRY

    if when == "before complete":
        publish = SetWriter.publish

        def publish_then_interrupt(self: SetWriter, manifest: object) -> object:
            publish(self, manifest)  # type: ignore[arg-type]
            raise KeyboardInterrupt

        monkeypatch.setattr(SetWriter, "publish", publish_then_interrupt)
    else:
        send = ControlClient._send

        def send_then_interrupt(self: ControlClient, message: dict[str, object]) -> None:
            if message == {"op": "complete"} and when == "complete not gone out":
                raise KeyboardInterrupt  # the instance aborts on the hang-up: asked, it says
            send(self, message)
            if message == {"op": "complete"}:
                raise KeyboardInterrupt

        monkeypatch.setattr(ControlClient, "_send", send_then_interrupt)
    if when == "asking again":

        def interrupted_query(*args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(client_module, "backup_outcome", interrupted_query)
    with open_instance(tmp_path / "i") as inst:
        load(inst, 0, 10)
        baseline = Baseline.take(inst)
        dest = tmp_path / "f"
        code, document = _json(capsys, "backup", inst.directory, "--to", str(dest))
        assert code == 130, document
        error = document["error"]
        assert isinstance(error, dict)
        assert error["name"] == "KeyboardInterrupt" and error["category"] == "interrupted"
        assert error["exit_code"] == 130 and error["path"] == str(dest)
        assert isinstance(error["session"], int)
        message = str(error["message"])
        assert f"backup set '{dest}' was written: it is complete and durable" in message
        recorded = when in ("complete sent", "asking again")
        expected = {"complete sent": True, "asking again": None}.get(when, False)
        assert error["backup_recorded"] is expected
        if when == "complete not gone out":
            assert "event 152 backup_aborted" in message
        if expected is None:
            assert f"jetstore events {inst.directory}" in message
            assert f"jetstore status {inst.directory}" in message
        wait_idle(inst)
        baseline.wait(inst)
        assert DEFAULT_REGISTRY.total(f"control-client:{inst.directory}") == 0
        counters = inst.counters()
        assert counters["backups_completed"] == (1 if recorded else 0)
        assert counters["backups_aborted"] == (0 if recorded else 1)
    assert read_manifest(dest).kind.value == "full"


@pytest.mark.parametrize("refusal", ["circular logging", "no client slot"])
def test_a_backup_the_instance_refuses_exits_3(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    refusal: str,
) -> None:
    """docs/cli.md: online, what the instance refuses is exit 3. An incremental refused for
    circular logging (InvalidBackup, category usage) exited 2, as for a bad option, and a
    socket serving its maximum of clients (OutOfSessions, resource) exited 5, the code of
    an internal error or a full destination disk."""
    from jetstore.control import server

    kind = "incremental" if refusal == "circular logging" else "full"
    with open_instance(tmp_path / "i", circular_logging=refusal == "circular logging") as inst:
        load(inst, 0, 10)
        if refusal == "no client slot":
            monkeypatch.setattr(server, "MAX_CLIENTS", 0)
        code, document = _json(
            capsys, "backup", inst.directory, "--to", str(tmp_path / "set"), "--kind", kind
        )
        error = document["error"]
        assert isinstance(error, dict)
        assert error["name"] == (
            "InvalidBackup" if refusal == "circular logging" else "OutOfSessions"
        ), error
        assert code == 3 and error["exit_code"] == 3, document
        wait_idle(inst)
    assert not (tmp_path / "set").exists()


def test_a_directory_held_by_an_offline_tool_is_not_called_an_open_instance(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`jetstore backup` on a directory an offline backup (or restore, or repair) holds took
    the holder for an open instance without a socket: "the instance ... is open ... but
    serves no control socket", and advised opening it with control_socket=True."""
    from jetstore.io.files import FileSystem
    from jetstore.io.locking import acquire_directory_lock

    with open_instance(tmp_path / "i") as inst:
        load(inst, 0, 10)
    lock = acquire_directory_lock(
        FileSystem(), str(tmp_path / "i"), owner="test-holder", holder="an offline backup"
    )
    try:
        code, document = _json(capsys, "backup", str(tmp_path / "i"), "--to", str(tmp_path / "set"))
    finally:
        lock.release()
    assert code == 3, document
    error = document["error"]
    assert isinstance(error, dict)
    assert "an offline backup" in str(error["detail"])
    assert "is open" not in str(error["detail"]) and "control_socket" not in str(error["hint"])
    assert "wait for it to end" in str(error["hint"])
    assert not (tmp_path / "set").exists()


@pytest.mark.parametrize("trouble", ["slow", "no free slot"])
def test_live_counters_that_do_not_come_are_not_blamed_on_a_missing_socket(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    trouble: str,
) -> None:
    """Defect: an instance that serves its socket but did not answer in time was reported
    as serving none ("opened with control_socket=False, or its directory path is too long"),
    sending the operator after a setting that was fine; one with every client slot taken
    ended with exit 5, a full disk's code. Both are now exit 3 with the socket's own word."""
    from jetstore.cli import counters as counters_module
    from jetstore.control import client as client_module
    from jetstore.control import server as server_module

    with open_instance(tmp_path / "i") as inst:
        load(inst, 0, 3)
        if trouble == "slow":
            fast = inst.counters

            def slow() -> dict[str, object]:
                time.sleep(1.0)
                return fast()

            monkeypatch.setattr(inst, "counters", slow)
            monkeypatch.setattr(
                counters_module,
                "connect",
                lambda path, timeout: client_module.connect(path, timeout=0.3),
            )
            expected = "did not answer"
        else:
            monkeypatch.setattr(server_module, "MAX_CLIENTS", 0)
            expected = "serves 0 clients already"
        code, document = _json(capsys, "counters", str(tmp_path / "i"))
        assert code == 3, document
        error = document["error"]
        assert isinstance(error, dict)
        assert expected in str(error["message"]), error
        assert "control_socket=False" not in str(error["message"])
        assert "jetstore.sock" in str(error["message"])
        time.sleep(1.0 if trouble == "slow" else 0)


@pytest.mark.parametrize("command", ["counters", "backup"])
def test_a_socket_that_accepts_no_connection_is_not_called_missing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """Defect: a control socket whose server accepts nothing (its process stopped, its
    listen backlog full) was reported as no socket at all: "serves no control socket",
    with the advice to open the instance with control_socket=True. It is served, and did
    not accept in time: exit 3 with that."""
    import socket

    from jetstore.control import client as client_module

    connect = client_module.connect
    monkeypatch.setattr(
        client_module, "connect", lambda path, timeout=120.0: connect(path, timeout=0.3)
    )
    from jetstore.cli import counters as counters_module

    monkeypatch.setattr(
        counters_module, "connect", lambda path, timeout=120.0: connect(path, timeout=0.3)
    )
    directory = tmp_path / "i"
    with open_instance(directory, control_socket=False):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(directory / "jetstore.sock"))
        listener.listen(0)
        waiting = []
        try:
            while True:  # fill the backlog: nobody accepts
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.setblocking(False)
                waiting.append(client)
                client.connect(str(directory / "jetstore.sock"))
        except BlockingIOError:
            pass
        try:
            extra = ["--to", str(tmp_path / "set")] if command == "backup" else []
            code, document = _json(capsys, command, str(directory), *extra)
        finally:
            for sock in (*waiting, listener):
                sock.close()
            (directory / "jetstore.sock").unlink()
    assert code == 3, document
    error = document["error"]
    assert isinstance(error, dict)
    assert "did not accept a connection" in str(error["message"]), error
    assert "control_socket=False" not in str(error["message"])
    assert "serves no control socket" not in str(error["message"])
    assert not (tmp_path / "set").exists()

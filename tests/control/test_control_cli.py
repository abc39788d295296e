"""The CLI on an open instance: `jetstore counters` reads live counters through the control
socket, `jetstore backup` takes an online backup through it (any kind)."""

from __future__ import annotations

import json
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

"""`jetstore backup` and `jetstore verify-backup` end to end (click's CliRunner): the JSON
envelope, the exit codes (0 ok, 1 damaged set, 2 usage, 3 dirty or open instance, 4 missing
path) and the text output."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import jetstore
from jetstore.backup.backupset import MANIFEST_NAME, PARTIAL_SUFFIX
from jetstore.cli.main import cli
from jetstore.errors import DiskIO
from jetstore.io.files import FileSystem, IOEvent

OPTIONS: dict[str, Any] = {"log_file_size": 64 * 1024, "checkpoint_interval": 1e6}


def build(path: Path, *, crash: bool = False) -> None:
    inst = jetstore.open(path, **OPTIONS)
    db = inst.database("main", create=True)
    db.create_table("kv", [("k", "int"), ("v", "text")], primary_key="k")
    for i in range(40):
        with db.transaction() as txn:
            txn.table("kv").insert({"k": i, "v": "c" * 1000})
    if crash:
        inst.simulate_crash()
    else:
        inst.close()


def invoke(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def invoke_json(*args: str | os.PathLike[str]) -> tuple[int, dict[str, Any]]:
    code, out, _err = invoke(*args, "--json")
    document = json.loads(out)  # exactly one JSON object on stdout
    assert document["schema"] == 1
    assert document["ok"] is (code == 0)
    return code, document


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    path = tmp_path / "clean"
    build(path)
    return path


@pytest.fixture
def dirty(tmp_path: Path) -> Path:
    path = tmp_path / "dirty"
    build(path, crash=True)
    return path


def test_backup_then_verify(clean: Path, tmp_path: Path) -> None:
    dest = tmp_path / "set"
    code, document = invoke_json("backup", clean, "--to", dest, "--compress")
    assert code == 0, document
    assert document["command"] == "backup"
    result = document["result"]
    assert result["path"] == str(dest)
    assert result["offline"] is True and result["kind"] == "full"
    assert result["compression"] == "zstd"
    assert [f["name"] for f in result["files"]] == ["main.edb"]
    assert (dest / MANIFEST_NAME).exists()

    code, document = invoke_json("verify-backup", dest)
    assert code == 0
    assert document["command"] == "verify-backup"
    assert document["result"]["ok"] is True

    code, out, _err = invoke("verify-backup", dest)
    assert code == 0
    assert "ok: full offline backup set" in out

    # Damage: exit 1, the problem named.
    stored = dest / "main.edb.zst"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    code, document = invoke_json("verify-backup", dest)
    assert code == 1
    problems = document["result"]["problems"]
    assert problems and problems[0]["file"] == "main.edb"
    code, out, _err = invoke("verify-backup", dest)
    assert code == 1
    assert "problem" in out and "main.edb" in out


def test_backup_text_output(clean: Path, tmp_path: Path) -> None:
    code, out, _err = invoke("backup", clean, "--to", tmp_path / "set")
    assert code == 0
    assert "backup set written" in out
    assert "main.edb" in out


def test_backup_of_a_dirty_instance(dirty: Path, tmp_path: Path) -> None:
    dest = tmp_path / "set"
    code, document = invoke_json("backup", dirty, "--to", dest)
    assert code == 3
    error = document["error"]
    assert error["name"] == "DatabaseDirtyShutdown" and error["code"] == -550
    assert "--recover" in error["hint"]
    assert not dest.exists()

    code, _out, err = invoke("backup", dirty, "--to", dest)
    assert code == 3
    assert "JET_errDatabaseDirtyShutdown" in err

    code, document = invoke_json("backup", dirty, "--to", dest, "--recover")
    assert code == 0, document
    assert invoke_json("verify-backup", dest)[0] == 0


def pending_data_loss(path: Path) -> None:
    """A crashed instance whose data-loss recovery recorded its loss but failed to move the
    logs aside: `lost-logs-*/data-loss.pending.json`, which the next open finishes."""
    inst = jetstore.open(path, **OPTIONS)
    db = inst.database("main", create=True)
    db.create_table("kv", [("k", "int"), ("v", "text")], primary_key="k")
    for i in range(200):
        with db.transaction() as txn:
            txn.table("kv").insert({"k": i, "v": "c" * 1000})
    inst.simulate_crash()
    generations = sorted(name for name in os.listdir(path) if name.startswith("edb0"))
    assert len(generations) >= 3
    os.unlink(path / generations[1])

    def failed_move(event: IOEvent) -> None:
        if event.op == "rename" and "lost-logs" in event.target and "data-loss" not in event.target:
            raise OSError(errno.EIO, "injected: the move into lost-logs fails")

    with pytest.raises(DiskIO):
        jetstore.open(
            path, filesystem=FileSystem(hook=failed_move), accept_data_loss=True, **OPTIONS
        )
    assert list(path.glob("lost-logs-*/data-loss.pending.json"))


def test_backup_recover_reports_the_data_loss_it_finishes(tmp_path: Path) -> None:
    # The soft recovery of `--recover` finishes a pending data loss (as every open does):
    # its report went nowhere, and the backup said only "written".
    for as_json in (True, False):
        live = tmp_path / f"live-{as_json}"
        pending_data_loss(live)
        dest = tmp_path / f"set-{as_json}"
        if as_json:
            code, document = invoke_json("backup", live, "--to", dest, "--recover")
            assert code == 0, document
            loss = document["result"]["data_loss"]
            assert loss is not None and loss["databases"] == ["main"]
            assert "missing" in loss["reason"] and loss["moved_logs_to"]
        else:
            code, out, err = invoke("backup", live, "--to", dest, "--recover")
            assert code == 0 and "backup set written" in out
            assert "warning: recovery accepted data loss" in err and "main" in err
        assert not list(live.glob("lost-logs-*/data-loss.pending.json"))
    code, document = invoke_json("backup", tmp_path / "live-True", "--to", tmp_path / "again")
    assert code == 0 and document["result"]["data_loss"] is None


def test_an_offline_backup_without_recover_refuses_a_pending_data_loss(tmp_path: Path) -> None:
    # Its databases are clean already (the loss was accepted, the logs not yet set aside):
    # the backup went ahead, finishing nothing and saying nothing of the loss, and took
    # the log signature of the stream the loss ended for its set's.
    live = tmp_path / "live"
    pending_data_loss(live)
    dest = tmp_path / "set"
    code, document = invoke_json("backup", live, "--to", dest)
    assert code == 3, document
    error = document["error"]
    assert error["name"] == "DatabaseDirtyShutdown" and error["code"] == -550
    assert "data-loss.pending.json" in error["message"]
    assert "--recover" in error["hint"] and "jetstore recover" in error["hint"]
    assert not dest.exists()
    assert list(live.glob("lost-logs-*/data-loss.pending.json"))
    code, document = invoke_json("backup", live, "--to", dest, "--recover")
    assert code == 0, document
    assert document["result"]["data_loss"]["databases"] == ["main"]


def test_backup_of_an_open_instance_without_a_control_socket(clean: Path, tmp_path: Path) -> None:
    """An open instance is backed up online through its control socket (tests/control); one
    that serves none is refused with exit 3, naming the holder and the ways out."""
    inst = jetstore.open(clean, control_socket=False, **OPTIONS)
    try:
        dest = tmp_path / "set"
        code, document = invoke_json("backup", clean, "--to", dest)
        assert code == 3
        error = document["error"]
        assert "control socket" in error["detail"]
        assert str(os.getpid()) in error["detail"]
        assert not dest.exists()
        code, _out, err = invoke("backup", clean, "--to", dest, "--kind", "incremental")
        assert code == 3
        assert "control socket" in err
    finally:
        inst.close()


def test_an_offline_backup_the_os_refuses_is_not_taken_for_an_open_instance(
    clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory lock refused by the OS (a read-only mount, no permission: the error has
    an errno) is not a lock held by another opener: the backup used to fall back to the
    online path and report an instance "without a control socket" that was not running."""
    from jetstore.cli import backup_cmd
    from jetstore.errors import FileAccessDenied

    def refused(*_args: object, **_kwargs: object) -> None:
        error = FileAccessDenied(
            "cannot create the lock file: Read-only file system", path=str(clean / "jetstore.lock")
        )
        error.errno = errno.EROFS
        raise error

    monkeypatch.setattr(backup_cmd, "backup_offline", refused)
    code, document = invoke_json("backup", clean, "--to", tmp_path / "set")
    assert code != 0
    error = document["error"]
    assert error["name"] == "FileAccessDenied"
    assert "Read-only file system" in error["detail"]
    assert "control socket" not in json.dumps(document)


def test_backup_usage_errors(clean: Path, tmp_path: Path) -> None:
    code, document = invoke_json("backup", clean, "--to", tmp_path / "x", "--kind", "incremental")
    assert code == 2
    assert "offline backup is always a full" in document["error"]["message"]

    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "file").write_text("x")
    code, document = invoke_json("backup", clean, "--to", dest)
    assert code == 2
    assert document["error"]["name"] == "InvalidPath"
    assert not os.path.exists(str(dest) + PARTIAL_SUFFIX)

    code, document = invoke_json("backup", clean, "--to", clean / "inside")
    assert code == 2

    code, _out, _err = invoke("backup", clean)  # --to is required
    assert code == 2

    code, document = invoke_json("backup", tmp_path / "nowhere", "--to", tmp_path / "y")
    assert code == 4


def test_verify_backup_missing_paths(tmp_path: Path) -> None:
    code, document = invoke_json("verify-backup", tmp_path / "nowhere")
    assert code == 4
    assert document["error"]["name"] == "FileNotFound"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, document = invoke_json("verify-backup", empty)
    assert code == 1
    assert document["result"]["problems"][0]["error"] == "FileNotFound"


def test_the_backup_commands_short_help_does_not_say_offline_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`jetstore --help` described `backup` as "(offline for now)", though an open instance
    is backed up online through its control socket, every kind."""
    from jetstore.cli.main import run

    assert run(["--help"]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if "backup " in line[:12]]
    assert "offline for now" not in line and "online" in line, line

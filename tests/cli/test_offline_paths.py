"""The offline paths of the admin commands on what disks and operators leave behind: a
damaged first header copy, a directory that is no instance, a lock file held by a tool."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from jetstore.cli.main import run
from jetstore.format.filenames import LOCK_FILE
from jetstore.io.files import FileSystem
from jetstore.io.locking import acquire_directory_lock

from .conftest import RunJson


def test_offline_backup_takes_the_page_size_from_copy_1_when_copy_0_is_damaged(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    with (closed / "main.edb").open("r+b") as file:
        file.seek(4)
        file.write(bytes(16))  # copy 0's magic and page size: it cannot say its page size
    dest = tmp_path / "set"
    code, document = run_json("backup", closed, "--to", dest)
    assert code == 0, document
    (image,) = document["result"]["images"]
    assert image["page_size"] == 8192
    code, document = run_json("verify-backup", dest)
    assert code == 0, document


def test_compact_and_repair_of_a_database_outside_an_instance_leave_no_lock_file(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    # A database copied to a folder of its own: compact and repair took the directory lock
    # there and left `jetstore.lock` behind, in a folder that had none.
    folder = tmp_path / "copy"
    folder.mkdir()
    shutil.copy2(closed / "main.edb", folder / "main.edb")
    code, document = run_json("compact", folder / "main.edb")
    assert code == 0, document
    assert sorted(os.listdir(folder)) == ["main.edb"]
    code, document = run_json("repair", folder / "main.edb", "--accept-data-loss")
    assert code == 0, document
    assert LOCK_FILE not in os.listdir(folder)
    # In an instance directory, whose lock file was there before, it stays.
    assert run_json("compact", closed / "main.edb")[0] == 0
    assert (closed / LOCK_FILE).exists()


def test_a_refusal_by_a_tool_holding_the_directory_says_to_wait_for_it(
    closed: Path, run_json: RunJson
) -> None:
    # The way out said to close the instance, where a compact or an offline backup holds the
    # directory and no instance is open.
    lock = acquire_directory_lock(
        FileSystem(), str(closed), owner="test-backup", holder="an offline backup"
    )
    try:
        refusals = [
            run_json("recover", closed),
            run_json("logs", "removable", closed),
            run_json("compact", closed / "main.edb"),
            run_json("integrity", closed / "main.edb"),
        ]
    finally:
        lock.release()
    for code, document in refusals:
        assert code == 3, document
        error = document["error"]
        assert error["name"] == "InstanceNameInUse"
        assert "an offline backup" in error["detail"]
        assert error["hint"].startswith("wait for an offline backup to end"), error["hint"]
        assert "close" not in error["hint"]


def test_an_offline_backup_of_databases_outside_an_instance_leaves_no_lock_file(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    # As compact and repair: the backup left `jetstore.lock` in a folder that had none.
    folder = tmp_path / "copy"
    folder.mkdir()
    shutil.copy2(closed / "main.edb", folder / "main.edb")
    code, document = run_json("backup", folder, "--to", tmp_path / "set")
    assert code == 0, document
    assert sorted(os.listdir(folder)) == ["main.edb"]
    assert run_json("backup", closed, "--to", tmp_path / "set2")[0] == 0
    assert (closed / LOCK_FILE).exists()


def test_a_dry_run_restore_of_an_offline_set_says_it_has_no_logs(
    closed: Path, tmp_path: Path, run_json: RunJson, capsys: pytest.CaptureFixture[str]
) -> None:
    # The plan said "log generations 0-0" and "roll forward through generations 0-0" of a
    # set that holds no log by design, as if its logs were lost.
    assert run_json("backup", closed, "--to", tmp_path / "set")[0] == 0
    capsys.readouterr()
    assert run(["restore", str(tmp_path / "set"), "--to", str(tmp_path / "r"), "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "0-0" not in out
    assert "no log files (offline: clean images)" in out
    assert "databases main; no log to roll forward: the images are clean" in out

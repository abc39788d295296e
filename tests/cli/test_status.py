"""`jetstore status DIR`: read-only summary; exit 1 on warnings (for monitoring)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import jetstore
from jetstore.cli.main import main
from jetstore.io.files import FileSystem
from jetstore.tools.dbfile import exclusive_directory

from .conftest import write_pending_data_loss

SMALL = {"log_file_size": 64 * 1024}


def run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def make(directory: Path, crash: bool) -> None:
    instance = jetstore.open(directory, **SMALL)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int")], primary_key="id")
    with db.transaction() as txn:
        for i in range(200):
            txn.table("t").insert({"id": i})
    if crash:
        instance.simulate_crash()
    else:
        instance.close()


def hashes(directory: Path) -> dict[str, str]:
    return {
        n: hashlib.sha256((directory / n).read_bytes()).hexdigest()
        for n in sorted(os.listdir(directory))
        if (directory / n).is_file()
    }


def test_clean_instance_has_no_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make(tmp_path, crash=False)
    before = hashes(tmp_path)
    assert run(["status", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["result"]
    assert result["warnings"] == []
    assert result["databases"][0]["state"] == "clean"
    assert result["open_by_pid"] is None
    assert hashes(tmp_path) == before  # read-only


def test_dirty_instance_warns_and_names_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make(tmp_path, crash=True)
    (tmp_path / "edb.chk").unlink()
    before = hashes(tmp_path)
    assert run(["status", str(tmp_path), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)["result"]
    text = " ".join(result["warnings"])
    assert "jetstore recover" in text and "edb.chk is missing" in text
    assert result["databases"][0]["state"] == "dirty"
    assert hashes(tmp_path) == before


def test_a_pending_data_loss_repair_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data-loss recovery cut short before it set every log aside (its record pending):
    the next open finishes it and reports a loss, so status must not say "no warnings"."""
    make(tmp_path, crash=False)
    write_pending_data_loss(tmp_path)
    before = hashes(tmp_path)
    assert run(["status", str(tmp_path), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)["result"]
    (warning,) = result["warnings"]
    assert "data-loss.pending.json" in warning and "(edb00000003.log) is missing" in warning
    assert "jetstore diagnose" in warning
    assert hashes(tmp_path) == before


def test_open_instance_is_reported_not_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with jetstore.open(tmp_path, **SMALL) as instance:
        instance.database("main", create=True)
        assert run(["status", str(tmp_path), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)["result"]
        assert result["open_by_pid"] == os.getpid()


def test_required_logs_are_named_by_the_files_that_hold_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The newest required generation is the current log, edb.log: it was named
    # edbXXXXXXXX.log, a file that does not exist, as if it were missing.
    make(tmp_path, crash=True)
    assert run(["status", str(tmp_path), "--json"]) == 1
    (database,) = json.loads(capsys.readouterr().out)["result"]["databases"]
    low, high = database["logs_required"]
    expected = ["edb.log" if g == high else f"edb{g:08X}.log" for g in (low, high)]
    assert database["logs_required_files"] == expected
    for name in database["logs_required_files"]:
        assert (tmp_path / name).is_file()


def test_a_damaged_header_copy_0_of_another_page_size_is_no_unreadable_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Copy 0's size fields are damaged, so only copy 1 says the page size (32 KiB): status
    # read both copies as 8 KiB pages and called the header unrecoverable ("restore the
    # database from a backup") where the open, dump header and diagnose use copy 1.
    with jetstore.open(tmp_path, page_size=32768, **SMALL) as instance:
        instance.database("main", create=True)
    with (tmp_path / "main.edb").open("r+b") as file:
        file.seek(16)  # the block size field of copy 0's prefix
        file.write(b"\xff")
    assert run(["status", str(tmp_path), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)["result"]
    (database,) = result["databases"]
    assert "error" not in database
    assert database["state"] == "clean"
    (problem,) = database["header_problems"]
    assert "copy 0" in problem and "copy 1 is valid" in problem
    assert not any("both copies" in warning for warning in result["warnings"])


def test_a_tool_holding_the_lock_is_named_not_taken_for_an_instance(
    closed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A compact holds the directory lock: "open by process N" sent the operator after an
    # instance to close, where a compact is to wait for.
    with exclusive_directory(FileSystem(), str(closed), what="compact"):
        assert run(["status", str(closed)]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "open by process" not in out
        assert f"an offline tool (compact) (process {os.getpid()}) holds its lock" in out
        assert run(["status", str(closed), "--json"]) == 0
        result = json.loads(capsys.readouterr().out)["result"]
    assert result["open_by_pid"] is None
    assert result["lock_holder"] == {
        "pid": os.getpid(),
        "role": "an offline tool (compact)",
        "instance": False,
    }


def test_a_directory_named_like_a_database_says_to_move_it_away(
    closed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The warning's way out was "give the path of a NAME.edb file", a tool's hint, where DIR
    # was given and the directory is what has to go.
    (closed / "other.edb").mkdir()
    assert run(["status", str(closed), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)["result"]
    (other,) = [db for db in result["databases"] if db["file"] == "other.edb"]
    assert "is a directory, where the engine keeps a database file" in other["error"]
    assert f"move the directory '{closed / 'other.edb'}' away" in other["error"]
    assert "give the path of a NAME.edb file" not in other["error"]

"""`jetstore checksum PATH`: every bad page or block is reported where it is; nothing else is.

Bits are flipped in a leaf page, a branch page, a header copy, a frame of a closed log
generation and a checkpoint copy; each must be reported with its file, location, error class
and ESE code, and the command must exit 1. A clean instance reports no problem; all-zero pages
are "unused" and pages past the header's page count are "beyond the end", neither is damage.
Every run hashes the files before and after (read-only).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.cli.main import run
from jetstore.format.common import FORMAT_VERSION
from jetstore.format.dbheader import choose_db_header
from jetstore.format.filenames import generation_log_name
from jetstore.format.logframe import decode_frame
from jetstore.format.logheader import LOG_HEADER_SIZE
from jetstore.format.page import PageType, verify_page
from jetstore.io.files import FileSystem
from jetstore.pages.btree import decode_node, encode_node
from jetstore.tools.dbfile import exclusive_directory

from .conftest import (
    SMALL,
    RunJson,
    damage_second_frame,
    flip,
    reseal_at_version,
    run_entry_point,
    snapshot,
)


def _checksum(run_json: RunJson, path: Path) -> tuple[int, dict[str, Any]]:
    root = path if path.is_dir() else path.parent
    before = snapshot(root)
    code, document = run_json("checksum", path)
    assert snapshot(root) == before, "checksum must not change any file"
    assert document["command"] == "checksum"
    return code, document["result"]


def _pages(path: Path) -> tuple[int, dict[PageType, list[int]]]:
    data = path.read_bytes()
    header, _ = choose_db_header(data[:8192], data[8192:16384], path=str(path))
    size = header.page_size
    kinds: dict[PageType, list[int]] = {}
    for pgno in range(2, header.page_count):
        try:
            _, page_type, *_rest = verify_page(pgno, data[pgno * size : (pgno + 1) * size])
        except jetstore.JetError:
            continue
        kinds.setdefault(page_type, []).append(pgno)
    return size, kinds


def _errors(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in result["problems"] if p["severity"] == "error"]


def test_clean_instance_reports_nothing(closed: Path, run_json: RunJson) -> None:
    code, result = _checksum(run_json, closed)
    assert code == 0
    assert result["ok"] is True and result["bad"] == 0
    assert _errors(result) == []
    kinds = {f["file"]: f for f in result["files"]}
    database = kinds["main.edb"]
    assert database["status"] == "ok" and database["header_copies_ok"] == 2
    assert database["verified"] > 0 and database["leaf"] > 0 and database["branch"] > 0
    assert kinds["edb.chk"]["copies_ok"] == 2
    assert [f["generation"] for f in result["files"] if f["kind"] == "log"] == [1, 2, 3]


def test_leaf_and_branch_pages(closed: Path, run_json: RunJson) -> None:
    database = closed / "main.edb"
    size, kinds = _pages(database)
    leaf, branch = kinds[PageType.LEAF][0], kinds[PageType.BRANCH][0]
    flip(database, leaf * size + 100)
    flip(database, branch * size + 40)
    code, result = _checksum(run_json, database)
    assert code == 1
    assert result["kind"] == "database"
    errors = _errors(result)
    assert [(e["page"], e["location"]) for e in errors] == sorted(
        [(leaf, f"page {leaf}"), (branch, f"page {branch}")]
    )
    for error in errors:
        assert error["error"] == "ReadVerifyFailure" and error["code"] == -1018
        assert error["ese_name"] == "JET_errReadVerifyFailure"
        assert error["file"] == str(database)
    assert result["files"][0]["bad"] == 2


def _older_image(database: Path, pgno: int, size: int) -> None:
    """Replace leaf `pgno` by another valid image of itself (what a lost write leaves: an
    older copy; here one value zeroed, encoded at the same page number)."""
    data = bytearray(database.read_bytes())
    node = decode_node(pgno, bytes(data[pgno * size : (pgno + 1) * size]))
    node.values[0] = bytes(len(node.values[0]))
    data[pgno * size : (pgno + 1) * size] = encode_node(node, size, pgno, 1)
    database.write_bytes(bytes(data))


def test_lost_write(closed: Path, run_json: RunJson) -> None:
    database = closed / "main.edb"
    size, kinds = _pages(database)
    leaf = kinds[PageType.LEAF][-1]
    _older_image(database, leaf, size)
    code, result = _checksum(run_json, closed)
    assert code == 1
    (error,) = _errors(result)
    assert (error["page"], error["location"], error["offset"]) == (
        leaf,
        f"page {leaf}",
        leaf * size,
    )
    assert (error["error"], error["code"]) == ("ReadLostFlushVerifyFailure", -1119)
    assert "branch page" in error["message"] and "older copy" in error["message"]
    counts = next(f for f in result["files"] if f["kind"] == "database")
    assert counts["lost_writes"] == 1 and counts["bad"] == 1 and counts["status"] == "damaged"


def test_lost_write_check_is_skipped_while_the_instance_is_open(
    closed: Path, run_json: RunJson
) -> None:
    """Pages may be reused under an open instance: the reference walk would see images newer
    than the header it read, so it is skipped, and says so."""
    with jetstore.open(closed, **SMALL):
        code, result = _checksum(run_json, closed / "main.edb")
    assert code == 0, result["problems"]
    assert result["open_elsewhere"] is True
    (note,) = [p for p in result["problems"] if p["location"] == "page references"]
    assert note["severity"] == "info" and "skipped" in note["message"]


def test_header_copy(closed: Path, run_json: RunJson) -> None:
    database = closed / "main.edb"
    flip(database, 8192 + 50)  # header copy 1 (page 1)
    code, result = _checksum(run_json, database)
    assert code == 1
    (error,) = _errors(result)
    assert (error["copy"], error["page"]) == (1, 1)
    assert error["location"] == "header copy 1 (page 1)"
    assert error["error"] and error["code"] < 0
    assert result["files"][0]["header_copies_ok"] == 1


def test_unused_and_beyond_the_end_are_not_damage(closed: Path, run_json: RunJson) -> None:
    database = closed / "main.edb"
    size, _kinds = _pages(database)
    with database.open("ab") as file:
        file.write(bytes(size))  # an all-zero page
        file.write(b"\x42" * size)  # garbage no header reaches
    code, result = _checksum(run_json, database)
    assert code == 0, result["problems"]
    counts = result["files"][0]
    assert counts["beyond_end"] == 2 and counts["unused"] >= 1 and counts["bad"] == 0
    (note,) = result["problems"]
    assert note["severity"] == "info" and "beyond the end" in note["location"]


def test_frame_in_closed_generation(crashed: Path, run_json: RunJson) -> None:
    path = crashed / generation_log_name(1)
    data = path.read_bytes()
    frame = decode_frame(data, LOG_HEADER_SIZE, 1)
    assert frame is not None
    second = decode_frame(data, frame.next_offset, 1)
    assert second is not None
    flip(path, second.offset + 40)
    for target in (crashed, path):
        code, result = _checksum(run_json, target)
        assert code == 1
        errors = _errors(result)
        assert errors[0]["file"] == str(path)
        assert (errors[0]["generation"], errors[0]["offset"]) == (1, second.offset)
        assert errors[0]["error"] == "LogFileCorrupt" and errors[0]["code"] == -501
        assert f"offset 0x{second.offset:X}" in errors[0]["location"]


def test_bad_block_in_a_generation_recovery_no_longer_reads_is_a_warning(
    closed: Path, run_json: RunJson
) -> None:
    """As in `logs verify`: after a clean shutdown recovery reads only the newest generation,
    so a bad block in generation 1 is a warning (exit 0) that says so, while the file is
    still shown as damaged; opening agrees that nothing there is read."""
    path = closed / generation_log_name(1)
    offset = damage_second_frame(path, 1)
    for target in (closed, path):
        code, result = _checksum(run_json, target)
        assert code == 0, result
        assert result["ok"] is True and result["bad"] == 0
        (problem,) = [p for p in result["problems"] if p["error"] == "LogFileCorrupt"]
        assert (problem["severity"], problem["file"]) == ("warning", str(path))
        assert (problem["generation"], problem["offset"]) == (1, offset)
        assert "recovery no longer needs generation 1" in problem["message"]
        assert "warning, not an error" in problem["message"]
        (log,) = [f for f in result["files"] if f["file"] == path.name]
        assert (log["status"], log["needed"]) == ("damaged", False)
    human = run_entry_point("checksum", closed)
    assert human.returncode == 0, human.stdout
    assert "damaged but not needed by recovery: edb00000001.log" in human.stdout
    with jetstore.open(closed, **SMALL) as instance:
        assert instance.recovery is not None and not instance.recovery.needed


def test_bad_block_in_a_generation_recovery_reads_stays_an_error(
    crashed: Path, run_json: RunJson
) -> None:
    """The crashed instance's header requires generation 1: a bad block there is an error."""
    path = crashed / generation_log_name(1)
    damage_second_frame(path, 1)
    code, result = _checksum(run_json, crashed)
    assert code == 1
    (problem,) = _errors(result)
    assert (problem["error"], problem["file"]) == ("LogFileCorrupt", str(path))
    (log,) = [f for f in result["files"] if f["file"] == path.name]
    assert (log["status"], log["needed"]) == ("damaged", True)


def test_checkpoint_copy(crashed: Path, run_json: RunJson) -> None:
    flip(crashed / "edb.chk", 4096 + 40)
    code, result = _checksum(run_json, crashed / "edb.chk")
    assert code == 1
    (error,) = _errors(result)
    assert error["copy"] == 1 and error["location"] == "copy 1 (offset 4096)"
    assert error["error"] == "CheckpointCorrupt" and error["code"] == -533


def test_entry_point_end_to_end(crashed: Path) -> None:
    done = run_entry_point("checksum", crashed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no bad page or block" in done.stdout
    flip(crashed / "edb.chk", 40)
    done = run_entry_point("checksum", crashed, "--json")
    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert document["ok"] is False
    assert [p["location"] for p in document["result"]["problems"]] == ["copy 0 (offset 0)"]
    human = run_entry_point("checksum", crashed)
    assert human.returncode == 1
    assert "CheckpointCorrupt" in human.stdout


def test_backup_set_is_delegated(closed: Path, tmp_path: Path, run_json: RunJson) -> None:
    dest = tmp_path / "set"
    with jetstore.open(closed, control_socket=False, **SMALL) as instance:
        instance.backup(dest)
    code, result = _checksum(run_json, dest)
    assert code == 0 and result["kind"] == "backup"
    human = run_entry_point("checksum", dest)
    assert human.returncode == 0, human.stdout + human.stderr
    assert "None" not in human.stdout and "pages verified" in human.stdout
    assert "frames verified" in human.stdout
    image = next(p for p in dest.iterdir() if p.suffix == ".edb")
    flip(image, 3 * 8192 + 100)
    code, result = _checksum(run_json, dest)
    assert code == 1
    assert any(p["page"] == 3 for p in _errors(result))


def test_not_a_jetstore_file(tmp_path: Path, run_json: RunJson) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    code, document = run_json("checksum", junk)
    assert (code, document["error"]["name"]) == (3, "FileInvalidType")
    code, document = run_json("checksum", tmp_path / "absent")
    assert (code, document["error"]["name"]) == (4, "FileNotFound")
    # Not the generic hint, which sent the operator to `jetstore logs verify DIR`.
    assert document["error"]["hint"] == (
        "give the path of a database, log or checkpoint file, an instance directory or a backup set"
    )


def test_copy_of_a_log_under_another_name(crashed: Path, tmp_path: Path, run_json: RunJson) -> None:
    lone = tmp_path / "saved.log"
    shutil.copy(crashed / generation_log_name(1), lone)
    code, result = _checksum(run_json, lone)
    assert code == 0
    assert result["files"][0]["generation"] == 1 and result["files"][0]["frames"] > 0


def test_an_unreadable_log_file_says_no_frame_was_found(closed: Path) -> None:
    path = closed / generation_log_name(1)
    path.write_bytes(bytes(path.stat().st_size))
    done = run_entry_point("checksum", closed)
    text = " ".join(done.stdout.replace("│", " ").split())  # cells wrap across lines
    assert "None" not in text, done.stdout
    assert "generation 1: 0 frames, no valid frame found" in text, done.stdout


def test_a_newer_engines_files_are_unreadable_not_damaged(closed: Path, run_json: RunJson) -> None:
    """Both header copies of main.edb and both checkpoint copies intact but of a newer
    format: every reader says "not damaged, the release that wrote it reads it"
    (InvalidDatabaseVersion, BadLogVersion); checksum's status said "damaged"."""
    reseal_at_version(closed / "main.edb", (0, 8192), 8192, FORMAT_VERSION + 1)
    reseal_at_version(closed / "edb.chk", (0, 4096), 4096, FORMAT_VERSION + 1)
    code, document = run_json("checksum", closed)
    assert code == 1
    status = {f["file"]: f["status"] for f in document["result"]["files"]}
    assert status["main.edb"] == status["edb.chk"] == "unreadable"
    errors = {(p["file"].rsplit("/", 1)[-1], p["error"]) for p in document["result"]["problems"]}
    assert errors == {("main.edb", "InvalidDatabaseVersion"), ("edb.chk", "BadLogVersion")}


def test_a_kept_original_is_named_for_what_it_is(closed: Path, run_json: RunJson) -> None:
    # `compact --keep-original` leaves NAME.edb.precompact next to the instance's files: it
    # was listed as "not a database, log or checkpoint file", a foreign file to hunt down.
    assert run_json("compact", closed / "main.edb", "--keep-original")[0] == 0
    code, result = _checksum(run_json, closed)
    assert code == 0
    reasons = {entry["file"]: entry["reason"] for entry in result["not_checked"]}
    kept = reasons["main.edb.precompact"]
    assert "not a database" not in kept
    assert "the original of main.edb that `jetstore compact --keep-original` kept" in kept
    assert "`jetstore checksum main.edb.precompact` checks it" in kept
    assert reasons["events.jsonl"] == "the instance's event log, read by `jetstore events`"


def test_a_tool_holding_the_directory_is_named_not_taken_for_an_open_instance(
    closed: Path, run_json: RunJson, capsys: pytest.CaptureFixture[str]
) -> None:
    # A compact held the lock: the warning said "the instance is open in process N", an
    # instance to close that does not exist.
    with exclusive_directory(FileSystem(), str(closed), what="compact"):
        code, result = _checksum(run_json, closed)
        assert run(["checksum", str(closed)]) == 0
    assert code == 0
    assert result["open_elsewhere"] is True
    assert result["held_by"] == "an offline tool (compact)"
    out = " ".join(capsys.readouterr().out.split())
    assert "instance is open" not in out
    assert (
        f"warning: an offline tool (compact) (process {os.getpid()}) holds the instance "
        "directory" in out
    )
    (note,) = [p for p in result["problems"] if p["location"] == "page references"]
    assert note["message"].startswith("an offline tool (compact) holds the directory")

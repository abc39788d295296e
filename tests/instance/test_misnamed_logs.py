"""Soft recovery and `jetstore diagnose` with a log file under a name the engine does not read
(`EDB.LOG`, `edb0000000a.log`, `edb6.log`): refused, naming the file and the name to give it,
never continued past without a word; stray files that are no log names are left alone; a
directory under a name the log uses is refused, naming it, before anything is written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import InvalidPath, JetError, MissingLogFile, RequiredLogFilesMissing
from jetstore.format.filenames import CURRENT_LOG, TEMP_LOG, generation_log_name, reserve_log_name
from jetstore.instance.diagnosis import plan_recovery
from jetstore.io import FileSystem
from jetstore.log.reader import take_inventory

SMALL = {"log_file_size": 64 * 1024, "checkpoint_depth": 1 << 30, "checkpoint_interval": 1e6}


def crashed(directory: Path, batches: int) -> int:
    """Rows committed over `batches` transactions (several generations when many), then a
    crash: every row is acknowledged, and only the logs hold them."""
    instance = jetstore.open(directory, **SMALL)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    n = 0
    for _ in range(batches):
        with db.transaction() as txn:
            for _ in range(40):
                txn.table("t").insert({"id": n, "v": f"{n:06d}" * 20})
                n += 1
    instance.simulate_crash()
    return n


def row_count(directory: Path) -> int:
    instance = jetstore.open(directory, **SMALL)
    try:
        with instance.database("main").transaction() as txn:
            return len(list(txn.table("t").scan()))
    finally:
        instance.close()


def refusal(directory: Path) -> JetError:
    with pytest.raises((MissingLogFile, RequiredLogFilesMissing)) as caught:
        jetstore.open(directory, **SMALL)
    return caught.value


def test_misnamed_current_log_is_named_with_its_right_name(tmp_path: Path) -> None:
    rows = crashed(tmp_path, batches=30)
    os.rename(tmp_path / CURRENT_LOG, tmp_path / "EDB.LOG")

    error = refusal(tmp_path)
    assert "EDB.LOG holds generation" in (error.detail or "")
    assert "EDB.LOG to edb.log" in (error.hint or "")
    assert not (tmp_path / CURRENT_LOG).exists()  # refused before anything was written

    plan = plan_recovery(str(tmp_path))
    assert "EDB.LOG" in plan.summary and "rename EDB.LOG to edb.log" in plan.summary
    assert plan.next_commands[0].startswith("mv -n ")
    assert plan.next_commands[0].endswith(f"{tmp_path / 'EDB.LOG'} {tmp_path / CURRENT_LOG}")

    os.rename(tmp_path / "EDB.LOG", tmp_path / CURRENT_LOG)
    assert row_count(tmp_path) == rows


@pytest.mark.parametrize("spell", ["lower-hex", "short"])
def test_misnamed_closed_generation_is_named_with_its_right_name(
    tmp_path: Path, spell: str
) -> None:
    rows = crashed(tmp_path, batches=100)
    right = generation_log_name(10)
    assert (tmp_path / right).exists()
    wrong = "edb0000000a.log" if spell == "lower-hex" else "edbA.log"
    os.rename(tmp_path / right, tmp_path / wrong)

    error = refusal(tmp_path)
    assert f"{wrong} holds generation 10" in (error.detail or "")
    assert f"{wrong} to {right}" in (error.hint or "")
    assert f"rename {wrong} to {right}" in plan_recovery(str(tmp_path)).summary

    os.rename(tmp_path / wrong, tmp_path / right)
    assert row_count(tmp_path) == rows


def test_stray_files_are_no_logs(tmp_path: Path) -> None:
    rows = crashed(tmp_path, batches=2)
    shutil.copyfile(tmp_path / CURRENT_LOG, tmp_path / "edb.log.bak")
    (tmp_path / "notes.txt").write_text("edb.log holds generation 1\n")
    (tmp_path / "EDB.LOG").mkdir()  # a directory is no log file, whatever its name

    inventory = take_inventory(FileSystem(), str(tmp_path), owner="test")
    assert inventory.misnamed == [] and inventory.problems == []
    plan = plan_recovery(str(tmp_path))
    assert plan.verdict == "recoverable"
    assert not any("misnamed" in note for note in plan.notes)
    assert row_count(tmp_path) == rows
    assert (tmp_path / "edb.log.bak").exists() and (tmp_path / "notes.txt").exists()


@pytest.mark.parametrize("clean", [False, True], ids=["crashed", "closed"])
def test_a_directory_named_like_a_later_log_is_named_as_one_to_move_away(
    tmp_path: Path, clean: bool
) -> None:
    # Defect: a directory named like a generation after the newest (or like edb.log after a
    # clean shutdown) was refused as a damaged log (LogFileCorrupt, "put back an intact copy
    # of the file", or accept the loss: every log set aside and a new stream begun), where
    # moving a stray directory away is the whole way out.
    rows = crashed(tmp_path, batches=2)
    if clean:
        jetstore.open(tmp_path, **SMALL).close()
        os.unlink(tmp_path / CURRENT_LOG)
        stray = tmp_path / CURRENT_LOG
    else:
        stray = tmp_path / generation_log_name(9)
    stray.mkdir()
    before = sorted(os.listdir(tmp_path))

    for accept_data_loss in (False, True):
        with pytest.raises(InvalidPath) as refused:
            jetstore.open(tmp_path, accept_data_loss=accept_data_loss, **SMALL)
        assert refused.value.path == str(stray)
        assert "is a directory" in (refused.value.detail or "")
        assert "away" in (refused.value.hint or "")
        assert sorted(os.listdir(tmp_path)) == before  # nothing set aside, nothing written

    plan = plan_recovery(str(tmp_path))
    assert plan.error is not None and plan.error.path == str(stray)
    assert plan.verdict == "move-away"
    assert stray.name in plan.summary and "away" in plan.summary
    assert "restore" not in plan.summary and "data loss" not in plan.summary

    stray.rmdir()
    assert row_count(tmp_path) == rows


@pytest.mark.parametrize("name", [TEMP_LOG, reserve_log_name(1)])
def test_a_directory_under_a_name_the_log_writes_is_refused_before_recovery_writes(
    tmp_path: Path, name: str
) -> None:
    # Defect: diagnose called such a directory "recoverable" while the open failed after
    # recovery, when the log writer prepared its next file (edbtmp.log, the reserve logs).
    rows = crashed(tmp_path, batches=2)
    (tmp_path / name).unlink()
    (tmp_path / name).mkdir()
    database = (tmp_path / "main.edb").read_bytes()

    plan = plan_recovery(str(tmp_path))
    assert plan.verdict == "move-away" and not plan.ok
    assert plan.error is not None and plan.error.path == str(tmp_path / name)
    assert name in plan.summary and "away" in plan.summary
    with pytest.raises(InvalidPath) as refused:
        jetstore.open(tmp_path, **SMALL)
    assert refused.value.path == str(tmp_path / name)
    assert (tmp_path / "main.edb").read_bytes() == database  # refused before replay

    (tmp_path / name).rmdir()
    assert row_count(tmp_path) == rows


@pytest.mark.parametrize("name", ["other.edb", "other.edb.creating"])
def test_diagnose_names_a_directory_under_a_database_name_as_the_open_does(
    tmp_path: Path, name: str
) -> None:
    # Defect: the open refused such a directory (InvalidPath: move it away), while diagnose
    # said "restore the database from backup" (other.edb: its header "unreadable") or
    # "recoverable" (other.edb.creating, which the open fails to delete).
    rows = crashed(tmp_path, batches=2)
    (tmp_path / name).mkdir()

    with pytest.raises(InvalidPath) as refused:
        jetstore.open(tmp_path, **SMALL)
    assert refused.value.path == str(tmp_path / name)
    plan = plan_recovery(str(tmp_path))
    assert plan.verdict == "move-away" and not plan.ok
    assert plan.error is not None and plan.error.path == str(tmp_path / name)
    assert "away" in plan.summary and "backup" not in plan.summary

    (tmp_path / name).rmdir()
    assert row_count(tmp_path) == rows


def test_a_log_that_is_a_dangling_symbolic_link_is_named_as_one(tmp_path: Path) -> None:
    # Defect: the refusal said edb.log "cannot be read (FileNotFound: stat failed on
    # '.../edb.log': No such file or directory)" while `ls` shows edb.log there: the link
    # and where it points were never named.
    rows = crashed(tmp_path, batches=2)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-logs"
    elsewhere.mkdir()
    os.rename(tmp_path / CURRENT_LOG, elsewhere / CURRENT_LOG)
    os.symlink(elsewhere / "moved.log", tmp_path / CURRENT_LOG)

    error = refusal(tmp_path)
    assert f"symbolic link to '{elsewhere / 'moved.log'}', which does not exist" in (
        error.detail or ""
    )

    os.rename(elsewhere / CURRENT_LOG, elsewhere / "moved.log")  # where the link points
    assert row_count(tmp_path) == rows

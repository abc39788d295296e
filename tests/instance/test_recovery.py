"""Soft recovery: replay after a crash, recovery without a trustworthy checkpoint file, and
precise refusals (before anything is written) when required logs are missing or damaged."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import google_crc32c
import pytest
from tests.interrupting import interrupt_at_return

import jetstore
from jetstore.errors import (
    AttachedDatabaseMismatch,
    BadLogSignature,
    BadLogVersion,
    DatabaseLogSetMismatch,
    DiskIO,
    FileAccessDenied,
    FileNotFound,
    InvalidLogSequence,
    JetError,
    LogFileCorrupt,
    LogFileSizeMismatch,
    MissingLogFile,
    RequiredLogFilesMissing,
)
from jetstore.format.common import FORMAT_VERSION
from jetstore.format.dbheader import DatabaseHeader, DatabaseState
from jetstore.format.filenames import CURRENT_LOG, generation_log_name
from jetstore.format.logframe import KIND_FULL, decode_frame, encode_frame
from jetstore.format.logheader import LOG_HEADER_SIZE, decode_log_header
from jetstore.format.logrecords import OP_PUT, RECORD_COMMIT
from jetstore.format.positions import LogPosition
from jetstore.instance import instance as instance_module
from jetstore.instance.diagnosis import plan_recovery
from jetstore.instance.recovery import open_database_files
from jetstore.instance.recoverydecisions import RecoveryStart, databases_losing_data
from jetstore.io import FileSystem, IOEvent
from jetstore.log.reader import LogInventory
from jetstore.pages.pagefile import DatabaseFile
from jetstore.tools.repair import repair_database

SMALL = {"log_file_size": 64 * 1024, "checkpoint_depth": 1 << 30, "checkpoint_interval": 1e6}


def snapshot(directory: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(directory))
        if name != "jetstore.lock"
    }


def crashed_instance(
    directory: Path, batches: int = 30, per_batch: int = 40, checkpoint_after_create: bool = False
) -> int:
    """Commit data across several generations after the last checkpoint, then crash."""
    instance = jetstore.open(directory, **SMALL)
    db = instance.database("main", create=True)
    db.create_table(
        "t", [("id", "int"), ("v", "text")], primary_key="id", indexes=[("by_v", ["v"])]
    )
    if checkpoint_after_create:
        instance.checkpoint()
    n = 0
    for _ in range(batches):
        with db.transaction() as txn:
            table = txn.table("t")
            for _ in range(per_batch):
                table.insert({"id": n, "v": f"{n:06d}" * 20})
                n += 1
    instance.simulate_crash()
    return n


def read_ids(instance: jetstore.Instance) -> list[int]:
    with instance.database("main").transaction() as txn:
        rows = list(txn.table("t").scan())
        by_index = list(txn.table("t").scan(index="by_v"))
    assert [r["id"] for r in by_index] == [r["id"] for r in rows]
    return [row["id"] for row in rows]


def generations(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("edb0"))


def test_crash_then_replay(tmp_path: Path) -> None:
    n = crashed_instance(tmp_path)
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert instance.recovery is not None
        assert instance.recovery.replayed > 0
        assert read_ids(instance) == list(range(n))
        generations_read = [g for g, _ in instance.recovery.generations]
        assert generations_read == sorted(generations_read) and len(generations_read) > 1
        assert sum(r for _, r in instance.recovery.generations) >= instance.recovery.replayed
    events = (tmp_path / "events.jsonl").read_text()
    assert "recovery_finished" in events
    assert events.count("recovery_generation_replayed") == len(generations_read)


def test_recovery_is_repeatable_after_a_crash_during_recovery(tmp_path: Path) -> None:
    n = crashed_instance(tmp_path)
    failing = {"armed": True}

    def hook(event: IOEvent) -> None:
        # Fail the first page write of the checkpoint that follows the replay.
        if failing["armed"] and event.op == "write" and event.path.endswith("main.edb"):
            failing["armed"] = False
            raise OSError(5, "injected EIO during recovery")

    with pytest.raises(JetError):
        jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(n))


def test_missing_checkpoint_file_recovers_from_headers(tmp_path: Path) -> None:
    n = crashed_instance(tmp_path)
    os.unlink(tmp_path / "edb.chk")
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(n))
        assert any("no checkpoint file" in note for note in instance.recovery.notes)
    assert (tmp_path / "edb.chk").exists()


@pytest.mark.parametrize("damage", ["both_copies_corrupt", "truncated", "garbage"])
def test_damaged_checkpoint_file_recovers_from_headers(tmp_path: Path, damage: str) -> None:
    n = crashed_instance(tmp_path)
    path = tmp_path / "edb.chk"
    data = bytearray(path.read_bytes())
    if damage == "both_copies_corrupt":
        data[100] ^= 0xFF
        data[4096 + 100] ^= 0xFF
    elif damage == "truncated":
        data = data[:10]
    else:
        data = bytearray(os.urandom(len(data)))
    path.write_bytes(bytes(data))
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(n))


def test_checkpoint_file_of_another_stream_is_ignored(tmp_path: Path) -> None:
    other = tmp_path / "other"
    crashed_instance(other, batches=1)
    with jetstore.open(other, **SMALL):
        pass
    n = crashed_instance(tmp_path / "main", batches=3)
    os.replace(other / "edb.chk", tmp_path / "main" / "edb.chk")
    with jetstore.open(tmp_path / "main", **SMALL) as instance:
        assert read_ids(instance) == list(range(n))
        assert any("another" in note or "stream" in note for note in instance.recovery.notes)


def test_missing_generation_refused_before_writing_anything(tmp_path: Path) -> None:
    crashed_instance(tmp_path)
    gens = generations(tmp_path)
    assert len(gens) >= 3
    os.unlink(tmp_path / gens[1])
    before = snapshot(tmp_path)
    with pytest.raises((MissingLogFile, RequiredLogFilesMissing)) as info:
        jetstore.open(tmp_path, **SMALL)
    message = str(info.value)
    assert gens[1] in message
    assert "present" in message
    assert "backup" in message
    assert snapshot(tmp_path) == before


def test_missing_newest_logs_refused(tmp_path: Path) -> None:
    crashed_instance(tmp_path)
    os.unlink(tmp_path / "edb.log")
    before = snapshot(tmp_path)
    with pytest.raises(RequiredLogFilesMissing):
        jetstore.open(tmp_path, **SMALL)
    assert snapshot(tmp_path) == before


def test_missing_newest_logs_say_edb_log_is_absent(tmp_path: Path) -> None:
    crashed_instance(tmp_path)
    os.unlink(tmp_path / "edb.log")
    newest = generation_log_name(len(generations(tmp_path)) + 1)
    with pytest.raises(RequiredLogFilesMissing) as info:
        jetstore.open(tmp_path, **SMALL)
    assert f"neither {newest} nor edb.log is there" in str(info.value)


@pytest.mark.parametrize("damage", ["empty", "zeroed", "garbage"])
def test_an_unreadable_edb_log_is_named_not_called_missing(tmp_path: Path, damage: str) -> None:
    """The newest generation lives in edb.log under no number: when that file cannot be
    read, the refusal says so and why, instead of sending the user to look for
    edbXXXXXXXX.log, which never existed. Nothing is written."""
    crashed_instance(tmp_path)
    newest = len(generations(tmp_path)) + 1
    path = tmp_path / CURRENT_LOG
    size = path.stat().st_size
    path.write_bytes(
        b"" if damage == "empty" else bytes(size) if damage == "zeroed" else os.urandom(size)
    )
    before = snapshot(tmp_path)
    with pytest.raises(RequiredLogFilesMissing) as info:
        jetstore.open(tmp_path, **SMALL)
    message = str(info.value)
    assert f"but generation {newest} is missing" in message
    assert "edb.log, where the newest generation is written, cannot be read" in message
    assert {"empty": "empty (0 bytes)", "zeroed": "are zero", "garbage": "not a jetstore log"}[
        damage
    ] in message
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("damage", ["format version 1", "garbage"])
def test_an_unreadable_only_log_is_named_not_called_absent(tmp_path: Path, damage: str) -> None:
    """A crash in the stream's first generation leaves one log, edb.log. When it cannot be
    read (another engine's format version, or damage), the refusal names it and says why:
    "no log files are present" sent the user looking for files when the one needed was
    there. Nothing is written."""
    crashed_instance(tmp_path, batches=1, per_batch=5)
    assert generations(tmp_path) == []
    path = tmp_path / CURRENT_LOG
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data[:LOG_HEADER_SIZE] = os.urandom(LOG_HEADER_SIZE)
    else:
        struct.pack_into("<H", data, 14, 1)
        struct.pack_into("<I", data, 0, google_crc32c.value(bytes(data[4:LOG_HEADER_SIZE])))
    path.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    with pytest.raises(MissingLogFile) as info:
        jetstore.open(tmp_path, **SMALL)
    message = str(info.value)
    assert "no log files are present" not in message
    assert "edb.log" in message and "cannot be read" in message
    assert {"format version 1": "format version 1", "garbage": "not a jetstore log"}[
        damage
    ] in message
    assert snapshot(tmp_path) == before


def test_swapped_generation_files_are_named_with_the_renames_that_fix_them(
    tmp_path: Path,
) -> None:
    """Two archived generations swapped (or renamed by hand): the refusal names the file
    holding each generation and says which renames put them back; after the renames the
    instance recovers everything."""
    n = crashed_instance(tmp_path)
    gens = generations(tmp_path)
    assert len(gens) >= 3
    first, second = tmp_path / gens[1], tmp_path / gens[2]
    os.rename(first, tmp_path / "swap")
    os.rename(second, first)
    os.rename(tmp_path / "swap", second)
    before = snapshot(tmp_path)
    with pytest.raises(RequiredLogFilesMissing) as info:
        jetstore.open(tmp_path, **SMALL)
    message, hint = str(info.value), info.value.hint or ""
    assert f"{gens[1]} holds generation {int(gens[2][3:11], 16)}" in message
    assert f"{gens[2]} holds generation {int(gens[1][3:11], 16)}" in message
    assert f"{gens[1]} to {gens[2]}" in hint and f"{gens[2]} to {gens[1]}" in hint
    assert snapshot(tmp_path) == before
    os.rename(first, tmp_path / "swap")
    os.rename(second, first)
    os.rename(tmp_path / "swap", second)
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(n))


def test_an_unreadable_archived_generation_is_named(tmp_path: Path) -> None:
    crashed_instance(tmp_path)
    gens = generations(tmp_path)
    (tmp_path / gens[1]).write_bytes(bytes(100))
    with pytest.raises((MissingLogFile, RequiredLogFilesMissing)) as info:
        jetstore.open(tmp_path, **SMALL)
    assert f"{gens[1]} cannot be read (LogFileCorrupt" in str(info.value)


def test_all_logs_missing_with_dirty_database_refused(tmp_path: Path) -> None:
    crashed_instance(tmp_path)
    for name in [*generations(tmp_path), "edb.log"]:
        os.unlink(tmp_path / name)
    with pytest.raises(MissingLogFile):
        jetstore.open(tmp_path, **SMALL)


def test_corrupt_closed_generation_refused(tmp_path: Path) -> None:
    crashed_instance(tmp_path)
    gens = generations(tmp_path)
    path = tmp_path / gens[-1]
    data = bytearray(path.read_bytes())
    data[4096 + 200] ^= 0x40
    path.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    with pytest.raises(LogFileCorrupt) as info:
        jetstore.open(tmp_path, **SMALL)
    assert gens[-1] in str(info.value) or str(int(gens[-1][3:11], 16)) in str(info.value)
    assert snapshot(tmp_path) == before


def test_torn_tail_is_the_end_of_the_log(tmp_path: Path) -> None:
    n = crashed_instance(tmp_path)
    path = tmp_path / "edb.log"
    data = bytearray(path.read_bytes())
    # Find the end of the valid data (first run of zeros after the header) and tear it.
    end = len(data.rstrip(b"\x00"))
    data[end : end + 300] = os.urandom(300)
    path.write_bytes(bytes(data))
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(n))
        assert instance.recovery.torn_tail is not None


def _data_end(path: Path) -> int:
    """Where the frames of a log file end: the rest of a preallocated file is zeros."""
    return len(path.read_bytes().rstrip(b"\x00"))


@pytest.mark.parametrize("cut", ["mid-frame", "in-the-zeros", "header-only"])
def test_truncated_newest_log_is_refused_not_a_torn_tail(tmp_path: Path, cut: str) -> None:
    """A newest log file shorter than its header's size was cut after the fact (log files are
    written at full size before use): recovery refuses it like `logs verify` does, whatever
    the cut left, instead of dropping acknowledged commits as a torn tail."""
    n = crashed_instance(tmp_path)
    path = tmp_path / CURRENT_LOG
    original = path.read_bytes()
    end = _data_end(path)
    size = {
        "mid-frame": (LOG_HEADER_SIZE + end) // 2,
        "in-the-zeros": end + 100,  # nothing of the log's records is cut off
        "header-only": LOG_HEADER_SIZE,
    }[cut]
    os.truncate(path, size)
    before = snapshot(tmp_path)
    with pytest.raises(LogFileSizeMismatch) as info:
        jetstore.open(tmp_path, **SMALL)
    error = info.value
    assert error.code == -541 and error.path == str(path)
    text = str(error)
    assert (
        f"edb.log (generation {decode_log_header(original[:4096], path='edb.log').generation})"
        in text
    )
    assert f"is truncated: it holds {size} bytes" in text
    assert f"created with {len(original)} bytes" in text
    assert "restore from backup" in text
    assert f"jetstore recover {tmp_path} --accept-data-loss" in text
    assert snapshot(tmp_path) == before, "a refused recovery writes nothing"
    # The diagnosis refuses the same way.
    plan = plan_recovery(str(tmp_path))
    assert plan.error is not None and plan.error.name == "LogFileSizeMismatch"
    assert plan.verdict == "data-loss"
    # The complete file put back: every acknowledged commit is there.
    path.write_bytes(original)
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(n))


def test_longer_newest_log_is_refused(tmp_path: Path) -> None:
    crashed_instance(tmp_path)
    path = tmp_path / CURRENT_LOG
    with path.open("ab") as file:
        file.write(b"\x00" * 4096)
    with pytest.raises(LogFileSizeMismatch, match="is longer than it should be"):
        jetstore.open(tmp_path, **SMALL)


def test_accept_data_loss_stops_at_a_truncated_log(tmp_path: Path) -> None:
    """With `accept_data_loss` the replay stops at the cut: exactly the commits whose records
    lie before it survive (the same as if the cut-off part had never been written)."""
    n = crashed_instance(tmp_path / "cut")
    path = tmp_path / "cut" / CURRENT_LOG
    original = path.read_bytes()
    cut = (LOG_HEADER_SIZE + _data_end(path)) // 2
    # The oracle: the same bytes up to the cut, zeros after it (never written: a legitimate
    # end of the log, full size) recover normally.
    os.makedirs(tmp_path / "oracle")
    for name in os.listdir(tmp_path / "cut"):
        if name != "jetstore.lock":
            (tmp_path / "oracle" / name).write_bytes((tmp_path / "cut" / name).read_bytes())
    (tmp_path / "oracle" / CURRENT_LOG).write_bytes(original[:cut] + bytes(len(original) - cut))
    with jetstore.open(tmp_path / "oracle", **SMALL) as instance:
        expected = read_ids(instance)
    assert 0 < len(expected) < n
    os.truncate(path, cut)
    with _open_accepting_loss(tmp_path / "cut") as instance:
        loss = instance.recovery.data_loss
        assert loss is not None and loss.databases == ["main"]
        assert "edb.log (generation" in loss.reason and "is truncated" in loss.reason
        assert loss.moved_logs_to is not None
        assert os.path.getsize(os.path.join(loss.moved_logs_to, CURRENT_LOG)) == cut
        assert read_ids(instance) == expected
    events = (tmp_path / "cut" / "events.jsonl").read_text()
    assert "recovery_data_loss" in events
    with jetstore.open(tmp_path / "cut", **SMALL) as instance:
        assert read_ids(instance) == expected


@pytest.mark.parametrize("cut", ["frames", "past-the-recorded-end"])
def test_truncated_closed_generation_is_refused(tmp_path: Path, cut: str) -> None:
    """A closed generation is held to the same size rule, also when the cut removed none of
    its frames (the verifier calls it an error either way)."""
    n = crashed_instance(tmp_path)
    instance = jetstore.open(tmp_path, **SMALL)
    for _ in range(5):
        with instance.database("main").transaction() as txn:
            txn.table("t").insert({"id": n, "v": f"{n:06d}" * 20})
            n += 1
    closed = instance.log.roll()  # closed early: room after its recorded end
    with instance.database("main").transaction() as txn:
        txn.table("t").insert({"id": n, "v": f"{n:06d}" * 20})
        n += 1
    instance.simulate_crash()
    path = tmp_path / generation_log_name(closed)
    original = path.read_bytes()
    successor = decode_log_header((tmp_path / CURRENT_LOG).read_bytes()[:4096], path="edb.log")
    assert successor.generation == closed + 1
    recorded_end = successor.previous_generation_end
    assert LOG_HEADER_SIZE + 1000 < recorded_end < len(original)
    size = recorded_end - 1000 if cut == "frames" else recorded_end
    os.truncate(path, size)
    with pytest.raises(LogFileSizeMismatch) as info:
        jetstore.open(tmp_path, **SMALL)
    assert info.value.path == str(path) and f"it holds {size} bytes" in str(info.value)
    assert plan_recovery(str(tmp_path)).verdict == "data-loss"
    path.write_bytes(original)
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(n))


BIG_FILES = dict(SMALL, log_file_size=2 * 1024 * 1024)  # preallocated in two 1 MiB writes


def _fail_second_write_to(name: str, armed: dict[str, int]) -> FileSystem:
    """Fail the write of `name`'s second MiB once armed: a preallocation cut short after 1 MiB."""

    def hook(event: IOEvent) -> None:
        if (
            armed["on"]
            and event.op == "write"
            and os.path.basename(event.path) == name
            and event.offset == 1024 * 1024
        ):
            raise OSError(5, "injected: the process dies during preallocation")

    return FileSystem(hook=hook)


def test_crash_while_preparing_the_next_log_file_recovers(tmp_path: Path) -> None:
    """The next log file is prepared as edbtmp.log; cut short by a crash it is shorter than
    its size and has no header: not part of the log, never a reason to refuse."""
    armed = {"on": 0}
    instance = jetstore.open(
        tmp_path, filesystem=_fail_second_write_to("edbtmp.log", armed), **BIG_FILES
    )
    db = instance.database("main", create=True)
    db.create_table(
        "t", [("id", "int"), ("v", "text")], primary_key="id", indexes=[("by_v", ["v"])]
    )
    with db.transaction() as txn:
        txn.table("t").insert({"id": 0, "v": "a: before the roll"})
    assert instance.log.wait_prepared()
    armed["on"] = 1
    instance.log.roll()  # takes the prepared file; the next preparation fails half way
    assert instance.log.wait_prepared()
    with db.transaction() as txn:
        txn.table("t").insert({"id": 1, "v": "b: after the roll"})
    instance.simulate_crash()
    assert os.path.getsize(tmp_path / "edbtmp.log") == 1024 * 1024
    assert plan_recovery(str(tmp_path)).verdict == "recoverable"
    with jetstore.open(tmp_path, **BIG_FILES) as reopened:
        assert read_ids(reopened) == [0, 1]
    with jetstore.open(tmp_path, **BIG_FILES) as reopened:
        assert read_ids(reopened) == [0, 1]


@pytest.mark.parametrize("name", ["edbtmp.log", "edbres00001.jrs"])
def test_crash_while_preallocating_the_first_files_recovers(tmp_path: Path, name: str) -> None:
    """The very first open dies while preallocating a log or reserve file: the next open
    starts over (the short file holds no header, nothing was acknowledged)."""
    armed = {"on": 1}
    with pytest.raises(JetError):
        jetstore.open(tmp_path, filesystem=_fail_second_write_to(name, armed), **BIG_FILES)
    assert os.path.getsize(tmp_path / name) == 1024 * 1024
    with jetstore.open(tmp_path, **BIG_FILES) as instance:
        db = instance.database("main", create=True)
        db.create_table(
            "t", [("id", "int"), ("v", "text")], primary_key="id", indexes=[("by_v", ["v"])]
        )
        with db.transaction() as txn:
            txn.table("t").insert({"id": 7, "v": "x"})
        instance.simulate_crash()
    with jetstore.open(tmp_path, **BIG_FILES) as instance:
        assert read_ids(instance) == [7]


def test_foreign_generation_refused(tmp_path: Path) -> None:
    crashed_instance(tmp_path / "a")
    crashed_instance(tmp_path / "b")
    name = generations(tmp_path / "a")[-1]
    os.replace(tmp_path / "b" / name, tmp_path / "a" / name)
    with pytest.raises((BadLogSignature, InvalidLogSequence)):
        jetstore.open(tmp_path / "a", **SMALL)


def test_dirty_database_with_logs_of_another_stream_refused(tmp_path: Path) -> None:
    crashed_instance(tmp_path / "a")
    crashed_instance(tmp_path / "b")
    os.replace(tmp_path / "b" / "main.edb", tmp_path / "a" / "main.edb")
    with pytest.raises(DatabaseLogSetMismatch):
        jetstore.open(tmp_path / "a", **SMALL)


def test_database_created_after_last_checkpoint_is_recreated(tmp_path: Path) -> None:
    instance = jetstore.open(tmp_path, **SMALL)
    db = instance.database("late", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    with db.transaction() as txn:
        txn.table("t").insert({"id": 1, "v": "one"})
    instance.simulate_crash()
    os.unlink(tmp_path / "late.edb")  # as if the file never reached the disk
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert instance.recovery.created == ["late"]
        with instance.database("late").transaction() as txn:
            assert txn.table("t").get(1) == {"id": 1, "v": "one"}


def test_database_of_the_log_missing_is_refused(tmp_path: Path) -> None:
    # Created before the last checkpoint: the log no longer holds its creation.
    crashed_instance(tmp_path, checkpoint_after_create=True)
    os.unlink(tmp_path / "main.edb")
    with pytest.raises(AttachedDatabaseMismatch):
        jetstore.open(tmp_path, **SMALL)


def test_a_database_file_deleted_while_closed_is_reported_not_offered_for_creation(
    tmp_path: Path,
) -> None:
    with jetstore.open(tmp_path, **SMALL) as instance:
        instance.database("main", create=True)
        instance.database("other", create=True)
    os.unlink(tmp_path / "main.edb")
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert instance.databases() == ["other"]
        missing = [e for e in instance.events.recent() if e["name"] == "database_missing"]
        assert [e["fields"]["database"] for e in missing] == ["main"]
        with pytest.raises(FileNotFound) as raised:
            instance.database("main")
        assert "edb.chk lists it" in str(raised.value) and "put the database file back" in str(
            raised.value
        )


def test_accept_data_loss_recovers_the_others_without_a_missing_database(
    tmp_path: Path,
) -> None:
    """One of two databases lost its file after a crash: plain open refuses (the log holds
    its changes); accepting data loss recovers the other in full and drops the missing one's
    changes, named in the loss, as `diagnose` foretells."""
    # Checkpoints only where the test takes them: a background one (by log volume) taken
    # after b's last commit left nothing of b to replay, and open then had nothing to refuse.
    options = SMALL
    instance = jetstore.open(tmp_path, **options)
    for name in ("a", "b"):
        db = instance.database(name, create=True)
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    for first in range(0, 300, 10):
        if first == 150:
            instance.checkpoint()  # half of each database's rows before it, half to replay
        for name in ("a", "b"):
            with instance.database(name).transaction() as txn:
                for i in range(first, first + 10):
                    txn.table("t").insert({"id": i, "v": "x" * 200})
    instance.simulate_crash()
    os.unlink(tmp_path / "b.edb")
    with pytest.raises(AttachedDatabaseMismatch) as raised:
        jetstore.open(tmp_path, **options)
    assert "--accept-data-loss" in str(raised.value)
    plan = plan_recovery(str(tmp_path))
    assert plan.data_loss is not None and plan.data_loss.possible
    assert "b" in plan.data_loss.databases
    assert plan.data_loss.databases == ["b"]  # a is recovered in full
    with jetstore.open(tmp_path, **options, accept_data_loss=True) as recovered:
        assert recovered.databases() == ["a"]
        loss = recovered.recovery.data_loss if recovered.recovery else None
        assert loss is not None
        # Only b lost anything: a got every record it needed and is not "affected".
        assert loss.databases == ["b"]
        assert loss.recovered_completely == ["a"]
        assert loss.without_file == ["b"]
        assert "changes in the log were dropped" in loss.reason
        with recovered.database("a").transaction() as txn:
            assert [row["id"] for row in txn.table("t").scan()] == list(range(300))
        assert recovered.database("a").file.header.repair_count == 0
    (event,) = [
        json.loads(line)
        for line in (tmp_path / "events.jsonl").read_text().splitlines()
        if '"recovery_data_loss"' in line
    ]
    assert event["fields"]["databases"] == ["b"]
    assert event["fields"]["recovered_completely"] == ["a"]
    # b had no file: nothing was "brought" anywhere, its logged changes went aside.
    assert event["fields"]["without_file"] == ["b"]
    assert "databases none were brought" in event["message"]
    assert "b had no file to recover" in event["message"]
    assert "a lost nothing" in event["message"]
    with jetstore.open(tmp_path, **options) as reopened:
        assert reopened.databases() == ["a"]


def test_databases_losing_data_are_those_a_loss_names_or_a_stopped_scan_reaches() -> None:
    """The rule recovery and diagnose share: a loss naming a database touches it; a scan that
    stopped in generation S touches every dirty database whose header requires S or later
    (its acknowledged commits may lie there), not one that requires only earlier ones, and
    the clean older copies replay was bringing forward, not a clean database with no sign of
    a later record."""

    def header(state: DatabaseState, checkpoint: int, max_required: int) -> DatabaseHeader:
        return DatabaseHeader(
            state=state,
            checkpoint_position=LogPosition(checkpoint, 4096),
            generation_max_required=max_required,
        )

    decided = RecoveryStart("dir", LogInventory("dir"), accept_data_loss=True)
    decided.dirty = {
        "old": header(DatabaseState.DIRTY, 2, 4),
        "busy": header(DatabaseState.DIRTY, 2, 9),
        "new": header(DatabaseState.DIRTY, 7, 9),
    }
    decided.behind = {
        "copy": header(DatabaseState.CLEAN, 1, 0),
        "listed": header(DatabaseState.CLEAN, 1, 0),
        "clean": header(DatabaseState.CLEAN, 3, 0),
    }
    decided.older_copies = {"listed"}
    named = [("gone", "its file is missing; its changes in the log were dropped")]
    assert databases_losing_data(named, decided, stopped_in=None) == ["gone"]
    stop = [("*", "replay stopped at 00000005:00001000: damaged")]
    assert databases_losing_data(stop, decided, stopped_in=5, brought_forward={"copy"}) == [
        "busy",
        "copy",
        "listed",
        "new",
    ]
    assert databases_losing_data(stop + named, decided, stopped_in=4) == [
        "busy",
        "gone",
        "listed",
        "new",
        "old",
    ]


@pytest.mark.parametrize("how", ["closed", "detached"])
def test_database_of_the_log_replaced_by_another_is_refused(tmp_path: Path, how: str) -> None:
    """The crashed database's file replaced by another instance's database of the same name
    and id (clean, or detached: bound to no stream). Skipping the log's records for that id as
    if they belonged to the newcomer would drop the crashed database's commits silently; open
    and diagnose refuse instead, naming the file, until the right file is back."""
    home, other = tmp_path / "home", tmp_path / "other"
    rows = crashed_instance(home, checkpoint_after_create=True)
    with jetstore.open(other, **SMALL) as elsewhere:
        db = elsewhere.database("main", create=True)
        assert db.db_id == 1
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
        if how == "detached":
            elsewhere.detach("main")
    original = home / "main.edb.original"
    os.replace(home / "main.edb", original)
    shutil.copy(other / "main.edb", home / "main.edb")
    before = snapshot(home)
    with pytest.raises(AttachedDatabaseMismatch) as raised:
        jetstore.open(home, **SMALL)
    assert "is another database" in str(raised.value)
    assert str(home / "main.edb") in str(raised.value)
    assert snapshot(home) == before
    plan = plan_recovery(str(home))
    assert plan.error is not None and plan.error.code == -1216
    os.replace(original, home / "main.edb")
    with jetstore.open(home, **SMALL) as instance:
        assert read_ids(instance) == list(range(rows))


def test_database_that_cannot_be_opened_stops_recovery(tmp_path: Path) -> None:
    crashed_instance(tmp_path)
    before = snapshot(tmp_path)

    def hook(event: IOEvent) -> None:
        if event.op == "open" and event.path.endswith("main.edb"):
            raise PermissionError(13, "held by a backup program")

    with pytest.raises(FileAccessDenied):
        jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    assert snapshot(tmp_path) == before
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert len(read_ids(instance)) > 0


def test_recovery_after_many_crashes_in_a_row(tmp_path: Path) -> None:
    total = crashed_instance(tmp_path, batches=2)
    for round_ in range(5):
        instance = jetstore.open(tmp_path, **SMALL)
        with instance.database("main").transaction() as txn:
            table = txn.table("t")
            for i in range(total, total + 30):
                table.insert({"id": i, "v": f"{i:06d}" * 20})
        total += 30
        if round_ % 2:
            instance.checkpoint()
        instance.simulate_crash()
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(total))
    assert generation_log_name(1) in os.listdir(tmp_path)


def test_crash_between_the_two_renames_of_a_roll(tmp_path: Path) -> None:
    """A roll renames edb.log to its generation name, then edbtmp.log to edb.log; a crash in
    between leaves no edb.log. Recovery must take the newest closed generation as the end."""
    n = crashed_instance(tmp_path)
    from jetstore.format.logheader import decode_log_header

    current = tmp_path / "edb.log"
    generation = decode_log_header(current.read_bytes()[:4096], path=str(current)).generation
    os.replace(current, tmp_path / generation_log_name(generation))
    assert (tmp_path / "edbtmp.log").exists()
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(n))
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(n))


def test_reopen_with_another_log_file_size(tmp_path: Path) -> None:
    n = crashed_instance(tmp_path)
    options = dict(SMALL, log_file_size=128 * 1024)
    with jetstore.open(tmp_path, **options) as instance:
        with instance.database("main").transaction() as txn:
            txn.table("t").insert({"id": n, "v": "x"})
        instance.simulate_crash()
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(n + 1))


def _open_accepting_loss(directory: Path) -> jetstore.Instance:
    return jetstore.open(directory, accept_data_loss=True, **SMALL)


def test_accept_data_loss_stops_at_a_missing_generation(tmp_path: Path) -> None:
    n = crashed_instance(tmp_path)
    gens = generations(tmp_path)
    os.unlink(tmp_path / gens[2])
    with _open_accepting_loss(tmp_path) as instance:
        loss = instance.recovery.data_loss
        assert loss is not None and loss.databases == ["main"]
        assert loss.moved_logs_to is not None and os.path.isdir(loss.moved_logs_to)
        ids = read_ids(instance)
        # A prefix of the commits: everything up to the gap, nothing after it, no holes.
        assert ids == list(range(len(ids)))
        assert 0 < len(ids) < n
        header = instance.database("main").file.header
        assert header.repair_count == 1
        with instance.database("main").transaction() as txn:
            txn.table("t").insert({"id": 10**6, "v": "after the loss"})
        instance.simulate_crash()
    with jetstore.open(tmp_path, **SMALL) as instance:
        ids_after = read_ids(instance)
        assert ids_after == [*ids, 10**6]
    events = (tmp_path / "events.jsonl").read_text()
    assert "recovery_data_loss" in events


def test_accept_data_loss_stops_at_damage(tmp_path: Path) -> None:
    crashed_instance(tmp_path)
    gens = generations(tmp_path)
    path = tmp_path / gens[-1]
    data = bytearray(path.read_bytes())
    data[4096 + 5000] ^= 0x40
    path.write_bytes(bytes(data))
    with _open_accepting_loss(tmp_path) as instance:
        assert instance.recovery.data_loss is not None
        ids = read_ids(instance)
        assert ids == list(range(len(ids)))


def test_accept_data_loss_without_any_log(tmp_path: Path) -> None:
    instance = jetstore.open(tmp_path, **SMALL)
    db = instance.database("main", create=True)
    db.create_table(
        "t", [("id", "int"), ("v", "text")], primary_key="id", indexes=[("by_v", ["v"])]
    )
    with db.transaction() as txn:
        txn.table("t").insert({"id": 0, "v": "checkpointed"})
    instance.checkpoint()
    with db.transaction() as txn:
        txn.table("t").insert({"id": 1, "v": "only in the log"})
    instance.simulate_crash()
    for name in [*generations(tmp_path), "edb.log"]:
        os.unlink(tmp_path / name)
    with _open_accepting_loss(tmp_path) as instance:
        assert instance.recovery.data_loss is not None
        assert read_ids(instance) == [0]


def test_accept_data_loss_changes_nothing_when_nothing_is_lost(tmp_path: Path) -> None:
    n = crashed_instance(tmp_path)
    with _open_accepting_loss(tmp_path) as instance:
        assert instance.recovery.data_loss is None
        assert read_ids(instance) == list(range(n))


def test_a_data_loss_repair_failing_before_its_record_changes_nothing(tmp_path: Path) -> None:
    """The repair records the loss before it writes anything: a failure before that leaves
    every file as it was, and a plain open refuses exactly as before."""
    crashed_instance(tmp_path)
    gens = generations(tmp_path)
    os.unlink(tmp_path / gens[2])
    before = snapshot(tmp_path)

    def hook(event: IOEvent) -> None:
        if event.op == "mkdir" and "lost-logs" in event.path:
            raise OSError(5, "crash before the loss is recorded")

    with pytest.raises(JetError):
        jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), accept_data_loss=True, **SMALL)
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "events.jsonl"} == {
        k: v for k, v in before.items() if k != "events.jsonl"
    }
    with pytest.raises(RequiredLogFilesMissing):
        jetstore.open(tmp_path, **SMALL)


def test_undecodable_commit_record_is_not_half_replayed(tmp_path: Path) -> None:
    """A frame whose checksum is valid but whose commit record breaks after its first
    operation (a software bug or a collision, not a torn write): without accept_data_loss the
    open refuses with the position; with it, replay stops before the record and none of its
    operations is applied, since a transaction is all or nothing even when data is lost."""
    instance = jetstore.open(tmp_path, **SMALL)
    db = instance.database("main", create=True)
    db.create_table(
        "t", [("id", "int"), ("v", "text")], primary_key="id", indexes=[("by_v", ["v"])]
    )
    for i in range(5):
        with db.transaction() as txn:
            txn.table("t").insert({"id": i, "v": f"row {i}"})
    with db.transaction() as txn:
        for i in (100, 101, 102):
            txn.table("t").insert({"id": i, "v": f"row {i}"})
    instance.simulate_crash()
    log = tmp_path / CURRENT_LOG
    data = bytearray(log.read_bytes())
    generation = decode_log_header(bytes(data[:LOG_HEADER_SIZE]), path=str(log)).generation
    offset, last = LOG_HEADER_SIZE, None
    while (frame := decode_frame(bytes(data), offset, generation)) is not None:
        if frame.payload[:1] == bytes([RECORD_COMMIT]):
            last = frame
        offset = frame.next_offset
    assert last is not None and last.kind == KIND_FULL
    payload = bytearray(last.payload)
    # Skip the commit header and the first operation (a PUT); break the second one's op byte.
    position = 25
    (key_length,) = struct.unpack_from("<H", payload, position + 1)
    position += 3 + key_length
    (value_length,) = struct.unpack_from("<I", payload, position)
    position += 4 + value_length
    assert payload[position] == OP_PUT
    payload[position] = 0x7F
    frame_bytes, _ = encode_frame(
        generation, last.offset, last.durable_before, KIND_FULL, bytes(payload)
    )
    data[last.offset : last.offset + len(frame_bytes)] = frame_bytes
    log.write_bytes(bytes(data))
    with pytest.raises(LogFileCorrupt):
        jetstore.open(tmp_path, **SMALL)
    with jetstore.open(tmp_path, accept_data_loss=True, **SMALL) as reopened:
        assert read_ids(reopened) == [0, 1, 2, 3, 4]


def test_crash_inside_a_roll_after_the_header_required_the_new_generation(
    tmp_path: Path,
) -> None:
    n = crashed_instance(tmp_path, batches=2)
    failing = {"on": False}

    def hook(event: IOEvent) -> None:
        if failing["on"] and event.op == "rename" and event.path.endswith("edbtmp.log"):
            raise OSError(5, "injected: the process dies before this rename")

    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    generation = instance.log.current_generation
    failing["on"] = True
    with pytest.raises(JetError):
        instance.log.roll()
    instance.simulate_crash()
    assert not (tmp_path / "edb.log").exists() and (tmp_path / "edbtmp.log").exists()
    # What the racing checkpoint had written: the header requires the new generation.
    from jetstore.io.handles import HandleRegistry
    from jetstore.pages.pagefile import DatabaseFile

    db = DatabaseFile.open(
        FileSystem(HandleRegistry("t")), str(tmp_path / "main.edb"), owner="t", cache_pages=16
    )
    db.write_header(raise_max_required=generation + 1)
    db.close()
    # Found by the kill soak: recovery must not call generation N+1 missing. edbtmp.log holds
    # its synced header and no record: the roll is finished (renamed to edb.log), nothing
    # acknowledged was lost.
    plan = plan_recovery(str(tmp_path))
    assert plan.verdict == "recoverable", plan
    with jetstore.open(tmp_path, **SMALL) as reopened:
        assert read_ids(reopened) == list(range(n))
        assert any("cut short between its two renames" in note for note in reopened.recovery.notes)
    assert (tmp_path / "edb.log").exists()
    with jetstore.open(tmp_path, **SMALL) as reopened:
        assert read_ids(reopened) == list(range(n))


def test_checkpoint_requires_only_generations_on_disk(tmp_path: Path) -> None:
    """A commit appended while a checkpoint writes its pages may close the log generation
    (logically: the record does not fit) without a flush. The checkpoint's header must not
    require that next generation: it may never reach the disk before a crash, and recovery
    would then call it missing although nothing acknowledged was lost."""
    state = {"armed": False}
    instance_box: list[jetstore.Instance] = []

    def hook(event: IOEvent) -> None:
        if state["armed"] and event.op == "write" and event.path.endswith("main.edb"):
            state["armed"] = False
            # A lazy commit big enough to close the current generation, appended while the
            # checkpoint writes pages (the commit lock is free then).
            db = instance_box[0].database("main")
            txn = db.transaction()
            txn.table("big").insert({"id": 1, "blob": b"x" * 60_000})
            txn.commit(lazy=True)

    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    instance_box.append(instance)
    db = instance.database("main", create=True)
    db.create_table(
        "t", [("id", "int"), ("v", "text")], primary_key="id", indexes=[("by_v", ["v"])]
    )
    db.create_table("big", [("id", "int"), ("blob", "bytes")], primary_key="id")
    with db.transaction() as txn:
        for i in range(5):
            txn.table("t").insert({"id": i, "v": f"row {i}"})
    generation = instance.log.current_generation
    state["armed"] = True
    instance.checkpoint()
    assert not state["armed"], "the hook did not run"
    assert instance.log.current_generation == generation + 1  # closed logically only
    assert instance.log.durable_position.generation == generation
    header = db.file.header
    assert header.generation_max_required == generation, header
    instance.simulate_crash()
    with jetstore.open(tmp_path, **SMALL) as reopened:
        assert read_ids(reopened) == [0, 1, 2, 3, 4]


def test_a_flush_across_generations_raises_the_headers_once(tmp_path: Path) -> None:
    """D8: a large transaction crossing several generations rewrites each database header once
    (to the newest generation), after its bytes are synced and before its commit returns; a
    crash then recovers it whole."""
    header_writes: list[int] = []
    state = {"counting": False}

    def hook(event: IOEvent) -> None:
        header = event.op == "write" and event.path.endswith("main.edb") and event.offset == 0
        if state["counting"] and header:
            header_writes.append(event.offset)

    instance = jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **SMALL)
    db = instance.database("main", create=True)
    db.create_table(
        "t", [("id", "int"), ("v", "text")], primary_key="id", indexes=[("by_v", ["v"])]
    )
    first = instance.log.current_generation
    started: list[int] = []
    state["counting"] = True
    with db.transaction() as txn:
        table = txn.table("t")
        for i in range(600):
            table.insert({"id": i, "v": f"{i:06d}" * 60})
    state["counting"] = False
    last = instance.log.current_generation
    assert last >= first + 3, (first, last)
    assert len(header_writes) == 1, header_writes
    assert db.file.header.generation_max_required == last
    with open(tmp_path / "events.jsonl", encoding="utf-8") as events:
        for line in events:
            event = json.loads(line)
            if event["name"] == "log_generation_started":
                started.append(event["fields"]["generation"])
    assert set(range(first + 1, last + 1)) <= set(started)
    instance.simulate_crash()
    with jetstore.open(tmp_path, **SMALL) as reopened:
        assert read_ids(reopened) == list(range(600))


def test_a_crash_after_the_only_database_was_detached_and_moved_away_recovers(
    tmp_path: Path,
) -> None:
    """Defect: with no database of the log stream left in the directory, recovery reads the
    newest generation from its start; a database detached in it (its file moved away, to be
    attached elsewhere, as detach is for) had committed there before its detach. After a
    crash the instance refused to open: 'the log holds changes for database id 1, but no
    database file has that id, put the missing database file back'
    (AttachedDatabaseMismatch). The log detaches that database further on: its file left with
    those changes. Such a refusal waits for the end of the scan and is dropped at the DETACH
    record of the id (when no record bound the id to another database in between)."""
    directory = tmp_path / "instance"
    with jetstore.open(directory, log_file_size=64 * 1024) as instance:
        db = instance.database("main", create=True)
        db.create_table("t", [("id", "int")], primary_key="id")
    instance = jetstore.open(directory, log_file_size=64 * 1024)
    db = instance.database("main")
    with db.transaction() as txn:
        txn.table("t").insert({"id": 1})
    os.rename(instance.detach("main"), tmp_path / "main.edb")
    instance.simulate_crash()
    with jetstore.open(directory, log_file_size=64 * 1024) as reopened:
        assert reopened.databases() == []
    with jetstore.open(tmp_path / "elsewhere", log_file_size=64 * 1024) as elsewhere:
        moved = elsewhere.attach(tmp_path / "main.edb")
        with moved.transaction() as txn:
            assert [row["id"] for row in txn.table("t").scan()] == [1]


def clean_instance(directory: Path, rows: int = 600) -> None:
    """Rows across several generations, then a clean shutdown: nothing to replay."""
    with jetstore.open(directory, **SMALL) as instance:
        db = instance.database("main", create=True)
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
        for i in range(rows):
            with db.transaction() as txn:
                txn.table("t").insert({"id": i, "v": "x" * 200})


@pytest.mark.parametrize("which", ["edb.log", "edb.log, first generation", "newest archived"])
def test_an_unreadable_log_the_stream_would_write_over_is_refused_then_set_aside(
    tmp_path: Path, which: str
) -> None:
    """After a clean shutdown no database needs the logs to recover, and an unreadable
    edb.log (or an unreadable archived file numbered above every readable one) used to be
    written over without a word: the stream went on under its name, destroying what it held,
    and a new generation of the same stream stood where the old one was (a restore rolling
    forward would replay it in the old one's place). Now the open refuses, writing nothing,
    and `accept_data_loss` sets the logs aside (the damaged file kept as it was) and begins a
    new stream; no row is lost."""
    clean_instance(tmp_path, rows=5 if which == "edb.log, first generation" else 600)
    gens = generations(tmp_path)
    if which == "newest archived":
        # The newest archived generation's name, with edb.log taken away: as after a roll
        # whose archived file was damaged and whose new current log was lost.
        damaged = tmp_path / gens[-1]
        (tmp_path / CURRENT_LOG).unlink()
    else:
        damaged = tmp_path / CURRENT_LOG
        assert (gens == []) == (which == "edb.log, first generation")
    data = bytearray(damaged.read_bytes())
    data[30] ^= 0xFF  # inside the header: its checksum fails
    damaged.write_bytes(bytes(data))
    if which == "newest archived":
        os.rename(damaged, tmp_path / generation_log_name(int(gens[-1][3:11], 16) + 1))
        damaged = tmp_path / generation_log_name(int(gens[-1][3:11], 16) + 1)
    before = snapshot(tmp_path)
    with pytest.raises(LogFileCorrupt) as info:
        jetstore.open(tmp_path, **SMALL)
    error = info.value
    assert error.code == -501 and error.path == str(damaged)
    assert f"{damaged.name} cannot be read" in str(error)
    assert "would go on under its name and destroy it" in str(error)
    assert "--accept-data-loss" in (error.hint or "")
    assert snapshot(tmp_path) == before
    with jetstore.open(tmp_path, accept_data_loss=True, **SMALL) as instance:
        recovery = instance.recovery
        assert recovery is not None and recovery.data_loss is not None
        assert recovery.data_loss.databases == []  # no database lost a change
        assert recovery.data_loss.recovered_completely == ["main"]
        moved = recovery.data_loss.moved_logs_to
        assert moved is not None
        assert (Path(moved) / damaged.name).read_bytes() == bytes(data)
        db = instance.database("main")
        with db.transaction() as txn:
            ids = [row["id"] for row in txn.table("t").scan()]
        assert ids == list(range(5 if which == "edb.log, first generation" else 600))
        with db.transaction() as txn:
            txn.table("t").insert({"id": 10_000, "v": "after"})
    with (
        jetstore.open(tmp_path, **SMALL) as instance,
        instance.database("main").transaction() as txn,
    ):
        assert txn.table("t").get(10_000) is not None


def test_an_unreadable_archived_generation_below_the_newest_does_not_stop_a_clean_open(
    tmp_path: Path,
) -> None:
    """An unreadable archived generation that no database needs and the stream never writes
    over again (a readable one is newer) is no reason to refuse the open."""
    clean_instance(tmp_path)
    gens = generations(tmp_path)
    assert len(gens) >= 2
    (tmp_path / gens[0]).write_bytes(bytes(100))
    with (
        jetstore.open(tmp_path, **SMALL) as instance,
        instance.database("main").transaction() as txn,
    ):
        assert len(list(txn.table("t").scan())) == 600
    assert (tmp_path / gens[0]).read_bytes() == bytes(100)


def failed_move(event: IOEvent) -> None:
    """An I/O hook failing the move of the logs into lost-logs-<time>/ (not the writes of
    the data-loss record there)."""
    if event.op == "rename" and "lost-logs" in event.target and "data-loss" not in event.target:
        raise OSError(5, "injected: the move into lost-logs fails")


def test_a_failed_move_of_the_lost_logs_is_reported_by_the_next_open(tmp_path: Path) -> None:
    """The open accepting the loss writes the databases, then fails to move the old logs
    aside: the next plain open must neither pass over the gap in silence nor go on with the
    old stream; it finishes the accepted repair from its durable record and reports it."""
    crashed_instance(tmp_path)
    gens = generations(tmp_path)
    os.unlink(tmp_path / gens[2])

    with pytest.raises(DiskIO):
        jetstore.open(
            tmp_path, filesystem=FileSystem(hook=failed_move), accept_data_loss=True, **SMALL
        )
    plan = plan_recovery(str(tmp_path))
    assert plan.error is None and plan.verdict == "recoverable"
    assert "accepted data loss" in plan.summary
    with jetstore.open(tmp_path, **SMALL) as instance:
        loss = instance.recovery.data_loss
        assert loss is not None and loss.databases == ["main"]
        assert loss.moved_logs_to is not None
        assert not generations(tmp_path)  # the old stream is set aside, not continued
        aside = set(os.listdir(loss.moved_logs_to))
        assert {gens[0], "edb.chk", "data-loss.json"} <= aside
        assert "data-loss.pending.json" not in aside
        ids = read_ids(instance)
        assert ids and ids == list(range(len(ids)))
        assert instance.database("main").file.header.repair_count == 1
    events = (tmp_path / "events.jsonl").read_text()
    assert events.count("recovery_data_loss") == 1


def test_a_failure_while_the_pending_record_is_rewritten_keeps_the_recorded_loss(
    tmp_path: Path,
) -> None:
    """The open finishing an interrupted data-loss repair writes its record again. It used
    to truncate the record and write it in place: a failure or crash in between left an
    empty record, and with it the only account of what was lost ("an accepted data loss
    whose record cannot be read", no database named). The record is now replaced whole
    (a new file renamed over it), so it is the old record or the new one."""
    crashed_instance(tmp_path)
    gens = generations(tmp_path)
    os.unlink(tmp_path / gens[2])

    with pytest.raises(DiskIO):
        jetstore.open(
            tmp_path, filesystem=FileSystem(hook=failed_move), accept_data_loss=True, **SMALL
        )

    def failed_rewrite(event: IOEvent) -> None:
        if event.op == "write" and "data-loss.pending.json" in event.path:
            raise OSError(28, "injected: no space left for the record")

    with pytest.raises(JetError):
        jetstore.open(tmp_path, filesystem=FileSystem(hook=failed_rewrite), **SMALL)
    with jetstore.open(tmp_path, **SMALL) as instance:
        loss = instance.recovery.data_loss
        assert loss is not None and loss.databases == ["main"]
        assert f"generation 3 ({gens[2]}) is missing" in loss.reason
        assert instance.database("main").file.header.repair_count == 1
    (aside,) = [name for name in os.listdir(tmp_path) if name.startswith("lost-logs-")]
    record = json.loads((tmp_path / aside / "data-loss.json").read_text())
    assert record["databases"] == ["main"]


def test_an_unreadable_pending_record_claims_no_database_recovered_completely(
    tmp_path: Path,
) -> None:
    """A pending data-loss record that cannot be read (damaged on disk) still reports an
    accepted loss, but which databases lost data is unknown: the open used to list the
    database the interrupted repair had rewritten as "recovered completely" (event 113:
    "lost nothing"), which nothing supports."""
    crashed_instance(tmp_path)
    gens = generations(tmp_path)
    os.unlink(tmp_path / gens[2])
    with pytest.raises(DiskIO):
        jetstore.open(
            tmp_path, filesystem=FileSystem(hook=failed_move), accept_data_loss=True, **SMALL
        )
    (record,) = tmp_path.glob("lost-logs-*/data-loss.pending.json")
    record.write_bytes(b'{"time_us": 17, "reas')
    with jetstore.open(tmp_path, **SMALL) as instance:
        loss = instance.recovery.data_loss
        assert loss is not None and "cannot be read" in loss.reason
        assert loss.recovered_completely == []
        assert instance.database("main").file.header.repair_count == 1


def _pending_data_loss(tmp_path: Path, stamped: bool) -> list[str]:
    """A crashed instance missing generation 2, whose `accept_data_loss` open recorded the
    loss (`data-loss.pending.json`) and then failed: `stamped`, at the move of the logs
    (the database already rewritten); not, at the database's write. Returns the
    generations' file names as they were."""
    crashed_instance(tmp_path)
    gens = generations(tmp_path)
    os.unlink(tmp_path / gens[2])

    def failed_write(event: IOEvent) -> None:
        recorded = any(tmp_path.glob("lost-logs-*/data-loss.pending.json"))
        if recorded and event.op == "fdatasync" and event.path.endswith("main.edb"):
            raise OSError(5, "injected: the database's write fails")

    with pytest.raises(DiskIO):
        jetstore.open(
            tmp_path,
            filesystem=FileSystem(hook=failed_move if stamped else failed_write),
            accept_data_loss=True,
            **SMALL,
        )
    return gens


@pytest.mark.parametrize("stamped", [True, False])
def test_an_offline_repair_finishes_a_pending_data_loss_and_counts_each_loss_once(
    tmp_path: Path, stamped: bool
) -> None:
    """An offline repair run while a data-loss recovery is pending (the move of its logs
    failed) used to move the logs into a directory of its own, and the next open still
    finished the recorded loss and raised the repaired database's count again. The repair
    now finishes that record: the logs go into its directory, the loss is reported by the
    repair, and each loss is counted once (the recovery's and the repair's). Not
    `stamped`: the recovery failed before it wrote the database, which the repair then
    takes dirty, and still counts both losses."""
    gens = _pending_data_loss(tmp_path, stamped)
    (pending,) = [name for name in os.listdir(tmp_path) if name.startswith("lost-logs-")]
    report = repair_database(tmp_path / "main.edb", accept_data_loss=True)
    assert report.applied and report.moved_logs_to == str(tmp_path / pending)
    assert report.was_dirty is not stamped
    finished = report.finished_data_loss
    assert finished is not None and finished["databases"] == ["main"]
    assert finished["record"] == str(tmp_path / pending / "data-loss.json")
    assert [name for name in os.listdir(tmp_path) if name.startswith("lost-logs-")] == [pending]
    aside = set(os.listdir(tmp_path / pending))
    assert {gens[0], "edb.chk", "data-loss.json"} <= aside
    assert "data-loss.pending.json" not in aside
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert instance.recovery.data_loss is None  # reported once, by the repair
        assert instance.database("main").file.header.repair_count == 2
    assert "recovery_data_loss" not in (tmp_path / "events.jsonl").read_text()


@pytest.mark.parametrize("stamped", [True, False])
def test_a_repair_killed_before_it_finishes_the_pending_record_counts_each_loss_once(
    tmp_path: Path, stamped: bool
) -> None:
    """The repair finishing a pending data loss swaps the repaired file in, then renames
    the record `data-loss.json`. Killed in between (here: that rename fails, which leaves
    the same files), the next open finished the record again and, the repaired header
    not carrying the record's repair time, counted the recorded loss a second time."""
    _pending_data_loss(tmp_path, stamped)

    def killed_before_the_rename(event: IOEvent) -> None:
        if event.op == "rename" and event.target.endswith("data-loss.json"):
            raise OSError(5, "injected: killed before the record is finished")

    with pytest.raises(DiskIO) as caught:
        repair_database(
            tmp_path / "main.edb",
            accept_data_loss=True,
            fs=FileSystem(hook=killed_before_the_rename),
        )
    assert "next open" in str(caught.value)
    assert list(tmp_path.glob("main.edb.damaged-*"))  # the repaired file is in place
    with jetstore.open(tmp_path, **SMALL) as instance:
        loss = instance.recovery.data_loss
        assert loss is not None and loss.databases == ["main"]  # reported, the repair could not
        assert instance.database("main").file.header.repair_count == 2
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert instance.recovery.data_loss is None
        assert instance.database("main").file.header.repair_count == 2


def test_a_database_recreated_by_replay_that_stopped_is_named_as_losing_data(
    tmp_path: Path,
) -> None:
    """A database created after the last checkpoint whose file is gone is re-created from
    its CREATE record and replayed; when a missing generation stops replay, its commits
    past the stop are lost. It used to be listed as recovered completely (not repaired,
    event 113 saying it lost nothing); open and diagnose now name it as losing data."""
    instance = jetstore.open(tmp_path, **SMALL)
    main = instance.database("main", create=True)
    main.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    instance.checkpoint()
    late = instance.database("late", create=True)
    late.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    for batch in range(30):
        with late.transaction() as txn:
            for n in range(batch * 40, batch * 40 + 40):
                txn.table("t").insert({"id": n, "v": f"{n:06d}" * 20})
    instance.simulate_crash()
    gens = generations(tmp_path)
    assert len(gens) >= 2
    os.unlink(tmp_path / gens[1])
    os.unlink(tmp_path / "late.edb")
    plan = plan_recovery(str(tmp_path))
    assert plan.data_loss is not None and "late" in plan.data_loss.databases
    with jetstore.open(tmp_path, accept_data_loss=True, **SMALL) as reopened:
        loss = reopened.recovery.data_loss
        assert loss is not None and "late" in loss.databases
        assert "late" not in loss.recovered_completely
        assert reopened.database("late").file.header.repair_count == 1
        with reopened.database("late").transaction() as txn:
            assert 0 < sum(1 for _ in txn.table("t").scan()) < 1200


@pytest.mark.parametrize("copies", [(0, 1), (0,)])
def test_a_checkpoint_file_of_a_newer_format_is_refused_not_written_over(
    tmp_path: Path, copies: tuple[int, ...]
) -> None:
    """The checkpoint file is a hint, but one a newer engine wrote (both copies, or only the
    copy it writes first) tells that a newer engine used the directory: this engine refuses
    instead of writing its own over it, naming the file and the way out."""
    crashed_instance(tmp_path, batches=2)
    path = tmp_path / "edb.chk"
    data = bytearray(path.read_bytes())
    for copy in copies:
        start = copy * 4096
        struct.pack_into("<H", data, start + 14, FORMAT_VERSION + 1)
        crc = google_crc32c.value(bytes(data[start + 4 : start + 4096]))
        struct.pack_into("<I", data, start, crc)
    path.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    for accept in (False, True):
        with pytest.raises(BadLogVersion) as info:
            jetstore.open(tmp_path, accept_data_loss=accept, **SMALL)
        assert str(path) in str(info.value) and f"version {FORMAT_VERSION + 1}" in str(info.value)
        assert "edb.chk" in info.value.hint
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k != "events.jsonl"} == {
        k: v for k, v in before.items() if k != "events.jsonl"
    }
    plan = plan_recovery(str(tmp_path))
    assert plan.error is not None and plan.error.name == "BadLogVersion"
    assert plan.verdict == "other-release" and "that release" in plan.summary


def test_two_data_loss_recoveries_within_one_second_keep_both_sets_of_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lost-logs-<time>/` is named to the second: a second recovery accepting a loss within
    the same second moved its logs into the first one's directory, over the files of the
    same names (each stream starts at generation 1), destroying what the first set aside."""
    from jetstore.instance import recovery

    monkeypatch.setattr(recovery, "now_us", lambda: 1_800_000_000_000_000)
    crashed_instance(tmp_path)
    os.unlink(tmp_path / generations(tmp_path)[2])
    with _open_accepting_loss(tmp_path) as instance:
        first = instance.recovery.data_loss.moved_logs_to
        table = instance.database("main")
        for batch in range(30):
            with table.transaction() as txn:
                for i in range(40):
                    txn.table("t").insert({"id": 10**6 + batch * 40 + i, "v": "x" * 120})
        instance.simulate_crash()
    assert first is not None
    kept = snapshot(Path(first))
    os.unlink(tmp_path / generations(tmp_path)[2])
    with _open_accepting_loss(tmp_path) as instance:
        second = instance.recovery.data_loss.moved_logs_to
    assert second is not None and second != first
    assert snapshot(Path(first)) == kept
    assert {generation_log_name(1), "edb.chk", "data-loss.json"} <= set(os.listdir(second))


def test_a_data_loss_repair_failing_between_two_databases_is_finished_by_the_next_open(
    tmp_path: Path,
) -> None:
    """The repair fails after it wrote one database (clean, repaired) and before the other's
    header: the next open finishes it from the record, replays the other one to the same
    point, and counts each repair once."""
    instance = jetstore.open(tmp_path, **SMALL)
    databases = [instance.database(name, create=True) for name in ("alpha", "beta")]
    for db in databases:
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    n = 0
    for _ in range(30):
        for db in databases:
            with db.transaction() as txn:
                for _ in range(20):
                    txn.table("t").insert({"id": n, "v": f"{n:06d}" * 20})
                    n += 1
    instance.simulate_crash()
    os.unlink(tmp_path / generations(tmp_path)[1])
    syncs: list[str] = []

    def hook(event: IOEvent) -> None:
        if event.op == "fdatasync" and event.path.endswith("beta.edb"):
            syncs.append(event.path)
            if len(syncs) == 1:
                raise OSError(5, "injected: the second database's write fails")

    with pytest.raises(DiskIO, match=r"beta\.edb"):
        jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), accept_data_loss=True, **SMALL)
    assert generations(tmp_path)  # nothing moved yet
    with jetstore.open(tmp_path, **SMALL) as instance:
        loss = instance.recovery.data_loss
        assert loss is not None and loss.databases == ["alpha", "beta"]
        assert not generations(tmp_path)
        counts = []
        for name in ("alpha", "beta"):
            with instance.database(name).transaction() as txn:
                counts.append(len(list(txn.table("t").scan())))
            assert instance.database(name).file.header.repair_count == 1
        # Commits alternate between the two: the one the gap cut off may be alpha's.
        assert 0 < counts[1] < n // 2 and counts[0] in (counts[1], counts[1] + 20)
        assert loss.reason.count("database 'beta' needs log generations") == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_open_interrupted_while_it_opens_the_database_files_leaves_none_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every return inside `open_database_files` (after its own, the caller's cleanup closes
    # them): a Ctrl-C as a database file's open
    # returned, before the file was stored, left it open and locked under the instance's
    # owner, for its final cleanup alone to close; what the function opened is closed on its
    # own way out now.
    with jetstore.open(tmp_path, **SMALL) as instance:
        for name in ("a", "b"):
            instance.database(name, create=True).create_table("t", [("id", "int")], "id")
    left: list[list[str]] = []

    def watched(instance: jetstore.Instance) -> dict[str, DatabaseFile]:
        try:
            return open_database_files(instance)
        except BaseException:
            left.append([h.description for h in instance.registry.open_handles()])
            raise

    monkeypatch.setattr(instance_module, "open_database_files", watched)
    fds = len(os.listdir("/proc/self/fd"))
    point = checked = 0
    while True:
        point += 1
        with (
            interrupt_at_return(open_database_files, point, own_returns=False) as fired,
            contextlib.suppress(KeyboardInterrupt),
        ):
            jetstore.open(tmp_path, **SMALL).close()
        if not fired:
            break
        # None where the interrupt landed in a finalizer (a weak reference's callback), which
        # Python reports as unraisable: the open went on.
        for handles in left:
            assert [p for p in handles if p.endswith(".edb")] == [], point
            checked += 1
        left.clear()
        assert len(os.listdir("/proc/self/fd")) == fds, point
    assert checked > 20


def test_a_refused_recovery_does_not_repair_a_damaged_header_copy_first(tmp_path: Path) -> None:
    """The writable open of each database rewrote a damaged header copy before recovery's
    checks ran: a database recovery then refused (here: the log it needs is gone) had been
    written all the same. The copy is rewritten (event 132) by an open that recovers."""
    from jetstore.instance.events import read_event_log

    n = crashed_instance(tmp_path, batches=3)
    database = tmp_path / "main.edb"
    with open(database, "r+b") as handle:
        handle.seek(8192 + 200)  # header copy 1
        handle.write(b"\xa5" * 64)
    damaged = database.read_bytes()
    os.rename(tmp_path / CURRENT_LOG, tmp_path / "edb.log.away")
    with pytest.raises((MissingLogFile, RequiredLogFilesMissing)):
        jetstore.open(tmp_path, **SMALL)
    assert database.read_bytes() == damaged
    os.rename(tmp_path / "edb.log.away", tmp_path / CURRENT_LOG)
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert read_ids(instance) == list(range(n))
    repaired = [e for e in read_event_log(FileSystem(), str(tmp_path)) if e["id"] == 132]
    assert [e["fields"]["database"] for e in repaired] == ["main"]
    assert database.read_bytes()[8192 + 200 : 8192 + 264] != b"\xa5" * 64


def test_a_data_loss_record_that_cannot_be_written_leaves_no_lost_logs_directory(
    tmp_path: Path,
) -> None:
    """An open accepting data loss makes `lost-logs-<time>/` and writes the loss's record
    there before it writes anything else. When that write failed (a full volume), the
    directory stayed, holding only the record's partial temporary file: each retry left
    another one, looking like the record of a repair that never happened."""
    crashed_instance(tmp_path, batches=20)
    oldest = generations(tmp_path)[0]
    os.unlink(tmp_path / oldest)

    def hook(event: IOEvent) -> None:
        if event.op == "write" and event.path.endswith("data-loss.pending.json.new"):
            raise OSError(28, "No space left on device")

    for _attempt in range(3):
        with pytest.raises(JetError) as failed:
            jetstore.open(
                tmp_path, filesystem=FileSystem(hook=hook), accept_data_loss=True, **SMALL
            )
        assert failed.value.code == -1808
        assert not [name for name in os.listdir(tmp_path) if name.startswith("lost-logs-")]
    with pytest.raises((MissingLogFile, RequiredLogFilesMissing)):
        jetstore.open(tmp_path, **SMALL)  # nothing was accepted
    with jetstore.open(tmp_path, accept_data_loss=True, **SMALL) as instance:
        assert instance.recovery.data_loss is not None
    assert len([name for name in os.listdir(tmp_path) if name.startswith("lost-logs-")]) == 1

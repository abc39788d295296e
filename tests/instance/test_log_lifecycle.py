"""Log lifecycle: circular logging that cannot outrun the durable checkpoint, a checkpoint file
that cannot be written (the seed failure, KB Q176239), back-pressure, removable logs."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import CheckpointDepthTooDeep
from jetstore.format.checkpoint import read_checkpoint_file
from jetstore.format.filenames import parse_generation_log_name
from jetstore.io import FileSystem, IOEvent
from jetstore.log.policy import DeletionLimit, deletable, deletion_limit

CIRCULAR = {
    "circular_logging": True,
    "log_file_size": 64 * 1024,
    "checkpoint_depth": 64 * 1024,
    "checkpoint_interval": 0.1,
}


class CheckpointLock:
    """Makes every operation on edb.chk fail, as when another program holds it."""

    def __init__(self) -> None:
        self.locked = False
        self.refused = 0

    def __call__(self, event: IOEvent) -> None:
        if self.locked and event.path.endswith("edb.chk"):
            self.refused += 1
            raise PermissionError(13, "edb.chk is held by another program")


def archived(directory: Path) -> list[int]:
    gens = [parse_generation_log_name(n) for n in os.listdir(directory)]
    return sorted(g for g in gens if g is not None)


def checkpoint_file_generation(directory: Path) -> int:
    state, _ = read_checkpoint_file((directory / "edb.chk").read_bytes(), path="edb.chk")
    return state.checkpoint_position.generation


def commit_rows(db: jetstore.Database, start: int, count: int, size: int = 400) -> None:
    for i in range(start, start + count):
        with db.transaction() as txn:
            txn.table("t").insert({"id": i, "v": "x" * size})


def setup(instance: jetstore.Instance) -> jetstore.Database:
    db = instance.database("main", create=True)
    if "t" not in db.table_names():
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    return db


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_deletion_rule() -> None:
    limit = deletion_limit(checkpoint_file_generation=10, header_generations=[("a", 12)])
    assert limit.keep_from == 8 and "checkpoint file" in limit.reason
    limit = deletion_limit(checkpoint_file_generation=10, header_generations=[("a", 7)])
    assert limit.keep_from == 5 and "'a'" in limit.reason
    limit = deletion_limit(
        checkpoint_file_generation=10, header_generations=[], backup_generation=4
    )
    assert limit.keep_from == 2 and "backup" in limit.reason
    assert deletion_limit(checkpoint_file_generation=None, header_generations=[]).keep_from == 0
    assert deletable([9, 3, 4, 7, 8], DeletionLimit(8, "")) == [3, 4, 7]


def test_circular_logging_keeps_the_log_bounded(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, **CIRCULAR) as instance:
        db = setup(instance)
        commit_rows(db, 0, 3000)
        assert wait_for(lambda: instance.logs_deleted > 0)
        gens = archived(tmp_path)
        current = instance.log.current_generation
        assert current > 20
        assert len(gens) < 12, gens
        # Nothing the durable state needs was deleted: every generation from the lowest that
        # the checkpoint file or the database header names up to the current one is present.
        header = instance.database("main").file.header
        need_from = min(checkpoint_file_generation(tmp_path), header.checkpoint_position.generation)
        assert set(range(need_from, current)) <= set(gens)
        instance.simulate_crash()
    with (
        jetstore.open(tmp_path, **CIRCULAR) as instance,
        instance.database("main").transaction() as txn,
    ):
        assert sum(1 for _ in txn.table("t").scan()) == 3000
    events = (tmp_path / "events.jsonl").read_text()
    assert "logs_deleted" in events


def test_without_circular_logging_nothing_is_deleted(tmp_path: Path) -> None:
    options = dict(CIRCULAR, circular_logging=False)
    with jetstore.open(tmp_path, **options) as instance:
        commit_rows(setup(instance), 0, 1500)
        current = instance.log.current_generation
        assert instance.logs_deleted == 0
    assert archived(tmp_path) == list(range(1, current))  # the current one is edb.log


def test_unwritable_checkpoint_file_freezes_deletion_and_recovers(tmp_path: Path) -> None:
    lock = CheckpointLock()
    with jetstore.open(tmp_path, filesystem=FileSystem(hook=lock), **CIRCULAR) as instance:
        db = setup(instance)
        commit_rows(db, 0, 500)
        instance.checkpoint()
        frozen = instance.durable_checkpoint
        assert frozen is not None
        lock.locked = True
        commit_rows(db, 500, 2000)  # commits go on while the file is held
        instance.checkpoint()
        assert lock.refused > 0
        assert instance.durable_checkpoint == frozen
        assert instance.checkpoint_file_error is not None
        # No generation the checkpoint file on disk still needs was deleted.
        assert checkpoint_file_generation(tmp_path) == frozen.generation
        assert min(archived(tmp_path)) <= frozen.generation
        counters = instance.counters()
        assert counters["checkpoint_lag_generations"] > 5
        assert counters["checkpoint_lag_bytes"] > 5 * 60 * 1024
        assert counters["checkpoint_file_error"]
        lock.locked = False
        assert wait_for(lambda: instance.checkpoint_file_error is None)
        assert instance.durable_checkpoint is not None
        assert instance.durable_checkpoint > frozen
        assert wait_for(lambda: min(archived(tmp_path)) > frozen.generation)
    names = [line for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any("checkpoint_file_write_failed" in line for line in names)
    assert any("checkpoint_file_write_recovered" in line for line in names)


def test_failure_event_repeats_at_intervals(tmp_path: Path) -> None:
    lock = CheckpointLock()
    options = dict(CIRCULAR, checkpoint_warning_interval=0.2)
    with jetstore.open(tmp_path, filesystem=FileSystem(hook=lock), **options) as instance:
        db = setup(instance)
        lock.locked = True
        for i in range(8):
            commit_rows(db, i * 50, 50)
            instance.checkpoint()
            time.sleep(0.1)
        lock.locked = False
    failures = (tmp_path / "events.jsonl").read_text().count("checkpoint_file_write_failed")
    assert failures >= 2


def test_back_pressure_refuses_updates_until_the_checkpoint_catches_up(tmp_path: Path) -> None:
    lock = CheckpointLock()
    options = dict(CIRCULAR, checkpoint_too_deep=8)
    with jetstore.open(tmp_path, filesystem=FileSystem(hook=lock), **options) as instance:
        db = setup(instance)
        commit_rows(db, 0, 50)
        lock.locked = True
        with pytest.raises(CheckpointDepthTooDeep) as info:
            commit_rows(db, 50, 5000)
        assert info.value.code == -614
        assert "edb.chk" in str(info.value)
        # Reads keep working, and everything acknowledged is there.
        with db.transaction() as txn:
            present = sum(1 for _ in txn.table("t").scan())
        assert present >= 50
        lock.locked = False
        assert wait_for(lambda: instance.checkpoint_lag_generations() < 8)
        commit_rows(db, 10_000, 10)  # updates resume by themselves
    with (
        jetstore.open(tmp_path, **options) as instance,
        instance.database("main").transaction() as txn,
    ):
        assert txn.table("t").get(10_009) is not None


def test_removable_logs_reports_what_recovery_does_not_need(tmp_path: Path) -> None:
    options = dict(CIRCULAR, circular_logging=False)
    with jetstore.open(tmp_path, **options) as instance:
        commit_rows(setup(instance), 0, 1500)
        instance.checkpoint()
        report = instance.removable_logs()
        durable = instance.durable_checkpoint
        assert durable is not None
        assert report["not_needed_for_recovery"]
        assert max(report["not_needed_for_recovery"]) < durable.generation - 1
        assert report["covered_by_backup"] == []
        assert set(report["not_needed_for_recovery"]) <= set(report["present"])


def test_a_failed_directory_sync_after_circular_deletion_does_not_stop_the_instance(
    tmp_path: Path,
) -> None:
    """Deleting old logs is housekeeping: the checkpoint is durable by then, and a deletion
    the sync did not make durable only lets a few unneeded logs reappear after a crash. A
    failed directory sync there failed the whole instance (no more commits)."""
    armed = {"unlinked": False, "failed": 0}

    def hook(event: IOEvent) -> None:
        if event.op == "unlink" and event.path.endswith(".log"):
            armed["unlinked"] = True
        elif event.op == "fsync_dir" and armed["unlinked"] and not armed["failed"]:
            armed["failed"] += 1
            raise OSError(5, "Input/output error")

    options = dict(CIRCULAR, checkpoint_interval=3600.0, checkpoint_depth=1 << 30)
    with jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **options) as instance:
        db = setup(instance)
        start = 0
        while not armed["failed"] and start < 4000:
            commit_rows(db, start, 100)
            instance.checkpoint()
            start += 100
        assert armed["failed"] == 1
        assert instance.state.value == "open"
        assert instance.log_delete_error is not None
        assert "fsync_dir" in str(instance.log_delete_error)
        commit_rows(db, 10_000, 300)  # commits are still acknowledged, and roll the log
        instance.checkpoint()
        assert instance.log_delete_error is None  # the next deletion cleared it
    events = (tmp_path / "events.jsonl").read_text()
    assert "log_delete_failed" in events
    with (
        jetstore.open(tmp_path, **options) as instance,
        instance.database("main").transaction() as txn,
    ):
        assert sum(1 for _ in txn.table("t").scan()) == start + 300


def test_a_directory_that_cannot_be_listed_for_circular_deletion_does_not_stop_the_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which logs to delete is read from the directory after the checkpoint file is durable;
    a failed listing (EIO, ESTALE) raised into the checkpoint and failed the instance."""
    from jetstore.errors import DiskIO

    options = dict(CIRCULAR, checkpoint_interval=3600.0, checkpoint_depth=1 << 30)
    with jetstore.open(tmp_path, **options) as instance:
        db = setup(instance)
        commit_rows(db, 0, 300)
        listdir = instance.fs.listdir

        def broken(path: str) -> list[str]:
            raise DiskIO(f"list directory failed on {path!r}: [Errno 5] Input/output error")

        monkeypatch.setattr(instance.fs, "listdir", broken)
        instance.checkpoint()
        assert instance.state.value == "open"
        assert "list directory" in str(instance.log_delete_error)
        monkeypatch.setattr(instance.fs, "listdir", listdir)
        commit_rows(db, 300, 300)
        instance.checkpoint()
        assert instance.log_delete_error is None and instance.logs_deleted > 0
    assert "log_delete_failed" in (tmp_path / "events.jsonl").read_text()


def test_a_transaction_longer_than_the_depth_limit_gets_a_checkpoint_not_a_stall(
    tmp_path: Path,
) -> None:
    """With a writable checkpoint file, a lag of generations that reaches a quarter of
    `checkpoint_too_deep` makes the background thread checkpoint: a transaction that moved
    the log past the limit by itself (small log files) used to have every later update
    refused, with a hint blaming edb.chk, until `checkpoint_interval` (30 s) had passed."""
    options = dict(CIRCULAR, checkpoint_too_deep=8, checkpoint_interval=30.0)
    options["checkpoint_depth"] = 64 * 1024 * 1024
    with jetstore.open(tmp_path, **options) as instance:
        db = setup(instance)
        with db.transaction() as txn:
            for i in range(1500):
                txn.table("t").insert({"id": i, "v": "x" * 700})
        assert instance.checkpoint_lag_generations() >= 8
        assert wait_for(lambda: instance.checkpoint_lag_generations() < 2, timeout=5.0)
        commit_rows(db, 10_000, 10)
        assert instance.checkpoint_file_error is None


def test_updates_refused_while_the_checkpoint_catches_up_do_not_blame_the_checkpoint_file(
    tmp_path: Path,
) -> None:
    """At the depth limit with a writable checkpoint file the refusal says a checkpoint is
    being written and to retry, not to make edb.chk writable."""
    held = threading.Event()
    release = threading.Event()

    def hook(event: IOEvent) -> None:
        # The background checkpoint's writes wait until the test lets them go (a roll's
        # header writes, in the committing thread, do not).
        if (
            held.is_set()
            and event.op == "write"
            and event.path.endswith("main.edb")
            and threading.current_thread().name == "jetstore-background"
        ):
            release.wait(10)

    options = dict(CIRCULAR, checkpoint_too_deep=8, checkpoint_interval=30.0)
    options["checkpoint_depth"] = 64 * 1024 * 1024
    with jetstore.open(tmp_path, filesystem=FileSystem(hook=hook), **options) as instance:
        db = setup(instance)
        held.set()
        try:
            with db.transaction() as txn:
                for i in range(1500):
                    txn.table("t").insert({"id": i, "v": "x" * 700})
            with pytest.raises(CheckpointDepthTooDeep) as info:
                commit_rows(db, 10_000, 1)
            assert "a checkpoint is being written" in info.value.detail
            assert "edb.chk" not in str(info.value)
            assert "retry" in info.value.hint
        finally:
            release.set()
        assert wait_for(lambda: instance.checkpoint_lag_generations() < 2, timeout=5.0)
        commit_rows(db, 10_000, 10)

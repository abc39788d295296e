"""`jetstore.backup.offline.backup_offline`: a stopped, clean instance copied under its lock;
a dirty one refused (or recovered first with `recover=True`); an open one refused with the
lock holder's pid; the images usable as they are (a clean database opens without logs)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.backup.backupset import PARTIAL_SUFFIX, read_backup_file, read_manifest
from jetstore.backup.offline import backup_offline
from jetstore.backup.restore import restore
from jetstore.errors import DatabaseDirtyShutdown, DiskFull, FileAccessDenied, InvalidPath
from jetstore.format.filenames import LOCK_FILE
from jetstore.io.files import FileSystem, IOEvent
from jetstore.io.handles import DEFAULT_REGISTRY, HandleRegistry
from jetstore.io.locking import is_locked

OPTIONS: dict[str, Any] = {"log_file_size": 64 * 1024, "checkpoint_interval": 1e6}


def build(path: Path, *, crash: bool = False, rows: int = 50) -> dict[int, str]:
    inst = jetstore.open(path, **OPTIONS)
    db = inst.database("main", create=True)
    db.create_table("kv", [("k", "int"), ("v", "text")], primary_key="k")
    second = inst.database("second", create=True)
    second.create_table("t", [("id", "int")], primary_key="id")
    with second.transaction() as txn:
        txn.table("t").insert({"id": 7})
    expected: dict[int, str] = {}
    for i in range(rows):
        with db.transaction() as txn:
            value = f"{i}:" + "o" * 1200
            txn.table("kv").insert({"k": i, "v": value})
            expected[i] = value
    if crash:
        inst.simulate_crash()
    else:
        inst.close()
    return expected


def snapshot(path: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((path / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(path))
        if name != LOCK_FILE
    }


def rows_of(path: Path) -> dict[int, str]:
    with jetstore.open(path, **OPTIONS) as inst, inst.database("main").transaction() as txn:
        return {r["k"]: r["v"] for r in txn.table("kv").scan()}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_offline_backup_of_a_clean_instance(tmp_path: Path, compress: bool) -> None:
    live = tmp_path / "live"
    expected = build(live)
    before = snapshot(live)
    handles, fds = DEFAULT_REGISTRY.total(), open_fds()
    seen: list[tuple[int, int, str]] = []
    dest = tmp_path / "set"
    manifest = backup_offline(
        live, dest, compress=compress, progress=lambda d, t, n: seen.append((d, t, n))
    )
    assert DEFAULT_REGISTRY.total() == handles and open_fds() == fds
    assert snapshot(live) == before  # only the lock file was touched
    assert not is_locked(FileSystem(), str(live))

    assert manifest.offline and manifest.kind == "full" and manifest.session is None
    assert manifest.logs == "none" and "no log file" in manifest.logs_note
    assert (manifest.generation_low, manifest.generation_high) == (0, 0)
    assert sorted(f.name for f in manifest.files) == ["main.edb", "second.edb"]
    assert all(image.clean for image in manifest.images)
    assert read_manifest(dest) == manifest
    assert seen[-1][0] == seen[-1][1] == manifest.total_size
    verification = jetstore.verify_backup(dest)
    assert verification.ok, verification.problems
    assert verification.as_dict()["offline"] is True

    # The images are usable as they are: clean databases open without any log.
    restored = tmp_path / "restored"
    restored.mkdir()
    registry = HandleRegistry("test")
    for entry in manifest.files:
        with (restored / entry.name).open("wb") as out:
            for chunk in read_backup_file(dest, entry, fs=FileSystem(registry), owner="t"):
                out.write(chunk)
    assert registry.total() == 0
    assert rows_of(restored) == expected
    assert rows_of(live) == expected


def test_offline_backup_refuses_a_dirty_instance(tmp_path: Path) -> None:
    live = tmp_path / "live"
    build(live, crash=True)
    before = snapshot(live)
    dest = tmp_path / "set"
    with pytest.raises(DatabaseDirtyShutdown) as caught:
        backup_offline(live, dest)
    error = caught.value
    assert "'main'" in error.detail or "'second'" in error.detail
    assert "--recover" in error.hint
    assert error.path is not None and error.path.endswith(".edb")
    assert not dest.exists() and not os.path.exists(str(dest) + PARTIAL_SUFFIX)
    assert snapshot(live) == before
    assert not is_locked(FileSystem(), str(live))


def test_offline_backup_with_recover(tmp_path: Path) -> None:
    live = tmp_path / "live"
    expected = build(live, crash=True)
    dest = tmp_path / "set"
    manifest = backup_offline(live, dest, recover=True)
    assert manifest.offline and all(image.clean for image in manifest.images)
    assert jetstore.verify_backup(dest).ok
    assert rows_of(live) == expected


def test_offline_backup_refuses_an_open_instance(tmp_path: Path) -> None:
    live = tmp_path / "live"
    build(live)
    inst = jetstore.open(live, **OPTIONS)
    try:
        dest = tmp_path / "set"
        for recover in (False, True):
            with pytest.raises(FileAccessDenied) as caught:
                backup_offline(live, dest, recover=recover)
            assert str(os.getpid()) in caught.value.detail
            assert not dest.exists()
    finally:
        inst.close()


def test_offline_destination_fault_cleans_up(tmp_path: Path) -> None:
    live = tmp_path / "live"
    build(live)
    dest = tmp_path / "set"
    state = {"writes": 0}

    def hook(event: IOEvent) -> None:
        if event.op == "write" and event.path.startswith(str(dest)):
            state["writes"] += 1
            if state["writes"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")

    handles, fds = DEFAULT_REGISTRY.total(), open_fds()
    with pytest.raises(DiskFull):
        backup_offline(live, dest, filesystem=FileSystem(hook=hook))
    assert DEFAULT_REGISTRY.total() == handles and open_fds() == fds
    assert not dest.exists() and not os.path.exists(str(dest) + PARTIAL_SUFFIX)
    assert not is_locked(FileSystem(), str(live))
    backup_offline(live, dest)
    assert jetstore.verify_backup(dest).ok


def test_offline_backup_of_a_copy_elsewhere(tmp_path: Path) -> None:
    """The set does not depend on where the instance lives (a copied directory works)."""
    live = tmp_path / "live"
    expected = build(live, rows=5)
    moved = tmp_path / "moved"
    shutil.copytree(live, moved)
    manifest = backup_offline(moved, tmp_path / "set")
    assert manifest.source == str(moved)
    assert rows_of(moved) == expected


def test_empty_paths_are_refused_not_taken_for_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`os.path.abspath("")` is the current directory: a backup set, a restore target, a set
    to restore or a `logs_from` given as "" (an unset variable) must be refused, never put
    into (or read from) wherever the process happens to run."""
    instance_dir = tmp_path / "instance"
    with jetstore.open(instance_dir) as instance:
        instance.database("main", create=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(InvalidPath, match="backup set path is empty"):
        backup_offline(instance_dir, "")
    backup_offline(instance_dir, tmp_path / "set")
    with pytest.raises(InvalidPath, match="restore target path is empty"):
        restore(tmp_path / "set", "")
    with pytest.raises(InvalidPath, match="backup set path is empty"):
        restore("", tmp_path / "restored")
    with pytest.raises(InvalidPath, match="logs-from path is empty"):
        restore(tmp_path / "set", tmp_path / "restored", logs_from="")
    assert os.listdir(cwd) == []
    # A NUL byte: the OS API's bare ValueError ("embedded null byte") became InvalidPath.
    with pytest.raises(InvalidPath, match=r"backup set path .* NUL"):
        backup_offline(instance_dir, str(tmp_path / "x\x00y"))
    with pytest.raises(InvalidPath, match=r"restore target path .* NUL"):
        restore(tmp_path / "set", str(tmp_path / "x\x00y"))


def test_the_start_time_is_taken_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Defect: `started` (the time the images hold no commit after, which a restore's time
    # stop trusts without reading a log) was taken before the directory lock: an instance
    # that committed and closed in between had its commit in the images, later than the
    # set's start, and `--until-time` between the two gave a state holding it.
    import jetstore.backup.offline as offline

    live = tmp_path / "live"
    build(live, rows=5)
    acquire = offline.acquire_directory_lock
    committed: list[int] = []

    def an_instance_commits_first(*args: Any, **kwargs: Any) -> Any:
        if not committed:
            with jetstore.open(live, **OPTIONS) as inst, inst.database("main").transaction() as txn:
                txn.table("kv").insert({"k": 99, "v": "late"})
            committed.append(time.time_ns() // 1000)
        return acquire(*args, **kwargs)

    monkeypatch.setattr(offline, "acquire_directory_lock", an_instance_commits_first)
    manifest = backup_offline(live, tmp_path / "set")
    assert committed and manifest.started_us >= committed[0]
    restore(tmp_path / "set", tmp_path / "restored")
    assert 99 in rows_of(tmp_path / "restored")

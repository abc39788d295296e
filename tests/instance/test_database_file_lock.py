"""One writer per database file, and a file deleted or replaced under an open instance is
noticed (design D13).

Found by an adversarial test: a second instance directory holding a hard link to a live
instance's `main.edb` was opened, advised `accept_data_loss`, and its recovery rewrote the
live file's header; the live instance then lost acknowledged commits at its next crash. And
a database file deleted while open vanished silently: commits, checkpoints and close all
succeeded.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import (
    FileAccessDenied,
    FileNotFound,
    InstanceUnavailable,
    JetError,
    LogWriteFail,
)
from jetstore.instance.diagnosis import plan_recovery
from jetstore.tools.checksum import checksum_path

SMALL = {"log_file_size": 64 * 1024, "checkpoint_depth": 64 * 1024}
QUIET = {
    **SMALL,
    "checkpoint_depth": 1 << 30,
    "checkpoint_interval": 3600.0,
    "control_socket": False,
}


def insert(db: jetstore.Database, lo: int, hi: int) -> None:
    if "t" not in db.table_names():
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    for k in range(lo, hi, 10):
        with db.transaction() as txn:
            for j in range(k, min(k + 10, hi)):
                txn.table("t").insert({"id": j, "v": "x" * 200})


def ids(db: jetstore.Database) -> set[int]:
    with db.transaction() as txn:
        return {row["id"] for row in txn.table("t").scan()}


def events(directory: Path) -> list[dict[str, object]]:
    lines = (directory / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture
def live(tmp_path: Path) -> Path:
    """An instance directory with 300 rows in `main`, cleanly closed."""
    directory = tmp_path / "a"
    with jetstore.open(directory, **SMALL) as instance:
        insert(instance.database("main", create=True), 0, 300)
    return directory


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_a_database_file_another_instance_has_open_is_refused(
    live: Path, tmp_path: Path, link: str
) -> None:
    other = tmp_path / "b"
    other.mkdir()
    if link == "hard":
        os.link(live / "main.edb", other / "main.edb")
    else:
        (other / "main.edb").symlink_to(live / "main.edb")
    instance = jetstore.open(live, **QUIET)
    insert(instance.database("main"), 1000, 1300)  # acknowledged, not checkpointed
    before = (live / "main.edb").read_bytes()
    for accept in (False, True):
        with pytest.raises(FileAccessDenied) as info:
            jetstore.open(other, **SMALL, accept_data_loss=accept)
        err = info.value
        assert err.code == -1032
        assert err.path == str(other / "main.edb")
        assert f"instance '{live}' in this process ({os.getpid()})" in str(err)
        assert "accept" not in err.hint
    assert (live / "main.edb").read_bytes() == before, "the refused opener wrote the live file"
    assert not [name for name in os.listdir(other) if name.startswith("lost-logs")]
    plan = plan_recovery(other)
    assert plan.verdict == "in-use" and plan.data_loss is None
    assert plan.error is not None and plan.error.name == "FileAccessDenied"
    # Read-only openers keep working on the live instance: diagnose of its own directory,
    # checksum, an online backup.
    assert plan_recovery(live).verdict == "in-use"
    assert checksum_path(str(live)).ok
    instance.backup(tmp_path / "set")
    instance.simulate_crash()
    with jetstore.open(live, **SMALL) as again:
        assert ids(again.database("main")) == set(range(300)) | set(range(1000, 1300))
    # Once the live instance is closed, the other directory may open the (now clean) file.
    with jetstore.open(other, **SMALL) as second:
        assert len(ids(second.database("main"))) == 600


def test_attach_refuses_a_file_another_instance_has_open(live: Path, tmp_path: Path) -> None:
    with jetstore.open(tmp_path / "c", **QUIET) as source:
        insert(source.database("moving", create=True), 0, 50)
        path = source.detach("moving")
        # Detached (clean) but opened again by another instance through a link to it.
        holder_dir = tmp_path / "holder"
        holder_dir.mkdir()
        os.link(path, holder_dir / "moving.edb")
    with jetstore.open(holder_dir, **QUIET) as holder:
        assert holder.databases() == ["moving"]
        with jetstore.open(live, **QUIET) as target:
            with pytest.raises(FileAccessDenied) as info:
                target.attach(path)
            assert f"instance '{holder_dir}'" in str(info.value)
            assert os.path.exists(path), "a refused attach must not move the file"
            assert target.databases() == ["main"]
            assert target.registry.counts()["lock"] == 2  # its directory's and main.edb's


def test_a_deleted_database_file_fails_the_next_checkpoint(live: Path) -> None:
    instance = jetstore.open(live, **QUIET)
    db = instance.database("main")
    insert(db, 1000, 1010)
    os.unlink(live / "main.edb")
    insert(db, 1010, 1020)  # commits still go to the log
    with pytest.raises(FileNotFound) as info:
        instance.checkpoint()
    err = info.value
    assert err.path == str(live / "main.edb")
    assert "was deleted while the instance had it open" in str(err)
    assert "Do not create a new database" in err.hint
    with pytest.raises(InstanceUnavailable):
        insert(db, 1020, 1030)
    failed = [e for e in events(live) if e["name"] == "instance_failed"]
    assert failed and "main.edb" in str(failed[0]["message"])
    # The operator puts the file back (from the descriptor the failed instance still holds),
    # then reopens: nothing acknowledged is lost.
    fd = int(err.hint.split("/fd/")[1].split(";")[0])
    with open(f"/proc/self/fd/{fd}", "rb") as source:
        (live / "main.edb").write_bytes(source.read())
    instance.close()
    with jetstore.open(live, **SMALL) as again:
        assert ids(again.database("main")) == set(range(300)) | set(range(1000, 1020))


def test_a_replaced_database_file_fails_close(live: Path) -> None:
    instance = jetstore.open(live, **QUIET)
    insert(instance.database("main"), 1000, 1010)
    os.rename(live / "main.edb", live / "main.edb.aside")
    (live / "main.edb").write_bytes(b"not the instance's file")
    with pytest.raises(FileNotFound) as info:
        instance.close()
    assert "was replaced by another file" in str(info.value)
    assert instance.registry.total() == 0
    assert (live / "main.edb").read_bytes() == b"not the instance's file"
    os.replace(live / "main.edb.aside", live / "main.edb")
    with jetstore.open(live, **SMALL) as again:
        assert ids(again.database("main")) == set(range(300)) | set(range(1000, 1010))


def test_the_background_checkpoint_notices_a_deleted_database_file(live: Path) -> None:
    instance = jetstore.open(live, **{**SMALL, "checkpoint_interval": 0.05})
    try:
        db = instance.database("main")
        os.unlink(live / "main.edb")
        with pytest.raises(InstanceUnavailable) as info:
            for k in range(1000, 1400):  # each commit makes a checkpoint due within 0.05 s
                insert(db, k, k + 1)
                time.sleep(0.01)
        assert isinstance(info.value.__cause__, FileNotFound)
    finally:
        instance.close()


def test_a_deleted_current_log_fails_at_the_next_roll(live: Path) -> None:
    instance = jetstore.open(live, **QUIET)
    db = instance.database("main")
    os.unlink(live / "edb.log")
    with pytest.raises(LogWriteFail) as info:
        insert(db, 1000, 3000)  # crosses a generation: the roll would archive no file
    err = info.value
    assert err.path == str(live / "edb.log")
    assert "was deleted while the instance was writing it" in str(err)
    with pytest.raises(JetError):
        insert(db, 5000, 5001)
    instance.close()


def test_a_replaced_current_log_fails_the_next_checkpoint(live: Path) -> None:
    instance = jetstore.open(live, **QUIET)
    db = instance.database("main")
    insert(db, 1000, 1010)
    os.rename(live / "edb.log", live / "edb.log.aside")
    (live / "edb.log").write_bytes(b"\0" * 4096)
    with pytest.raises(LogWriteFail) as info:
        instance.checkpoint()
    assert "was replaced by another file" in str(info.value)
    with pytest.raises(JetError):
        insert(db, 1010, 1011)
    instance.simulate_crash()
    os.replace(live / "edb.log.aside", live / "edb.log")
    with jetstore.open(live, **SMALL) as again:
        assert ids(again.database("main")) == set(range(300)) | set(range(1000, 1010))

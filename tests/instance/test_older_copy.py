"""An older copy of a database file put back in the instance directory.

A clean database holds every change up to its position and none after; the log may hold
later ones (the file was replaced by an older copy, by hand or from an offline copy). Recovery
must bring it forward from its own position, or refuse: never apply only the changes after
the checkpoint on top of it (rows in the middle would vanish without a word).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import ConsistentTimeMismatch
from jetstore.format.checkpoint import read_checkpoint_file
from jetstore.format.filenames import parse_generation_log_name
from jetstore.instance.diagnosis import plan_recovery

SMALL = {"log_file_size": 64 * 1024, "checkpoint_depth": 64 * 1024}


def fill(instance: jetstore.Instance, start: int, stop: int) -> None:
    db = instance.database("main", create=True)
    if "t" not in db.table_names():
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    for first in range(start, stop, 10):
        with db.transaction() as txn:
            for i in range(first, first + 10):
                txn.table("t").insert({"id": i, "v": "x" * 200})


def ids(instance: jetstore.Instance) -> list[int]:
    with instance.database("main").transaction() as txn:
        return [row["id"] for row in txn.table("t").scan()]


def delete_generations_before_the_checkpoint(directory: Path) -> None:
    """What circular logging may do: every generation before the checkpoint's is gone."""
    path = directory / "edb.chk"
    state, _problems = read_checkpoint_file(path.read_bytes(), path=str(path))
    for name in os.listdir(directory):
        generation = parse_generation_log_name(name)
        if generation is not None and generation < state.checkpoint_position.generation:
            os.remove(directory / name)


def older_copy_put_back(directory: Path, *, crash: bool, **options: object) -> Path:
    """300 rows, a copy of the clean file, 300 more rows (checkpoints in between), then the
    copy replaces the file (after a crash or a clean shutdown)."""
    with jetstore.open(directory, **SMALL, **options) as instance:  # type: ignore[arg-type]
        fill(instance, 0, 300)
    copy = directory.parent / "main.edb.copy"
    shutil.copy(directory / "main.edb", copy)
    instance = jetstore.open(directory, **SMALL, **options)  # type: ignore[arg-type]
    fill(instance, 300, 570)
    instance.checkpoint()
    fill(instance, 570, 600)
    if crash:
        instance.simulate_crash()
    else:
        instance.close()
    shutil.copy(copy, directory / "main.edb")
    return copy


@pytest.mark.parametrize("crash", [True, False], ids=["after a crash", "after a shutdown"])
def test_an_older_copy_is_brought_forward_from_its_own_position(
    tmp_path: Path, crash: bool
) -> None:
    older_copy_put_back(tmp_path, crash=crash)
    plan = plan_recovery(str(tmp_path))
    assert plan.verdict == "recoverable"
    assert any("older copy" in note for note in plan.notes)
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert ids(instance) == list(range(600))
        assert instance.recovery is not None and instance.recovery.needed
    with jetstore.open(tmp_path, **SMALL) as instance:  # and it stays so
        assert ids(instance) == list(range(600))


def test_an_older_copy_whose_log_is_gone_is_refused(tmp_path: Path) -> None:
    """The generations from the copy's position are gone (circular logging): the checkpoint
    file says the database was at a later position, so open refuses (-551) instead of
    serving the copy, diagnose says the same, and accepting data loss keeps the copy."""
    copy = older_copy_put_back(tmp_path, crash=True)
    delete_generations_before_the_checkpoint(tmp_path)
    with pytest.raises(ConsistentTimeMismatch) as raised:
        jetstore.open(tmp_path, **SMALL)
    assert raised.value.code == -551
    assert "older copy" in str(raised.value) and "main.edb" in str(raised.value)
    plan = plan_recovery(str(tmp_path))
    assert plan.error is not None and plan.error.code == -551
    assert plan.verdict == "data-loss"
    with jetstore.open(tmp_path, **SMALL, accept_data_loss=True) as instance:
        assert ids(instance) == list(range(300))  # the copy, as it was
        assert instance.recovery is not None and instance.recovery.data_loss is not None
    assert copy.exists()


def test_without_the_checkpoint_file_the_scan_refuses_an_older_copy(tmp_path: Path) -> None:
    """No checkpoint file and the copy's generations gone: the first record for it after its
    position gives it away; open refuses rather than apply the later changes on top."""
    older_copy_put_back(tmp_path, crash=True)
    delete_generations_before_the_checkpoint(tmp_path)
    os.remove(tmp_path / "edb.chk")
    with pytest.raises(ConsistentTimeMismatch) as raised:
        jetstore.open(tmp_path, **SMALL)
    assert "holds a change to it" in str(raised.value)


def test_the_file_the_instance_wrote_still_opens_without_replay(tmp_path: Path) -> None:
    """The ordinary case: after a clean shutdown nothing is replayed, whatever logs remain."""
    with jetstore.open(tmp_path, **SMALL) as instance:
        fill(instance, 0, 300)
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert instance.recovery is not None and not instance.recovery.needed
        assert instance.recovery.replayed == 0
        assert ids(instance) == list(range(300))


def test_an_older_copy_cut_short_by_damage_is_named_as_losing_data(tmp_path: Path) -> None:
    """Accepting data loss while an older copy is brought forward and the scan stops at
    damage in a closed generation: the copy did not get every record it needed, so it is
    named as losing data (repair count raised), never as recovered completely."""
    older_copy_put_back(tmp_path, crash=True)
    closed = sorted(
        name for name in os.listdir(tmp_path) if parse_generation_log_name(name) is not None
    )
    path = tmp_path / closed[-1]
    data = bytearray(path.read_bytes())
    data[4096 + 3000] ^= 0x40  # inside the frames of the newest closed generation
    path.write_bytes(bytes(data))
    plan = plan_recovery(str(tmp_path))
    assert plan.data_loss is not None and plan.data_loss.databases == ["main"]
    with jetstore.open(tmp_path, **SMALL, accept_data_loss=True) as instance:
        loss = instance.recovery.data_loss if instance.recovery is not None else None
        assert loss is not None
        assert (loss.databases, loss.recovered_completely) == (["main"], [])
        assert instance.database("main").file.header.repair_count == 1
        rows = ids(instance)
        assert rows == list(range(len(rows))) and 300 <= len(rows) < 600

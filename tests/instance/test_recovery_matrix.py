"""Table-driven recovery: every checkpoint-file state x log presence x header state ends either
in a correct recovery (with an event when the checkpoint file was not trusted) or in the right
error with every file unchanged."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import MissingLogFile, RequiredLogFilesMissing
from jetstore.format.checkpoint import read_checkpoint_file
from jetstore.format.dbheader import choose_db_header
from jetstore.format.filenames import generation_log_name, parse_generation_log_name

OPTIONS = {"log_file_size": 64 * 1024, "checkpoint_depth": 1 << 30, "checkpoint_interval": 1e6}
ROWS_PER_BATCH = 150

CHECKPOINT_STATES = ["valid", "missing", "corrupt", "foreign", "stale"]
LOG_STATES = ["all", "missing_middle", "missing_newest", "missing_all"]
HEADER_STATES = ["clean", "dirty"]


def batch(db: jetstore.Database, start: int) -> int:
    with db.transaction() as txn:
        for i in range(start, start + ROWS_PER_BATCH):
            txn.table("t").insert({"id": i, "v": f"{i:08d}" * 30})
    return start + ROWS_PER_BATCH


def build(directory: Path, header_state: str) -> tuple[int, bytes, int]:
    """An instance with work before and after a checkpoint; returns (rows, the checkpoint
    file as it was right after the first open, the database's checkpoint generation)."""
    instance = jetstore.open(directory, **OPTIONS)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    early = (directory / "edb.chk").read_bytes()
    n = 0
    for _ in range(4):
        n = batch(db, n)
    instance.checkpoint()
    for _ in range(4):
        n = batch(db, n)
    checkpoint_generation = db.file.header.checkpoint_position.generation
    if header_state == "clean":
        instance.close()
    else:
        instance.simulate_crash()
    return n, early, checkpoint_generation


def generations(directory: Path) -> list[int]:
    gens = (parse_generation_log_name(name) for name in os.listdir(directory))
    return sorted(g for g in gens if g is not None)


def hashes(directory: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(directory))
        if (directory / name).is_file() and name != "jetstore.lock"
    }


@pytest.fixture(scope="module")
def foreign_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    other = tmp_path_factory.mktemp("other")
    with jetstore.open(other, **OPTIONS) as instance:
        instance.database("x", create=True)
    return (other / "edb.chk").read_bytes()


@pytest.mark.parametrize("header_state", HEADER_STATES)
@pytest.mark.parametrize("log_state", LOG_STATES)
@pytest.mark.parametrize("checkpoint_state", CHECKPOINT_STATES)
def test_recovery_matrix(
    tmp_path: Path,
    foreign_checkpoint: bytes,
    checkpoint_state: str,
    log_state: str,
    header_state: str,
) -> None:
    directory = tmp_path / "instance"
    rows, early, checkpoint_generation = build(directory, header_state)
    chk = directory / "edb.chk"
    present = generations(directory)
    if checkpoint_state == "missing":
        chk.unlink()
    elif checkpoint_state == "corrupt":
        data = bytearray(chk.read_bytes())
        data[40] ^= 0xFF
        data[4096 + 40] ^= 0xFF
        chk.write_bytes(bytes(data))
    elif checkpoint_state == "foreign":
        chk.write_bytes(foreign_checkpoint)
    elif checkpoint_state == "stale":
        chk.write_bytes(early)  # names generation 1 ...
        if checkpoint_generation > 1 or header_state == "clean":
            (directory / generation_log_name(1)).unlink()  # ... which is gone
    if log_state == "missing_middle":
        victim = max(checkpoint_generation + 1, present[len(present) // 2])
        if (directory / generation_log_name(victim)).exists():
            (directory / generation_log_name(victim)).unlink()
    elif log_state == "missing_newest":
        (directory / "edb.log").unlink()
    elif log_state == "missing_all":
        for name in os.listdir(directory):
            if name == "edb.log" or parse_generation_log_name(name) is not None:
                (directory / name).unlink()

    must_fail = header_state == "dirty" and log_state != "all"
    if must_fail:
        before = hashes(directory)
        with pytest.raises((MissingLogFile, RequiredLogFilesMissing)) as info:
            jetstore.open(directory, **OPTIONS)
        message = str(info.value)
        assert "generation" in message and "backup" in message
        assert hashes(directory) == before, "a refused recovery must not change any file"
        return

    with jetstore.open(directory, **OPTIONS) as instance:
        with instance.database("main").transaction() as txn:
            ids = [row["id"] for row in txn.table("t").scan()]
        assert ids == list(range(rows))
        notes = " ".join(instance.recovery.notes)
        if checkpoint_state != "valid" and header_state == "dirty":
            assert "checkpoint file" in notes
    # A fresh, valid checkpoint file naming a generation that exists.
    state, problems = read_checkpoint_file(chk.read_bytes(), path=str(chk))
    assert problems == []
    assert state.checkpoint_position.generation in [
        *generations(directory),
        max(generations(directory), default=0) + 1,
    ]
    data = (directory / "main.edb").read_bytes()
    header, _ = choose_db_header(data[:8192], data[8192:16384], path="main.edb")
    assert header.state.name == "CLEAN"
    if checkpoint_state != "valid" and header_state == "dirty":
        assert "recovery_checkpoint_file_ignored" in (directory / "events.jsonl").read_text()
    shutil.rmtree(directory)

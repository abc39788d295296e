"""Instance directories for the admin command tests, and helpers to run `jetstore` on them.

Each instance has small (64 KiB) log files and enough commits to span three generations
(two closed `edbXXXXXXXX.log` and the current `edb.log`), so missing, damaged and torn logs
can be made the way disks and operators make them. Templates are built once per session and
copied for each test (building is cheap, but copying is cheaper still and keeps tests apart).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import google_crc32c
import pytest

import jetstore
from jetstore.cli.main import run
from jetstore.format.filenames import LOCK_FILE
from jetstore.format.logframe import decode_frame
from jetstore.format.logheader import LOG_HEADER_SIZE

SMALL: dict[str, Any] = {
    "log_file_size": 64 * 1024,
    "checkpoint_depth": 1 << 30,
    "checkpoint_interval": 1e6,
}
BATCHES = 20
PER_BATCH = 30
ROWS = BATCHES * PER_BATCH


def build(directory: Path, *, crash: bool) -> None:
    """Commit ROWS rows in BATCHES transactions (three log generations), then crash or close."""
    instance = jetstore.open(directory, **SMALL)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    n = 0
    for _ in range(BATCHES):
        with db.transaction() as txn:
            table = txn.table("t")
            for _ in range(PER_BATCH):
                table.insert({"id": n, "v": f"{n:06d}" * 40})
                n += 1
    if crash:
        instance.simulate_crash()
    else:
        instance.close()


def snapshot(directory: Path) -> dict[str, str]:
    """sha256 of every regular file under `directory` (the lock file left out: probing it is
    fine; a live instance's control socket is no file to hash)."""
    digests: dict[str, str] = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = Path(root) / name
            relative = str(path.relative_to(directory))
            if relative == LOCK_FILE or not stat.S_ISREG(path.lstat().st_mode):
                continue
            digests[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def flip(path: Path, offset: int, mask: int = 0x40) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ mask]))


def reseal_at_version(path: Path, starts: tuple[int, ...], size: int, version: int) -> None:
    """Rewrite the format version of the blocks at `starts` with a checksum that verifies:
    an intact block a newer (or older) engine wrote."""
    data = bytearray(path.read_bytes())
    for start in starts:
        struct.pack_into("<H", data, start + 14, version)
        crc = google_crc32c.value(bytes(data[start + 4 : start + size]))
        struct.pack_into("<I", data, start, crc)
    path.write_bytes(bytes(data))


def closed_instance_with_generations(directory: Path, log_file_size: int, generations: int) -> None:
    """A closed instance whose 20 KB rows fill about `generations` log files of
    `log_file_size` bytes (real-sized files give the 7-digit offsets and sizes that the
    output has to show in full)."""
    with jetstore.open(directory, log_file_size=log_file_size) as instance:
        db = instance.database("main", create=True)
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
        for n in range(generations * log_file_size // 20_000):
            with db.transaction() as txn:
                txn.table("t").insert({"id": n, "v": "x" * 20_000})


def write_pending_data_loss(directory: Path) -> Path:
    """Leave in `directory` the record of a data-loss recovery cut short before it set every
    log aside (`lost-logs-*/data-loss.pending.json`, design D6): the next open finishes it.
    Returns that lost-logs directory."""
    aside = directory / "lost-logs-20260101T000000Z"
    aside.mkdir()
    record = {
        "time_us": 1,
        "reasons": ["generation 3 (edb00000003.log) is missing"],
        "stopped_at": [2, 4096],
        "databases": ["main"],
        "without_file": [],
    }
    (aside / "data-loss.pending.json").write_text(json.dumps(record))
    return aside


def damage_second_frame(path: Path, generation: int) -> int:
    """Flip a bit inside the second frame of a closed generation; returns its offset."""
    data = path.read_bytes()
    frame = decode_frame(data, LOG_HEADER_SIZE, generation)
    assert frame is not None
    second = decode_frame(data, frame.next_offset, generation)
    assert second is not None
    flip(path, second.offset + 40)
    return second.offset


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cli-templates")
    crashed, closed = base / "crashed", base / "closed"
    build(crashed, crash=True)
    build(closed, crash=False)
    return {"crashed": crashed, "closed": closed}


@pytest.fixture
def crashed(templates: dict[str, Path], tmp_path: Path) -> Path:
    """A dirty instance: three generations, no clean shutdown."""
    target = tmp_path / "crashed"
    shutil.copytree(templates["crashed"], target)
    return target


@pytest.fixture
def closed(templates: dict[str, Path], tmp_path: Path) -> Path:
    """A cleanly shut down instance with the same history."""
    target = tmp_path / "closed"
    shutil.copytree(templates["closed"], target)
    return target


RunJson = Callable[..., tuple[int, dict[str, Any]]]


@pytest.fixture
def run_json(capsys: pytest.CaptureFixture[str]) -> RunJson:
    """Run `jetstore ARGS --json` in-process; returns (exit code, the one JSON document)."""

    def invoke(*args: str | os.PathLike[str]) -> tuple[int, dict[str, Any]]:
        capsys.readouterr()
        code = run([*map(str, args), "--json"])
        out = capsys.readouterr().out
        document = json.loads(out)  # exactly one JSON object on stdout
        assert document["schema"] == 1
        assert document["ok"] is (code == 0)
        return code, document

    return invoke


def entry_point() -> Path:
    script = Path(sys.executable).with_name("jetstore")
    if not script.exists():
        pytest.skip("the jetstore entry point is not installed in this environment")
    return script


def run_entry_point(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run the installed `jetstore` script in a child process."""
    return subprocess.run(
        [str(entry_point()), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def table_rows(output: str, title: str) -> list[list[str]]:
    """The body rows of the rich table titled `title` in `output`, as stripped cells."""
    lines = output.splitlines()
    start = lines.index(next(line for line in lines if line.strip() == title))
    rows: list[list[str]] = []
    for line in lines[start + 4 :]:  # title, top rule, header, header rule
        if not line.startswith("│"):
            break
        rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows

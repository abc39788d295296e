"""Every human table the CLI prints, at 80 columns, with realistic values: none cuts a cell.

The instance has real-sized log files (1 MiB: 7-digit offsets and sizes), a full and an
incremental online backup recorded in its header, and crashed; each case prepares a copy of
it the way an operator meets it (recovered, a needed log lost, a generation below where
recovery starts damaged) and runs one command with COLUMNS=80. Paths are the test's own
(long, as callers' are, and folded when they do not fit); file names, positions, statuses,
times and messages are jetstore's. No table may cut a cell to "…" or be wider than 80.

The commands that show log generations run once more on an instance whose generations
passed 1000: four digits in the `gen` column, which made the generations table 81 wide.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import jetstore
from jetstore.cli.main import run
from jetstore.format.filenames import generation_log_name

from .conftest import damage_second_frame, flip

MIB = 1024 * 1024
RECORD = 20_000


def _fill(db: jetstore.Database, first: int, generations: int) -> int:
    count = generations * MIB // RECORD
    for n in range(first, first + count):
        with db.transaction() as txn:
            txn.table("orders").insert({"id": n, "customer": f"c{n % 17}", "v": "x" * RECORD})
    return first + count


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("narrow")
    instance = jetstore.open(base / "instance", log_file_size=MIB)
    db = instance.database("main", create=True)
    db.create_table(
        "orders",
        [("id", "int"), ("customer", "text"), ("v", "text")],
        primary_key="id",
        indexes=[("by_customer", "customer")],
    )
    n = _fill(db, 0, 2)
    instance.backup(base / "full")
    n = _fill(db, n, 2)
    instance.backup(base / "incremental", kind="incremental")
    _fill(db, n, 1)
    instance.simulate_crash()
    return base


def _recovered(base: Path) -> Path:
    assert run(["recover", str(base / "instance")]) == 0
    return base / "instance"


def _closed_generations(directory: Path) -> list[int]:
    return sorted(int(p.name[3:11], 16) for p in directory.glob("edb0*.log"))


def _damage_unneeded(directory: Path, full: int) -> Path:
    """The oldest closed generation with an unreadable header and the closed generation
    `full` damaged, both below where recovery starts: the longest statuses, "unreadable"
    and "damaged" (`needed` "no"; "unreadable (not needed)" for `checksum`)."""
    flip(directory / generation_log_name(_closed_generations(directory)[0]), 10)
    damage_second_frame(directory / generation_log_name(full), full)
    return directory


def _unneeded_damage(base: Path) -> Path:
    """Recovered, then the oldest generation left (the full backup removed those below its
    checkpoint) unreadable and a full closed one damaged."""
    directory = _recovered(base)
    return _damage_unneeded(directory, _closed_generations(directory)[2])


def _data_loss(base: Path) -> Path:
    """The first log the crashed database needs lost, then recovered accepting data loss: the
    events with the longest names (recovery_checkpoint_file_ignored) and long messages."""
    directory = base / "instance"
    (directory / generation_log_name(_closed_generations(directory)[0])).unlink()
    assert run(["recover", str(directory), "--accept-data-loss"]) == 0
    return directory


Case = Callable[[Path], list[str]]

UNNEEDED = ("unreadable", "damaged")  # with "no" in the `needed` column
NOT_NEEDED = ("unreadable (not needed)", "damaged (not needed)")  # `checksum`'s status

#: command -> (its arguments on a prepared copy, cells that must each stay on one line)
CASES: dict[str, tuple[Case, tuple[str, ...]]] = {
    "status": (lambda b: ["status", str(b / "instance")], ("dirty",)),
    "diagnose": (lambda b: ["diagnose", str(b / "instance")], ("this stream",)),
    "dump header": (lambda b: ["dump", "header", str(b / "instance" / "main.edb")], ()),
    "dump checkpoint": (lambda b: ["dump", "checkpoint", str(b / "instance" / "edb.chk")], ()),
    "recover": (lambda b: ["recover", str(b / "instance")], ()),
    "logs verify": (lambda b: ["logs", "verify", str(_unneeded_damage(b))], UNNEEDED),
    "dump logs": (lambda b: ["dump", "logs", str(_unneeded_damage(b))], UNNEEDED),
    "checksum": (lambda b: ["checksum", str(_unneeded_damage(b))], NOT_NEEDED),
    "logs removable": (lambda b: ["logs", "removable", str(_recovered(b))], ()),
    "integrity": (lambda b: ["integrity", str(_recovered(b) / "main.edb")], ()),
    "counters": (lambda b: ["counters", str(_recovered(b))], ("checkpoint_lag_generations",)),
    "events": (
        lambda b: ["events", str(_data_loss(b))],
        ("recovery_checkpoint_file_ignored", "warning", "recovery_data_loss"),
    ),
    "backup": (lambda b: ["backup", str(_recovered(b)), "--to", str(b / "offline")], ()),
    "verify-backup": (lambda b: ["verify-backup", str(b / "incremental")], ()),
    "restore": (
        lambda b: ["restore", str(b / "full"), str(b / "incremental"), "--to", str(b / "new")],
        ("last record replayed ends at",),
    ),
}


def _assert_fits_80_columns(
    argv: list[str],
    whole: tuple[str, ...],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    code = run(argv)
    output = capsys.readouterr().out
    assert code in (0, 1), output  # 1: the damage the case made, reported
    # The tables' lines only: lines of text wrap by themselves, and the commands to run
    # (diagnose's "next:") are left whole on purpose, to be copied with the caller's path.
    table = [line for line in output.splitlines() if line[:1] in "┏┃┡│└┌"]
    assert table, output
    too_long = [line for line in table if len(line) > 80]
    assert not too_long, "\n".join(too_long)
    cut = [line for line in table if "…" in line]
    assert not cut, "\n".join(cut)
    for cell in whole:  # shown, and not split over lines
        assert any(cell in line for line in table), (cell, output)


@pytest.mark.parametrize("command", list(CASES))
def test_human_output_fits_80_columns_without_cutting_a_cell(
    command: str,
    template: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = tmp_path / "case"
    shutil.copytree(template, base)
    arguments, whole = CASES[command]
    _assert_fits_80_columns(arguments(base), whole, capsys, monkeypatch)


#: Log rolls before the data: the generations then pass 1000 (four decimal digits).
ROLLS = 1000


@pytest.fixture(scope="module")
def generation_1000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed instance whose generations passed 1000, with real-sized (1 MiB) log files.

    Each `roll` closes a generation at once (about 2 ms, an open and close costs ten
    times that); circular logging deletes the empty generations behind, so the directory
    stays small. Then three generations of data with circular logging off (full 1 MiB files:
    7-digit end offsets), and a clean close: every closed generation is below where
    recovery starts.
    """
    directory = tmp_path_factory.mktemp("generation-1000") / "instance"
    with jetstore.open(directory, log_file_size=MIB, circular_logging=True) as instance:
        instance.database("main", create=True).create_table(
            "orders",
            [("id", "int"), ("customer", "text"), ("v", "text")],
            primary_key="id",
            indexes=[("by_customer", "customer")],
        )
        for _ in range(ROLLS):
            instance.log.roll()
    with jetstore.open(directory, log_file_size=MIB) as instance:
        _fill(instance.database("main"), 0, 3)
    assert _closed_generations(directory)[-1] > ROLLS
    return directory


def _full_generation(directory: Path) -> int:
    """The oldest closed generation filled with data (its frames end at a 7-digit offset):
    the first after the rolled ones (1 to ROLLS + 1, the last closed by the second open)."""
    return next(g for g in _closed_generations(directory) if g > ROLLS + 1)


#: command -> its arguments on the damaged copy, and the cells that must stay whole.
GENERATION_1000_CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "logs verify": (["logs", "verify"], UNNEEDED),
    "dump logs": (["dump", "logs"], UNNEEDED),
    "checksum": (["checksum"], NOT_NEEDED),
}


@pytest.mark.parametrize("command", list(GENERATION_1000_CASES))
def test_log_generations_from_1000_fit_80_columns_without_cutting_a_cell(
    command: str,
    generation_1000: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four-digit generations next to the longest statuses and 1 MiB files' offsets: the
    generations table was 81 wide (the `end` column cut to "10485…")."""
    directory = tmp_path / "instance"
    shutil.copytree(generation_1000, directory)
    _damage_unneeded(directory, _full_generation(directory))
    arguments, whole = GENERATION_1000_CASES[command]
    last = _closed_generations(directory)[-1]
    _assert_fits_80_columns(
        [*arguments, str(directory)],
        (*whole, str(last), generation_log_name(last), "1048576"),
        capsys,
        monkeypatch,
    )

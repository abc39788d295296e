"""`jetstore restore` end to end (click's CliRunner): plan, dry run, refusal, the restore."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

import jetstore
from jetstore.cli.main import cli
from jetstore.errors import InvalidPath
from jetstore.format.filenames import generation_log_name


def _sets(tmp_path: Path) -> tuple[Path, Path]:
    inst = jetstore.open(tmp_path / "live", log_file_size=64 * 1024)
    db = inst.database("main", create=True)
    db.create_table("kv", [("k", "int"), ("v", "text")], primary_key="k")
    for i in range(30):
        with db.transaction() as txn:
            txn.table("kv").insert({"k": i, "v": "v" * 300})
    inst.backup(tmp_path / "full", kind="full")
    for i in range(30, 60):
        with db.transaction() as txn:
            txn.table("kv").insert({"k": i, "v": "v" * 300})
    inst.backup(tmp_path / "inc", kind="incremental")
    inst.close()
    return tmp_path / "full", tmp_path / "inc"


def _count(path: Path) -> int:
    with jetstore.open(path) as inst, inst.database("main").transaction() as txn:
        return sum(1 for _ in txn.table("kv").scan())


def test_dry_run_then_restore(tmp_path: Path) -> None:
    full, inc = _sets(tmp_path)
    target = tmp_path / "restored"
    runner = CliRunner()
    dry = runner.invoke(cli, ["restore", str(full), str(inc), "--to", str(target), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing was written" in dry.stdout
    assert "incremental backup" in dry.stdout
    assert not target.exists()
    done = runner.invoke(cli, ["restore", str(full), str(inc), "--to", str(target), "--json"])
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    assert document["ok"] is True and document["result"]["executed"] is True
    assert document["result"]["plan"]["generation_high"] >= 1
    assert _count(target) == 60


def test_a_gap_is_refused_with_its_error_and_nothing_written(tmp_path: Path) -> None:
    _full, inc = _sets(tmp_path)
    target = tmp_path / "restored"
    result = CliRunner().invoke(cli, ["restore", str(inc), "--to", str(target), "--json"])
    assert result.exit_code != 0
    document = json.loads(result.stdout)
    assert document["ok"] is False
    assert document["error"]["code"] == -526  # InvalidBackup: no full set given
    assert not target.exists()


def test_until_options_are_exclusive(tmp_path: Path) -> None:
    full, _inc = _sets(tmp_path)
    result = CliRunner().invoke(
        cli,
        [
            "restore",
            str(full),
            "--to",
            str(tmp_path / "r"),
            "--until-generation",
            "3",
            "--until-time",
            "2026-01-01T00:00:00Z",
        ],
    )
    assert result.exit_code == 2
    bad_time = CliRunner().invoke(
        cli, ["restore", str(full), "--to", str(tmp_path / "r"), "--until-time", "yesterday"]
    )
    assert bad_time.exit_code == 2


def test_until_time_out_of_range_in_utc_is_a_usage_error(tmp_path: Path) -> None:
    full, _inc = _sets(tmp_path)
    # Defect: a time whose instant lies before year 1 in UTC (its zone pushes it there)
    # parsed, then overflowed when the restore named it in its refusal: internal error, exit 5.
    too_early = CliRunner().invoke(
        cli,
        [
            "restore",
            str(full),
            "--to",
            str(tmp_path / "r"),
            "--until-time",
            "0001-01-01T00:00:00+05:00",
            "--json",
        ],
    )
    assert too_early.exit_code == 2, too_early.output
    assert "--until-time" in json.loads(too_early.stdout)["error"]["message"]
    assert not (tmp_path / "r").exists()


def _hashes(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def test_commands_that_write_refuse_a_backup_set_and_leave_it_whole(tmp_path: Path) -> None:
    # A careless operator points `recover` (or another command that opens or rewrites an
    # instance's files) at a backup set: replaying its logs into its image would leave a set
    # that no longer matches its manifest. Refused, naming `jetstore restore`.
    full, _inc = _sets(tmp_path)
    clean = jetstore.open(tmp_path / "clean")
    clean.database("main", create=True).create_table("kv", [("k", "int")], primary_key="k")
    clean.close()
    offline = tmp_path / "offline"
    assert CliRunner().invoke(cli, ["backup", str(tmp_path / "clean"), "--to", str(offline)])
    assert jetstore.verify_backup(offline).ok  # clean images: the tools would take them
    before = {path: _hashes(path) for path in (full, offline)}
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"k": 1}\n')
    commands = [
        ["recover", str(full)],
        ["recover", str(full), "--into", str(tmp_path / "copy")],
        ["recover", str(full), "--accept-data-loss"],
        ["backup", str(full), "--to", str(tmp_path / "again"), "--recover"],
        ["logs", "remove", str(full), "--unneeded"],
        ["repair", str(full / "main.edb"), "--accept-data-loss"],
        ["compact", str(offline / "main.edb")],
        ["import", str(offline / "main.edb"), "kv", str(rows)],
        ["counters", str(offline)],
    ]
    for command in commands:
        result = CliRunner().invoke(cli, [*command, "--json"])
        assert result.exit_code == 2, (command, result.output)
        error = json.loads(result.stdout)["error"]
        assert error["name"] == "InvalidPath", (command, error)
        assert "backup set" in error["message"] and "jetstore restore" in error["hint"]
    assert not (tmp_path / "copy").exists() and not (tmp_path / "again").exists()
    with pytest.raises(InvalidPath, match="backup set"):
        jetstore.open(full)
    for path, hashes in before.items():
        assert _hashes(path) == hashes, path
        assert jetstore.verify_backup(path).ok
    # Read-only commands still work on a set's images.
    export = CliRunner().invoke(cli, ["export", str(offline / "main.edb"), "kv"])
    assert export.exit_code == 0, export.output
    jetstore.restore(full, tmp_path / "restored")
    assert _count(tmp_path / "restored") == 30


def test_until_time_before_a_gap_in_the_surviving_logs(tmp_path: Path) -> None:
    """`--until-time` before a generation missing from `--logs-from`: restored (exit 0) when
    a later commit before the gap proves replay stops before it; refused (exit 3, naming the
    gap and the stops that work) when nothing proves it."""
    live = tmp_path / "live"
    inst = jetstore.open(live, log_file_size=64 * 1024)
    db = inst.database("main", create=True)
    db.create_table("kv", [("k", "int"), ("v", "text")], primary_key="k")
    inst.backup(tmp_path / "full", kind="full")
    stamps: dict[int, tuple[int, float]] = {}
    for i in range(400):
        with db.transaction() as txn:
            txn.table("kv").insert({"k": i, "v": "v" * 600})
        stamps[i] = (inst.log.end_position.generation, time.time())
    inst.simulate_crash()
    gap = max(generation for generation, _ in stamps.values()) - 1
    (live / generation_log_name(gap)).unlink()
    last = max(i for i, (generation, _) in stamps.items() if generation == gap - 2)
    moment = datetime.fromtimestamp(stamps[last][1], UTC).isoformat()
    runner = CliRunner()
    args = ["restore", str(tmp_path / "full"), "--logs-from", str(live), "--json"]
    done = runner.invoke(cli, [*args, "--to", str(tmp_path / "r"), "--until-time", moment])
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    assert document["result"]["stopped_early"] is True
    assert document["result"]["plan"]["generation_high"] == gap - 1
    assert _count(tmp_path / "r") == last + 1
    late = datetime.now(UTC).isoformat()
    refused = runner.invoke(cli, [*args, "--to", str(tmp_path / "late"), "--until-time", late])
    assert refused.exit_code == 3
    error = json.loads(refused.stdout)["error"]
    assert error["name"] == "GivenLogFileIsNotContiguous"
    assert generation_log_name(gap) in error["detail"]
    assert f"--until-generation {gap - 1}" in error["hint"] and "--until-time" in error["hint"]
    assert not (tmp_path / "late").exists()


@pytest.mark.parametrize("generation", ["0", "-1", str(1 << 32)])
def test_until_generation_outside_the_log_generations_is_a_usage_error(
    tmp_path: Path, generation: str
) -> None:
    # Defect: 0 and negative numbers reached the restore, which refused them as a stop point
    # too early (EndingRestoreLogTooLow, exit 3); 2**32 as one the logs do not reach (exit 3).
    # No log file can hold such a generation: a usage error naming the range, checked before
    # the sets are read.
    target = tmp_path / "r"
    result = CliRunner().invoke(
        cli,
        [
            "restore",
            str(tmp_path / "no-set"),
            "--to",
            str(target),
            "--until-generation",
            generation,
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--until-generation" in result.stderr
    assert "1<=x<=4294967295" in result.stderr
    assert not target.exists()


def test_a_target_inside_a_set_or_the_surviving_logs_is_refused(tmp_path: Path) -> None:
    # `restore FULL --to FULL/restored` built the instance inside the backup set: the set
    # then held a live instance (deleting the old set deleted the restore with it).
    full, inc = _sets(tmp_path)
    live = tmp_path / "live"
    before = {p: _hashes(p) for p in (full, inc, live)}
    runner = CliRunner()
    for target, extra in (
        (full / "restored", []),
        (inc / "sub" / "restored", []),
        (inc, []),
        (live / "restored", ["--logs-from", str(live)]),
    ):
        result = runner.invoke(
            cli, ["restore", str(full), str(inc), "--to", str(target), *extra, "--json"]
        )
        assert result.exit_code == 2, result.output
        error = json.loads(result.stdout)["error"]
        assert error["name"] == "UsageError"
        assert f"--to {target} must not be" in error["message"]
        assert target == inc or not target.exists()
    assert {p: _hashes(p) for p in (full, inc, live)} == before
    assert sorted(p.name for p in full.iterdir()) == sorted(before[full])

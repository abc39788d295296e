"""`jetstore restore` end to end (click's CliRunner): plan, dry run, refusal, the restore."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

import jetstore
from jetstore.cli.main import cli


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

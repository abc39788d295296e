"""`jetstore logs remove` and `Instance.remove_logs`: only what crash recovery no longer needs,
and with --safe only what a completed backup holds too."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

import jetstore
from jetstore.cli.main import cli
from jetstore.format.filenames import generation_log_name

OPTIONS = {"log_file_size": 64 * 1024, "checkpoint_interval": 1e6}


def _archived(path: Path) -> list[int]:
    return sorted(
        int(m.group(1), 16)
        for n in path.iterdir()
        if (m := re.fullmatch(r"edb([0-9A-F]{8})\.log", n.name))
    )


def _build(path: Path, *, backup_to: Path | None) -> None:
    inst = jetstore.open(path, **OPTIONS)
    db = inst.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    for i in range(200):
        with db.transaction() as txn:
            txn.table("t").insert({"id": i, "v": "v" * 800})
    if backup_to is not None:
        inst.backup(backup_to, kind="copy")  # records nothing: no generation covered
    for i in range(200, 400):
        with db.transaction() as txn:
            txn.table("t").insert({"id": i, "v": "v" * 800})
    inst.checkpoint()
    inst.close()


def test_safe_removes_nothing_without_a_backup_and_unneeded_removes_below_checkpoint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "inst"
    _build(path, backup_to=tmp_path / "copy")
    before = _archived(path)
    runner = CliRunner()
    safe = runner.invoke(cli, ["logs", "remove", str(path), "--safe", "--json"])
    assert safe.exit_code == 0, safe.output
    assert json.loads(safe.stdout)["result"]["removed"] == []
    assert set(before) <= set(_archived(path))  # (opening the instance adds a generation)
    dry = runner.invoke(cli, ["logs", "remove", str(path), "--unneeded", "--dry-run", "--json"])
    selected = [f["generation"] for f in json.loads(dry.stdout)["result"]["selected"]]
    assert selected and set(before) <= set(_archived(path))
    done = runner.invoke(cli, ["logs", "remove", str(path), "--unneeded", "--json"])
    removed = json.loads(done.stdout)["result"]["removed"]
    assert set(selected) <= set(removed)  # each open moves the checkpoint a generation on
    remaining = set(_archived(path))
    assert not remaining & set(removed)
    assert set(before) - set(removed) <= remaining
    with jetstore.open(path) as inst, inst.database("main").transaction() as txn:
        assert sum(1 for _ in txn.table("t").scan()) == 400
    neither = runner.invoke(cli, ["logs", "remove", str(path)])
    assert neither.exit_code == 2


def test_safe_removes_only_what_a_backup_holds(tmp_path: Path) -> None:
    path = tmp_path / "inst"
    inst = jetstore.open(path, **OPTIONS)
    db = inst.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    for i in range(200):
        with db.transaction() as txn:
            txn.table("t").insert({"id": i, "v": "v" * 800})
    # A differential-free chain: the full backup truncates what it can; the commits after it
    # and an incremental make more generations that the incremental covers.
    inst.backup(tmp_path / "full", kind="full")
    for i in range(200, 500):
        with db.transaction() as txn:
            txn.table("t").insert({"id": i, "v": "v" * 800})
    inst.backup(tmp_path / "inc", kind="differential")  # covers logs, truncates nothing
    inst.checkpoint()
    covered_to = inst.backed_up_through()
    answer = inst.removable_logs()
    assert set(answer["covered_by_backup"]) <= set(answer["not_needed_for_recovery"])
    assert all(g <= covered_to for g in answer["covered_by_backup"])
    removed = inst.remove_logs(safe=True)
    assert removed == answer["covered_by_backup"]
    for generation in removed:
        assert not (path / generation_log_name(generation)).exists()
    inst.close()
    # Restore still works from the full backup (the removed logs were in it).
    jetstore.restore(tmp_path / "full", tmp_path / "restored")


def test_remove_never_touches_what_a_running_backup_copies(tmp_path: Path) -> None:
    path = tmp_path / "inst"
    _build(path, backup_to=None)
    inst = jetstore.open(path, **OPTIONS)
    try:
        inst.backup(tmp_path / "full", kind="full")
        db = inst.database("main")
        for i in range(1000, 1300):
            with db.transaction() as txn:
                txn.table("t").insert({"id": i, "v": "w" * 800})
        inst.checkpoint()
        session = inst.begin_backup("differential")  # copies from after the full backup
        first = session.first_generation
        assert first is not None and first < inst.log.current_generation - 2
        assert inst.removable_logs()["keep_from"] <= first
        removed = inst.remove_logs(safe=False)
        assert all(g < first for g in removed)
        for generation in range(first, inst.log.current_generation):
            assert (path / generation_log_name(generation)).exists()
        session.abort()
    finally:
        inst.close()


def test_both_modes_at_once_is_a_usage_error_and_removes_nothing(tmp_path: Path) -> None:
    # With both flags the later one won: `--safe --unneeded` deleted logs no backup holds.
    path = tmp_path / "inst"
    _build(path, backup_to=tmp_path / "copy")
    before = sorted(p.name for p in path.iterdir())
    runner = CliRunner()
    for flags in (["--safe", "--unneeded"], ["--unneeded", "--safe"]):
        both = runner.invoke(cli, ["logs", "remove", str(path), *flags, "--json"])
        assert both.exit_code == 2, both.output
        error = json.loads(both.stdout)["error"]
        assert error["name"] == "UsageError"
        assert "--safe" in error["message"] and "--unneeded" in error["message"]
        assert "not both" in error["message"]
    assert sorted(p.name for p in path.iterdir()) == before  # not even opened

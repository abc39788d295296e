"""`jetstore logs verify|removable`, `recover`, `events`, `counters` on real instances.

Covers the exit-code contract of each: torn tail = ok, damage in a closed generation = 1,
missing log = 3 (without --accept-data-loss), instance in use = 3, not an instance = 2,
no directory = 4; and that `recover --into` leaves the original untouched.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import jetstore
from jetstore.cli import events_cmd, recover
from jetstore.cli.main import run
from jetstore.errors import JetError
from jetstore.format.filenames import CURRENT_LOG, generation_log_name
from jetstore.format.logframe import decode_frame
from jetstore.format.logheader import LOG_HEADER_SIZE
from jetstore.io.files import FileSystem, IOEvent
from jetstore.io.locking import acquire_directory_lock

from .conftest import (
    ROWS,
    SMALL,
    RunJson,
    closed_instance_with_generations,
    damage_second_frame,
    flip,
    run_entry_point,
    snapshot,
    table_rows,
    write_pending_data_loss,
)

# --------------------------------------------------------------------------- logs verify


def test_logs_verify_ok_and_torn_tail_is_ok(crashed: Path, run_json: RunJson) -> None:
    code, document = run_json("logs", "verify", crashed)
    assert code == 0
    assert document["command"] == "logs verify"
    assert document["result"]["ok"] is True
    assert [g["status"] for g in document["result"]["generations"]] == ["ok", "ok", "ok"]

    # A torn last write: garbage just past the last frame of the newest log.
    end = document["result"]["generations"][-1]["end_offset"]
    with (crashed / CURRENT_LOG).open("r+b") as file:
        file.seek(end)
        file.write(b"\x5a" * 100)
    done = run_entry_point("logs", "verify", crashed)
    assert done.returncode == 0, done.stdout
    assert "torn" in done.stdout
    code, document = run_json("logs", "verify", crashed)
    assert code == 0
    problems = document["result"]["problems"]
    assert [p["check"] for p in problems] == ["torn-tail"]
    assert problems[0]["severity"] == "info"


def test_logs_verify_damaged_closed_generation_exits_1(crashed: Path, run_json: RunJson) -> None:
    path = crashed / generation_log_name(1)
    data = path.read_bytes()
    frame = decode_frame(data, LOG_HEADER_SIZE, 1)
    assert frame is not None
    second = decode_frame(data, frame.next_offset, 1)
    assert second is not None
    flip(path, second.offset + 40)
    before = snapshot(crashed)
    done = run_entry_point("logs", "verify", crashed, "--json")
    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert document["ok"] is False
    errors = [p for p in document["result"]["problems"] if p["severity"] == "error"]
    assert errors and errors[0]["generation"] == 1
    assert errors[0]["offset"] == second.offset
    assert errors[0]["error"] == "LogFileCorrupt"
    assert snapshot(crashed) == before
    human = run_entry_point("logs", "verify", crashed)
    assert human.returncode == 1
    assert "damaged" in human.stdout


def test_logs_verify_missing_directory_exits_4(tmp_path: Path, run_json: RunJson) -> None:
    code, document = run_json("logs", "verify", tmp_path / "absent")
    assert (code, document["error"]["name"]) == (4, "FileNotFound")


# --------------------------------------------------------------------------- logs removable


def test_logs_removable_lists_file_names(closed: Path, run_json: RunJson) -> None:
    # One more open and close: the durable checkpoint moves past the first generations.
    jetstore.open(closed, **SMALL).close()
    code, document = run_json("logs", "removable", closed)
    assert code == 0
    result = document["result"]
    assert result["opened_for_this"] is True
    assert result["covered_by_backup"] == []
    assert result["keep_from"] >= 1
    for row in result["not_needed_for_recovery"]:
        assert row["file"] == generation_log_name(row["generation"])
        assert row["generation"] < result["keep_from"]
        assert (closed / row["file"]).exists()  # nothing was deleted
    assert result["not_needed_for_recovery"], result
    assert result["not_needed_bytes"] == 64 * 1024 * len(result["not_needed_for_recovery"])


@pytest.mark.parametrize("command", [("logs", "removable"), ("counters",)])
def test_a_command_whose_open_finishes_a_data_loss_repair_says_so(
    closed: Path, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    """A data-loss recovery cut short before it set every log aside is finished by the
    next open, plain or not (design D6). An admin command opening the instance for its own
    purpose used to finish it in silence (only the event log said it); it now says so."""
    aside = write_pending_data_loss(closed)
    capsys.readouterr()
    assert run([*command, str(closed), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is True
    said = " ".join(captured.err.split())
    assert "accepted data loss" in said and "(edb00000003.log) is missing" in said
    assert "databases main were brought" in said
    assert str(aside) in "".join(captured.err.split())  # a path may wrap at its hyphen
    assert (aside / "data-loss.json").exists()


def test_logs_removable_refuses_an_instance_in_use(closed: Path, run_json: RunJson) -> None:
    with jetstore.open(closed, **SMALL):
        code, document = run_json("logs", "removable", closed)
    assert code == 3
    assert document["error"]["name"] == "InstanceNameInUse"
    assert document["error"]["exit_code"] == 3
    assert "in use" in document["error"]["detail"]


# --------------------------------------------------------------------------- recover


def _rows(directory: Path) -> int:
    with jetstore.open(directory, **SMALL) as instance:
        db = instance.database("main")
        with db.transaction() as txn:
            return sum(1 for _ in txn.table("t").scan())


def test_recover_dirty_instance(crashed: Path, run_json: RunJson) -> None:
    code, document = run_json("recover", crashed)
    assert code == 0
    result = document["result"]
    assert result["needed"] is True
    assert result["replayed"] > 0
    assert result["start"]["generation"] == 1
    assert result["data_loss"] is None
    assert result["databases"] == ["main"]
    assert result["options"]["log_file_size"] == 64 * 1024
    code, document = run_json("dump", "header", crashed / "main.edb")
    assert document["result"]["state"] == "clean"
    assert _rows(crashed) == ROWS


def test_recover_missing_log_exits_3_then_accepts_data_loss(
    crashed: Path, run_json: RunJson
) -> None:
    (crashed / generation_log_name(2)).unlink()
    before = snapshot(crashed)
    done = run_entry_point("recover", crashed)
    assert done.returncode == 3
    assert "JET_err" in done.stderr and "edb00000002.log" in done.stderr
    assert snapshot(crashed) == before  # refused before writing anything
    code, document = run_json("recover", crashed)
    assert code == 3
    assert document["error"]["name"] in ("MissingLogFile", "RequiredLogFilesMissing")
    assert "--accept-data-loss" in document["error"]["hint"]

    code, document = run_json("recover", crashed, "--accept-data-loss")
    assert code == 0
    loss = document["result"]["data_loss"]
    assert loss is not None
    assert loss["databases"] == ["main"]
    assert "edb00000002.log" in loss["reason"]
    assert loss["stopped_at"]["generation"] == 1
    assert loss["moved_logs_to"] and Path(loss["moved_logs_to"]).is_dir()
    code, document = run_json("dump", "header", crashed / "main.edb")
    assert document["result"]["state"] == "clean"
    assert document["result"]["repair_count"] == 1


def test_recover_accepting_data_loss_names_only_the_databases_that_lost_data(
    tmp_path: Path, run_json: RunJson, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two databases, one file lost after a crash: only that one lost data. The other got
    every record it needed, is said to be recovered completely and keeps its repair count."""
    directory = tmp_path / "two"
    instance = jetstore.open(directory, **SMALL)
    for name in ("a", "b"):
        db = instance.database(name, create=True)
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    for first in range(0, 200, 10):
        if first == 100:
            instance.checkpoint()
        for name in ("a", "b"):
            with instance.database(name).transaction() as txn:
                for i in range(first, first + 10):
                    txn.table("t").insert({"id": i, "v": "x" * 200})
    instance.simulate_crash()
    (directory / "b.edb").unlink()
    code, document = run_json("diagnose", directory)
    assert document["result"]["data_loss"]["databases"] == ["b"]
    code, document = run_json("recover", directory, "--accept-data-loss")
    assert code == 0
    loss = document["result"]["data_loss"]
    assert loss["databases"] == ["b"]
    assert loss["recovered_completely"] == ["a"]
    assert loss["without_file"] == ["b"]
    code, document = run_json("dump", "header", directory / "a.edb")
    assert (document["result"]["state"], document["result"]["repair_count"]) == ("clean", 0)
    with jetstore.open(directory, **SMALL) as reopened, reopened.database("a").transaction() as txn:
        assert sum(1 for _ in txn.table("t").scan()) == 200


def test_recover_accepting_data_loss_human_output_names_both_lists(
    crashed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (crashed / generation_log_name(2)).unlink()
    capsys.readouterr()
    assert run(["recover", str(crashed), "--accept-data-loss"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "DATA LOSS ACCEPTED" in out
    assert "databases that lost data: main" in out
    assert "recovered completely: none" in out


def test_recover_refuses_a_database_file_another_instance_has_open(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    """The adversarial case of design D13: a hard link to a live instance's database file in
    another directory is refused (exit 3, FileAccessDenied), with or without
    --accept-data-loss, and the live file is not written."""
    other = tmp_path / "linked"
    other.mkdir()
    os.link(closed / "main.edb", other / "main.edb")
    with jetstore.open(closed, control_socket=False, **SMALL) as instance:
        header = (closed / "main.edb").read_bytes()[: 2 * 8192]
        for extra in ((), ("--accept-data-loss",)):
            code, document = run_json("recover", other, *extra)
            assert code == 3
            assert document["error"]["name"] == "FileAccessDenied"
            assert str(other / "main.edb") in document["error"]["message"]
            assert f"instance '{closed}'" in document["error"]["message"]
        assert (closed / "main.edb").read_bytes()[: 2 * 8192] == header
        assert not [name for name in os.listdir(other) if name.startswith("lost-logs")]
        instance.checkpoint()


def test_recover_into_a_copy_leaves_the_original_untouched(
    crashed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    before = snapshot(crashed)
    copy = tmp_path / "copy"
    code, document = run_json("recover", crashed, "--into", copy)
    assert code == 0
    result = document["result"]
    assert result["source"] == str(crashed)
    assert result["directory"] == str(copy)
    assert result["copied"]["files"] == len(before)
    assert result["replayed"] > 0
    assert snapshot(crashed) == before
    code, document = run_json("dump", "header", copy / "main.edb")
    assert document["result"]["state"] == "clean"
    code, document = run_json("dump", "header", crashed / "main.edb")
    assert document["result"]["state"] == "dirty"
    assert _rows(copy) == ROWS

    # The copy is not empty any more: a second --into it is a usage error.
    code, document = run_json("recover", crashed, "--into", copy)
    assert (code, document["error"]["name"]) == (2, "UsageError")


def test_recover_into_and_backup_to_inside_dir_through_a_symlink_are_refused(
    crashed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    # Defect: "--into must not be DIR or inside it" compared unresolved paths, so DIR reached
    # through a symbolic link passed: the copy (or backup set) was written into the original
    # instance directory, which --into promises to leave untouched.
    before = snapshot(crashed)
    alias = tmp_path / "alias"
    alias.symlink_to(crashed)
    code, document = run_json("recover", crashed, "--into", alias / "copy")
    assert (code, document["error"]["name"]) == (2, "UsageError")
    code, document = run_json("backup", crashed, "--to", alias / "set", "--recover")
    assert (code, document["error"]["name"]) == (2, "UsageError")
    assert snapshot(crashed) == before and not (crashed / "copy").exists()


def test_recover_into_with_missing_log_keeps_the_original(
    crashed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    (crashed / generation_log_name(2)).unlink()
    before = snapshot(crashed)
    code, document = run_json("recover", crashed, "--into", tmp_path / "c1")
    assert code == 3
    code, document = run_json("recover", crashed, "--into", tmp_path / "c2", "--accept-data-loss")
    assert code == 0
    assert document["result"]["data_loss"] is not None
    assert snapshot(crashed) == before


def test_recover_refuses_in_use_and_non_instances(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    with jetstore.open(closed, **SMALL):
        code, document = run_json("recover", closed)
    assert (code, document["error"]["name"]) == (3, "InstanceNameInUse")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, document = run_json("recover", empty)
    assert (code, document["error"]["name"]) == (2, "InvalidPath")
    assert os.listdir(empty) == []  # no instance was created there
    code, document = run_json("recover", tmp_path / "absent")
    assert (code, document["error"]["name"]) == (4, "FileNotFound")
    assert not (tmp_path / "absent").exists()


# --------------------------------------------------------------------------- events


def test_events_filters(closed: Path, run_json: RunJson) -> None:
    code, document = run_json("events", closed)
    assert code == 0
    result = document["result"]
    assert result["exists"] is True
    assert result["total"] == result["shown"] > 0
    names = {e["name"] for e in result["events"]}
    assert {"database_created", "log_generation_started", "instance_stopped"} <= names

    code, document = run_json("events", closed, "--level", "warning")
    assert all(e["level"] in ("warning", "error") for e in document["result"]["events"])
    code, document = run_json("events", closed, "--since", "2999-01-01T00:00:00Z")
    assert document["result"]["shown"] == 0
    code, document = run_json("events", closed, "--since", "2000-01-01")
    assert document["result"]["shown"] == result["total"]
    code, document = run_json("events", closed, "--since", "yesterday")
    assert code == 2


def test_events_human_table(closed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["events", str(closed)]) == 0
    out = capsys.readouterr().out
    assert "database_created" in out
    assert "event(s) shown" in out


def test_events_skips_damaged_lines_that_are_json_but_no_event(
    closed: Path, run_json: RunJson, capsys: pytest.CaptureFixture[str]
) -> None:
    # Defect: a damaged line that still parsed as JSON but not as an object (`42`) was kept:
    # the table ended in an internal error (AttributeError, exit 5) and --json listed it as an
    # event; a line with NaN was kept too, and --json then printed NaN, which is not JSON.
    with (closed / "events.jsonl").open("a") as file:
        file.write('42\n["x"]\n{"id": 1, "time_us": NaN, "level": "info", "name": "x"}\n')
    assert run(["events", str(closed)]) == 0
    assert "event(s) shown" in capsys.readouterr().out
    code, document = run_json("events", closed)
    assert code == 0
    events = document["result"]["events"]
    assert events and all(isinstance(e, dict) and e.get("name") != "x" for e in events)
    assert document["result"]["total"] == len(events)


def test_events_skips_json_objects_without_the_event_fields(
    closed: Path, run_json: RunJson, capsys: pytest.CaptureFixture[str]
) -> None:
    # An object that parsed but was no event (`{}`, another tool's log line, an event whose
    # level or id is no level or id) was kept and shown as a blank row.
    code, document = run_json("events", closed)
    before = document["result"]["events"]
    with (closed / "events.jsonl").open("a") as file:
        file.write('{}\n{"msg": "rotated", "ts": 1}\n')
        good = dict(before[-1])
        file.write(json.dumps({**good, "level": "loud"}) + "\n")
        file.write(json.dumps({**good, "id": "7"}) + "\n")
        file.write(json.dumps({**good, "time_us": True}) + "\n")
    capsys.readouterr()
    assert run(["events", str(closed)]) == 0
    out = capsys.readouterr().out
    assert f"{len(before)} of {len(before)} event(s) shown" in out
    code, document = run_json("events", closed)
    assert code == 0
    assert document["result"]["events"] == before
    assert document["result"]["total"] == len(before)


def test_events_of_a_missing_directory_or_a_file_names_the_way_out(
    tmp_path: Path, run_json: RunJson
) -> None:
    # The generic hints said to run `jetstore logs verify DIR` (DIR missing) and that every
    # parent must be a directory (DIR itself a file).
    code, document = run_json("events", tmp_path / "absent")
    assert (code, document["error"]["name"]) == (4, "FileNotFound")
    assert document["error"]["hint"].startswith("give the directory that holds the instance")
    afile = tmp_path / "a-file"
    afile.write_text("x")
    code, document = run_json("events", afile)
    assert (code, document["error"]["name"]) == (2, "InvalidPath")
    assert document["error"]["hint"].startswith("give the directory that holds the instance")


def test_an_event_log_that_cannot_be_read_is_an_error_not_an_empty_log(
    closed: Path, run_json: RunJson, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any read error was taken for "no events": exists true, 0 of 0 shown, exit 0, while
    # the operator looked for what happened to the instance.
    log = closed / "events.jsonl"

    def read_fails(event: IOEvent) -> None:
        if event.op == "read" and event.path == str(log):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(events_cmd, "FileSystem", lambda: FileSystem(hook=read_fails))
    code, document = run_json("events", closed)
    assert code == 4
    assert document["error"]["name"] == "DiskIO" and document["error"]["path"] == str(log)
    monkeypatch.setattr(events_cmd, "FileSystem", FileSystem)
    log.unlink()
    log.mkdir()
    code, document = run_json("events", closed)
    assert code == 2
    assert document["error"]["name"] == "InvalidPath" and document["error"]["path"] == str(log)
    log.rmdir()
    code, document = run_json("events", closed)  # no event log at all: still no error
    assert code == 0 and document["result"]["exists"] is False


# --------------------------------------------------------------------------- counters


def test_counters_refused_by_an_offline_tool_does_not_blame_a_control_socket(
    closed: Path, run_json: RunJson
) -> None:
    # The refusal explained itself as an instance serving no control socket ("opened with
    # control_socket=False"), for a compaction or a restore that holds the directory.
    lock = acquire_directory_lock(
        FileSystem(), str(closed), owner="test-tool", holder="an offline tool (compaction)"
    )
    try:
        code, document = run_json("counters", closed)
    finally:
        lock.release()
    assert code == 3
    detail = document["error"]["detail"]
    assert "an offline tool (compaction)" in detail
    assert "control_socket" not in detail and "control socket" not in detail
    assert "no instance is open there" in detail


def test_counters_opens_a_closed_instance(closed: Path, run_json: RunJson) -> None:
    code, document = run_json("counters", closed)
    assert code == 0
    result = document["result"]
    assert result["opened_for_this"] is True and result["live"] is False
    assert result["counters"]["state"] == "open"
    assert result["counters"]["databases"] == ["main"]
    # It was closed again: a normal open works.
    jetstore.open(closed, **SMALL).close()


def test_counters_of_an_instance_in_use_need_the_control_socket(
    closed: Path, run_json: RunJson, capsys: pytest.CaptureFixture[str]
) -> None:
    with jetstore.open(closed, **SMALL, control_socket=False):
        code, document = run_json("counters", closed)
        assert code == 3
        assert "control socket" in document["error"]["detail"]
        assert run(["counters", str(closed)]) == 3
        assert "control socket" in " ".join(capsys.readouterr().err.split())


def test_logs_verify_refuses_a_directory_that_is_no_instance(
    tmp_path: Path, run_json: RunJson
) -> None:
    code, document = run_json("logs", "verify", tmp_path)
    assert (code, document["error"]["name"]) == (2, "InvalidPath")
    assert "not a jetstore instance directory" in document["error"]["message"]


def _remove_logs(directory: Path) -> None:
    for name in os.listdir(directory):
        if name.endswith((".log", ".jrs")):
            (directory / name).unlink()


def test_logs_verify_without_logs_on_clean_databases_says_none_needed(
    closed: Path, run_json: RunJson
) -> None:
    _remove_logs(closed)
    code, document = run_json("logs", "verify", closed)
    assert code == 0
    assert document["result"]["generations"] == []
    assert document["result"]["databases_needing_logs"] == []
    human = run_entry_point("logs", "verify", closed)
    assert human.returncode == 0
    assert "no log files; none are needed (every database is clean)" in human.stdout
    assert "can be used by recovery" not in human.stdout


def test_logs_verify_without_logs_reads_a_header_whose_copy_0_cannot_say_its_page_size(
    tmp_path: Path, run_json: RunJson
) -> None:
    # Only copy 1 says the page size (32 KiB): the header was read as 8 KiB pages, called
    # unreadable, and the verdict was exit 1 for a clean database that needs no log.
    with jetstore.open(tmp_path, page_size=32768, **SMALL) as instance:
        instance.database("main", create=True)
    _remove_logs(tmp_path)
    with (tmp_path / "main.edb").open("r+b") as file:
        file.seek(16)  # the block size field of copy 0's prefix
        file.write(b"\xff")
    code, document = run_json("logs", "verify", tmp_path)
    assert code == 0, document
    assert document["result"]["databases_needing_logs"] == []


def test_logs_verify_without_logs_on_a_dirty_database_exits_1(
    crashed: Path, run_json: RunJson
) -> None:
    _remove_logs(crashed)
    code, document = run_json("logs", "verify", crashed)
    assert code == 1
    assert document["result"]["ok"] is False
    [entry] = document["result"]["databases_needing_logs"]
    assert (entry["database"], entry["state"]) == ("main", "DIRTY")
    human = run_entry_point("logs", "verify", crashed)
    assert human.returncode == 1
    assert "database(s) need them" in human.stdout


# ------------------------------------------------------------ logs verify: what recovery needs


def test_logs_verify_damage_recovery_no_longer_needs_is_a_warning(
    closed: Path, run_json: RunJson
) -> None:
    """Damage in a generation below where recovery starts (a clean shutdown's checkpoint is
    in the newest generation) cannot stop recovery: a warning naming the file and saying it
    can be removed, not an error, and the exit is 0. The verdict is exactly recovery's."""
    offset = damage_second_frame(closed / generation_log_name(1), 1)
    before = snapshot(closed)
    code, document = run_json("logs", "verify", closed)
    assert snapshot(closed) == before
    assert code == 0, document
    result = document["result"]
    assert result["ok"] is True
    assert result["counts"]["error"] == 0
    needs = result["recovery_needs"]
    assert (needs["first_generation"], needs["first_file"]) == (3, CURRENT_LOG)
    assert "checkpoint" in needs["reason"]
    [problem] = [p for p in result["problems"] if p["error"] == "LogFileCorrupt"]
    assert (problem["severity"], problem["generation"], problem["offset"]) == (
        "warning",
        1,
        offset,
    )
    assert problem["needed"] is False
    assert "recovery no longer needs generation 1" in problem["message"]
    assert "jetstore logs remove" in problem["message"]
    assert [g["needed"] for g in result["generations"]] == [False, False, True]
    assert result["generations"][0]["status"] == "damaged"
    # Opening agrees: recovery does not read generation 1.
    with jetstore.open(closed, **SMALL) as instance:
        assert instance.recovery is not None and not instance.recovery.needed
    human = run_entry_point("logs", "verify", closed)
    assert human.returncode == 0, human.stdout
    assert "not needed" in human.stdout
    shown = table_rows(human.stdout, "Log generations")  # one more since the open above
    assert (shown[0][2:4], shown[-1][2:4]) == (["damaged", "no"], ["ok", "yes"])


def test_logs_verify_tables_fit_80_columns_without_cutting_a_cell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 80 columns, with real-sized log files (1 MiB: 7-digit offsets and sizes, as the
    default 5 MiB ones have) and the longest statuses, "damaged" and "unreadable", in
    generations recovery no longer reads, every cell is shown in full: file names, statuses,
    creation times and sizes, nothing cut to "…", each line within 80 columns."""
    log_file_size = 1024 * 1024
    directory = tmp_path / "instance"
    closed_instance_with_generations(directory, log_file_size, 4)
    damage_second_frame(directory / generation_log_name(1), 1)
    flip(directory / generation_log_name(2), 10)  # in the header: the file is unreadable
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    assert run(["logs", "verify", str(directory)]) == 0
    output = capsys.readouterr().out
    assert max(len(line) for line in output.splitlines()) <= 80
    assert "…" not in output
    generations = table_rows(output, "Log generations")
    headers = table_rows(output, "Log file headers")
    assert [row[:4] for row in generations[:2]] == [
        ["1", generation_log_name(1), "damaged", "no"],
        ["2", generation_log_name(2), "unreadable", "no"],
    ]
    assert generations[-1][1] == CURRENT_LOG
    assert len(headers) == len(generations) >= 4
    for row in generations + headers:
        assert not any("…" in cell for cell in row), row
    assert generations[0][6] == str(log_file_size)  # generation 1's frames end, in full
    assert [row[1] for row in headers] == [row[1] for row in generations]
    created = [row[2] for row in headers]
    assert created[1] == "—"  # generation 2's header cannot be read
    assert all(len(time) == len("2026-11-22T19:30:37Z") for time in created[:1] + created[2:])
    assert {row[3] for row in headers} == {str(log_file_size)}


def test_logs_verify_damage_recovery_needs_stays_an_error(crashed: Path, run_json: RunJson) -> None:
    """The crashed instance's database header requires generation 1 (no checkpoint since
    it was created): damage there is an error, and says that recovery needs it."""
    damage_second_frame(crashed / generation_log_name(1), 1)
    code, document = run_json("logs", "verify", crashed)
    assert code == 1
    result = document["result"]
    assert result["recovery_needs"]["first_generation"] == 1
    [problem] = [p for p in result["problems"] if p["error"] == "LogFileCorrupt"]
    assert (problem["severity"], problem["needed"]) == ("error", True)
    with pytest.raises(jetstore.JetError):
        jetstore.open(crashed, **SMALL)


def test_logs_verify_when_nothing_says_what_recovery_needs_damage_is_an_error(
    closed: Path, run_json: RunJson
) -> None:
    """Without a checkpoint file and without a readable database header nobody can tell
    which generations recovery needs: every damage stays an error (the conservative answer),
    and the result says why."""
    damage_second_frame(closed / generation_log_name(1), 1)
    (closed / "edb.chk").unlink()
    flip(closed / "main.edb", 100)
    flip(closed / "main.edb", 8192 + 100)
    code, document = run_json("logs", "verify", closed)
    assert code == 1
    needs = document["result"]["recovery_needs"]
    assert needs["first_generation"] is None
    assert "main.edb" in needs["reason"]
    [problem] = [p for p in document["result"]["problems"] if p["error"] == "LogFileCorrupt"]
    assert (problem["severity"], problem["needed"]) == ("error", None)


@pytest.mark.parametrize("exists", [False, True], ids=["new", "empty"])
def test_recover_into_a_full_disk_removes_its_partial_copy(
    crashed: Path, tmp_path: Path, run_json: RunJson, monkeypatch: pytest.MonkeyPatch, exists: bool
) -> None:
    # The copy failed halfway and was left in COPY: the next `--into COPY` (what the
    # DiskFull hint says: "retry") was refused, COPY being no longer empty.
    before = snapshot(crashed)
    copy = tmp_path / "copy"
    if exists:
        copy.mkdir()
    writes = 0

    def disk_full_after_two_writes(event: IOEvent) -> None:
        nonlocal writes
        if event.op == "write" and event.path.startswith(str(copy)):
            writes += 1
            if writes == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(recover, "FileSystem", lambda: FileSystem(hook=disk_full_after_two_writes))
    code, document = run_json("recover", crashed, "--into", copy)
    assert document["error"]["name"] == "DiskFull"
    assert snapshot(crashed) == before
    assert (list(copy.iterdir()) == []) if exists else not copy.exists()
    monkeypatch.setattr(recover, "FileSystem", FileSystem)
    code, document = run_json("recover", crashed, "--into", copy)
    assert code == 0 and _rows(copy) == ROWS


def test_recover_into_holds_dir_while_copying_it(
    crashed: Path, tmp_path: Path, run_json: RunJson, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DIR was only probed before the copy: an instance opened there meanwhile recovered,
    # rolled and checkpointed while the files were being read, and the copy mixed files
    # from before and after (a restore --logs-from holds its directory for that reason).
    copy = tmp_path / "copy"
    refusals: list[str] = []

    def open_dir_during_the_copy(event: IOEvent) -> None:
        if event.op == "write" and event.path.startswith(str(copy)) and not refusals:
            try:
                jetstore.open(crashed, **SMALL).close()
                refusals.append("opened")
            except JetError as exc:
                refusals.append(f"{exc.name}: {exc.detail}")

    monkeypatch.setattr(recover, "FileSystem", lambda: FileSystem(hook=open_dir_during_the_copy))
    code, document = run_json("recover", crashed, "--into", copy)
    assert code == 0, document
    (refusal,) = refusals
    assert refusal.startswith("FileAccessDenied: ") and "recover --into" in refusal
    assert _rows(copy) == ROWS
    assert not (crashed / "jetstore.sock").exists()
    monkeypatch.setattr(recover, "FileSystem", FileSystem)
    code, document = run_json("recover", crashed)  # the lock was let go
    assert code == 0 and _rows(crashed) == ROWS


@pytest.mark.parametrize("existed", [False, True])
def test_a_failed_copy_is_removed_through_the_io_layer(
    closed: Path, tmp_path: Path, existed: bool
) -> None:
    # The partial copy was removed with shutil.rmtree and os.unlink: the I/O hook (fault
    # injection, the crash recorder) never saw the removals.
    target = tmp_path / "copy"
    if existed:
        target.mkdir()
    events: list[IOEvent] = []
    fs = FileSystem(hook=events.append)
    copied = recover.copy_instance(fs, str(closed), str(target), show_progress=False)
    created = {e.path for e in events if e.op == "create"}
    events.clear()
    recover._remove_copy(fs, str(target), existed)
    assert os.path.isdir(target) == existed and (not existed or os.listdir(target) == [])
    assert {e.path for e in events if e.op == "unlink"} == created
    assert len(created) == copied["files"]
    assert [e.path for e in events if e.op == "rmdir"] == ([] if existed else [str(target)])


def test_recover_into_skips_symbolic_links_to_directories_and_to_nothing(
    crashed: Path, tmp_path: Path, run_json: RunJson, capsys: pytest.CaptureFixture[str]
) -> None:
    # Defect: the copy followed symbolic links to directories: `ln -s . DIR/loop` made it
    # walk DIR/loop/loop/... until "Too many levels of symbolic links". No file of an
    # instance lives under such a link; a link to a file (a database kept elsewhere) is
    # still copied as the file.
    before = snapshot(crashed)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "big").write_bytes(b"x" * 100)
    os.symlink(".", crashed / "loop")
    os.symlink(outside, crashed / "archive")
    os.symlink(tmp_path / "gone", crashed / "dangling")
    copy = tmp_path / "copy"
    code, document = run_json("recover", crashed, "--into", copy)
    assert code == 0, document
    copied = document["result"]["copied"]
    assert copied["files"] == len(before)
    assert copied["skipped"] == [
        {"path": "archive", "why": "a symbolic link to a directory (not followed)"},
        {"path": "dangling", "why": "a symbolic link to nothing"},
        {"path": "loop", "why": "a symbolic link to a directory (not followed)"},
    ]
    assert not {"loop", "archive", "dangling"} & set(os.listdir(copy))
    assert _rows(copy) == ROWS

    copy2 = tmp_path / "copy2"
    assert run(["recover", str(crashed), "--into", str(copy2)]) == 0
    out = capsys.readouterr().out
    assert "skipped loop: a symbolic link to a directory (not followed)" in " ".join(out.split())


def test_recover_into_skips_what_is_no_regular_file(
    crashed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    # Defect: a FIFO in DIR (or a link to a device) was refused by its open after the
    # files before it were copied, and the whole copy was removed again: `recover --into`
    # failed where `recover DIR` in place works.
    os.mkfifo(crashed / "pipe")
    os.symlink("/dev/null", crashed / "null")
    copy = tmp_path / "copy"
    code, document = run_json("recover", crashed, "--into", copy)
    assert code == 0, document
    assert document["result"]["copied"]["skipped"] == [
        {"path": "null", "why": "a character device, not a regular file"},
        {"path": "pipe", "why": "a FIFO or pipe, not a regular file"},
    ]
    assert _rows(copy) == ROWS


def test_recover_into_a_copy_that_cannot_be_created_says_nothing_was_copied(
    closed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said "the partial copy in COPY was removed" of a COPY that never existed (its
    # parent is a file), sending the operator to look for it.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    capsys.readouterr()
    assert run(["recover", str(closed), "--into", str(blocker / "copy")]) == 2
    err = "".join(capsys.readouterr().err.split())  # rich folds the long paths anywhere
    assert "partialcopy" not in err
    assert f"nothingwascopiedinto{blocker / 'copy'};{closed}wasnottouched" in err

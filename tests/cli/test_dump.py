"""`jetstore dump header|checkpoint|logs`: real instance files, clean, dirty and damaged.

Every dump is read-only: the tests that matter for it hash the directory before and after.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import jetstore
from jetstore.cli.main import run
from jetstore.format.checkpoint import CHECKPOINT_COPY_SIZE
from jetstore.format.common import FORMAT_VERSION
from jetstore.format.filenames import CHECKPOINT_FILE, CURRENT_LOG, generation_log_name
from jetstore.format.logheader import LOG_HEADER_SIZE

from .conftest import (
    ROWS,
    RunJson,
    closed_instance_with_generations,
    damage_second_frame,
    flip,
    reseal_at_version,
    run_entry_point,
    snapshot,
    table_rows,
)

PAGE = 8192


# --------------------------------------------------------------------------- header


def test_dump_header_dirty_names_the_required_logs(crashed: Path) -> None:
    before = snapshot(crashed)
    done = run_entry_point("dump", "header", crashed / "main.edb", "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert (document["ok"], document["command"]) == (True, "dump header")
    result = document["result"]
    assert result["state"] == "dirty"
    required = result["required"]
    assert (required["low"], required["high"]) == (1, 3)
    assert required["first_file"] == generation_log_name(1)
    assert required["last_file"] == CURRENT_LOG  # generation 3 is still the current log
    assert result["checkpoint_position"]["generation"] == 1
    assert result["log_signature"] != "none" and "@" in result["log_signature"]
    assert result["name"] == "main"
    assert result["page_size"] == PAGE
    assert result["format_version"] == FORMAT_VERSION
    assert result["engine_version"].startswith("jetstore")
    assert all(backup["never"] for backup in result["backups"].values())
    assert set(result["backups"]) == {"full", "incremental", "differential", "copy"}
    assert [c["valid"] for c in result["copies"]] == [True, True]
    assert result["problems"] == []
    assert snapshot(crashed) == before


def test_dump_header_clean_needs_no_logs(closed: Path, run_json: RunJson) -> None:
    code, document = run_json("dump", "header", closed / "main.edb")
    assert code == 0
    result = document["result"]
    assert result["state"] == "clean"
    assert result["required"]["text"] == "0-0: no logs needed"
    assert (result["required"]["low"], result["required"]["high"]) == (0, 0)
    assert result["last_consistent"]["time"] is not None
    assert result["page_count"] > 2
    assert result["free_pages"] >= 0
    assert result["repair_count"] == 0


def test_dump_header_human_output(closed: Path) -> None:
    done = run_entry_point("dump", "header", closed / "main.edb")
    assert done.returncode == 0
    assert "clean" in done.stdout
    assert "no logs needed" in done.stdout
    assert "never" in done.stdout


def test_dump_header_damaged_copy_is_a_problem(closed: Path, run_json: RunJson) -> None:
    flip(closed / "main.edb", PAGE + 100)  # inside header copy 1
    code, document = run_json("dump", "header", closed / "main.edb")
    assert code == 1
    result = document["result"]
    assert result["state"] == "clean"  # copy 0 is still good and used
    assert [c["valid"] for c in result["copies"]] == [True, False]
    assert result["copies"][1]["error"]
    assert len(result["problems"]) == 1 and "copy 0 is valid" in result["problems"][0]


def test_dump_header_copy_zero_damaged_finds_page_size_from_copy_one(
    closed: Path, run_json: RunJson
) -> None:
    flip(closed / "main.edb", 20)  # the page size field of copy 0
    code, document = run_json("dump", "header", closed / "main.edb")
    assert code == 1
    result = document["result"]
    assert result["page_size_from"] == "copy 1"
    assert [c["valid"] for c in result["copies"]] == [False, True]


def test_dump_header_both_copies_damaged_is_an_error(closed: Path, run_json: RunJson) -> None:
    flip(closed / "main.edb", 100)
    flip(closed / "main.edb", PAGE + 100)
    code, document = run_json("dump", "header", closed / "main.edb")
    assert code == 1
    assert document["error"]["name"] == "ReadVerifyFailure"
    assert document["error"]["exit_code"] == 1


def test_dump_header_of_a_log_file_and_of_no_file(closed: Path, run_json: RunJson) -> None:
    code, document = run_json("dump", "header", closed / generation_log_name(1))
    assert (code, document["error"]["name"]) == (3, "FileInvalidType")
    code, document = run_json("dump", "header", closed / "nothing.edb")
    assert (code, document["error"]["name"]) == (4, "FileNotFound")


# --------------------------------------------------------------------------- checkpoint


def test_dump_checkpoint(crashed: Path, run_json: RunJson) -> None:
    code, document = run_json("dump", "checkpoint", crashed / CHECKPOINT_FILE)
    assert code == 0
    result = document["result"]
    assert result["checkpoint_position"]["generation"] == 1
    assert result["first_log_needed"] == {
        "generation": 1,
        "file": generation_log_name(1),
        "present": True,
    }
    assert result["circular_logging"] is False
    assert result["log_file_size"] == 64 * 1024
    assert [c["valid"] for c in result["copies"]] == [True, True]
    assert result["copies"][0]["seq"] == result["seq"]
    assert result["problems"] == []


def test_dump_checkpoint_corrupt_copy_is_reported(closed: Path, run_json: RunJson) -> None:
    code, document = run_json("dump", "checkpoint", closed / CHECKPOINT_FILE)
    assert code == 0
    attached = document["result"]["attached"]
    assert [a["name"] for a in attached] == ["main"]

    flip(closed / CHECKPOINT_FILE, 60)  # inside copy 0
    before = snapshot(closed)
    code, document = run_json("dump", "checkpoint", closed / CHECKPOINT_FILE)
    assert code == 1
    result = document["result"]
    assert [c["valid"] for c in result["copies"]] == [False, True]
    assert "checkpoint copy 0" in result["copies"][0]["error"]
    assert result["copies"][1]["seq"] == result["seq"]
    assert len(result["problems"]) == 1
    assert snapshot(closed) == before  # nothing was rewritten

    flip(closed / CHECKPOINT_FILE, CHECKPOINT_COPY_SIZE + 60)  # and copy 1
    code, document = run_json("dump", "checkpoint", closed / CHECKPOINT_FILE)
    assert (code, document["error"]["name"]) == (1, "CheckpointCorrupt")


# --------------------------------------------------------------------------- logs


def test_dump_logs_lists_every_generation_with_header_fields(
    crashed: Path, run_json: RunJson
) -> None:
    code, document = run_json("dump", "logs", crashed)
    assert code == 0
    result = document["result"]
    rows = result["generations"]
    assert [r["generation"] for r in rows] == [1, 2, 3]
    assert [r["file_name"] for r in rows] == [
        generation_log_name(1),
        generation_log_name(2),
        CURRENT_LOG,
    ]
    assert all(r["status"] == "ok" for r in rows)
    assert rows[0]["previous_generation_end"] == 0
    assert rows[1]["previous_generation_end"] == rows[0]["end_offset"]
    assert rows[2]["data_start"] == LOG_HEADER_SIZE
    assert all(r["signature"] == result["signature"] for r in rows)
    assert "records" not in result  # only with --records

    code, document = run_json("dump", "logs", crashed, "--range", "2-3")
    assert [r["generation"] for r in document["result"]["generations"]] == [2, 3]
    code, document = run_json("dump", "logs", crashed, "--range", generation_log_name(2))
    assert [r["generation"] for r in document["result"]["generations"]] == [2]


def test_dump_logs_records_as_json_lines(crashed: Path) -> None:
    done = run_entry_point("dump", "logs", crashed, "--records", "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    *records, envelope = lines
    assert (envelope["schema"], envelope["ok"], envelope["command"]) == (1, True, "dump logs")
    result = envelope["result"]
    assert result["records"] == len(records)
    assert result["records_error"] is None
    assert len(records) == sum(r["records"] for r in result["generations"])
    assert records[0]["type"] == "create_database" and records[0]["name"] == "main"
    commits = [r for r in records if r["type"] == "commit"]
    assert sum(r["operations"] for r in commits) >= ROWS
    big = max(commits, key=lambda r: r["operations"])
    assert big["database_id"] == 1
    assert big["keys_truncated"] is True and len(big["keys"]) == 8
    assert all(len(k["key"]) <= 65 for k in big["keys"])  # 32 bytes as hex, then "…"
    positions = [(r["generation"], r["offset"]) for r in records]
    assert positions == sorted(positions)

    done = run_entry_point("dump", "logs", crashed, "--records", "--json", "--range", "2-3")
    *ranged, envelope = [json.loads(line) for line in done.stdout.splitlines()]
    assert ranged and all(2 <= r["generation"] <= 3 for r in ranged)
    assert envelope["result"]["records"] == len(ranged)


def test_dump_logs_records_stop_at_a_missing_generation(crashed: Path) -> None:
    (crashed / generation_log_name(2)).unlink()
    done = run_entry_point("dump", "logs", crashed, "--records", "--json")
    assert done.returncode == 1
    *records, envelope = [json.loads(line) for line in done.stdout.splitlines()]
    assert records and all(r["generation"] == 1 for r in records)
    result = envelope["result"]
    assert result["missing"] == [2]
    assert result["records_error"]["name"] == "MissingLogFile"


def test_dump_logs_damage_recovery_no_longer_needs_is_a_warning(
    closed: Path, run_json: RunJson
) -> None:
    """As in `logs verify`: damage in a generation below where recovery starts (a clean
    shutdown's checkpoint is in the newest generation) is a warning, and the exit is 0; the
    record scan says where it broke and resumes where recovery starts reading."""
    offset = damage_second_frame(closed / generation_log_name(1), 1)
    before = snapshot(closed)
    code, document = run_json("dump", "logs", closed)
    assert code == 0, document
    result = document["result"]
    assert result["verified_ok"] is True
    needs = result["recovery_needs"]
    assert (needs["first_generation"], needs["first_file"]) == (3, CURRENT_LOG)
    [problem] = [p for p in result["problems"] if p["error"] == "LogFileCorrupt"]
    assert (problem["severity"], problem["needed"], problem["offset"]) == ("warning", False, offset)
    assert "recovery no longer needs generation 1" in problem["message"]
    assert [(r["status"], r["needed"]) for r in result["generations"]] == [
        ("damaged", False),
        ("ok", False),
        ("ok", True),
    ]

    done = run_entry_point("dump", "logs", closed, "--records", "--json")
    assert done.returncode == 0, done.stdout
    *records, envelope = [json.loads(line) for line in done.stdout.splitlines()]
    result = envelope["result"]
    assert (envelope["ok"], result["records_error"]) == (True, None)
    warning = result["records_warning"]
    assert warning["error"]["name"] == "LogFileCorrupt"
    assert warning["resumed_at_generation"] == 3
    assert warning["stopped_at"].startswith("00000001:")
    assert "warning, not an error" in warning["message"]
    assert "generation 3 (edb.log: the checkpoint file" in warning["message"]
    # Generation 1 up to the damage, then what recovery reads: nothing of generation 2.
    assert [r["generation"] for r in records] == sorted(r["generation"] for r in records)
    assert {r["generation"] for r in records} == {1, 3}
    assert all(r["offset"] < offset for r in records if r["generation"] == 1)
    assert result["records"] == len(records)

    human = run_entry_point("dump", "logs", closed, "--records")
    assert human.returncode == 0, human.stdout
    assert "damaged but not needed by recovery: edb00000001.log" in human.stdout
    assert "warning: records stop at 00000001:" in human.stdout
    assert "recovery reads from generation 3 (edb.log)" in human.stdout
    assert snapshot(closed) == before


@pytest.mark.parametrize("log_file_size", [64 * 1024, 1024 * 1024])
def test_dump_logs_tables_fit_80_columns_without_cutting_a_cell(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    log_file_size: int,
) -> None:
    """At 80 columns, with a damaged generation recovery no longer reads and 7-digit sizes
    and offsets (1 MiB log files, as real ones of 5 MiB have), every cell of both tables is
    shown in full: nothing cut to "…", each line within 80 columns."""
    directory = tmp_path / "instance"
    closed_instance_with_generations(directory, log_file_size, 3)
    damage_second_frame(directory / generation_log_name(1), 1)
    monkeypatch.setenv("COLUMNS", "80")
    capsys.readouterr()
    assert run(["dump", "logs", str(directory)]) == 0
    output = capsys.readouterr().out
    assert max(len(line) for line in output.splitlines()) <= 80
    generations = table_rows(output, "Log generations")
    headers = table_rows(output, "Log file headers")
    assert generations[0][:4] == ["1", generation_log_name(1), "damaged", "no"]
    assert generations[-1][3] == "yes"  # recovery starts in the current generation
    assert [row[1] for row in generations][-1] == CURRENT_LOG
    assert len(headers) == len(generations) >= 3
    for row in generations + headers:
        assert not any("…" in cell for cell in row), row
    assert {row[2] for row in headers} == {str(log_file_size)}  # every file's size, in full
    assert generations[0][6] == str(log_file_size)  # generation 1's frames end, in full


def test_dump_logs_damage_recovery_needs_stays_an_error(crashed: Path, run_json: RunJson) -> None:
    """The crashed instance's header requires generation 1: damage there is an error, in the
    verification and in the record scan (no warning, no resuming)."""
    damage_second_frame(crashed / generation_log_name(1), 1)
    code, document = run_json("dump", "logs", crashed)
    assert code == 1
    [problem] = [p for p in document["result"]["problems"] if p["error"] == "LogFileCorrupt"]
    assert (problem["severity"], problem["needed"]) == ("error", True)
    done = run_entry_point("dump", "logs", crashed, "--records", "--json")
    assert done.returncode == 1
    *records, envelope = [json.loads(line) for line in done.stdout.splitlines()]
    result = envelope["result"]
    assert result["records_error"]["name"] == "LogFileCorrupt"
    assert result["records_warning"] is None
    assert {r["generation"] for r in records} == {1}


def test_dump_logs_damage_where_recovery_starts_reading_stays_an_error(
    closed: Path, run_json: RunJson
) -> None:
    """Damage in the first frame of the generation recovery starts reading (the record scan
    from generation 1 breaks there before showing any of its records): reading it again as
    recovery does breaks the same way, so it is an error, not a warning."""
    flip(closed / CURRENT_LOG, LOG_HEADER_SIZE + 40)
    done = run_entry_point("dump", "logs", closed, "--records", "--json")
    assert done.returncode == 1, done.stdout
    *records, envelope = [json.loads(line) for line in done.stdout.splitlines()]
    result = envelope["result"]
    assert result["recovery_needs"]["first_generation"] == 3
    assert result["records_error"]["name"] == "LogFileCorrupt"
    assert result["records_warning"] is None
    assert {r["generation"] for r in records} == {1, 2}
    assert [(p["severity"], p["needed"]) for p in result["problems"]] == [("error", True)]


def test_dump_logs_records_of_a_range_use_the_streams_signature(
    crashed: Path, closed: Path
) -> None:
    """The stream's signature is the lowest generation's, as in recovery, also when the
    range starts higher: a foreign generation 2 is refused, not read as if it were the
    stream (its records are not the instance's)."""
    (crashed / generation_log_name(2)).write_bytes((closed / generation_log_name(2)).read_bytes())
    done = run_entry_point("dump", "logs", crashed, "--records", "--json", "--range", "2")
    assert done.returncode == 1
    *records, envelope = [json.loads(line) for line in done.stdout.splitlines()]
    assert records == []
    assert envelope["result"]["records_error"]["name"] == "BadLogSignature"
    [problem] = envelope["result"]["problems"]
    assert (problem["error"], problem["file_name"]) == ("BadLogSignature", generation_log_name(2))


def test_dump_logs_human_with_records(crashed: Path) -> None:
    done = run_entry_point("dump", "logs", crashed, "--records", "--range", "1")
    assert done.returncode == 0, done.stderr
    assert "create_database" in done.stdout
    assert "commit" in done.stdout
    assert "record(s)" in done.stdout


def test_dump_logs_bad_range_is_a_usage_error(crashed: Path, run_json: RunJson) -> None:
    code, document = run_json("dump", "logs", crashed, "--range", "3-1")
    assert code == 2
    assert document["command"] == "dump logs"
    assert "below the first" in document["error"]["message"]
    code, document = run_json("dump", "logs", crashed, "--range", "x")
    assert code == 2


@pytest.mark.parametrize(
    "text", ["1-4294967296", "0x100000000", "5000000000-", "0", "0-3", "1_0", "+3", "0x_2"]
)
def test_dump_logs_range_beyond_32_bits_is_a_usage_error(
    crashed: Path, run_json: RunJson, text: str
) -> None:
    # Defect: int() took generations above 0xFFFFFFFF (a log file name holds 8 hex digits)
    # and its own grammar ("1_0", "+3"): the command ran and showed no generation, exit 0.
    code, document = run_json("dump", "logs", crashed, "--range", text)
    assert code == 2, document
    message = document["error"]["message"]
    assert "--range" in message
    if text[0].isdigit() and "_" not in text:
        assert "1 to 4294967295 (0xFFFFFFFF" in message


def test_dump_logs_range_takes_the_highest_generation(crashed: Path, run_json: RunJson) -> None:
    code, document = run_json("dump", "logs", crashed, "--range", "0xFFFFFFFF")
    assert code == 0
    assert document["result"]["generations"] == []


def test_dump_checkpoint_truncated_file_names_the_missing_copy(
    closed: Path, run_json: RunJson
) -> None:
    path = closed / CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:CHECKPOINT_COPY_SIZE])
    code, document = run_json("dump", "checkpoint", path)
    assert code == 1
    result = document["result"]
    assert result["file_size"] == CHECKPOINT_COPY_SIZE
    assert [c["valid"] for c in result["copies"]] == [True, False]
    assert "missing" in result["copies"][1]["error"]


def test_dump_logs_records_show_detach_and_attach(tmp_path: Path) -> None:
    live = tmp_path / "live"
    with jetstore.open(live, log_file_size=64 * 1024) as inst:
        inst.database("main", create=True)
        inst.database("other", create=True)
        inst.detach("other")
        elsewhere = tmp_path / "elsewhere"
        with jetstore.open(elsewhere, log_file_size=64 * 1024) as source:
            source.database("third", create=True)
            third = source.detach("third")
        inst.attach(third)
    done = run_entry_point("dump", "logs", live, "--records", "--json")
    assert done.returncode == 0, done.stderr
    *records, _envelope = [json.loads(line) for line in done.stdout.splitlines()]
    bindings = [r for r in records if r["type"] in ("detach_database", "attach_database")]
    assert [(r["type"], r["database_id"], r["name"]) for r in bindings] == [
        ("detach_database", 2, "other"),
        ("attach_database", 2, "third"),
    ]
    assert all("@" in r["signature"] for r in bindings)
    human = run_entry_point("dump", "logs", live, "--records")
    assert human.returncode == 0, human.stderr
    assert "detach_database" in human.stdout and "attach_database" in human.stdout
    assert "'other'" in human.stdout and "'third'" in human.stdout


@pytest.mark.parametrize("copies", [(0, 1), (0,)])
def test_a_newer_checkpoint_file_is_reported_as_such_by_every_reader(
    closed: Path, run_json: RunJson, copies: tuple[int, ...]
) -> None:
    """Open refuses a checkpoint file of a newer format version (BadLogVersion: never
    written over); dump, status and checksum say the same, never CheckpointCorrupt with
    "move edb.chk aside", which is what a damaged one calls for."""
    path = closed / CHECKPOINT_FILE
    starts = tuple(copy * CHECKPOINT_COPY_SIZE for copy in copies)
    reseal_at_version(path, starts, CHECKPOINT_COPY_SIZE, FORMAT_VERSION + 1)
    before = snapshot(closed)

    code, document = run_json("dump", "checkpoint", path)
    # Exit 3, as `dump header` of a newer database (InvalidDatabaseVersion): not damage.
    assert (code, document["error"]["name"]) == (3, "BadLogVersion")
    assert f"format version {FORMAT_VERSION + 1}" in document["error"]["detail"]
    assert "release that wrote" in document["error"]["hint"]

    code, document = run_json("status", closed)
    assert code == 1
    warnings = " ".join(document["result"]["warnings"])
    assert "BadLogVersion" in warnings and "CheckpointCorrupt" not in warnings
    assert "release that wrote" in warnings

    code, document = run_json("checksum", closed)
    assert code == 1
    chk = [p for p in document["result"]["problems"] if p["file"].endswith(CHECKPOINT_FILE)]
    assert [(p["copy"], p["error"]) for p in chk] == [(c, "BadLogVersion") for c in copies]
    assert snapshot(closed) == before


def test_dump_logs_of_a_directory_that_is_no_instance_is_a_usage_error(
    tmp_path: Path, run_json: RunJson
) -> None:
    # It showed an empty log stream and exited 0, as if that directory's logs were fine.
    (tmp_path / "notes.txt").write_text("not an instance")
    code, document = run_json("dump", "logs", tmp_path)
    assert code == 2
    error = document["error"]
    assert error["name"] == "InvalidPath" and error["exit_code"] == 2
    assert f"'{tmp_path}' is not a jetstore instance directory" in error["message"]
    assert not (tmp_path / "jetstore.lock").exists()

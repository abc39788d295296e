"""`jetstore diagnose DIR`: the verdict agrees with what `jetstore.open` then does.

The matrix is the one of `tests/instance/test_recovery_matrix.py` (checkpoint file state x log
presence x header state): on each state, diagnose runs first (every file hashed before and
after: it writes nothing), then the instance is opened and the outcome compared: success
with the predicted start, records and verdict, or the predicted error class; and for a
refusal, the same state opened with `accept_data_loss` stops where the plan said. Then the
command end to end on the CLI builders' states.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.errors import JetError
from jetstore.format.common import FORMAT_VERSION
from jetstore.format.filenames import CURRENT_LOG, generation_log_name, parse_generation_log_name
from jetstore.format.logframe import decode_frame
from jetstore.format.logheader import LOG_HEADER_SIZE
from jetstore.instance.diagnosis import RecoveryPlan, plan_recovery
from jetstore.io.files import FileSystem
from jetstore.tools.dbfile import exclusive_directory

from .conftest import (
    SMALL,
    RunJson,
    build,
    damage_second_frame,
    flip,
    reseal_at_version,
    run_entry_point,
    snapshot,
)

PAGE = 8192

OPTIONS = {"log_file_size": 64 * 1024, "checkpoint_depth": 1 << 30, "checkpoint_interval": 1e6}
ROWS_PER_BATCH = 150

CHECKPOINT_STATES = ["valid", "missing", "corrupt", "foreign", "stale"]
LOG_STATES = ["all", "missing_middle", "missing_newest", "missing_all"]
HEADER_STATES = ["clean", "dirty"]


def _batch(db: jetstore.Database, start: int) -> int:
    with db.transaction() as txn:
        for i in range(start, start + ROWS_PER_BATCH):
            txn.table("t").insert({"id": i, "v": f"{i:08d}" * 30})
    return start + ROWS_PER_BATCH


def _build(directory: Path, header_state: str) -> tuple[bytes, int]:
    """As the recovery matrix builds it: work before and after a checkpoint."""
    instance = jetstore.open(directory, **OPTIONS)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    early = (directory / "edb.chk").read_bytes()
    n = 0
    for _ in range(4):
        n = _batch(db, n)
    instance.checkpoint()
    for _ in range(4):
        n = _batch(db, n)
    checkpoint_generation = db.file.header.checkpoint_position.generation
    if header_state == "clean":
        instance.close()
    else:
        instance.simulate_crash()
    return early, checkpoint_generation


def _generations(directory: Path) -> list[int]:
    gens = (parse_generation_log_name(name) for name in os.listdir(directory))
    return sorted(g for g in gens if g is not None)


@pytest.fixture(scope="module")
def matrix_templates(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[Path, bytes, int]]:
    base = tmp_path_factory.mktemp("diagnose-matrix")
    built: dict[str, tuple[Path, bytes, int]] = {}
    for state in HEADER_STATES:
        early, generation = _build(base / state, state)
        built[state] = (base / state, early, generation)
    other = base / "other"
    with jetstore.open(other, **OPTIONS) as instance:
        instance.database("x", create=True)
    built["foreign"] = (other, (other / "edb.chk").read_bytes(), 0)
    return built


def _make_state(
    directory: Path,
    templates: dict[str, tuple[Path, bytes, int]],
    checkpoint_state: str,
    log_state: str,
    header_state: str,
) -> None:
    template, early, checkpoint_generation = templates[header_state]
    shutil.copytree(template, directory)
    chk = directory / "edb.chk"
    present = _generations(directory)
    if checkpoint_state == "missing":
        chk.unlink()
    elif checkpoint_state == "corrupt":
        data = bytearray(chk.read_bytes())
        data[40] ^= 0xFF
        data[4096 + 40] ^= 0xFF
        chk.write_bytes(bytes(data))
    elif checkpoint_state == "foreign":
        chk.write_bytes(templates["foreign"][1])
    elif checkpoint_state == "stale":
        chk.write_bytes(early)
        if checkpoint_generation > 1 or header_state == "clean":
            (directory / generation_log_name(1)).unlink()
    if log_state == "missing_middle":
        victim = max(checkpoint_generation + 1, present[len(present) // 2])
        if (directory / generation_log_name(victim)).exists():
            (directory / generation_log_name(victim)).unlink()
    elif log_state == "missing_newest":
        (directory / CURRENT_LOG).unlink()
    elif log_state == "missing_all":
        for name in os.listdir(directory):
            if name == CURRENT_LOG or parse_generation_log_name(name) is not None:
                (directory / name).unlink()


def _diagnose_read_only(directory: Path) -> RecoveryPlan:
    before = snapshot(directory)
    plan = plan_recovery(directory)
    assert snapshot(directory) == before, "diagnose must not change any file"
    return plan


def assert_plan_matches_open(directory: Path, plan: RecoveryPlan, **options: object) -> None:
    """Open `directory` (a copy is kept for the data-loss check) and compare with `plan`."""
    spare = directory.with_name(directory.name + "-loss")
    shutil.copytree(directory, spare)
    try:
        instance = jetstore.open(directory, **options)
    except JetError as exc:
        assert plan.error is not None, f"plan said open succeeds; it raised {exc!r}"
        assert type(exc).name == plan.error.name, (exc, plan.error)
        assert plan.verdict in ("data-loss", "restore", "move-away", "other-release")
        assert plan.data_loss is not None
        if plan.data_loss.possible:
            with jetstore.open(spare, accept_data_loss=True, **options) as lossy:
                outcome = lossy.recovery
                assert outcome is not None and outcome.data_loss is not None
                assert outcome.data_loss.stopped_at == plan.data_loss.stopped_at
                assert sorted(outcome.data_loss.databases) == plan.data_loss.databases
        else:
            with pytest.raises(JetError) as info:
                jetstore.open(spare, accept_data_loss=True, **options)
            assert plan.data_loss.error is not None
            assert type(info.value).name == plan.data_loss.error.name
        return
    finally:
        shutil.rmtree(spare, ignore_errors=True)
    with instance:
        outcome = instance.recovery
        assert outcome is not None
        assert plan.error is None and plan.ok
        assert plan.verdict == ("recoverable" if outcome.needed else "clean")
        assert outcome.start == plan.start
        assert outcome.replayed == plan.records_to_replay
        assert outcome.skipped == plan.records_skipped
        assert outcome.created == plan.to_create
        assert outcome.torn_tail == plan.torn_tail
        assert outcome.notes == [n for n in plan.notes if n in outcome.notes]
        ignored = any(n.startswith("checkpoint file ignored") for n in outcome.notes)
        if plan.checkpoint is not None and plan.checkpoint.status in ("damaged", "foreign"):
            assert ignored


@pytest.mark.parametrize("header_state", HEADER_STATES)
@pytest.mark.parametrize("log_state", LOG_STATES)
@pytest.mark.parametrize("checkpoint_state", CHECKPOINT_STATES)
def test_diagnose_agrees_with_open(
    tmp_path: Path,
    matrix_templates: dict[str, tuple[Path, bytes, int]],
    checkpoint_state: str,
    log_state: str,
    header_state: str,
) -> None:
    directory = tmp_path / "instance"
    _make_state(directory, matrix_templates, checkpoint_state, log_state, header_state)
    plan = _diagnose_read_only(directory)
    must_fail = header_state == "dirty" and log_state != "all"
    assert (plan.verdict == "data-loss") is must_fail, plan.summary
    if must_fail:
        assert plan.data_loss is not None and plan.data_loss.possible
        assert any("--accept-data-loss" in c for c in plan.next_commands)
        assert "restore from backup" in plan.summary
    if checkpoint_state != "valid" and header_state == "dirty" and not must_fail:
        assert plan.checkpoint is not None and not plan.checkpoint.used
        assert plan.checkpoint.safe_because is not None
    assert_plan_matches_open(directory, plan, **OPTIONS)


# --------------------------------------------------------------------------- CLI states


def _diagnose(run_json: RunJson, directory: Path) -> tuple[int, dict[str, object]]:
    before = snapshot(directory)
    code, document = run_json("diagnose", directory)
    assert snapshot(directory) == before
    assert document["command"] == "diagnose"
    result = document["result"]
    assert isinstance(result, dict)
    return code, result


def test_clean_instance(closed: Path, run_json: RunJson) -> None:
    code, result = _diagnose(run_json, closed)
    assert code == 0
    assert result["verdict"] == "clean"
    assert str(result["summary"]).startswith("clean; no logs needed")
    assert result["next_commands"] == []
    assert_plan_matches_open(closed, plan_recovery(closed), **SMALL)


def test_clean_instance_with_an_unreadable_edb_log(closed: Path, run_json: RunJson) -> None:
    """No database needs the log, but the stream would write over it: open refuses, and the
    diagnosis says the option sets the logs aside without losing a change."""
    path = closed / "edb.log"
    data = bytearray(path.read_bytes())
    data[30] ^= 0xFF
    path.write_bytes(bytes(data))
    code, result = _diagnose(run_json, closed)
    assert code == 1
    assert result["verdict"] == "data-loss"
    summary = str(result["summary"])
    assert summary.startswith("edb.log cannot be read (LogFileCorrupt")
    assert "put back an intact copy of it, or recover with --accept-data-loss" in summary
    assert "no database loses a change" in summary
    assert result["open_error"]["name"] == "LogFileCorrupt"  # type: ignore[index]
    assert f"jetstore recover {closed} --accept-data-loss" in result["next_commands"]  # type: ignore[operator]
    assert_plan_matches_open(closed, plan_recovery(closed), **SMALL)


def test_crashed_instance_recovers_from_generation_1(crashed: Path, run_json: RunJson) -> None:
    code, result = _diagnose(run_json, crashed)
    assert code == 0
    assert result["verdict"] == "recoverable"
    assert "soft recovery will succeed from generation 1" in str(result["summary"])
    assert result["replay_generations"] == [1, 3]
    # Generation 3 is the current log: named by the file that holds it, as `dump header`
    # names it, not as an edb00000003.log that does not exist.
    (database,) = result["databases"]  # type: ignore[misc]
    assert database["required"] == [1, 3]
    assert database["required_files"] == ["edb00000001.log", CURRENT_LOG]
    assert result["next_commands"][0] == f"jetstore recover {crashed}"  # type: ignore[index]
    human = run_entry_point("diagnose", crashed)
    assert human.returncode == 0, human.stderr
    assert "soft recovery will succeed" in human.stdout
    assert f"jetstore recover {crashed}" in human.stdout
    assert_plan_matches_open(crashed, plan_recovery(crashed), **SMALL)


def test_missing_log_needs_restore_or_data_loss(crashed: Path, run_json: RunJson) -> None:
    (crashed / generation_log_name(2)).unlink()
    code, result = _diagnose(run_json, crashed)
    assert code == 1
    assert result["verdict"] == "data-loss"
    summary = str(result["summary"])
    assert summary.startswith("generation 2 missing (edb00000002.log)")
    assert "restore from backup, or recover with data loss to position 00000001:" in summary
    assert result["open_error"]["name"] in ("MissingLogFile", "RequiredLogFilesMissing")  # type: ignore[index]
    assert f"jetstore recover {crashed} --accept-data-loss" in result["next_commands"]  # type: ignore[operator]
    assert_plan_matches_open(crashed, plan_recovery(crashed), **SMALL)


def test_torn_tail_is_recoverable(crashed: Path, run_json: RunJson) -> None:
    code, document = run_json("logs", "verify", crashed)
    end = document["result"]["generations"][-1]["end_offset"]
    with (crashed / CURRENT_LOG).open("r+b") as file:
        file.seek(end)
        file.write(b"\x5a" * 100)
    code, result = _diagnose(run_json, crashed)
    assert code == 0
    assert result["verdict"] == "recoverable"
    assert result["torn_tail"] == f"00000003:{end:08X}"
    assert "torn tail" in str(result["summary"])
    assert_plan_matches_open(crashed, plan_recovery(crashed), **SMALL)


def test_truncated_newest_log_is_data_loss_not_a_torn_tail(
    crashed: Path, run_json: RunJson
) -> None:
    """A newest log file cut short is damage (log files are preallocated in full): diagnose
    says so like `logs verify`, and agrees with open and with open accepting the loss."""
    path = crashed / CURRENT_LOG
    end = len(path.read_bytes().rstrip(b"\x00"))
    size = (LOG_HEADER_SIZE + end) // 2
    os.truncate(path, size)
    code, document = run_json("logs", "verify", crashed)
    assert [p["error"] for p in document["result"]["problems"] if p["check"] == "size"] == [
        "LogFileSizeMismatch"
    ]
    code, result = _diagnose(run_json, crashed)
    assert code == 1
    assert result["verdict"] == "data-loss"
    assert result["torn_tail"] is None
    assert result["open_error"]["name"] == "LogFileSizeMismatch"  # type: ignore[index]
    assert f"it holds {size} bytes" in result["open_error"]["detail"]  # type: ignore[index]
    assert result["data_loss"]["possible"] is True  # type: ignore[index]
    assert f"jetstore recover {crashed} --accept-data-loss" in result["next_commands"]  # type: ignore[operator]
    human = run_entry_point("diagnose", crashed)
    assert human.returncode == 1, human.stderr
    assert "recoverable" not in human.stdout.split("\n")[0]
    assert_plan_matches_open(crashed, plan_recovery(crashed), **SMALL)


def test_damaged_closed_generation(crashed: Path, run_json: RunJson) -> None:
    path = crashed / generation_log_name(2)
    data = path.read_bytes()
    frame = decode_frame(data, LOG_HEADER_SIZE, 2)
    assert frame is not None
    flip(path, frame.offset + 40)
    code, result = _diagnose(run_json, crashed)
    assert code == 1
    assert result["verdict"] == "data-loss"
    assert f"the log is damaged at 00000002:{frame.offset:08X} (edb00000002.log" in str(
        result["summary"]
    )
    assert result["open_error"]["name"] == "LogFileCorrupt"  # type: ignore[index]
    assert str(result["data_loss"]["stopped_at"]).startswith("00000001:")  # type: ignore[index]
    assert_plan_matches_open(crashed, plan_recovery(crashed), **SMALL)


def _serious(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in problems if p["severity"] in ("error", "warning")]


def test_log_damage_recovery_does_not_read_is_a_warning_as_in_logs_verify(
    closed: Path, run_json: RunJson
) -> None:
    """Damage only in a generation recovery no longer reads (a clean shutdown's checkpoint is
    in the newest generation): diagnose judges it as `logs verify` does (the same warnings,
    `logs.ok` true), says in a note that recovery does not read it, advises neither recover
    nor restore, and opening agrees: it succeeds without replaying anything."""
    path = closed / generation_log_name(1)
    offset = damage_second_frame(path, 1)
    code, result = _diagnose(run_json, closed)
    assert code == 0, result
    assert (result["verdict"], result["ok"], result["open_error"]) == ("clean", True, None)
    assert result["next_commands"] == []
    logs: dict[str, Any] = result["logs"]  # type: ignore[assignment]
    assert (logs["ok"], logs["errors"]) == (True, [])
    (warning,) = logs["warnings"]
    assert (warning["file_name"], warning["offset"], warning["needed"]) == (
        path.name,
        offset,
        False,
    )
    assert warning["error"] == "LogFileCorrupt"
    assert logs["recovery_needs"]["first_generation"] == 3
    _code, verified = run_json("logs", "verify", closed)
    assert verified["result"]["ok"] is True
    assert _serious(verified["result"]["problems"]) == _serious(logs["errors"] + logs["warnings"])
    (note,) = [n for n in result["notes"] if "log damage" in n]  # type: ignore[union-attr]
    assert note.startswith("log damage that recovery does not read: edb00000001.log")
    assert "starts reading at generation 3" in note
    assert "a warning, not an error" in note
    human = run_entry_point("diagnose", closed)
    assert human.returncode == 0, human.stdout
    text = " ".join(human.stdout.split())  # as the console wrapped it, unwrapped
    assert "1 warning(s) in generations recovery does not read" in text
    assert "error(s)" not in text
    assert "next:" not in text
    plan = plan_recovery(closed)
    assert_plan_matches_open(closed, plan, **SMALL)
    with jetstore.open(closed, **SMALL) as instance:
        assert instance.recovery is not None and not instance.recovery.needed


def test_log_damage_below_a_crashed_instances_checkpoint_still_recovers(
    tmp_path: Path, run_json: RunJson
) -> None:
    """A crashed instance whose checkpoint is past generation 1: damage in generation 1 is a
    warning and diagnose still says "recover" (which then succeeds); damage in a generation
    replay reads as well is an error, the verdict data loss (restore, or accept the loss),
    with the summary naming that damage, not the warning, and opening refuses."""
    base = tmp_path / "instance"
    _early, checkpoint_generation = _build(base, "dirty")
    assert (
        checkpoint_generation > 1 and (base / generation_log_name(checkpoint_generation)).exists()
    )
    damage_second_frame(base / generation_log_name(1), 1)
    both = tmp_path / "both"
    shutil.copytree(base, both)

    code, result = _diagnose(run_json, base)
    assert code == 0, result
    assert result["verdict"] == "recoverable"
    commands: list[str] = result["next_commands"]  # type: ignore[assignment]
    assert commands[0] == f"jetstore recover {base}"
    assert not any("restore" in c or "accept-data-loss" in c for c in commands)
    logs: dict[str, Any] = result["logs"]  # type: ignore[assignment]
    assert (logs["ok"], logs["errors"]) == (True, [])
    assert [(w["file_name"], w["needed"]) for w in logs["warnings"]] == [
        (generation_log_name(1), False)
    ]
    assert logs["recovery_needs"]["first_generation"] == checkpoint_generation
    assert any("log damage that recovery does not read" in n for n in result["notes"])  # type: ignore[union-attr]
    assert_plan_matches_open(base, plan_recovery(base), **OPTIONS)

    needed = both / generation_log_name(checkpoint_generation)
    second = damage_second_frame(needed, checkpoint_generation)
    code, result = _diagnose(run_json, both)
    assert code == 1
    assert result["verdict"] == "data-loss"
    assert f"the log is damaged at {checkpoint_generation:08X}:{second:08X} ({needed.name}" in str(
        result["summary"]
    )
    commands = result["next_commands"]  # type: ignore[assignment]
    assert any(c.startswith("jetstore restore") for c in commands)
    assert f"jetstore recover {both} --accept-data-loss" in commands
    logs = result["logs"]  # type: ignore[assignment]
    assert logs["ok"] is False
    assert [(e["file_name"], e["needed"]) for e in logs["errors"]] == [(needed.name, True)]
    assert [(w["file_name"], w["needed"]) for w in logs["warnings"]] == [
        (generation_log_name(1), False)
    ]
    human = run_entry_point("diagnose", both)
    assert human.returncode == 1
    text = " ".join(human.stdout.split())  # as the console wrapped it, unwrapped
    assert "1 error(s) in `logs verify`" in text
    assert "1 warning(s) in generations recovery does not read" in text
    assert_plan_matches_open(both, plan_recovery(both), **OPTIONS)


def test_log_damage_stays_an_error_when_nothing_says_where_recovery_starts(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    """No checkpoint file and no database of the stream: every generation counts as needed,
    so damage in generation 1 is an error in `logs verify` and in diagnose's `logs` alike,
    while opening reads only the newest generation: the verdict is clean, and a note says
    why `logs verify` counts what opening does not read. Opening agrees."""
    with jetstore.open(closed, **SMALL) as instance:
        instance.detach("main")
    os.replace(closed / "main.edb", tmp_path / "main.edb")
    (closed / "edb.chk").unlink()
    damage_second_frame(closed / generation_log_name(1), 1)
    _code, verified = run_json("logs", "verify", closed)
    assert verified["result"]["recovery_needs"]["first_generation"] is None
    code, result = _diagnose(run_json, closed)
    assert code == 0
    assert (result["verdict"], result["next_commands"]) == ("clean", [])
    logs: dict[str, Any] = result["logs"]  # type: ignore[assignment]
    assert logs["ok"] is verified["result"]["ok"] is False
    assert _serious(verified["result"]["problems"]) == _serious(logs["errors"] + logs["warnings"])
    (note,) = [n for n in result["notes"] if "log damage" in n]  # type: ignore[union-attr]
    assert note.startswith("log damage that opening now does not read")
    assert "counts it as errors because neither a checkpoint file" in note
    assert_plan_matches_open(closed, plan_recovery(closed), **SMALL)


def test_foreign_log_generation(crashed: Path, tmp_path: Path, run_json: RunJson) -> None:
    other = tmp_path / "other"
    build(other, crash=True)  # the same history, another log stream
    shutil.copy(other / generation_log_name(2), crashed / generation_log_name(2))
    code, result = _diagnose(run_json, crashed)
    assert code == 1
    assert result["verdict"] == "data-loss"
    assert result["open_error"]["name"] == "BadLogSignature"  # type: ignore[index]
    assert "edb00000002.log" in str(result["summary"])
    assert_plan_matches_open(crashed, plan_recovery(crashed), **SMALL)


def test_database_of_another_stream(crashed: Path, tmp_path: Path, run_json: RunJson) -> None:
    other = tmp_path / "other"
    instance = jetstore.open(other, **SMALL)
    instance.database("main", create=True)
    instance.simulate_crash()
    shutil.copy(other / "main.edb", crashed / "main.edb")
    code, result = _diagnose(run_json, crashed)
    assert code == 1
    assert result["verdict"] == "restore"
    assert "database 'main' belongs to another log stream" in str(result["summary"])
    assert result["open_error"]["name"] == "DatabaseLogSetMismatch"  # type: ignore[index]
    assert result["data_loss"]["possible"] is False  # type: ignore[index]
    assert_plan_matches_open(crashed, plan_recovery(crashed), **SMALL)


def test_unreadable_database_header(crashed: Path, run_json: RunJson) -> None:
    flip(crashed / "main.edb", 50)
    code, result = _diagnose(run_json, crashed)
    assert code == 0  # one copy is enough; opening rewrites the other
    assert any("rewrites it from the good copy" in n for n in result["notes"])  # type: ignore[union-attr]
    flip(crashed / "main.edb", 8192 + 50)
    code, result = _diagnose(run_json, crashed)
    assert code == 1
    assert result["verdict"] == "restore"
    assert "the header of database 'main' is unreadable" in str(result["summary"])
    assert_plan_matches_open(crashed, plan_recovery(crashed), **SMALL)


def test_a_database_of_a_newer_format_is_not_called_damaged(
    crashed: Path, run_json: RunJson
) -> None:
    """Both header copies intact but of a newer format: open refuses with
    InvalidDatabaseVersion ("not damaged: do not repair it", the release that wrote it);
    diagnose says the same, not "unreadable: restore the database from backup"."""
    reseal_at_version(crashed / "main.edb", (0, PAGE), PAGE, FORMAT_VERSION + 1)
    code, result = _diagnose(run_json, crashed)
    assert code == 1 and result["open_error"]["name"] == "InvalidDatabaseVersion"  # type: ignore[index]
    # Not "restore": the file is intact, the way out is the release that wrote it.
    assert result["verdict"] == "other-release" and result["ok"] is False
    summary = str(result["summary"])
    assert f"format version {FORMAT_VERSION + 1}" in summary
    assert "release that wrote" in summary and "unreadable" not in summary
    assert "from backup" not in summary.split(", or ")[0]
    assert_plan_matches_open(crashed, plan_recovery(crashed), **SMALL)


def test_a_directory_under_a_database_name_is_a_move_away_verdict(
    crashed: Path, run_json: RunJson
) -> None:
    # The open refuses it (InvalidPath: move it away); the verdict was "restore", which
    # only the summary contradicted.
    (crashed / "stray.edb").mkdir()
    code, result = _diagnose(run_json, crashed)
    assert code == 1 and result["verdict"] == "move-away" and result["ok"] is False
    assert result["open_error"]["name"] == "InvalidPath"  # type: ignore[index]
    assert "restore" not in " ".join(result["next_commands"])  # type: ignore[arg-type]
    assert_plan_matches_open(crashed, plan_recovery(crashed), **SMALL)


def test_damaged_checkpoint_file_uses_headers(crashed: Path, run_json: RunJson) -> None:
    flip(crashed / "edb.chk", 40)
    flip(crashed / "edb.chk", 4096 + 40)
    code, result = _diagnose(run_json, crashed)
    assert code == 0
    assert result["verdict"] == "recoverable"
    checkpoint = result["checkpoint"]
    assert checkpoint["status"] == "damaged" and checkpoint["used"] is False  # type: ignore[index]
    assert "names its own starting point" in checkpoint["safe_because"]  # type: ignore[index]
    assert_plan_matches_open(crashed, plan_recovery(crashed), **SMALL)


def test_instance_open_elsewhere_exits_3(closed: Path, run_json: RunJson) -> None:
    with jetstore.open(closed, control_socket=False, **SMALL):
        code, result = _diagnose(run_json, closed)
    assert code == 3
    assert result["verdict"] == "in-use"
    assert result["open_by_pid"] == os.getpid()
    assert f"process {os.getpid()}" in str(result["summary"])
    assert result["next_commands"][0] == f"jetstore status {closed}"  # type: ignore[index]


def test_a_tool_holding_the_directory_is_not_sent_to_counters(
    closed: Path, run_json: RunJson
) -> None:
    # The next commands were `status` and `counters`, and counters is refused while a
    # compact holds the directory (no instance serves them).
    with exclusive_directory(FileSystem(), str(closed), what="compact"):
        code, result = _diagnose(run_json, closed)
    assert code == 3
    assert result["verdict"] == "in-use"
    assert result["next_commands"] == [
        f"jetstore status {closed}",
        f"jetstore diagnose {closed}   (again, once an offline tool (compact) has ended)",
    ]


def test_database_file_locked_by_another_instance_is_in_use(
    closed: Path, tmp_path: Path, run_json: RunJson
) -> None:
    """A directory holding a hard link to an open instance's database file: "in-use" with
    the file and its holder named, never advice to accept data loss (design D13)."""
    other = tmp_path / "linked"
    other.mkdir()
    os.link(closed / "main.edb", other / "main.edb")
    with jetstore.open(closed, control_socket=False, **SMALL):
        code, result = _diagnose(run_json, other)
        assert code == 3
        assert result["verdict"] == "in-use"
        assert "main.edb" in str(result["summary"])
        assert f"instance '{closed}'" in str(result["summary"])
        assert result["open_by_pid"] == os.getpid()
        assert result["open_error"]["name"] == "FileAccessDenied"  # type: ignore[index]
        assert result["data_loss"] is None
        assert not any("accept-data-loss" in c for c in result["next_commands"])  # type: ignore[attr-defined]
    # Once that instance is closed the file is clean and the linked directory a plain one.
    code, result = _diagnose(run_json, other)
    assert (code, result["verdict"]) == (0, "clean")


def test_not_an_instance_and_missing(tmp_path: Path, run_json: RunJson) -> None:
    code, document = run_json("diagnose", tmp_path)
    assert (code, document["error"]["name"]) == (2, "InvalidPath")
    code, document = run_json("diagnose", tmp_path / "absent")
    assert (code, document["error"]["name"]) == (4, "FileNotFound")


# --------------------------------------------------------------------------- found by diagnose


def test_data_loss_with_no_logs_at_all_raises_the_repair_count(crashed: Path) -> None:
    for name in os.listdir(crashed):
        if name == CURRENT_LOG or parse_generation_log_name(name) is not None:
            (crashed / name).unlink()
    plan = plan_recovery(crashed)
    assert plan.data_loss is not None and plan.data_loss.databases == ["main"]
    with jetstore.open(crashed, accept_data_loss=True, **SMALL) as instance:
        loss = instance.recovery.data_loss  # type: ignore[union-attr]
        assert loss is not None and loss.databases == ["main"]
        assert instance.database("main").file.header.repair_count == 1


def test_more_databases_than_the_checkpoint_file_lists_is_move_away_as_the_open_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open refuses a directory holding more databases than edb.chk lists
    (TooManyOpenDatabases, naming the files to move out); diagnose called it clean, or
    recoverable when the open would recover first and then refuse."""
    from jetstore.instance.instance import Instance

    with jetstore.open(tmp_path / "seed", **OPTIONS) as seed:
        seed.database("seed", create=True)
        seed_file = Path(seed.detach("seed"))
    directory = tmp_path / "instance"
    directory.mkdir()
    for i in range(42):  # 93 bytes each in edb.chk: 42 fit
        shutil.copy(seed_file, directory / (f"db{i:02d}_" + "x" * 58 + ".edb"))
    assert plan_recovery(directory).verdict == "clean"
    with jetstore.open(directory, **OPTIONS) as instance:
        # An older jetstore let a 43rd through, then crashed.
        monkeypatch.setattr(Instance, "_refuse_beyond_the_checkpoint_list", lambda *_: None)
        instance.database("extra_" + "y" * 58, create=True)
        instance.simulate_crash()
    monkeypatch.undo()
    for recovers_first in (True, False):
        plan = plan_recovery(directory)
        assert plan.verdict == "move-away" and not plan.ok
        assert plan.error is not None and plan.error.code == -1027
        assert "'extra_" in plan.summary and "move at least 1 database file(s)" in plan.summary
        assert ("opening recovers every database first" in plan.summary) is recovers_first
        with pytest.raises(JetError) as refused:
            jetstore.open(directory, **OPTIONS)
        assert refused.value.code == -1027


def test_a_backup_set_or_a_restores_staging_directory_is_no_instance_to_diagnose(
    tmp_path: Path, run_json: RunJson
) -> None:
    # Defect: `diagnose` said "recoverable: soft recovery will succeed" of a backup set and
    # of the staging directory a killed restore left, which `jetstore.open` refuses
    # (InvalidPath): the verdict is to name the error opening would raise.
    from jetstore.backup.backupset import RESTORING_MARKER
    from jetstore.backup.restore import STAGING_SUFFIX

    instance = jetstore.open(tmp_path / "live", **OPTIONS)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    _batch(db, 0)
    instance.backup(tmp_path / "set")
    instance.close()
    staging = tmp_path / ("restored" + STAGING_SUFFIX)
    staging.mkdir()
    (staging / RESTORING_MARKER).write_bytes(b"")
    for name in os.listdir(tmp_path / "set"):
        if name != "manifest.json":
            shutil.copy(tmp_path / "set" / name, staging / name)
    for directory in (tmp_path / "set", staging):
        before = snapshot(directory)
        with pytest.raises(JetError) as opened:
            jetstore.open(directory)
        code, document = run_json("diagnose", directory)
        assert code == 2, document
        assert document["error"]["name"] == type(opened.value).__name__ == "InvalidPath"
        assert snapshot(directory) == before

"""`verify_logs` (eseutil /ml): every problem of a log directory reported, nothing written.

Each test builds a real instance directory with small (64 KiB) log files spread over several
generations, damages it the way disks and operators do, and checks the report: which
generation, which file, which offset, which ESE error, which severity. Every verification is
done through `verify_unchanged`, which hashes every file before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import jetstore
from jetstore.errors import BadLogSignature, FileNotFound, InvalidPath, JetError, LogFileCorrupt
from jetstore.format.filenames import CURRENT_LOG, generation_log_name
from jetstore.format.logframe import KIND_FULL, Frame, decode_frame
from jetstore.format.logheader import LOG_HEADER_SIZE
from jetstore.format.positions import LogPosition
from jetstore.instance.diagnosis import logs_needed
from jetstore.io import FileSystem, HandleRegistry
from jetstore.log.reader import scan_to_end, take_inventory
from jetstore.log.verify import GenerationReport, LogProblem, LogVerification, verify_logs

SMALL: dict[str, Any] = {
    "log_file_size": 64 * 1024,
    "checkpoint_depth": 1 << 30,
    "checkpoint_interval": 1e6,
}


# --------------------------------------------------------------------------- helpers


def build(
    directory: Path, *, batches: int = 40, per_batch: int = 30, crash: bool = True, start: int = 0
) -> int:
    """Commit rows over several generations, then crash (or close). Returns the next id."""
    instance = jetstore.open(directory, **SMALL)
    db = instance.database("main", create=True)
    if "t" not in db.table_names():
        db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    n = start
    for _ in range(batches):
        with db.transaction() as txn:
            table = txn.table("t")
            for _ in range(per_batch):
                table.insert({"id": n, "v": f"{n:06d}" * 40})
                n += 1
    if crash:
        instance.simulate_crash()
    else:
        instance.close()
    return n


def snapshot(directory: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(directory))
    }


def verify_unchanged(directory: Path) -> LogVerification:
    """verify_logs, checking that no file changed and no handle stayed open."""
    before = snapshot(directory)
    registry = HandleRegistry("verify-test")
    result = verify_logs(FileSystem(registry), str(directory))
    assert snapshot(directory) == before
    assert registry.open_handles() == []
    json.dumps(result.as_dict())  # always JSON-ready
    return result


def closed_generations(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("edb0"))


def frames_of(path: Path, generation: int) -> list[Frame]:
    """The run of valid frames from the start of a log file (test-side walk)."""
    data = path.read_bytes()
    frames: list[Frame] = []
    offset = LOG_HEADER_SIZE
    while (frame := decode_frame(data, offset, generation)) is not None:
        frames.append(frame)
        offset = frame.next_offset
    return frames


def flip(path: Path, offset: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def report_for(result: LogVerification, file_name: str) -> GenerationReport:
    (report,) = [g for g in result.generations if g.file_name == file_name]
    return report


def errors(result: LogVerification) -> list[LogProblem]:
    return [p for p in result.problems if p.severity == "error"]


def middle_full_frame(path: Path, generation: int) -> Frame:
    """A FULL frame with valid frames after it whose durable_before lies above it."""
    frames = frames_of(path, generation)
    for index, frame in enumerate(frames[:-1]):
        if frame.kind == KIND_FULL and any(
            later.durable_before > frame.offset for later in frames[index + 1 :]
        ):
            return frame
    raise AssertionError(f"no suitable frame in {path.name}: {frames}")


# --------------------------------------------------------------------------- clean


def test_clean_directory_is_ok_with_exact_generations_and_record_counts(tmp_path: Path) -> None:
    n = build(tmp_path, crash=True)
    n = build(tmp_path, batches=15, start=n, crash=False)  # a second run: the chain spans runs
    result = verify_unchanged(tmp_path)

    assert result.ok
    assert result.problems == []
    closed = closed_generations(tmp_path)
    assert len(closed) >= 5
    names = [g.file_name for g in result.generations]
    assert names == [*closed, CURRENT_LOG]
    generations = [g.generation or 0 for g in result.generations]
    assert generations == list(range(1, len(closed) + 2))
    assert (result.first_generation, result.last_generation) == (1, len(closed) + 1)
    assert result.missing == [] and result.missing_files == []
    assert all(g.status == "ok" and g.problems == [] for g in result.generations)
    assert all(g.size == g.log_file_size == 64 * 1024 for g in result.generations)
    assert len({g.signature for g in result.generations}) == 1
    assert result.signature == result.generations[0].signature

    # Record counts agree with the reader (records counted where they end).
    fs = FileSystem(HandleRegistry("reader"))
    records, scan = scan_to_end(
        fs, take_inventory(fs, str(tmp_path), owner="r"), LogPosition(1, 0), owner="r"
    )
    by_generation = Counter(r.end.generation for r in records)
    assert {g.generation: g.records for g in result.generations} == {
        g: by_generation[g] for g in generations
    }
    # 55 committed batches, plus the database and table creation records.
    assert sum(g.records for g in result.generations) >= 55 + 2
    assert scan.tail is not None
    newest = result.generations[-1]
    assert newest.end_offset == scan.tail.end_offset
    # Closed generations end where the next header says they do.
    for report in result.generations[:-1]:
        assert report.end_offset is not None and report.frames > 0

    as_dict = result.as_dict()
    assert as_dict["schema"] == 1
    assert as_dict["ok"] is True
    assert as_dict["counts"] == {"error": 0, "warning": 0, "info": 0}
    assert [g["file_name"] for g in as_dict["generations"]] == names
    assert set(as_dict["generations"][0]) == {
        "generation",
        "file_name",
        "size",
        "log_file_size",
        "created_time",
        "created",
        "signature",
        "records",
        "frames",
        "end_offset",
        "status",
        "needed",
        "problems",
    }
    # Without `needed_from` nothing says where recovery starts: every generation counts.
    assert as_dict["recovery_needs"] == {
        "first_generation": None,
        "first_file": None,
        "reason": None,
    }
    assert {g["needed"] for g in as_dict["generations"]} == {None}


def test_directory_errors_raise_and_empty_directory_is_a_warning(tmp_path: Path) -> None:
    fs = FileSystem(HandleRegistry("v"))
    with pytest.raises(FileNotFound):
        verify_logs(fs, str(tmp_path / "nope"))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(InvalidPath):
        verify_logs(fs, str(tmp_path / "file"))
    empty = tmp_path / "empty"
    empty.mkdir()
    result = verify_unchanged(empty)
    assert result.ok and result.generations == []
    assert [(p.severity, p.error) for p in result.problems] == [("warning", "MissingLogFile")]
    assert result.first_generation is None and result.missing == []


# --------------------------------------------------------------------------- torn tail


def test_torn_tail_of_newest_log_is_ok_with_a_note(tmp_path: Path) -> None:
    build(tmp_path)
    clean = verify_unchanged(tmp_path)
    newest = clean.generations[-1]
    assert newest.file_name == CURRENT_LOG and newest.end_offset is not None
    end = newest.end_offset
    path = tmp_path / CURRENT_LOG
    data = bytearray(path.read_bytes())
    data[end : end + 300] = os.urandom(300)
    path.write_bytes(bytes(data))

    result = verify_unchanged(tmp_path)
    assert result.ok
    report = report_for(result, CURRENT_LOG)
    assert report.status == "torn-tail"
    assert report.end_offset == end
    assert report.records == newest.records
    (note,) = result.problems
    assert (note.severity, note.check, note.error) == ("info", "torn-tail", None)
    assert (note.generation, note.offset, note.file_name) == (newest.generation, end, CURRENT_LOG)
    assert all(g.status == "ok" for g in result.generations[:-1])

    # Recovery agrees on where the log ends.
    assert newest.generation is not None
    with jetstore.open(tmp_path, **SMALL) as instance:
        assert instance.recovery is not None
        assert instance.recovery.torn_tail == LogPosition(newest.generation, end)


def test_damage_in_the_last_flush_is_a_torn_tail_warning(tmp_path: Path) -> None:
    """Frames appended before one sync all carry the same durable_before: damage to one of
    them cannot be told from a torn write, so it is the end of the log, with a warning that
    valid frames after it will be discarded."""
    n = build(tmp_path, crash=False)
    instance = jetstore.open(tmp_path, **SMALL, lazy_flush_interval=1000.0)
    db = instance.database("main")
    for i in range(4):
        with db.transaction() as txn:
            txn.table("t").insert({"id": n + i, "v": "lazy"})
            txn.commit(lazy=i < 3)
    instance.simulate_crash()
    clean = verify_unchanged(tmp_path)
    assert clean.ok and clean.problems == []
    newest = clean.generations[-1]
    assert newest.generation is not None
    frames = frames_of(tmp_path / CURRENT_LOG, newest.generation)
    assert len(frames) == 4
    assert all(f.durable_before == LOG_HEADER_SIZE for f in frames)
    flip(tmp_path / CURRENT_LOG, frames[1].offset + 20)

    result = verify_unchanged(tmp_path)
    assert result.ok
    (problem,) = result.problems
    assert (problem.severity, problem.check) == ("warning", "torn-tail")
    assert (problem.generation, problem.offset) == (newest.generation, frames[1].offset)
    assert str(frames[2].offset) in problem.message
    report = report_for(result, CURRENT_LOG)
    assert (report.status, report.records, report.end_offset) == (
        "torn-tail",
        1,
        frames[1].offset,
    )
    with jetstore.open(tmp_path, **SMALL) as reopened:
        assert reopened.recovery is not None
        assert reopened.recovery.torn_tail == LogPosition(newest.generation, frames[1].offset)


# --------------------------------------------------------------------------- damage


def test_bit_flip_in_closed_generation_is_an_error_at_its_offset(tmp_path: Path) -> None:
    build(tmp_path)
    clean = verify_unchanged(tmp_path)
    name = closed_generations(tmp_path)[2]
    generation = report_for(clean, name).generation
    assert generation is not None
    frame = middle_full_frame(tmp_path / name, generation)
    flip(tmp_path / name, frame.offset + 40)

    result = verify_unchanged(tmp_path)
    assert not result.ok
    (problem,) = errors(result)
    assert (problem.error, problem.code) == ("LogFileCorrupt", LogFileCorrupt.code)
    assert (problem.generation, problem.offset, problem.file_name) == (
        generation,
        frame.offset,
        name,
    )
    assert problem.position == LogPosition(generation, frame.offset)
    report = report_for(result, name)
    assert report.status == "damaged"
    # Verification resumed after the damaged frame: only that frame and its record are lost.
    before = report_for(clean, name)
    assert (report.frames, report.records) == (before.frames - 1, before.records - 1)
    others = [g for g in result.generations if g.file_name != name]
    assert all(g.status == "ok" for g in others)
    assert [g.records for g in others] == [
        g.records for g in clean.generations if g.file_name != name
    ]


def test_bit_flip_in_synced_part_of_newest_generation_is_corruption(tmp_path: Path) -> None:
    n = build(tmp_path, crash=False)
    # A few more durable commits in the newest generation: each one is synced before the next
    # is appended, so later frames vouch (durable_before) for the earlier ones.
    build(tmp_path, batches=4, per_batch=2, start=n, crash=True)
    clean = verify_unchanged(tmp_path)
    newest = clean.generations[-1]
    assert newest.generation is not None and newest.file_name == CURRENT_LOG
    frame = middle_full_frame(tmp_path / CURRENT_LOG, newest.generation)
    flip(tmp_path / CURRENT_LOG, frame.offset + 20)

    result = verify_unchanged(tmp_path)
    assert not result.ok
    (problem,) = errors(result)
    assert (problem.error, problem.check) == ("LogFileCorrupt", "frame")
    assert (problem.generation, problem.offset) == (newest.generation, frame.offset)
    assert report_for(result, CURRENT_LOG).status == "damaged"
    assert not any(p.check == "torn-tail" for p in result.problems)
    # The rest of the newest generation was still verified.
    assert report_for(result, CURRENT_LOG).frames == newest.frames - 1
    with pytest.raises(LogFileCorrupt):
        jetstore.open(tmp_path, **SMALL)


def test_missing_middle_generation_is_named_and_the_rest_verified(tmp_path: Path) -> None:
    build(tmp_path)
    clean = verify_unchanged(tmp_path)
    closed = closed_generations(tmp_path)
    gone = closed[2]
    gone_generation = report_for(clean, gone).generation
    os.unlink(tmp_path / gone)

    result = verify_unchanged(tmp_path)
    assert not result.ok
    (problem,) = errors(result)
    assert (problem.error, problem.check) == ("MissingLogFile", "missing")
    assert problem.file_name == gone and gone in problem.message
    assert problem.generation == gone_generation
    assert result.missing == [gone_generation] and result.missing_files == [gone]
    remaining = [g for g in clean.generations if g.file_name != gone]
    assert [g.file_name for g in result.generations] == [g.file_name for g in remaining]
    for before, after in zip(remaining, result.generations, strict=True):
        assert after.status == "ok"
        assert after.frames == before.frames and after.end_offset == before.end_offset


def test_two_missing_runs_each_reported(tmp_path: Path) -> None:
    build(tmp_path, batches=70)
    closed = closed_generations(tmp_path)
    assert len(closed) >= 7
    for name in (closed[1], closed[4], closed[5]):
        os.unlink(tmp_path / name)
    result = verify_unchanged(tmp_path)
    gaps = [p for p in result.problems if p.check == "missing"]
    assert [p.file_name for p in gaps] == [closed[1], closed[4]]
    assert closed[5] in gaps[1].message
    assert result.missing_files == [closed[1], closed[4], closed[5]]


def test_foreign_generation_is_a_signature_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    build(a)
    build(b)
    name = closed_generations(a)[-2]
    assert (b / name).exists()
    os.replace(b / name, a / name)

    result = verify_unchanged(a)
    assert not result.ok
    (problem,) = errors(result)
    assert (problem.error, problem.code, problem.file_name) == ("BadLogSignature", -530, name)
    report = report_for(result, name)
    assert report.status == "damaged"
    assert report.signature != result.signature
    assert all(g.status == "ok" for g in result.generations if g.file_name != name)


def test_generation_of_a_forked_run_is_a_sequence_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    n = build(a)
    shutil.copytree(a, b)
    os.unlink(b / "jetstore.lock")
    build(a, batches=10, start=n)  # both runs continue the same stream differently
    build(b, batches=10, start=n + 1000)
    closed = closed_generations(a)
    first_new = report_for(verify_unchanged(a), CURRENT_LOG).generation
    assert first_new is not None
    # Replace a generation written after the fork by b's file of the same number.
    forked = [name for name in closed if (b / name).exists()][-1]
    assert (a / forked).read_bytes() != (b / forked).read_bytes()
    os.replace(b / forked, a / forked)

    result = verify_unchanged(a)
    assert not result.ok
    kinds = {p.error for p in errors(result)}
    assert kinds & {"InvalidLogSequence", "LogSequenceChecksumMismatch", "LogFileCorrupt"}
    assert "BadLogSignature" not in kinds  # same stream, another run
    with pytest.raises(jetstore.JetError):
        jetstore.open(a, **SMALL)


def test_truncated_file_is_a_size_error(tmp_path: Path) -> None:
    build(tmp_path)
    name = closed_generations(tmp_path)[1]
    with open(tmp_path / name, "r+b") as f:
        f.truncate(40_000)

    result = verify_unchanged(tmp_path)
    assert not result.ok
    size = [p for p in result.problems if p.check == "size"]
    assert len(size) == 1
    assert (size[0].error, size[0].code, size[0].offset) == ("LogFileSizeMismatch", -541, 40_000)
    report = report_for(result, name)
    assert report.status == "damaged" and report.size == 40_000
    # The next generation records that this one held more: the lost frames are reported too.
    end = [p for p in result.problems if p.check == "end"]
    assert [(p.file_name, p.error) for p in end] == [(name, "LogFileCorrupt")]


def test_unreadable_header_gives_unreadable_status(tmp_path: Path) -> None:
    build(tmp_path)
    closed = closed_generations(tmp_path)
    name = closed[2]
    flip(tmp_path / name, 30)  # inside the header: its checksum fails
    flip(tmp_path / CURRENT_LOG, 100)

    result = verify_unchanged(tmp_path)
    assert not result.ok
    report = report_for(result, name)
    assert report.status == "unreadable"
    assert report.generation == int(name[3:11], 16)
    assert report.end_offset is None and report.signature is None
    current = report_for(result, CURRENT_LOG)
    assert current.status == "unreadable" and current.generation is None
    headers = [p for p in result.problems if p.check == "header"]
    assert sorted((p.file_name, p.error, p.offset) for p in headers) == sorted(
        [(name, "LogFileCorrupt", 0), (CURRENT_LOG, "LogFileCorrupt", 0)]
    )
    # A file with an unreadable header is present: it is not "missing".
    assert result.missing == []
    assert not any(p.check == "missing" for p in result.problems)
    assert all(
        g.status == "ok" for g in result.generations if g.file_name not in (name, CURRENT_LOG)
    )


def test_two_independent_problems_are_both_reported(tmp_path: Path) -> None:
    build(tmp_path)
    closed = closed_generations(tmp_path)
    damaged, truncated = closed[0], closed[3]
    frame = middle_full_frame(tmp_path / damaged, 1)
    flip(tmp_path / damaged, frame.offset + 17)
    with open(tmp_path / truncated, "r+b") as f:
        f.truncate(50_000)

    result = verify_unchanged(tmp_path)
    assert not result.ok
    by_file = {(p.file_name, p.check) for p in errors(result)}
    assert (damaged, "frame") in by_file
    assert (truncated, "size") in by_file
    frame_problem = next(p for p in errors(result) if p.check == "frame")
    assert (frame_problem.generation, frame_problem.offset) == (1, frame.offset)
    # Sorted by generation, then offset.
    keys = [(p.generation, p.offset or -1) for p in result.problems]
    assert keys == sorted(keys)
    assert report_for(result, damaged).status == "damaged"
    assert report_for(result, truncated).status == "damaged"


def test_misnamed_generations_are_reported(tmp_path: Path) -> None:
    build(tmp_path)
    closed = closed_generations(tmp_path)
    first, second = closed[1], closed[2]
    os.replace(tmp_path / first, tmp_path / "swap")
    os.replace(tmp_path / second, tmp_path / first)
    os.replace(tmp_path / "swap", tmp_path / second)

    result = verify_unchanged(tmp_path)
    mismatches = [p for p in result.problems if p.error == "LogGenerationMismatch"]
    assert sorted(str(p.file_name) for p in mismatches) == [first, second]
    assert all(p.generation == int(str(p.file_name)[3:11], 16) for p in mismatches)
    assert result.missing == []


def test_file_names_in_problems_are_real_names(tmp_path: Path) -> None:
    build(tmp_path)
    os.unlink(tmp_path / generation_log_name(2))
    result = verify_unchanged(tmp_path)
    assert result.problems[0].file_name == generation_log_name(2)


def test_random_damage_never_raises_and_never_writes(tmp_path: Path) -> None:
    source = tmp_path / "source"
    build(source)
    rng = random.Random(20261122)
    for round_ in range(40):
        directory = tmp_path / f"round{round_}"
        shutil.copytree(source, directory)
        logs = sorted(n for n in os.listdir(directory) if n.endswith(".log"))
        damaged: set[str] = set()
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(logs)
            path = directory / name
            data = bytearray(path.read_bytes())
            choice = rng.random()
            if choice < 0.5:
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            elif choice < 0.75:
                data = data[: rng.randrange(len(data))]
            else:
                start = rng.randrange(len(data))
                data[start : start + 512] = os.urandom(512)
            if bytes(data) != path.read_bytes():
                path.write_bytes(bytes(data))
                damaged.add(name)
        result = verify_unchanged(directory)
        for report in result.generations:
            if report.file_name not in damaged and report.file_name != CURRENT_LOG:
                # An undamaged closed file is never unreadable, whatever its neighbours hold.
                assert report.status != "unreadable"
            if report.status == "damaged":
                assert any(p.severity == "error" for p in report.problems)
        shutil.rmtree(directory)


# --------------------------------------------------------------------------- what recovery needs


def test_problems_below_where_recovery_starts_are_warnings_at_the_boundary(
    tmp_path: Path,
) -> None:
    """`needed_from` turns problems that concern only generations recovery does not read
    into warnings. A broken link is recorded in the later generation's header but concerns
    the generation before it: when recovery starts at the later one, it never checks that
    link. When recovery reads the earlier one too, the problem stays an error."""
    a, b = tmp_path / "a", tmp_path / "b"
    n = build(a)
    shutil.copytree(a, b)
    os.unlink(b / "jetstore.lock")
    build(a, batches=10, start=n)
    build(b, batches=10, start=n + 1000)
    closed = closed_generations(a)
    forked = [name for name in closed if (b / name).exists()][-1]
    os.replace(b / forked, a / forked)
    plain = verify_unchanged(a)
    forked_generation = report_for(plain, forked).generation
    assert forked_generation is not None
    (link,) = errors(plain)
    assert (link.check, link.generation) == ("sequence", forked_generation + 1)
    fs = FileSystem(HandleRegistry("verify-test"))

    start = forked_generation + 1
    below = verify_logs(fs, str(a), needed_from=start, needed_reason="test reason")
    assert below.ok and not errors(below)
    (warning,) = [p for p in below.problems if p.check == "sequence"]
    assert (warning.severity, warning.needed, warning.error) == (
        "warning",
        False,
        "InvalidLogSequence",
    )
    assert f"recovery no longer needs generation {forked_generation}" in warning.message
    assert f"it starts reading at generation {start}: test reason" in warning.message
    assert report_for(below, forked).needed is False
    assert report_for(below, CURRENT_LOG).needed is True
    assert below.as_dict()["recovery_needs"] == {
        "first_generation": start,
        "first_file": CURRENT_LOG,
        "reason": "test reason",
    }

    at = verify_logs(fs, str(a), needed_from=forked_generation, needed_reason="test reason")
    assert not at.ok
    assert [(p.check, p.needed) for p in errors(at)] == [("sequence", True)]

    # Unknown: as before, every problem keeps its severity and `needed` is None.
    unknown = verify_logs(fs, str(a))
    assert [(p.severity, p.check, p.message) for p in unknown.problems] == [
        (p.severity, p.check, p.message) for p in plain.problems
    ]
    assert {p.needed for p in unknown.problems} == {None}


def test_stream_signature_is_the_lowest_generations_not_the_majoritys(tmp_path: Path) -> None:
    """More foreign generations than the instance's own: recovery still takes the stream's
    signature from the lowest generation and refuses at the first foreign one, so that is
    what verification reports (a majority vote would call the foreign files healthy and the
    instance's own generations foreign)."""
    a, b = tmp_path / "a", tmp_path / "b"
    build(a)
    build(b)
    foreign = [*closed_generations(a)[2:], CURRENT_LOG]
    assert len(foreign) > len(closed_generations(a)) + 1 - len(foreign)
    for name in foreign:
        os.replace(b / name, a / name)
    own = closed_generations(a)[:2]

    result = verify_unchanged(a)
    assert result.signature == report_for(result, own[0]).signature
    assert [(p.error, p.file_name, p.offset) for p in errors(result)] == [
        ("BadLogSignature", name, 24) for name in foreign
    ]
    assert all(report_for(result, name).status == "ok" for name in own)
    assert all(report_for(result, name).status == "damaged" for name in foreign)
    first = errors(result)[0]
    assert "the lowest generation present, whose signature recovery takes" in first.message
    assert own[0] in first.message and f"Move {foreign[0]} out of the directory" in first.message
    # What a real open does: the stream is the lowest generation's; refused at the first
    # foreign generation, the one verification names first.
    with pytest.raises(BadLogSignature) as refused:
        jetstore.open(a, **SMALL)
    assert refused.value.path is not None and refused.value.path.endswith(foreign[0])


def test_a_foreign_lowest_generation_is_the_stream_as_recovery_takes_it(tmp_path: Path) -> None:
    """A stray file of another stream as the lowest generation: recovery takes its signature
    for the stream's and refuses the instance's own logs; verification reports the same
    generations as foreign and names the lowest file as the one that sets the stream."""
    a, b = tmp_path / "a", tmp_path / "b"
    build(a)
    build(b)
    stray = closed_generations(a)[0]
    os.replace(b / stray, a / stray)
    fs = FileSystem()

    needs = logs_needed(fs, str(a), owner="verify-test")
    assert needs.first_generation is None  # recovery refuses: every generation is needed
    result = verify_logs(fs, str(a), needed_from=needs.first_generation)
    assert result.signature == report_for(result, stray).signature
    assert report_for(result, stray).status == "ok"
    foreign = {p.file_name for p in errors(result) if p.error == "BadLogSignature"}
    assert foreign == {*closed_generations(a)[1:], CURRENT_LOG}
    assert all(f"if {stray} is the stray file, move that one" in p.message for p in errors(result))
    with pytest.raises(JetError):
        jetstore.open(a, **SMALL)


def test_a_foreign_file_below_where_recovery_starts_is_a_warning(tmp_path: Path) -> None:
    """A file of another stream that recovery does not read (below where it starts, above the
    lowest generation, which sets the stream) cannot stop recovery: a warning that says to
    move it away, and a real open agrees."""
    a, b = tmp_path / "a", tmp_path / "b"
    build(a, crash=False)  # a clean shutdown: recovery reads only the newest generation
    build(b)
    name = closed_generations(a)[1]
    os.replace(b / name, a / name)
    fs = FileSystem()

    needs = logs_needed(fs, str(a), owner="verify-test")
    assert needs.first_generation is not None and needs.first_generation > 2
    result = verify_logs(fs, str(a), needed_from=needs.first_generation, needed_reason=needs.reason)
    assert result.ok and not errors(result)
    (problem,) = [p for p in result.problems if p.check == "signature"]
    assert (problem.severity, problem.error, problem.needed, problem.file_name) == (
        "warning",
        "BadLogSignature",
        False,
        name,
    )
    assert "recovery no longer needs generation 2" in problem.message
    assert f"move {name} out of the directory" in problem.message
    # The advice is given once (the note's), not also the one for a file recovery reads.
    assert len(re.findall(r"\bmove\b", problem.message, re.IGNORECASE)) == 1, problem.message
    assert "is the stray file" not in problem.message
    assert report_for(result, name).status == "damaged"
    with jetstore.open(a, **SMALL) as instance:
        assert instance.recovery is not None and not instance.recovery.needed
    # Without knowing where recovery starts, the foreign file stays an error, with the
    # advice for a file recovery reads.
    (unknown,) = errors(verify_logs(fs, str(a)))
    assert unknown.file_name == name
    assert f"Move {name} out of the directory, or, if " in unknown.message
    assert len(re.findall(r"\bmove\b", unknown.message, re.IGNORECASE)) == 2  # it or the lowest

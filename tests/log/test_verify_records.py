"""`verify_logs` decodes every record: a frame whose checksum holds around bytes that are no
record (a writer's bug, a newer engine's record type) is reported where it starts, as
recovery would refuse it, and never passes as "ok".

The logs are written here frame by frame (`write_stream`: real headers, a chain that links,
valid checksums around any payload), so every kind of bad record can be placed anywhere,
including a record split over several generations. On real instances
(`crashed_with_bad_last_commit`), recovery refuses the same record at the same position,
as `LogFileCorrupt`, and with accept_data_loss stops before it.
"""

from __future__ import annotations

import json
import struct
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jetstore
from jetstore.cli.main import run
from jetstore.errors import LogFileCorrupt
from jetstore.format.common import Signature
from jetstore.format.filenames import CURRENT_LOG, generation_log_name
from jetstore.format.logframe import (
    KIND_FIRST,
    KIND_FULL,
    KIND_LAST,
    KIND_MIDDLE,
    accumulate,
    decode_frame,
    encode_frame,
    max_payload_for,
    padded_size,
)
from jetstore.format.logheader import (
    LOG_HEADER_SIZE,
    LogFileHeader,
    decode_log_header,
    encode_log_header,
)
from jetstore.format.logrecords import (
    OP_DELETE,
    OP_PUT,
    RECORD_COMMIT,
    decode_record,
    encode_attach_database,
    encode_commit,
    encode_create_database,
    encode_detach_database,
    encode_start,
)
from jetstore.format.positions import LogPosition
from jetstore.io import FileSystem, HandleRegistry
from jetstore.log.verify import LogProblem, LogVerification, verify_logs

SIGNATURE = Signature(bytes(range(16)), 1_700_000_000_000_000)
SMALL_FILE = 64 * 1024

Frames = list[tuple[int, bytes]]


def write_stream(directory: Path, generations: list[Frames], *, size: int = SMALL_FILE) -> None:
    """Log files holding these (kind, payload) frames, one list per generation from 1 on; the
    last is `edb.log`. Headers link (creation time, end, running checksum) as the writer's."""
    directory.mkdir(exist_ok=True)
    created_before = end_before = checksum_before = 0
    for index, frames in enumerate(generations):
        generation = index + 1
        created = SIGNATURE.time_us + generation
        header = LogFileHeader(
            generation=generation,
            log_signature=SIGNATURE,
            created_time=created,
            log_file_size=size,
            previous_generation_created_time=created_before,
            previous_generation_end=end_before,
            previous_generation_checksum=checksum_before,
        )
        name = CURRENT_LOG if index == len(generations) - 1 else generation_log_name(generation)
        checksum = 0
        with (directory / name).open("wb") as file:
            file.write(encode_log_header(header))
            offset = LOG_HEADER_SIZE
            for kind, payload in frames:
                frame, crc = encode_frame(generation, offset, offset, kind, payload)
                file.write(frame)
                offset += len(frame)
                checksum = accumulate(checksum, crc)
            assert offset <= size
            file.truncate(size)
        created_before, end_before, checksum_before = created, offset, checksum


def verify(directory: Path) -> LogVerification:
    registry = HandleRegistry("verify-records-test")
    result = verify_logs(FileSystem(registry), str(directory))
    assert registry.open_handles() == []
    return result


def record_problems(result: LogVerification) -> list[LogProblem]:
    return [p for p in result.problems if p.check == "record"]


def start() -> bytes:
    return encode_start(SIGNATURE.time_us)


def commit(*operations: tuple[int, bytes, bytes | None], txn: int = 7) -> bytes:
    return encode_commit(1, txn, SIGNATURE.time_us, list(operations))


GOOD = commit((OP_PUT, b"key", b"value"), (OP_DELETE, b"gone", None))


def _value_length_past_end() -> bytes:
    record = bytearray(commit((OP_PUT, b"k", b"v" * 10)))
    struct.pack_into("<I", record, 25 + 3 + 1, 11)  # the PUT's value length, one too many
    return bytes(record)


#: (what is wrong, the record, what the problem says): each decodes to LogFileCorrupt.
BAD_RECORDS = [
    ("unknown record type", bytes([9]) + GOOD[1:], "unknown record type 9"),
    ("unknown operation", GOOD[:25] + bytes([7]) + GOOD[26:], "unknown operation 7"),
    ("trailing bytes", GOOD + b"\0\0", "2 trailing bytes"),
    ("commit head cut short", GOOD[:20], "undecodable log record"),
    ("operation cut short", GOOD[:-3], "undecodable log record"),
    ("value length past the end", _value_length_past_end(), "runs past the end"),
    ("start record too long", start() + b"\0", "bad length"),
    (
        "database name not utf-8",
        encode_create_database(1, 8192, bytes(16), 5, "ab")[:-2] + b"\xff\xfe",
        "utf-8",
    ),
    ("name length past the end", encode_attach_database(2, bytes(16), 5, "main")[:-1], "name"),
    ("empty record", b"", "undecodable log record"),
]


def test_clean_hand_written_stream_is_ok(tmp_path: Path) -> None:
    write_stream(tmp_path, [[(KIND_FULL, start()), (KIND_FULL, GOOD)], [(KIND_FULL, GOOD)]])
    result = verify(tmp_path)
    assert result.ok, result.problems
    assert [g.records for g in result.generations] == [2, 1]


@pytest.mark.parametrize(("what", "record", "says"), BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_a_record_that_does_not_decode_is_an_error_at_its_position(
    tmp_path: Path, what: str, record: bytes, says: str
) -> None:
    # In a closed generation, between good records: the frames around it all verify.
    write_stream(
        tmp_path,
        [[(KIND_FULL, start()), (KIND_FULL, record), (KIND_FULL, GOOD)], [(KIND_FULL, GOOD)]],
    )
    with pytest.raises(LogFileCorrupt):
        decode_record(record)
    result = verify(tmp_path)
    assert not result.ok
    (problem,) = result.errors
    assert problem.check == "record"
    assert (problem.error, problem.code) == ("LogFileCorrupt", -501)
    assert problem.file_name == generation_log_name(1)
    assert problem.position == LogPosition(1, LOG_HEADER_SIZE + padded_size(len(start())))
    assert str(problem.position) in problem.message
    assert says in problem.message
    assert "jetstore dump logs" in problem.message  # the way out
    report = result.generations[0]
    assert report.status == "damaged" and report.records == 3
    assert result.generations[1].status == "ok"


def test_only_the_first_undecodable_record_of_each_generation_is_reported(
    tmp_path: Path,
) -> None:
    bad = bytes([9]) + GOOD[1:]
    write_stream(
        tmp_path,
        [
            [(KIND_FULL, bad), (KIND_FULL, GOOD + b"\0"), (KIND_FULL, bad)],
            [(KIND_FULL, GOOD)],
            [(KIND_FULL, GOOD), (KIND_FULL, GOOD[:10])],
        ],
    )
    problems = record_problems(verify(tmp_path))
    assert [(p.generation, p.offset) for p in problems] == [
        (1, LOG_HEADER_SIZE),
        (3, LOG_HEADER_SIZE + padded_size(len(GOOD))),
    ]
    assert [p.file_name for p in problems] == [generation_log_name(1), CURRENT_LOG]
    assert "unknown record type 9" in problems[0].message


def test_a_record_split_over_generations_is_decoded_whole_and_reported_where_it_starts(
    tmp_path: Path,
) -> None:
    good = commit((OP_PUT, b"k" * 100, b"v" * 3000))
    bad = good + b"\x01"  # one trailing byte: only the whole record shows it
    for record, ok in ((good, True), (bad, False)):
        directory = tmp_path / ("good" if ok else "bad")
        write_stream(
            directory,
            [
                [(KIND_FULL, start()), (KIND_FIRST, record[:1000])],
                [(KIND_MIDDLE, record[1000:2000])],
                [(KIND_LAST, record[2000:]), (KIND_FULL, GOOD)],
            ],
        )
        result = verify(directory)
        assert result.ok is ok, result.problems
        assert [g.records for g in result.generations] == [1, 0, 2]
        if not ok:
            (problem,) = record_problems(result)
            assert problem.file_name == generation_log_name(1)
            assert problem.position == LogPosition(1, LOG_HEADER_SIZE + padded_size(len(start())))
            assert "1 trailing bytes" in problem.message


def test_a_torn_record_at_the_end_of_the_log_is_not_decoded(tmp_path: Path) -> None:
    # Never acknowledged (no LAST frame): recovery ignores it, whatever its bytes.
    write_stream(tmp_path, [[(KIND_FULL, start()), (KIND_FIRST, bytes([9]) * 100)]])
    result = verify(tmp_path)
    assert result.ok and record_problems(result) == []


def test_a_record_after_damage_in_its_generation_is_not_pieced_together(tmp_path: Path) -> None:
    # A record whose FIRST frame is followed by a new record: interrupted ("records" error);
    # its piece is never decoded as if it were whole.
    write_stream(tmp_path, [[(KIND_FIRST, GOOD[:10]), (KIND_FULL, GOOD)], [(KIND_FULL, GOOD)]])
    result = verify(tmp_path)
    assert [p.check for p in result.errors] == ["records"]


def test_a_64_mib_record_over_generations_is_decoded_with_one_copy_of_it(tmp_path: Path) -> None:
    size = 5 * 1024 * 1024
    value = bytes(64 * 1024 * 1024 - 64)
    # One huge value and many small operations: neither is built while it is decoded.
    small = [(OP_PUT, i.to_bytes(4, "big"), b"") for i in range(5_000)]
    record = commit((OP_PUT, b"big", value), *small)
    del value
    room = max_payload_for(size - LOG_HEADER_SIZE)
    pieces = [record[i : i + room] for i in range(0, len(record), room)]
    generations: list[Frames] = [[(KIND_FIRST, pieces[0])]]
    generations += [[(KIND_MIDDLE, piece)] for piece in pieces[1:-1]]
    generations.append([(KIND_LAST, pieces[-1]), (KIND_FULL, GOOD)])
    record_size, files = len(record), len(pieces)
    del record
    write_stream(tmp_path, generations, size=size)
    del generations, pieces
    tracemalloc.start()
    try:
        result = verify(tmp_path)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok, result.problems
    assert len(result.generations) == files
    # The record gathered once (its buffer grows by up to an eighth), the log file read and
    # a frame's payload: a second copy of the record, or its operations built, is far above.
    assert peak < record_size + 4 * size, peak


# --------------------------------------------------------------------------- real instances


def _count_minus_one(record: bytearray) -> None:
    count = struct.unpack_from("<I", record, 21)[0]
    struct.pack_into("<I", record, 21, count - 1)


def _count_plus_one(record: bytearray) -> None:
    count = struct.unpack_from("<I", record, 21)[0]
    struct.pack_into("<I", record, 21, count + 1)


def _first_value_longer(record: bytearray) -> None:
    (key_length,) = struct.unpack_from("<H", record, 26)
    (value_length,) = struct.unpack_from("<I", record, 28 + key_length)
    struct.pack_into("<I", record, 28 + key_length, len(record) + value_length)


def _set(index: int, byte: int) -> Callable[[bytearray], None]:
    def mutate(record: bytearray) -> None:
        record[index] = byte

    return mutate


#: Same-length damage to a real commit record (its frame is resealed around it).
MUTATIONS: dict[str, Callable[[bytearray], None]] = {
    "unknown record type": _set(0, 9),
    "start record type": _set(0, 4),
    "create record type": _set(0, 2),
    "unknown operation": _set(25, 7),
    "one operation fewer": _count_minus_one,
    "one operation more": _count_plus_one,
    "value length past the end": _first_value_longer,
}


def crashed_with_bad_last_commit(directory: Path, mutate: Callable[[bytearray], None]) -> int:
    """A crashed instance whose last commit (in edb.log) has a valid frame around a record
    `mutate` broke; returns that frame's offset."""
    instance = jetstore.open(directory, log_file_size=SMALL_FILE)
    db = instance.database("main", create=True)
    db.create_table("t", [("id", "int"), ("v", "text")], primary_key="id")
    for i in range(3):
        with db.transaction() as txn:
            txn.table("t").insert({"id": i, "v": f"row {i}"})
    instance.simulate_crash()
    log = directory / CURRENT_LOG
    data = bytearray(log.read_bytes())
    generation = decode_log_header(bytes(data[:LOG_HEADER_SIZE]), path=str(log)).generation
    offset, last = LOG_HEADER_SIZE, None
    while (frame := decode_frame(bytes(data), offset, generation)) is not None:
        if frame.payload[:1] == bytes([RECORD_COMMIT]):
            last = frame
        offset = frame.next_offset
    assert last is not None and last.kind == KIND_FULL
    payload = bytearray(last.payload)
    mutate(payload)
    frame_bytes, _ = encode_frame(
        generation, last.offset, last.durable_before, KIND_FULL, bytes(payload)
    )
    assert len(frame_bytes) == last.next_offset - last.offset
    data[last.offset : last.next_offset] = frame_bytes
    log.write_bytes(bytes(data))
    return last.offset


@pytest.mark.parametrize("what", list(MUTATIONS))
def test_verify_reports_where_recovery_refuses(tmp_path: Path, what: str) -> None:
    offset = crashed_with_bad_last_commit(tmp_path, MUTATIONS[what])
    result = verify(tmp_path)
    (problem,) = result.errors
    assert (problem.check, problem.file_name, problem.offset) == ("record", CURRENT_LOG, offset)
    with pytest.raises(LogFileCorrupt) as refused:
        jetstore.open(tmp_path, log_file_size=SMALL_FILE)
    assert refused.value.code == -501
    # Where the record starts, as `logs verify` and `dump logs --records` name it (replay
    # named the end of the record: the next record's position).
    assert f"at log position {problem.position}:" in refused.value.detail
    assert "jetstore dump logs" in refused.value.hint


def test_logs_verify_command_reports_the_record_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    offset = crashed_with_bad_last_commit(tmp_path, MUTATIONS["unknown operation"])
    capsys.readouterr()
    assert run(["logs", "verify", str(tmp_path), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    (problem,) = [p for p in document["result"]["problems"] if p["severity"] == "error"]
    assert problem["check"] == "record"
    assert (problem["error"], problem["code"]) == ("LogFileCorrupt", -501)
    assert (problem["generation"], problem["offset"]) == (1, offset)
    assert "unknown operation 7" in problem["message"]
    assert run(["logs", "verify", str(tmp_path)]) == 1
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert f"{CURRENT_LOG} @ {offset} LogFileCorrupt (-501)" in text
    assert "undecodable log record at log position 00000001:" in text


def read_ids(instance: jetstore.Instance) -> list[int]:
    with instance.database("main").transaction() as txn:
        return [row["id"] for row in txn.table("t").scan()]


def test_a_bad_record_of_a_database_recreated_from_the_log_stops_replay(tmp_path: Path) -> None:
    """The file of a database the replayed log creates is gone: recovery makes it again from
    the CREATE record and keeps its records until the scan ends. A bad one among them was
    found only then, after the scan: with accept_data_loss the refusal escaped instead of
    replay stopping before the record, and without it a half-made file was left behind."""
    offset = crashed_with_bad_last_commit(tmp_path, MUTATIONS["unknown operation"])
    (tmp_path / "main.edb").unlink()
    with pytest.raises(LogFileCorrupt, match=f"at log position 00000001:{offset:08X}:"):
        jetstore.open(tmp_path, log_file_size=SMALL_FILE)
    assert not (tmp_path / "main.edb").exists()
    with jetstore.open(tmp_path, log_file_size=SMALL_FILE, accept_data_loss=True) as instance:
        assert instance.recovery is not None and instance.recovery.data_loss is not None
        assert read_ids(instance) == [0, 1]


def append_record(directory: Path, payload: bytes) -> LogPosition:
    """A FULL frame holding `payload` after the last valid frame of `edb.log`."""
    log = directory / CURRENT_LOG
    data = bytearray(log.read_bytes())
    generation = decode_log_header(bytes(data[:LOG_HEADER_SIZE]), path=str(log)).generation
    offset = LOG_HEADER_SIZE
    while (frame := decode_frame(bytes(data), offset, generation)) is not None:
        offset = frame.next_offset
    frame_bytes, _ = encode_frame(generation, offset, offset, KIND_FULL, payload)
    data[offset : offset + len(frame_bytes)] = frame_bytes
    log.write_bytes(bytes(data))
    return LogPosition(generation, offset)


#: Records that decode field by field but that this engine never writes: a database name it
#: refuses (a NUL made recovery fail with a bare ValueError from the file system, a "/" or
#: an empty name made it create files outside the naming scheme) or a page size it has not.
NEVER_WRITTEN = {
    "name with a NUL": encode_create_database(5, 8192, b"r" * 16, 5, "x\x00y"),
    "name with a slash": encode_create_database(5, 8192, b"r" * 16, 5, "a/b"),
    "empty name": encode_create_database(5, 8192, b"r" * 16, 5, ""),
    "dot-dot name": encode_create_database(5, 8192, b"r" * 16, 5, ".."),
    "page size 3": encode_create_database(5, 3, b"r" * 16, 5, "other"),
    "attach of a name with a NUL": encode_attach_database(9, b"q" * 16, 5, "a\x00"),
    "detach of a name with a slash": encode_detach_database(9, b"q" * 16, 5, "../main"),
}


@pytest.mark.parametrize("what", list(NEVER_WRITTEN))
def test_a_record_this_engine_never_writes_is_refused_where_it_is(
    tmp_path: Path, what: str
) -> None:
    crashed_with_bad_last_commit(tmp_path, lambda record: None)
    position = append_record(tmp_path, NEVER_WRITTEN[what])
    (problem,) = verify(tmp_path).errors
    assert (problem.check, problem.position) == ("record", position)
    with pytest.raises(LogFileCorrupt, match=f"at log position {position}:"):
        jetstore.open(tmp_path, log_file_size=SMALL_FILE)
    assert [p.name for p in tmp_path.glob("*.edb*")] == ["main.edb"]
    with jetstore.open(tmp_path, log_file_size=SMALL_FILE, accept_data_loss=True) as instance:
        assert instance.recovery is not None and instance.recovery.data_loss is not None
        assert read_ids(instance) == [0, 1, 2]


#: Commit records that decode but hold an entry no tree of the database holds: the engine
#: refuses such a write before it logs it, so the record is no record it wrote. Replay
#: failed with InvalidParameter and no position, in a batch after the record, and
#: accept_data_loss did not stop before it.
OVERSIZED = {
    "key over 1024 bytes": (OP_PUT, b"k" * 1025, b"v"),
    "entry over half a page": (OP_PUT, b"k", b"v" * 8000),
}


@pytest.mark.parametrize("recreated", [False, True], ids=["file present", "file re-created"])
@pytest.mark.parametrize("what", list(OVERSIZED))
def test_a_commit_no_tree_can_hold_is_refused_where_it_is(
    tmp_path: Path, what: str, recreated: bool
) -> None:
    crashed_with_bad_last_commit(tmp_path, lambda record: None)
    position = append_record(tmp_path, encode_commit(1, 99, 5, [OVERSIZED[what]]))
    if recreated:
        (tmp_path / "main.edb").unlink()
    with pytest.raises(LogFileCorrupt, match=f"at log position {position}:") as refused:
        jetstore.open(tmp_path, log_file_size=SMALL_FILE)
    assert "main" in refused.value.detail and "jetstore dump logs" in refused.value.hint
    assert [p.name for p in tmp_path.glob("*.edb*")] == ([] if recreated else ["main.edb"])
    with jetstore.open(tmp_path, log_file_size=SMALL_FILE, accept_data_loss=True) as instance:
        assert instance.recovery is not None and instance.recovery.data_loss is not None
        assert read_ids(instance) == [0, 1, 2]


SEEDS = [
    GOOD,
    start(),
    encode_create_database(2, 8192, b"r" * 16, 5, "other"),
    *[bad for _what, bad, _says in BAD_RECORDS],
]


@settings(max_examples=60)
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=3),
    cut=st.integers(0, 200),
    split=st.integers(1, 100),
)
def test_verify_reports_a_record_exactly_when_the_decoder_refuses_it(
    seed: bytes, edits: list[tuple[int, int]], cut: int, split: int
) -> None:
    """Random bytes in valid frames, whole or split over two generations: `verify_logs`
    never raises, and reports the record exactly when `decode_record` refuses it."""
    record = bytearray(seed)
    for index, value in edits:
        if record:
            record[index % len(record)] = value
    payload = bytes(record[: len(record) - cut % (len(record) + 1)])
    try:
        decode_record(payload)
        refused = False
    except LogFileCorrupt:
        refused = True
    at = split % (len(payload) + 1)
    frames = (
        [[(KIND_FULL, payload)], [(KIND_FULL, GOOD)]]
        if at == 0 or at == len(payload)
        else [[(KIND_FIRST, payload[:at])], [(KIND_LAST, payload[at:]), (KIND_FULL, GOOD)]]
    )
    with tempfile.TemporaryDirectory() as directory:
        write_stream(Path(directory), frames)
        result = verify(Path(directory))
    problems = record_problems(result)
    assert result.ok is not refused and len(problems) == int(refused)
    if refused:
        assert problems[0].position == LogPosition(1, LOG_HEADER_SIZE)


def test_checksum_checks_checksums_only_and_leaves_records_to_logs_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Defect: `checksum` (esentutl /k) shares `verify_logs` with `logs verify` and reported
    # an undecodable record inside frames whose checksums all hold as a bad block (exit 1).
    record = BAD_RECORDS[0][1]
    write_stream(
        tmp_path,
        [[(KIND_FULL, start()), (KIND_FULL, record), (KIND_FULL, GOOD)], [(KIND_FULL, GOOD)]],
    )
    log = tmp_path / generation_log_name(1)
    code = run(["checksum", str(log), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0, document
    assert document["result"]["problems"] == []
    assert document["result"]["files"][0]["status"] == "ok"
    assert document["result"]["files"][0]["frames"] == 3
    code = run(["logs", "verify", str(tmp_path), "--json"])
    document = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [p["check"] for p in document["result"]["problems"]] == ["record"]

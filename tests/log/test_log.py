"""Log writer and reader: generations, rolls, group commit, tail detection, chain checks."""

from __future__ import annotations

import os
import random
import threading

import pytest

from jetstore.errors import (
    BadLogSignature,
    InvalidLogSequence,
    LogFileCorrupt,
    LogWriteFail,
    MissingLogFile,
)
from jetstore.format.common import Signature
from jetstore.format.filenames import CURRENT_LOG, generation_log_name
from jetstore.format.positions import LogPosition
from jetstore.io import FileSystem, HandleRegistry, IOEvent
from jetstore.log.reader import LogScanner, scan_to_end, take_inventory
from jetstore.log.writer import DATA_START, LogConfig, LogTail, LogWriter

SIZE = 64 * 1024


def make_writer(
    directory: str,
    tail: LogTail | None = None,
    signature: Signature | None = None,
    fs=None,
    size: int = SIZE,
) -> LogWriter:
    fs = fs or FileSystem(HandleRegistry("test"))
    config = LogConfig(directory, size, 8192, False, signature or Signature.new())
    writer = LogWriter(fs, config, owner="log")
    writer.start(tail)
    return writer


def read_all(directory: str, start: LogPosition | None = None, signature=None):
    start = start or LogPosition(1, 0)
    fs = FileSystem(HandleRegistry("reader"))
    inventory = take_inventory(fs, directory, owner="r")
    return scan_to_end(fs, inventory, start, owner="r", signature=signature)


def test_records_round_trip_across_generations(tmp_path):
    d = str(tmp_path)
    w = make_writer(d)
    rng = random.Random(1)
    payloads = [rng.randbytes(rng.choice([10, 500, 5000, 70000, 200000])) for _ in range(60)]
    ends = []
    for p in payloads:
        ends.append(w.append(p))
        if rng.random() < 0.3:
            w.flush()
    w.close()
    records, result = read_all(d, signature=w.signature)
    assert [r.payload for r in records] == payloads
    assert [r.end for r in records] == ends
    assert result.tail is not None and result.tail.generation == w.current_generation
    assert result.torn_tail is False
    assert w.rolls > 5
    names = os.listdir(d)
    assert CURRENT_LOG in names and generation_log_name(1) in names


def test_bytearray_records_and_views_round_trip(tmp_path):
    """A large commit record comes as a bytearray (`encode_commit_*` from
    BUFFERED_RECORD_OPERATIONS operations on); small ones too must fit where they fall. Every
    frame's piece is a view of the record, not a copy: the bytes written and the chain's
    checksums are those of the record as given."""
    d = str(tmp_path)
    w = make_writer(d)
    rng = random.Random(2)
    payloads = [rng.randbytes(rng.choice([10, 3000, 70000, 300000])) for _ in range(40)]
    for i, p in enumerate(payloads):
        w.append(bytearray(p) if i % 2 else p)
        if rng.random() < 0.3:
            w.flush()
    w.close()
    records, result = read_all(d, signature=w.signature)
    assert [r.payload for r in records] == payloads
    assert result.torn_tail is False and w.rolls > 5


def test_reopen_starts_new_generation_and_chains(tmp_path):
    d = str(tmp_path)
    w = make_writer(d)
    sig = w.signature
    first = [os.urandom(100) for _ in range(10)]
    for p in first:
        w.append(p)
    w.close()
    records, result = read_all(d)
    w2 = make_writer(d, tail=result.tail, signature=sig)
    assert w2.current_generation == result.tail.generation + 1
    second = [os.urandom(3000) for _ in range(50)]
    for p in second:
        w2.append(p)
    w2.close()
    records, result = read_all(d, signature=sig)
    assert [r.payload for r in records] == first + second


def test_a_smaller_log_file_size_after_a_reopen_chains_to_the_larger_generation(tmp_path):
    """The option may change between opens, each file keeping its own size: the new, smaller
    generation's header records where the larger one before it ends, beyond its own size.
    That link used to be refused as a damaged header, and the open failed."""
    d = str(tmp_path)
    w = make_writer(d, size=4 * SIZE)
    sig = w.signature
    first = [os.urandom(1000) for _ in range(150)]  # beyond SIZE in the larger generation
    for p in first:
        w.append(p)
    w.close()
    _records, result = read_all(d)
    assert result.tail.end_offset > SIZE
    w2 = make_writer(d, tail=result.tail, signature=sig)
    second = [os.urandom(3000) for _ in range(50)]
    for p in second:
        w2.append(p)
    w2.close()
    records, result = read_all(d, signature=sig)
    assert [r.payload for r in records] == first + second
    assert result.torn_tail is False


def test_start_position_skips_earlier_records(tmp_path):
    d = str(tmp_path)
    w = make_writer(d)
    ends = [w.append(bytes([i]) * 9000) for i in range(30)]
    w.close()
    records, _ = read_all(d, start=ends[9])
    assert [r.payload[0] for r in records] == list(range(10, 30))


def test_group_commit_shares_flushes(tmp_path):
    d = str(tmp_path)
    w = make_writer(d)
    per_thread = 200

    def worker(n: int) -> None:
        for i in range(per_thread):
            pos = w.append(f"{n}:{i}".encode() * 3)
            w.wait_durable(pos)
            assert w.durable_position >= pos

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert w.flushes < 8 * per_thread  # concurrent committers shared syncs
    w.close()
    records, _ = read_all(d)
    assert len(records) == 8 * per_thread


def test_torn_tail_is_end_of_log(tmp_path):
    d = str(tmp_path)
    w = make_writer(d)
    for i in range(20):
        w.append(bytes([i]) * 100)
    end = w.flush()
    w.close()
    path = os.path.join(d, CURRENT_LOG)
    # Garbage where the next flush would have gone: an unsynced, torn write.
    with open(path, "r+b") as f:
        f.seek(end.offset)
        f.write(os.urandom(300))
    records, result = read_all(d)
    assert len(records) == 20
    assert result.torn_tail
    assert result.tail.end_offset == end.offset


def test_bad_frame_followed_by_proven_durable_frames_is_corruption(tmp_path):
    d = str(tmp_path)
    w = make_writer(d)
    positions = []
    for i in range(20):
        positions.append(w.append(bytes([i]) * 100))
        w.flush()  # each record in its own flush: later frames record durable_before
    w.close()
    path = os.path.join(d, CURRENT_LOG)
    with open(path, "r+b") as f:
        f.seek(positions[3].offset + 20)  # inside record 4's payload
        byte = f.read(1)
        f.seek(positions[3].offset + 20)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(LogFileCorrupt) as info:
        read_all(d)
    assert str(positions[3].generation) in str(info.value) or "08X" not in str(info.value)


def test_corruption_in_closed_generation_detected(tmp_path):
    d = str(tmp_path)
    w = make_writer(d)
    for i in range(40):
        w.append(bytes([i]) * 5000)
    w.close()
    path = os.path.join(d, generation_log_name(1))
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(DATA_START + 5000)
        f.write(b"\xff\xff")
    assert size == SIZE
    with pytest.raises(LogFileCorrupt):
        read_all(d)


def test_missing_generation_named(tmp_path):
    d = str(tmp_path)
    w = make_writer(d)
    for i in range(60):
        w.append(bytes([i]) * 5000)
    w.close()
    os.unlink(os.path.join(d, generation_log_name(2)))
    with pytest.raises(MissingLogFile) as info:
        read_all(d)
    assert generation_log_name(2) in str(info.value)


def test_foreign_generation_detected(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for directory in (a, b):
        w = make_writer(str(directory))
        for i in range(30):
            w.append(bytes([i]) * 5000)
        w.close()
    os.replace(b / generation_log_name(2), a / generation_log_name(2))
    with pytest.raises((BadLogSignature, InvalidLogSequence)):
        read_all(str(a))


def test_fsync_failure_is_sticky(tmp_path):
    d = str(tmp_path)
    failing = {"on": False}

    def hook(event: IOEvent) -> None:
        if failing["on"] and event.op == "fdatasync":
            raise OSError(5, "injected EIO")

    fs = FileSystem(HandleRegistry("t"), hook)
    w = make_writer(d, fs=fs)
    pos = w.append(b"x" * 100)
    w.wait_durable(pos)
    failing["on"] = True
    pos2 = w.append(b"y" * 100)
    with pytest.raises(LogWriteFail):
        w.wait_durable(pos2)
    failing["on"] = False
    with pytest.raises(LogWriteFail):
        w.append(b"z")
    w.close()
    assert fs.registry.total() == 0


def test_close_releases_every_handle(tmp_path):
    registry = HandleRegistry("t")
    fs = FileSystem(registry)
    w = make_writer(str(tmp_path), fs=fs)
    for i in range(30):
        w.append(bytes([i]) * 5000)
    w.close()
    assert registry.total() == 0


def test_scanner_reports_tail_for_empty_current_generation(tmp_path):
    d = str(tmp_path)
    w = make_writer(d)
    w.close()
    fs = FileSystem(HandleRegistry("r"))
    scanner = LogScanner(fs, take_inventory(fs, d, owner="r"), owner="r")
    assert list(scanner.records(LogPosition(1, 0))) == []
    assert scanner.result.tail is not None
    assert scanner.result.tail.end_offset == DATA_START


def test_a_preparer_that_died_of_an_unexpected_error_names_it_to_the_committer(tmp_path):
    """The thread that prepares the next log file died of an exception that is no JetError
    (a bug, MemoryError), and the commit whose flush needed the file got "the log file
    preparer thread stopped", with no word of why. The error the committer gets now names
    the cause and chains it."""
    armed = {"on": False}

    def hook(event: IOEvent) -> None:
        preparing = threading.current_thread().name == "jetstore-log-preparer"
        if armed["on"] and preparing and event.op == "write":
            raise ZeroDivisionError("injected bug")

    fs = FileSystem(HandleRegistry("t"), hook)
    w = make_writer(str(tmp_path), fs=fs)
    assert w.wait_prepared()
    armed["on"] = True
    with pytest.raises(LogWriteFail) as failed:
        for i in range(10):
            w.wait_durable(w.append(bytes([i]) * 40_000))
    assert "ZeroDivisionError" in str(failed.value) and "injected bug" in str(failed.value)
    cause = failed.value.__cause__
    while cause is not None and not isinstance(cause, ZeroDivisionError):
        cause = cause.__cause__
    assert isinstance(cause, ZeroDivisionError)
    armed["on"] = False
    w.close()
    assert fs.registry.total() == 0

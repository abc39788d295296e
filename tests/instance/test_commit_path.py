"""The per-commit checks of `Instance.check_writable`: its shortcut (a few attribute reads
while the checkpoint lag is below the warning threshold) gives way to the full checks exactly
at the threshold, and the records commits write are those of the general encoder, their
operations in key order when the transaction applied its writes in one pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import jetstore
from jetstore.errors import CheckpointDepthTooDeep, InstanceUnavailable, LogDiskFull
from jetstore.format.logrecords import OP_DELETE, OP_PUT, CommitRecord, decode_record
from jetstore.format.positions import LogPosition
from jetstore.io import FileSystem, HandleRegistry
from jetstore.log.reader import scan_to_end, take_inventory

LIMIT = 16  # checkpoint_too_deep: the warning comes at 4 generations of lag


def warnings(path: Path) -> int:
    lines = (path / "events.jsonl").read_text().splitlines()
    return sum(json.loads(line)["name"] == "checkpoint_depth_warning" for line in lines)


def test_the_lag_thresholds_are_where_the_full_checks_put_them(tmp_path: Path) -> None:
    with jetstore.open(tmp_path, checkpoint_too_deep=LIMIT, log_file_size=64 * 1024) as inst:
        db = inst.database("main", create=True)
        db.create_table("t", [("id", "int")], "id")
        durable = inst.durable_checkpoint
        assert durable is not None
        generation = inst.log.current_generation

        def commit_with_lag(lag: int, key: int) -> None:
            inst.durable_checkpoint = LogPosition(generation - lag, 0)
            with db.transaction() as txn:
                txn.table("t").insert({"id": key})

        commit_with_lag(LIMIT // 4 - 1, 1)
        assert warnings(tmp_path) == 0
        commit_with_lag(LIMIT // 4, 2)
        assert warnings(tmp_path) == 1
        commit_with_lag(LIMIT - 1, 3)
        assert warnings(tmp_path) == 1  # once until the checkpoint catches up
        with pytest.raises(CheckpointDepthTooDeep):
            commit_with_lag(LIMIT, 4)
        inst.durable_checkpoint = durable
        inst.checkpoint()
        with db.transaction() as txn:
            assert [r["id"] for r in txn.table("t").scan()] == [1, 2, 3]


def test_a_full_log_volume_and_shutdown_refuse_commits(tmp_path: Path) -> None:
    inst = jetstore.open(tmp_path)
    db = inst.database("main", create=True)
    db.create_table("t", [("id", "int")], "id")
    inst.log.disk_full = True
    with pytest.raises(LogDiskFull), db.transaction() as txn:
        txn.table("t").insert({"id": 1})
    inst.log.disk_full = False
    inst._closing = True
    with pytest.raises(InstanceUnavailable), db.transaction() as txn:
        txn.table("t").insert({"id": 2})
    inst._closing = False
    with db.transaction() as txn:
        txn.table("t").insert({"id": 3})
    inst.close()


def test_commit_records_list_the_operations_in_key_order_when_applied_in_one_pass(
    tmp_path: Path,
) -> None:
    k = b"\x00\x00\x00\x09"
    with jetstore.open(tmp_path) as inst:
        db = inst.database("main", create=True)
        with db.transaction() as txn:
            txn.put(k + b"b", b"1")
            txn.put(k + b"a", b"2")
        with db.transaction() as txn:
            txn.put(k + b"c", b"3")
            txn.delete(k + b"b")
            txn.put(k + b"c", b"4")  # the last value counts
        with db.transaction() as txn:
            txn.put(k + b"z", b"5")
            txn.put(k + b"x", b"6")
            assert (k + b"x", b"6") in list(txn.iterate(None, None))  # applies the writes
        with db.transaction() as txn:
            txn.put(k + b"z", b"7")
            assert (k + b"z", b"7") in list(txn.iterate(None, None))
            txn.put(k + b"y", b"8")  # written after the application: first-written order
            txn.put(k + b"w", b"9")
        with db.transaction() as txn:
            txn.put(k + b"z", b"10")
            assert (k + b"z", b"10") in list(txn.iterate(None, None))
            txn.put(k + b"z", b"11")  # a new value for an applied key: first-written order
            txn.put(k + b"d", b"12")
        signature = inst.log.signature
    fs = FileSystem(HandleRegistry("reader"))
    records, _ = scan_to_end(
        fs,
        take_inventory(fs, str(tmp_path), owner="r"),
        LogPosition(1, 0),
        owner="r",
        signature=signature,
    )
    commits = [
        decoded
        for record in records
        if isinstance(decoded := decode_record(record.payload), CommitRecord)
    ]
    assert [c.operations for c in commits] == [
        [(OP_PUT, k + b"a", b"2"), (OP_PUT, k + b"b", b"1")],
        [(OP_DELETE, k + b"b", None), (OP_PUT, k + b"c", b"4")],
        [(OP_PUT, k + b"x", b"6"), (OP_PUT, k + b"z", b"5")],
        [(OP_PUT, k + b"z", b"7"), (OP_PUT, k + b"y", b"8"), (OP_PUT, k + b"w", b"9")],
        [(OP_PUT, k + b"z", b"11"), (OP_PUT, k + b"d", b"12")],
    ]
    with jetstore.open(tmp_path) as inst, inst.database("main").transaction() as txn:
        assert [(key, value) for key, value in txn.iterate(None, None) if key.startswith(k)] == [
            (k + b"a", b"2"),
            (k + b"c", b"4"),
            (k + b"d", b"12"),
            (k + b"w", b"9"),
            (k + b"x", b"6"),
            (k + b"y", b"8"),
            (k + b"z", b"11"),
        ]

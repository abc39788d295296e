"""The engine before DETACH_DATABASE (5) and ATTACH_DATABASE (6) records, for tests of an
instance upgraded in place (its first log generations written by that engine, the later ones
by this one).

That engine's log is this engine's with the two records left out: the log header is the
same (format version 2, engine version "0.1.0": neither changed with the records), and so
are the frames and every other record. Its attach flushed the log through its end where
this engine appends the ATTACH record (and the header's checkpoint is that end), its detach
logged nothing after the clean header, and its open logged nothing for a database joining
the stream. `older_engine()` makes this engine do exactly that: an append of either record
writes nothing and returns the log's end.

Shared by `tests/crash/test_upgrade_in_place.py` and `tests/backup/test_restore_upgrade.py`,
with their workload (`write_rows`, `read_rows`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import jetstore
from jetstore.format.logrecords import (
    RECORD_ATTACH_DATABASE,
    RECORD_DETACH_DATABASE,
    decode_record,
    record_type,
)
from jetstore.format.positions import LogPosition
from jetstore.io import FileSystem
from jetstore.io.handles import HandleRegistry
from jetstore.log.reader import LogScanner, take_inventory
from jetstore.log.writer import LogWriter

BINDING_RECORDS = (RECORD_DETACH_DATABASE, RECORD_ATTACH_DATABASE)
KV = [("k", "int"), ("v", "text")]
Rows = dict[str, dict[Any, Any]]  # database -> key -> value


def write_rows(
    inst: jetstore.Instance,
    model: Rows,
    name: str,
    keys: range,
    tag: str,
    *,
    delete: int | None = None,
    width: int = 30,
) -> None:
    """One transaction per key upserting `tag`+key repeated `width` times into table "kv" of
    database `name` (created if needed), then, with `delete`, one deleting that key; `model`
    follows."""
    db = inst.database(name, create=True)
    if "kv" not in db.table_names():
        db.create_table("kv", KV, primary_key="k")
    rows = model.setdefault(name, {})
    for k in keys:
        with db.transaction() as txn:
            txn.table("kv").upsert({"k": k, "v": f"{tag}{k}" * width})
        rows[k] = f"{tag}{k}" * width
    if delete is not None:
        with db.transaction() as txn:
            txn.table("kv").delete(delete)
        del rows[delete]


def read_rows(inst: jetstore.Instance) -> Rows:
    """Every database's "kv" rows, as `write_rows` models them."""
    found: Rows = {}
    for name in inst.databases():
        with inst.database(name).transaction() as txn:
            found[name] = {row["k"]: row["v"] for row in txn.table("kv").scan()}
    return found


@contextmanager
def older_engine() -> Iterator[None]:
    """Inside it, this engine writes the log the engine before the binding records wrote."""
    append = LogWriter.append

    def older_append(self: LogWriter, payload: bytes | bytearray) -> LogPosition:
        if payload[0] in BINDING_RECORDS:
            return self.end_position
        return append(self, payload)

    with mock.patch.object(LogWriter, "append", older_append):
        yield


def binding_records(directory: Path) -> list[tuple[int, Any]]:
    """(generation, decoded record) of every DETACH_DATABASE and ATTACH_DATABASE record in
    the log files of `directory`, from its lowest generation on."""
    fs = FileSystem(HandleRegistry("test"))
    try:
        inventory = take_inventory(fs, str(directory), owner="test")
        scanner = LogScanner(fs, inventory, owner="test")
        found = []
        for entry in scanner.records(LogPosition(min(inventory.generations), 0)):
            if record_type(entry.payload) in BINDING_RECORDS:
                found.append((entry.start.generation, decode_record(entry.payload, entry.start)))
        return found
    finally:
        fs.registry.close_owner("test")

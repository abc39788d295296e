"""`export_table`: the records of one table of a clean database file, as JSON lines or CSV.

This module owns reading a table offline: the database file is opened read-only without an
instance (`jetstore.tools.dbfile`), so an instance must not have its directory open
(`InstanceNameInUse`) and the database must be clean (`DatabaseDirtyShutdown`, -550: its
latest changes would be in the logs). Records come in primary-key order, long values read
back whole; each value is written in the text form of `jetstore.tools.values`.

JSON lines: one object per record, columns in table order. CSV: a header row of the column
names, then one row per record.

Invariants: never writes to the database; a record whose long value is incomplete stops the
export with `DatabaseCorrupted` naming the table and key (run `jetstore integrity`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from jetstore.errors import DatabaseCorrupted, InvalidParameter, ObjectNotFound
from jetstore.io.files import FileSystem
from jetstore.pages.btree import iterate
from jetstore.tables.catalog import CATALOG_PREFIX, object_prefix
from jetstore.tables.keys import prefix_successor
from jetstore.tables.records import RecordCodec
from jetstore.tables.schema import TableDef
from jetstore.tools.dbfile import (
    OfflineDatabase,
    decode_catalog,
    describe_key,
    refuse_if_open,
    require_clean,
)
from jetstore.tools.layout import (
    assemble_long_value,
    long_value_range,
    long_value_refs,
    parse_long_value_key,
)
from jetstore.tools.values import to_csv, to_json

__all__ = ["FORMATS", "ExportResult", "export_table", "read_table"]

FORMATS = ("jsonl", "csv")


@dataclass
class ExportResult:
    path: str
    table: str
    format: str
    rows: int
    columns: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "table": self.table,
            "format": self.format,
            "rows": self.rows,
            "columns": list(self.columns),
        }


def read_table(db: OfflineDatabase, table: str) -> tuple[TableDef, Iterator[dict[str, object]]]:
    """The definition of `table` and its records in key order (long values read back)."""
    root = db.root()
    catalog = decode_catalog(
        list(iterate(db, root, CATALOG_PREFIX, prefix_successor(CATALOG_PREFIX)))
    )
    table_def = catalog.tables.get(table)
    if table_def is None:
        raise ObjectNotFound(
            f"database '{db.path}' has no table {table!r} (tables: "
            f"{', '.join(sorted(catalog.tables)) or 'none'})",
            hint="give one of the tables listed",
            path=db.path,
        )
    codec = RecordCodec(table_def)
    prefix = object_prefix(table_def.table_id)

    def records() -> Iterator[dict[str, object]]:
        for key, raw in iterate(db, root, prefix, prefix_successor(prefix)):
            record = codec.decode(raw)
            pk = key[len(prefix) :]
            for position, ref in long_value_refs(table_def, record):
                start = long_value_range(table_def, pk, position)
                chunks = []
                for chunk_key, value in iterate(db, root, start, prefix_successor(start)):
                    parsed = parse_long_value_key(chunk_key)
                    if parsed is not None:
                        chunks.append((parsed[2], value))
                data, problem = assemble_long_value(chunks, ref)
                if data is None:
                    column = table_def.columns[position].name
                    raise DatabaseCorrupted(
                        f"table {table!r}, record {describe_key(pk)}: the long value of column "
                        f"{column!r} is damaged ({problem})",
                        hint=f"run `jetstore integrity {db.path}`",
                        path=db.path,
                    )
                record[table_def.columns[position].name] = data
            yield record

    return table_def, records()


def export_table(
    path: str | os.PathLike[str],
    table: str,
    out: TextIO,
    *,
    fmt: str = "jsonl",
    fs: FileSystem | None = None,
) -> ExportResult:
    """Write the records of `table` of the database file at `path` to `out`."""
    if fmt not in FORMATS:
        raise InvalidParameter(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    fs = fs or FileSystem()
    full = os.path.abspath(os.fspath(path))
    refuse_if_open(fs, os.path.dirname(full), what="export")
    rows = 0
    with OfflineDatabase(fs, full) as db:
        require_clean(db.header, db.path, what="an export")
        table_def, records = read_table(db, table)
        columns = [(c.name, c.type) for c in table_def.columns]
        if fmt == "csv":
            writer = csv.writer(out, lineterminator="\n")
            # QUOTE_MINIMAL quotes a field holding a character of the line terminator ("\n")
            # but not a lone "\r", which a reader takes for a line end (the record came back
            # cut there): a row with a "\r" anywhere is written with every field quoted.
            quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
            writer.writerow([name for name, _ in columns])
            for record in records:
                fields = [to_csv(ctype, record[name]) for name, ctype in columns]
                (quoted if any("\r" in f for f in fields) else writer).writerow(fields)
                rows += 1
        else:
            for record in records:
                document = {name: to_json(ctype, record[name]) for name, ctype in columns}
                out.write(json.dumps(document, ensure_ascii=False, allow_nan=False) + "\n")
                rows += 1
    return ExportResult(full, table, fmt, rows, [name for name, _ in columns])

"""`import_rows`: insert records read from JSON lines or CSV into a table, in batches.

This module owns reading an exported file back (the text forms of `jetstore.tools.values`,
typed by the table's schema) and inserting it through the engine, one transaction per batch:
the caller gives an attached `Database` of an open instance (the CLI opens the instance,
which must not be open elsewhere). The table must exist.

Invariants:
- A row that cannot be parsed or inserted (bad value, unknown column, a column given twice,
  duplicate key, NULL in a NOT NULL column) is a failure with its line number; the other
  rows of its batch are inserted (`Table.insert` changes nothing when it fails).
- A batch whose commit fails counts all its rows as failures; earlier batches stay. A commit
  that fails after its record reached the log leaves the batch *in doubt* (the instance
  failed; only reopening it tells whether the rows are stored): its rows are counted in
  `in_doubt`, not as failures, and the import ends there.
- An interrupt (Ctrl-C) ends the import with `ImportInterrupted`, a KeyboardInterrupt that
  carries the result: the rows committed before it, and whether its batch is in doubt (the
  interrupt came during that batch's commit) or was rolled back (it came before). Every
  line up to `committed_through` was dealt with (inserted or failed): the rest may be
  imported again.
- A row that takes its batch's transaction over `max_transaction_bytes` rolls it back: the
  rows inserted before it are inserted again in a transaction of their own, the row and the
  rest in the next; a row over the bound alone is a failure (`VersionStoreOutOfMemory`).
- CSV: the first row names the columns; an unknown name (`ColumnNotFound`) or one named
  twice (`InvalidParameter`) stops the import before anything is inserted. Columns left out
  take their default. CSV is read strictly: a quoted field that is never closed (a file cut
  short inside it) is a failed row at the end of the data, naming the line its row began
  on, not a value holding every line after it.
- A UTF-8 byte order mark at the start of the input is skipped (export writes none).
- A CSV field may be of any length, as export writes long values whole (the csv module's
  own limit, 131072 characters, is lifted while an import reads CSV).
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from jetstore.errors import ColumnNotFound, InvalidParameter, JetError, VersionStoreOutOfMemory
from jetstore.instance.database import Database
from jetstore.tables.schema import ColumnType, TableDef
from jetstore.tools.export import FORMATS
from jetstore.tools.values import from_csv, from_json
from jetstore.transactions.transaction import TransactionState

__all__ = ["ImportInterrupted", "ImportResult", "import_rows"]

#: Failures listed in a result; more are only counted.
_LIST_LIMIT: Final = 1000

_BOM: Final = "\ufeff"


@dataclass
class ImportResult:
    table: str
    format: str
    rows: int = 0
    inserted: int = 0
    failed: int = 0
    batches: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: Rows of the batch whose commit is in doubt, and its first and last line ([] if none).
    in_doubt: int = 0
    in_doubt_lines: list[int] = field(default_factory=list)
    #: The last line of the last batch committed: every line up to it was dealt with.
    committed_through: int = 0
    interrupted: bool = False
    #: Why the import ended before the end of its input (a commit in doubt), or "".
    stopped: str = ""

    def fail(self, line: int, message: str) -> None:
        self.failed += 1
        if len(self.failures) < _LIST_LIMIT:
            self.failures.append({"line": line, "error": message})

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "format": self.format,
            "rows": self.rows,
            "inserted": self.inserted,
            "failed": self.failed,
            "batches": self.batches,
            "failures": list(self.failures),
            "in_doubt": self.in_doubt,
            "in_doubt_lines": list(self.in_doubt_lines),
            "committed_through": self.committed_through,
            "interrupted": self.interrupted,
            "stopped": self.stopped,
        }


class ImportInterrupted(KeyboardInterrupt):
    """An interrupt ended the import; `result` says what was committed before it."""

    def __init__(self, result: ImportResult) -> None:
        super().__init__(f"import into {result.table!r} interrupted")
        self.result = result


class _Stop(Exception):
    """A commit in doubt ends the import (`ImportResult.stopped` says why)."""


def _error_text(exc: Exception) -> str:
    if isinstance(exc, JetError):
        return f"{exc.ese_name}: {exc.detail or exc.description}"
    return str(exc)


def _without_bom(source: TextIO) -> Iterator[str]:
    """The lines of `source`, a UTF-8 byte order mark at its start dropped: editors and
    spreadsheets on Windows write one, and it made the first CSV column name unknown and the
    first JSON line malformed."""
    lines = iter(source)
    first = next(lines, None)
    if first is None:
        return
    yield first.removeprefix(_BOM)
    yield from lines


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, a name given twice refused: `json` keeps the last value of a repeated
    name, and the other was lost without a word."""
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise ValueError(f"column {name!r} is given twice")
        document[name] = value
    return document


def _jsonl_rows(
    source: TextIO, types: dict[str, ColumnType]
) -> Iterator[tuple[int, dict[str, object] | str]]:
    for line_number, line in enumerate(_without_bom(source), start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line, object_pairs_hook=_object)
            if not isinstance(document, dict):
                raise ValueError("a line must hold one JSON object")
            row: dict[str, object] = {}
            for name, value in document.items():
                ctype = types.get(name)
                if ctype is None:
                    raise ValueError(f"unknown column {name!r}")
                try:
                    row[name] = from_json(ctype, value)
                except ValueError as exc:
                    raise ValueError(f"column {name!r}: {exc}") from None
        except ValueError as exc:
            yield line_number, str(exc)
            continue
        yield line_number, row


_field_limit_lock = threading.Lock()
_field_limit_users = 0
_field_limit_before = 0


@contextlib.contextmanager
def _unlimited_csv_fields() -> Iterator[None]:
    """No limit on a CSV field's length while the block runs.

    The csv module refuses a field over 131072 characters (`csv.Error`, an internal error
    here), and a text or bytes value export wrote may be longer. The limit is the process's:
    it is restored when the last import reading CSV ends, not when the first one does."""
    global _field_limit_users, _field_limit_before
    with _field_limit_lock:
        if _field_limit_users == 0:
            _field_limit_before = csv.field_size_limit(sys.maxsize)
        _field_limit_users += 1
    try:
        yield
    finally:
        with _field_limit_lock:
            _field_limit_users -= 1
            if _field_limit_users == 0:
                csv.field_size_limit(_field_limit_before)


def _csv_rows(
    source: TextIO, types: dict[str, ColumnType], table: str
) -> Iterator[tuple[int, dict[str, object] | str]]:
    with _unlimited_csv_fields():
        # Strict: a quoted field left open (a file cut short inside it) is an error at the
        # end of the data, where the lenient reader made it one field holding every line
        # after it, inserted as a value while those rows were lost.
        reader = csv.reader(_without_bom(source), strict=True)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise InvalidParameter(
                f"the CSV header (line {reader.line_num}) is malformed: {exc}",
                hint="the first row names the columns, separated by commas",
            ) from None
        if header is None:
            return
        seen: dict[str, int] = {}
        for column, name in enumerate(header, start=1):
            if name in seen:
                # A dict row keeps the last value of a repeated name: the other was lost unseen.
                raise InvalidParameter(
                    f"the CSV header (line {reader.line_num}) names column {name!r} twice: "
                    f"fields {seen[name]} and {column}",
                    hint="give each column once in the header row",
                )
            seen[name] = column
        unknown = [name for name in header if name not in types]
        if unknown:
            raise ColumnNotFound(
                f"the CSV header names column(s) {', '.join(map(repr, unknown))}, which table "
                f"{table!r} does not have",
                hint="columns are: " + ", ".join(types),
            )
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                # A lone "\r" inside an unquoted field of a stream that splits lines at "\n"
                # only (a StringIO): a bad line like any other, not an internal error.
                # A quoted field left open ends only with the data: say where its row began.
                began = f" (the row began on line {start})" if reader.line_num > start else ""
                yield reader.line_num, f"malformed CSV: {exc}{began}"
                continue
            line_number = reader.line_num
            if not fields:
                continue
            if len(fields) != len(header):
                yield line_number, f"{len(fields)} field(s), the header has {len(header)}"
                continue
            row: dict[str, object] = {}
            try:
                for name, text in zip(header, fields, strict=True):
                    try:
                        row[name] = from_csv(types[name], text)
                    except ValueError as exc:
                        raise ValueError(f"column {name!r}: {exc}") from None
            except ValueError as exc:
                yield line_number, str(exc)
                continue
            yield line_number, row


def import_rows(
    db: Database,
    table: str,
    source: TextIO,
    *,
    fmt: str = "jsonl",
    batch_size: int = 1000,
) -> ImportResult:
    """Insert the rows of `source` into `table` of `db` (see the module docstring)."""
    if fmt not in FORMATS:
        raise InvalidParameter(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if batch_size < 1:
        raise InvalidParameter(f"batch size must be at least 1, got {batch_size}")
    with db.transaction() as txn:
        table_def: TableDef = txn.table(table).definition  # ObjectNotFound when missing
    types = {c.name: c.type for c in table_def.columns}
    rows = _csv_rows(source, types, table) if fmt == "csv" else _jsonl_rows(source, types)
    result = ImportResult(table, fmt)
    batch: list[tuple[int, dict[str, object]]] = []

    def flush() -> None:
        # Each part is one transaction. A row that takes it over the transaction's bound
        # rolls it back with the rows before it (`VersionStoreOutOfMemory`): those go again
        # in a transaction of their own (they fitted), the rest of the part in the next.
        parts = [list(batch)] if batch else []
        batch.clear()
        while parts:
            part = parts.pop(0)
            if not part:
                continue
            result.batches += 1
            inserted: list[tuple[int, dict[str, object]]] = []
            txn = db.transaction()
            try:
                with txn:
                    target = txn.table(table)
                    for position, (line_number, row) in enumerate(part):
                        try:
                            target.insert(row)
                            inserted.append((line_number, row))
                        except VersionStoreOutOfMemory as exc:
                            rest = part[position:]
                            if inserted:
                                parts[:0] = [inserted, rest]
                            else:
                                result.fail(line_number, _error_text(exc))  # too large alone
                                parts.insert(0, rest[1:])
                            result.batches -= 1  # rolled back: its rows are counted again
                            inserted = []
                            break
                        except JetError as exc:
                            result.fail(line_number, _error_text(exc))
            except JetError as exc:
                if txn.state is TransactionState.IN_DOUBT:
                    doubt(part, inserted)
                    result.stopped = (
                        f"the commit of lines {part[0][0]}-{part[-1][0]} is in doubt: "
                        f"{_error_text(exc)}"
                    )
                    raise _Stop from None
                for line_number, _row in inserted:
                    result.fail(line_number, f"the batch's commit failed: {_error_text(exc)}")
                inserted = []
            except BaseException:
                # An interrupt: before the commit the batch was rolled back (nothing of it is
                # stored); during it, the state says whether its record reached the log.
                if txn.state is TransactionState.IN_DOUBT:
                    doubt(part, inserted)
                elif txn.state is TransactionState.COMMITTED:
                    committed(part, inserted)
                else:
                    result.batches -= 1
                raise
            committed(part, inserted)

    def committed(
        part: list[tuple[int, dict[str, object]]], inserted: list[tuple[int, dict[str, object]]]
    ) -> None:
        result.inserted += len(inserted)
        result.committed_through = part[-1][0]

    def doubt(
        part: list[tuple[int, dict[str, object]]], inserted: list[tuple[int, dict[str, object]]]
    ) -> None:
        result.batches -= 1
        result.in_doubt = len(inserted)
        result.in_doubt_lines = [part[0][0], part[-1][0]]

    last_line = 0
    try:
        try:
            for line_number, row in rows:
                last_line = line_number
                result.rows += 1
                if isinstance(row, str):
                    result.fail(line_number, row)
                    continue
                batch.append((line_number, row))
                if len(batch) >= batch_size:
                    flush()
        except UnicodeDecodeError as exc:
            # The text layer decodes ahead of the rows handed out: what was read before the
            # bad bytes is whole, and goes in, so the message can say exactly where to resume.
            flush()
            where = f"after line {last_line}" if last_line else "from its first line"
            resume = f"the lines after line {last_line}" if last_line else "it"
            raise InvalidParameter(
                f"the input is not UTF-8 {where}: byte "
                f"{exc.object[exc.start]:#04x} cannot be decoded ({exc.reason}); the "
                f"{result.inserted} row(s) before it were imported in {result.batches} "
                f"transaction(s), {result.failed} failed, nothing after it was read",
                hint="the import format is UTF-8, as export writes it: convert the input (for "
                f"example `iconv -f LATIN1 -t UTF-8`) and import {resume}",
            ) from None
        flush()
    except _Stop:
        pass
    except KeyboardInterrupt:
        result.interrupted = True
        result.failures.sort(key=lambda failure: int(failure["line"]))
        raise ImportInterrupted(result) from None
    result.failures.sort(key=lambda failure: int(failure["line"]))
    return result

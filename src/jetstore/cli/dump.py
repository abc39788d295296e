"""`jetstore dump header|checkpoint|logs`: what a file says, read-only (esentutl /mh, /mk, /ml).

This module owns the three dump commands. Each decodes with `jetstore.format` (nothing here
re-implements a codec), opens files read-only through `jetstore.io.FileSystem`, and never
writes, renames or deletes anything:

* `dump header DB.edb`: both database header copies (`choose_db_header`, and each copy on its
  own so a damaged copy is named), the state, the log range the database needs, signatures,
  positions, backup history, sizes. Exit 1 when a copy is damaged or older (the other is
  used), or when neither copy can be read (the shared error display).
* `dump checkpoint edb.chk`: both checkpoint copies, the position recovery starts from, the
  first log still needed, circular logging, attached databases. Exit 1 when a copy is bad.
* `dump logs DIR`: every generation's header (`take_inventory`) with its verification result
  (`verify_logs_as_recovery_needs`, as `logs verify` reports it), optionally every record
  (`LogScanner` + `decode_record`), as a table or as JSON Lines. Exit 1 when verification
  finds an error, a record cannot be decoded, or the record scan stops on a broken chain in
  a generation recovery reads. Damage only in generations recovery no longer reads is a
  warning (exit 0), as in `logs verify`: the record scan then resumes where recovery starts
  reading, and reads from there exactly as recovery does (the stream's signature is the
  lowest generation's, `LogInventory.stream_signature`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jetstore.cli.output import (
    command_errors,
    emit_json,
    error_document,
    finish,
    json_option,
    stdout_console,
)
from jetstore.cli.support import (
    OWNER,
    ensure_instance_directory,
    log_file_name,
    parse_generation_range,
    position_dict,
    progress,
    signature_text,
    time_text,
)
from jetstore.errors import JetError
from jetstore.format.checkpoint import (
    CHECKPOINT_COPIES,
    CHECKPOINT_COPY_SIZE,
    CHECKPOINT_FILE_SIZE,
    decode_checkpoint_copy,
    read_checkpoint_file,
)
from jetstore.format.common import PAGE_SIZES, Signature
from jetstore.format.dbheader import (
    PEEK_SIZE,
    BackupInfo,
    DatabaseHeader,
    DatabaseState,
    choose_db_header,
    decode_db_header,
    peek_page_size,
)
from jetstore.format.filenames import generation_log_name
from jetstore.format.logheader import LogFileHeader
from jetstore.format.logrecords import (
    OP_PUT,
    AttachDatabaseRecord,
    CommitRecord,
    CreateDatabaseRecord,
    DetachDatabaseRecord,
    LogRecord,
    ShutdownRecord,
    StartRecord,
    decode_record,
)
from jetstore.format.positions import LogPosition
from jetstore.instance.diagnosis import verify_logs_as_recovery_needs
from jetstore.instance.recoverydecisions import scan_stop_generation
from jetstore.io.files import File, FileSystem
from jetstore.log.reader import LogInventory, LogScanner, take_inventory
from jetstore.log.verify import GenerationReport, LogProblem, LogVerification

__all__ = [
    "checkpoint_result",
    "dump_group",
    "generation_needed",
    "generation_status",
    "header_result",
    "print_generations",
    "print_log_problems",
    "print_recovery_needs",
    "record_dict",
]

#: How the header states read (ESE's dbstate names, lower case).
STATE_NAMES: Final[dict[DatabaseState, str]] = {
    DatabaseState.JUST_CREATED: "just created",
    DatabaseState.DIRTY: "dirty",
    DatabaseState.CLEAN: "clean",
    DatabaseState.BEING_RESTORED: "being restored",
}
#: Keys of a record listed in a dump, and bytes of each key shown (as hex).
MAX_KEYS_LISTED: Final = 8
MAX_KEY_BYTES: Final = 32
#: Keys of a record shown on its line in the human output.
MAX_KEYS_PRINTED: Final = 2
_FORMAT_VERSION = struct.Struct("<H")
_FORMAT_VERSION_OFFSET: Final = 14


@click.group("dump", short_help="Show a database header, the checkpoint file or the logs.")
def dump_group() -> None:
    """Show what a file says, read-only: a database header, the checkpoint file, the logs."""


# --------------------------------------------------------------------------- header


def _guess_page_size(file: File) -> int | None:
    """Copy 0 cannot say its page size: find the size at which copy 1 starts."""
    for size in sorted(PAGE_SIZES):
        data = file.pread(PEEK_SIZE, size)
        if peek_page_size(data) == size:
            return size
    return None


def _backup_dict(info: BackupInfo) -> dict[str, Any]:
    if info.is_none:
        return {"never": True, "text": "never"}
    return {
        "never": False,
        "generation_low": info.generation_low,
        "generation_high": info.generation_high,
        "files": [
            generation_log_name(g)
            for g in (info.generation_low, info.generation_high)
            if 0 < g <= 0xFFFFFFFF
        ],
        "position": position_dict(info.position),
        "time": time_text(info.time_us),
        "text": str(info),
    }


def _required(fs: FileSystem, directory: str, header: DatabaseHeader) -> dict[str, Any]:
    low, high = header.generation_min_required, header.generation_max_required
    if low == 0 and high == 0:
        return {
            "low": 0,
            "high": 0,
            "first_file": None,
            "last_file": None,
            "text": "0-0: no logs needed",
        }
    first = log_file_name(fs, directory, max(low, 1))
    last = log_file_name(fs, directory, max(high, low, 1))
    return {
        "low": low,
        "high": high,
        "first_file": first,
        "last_file": last,
        "text": f"{low}-{high} ({first} to {last})",
    }


def header_result(fs: FileSystem, path: str) -> dict[str, Any]:
    """Everything `dump header` shows, JSON-ready. Raises the header's JetError when neither
    copy can be used (ReadVerifyFailure) or the file is not a database (FileInvalidType)."""
    with fs.opened(path, owner=OWNER, writable=False) as file:
        file_size = file.size()
        page_size = peek_page_size(file.pread(PEEK_SIZE, 0))
        page_size_from = "copy 0"
        if page_size is None:
            page_size = _guess_page_size(file)
            page_size_from = "copy 1"
        if page_size is None:
            page_size, page_size_from = 8192, "default (neither copy says)"
        raw = [file.pread(page_size, 0), file.pread(page_size, page_size)]
    header, problems = choose_db_header(raw[0], raw[1], path=path)
    copies: list[dict[str, Any]] = []
    chosen_raw: bytes | None = None
    for number, data in enumerate(raw):
        try:
            decoded = decode_db_header(data, path=path, copy=number)
        except JetError as exc:
            copies.append({"copy": number, "valid": False, "header_seq": None, "error": exc.detail})
            continue
        copies.append(
            {"copy": number, "valid": True, "header_seq": decoded.header_seq, "error": None}
        )
        if decoded == header and chosen_raw is None:
            chosen_raw = data
    assert chosen_raw is not None  # choose_db_header returned one of the two copies
    (format_version,) = _FORMAT_VERSION.unpack_from(chosen_raw, _FORMAT_VERSION_OFFSET)
    directory = os.path.dirname(os.path.abspath(path))
    return {
        "path": os.path.abspath(path),
        "file_size": file_size,
        "name": header.name,
        "db_id": header.db_id,
        "state": STATE_NAMES[header.state],
        "state_code": int(header.state),
        "header_seq": header.header_seq,
        "required": _required(fs, directory, header),
        "generation_max_committed": header.generation_max_committed,
        "db_signature": signature_text(header.db_signature),
        "log_signature": signature_text(header.log_signature),
        "checkpoint_position": position_dict(header.checkpoint_position),
        "last_consistent": {
            "position": position_dict(header.last_consistent_position),
            "time": time_text(header.last_consistent_time),
        },
        "last_attach": {
            "position": position_dict(header.last_attach_position),
            "time": time_text(header.last_attach_time),
        },
        "created": time_text(header.created_time),
        "backups": {
            "full": _backup_dict(header.last_full_backup),
            "incremental": _backup_dict(header.last_incremental_backup),
            "differential": _backup_dict(header.last_differential_backup),
            "copy": _backup_dict(header.last_copy_backup),
        },
        "page_size": header.page_size,
        "page_size_from": page_size_from,
        "format_version": format_version,
        "engine_version": header.engine_version,
        "page_count": header.page_count,
        "free_pages": header.free_page_count,
        "root_pgno": header.root_pgno,
        "root_crc": f"{header.root_crc:#010x}",
        "freelist_pgno": header.freelist_pgno,
        "freelist_crc": f"{header.freelist_crc:#010x}",
        "checkpoint_seq": header.checkpoint_seq,
        "repair_count": header.repair_count,
        "last_repair_time": time_text(header.last_repair_time),
        "flags": header.flags,
        "copies": copies,
        "problems": problems,
    }


def _text(value: object) -> Text:
    return Text("—" if value is None else str(value))


def _position_text(position: dict[str, Any] | None) -> str:
    return "—" if position is None else str(position["text"])


def _print_problems(console: Console, problems: list[str]) -> None:
    if not problems:
        return
    console.print(Text(f"{len(problems)} problem(s):", "bold red"))
    for problem in problems:
        console.print(Text(f"  - {problem}"))


def _print_header(result: dict[str, Any]) -> None:
    console = stdout_console()
    table = Table(
        title=f"Database header of {result['path']}", show_header=False, title_justify="left"
    )
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    state = result["state"]
    style = "green" if state == "clean" else "yellow"
    table.add_row("name", _text(result["name"]))
    table.add_row("state", Text(state, style))
    table.add_row("log required", _text(result["required"]["text"]))
    table.add_row("max committed generation", _text(result["generation_max_committed"]))
    table.add_row("database signature", _text(result["db_signature"]))
    table.add_row("log signature", _text(result["log_signature"]))
    table.add_row("checkpoint position", _text(_position_text(result["checkpoint_position"])))
    for label, key in (("last consistent", "last_consistent"), ("last attach", "last_attach")):
        entry = result[key]
        shown = (
            "never"
            if entry["time"] is None
            else f"{_position_text(entry['position'])} at {entry['time']}"
        )
        table.add_row(label, Text(shown))
    table.add_row("created", _text(result["created"]))
    for kind, backup in result["backups"].items():
        table.add_row(f"last {kind} backup", _text(backup["text"]))
    table.add_row("page size", _text(f"{result['page_size']} ({result['page_size_from']})"))
    table.add_row("format version", _text(result["format_version"]))
    table.add_row("engine version", _text(result["engine_version"]))
    table.add_row("pages", _text(f"{result['page_count']} ({result['free_pages']} free)"))
    table.add_row("database id", _text(result["db_id"]))
    table.add_row("header seq", _text(result["header_seq"]))
    table.add_row("checkpoint seq", _text(result["checkpoint_seq"]))
    table.add_row("repair count", _text(result["repair_count"]))
    for copy in result["copies"]:
        verdict = (
            Text(f"ok (header_seq {copy['header_seq']})", "green")
            if copy["valid"]
            else Text(f"DAMAGED: {copy['error']}", "bold red")
        )
        table.add_row(f"header copy {copy['copy']}", verdict)
    console.print(table)
    _print_problems(console, result["problems"])


@dump_group.command("header", short_help="Show a database file's header (both copies).")
@click.argument(
    "database", metavar="DB.edb", type=click.Path(dir_okay=False, readable=False, path_type=str)
)
@json_option
@command_errors("dump header")
def dump_header_command(database: str, as_json: bool) -> None:
    """Show the header of a database file, read-only (esentutl /mh).

    State, the log generations the database needs (with file names), signatures, checkpoint
    and last consistent positions, backup history, page size, versions and page counts, and
    whatever is wrong with either header copy. Exits 1 when a copy is damaged or older.
    """
    result = header_result(FileSystem(), database)
    if not as_json:
        _print_header(result)
    finish("dump header", as_json=as_json, ok=not result["problems"], result=result)


# --------------------------------------------------------------------------- checkpoint


def checkpoint_result(fs: FileSystem, path: str) -> dict[str, Any]:
    """Everything `dump checkpoint` shows, JSON-ready. Raises CheckpointCorrupt when neither
    copy can be used, FileInvalidType when the file is not a checkpoint file."""
    file_size = fs.size(path)
    # Never more than the checkpoint's size: a large file given by mistake is not read whole.
    data = fs.read_file(path, owner=OWNER, limit=CHECKPOINT_FILE_SIZE)
    state, problems = read_checkpoint_file(data, path=path)
    if file_size > CHECKPOINT_FILE_SIZE:
        problems.append(
            f"the checkpoint file '{path}' is {file_size} bytes, longer than "
            f"{CHECKPOINT_FILE_SIZE}; the extra bytes are ignored"
        )
    copies: list[dict[str, Any]] = []
    for number in range(CHECKPOINT_COPIES):
        chunk = data[number * CHECKPOINT_COPY_SIZE : (number + 1) * CHECKPOINT_COPY_SIZE]
        entry: dict[str, Any] = {"copy": number, "valid": False, "seq": None, "error": None}
        if len(chunk) < CHECKPOINT_COPY_SIZE:
            entry["error"] = (
                f"copy {number} is {'missing' if not chunk else 'incomplete'}: the file is "
                f"{file_size} bytes, {CHECKPOINT_FILE_SIZE} expected"
            )
        else:
            try:
                copy = decode_checkpoint_copy(chunk, path=path, copy=number)
            except JetError as exc:
                entry["error"] = exc.detail
            else:
                entry.update(
                    valid=True,
                    seq=copy.seq,
                    checkpoint_position=position_dict(copy.checkpoint_position),
                )
        copies.append(entry)
    directory = os.path.dirname(os.path.abspath(path))
    generation = state.checkpoint_position.generation
    first_needed: dict[str, Any] | None = None
    if generation > 0:
        name = log_file_name(fs, directory, generation)
        first_needed = {
            "generation": generation,
            "file": name,
            "present": fs.exists(os.path.join(directory, name)),
        }
    return {
        "path": os.path.abspath(path),
        "file_size": file_size,
        "seq": state.seq,
        "checkpoint_position": position_dict(state.checkpoint_position),
        "log_signature": signature_text(state.log_signature),
        "written": time_text(state.written_time),
        "first_log_needed": first_needed,
        "circular_logging": state.circular_logging,
        "log_file_size": state.log_file_size,
        "page_size": state.page_size,
        "attached": [
            {"db_id": db.db_id, "name": db.name, "signature": signature_text(db.signature)}
            for db in state.attached
        ],
        "backups": {
            "full": _backup_dict(state.last_full_backup),
            "incremental": _backup_dict(state.last_incremental_backup),
        },
        "copies": copies,
        "problems": problems,
    }


def _print_checkpoint(result: dict[str, Any]) -> None:
    console = stdout_console()
    table = Table(
        title=f"Checkpoint file {result['path']}", show_header=False, title_justify="left"
    )
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("checkpoint position", _text(_position_text(result["checkpoint_position"])))
    needed = result["first_log_needed"]
    if needed is None:
        table.add_row("first log needed", Text("none"))
    else:
        present = "" if needed["present"] else " (NOT PRESENT)"
        table.add_row(
            "first log needed", Text(f"{needed['generation']} ({needed['file']}){present}")
        )
    table.add_row("log signature", _text(result["log_signature"]))
    table.add_row("written", _text(result["written"]))
    table.add_row("seq", _text(result["seq"]))
    table.add_row("circular logging", Text("on" if result["circular_logging"] else "off"))
    table.add_row("log file size", _text(result["log_file_size"]))
    table.add_row("page size", _text(result["page_size"]))
    for kind, backup in result["backups"].items():
        table.add_row(f"last {kind} backup", _text(backup["text"]))
    for copy in result["copies"]:
        verdict = (
            Text(f"ok (seq {copy['seq']})", "green")
            if copy["valid"]
            else Text(f"DAMAGED: {copy['error']}", "bold red")
        )
        table.add_row(f"copy {copy['copy']}", verdict)
    console.print(table)
    attached = Table(title="Attached databases", title_justify="left")
    attached.add_column("id", justify="right")
    attached.add_column("name")
    attached.add_column("signature", overflow="fold")
    for db in result["attached"]:
        attached.add_row(str(db["db_id"]), Text(db["name"]), Text(db["signature"]))
    if result["attached"]:
        console.print(attached)
    else:
        console.print("no attached databases")
    _print_problems(console, result["problems"])


@dump_group.command("checkpoint", short_help="Show the checkpoint file (both copies).")
@click.argument(
    "path", metavar="edb.chk", type=click.Path(dir_okay=False, readable=False, path_type=str)
)
@json_option
@command_errors("dump checkpoint")
def dump_checkpoint_command(path: str, as_json: bool) -> None:
    """Show the checkpoint file, read-only (esentutl /mk).

    Where soft recovery starts, the first log file it needs, the log signature, circular
    logging, the attached databases, and whether each of the two copies is valid. Exits 1
    when a copy is damaged or older.
    """
    result = checkpoint_result(FileSystem(), path)
    if not as_json:
        _print_checkpoint(result)
    finish("dump checkpoint", as_json=as_json, ok=not result["problems"], result=result)


# --------------------------------------------------------------------------- logs


def _in_range(generation: int | None, first: int | None, last: int | None) -> bool:
    if generation is None:  # an unreadable edb.log: it is the newest file
        return last is None
    return (first is None or generation >= first) and (last is None or generation <= last)


def _header_fields(header: LogFileHeader | None) -> dict[str, Any]:
    if header is None:
        return {}
    return {
        "previous_generation_created": time_text(header.previous_generation_created_time),
        "previous_generation_end": header.previous_generation_end,
        "previous_generation_checksum": f"0x{header.previous_generation_checksum:08x}",
        "data_start": header.data_start,
        "page_size": header.page_size,
        "circular_logging": header.circular_logging,
        "reserve_log": header.reserve_log,
        "engine_version": header.engine_version,
    }


def _generation_dict(report: GenerationReport, inventory: LogInventory) -> dict[str, Any]:
    document = report.as_dict()
    entry = inventory.files.get(report.generation) if report.generation is not None else None
    if entry is not None and os.path.basename(entry.path) == report.file_name:
        document.update(_header_fields(entry.header))
    return document


def _short_hex(data: bytes) -> str:
    text = data[:MAX_KEY_BYTES].hex()
    return text + "…" if len(data) > MAX_KEY_BYTES else text


def record_dict(start: LogPosition, end: LogPosition, payload: bytes) -> dict[str, Any]:
    """One record as `dump logs --records --json` prints it (a JSON Lines object)."""
    document: dict[str, Any] = {
        "position": str(start),
        "generation": start.generation,
        "offset": start.offset,
        "end": str(end),
        "length": len(payload),
    }
    try:
        record: LogRecord = decode_record(payload, start)
    except JetError as exc:
        document.update(type="undecodable", error=exc.detail)
        return document
    if isinstance(record, CommitRecord):
        operations = record.operations
        document.update(
            type="commit",
            database_id=record.database_id,
            transaction_id=record.transaction_id,
            time=time_text(record.time_us),
            operations=len(operations),
            keys=[
                {
                    "op": "put" if op == OP_PUT else "delete",
                    "key": _short_hex(key),
                    "key_length": len(key),
                    "value_length": None if value is None else len(value),
                }
                for op, key, value in operations[:MAX_KEYS_LISTED]
            ],
            keys_truncated=len(operations) > MAX_KEYS_LISTED,
        )
    elif isinstance(record, CreateDatabaseRecord):
        document.update(
            type="create_database",
            database_id=record.database_id,
            name=record.name,
            page_size=record.page_size,
        )
    elif isinstance(record, (DetachDatabaseRecord, AttachDatabaseRecord)):
        document.update(
            type=(
                "detach_database" if isinstance(record, DetachDatabaseRecord) else "attach_database"
            ),
            database_id=record.database_id,
            name=record.name,
            signature=str(Signature(record.signature_random, record.signature_time_us)),
        )
    elif isinstance(record, ShutdownRecord):
        document.update(type="shutdown", time=time_text(record.time_us))
    else:
        assert isinstance(record, StartRecord)
        document.update(type="start", time=time_text(record.time_us))
    return document


def _record_line(record: dict[str, Any]) -> Text:
    kind = record["type"]
    head = f"{record['position']}  {kind:<15}"
    if kind == "commit":
        listed = record["keys"][:MAX_KEYS_PRINTED]
        keys = ", ".join(f"{k['op']} {k['key']}" for k in listed)
        more = ", …" if record["keys_truncated"] or len(record["keys"]) > len(listed) else ""
        body = (
            f"db {record['database_id']}  txn {record['transaction_id']}  "
            f"{record['operations']} op(s)  {keys}{more}"
        )
    elif kind == "create_database":
        body = f"db {record['database_id']}  {record['name']!r}  page size {record['page_size']}"
    elif kind in ("detach_database", "attach_database"):
        body = f"db {record['database_id']}  {record['name']!r}  signature {record['signature']}"
    elif kind == "undecodable":
        return Text.assemble(head, (str(record["error"]), "bold red"))
    else:
        body = str(record.get("time") or "")
    return Text(head + body)


@dataclass(frozen=True)
class _Skipped:
    """The record scan broke where recovery does not read: a warning, not an error."""

    error: JetError
    #: Where the records read end (the last record's end or the end of the last generation
    #: read through, whichever is later; the scan's start when neither).
    at: LogPosition
    #: The generation recovery starts reading at, where the records resume (None: past the
    #: range shown, nothing to resume).
    resumes_at: int | None
    message: str


def _scan_records(
    fs: FileSystem,
    inventory: LogInventory,
    first: int,
    last: int | None,
    counts: dict[str, int],
    *,
    signature: Signature | None,
    needed_from: int | None,
    needed_reason: str | None,
) -> Iterator[dict[str, Any] | _Skipped]:
    """Records from generation `first` up to `last` (None: the end of the log).

    A break below `needed_from` (where recovery starts reading) is yielded as `_Skipped` and
    the scan resumes at `needed_from`, reading from there as recovery does; a break recovery
    would meet raises. Breaks in `needed_from` itself are told apart by reading it again as
    recovery does: a broken link to the generation before it is not read by recovery (the
    resumed scan gets past it), damage in it is (the resumed scan breaks the same way).
    """
    start = LogPosition(first, 0)
    scanner = LogScanner(fs, inventory, owner=OWNER, signature=signature)
    read_needed = False  # a record recovery reads was shown: any break from here is needed
    at = start  # where the records shown end
    try:
        for entry in scanner.records(start):
            if last is not None and entry.start.generation > last:
                return
            read_needed = read_needed or (
                needed_from is not None and entry.start.generation >= needed_from
            )
            at = entry.end
            yield _counted(record_dict(entry.start, entry.end, entry.payload), counts)
        return
    except JetError as exc:
        if (
            needed_from is None
            or read_needed
            or first >= needed_from
            or scan_stop_generation(scanner.result, start) > needed_from
        ):
            raise
        tail = scanner.result.tail
        if tail is not None:
            at = max(at, LogPosition(tail.generation, tail.end_offset))
        held = exc
    resumes_at = needed_from if last is None or last >= needed_from else None
    resume = f"; records resume at generation {needed_from}" if resumes_at is not None else ""
    detail = (held.detail or str(held)).rstrip(".")
    first_file = log_file_name(fs, inventory.directory, needed_from)
    why = f": {needed_reason}" if needed_reason else ""
    skipped = _Skipped(
        held,
        at,
        resumes_at,
        f"records stop at {at}: {held.name}: {detail}. Recovery starts reading at generation "
        f"{needed_from} ({first_file}{why}) and does not read what broke, so this is a "
        f"warning, not an error (`jetstore logs removable {inventory.directory}` lists the "
        f"generations recovery no longer needs){resume}",
    )
    if resumes_at is None:
        yield skipped
        return
    announced = False
    scanner = LogScanner(fs, inventory, owner=OWNER, signature=signature)
    try:
        for entry in scanner.records(LogPosition(needed_from, 0)):
            if last is not None and entry.start.generation > last:
                break
            if not announced:
                announced = True
                yield skipped
            yield _counted(record_dict(entry.start, entry.end, entry.payload), counts)
    except JetError as exc:
        if not announced and type(exc) is type(held) and str(exc) == str(held):
            raise  # the same break where recovery reads: the damage is in `needed_from`
        if not announced:
            yield skipped
        raise
    if not announced:
        yield skipped


def _counted(record: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    counts["records"] += 1
    if record["type"] == "undecodable":
        counts["undecodable"] += 1
    return record


def generation_status(row: dict[str, Any]) -> Text:
    """A generation's status as `logs verify` and `dump logs` show it: ok in green, a torn
    tail in yellow, damage in bold red, or in yellow when recovery no longer reads that
    generation (the `needed` column then says "no")."""
    status = row["status"]
    if row.get("needed") is False and status in ("damaged", "unreadable"):
        return Text(status, "yellow")
    return Text(status, {"ok": "green", "torn-tail": "yellow"}.get(status, "bold red"))


def generation_needed(row: dict[str, Any]) -> Text:
    """Whether recovery reads the generation: "yes", "no", or "—" when nothing says where
    recovery starts (every generation then counts as needed; the line after the tables says
    why)."""
    needed = row.get("needed")
    return Text("—" if needed is None else "yes" if needed else "no")


def print_generations(console: Console, rows: list[dict[str, Any]]) -> None:
    """The verification of each generation as a table titled "Log generations" (shared with
    `logs verify`): gen, file, status, needed, records, frames, end.

    Every column is no_wrap: a status or file name split over lines reads as two. Whether
    recovery still reads a generation is a column of its own rather than a "(not needed)"
    after the status: with it the longest status, "unreadable (not needed)", made the table
    exactly 80 wide with 1 MiB log files and 3-digit generations, and 81 (the last column
    cut to "…") from generation 1000 on. Now, with the longest status ("unreadable") and
    counts as wide as their headers (up to 9,999,999 records), the table is 66 columns plus
    the digits of the largest generation and of the largest end offset (3 at least, the
    headers' width): within 80 while they add up to 14, so up to generation 9,999,999 with
    log files under 10 MB (7-digit offsets: the default 5 MiB), 999,999 under 100 MB, 9,999
    with the largest (1 GiB). Anything else a command shows per file goes to a second
    table, not here.
    """
    table = Table(title="Log generations", title_justify="left")
    for name, justify in (
        ("gen", "right"),
        ("file", "left"),
        ("status", "left"),
        ("needed", "left"),
        ("records", "right"),
        ("frames", "right"),
        ("end", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            _text(row["generation"]),
            Text(row["file_name"]),
            generation_status(row),
            generation_needed(row),
            _text(row["records"]),
            _text(row["frames"]),
            _text(row["end_offset"]),
        )
    console.print(table)


def _print_generations(console: Console, rows: list[dict[str, Any]]) -> None:
    # Two narrow tables rather than one wide one, each within 80 columns: the verification
    # in one, the header fields and the file size (which the size check compares with the
    # header's) in the other. The flags, rarely set, are lines below rather than a column
    # that would push the second table past 80.
    print_generations(console, rows)
    headers = Table(title="Log file headers", title_justify="left")
    for name, justify in (
        ("gen", "right"),
        ("created", "left"),
        ("size", "right"),
        ("prev end", "right"),
        ("prev checksum", "right"),
        ("page", "right"),
    ):
        headers.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    flagged: list[str] = []
    for row in rows:
        flags = [
            label
            for label, key in (
                ("circular logging", "circular_logging"),
                ("reserve log", "reserve_log"),
            )
            if row.get(key)
        ]
        if flags:
            flagged.append(f"{row['file_name']}: {', '.join(flags)}")
        headers.add_row(
            _text(row["generation"]),
            _text(row["created"]),
            _text(row["size"]),
            _text(row.get("previous_generation_end")),
            _text(row.get("previous_generation_checksum")),
            _text(row.get("page_size")),
        )
    console.print(headers)
    for line in flagged:
        console.print(Text(f"flags of {line}"))


def print_log_problems(console: Console, problems: list[dict[str, Any]]) -> None:
    """The problems of a log verification as a table (shared with `logs verify`)."""
    if not problems:
        return
    table = Table(title="Problems", title_justify="left")
    table.add_column("severity")
    table.add_column("where", no_wrap=True)
    table.add_column("error")
    table.add_column("message", overflow="fold")
    for problem in problems:
        severity = problem["severity"]
        style = {"error": "bold red", "warning": "yellow"}.get(severity, "cyan")
        where = problem["file_name"] or "—"
        if problem["offset"] is not None:
            where = f"{where} @ {problem['offset']}"
        table.add_row(
            Text(severity, style),
            Text(where),
            _text(problem["error"] and f"{problem['error']} ({problem['code']})"),
            Text(problem["message"]),
        )
    console.print(table)


def print_recovery_needs(console: Console, needs: dict[str, Any]) -> None:
    """Where recovery starts reading and why (`recovery_needs` of `LogVerification.as_dict`),
    or why every generation counts as needed (shared with `logs verify`)."""
    if needs["first_generation"] is not None:
        console.print(
            Text(
                f"recovery reads from generation {needs['first_generation']} "
                f"({needs['first_file']}): {needs['reason']}"
            )
        )
    else:
        console.print(Text(f"every generation counts as needed: {needs['reason']}"))


def _problem_in_range(problem: LogProblem, first: int | None, last: int | None) -> bool:
    return problem.generation is None or _in_range(problem.generation, first, last)


def _range_option(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[int, int | None] | None:
    if value is None:
        return None
    try:
        return parse_generation_range(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@dump_group.command("logs", short_help="Show every log generation, optionally every record.")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=str))
@click.option(
    "--range",
    "generation_range",
    metavar="A-B",
    callback=_range_option,
    help="Only generations A to B (A-: from A on; A: that one). Decimal, 0x hex or file names.",
)
@click.option("--records", is_flag=True, help="Also decode and show every log record.")
@json_option
@command_errors("dump logs")
def dump_logs_command(
    directory: str,
    generation_range: tuple[int, int | None] | None,
    records: bool,
    as_json: bool,
) -> None:
    """Show every log generation of DIR: header fields and verification result (esentutl /ml).

    With --records also every record (position, type, database, operations, keys in hex).
    With --json --records the output is JSON Lines: one object per record, then the usual
    envelope as the last line. Exits 1 when verification finds an error or a record cannot
    be read; damage only in generations recovery no longer reads is a warning (exit 0), as
    in `logs verify`.
    """
    fs = FileSystem()
    # As `logs verify`: a directory that is no instance (a typo, the parent directory) was
    # shown as an empty log stream with exit 0, as if its logs were fine.
    ensure_instance_directory(fs, directory)
    verification: LogVerification = verify_logs_as_recovery_needs(fs, directory, owner=OWNER)
    inventory = take_inventory(fs, directory, owner=OWNER)
    needs = verification.as_dict()["recovery_needs"]
    first, last = generation_range if generation_range is not None else (None, None)
    rows = [
        _generation_dict(report, inventory)
        for report in verification.generations
        if _in_range(report.generation, first, last)
    ]
    problems = [p for p in verification.problems if _problem_in_range(p, first, last)]
    problem_dicts = [p.as_dict() for p in problems]
    ok = not any(p.severity == "error" for p in problems)
    result: dict[str, Any] = {
        "directory": os.path.abspath(directory),
        "signature": verification.signature,
        "range": {"first": first, "last": last},
        "first_generation": verification.first_generation,
        "last_generation": verification.last_generation,
        "missing": [g for g in verification.missing if _in_range(g, first, last)],
        "generations": rows,
        "problems": problem_dicts,
        "verified_ok": ok,
        "recovery_needs": needs,
    }
    console = stdout_console()
    if not as_json:
        console.print(
            Text(f"log stream {verification.signature or 'unknown'} in {result['directory']}")
        )
        _print_generations(console, rows)
        print_log_problems(console, problem_dicts)
        if rows:
            print_recovery_needs(console, needs)
        unneeded = [
            r["file_name"]
            for r in rows
            if r["needed"] is False and r["status"] in ("damaged", "unreadable")
        ]
        if unneeded:
            console.print(
                Text(
                    f"damaged but not needed by recovery: {', '.join(unneeded)}; warnings, not "
                    f"errors (`jetstore logs removable {result['directory']}` lists what may "
                    "be removed)",
                    "yellow",
                )
            )
    if records:
        counts = {"records": 0, "undecodable": 0}
        records_error: dict[str, Any] | None = None
        records_warning: dict[str, Any] | None = None
        lowest = inventory.lowest
        start = max(first or 1, lowest) if lowest is not None else None
        if start is not None and (last is None or start <= last):
            end = last if last is not None else inventory.highest
            assert end is not None
            with progress(not as_json) as bar:
                task = bar.add_task("reading records", total=max(end - start + 1, 1))
                scan = _scan_records(
                    fs,
                    inventory,
                    start,
                    last,
                    counts,
                    signature=inventory.stream_signature(),
                    needed_from=verification.needed_from,
                    needed_reason=verification.needed_reason,
                )
                try:
                    for record in scan:
                        if isinstance(record, _Skipped):
                            records_warning = {
                                "message": record.message,
                                "stopped_at": str(record.at),
                                "resumed_at_generation": record.resumes_at,
                                "error": error_document(record.error),
                            }
                            if not as_json:
                                console.print(Text(f"warning: {record.message}", "yellow"))
                            continue
                        bar.update(task, completed=record["generation"] - start)
                        if as_json:
                            emit_json(record)
                        else:
                            console.print(_record_line(record), soft_wrap=True)
                except JetError as exc:
                    records_error = error_document(exc)
                    if not as_json:
                        console.print(Text.assemble(("records stop here: ", "bold red"), str(exc)))
        result.update(
            records=counts["records"],
            undecodable_records=counts["undecodable"],
            records_error=records_error,
            records_warning=records_warning,
        )
        ok = ok and records_error is None and counts["undecodable"] == 0
        if not as_json:
            console.print(Text(f"{counts['records']} record(s)"))
    finish("dump logs", as_json=as_json, ok=ok, result=result)

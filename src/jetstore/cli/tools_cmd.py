"""`jetstore integrity | compact | repair | export | import`: the offline database tools.

This module owns the command lines and the display; the work is done by `jetstore.tools`
(one library function per command). What the commands add:

* exit codes: `integrity` 1 when a problem is found; `repair` without `--accept-data-loss`
  1 when data would be lost; `import` 1 when a row failed or a batch's commit is in doubt,
  130 when interrupted (saying what was committed before); 3 when the instance is open
  (`InstanceNameInUse`) or the database is not clean (`DatabaseDirtyShutdown`); 4 when
  compaction finds too little free space (`DiskFull`); 2 when `compact --keep-original`
  finds a kept original (`DatabaseDuplicate`); the rest by the error's category;
* `export --output FILE` (stdout by default; with `--json` an output file is required, since
  stdout then holds the JSON document); the format is UTF-8 on stdout and on `import`'s
  stdin too, whatever the locale's encoding (`_in_export_encoding`);
* `import` opens the instance holding DB (the database's directory) itself, refusing when
  another process has it open.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TextIO, TypeVar

import click
from rich.table import Table
from rich.text import Text

from jetstore.cli.output import ExitCode, finish, json_option, stderr_console, stdout_console
from jetstore.cli.support import (
    ensure_instance_directory,
    fail,
    instance_options,
    open_instance,
    refuse_if_in_use,
    usage_failure,
)
from jetstore.errors import (
    DiskFull,
    FileNotFound,
    InstanceNameInUse,
    InvalidPath,
    JetError,
    from_os_error,
)
from jetstore.format.filenames import (
    CHECKPOINT_FILE,
    CURRENT_LOG,
    EVENT_LOG,
    EVENT_LOG_PREVIOUS,
    LOCK_FILE,
    TEMP_LOG,
    parse_database_file_name,
    parse_generation_log_name,
    parse_reserve_log_name,
)
from jetstore.io.files import FileSystem
from jetstore.tools.compact import PRECOMPACT_SUFFIX, compact_database
from jetstore.tools.export import FORMATS, export_table
from jetstore.tools.importer import ImportInterrupted, ImportResult, import_rows
from jetstore.tools.integrity import IntegrityReport, check_integrity
from jetstore.tools.repair import repair_database

__all__ = [
    "compact_command",
    "export_command",
    "import_command",
    "integrity_command",
    "repair_command",
]

P = ParamSpec("P")
R = TypeVar("R")


def _tool_errors(command: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """`command_errors` with the tools' own exit codes for an open instance and disk full."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            as_json = bool(kwargs.get("as_json"))
            try:
                return function(*args, **kwargs)
            except InstanceNameInUse as error:
                fail(error, command=command, as_json=as_json, exit_code=ExitCode.STATE)
            except DiskFull as error:
                fail(error, command=command, as_json=as_json, exit_code=ExitCode.IO)
            except JetError as error:
                fail(error, command=command, as_json=as_json)

        return wrapper

    return decorate


_DB_ARGUMENT = click.argument("database", metavar="DB", type=click.Path(path_type=str))


def _problem_lines(report: IntegrityReport, limit: int = 50) -> None:
    console = stdout_console()
    for problem in report.problems[:limit]:
        style = "red" if problem.severity == "error" else "yellow"
        console.print(Text(str(problem), style=style))
    hidden = len(report.problems) - limit + report.more_problems
    if hidden > 0:
        console.print(Text(f"... and {hidden} more (use --json for the full list)"))


# --------------------------------------------------------------------------- integrity


@click.command("integrity", short_help="Check a database file's consistency (read-only).")
@_DB_ARGUMENT
@json_option
@_tool_errors("integrity")
def integrity_command(database: str, as_json: bool) -> None:
    """Check the database file DB, read-only (esentutl /g): B+tree order and balance, free
    space accounting, catalog, records, index entries and long values.

    The database must be shut down cleanly (exit 3 otherwise: run `jetstore recover`) and its
    instance must not be open. Exit 1 when a problem is found; each names its page, table and
    key.
    """
    report = check_integrity(database)
    result = report.as_dict()
    if not as_json:
        console = stdout_console()
        table = Table(title=f"Integrity of {report.path}", show_header=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        table.add_row("pages", f"{report.page_count} of {report.page_size} bytes")
        table.add_row(
            "tree",
            f"depth {report.depth}, {report.branch_pages} branch + {report.leaf_pages} leaf "
            f"pages, {report.entries} entries",
        )
        table.add_row(
            "free space", f"{report.free_pages} free pages, {report.free_list_pages} list pages"
        )
        for name, counts in sorted(report.tables.items()):
            indexes = ", ".join(f"{k} {v}" for k, v in counts.index_entries.items()) or "none"
            table.add_row(
                f"table {name}",
                f"{counts.records} records; index entries: {indexes}; "
                f"{counts.long_values} long values",
            )
        console.print(table)
        _problem_lines(report)
        if report.ok:
            console.print(Text("integrity check passed", "bold green"))
        else:
            console.print(Text(f"integrity check FAILED: {report.errors} problem(s)", "bold red"))
    finish("integrity", as_json=as_json, ok=report.ok, result=result)


# --------------------------------------------------------------------------- compact


@click.command("compact", short_help="Offline defragmentation of a database file.")
@_DB_ARGUMENT
@click.option(
    "--keep-original",
    is_flag=True,
    help="Keep the original file as NAME.edb.precompact.",
)
@json_option
@_tool_errors("compact")
def compact_command(database: str, keep_original: bool, as_json: bool) -> None:
    """Rebuild the database file DB densely (esentutl /d): same database, fewer pages.

    The instance must not be open and the database must be clean (exit 3). The new file is
    written as NAME.edb.compacting, synced, checked with `integrity`, then renamed over DB.
    Too little free disk space for the live data is refused before anything is written
    (exit 4).
    """
    result = compact_database(database, keep_original=keep_original)
    if not as_json:
        console = stdout_console()
        console.print(
            Text(
                f"compacted {result.path}: {result.pages_before} -> {result.pages_after} pages "
                f"({result.bytes_before} -> {result.bytes_after} bytes), {result.entries} "
                f"entries, integrity ok, {result.seconds:.2f} s"
            )
        )
        if result.kept_original:
            console.print(Text(f"original kept as {result.kept_original}"))
    finish("compact", as_json=as_json, ok=True, result=result.as_dict())


# --------------------------------------------------------------------------- repair


@click.command("repair", short_help="Salvage a damaged database (last resort).")
@_DB_ARGUMENT
@click.option(
    "--accept-data-loss",
    is_flag=True,
    help="Replace DB by what can be salvaged; without it, only report what would be lost.",
)
@json_option
@_tool_errors("repair")
def repair_command(database: str, accept_data_loss: bool, as_json: bool) -> None:
    """Salvage every readable record of DB into a new database (esentutl /p).

    Without --accept-data-loss nothing is written: the report says what a repair would keep
    and drop (exit 1 if anything would be lost). With it, the repaired database (new
    signature, clean, bound to no log stream) replaces DB, the damaged file is kept as
    NAME.edb.damaged-<time>, and the instance's log and checkpoint files are moved into
    lost-logs-<time>/ so they can never be replayed into it.
    """
    report = repair_database(database, accept_data_loss=accept_data_loss)
    result = report.as_dict()
    if not as_json:
        _print_repair(result)
    ok = report.applied or not report.data_lost
    finish("repair", as_json=as_json, ok=ok, result=result)


def _print_repair(result: dict[str, Any]) -> None:
    console = stdout_console()
    title = "Repair of" if result["applied"] else "Repair (report only) of"
    console.print(Text(f"{title} {result['path']}", style="bold"))
    if result["header_lost"]:
        console.print(Text(f"both header copies unusable: {result['header_lost']}", "red"))
    if result["was_dirty"]:
        console.print(
            Text("the database was not shut down cleanly: changes in the logs are not replayed")
        )
    for page in result["damaged_pages"][:20]:
        console.print(Text(f"damaged page {page['page']}: {page['reason']}", "red"))
    console.print(
        Text(
            f"{result['entries_salvaged']} entries salvaged ({result['entries_from_old_pages']} "
            f"from {result['old_pages_used']} older page copies)"
        )
    )
    for name, table in result["tables"].items():
        console.print(
            Text(
                f"table {name}: {table['records_kept']} records kept, "
                f"{table['records_dropped']} dropped, {table['records_lost_known']} lost "
                f"(known from index entries or long values), "
                f"{table['index_entries_rebuilt']} index entries rebuilt"
            )
        )
        for dropped in table["dropped"][:10]:
            console.print(Text(f"  dropped {dropped['key']}: {dropped['reason']}"))
        if table["lost_known"]:
            console.print(Text(f"  lost: {', '.join(table['lost_known'][:10])}"))
    for name in result["lost_tables"]:
        console.print(Text(f"table {name}: its definition is lost, with all its data", "red"))
    for lost in result["lost_objects"]:
        console.print(
            Text(f"object {lost['object_id']}: {lost['entries']} entries of a lost table", "red")
        )
    if result["applied"]:
        console.print(Text(f"repaired; the damaged file is kept as {result['kept_damaged']}"))
        if result["moved_logs_to"]:
            console.print(Text(f"old logs moved to {result['moved_logs_to']}"))
        finished = result["finished_data_loss"]
        if finished is not None:
            # The open that would have reported this loss (event 113) finds it finished.
            console.print(
                Text(
                    f"an interrupted data-loss recovery is finished ({finished['record']}): "
                    f"{'; '.join(finished['reasons'])}; databases that lost data: "
                    f"{', '.join(finished['databases']) or 'none'}",
                    "red",
                )
            )
    else:
        refusal = result["would_refuse"]
        if refusal is not None:
            console.print(Text(f"--accept-data-loss would be refused: {refusal['message']}", "red"))
        if not result["data_lost"]:
            console.print(Text("nothing would be lost", "bold green"))
        elif refusal is None:
            console.print(
                Text("run again with --accept-data-loss to replace the database", "bold yellow")
            )
        else:
            console.print(
                Text("then run again with --accept-data-loss to replace it", "bold yellow")
            )


# --------------------------------------------------------------------------- export


#: How exported and imported files encode text: as the engine stores it (UTF-8, a lone
#: surrogate, which a str and a text column may hold, in its `surrogatepass` form). Text that
#: is valid Unicode is plain UTF-8; a strict codec made export fail on the rest (an internal
#: error) and import refuse it.
_TEXT_ENCODING = "utf-8"
_TEXT_ERRORS = "surrogatepass"


@contextlib.contextmanager
def _in_export_encoding(stream: TextIO) -> Iterator[TextIO]:
    """`stream` (stdout or stdin) as a text stream of the export format's encoding while
    the block runs: a new text layer over its byte buffer, whatever the locale's encoding.

    The format is UTF-8 by definition, so `export > FILE` writes the same bytes as
    `export -o FILE`, and `import -` reads them as from a file. The locale's encoding
    (PYTHONIOENCODING, LANG=C with ASCII, latin-1) made export end in an internal error on
    text it cannot represent, and import read UTF-8 as mojibake. A stream without a buffer
    (a StringIO an embedding program put there) takes and gives str as it is.
    """
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        yield stream
        return
    if stream.writable():
        stream.flush()  # what was written through the old layer goes first
    layer = io.TextIOWrapper(buffer, encoding=_TEXT_ENCODING, errors=_TEXT_ERRORS, newline="")
    try:
        yield layer
        if layer.writable():
            layer.flush()
    finally:
        # detach, never close: the buffer stays stdout's or stdin's (a layer collected while
        # attached would close it). A flush that failed above fails here again: suppressed,
        # the first error is the one reported.
        with contextlib.suppress(OSError, ValueError):
            layer.detach()


@contextlib.contextmanager
def _output(fs: FileSystem, path: str | None) -> Iterator[TextIO]:
    """The stream the export is written to: stdout, or `path` written as `path.partial`
    (a file of the handle registry, synced) and renamed when complete. A failed write (a
    full disk, EIO) is the `JetError` naming where it went, not an internal error; a reader
    gone away (EPIPE) stays `BrokenPipeError`, which the CLI reports as a closed output."""
    if path is None:
        try:
            with _in_export_encoding(sys.stdout) as stdout:
                yield stdout
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise from_os_error(exc, op="write the export to", path="<stdout>") from exc
        return
    full = os.path.abspath(path)
    temporary = full + ".partial"
    try:
        with contextlib.ExitStack() as stack:
            try:
                stream = stack.enter_context(
                    fs.text_file(
                        temporary,
                        owner=f"export:{full}",
                        create=True,
                        encoding=_TEXT_ENCODING,
                        errors=_TEXT_ERRORS,
                        newline="",
                    )
                )
            except JetError as error:
                # Named by FILE, not FILE.partial: the directory is what is missing, and FILE
                # is what the operator typed.
                raise _named_file_error(error, path=path, what="--output file") from error
            yield stream
        fs.rename(temporary, full)
        fs.fsync_directory(os.path.dirname(full))
    except BaseException:
        with contextlib.suppress(JetError):  # not created, or already gone: nothing to do
            fs.unlink(temporary)
        raise


def _named_file_error(error: JetError, *, path: str, what: str) -> JetError:
    """`error`, raised opening or creating a file the operator named on the command line,
    as said to that operator. A missing one is a wrong path: FileNotFound's own hint is
    about the instance's files (run `logs verify`, restore from a backup), which has nothing
    to do with it."""
    if not isinstance(error, FileNotFound):
        return error
    full = os.path.abspath(path)
    parent = os.path.dirname(full)
    detail = (
        f"{what} '{full}' does not exist"
        if os.path.isdir(parent)
        else f"{what} '{full}' cannot be reached: directory '{parent}' does not exist"
    )
    named = FileNotFound(detail, hint="check the path on the command line", path=full)
    named.errno = error.errno
    return named


#: Names of files an instance directory's engine owns (besides NAME.edb, edbXXXXXXXX.log and
#: edbresNNNNN.jrs).
_INSTANCE_FILES = (
    CURRENT_LOG,
    TEMP_LOG,
    CHECKPOINT_FILE,
    LOCK_FILE,
    EVENT_LOG,
    EVENT_LOG_PREVIOUS,
)


def _is_instance_file(output: str, database: str) -> bool:
    """Whether `output` is DB itself (by any path: `.` segments, a hard link) or names a file
    of the instance in DB's directory, a kept original among them. The export is renamed
    over its output at the end: over DB, a read-only command replaced the database by its
    records (exit 0)."""
    target = os.path.abspath(output)
    with contextlib.suppress(OSError):
        if os.path.samefile(target, database):
            return True
    try:
        same_directory = os.path.samefile(
            os.path.dirname(target), os.path.dirname(os.path.abspath(database))
        )
    except OSError:
        return False
    name = os.path.basename(target)
    return same_directory and (
        name in _INSTANCE_FILES
        or parse_database_file_name(name) is not None
        or parse_generation_log_name(name) is not None
        or parse_reserve_log_name(name) is not None
        or _is_kept_original(name)
    )


def _is_kept_original(name: str) -> bool:
    """A database's copy kept by `compact --keep-original` (`NAME.edb.precompact`) or by
    `repair` (`NAME.edb.damaged-<time>`): the only copy of the file before the tool ran."""
    base, dot, suffix = name.rpartition(".")
    return (
        bool(dot)
        and parse_database_file_name(base) is not None
        and ("." + suffix == PRECOMPACT_SUFFIX or suffix.startswith("damaged-"))
    )


def _format_of(path: str | None) -> str:
    """The format a file's name says: the same rule for `export -o` as for `import`, so that
    what `export -o t.csv` writes is what `import DB T t.csv` reads."""
    return "csv" if path is not None and path.lower().endswith(".csv") else "jsonl"


@click.command("export", short_help="Write a table's records as JSON lines or CSV.")
@_DB_ARGUMENT
@click.argument("table", metavar="TABLE")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Default: csv for a .csv FILE, else jsonl.",
)
@click.option(
    "--output",
    "-o",
    metavar="FILE",
    type=click.Path(dir_okay=False, path_type=str),
    default=None,
    help="Write to FILE (written as FILE.partial, renamed when complete); default (or '-') stdout.",
)
@json_option
@_tool_errors("export")
def export_command(
    database: str, table: str, fmt: str | None, output: str | None, as_json: bool
) -> None:
    """Export the records of TABLE of the database file DB (clean, instance not open).

    Values: bytes as base64, datetimes as ISO 8601, NULL as null (JSON) or \\N (CSV).
    Exit 141 when the reader of stdout goes away first (| head): the output is incomplete.
    """
    if output == "-":  # stdout, as import's FILE "-" is stdin (not a file named "-")
        output = None
    if as_json and output is None:
        usage_failure(
            "--json needs --output FILE (stdout holds the JSON document)",
            command="export",
            as_json=as_json,
        )
    if output is not None and _is_instance_file(output, database):
        raise InvalidPath(
            f"--output '{output}' is the database file or another file of its instance: the "
            "export would be renamed over it",
            hint="write the export to a file outside the instance's files (a new name)",
            path=os.path.abspath(output),
        )
    fs = FileSystem()
    with _output(fs, output) as stream:
        result = export_table(database, table, stream, fmt=fmt or _format_of(output), fs=fs)
    if not as_json:
        where = output or "stdout"
        stderr_console().print(Text(f"exported {result.rows} row(s) of {table} to {where}"))
    finish("export", as_json=as_json, ok=True, result={**result.as_dict(), "output": output})


# --------------------------------------------------------------------------- import


@click.command("import", short_help="Insert records from JSON lines or CSV into a table.")
@_DB_ARGUMENT
@click.argument("table", metavar="TABLE")
@click.argument("source", metavar="FILE", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="Default: csv for a .csv FILE, else jsonl.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True)
@json_option
@_tool_errors("import")
def import_command(
    database: str, table: str, source: str, fmt: str | None, batch_size: int, as_json: bool
) -> None:
    """Insert the rows of FILE ('-' for stdin) into TABLE of the database file DB.

    Opens the instance that holds DB (its directory; exit 3 if another process has it open);
    the table must exist. Rows are inserted in transactions of --batch-size rows; a row that
    fails is reported with its line number and the rest go on (exit 1 if any failed).
    """
    fs = FileSystem()
    full = os.path.abspath(database)
    name = parse_database_file_name(os.path.basename(full))
    if name is None:
        raise InvalidPath(
            f"'{full}' is not a database file name (NAME.edb)",
            hint="give the path of NAME.edb inside the instance directory",
            path=full,
        )
    if not fs.exists(full):
        raise FileNotFound(
            f"database file '{full}' does not exist",
            hint="create the database and its table first; import does not create them",
            path=full,
        )
    directory = ensure_instance_directory(fs, os.path.dirname(full))
    why = "import opens the instance"
    refuse_if_in_use(fs, directory, command="import", as_json=as_json, why=why)
    fmt = fmt or _format_of(source)
    options = instance_options(fs, directory)
    with contextlib.ExitStack() as stack:
        if source == "-":
            stream = stack.enter_context(_in_export_encoding(sys.stdin))
        else:
            try:
                stream = stack.enter_context(
                    fs.text_file(
                        os.path.abspath(source),
                        owner=f"import:{full}",
                        encoding=_TEXT_ENCODING,
                        errors=_TEXT_ERRORS,
                        newline="",
                    )
                )
            except JetError as error:
                raise _named_file_error(error, path=source, what="import file") from error
        instance = open_instance(directory, command="import", as_json=as_json, why=why, **options)
        try:
            result = import_rows(
                instance.database(name), table, stream, fmt=fmt, batch_size=batch_size
            )
        except ImportInterrupted as interrupt:
            result = interrupt.result
        finally:
            instance.close()
    if not as_json:
        console = stdout_console()
        console.print(
            Text(
                f"imported {result.inserted} of {result.rows} row(s) into {table} "
                f"({result.batches} transaction(s)); {result.failed} failed"
            )
        )
        for failure in result.failures[:50]:
            console.print(Text(f"line {failure['line']}: {failure['error']}", "red"))
        for line in _import_ending(result, directory):
            stderr_console().print(Text(line, "bold yellow"))
    if result.interrupted:
        finish(
            "import",
            as_json=as_json,
            ok=False,
            result=result.as_dict(),
            failed_code=ExitCode.INTERRUPTED,
        )
    ok = result.failed == 0 and not result.stopped
    finish("import", as_json=as_json, ok=ok, result=result.as_dict())


def _import_ending(result: ImportResult, directory: str) -> list[str]:
    """What an import that ended early (Ctrl-C, a commit in doubt) committed, and how to
    go on: the operator must know which rows are stored before importing again."""
    if not result.interrupted and not result.stopped:
        return []
    lines = []
    if result.interrupted:
        lines.append(
            f"interrupted: {result.inserted} row(s) committed in {result.batches} "
            f"transaction(s) before the interrupt"
        )
    else:
        lines.append(f"stopped: {result.stopped}")
    if result.in_doubt:
        first, last = result.in_doubt_lines
        lines.append(
            f"the batch of lines {first}-{last} ({result.in_doubt} row(s)) is in doubt: its "
            "commit was under way; open the instance again (`jetstore recover "
            f"{directory}`) and look for the row of line {first} to learn whether it is stored"
        )
    elif result.interrupted:
        lines.append("the batch being inserted was rolled back: nothing of it is stored")
    after = f"import the lines after line {result.committed_through}"
    if result.in_doubt:
        after = f"{after} (after line {result.in_doubt_lines[1]} if the batch in doubt is stored)"
    lines.append(
        f"every line up to line {result.committed_through} was dealt with; to go on, {after}"
    )
    return lines

"""`jetstore checksum PATH`: verify every page and block of jetstore files (esentutl /k).

This module owns the command; the checks are `jetstore.tools.checksum.checksum_path`'s (a
database file, a log file, a checkpoint file, an instance directory, or a backup set, which
is delegated to `jetstore.verify_backup`). The command adds a progress bar (stderr, only on a
terminal, per database file), the human tables and the exit code: 0 no bad page or block, 1
at least one (a bad block in a log generation recovery no longer reads is a warning, as in
`jetstore logs verify`: it does not count), 2 not a jetstore file or directory, 3 a file of
an unknown type (`FileInvalidType`), 4 PATH missing. Read-only.
"""

from __future__ import annotations

import os
from typing import Final

import click
from rich.progress import TaskID
from rich.table import Table
from rich.text import Text

from jetstore.backup.backupset import MANIFEST_NAME
from jetstore.cli.output import command_errors, finish, json_option, stdout_console
from jetstore.cli.support import ensure_instance_directory, progress
from jetstore.io.files import FileSystem
from jetstore.io.locking import HOLDER_INSTANCE
from jetstore.tools.checksum import ChecksumReport, checksum_path

__all__ = ["checksum_command"]

_SEVERITY_STYLE: Final = {"error": "bold red", "warning": "yellow", "info": "dim"}
#: Problems printed before the rest are summed up (all of them are in --json).
MAX_PRINTED: Final = 50


@click.command("checksum", short_help="Verify every page and log block of files (read-only).")
@click.argument("path", metavar="PATH", type=click.Path(path_type=str))
@json_option
@command_errors("checksum")
def checksum_command(path: str, as_json: bool) -> None:
    """Verify the checksum of every page of a database file, every block of a log file, both
    copies of a checkpoint file, or all of them in an instance directory (a backup set is
    checked against its manifest, as `verify-backup` does). Each bad page or block is named
    with its file, page number, log position or copy, and its ESE error.

    Exit 0 nothing bad, 1 at least one bad page or block. A bad block in a log generation
    recovery no longer reads is a warning (exit 0), as in `logs verify`.
    """
    fs = FileSystem()
    if fs.is_directory(path) and not fs.exists(os.path.join(path, MANIFEST_NAME)):
        path = ensure_instance_directory(fs, path)
    with progress(not as_json) as bar:
        tasks: dict[str, TaskID] = {}

        def advance(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], completed=done, total=total)

        report = checksum_path(path, fs=fs, owner="jetstore-cli", progress=advance)
    if not as_json:
        _print(report)
    finish("checksum", as_json=as_json, ok=report.ok, result=report.as_dict())


def _end(counts: dict[str, object]) -> str:
    """Where a log file's valid frames end, or that no end was found (an unreadable file)."""
    end = counts.get("end_offset")
    return "no valid frame found" if end is None else f"end at {end}"


def _detail(counts: dict[str, object], kind: str, *, backup: bool = False) -> str:
    if backup:
        # `verify_backup`'s findings per file of a set: pages or frames, not the counts of a
        # database or log file checked on its own.
        if counts.get("pages") is None and counts.get("frames") is None:
            return "not read"
        if kind == "database":
            return f"{counts.get('pages')} pages verified"
        return f"{counts.get('frames')} frames verified, {_end(counts)}"
    if kind == "database":
        return (
            f"{counts.get('pages')} pages ({counts.get('page_size')} bytes): "
            f"{counts.get('verified')} verified, {counts.get('unused')} unused, "
            f"{counts.get('beyond_end')} beyond the end, {counts.get('bad')} bad; "
            f"header copies ok: {counts.get('header_copies_ok')}/2"
        )
    if kind == "log":
        return (
            f"generation {counts.get('generation')}: {counts.get('frames')} frames, {_end(counts)}"
        )
    if kind == "checkpoint":
        return f"copies ok: {counts.get('copies_ok')}/2"
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v is not None)


def _print(report: ChecksumReport) -> None:
    console = stdout_console()
    if report.open_elsewhere:
        who = f"process {report.open_by_pid}" if report.open_by_pid else "another process"
        if report.held_by is None or report.held_by == HOLDER_INSTANCE:
            held = f"the instance is open in {who}"
        else:
            # A compact, repair, backup or restore: no instance to close, one to wait for.
            held = f"{report.held_by} ({who}) holds the instance directory"
        console.print(
            Text(
                f"warning: {held}: pages and log blocks written while this runs may show as "
                "damaged (for a consistent check, run it again once that has ended, or verify "
                "a backup)",
                style="yellow",
            )
        )
    table = Table(title=f"Checksums of {report.path}", title_justify="left")
    # kind and status never wrap ("unreadable (not needed)" split over two lines reads as
    # two statuses); the description of what was checked wraps instead.
    table.add_column("file")
    table.add_column("kind", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("checked")
    for file in report.files:
        data = file.as_dict()
        status, style = file.status, "green" if file.status == "ok" else "bold red"
        if file.status != "ok" and data.get("needed") is False:
            status, style = f"{file.status} (not needed)", "yellow"
        table.add_row(
            str(data["file"]),
            file.kind,
            Text(status, style=style),
            _detail(file.counts, file.kind, backup=report.kind == "backup"),
        )
    console.print(table)
    for problem in report.problems[:MAX_PRINTED]:
        error = "" if problem.error is None else f"JET_err{problem.error} ({problem.code}): "
        console.print(
            Text.assemble(
                (f"{problem.severity}: ", _SEVERITY_STYLE[problem.severity]),
                f"{problem.file.rsplit('/', 1)[-1]}, {problem.location}: {error}",
                problem.message,
            ),
            soft_wrap=True,
        )
    if len(report.problems) > MAX_PRINTED:
        console.print(Text(f"... and {len(report.problems) - MAX_PRINTED} more (--json)"))
    for skipped in report.not_checked:
        console.print(Text(f"not checked: {skipped['file']} ({skipped['reason']})", style="dim"))
    unneeded = [
        file for file in report.files if file.status != "ok" and file.counts.get("needed") is False
    ]
    bad = len(report.bad)
    if bad:
        console.print(Text(f"{bad} bad page(s) or block(s)", style="bold red"))
    elif unneeded:
        console.print(Text("no bad page or block that recovery reads", style="bold green"))
    else:
        console.print(Text("no bad page or block", style="bold green"))
    if unneeded:
        names = ", ".join(os.path.basename(file.path) for file in unneeded)
        directory = os.path.dirname(unneeded[0].path)
        console.print(
            Text(
                f"damaged but not needed by recovery: {names}; warnings, not errors (recovery "
                f"no longer reads these log files; `jetstore logs removable {directory}` lists "
                "what may be removed)",
                style="yellow",
            )
        )

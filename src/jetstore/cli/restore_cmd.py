"""`jetstore restore SET... --to DIR`: restore backup sets into a new instance (esentutl /c).

This module owns the command; the restore is `jetstore.backup.restore`'s: every check happens
before anything is written (one full set, then incrementals or one differential, one log
stream, no gap, the surviving logs continuing the chain, a target that is new or empty and
not open), then the files are copied, checked against their manifests, and rolled forward.

`--dry-run` prints the plan and writes nothing. `--until-generation N` stops replay after log
generation N, `--until-time ISO` after the last commit at or before that time (UTC unless
the time says otherwise). `--logs-from DIR` adds the surviving logs of the damaged instance.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from jetstore.backup.restore import restore
from jetstore.cli.output import ExitCode, command_errors, finish, json_option, stdout_console
from jetstore.cli.support import fail, is_within, progress, usage_failure
from jetstore.errors import FileAccessDenied
from jetstore.format.filenames import MAX_GENERATION
from jetstore.io.files import FileSystem
from jetstore.io.locking import is_locked

__all__ = ["restore_command"]


def _parse_time(text: str, *, as_json: bool) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        usage_failure(
            f"--until-time {text!r} is not an ISO 8601 time (e.g. 2026-11-22T10:30:00Z)",
            command="restore",
            as_json=as_json,
        )
    try:
        # The same instant in UTC: one a zone pushes outside years 1..9999 there
        # (0001-01-01T00:00+05:00) cannot be named by the restore, which overflowed (exit 5).
        return moment if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        usage_failure(
            f"--until-time {text!r} is outside the years 1 to 9999 in UTC",
            command="restore",
            as_json=as_json,
        )


def _is_live_instance(path: str | None) -> bool:
    return path is not None and os.path.isdir(path) and is_locked(FileSystem(), path)


@click.command("restore", short_help="Restore backup sets into a new instance directory.")
@click.argument("sets", metavar="SET...", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--to",
    "target",
    metavar="DIR",
    required=True,
    type=click.Path(path_type=str),
    help="The instance directory to create (must not exist, or be empty).",
)
@click.option(
    "--logs-from",
    metavar="DIR",
    type=click.Path(path_type=str),
    default=None,
    help="Roll forward through the surviving logs of the damaged instance in DIR too.",
)
@click.option(
    "--until-generation",
    # A generation outside the 32 bits of a log file name (0, negative, 2**32) can name no
    # log: a usage error (exit 2) saying the range, not the restore's "too low" (exit 3).
    type=click.IntRange(1, MAX_GENERATION),
    metavar="N",
    default=None,
    help=f"Stop after log generation N (1 to {MAX_GENERATION}).",
)
@click.option(
    "--until-time", metavar="ISO", default=None, help="Stop after the last commit at this time."
)
@click.option("--dry-run", is_flag=True, help="Check everything and print the plan only.")
@json_option
@command_errors("restore")
def restore_command(
    sets: tuple[str, ...],
    target: str,
    logs_from: str | None,
    until_generation: int | None,
    until_time: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Restore a full backup SET, then incrementals or one differential, into --to DIR.

    The restored instance is clean (it opens without recovery) and starts a log stream of its
    own: take a full backup of it to begin a new backup chain.
    """
    if until_generation is not None and until_time is not None:
        usage_failure(
            "give --until-generation or --until-time, not both",
            command="restore",
            as_json=as_json,
        )
    # The restored instance must not live inside a set (the set would hold an instance, and
    # removing the old set would remove the restore with it) nor inside the damaged
    # instance whose surviving logs it reads.
    for source in (*sets, *([logs_from] if logs_from is not None else [])):
        if is_within(target, source):
            usage_failure(
                f"--to {os.path.abspath(target)} must not be a SET or --logs-from directory, "
                "or inside one: restore into a directory of its own",
                command="restore",
                as_json=as_json,
            )
    until: int | datetime | None = until_generation
    if until_time is not None:
        until = _parse_time(until_time, as_json=as_json)
    with progress(not as_json and not dry_run, kind="bytes") as bar:
        task = bar.add_task("restoring", total=None)

        def advance(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=max(total, 1), description=name)

        try:
            outcome = restore(
                list(sets),
                target,
                logs_from=logs_from,
                until=until,
                dry_run=dry_run,
                progress=advance,
            )
        except FileAccessDenied as exc:
            # The target (or --logs-from) is the directory of an open instance: a wrong-state
            # condition (exit 3), as "in use" is for every admin command, not an I/O error.
            if _is_live_instance(exc.path):
                fail(exc, command="restore", as_json=as_json, exit_code=ExitCode.STATE)
            raise
    result: dict[str, Any] = outcome.as_dict()
    if not as_json:
        console = stdout_console()
        for line in outcome.plan.describe():
            console.print(Text(line))
        if outcome.executed:
            table = Table(show_header=False, title="Restore")
            # The value folds rather than ending in "…": the target is a path to copy.
            table.add_column(style="bold", no_wrap=True)
            table.add_column(overflow="fold")
            table.add_row("target", Text(outcome.plan.target))  # a path: no markup
            table.add_row("transactions replayed", str(outcome.replayed))
            table.add_row("stopped early", "yes" if outcome.stopped_early else "no")
            table.add_row("last record replayed ends at", outcome.restored_to or "-")
            table.add_row("time", f"{outcome.seconds:.2f} s")
            console.print(table)
            console.print(
                Text("restored: the instance is clean; take a full backup of it", "bold green")
            )
        else:
            console.print(Text("dry run: nothing was written", "bold"))
    finish("restore", as_json=as_json, ok=True, result=result)

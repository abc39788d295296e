"""`jetstore events DIR`: the instance's event log (`events.jsonl`, after its previous file
`events.1.jsonl` when it has rotated), filtered, as a table.

This module owns the command only; the events are written by `jetstore.instance.events` and
read with its `read_event_log` (damaged lines, and JSON lines that are no event, are
skipped). Filters: `--since` (an ISO 8601 time; without a zone it is UTC) and `--level` (the
lowest level shown: `warning` shows warnings and errors). Read-only; works whether or not
the instance is open.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, Final

import click
from rich.table import Table
from rich.text import Text

from jetstore.cli.output import command_errors, finish, json_option, stdout_console
from jetstore.instance.events import event_log_paths, read_event_log
from jetstore.io.files import FileSystem

__all__ = ["events_command", "parse_since"]

LEVELS: Final = ("info", "warning", "error")
_RANK: Final = {level: rank for rank, level in enumerate(LEVELS)}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def parse_since(text: str) -> int:
    """An ISO 8601 time (``2026-11-21``, ``2026-11-21T10:00``, ``...Z``, ``...+01:00``) as
    microseconds since the epoch; a time without a zone is UTC. ValueError when malformed."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _since_option(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time (e.g. 2026-11-21, 2026-11-21T10:00:00Z)"
        ) from None


def _event_time(event: dict[str, Any]) -> int | None:
    value = event.get("time_us")
    return value if isinstance(value, int) else None


@click.command("events", short_help="Show the instance's event log, filtered.")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=str))
@click.option(
    "--since",
    "since_us",
    metavar="ISO",
    callback=_since_option,
    help="Only events at or after this time (ISO 8601; UTC when no zone is given).",
)
@click.option(
    "--level",
    type=click.Choice(LEVELS),
    default=None,
    help="Only events of this level or more severe.",
)
@json_option
@command_errors("events")
def events_command(directory: str, since_us: int | None, level: str | None, as_json: bool) -> None:
    """Show the events of the instance in DIR (events.jsonl), oldest first."""
    fs = FileSystem()
    path = os.path.abspath(directory)
    # With a hint of its own: the generic ones sent the operator to `jetstore logs verify` (a
    # missing directory) or said every parent must be a directory (of DIR itself a file).
    fs.require_directory(
        path,
        what="instance directory",
        hint="give the directory that holds the instance's events.jsonl (its edb.log, edb.chk "
        "and .edb files)",
    )
    previous_path, log_path = event_log_paths(path)
    files = [p for p in (previous_path, log_path) if fs.exists(p)]
    exists = bool(files)
    events = read_event_log(fs, path)
    shown = []
    for event in events:
        if since_us is not None:
            moment = _event_time(event)
            if moment is None or moment < since_us:
                continue
        if level is not None and _RANK.get(str(event.get("level")), 0) < _RANK[level]:
            continue
        shown.append(event)
    result: dict[str, Any] = {
        "path": log_path,
        "exists": exists,
        "files": files,
        "total": len(events),
        "shown": len(shown),
        "filters": {"since_us": since_us, "level": level},
        "events": shown,
    }
    if not as_json:
        _print_events(result)
    finish("events", as_json=as_json, ok=True, result=result)


def _print_events(result: dict[str, Any]) -> None:
    console = stdout_console()
    if not result["exists"]:
        console.print(Text(f"no event log: {result['path']} does not exist"))
        return
    # The message below the name in one cell, not a column of its own: with the longest
    # names (32 characters, "recovery_checkpoint_file_ignored") a message column was left 4
    # wide at 80 columns and rich cut the level to "warn…". time, id, level and the longest
    # name take 75 columns; the message wraps within the name's width, whole words first.
    console.print(Text("Events in " + ", then ".join(result["files"])))
    table = Table()
    table.add_column("time", no_wrap=True)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("level", no_wrap=True)
    table.add_column("event", overflow="fold")
    for event in result["events"]:
        level = str(event.get("level", ""))
        style = {"error": "bold red", "warning": "yellow"}.get(level, "")
        table.add_row(
            Text(str(event.get("time", ""))),
            Text(str(event.get("id", ""))),
            Text(level, style),
            Text.assemble(
                (str(event.get("name", "")), "bold"), "\n", str(event.get("message", ""))
            ),
        )
    console.print(table)
    console.print(Text(f"{result['shown']} of {result['total']} event(s) shown"))

"""`jetstore counters DIR`: the instance's performance counters (`Instance.counters()`).

This module owns the command only. A running instance's live counters need the control
socket, which does not exist yet: when another process has the instance open the command
says so and exits 3. Otherwise it opens the instance for the purpose (recovery runs if it
was not shut down cleanly), prints the counters just after the open, and closes it again.
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from jetstore.cli.output import command_errors, finish, json_option, stdout_console
from jetstore.cli.support import (
    ensure_instance_directory,
    instance_options,
    open_instance,
    refuse_if_in_use,
)
from jetstore.io.files import FileSystem

__all__ = ["counters_command"]

_WHY = "the live counters of a running instance need the control socket, which is not available yet"


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


@click.command("counters", short_help="Show the instance's counters (opens it if not open).")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=str))
@json_option
@command_errors("counters")
def counters_command(directory: str, as_json: bool) -> None:
    """Show the counters of the instance in DIR.

    The instance is opened for the purpose and closed again (recovery runs if needed).
    When another process has it open: exit 3 (live counters need the control socket).
    """
    fs = FileSystem()
    path = ensure_instance_directory(fs, directory)
    refuse_if_in_use(fs, path, command="counters", as_json=as_json, why=_WHY)
    options = instance_options(fs, path)
    instance = open_instance(path, command="counters", as_json=as_json, why=_WHY, **options)
    try:
        counters = instance.counters()
        recovery = instance.recovery
        replayed = recovery.replayed if recovery is not None and recovery.needed else None
    finally:
        instance.close()
    result: dict[str, Any] = {
        "directory": path,
        "opened_for_this": True,
        "live": False,
        "recovery_replayed": replayed,
        "counters": counters,
    }
    if not as_json:
        console = stdout_console()
        console.print(
            Text(
                f"{path} was not open: opened it for this command and closed it again; these "
                "are the counters right after the open"
            )
        )
        if replayed is not None:
            console.print(Text(f"recovery ran on open and replayed {replayed} record(s)"))
        table = Table(title="Counters", title_justify="left")
        table.add_column("counter")
        table.add_column("value", justify="right", overflow="fold")
        for key, value in _flatten(counters):
            table.add_row(key, Text("—" if value is None else str(value)))
        console.print(table)
    finish("counters", as_json=as_json, ok=True, result=result)

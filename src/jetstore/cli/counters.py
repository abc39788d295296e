"""`jetstore counters DIR`: the instance's performance counters (`Instance.counters()`).

This module owns the command only. When another process has the instance open, the live
counters come from its control socket (`jetstore.control.client`; ``"live": true``); if that
process serves no socket the command says so and exits 3, as it does, with the socket's own
error, when one is served but does not accept or answer in time, or has no client slot free.
Otherwise it opens the instance for the purpose (recovery runs if it was not shut down
cleanly), prints the counters just after the open, and closes it again (``"live": false,
"opened_for_this": true``).
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from jetstore.cli.output import ExitCode, command_errors, finish, json_option, stdout_console
from jetstore.cli.support import (
    ensure_instance_directory,
    fail,
    instance_options,
    open_instance,
    refuse_if_in_use,
)
from jetstore.control.client import connect, nothing_serves
from jetstore.errors import InstanceUnavailable, OutOfSessions
from jetstore.io.files import FileSystem
from jetstore.io.locking import HOLDER_INSTANCE, is_locked, lock_holder_role

__all__ = ["counters_command"]

_WHY = (
    "its live counters come from its control socket, and it serves none (opened with "
    "control_socket=False, or its directory path is too long for a socket)"
)
#: When the holder is no instance (a restore, an offline tool): there is no socket to blame.
_WHY_NO_INSTANCE = (
    "no instance is open there to give live counters, and the command cannot open one for "
    "them while the directory is held"
)


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _live_counters(fs: FileSystem, path: str, *, as_json: bool) -> dict[str, Any] | None:
    """The counters from the control socket of the process that has `path` open (None if
    no process serves it, or it closed the instance meanwhile)."""
    try:
        client = connect(path, timeout=30.0)
    except InstanceUnavailable as exc:
        if nothing_serves(exc) or not is_locked(fs, path):
            return None
        fail(exc, command="counters", as_json=as_json, exit_code=ExitCode.STATE)
    with client:
        try:
            return client.counters()
        except (InstanceUnavailable, OutOfSessions) as exc:
            # A socket is served: it did not answer in time, closed the connection, or has
            # no client slot free. Its own words say which; "serves none" would send the
            # operator after a setting that is fine.
            if not is_locked(fs, path):
                return None  # the instance closed meanwhile: read the counters offline
            fail(exc, command="counters", as_json=as_json, exit_code=ExitCode.STATE)


@click.command("counters", short_help="Show the instance's counters (live if it is open).")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=str))
@json_option
@command_errors("counters")
def counters_command(directory: str, as_json: bool) -> None:
    """Show the counters of the instance in DIR.

    When another process has the instance open, its live counters come from its control
    socket (exit 3 if it serves none). Otherwise the instance is opened for the purpose and
    closed again (recovery runs if needed).
    """
    fs = FileSystem()
    path = ensure_instance_directory(fs, directory)
    live = _live_counters(fs, path, as_json=as_json) if is_locked(fs, path) else None
    if live is not None:
        result: dict[str, Any] = {
            "directory": path,
            "opened_for_this": False,
            "live": True,
            "recovery_replayed": None,
            "counters": live,
        }
        if not as_json:
            stdout_console().print(Text(f"{path} is open: live counters from its control socket"))
            _print_table(live)
        finish("counters", as_json=as_json, ok=True, result=result)
        return
    role = lock_holder_role(fs, path)
    why = _WHY if role in (None, HOLDER_INSTANCE) else _WHY_NO_INSTANCE
    refuse_if_in_use(fs, path, command="counters", as_json=as_json, why=why)
    options = instance_options(fs, path)
    options["control_socket"] = False  # opened for a moment: nobody to serve
    instance = open_instance(path, command="counters", as_json=as_json, why=_WHY, **options)
    try:
        counters = instance.counters()
        recovery = instance.recovery
        replayed = recovery.replayed if recovery is not None and recovery.needed else None
    finally:
        instance.close()
    result = {
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
        _print_table(counters)
    finish("counters", as_json=as_json, ok=True, result=result)


def _print_table(counters: dict[str, Any]) -> None:
    table = Table(title="Counters", title_justify="left")
    table.add_column("counter")
    table.add_column("value", justify="right", overflow="fold")
    for key, value in _flatten(counters):
        table.add_row(key, Text("—" if value is None else str(value)))
    stdout_console().print(table)

"""`jetstore status DIR`: a one-screen, read-only summary of an instance directory, for
monitoring.

This module owns the command only. It never writes (it works while the instance is open by
another process): it reads the database headers, the checkpoint file and the log headers, and
says in plain words what state everything is in. Warnings (exit 1, for monitoring scripts):
a database that was not shut down cleanly while no process has the instance open (it needs
recovery), a checkpoint file that is missing or damaged, a checkpoint lag of more than 256
generations, problems in the log inventory. Exit 0 otherwise.
"""

from __future__ import annotations

import os
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from jetstore.cli.output import command_errors, finish, json_option, stdout_console
from jetstore.cli.support import OWNER, ensure_instance_directory, log_file_name
from jetstore.errors import InvalidPath, JetError
from jetstore.format.checkpoint import read_checkpoint_file
from jetstore.format.dbheader import DatabaseState
from jetstore.format.filenames import (
    CHECKPOINT_FILE,
    parse_database_file_name,
)
from jetstore.instance.recoverydecisions import read_pending_data_loss
from jetstore.io.files import FileSystem
from jetstore.io.locking import HOLDER_INSTANCE, is_locked, lock_holder_role, read_lock_holder
from jetstore.log.reader import take_inventory
from jetstore.tools.dbfile import OfflineDatabase

__all__ = ["status_command"]

LAG_WARNING = 256


def _database(fs: FileSystem, path: str) -> dict[str, Any]:
    if fs.is_directory(path):
        # OfflineDatabase's refusal says to give the path of a NAME.edb file, a way out for
        # the tools that take one; here DIR was given, and the directory is in the way.
        error = InvalidPath(
            f"'{path}' is a directory, where the engine keeps a database file",
            hint=f"move the directory '{path}' away (or rename it): the name is one the "
            "engine uses for a database file",
            path=path,
        )
        return {"file": os.path.basename(path), "error": str(error)}
    try:
        # OfflineDatabase takes the page size from copy 1 when copy 0 cannot say it.
        with OfflineDatabase(fs, path, owner=OWNER) as db:
            header, problems = db.header, db.header_problems
    except JetError as exc:
        return {"file": os.path.basename(path), "error": str(exc)}
    low, high = header.generation_min_required, header.generation_max_required
    full = header.last_full_backup
    return {
        "file": os.path.basename(path),
        "state": header.state.name.lower().replace("_", " "),
        "clean": header.state is DatabaseState.CLEAN,
        "logs_required": [low, high],
        "logs_required_files": (
            [log_file_name(fs, os.path.dirname(path), g) for g in (low, high)]
            if low and high
            else []
        ),
        "checkpoint_generation": header.checkpoint_position.generation,
        "last_full_backup": None if full.is_none else str(full),
        "header_problems": problems,
    }


@click.command("status", short_help="One-screen summary of an instance (read-only).")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=str))
@json_option
@command_errors("status")
def status_command(directory: str, as_json: bool) -> None:
    """Summarize the instance in DIR without changing anything: database states, required
    logs, checkpoint and its lag, log files, last backup, warnings (exit 1 when any)."""
    fs = FileSystem()
    path = ensure_instance_directory(fs, directory)
    locked = is_locked(fs, path)
    holder_pid = read_lock_holder(fs, path) if locked else None
    role = lock_holder_role(fs, path) if locked else None
    # A compact, repair, offline backup or restore holds the same lock as an instance: it
    # is no open instance (nothing to connect to, nothing to close), so it is named as what
    # it is. A lock file without words (an older release's) was written by an instance.
    instance_holds = locked and (role is None or role == HOLDER_INSTANCE)
    open_by = holder_pid if instance_holds else None
    warnings: list[str] = []
    databases = [
        _database(fs, os.path.join(path, name))
        for name in fs.listdir(path)
        if parse_database_file_name(name) is not None
    ]
    for db in databases:
        if "error" in db:
            warnings.append(f"{db['file']}: {db['error']}")
        elif not db["clean"] and not locked:
            warnings.append(
                f"{db['file']} was not shut down cleanly and needs logs "
                f"{db['logs_required'][0]}-{db['logs_required'][1]}: run `jetstore recover "
                f"{path}`"
            )
        for problem in db.get("header_problems", []):
            warnings.append(f"{db['file']}: {problem}")
    pending = read_pending_data_loss(fs, path, OWNER)
    if pending is not None:
        # The databases may all read clean, yet the next open finishes a repair that lost
        # data (design D6): that is no "all is well".
        warnings.append(
            "a recovery that accepted data loss was cut short before it set every log aside "
            f"(its record: '{pending.path}'; the loss: {'; '.join(pending.reasons)}): the "
            f"next open finishes it and reports the loss; `jetstore diagnose {path}` says more"
        )
    inventory = take_inventory(fs, path, owner=OWNER)
    warnings.extend(inventory.problems)
    generations = inventory.generations
    log_bytes = sum(entry.size for entry in inventory.files.values())
    checkpoint: dict[str, Any] | None = None
    chk_path = os.path.join(path, CHECKPOINT_FILE)
    if fs.exists(chk_path):
        try:
            state, problems = read_checkpoint_file(
                fs.read_file(chk_path, owner=OWNER, limit=8192), path=chk_path
            )
            checkpoint = {
                "generation": state.checkpoint_position.generation,
                "position": str(state.checkpoint_position),
                "circular_logging": state.circular_logging,
                "problems": problems,
            }
            warnings.extend(f"{CHECKPOINT_FILE}: {p}" for p in problems)
        except JetError as exc:
            warnings.append(f"{CHECKPOINT_FILE} is unreadable: {exc}")
    elif generations:
        warnings.append(f"{CHECKPOINT_FILE} is missing (recovery uses the database headers)")
    lag = None
    if checkpoint is not None and generations:
        lag = max(generations) - checkpoint["generation"]
        if lag > LAG_WARNING:
            warnings.append(
                f"the checkpoint is {lag} generations behind the newest log: check that "
                f"{CHECKPOINT_FILE} is writable"
            )
    result: dict[str, Any] = {
        "directory": path,
        "open_by_pid": open_by,
        "lock_holder": (
            {"pid": holder_pid, "role": role or HOLDER_INSTANCE, "instance": instance_holds}
            if locked
            else None
        ),
        "databases": databases,
        "checkpoint": checkpoint,
        "checkpoint_lag_generations": lag,
        "log_generations": [min(generations), max(generations)] if generations else [],
        "log_files": len(generations),
        "log_bytes": log_bytes,
        "warnings": warnings,
    }
    if not as_json:
        console = stdout_console()
        if instance_holds:
            opened = f"open by process {holder_pid}" if holder_pid is not None else "open"
        elif locked:
            by = f" (process {holder_pid})" if holder_pid is not None else ""
            opened = f"not open as an instance: {role}{by} holds its lock"
        else:
            opened = "not open"
        console.print(Text(f"{path}: {opened}"))
        table = Table(title="Databases", title_justify="left")
        for column in ("file", "state", "logs required", "last full backup"):
            table.add_column(column)
        for db in databases:
            required = db.get("logs_required", [0, 0])
            table.add_row(
                db["file"],
                db.get("state", "unreadable"),
                "none" if required == [0, 0] else f"{required[0]}-{required[1]}",
                db.get("last_full_backup") or "never",
            )
        console.print(table)
        if generations:
            console.print(
                Text(
                    f"logs: generations {min(generations)}-{max(generations)} "
                    f"({len(generations)} files, {log_bytes} bytes); checkpoint at "
                    f"{checkpoint['position'] if checkpoint else 'unknown'}"
                    + (f", {lag} generation(s) behind" if lag is not None else "")
                )
            )
        for warning in warnings:
            console.print(Text(f"warning: {warning}"))
        if not warnings:
            console.print(Text("no warnings"))
    finish("status", as_json=as_json, ok=not warnings, result=result)

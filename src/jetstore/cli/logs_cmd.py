"""`jetstore logs verify|removable|remove`: is the log intact, which log files may go.

This module owns the three `logs` commands:

* `logs verify DIR`: `jetstore.log.verify.verify_logs`, read-only (esentutl /ml). DIR must
  be an instance directory (`ensure_instance_directory`). Where recovery starts reading
  (`jetstore.instance.diagnosis.logs_needed`, recovery's own decision) is passed in
  (`verify_logs_as_recovery_needs`, shared with `dump logs` and `checksum`): damage
  in a generation below it is a warning ("not needed", removable), damage in a generation
  recovery reads stays an error, and when nothing trustworthy says where recovery starts
  (no valid checkpoint file and no database of the stream, an unreadable database header)
  every generation counts as needed. Every record is decoded (`check_record`): the first
  one of a generation that does not decode is an error of check "record". Exit 0 when no
  problem has severity "error" (a torn tail of the newest log is normal after a crash and is
  shown as a note), 1 otherwise.
  `result` is `LogVerification.as_dict()` (with `recovery_needs`); when DIR holds no log file
  at all it also has `databases_needing_logs` (the databases not cleanly shut down, or whose
  header cannot be read), and `ok` is false (exit 1) unless that list is empty.
* `logs removable DIR`: opens the instance (only when no other process holds it: exit 3
  otherwise), asks `Instance.removable_logs()`, closes it, and lists with file names what
  crash recovery no longer needs and what is also covered by a backup. Nothing is deleted.
* `logs remove DIR --safe`: deletes the generations both lists hold (no restore point is
  lost); `--unneeded` deletes every generation crash recovery no longer needs (the backups
  taken so far can then no longer roll forward through them). `--dry-run` lists only.
  `Instance.remove_logs` does the work, under the same rules as circular logging: ascending,
  stopping at the first failure, never a generation a running backup copies.
"""

from __future__ import annotations

import os
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from jetstore.cli.dump import print_generations, print_log_problems, print_recovery_needs
from jetstore.cli.output import command_errors, finish, json_option, stdout_console
from jetstore.cli.support import (
    OWNER,
    ensure_instance_directory,
    instance_options,
    open_instance,
    refuse_if_in_use,
    usage_failure,
)
from jetstore.errors import JetError
from jetstore.format.dbheader import DatabaseState
from jetstore.format.filenames import generation_log_name, parse_database_file_name
from jetstore.instance.diagnosis import verify_logs_as_recovery_needs
from jetstore.io.files import FileSystem
from jetstore.tools.dbfile import OfflineDatabase

__all__ = ["logs_group"]


@click.group("logs", short_help="Verify the log files; list those no longer needed.")
def logs_group() -> None:
    """Check the log files of an instance directory, and say which ones may be removed."""


# --------------------------------------------------------------------------- verify


def _print_verification(result: dict[str, Any]) -> None:
    console = stdout_console()
    # The directory on a line of its own rather than in a table title, and the creation
    # times and file sizes in a second table: one table with them all was 109 columns wide,
    # so at 80 rich cut the file names and times to "…" and split the status. Each table
    # now fits 80 columns with real log files (`print_generations` says with which values).
    console.print(Text(f"Log files in {result['directory']}"))
    print_generations(console, result["generations"])
    if result["generations"]:
        headers = Table(title="Log file headers", title_justify="left")
        for name, justify in (
            ("gen", "right"),
            ("file", "left"),
            ("created", "left"),
            ("size", "right"),
        ):
            headers.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for row in result["generations"]:
            headers.add_row(
                Text("—" if row["generation"] is None else str(row["generation"])),
                Text(row["file_name"]),
                Text(str(row["created"] or "—")),
                Text("—" if row["size"] is None else str(row["size"])),
            )
        console.print(headers)
    print_log_problems(console, result["problems"])
    counts = result["counts"]
    needs = result["recovery_needs"]
    if result["generations"]:
        print_recovery_needs(console, needs)
    first = needs["first_generation"]
    missing = result["missing_files"]
    unneeded_missing = [
        name for g, name in zip(result["missing"], missing, strict=True) if first and g < first
    ]
    needed_missing = [name for name in missing if name not in unneeded_missing]
    if needed_missing:
        console.print(Text(f"missing: {', '.join(needed_missing)}", "bold red"))
    if unneeded_missing:
        console.print(
            Text(f"missing (not needed by recovery): {', '.join(unneeded_missing)}", "yellow")
        )
    if "databases_needing_logs" in result:
        needing = result["databases_needing_logs"]
        if not needing:
            console.print(
                Text("no log files; none are needed (every database is clean)", "bold green")
            )
        else:
            for entry in needing:
                console.print(
                    Text(f"database {entry['database']!r} ({entry['file']}): {entry['reason']}")
                )
            console.print(
                Text(
                    f"no log files, but {len(needing)} database(s) need them: recovery would "
                    "refuse to open the instance; put the log files back, or restore from a "
                    "backup",
                    "bold red",
                )
            )
    elif result["ok"]:
        torn = [p for p in result["problems"] if p["check"] == "torn-tail"]
        note = (
            " (the newest log ends in a torn write: normal after a crash; recovery ends the "
            "log there)"
            if torn
            else ""
        )
        console.print(Text(f"ok: the logs can be used by recovery{note}", "bold green"))
        unneeded = sorted(
            {
                p["file_name"]
                for p in result["problems"]
                if p["needed"] is False
                and p["error"] is not None
                and p["check"] != "missing"
                and p["file_name"]
            }
        )
        if unneeded:
            console.print(
                Text(
                    f"damaged but not needed by recovery: {', '.join(unneeded)}; they can be "
                    f"removed (`jetstore logs removable {result['directory']}`)",
                    "yellow",
                )
            )
    else:
        console.print(
            Text(
                f"{counts['error']} error(s), {counts['warning']} warning(s): recovery would "
                "refuse these logs or lose acknowledged data",
                "bold red",
            )
        )


@logs_group.command("verify", short_help="Check every log file; report every problem.")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=str))
@json_option
@command_errors("logs verify")
def logs_verify_command(directory: str, as_json: bool) -> None:
    """Check every log file of DIR, read-only (esentutl /ml): headers, the chain, every frame,
    every record (decoded as recovery decodes it).

    Exits 0 when recovery can use the logs (a torn tail of the newest log is normal after a
    crash; damage in a generation recovery no longer reads is a warning), 1 when a problem
    of severity "error" was found.
    """
    fs = FileSystem()
    ensure_instance_directory(fs, directory)
    verification = verify_logs_as_recovery_needs(fs, directory, owner=OWNER)
    result = verification.as_dict()
    ok = verification.ok
    if not verification.generations:
        # No log at all: fine when no database needs one (all shut down cleanly), fatal for
        # recovery otherwise. "the logs can be used" would be no answer either way.
        needing = _databases_needing_logs(fs, directory)
        result["databases_needing_logs"] = needing
        ok = ok and not needing
        result["ok"] = ok
    if not as_json:
        _print_verification(result)
    finish("logs verify", as_json=as_json, ok=ok, result=result)


def _databases_needing_logs(fs: FileSystem, directory: str) -> list[dict[str, Any]]:
    """The databases of `directory` that are not clean (recovery would need logs for them),
    or whose header cannot be read (nobody can tell): database, file, state, reason."""
    needing: list[dict[str, Any]] = []
    for file_name in fs.listdir(directory):
        name = parse_database_file_name(file_name)
        if name is None:
            continue
        path = os.path.join(directory, file_name)
        entry: dict[str, Any] = {"database": name, "file": file_name, "state": None}
        try:
            # OfflineDatabase takes the page size from copy 1 when copy 0 cannot say it.
            with OfflineDatabase(fs, path, owner=OWNER) as db:
                header = db.header
        except JetError as exc:
            entry["reason"] = f"its header cannot be read ({exc.name}: {exc.detail})"
            needing.append(entry)
            continue
        if header.state is not DatabaseState.CLEAN:
            entry["state"] = header.state.name
            entry["reason"] = f"it was not shut down cleanly (state {header.state.name})"
            needing.append(entry)
    return needing


# --------------------------------------------------------------------------- removable


def _files(fs: FileSystem, directory: str, generations: list[int]) -> list[dict[str, Any]]:
    rows = []
    for generation in generations:
        name = generation_log_name(generation)
        path = os.path.join(directory, name)
        size = fs.size(path) if fs.exists(path) else None
        rows.append({"generation": generation, "file": name, "size": size})
    return rows


@logs_group.command("removable", short_help="List log files crash recovery no longer needs.")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=str))
@json_option
@command_errors("logs removable")
def logs_removable_command(directory: str, as_json: bool) -> None:
    """List the log files of DIR that crash recovery no longer needs. Deletes nothing.

    Opens the instance for the purpose (recovery runs if it was not shut down cleanly) and
    closes it again; refuses (exit 3) when another process has it open.
    """
    fs = FileSystem()
    path = ensure_instance_directory(fs, directory)
    why = "the removable logs are computed by opening the instance"
    refuse_if_in_use(fs, path, command="logs removable", as_json=as_json, why=why)
    options = instance_options(fs, path)
    instance = open_instance(path, command="logs removable", as_json=as_json, why=why, **options)
    try:
        answer = instance.removable_logs()
        recovery = instance.recovery
        replayed = recovery.replayed if recovery is not None and recovery.needed else None
    finally:
        instance.close()
    not_needed = _files(fs, path, answer["not_needed_for_recovery"])
    covered = _files(fs, path, answer["covered_by_backup"])
    result: dict[str, Any] = {
        "directory": path,
        "opened_for_this": True,
        "recovery_replayed": replayed,
        "keep_from": answer["keep_from"],
        "keep_from_file": generation_log_name(answer["keep_from"])
        if answer["keep_from"] > 0
        else None,
        "reason": answer["reason"],
        "present": answer["present"],
        "not_needed_for_recovery": not_needed,
        "not_needed_bytes": sum(f["size"] or 0 for f in not_needed),
        "covered_by_backup": covered,
    }
    if not as_json:
        _print_removable(result)
    finish("logs removable", as_json=as_json, ok=True, result=result)


def _print_removable(result: dict[str, Any]) -> None:
    console = stdout_console()
    console.print(Text(f"opened {result['directory']} for this command, then closed it"))
    if result["recovery_replayed"] is not None:
        console.print(
            Text(f"recovery ran on open and replayed {result['recovery_replayed']} record(s)")
        )
    keep = result["keep_from_file"]
    console.print(
        Text(f"keep from generation {result['keep_from']} ({keep or 'all'}): {result['reason']}")
    )
    table = Table(title="Not needed for crash recovery", title_justify="left")
    table.add_column("gen", justify="right")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    table.add_column("covered by a backup")
    covered = {f["generation"] for f in result["covered_by_backup"]}
    for row in result["not_needed_for_recovery"]:
        table.add_row(
            str(row["generation"]),
            Text(row["file"]),
            "—" if row["size"] is None else str(row["size"]),
            "yes" if row["generation"] in covered else "no",
        )
    if result["not_needed_for_recovery"]:
        console.print(table)
        console.print(
            Text(
                "No backup covers them yet: removing them keeps crash recovery working but "
                "loses the ability to roll a restored backup forward through them."
                if not covered
                else "Files covered by a backup can be removed without losing a restore point."
            )
        )
    else:
        console.print(Text("every log file present is still needed for crash recovery"))


@logs_group.command("remove", short_help="Delete log files no longer needed (--safe: backed up).")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=str))
@click.option(
    "--safe",
    is_flag=True,
    help="Delete only what crash recovery no longer needs AND a completed backup holds.",
)
@click.option(
    "--unneeded",
    is_flag=True,
    help="Delete everything crash recovery no longer needs, backed up or not "
    "(restore points are lost).",
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@json_option
@command_errors("logs remove")
def logs_remove_command(
    directory: str, safe: bool, unneeded: bool, dry_run: bool, as_json: bool
) -> None:
    """Delete closed log files of DIR that crash recovery no longer needs.

    Exactly one of --safe or --unneeded is required. Opens the instance for the purpose and
    closes it again; refuses (exit 3) when another process has it open.
    """
    # Two flags, not one option with two flag values: with those the last flag given won,
    # and `--safe --unneeded` deleted the restore points --safe promises to keep.
    if safe == unneeded:
        usage_failure(
            "say which logs to remove: --safe (backed up) or --unneeded (loses restore points)"
            + (", not both" if safe else ""),
            command="logs remove",
            as_json=as_json,
        )
    mode = "safe" if safe else "unneeded"
    fs = FileSystem()
    path = ensure_instance_directory(fs, directory)
    why = "log files are removed by opening the instance"
    refuse_if_in_use(fs, path, command="logs remove", as_json=as_json, why=why)
    options = instance_options(fs, path)
    instance = open_instance(path, command="logs remove", as_json=as_json, why=why, **options)
    try:
        planned = _files(fs, path, instance.remove_logs(safe=mode == "safe", dry_run=True))
        removed = [] if dry_run else instance.remove_logs(safe=mode == "safe")
        answer = instance.removable_logs()
    finally:
        instance.close()
    result: dict[str, Any] = {
        "directory": path,
        "mode": mode,
        "dry_run": dry_run,
        "selected": planned,
        "removed": removed,
        "bytes": sum(f["size"] or 0 for f in planned),
        "backed_up_through": answer["backed_up_through"],
        "keep_from": answer["keep_from"],
        "reason": answer["reason"],
    }
    if not as_json:
        console = stdout_console()
        verb = "would remove" if dry_run else "removed"
        if planned:
            console.print(
                Text(
                    f"{verb} {len(planned)} log file(s), {result['bytes']} bytes: "
                    f"{planned[0]['file']} .. {planned[-1]['file']}"
                )
            )
        else:
            console.print(
                Text(
                    "nothing to remove"
                    + (
                        " (no completed backup covers the logs crash recovery no longer needs)"
                        if mode == "safe"
                        else ""
                    )
                )
            )
        console.print(Text(f"kept from generation {result['keep_from']}: {result['reason']}"))
    finish("logs remove", as_json=as_json, ok=True, result=result)

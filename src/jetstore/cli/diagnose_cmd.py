"""`jetstore diagnose DIR`: what opening the instance would do, in plain words (read-only).

This module owns the command; the verdict is `jetstore.instance.diagnosis.plan_recovery`'s,
which follows the same facts, in the same order, as soft recovery. The command adds the
instance-directory check (`ensure_instance_directory`), the human display and the exit code:

* 0: "clean" (nothing to replay) or "recoverable" (soft recovery will succeed; run
  `jetstore recover DIR` or just open it);
* 1: opening fails: "data-loss" (logs missing or damaged: restore from backup, or recover
  with `--accept-data-loss`), "restore" (no option of recovery helps: a database of another
  log stream, an unreadable header, files that do not belong together), "move-away" (a
  directory under a log's or database's name, a copy with a database's id: nothing is lost,
  move it and open again) or "other-release" (an intact file of another format version:
  open it with the release that wrote it);
* 3: "in-use": another process has the instance open (it is live: `jetstore status DIR`);
* 2 / 4: DIR is not an instance directory / does not exist.

Never writes anything: the planner opens files read-only and only probes the lock.
"""

from __future__ import annotations

from typing import Any, Final

import click
from rich.table import Table
from rich.text import Text

from jetstore.backup.backupset import refuse_backup_set
from jetstore.cli.output import ExitCode, command_errors, finish, json_option, stdout_console
from jetstore.cli.support import ensure_instance_directory
from jetstore.instance.diagnosis import RecoveryPlan, plan_recovery
from jetstore.io.files import FileSystem

__all__ = ["diagnose_command"]

_STYLES: Final = {
    "clean": "bold green",
    "recoverable": "bold green",
    "data-loss": "bold red",
    "restore": "bold red",
    "move-away": "bold yellow",
    "other-release": "bold yellow",
    "in-use": "bold yellow",
}


@click.command("diagnose", short_help="What opening an instance would do, and what to run.")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=str))
@json_option
@command_errors("diagnose")
def diagnose_command(directory: str, as_json: bool) -> None:
    """Say, without changing anything, whether the instance in DIR is clean, will recover by
    itself (from which generation), needs a restore or a recovery with data loss, or is
    open elsewhere, and the exact command to run next.

    Exit 0 clean or recoverable; 1 data loss, a restore needed, a file to move away or a
    file of another release; 3 open in another process.
    """
    fs = FileSystem()
    path = ensure_instance_directory(fs, directory)
    # What `jetstore.open` refuses before recovery (a backup set, a restore's staging
    # directory) is no instance: said "recoverable", the next command was refused.
    refuse_backup_set(fs, path, what="opening it as an instance")
    plan = plan_recovery(path, fs=fs, owner="jetstore-cli")
    if not as_json:
        _print(plan)
    failed = ExitCode.STATE if plan.verdict == "in-use" else ExitCode.PROBLEMS
    finish("diagnose", as_json=as_json, ok=plan.ok, result=plan.as_dict(), failed_code=failed)


def _print(plan: RecoveryPlan) -> None:
    console = stdout_console()
    document: dict[str, Any] = plan.as_dict()
    console.print(
        Text.assemble((f"{plan.verdict}: ", _STYLES[plan.verdict]), plan.summary),
    )
    if plan.databases:
        table = Table(title="Databases", title_justify="left")
        for column in ("file", "state", "log stream", "needs", "missing", "problems"):
            table.add_column(column)
        for db in document["databases"]:
            required = db["required"]
            table.add_row(
                db["file"],
                db["state"],
                db["stream"],
                "-" if not required else f"{required[0]}-{required[1]}",
                ", ".join(db["missing_files"]) or "-",
                db["error"]["name"] if db["error"] else "; ".join(db["header_problems"]) or "-",
            )
        console.print(table)
    if plan.checkpoint is not None:
        chk = plan.checkpoint
        line = f"checkpoint file: {chk.status}"
        if chk.position is not None:
            line += f" at {chk.position}"
        line += ", used" if chk.used else ", not used"
        if chk.reason:
            line += f" ({chk.reason})"
        console.print(Text(line))
        if chk.safe_because:
            console.print(Text(f"  recovery uses the headers, safe because {chk.safe_because}"))
    logs = document["logs"]
    if logs is not None:
        runs = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in document["generations"])
        unneeded = [w for w in logs["warnings"] if w["needed"] is False]
        console.print(
            Text(
                f"logs: generations {runs or 'none'}"
                + (f"; log end {plan.end}" if plan.end is not None else "")
                + (f"; torn tail at {plan.torn_tail}" if plan.torn_tail is not None else "")
                + ("" if logs["ok"] else f"; {len(logs['errors'])} error(s) in `logs verify`")
                + (
                    f"; {len(unneeded)} warning(s) in generations recovery does not read"
                    if unneeded
                    else ""
                )
            )
        )
    if plan.data_loss is not None:
        loss = plan.data_loss
        if loss.possible:
            kept = ", ".join(f"{n} to {p}" for n, p in loss.recovered_to.items())
            console.print(
                Text(
                    "with --accept-data-loss: replay stops at "
                    f"{loss.stopped_at or 'the checkpoint'}"
                    + (f"; databases brought back: {kept}" if kept else "")
                )
            )
        else:
            console.print(Text(f"--accept-data-loss would not help: {loss.reason}"))
    if plan.error is not None:
        console.print(Text(f"opening now fails with JET_err{plan.error.name} ({plan.error.code})"))
    for note in plan.notes:
        console.print(Text(f"note: {note}"))
    if plan.next_commands:
        console.print(Text("next:", style="bold"))
        for command in plan.next_commands:
            console.print(Text(f"  {command}"), soft_wrap=True)

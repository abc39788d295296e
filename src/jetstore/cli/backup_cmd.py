"""`jetstore backup` and `jetstore verify-backup`: write a backup set, check one.

This module owns the two commands:

* `backup INSTANCE_DIR --to DEST`: when no process has the instance open, an offline backup
  (`jetstore.backup.offline.backup_offline`: the directory lock is held throughout, every
  database must be cleanly shut down, `--recover` runs soft recovery first). When the
  instance is open (its lock is held), the backup has to be taken by the process that has it
  open: from another process that goes through the instance's control socket,
  `_online_backup` (`jetstore.control.client`; its connection is closed on every way out,
  a Ctrl-C before the backup starts included); any kind (full, incremental, differential,
  copy) works online. Exit codes as docs/cli.md lists them, online too: what the instance
  refuses is 3, a bad DEST 2, an I/O error 4, a full disk 5, a damaged source 1.
  A Ctrl-C once the set is written keeps it and says whether the instance recorded the
  backup (asking it when `complete` was sent: `_interrupted_after_publish`), exit 130.
  `result` is the set's manifest (`Manifest.to_dict()`) plus `path` and `data_loss` (the
  loss `--recover`'s open finished, also said on stderr; null when none).
* `verify-backup PATH`: `jetstore.verify_backup`, read-only. Exit 0 when the set is whole,
  1 when a problem was found; `result` is `BackupVerification.as_dict()` unchanged.

A progress bar (stderr, only on a terminal, never with --json) follows long copies.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.table import Table
from rich.text import Text

from jetstore.backup.backupset import Manifest
from jetstore.backup.offline import backup_offline
from jetstore.backup.session import BackupKind
from jetstore.backup.verify import verify_backup
from jetstore.cli.output import (
    ExitCode,
    command_errors,
    finish,
    json_option,
    report_interrupt,
    stdout_console,
)
from jetstore.cli.support import (
    data_loss_dict,
    ensure_instance_directory,
    fail,
    progress,
    usage_failure,
    warn_data_loss,
)
from jetstore.errors import (
    FileAccessDenied,
    InstanceNameInUse,
    InstanceUnavailable,
    InvalidBackup,
    JetError,
    OutOfSessions,
)
from jetstore.format.filenames import LOCK_FILE
from jetstore.instance.recovery import DataLoss
from jetstore.io.files import FileSystem
from jetstore.io.locking import (
    HOLDER_INSTANCE,
    describe_lock_holder,
    is_locked,
    lock_holder_role,
)

if TYPE_CHECKING:
    from jetstore.control.client import ControlClient

__all__ = ["backup_command", "verify_backup_command"]


def _online_backup(instance_dir: str, dest: str, kind: str, compress: bool, json: bool) -> Manifest:
    """An online backup of the instance another process has open, through its control
    socket (`jetstore.control.client`): the set is written here, made durable, and only then
    does the instance record the backup (and truncate logs). A progress bar unless `json`."""
    from jetstore.control.client import connect, nothing_serves

    # Closed on every way out, a Ctrl-C before `backup` (which closes it itself) included:
    # the connection would otherwise hold one of the server's client slots until exit.
    client: ControlClient | None = None
    try:
        try:
            client = connect(instance_dir)
        except InstanceUnavailable as exc:
            if not nothing_serves(exc):
                raise  # served, but it did not accept in time: its own words, exit 3
            fs = FileSystem()
            who = describe_lock_holder(fs, instance_dir)
            role = lock_holder_role(fs, instance_dir)
            if role is not None and role != HOLDER_INSTANCE:
                # An offline backup, a restore or a repair: no instance to serve a socket,
                # and no backup can be taken until it lets the directory go.
                raise InstanceNameInUse(
                    f"'{instance_dir}' is held by {who} ({LOCK_FILE}), not by an open "
                    f"instance: no {kind} backup can be taken while it holds the directory",
                    hint="wait for it to end (or end it), then run `jetstore backup` again",
                    path=os.path.join(instance_dir, LOCK_FILE),
                ) from exc
            raise InstanceNameInUse(
                f"the instance in '{instance_dir}' is open ({who} holds {LOCK_FILE}) but serves "
                f"no control socket for an online {kind} backup: {exc.detail}",
                hint="open the instance with control_socket=True (the default) from a directory "
                "path short enough for a socket, or take the backup inside that process "
                "(`instance.backup(DEST)`), or close it and run `jetstore backup` for an offline "
                "backup",
                path=exc.path,
            ) from exc
        try:
            with progress(not json, kind="bytes") as bar:
                task = bar.add_task(f"{kind} backup", total=None)

                def report(done: int, total: int, name: str) -> None:
                    bar.update(
                        task,
                        completed=done,
                        total=max(total, 1),
                        description=f"{kind} backup: {name}" if name else f"{kind} backup",
                    )

                return client.backup(dest, kind, compress=compress, progress=report)
        except KeyboardInterrupt:
            if client.published is None:
                raise  # nothing was kept: the plain "aborted" says it all
            _interrupted_after_publish(client, instance_dir, kind, json)
    finally:
        if client is not None:
            client.close()


def _interrupted_after_publish(
    client: ControlClient, instance_dir: str, kind: str, json: bool
) -> NoReturn:
    """Ctrl-C once the set was published: it is kept (whole and durable), and whether the
    instance recorded the backup decides what a later incremental continues from. Before
    `complete` was sent the instance did not (the client aborted the session); after, it is
    asked (`backup_outcome`), and a second Ctrl-C or no answer leaves it unknown, said with
    the commands that tell. Exit 130, with `path`, `session`, `backup_recorded` in --json."""
    from jetstore.control.client import backup_outcome

    dest, session = client.published, client.backup_session
    recorded: bool | None = None
    which = f"session {session}" if session is not None else "the last backup session"
    if not client.complete_sent:
        recorded = False
        record = (
            "the instance did not record it: the interrupt came before `complete` was sent, "
            "so the backup session was aborted (no backup history written, no log deleted)"
        )
    else:
        outcome = None
        if session is not None:
            try:
                outcome = backup_outcome(instance_dir, session)
            except KeyboardInterrupt:
                pass  # asked to stop asking: said unknown below
        if outcome == "completed":
            recorded = True
            record = f"the instance recorded the backup (event 151 backup_completed, {which})"
        elif outcome == "aborted":
            recorded = False
            record = (
                f"the instance did not record it (event 152 backup_aborted, {which}; "
                f"`jetstore events {instance_dir}` says why)"
            )
        elif outcome is not None:
            recorded = False
            record = (
                f"the instance failed to record it (event 153 backup_failed, {which}: "
                f"`jetstore events {instance_dir}` says why, and which database headers hold "
                "it); take a new full backup before any incremental or differential one"
            )
        else:
            record = (
                "whether the instance recorded it is unknown: `complete` was sent, and the "
                f"instance could not be asked; `jetstore events {instance_dir}` tells (event 151 "
                f"backup_completed: recorded; 152 backup_aborted or 153 backup_failed: not; "
                f"{which})"
                + (
                    f", and `jetstore status {instance_dir}` shows each database's last full backup"
                    if kind == BackupKind.FULL.value
                    else ""
                )
            )
    message = (
        f"interrupted (Ctrl-C) after the {kind} backup set '{dest}' was written: it is "
        "complete and durable and can be restored from (`jetstore verify-backup` checks it); "
        + record
    )
    code = report_interrupt(
        command="backup",
        as_json=json,
        message=message,
        path=dest,
        session=session,
        backup_recorded=recorded,
    )
    raise click.exceptions.Exit(int(code))


def _online_exit_code(error: JetError) -> ExitCode | None:
    """The exit code of a failed online backup: 3 when the instance could not be backed up
    (in use without a socket, its state, a backup already running, gone meanwhile, a kind
    its circular logging refuses, no client slot free on its socket); a bad DEST, an I/O
    error, a damaged source or a full disk keep their category's code (2, 4, 1, 5), as
    docs/cli.md lists them."""
    # By class, not category: the instance's refusals of a kind (usage) or of a client
    # (resource) share their categories with a bad DEST and a full destination disk.
    if isinstance(error, InvalidBackup | OutOfSessions):
        return ExitCode.STATE
    if error.category in ("usage", "io", "corruption", "resource"):
        return None
    return ExitCode.STATE


def _size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def _print_manifest(result: dict[str, Any]) -> None:
    console = stdout_console()
    title = (
        f"{'offline ' if result['offline'] else ''}{result['kind']} backup of "
        f"{result['source']} in {result['path']}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("file")
    table.add_column("kind")
    table.add_column("size", justify="right")
    table.add_column("stored", justify="right")
    table.add_column("crc32c")
    for entry in result["files"]:
        table.add_row(
            Text(entry["name"]),
            entry["kind"],
            _size_text(entry["size"]),
            _size_text(entry["stored_size"]),
            entry["crc32c"],
        )
    console.print(table)
    if result["logs"] == "included":
        console.print(
            Text(f"log generations {result['generation_low']}-{result['generation_high']}")
        )
    else:
        console.print(Text(f"no log files: {result['logs_note']}"))
    console.print(
        Text(
            f"backup set written: {len(result['files'])} file(s), "
            f"{_size_text(result['total_size'])} ({_size_text(result['stored_size'])} stored)",
            "bold green",
        )
    )


def _refuse(message: str, *, as_json: bool) -> NoReturn:
    usage_failure(message, command="backup", as_json=as_json)


@click.command("backup", short_help="Write a backup set of an instance (online if it is open).")
@click.argument("directory", metavar="INSTANCE_DIR", type=click.Path(path_type=str))
@click.option(
    "--to",
    "dest",
    metavar="DEST",
    required=True,
    type=click.Path(path_type=str),
    help="The backup set directory to create; it must not exist or be empty.",
)
@click.option(
    "--kind",
    type=click.Choice([k.value for k in BackupKind]),
    default=BackupKind.FULL.value,
    show_default=True,
    help="The kind of backup. An offline backup is always full.",
)
@click.option("--compress", is_flag=True, help="Store every file zstd-compressed (NAME.zst).")
@click.option(
    "--recover",
    is_flag=True,
    help="Offline: run soft recovery first (open and close the instance) when it was not "
    "shut down cleanly.",
)
@json_option
@command_errors("backup")
def backup_command(
    directory: str, dest: str, kind: str, compress: bool, recover: bool, as_json: bool
) -> None:
    """Write a backup set of the instance in INSTANCE_DIR into DEST.

    When no process has the instance open, an offline full backup: every database must be
    cleanly shut down (or give --recover). An instance open in another process is backed up
    through its control socket (exit 3 when it serves none).
    """
    fs = FileSystem()
    source = ensure_instance_directory(fs, directory)
    target = os.path.abspath(dest)
    # Resolved: INSTANCE_DIR reached through a symbolic link is INSTANCE_DIR too.
    real_target, real_source = os.path.realpath(target), os.path.realpath(source)
    if real_target == real_source or real_target.startswith(real_source + os.sep):
        _refuse(f"--to {target} must not be INSTANCE_DIR or inside it", as_json=as_json)
    # The loss a `--recover` open finished (a pending data loss, design D6): no side note
    # of the backup. Said at once, as every command whose open finished one says it, so
    # that a backup failing afterwards does not take it along.
    finished: list[DataLoss] = []

    def finished_loss(loss: DataLoss) -> None:
        finished.append(loss)
        warn_data_loss(loss)

    if is_locked(fs, source):
        try:
            manifest = _online_backup(source, target, kind, compress, as_json)
        except JetError as exc:
            fail(exc, command="backup", as_json=as_json, exit_code=_online_exit_code(exc))
    else:
        if kind != BackupKind.FULL.value:
            _refuse(
                f"an offline backup is always a full copy of the databases; a {kind} backup "
                "needs the instance open (it copies the running log stream)",
                as_json=as_json,
            )
        with progress(not as_json, kind="bytes") as bar:
            task = bar.add_task("backing up", total=None)

            def report(done: int, total: int, name: str) -> None:
                bar.update(
                    task,
                    completed=done,
                    total=max(total, 1),
                    description=f"backing up {name}" if name else "backing up",
                )

            try:
                manifest = backup_offline(
                    source,
                    target,
                    recover=recover,
                    compress=compress,
                    progress=report,
                    on_data_loss=finished_loss,
                )
            except FileAccessDenied as exc:
                # With an errno the OS refused the lock file (a read-only mount, no
                # permission): nobody holds it, and the online path would report an
                # instance that is not running.
                if (
                    exc.errno is not None
                    or exc.path is None
                    or os.path.basename(exc.path) != LOCK_FILE
                ):
                    raise
                # Opened by another process since the check above.
                try:
                    manifest = _online_backup(source, target, kind, compress, as_json)
                except JetError as online:
                    fail(
                        online,
                        command="backup",
                        as_json=as_json,
                        exit_code=_online_exit_code(online),
                    )
    result = {
        **manifest.to_dict(),
        "path": manifest.path,
        "data_loss": data_loss_dict(finished[0] if finished else None),
    }
    if not as_json:
        _print_manifest(result)
    finish("backup", as_json=as_json, ok=True, result=result)


def _print_verification(result: dict[str, Any]) -> None:
    console = stdout_console()
    table = Table(title=f"Backup set {result['path']}", title_justify="left")
    table.add_column("file")
    table.add_column("kind")
    table.add_column("status")
    table.add_column("size", justify="right")
    table.add_column("pages", justify="right")
    table.add_column("frames", justify="right")
    for row in result["files"]:
        status = row["status"]
        table.add_row(
            Text(row["name"]),
            row["kind"],
            Text(status, "green" if status == "ok" else "bold red"),
            _size_text(row["size"]),
            str(row["pages"]) if row["kind"] == "database" else "—",
            str(row["frames"]) if row["kind"] == "log" else "—",
        )
    if result["files"]:
        console.print(table)
    for problem in result["problems"]:
        where = []
        if problem["page"] is not None:
            where.append(f"page {problem['page']}")
        if problem["offset"] is not None:
            where.append(f"offset {problem['offset']}")
        place = f" ({', '.join(where)})" if where else ""
        console.print(
            Text.assemble(
                ("problem: ", "bold red"),
                (f"{problem['file'] or 'set'}{place}: ", "bold"),
                f"JET_err{problem['error']} ({problem['code']}): {problem['message']}",
            )
        )
    if result["ok"]:
        generations = result["generations"]
        logs = f", log generations {min(generations)}-{max(generations)}" if generations else ""
        console.print(
            Text(
                f"ok: {result['kind']}{' offline' if result['offline'] else ''} backup set, "
                f"every file matches its manifest{logs}",
                "bold green",
            )
        )
    else:
        console.print(
            Text(f"{len(result['problems'])} problem(s): the backup set is damaged", "bold red")
        )


@click.command("verify-backup", short_help="Check a backup set against its manifest.")
@click.argument("path", metavar="PATH", type=click.Path(path_type=str))
@json_option
@command_errors("verify-backup")
def verify_backup_command(path: str, as_json: bool) -> None:
    """Check the backup set in PATH, read-only: the manifest's checksum, every file's size
    and CRC32C, every database page, every log frame and the log chain.

    Exits 0 when the set matches its manifest, 1 when a problem was found.
    """
    with progress(not as_json, kind="spinner") as bar:
        bar.add_task(f"verifying {path}", total=None)
        verification = verify_backup(path)
    result = verification.as_dict()
    if not as_json:
        _print_verification(result)
    finish("verify-backup", as_json=as_json, ok=verification.ok, result=result)

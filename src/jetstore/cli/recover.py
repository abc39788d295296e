"""`jetstore recover DIR`: soft recovery in place, or on a copy (esentutl /r).

This module owns the command. Recovery itself is the engine's: `jetstore.open(DIR)` replays
the log from the checkpoint and `close()` leaves every database clean. The command adds:

* the refusal to touch an instance another process has open (exit 3), or a backup set
  (InvalidPath, exit 2: the engine refuses to open one, and `--into` refuses before copying);
* `--accept-data-loss`: passed to `jetstore.open`; missing or damaged logs then stop replay at
  the last consistent point instead of failing, and `result.data_loss` says what was lost,
  which databases lost it (`databases`) and which were recovered completely;
* `--into COPY`: every file of DIR except `jetstore.lock` is copied into COPY (which must not
  exist or be empty) and the copy is recovered; DIR is only read (and held, its directory
  lock taken, while it is copied: `_hold_while_copying`); symbolic links to
  directories (and to nothing) are skipped and listed, never followed; a copy that fails (a full
  disk) is removed again, so that the command can simply be run again;
* the report: records replayed, where replay started, notes, databases created by replay,
  the torn tail, the data loss.

A recovery error (MissingLogFile -528, RequiredLogFilesMissing -543, ...) is shown with the
shared error display; its message names the generations needed, those present and the
options, and the exit code follows its category (3 for missing or mismatched logs).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Final

import click
from rich.table import Table
from rich.text import Text

from jetstore.backup.backupset import refuse_backup_set
from jetstore.cli.output import (
    ExitCode,
    command_errors,
    finish,
    json_option,
    stderr_console,
    stdout_console,
)
from jetstore.cli.support import (
    OWNER,
    data_loss_dict,
    ensure_instance_directory,
    fail,
    in_use_error,
    instance_options,
    is_within,
    open_instance,
    position_dict,
    progress,
    refuse_if_in_use,
    usage_failure,
)
from jetstore.errors import FileAccessDenied, JetError
from jetstore.format.filenames import CONTROL_SOCKET, LOCK_FILE, TEMP_LOG
from jetstore.io.files import FileSystem
from jetstore.io.locking import DirectoryLock, acquire_directory_lock

__all__ = ["copy_instance", "recover_command"]

COPY_CHUNK: Final = 1 << 20
#: What the lock file of DIR says holds it while `--into` copies it.
_COPY_HOLDER: Final = "an offline tool (recover --into, copying it)"


#: Why an entry of DIR is not copied (`copy_instance`'s `skipped`).
LINK_TO_DIRECTORY: Final = "a symbolic link to a directory (not followed)"
LINK_TO_NOTHING: Final = "a symbolic link to nothing"


def _walk(fs: FileSystem, source: str) -> tuple[list[tuple[str, int]], list[dict[str, str]]]:
    """Every file under `source` (relative path, size), the lock file and socket left out,
    and the entries skipped (`path`, `why`).

    A symbolic link to a file is copied as the file (a database kept on another volume). One
    to a directory is not followed: no file of an instance lives under it, and `ln -s .
    DIR/loop` made the walk go round until "too many levels of symbolic links". One to
    nothing has nothing to copy. Nor has a FIFO, socket or device (no instance file is one):
    its open refused the whole copy after the files before it were copied."""
    found: list[tuple[str, int]] = []
    skipped: list[dict[str, str]] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        for name in fs.listdir(os.path.join(source, relative)):
            if not relative and name in (LOCK_FILE, CONTROL_SOCKET):
                continue  # the lock, and a stale control socket a crash left (not a file)
            path = os.path.join(source, relative, name)
            entry = os.path.join(relative, name)
            link = fs.is_symbolic_link(path)
            if link and fs.is_directory(path):
                skipped.append({"path": entry, "why": LINK_TO_DIRECTORY})
            elif link and not fs.exists(path):
                skipped.append({"path": entry, "why": LINK_TO_NOTHING})
            elif fs.is_directory(path):
                pending.append(entry)
            elif (special := fs.special_kind(path)) is not None:
                skipped.append({"path": entry, "why": f"{special}, not a regular file"})
            else:
                found.append((entry, fs.size(path)))
    return sorted(found), sorted(skipped, key=lambda s: s["path"])


def copy_instance(
    fs: FileSystem, source: str, target: str, *, show_progress: bool
) -> dict[str, Any]:
    """Copy every file of `source` except the lock into the new or empty `target`.

    Files are read and written through `fs` (so the I/O hook sees them), each synced, then
    the directories. Returns ``{"files": n, "bytes": b, "skipped": [...]}`` (`_walk`).
    """
    files, skipped = _walk(fs, source)
    total = sum(size for _name, size in files)
    fs.makedirs(target)
    directories = {target}
    with progress(show_progress, kind="bytes") as bar:
        task = bar.add_task("copying", total=max(total, 1))
        for relative, size in files:
            destination = os.path.join(target, relative)
            parent = os.path.dirname(destination)
            if parent not in directories:
                fs.makedirs(parent)
                directories.add(parent)
            with (
                fs.opened(os.path.join(source, relative), owner=OWNER, writable=False) as reader,
                fs.opened(destination, owner=OWNER, create=True, exclusive=True) as writer,
            ):
                offset = 0
                while offset < size:
                    chunk = reader.pread(min(COPY_CHUNK, size - offset), offset)
                    if not chunk:
                        break
                    writer.pwrite(chunk, offset)
                    offset += len(chunk)
                    bar.advance(task, len(chunk))
                writer.fsync()
    for directory in sorted(directories, key=len, reverse=True):
        fs.fsync_directory(directory, owner=OWNER)
    return {"files": len(files), "bytes": total, "skipped": skipped}


def _hold_while_copying(
    fs: FileSystem, source: str, *, as_json: bool, why: str
) -> DirectoryLock | None:
    """The directory lock of `source` for the copy (as `restore --logs-from` holds its
    directory): probed only, an instance opened meanwhile recovered, rolled and checkpointed
    while the files were read, and the copy mixed files from before and after. None when
    `source` has no lock file (no instance ever opened it: only read, as promised) or this
    process may not write it (a read-only DIR, where no instance can write either)."""
    if not fs.exists(os.path.join(source, LOCK_FILE)):
        return None
    try:
        return acquire_directory_lock(fs, source, owner=OWNER, holder=_COPY_HOLDER)
    except FileAccessDenied as exc:
        if exc.errno is None:  # taken since the probe
            fail(
                in_use_error(fs, source, why),
                command="recover",
                as_json=as_json,
                exit_code=ExitCode.STATE,
            )
    return None


def _holds_anything(fs: FileSystem, target: str) -> bool:
    try:
        return fs.is_directory(target) and bool(fs.listdir(target))
    except JetError:
        return fs.exists(target)


def _remove_copy(fs: FileSystem, target: str, existed: bool) -> None:
    """Remove what `copy_instance` put into `target` (all of it: it was new or empty)."""
    with contextlib.suppress(JetError):
        if not existed:
            fs.remove_tree(target)
            return
        for name in fs.listdir(target):
            with contextlib.suppress(JetError):
                fs.remove_tree(os.path.join(target, name))


def _print_result(result: dict[str, Any]) -> None:
    console = stdout_console()
    if result["source"] is not None:
        console.print(
            Text(
                f"copied {result['copied']['files']} file(s), {result['copied']['bytes']} "
                f"bytes from {result['source']} into {result['directory']} (original untouched)"
            )
        )
        for entry in result["copied"]["skipped"]:
            console.print(Text(f"skipped {entry['path']}: {entry['why']}"))
    table = Table(title=f"Recovery of {result['directory']}", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("recovery needed", "yes" if result["needed"] else "no (clean shutdown)")
    start = result["start"]
    shown = "—" if start is None or not result["needed"] else start["text"]
    table.add_row("replay started at", shown)
    table.add_row("records replayed", str(result["replayed"]))
    table.add_row("databases", Text(", ".join(result["databases"]) or "none"))
    table.add_row("created by replay", Text(", ".join(result["created"]) or "none"))
    torn = result["torn_tail"]
    table.add_row("torn log tail", "none" if torn is None else f"at {torn['text']} (discarded)")
    table.add_row("log generation now", str(result["log_generation"]))
    table.add_row("time", f"{result['seconds']:.2f} s")
    console.print(table)
    for note in result["notes"]:
        if not note.startswith(TEMP_LOG):  # the prepared next log is always there
            console.print(Text(f"note: {note}"))
    loss = result["data_loss"]
    if loss is not None:
        console.print(Text("DATA LOSS ACCEPTED", "bold red"))
        console.print(Text(f"  reason: {loss['reason']}"))
        stopped = loss["stopped_at"]
        console.print(
            Text(
                "  replay stopped at: "
                + ("each database's checkpoint" if stopped is None else stopped["text"])
            )
        )
        console.print(Text(f"  databases that lost data: {', '.join(loss['databases']) or 'none'}"))
        if loss["without_file"]:
            console.print(
                Text(
                    "  without a file (logged changes set aside): "
                    + ", ".join(loss["without_file"])
                )
            )
        console.print(
            Text(f"  recovered completely: {', '.join(loss['recovered_completely']) or 'none'}")
        )
        console.print(Text(f"  old logs moved to: {loss['moved_logs_to'] or 'nowhere'}"))
    else:
        console.print(Text("recovered: every database is clean", "bold green"))


@click.command("recover", short_help="Soft recovery: replay the logs, leave databases clean.")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=str))
@click.option(
    "--accept-data-loss",
    is_flag=True,
    help="When logs are missing or damaged, stop replay at the last consistent point, move "
    "the old logs aside and start a new log stream (what was lost is reported).",
)
@click.option(
    "--into",
    "into",
    metavar="COPY",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="Copy DIR (without jetstore.lock) into COPY, which must not exist or be empty, and "
    "recover the copy; DIR is left untouched.",
)
@json_option
@command_errors("recover")
def recover_command(
    directory: str, accept_data_loss: bool, into: str | None, as_json: bool
) -> None:
    """Run soft recovery on the instance in DIR and shut it down cleanly (esentutl /r).

    Refuses (exit 3) when another process has the instance open. A missing or damaged log
    file stops recovery with an error naming the files (exit 3) unless --accept-data-loss.
    """
    fs = FileSystem()
    source = ensure_instance_directory(fs, directory)
    why = "recovery needs the instance to itself"
    refuse_if_in_use(fs, source, command="recover", as_json=as_json, why=why)
    target = source
    copied: dict[str, Any] | None = None
    if into is not None:
        # Refused before the copy as the open of DIR itself would be (the copy would be a
        # set too): a backup set is restored with `jetstore restore`.
        refuse_backup_set(fs, source, what="recovering a copy of it")
        target = os.path.abspath(into)
        if is_within(target, source):
            usage_failure(
                f"--into {target} must not be DIR or inside it",
                command="recover",
                as_json=as_json,
            )
        if fs.exists(target) and (not fs.is_directory(target) or fs.listdir(target)):
            usage_failure(
                f"--into {target} exists and is not an empty directory",
                command="recover",
                as_json=as_json,
            )
        existed = fs.exists(target)
        held = _hold_while_copying(fs, source, as_json=as_json, why=why)
        try:
            copied = copy_instance(fs, source, target, show_progress=not as_json)
        except BaseException:
            # COPY was new or empty: all it holds is this copy, which is not whole. Left
            # there, it made the next `--into COPY` a refusal (no longer empty).
            # "the partial copy was removed" where COPY could not even be created (a parent
            # that is a file, a name too long) sent the operator looking for it.
            began = _holds_anything(fs, target)
            _remove_copy(fs, target, existed)
            if not as_json:
                what = (
                    f"the partial copy in {target} was removed"
                    if began
                    else f"nothing was copied into {target}"
                )
                stderr_console().print(Text(f"{what}; {source} was not touched"))
            raise
        finally:
            if held is not None:
                held.release()
    options = instance_options(fs, target)
    started = time.monotonic()
    try:
        with progress(not as_json, kind="spinner") as bar:
            bar.add_task(f"recovering {target}", total=None)
            instance = open_instance(
                target,
                command="recover",
                as_json=as_json,
                why=why,
                accept_data_loss=accept_data_loss,
                **options,
            )
            try:
                outcome = instance.recovery
                log_generation = instance.counters()["log_generation"]
                databases = instance.databases()
            finally:
                instance.close()
    except JetError:
        if copied is not None and not as_json:
            stderr_console().print(
                Text(f"the copy in {target} was left as it is; {source} was not touched")
            )
        raise
    assert outcome is not None
    loss = outcome.data_loss
    result: dict[str, Any] = {
        "directory": target,
        "source": source if copied is not None else None,
        "copied": copied,
        "accept_data_loss": accept_data_loss,
        "options": options,
        "needed": outcome.needed,
        "replayed": outcome.replayed,
        "skipped": outcome.skipped,
        "start": position_dict(outcome.start),
        "torn_tail": position_dict(outcome.torn_tail),
        "notes": list(outcome.notes),
        "created": list(outcome.created),
        "databases": databases,
        "log_generation": log_generation,
        "data_loss": data_loss_dict(loss),
        "seconds": round(time.monotonic() - started, 3),
    }
    if not as_json:
        _print_result(result)
    finish("recover", as_json=as_json, ok=True, result=result)

"""What the admin commands (`dump`, `logs`, `recover`, `events`, `counters`) share.

This module owns the small pieces those commands would otherwise repeat:

* how values are shown: positions (``{"generation", "offset", "text"}``), signatures
  (``<32 hex digits>@<creation time>``, the form `verify_logs` uses, so a header's log
  signature can be compared with the logs' by eye), stored times (``None`` for 0 = never);
* which file holds a generation (`edbXXXXXXXX.log`, or `edb.log` while it is the current one);
* the instance-directory checks: it exists, it looks like an instance, it is not open by
  another process (`refuse_if_in_use`, exit 3), and the options to open it with
  (`instance_options`: the log file size and page size its newest log says, never circular
  logging, so an admin command never deletes a log file as a side effect);
* `open_instance`: `jetstore.open` with a lock conflict reported as "in use" (exit 3), and
  a data loss the open finished said on stderr (`warn_data_loss`; `data_loss_dict` for a
  JSON result);
* `progress`: a transient progress display on stderr, only when stderr is a terminal;
* `parse_generation_range` for ``--range A-B``.

Everything here is read-only except `open_instance`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any, NoReturn

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

import jetstore
from jetstore.cli.output import ExitCode, report_error, report_usage, stderr_console
from jetstore.errors import (
    FileAccessDenied,
    InstanceNameInUse,
    InvalidPath,
    JetError,
)
from jetstore.format.checkpoint import read_checkpoint_file
from jetstore.format.common import Signature, format_time_us
from jetstore.format.filenames import (
    CHECKPOINT_FILE,
    CURRENT_LOG,
    DATABASE_SUFFIX,
    LOCK_FILE,
    MAX_GENERATION,
    generation_log_name,
    parse_database_file_name,
    parse_generation_log_name,
)
from jetstore.format.logheader import LOG_HEADER_SIZE, decode_log_header
from jetstore.format.positions import LogPosition
from jetstore.instance.recovery import DataLoss
from jetstore.io.files import FileSystem
from jetstore.io.locking import (
    HOLDER_INSTANCE,
    describe_lock_holder,
    is_locked,
    lock_holder_role,
)
from jetstore.log.reader import take_inventory

__all__ = [
    "OWNER",
    "data_loss_dict",
    "ensure_instance_directory",
    "fail",
    "instance_options",
    "is_within",
    "log_file_name",
    "open_instance",
    "parse_generation_range",
    "position_dict",
    "progress",
    "refuse_if_in_use",
    "signature_text",
    "time_text",
    "warn_data_loss",
]

#: Handle owner label for everything the admin commands open.
OWNER = "jetstore-cli"


# --------------------------------------------------------------------------- values


def signature_text(signature: Signature) -> str:
    """``<32 hex digits>@<creation time>``, or ``"none"`` for the all-zero signature."""
    if signature.is_none:
        return "none"
    return f"{signature.random.hex()}@{format_time_us(signature.time_us)}"


def time_text(time_us: int) -> str | None:
    """A stored time as ``2026-11-21T23:59:01Z``; None for 0 (never set)."""
    return None if time_us == 0 else format_time_us(time_us)


def position_dict(position: LogPosition | None) -> dict[str, Any] | None:
    """``{"generation", "offset", "text"}`` (text: ``0000002A:00001000``, hex as ESE prints)."""
    if position is None:
        return None
    return {
        "generation": position.generation,
        "offset": position.offset,
        "text": str(LogPosition(*position)),
    }


def log_file_name(fs: FileSystem, directory: str, generation: int) -> str:
    """The file that holds `generation` in `directory`.

    `edbXXXXXXXX.log` if that file exists; `edb.log` if the current log is that generation
    (its header says so); otherwise the name it has once closed (`edbXXXXXXXX.log`).
    """
    name = generation_log_name(generation)
    if fs.exists(os.path.join(directory, name)):
        return name
    current = os.path.join(directory, CURRENT_LOG)
    if fs.exists(current):
        try:
            data = fs.read_file(current, owner=OWNER, limit=LOG_HEADER_SIZE)
            if decode_log_header(data, path=current).generation == generation:
                return CURRENT_LOG
        except JetError:
            pass
    return name


# --------------------------------------------------------------------------- failing


def fail(
    error: JetError, *, command: str, as_json: bool, exit_code: ExitCode | None = None
) -> NoReturn:
    """Report `error` (shared display) and end the command with its exit code."""
    code = report_error(error, command=command, as_json=as_json, exit_code=exit_code)
    raise click.exceptions.Exit(int(code))


def usage_failure(message: str, *, command: str, as_json: bool) -> NoReturn:
    """A usage problem found by the command itself: message, exit 2."""
    code = report_usage(message, command=command, as_json=as_json)
    raise click.exceptions.Exit(int(code))


def is_within(path: str, directory: str) -> bool:
    """Whether `path` is `directory` or lies inside it, symbolic links resolved: a directory
    reached through a link is that directory (compared as given, a copy went into it)."""
    real, base = os.path.realpath(path), os.path.realpath(directory)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


# --------------------------------------------------------------------------- instance


def ensure_instance_directory(fs: FileSystem, directory: str) -> str:
    """The absolute path of `directory` if it is an existing instance directory.

    FileNotFound (exit 4) if it does not exist; InvalidPath (exit 2) if it is not a directory
    or holds no jetstore file (no log, checkpoint or database file): the commands that open
    an instance must never create one where there was none.
    """
    path = os.path.abspath(directory)
    fs.require_directory(
        path,
        what="instance directory",
        hint="give the directory that holds the instance's edb.log, edb.chk and .edb files",
    )
    names = fs.listdir(path)
    if not any(_is_instance_file(name) for name in names):
        raise InvalidPath(
            f"'{path}' is not a jetstore instance directory: it holds no {CURRENT_LOG}, "
            f"edbXXXXXXXX.log, {CHECKPOINT_FILE} or *{DATABASE_SUFFIX} file",
            hint="give the directory that holds the instance's files; this command does not "
            "create a new instance",
            path=path,
        )
    return path


def _is_instance_file(name: str) -> bool:
    return (
        name in (CURRENT_LOG, CHECKPOINT_FILE)
        or name.endswith(DATABASE_SUFFIX)
        or parse_generation_log_name(name) is not None
    )


def in_use_error(fs: FileSystem, directory: str, why: str) -> InstanceNameInUse:
    return InstanceNameInUse(
        f"the instance in '{directory}' is in use: {describe_lock_holder(fs, directory)} "
        f"holds its lock ({LOCK_FILE}); {why}",
        hint=in_use_hint(fs, directory),
        path=os.path.join(directory, LOCK_FILE),
    )


def in_use_hint(fs: FileSystem, directory: str) -> str:
    """The way out of a refusal by the directory lock's holder: an instance is closed, a
    compact, repair, offline backup or restore is waited for (it has no instance to close)."""
    role = lock_holder_role(fs, directory)
    if role is None or role == HOLDER_INSTANCE:
        return "run the command again after that process closed the instance"
    return f"wait for {role} to end (or stop that process), then run the command again"


def refuse_if_in_use(
    fs: FileSystem, directory: str, *, command: str, as_json: bool, why: str
) -> None:
    """End the command with exit 3 if another opener holds the instance lock right now."""
    if is_locked(fs, directory):
        fail(
            in_use_error(fs, directory, why),
            command=command,
            as_json=as_json,
            exit_code=ExitCode.STATE,
        )


def instance_options(fs: FileSystem, directory: str) -> dict[str, Any]:
    """Options for `jetstore.open` that match what the instance was created with.

    The newest readable log header gives the log file size and page size (the checkpoint
    file when no log is readable); without either the defaults apply. Circular logging is
    always off: an admin command must never delete a log file as a side effect.
    """
    options: dict[str, Any] = {"circular_logging": False}
    try:
        inventory = take_inventory(fs, directory, owner=OWNER)
    except JetError:
        inventory = None
    if inventory is not None and inventory.highest is not None:
        header = inventory.files[inventory.highest].header
        if header is not None:
            options.update(log_file_size=header.log_file_size, page_size=header.page_size)
            return options
    path = os.path.join(directory, CHECKPOINT_FILE)
    if fs.exists(path):
        try:
            state, _problems = read_checkpoint_file(fs.read_file(path, owner=OWNER), path=path)
        except JetError:
            return options
        options.update(log_file_size=state.log_file_size, page_size=state.page_size)
    return options


def open_instance(
    directory: str, *, command: str, as_json: bool, why: str, **options: Any
) -> jetstore.Instance:
    """`jetstore.open`; losing the race for the lock is reported as "in use" (exit 3). An
    open that finished a data-loss repair (a plain open does, design D6) is said on stderr:
    the command opened the instance for its own purpose, and the loss is no side note."""
    try:
        instance = jetstore.open(directory, **options)
    except FileAccessDenied as exc:
        # With an errno the OS refused the file (permissions, a read-only mount): nobody
        # holds it, and "in use" would send the operator after a process that does not exist.
        if exc.errno is not None or exc.path is None:
            raise
        if os.path.basename(exc.path) == LOCK_FILE:
            fail(
                in_use_error(FileSystem(), directory, why),
                command=command,
                as_json=as_json,
                exit_code=ExitCode.STATE,
            )
        if parse_database_file_name(os.path.basename(exc.path)):
            # A database file another instance holds (a hard link or symlink to its file):
            # in use, like the instance lock, and its message names the holder.
            fail(exc, command=command, as_json=as_json, exit_code=ExitCode.STATE)
        raise
    loss = instance.recovery.data_loss if instance.recovery is not None else None
    if loss is not None and command != "recover":  # recover reports it in its result
        warn_data_loss(loss)
    return instance


def warn_data_loss(loss: DataLoss) -> None:
    """Say on stderr the loss an open accepted or finished (event 113's words)."""
    stderr_console().print(Text(f"warning: {loss.describe()}", style="yellow"))


def data_loss_dict(loss: DataLoss | None) -> dict[str, Any] | None:
    """A `DataLoss` in a command's JSON result (`recover`'s and `backup --recover`'s)."""
    if loss is None:
        return None
    return {
        "reason": loss.reason,
        "stopped_at": position_dict(loss.stopped_at),
        "databases": list(loss.databases),
        "recovered_completely": list(loss.recovered_completely),
        "without_file": list(loss.without_file),
        "moved_logs_to": loss.moved_logs_to,
    }


# --------------------------------------------------------------------------- progress


@contextlib.contextmanager
def progress(enabled: bool, *, kind: str = "count") -> Iterator[Progress]:
    """A transient progress display on stderr (`kind`: "count", "bytes" or "spinner").

    Shown only when `enabled` and stderr is a terminal; otherwise a working but silent
    `Progress` is handed out, so callers never branch on it.
    """
    console = stderr_console()
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if kind == "count":
        columns += [BarColumn(), MofNCompleteColumn()]
    elif kind == "bytes":
        columns += [BarColumn(), DownloadColumn()]
    columns.append(TimeElapsedColumn())
    show = enabled and console.is_terminal
    with Progress(*columns, console=console, transient=True, disable=not show) as bar:
        yield bar


# --------------------------------------------------------------------------- arguments


#: A generation number as `--range` takes it. Not `int()`'s grammar, which also takes "1_000",
#: "+3" and "0x_2A".
_GENERATION_NUMBER = re.compile(r"0[xX][0-9A-Fa-f]+|[0-9]+")


def _parse_generation(text: str) -> int:
    text = text.strip()
    named = parse_generation_log_name(text)
    if named is not None:
        return named
    if _GENERATION_NUMBER.fullmatch(text) is None:
        raise ValueError(text)
    return int(text, 0) if text[1:2] in ("x", "X") else int(text)


def parse_generation_range(text: str) -> tuple[int, int | None]:
    """``A-B``, ``A-`` (from A on) or ``A`` (that generation only); decimal, ``0x`` hex or
    file names (``edb0000002A.log``). ValueError with a message when malformed, or when a
    generation is outside 1 to ``MAX_GENERATION`` (a log file name holds 8 hex digits)."""
    first_text, dash, last_text = text.partition("-")
    try:
        first = _parse_generation(first_text)
        last = _parse_generation(last_text) if last_text.strip() else None
        if not dash:
            last = first
    except ValueError:
        raise ValueError(
            f"{text!r} is not a generation range; use A-B, A- or A with generation numbers "
            "(3, 0x2A) or file names (edb0000002A.log)"
        ) from None
    for value in (first, last):
        if value is not None and not 1 <= value <= MAX_GENERATION:
            raise ValueError(
                f"{text!r}: generation {value} is outside the log generations, 1 to "
                f"{MAX_GENERATION} (0x{MAX_GENERATION:X}: 8 hex digits in a log file name)"
            )
    if last is not None and last < first:
        raise ValueError(f"{text!r}: the last generation is below the first")
    return first, last

"""What every `jetstore` command shares: exit codes, the `--json` envelope, error reporting.

This module owns the CLI's contract with scripts and operators:

* Exit codes (``ExitCode``): 0 ok, 1 problems found, 2 usage, 3 wrong database state, 4 I/O
  error, 5 internal error (130 when interrupted with Ctrl-C, 141 when the reader of the
  output went away, as shells report for a process ended by SIGINT or SIGPIPE).
* A failed output (``OutputFailed``): any other failed write to stdout or stderr (a full disk
  behind ``> FILE``) is reported on stderr with exit 4, never as an internal error.
* A closed output (``OutputClosed``): a write to stdout or stderr whose reader is gone
  (``jetstore export ... | head``) ends the command quietly; `jetstore.cli.main` catches it in
  one place and `discard_closed_output` keeps the interpreter's final flush quiet.
* The JSON envelope: with ``--json`` a command prints exactly one JSON object on stdout,
  ``{"schema": 1, "ok": bool, "command": str, "result": {...}}`` or, when it failed,
  ``{"schema": 1, "ok": false, "command": str, "error": {...}}``. Nothing else goes to stdout.
* How a ``JetError`` is shown: never a traceback; its ESE name, number, detail and what to do,
  on stderr, with the exit code chosen by the error's category (``exit_code_for``).

Commands decorate their callback with ``@command_errors("name")`` and end with
``finish(...)``; both raise ``click.exceptions.Exit`` so `jetstore.cli.main` sees one path.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn, ParamSpec, TypeVar

import click
from rich.console import Console
from rich.padding import Padding
from rich.text import Text

from jetstore.errors import DatabaseDuplicate, InstanceNameInUse, JetError, from_os_error
from jetstore.io.files import discard_writes_to
from jetstore.tools.values import json_float

__all__ = [
    "EXIT_CODES_HELP",
    "JSON_SCHEMA_VERSION",
    "ExitCode",
    "OutputClosed",
    "OutputFailed",
    "command_errors",
    "discard_closed_output",
    "emit_json",
    "envelope",
    "exit_code_for",
    "finish",
    "json_option",
    "report_error",
    "stderr_console",
    "stdout_console",
]

P = ParamSpec("P")
R = TypeVar("R")

#: Bumped only when a field changes meaning or disappears; new fields do not bump it.
JSON_SCHEMA_VERSION: Final = 1


class ExitCode(enum.IntEnum):
    OK = 0
    PROBLEMS = 1
    USAGE = 2
    STATE = 3
    IO = 4
    INTERNAL = 5
    INTERRUPTED = 130
    OUTPUT_CLOSED = 141


#: For the group's `--help` epilog. The "\b" line stops click from re-wrapping the list.
EXIT_CODES_HELP: Final = (
    "\b\nExit codes:\n"
    "    0  ok\n"
    "    1  problems found (a check failed, or corruption)\n"
    "    2  usage error (bad option, unknown error code, invalid argument)\n"
    "    3  wrong database state (needs recovery, bad file set, not open, in use)\n"
    "    4  I/O error (file missing, access denied, disk failure)\n"
    "    5  internal error (a bug, or a resource the engine ran out of)\n"
    "  130  interrupted (Ctrl-C)\n"
    "  141  output closed by its reader (| head): the output is incomplete"
)

# Category (see jetstore.errors.CATEGORIES) -> exit code. Categories not listed (operation,
# resource, conflict) mean the engine could not do its job for a reason the operator cannot
# fix by changing the command line or the files: "internal".
_EXIT_BY_CATEGORY: Final[Mapping[str, ExitCode]] = {
    "state": ExitCode.STATE,
    "inconsistent": ExitCode.STATE,
    "io": ExitCode.IO,
    "corruption": ExitCode.PROBLEMS,
    "usage": ExitCode.USAGE,
}


# Errors whose exit code is not their category's, for every command (and for what
# `jetstore error` says): an instance another process holds is a wrong state (cli.md, "The
# instance directory"); a file in the way of one a command creates (compact's kept
# original) is the operator's to move. Their category (conflict) would say "a bug".
_EXIT_BY_ERROR: Final[Mapping[type[JetError], ExitCode]] = {
    InstanceNameInUse: ExitCode.STATE,
    DatabaseDuplicate: ExitCode.USAGE,
}


def exit_code_for(error: JetError | type[JetError]) -> ExitCode:
    """The exit code a command ends with when `error` (or an error of that class) escapes it."""
    kind = error if isinstance(error, type) else type(error)
    for cls, code in _EXIT_BY_ERROR.items():
        if issubclass(kind, cls):
            return code
    return _EXIT_BY_CATEGORY.get(error.category, ExitCode.INTERNAL)


class OutputClosed(Exception):
    """A write to stdout or stderr found its reader gone (EPIPE: ``jetstore ... | head``).

    Not an `OSError`: click turns an escaping EPIPE into ``sys.exit(1)`` itself, even outside
    standalone mode, so the `jetstore` group raises this instead and `jetstore.cli.main.run`
    ends the command with ``ExitCode.OUTPUT_CLOSED``, after every ``with`` and ``finally`` of
    the command closed what it opened.
    """


class OutputFailed(Exception):
    """A write to stdout or stderr failed for another reason than a reader gone away (a full
    disk behind ``> FILE``, EIO): `error` says which stream and why.

    Not an `OSError` (see `OutputClosed`), nor a `JetError`: a command's error handling would
    report it on the very stream that fails. `jetstore.cli.main.run` reports it on stderr
    and ends with ``ExitCode.IO``.
    """

    def __init__(self, error: JetError) -> None:
        super().__init__(str(error))
        self.error = error


def _output_failed(exc: OSError, stream: str) -> OutputFailed:
    return OutputFailed(from_os_error(exc, op="write the output to", path=stream))


class _Console(Console):
    """A rich console that reports a broken pipe as `OutputClosed`.

    Rich's own reaction is to point stdout at os.devnull and raise ``SystemExit(1)`` (even for
    a console on stderr), which would bypass the CLI's exit-code contract.
    """

    def on_broken_pipe(self) -> None:
        self.quiet = True  # drop what is printed while the exception unwinds the command
        raise OutputClosed("the output's reader went away") from sys.exc_info()[1]

    def _check_buffer(self) -> None:
        # rich handles only EPIPE (`on_broken_pipe`); any other failed write would leave the
        # command as an internal error.
        try:
            super()._check_buffer()
        except OSError as exc:
            self.quiet = True
            raise _output_failed(exc, "<stderr>" if self.stderr else "<stdout>") from exc


def stdout_console() -> Console:
    # Created per use, not at import: tests swap sys.stdout, and rich binds `file` lazily only
    # when none is given, so a fresh Console always writes where stdout points now.
    return _Console(highlight=False)


def stderr_console() -> Console:
    return _Console(stderr=True, highlight=False)


def discard_closed_output() -> None:
    """Point stdout and stderr at os.devnull if their reader is gone; leave them otherwise.

    For after a write failed with EPIPE. What a stream still holds in its buffer can never be
    written, and the interpreter's final flush would fail on it and print "Exception ignored
    ... BrokenPipeError" on stderr. A stream whose flush succeeds is left alone: with
    ``2>&1 | head`` both streams lost their reader, with ``| head`` only stdout did (stderr
    still reaches the terminal), and with ``2>&1 >FILE | head`` FILE keeps all of stdout.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError, JetError):
                discard_writes_to(stream.fileno())
                stream.flush()  # what it held goes to devnull now, not at exit


def envelope(
    command: str,
    *,
    ok: bool,
    result: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one JSON object a command prints with `--json`."""
    document: dict[str, Any] = {"schema": JSON_SCHEMA_VERSION, "ok": ok, "command": command}
    if error is not None:
        document["error"] = dict(error)
    else:
        document["result"] = dict(result or {})
    return document


def _finite(value: Any) -> Any:
    """`value` with every non-finite float, at any depth, in its `json_float` string form."""
    if isinstance(value, float):
        return json_float(value)
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def emit_json(document: Mapping[str, Any]) -> None:
    """Write `document` as one line of strict JSON: a float that is not finite is written as
    `"nan"`, `"inf"` or `"-inf"`, the form `export` gives a float column and `import` reads
    back (`json` would write NaN or Infinity, which JSON parsers other than Python's refuse)."""
    try:
        text = json.dumps(document, default=str, allow_nan=False)
    except ValueError:
        # Rare (no engine counter is a float), so the copy is only made when it is needed.
        text = json.dumps(_finite(document), default=str, allow_nan=False)
    # Plain write, not rich: rich would wrap long lines and add colour codes to the JSON.
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _output_failed(exc, "<stdout>") from exc


def error_document(error: JetError, *, exit_code: ExitCode | None = None) -> dict[str, Any]:
    """`JetError.as_dict()` plus the number in every printed form and the exit code."""
    document = error.as_dict()
    unsigned = error.code % (1 << 32)
    document.update(
        unsigned=unsigned,
        hex=f"0x{unsigned:08x}",
        exit_code=int(exit_code_for(error) if exit_code is None else exit_code),
    )
    return document


def report_error(
    error: JetError, *, command: str, as_json: bool, exit_code: ExitCode | None = None
) -> ExitCode:
    """Show `error` the way the CLI promises (JSON on stdout, or text on stderr).

    `exit_code` overrides the code chosen by the error's category, for the few situations a
    command classifies itself (an instance in use by another process is "wrong state", 3).
    """
    code = exit_code_for(error) if exit_code is None else exit_code
    if as_json:
        emit_json(envelope(command, ok=False, error=error_document(error, exit_code=code)))
        return code
    console = stderr_console()
    number = f"{error.code}, 0x{error.code % (1 << 32):08x}" if error.code else "no number"
    # Text objects, not markup strings: details quote paths and keys that may contain "[".
    head = Text.assemble(
        ("error: ", "bold red"), (error.ese_name, "bold"), f" ({number}, {error.category})"
    )
    console.print(head)
    message = (error.detail or error.description).strip()
    if message:
        end = "" if message.endswith((".", "?", "!")) else "."
        console.print(Padding(Text(f"{message}{end}"), (0, 0, 0, 2)))
    if error.hint:
        console.print(Padding(Text.assemble(("what to do: ", "bold"), error.hint), (0, 0, 0, 2)))
    return code


def emit_codeless_error(
    command: str, name: str, category: str, message: str, exit_code: ExitCode, **extra: Any
) -> None:
    """The `--json` envelope of a failure that is no engine error (no ESE code): a usage
    problem, an interrupt, an internal error; `extra` adds command-specific fields."""
    emit_json(
        envelope(
            command,
            ok=False,
            error={
                "code": None,
                "name": name,
                "category": category,
                "message": message,
                "exit_code": int(exit_code),
                **extra,
            },
        )
    )


def report_usage(message: str, *, command: str, as_json: bool) -> ExitCode:
    """A usage problem found by the CLI itself (not by the engine)."""
    if as_json:
        emit_codeless_error(command, "UsageError", "usage", message, ExitCode.USAGE)
    else:
        stderr_console().print(Text.assemble(("error: ", "bold red"), message))
    return ExitCode.USAGE


def report_interrupt(
    *, command: str, as_json: bool, message: str | None = None, **extra: Any
) -> ExitCode:
    """Ctrl-C ended the command: "aborted" on stderr, and with `--json` the one JSON object
    stdout promises (an error of category "interrupted"), so a script reading it finds one.
    `message` says what the interrupt left (on stderr too), `extra` adds it as fields."""
    if as_json:
        emit_codeless_error(
            command,
            "KeyboardInterrupt",
            "interrupted",
            message or "interrupted (Ctrl-C) before the command finished",
            ExitCode.INTERRUPTED,
            **extra,
        )
    console = stderr_console()
    console.print("aborted")
    if message:
        console.print(Padding(Text(message), (0, 0, 0, 2)))
    return ExitCode.INTERRUPTED


def finish(
    command: str,
    *,
    as_json: bool,
    ok: bool,
    result: Mapping[str, Any],
    failed_code: ExitCode = ExitCode.PROBLEMS,
) -> NoReturn:
    """End a command: the JSON envelope if asked for, and exit 0 (ok) or `failed_code`."""
    if as_json:
        emit_json(envelope(command, ok=ok, result=result))
    raise click.exceptions.Exit(int(ExitCode.OK if ok else failed_code))


def json_option(function: Callable[P, R]) -> Callable[P, R]:
    """The `--json` flag every command that prints results has (parameter ``as_json``)."""
    decorator = click.option(
        "--json",
        "as_json",
        is_flag=True,
        help='Print one JSON object on stdout: {"schema": 1, "ok", "command", "result"|"error"}.',
    )
    return decorator(function)


def command_errors(command: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn a `JetError` escaping the command into the promised message and exit code.

    Reads the command's ``as_json`` keyword argument to pick the format.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return function(*args, **kwargs)
            except JetError as error:
                code = report_error(error, command=command, as_json=bool(kwargs.get("as_json")))
                raise click.exceptions.Exit(int(code)) from None

        return wrapper

    return decorate

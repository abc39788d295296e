"""The `jetstore` command group and the process entry point (`jetstore.cli.main:main`).

This module owns wiring, not behaviour: it lists the commands (one module each), adds
`--version` and `--help`, and is the last line of defence for the exit-code contract of
`jetstore.cli.output`. Whatever escapes a command ends here as a clean message and one of the
documented exit codes; a traceback is shown only for an unexpected (non-engine) exception and
only when JETSTORE_DEBUG=1 is set.

A closed output is handled here for every command: when the reader of stdout (or stderr) goes
away (``jetstore export DB T | head``), the write fails with EPIPE, the exception unwinds the
command (its ``with`` and ``finally`` blocks close what it opened: instances, files), and the
process ends quietly, without a message or traceback, with exit code 141
(``ExitCode.OUTPUT_CLOSED``: what a shell reports for `cat` or `seq` ended by SIGPIPE in the
same pipeline, so ``set -o pipefail`` scripts see that the output was cut short). SIGPIPE
itself stays ignored (Python's default): being killed by it would skip that cleanup.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import click
from rich.text import Text

from jetstore import _startup
from jetstore._version import __version__
from jetstore.cli.backup_cmd import backup_command, verify_backup_command
from jetstore.cli.checksum_cmd import checksum_command
from jetstore.cli.counters import counters_command
from jetstore.cli.demo import demo_command
from jetstore.cli.diagnose_cmd import diagnose_command
from jetstore.cli.dump import dump_group
from jetstore.cli.errors_cmd import error_command
from jetstore.cli.events_cmd import events_command
from jetstore.cli.logs_cmd import logs_group
from jetstore.cli.output import (
    EXIT_CODES_HELP,
    ExitCode,
    OutputClosed,
    OutputFailed,
    discard_closed_output,
    emit_codeless_error,
    report_error,
    report_interrupt,
    report_usage,
    stderr_console,
)
from jetstore.cli.recover import recover_command
from jetstore.cli.restore_cmd import restore_command
from jetstore.cli.status import status_command
from jetstore.cli.tools_cmd import (
    compact_command,
    export_command,
    import_command,
    integrity_command,
    repair_command,
)
from jetstore.errors import JetError

__all__ = ["cli", "main", "run"]

_PROG = "jetstore"


@contextlib.contextmanager
def _epipe_as_output_closed() -> Iterator[None]:
    """An EPIPE escaping the block becomes `OutputClosed` (click would make it exit 1)."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        raise OutputClosed(str(exc)) from exc


class _JetstoreGroup(click.Group):
    """The `jetstore` group: a write to a closed output, in any command, in its own --help or
    in --version, reaches `run` as `OutputClosed`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with _epipe_as_output_closed():  # --help and --version print while parsing
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        with _epipe_as_output_closed():
            return super().invoke(ctx)


@click.group(
    name=_PROG,
    cls=_JetstoreGroup,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, "--version", prog_name=_PROG, message="%(prog)s %(version)s")
def cli() -> None:
    """jetstore: a crash-safe embedded transactional storage engine (ESE lineage).

    Every command that prints results accepts --json and then prints exactly one JSON object
    on stdout: {"schema": 1, "ok": ..., "command": ..., "result" | "error": ...}.
    """


cli.add_command(demo_command)
cli.add_command(error_command)
cli.add_command(dump_group)
cli.add_command(logs_group)
cli.add_command(recover_command)
cli.add_command(events_command)
cli.add_command(counters_command)
cli.add_command(status_command)
cli.add_command(diagnose_command)
cli.add_command(checksum_command)
cli.add_command(backup_command)
cli.add_command(verify_backup_command)
cli.add_command(restore_command)
cli.add_command(integrity_command)
cli.add_command(compact_command)
cli.add_command(repair_command)
cli.add_command(export_command)
cli.add_command(import_command)


def _command_name(args: Sequence[str]) -> str:
    """The sub-command named on the command line, for the JSON envelope of early failures
    (``"dump header"`` for a command of a group, ``"dump"`` when the group's command is
    missing or unknown)."""
    for index, arg in enumerate(args):
        command = cli.commands.get(arg)
        if command is None:
            continue
        if isinstance(command, click.Group):
            for sub in args[index + 1 :]:
                if sub in command.commands:
                    return f"{arg} {sub}"
        return arg
    return _PROG


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default: the process arguments); returns the exit code.

    141 (``ExitCode.OUTPUT_CLOSED``) when the output's reader went away: nothing more is
    written (stdout or stderr, whichever lost its reader, now points at os.devnull).
    """
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except (OutputClosed, BrokenPipeError):  # the latter: from run's own error reports
        discard_closed_output()
        return int(ExitCode.OUTPUT_CLOSED)


def _run(args: list[str]) -> int:
    # Decided from the raw arguments because a usage error happens before click has parsed
    # the flag; a "--json" given as an argument value would only change the error's format.
    as_json = "--json" in args
    command = _command_name(args)
    try:
        outcome = cli.main(args=args, prog_name=_PROG, standalone_mode=False)
    except click.UsageError as exc:
        if as_json:
            return int(report_usage(exc.format_message(), command=command, as_json=True))
        exc.show()
        return int(ExitCode.USAGE)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        return int(report_interrupt(command=command, as_json=as_json))
    except JetError as exc:  # commands catch their own; this is the safety net
        return int(report_error(exc, command=command, as_json=as_json))
    except OutputClosed:
        raise
    except OutputFailed as failure:
        # stdout may be the stream that failed: the report goes to stderr, as text.
        with contextlib.suppress(OutputFailed, OutputClosed, OSError):
            report_error(failure.error, command=command, as_json=False, exit_code=ExitCode.IO)
        return int(ExitCode.IO)
    except Exception as exc:  # the contract is "exit 5 with a message", not a bare traceback
        return _internal_error(exc, command=command, as_json=as_json)
    # In non-standalone mode click returns the code of ctx.exit()/Exit, or the callback's value.
    return outcome if isinstance(outcome, int) else int(ExitCode.OK)


def _internal_error(exc: Exception, *, command: str, as_json: bool) -> int:
    debug = os.environ.get("JETSTORE_DEBUG") == "1"
    message = f"internal error: {type(exc).__name__}: {exc}"
    if as_json:
        emit_codeless_error(command, type(exc).__name__, "internal", message, ExitCode.INTERNAL)
    console = stderr_console()
    if debug:
        console.print(Text("".join(traceback.format_exception(exc))))
    console.print(Text.assemble(("error: ", "bold red"), message))
    console.print(
        "  what to do: this is a bug in jetstore; report it with the command line "
        "(JETSTORE_DEBUG=1 shows the traceback)."
    )
    return int(ExitCode.INTERNAL)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point."""
    _startup.finished()
    sys.exit(run(argv))


if __name__ == "__main__":
    main()

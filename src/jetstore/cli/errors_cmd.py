"""`jetstore error CODE`: explain an error number or name, as an admin pastes it from a log.

This module owns the command only; the vocabulary (names, numbers, meanings, fixes) lives in
`jetstore.errors` and is read through `jetstore.describe()`. The number is accepted in every
form ESE tools print it (-1811, 4294965485, 0xfffff8ed) or as a name (FileNotFound,
JET_errFileNotFound, any case). An unknown code is a usage error (exit 2).
"""

from __future__ import annotations

import dataclasses

import click
from rich.table import Table
from rich.text import Text

from jetstore.cli.output import (
    ExitCode,
    command_errors,
    exit_code_for,
    finish,
    json_option,
    stdout_console,
)
from jetstore.errors import ERRORS_BY_CODE, describe

__all__ = ["error_command"]


# ignore_unknown_options: "-1811" looks like an option to click; with this setting anything
# that is not a known option (--json, --help) is handed to CODE, so no "--" is needed.
@click.command(
    "error",
    context_settings={"ignore_unknown_options": True},
    short_help="Explain an error number or name (-1811, 0xfffff8ed, FileNotFound).",
    epilog="\b\nExamples:\n  jetstore error -1811\n  jetstore error 4294965485\n"
    "  jetstore error 0xfffff8ed\n  jetstore error JET_errFileNotFound --json",
)
@click.argument("code", metavar="CODE")
@json_option
@command_errors("error")
def error_command(code: str, as_json: bool) -> None:
    """Explain an error: name, ESE name, number (signed, unsigned, hex), category, fix.

    CODE is an error number in any printed form (-1811, 4294965485, 0xfffff8ed) or a name
    (FileNotFound, JET_errFileNotFound). Exits 2 for a code jetstore does not report.
    """
    info = describe(code)  # InvalidParameter (usage, exit 2) for unknown codes
    cls = ERRORS_BY_CODE[info.code]
    result = dataclasses.asdict(info)
    # What a command ends with when this error escapes it: lets a script act on the number.
    result["exit_code"] = int(exit_code_for(cls))
    result["retryable"] = cls.retryable
    if not as_json:
        _print_info(result)
    finish("error", as_json=as_json, ok=True, result=result, failed_code=ExitCode.PROBLEMS)


def _print_info(result: dict[str, object]) -> None:
    console = stdout_console()
    console.print(
        Text.assemble((str(result["ese_name"]), "bold"), f"  ({result['name']})"),
    )
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row(
        "number",
        Text(f"{result['signed']}  (unsigned {result['unsigned']}, hex {result['hex']})"),
    )
    table.add_row("category", Text(str(result["category"])))
    table.add_row("meaning", Text(str(result["description"])))
    table.add_row("what to do", Text(str(result["hint"])))
    table.add_row("retryable", Text("yes" if result["retryable"] else "no"))
    table.add_row("CLI exit code", Text(f"{result['exit_code']} when a command fails with it"))
    console.print(table)

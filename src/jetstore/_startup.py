"""Ctrl-C while the `jetstore` command starts: one line and exit 130, not a traceback.

The console script is `from jetstore.cli.main import main; sys.exit(main())`: most of a second
goes to importing the package and the commands before `main` runs and can catch anything. A
SIGINT then raised KeyboardInterrupt inside some import, and the interpreter printed its
traceback (and died by the signal). The first code of ours that runs is the top of
`jetstore/__init__.py`, which imports this module before anything else; the import calls
`install()`, which in the console script's process only sets a SIGINT handler that ends the
start-up the way the CLI ends an interrupted command ("aborted" on stderr, with `--json` the
interrupted error object on stdout, exit 130). `finished()`,
called by `jetstore.cli.main.main` before it runs the command, puts Python's own handler back:
from there on the CLI reports an interrupt itself, after the command's cleanup.

Invariants:
- A program that imports jetstore is never touched: the handler is set only when `__main__`
  is a script named `jetstore` whose module code imports `jetstore.cli.main` (the generated
  console script), and only while SIGINT still has Python's default handler.
- Nothing is imported here beyond what the interpreter has loaded anyway (the handler's
  `json` only when it runs): this module is on every import's path.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

__all__ = ["finished", "install"]

#: The exit status of an interrupted command (`jetstore.cli.output.ExitCode.INTERRUPTED`).
_INTERRUPTED = 130
_MESSAGE = "interrupted (Ctrl-C) while jetstore was starting, before the command ran"


def _is_console_script() -> bool:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str):
        return False
    stem = os.path.basename(path).removesuffix(".exe").removesuffix("-script.py")
    if stem != "jetstore":
        return False
    # The frame running the script's module code: it is importing jetstore.cli.main.
    frame: FrameType | None = sys._getframe()
    while frame is not None:
        if frame.f_globals is getattr(main, "__dict__", None):
            return "jetstore.cli.main" in frame.f_code.co_names
        frame = frame.f_back
    return False


def _interrupted(_signum: int, _frame: FrameType | None) -> None:
    # A second Ctrl-C while the import unwinds would print the traceback after all.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if "--json" in sys.argv[1:]:
        import json

        error = {
            "code": None,
            "name": "KeyboardInterrupt",
            "category": "interrupted",
            "message": _MESSAGE,
            "exit_code": _INTERRUPTED,
        }
        document = {"schema": 1, "ok": False, "command": "jetstore", "error": error}
        try:
            sys.stdout.write(json.dumps(document) + "\n")
            sys.stdout.flush()
        except OSError:
            pass  # nobody reads it any more: the exit status still says it
    try:
        sys.stderr.write("aborted\n")
        sys.stderr.flush()
    except OSError:
        pass
    # SystemExit unwinds the imports (no traceback: the interpreter prints none for it) and
    # ends the process with the status, after the usual flush of the streams.
    raise SystemExit(_INTERRUPTED)


def install() -> None:
    """In the console script's process, end a Ctrl-C during start-up quietly (exit 130)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return  # someone chose a handler (or SIG_IGN): theirs to keep
    if _is_console_script():
        signal.signal(signal.SIGINT, _interrupted)


def finished() -> None:
    """The command starts: Ctrl-C raises KeyboardInterrupt again, which the CLI reports."""
    if signal.getsignal(signal.SIGINT) is _interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)


install()

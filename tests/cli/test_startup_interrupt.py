"""Ctrl-C while the installed `jetstore` script is still importing the package."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from .conftest import entry_point


def _interrupt_while_importing(*args: str) -> tuple[int, str, list[str]]:
    """Run the entry point, send SIGINT as soon as `jetstore.errors` is imported (the package
    has begun loading, about half a second before `main` runs); returns the exit status,
    stdout and the stderr lines that are not `-X importtime`'s."""
    child = subprocess.Popen(
        [sys.executable, "-X", "importtime", str(entry_point()), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stderr is not None and child.stdout is not None
    lines: list[str] = []
    for line in child.stderr:
        lines.append(line)
        if line.split("|")[-1].strip() == "jetstore.errors":
            child.send_signal(signal.SIGINT)
            break
    else:
        pytest.fail("jetstore.errors was never imported: " + "".join(lines[-5:]))
    out, rest = child.communicate(timeout=60)
    lines.extend(rest.splitlines(keepends=True))
    messages = [line.rstrip("\n") for line in lines if not line.startswith("import time:")]
    return child.returncode, out, messages


def test_ctrl_c_during_start_up_exits_130_with_one_line() -> None:
    # It printed the KeyboardInterrupt traceback of whatever import was running, and the
    # process died by the signal (status -2), not the documented exit 130.
    code, out, messages = _interrupt_while_importing("--version")
    assert code == 130, messages
    assert messages == ["aborted"]
    assert out == ""


def test_ctrl_c_during_start_up_with_json_prints_the_interrupted_error() -> None:
    code, out, messages = _interrupt_while_importing("status", "/nonexistent", "--json")
    assert code == 130, messages
    assert messages == ["aborted"]
    document = json.loads(out)
    assert document["ok"] is False and document["command"] == "jetstore"
    assert document["error"]["name"] == "KeyboardInterrupt"
    assert document["error"]["category"] == "interrupted"
    assert document["error"]["exit_code"] == 130

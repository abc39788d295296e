"""Run a committing child process and SIGKILL it: the shared part of the kill tests.

The child prints `READY` once it commits and `ACK <id>` for every acknowledged commit (see
`kill_child.py` and `seed_child.py`). `run_and_kill` collects the acknowledgements on a reader
thread, lets the caller decide when to kill (`before_kill`), and always reaps the child and the
thread, whatever fails.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

READY_TIMEOUT_S = 30.0


def run_and_kill(arguments: list[str], before_kill: Callable[[], None]) -> list[int]:
    """Start `python ARGUMENTS...`, wait for READY, call `before_kill`, SIGKILL the child;
    returns the acknowledged ids in order."""
    child = subprocess.Popen(
        [sys.executable, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acks: list[int] = []
    ready = threading.Event()

    def reader() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("READY"):
                ready.set()
            elif line.startswith("ACK "):
                acks.append(int(line.split()[1]))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        if not ready.wait(READY_TIMEOUT_S):
            pytest.fail(f"child did not start: {child.stderr.read() if child.stderr else ''}")
        before_kill()
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        thread.join()
    assert child.returncode == -signal.SIGKILL, child.stderr.read() if child.stderr else ""
    return acks

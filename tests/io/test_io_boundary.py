"""The io layer is the only place the engine calls the operating system's file API
(`jetstore.io.files`): a call elsewhere is one the handle registry does not count, or one the
hook (the crash and fault-injection harnesses) never sees."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import jetstore
from jetstore.io.files import discard_writes_to

SOURCE = Path(jetstore.__file__).parent

#: `os` calls that open or close a descriptor.
DESCRIPTOR_CALLS = frozenset({"open", "close", "dup", "dup2", "pipe", "openpty", "fdopen"})


def _os_calls(names: frozenset[str]) -> list[str]:
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path.parent.name == "io" and path.parent.parent == SOURCE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "os"
                and node.func.attr in names
            ):
                found.append(f"{path.relative_to(SOURCE)}:{node.lineno}: os.{node.func.attr}")
    return found


def test_no_descriptor_is_opened_or_closed_outside_the_io_layer() -> None:
    assert _os_calls(DESCRIPTOR_CALLS) == []


def test_discard_writes_to_points_a_descriptor_at_devnull_and_holds_nothing() -> None:
    read_end, write_end = os.pipe()
    try:
        os.close(read_end)  # the reader went away: a write fails with EPIPE
        before = len(os.listdir("/proc/self/fd"))
        discard_writes_to(write_end)
        assert len(os.listdir("/proc/self/fd")) == before
        assert os.write(write_end, b"dropped") == len(b"dropped")
        assert os.path.realpath(f"/proc/self/fd/{write_end}") == os.devnull
    finally:
        os.close(write_end)

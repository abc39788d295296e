"""The io layer is the only place the engine calls the operating system's file API
(`jetstore.io.files`): a call elsewhere is one the handle registry does not count, or one the
hook (the crash and fault-injection harnesses) never sees."""

from __future__ import annotations

import ast
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import jetstore
from jetstore.io.files import discard_writes_to
from jetstore.io.sockets import (
    close_unregistered_sockets,
    make_private,
    open_socket,
    remove_socket_file,
)

SOURCE = Path(jetstore.__file__).parent

#: `os` calls that open or close a descriptor.
DESCRIPTOR_CALLS = frozenset({"open", "close", "dup", "dup2", "pipe", "openpty", "fdopen"})


def _outside_the_io_layer() -> Iterator[tuple[str, ast.AST]]:
    """(module path, node) for every AST node of every module but `jetstore.io`'s."""
    for path in sorted(SOURCE.rglob("*.py")):
        if path.parent.name == "io" and path.parent.parent == SOURCE:
            continue
        name = str(path.relative_to(SOURCE))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            yield name, node


def _os_calls(names: frozenset[str]) -> list[str]:
    return [
        f"{module}:{node.lineno}: os.{node.func.attr}"
        for module, node in _outside_the_io_layer()
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "os"
        and node.func.attr in names
    ]


#: `os` calls that change the file system or a file.
CHANGING_CALLS = frozenset(
    {
        "unlink",
        "remove",
        "rename",
        "replace",
        "renames",
        "link",
        "symlink",
        "mkdir",
        "makedirs",
        "rmdir",
        "removedirs",
        "chmod",
        "fchmod",
        "lchmod",
        "chown",
        "fchown",
        "lchown",
        "truncate",
        "ftruncate",
        "mkfifo",
        "mknod",
        "utime",
        "write",
        "pwrite",
        "fsync",
        "fdatasync",
    }
)


def test_no_descriptor_is_opened_or_closed_outside_the_io_layer() -> None:
    assert _os_calls(DESCRIPTOR_CALLS) == []


def test_nothing_outside_the_io_layer_changes_the_file_system() -> None:
    # The control server removed a stale socket file and set its mode with `os` calls of
    # its own; the socket file's operations are the io layer's (`jetstore.io.sockets`).
    assert _os_calls(CHANGING_CALLS) == []
    assert [
        f"{module}:{node.lineno}: import shutil"
        for module, node in _outside_the_io_layer()
        if (isinstance(node, ast.Import) and any(a.name == "shutil" for a in node.names))
        or (isinstance(node, ast.ImportFrom) and node.module == "shutil")
    ] == []


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


def test_remove_socket_file_removes_only_the_socket_it_is_asked_for(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    assert remove_socket_file(path) is False  # nothing there
    held: list[socket.SocketType] = []
    try:
        first = open_socket(held)
        first.bind(path)
        assert make_private(path) == 0o600
        info = os.lstat(path)
        inode = (info.st_dev, info.st_ino)
        os.unlink(path)
        second = open_socket(held)
        second.bind(path)  # another socket at the path: not the one of `inode`
        assert remove_socket_file(path, inode) is False and os.path.exists(path)
        assert remove_socket_file(path) is True and not os.path.exists(path)
        (tmp_path / "s").write_text("not a socket")
        assert remove_socket_file(path) is False and os.path.exists(path)
    finally:
        close_unregistered_sockets(held)

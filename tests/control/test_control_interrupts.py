"""Ctrl-C between a socket's creation (``socket()``, ``socketpair()``, ``accept()``) and its
registration in the handle registry: the control socket's descriptors are released as the io
layer's files are (`open_descriptor`), never left to a traceback or the garbage collector.

Each test keeps the interrupt's traceback alive while it counts descriptors, as a REPL's
``sys.last_traceback`` or a logged exception does: a socket only a frame of that traceback
held stayed open for as long (and was closed at last by its finalizer, ResourceWarning)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from control_support import Baseline, Raw, fds, load, open_instance, wait_for, wait_idle

from interrupting import interrupt_as_open_returns, interrupt_once
from jetstore.control.client import connect
from jetstore.control.server import socket_path
from jetstore.io.files import FileSystem
from jetstore.io.handles import DEFAULT_REGISTRY, HandleKind, HandleRegistry


def _registering(prefix: str):  # type: ignore[no-untyped-def]
    """`when` for `HandleRegistry.register`: a socket whose description starts so."""
    return lambda registry, kind, owner, description, *_: (
        kind is HandleKind.SOCKET and description.startswith(prefix)
    )


@pytest.mark.parametrize("after", [False, True], ids=["before", "as it returns"])
def test_an_interrupt_around_the_client_sockets_registration_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: bool
) -> None:
    """As it returns: the handle was registered but not yet stored, and `connect` closed
    only the handle it held: the socket stayed registered and open for good."""
    directory = tmp_path / "i"
    directory.mkdir()
    before = fds()
    fired = interrupt_once(
        monkeypatch,
        HandleRegistry,
        "register",
        _registering(socket_path(str(directory))),
        after=after,
    )
    with pytest.raises(KeyboardInterrupt) as interrupted:
        connect(directory)
    assert fired == [True]
    assert fds() == before, "the client's socket was left open"
    assert DEFAULT_REGISTRY.total(f"control-client:{directory}") == 0
    del interrupted


@pytest.mark.parametrize("which", ["listen", "control wake"])
def test_an_interrupt_before_a_server_socket_is_registered_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    before = fds()
    fired = interrupt_once(monkeypatch, HandleRegistry, "register", _registering(which))
    with pytest.raises(KeyboardInterrupt) as interrupted:
        open_instance(tmp_path / "i")
    assert fired == [True]
    assert fds() == before, f"a socket ({which}) was left open"
    assert not (tmp_path / "i" / "jetstore.sock").exists()
    del interrupted
    monkeypatch.undo()
    with open_instance(tmp_path / "i") as inst, connect(inst.directory) as client:
        assert client.ping()["ok"] is True


def test_an_interrupt_before_an_accepted_socket_is_registered_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The selector thread keeps the interrupt (`ManagedThread.error`, its traceback with
    it): the accepted socket of a frame of that traceback stayed open, and its client
    waited for a reply that never came instead of seeing the connection end."""
    with open_instance(tmp_path / "i") as inst:
        control = inst._control
        assert control is not None and control._thread is not None
        baseline = Baseline.take(inst)
        fired = interrupt_once(monkeypatch, HandleRegistry, "register", _registering("client of"))
        raw = Raw(Path(inst.directory), timeout=5)
        wait_for(lambda: not control._thread.alive, "the selector thread to end")  # type: ignore[union-attr]
        assert fired == [True]
        assert isinstance(control._thread.error, KeyboardInterrupt)
        assert raw.sock.recv(1) == b"", "the accepted socket is still open"
        raw.close()
        # The listener closed with the thread; nothing else of the server is left open.
        assert fds() == baseline.fds - 1
        assert inst.registry.counts()["socket"] == baseline.handles["socket"] - 1
    assert not os.path.exists(socket_path(str(tmp_path / "i")))


def test_the_socket_helpers_hand_over_every_socket(tmp_path: Path) -> None:
    from jetstore.io.sockets import (
        accept_socket,
        close_unregistered_sockets,
        open_socket,
        open_socket_pair,
    )

    before = fds()
    held: list[socket.SocketType] = []
    listener = open_socket(held)
    listener.bind(str(tmp_path / "s"))
    listener.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "s"))
    accepted = accept_socket(held, listener)
    client.sendall(b"x")
    assert accepted.recv(1) == b"x"
    left, right = open_socket_pair(held)
    left.sendall(b"y")
    assert right.recv(1) == b"y"
    assert held == [listener, accepted, left, right]
    close_unregistered_sockets(held)
    assert held == [] and all(s.fileno() == -1 for s in (listener, accepted, left, right))
    client.close()
    assert fds() == before


def test_an_interrupt_as_a_backup_sets_file_opens_leaves_it_closed(tmp_path: Path) -> None:
    """Defect: `SetWriter.add` opened the set's file as `out = fs.open(...)` before the `try`
    that closes it; a client's set files are registered under ``backup-set:DEST``, which
    nobody closes, so a Ctrl-C as the open returned left the file open for the life of the
    process (the in-process writer's owner is the session's, closed when it aborts)."""
    with open_instance(tmp_path / "i") as inst:
        load(inst, 0, 20)
        registry = HandleRegistry("client-set")
        with (
            pytest.raises(KeyboardInterrupt),
            interrupt_as_open_returns("main.edb"),
            connect(inst.directory) as client,
        ):
            client.backup(tmp_path / "set", fs=FileSystem(registry))
        assert [h.description for h in registry.open_handles()] == []
        assert not (tmp_path / "set.partial").exists()
        wait_idle(inst)

"""Sockets of the engine (the control socket and its clients): created so that an interrupt
cannot lose one, and who is at the other end.

Invariants:
- A socket reaches its creator's list before any signal handler can run, as a file's
  descriptor does (`jetstore.io.files.open_descriptor`): `list.extend` runs the creating
  call from C (through `map`), and CPython runs handlers (KeyboardInterrupt) only when a
  call returns to Python code. `socket.socket(...)` and `listener.accept()` are Python code
  around the system call, so a Ctrl-C could land after the descriptor existed and before
  anyone held it; the socket then lived as long as the traceback did. So these are plain
  `socket.SocketType` objects (the C type `socket.socket` extends, with every call the
  engine makes), created by the C constructor, `_socket.socketpair` and `_accept`. The
  creator closes what its list still holds on the way out (`close_unregistered_sockets`);
  registering the socket empties it (`HandleRegistry.register`'s `taking`).
- The control socket's file (created by ``bind``) is changed here only: `make_private`
  and `remove_socket_file`, not through `FileSystem`'s hook. The hook sees the operations
  that decide what a crash leaves (`jetstore.io.files`); this file holds no data, nothing
  relies on its directory entry (a crash leaves a stale socket that the next open replaces),
  and its creation, inside ``bind``, is one no hook can see or fail, so a recording would
  hold a mode change and a removal of a name it never saw created (design.md, D15).
- `peer_uid` is the kernel's word (``SO_PEERCRED``, taken at ``connect``/``listen``), not
  anything the peer says: the control socket's mode keeps other users out, and this check
  keeps a client from talking to (and sending a backup set's trust to) a socket another
  user planted at the path.
"""

from __future__ import annotations

import _socket
import itertools
import operator
import os
import socket
import stat
import struct
from typing import Final

#: ``struct ucred``: pid, uid, gid.
_UCRED: Final = struct.Struct("3i")


#: The C half of `socket.socket.accept`: (descriptor, address); the descriptor of its
#: result, made a socket, all called from C.
_ACCEPT: Final = operator.methodcaller("_accept")
_DESCRIPTOR: Final = operator.itemgetter(0)


def open_socket(into: list[socket.SocketType]) -> socket.SocketType:
    """A new AF_UNIX stream socket, appended to `into` before any interrupt can come."""
    into.extend(map(socket.SocketType, (socket.AF_UNIX,), (socket.SOCK_STREAM,)))
    return into[-1]


def open_socket_pair(into: list[socket.SocketType]) -> tuple[socket.SocketType, ...]:
    """A connected pair of AF_UNIX stream sockets, both appended to `into` at once."""
    into.extend(
        itertools.chain.from_iterable(
            map(_socket.socketpair, (socket.AF_UNIX,), (socket.SOCK_STREAM,))
        )
    )
    return tuple(into[-2:])


def accept_socket(into: list[socket.SocketType], listener: socket.SocketType) -> socket.SocketType:
    """The next connection of the AF_UNIX stream `listener`, appended to `into` before any
    interrupt can come (raises what ``accept`` raises: BlockingIOError when none waits)."""
    into.extend(
        map(
            socket.SocketType,
            itertools.repeat(socket.AF_UNIX),
            itertools.repeat(socket.SOCK_STREAM),
            itertools.repeat(0),
            map(_DESCRIPTOR, map(_ACCEPT, (listener,))),
        )
    )
    return into[-1]


def close_unregistered_sockets(sockets: list[socket.SocketType]) -> None:
    """Close the sockets an interrupt or an error left unregistered (the caller is on its
    way out with that error: a failing close has nobody to tell)."""
    for sock in sockets:
        try:
            sock.close()
        except OSError:
            pass
    sockets.clear()


def make_private(path: str) -> int:
    """Give the socket file `path` (just bound, not yet listening) mode 0600; return the
    mode read back, which a file system that keeps no socket permissions leaves as it was
    (OSError as the calls raise it)."""
    os.chmod(path, 0o600)
    return stat.S_IMODE(os.lstat(path).st_mode)


def remove_socket_file(path: str, inode: tuple[int, int] | None = None) -> bool:
    """Remove the socket file at `path` if it is the one of `inode` ((st_dev, st_ino), as
    bound), or, with no inode, if it is a socket at all; True if it was removed. Anything
    else at `path` is left alone (OSError as the calls raise it; none when nothing is
    there)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if inode is not None:
        ours = (info.st_dev, info.st_ino) == inode
    else:
        ours = stat.S_ISSOCK(info.st_mode)
    if ours:
        os.unlink(path)
    return ours


def peer_uid(sock: socket.SocketType) -> int | None:
    """The uid of the process at the other end of the AF_UNIX `sock` (None where the system
    does not say: no ``SO_PEERCRED``)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size))
    return int(uid)


def trusted_uid(uid: int | None) -> bool:
    """Whether a peer of `uid` may be talked to: this process's user, or root (None: the
    system cannot tell, and the socket's mode is all there is)."""
    return uid is None or uid in (os.geteuid(), 0)


__all__ = [
    "accept_socket",
    "close_unregistered_sockets",
    "make_private",
    "open_socket",
    "open_socket_pair",
    "peer_uid",
    "remove_socket_file",
    "trusted_uid",
]

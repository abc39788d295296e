"""Sockets of the engine (the control socket and its clients): who is at the other end.

Invariants:
- `peer_uid` is the kernel's word (``SO_PEERCRED``, taken at ``connect``/``listen``), not
  anything the peer says: the control socket's mode keeps other users out, and this check
  keeps a client from talking to (and sending a backup set's trust to) a socket another
  user planted at the path.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Final

#: ``struct ucred``: pid, uid, gid.
_UCRED: Final = struct.Struct("3i")


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


__all__ = ["peer_uid", "trusted_uid"]

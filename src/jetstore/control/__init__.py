"""The control socket: a local AF_UNIX socket an open instance serves in its directory.

- `protocol`: the wire format (JSON request and reply lines, length-prefixed backup frames),
  shared by both sides.
- `server`: `ControlServer`, started by `Instance._open` once the instance is open and stopped
  first thing by `close()`; answers ping, counters, events and streams online backups.
- `client`: `connect(instance_dir)` -> `ControlClient` (counters, events, backup into a
  backup set), for other processes (the `jetstore` CLI, a backup program).

Invariants: the socket is owner-only (mode 0600), and each end refuses a peer of another
user than its own or root (``SO_PEERCRED``); every handle and thread of the server is
registered under ``<instance owner>/control`` and released when the instance closes; a
connection idle for `server.IDLE_TIMEOUT` outside a backup is closed.
"""

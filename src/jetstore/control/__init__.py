"""The control socket: a local AF_UNIX socket an open instance serves in its directory.

- `protocol`: the wire format (JSON request and reply lines, length-prefixed backup frames),
  shared by both sides.
- `server`: `ControlServer`, started by `Instance._open` once the instance is open and stopped
  first thing by `close()`; answers ping, counters, events and streams online backups.
- `client`: `connect(instance_dir)` -> `ControlClient` (counters, events, backup into a
  backup set), for other processes (the `jetstore` CLI, a backup program).

Invariant: the socket is owner-only (mode 0600) and every handle and thread of the server is
registered under ``<instance owner>/control`` and released when the instance closes.
"""

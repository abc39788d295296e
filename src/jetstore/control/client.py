"""The control socket client: talk to the instance that serves a directory, from any process.

`connect(instance_dir)` returns a `ControlClient`; `counters()`, `events(limit)` and `ping()`
are one request each; `backup(dest, kind, compress, progress)` takes an online backup through
the socket and writes it with `jetstore.backup.backupset.SetWriter`, so a set written here is
the same as one written in-process by `write_backup_set` (files written into `DEST.partial`,
each fsynced, `manifest.json` from the server's `BackupResult`, renamed to DEST, parent
fsynced); `read_manifest`, verification and restore read both alike.

A connection the server closed as idle (`server.IDLE_TIMEOUT`) is made again, once and as
`connect` makes it, for a request without side effects (`SIMPLE_OPS`); a backup never is.
So is a connection given up because a reply did not come whole (a timeout, an interrupt):
its late reply must never be read as the next request's.

Invariants:
- The backup rule: ``{"op": "complete"}`` (after which the server records the backup and
  may truncate logs) is sent only after `SetWriter.publish` made the whole set durable at
  DEST. Any failure before that (a write error, a bad frame, a server error, an interrupt)
  sends ``abort`` if the connection still works, removes `DEST.partial`, and raises. A
  connection failing after that keeps the set at DEST (whole and durable) and says so in
  the error, with whether the instance recorded the backup (no, or unknown: `_set_kept`);
  an interrupt there leaves `published`, `backup_session` and `complete_sent` set, from
  which `backup_outcome` asks the instance how the session ended.
- The client's socket is registered in `DEFAULT_REGISTRY` (owner ``control-client:DIR/N``; a
  Ctrl-C before that cannot lose it: `jetstore.io.sockets`) and
  the set's files in the registry of the `FileSystem` used (owner ``backup-set:DEST``); all
  are closed on every way out (`backup` uses the connection up and closes it). A client
  dropped without `close()` closes its socket when collected, with a ResourceWarning, taking
  no lock (`_dropped`; design.md, D16).
- Every failure is a `JetError`: a server error arrives as the class of its code, with its
  path and hint; a missing, stale or forbidden socket names the path and the way out.
- The client talks only to a server run by its own user or root (`SO_PEERCRED`): a socket
  another user put at the path is refused (`FileAccessDenied`) before any request.
"""

from __future__ import annotations

import itertools
import os
import socket
import stat
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from jetstore.backup.backupset import (
    Manifest,
    Progress,
    SetWriter,
    _plain_name,
    completion_failed,
    manifest_from_result,
)
from jetstore.backup.session import BackupFile, BackupKind, BackupResult, ImageInfo
from jetstore.control.protocol import (
    FRAME_ERROR,
    FRAME_HEADER,
    MAX_FRAME,
    MAX_REPLY,
    SEND_FLAGS,
    SIMPLE_OPS,
    decode_reply,
    encode_line,
    error_from_object,
)
from jetstore.control.server import MAX_SOCKET_PATH, socket_path
from jetstore.errors import (
    FileAccessDenied,
    InstanceUnavailable,
    InvalidParameter,
    JetError,
    OutOfSessions,
    from_os_error,
)
from jetstore.format.common import Signature
from jetstore.format.positions import LogPosition
from jetstore.instance import unclosed
from jetstore.io.files import FileSystem
from jetstore.io.handles import DEFAULT_REGISTRY, Handle, HandleKind
from jetstore.io.sockets import close_unregistered_sockets, open_socket, peer_uid, trusted_uid

#: Default seconds a client waits for the server (the backup's first checkpoint included).
DEFAULT_TIMEOUT: Final = 120.0
#: Above this a timeout does not fit the socket calls (and is no bound anyway): a year.
_MAX_TIMEOUT: Final = 365 * 86400.0
_CONNECTIONS = itertools.count(1)
_T = TypeVar("_T")


class ControlClient:
    """One connection to an instance's control socket. Use as a context manager."""

    def __init__(
        self,
        sock: socket.SocketType,
        handle: Handle,
        directory: str,
        path: str,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        #: The connection, shared with the finalizer (which must not reference the client);
        #: a reconnect changes it in place.
        self._connection = _Connection(sock, handle)
        #: A client dropped without `close()` closes its socket when collected (`_dropped`),
        #: instead of staying open and registered for the life of the process. Not at exit:
        #: a client the application still holds then is not dropped (and the socket closes
        #: with the process).
        self._finalizer = weakref.finalize(self, _dropped, self._connection, directory)
        self._finalizer.atexit = False
        self.directory = directory
        self.path = path
        self._timeout = timeout
        self._buffer = bytearray()
        #: A request was answered on this connection: the server accepted it (not refused
        #: it for the client limit or the user), so a later hang-up is its idle close.
        self._answered = False
        #: The server ended the connection before a byte of the current reply came.
        self._hung_up = False
        #: Why the connection was given up (a request's reply did not come whole: a late
        #: one would be read as the next request's), or None while it is in step.
        self._given_up: JetError | None = None
        #: The server's reply to ``complete`` after a `backup` (``result.truncated``: the log
        #: generations the completion deleted).
        self.completion: dict[str, Any] | None = None
        #: The id of the session a `backup` started on the instance (None before "started").
        self.backup_session: int | None = None
        #: The backup set a `backup` published (whole and durable), once it did.
        self.published: str | None = None
        #: `backup` began sending ``complete``: from then on the instance may record the
        #: backup whatever happens here (an interrupt included); `backup_outcome` tells.
        self.complete_sent = False

    # ----------------------------------------------------------------- basics

    @property
    def _sock(self) -> socket.SocketType:
        return self._connection.sock

    @property
    def _handle(self) -> Handle:
        return self._connection.handle

    def close(self) -> None:
        self._given_up = None  # closed by its owner: no request reconnects it
        self._handle.close()

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its reply; a failed reply raises its `JetError`.

        A request without side effects (`SIMPLE_OPS`) on a connection the server closed as
        idle (its `OutOfSessions` line, or a hang-up before any byte of the reply) is sent
        again once on a new connection, made as `connect` makes one. A ``backup`` is not a
        request: it streams files, to a set `backup` writes (InvalidParameter here)."""
        if message.get("op") == "backup":
            # Its reply is only the first line of a stream: returned as a reply, the session
            # would stream into a connection nobody reads, pinning the instance's logs until
            # the server's stall timeout, and the next request would get a "files" line.
            raise InvalidParameter(
                f"a backup through the control socket '{self.path}' streams files and needs a "
                "backup set to write them to: it is not a single request",
                hint="call ControlClient.backup(dest, kind) (or run `jetstore backup DIR --to "
                "DEST`)",
                path=self.path,
            )
        if self._given_up is not None and message.get("op") in SIMPLE_OPS:
            self._reconnect()
        repeatable = self._answered and message.get("op") in SIMPLE_OPS
        try:
            reply = self._exchange(message)
        except (OutOfSessions, InstanceUnavailable) as exc:
            # OutOfSessions on an accepted connection is only ever the idle close.
            if not (repeatable and (isinstance(exc, OutOfSessions) or self._hung_up)):
                raise
            self._reconnect()
            reply = self._exchange(message)
        self._answered = True
        return reply

    def _exchange(self, message: dict[str, Any]) -> dict[str, Any]:
        self._hung_up = False
        if self.closed and self._given_up is None:
            # Closed by its owner: nothing went out, nothing to give up (and a given-up
            # client reconnects on its next request).
            raise self._closed_error()
        try:
            self._send(message)
            line = self._read_line()
        except BaseException as exc:
            # The request may have reached the server, and its reply be on the way: read on
            # this connection, it would be taken for the next request's (a timed-out
            # counters() answering the next ping()). The connection is out of step for good.
            self._give_up(exc)
            raise
        return self._reply(line)

    def _give_up(self, exc: BaseException) -> None:
        """Close the connection after a request whose reply did not come whole; the next
        request without side effects makes a new one, any other says why it cannot."""
        if self._given_up is None:
            self._given_up = (
                exc
                if isinstance(exc, JetError)
                else InstanceUnavailable(
                    f"a request to '{self.path}' was interrupted ({type(exc).__name__})",
                    path=self.path,
                )
            )
        self._handle.close()

    def _reconnect(self) -> None:
        self._handle.close()
        self._buffer.clear()
        self._given_up = None

        def adopt(sock: socket.SocketType, handle: Handle) -> None:
            # The handle first: close() then closes the new socket whatever interrupts here.
            self._connection.handle = handle
            self._connection.sock = sock

        _open_connection(self.directory, self.path, self._timeout, adopt)

    def ping(self) -> dict[str, Any]:
        return self.request({"op": "ping"})

    def counters(self) -> dict[str, Any]:
        """The live `Instance.counters()` of the instance (plus the control_* counters)."""
        counters: dict[str, Any] = self.request({"op": "counters"})["counters"]
        return counters

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent events the instance keeps in memory, oldest first."""
        events: list[dict[str, Any]] = self.request({"op": "events", "limit": limit})["events"]
        return events

    # ----------------------------------------------------------------- backup

    def backup(
        self,
        dest: str | os.PathLike[str],
        kind: str = "full",
        compress: bool = False,
        progress: Progress | None = None,
        *,
        fs: FileSystem | None = None,
    ) -> Manifest:
        """Take an online backup of kind `kind` into the new backup set `dest` (absent or an
        empty directory) and return its manifest. The connection is used up (the server
        closes it after the backup); the server's final reply (with the log generations the
        completion truncated) is kept in `completion`."""
        unusable = self._unusable()
        if unusable is not None:
            raise unusable  # before DEST.partial is made
        files = fs if fs is not None else FileSystem()
        writer = SetWriter(
            files,
            dest,
            owner=f"backup-set:{os.path.abspath(os.fspath(dest))}",
            compress=compress,
            progress=progress,
        )
        confirmed = False
        requested = False  # an abort is only for a backup the server was asked for
        try:
            writer.prepare()
            requested = True
            self._send({"op": "backup", "kind": kind})
            line = self._read_line()
            try:
                started = self._reply(line)  # "started" (or the error refusing it)
            except JetError:
                # Refused: no session to abort, and an abort would be one more protocol
                # error to the server (a bad kind leaves the connection up).
                requested = False
                raise
            session = started.get("session")
            self.backup_session = session if isinstance(session, int) else None
            while True:
                message = self._reply(self._read_line())
                stage = message.get("stage")
                if stage == "files":
                    listed = message.get("files")
                    if not isinstance(listed, list):
                        raise self._protocol_error("a files line without a list")
                    writer.announce(sum(_backup_file(f).size for f in listed))
                elif stage == "file":
                    file = _backup_file(message.get("file"))
                    writer.add(file, self._frames(file))
                elif stage == "streamed":
                    result = result_from_json(message.get("result"), source=self.path)
                    break
                else:
                    raise self._protocol_error(f"an unexpected backup stage {stage!r}")
            manifest = writer.publish(
                manifest_from_result(result, compress=compress, path=writer.dest)
            )
            self.published = writer.dest
            # The set is durable at dest: only now may the server record the backup and
            # truncate logs. No abort follows once the send began (an interrupt in it): the
            # instance may have the whole line, and one that does not aborts on the hang-up.
            confirmed = self.complete_sent = True
            try:
                self._send({"op": "complete"})
            except JetError as exc:
                raise self._set_kept(exc, writer.dest, kind, sent=False) from exc
            try:
                line = self._read_line()
            except JetError as exc:
                raise self._set_kept(exc, writer.dest, kind, sent=True) from exc
            try:
                self.completion = self._reply(line)
            except JetError as exc:
                # The instance answered: its error says what it recorded and what state it
                # is in; the set at dest is whole whatever it says.
                raise completion_failed(exc, writer.dest, kind) from exc
            return manifest
        except BaseException as exc:
            if writer.durable:
                self.published = writer.dest  # an interrupt as `publish` returned included
            if not confirmed:
                if requested:
                    # Before the request, an abort would be a protocol error to the server
                    # (a warning event there for a mistake made here).
                    self._try_abort()
                writer.discard()
            if isinstance(exc, OSError):
                raise from_os_error(exc, op="write backup set", path=writer.partial) from exc
            raise
        finally:
            self.close()

    def _set_kept(self, error: JetError, dest: str, kind: str, *, sent: bool) -> JetError:
        """`error` (the connection failed after the set was published), saying what the set
        at `dest` is worth: whole and durable, so restorable, whatever the instance did.
        Unsent, ``complete`` never reached the instance (the connection is closed at once, so
        a partial line never becomes one): the session was aborted, nothing recorded, no log
        deleted, and later backups continue from the one the instance last recorded."""
        if not sent:
            keep = f"keep '{dest}' to restore from (`jetstore verify-backup` checks it)"
            hint = f"{keep}; take the {kind} backup again into a new directory for one the "
            hint += "instance records, which later incremental backups continue"
            if kind == BackupKind.FULL.value:
                lacks = (
                    "incremental and differential backups taken later continue from the full "
                    "backup the instance last recorded (or are refused without one), not from "
                    "this set"
                )
            elif kind == BackupKind.INCREMENTAL.value:
                lacks = (
                    "the next incremental backup starts where this one does, so a restore "
                    "chain takes this set or that one, not both"
                )
            else:
                lacks = f"no later backup continues from a {kind} backup, so nothing is missing"
                hint = keep
            record = (
                "the instance did not record it: the control connection failed before "
                f"`complete` reached it ({error.brief()}), so it aborted the backup session "
                f"(no backup history written, no log deleted); {lacks}"
            )
        else:
            record = (
                f"whether the instance recorded it is unknown: `complete` was sent but its "
                f"answer did not come ({error.brief()}); its events for backup session "
                f"{self.backup_session} say which (151 backup_completed: recorded; 152 "
                "backup_aborted or 153 backup_failed: not, or not wholly)"
            )
            hint = (
                f"keep '{dest}' to restore from (`jetstore verify-backup` checks it); see "
                f"`jetstore events {self.directory}` before chaining an incremental on it"
            )
        return type(error)(
            f"the {kind} backup set '{dest}' is complete and durable and can be restored "
            f"from, but {record}",
            hint=hint,
            path=dest,
        )

    def _frames(self, file: BackupFile) -> Iterator[bytes]:
        """The content of `file` as the server frames it (raises the server's error)."""
        left = file.size
        while True:
            (length,) = FRAME_HEADER.unpack(self._read_exact(FRAME_HEADER.size))
            if length == 0:
                return
            if length == FRAME_ERROR:
                self._reply(self._read_line())  # raises the server's error
                raise self._protocol_error(f"{file.name} cut short without an error")
            if length > min(left, MAX_FRAME):
                # Checked before reading: a desynchronised stream's "length" can be up to
                # 4 GiB, to be buffered here, or waited for until the timeout.
                raise self._protocol_error(
                    f"a frame of {length} bytes for {file.name}, which has {left} of its "
                    f"{file.size} bytes left (frames are at most {MAX_FRAME} bytes)"
                )
            left -= length
            yield self._read_exact(length)

    def _try_abort(self) -> None:
        if self.closed:
            return
        try:
            self._sock.settimeout(1.0)
            self._sock.sendall(encode_line({"op": "abort"}), SEND_FLAGS)
        except OSError:
            pass

    # ----------------------------------------------------------------- wire

    def _unusable(self) -> JetError | None:
        """Why no request can go out on this client: its connection was given up, or the
        client is closed (a closed socket's EBADF would read as the instance hanging up,
        and a request that then reconnected would reopen a client its owner closed)."""
        given_up = self._given_up
        if given_up is not None:
            return type(given_up)(
                f"{given_up.detail}; the control connection was given up then (a late answer "
                "would have been read as this request's)",
                hint=f"connect to '{self.directory}' again for this request",
                path=self.path,
            )
        if self.closed:
            return self._closed_error()
        return None

    def _closed_error(self) -> JetError:
        return InstanceUnavailable(
            f"this control client of '{self.directory}' is closed (by close(), or used up by "
            "a backup, whose connection the server ends)",
            hint=f"connect to '{self.directory}' again (jetstore.control.client.connect)",
            path=self.path,
        )

    def _send(self, message: dict[str, Any]) -> None:
        unusable = self._unusable()
        if unusable is not None:
            raise unusable
        try:
            self._sock.sendall(encode_line(message), SEND_FLAGS)
        except TimeoutError as exc:
            raise self._timed_out() from exc
        except OSError as exc:
            self._hung_up = True
            raise self._last_word() or self._gone(exc) from exc

    def _last_word(self) -> JetError | None:
        """The error the server sent before it closed the connection (idle, too many
        clients, another user), if one waits unread: it says why, where a failed send
        (EPIPE) says only that the connection is gone."""
        try:
            # Not MSG_DONTWAIT alone: a socket with a timeout polls for the whole timeout
            # before it reads. The connection is done with anyway.
            self._sock.setblocking(False)
            while b"\n" not in self._buffer:
                data = self._sock.recv(65536)
                if not data:
                    break
                self._buffer += data
        except OSError:
            pass  # nothing (more) to read
        end = self._buffer.find(b"\n")
        if end < 0:
            return None
        try:
            message = decode_reply(bytes(self._buffer[:end]), source=self.path)
        except JetError:
            return None
        if message["ok"]:
            return None
        return error_from_object(message.get("error"), source=self.path)

    def _fill(self) -> None:
        try:
            data = self._sock.recv(1 << 20)
        except TimeoutError as exc:
            raise self._timed_out() from exc
        except OSError as exc:
            self._hung_up = not self._buffer
            raise self._gone(exc) from exc
        if not data:
            self._hung_up = not self._buffer
            raise self._gone(None)
        self._buffer += data

    def _read_line(self) -> bytes:
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > MAX_REPLY:
                raise self._protocol_error(f"a reply line over {MAX_REPLY} bytes")
            start = len(self._buffer)
            self._fill()

    def _read_exact(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _reply(self, line: bytes) -> dict[str, Any]:
        message = decode_reply(line, source=self.path)
        if not message["ok"]:
            raise error_from_object(message.get("error"), source=self.path)
        return message

    def _timed_out(self) -> JetError:
        return InstanceUnavailable(
            f"the instance serving '{self.directory}' did not answer on '{self.path}' in time",
            hint="check the instance's events (jetstore events) and retry",
            path=self.path,
        )

    def _gone(self, exc: OSError | None) -> JetError:
        why = f" ({exc.strerror or exc})" if exc is not None else ""
        return InstanceUnavailable(
            f"the instance serving '{self.directory}' closed the control connection{why}",
            hint="the instance may have closed; see its events (jetstore events DIR)",
            path=self.path,
        )

    def _protocol_error(self, what: str) -> JetError:
        return InvalidParameter(
            f"the control socket '{self.path}' sent {what}",
            hint="the server speaks another protocol version; use the jetstore of the instance",
            path=self.path,
        )


#: The events that end a backup session, and what each says of it.
_BACKUP_ENDINGS: Final = {
    "backup_completed": "completed",
    "backup_aborted": "aborted",
    "backup_failed": "failed",
}


def backup_outcome(
    instance_dir: str | os.PathLike[str], session: int, *, wait: float = 10.0
) -> str | None:
    """How backup `session` of the instance serving `instance_dir` ended: "completed" (the
    instance recorded it), "aborted" or "failed" (it did not), read from the instance's
    recent events (151, 152, 153) over a new connection, waiting up to `wait` seconds for a
    session still completing. None when that cannot be told: no instance serves the
    directory any more, it does not answer, or its recent events no longer hold the ending."""
    deadline = time.monotonic() + wait
    try:
        with connect(instance_dir, timeout=wait) as client:
            ended_at: float | None = None
            while True:
                for event in reversed(client.events(200)):
                    fields = event.get("fields")
                    name = event.get("name")
                    if (
                        isinstance(name, str)
                        and name in _BACKUP_ENDINGS
                        and isinstance(fields, dict)
                        and fields.get("session") == session
                    ):
                        return _BACKUP_ENDINGS[name]
                now = time.monotonic()
                running = client.counters().get("backup")
                if not isinstance(running, dict) or running.get("session") != session:
                    # Ended: its event follows the release of the session by a moment.
                    ended_at = now if ended_at is None else ended_at
                    if now - ended_at > 1.0:
                        return None
                if now > deadline:
                    return None
                time.sleep(0.05)
    except JetError:
        return None


def connect(
    instance_dir: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT
) -> ControlClient:
    """Connect to the instance that has `instance_dir` open (InstanceUnavailable if none)."""
    directory = os.path.abspath(os.fspath(instance_dir))
    path = socket_path(directory)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout < _MAX_TIMEOUT
    ):
        # 0 would make the socket non-blocking (its first read "the instance closed the
        # connection"), and the others fail deep in the socket calls, as no JetError.
        raise InvalidParameter(
            f"the timeout for the control socket '{path}' must be a positive number of "
            f"seconds, got {timeout!r}",
            hint=f"pass timeout=SECONDS, e.g. {DEFAULT_TIMEOUT:g} (the default)",
            path=path,
        )
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        # Unavailable, as with no socket at all: the instance may well be open (it goes on
        # without a socket, event 162), and callers treat both alike (the CLI's exit 3).
        raise InstanceUnavailable(
            f"no instance serves '{directory}': the control socket path '{path}' is longer "
            f"than the {MAX_SOCKET_PATH} bytes an AF_UNIX address holds, so no instance can "
            "serve it",
            hint="open the instance from a shorter path",
            path=path,
        )
    return _open_connection(
        directory,
        path,
        timeout,
        lambda sock, handle: ControlClient(sock, handle, directory, path, timeout),
    )


def nothing_serves(error: JetError) -> bool:
    """Whether `error`, raised by `connect`, means that no process serves the control
    socket (none there, a stale one, a file in the way, a path too long for one), not that
    one is served but did not accept the connection in time (its process stopped, its
    backlog full): the CLI tells an instance without a socket from an unresponsive one."""
    return isinstance(error, InstanceUnavailable) and not isinstance(error.__cause__, TimeoutError)


@dataclass(slots=True)
class _Connection:
    """A client's socket and its registered handle (replaced together on a reconnect)."""

    sock: socket.SocketType
    handle: Handle


def _dropped(connection: _Connection, directory: str) -> None:
    """A `ControlClient` was collected without `close()`: close its socket, as a Python
    file object or socket dropped unclosed is, with a ResourceWarning.

    The collector runs this wherever an allocation triggers it, inside the handle registry's
    lock on this very thread too, so no lock is taken (`jetstore.instance.unclosed`, D16):
    the socket's close is one C call that marks it closed before the system call (a
    concurrent close of the handle then closes nothing), and the registry removes the handle
    at its next operation (`release_later`). The warning is what CPython's own socket
    finalizer emits in the same place."""
    handle = connection.handle
    if handle.closed:
        return
    connection.sock.close()
    handle.registry.release_later(handle)
    try:
        unclosed.warn(
            f"jetstore control client of {directory} was not closed; closing its socket now "
            "— use `with connect(...)` or call close()",
            connection.sock,
        )
    except Exception:
        pass  # the warning is not worth an error inside whatever the collector interrupted


def _open_connection(
    directory: str,
    path: str,
    timeout: float,
    adopt: Callable[[socket.SocketType, Handle], _T],
) -> _T:
    """Connect to the socket `path` of `directory`, check who serves it, and hand the
    connection to `adopt` (inside the cleanup's reach: an interrupt before `adopt` stored it
    closes it): `connect`, and a client reconnecting after the server's idle close."""
    # An owner of this connection's own: every way out before the client is returned closes
    # it, also a handle registered by a call an interrupt cut before its result was stored.
    owner = f"control-client:{directory}/{next(_CONNECTIONS)}"
    unregistered: list[socket.SocketType] = []
    try:
        try:
            sock = open_socket(unregistered)
            handle = DEFAULT_REGISTRY.register(
                HandleKind.SOCKET, owner, path, sock.close, taking=unregistered
            )
        finally:
            close_unregistered_sockets(unregistered)
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock.connect(path)
                break
            except BlockingIOError:
                # EAGAIN: the listen backlog is full (a burst of clients); the server is
                # accepting, so wait a moment, up to the timeout.
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the listen backlog of '{path}' stayed full") from None
                time.sleep(0.005)
        uid = peer_uid(sock)
        if not trusted_uid(uid):
            raise FileAccessDenied(
                f"the control socket '{path}' is served by a process of uid {uid}, neither "
                f"this user (uid {os.geteuid()}) nor root: refusing to talk to it",
                hint="run as the user that opened the instance; if no instance of that user "
                "is open there, the socket is someone else's: remove it",
                path=path,
            )
        return adopt(sock, handle)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        DEFAULT_REGISTRY.close_owner(owner)
        if not isinstance(exc, ConnectionRefusedError):
            why = f"there is no control socket '{path}'"
        elif _is_socket(path):
            why = f"'{path}' is a stale socket left by a process that ended"
        else:
            # Refused too: the instance leaves such a file alone and serves no socket.
            why = f"'{path}' is not a socket (a file in the way of the control socket)"
        raise InstanceUnavailable(
            f"no instance serves '{directory}': {why}",
            hint="open the instance (a running instance serves the socket unless opened with "
            "control_socket=False, or a file is in the way); offline commands work on a "
            "closed instance",
            path=path,
        ) from exc
    except TimeoutError as exc:
        # Not an I/O error (from_os_error would say DiskIO): a process holds the socket but
        # does not take connections, as with a reply that does not come (`_fill`). Raised
        # from the TimeoutError, which `nothing_serves` looks for.
        DEFAULT_REGISTRY.close_owner(owner)
        raise InstanceUnavailable(
            f"the instance serving '{directory}' did not accept a connection on '{path}' "
            f"within {timeout:g} s",
            hint="check the instance's events (jetstore events) and retry",
            path=path,
        ) from exc
    except PermissionError as exc:
        DEFAULT_REGISTRY.close_owner(owner)
        raise FileAccessDenied(
            f"connecting to the control socket '{path}' was refused: {exc.strerror}",
            hint="run as the user that opened the instance (the socket is mode 0600)",
            path=path,
        ) from exc
    except OSError as exc:
        DEFAULT_REGISTRY.close_owner(owner)
        raise from_os_error(exc, op="connect to the control socket", path=path) from exc
    except BaseException:
        # An interrupt (KeyboardInterrupt while the backlog is full, or in the connect):
        # the socket is nobody's once this raises, so it is closed here.
        DEFAULT_REGISTRY.close_owner(owner)
        raise


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


# --------------------------------------------------------------------- backup set writing


def _backup_file(value: object) -> BackupFile:
    if not isinstance(value, dict):
        raise InvalidParameter("the control socket sent a file line without a file")
    try:
        return BackupFile(
            # Written as DEST.partial/NAME: a path part would put it outside the set, where
            # a discard does not remove it.
            name=_plain_name(value, "name"),
            kind=str(value["kind"]),
            size=int(value["size"]),
            database=value.get("database"),
            generation=value.get("generation"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidParameter(f"the control socket sent a malformed file line: {exc!r}") from None


def result_from_json(value: object, *, source: str) -> BackupResult:
    """The `BackupResult` the server sent (as `protocol.to_jsonable` encodes it)."""
    try:
        if not isinstance(value, dict):
            raise TypeError("not an object")

        def signature(data: Any) -> Signature:
            return Signature(bytes.fromhex(data["random"]), int(data["time_us"]))

        def position(data: Any) -> LogPosition:
            return LogPosition(int(data["generation"]), int(data["offset"]))

        return BackupResult(
            session=int(value["session"]),
            kind=BackupKind(value["kind"]),
            instance=str(value["instance"]),
            log_signature=signature(value["log_signature"]),
            log_file_size=int(value["log_file_size"]),
            page_size=int(value["page_size"]),
            generation_low=int(value["generation_low"]),
            generation_high=int(value["generation_high"]),
            started_us=int(value["started_us"]),
            completed_us=int(value["completed_us"]),
            images=[
                ImageInfo(
                    name=str(image["name"]),
                    db_id=int(image["db_id"]),
                    signature=signature(image["signature"]),
                    page_size=int(image["page_size"]),
                    page_count=int(image["page_count"]),
                    checkpoint=position(image["checkpoint"]),
                    generation_min_required=int(image["generation_min_required"]),
                )
                for image in value["images"]
            ],
            files=[_backup_file(f) for f in value["files"]],
            databases=[str(name) for name in value["databases"]],
            engine_version=str(value["engine_version"]),
            format_version=int(value["format_version"]),
            truncated=[int(g) for g in value.get("truncated", [])],
            bytes_streamed=int(value.get("bytes_streamed", 0)),
        )
    except (KeyError, TypeError, ValueError, JetError) as exc:
        raise InvalidParameter(
            f"the control socket '{source}' sent a malformed backup result: {exc!r}",
            hint="the server speaks another protocol version; use the jetstore of the instance",
            path=source,
        ) from None


__all__ = ["ControlClient", "backup_outcome", "connect", "nothing_serves", "result_from_json"]

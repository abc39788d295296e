"""The control socket server: an open instance answers local clients on `DIR/jetstore.sock`.

`ControlServer.start(instance)` binds an AF_UNIX stream socket in the instance directory
(mode 0600, checked before `listen`), and serves it from one registered thread
(``jetstore-control``) running a `selectors` loop; `stop()` undoes all of it. The protocol is
in `jetstore.control.protocol` and docs/design.md ("Control socket").

Who does what:
- The selector thread accepts clients and answers ``ping``, ``counters`` and ``events`` with
  non-blocking sockets: a slow or silent client never blocks another one, and a request is
  never longer than `MAX_REQUEST` bytes (longer: an error reply, then the connection closes).
  A connection idle for `IDLE_TIMEOUT` (no complete request, no reply byte read) is closed,
  so silent connections cannot hold all `MAX_CLIENTS` slots.
- A ``backup`` request hands its connection to a backup worker (its own registered
  `ManagedThread`): it runs `instance.begin_backup(kind)`, streams every file in frames with
  blocking sends bounded by `STALL_TIMEOUT`, and calls `session.complete()` only after the
  client's ``{"op": "complete"}`` (the client sends it once its backup set is durable: logs
  are never truncated before that). Between frames it polls the connection, so an ``abort``
  or a hang-up is seen at once. The selector thread goes on serving ``counters`` meanwhile.

Invariants:
- Every OS handle of the server is registered under ``<instance owner>/control``: the
  listening socket, the wake socket pair (one handle), each client connection
  (`HandleKind.SOCKET`) and each thread (`HandleKind.THREAD`); each socket is created
  through `jetstore.io.sockets`, so a Ctrl-C before it is registered cannot lose it. A
  finished backup worker is joined and unregistered by the selector thread; `stop()` closes
  whatever is left, so a closed instance holds none.
- A backup that does not reach ``complete`` is aborted on every way out (client abort,
  disconnect, SIGKILLed client, stalled client, instance closing, any error): the worker's
  `finally` calls `session.abort`, which closes every handle registered under the session.
- The server never raises into the instance: a failure to start or a dead selector thread is
  event 162 (`control_socket_failed`) and the instance goes on without the socket (a dead
  selector thread closes the listener, so clients are refused rather than left waiting). A bad
  request is an error reply plus event 161; no request can end the selector thread.
- The server reaches its instance weakly (`Instance.weak_self`): its threads must not keep
  alive an instance the application dropped (`jetstore.instance.unclosed`). A request that
  arrives while such an instance is being shut down gets `InstanceUnavailable`; a backup
  worker holds its session, and so the instance, until the backup ends (as an application
  holding the session would).
- The socket file is only ever a socket: a stale one (crashed process; the directory lock
  proves no live instance serves it) is replaced at start; a non-socket file of that name is
  left alone (event 162). `stop()` removes the socket file only if it is still the one this
  server bound (same inode).
"""

from __future__ import annotations

import collections
import errno
import functools
import itertools
import os
import select
import selectors
import socket
import stat
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from jetstore.backup.session import BackupKind
from jetstore.control.protocol import (
    FRAME_ERROR,
    MAX_FRAME,
    MAX_REQUEST,
    PROTOCOL_VERSION,
    SEND_FLAGS,
    clip,
    decode_request,
    encode_line,
    error_reply,
    frame_header,
    quote,
    to_jsonable,
)
from jetstore.errors import (
    BackupInProgress,
    FileAccessDenied,
    InstanceUnavailable,
    InternalError,
    InvalidBackupSequence,
    InvalidParameter,
    JetError,
    OutOfSessions,
)
from jetstore.format.filenames import CONTROL_SOCKET
from jetstore.io import forks
from jetstore.io.handles import Handle, HandleKind, release_all
from jetstore.io.sockets import (
    accept_socket,
    close_unregistered_sockets,
    make_private,
    open_socket,
    open_socket_pair,
    peer_uid,
    remove_socket_file,
    trusted_uid,
)
from jetstore.io.threads import ManagedThread

if TYPE_CHECKING:
    from jetstore.backup.session import BackupFile, BackupSession
    from jetstore.instance.instance import Instance

#: sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_SOCKET_PATH: Final = 107
#: Clients served at once (a backup connection counts until its worker ends).
MAX_CLIENTS: Final = 64
#: A reply backlog above this stops reading that client's requests until it reads replies.
MAX_PENDING_OUTPUT: Final = 1024 * 1024
#: Seconds a backup client may leave a frame unread (or stay silent) before the backup is
#: aborted. Module-level so tests can shorten it.
STALL_TIMEOUT: float = 60.0
#: Seconds the server waits for the client's ``complete`` or ``abort`` after the last file.
CONFIRM_TIMEOUT: float = 300.0
#: Seconds a connection served by the selector thread may go without a complete request or
#: a reply byte read before it is closed: otherwise connections that never send anything (a
#: local process opening `MAX_CLIENTS` of them) hold every slot and lock the admin tools
#: out. A backup's connection belongs to its worker, bounded by the two timeouts above.
#: Module-level so tests can shorten it.
IDLE_TIMEOUT: float = 30.0
#: Backup workers at a time (one streams; the others are refused or ending).
MAX_BACKUP_WORKERS: Final = 4
#: Seconds the listener goes unwatched after accept() failed for want of descriptors or
#: memory: the refused client stays in the backlog, so the listener stays readable and
#: watching it would spin the selector thread until a descriptor is freed.
ACCEPT_BACKOFF: Final = 0.1
_OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Events 161 (request rejected) per second at most. Every bad request still gets its reply,
#: but one 3-byte request is a ~450-byte line of events.jsonl: a client looping on bad
#: requests must not fill the disk the instance's logs are on. The next event emitted says
#: how many were left out.
MAX_REJECTION_EVENTS: Final = 10
#: Most recent events an ``events`` request may ask for.
MAX_EVENTS: Final = 10_000
_worker_ids = itertools.count(1)


def socket_path(directory: str) -> str:
    """Where the instance in `directory` serves its control socket."""
    return os.path.join(os.path.abspath(directory), CONTROL_SOCKET)


@dataclass(eq=False)
class _Conn:
    """One client connection served by the selector thread."""

    sock: socket.SocketType
    handle: Handle
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    closing: bool = False  # close once outbuf is sent (after a fatal protocol error)
    #: The client sent its last byte (EOF: a half-close after its requests, or a hang-up):
    #: nothing more is read, its complete requests are still answered.
    ended: bool = False
    #: When the client last sent a complete request or read reply bytes (`IDLE_TIMEOUT`).
    active: float = field(default_factory=time.monotonic)


class _ClientGone(Exception):
    """The backup client hung up, stalled, or the instance is closing (reason in args[0])."""


class _ClientAbort(Exception):
    """The backup client sent ``{"op": "abort"}``."""


class ControlServer:
    """The control socket of one open instance (see the module docstring)."""

    def __init__(self, instance: Instance) -> None:
        self._instance = instance.weak_self
        self.directory = instance.directory
        self.path = socket_path(instance.directory)
        self.owner = f"{instance.owner}/control"
        self._registry = instance.registry
        self._listener: socket.SocketType | None = None
        self._listener_handle: Handle | None = None
        self._wake_r: socket.SocketType | None = None
        self._wake_w: socket.SocketType | None = None
        self._selector: selectors.BaseSelector | None = None
        self._thread: ManagedThread | None = None
        self._conns: dict[int, _Conn] = {}
        self._workers: dict[int, _BackupWorker] = {}
        self._finished: collections.deque[int] = collections.deque()
        self._inode: tuple[int, int] | None = None
        #: When the listener is watched again after an accept() out of descriptors.
        self._accept_resume: float | None = None
        #: The process serving: a forked child letting go of its copies (`forget_owner` runs
        #: the listening socket's closer) must not remove the parent's socket file.
        self._pid = forks.PID
        #: Set just before the bind: a socket file at our path is ours from then on, even if
        #: an interrupt came before its inode was recorded (under our directory lock, no
        #: other instance binds there, and a stale one was removed before the bind).
        self._binding = False
        self._stopped = False
        self._stop_lock = threading.Lock()
        self.requests = 0
        self.rejected = 0
        # Event 161's rate limit (selector thread only): the current one-second window, the
        # events emitted in it, and the rejections not logged since the last event.
        self._rejection_window = 0.0
        self._rejection_events = 0
        self._rejections_unlogged = 0

    @property
    def instance(self) -> Instance:
        """The instance served (`InstanceUnavailable` once the application dropped it)."""
        instance = self._instance.get()
        if instance is None:
            raise InstanceUnavailable(
                f"instance '{self.directory}' is shutting down: the application dropped it "
                "without closing it",
                hint="connect again once it is reopened",
            )
        return instance

    def _emit(self, name: str, message: str, **fields: Any) -> None:
        """An event of the instance, if it is still there (the server never raises into
        its own threads for want of an event log)."""
        instance = self._instance.get()
        if instance is not None:
            instance.events.emit(name, message, **fields)

    # ----------------------------------------------------------------- start / stop

    @classmethod
    def start(cls, instance: Instance) -> ControlServer | None:
        """Serve `instance`'s control socket; None (and event 162) if it cannot be served."""
        server = cls(instance)
        try:
            replaced = server._bind()
            server._thread = ManagedThread(
                server._registry, server.owner, "jetstore-control", server._serve, server._wake
            )
        except BaseException as exc:
            server.stop()
            if not isinstance(exc, Exception):
                # Ctrl-C: the open stops, but the socket file it bound is removed first (the
                # next opener would take it for a dead process's).
                raise
            error = exc if isinstance(exc, JetError) else _os_error(exc, "serve", server.path)
            instance.events.emit(
                "control_socket_failed",
                f"the control socket '{server.path}' cannot be served: {error}; the instance "
                "goes on without it (live counters and online backups by other processes are "
                "unavailable)",
                path=server.path,
                error=error.name,
                code=error.code,
            )
            return None
        instance.events.emit(
            "control_socket_started",
            f"control socket listening at '{server.path}'"
            + (" (replaced a stale socket file left by a process that ended)" if replaced else ""),
            path=server.path,
            replaced_stale=replaced,
        )
        return server

    def _bind(self) -> bool:
        """Create, bind (mode 0600) and listen. True if a stale socket file was replaced."""
        path = self.path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise InvalidParameter(
                f"the socket path '{path}' is {len(os.fsencode(path))} bytes, more than the "
                f"{MAX_SOCKET_PATH} an AF_UNIX address holds",
                hint="open the instance from a shorter directory path to get a control socket",
                path=path,
            )
        replaced = False
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _os_error(exc, "inspect", path) from exc
        else:
            if not stat.S_ISSOCK(info.st_mode):
                raise InvalidParameter(
                    f"'{path}' exists and is not a socket; it was left alone",
                    hint="move that file away and reopen the instance",
                    path=path,
                )
            # The directory lock is ours, so no live instance serves this socket: a process
            # that held the directory before us died without removing it.
            try:
                replaced = remove_socket_file(path)
            except OSError as exc:
                raise _os_error(exc, "remove the stale socket", path) from exc
        unregistered: list[socket.SocketType] = []
        try:
            listener = open_socket(unregistered)
            self._listener = listener
            # The socket file goes with the listening socket's handle: whoever releases the
            # handles (stop(), or the instance's own cleanup when an interrupt cut stop()
            # short or kept it from running) removes the file, which the next opener would
            # otherwise take for one left by a process that died.
            self._listener_handle = self._registry.register(
                HandleKind.SOCKET,
                self.owner,
                f"listen {path}",
                functools.partial(release_all, listener.close, self._remove_socket_file),
                taking=unregistered,
            )
        finally:
            close_unregistered_sockets(unregistered)
        try:
            self._binding = True
            listener.bind(path)
            info = os.lstat(path)
            self._inode = (info.st_dev, info.st_ino)
            # chmod before listen: until listen() no client can connect, so no one ever
            # connects while the mode is the umask's.
            mode = make_private(path)
            if mode != 0o600:
                raise InvalidParameter(
                    f"the socket '{path}' has mode {mode:o} after chmod 600",
                    hint="the file system does not keep socket permissions; open the instance "
                    "on a local file system",
                    path=path,
                )
            listener.listen(socket.SOMAXCONN)
            listener.setblocking(False)
        except OSError as exc:
            raise _os_error(exc, "bind the control socket", path) from exc
        try:
            wake_r, wake_w = open_socket_pair(unregistered)
            self._wake_r, self._wake_w = wake_r, wake_w
            # One handle for both: `taking` hands the whole list over in one step.
            self._registry.register(
                HandleKind.SOCKET,
                self.owner,
                "control wake pair",
                functools.partial(release_all, wake_r.close, wake_w.close),
                taking=unregistered,
            )
        finally:
            close_unregistered_sockets(unregistered)
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        # PollSelector holds no file descriptor of its own (epoll would be one more handle).
        self._selector = selectors.PollSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(wake_r, selectors.EVENT_READ, None)
        return replaced

    def stop(self) -> None:
        """Stop serving: join every thread, close every handle, remove the socket file (the
        listening socket's closer). Idempotent; never raises an error. An interrupt
        (Ctrl-C) skips none of it: it is raised at the end (`release_all`), and what an
        interrupt before that left is released by the instance's cleanup."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        thread, self._thread = self._thread, None
        release_all(
            # The selector thread closes its connections on the way out.
            thread.close if thread is not None else None,
            # Each interrupts its socket; the worker aborts its backup.
            *(worker.close for worker in list(self._workers.values())),
            self._workers.clear,
            functools.partial(self._registry.close_owner, self.owner),
        )

    def _remove_socket_file(self) -> None:
        if not self._binding or self._pid != forks.PID:
            return
        try:
            # Without the inode (an interrupt before it was recorded), any socket there is
            # ours: under our directory lock no other instance binds it.
            remove_socket_file(self.path, self._inode)
        except OSError:
            pass  # gone already, or not ours: nothing to remove

    def _wake(self) -> None:
        wake = self._wake_w
        if wake is None:
            return
        try:
            wake.send(b"x", SEND_FLAGS)
        except OSError:
            pass  # buffer full (a wake is pending anyway) or closed (stopping)

    # ----------------------------------------------------------------- selector loop

    def _serve(self, stop: threading.Event) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while not stop.is_set():
                resume = self._accept_resume
                timeout = self._next_wakeup(resume)
                for key, mask in selector.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept(selector)
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        conn = key.data
                        assert isinstance(conn, _Conn)
                        self._service(selector, conn, mask)
                self._reap_workers()
                self._close_idle(selector)
                if resume is not None and time.monotonic() >= resume:
                    assert self._listener is not None
                    self._accept_resume = None
                    selector.register(self._listener, selectors.EVENT_READ, None)
        except Exception as exc:
            error = exc if isinstance(exc, JetError) else InternalError(repr(exc))
            self._emit(
                "control_socket_failed",
                f"the control socket thread of '{self.path}' stopped: {error}; the instance "
                "goes on without it",
                path=self.path,
                error=error.name,
                code=error.code,
            )
        finally:
            for conn in list(self._conns.values()):
                self._drop(selector, conn)
            selector.close()
            # Nobody accepts from here on: a listener left open would take clients into its
            # backlog to wait for their timeout; closed (its file removed), they are told at
            # once that no instance serves the directory.
            if self._listener_handle is not None:
                self._listener_handle.close()

    def _next_wakeup(self, resume: float | None) -> float | None:
        """Seconds the selector may sleep: until the listener is watched again or the
        first connection goes idle (None: until something happens)."""
        deadlines = [conn.active + IDLE_TIMEOUT for conn in self._conns.values()]
        if resume is not None:
            deadlines.append(resume)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _close_idle(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if now - c.active >= IDLE_TIMEOUT]:
            error = OutOfSessions(
                f"control connection to '{self.path}' closed: idle for {IDLE_TIMEOUT:g} s "
                "without a complete request (it held one of the "
                f"{MAX_CLIENTS} client slots)",
                hint="connect when there is a request to send, and send it at once",
            )
            self._note_rejection(error, None)
            if not conn.outbuf:  # never inside a reply the client has only partly read
                try:
                    conn.sock.send(encode_line(error_reply(error)), SEND_FLAGS)
                except OSError:
                    pass
            self._drop(selector, conn)

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _reap_workers(self) -> None:
        while self._finished:
            ident = self._finished.popleft()
            worker = self._workers.pop(ident, None)
            if worker is not None:
                worker.close()  # already returned: the join is immediate

    def _accept(self, selector: selectors.BaseSelector) -> None:
        assert self._listener is not None
        accepted: list[socket.SocketType] = []
        while True:
            try:
                try:
                    sock = accept_socket(accepted, self._listener)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in _OUT_OF_RESOURCES:
                        selector.unregister(self._listener)
                        self._accept_resume = time.monotonic() + ACCEPT_BACKOFF
                    return  # ECONNABORTED...: the client retries; the loop goes on
                handle = self._registry.register(
                    HandleKind.SOCKET,
                    self.owner,
                    f"client of {self.path}",
                    sock.close,
                    taking=accepted,
                )
            finally:
                close_unregistered_sockets(accepted)
            sock.setblocking(False)
            conn = _Conn(sock, handle)
            error: JetError | None = None
            try:
                uid = peer_uid(sock)
            except OSError:
                uid = None  # the client is gone already: its first read says so
            if not trusted_uid(uid):
                # The socket's mode keeps other users out; a mode changed under us (or a
                # file system that ignores it) must not open the instance to them.
                error = FileAccessDenied(
                    f"the control socket '{self.path}' serves only its instance's user "
                    f"(uid {os.geteuid()}) and root; the client runs as uid {uid}",
                    hint="run the client as the user that opened the instance",
                    path=self.path,
                )
            elif len(self._conns) + len(self._workers) >= MAX_CLIENTS:
                error = OutOfSessions(
                    f"the control socket '{self.path}' serves {MAX_CLIENTS} clients already",
                    hint="close idle control connections and connect again",
                )
            if error is not None:
                self._note_rejection(error, None)
                try:
                    sock.send(encode_line(error_reply(error)), SEND_FLAGS)
                except OSError:
                    pass
                handle.close()
                continue
            self._conns[sock.fileno()] = conn
            selector.register(sock, selectors.EVENT_READ, conn)

    def _service(self, selector: selectors.BaseSelector, conn: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE and conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf, SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(selector, conn)
                return
            del conn.outbuf[:sent]
            if sent:
                conn.active = time.monotonic()
        if mask & selectors.EVENT_READ and not conn.closing and not conn.ended:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self._drop(selector, conn)
                return
            if data == b"":
                # A client that shut down its sending side (`nc -N`) waits for the replies
                # to what it sent; one that hung up fails the next send and is dropped then.
                conn.ended = True
            elif data is not None:
                conn.inbuf += data
        # Also after a send: requests left unanswered at the backlog limit go on once the
        # client has read some replies (it may be waiting for them, sending nothing more).
        if conn.inbuf and self._process(selector, conn):
            return  # handed to a backup worker
        if (conn.closing or conn.ended) and not conn.outbuf:
            # Every complete request answered (with no reply pending, `_process` stopped
            # only at a partial one, which an ended client never finishes).
            self._drop(selector, conn)
            return
        events = 0
        if conn.outbuf:
            events |= selectors.EVENT_WRITE
        if not conn.closing and not conn.ended and len(conn.outbuf) < MAX_PENDING_OUTPUT:
            events |= selectors.EVENT_READ
        if events != selector.get_key(conn.sock).events:
            selector.modify(conn.sock, events, conn)

    def _process(self, selector: selectors.BaseSelector, conn: _Conn) -> bool:
        """Answer the complete requests in `conn.inbuf` until the reply backlog reaches
        `MAX_PENDING_OUTPUT`; True if a backup took the connection."""
        # The limit is checked per request, not per read: one read of pipelined requests
        # could otherwise queue thousands of large replies for a client that reads none.
        while not conn.closing and len(conn.outbuf) < MAX_PENDING_OUTPUT:
            end = conn.inbuf.find(b"\n")
            if end < 0 and len(conn.inbuf) < MAX_REQUEST:
                return False
            if end < 0 or end + 1 > MAX_REQUEST:
                size = len(conn.inbuf) if end < 0 else end + 1
                self._reject(
                    conn,
                    InvalidParameter(
                        f"request of {size}+ bytes is over the {MAX_REQUEST}-byte limit of "
                        f"the control socket '{self.path}'; the connection is closed",
                        hint="requests are short JSON lines; reconnect and send one",
                    ),
                    None,
                )
                conn.inbuf.clear()
                conn.closing = True
                return False
            line = bytes(conn.inbuf[:end])
            del conn.inbuf[: end + 1]
            if not line.strip():
                continue  # an empty line is not a request (nor activity)
            conn.active = time.monotonic()
            if self._answer(selector, conn, line):
                return True
        return False

    def _answer(self, selector: selectors.BaseSelector, conn: _Conn, line: bytes) -> bool:
        """Answer one request line; True if it started a backup (connection handed over)."""
        self.requests += 1
        try:
            request = decode_request(line)
        except InvalidParameter as exc:
            self._reject(conn, exc, None)
            return False
        op = request["op"]
        try:
            if op == "ping":
                reply = {
                    "ok": True,
                    "op": "ping",
                    "protocol": PROTOCOL_VERSION,
                    "instance": self.directory,
                    "pid": os.getpid(),
                    "state": self.instance.state.value,
                }
            elif op == "counters":
                counters = self.instance.counters()
                counters["control_requests"] = self.requests
                counters["control_rejected"] = self.rejected
                counters["control_clients"] = len(self._conns) + len(self._workers)
                reply = {"ok": True, "op": "counters", "counters": to_jsonable(counters)}
            elif op == "events":
                limit = request.get("limit", 50)
                if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
                    raise InvalidParameter(
                        f'"limit" must be a positive integer, got {quote(limit)}',
                        hint=f'ask for {{"op": "events", "limit": 50}} (at most {MAX_EVENTS})',
                    )
                events = self.instance.events.recent(min(limit, MAX_EVENTS))
                reply = {"ok": True, "op": "events", "events": to_jsonable(events)}
            elif op == "backup":
                return self._start_backup(selector, conn, request)
            elif op in ("complete", "abort"):
                raise InvalidBackupSequence(
                    f'"{op}" outside a backup: no backup runs on this connection',
                    hint='send {"op": "backup", "kind": "full"} first, on the same connection',
                )
            else:
                raise InvalidParameter(
                    f"unknown op {quote(op)} on the control socket '{self.path}'",
                    hint="ops: ping, counters, events, backup (then complete or abort)",
                )
        except JetError as exc:
            self._reject(conn, exc, op)
            return False
        except Exception as exc:  # a bug must cost one reply, never the selector thread
            self._reject(conn, InternalError(f"{op} failed: {exc!r}"), op)
            return False
        conn.outbuf += encode_line(reply)
        return False

    def _reject(self, conn: _Conn, error: JetError, op: object) -> None:
        conn.outbuf += encode_line(error_reply(error, op))
        self._note_rejection(error, op)

    def _note_rejection(self, error: JetError, op: object) -> None:
        """Count a refusal and emit event 161, at most `MAX_REJECTION_EVENTS` a second."""
        self.rejected += 1
        now = time.monotonic()
        if now - self._rejection_window >= 1.0:
            self._rejection_window = now
            self._rejection_events = 0
        if self._rejection_events >= MAX_REJECTION_EVENTS:
            self._rejections_unlogged += 1
            return
        self._rejection_events += 1
        suppressed, self._rejections_unlogged = self._rejections_unlogged, 0
        self._emit(
            "control_request_rejected",
            f"control socket request rejected: {error}"
            + (
                f" ({suppressed} more rejected since the last such event, not logged: at "
                f"most {MAX_REJECTION_EVENTS} a second)"
                if suppressed
                else ""
            ),
            op=clip(op) if isinstance(op, str) else None,
            error=error.name,
            code=error.code,
            suppressed=suppressed,
        )

    def _start_backup(
        self, selector: selectors.BaseSelector, conn: _Conn, request: dict[str, Any]
    ) -> bool:
        kind = request.get("kind", "full")
        kinds = [k.value for k in BackupKind]
        if kind not in kinds:
            # Here, not in the worker's `begin_backup`: a bad argument is answered on the
            # connection, which goes on (event 161), as for every other op; refused by the
            # worker it cost a thread, logged nothing and closed the connection.
            raise InvalidParameter(
                f'"kind" must be one of {", ".join(kinds)}, got {quote(kind)}',
                hint='send {"op": "backup", "kind": "full"}',
            )
        self._reap_workers()
        if len(self._workers) >= MAX_BACKUP_WORKERS:
            # The instance runs one backup at a time and `begin_backup` is the judge (a
            # worker that just ended its session may not be reaped yet); this bound only
            # keeps a flood of backup requests from costing a thread each.
            running = self.instance.backup_session
            raise BackupInProgress(
                f"a backup of '{self.instance.directory}' is already streaming"
                + (f" (backup {running.id})" if running is not None else ""),
                hint="wait for it to finish, or abort it",
            )
        fd = conn.sock.fileno()
        selector.unregister(conn.sock)
        del self._conns[fd]
        worker = _BackupWorker(self, conn, kind)
        self._workers[worker.ident] = worker
        try:
            worker.begin()
        except BaseException:
            # No thread (OutOfThreads): the connection is given back to this loop, so the
            # error reply is sent on it and it goes on (the loop looks its key up next), and
            # a worker that never ran counts for nothing.
            self._workers.pop(worker.ident, None)
            conn.sock.setblocking(False)  # `begin` gave it the worker's blocking timeout
            self._conns[fd] = conn
            selector.register(conn.sock, selectors.EVENT_READ, conn)
            raise
        return True

    def _worker_done(self, worker: _BackupWorker) -> None:
        self._finished.append(worker.ident)
        self._wake()

    def _drop(self, selector: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self._conns.pop(conn.sock.fileno(), None)
        try:
            # Not close() alone: a child forked while the client was connected holds a copy
            # of this end, and the client would see no end of stream until that child exits
            # (its next request waiting out its timeout after the instance closed).
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client is gone already
        conn.handle.close()


class _BackupWorker:
    """Streams one backup to one client, in its own registered thread."""

    def __init__(self, server: ControlServer, conn: _Conn, kind: str) -> None:
        self.ident = next(_worker_ids)
        self.server = server
        self.conn = conn
        self.kind = kind
        self.sock = conn.sock
        self.inbuf = bytearray(conn.inbuf)  # requests pipelined after "backup"
        self.session: BackupSession | None = None
        self._thread: ManagedThread | None = None
        self._stop: threading.Event | None = None
        self._in_file = False
        self._poll = select.poll()  # no file descriptor of its own
        #: `interrupt` and the start of `session.complete()` exclude each other: a close
        #: landing once the instance records the backup leaves the connection up for the
        #: answer (the join waits for the completion either way), and one landing before
        #: keeps the completion from starting.
        self._interrupt_lock = threading.Lock()
        self._interrupted = False
        self._completing = False

    def begin(self) -> None:
        self.sock.settimeout(STALL_TIMEOUT)
        self._poll.register(self.sock, select.POLLIN)
        self._thread = ManagedThread(
            self.server._registry,
            self.server.owner,
            f"jetstore-control-backup-{self.ident}",
            self.run,
            self.interrupt,
        )

    def close(self) -> None:
        if self._thread is not None:
            self._thread.close()

    def interrupt(self) -> None:
        """Called by `close()` from another thread: a blocked send or recv returns at once.
        Not while the session completes: the client is owed its answer, or it could only
        say that whether the instance recorded the backup is unknown."""
        with self._interrupt_lock:
            self._interrupted = True
            if self._completing:
                return
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ----------------------------------------------------------------- the stream

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        session: BackupSession | None = None
        reason = "the control connection ended before the backup completed"
        try:
            if self.conn.outbuf:
                self._send(bytes(self.conn.outbuf))
            try:
                session = self.server.instance.begin_backup(self.kind)
            except JetError as exc:
                self._send_line(error_reply(exc, "backup"))
                return
            self.session = session
            self._send_line(
                {
                    "ok": True,
                    "op": "backup",
                    "stage": "started",
                    "session": session.id,
                    "kind": session.kind.value,
                }
            )
            # The images first, then the log list (taking it rolls the log: the backup holds
            # every transaction acknowledged before that moment). Each list is announced so
            # the client knows the sizes ahead (progress totals).
            for listing in (session.database_files, session.log_files):
                self._check_client()
                files = listing()
                self._send_line(
                    {"ok": True, "op": "backup", "stage": "files", "files": to_jsonable(files)}
                )
                for file in files:
                    self._check_client()
                    self._send_line(
                        {"ok": True, "op": "backup", "stage": "file", "file": to_jsonable(file)}
                    )
                    self._stream(session, file)
            result = session.result()
            self._send_line(
                {"ok": True, "op": "backup", "stage": "streamed", "result": to_jsonable(result)}
            )
            request = self._wait_confirmation()
            if request == "complete":
                with self._interrupt_lock:
                    if self._interrupted:
                        raise _ClientGone("the instance is closing")
                    self._completing = True
                final = session.complete()
                self._send_line({"ok": True, "op": "complete", "result": to_jsonable(final)})
            else:
                reason = "aborted by the control client"
                session.abort(reason)
                self._send_line({"ok": True, "op": "abort", "session": session.id})
        except _ClientAbort:
            reason = "aborted by the control client while the files streamed"
            if session is not None:
                session.abort(reason)
            self._try_send_line({"ok": True, "op": "abort", "session": self._session_id()})
        except _ClientGone as gone:
            reason = str(gone)
        except JetError as exc:
            # A file failed its check (the session failed itself), complete() failed, or
            # the client broke the protocol: tell the client, and end the session.
            reason = f"the backup stopped: {exc.name}"
            self._send_error(exc)
        except Exception as exc:
            reason = f"the control server failed: {exc!r}"
            self._send_error(InternalError(f"backup stream failed: {exc!r}"))
        finally:
            if session is not None and session.state in ("starting", "running"):
                try:
                    session.abort(reason)
                except Exception:
                    session._end("aborted")  # whatever the event log did, free the handles
            self.conn.handle.close()
            # The session references the instance: a finished worker waiting to be reaped
            # must not keep it alive.
            self.session = None
            session = None
            self.server._worker_done(self)

    def _session_id(self) -> int | None:
        return self.session.id if self.session is not None else None

    def _stream(self, session: BackupSession, file: BackupFile) -> None:
        chunks = session.read(file)
        self._in_file = True
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                # Clients refuse a longer frame before buffering it, whatever the session's
                # chunks are.
                for start in range(0, len(view), MAX_FRAME):
                    self._check_client()
                    frame = view[start : start + MAX_FRAME]
                    self._send(frame_header(len(frame)))
                    self._send(frame)
            self._send(frame_header(0))
            self._in_file = False
        finally:
            if isinstance(chunks, Generator):
                chunks.close()  # stops the reader at once, closing its file

    def _check_client(self) -> None:
        """Between frames: stop if the instance closes, the client hung up or sent abort."""
        stop = self._stop
        if stop is not None and stop.is_set():
            raise _ClientGone("the instance is closing")
        while True:
            # The buffer first: requests pipelined with "backup" are in it from the start,
            # and would otherwise wait (an abort ignored, a complete taken) until the end.
            op = self._next_op()
            if op == "abort":
                raise _ClientAbort()
            if op is not None:
                raise InvalidBackupSequence(
                    f'"{clip(op)}" while the files stream: only "abort" may be sent before the '
                    '"streamed" line',
                    hint='read every file, then send {"op": "complete"}',
                )
            if not self._poll.poll(0):
                return
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise _ClientGone(f"the control client's connection failed ({exc})") from None
            if not data:
                raise _ClientGone("the control client disconnected while the files streamed")
            self.inbuf += data

    def _next_op(self) -> str | None:
        while True:
            end = self.inbuf.find(b"\n")
            if end < 0:
                if len(self.inbuf) >= MAX_REQUEST:
                    raise InvalidParameter(
                        f"request over the {MAX_REQUEST}-byte limit during a backup",
                        hint="requests are short JSON lines",
                    )
                return None
            line = bytes(self.inbuf[:end])
            del self.inbuf[: end + 1]
            if line.strip():  # an empty line is not a request, as in the selector loop
                op: str = decode_request(line)["op"]
                return op

    def _wait_confirmation(self) -> str:
        """The client's ``complete`` or ``abort`` (a hang-up or silence aborts)."""
        # One deadline for the whole wait: a client trickling a byte now and then must not
        # hold the session, and the logs and pages it pins, past CONFIRM_TIMEOUT.
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while True:
            op = self._next_op()
            if op in ("complete", "abort"):
                return op
            if op is not None:
                raise InvalidBackupSequence(
                    f'"{clip(op)}" after the last file: the backup waits for "complete" or "abort"',
                    hint='send {"op": "complete"} once the backup set is durable',
                )
            try:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.sock.settimeout(left)
                data = self.sock.recv(65536)
            except TimeoutError:
                raise _ClientGone(
                    f"the control client sent neither complete nor abort within "
                    f"{CONFIRM_TIMEOUT:g} s"
                ) from None
            except OSError as exc:
                raise _ClientGone(f"the control client's connection failed ({exc})") from None
            if not data:
                if self._stop is not None and self._stop.is_set():
                    raise _ClientGone("the instance is closing")
                raise _ClientGone("the control client disconnected before confirming")
            self.inbuf += data

    def _send(self, data: bytes | memoryview) -> None:
        stop = self._stop
        view = memoryview(data)
        try:
            # Not sendall: its timeout bounds the whole send, so a client reading a frame
            # slowly but steadily would be taken for a stalled one. Each send here waits at
            # most STALL_TIMEOUT for room, i.e. for the client to read something.
            while view:
                view = view[self.sock.send(view, SEND_FLAGS) :]
        except TimeoutError:
            raise _ClientGone(
                f"the control client read nothing for {STALL_TIMEOUT:g} s (stalled)"
            ) from None
        except OSError as exc:
            if stop is not None and stop.is_set():
                raise _ClientGone("the instance is closing") from None
            raise _ClientGone(f"the control client disconnected ({exc.strerror or exc})") from None

    def _send_line(self, message: dict[str, Any]) -> None:
        self._send(encode_line(message))

    def _try_send_line(self, message: dict[str, Any]) -> None:
        try:
            self._send_line(message)
        except _ClientGone:
            pass

    def _send_error(self, error: JetError) -> None:
        try:
            if self._in_file:
                self._send(frame_header(FRAME_ERROR))
            self._send_line(error_reply(error, "backup"))
        except _ClientGone:
            pass


def _os_error(exc: BaseException, op: str, path: str) -> JetError:
    from jetstore.errors import from_os_error

    if isinstance(exc, OSError):
        return from_os_error(exc, op=op, path=path)
    return InternalError(f"{op} '{path}': {exc!r}", path=path)


__all__ = ["CONFIRM_TIMEOUT", "MAX_SOCKET_PATH", "STALL_TIMEOUT", "ControlServer", "socket_path"]

"""Files and directories: the only place the engine calls the operating system's file API.

Invariants:
- Every open file (and every directory opened to fsync it) is a `File` registered in a
  `HandleRegistry`; `File.close()` is idempotent. (`discard_writes_to`, the CLI's standard
  streams pointed at os.devnull once their reader went away, holds its descriptor only
  within the call.)
- No system call is ever made on a descriptor number after its `os.close`: the number may
  already name another file (another database, a log, a backup target) opened meanwhile. Every
  call on a `File`'s descriptor (read, write, syncs, truncate, stat, flock) runs in an in-flight
  window; closing, whoever does it (`File.close`, the owner's `close_owner`, a forked child's
  `forget_owner`), refuses new calls at once, waits for the calls under way in other threads
  (single system calls: short), and only then closes the descriptor. A call on a closed or
  closing file raises `InstanceUnavailable` naming the file, before the hook sees it when the
  file was already closed.
- Every OS failure leaves this module as a `jetstore.errors.JetError` naming the operation and
  the path (`from_os_error`), never as a bare `OSError`. A mistake in the path (a directory
  where a file belongs or the reverse, a parent that is a file, a name too long, a symlink
  loop) is `InvalidPath` saying what is wrong with it; only genuine I/O errors are `DiskIO`.
- `open` never returns a `File` for a directory (InvalidPath, as EISDIR), even read-only, nor
  for anything else that is not a regular file (a FIFO, a device, a socket: InvalidPath
  naming it); the open itself never blocks on a FIFO that has no writer. The exception is a
  file opened as a `stream` (read-only, front to back once: an import's input), which may be
  a FIFO, a pipe or a character device, and whose open waits for a FIFO's writer.
- `pwrite` writes everything or raises; `pread` returns fewer bytes only at end of file.
- Syncs are sticky per open file (fsyncgate, `File._sync`): the syncs of a `File` run one at
  a time, and once one failed every later one raises that failure, since the kernel reports
  a failed writeback only once and a later sync that succeeds proves nothing.
- Every durability-relevant operation (create, write, fsync, fdatasync, directory fsync,
  rename, link, unlink, truncate, mkdir, rmdir; a tree's removal as its unlinks and rmdirs)
  first goes through the file system's `hook`, if one is set; no module outside this layer
  changes the file system with `os` or `shutil` calls, which the hook would never see (the
  control socket's file, which `bind` creates out of any hook's sight, is changed only by
  `jetstore.io.sockets`, and not through the hook: design.md, D15). The
  hook sees the operation before it happens and may raise `OSError` to inject a fault; the
  crash and fault-injection harnesses record and replay workloads through it.
- Metadata durability is explicit: callers that create, rename or unlink a file they rely on
  call `fsync_directory` afterwards (the audit in the crash suite checks this).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import stat
import threading
from _thread import get_ident as _get_ident
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TextIO, TypeVar

from jetstore.errors import (
    FileNotFound,
    InstanceUnavailable,
    InvalidParameter,
    InvalidPath,
    JetError,
    from_os_error,
)
from jetstore.io import forks
from jetstore.io.handles import DEFAULT_REGISTRY, HandleKind, HandleRegistry, use_owner

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class IOEvent:
    """One operation about to be performed. `data` is set for writes (not copied)."""

    op: str
    path: str
    offset: int = 0
    size: int = 0
    data: bytes | bytearray | memoryview | None = None
    target: str = ""


IOHook = Callable[[IOEvent], None]


class File:
    """An open file: positional reads and writes, syncs, locks, deterministic close.

    Every system call on the descriptor runs inside an *in-flight window* (see the module
    docstring): the calling thread's id is appended to `_busy`, then `_closing` is checked,
    then the call is made; the id is removed when the call returns or fails. `close()` (or the
    owner's cleanup, which runs the same closer) sets `_closing` first, then waits until no
    other thread is inside a window, and only then calls `os.close`.

    Why a list and no lock: under the GIL the steps of two threads interleave one bytecode at
    a time, so a call that saw `_closing` false had already appended its id, and the closer,
    which reads `_busy` after setting the flag, sees it and waits; a call that appends after
    the flag was set sees it and never touches the descriptor. `list.append` and
    `list.remove` are single calls into C, atomic under the GIL and cheaper than a lock's
    acquire and release twice (design.md, "The io layer": about 0.1 µs per call in all). A
    free-threaded build would need a lock here instead.

    Why the append is the first call inside the `try` whose `finally` removes the id: CPython
    runs signal handlers (KeyboardInterrupt) at function entry, at backward jumps and after a
    call returns, never in the middle of `list.append`, so an interrupt comes either before
    the `try` (nothing appended) or after the append (the `finally` removes it). An id left
    behind would make the next close wait forever.
    """

    __slots__ = (
        "_busy",
        "_closing",
        "_cond",
        "_deferred",
        "_fd",
        "_fs",
        "_handle",
        "_lock",
        "_pid",
        "_released",
        "_sync_failure",
        "_sync_lock",
        "path",
        "writable",
    )

    def __init__(
        self,
        fs: FileSystem,
        fd: int,
        path: str,
        *,
        kind: HandleKind,
        owner: str,
        writable: bool,
        taking: list[int] | None = None,
    ) -> None:
        """`taking`: the list holding `fd` (`open_descriptor`), emptied when the file is
        registered; until then closing `fd` is the caller's."""
        self._fs = fs
        self._fd = fd
        self.path = path
        self.writable = writable
        #: The process that opened it: in a forked child the closer neither waits nor locks.
        self._pid = forks.PID
        #: Ids of the threads inside a system call on `_fd`. One thread may be there twice: a
        #: signal handler that interrupted one of its calls and made another.
        self._busy: list[int] = []
        self._closing = False
        #: True when the last call to leave its window is to close the descriptor (a close
        #: from a signal handler that interrupted this very thread's call, see `_close_fd`).
        self._deferred = False
        #: True once the descriptor was closed, or left to the last call out: the closer may
        #: run again (a close interrupted by Ctrl-C is retried, `Handle.close`) and must never
        #: close the number twice (it may be another file's by then).
        self._released = False
        #: Guards `_deferred`, `_released` and the closer's wait (never taken on the way into
        #: a call).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        #: The first failed sync (`_sync`), and the lock that takes the syncs one at a time.
        self._sync_failure: JetError | None = None
        self._sync_lock = threading.Lock()
        self._handle = fs.registry.register(kind, owner, path, self._close_fd, taking=taking)

    @property
    def closed(self) -> bool:
        """True once `close()` (or the owner's cleanup) began: no new call is accepted."""
        return self._closing

    @property
    def fd(self) -> int:
        """The descriptor number, for messages (`/proc/PID/fd/N`) and tests: every system call
        goes through this object, which never makes one once the file is closing."""
        return self._fd

    def _closed_error(self, op: str) -> InstanceUnavailable:
        # The descriptor number may already belong to another file: never touch it.
        return InstanceUnavailable(
            f"cannot {op} '{self.path}': the file was closed (by its owner "
            f"'{self._handle.owner}') before or while the {op} was under way; its descriptor "
            "is never used after it is closed",
            hint="end reads, scans, commits and backups before closing the instance, "
            "detaching the database or ending the backup, then open it again to go on; if "
            "nothing was being closed, this is a bug: please report it",
            path=self.path,
        )

    def _left(self) -> None:
        """A call left its window while the file is closing: wake the closer, and close the
        descriptor if the close was left to the last call out (`_deferred`)."""
        if self._pid != forks.PID:
            return  # a forked child's copy: its closer does not wait (and the lock may be
            # held forever by a thread that exists only in the parent)
        close_now = False
        try:
            with self._lock:  # a C lock: no interrupt between its acquire and the body
                if self._deferred and not self._busy:
                    self._deferred = False
                    close_now = True
                self._cond.notify_all()
        finally:
            if close_now:
                try:
                    os.close(self._fd)
                except OSError:
                    pass  # nobody left to tell: the close() that deferred it has returned

    def _close_fd(self) -> None:
        """The handle's closer: refuse new calls, wait for the calls under way, close."""
        self._closing = True  # first: from here on no call enters the system
        if self._pid != forks.PID:
            # A forked child closing its copy: the parent's threads that may be inside a call
            # do not exist here, and the lock may have been held at the fork.
            if not self._released:
                self._released = True
                os.close(self._fd)
            return
        me = _get_ident()
        close_now = False
        try:
            with self._lock:
                busy = self._busy
                try:
                    while len(busy) > busy.count(me):
                        # Woken by the last call out; the timeout only bounds a wake-up lost
                        # to an interrupt between a call's `remove` and its `_left`.
                        self._cond.wait(0.05)
                finally:
                    if self._released:
                        pass  # an earlier run of this closer closed it or left it to a call
                    elif busy:
                        # Still in use, by this very thread (a signal handler interrupted
                        # one of its calls and closes the file: that call retries its system
                        # call once the handler returns, PEP 475), or by others when this
                        # wait was interrupted: the last call to leave closes it.
                        self._deferred = True
                        self._released = True
                    else:
                        close_now = True
                        self._released = True
        finally:
            if close_now:
                os.close(self._fd)

    def _call(self, op: str, call: Callable[..., _T], *args: Any) -> _T:
        """`call(fd, *args)` inside an in-flight window; OSError as a JetError naming `op`."""
        busy = self._busy
        me = _get_ident()
        try:
            busy.append(me)  # first in the `try` (see the class docstring)
            if self._closing:
                raise self._closed_error(op)
            return call(self._fd, *args)
        except OSError as exc:
            raise from_os_error(exc, op=op, path=self.path) from exc
        finally:
            busy.remove(me)
            if self._closing:
                self._left()

    def pread(self, size: int, offset: int) -> bytes:
        if self._closing:
            raise self._closed_error("read")
        if self._fs.hook is not None:
            self._fs._call_hook(IOEvent("read", self.path, offset, size))
        # The window is inlined here and in `pwrite` (a call of `_call` would cost more
        # than the window itself): a page read per cache miss, a write per commit flush.
        busy = self._busy
        me = _get_ident()
        try:
            busy.append(me)  # first in the `try` (see the class docstring)
            if self._closing:
                raise self._closed_error("read")
            data = os.pread(self._fd, size, offset)
            if len(data) == size or not data:
                return data
            # A short read before end of file is legal; keep reading until EOF or done.
            parts = [data]
            got = len(data)
            while got < size:
                more = os.pread(self._fd, size - got, offset + got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        except OSError as exc:
            raise from_os_error(exc, op="read", path=self.path) from exc
        finally:
            busy.remove(me)
            if self._closing:
                self._left()

    def read(self, size: int, offset: int) -> bytes:
        """Up to `size` bytes from the file's position (at `offset`, for the hook), for a
        file read front to back once, which may be a pipe (`FileSystem.text_file`); b""
        at its end."""
        if self._closing:
            raise self._closed_error("read")
        if self._fs.hook is not None:
            self._fs._call_hook(IOEvent("read", self.path, offset, size))
        return self._call("read", os.read, size)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        if self._closing:
            raise self._closed_error("write")
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        if self._fs.hook is not None:
            self._fs._call_hook(IOEvent("write", self.path, offset, size, data))
        busy = self._busy
        me = _get_ident()
        try:
            busy.append(me)  # first in the `try` (see the class docstring)
            if self._closing:
                raise self._closed_error("write")
            written = os.pwrite(self._fd, data, offset)
            if written < size:
                view = memoryview(data).cast("B")
                while written < size:
                    n = os.pwrite(self._fd, view[written:], offset + written)
                    if n <= 0:
                        raise OSError(28, "short write: no progress")
                    written += n
        except OSError as exc:
            raise from_os_error(exc, op="write", path=self.path) from exc
        finally:
            busy.remove(me)
            if self._closing:
                self._left()

    def fdatasync(self) -> None:
        self._sync("fdatasync", os.fdatasync)

    def fsync(self) -> None:
        self._sync("fsync", os.fsync)

    def _sync(self, op: str, call: Callable[[int], None]) -> None:
        """`fsync`/`fdatasync`, failing for good once one failed (fsyncgate).

        The kernel reports a failed writeback once, to whichever sync of the open file
        checks first, and may then drop the dirty pages: a sync that succeeds after a
        failed one does not make the earlier writes durable, and one running in another
        thread (a log roll's header sync while a checkpoint's pages wait for theirs) takes
        the error meant for the other writes. The syncs of a file are therefore taken one at
        a time, and after one failed every later one raises that failure."""
        if self._closing:
            raise self._closed_error(op)
        if self._fs.hook is not None:
            try:
                self._fs._call_hook(IOEvent(op, self.path))
            except JetError as exc:
                with self._sync_lock:
                    self._sync_failure = self._sync_failure or exc
                raise
        with self._sync_lock:
            failure = self._sync_failure
            if failure is None:
                try:
                    self._call(op, call)
                except InstanceUnavailable:
                    raise  # closed under the call: nothing about the disk
                except JetError as exc:
                    self._sync_failure = exc
                    raise
                return
        raise type(failure)(
            f"an earlier sync of '{self.path}' failed ({failure.detail}): the writes it was "
            "to make durable may be lost, and no later sync of this open file can make them "
            "durable",
            hint=failure.hint,
            path=self.path,
        ) from failure

    def truncate(self, size: int) -> None:
        if self._closing:
            raise self._closed_error("truncate")
        if self._fs.hook is not None:
            self._fs._call_hook(IOEvent("truncate", self.path, size=size))
        self._call("truncate", os.ftruncate, size)

    def stat(self) -> os.stat_result:
        """`fstat` of the open file (what it is, whatever its path names now)."""
        return self._call("stat", os.fstat)

    def size(self) -> int:
        return self._call("stat", os.fstat).st_size

    def try_lock(self, *, shared: bool = False) -> bool:
        """Take the file's flock without waiting: False if another open file description
        holds a conflicting one (see `jetstore.io.locking`), a JetError if locking fails."""
        return self._call("lock", _flock_at_once, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)

    def unlock(self) -> None:
        """Drop this file's flock, quietly: closing the descriptor drops it anyway, and a
        file already closed is never touched (its number may be another file's by now)."""
        if self._closing:
            return
        try:
            self._call("unlock", fcntl.flock, fcntl.LOCK_UN)
        except JetError:
            pass

    def take_owner(self, uid: int, gid: int, *, why: str = "chown") -> None:
        """Give the file to `uid`:`gid` unless it is theirs already. Without the right to
        give it away (not root, or root squashed on a network file system) it stays the
        runner's, who could have replaced the original anyway."""
        info = self.stat()
        if (info.st_uid, info.st_gid) != (uid, gid):
            self._call(why, _chown_if_allowed, uid, gid)

    def take_access_of(self, like: str) -> None:
        """Give the file the permission bits and owner of the file `like` (the one it is to
        replace), before any data is written: no copy of the data is ever more readable than
        the original, and a service's file a tool run as root rebuilt stays the service's."""
        why = f"give it the permissions of '{like}'"
        try:
            info = os.stat(like)
        except OSError as exc:
            raise from_os_error(exc, op=why, path=self.path) from exc
        self.take_owner(info.st_uid, info.st_gid, why=why)
        self._call(why, os.fchmod, stat.S_IMODE(info.st_mode))

    def path_problem(self) -> str | None:
        """Why `self.path` no longer names this open file, or None if it still does.

        An open file outlives its name: writes to a file deleted or replaced behind the
        engine's back succeed and are lost when it is closed. Two system calls (fstat, stat):
        for checkpoints and log rolls, never for every commit.
        """
        opened = self.stat()
        if opened.st_nlink == 0:
            return "was deleted"
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return "was moved or renamed away (nothing is at its path now)"
        except OSError as exc:
            raise from_os_error(exc, op="stat", path=self.path) from exc
        if (named.st_dev, named.st_ino) != (opened.st_dev, opened.st_ino):
            return "was replaced by another file"
        return None

    def close(self) -> None:
        """Close the file (idempotent): new calls are refused at once, calls under way in
        other threads are waited for (they are single system calls), then the descriptor is
        closed."""
        try:
            self._handle.close()
        except OSError as exc:
            raise from_os_error(exc, op="close", path=self.path) from exc

    def __enter__(self) -> File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _FileStream(io.RawIOBase):
    """A `File` read or written front to back, for the text layer of `FileSystem.text_file`
    (read with `File.read`, so a pipe reads as a file does).

    Every read and write is the `File`'s (in-flight window, hook, errors as `JetError`).
    `abandon()` makes later writes vanish: the text and buffer layers flush what they hold
    when they are closed, and after a failure that flush must neither write nor raise again.
    """

    def __init__(self, file: File) -> None:
        super().__init__()
        self._file = file
        self._offset = 0
        self._abandoned = False

    def readable(self) -> bool:
        return not self._file.writable

    def writable(self) -> bool:
        return self._file.writable

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._file.read(len(view), self._offset)
        view[: len(data)] = data
        self._offset += len(data)
        return len(data)

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        if not self._abandoned:
            self._file.pwrite(data, self._offset)
            self._offset += size
        return size

    def abandon(self) -> None:
        self._abandoned = True

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._file.close()


def _chown_if_allowed(fd: int, uid: int, gid: int) -> None:
    with contextlib.suppress(PermissionError):
        os.fchown(fd, uid, gid)


def _chown_path_if_allowed(path: str, uid: int, gid: int) -> None:
    """`os.chown` of a directory just created (no descriptor to hold), where not theirs."""
    info = os.lstat(path)
    if (info.st_uid, info.st_gid) != (uid, gid):
        with contextlib.suppress(PermissionError):
            os.lchown(path, uid, gid)


def _inherited_owner(path: str) -> tuple[int, int] | None:
    """The owner and group a file or directory created at `path` is to take: its parent
    directory's when running as root, None otherwise (a user's files are theirs anyway).

    Root running a tool (`recover`, `repair`, `compact`) in a service's instance directory
    left root's files there (a new log generation, `lost-logs-<time>/`), which the service,
    running as its own user, could then not write, rename or remove."""
    if os.geteuid() != 0:
        return None
    try:
        info = os.stat(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None  # the create fails and says why
    return info.st_uid, info.st_gid


#: What a path that is no regular file is, for the refusal.
_SPECIAL_KINDS: dict[int, str] = {
    stat.S_IFIFO: "a FIFO or pipe",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


#: What a file read front to back once may also be (`FileSystem.open(stream=True)`).
_STREAM_KINDS: Final = frozenset({stat.S_IFIFO, stat.S_IFCHR, stat.S_IFSOCK})


def _not_a_regular_file(path: str, kind: int) -> InvalidPath:
    # Every file is read and written at offsets: a pipe failed its first pread as an "I/O
    # error" (sending the operator to the disk), a FIFO without a writer hung the open.
    return InvalidPath(
        f"'{path}' is {_SPECIAL_KINDS.get(kind, 'a special file')}, not a regular file: the "
        "engine reads and writes its files at any offset",
        hint="give the path of a file on disk (copy a stream to a file first)",
        path=path,
    )


def _link_to_nothing(path: str, error: FileNotFound) -> FileNotFound | None:
    """The refusal for `path` when it is a symbolic link whose target does not exist (None
    when it is not one): "No such file or directory" alone sent the operator looking for a
    file that `ls` shows is there."""
    try:
        target = os.readlink(path)
    except OSError:
        return None
    refusal = FileNotFound(
        f"'{path}' is a symbolic link to '{target}', which does not exist ({error.detail})",
        hint=f"put the file back at '{target}', or replace the link with the file itself",
        path=path,
    )
    refusal.errno = error.errno
    return refusal


def open_descriptor(into: list[int], path: str, flags: int, *, op: str) -> int:
    """`os.open(path, flags, 0o644)`, the descriptor appended to `into` before any signal
    handler can run: `list.extend` calls `os.open` (through `map`) from C, and CPython runs
    handlers (KeyboardInterrupt) only when a call returns to Python code, so an interrupt
    comes before the open or after the number is in `into`, never between (a plain
    `fd = os.open(...)` loses it when the interrupt lands before the assignment). The
    caller closes what `into` still holds on its way out (`close_unregistered`); registering
    the file empties it (`HandleRegistry.register`'s `taking`)."""
    try:
        into.extend(map(os.open, (path,), (flags,), (0o644,)))
    except OSError as exc:
        raise from_os_error(exc, op=op, path=path) from exc
    return into[-1]


def close_unregistered(descriptors: list[int]) -> None:
    """Close the descriptors an interrupt or an error left unregistered (the caller is on
    its way out with that error: a failing close has nobody to tell)."""
    for fd in descriptors:
        try:
            os.close(fd)
        except OSError:
            pass
    descriptors.clear()


def discard_writes_to(fd: int) -> None:
    """Point the descriptor `fd` (a standard stream whose reader went away) at os.devnull,
    so what is still written to it, the interpreter's final flush included, goes nowhere.

    Not a registered `File`: the descriptor of os.devnull lives only inside this call (`dup2`
    copies it onto `fd`, which is the process's, not the engine's), and nothing written there
    is durable, for the hook to see. Opened through `open_descriptor`, so a Ctrl-C as the
    open returns does not leave it open."""
    held: list[int] = []
    try:
        devnull = open_descriptor(
            held, os.devnull, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), op="open"
        )
        os.dup2(devnull, fd)
    except OSError as exc:
        raise from_os_error(exc, op=f"redirect descriptor {fd} to", path=os.devnull) from exc
    finally:
        close_unregistered(held)


def _flock_at_once(fd: int, operation: int) -> bool:
    """`flock(fd, operation | LOCK_NB)`: False if a conflicting lock is held elsewhere."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def absolute_path(path: str | os.PathLike[str], *, what: str) -> str:
    """`path` made absolute; `InvalidPath` when it is empty or holds a NUL byte,
    `InvalidParameter` when it is no str path (None, a number, bytes).

    `os.path.abspath("")` is the current directory: an empty string (an unset variable, a
    missing argument) must never quietly put an instance, a backup set or a restore there.
    A NUL byte cannot be in a path: the OS API refuses it with a bare ValueError rather
    than an OSError, which no caller would turn into the engine's error.
    """
    # Checked first: os.fspath and the `in` below fail on anything else with a bare
    # TypeError (None for an unset setting, bytes from an OS API).
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    if not isinstance(text, str):
        raise InvalidParameter(
            f"the {what} path must be a str or os.PathLike of str, not "
            f"{type(text).__name__} {text!r}",
            hint="Pass the path as a str or a pathlib.Path (bytes: os.fsdecode(path)).",
        )
    if not text:
        raise InvalidPath(
            f"the {what} path is empty",
            hint="Give the path (use '.' for the current directory).",
        )
    if "\0" in text:
        raise InvalidPath(
            f"the {what} path {text!r} holds a NUL byte, which no file name can hold",
            hint="Give the path without the NUL byte (a string built from binary data?).",
        )
    return os.path.abspath(text)


class FileSystem:
    """The engine's view of the OS file API, with an optional hook on every operation.

    `registry` counts the handles; `owner` labels them (for example "instance:/data/a").
    """

    def __init__(self, registry: HandleRegistry | None = None, hook: IOHook | None = None):
        self.registry = registry if registry is not None else DEFAULT_REGISTRY
        self.hook = hook

    def _call_hook(self, event: IOEvent) -> None:
        hook = self.hook
        if hook is None:
            return
        try:
            hook(event)
        except OSError as exc:
            raise from_os_error(exc, op=event.op, path=event.path) from exc

    def with_registry(self, registry: HandleRegistry) -> FileSystem:
        """The same file system (same hook) counting handles in another registry."""
        return FileSystem(registry, self.hook)

    def open(
        self,
        path: str,
        *,
        owner: str,
        create: bool = False,
        exclusive: bool = False,
        writable: bool = True,
        stream: bool = False,
    ) -> File:
        """Open `path` (a regular file; see the module docstring). `stream`: a file read
        front to back once (`File.read`), which may also be a FIFO, a pipe or a character
        device (`import <(zcat rows.gz)`); its open waits for a FIFO's writer, as any reader
        of a FIFO does."""
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT
        if exclusive:
            flags |= os.O_EXCL
        flags |= getattr(os, "O_CLOEXEC", 0)
        op = "create" if create else "open"
        self._call_hook(IOEvent(op, path))
        # Looked at before the open: a FIFO without a writer would block it forever. (Not
        # O_NONBLOCK: on a regular file under a lease it fails instead of waiting its break.)
        with contextlib.suppress(OSError):
            if not stream and stat.S_ISFIFO(os.stat(path).st_mode):
                raise _not_a_regular_file(path, stat.S_IFIFO)
        inherit = _inherited_owner(path) if create else None
        if inherit is not None and not exclusive and os.path.lexists(path):
            inherit = None  # not created here: it keeps its owner
        unregistered: list[int] = []
        try:
            try:
                fd = open_descriptor(unregistered, path, flags, op=op)
            except FileNotFound as exc:
                dangling = _link_to_nothing(path, exc)
                if dangling is None:
                    raise
                raise dangling from exc
            try:
                mode = os.fstat(fd).st_mode
            except OSError as exc:
                raise from_os_error(exc, op="stat", path=path) from exc
            if stat.S_ISDIR(mode):
                # Read-only opens of a directory succeed; say what is wrong now, not at the
                # first read ("Is a directory") or, worse, after judging its size as a file's.
                cause = IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
                raise from_os_error(cause, op=op, path=path) from cause
            if not stat.S_ISREG(mode) and not (stream and stat.S_IFMT(mode) in _STREAM_KINDS):
                raise _not_a_regular_file(path, stat.S_IFMT(mode))
            file = File(
                self,
                fd,
                path,
                kind=HandleKind.FILE,
                owner=owner,
                writable=writable,
                taking=unregistered,
            )
        finally:
            close_unregistered(unregistered)
        if inherit is not None:
            try:
                file.take_owner(*inherit)
            except BaseException:
                file.close()
                raise
        return file

    @contextmanager
    def opened(self, path: str, *, owner: str, **flags: bool) -> Iterator[File]:
        """`open(path, owner=owner, **flags)` for a use that ends here: the file is closed on
        every way out. With `with fs.open(...) as f`, a Ctrl-C right after `open` returned
        (before the `with` took the file) left it open and registered under an owner
        nobody cleans up (a probe's, a peek's). Here the `finally` is entered before the
        open, and closes whatever was registered under a sub-owner of this use's own."""
        scope = use_owner(owner)
        done = False
        try:
            yield self.open(path, owner=scope, **flags)
            done = True
        finally:
            errors = self.registry.close_owner(scope)
            if done and errors:  # a failed close is reported as `File.close` reports it
                error = errors[0]
                if isinstance(error, OSError):
                    raise from_os_error(error, op="close", path=path) from error
                raise error

    @contextmanager
    def opening(self, path: str, *, owner: str, **flags: bool) -> Iterator[File]:
        """`open(path, owner=owner, **flags)` for a file kept open after the block (a
        database, an offline tool's reader): closed if the block raises, kept otherwise.
        `file = fs.open(...)` followed by a `try` that closes it on failure lost the file to
        a Ctrl-C as `open` returned, before the assignment; like `opened`, the `try` here is
        entered before the open, and what an interrupt leaves is found under a sub-owner of
        this use's own (which the owner's `close_owner` also closes)."""
        scope = use_owner(owner)
        try:
            yield self.open(path, owner=scope, **flags)
        except BaseException:
            self.registry.close_owner(scope)
            raise

    @contextmanager
    def text_file(
        self,
        path: str,
        *,
        owner: str,
        create: bool = False,
        encoding: str = "utf-8",
        errors: str = "strict",
        newline: str | None = None,
    ) -> Iterator[TextIO]:
        """`path` as a text stream read front to back (which may be a pipe: `open`'s
        `stream`), or with `create` written from empty (created or truncated), for files an
        operator names (an export, an import's input).

        The file is a registered `File` closed on every way out, like `opened`. Written, it
        is flushed and fsynced when the block ends normally; when the block raises, what the
        layers still buffer is dropped (the caller discards a half-written file), so the
        block's error is the one reported."""
        with self.opened(
            path, owner=owner, create=create, writable=create, stream=not create
        ) as file:
            if create:
                file.truncate(0)
            raw = _FileStream(file)
            buffered = io.BufferedWriter(raw) if create else io.BufferedReader(raw)
            text = io.TextIOWrapper(buffered, encoding=encoding, errors=errors, newline=newline)
            try:
                yield text
                if create:
                    text.flush()
                    file.fsync()
            except BaseException:
                raw.abandon()
                raise
            finally:
                text.close()

    def read_file(self, path: str, *, owner: str, limit: int | None = None) -> bytes:
        """Whole contents of a (small) file, opened and closed here."""
        with self.opened(path, owner=owner, writable=False) as f:
            size = f.size() if limit is None else min(limit, f.size())
            return f.pread(size, 0)

    def fsync_directory(self, path: str, *, owner: str = "fsync-dir") -> None:
        self._call_hook(IOEvent("fsync_dir", path))
        unregistered: list[int] = []
        try:
            fd = open_descriptor(
                unregistered,
                path,
                os.O_RDONLY | getattr(os, "O_DIRECTORY", 0),
                op="open directory",
            )
            # A `File` like any other: its owner's cleanup may close it from another thread.
            directory = File(
                self,
                fd,
                path,
                kind=HandleKind.DIRECTORY,
                owner=owner,
                writable=False,
                taking=unregistered,
            )
        finally:
            close_unregistered(unregistered)
        try:
            directory._call("fsync directory", os.fsync)
        finally:
            try:
                directory._handle.close()
            except OSError as exc:
                raise from_os_error(exc, op="close directory", path=path) from exc

    def rename(self, source: str, target: str) -> None:
        """Atomic rename (replaces `target`). Call `fsync_directory` before relying on it."""
        self._call_hook(IOEvent("rename", source, target=target))
        try:
            os.rename(source, target)
        except OSError as exc:
            raise from_os_error(exc, op=f"rename to '{target}'", path=source) from exc

    def unlink(self, path: str) -> None:
        self._call_hook(IOEvent("unlink", path))
        try:
            os.unlink(path)
        except OSError as exc:
            raise from_os_error(exc, op="delete", path=path) from exc

    def link(self, source: str, target: str) -> None:
        """Give the file `source` the second name `target` (which must not exist). Call
        `fsync_directory` before relying on it."""
        self._call_hook(IOEvent("link", source, target=target))
        try:
            os.link(source, target)
        except OSError as exc:
            raise from_os_error(exc, op=f"link from '{source}'", path=target) from exc

    def remove_tree(self, path: str) -> None:
        """Remove `path` and everything under it, each file through `unlink` and each
        directory through `rmdir` (so the hook sees every removal, as it saw every create).
        A symbolic link is removed, never followed. Goes on past a failure, removing what it
        can (a cleanup after a failure), and raises the first failure at the end."""
        first: JetError | None = None
        try:
            kind = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise from_os_error(exc, op="stat", path=path) from exc
        try:
            if not stat.S_ISDIR(kind):
                self.unlink(path)
                return
            for name in self.listdir(path):
                try:
                    self.remove_tree(os.path.join(path, name))
                except JetError as exc:
                    first = first or exc
            self.rmdir(path)
        except JetError as exc:
            first = first or exc
        if first is not None:
            raise first

    def makedirs(self, path: str) -> None:
        self._call_hook(IOEvent("mkdir", path))
        missing: list[str] = []
        parent = os.path.abspath(path)
        while not os.path.lexists(parent) and parent != os.path.dirname(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        inherit = _inherited_owner(missing[-1]) if missing else None
        try:
            os.makedirs(path, exist_ok=True)
            if inherit is not None:
                for directory in reversed(missing):
                    _chown_path_if_allowed(directory, *inherit)
        except OSError as exc:
            raise from_os_error(exc, op="create directory", path=path) from exc

    def mkdir(self, path: str) -> None:
        """Create the directory `path`, which must not exist: whoever creates it owns it (no
        two callers can both think they made it, as with `makedirs`). An existing `path`
        raises the `from_os_error` of EEXIST; the caller says what it means there."""
        self._call_hook(IOEvent("mkdir", path))
        inherit = _inherited_owner(path)
        try:
            os.mkdir(path)
            if inherit is not None:
                _chown_path_if_allowed(path, *inherit)
        except OSError as exc:
            raise from_os_error(exc, op="create directory", path=path) from exc

    def rmdir(self, path: str) -> None:
        """Remove the empty directory `path` (call `fsync_directory` on its parent after)."""
        self._call_hook(IOEvent("rmdir", path))
        try:
            os.rmdir(path)
        except OSError as exc:
            raise from_os_error(exc, op="remove directory", path=path) from exc

    def listdir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError as exc:
            raise from_os_error(exc, op="list directory", path=path) from exc

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_directory(self, path: str) -> bool:
        try:
            return stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            return False

    def special_kind(self, path: str) -> str | None:
        """What `path` (followed if a link) is when it is neither a regular file nor a
        directory ("a FIFO or pipe", "a socket", ...), None otherwise or if it is gone."""
        try:
            kind = stat.S_IFMT(os.stat(path).st_mode)
        except OSError:
            return None
        if kind in (stat.S_IFREG, stat.S_IFDIR):
            return None
        return _SPECIAL_KINDS.get(kind, "a special file")

    def file_identity(self, path: str) -> tuple[int, int] | None:
        """The (device, inode) of the file `path` names (followed if a link): equal for
        every name of one file. None if it cannot be read (gone, no permission)."""
        try:
            info = os.stat(path)
        except (OSError, ValueError):
            return None
        return info.st_dev, info.st_ino

    def is_symbolic_link(self, path: str) -> bool:
        """Whether `path` itself is a symbolic link (to anything, or to nothing)."""
        return os.path.islink(path)

    def require_directory(self, path: str, *, what: str, hint: str) -> None:
        """FileNotFound if `path` does not exist, InvalidPath if it is not a directory."""
        if not self.exists(path):
            raise FileNotFound(f"{what} '{path}' does not exist", hint=hint, path=path)
        if not self.is_directory(path):
            raise InvalidPath(f"'{path}' is not a directory", hint=hint, path=path)

    def free_bytes(self, path: str) -> int:
        """Bytes available to this process on the volume holding `path`."""
        try:
            stats = os.statvfs(path)
        except OSError as exc:
            raise from_os_error(exc, op="statvfs", path=path) from exc
        return stats.f_bavail * stats.f_frsize

    def size(self, path: str) -> int:
        try:
            return os.stat(path).st_size
        except OSError as exc:
            raise from_os_error(exc, op="stat", path=path) from exc

    def write_new_file(
        self, path: str, chunks: list[bytes], *, owner: str, sync: bool = True
    ) -> None:
        """Create (or replace) `path` with `chunks` written in order, synced, closed.

        Written whole under `path` + ".new", then renamed over `path`: a failure or a crash
        leaves the old file or the new one, never one cut short (a record rewritten in place
        was truncated first, and lost with a failure before its bytes were written again).
        The caller syncs the directory to make the rename durable.
        """
        temporary = path + ".new"
        with self.opened(temporary, owner=owner, create=True) as f:
            f.truncate(0)
            offset = 0
            for chunk in chunks:
                f.pwrite(chunk, offset)
                offset += len(chunk)
            if sync:
                f.fsync()
        self.rename(temporary, path)

"""Files and directories: the only place the engine calls the operating system's file API.

Invariants:
- Every open file is a `File` registered in a `HandleRegistry`; `File.close()` is idempotent.
- Every OS failure leaves this module as a `jetstore.errors.JetError` naming the operation and
  the path (`from_os_error`), never as a bare `OSError`. A mistake in the path (a directory
  where a file belongs or the reverse, a parent that is a file, a name too long, a symlink
  loop) is `InvalidPath` saying what is wrong with it; only genuine I/O errors are `DiskIO`.
- `open` never returns a `File` for a directory (InvalidPath, as EISDIR), even read-only.
- `pwrite` writes everything or raises; `pread` returns fewer bytes only at end of file.
- Every durability-relevant operation (create, write, fsync, fdatasync, directory fsync,
  rename, unlink, truncate) first goes through the file system's `hook`, if one is set. The
  hook sees the operation before it happens and may raise `OSError` to inject a fault; the
  crash and fault-injection harnesses record and replay workloads through it.
- Metadata durability is explicit: callers that create, rename or unlink a file they rely on
  call `fsync_directory` afterwards (the audit in the crash suite checks this).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from jetstore.errors import FileNotFound, InvalidParameter, InvalidPath, from_os_error
from jetstore.io.handles import DEFAULT_REGISTRY, Handle, HandleKind, HandleRegistry


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
    """An open file: positional reads and writes, syncs, deterministic close."""

    __slots__ = ("_fd", "_fs", "_handle", "path", "writable")

    def __init__(self, fs: FileSystem, fd: int, path: str, handle: Handle, writable: bool):
        self._fs = fs
        self._fd = fd
        self._handle = handle
        self.path = path
        self.writable = writable

    @property
    def closed(self) -> bool:
        return self._handle.closed

    @property
    def fd(self) -> int:
        return self._fd

    def _closed_error(self) -> InvalidParameter:
        # The descriptor number may already belong to another file: never touch it.
        return InvalidParameter(
            f"file '{self.path}' was used after it was closed",
            hint="this is a bug in the caller; please report it",
            path=self.path,
        )

    def pread(self, size: int, offset: int) -> bytes:
        if self._handle.closed:
            raise self._closed_error()
        hook = self._fs.hook
        if hook is not None:
            self._fs._call_hook(IOEvent("read", self.path, offset, size))
        try:
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

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        if self._handle.closed:
            raise self._closed_error()
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        hook = self._fs.hook
        if hook is not None:
            self._fs._call_hook(IOEvent("write", self.path, offset, size, data))
        try:
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

    def fdatasync(self) -> None:
        if self._handle.closed:
            raise self._closed_error()
        if self._fs.hook is not None:
            self._fs._call_hook(IOEvent("fdatasync", self.path))
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise from_os_error(exc, op="fdatasync", path=self.path) from exc

    def fsync(self) -> None:
        if self._handle.closed:
            raise self._closed_error()
        if self._fs.hook is not None:
            self._fs._call_hook(IOEvent("fsync", self.path))
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise from_os_error(exc, op="fsync", path=self.path) from exc

    def truncate(self, size: int) -> None:
        if self._handle.closed:
            raise self._closed_error()
        if self._fs.hook is not None:
            self._fs._call_hook(IOEvent("truncate", self.path, size=size))
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            raise from_os_error(exc, op="truncate", path=self.path) from exc

    def size(self) -> int:
        try:
            return os.fstat(self._fd).st_size
        except OSError as exc:
            raise from_os_error(exc, op="stat", path=self.path) from exc

    def stat(self) -> os.stat_result:
        """`fstat` of the open file (what it is, whatever its path names now)."""
        if self._handle.closed:
            raise self._closed_error()
        try:
            return os.fstat(self._fd)
        except OSError as exc:
            raise from_os_error(exc, op="stat", path=self.path) from exc

    def try_lock(self, *, shared: bool = False) -> bool:
        """Take the file's flock without waiting: False if another open file description
        holds a conflicting one (see `jetstore.io.locking`), a JetError if locking fails."""
        if self._handle.closed:
            raise self._closed_error()
        try:
            return _flock_at_once(self._fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        except OSError as exc:
            raise from_os_error(exc, op="lock", path=self.path) from exc

    def unlock(self) -> None:
        """Drop this file's flock, quietly: closing the descriptor drops it anyway, and a
        file already closed is never touched (its number may be another file's by now)."""
        if self._handle.closed:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            pass

    def path_problem(self) -> str | None:
        """Why `self.path` no longer names this open file, or None if it still does.

        An open file outlives its name: writes to a file deleted or replaced behind the
        engine's back succeed and are lost when it is closed. Two system calls (fstat, stat):
        for checkpoints and log rolls, never for every commit.
        """
        if self._handle.closed:
            raise self._closed_error()
        try:
            opened = os.fstat(self._fd)
        except OSError as exc:
            raise from_os_error(exc, op="stat", path=self.path) from exc
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
        try:
            self._handle.close()
        except OSError as exc:
            raise from_os_error(exc, op="close", path=self.path) from exc

    def __enter__(self) -> File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _flock_at_once(fd: int, operation: int) -> bool:
    """`flock(fd, operation | LOCK_NB)`: False if a conflicting lock is held elsewhere."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def absolute_path(path: str | os.PathLike[str], *, what: str) -> str:
    """`path` made absolute; `InvalidPath` when it is empty.

    `os.path.abspath("")` is the current directory: an empty string (an unset variable, a
    missing argument) must never quietly put an instance, a backup set or a restore there.
    """
    text = os.fspath(path)
    if not text:
        raise InvalidPath(
            f"the {what} path is empty",
            hint="Give the path (use '.' for the current directory).",
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
    ) -> File:
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT
        if exclusive:
            flags |= os.O_EXCL
        flags |= getattr(os, "O_CLOEXEC", 0)
        op = "create" if create else "open"
        self._call_hook(IOEvent(op, path))
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise from_os_error(exc, op=op, path=path) from exc
        try:
            is_directory = stat.S_ISDIR(os.fstat(fd).st_mode)
        except OSError as exc:
            os.close(fd)
            raise from_os_error(exc, op="stat", path=path) from exc
        if is_directory:
            # Read-only opens of a directory succeed; say what is wrong now, not at the
            # first read ("Is a directory") or, worse, after judging its size as a file's.
            os.close(fd)
            cause = IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            raise from_os_error(cause, op=op, path=path) from cause
        handle = self.registry.register(HandleKind.FILE, owner, path, lambda: os.close(fd))
        return File(self, fd, path, handle, writable)

    def read_file(self, path: str, *, owner: str, limit: int | None = None) -> bytes:
        """Whole contents of a (small) file, opened and closed here."""
        with self.open(path, owner=owner, writable=False) as f:
            size = f.size() if limit is None else min(limit, f.size())
            return f.pread(size, 0)

    def fsync_directory(self, path: str, *, owner: str = "fsync-dir") -> None:
        self._call_hook(IOEvent("fsync_dir", path))
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise from_os_error(exc, op="open directory", path=path) from exc
        handle = self.registry.register(HandleKind.DIRECTORY, owner, path, lambda: os.close(fd))
        try:
            os.fsync(fd)
        except OSError as exc:
            raise from_os_error(exc, op="fsync directory", path=path) from exc
        finally:
            try:
                handle.close()
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

    def makedirs(self, path: str) -> None:
        self._call_hook(IOEvent("mkdir", path))
        try:
            os.makedirs(path, exist_ok=True)
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
        """Create (or replace) `path` with `chunks` written in order, synced, closed."""
        with self.open(path, owner=owner, create=True) as f:
            f.truncate(0)
            offset = 0
            for chunk in chunks:
                f.pwrite(chunk, offset)
                offset += len(chunk)
            if sync:
                f.fsync()

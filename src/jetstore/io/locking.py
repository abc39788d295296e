"""The instance directory lock: one opener at a time, in this process or any other.

The lock is `fcntl.flock(LOCK_EX | LOCK_NB)` on `jetstore.lock` inside the instance directory.
flock locks belong to the open file description, so a second open in the same process
conflicts too, and the kernel drops the lock when the holder dies (no stale lock to clean up).
The holder writes its pid into the file so a refused opener can name it.
"""

from __future__ import annotations

import fcntl
import os

from jetstore.errors import FileAccessDenied, JetError, from_os_error
from jetstore.format.filenames import LOCK_FILE
from jetstore.io.files import File, FileSystem
from jetstore.io.handles import Handle, HandleKind


class DirectoryLock:
    """An exclusive lock on an instance directory; `release()` is idempotent."""

    def __init__(self, file: File, handle: Handle) -> None:
        self._file = file
        self._handle = handle

    @property
    def held(self) -> bool:
        return not self._handle.closed

    def release(self) -> None:
        self._handle.close()
        self._file.close()


def read_lock_holder(fs: FileSystem, directory: str) -> int | None:
    """The pid written in the lock file, if any (the holder may be gone already)."""
    try:
        data = fs.read_file(os.path.join(directory, LOCK_FILE), owner="lock-probe", limit=64)
    except JetError:
        return None
    text = data.decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def is_locked(fs: FileSystem, directory: str) -> bool:
    """True if some process holds the directory lock right now (probes without keeping it)."""
    path = os.path.join(directory, LOCK_FILE)
    try:
        file = fs.open(path, owner="lock-probe", writable=False)
    except JetError:
        return False
    try:
        fcntl.flock(file.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(file.fd, fcntl.LOCK_UN)
        return False
    finally:
        file.close()


def acquire_directory_lock(fs: FileSystem, directory: str, *, owner: str) -> DirectoryLock:
    path = os.path.join(directory, LOCK_FILE)
    file = fs.open(path, owner=owner, create=True)
    try:
        fcntl.flock(file.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        holder = read_lock_holder(fs, directory)
        who = f"process {holder}" if holder is not None else "another opener"
        if holder == os.getpid():
            who = f"this process ({holder}), through another Instance object"
        raise FileAccessDenied(
            f"instance directory '{directory}' is already open by {who}",
            hint="close the other opener first; only one Instance may hold a directory",
            path=path,
        ) from None
    except OSError as exc:
        file.close()
        raise from_os_error(exc, op="lock", path=path) from exc
    handle = fs.registry.register(HandleKind.LOCK, owner, path, lambda: _unlock_quietly(file.fd))
    try:
        file.truncate(0)
        file.pwrite(f"{os.getpid()}\n".encode("ascii"), 0)
    except Exception:
        handle.close()
        file.close()
        raise
    return DirectoryLock(file, handle)


def _unlock_quietly(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass  # closing the descriptor right after releases the lock anyway

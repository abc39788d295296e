"""Exclusive locks: the instance directory lock, and the lock on every database file an
instance writes. One opener at a time, in this process or any other.

Both are `fcntl.flock(LOCK_EX | LOCK_NB)`: on `jetstore.lock` inside the instance directory,
and on the open database file itself (`lock_file`). flock locks belong to the open file
description, so a second open in the same process conflicts too, and the kernel drops the
lock when the holder dies (no stale lock to clean up).

Invariants:
- The directory lock's holder writes its pid into the lock file, and on the next line what it
  is (`HOLDER_INSTANCE`, `HOLDER_RESTORE`, an offline tool's words), so a refused opener can
  name it (`describe_lock_holder`): a restore holding `--logs-from` is not "an open
  instance", nor another Instance object. A file of an older release holds the pid alone.
  A database file cannot carry a pid, so its holder is named from this process's table of
  the files it locked (`_HELD`, by device and inode: a hard link or symlink reaches the same
  entry) or, for another process, from the kernel's lock table (`/proc/locks`), best effort.
- A directory lock is held on a lock file a path still names: a holder may delete the
  file before it lets go (an offline tool in a folder that had none), so a take that got
  the lock on a deleted file takes it again on the path.
- Every lock is registered in the handle registry (kind LOCK) when taken and released by
  its handle's `close()`, exactly once; releasing also removes the `_HELD` entry.
- The database file lock is advisory and only writers take it: read-only openers (diagnose,
  checksum, dump, a backup reading the pages) never lock and are never refused by it.
- Probes (`is_locked`, `file_lock_holder`) take the lock for an instant and drop it; they
  never keep it.
"""

from __future__ import annotations

import contextlib
import os
import threading

from jetstore.errors import FileAccessDenied, JetError
from jetstore.format.filenames import LOCK_FILE
from jetstore.io.files import File, FileSystem
from jetstore.io.handles import Handle, HandleKind, release_all, use_owner


class FileLock:
    """An exclusive lock on one open file; `release()` is idempotent and leaves the file open
    (the file's owner closes it right after)."""

    def __init__(self, handle: Handle) -> None:
        self._handle = handle

    @property
    def held(self) -> bool:
        return not self._handle.closed

    def release(self) -> None:
        self._handle.close()


class DirectoryLock(FileLock):
    """An exclusive lock on an instance directory: its lock file stays open while it is held,
    and `release()` (idempotent) closes it too."""

    def __init__(self, file: File, handle: Handle) -> None:
        super().__init__(handle)
        self._file = file

    def release(self) -> None:
        # Both, even when the unlock is interrupted (Ctrl-C): the open lock file alone keeps
        # the directory locked until the process ends.
        release_all(super().release, self._file.close)

    def release_removing_file(self, fs: FileSystem) -> None:
        """`release()`, deleting the lock file first while it is still held (a run that
        created it in a folder that had none leaves the folder as it found it): an opener
        that opened the file meanwhile finds it deleted once it gets the lock, and takes a
        new one (`acquire_directory_lock`)."""
        try:
            with contextlib.suppress(JetError):
                fs.unlink(self._file.path)
        finally:
            self.release()


#: What holds a directory lock, in a refusal's words (the second line of the lock file).
HOLDER_INSTANCE = "an open instance"
HOLDER_RESTORE = "a restore copying its logs (restore --logs-from)"
_HOLDER_LIMIT = 120


def _read_lock_file(fs: FileSystem, directory: str) -> tuple[int | None, str | None]:
    """The pid and the holder's words written in the lock file (the holder may be gone)."""
    try:
        data = fs.read_file(
            os.path.join(directory, LOCK_FILE), owner="lock-probe", limit=32 + _HOLDER_LIMIT
        )
    except JetError:
        return None, None
    lines = data.decode("utf-8", "replace").splitlines()
    pid = lines[0].strip() if lines else ""
    role = lines[1].strip() if len(lines) > 1 else ""
    # Anyone may write the file: words that are no holder's are left out of messages.
    usable = 0 < len(role) <= _HOLDER_LIMIT and role.isprintable()
    return (int(pid) if pid.isdigit() else None), (role if usable else None)


def read_lock_holder(fs: FileSystem, directory: str) -> int | None:
    """The pid written in the lock file, if any (the holder may be gone already)."""
    return _read_lock_file(fs, directory)[0]


def lock_holder_role(fs: FileSystem, directory: str) -> str | None:
    """What holds the lock of `directory`, in the words its lock file gives
    (`HOLDER_INSTANCE`, `HOLDER_RESTORE`, an offline tool's); None when it gives none (a lock
    file of an older release) or cannot be read."""
    return _read_lock_file(fs, directory)[1]


def describe_lock_holder(fs: FileSystem, directory: str) -> str:
    """Who holds the lock of `directory`, as its lock file says: "a restore copying its logs
    (restore --logs-from) (process 4242)", "an open instance in this process (process 4242),
    another Instance object", "process 4242" (a lock file of an older release)."""
    pid, role = _read_lock_file(fs, directory)
    if pid is None:
        return role or "another opener"
    if pid != os.getpid():
        return f"{role} (process {pid})" if role else f"process {pid}"
    if role is None or role == HOLDER_INSTANCE:
        return f"{HOLDER_INSTANCE} in this process (process {pid}), another Instance object"
    return f"{role} in this process (process {pid})"


def is_locked(fs: FileSystem, directory: str) -> bool:
    """True if some process holds the directory lock right now (probes without keeping it)."""
    path = os.path.join(directory, LOCK_FILE)
    try:
        with fs.opened(path, owner="lock-probe", writable=False) as file:
            if not file.try_lock():
                return True
            file.unlock()
            return False
    except JetError:
        return False


def acquire_directory_lock(
    fs: FileSystem, directory: str, *, owner: str, holder: str
) -> DirectoryLock:
    """Lock `directory`, or raise `FileAccessDenied` (without an errno) naming who holds it.
    `holder` says what takes it (`HOLDER_INSTANCE`, ...): a refused opener reads it."""
    path = os.path.join(directory, LOCK_FILE)
    # The file and its lock are registered under a sub-owner of this take's own, and the
    # `try` that releases them is entered before the open: a Ctrl-C as the open or the
    # registration returned (before the assignment) left the file open, and the directory
    # locked, until the process ended. The owner's `close_owner` still reaches both.
    scope = use_owner(owner)
    try:
        while True:
            file = fs.open(path, owner=scope, create=True)
            if not file.try_lock():
                file.close()
                raise FileAccessDenied(
                    f"instance directory '{directory}' is already held by "
                    f"{describe_lock_holder(fs, directory)}",
                    hint="close the other opener first (or wait for its end): one opener at "
                    "a time holds a directory (an Instance, a restore reading its logs, an "
                    "offline tool)",
                    path=path,
                )
            if file.stat().st_nlink > 0:
                break
            # The holder this take waited behind deleted the lock file before it let go (an
            # offline tool removes the one it created in a directory that had none): this
            # lock is on a file nobody else can open, so the take starts again on the path.
            file.unlock()
            file.close()
        handle = fs.registry.register(HandleKind.LOCK, scope, path, file.unlock)
        file.truncate(0)
        file.pwrite(f"{os.getpid()}\n{holder[:_HOLDER_LIMIT]}\n".encode(), 0)
    except BaseException:  # Ctrl-C too: a lock nobody holds a reference to is never released
        fs.registry.close_owner(scope)  # the lock first (newest), then the file
        raise
    return DirectoryLock(file, handle)


#: Files locked by this process: (st_dev, st_ino) -> who holds it (for the refusal message).
_HELD: dict[tuple[int, int], str] = {}
_HELD_LOCK = threading.Lock()


def _forget_held_in_child() -> None:
    """A forked child holds none of these locks for itself: they are its parent's (which may
    have been taking `_HELD_LOCK` at the moment of the fork)."""
    global _HELD_LOCK
    _HELD_LOCK = threading.Lock()
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_held_in_child)
#: The kernel's table of file locks (Linux); read only to name another process's lock.
PROC_LOCKS = "/proc/locks"


def lock_file(fs: FileSystem, file: File, *, owner: str, holder: str, what: str) -> FileLock:
    """Lock the open `file` exclusively, or raise `FileAccessDenied` naming its holder.

    `holder` says who takes it (for example "instance '/data/a'"), `what` what the file is
    ("database file"): both appear in the refusal another opener gets.
    """
    info = file.stat()
    key = (info.st_dev, info.st_ino)
    if not file.try_lock():
        raise FileAccessDenied(
            f"{what} '{file.path}' is in use by {_describe_holder(fs, key)}; it is locked "
            "by the instance that has it open for writing (a hard link or symbolic link "
            "reaches the same file from another directory)",
            hint="close that instance first; never give one database file to two instances "
            "at once (copy it instead of linking it), and do not recover or repair it while "
            "it is open",
            path=file.path,
        )
    with _HELD_LOCK:
        _HELD[key] = holder

    def unlock() -> None:
        with _HELD_LOCK:
            if _HELD.get(key) == holder:
                del _HELD[key]
        # Never through a descriptor number closed meanwhile (`File.unlock`): it may belong
        # to another file by now, and unlocking it would drop someone else's lock.
        file.unlock()

    unregistered = [unlock]
    try:
        return FileLock(
            fs.registry.register(HandleKind.LOCK, owner, file.path, unlock, taking=unregistered)
        )
    finally:
        # Interrupted before the lock was registered: nobody would ever release it, and the
        # table would name this holder to every later opener, even after the file closed.
        for release in unregistered:
            release()


def file_lock_holder(fs: FileSystem, path: str, *, owner: str = "lock-probe") -> str | None:
    """Who holds the lock on the file at `path` right now (None: nobody, or no such file).

    Probes with a shared lock taken and dropped at once: it never keeps the file locked.
    """
    try:
        with fs.opened(path, owner=owner, writable=False) as file:
            info = file.stat()
            if not file.try_lock(shared=True):
                return _describe_holder(fs, (info.st_dev, info.st_ino))
            file.unlock()
            return None
    except JetError:
        return None


def _describe_holder(fs: FileSystem, key: tuple[int, int]) -> str:
    with _HELD_LOCK:
        holder = _HELD.get(key)
    if holder is not None:
        return f"{holder} in this process ({os.getpid()})"
    pid = _kernel_lock_holder(fs, key)
    return f"process {pid}" if pid is not None else "another process"


def lock_holder_pid(fs: FileSystem, path: str) -> int | None:
    """The pid holding an flock write lock on the file at `path`, from the kernel's lock
    table (None when it cannot be told: no such file, no table, no lock)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    with _HELD_LOCK:
        if (info.st_dev, info.st_ino) in _HELD:
            return os.getpid()
    return _kernel_lock_holder(fs, (info.st_dev, info.st_ino))


def _kernel_lock_holder(fs: FileSystem, key: tuple[int, int]) -> int | None:
    """The pid of the flock write lock on device/inode `key` in `/proc/locks` (Linux: lines
    like "1: FLOCK  ADVISORY  WRITE 3998 fe:00:2147820 0 EOF", device numbers in hex)."""
    dev, ino = key
    wanted = f"{os.major(dev):02x}:{os.minor(dev):02x}:{ino}"
    chunks: list[bytes] = []
    try:
        with fs.opened(PROC_LOCKS, owner="lock-probe", writable=False) as file:
            offset = 0
            while offset < (1 << 22):  # the size of a /proc file is 0: read until it ends
                data = file.pread(65536, offset)
                if not data:
                    break
                chunks.append(data)
                offset += len(data)
    except JetError:
        return None
    for line in b"".join(chunks).decode("ascii", "replace").splitlines():
        parts = line.split()
        if (
            len(parts) >= 6
            and parts[1:4] == ["FLOCK", "ADVISORY", "WRITE"]
            and parts[5] == wanted
            and parts[4].isdigit()
            and int(parts[4]) > 0
        ):
            return int(parts[4])
    return None

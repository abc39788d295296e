"""The instance directory lock and the database file locks: exclusive in this process and
across processes, and gone when the holder dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jetstore.errors import FileAccessDenied, JetError
from jetstore.format.filenames import LOCK_FILE
from jetstore.io.files import File, FileSystem, IOEvent
from jetstore.io.handles import HandleKind, HandleRegistry
from jetstore.io.locking import (
    PROC_LOCKS,
    DirectoryLock,
    FileLock,
    acquire_directory_lock,
    file_lock_holder,
    is_locked,
    lock_file,
    lock_holder_pid,
    read_lock_holder,
)

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))


@pytest.fixture
def registry() -> HandleRegistry:
    return HandleRegistry("lock-test")


@pytest.fixture
def fs(registry: HandleRegistry) -> FileSystem:
    return FileSystem(registry)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_child(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def test_acquire_registers_lock_and_writes_pid(
    fs: FileSystem, registry: HandleRegistry, tmp_path
) -> None:
    directory = str(tmp_path)
    assert not is_locked(fs, directory)
    assert read_lock_holder(fs, directory) is None
    lock = acquire_directory_lock(fs, directory, owner="inst", holder="a test")
    try:
        assert isinstance(lock, DirectoryLock)
        assert lock.held
        counts = registry.counts("inst")
        assert counts[HandleKind.LOCK.value] == 1
        assert counts[HandleKind.FILE.value] == 1
        assert read_lock_holder(fs, directory) == os.getpid()
        # The pid, then what holds the lock: a refused opener names both.
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\na test\n"
        assert is_locked(fs, directory)
        # probing leaves no handle behind
        assert registry.total() == 2
    finally:
        lock.release()
    assert not lock.held
    assert registry.total() == 0
    assert not is_locked(fs, directory)
    lock.release()  # idempotent
    assert registry.total() == 0


def test_second_acquire_in_same_process_is_refused(
    fs: FileSystem, registry: HandleRegistry, tmp_path
) -> None:
    directory = str(tmp_path)
    lock = acquire_directory_lock(fs, directory, owner="first", holder="a test")
    try:
        for other_fs in (fs, FileSystem(HandleRegistry("other"))):
            with pytest.raises(FileAccessDenied) as info:
                acquire_directory_lock(other_fs, directory, owner="second", holder="a test")
            err = info.value
            assert err.code == -1032
            assert isinstance(err, JetError)
            assert str(os.getpid()) in str(err)
            assert "this process" in str(err)
            assert directory in str(err)
            assert err.path == os.path.join(directory, LOCK_FILE)
            assert other_fs.registry.total("second") == 0  # the refused attempt leaks nothing
        assert lock.held
        assert is_locked(fs, directory)
        assert read_lock_holder(fs, directory) == os.getpid()
        assert registry.total("first") == 2
    finally:
        lock.release()


def test_release_then_reacquire(fs: FileSystem, registry: HandleRegistry, tmp_path) -> None:
    directory = str(tmp_path)
    for _ in range(3):
        lock = acquire_directory_lock(fs, directory, owner="inst", holder="a test")
        assert is_locked(fs, directory)
        lock.release()
        assert not is_locked(fs, directory)
    assert registry.total() == 0
    assert registry.opened_total == registry.closed_total


def test_close_owner_releases_the_lock(fs: FileSystem, registry: HandleRegistry, tmp_path) -> None:
    directory = str(tmp_path)
    lock = acquire_directory_lock(fs, directory, owner="inst/lock", holder="a test")
    assert registry.close_owner("inst") == []
    assert not lock.held
    assert not is_locked(fs, directory)
    lock2 = acquire_directory_lock(fs, directory, owner="inst", holder="a test")
    lock2.release()
    lock.release()  # after close_owner, still harmless


def test_missing_directory_is_a_jet_error(fs: FileSystem, registry: HandleRegistry, tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(JetError):
        acquire_directory_lock(fs, missing, owner="inst", holder="a test")
    assert not is_locked(fs, missing)
    assert read_lock_holder(fs, missing) is None
    assert registry.total() == 0


def test_read_lock_holder_ignores_garbage(fs: FileSystem, tmp_path) -> None:
    (tmp_path / LOCK_FILE).write_bytes(b"not a pid\n")
    assert read_lock_holder(fs, str(tmp_path)) is None
    (tmp_path / LOCK_FILE).write_bytes(b"")
    assert read_lock_holder(fs, str(tmp_path)) is None
    (tmp_path / LOCK_FILE).write_bytes(b"  4242\n")
    assert read_lock_holder(fs, str(tmp_path)) == 4242
    # a stale pid in an unlocked file does not make the directory locked
    assert not is_locked(fs, str(tmp_path))


def test_another_process_is_refused_naming_the_holder(fs: FileSystem, tmp_path) -> None:
    directory = str(tmp_path)
    lock = acquire_directory_lock(fs, directory, owner="inst", holder="a test")
    try:
        result = run_child(
            f"""
            import sys
            from jetstore.errors import FileAccessDenied
            from jetstore.io.files import FileSystem
            from jetstore.io.locking import acquire_directory_lock, is_locked, read_lock_holder
            fs = FileSystem()
            print("locked", is_locked(fs, {directory!r}))
            print("holder", read_lock_holder(fs, {directory!r}))
            try:
                acquire_directory_lock(fs, {directory!r}, owner="child", holder="a test")
            except FileAccessDenied as exc:
                print("refused", exc.code, str(exc))
                print("handles", fs.registry.total())
            else:
                print("ACQUIRED")
            """
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "locked True"
        assert lines[1] == f"holder {os.getpid()}"
        assert lines[2].startswith("refused -1032 ")
        assert f"process {os.getpid()}" in lines[2]
        assert "this process" not in lines[2]
        assert lines[3] == "handles 0"
        assert lock.held
    finally:
        lock.release()

    # Released: the other process gets it now.
    result = run_child(
        f"""
        import os
        from jetstore.io.files import FileSystem
        from jetstore.io.locking import acquire_directory_lock, read_lock_holder
        fs = FileSystem()
        lock = acquire_directory_lock(fs, {directory!r}, owner="child", holder="a test")
        print(read_lock_holder(fs, {directory!r}) == os.getpid())
        lock.release()
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_lock_dies_with_its_holder(fs: FileSystem, tmp_path) -> None:
    directory = str(tmp_path)
    code = f"""
        import sys, time
        from jetstore.io.files import FileSystem
        from jetstore.io.locking import acquire_directory_lock
        lock = acquire_directory_lock(FileSystem(), {directory!r}, owner="child", holder="a test")
        print("ready", flush=True)
        time.sleep(60)
        """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "ready", child.stderr.read() if child.stderr else ""
        assert is_locked(fs, directory)
        assert read_lock_holder(fs, directory) == child.pid
        with pytest.raises(FileAccessDenied) as info:
            acquire_directory_lock(fs, directory, owner="parent", holder="a test")
        assert f"process {child.pid}" in str(info.value)
        assert fs.registry.total("parent") == 0

        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()

    # No stale lock: the kernel dropped it with the process (its pid is still in the file).
    assert read_lock_holder(fs, directory) == child.pid
    assert not is_locked(fs, directory)
    lock = acquire_directory_lock(fs, directory, owner="parent", holder="a test")
    try:
        assert read_lock_holder(fs, directory) == os.getpid()
    finally:
        lock.release()


# --------------------------------------------------------------------- database file locks


def test_file_lock_refuses_a_second_opener_naming_the_holder(
    fs: FileSystem, registry: HandleRegistry, tmp_path
) -> None:
    path = tmp_path / "main.edb"
    path.write_bytes(b"x" * 100)
    link = tmp_path / "elsewhere.edb"
    os.link(path, link)
    first = fs.open(str(path), owner="a")
    lock = lock_file(fs, first, owner="a", holder="instance '/a'", what="database file")
    try:
        assert lock.held
        assert registry.counts("a")[HandleKind.LOCK.value] == 1
        # Another open of the same inode (here through a hard link) is refused, in this
        # process too: the lock belongs to the open file description.
        second = fs.open(str(link), owner="b")
        with pytest.raises(FileAccessDenied) as info:
            lock_file(fs, second, owner="b", holder="instance '/b'", what="database file")
        second.close()
        err = info.value
        assert err.path == str(link)
        assert str(link) in str(err)
        assert f"instance '/a' in this process ({os.getpid()})" in str(err)
        assert registry.total("b") == 0
        assert file_lock_holder(fs, str(link)) == f"instance '/a' in this process ({os.getpid()})"
        assert lock_holder_pid(fs, str(path)) == os.getpid()
        assert registry.total() == 2  # probing leaves nothing behind
    finally:
        lock.release()
        first.close()
    assert not lock.held
    lock.release()  # idempotent
    assert registry.total() == 0
    assert file_lock_holder(fs, str(link)) is None
    assert file_lock_holder(fs, str(tmp_path / "absent.edb")) is None
    again = fs.open(str(link), owner="b")
    lock_file(fs, again, owner="b", holder="instance '/b'", what="database file").release()
    again.close()


def test_file_lock_read_only_opens_are_not_refused(fs: FileSystem, tmp_path) -> None:
    path = tmp_path / "main.edb"
    path.write_bytes(b"data")
    writer = fs.open(str(path), owner="a")
    lock = lock_file(fs, writer, owner="a", holder="instance '/a'", what="database file")
    try:
        with fs.open(str(path), owner="reader", writable=False) as reader:
            assert reader.pread(4, 0) == b"data"
    finally:
        lock.release()
        writer.close()


def test_file_lock_of_another_process_names_its_pid(fs: FileSystem, tmp_path) -> None:
    path = tmp_path / "main.edb"
    path.write_bytes(b"data")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import fcntl, os, sys
                fd = os.open({str(path)!r}, os.O_RDWR)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                print("locked", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        file = fs.open(str(path), owner="b")
        try:
            with pytest.raises(FileAccessDenied) as info:
                lock_file(fs, file, owner="b", holder="instance '/b'", what="database file")
        finally:
            file.close()
        holder = file_lock_holder(fs, str(path))
        if os.path.exists(PROC_LOCKS):
            assert holder == f"process {child.pid}"
            assert f"process {child.pid}" in str(info.value)
            assert lock_holder_pid(fs, str(path)) == child.pid
        else:
            assert holder is not None
    finally:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()
        child.wait(timeout=30)
        # Left to the garbage collector, the pipe closed in whatever test ran next, whose
        # count of the process's descriptors then came out one short.
        child.stdout.close()
    assert file_lock_holder(fs, str(path)) is None  # the kernel dropped it with the process


def test_an_interrupt_while_the_directory_lock_writes_its_pid_releases_it(
    registry: HandleRegistry, tmp_path
) -> None:
    """Ctrl-C while the new holder wrote its pid (only an Exception was handled there) left
    the lock and its file open, held by an opener that never got the `DirectoryLock`."""

    def hook(event: IOEvent) -> None:
        if event.op == "truncate":
            raise KeyboardInterrupt("Ctrl-C")

    with pytest.raises(KeyboardInterrupt):
        acquire_directory_lock(
            FileSystem(registry, hook), str(tmp_path), owner="inst", holder="a test"
        )
    assert registry.total() == 0
    assert not is_locked(FileSystem(registry), str(tmp_path))


def test_a_directory_lock_release_interrupted_in_the_unlock_still_closes_the_file(
    fs: FileSystem, registry: HandleRegistry, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the unlock (the finally of the offline tools' `exclusive_directory`)
    skipped the close of the lock file: the directory stayed locked until the process
    ended."""
    lock = acquire_directory_lock(fs, str(tmp_path), owner="tool", holder="a test")
    release = FileLock.release
    fired: list[bool] = []

    def interrupted(self: FileLock) -> None:
        if not fired:
            fired.append(True)
            raise KeyboardInterrupt("Ctrl-C")
        release(self)

    monkeypatch.setattr(FileLock, "release", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lock.release()
    monkeypatch.undo()
    assert fired == [True]
    assert registry.total() == 0
    assert not is_locked(fs, str(tmp_path))


def test_a_lock_taken_on_a_lock_file_its_holder_deleted_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An offline tool deletes the lock file it created before it lets go. An opener that had
    # opened that file just before took the lock on a file no path reaches any more, while
    # the next opener created a new one: two holders of one directory.
    holder = acquire_directory_lock(FileSystem(), str(tmp_path), owner="tool", holder="a tool")
    path = tmp_path / LOCK_FILE
    try_lock = File.try_lock
    calls = 0

    def holder_lets_go_first(file: File, *, shared: bool = False) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:  # between this opener's open and its lock
            path.unlink()
            holder.release()
        return try_lock(file, shared=shared)

    monkeypatch.setattr(File, "try_lock", holder_lets_go_first)
    lock = acquire_directory_lock(
        FileSystem(), str(tmp_path), owner="opener", holder="an open instance"
    )
    try:
        assert calls == 2 and path.exists()
        assert is_locked(FileSystem(), str(tmp_path))
    finally:
        lock.release()
